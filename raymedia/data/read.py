"""Reading behaviour logs: day partitions, validation, rejects, counts.

Only the day partitions a run names are given to Ray Data, so days outside
them are never listed or read. Valid rows leave as the user state's log rows
(``data/state.py`` turns them into per-user state).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from raymedia import schema, storage
from raymedia.data import state
from raymedia.data.vocab import Vocab

log = logging.getLogger(__name__)

def window(day: dt.date, lookback_days: int) -> list[dt.date]:
    """The days [day - lookback, day), oldest first."""
    return [day - dt.timedelta(days=i) for i in range(lookback_days, 0, -1)]


def event_partitions(events_uri: str, days: list[dt.date], allow_none: bool = False) -> list[str]:
    """URIs of the day partitions that exist; missing days are logged, none at all is an
    error unless ``allow_none`` (a nightly run that carries yesterday's state forward).
    A ``dt=D`` that is a file, not a folder, is a ContractError naming it."""
    found = []
    for p in (storage.partition(events_uri, d) for d in days):
        fs, path = storage.resolve(p)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            raise schema.ContractError(f"{p} is a file; a day partition must be a folder of "
                                       "Parquet files (dt=YYYY-MM-DD/<files>)")
        if kind == pafs.FileType.Directory:
            found.append(p)
    if not found and not allow_none:
        raise FileNotFoundError(
            f"no event partitions for {days[0]}..{days[-1]} under {events_uri}")
    missing = len(days) - len(found)
    if missing:
        log.warning("%d of %d days in the window have no event partition under %s",
                    missing, len(days), events_uri)
    return found


@dataclass(frozen=True)
class EventFiles:
    """The files of a run's day partitions and the one schema they are read with.

    Every data file is read whatever its name (Hive and Athena write ``000000_0``);
    names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are markers, skipped.
    Files may differ in timestamp unit and zone, dictionary encoding and integer
    width: each is cast to ``schema`` as it is read, so no two files' types clash.
    """
    partitions: tuple[str, ...]
    files: tuple[str, ...]
    schema: pa.Schema


def _is_marker(uri: str) -> bool:
    return uri.rsplit("/", 1)[1].startswith(("_", "."))


def preflight(partitions: list[str]) -> EventFiles:
    """Fail fast on structurally broken input: every file's footer is read on the driver.

    A corrupt Parquet file, a file in a nested folder, a missing required column, a
    type that cannot be read, unsigned ids beyond int64 or files that disagree on the
    id kind or the ``ts`` kind raise ContractError naming the file and the column
    before any work starts. Returns the files and the schema that reads them all.
    """
    files = []
    for p in partitions:
        for f in storage.list_files(p):
            rel = f[len(p) + 1:]
            if "/" in rel and not any(part.startswith(("_", ".")) for part in rel.split("/")):
                raise schema.ContractError(
                    f"{f}: a file in a nested folder of {p}; raymedia reads the files directly in "
                    "dt=YYYY-MM-DD/ (move hour=HH/ files up or write one folder per day)")
            if "/" not in rel and not _is_marker(f):
                files.append(f)

    def check(uri: str) -> pa.Schema:
        fs, path = storage.resolve(uri)
        try:
            file_schema = pq.read_schema(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise schema.ContractError(f"{uri}: not a readable Parquet file: {exc}") from exc
        schema.check_columns(file_schema, uri)
        for col in ("user_id", "item_id"):
            if pa.types.is_uint64(schema.value_type(file_schema.field(col).type)):
                top = pc.max(pq.read_table(path, columns=[col], filesystem=fs)[col]).as_py()
                if top is not None and top >= 2 ** 63:
                    raise schema.ContractError(
                        f"{uri}: column '{col}' holds {top}, above the largest id raymedia keeps "
                        f"(int64, {2 ** 63 - 1}); write such ids as strings")
        return file_schema

    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = dict(zip(files, pool.map(check, files)))
    schema.check_consistent(schemas)                           # one id kind
    return EventFiles(tuple(partitions), tuple(files), schema.read_schema(schemas))


FILES_PER_TASK = 64      # small day files read one after another by one task
MAX_READ_TASKS = 256     # large reads: at most this many tasks, each a run of files


def file_groups(files: list[str] | tuple[str, ...], files_per_task: int = FILES_PER_TASK,
                max_tasks: int = MAX_READ_TASKS) -> list[list[str]]:
    """Files in order, cut into runs of at least ``files_per_task`` files (fewer
    tasks than ``max_tasks``): years of day partitions become a bounded number of
    read tasks instead of a task, or a thread, per file."""
    files = list(files)
    if not files:
        return []
    per = max(files_per_task, -(-len(files) // max_tasks))
    return [files[i:i + per] for i in range(0, len(files), per)]


def _read_group(batch: pa.Table, base: str, read_schema: pa.Schema) -> pa.Table:
    """One read task: its files read one after another with pyarrow, each cast to the
    run's read schema, ``dt`` from each path."""
    tables = []
    for uri in batch["files"][0].as_py():
        fs, path = storage.resolve(uri)
        present = set(pq.read_schema(path, filesystem=fs).names)
        t = pq.read_table(path, filesystem=fs, columns=[c for c in read_schema.names if c in present])
        t = schema.conform(t, read_schema, uri)
        day = path[len(base):].strip("/").split("/", 1)[0].removeprefix("dt=")
        tables.append(t.append_column("dt", pa.array([day] * t.num_rows, pa.string())))
    return pa.concat_tables(tables)


def read_events(events_uri: str, partitions: list[str], files: EventFiles | None = None) -> ray.data.Dataset:
    """Read exactly the given day partitions (never lists days outside them), with ``dt``:
    the files ``preflight`` found (run here unless given), each cast to one schema."""
    files = files if files is not None else preflight(partitions)
    _, base = storage.resolve(events_uri)
    groups = file_groups(files.files)
    return ray.data.from_items([{"files": g} for g in groups],
                               override_num_blocks=max(1, len(groups))).map_batches(
        _read_group, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"base": base.rstrip("/"), "read_schema": files.schema})


