"""Importers of public interaction formats into the events contract, partitioned by day.

- ``movielens``: ``ratings.dat`` (``user::item::rating::ts``), ``u.data`` (tab-separated) or
  ``ratings.csv`` (with a header); real timestamps; a rating becomes the event of the
  matching engagement (5 like, 4 complete, 3 play, lower click).
- ``sasrec``: ``user item`` per line, chronological per user, no timestamps: events get
  increasing timestamps in file order, one second apart, from ``start``.

A catalog is written alongside (every item, category unknown, published at its first event),
so the imported data runs through the pipeline as it is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from raymedia import schema, storage

FORMATS = ("movielens", "sasrec")
RATING_EVENTS = {5: "like", 4: "complete", 3: "play"}   # below 3: click


@dataclass(frozen=True)
class ImportSummary:
    events_uri: str
    catalog_uri: str
    users: int
    items: int
    events: int
    first_day: str
    last_day: str

    @property
    def next_day(self) -> str:
        """The day a run that reads all of the import produces."""
        return (dt.date.fromisoformat(self.last_day) + dt.timedelta(days=1)).isoformat()


def _csv(data: bytes, delimiter: str, names: list[str], skip: int = 0) -> pa.Table:
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip),
        parse_options=pacsv.ParseOptions(delimiter=delimiter))


def read_movielens(path: str) -> pa.Table:
    """MovieLens ratings in any of its three layouts -> events (with ``dt``)."""
    data = storage.read_bytes(path)
    first = data[:data.find(b"\n")] if b"\n" in data else data
    if b"::" in first:      # ':' splits '::' into an empty field between the values
        raw = _csv(data, ":", ["user_id", "_a", "item_id", "_b", "rating", "_c", "ts"])
    elif b"\t" in first:
        raw = _csv(data, "\t", ["user_id", "item_id", "rating", "ts"])
    elif b"," in first:
        raw = _csv(data, ",", ["user_id", "item_id", "rating", "ts"],
                   skip=0 if first[:1].isdigit() else 1)
    else:
        raise ValueError(f"{path}: not a MovieLens ratings file (expected '::', tab or comma separated)")
    rating = np.floor(raw["rating"].to_numpy()).astype(int)
    event = np.where(rating >= 5, "like", np.where(rating == 4, "complete",
                                                   np.where(rating == 3, "play", "click")))
    ts = pc.multiply(raw["ts"].cast(pa.int64()), 1_000_000).cast(schema.TS_TYPE)
    return _events(raw["user_id"], raw["item_id"], pa.array(event), ts)


def read_sasrec(path: str, start: dt.datetime) -> pa.Table:
    """SASRec text (``user item`` per line, chronological per user) -> events (with ``dt``)."""
    raw = _csv(storage.read_bytes(path), " ", ["user_id", "item_id"])
    base = int(start.timestamp() * 1_000_000)
    ts = pa.array(base + np.arange(raw.num_rows, dtype=np.int64) * 1_000_000, pa.int64())
    return _events(raw["user_id"], raw["item_id"], pa.array(["play"] * raw.num_rows),
                   ts.cast(schema.TS_TYPE))


def _events(user, item, event, ts) -> pa.Table:
    t = pa.table({"user_id": user, "item_id": item, "event": event, "ts": ts,
                  "dwell_s": pa.nulls(len(ts), pa.float32())})
    t = schema.conform(t, schema.EVENTS, "import")
    return t.append_column("dt", pc.strftime(t["ts"], format="%Y-%m-%d"))


def catalog_of(events: pa.Table) -> pa.Table:
    """Every item of the events, published at its first event, category unknown."""
    first = events.group_by("item_id").aggregate([("ts", "min")]).sort_by("item_id")
    n = first.num_rows
    return pa.table({"item_id": first["item_id"],
                     "title": pc.cast(first["item_id"], pa.string()),
                     "category": pa.array(["unknown"] * n),
                     "published_at": first["ts_min"],
                     "available": pa.array([True] * n)})


def write_days(events: pa.Table, events_uri: str, threads: int = 8) -> int:
    """``events`` (with ``dt``) as one file per day, ``dt=D/part-00000.parquet``, in time
    order, by a bounded thread pool (``storage.write_partitioned``). Returns the days."""
    return len(storage.write_partitioned(events.sort_by("ts"), events_uri, "part-00000.parquet", threads))


def import_events(fmt: str, path: str, out_uri: str,
                  start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) -> ImportSummary:
    """Import ``path`` in format ``fmt`` to ``out_uri/events/`` and ``out_uri/catalog/``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    events = read_movielens(path) if fmt == "movielens" else read_sasrec(path, start)
    if events.num_rows == 0:
        raise ValueError(f"{path}: no interactions found")
    events_uri = storage.join(out_uri, "events")
    if storage.list_files(events_uri):
        raise FileExistsError(f"{events_uri} already holds events; choose another --out")
    write_days(events, events_uri)
    catalog_uri = storage.join(out_uri, "catalog", "catalog.parquet")
    storage.write_parquet(catalog_of(events), catalog_uri)
    days = pc.min_max(events["dt"])
    return ImportSummary(events_uri, catalog_uri, len(pc.unique(events["user_id"])),
                         len(pc.unique(events["item_id"])), events.num_rows,
                         days["min"].as_py(), days["max"].as_py())
