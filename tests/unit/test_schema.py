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


def test_each_bad_row_gets_its_reason_and_valid_rows_are_untouched():
    raw = pa.table({
        "user_id": pa.array([1, None, 3, 4, 5, 6, 7, 8, 8, 9]),
        "item_id": pa.array(["a", "b", None, "d", "e", "f", "g", "h", "h", "i"]),
        "event": ["play", "click", "play", "play", "teleport", "play", "play", "like", "like", "complete"],
        "ts": ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z", "yesterday",
               "2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z", "2026-01-02T00:00:01Z",
               "2026-01-01T08:00:00Z", "2026-01-01T08:00:00Z", None],
        "dwell_s": [1.0, 1.0, 1.0, 1.0, 1.0, -5.0, 1.0, None, None, 3.0],
        "dt": ["2026-01-01"] * 10})
    valid, rejected = schema.validate_events(raw, "events/dt=2026-01-01")
    assert rejected["reason"].to_pylist() == [
        "null_user_id", "null_item_id", "unparseable_ts", "unknown_event", "negative_dwell",
        "ts_outside_partition", "duplicate", "null_ts"]
    assert rejected["ts"].to_pylist()[2] == "yesterday"       # raw values are kept
    assert valid.num_rows + rejected.num_rows == raw.num_rows
    assert valid["user_id"].to_pylist() == [1, 8]
    assert valid.schema.equals(schema.with_id_types(schema.EVENTS, pa.int64(), pa.string()),
                               check_metadata=False) or valid.schema.names == schema.EVENTS.names
    assert set(schema.REJECT_REASONS) == set(rejected["reason"].to_pylist())


def test_valid_input_has_no_rejects():
    valid, rejected = schema.validate_events(_events(), "x")
    assert valid.num_rows == 3 and rejected.num_rows == 0


def test_partition_day_is_the_utc_day_at_the_edges_and_a_non_date_partition_rejects():
    ts = [dt.datetime(2026, 1, 1, 0, 0, 0), dt.datetime(2026, 1, 1, 23, 59, 59, 999999),
          dt.datetime(2026, 1, 2, 0, 0, 0), dt.datetime(1969, 12, 31, 23, 0, 0),
          dt.datetime(2026, 1, 1, 12, 0, 0)]
    raw = pa.table({"user_id": [1, 2, 3, 4, 5], "item_id": ["a", "b", "c", "d", "e"],
                    "event": ["play"] * 5, "ts": pa.array(ts, pa.timestamp("us", "UTC")),
                    "dt": ["2026-01-01", "2026-01-01", "2026-01-01", "1969-12-31", "2026-01-01/.."]})
    valid, rejected = schema.validate_events(raw, "events")
    assert valid["user_id"].to_pylist() == [1, 2, 4]
    assert rejected["user_id"].to_pylist() == ["3", "5"]
    assert set(rejected["reason"].to_pylist()) == {"ts_outside_partition"}


def test_event_codes_are_the_ones_written_in_committed_states():
    """User states and trained models hold these codes (0 is padding): they never change."""
    assert {e.label: int(e) for e in schema.EventType} == {
        "impression": 1, "click": 2, "play": 3, "complete": 4, "like": 5, "share": 6}
    assert schema.NUM_EVENT_CODES == 7
    assert set(schema.EVENT_WEIGHT) == set(schema.EventType)


def test_event_names_and_codes_round_trip():
    names = pa.array(["share", "impression", "play", "rating", None])
    codes = schema.EventType.encode(names)
    assert codes.type == pa.int8()
    assert codes.to_pylist() == [6, 1, 3, None, None]        # not an event type: no code
    assert schema.EventType.decode(codes.drop_null()).to_pylist() == ["share", "impression", "play"]
    assert schema.EventType.labels() == ("impression", "click", "play", "complete", "like", "share")