def read_catalog(catalog_uri: str) -> pa.Table:
    """The catalog (one Parquet file or a folder of them, each conformed on its own),
    refused with ContractError when it has no rows, null ids or mixed id kinds."""
    fs, path = storage.resolve(catalog_uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"catalog {catalog_uri} does not exist")
    uris = ([f for f in storage.list_files(catalog_uri) if not _is_marker(f)]
            if kind == pafs.FileType.Directory else [catalog_uri])
    parts = []
    for uri in uris:
        fs, path = storage.resolve(uri)
        try:
            table = pq.read_table(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise schema.ContractError(f"{uri}: not a readable Parquet file: {exc}") from exc
        parts.append(schema.conform_catalog(table, uri))
    if len({p.schema.field("item_id").type for p in parts}) > 1:
        raise schema.ContractError(f"{catalog_uri}: 'item_id' is integer in some files and string in "
                                   "others; the catalog must use one id type")
    # files may differ in which content columns they have: missing ones read as null
    catalog = (pa.concat_tables(parts, promote_options="default") if parts
               else schema.CATALOG.empty_table())
    schema.check_catalog(catalog, catalog_uri)
    return catalog


def _batch_id(batch: pa.Table) -> str:
    """Content hash of a batch: a retried task re-derives the same names, so side
    outputs are overwritten rather than duplicated."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_table(batch)
    return hashlib.sha1(sink.getvalue()).hexdigest()[:20]


def to_log_rows(batch: pa.Table, events_uri: str, run_uri: str, vocab: Vocab | None = None) -> pa.Table:
    """Raw events -> validated log rows for the user state (``state.log_rows``).

    Contract violations go to ``run_uri/rejects/`` with their reason; counts of
    every kind of row go to ``run_uri/_stats/`` (both named by the batch's
    content, so a retried batch overwrites instead of double counting). Engaged
    events on items ``vocab`` (the scoring model's) does not know are counted.
    """
    days = pc.unique(batch["dt"]).to_pylist() if "dt" in batch.column_names else []
    source = f"{events_uri}/dt={','.join(map(str, days))}"
    valid, rejected = schema.validate_events(batch, source)
    impression = pc.equal(valid["event"], "impression")
    bid = _batch_id(batch)
    if rejected.num_rows:
        storage.write_parquet(rejected, storage.join(run_uri, "rejects", f"part-{bid}.parquet"))
    reasons = pc.value_counts(rejected["reason"]).to_pylist() if rejected.num_rows else []
    n_imp = int(pc.sum(impression).as_py() or 0)
    unknown = 0
    if vocab is not None:
        engaged_items = valid["item_id"].filter(pc.invert(impression))
        unknown = int((vocab.lookup(engaged_items) == 0).sum())
    storage.write_json(storage.join(run_uri, "_stats", f"{bid}.json"), {
        "input_rows": batch.num_rows, "valid_rows": valid.num_rows,
        "impressions": n_imp, "unknown_item": unknown,
        "rejected": {r["values"]: r["counts"] for r in reasons}})
    return state.log_rows(pa.table({
        "user_id": valid["user_id"], "item_id": valid["item_id"],
        "event": schema.EventType.encode(valid["event"]), "ts": valid["ts"].cast(pa.int64()),
        "dwell_s": valid["dwell_s"]}))


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


def read_log_rows(events_uri: str, files: EventFiles, run_uri: str,
                  vocab: Vocab | None = None) -> ray.data.Dataset:
    """The preflighted files as validated log rows (rejects and counts under ``run_uri``)."""
    return read_events(events_uri, list(files.partitions), files).map_batches(
        to_log_rows, batch_format="pyarrow",
        fn_kwargs={"events_uri": events_uri, "run_uri": run_uri, "vocab": vocab})


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
