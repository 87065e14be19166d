"""Reading behaviour logs: day partitions, validation, rejects, counts.

Only the day partitions a run names are given to Ray Data, so days outside
them are never listed or read. Valid rows leave as the user state's log rows
(``data/state.py`` turns them into per-user state), followed by rows that count
what was read (``ReadStats``), so the counts arrive with the state they describe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


def _parquet_tables(uri: str, what: str):
    """(file URI, table) of one Parquet file or of each file of a folder (markers skipped)."""
    fs, path = storage.resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{what} {uri} does not exist")
    uris = ([f for f in storage.list_files(uri) if not _is_marker(f)]
            if kind == pafs.FileType.Directory else [uri])
    for u in uris:
        fs, path = storage.resolve(u)
        try:
            yield u, pq.read_table(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise schema.ContractError(f"{u}: not a readable Parquet file: {exc}") from exc


def read_catalog(catalog_uri: str) -> pa.Table:
    """The catalog (one Parquet file or a folder of them, each conformed on its own),
    refused with ContractError when it has no rows, null ids or mixed id kinds."""
    parts = [schema.conform_catalog(table, uri) for uri, table in _parquet_tables(catalog_uri, "catalog")]
    if len({p.schema.field("item_id").type for p in parts}) > 1:
        raise schema.ContractError(f"{catalog_uri}: 'item_id' is integer in some files and string in "
                                   "others; the catalog must use one id type")
    # files may differ in which content columns they have: missing ones read as null
    catalog = (pa.concat_tables(parts, promote_options="default") if parts
               else schema.CATALOG.empty_table())
    schema.check_catalog(catalog, catalog_uri)
    return catalog


def read_user_attributes(uri: str, events_user_type: pa.DataType | None = None) -> pa.Table:
    """The user-attributes table (``data.user_attributes_uri``: one Parquet file or a folder;
    ``schema.USER_ATTRIBUTES``), refused with ContractError naming the file and column when
    a column is missing or of the wrong type, an id is null or repeated, an age negative,
    the files mix id kinds, or the ids are not of the events' kind (``events_user_type``,
    when known)."""
    parts = [schema.conform_user_attributes(table, u) for u, table in _parquet_tables(uri, "user attributes")]
    if len({p.schema.field("user_id").type for p in parts}) > 1:
        raise schema.ContractError(f"{uri}: 'user_id' is integer in some files and string in others; "
                                   "the user-attributes table must use one id type")
    table = (pa.concat_tables(parts) if parts else schema.USER_ATTRIBUTES.empty_table())
    schema.check_user_attributes(table, uri, events_user_type)
    return table


def _batch_id(batch: pa.Table) -> str:
    """Content hash of a batch: a retried task re-derives the same names, so side
    outputs are overwritten rather than duplicated."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_table(batch)
    return hashlib.sha1(sink.getvalue()).hexdigest()[:20]


COUNTS = ("input_rows", "valid_rows", "impressions", "unknown_item")
STAT_NAMES = (*COUNTS, *schema.REJECT_REASONS)    # a STATS row's ``event`` is its index here


@dataclass(frozen=True)
class ReadStats:
    """What the read stage saw: rows in, valid, rejected (by reason), impressions, and
    engaged rows on items the scoring model does not know."""
    input_rows: int = 0
    valid_rows: int = 0
    impressions: int = 0
    unknown_item: int = 0
    rejected_rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: pa.Table) -> "ReadStats":
        """Sum of the STATS rows (``event``, ``count``) the read batches sent along."""
        totals = np.bincount(rows["event"].to_numpy().astype(np.int64),
                             weights=rows["count"].to_numpy().astype(np.float64), minlength=len(STAT_NAMES))
        by_name = {name: int(n) for name, n in zip(STAT_NAMES, totals)}
        rejected = {r: by_name[r] for r in schema.REJECT_REASONS if by_name[r]}
        return cls(*(by_name[c] for c in COUNTS), sum(rejected.values()), rejected)


def to_log_rows(batch: pa.Table, events_uri: str, run_uri: str, vocab: Vocab | None = None) -> pa.Table:
    """Raw events -> validated log rows for the user state (``state.log_rows``), followed
    by STATS rows counting every kind of row (``ReadStats``), which travel with them to
    the pass that writes the state: Ray keeps one output per task, so a retried batch
    counts once. Contract violations go to ``run_uri/rejects/`` with their reason (named
    by the batch's content, so a retry overwrites). Engaged events on items ``vocab``
    (the scoring model's) does not know are counted.
    """
    days = pc.unique(batch["dt"]).to_pylist() if "dt" in batch.column_names else []
    source = f"{events_uri}/dt={','.join(map(str, days))}"
    valid, rejected = schema.validate_events(batch, source)
    impression = pc.equal(valid["event"], "impression")
    if rejected.num_rows:
        storage.write_parquet(rejected, storage.join(run_uri, "rejects", f"part-{_batch_id(batch)}.parquet"))
    counts = {"input_rows": batch.num_rows, "valid_rows": valid.num_rows,
              "impressions": int(pc.sum(impression).as_py() or 0), "unknown_item": 0}
    if vocab is not None:
        engaged_items = valid["item_id"].filter(pc.invert(impression))
        counts["unknown_item"] = int((vocab.lookup(engaged_items) == 0).sum())
    if rejected.num_rows:
        counts.update({r["values"]: r["counts"] for r in pc.value_counts(rejected["reason"]).to_pylist()})
    rows = state.log_rows(pa.table({
        "user_id": valid["user_id"], "item_id": valid["item_id"],
        "event": schema.EventType.encode(valid["event"]), "ts": valid["ts"].cast(pa.int64()),
        "dwell_s": valid["dwell_s"]}))
    return pa.concat_tables([rows, state.stat_rows(
        np.array([STAT_NAMES.index(k) for k in counts]), np.array(list(counts.values())),
        rows.schema.field("user_id").type, rows.schema.field("item_id").type)])


def read_log_rows(events_uri: str, files: EventFiles, run_uri: str,
                  vocab: Vocab | None = None) -> ray.data.Dataset:
    """The preflighted files as validated log rows and their STATS rows (rejects under ``run_uri``)."""
    return read_events(events_uri, list(files.partitions), files).map_batches(
        to_log_rows, batch_format="pyarrow",
        fn_kwargs={"events_uri": events_uri, "run_uri": run_uri, "vocab": vocab})
