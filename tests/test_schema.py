"""Contracts: conforming inputs, clear errors for structural breaks, row-level rejects."""

import datetime as dt

import pyarrow as pa
import pytest

from raymedia import schema


def _events(**cols):
    base = {"user_id": pa.array([1, 2, 3], pa.int32()), "item_id": pa.array(["a", "b", "c"]),
            "event": ["play", "click", "complete"],
            "ts": pa.array([dt.datetime(2026, 1, 1, h) for h in (1, 2, 3)], pa.timestamp("ms")),
            "dwell_s": pa.array([10.0, 1.0, 600.0], pa.float64())}
    base.update(cols)
    return pa.table(base)


def test_conform_keeps_id_types_and_casts_the_rest():
    t = schema.conform(_events(), schema.EVENTS, "x.parquet")
    assert t.schema.field("user_id").type == pa.int64()     # narrow ints widen
    assert t.schema.field("item_id").type == pa.string()    # string ids stay strings
    assert t.schema.field("ts").type == schema.TS_TYPE       # naive timestamps are UTC
    assert t.schema.field("dwell_s").type == pa.float32()


def test_missing_optional_column_is_null_missing_required_is_an_error():
    t = schema.conform(_events().drop(["dwell_s"]), schema.EVENTS)
    assert t["dwell_s"].null_count == 3
    with pytest.raises(schema.ContractError, match=r"day1.parquet: missing required column 'event'"):
        schema.conform(_events().drop(["event"]), schema.EVENTS, "day1.parquet")


def test_uncastable_column_names_file_and_column():
    with pytest.raises(schema.ContractError, match=r"f.parquet: column 'ts' of type string"):
        schema.conform(_events(ts=pa.array(["x", "y", "z"])), schema.EVENTS, "f.parquet")
    with pytest.raises(schema.ContractError, match="id columns must be integer or string"):
        schema.conform(_events(user_id=pa.array([1.5, 2.0, 3.0])), schema.EVENTS)


def test_split_valid_gives_each_bad_row_a_reason_and_keeps_the_rest():
    t = schema.conform(_events(
        user_id=pa.array([1, None, 3]), event=["play", "click", "teleport"],
        dwell_s=pa.array([-1.0, 1.0, 2.0])), schema.EVENTS)
    valid, rejected = schema.split_valid(t)
    assert valid.num_rows == 0 and rejected.num_rows == 3
    assert rejected["reason"].to_pylist() == ["negative_dwell", "null_user_id", "unknown_event"]
    ok, none = schema.split_valid(schema.conform(_events(), schema.EVENTS))
    assert ok.num_rows == 3 and none.num_rows == 0
