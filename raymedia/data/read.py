"""Reading the behaviour logs of a window and building per-user histories.

Only the day partitions inside the window are named to Ray Data, so days
outside it are never listed or read. Histories are built with a hash shuffle
on ``user_id`` (all of a user's rows land in one block, the guarantee Ray's
own ``map_groups`` relies on) followed by one vectorised pass per block:
one Python call per block instead of one per user.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.datasource import Partitioning

from raymedia import schema, storage
from raymedia.data.vocab import Vocab

log = logging.getLogger(__name__)

def window(day: dt.date, lookback_days: int) -> list[dt.date]:
    """The days [day - lookback, day), oldest first."""
    return [day - dt.timedelta(days=i) for i in range(lookback_days, 0, -1)]


def event_partitions(events_uri: str, days: list[dt.date]) -> list[str]:
    """URIs of the day partitions that exist; missing days are logged, none at all is an error."""
    found = [p for p in (storage.partition(events_uri, d) for d in days) if storage.exists(p)]
    if not found:
        raise FileNotFoundError(
            f"no event partitions for {days[0]}..{days[-1]} under {events_uri}")
    missing = len(days) - len(found)
    if missing:
        log.warning("%d of %d days in the window have no event partition under %s",
                    missing, len(days), events_uri)
    return found


def preflight(partitions: list[str]) -> list[str]:
    """Fail fast on structurally broken input: every file's footer is read on the driver.

    Returns the files. A corrupt Parquet file or one missing a required column
    raises ContractError naming the file (and the column) before any work starts.
    """
    files = [f for p in partitions for f in storage.list_files(p) if not f.rsplit("/", 1)[1].startswith(("_", "."))]

    def check(uri: str) -> pa.Schema:
        fs, path = storage.resolve(uri)
        try:
            file_schema = pq.read_schema(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise schema.ContractError(f"{uri}: not a readable Parquet file: {exc}") from exc
        schema.check_columns(file_schema, uri)
        return file_schema

    with ThreadPoolExecutor(max_workers=16) as pool:
        schema.check_consistent(dict(zip(files, pool.map(check, files))))   # one id type
    return files


def read_events(events_uri: str, partitions: list[str]) -> ray.data.Dataset:
    """Read exactly the given day partitions (never lists days outside them), with ``dt``."""
    fs, base = storage.resolve(events_uri)
    return ray.data.read_parquet(
        [storage.resolve(p)[1] for p in partitions], filesystem=fs,
        partitioning=Partitioning("hive", base_dir=base, field_types={"dt": str}))


def read_catalog(catalog_uri: str) -> pa.Table:
    fs, path = storage.resolve(catalog_uri)
    return schema.conform(pq.read_table(path, filesystem=fs), schema.CATALOG, catalog_uri)


def _batch_id(batch: pa.Table) -> str:
    """Content hash of a batch: a retried task re-derives the same names, so side
    outputs are overwritten rather than duplicated."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_table(batch)
    return hashlib.sha1(sink.getvalue()).hexdigest()[:20]


def to_interactions(batch: pa.Table, vocab: Vocab, events_uri: str, run_uri: str) -> pa.Table:
    """Raw events -> engaged interactions with item indices.

    Contract violations go to ``run_uri/rejects/`` with their reason; counts of
    every kind of row go to ``run_uri/_stats/`` (both named by the batch's
    content). Impressions are exposure, not taste, and items the vocabulary does
    not know are skipped; both are counted.
    """
    days = pc.unique(batch["dt"]).to_pylist() if "dt" in batch.column_names else []
    source = f"{events_uri}/dt={','.join(map(str, days))}"
    valid, rejected = schema.validate_events(batch, source)
    engaged = valid.filter(pc.not_equal(valid["event"], "impression"))
    item = vocab.lookup(engaged["item_id"])
    bid = _batch_id(batch)
    if rejected.num_rows:
        fs, path = storage.resolve(storage.join(run_uri, "rejects", f"part-{bid}.parquet"))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(rejected, path, filesystem=fs)
    reasons = pc.value_counts(rejected["reason"]).to_pylist() if rejected.num_rows else []
    storage.write_json(storage.join(run_uri, "_stats", f"{bid}.json"), {
        "input_rows": batch.num_rows, "valid_rows": valid.num_rows,
        "impressions": valid.num_rows - engaged.num_rows, "unknown_item": int((item == 0).sum()),
        "rejected": {r["values"]: r["counts"] for r in reasons}})
    code = pc.index_in(engaged["event"], value_set=pa.array(schema.EVENT_TYPES))
    out = pa.table({
        "user_id": engaged["user_id"],
        "item": item,
        "event": pc.add(code, 1).cast(pa.int8()),
        "ts": engaged["ts"].cast(pa.int64()),
        "dwell_s": engaged["dwell_s"],
    })
    return out.filter(pa.array(item > 0))


