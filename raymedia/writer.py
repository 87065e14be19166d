"""The run writer: one run's directory ``dt=D/run=<id>/``, from its first file to its commit.

Shaped like Ray Data's ``Datasink``: ``on_write_start`` (the output is writable,
the day's generation this run builds on, the heartbeat), write functions that run
on Ray workers and return one row per file written (``write_part``,
``write_batch``), ``record``-ing those rows on the driver, ``on_write_complete``
(the manifest, removal of unlisted files, the commit point, then best-effort
cleanup that is reported, never raised) and ``on_write_failed`` (a run that lost
the race to another removes its own files and says so with ``CommitConflict``).
The pipeline says *what* to write; this module lists it and commits it
(``storage`` holds the protocol itself: README "Commit protocol").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raymedia import schema, storage
from raymedia.lists import STATS, ListSums

log = logging.getLogger(__name__)


def write_part(batch: pa.Table, run_uri: str, table: str) -> pa.Table:
    """Write one batch as ``run_uri/<table>/part-<uuid>.parquet``; return its name and rows.

    Fresh names: a batch Ray retries never clobbers another, and the writer commits
    only the files reported back (the rest are removed before the commit).
    """
    name = f"{table}/part-{uuid.uuid4().hex}.parquet"
    storage.write_parquet(batch, storage.join(run_uri, name))
    return pa.table({"table": [table], "file": [name], "rows": [batch.num_rows]})


def write_batch(batch: pa.Table, run_uri: str, model_version: str, generated_at: str) -> pa.Table:
    """Write one scored batch as a recommendations file and a predictions file; return their
    names, row counts, how many of the users were cold-start users and, with list rules, how
    many items each reason placed (``reasons``, JSON) and, when the rows carry the lists'
    statistics (``lists.STATS``), their sums (``lists``, JSON of ``lists.ListSums``)."""
    ts = pa.scalar(dt.datetime.fromisoformat(generated_at), schema.TS_TYPE)
    n = batch.num_rows
    version = pa.array([model_version] * n)
    users, items = batch["user_id"].type, batch["items"].type.value_type
    audit = [c for c in schema.RULE_COLUMNS.names if c in batch.column_names]     # list rules set
    rec_schema = pa.schema([*schema.RECOMMENDATIONS, *(schema.RULE_COLUMNS.field(c) for c in audit)])
    tables = {
        "recommendations": pa.table({"user_id": batch["user_id"], "items": batch["items"],
                                     "scores": batch["scores"], "model_version": version,
                                     "generated_at": pa.array([ts.value] * n, schema.TS_TYPE),
                                     **{c: batch[c] for c in audit}}
                                    ).cast(schema.with_id_types(rec_schema, users, items)),
        "predictions": pa.table({"user_id": batch["user_id"], "p_return_7d": batch["p_return_7d"],
                                 "next_category": batch["next_category"],
                                 "n_events": batch["n_events"], "model_version": version}
                                ).cast(schema.with_id_types(schema.PREDICTIONS, users)),
    }
    out = pa.concat_tables([write_part(t, run_uri, name) for name, t in tables.items()])
    cold = int(pc.sum(batch["cold_start"]).as_py() or 0)
    out = out.append_column("cold_start", pa.array([cold] * out.num_rows))
    if audit:           # list rules: how many listed items each reason placed (``reason_counts``)
        placed = pc.value_counts(pc.list_flatten(batch["reason"])).to_pylist()
        counts = json.dumps({p["values"]: p["counts"] for p in placed}, sort_keys=True)
        out = out.append_column("reasons", pa.array([counts] * out.num_rows))
    if STATS in batch.column_names:
        out = out.append_column("lists", pa.array([ListSums.of(batch[STATS]).to_json()] * out.num_rows))
    if "sponsored_campaign" in batch.column_names:      # sponsored slots: lists and p_click per campaign
        from raymedia.sponsored import batch_counts
        out = out.append_column("sponsored", pa.array([batch_counts(batch)] * out.num_rows))
    return out


def reason_counts(written: Iterable[dict]) -> dict[str, int]:
    """Listed items per ``reason`` over a run's recommendations files ({} without list rules)."""
    total: dict[str, int] = {}
    for w in written:
        if w["table"] == "recommendations" and w.get("reasons"):
            for reason, n in json.loads(w["reasons"]).items():
                total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


def sponsored_counts(written: Iterable[dict]) -> dict[int, list[int]]:
    """Per campaign index: [lists filled, summed p_click in ``sponsored.P_UNITS``] over a
    run's recommendations files ({} without sponsored slots)."""
    total: dict[int, list[int]] = {}
    for w in written:
        if w["table"] == "recommendations" and w.get("sponsored"):
            for c, (n, units) in json.loads(w["sponsored"]).items():
                t = total.setdefault(int(c), [0, 0])
                t[0] += n
                t[1] += units
    return dict(sorted(total.items()))


class RunWriter:
    """Owns one run's directory and its lifecycle; lives on the driver.

    Files are recorded relative to the run directory (``recommendations/part-x.parquet``);
    the manifest names them relative to the day (``run=<id>/recommendations/...``), which
    is all a reader may read. Use::

        w = RunWriter(output_uri, day, run_id, grace)
        w.on_write_start()
        try:
            ... w.record(...), w.write_json(...) ...
            cleanup = w.on_write_complete(w.manifest(...))
        except BaseException as exc:
            w.on_write_failed(exc)      # raises CommitConflict if another run committed
            raise
    """

    def __init__(self, output_uri: str, day: dt.date | str, run_id: str, grace: dt.timedelta,
                 what: str = "output.uri"):
        self.output_uri, self.day, self.grace, self.what = output_uri, storage.day(day), grace, what
        self.run_id = storage.check_run_id(run_id)
        self.day_uri = storage.partition(output_uri, self.day)
        self.run_uri = storage.run_path(output_uri, self.day, run_id)
        self.commit_uri = storage.join(self.day_uri, storage.COMMIT_FILE)
        self.base_generation: int | None = None
        self._files: dict[str, list[str]] = {}
        self._rows: dict[str, int] = {}
        self._beating = ExitStack()

    # -- start ---------------------------------------------------------------------------

    def on_write_start(self) -> None:
        """Before any expensive work: probe the output, read the generation this run
        builds on, announce the run with a heartbeat until it commits or fails."""
        storage.check_writable(self.output_uri, self.what)
        self.base_generation = storage.generation(self.output_uri, self.day)
        try:
            self._beating.enter_context(
                storage.Heartbeat(self.output_uri, self.day, self.run_id, self.base_generation))
        except Exception as exc:
            self.on_write_failed(exc)
            raise

    # -- writes ----------------------------------------------------------------------------

    def record(self, table: str, files: Iterable[str], rows: int | None = None) -> None:
        """Files this run wrote for ``table`` (relative to the run directory), and their rows
        (None: the table has no row count, e.g. a JSON file)."""
        names = self._files.setdefault(table, [])
        for f in files:
            names.append(storage.check_relative(f, f"file of {table}"))
        if rows is not None:
            self._rows[table] = self._rows.get(table, 0) + int(rows)

    def record_writes(self, written: Iterable[dict]) -> None:
        """The rows ``write_part`` / ``write_batch`` returned (``table``, ``file``, ``rows``)."""
        for w in written:
            self.record(w["table"], [w["file"]], w["rows"])

    def record_folder(self, folder: str, rows: int) -> None:
        """Every file under ``run/<folder>/`` (written by content-named side outputs, such as
        rejected rows) as table ``folder``; ``rows`` is counted even when there is no file."""
        prefix = len(self.run_uri) + 1
        files = [u[prefix:] for u in storage.list_files(storage.join(self.run_uri, folder))]
        if files:
            self.record(folder, files)
        self._rows[folder] = self._rows.get(folder, 0) + int(rows)

    def write_json(self, table: str, name: str, obj: Any) -> None:
        """A small JSON file in the run directory, committed as table ``table``."""
        storage.write_json(storage.join(self.run_uri, storage.check_relative(name)), obj)
        self.record(table, [name])

    def write_bytes(self, table: str, name: str, data: bytes) -> None:
        """A small file in the run directory (e.g. report.html), committed as table ``table``."""
        storage.write_bytes(storage.join(self.run_uri, storage.check_relative(name)), data)
        self.record(table, [name])

    @property
    def rows(self) -> dict[str, int]:
        return dict(self._rows)

    # -- complete --------------------------------------------------------------------------

    def manifest(self, model_versions: dict[str, str], input_partitions: list[str], config_hash: str,
                 created_at: str, details: dict) -> storage.Commit:
        """The commit of what was recorded: every file, relative to the day, sorted per table."""
        files = {t: sorted(f"run={self.run_id}/{f}" for f in fs) for t, fs in self._files.items()}
        return storage.Commit(dt=self.day, run_id=self.run_id, files=files, rows=dict(self._rows),
                              model_versions=model_versions, input_partitions=input_partitions,
                              config_hash=config_hash, created_at=created_at, details=details)

    def on_write_complete(self, commit: storage.Commit) -> storage.Cleanup:
        """Remove files a retried batch left behind, stop beating, pass the commit point
        (CommitConflict if another run took this generation), then collect the day's
        finished runs. Nothing after the commit point raises: failures are returned."""
        if self.base_generation is None:
            raise RuntimeError(f"run {self.run_id}: on_write_complete before on_write_start")
        if (commit.dt, commit.run_id) != (self.day, self.run_id):
            raise ValueError(f"commit of dt={commit.dt} run {commit.run_id} given to the writer "
                             f"of dt={self.day} run {self.run_id}")
        self._remove_unlisted(commit)
        self._stop()
        storage.commit(self.output_uri, commit, self.base_generation)
        log.info("dt=%s committed: run %s, generation %d", self.day, self.run_id, self.base_generation + 1)
        try:
            cleanup = storage.collect(self.output_uri, self.day, self.grace)
        except Exception as exc:     # noqa: BLE001 - after the commit point: report, never raise
            cleanup = storage.Cleanup(failed=(f"{storage.redact(self.day_uri)}: {type(exc).__name__}: {exc}",))
        if cleanup.removed:
            log.info("dt=%s: removed %d run(s) that can no longer be read or committed",
                     self.day, len(cleanup.removed))
        for failure in cleanup.failed:
            log.warning("dt=%s: the commit stands, but cleanup failed: %s", self.day, failure)
        return cleanup

    def _remove_unlisted(self, commit: storage.Commit) -> None:
        """Delete files a retried batch left behind, so the run holds exactly what it commits."""
        listed = {storage.join(self.day_uri, f) for fs in commit.files.values() for f in fs}
        for uri in storage.list_files(self.run_uri):
            if uri not in listed:
                log.info("removing unlisted file %s", uri)
                fs, path = storage.resolve(uri)
                fs.delete_file(path)

    # -- failed ----------------------------------------------------------------------------

    def on_write_failed(self, error: BaseException) -> None:
        """Stop beating. A run that finds another run committed the day meanwhile, whatever
        stopped it, can never commit: it removes its own files and raises CommitConflict.
        Otherwise returns, and the caller re-raises ``error``; the files stay for ``collect``."""
        self._stop()
        if not isinstance(error, Exception) or not self._lost_race(error):
            return
        storage.discard(self.output_uri, self.day, self.run_id)     # the losing run removes its own files
        if isinstance(error, storage.CommitConflict):
            return
        raise storage.CommitConflict(
            f"dt={self.day}: another run committed while run {self.run_id} was running; this run "
            f"stopped ({type(error).__name__}: {error}) and published nothing") from error

    def _lost_race(self, error: Exception) -> bool:
        """Did another run commit the day after this one started (so it can never commit)?"""
        if isinstance(error, storage.CommitConflict):
            return True
        if self.base_generation is None:
            return False
        try:
            return storage.generation(self.output_uri, self.day) > self.base_generation
        except Exception:             # noqa: BLE001 - storage down: report the original error
            return False

    def _stop(self) -> None:
        self._beating.close()