def read_stats(run_uri: str) -> dict:
    """Sum of the per-batch counts a run's read stage recorded."""
    total: dict = {"input_rows": 0, "valid_rows": 0, "impressions": 0, "unknown_item": 0,
                   "rejected_rows": 0, "rejected": {}}
    uris = storage.list_files(storage.join(run_uri, "_stats"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        for st in pool.map(storage.read_json, uris):
            for k in ("input_rows", "valid_rows", "impressions", "unknown_item"):
                total[k] += st[k]
            for reason, n in st["rejected"].items():
                total["rejected"][reason] = total["rejected"].get(reason, 0) + n
                total["rejected_rows"] += n
    return total


def histories_block(block: pa.Table, history_len: int) -> pa.Table:
    """One row per user in the block: the last ``history_len`` interactions.

    Consecutive rows on the same item with rising engagement (click, play,
    complete, like of one viewing) merge into one interaction that keeps the
    deepest engagement, the first timestamp and the total dwell time; a repeat
    at the same or a lower level is a new interaction (a rewatch).
    """
    if block.num_rows == 0:
        return _empty_histories(block.schema.field("user_id").type)
    block = block.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("item", "ascending")])
    users = block["user_id"].combine_chunks()
    item = block["item"].to_numpy()
    event = block["event"].to_numpy()
    ts = block["ts"].to_numpy()
    dwell = pc.fill_null(block["dwell_s"], 0.0).to_numpy()
    user_change = np.ones(len(item), dtype=bool)
    if len(item) > 1:
        user_change[1:] = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
    run_start = user_change.copy()
    # same item, deeper engagement (click -> play -> complete -> like): the same viewing;
    # same item at the same or a lower level (play, play): a new one (rewatch, re-edit)
    run_start[1:] |= (item[1:] != item[:-1]) | (event[1:] <= event[:-1])
    starts = np.flatnonzero(run_start)
    item, ts = item[starts], ts[starts]
    event = np.maximum.reduceat(event, starts)
    dwell = np.add.reduceat(dwell, starts).astype(np.float32)
    user_first = user_change[starts]
    group_starts = np.flatnonzero(user_first)
    group_ends = np.append(group_starts[1:], len(item))
    n_events = group_ends - group_starts
    keep_from = np.maximum(group_starts, group_ends - history_len)
    lengths = group_ends - keep_from
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    take = np.repeat(keep_from - offsets[:-1], lengths) + np.arange(offsets[-1])
    off = pa.array(offsets)
    return pa.table({
        "user_id": users.take(pa.array(np.flatnonzero(user_change))),
        "items": pa.ListArray.from_arrays(off, pa.array(item[take])),
        "events": pa.ListArray.from_arrays(off, pa.array(event[take])),
        "ts": pa.ListArray.from_arrays(off, pa.array(ts[take])),
        "n_events": pa.array(n_events.astype(np.int32)),
    })


def _empty_histories(user_type: pa.DataType) -> pa.Table:
    return pa.table({"user_id": pa.array([], user_type),
                     "items": pa.array([], pa.list_(pa.int64())),
                     "events": pa.array([], pa.list_(pa.int8())),
                     "ts": pa.array([], pa.list_(pa.int64())),
                     "n_events": pa.array([], pa.int32())})


def build_histories(events: ray.data.Dataset, vocab: Vocab, history_len: int,
                    partitions: int, events_uri: str, run_uri: str) -> ray.data.Dataset:
    """Events -> one row per user with their last ``history_len`` interactions."""
    interactions = events.map_batches(
        to_interactions, batch_format="pyarrow",
        fn_kwargs={"vocab": vocab, "events_uri": events_uri, "run_uri": run_uri})
    return interactions.repartition(partitions, keys=["user_id"]).map_batches(
        histories_block, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"history_len": history_len})


def distinct_items(events: ray.data.Dataset) -> pa.Array:
    """Every item id in the events (O(items) on the driver, never O(events))."""
    return pa.array(events.unique("item_id"))


def item_counts(histories: ray.data.Dataset, vocab_size: int, holdout_last: bool) -> np.ndarray:
    """Interactions per item index over all histories, leaving out held-out last events."""
    def count(batch: pa.Table) -> dict:
        items = batch["items"].combine_chunks()
        flat = pc.list_flatten(items).to_numpy()
        if holdout_last:
            lengths = pc.list_value_length(items).to_numpy()
            keep = np.ones(len(flat), dtype=bool)
            keep[(np.cumsum(lengths) - 1)[lengths > 0]] = False
            flat = flat[keep]
        return {"counts": [np.bincount(flat, minlength=vocab_size).astype(np.float64)]}

    total = np.zeros(vocab_size)
    for row in histories.map_batches(count, batch_size=None, batch_format="pyarrow").iter_rows():
        total += row["counts"]
    return total
