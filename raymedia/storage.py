"""Filesystems from URIs, partition paths and the commit protocol.

One place turns a URI into the filesystem every other module uses: fsspec
resolves it (s3://, gs://, file://, memory://, plain paths) and pyarrow gets
a native filesystem for local disk or an fsspec-backed one otherwise, so Ray
Data, pyarrow and torch checkpoints all see the same bytes.

Commit protocol (object storage has no atomic rename): a run writes its files
under ``dt=D/run=<run_id>/`` and then one small ``dt=D/_COMMIT.json`` naming
them. Readers read only what a commit names, so a crashed run is invisible.
Cleanup comes after the commit point and is best effort: a run announces itself
in ``dt=D/_runs/<run_id>.json`` (start, heartbeat, the generation it builds on),
and only runs that can no longer commit or stopped beating are collected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import logging
import re
import threading
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

COMMIT_FILE = "_COMMIT.json"
RUNS_DIR = "_runs"          # dt=D/_runs/<run_id>.json: one marker per run of the day
HEARTBEAT_S = 30.0          # how often a working run refreshes its marker

log = logging.getLogger(__name__)

# Object-store retries: botocore's "standard" mode retries connection errors,
# throttling (SlowDown, 503) and 5xx with jittered exponential backoff; 10
# attempts ride out an outage of about half a minute (the default "legacy" mode
# gives up after ~5 s). Set here, at import, so every process that touches
# storage (the driver and each Ray worker) gets it; the operator's own values win.
RETRY_ENV = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "10"}
for _k, _v in RETRY_ENV.items():
    os.environ.setdefault(_k, _v)


class StorageError(ValueError):
    """A URI or path that raymedia refuses to use (reported as a usage error)."""


class OutputNotWritable(StorageError):
    """The output location cannot be written: found before any expensive work."""


class CorruptCommit(StorageError):
    """A ``_COMMIT.json`` that cannot be read (truncated, not JSON, wrong fields)."""


def redact(uri: str) -> str:
    """The URI with any ``user:password@`` removed, for messages."""
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None and "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def check_uri(uri: str, what: str = "URI") -> str:
    """Refuse URIs that carry credentials (``s3://key:secret@bucket``) or control
    characters. Credentials come only from the standard AWS chain; a secret in a
    URI would end up in logs, commits and exception messages."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"{what} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise StorageError(f"{what} {redact(uri)!r} contains control characters")
    if "://" in uri and "@" in urllib.parse.urlsplit(uri).netloc:
        raise StorageError(f"{what} {redact(uri)} carries credentials (user:password@); "
                           "give them through the standard AWS chain (environment, ~/.aws, "
                           "instance role) instead")
    return uri


def configure(endpoint_url: str | None = None, region: str | None = None) -> dict[str, str]:
    """Export non-secret S3 settings to this process's environment; returns them.

    botocore (and so s3fs and every Ray worker that gets the same variables
    through the job's runtime_env) reads ``AWS_ENDPOINT_URL`` / ``AWS_REGION``
    and the retry policy ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS``; credentials
    stay with the standard AWS chain and are never read or logged here.
    """
    env = {k: os.environ.get(k, v) for k, v in RETRY_ENV.items()}
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    os.environ.update(env)
    return env


def _fsspec(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a URI, without a listings cache: the commit protocol
    lists a day's runs and generations and must see what other processes wrote since
    (a cached listing once left a failed run's files behind after a later commit)."""
    fs, path = fsspec.core.url_to_fs(uri, use_listings_cache=False)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """Absolute local path of a local URI (Ray Train needs one for local storage)."""
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for any fsspec URI (never one with credentials)."""
    check_uri(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    fs, path = _fsspec(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object: a single PUT on object stores, rename-into-place locally."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def list_files(uri: str) -> list[str]:
    """Every file under a directory URI, as URIs, sorted."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = uri.rstrip("/")
    return sorted(join(prefix, i.path[len(path.rstrip("/")):]) for i in infos
                  if i.type == pafs.FileType.File)


def day(d: dt.date | str) -> str:
    """Validated ``YYYY-MM-DD``: partition paths are built only from these.

    A string must be a real calendar date written ``YYYY-MM-DD`` (``2026-02-30``,
    ``../x`` or ``2026-01-01/..`` fail), so no input can add a path component.
    """
    if isinstance(d, dt.datetime):
        d = d.date()
    if isinstance(d, str):
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
            raise StorageError(f"not a date (YYYY-MM-DD): {d!r}")
        try:
            d = dt.date.fromisoformat(d)
        except ValueError as exc:
            raise StorageError(f"not a date (YYYY-MM-DD): {d!r}: {exc}") from None
    if not isinstance(d, dt.date):
        raise StorageError(f"not a date: {d!r}")
    return d.isoformat()


def partition(uri: str, d: dt.date | str) -> str:
    return join(uri, f"dt={day(d)}")


# Run ids and model versions become one path component each: letters, digits,
# '_', '-' (and '.' inside versions); never '/', '..', or an absolute path.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise StorageError(f"invalid run id {run_id!r}: letters, digits, '_' and '-' only "
                           "(at most 64, starting with a letter or digit)")
    return run_id


def check_name(name: str, what: str) -> str:
    """One safe path component (a model version, a model kind)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise StorageError(f"invalid {what} {name!r}: letters, digits, '.', '_' and '-' only, "
                           "starting with a letter or digit")
    return name


def run_path(output_uri: str, d: dt.date | str, run_id: str) -> str:
    """``<output>/dt=D/run=<run_id>``: built only from a validated date and run id."""
    return join(partition(output_uri, d), f"run={check_run_id(run_id)}")


def check_relative(path: str, what: str = "path") -> str:
    """A relative path with no empty, '.' or '..' component (stays under its root)."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise StorageError(f"{what} {path!r} must be a relative path inside its root")
    return path


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable, unique run id: UTC time plus a random suffix."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_writable(uri: str, what: str = "output") -> None:
    """Write and delete a small probe object under ``uri``; OutputNotWritable if that
    fails. Runs before any expensive work, so a bad output location costs seconds.
    The probe sits directly in ``uri``, so no empty folder is left behind."""
    probe = join(uri, f"_probe-{uuid.uuid4().hex}.txt")
    try:
        write_bytes(probe, b"raymedia write probe\n")
        fs, path = resolve(probe)
        fs.delete_file(path)
    except StorageError:
        raise
    except Exception as exc:          # noqa: BLE001 - any storage failure means "cannot write"
        raise OutputNotWritable(f"{what} {redact(uri)} is not writable: {type(exc).__name__}: "
                                f"{exc}; nothing was read or committed") from None


class CommitConflict(RuntimeError):
    """Another run committed the same day while this one was running."""


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write an object only if it does not exist yet; False if it already did.

    Locally: write a temp file, then hard-link it into place (atomic, fails if
    the name exists). On object stores: one PUT with ``If-None-Match: *`` (s3fs
    ``mode="create"``), so of two racing writers exactly one succeeds.
    """
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    ffs, fpath = _fsspec(uri)
    try:
        ffs.pipe_file(fpath, data, mode="create")
        return True
    except FileExistsError:
        return False
    except OSError as exc:      # s3fs reports some servers' 412 as EINVAL: look at the cause
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412"):
            return False
        raise


@dataclass(frozen=True)
class Commit:
    """What a ``_COMMIT.json`` says: the only files readers may read for a day."""

    dt: str
    run_id: str
    files: dict[str, list[str]]   # table -> file paths relative to the day partition
    rows: dict[str, int]
    model_versions: dict[str, str]
    input_partitions: list[str]
    config_hash: str
    created_at: str
    generation: int = 0           # 1, 2, ... one per successful commit of the day
    details: dict = field(default_factory=dict)

    def uris(self, output_uri: str, table: str) -> list[str]:
        return [join(partition(output_uri, self.dt), check_relative(f, f"file of {table}"))
                for f in self.files.get(table, [])]

    def check(self) -> None:
        """Dates, run ids and file names are path components: all must be safe."""
        day(self.dt)
        check_run_id(self.run_id)
        for table, names in self.files.items():
            for f in names:
                check_relative(f, f"file of {table}")
                if not f.startswith(f"run={self.run_id}/"):
                    raise StorageError(f"commit of run {self.run_id} lists {f!r}, "
                                       "which is not one of its own files")


def generation(output_uri: str, d: dt.date | str) -> int:
    """The day's newest commit generation (0 when never committed).

    A run reads it when it starts and commits ``generation + 1``; a run that
    finds that generation already taken lost a race and must not publish.
    """
    names = [u.rsplit("/", 1)[1] for u in list_files(join(partition(output_uri, d), "_commits"))]
    gens = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
    return max(gens, default=0)


def commit(output_uri: str, c: Commit, base_generation: int) -> str:
    """Publish a day's run atomically.

    1. create ``_commits/<base+1>.json`` exclusively: the commit point (raises
       CommitConflict if another run took it);
    2. rewrite ``_COMMIT.json`` (a single PUT / rename) to point readers at it.
    A crash between 1 and 2 leaves readers on the previous, still complete run.
    Removing other runs' files is ``collect``'s job: best effort, after this returns.
    """
    c.check()
    day_uri = partition(output_uri, c.dt)
    c = Commit(**{**c.__dict__, "generation": base_generation + 1})
    blob = json.dumps(c.__dict__, indent=2, sort_keys=True).encode()
    if not create_exclusive(join(day_uri, "_commits", f"{c.generation:08d}.json"), blob):
        raise CommitConflict(
            f"dt={c.dt}: another run committed while run {c.run_id} was running "
            f"(generation {c.generation} is taken); this run's output is not published")
    target = join(day_uri, COMMIT_FILE)
    write_bytes(target, blob)
    return target


@dataclass(frozen=True)
class RunMarker:
    """What ``dt=D/_runs/<run_id>.json`` says about a run that may still be working.

    ``base_generation`` is the day's generation when the run started: once a newer
    one is committed the run can never commit (None: a run that never commits,
    e.g. train only). ``heartbeat_at`` is refreshed every HEARTBEAT_S seconds.
    """
    run_id: str
    base_generation: int | None
    started_at: str
    heartbeat_at: str


def marker_uri(output_uri: str, d: dt.date | str, run_id: str) -> str:
    return join(partition(output_uri, d), RUNS_DIR, f"{check_run_id(run_id)}.json")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Heartbeat:
    """Context manager: writes the run's marker on entry (raising if it cannot: nothing
    has been done yet), refreshes it from a daemon thread, stops refreshing on exit.
    A failed refresh is logged, never raised: the worst case is an early collection."""

    def __init__(self, output_uri: str, d: dt.date | str, run_id: str,
                 base_generation: int | None, every_s: float = HEARTBEAT_S):
        self.uri = marker_uri(output_uri, d, run_id)
        self.started = _now().isoformat()
        self.run_id, self.base, self.every_s = run_id, base_generation, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _write(self) -> None:
        write_json(self.uri, RunMarker(self.run_id, self.base, self.started, _now().isoformat()).__dict__)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._write()
            except Exception as exc:      # noqa: BLE001 - a missed beat must not fail the run
                log.warning("run %s: heartbeat to %s failed: %s", self.run_id, redact(self.uri), exc)

    def __enter__(self) -> "Heartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Cleanup:
    """What a collection did: URIs removed, kept (a run that may still be working),
    and failed (``uri: error``); failures are reported, never raised."""
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def __add__(self, other: "Cleanup") -> "Cleanup":
        return Cleanup(self.removed + other.removed, self.kept + other.kept, self.failed + other.failed)


def _read_marker(uri: str) -> RunMarker | None:
    try:
        return RunMarker(**read_json(uri))
    except Exception:         # noqa: BLE001 - missing or unreadable: judged by file age instead
        return None


def _newest_mtime(uri: str) -> dt.datetime | None:
    """When anything under ``uri`` was last written: its newest file (the directory's own
    time when it holds none)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    infos = (fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if info.type == pafs.FileType.Directory else [])
    times = [i.mtime for i in infos if i.type == pafs.FileType.File and i.mtime is not None] or \
        [t for t in [info.mtime] if t is not None]
    return max((t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc) for t in times), default=None)


def _entries(uri: str) -> dict[str, pafs.FileInfo]:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    return {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(path))}


def _commit_points(day_uri: str) -> tuple[set[str], set[str]] | None:
    """(runs readers may be reading, runs that committed earlier and were replaced):
    the newest commit point's and ``_COMMIT.json``'s runs, then those of older commit
    points. None when the newest commit point cannot be read (then nothing is collected)."""
    names = sorted((n for n in _entries(join(day_uri, "_commits")) if n.endswith(".json") and n[:-5].isdigit()),
                   key=lambda n: int(n[:-5]))
    try:
        runs = [read_json(join(day_uri, "_commits", n))["run_id"] for n in names]
    except Exception:         # noqa: BLE001
        return None
    live = set(runs[-1:])
    try:
        if exists(join(day_uri, COMMIT_FILE)):
            live.add(read_json(join(day_uri, COMMIT_FILE))["run_id"])
    except Exception:         # noqa: BLE001 - a broken pointer: its commit point is kept above
        pass
    return live, set(runs) - live


def collect(output_uri: str, d: dt.date | str, grace: dt.timedelta,
            now: dt.datetime | None = None) -> Cleanup:
    """Delete a day's run directories (and markers) that no reader or run needs, best effort.

    Collected: runs that can no longer commit (they started before the newest
    commit generation: replaced, crashed or losing runs) and runs whose heartbeat
    (or, without a marker, newest file) is older than ``grace``. Kept: the
    committed runs and every run that may still be working. A failed delete is
    logged and returned in ``Cleanup.failed``, never raised.
    """
    day_uri, now = partition(output_uri, d), now or _now()
    try:
        points = _commit_points(day_uri)
        if points is None:
            return Cleanup(failed=(f"{redact(day_uri)}: newest commit point unreadable; nothing collected",))
        (committed, replaced), gen = points, generation(output_uri, d)
        runs = {n[len("run="):] for n in _entries(day_uri) if n.startswith("run=")}
        runs |= {n[:-5] for n in _entries(join(day_uri, RUNS_DIR)) if n.endswith(".json")}
    except Exception as exc:  # noqa: BLE001
        log.warning("cleanup of %s failed: %s", redact(day_uri), exc)
        return Cleanup(failed=(f"{redact(day_uri)}: {type(exc).__name__}: {exc}",))
    removed, kept, failed = [], [], []
    for run_id in sorted(runs - committed):
        if not RUN_ID_RE.fullmatch(run_id):
            continue                   # not a name raymedia writes: never touched
        run_dir = run_path(output_uri, d, run_id)
        try:
            m = _read_marker(marker_uri(output_uri, d, run_id))
            finished = run_id in replaced or (m is not None and m.base_generation is not None
                                              and m.base_generation < gen)
            beat = dt.datetime.fromisoformat(m.heartbeat_at) if m is not None else _newest_mtime(run_dir)
            if not finished and beat is not None and now - beat <= grace:
                kept.append(run_dir)
                continue
        except Exception as exc:  # noqa: BLE001 - best effort: report and go on
            failed.append(f"{redact(run_dir)}: {type(exc).__name__}: {exc}")
            continue
        done = discard(output_uri, d, run_id)
        removed += done.removed
        failed += done.failed
    return Cleanup(tuple(removed), tuple(kept), tuple(failed))


def discard(output_uri: str, d: dt.date | str, run_id: str) -> Cleanup:
    """Remove one run's directory, then its marker; a failure is logged and returned."""
    run_dir, marker = run_path(output_uri, d, run_id), marker_uri(output_uri, d, run_id)
    try:
        delete_dir(run_dir)
        fs, path = resolve(marker)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
        return Cleanup(removed=(run_dir,))
    except Exception as exc:      # noqa: BLE001 - best effort: report and go on
        log.warning("cleanup: could not remove %s: %s: %s", redact(run_dir), type(exc).__name__, exc)
        return Cleanup(failed=(f"{redact(run_dir)}: {type(exc).__name__}: {exc}",))


def gc(output_uri: str, grace: dt.timedelta, now: dt.datetime | None = None) -> Cleanup:
    """``collect`` over every ``dt=D`` partition under ``output_uri`` (orphans of crashes)."""
    total = Cleanup()
    for name, info in sorted(_entries(output_uri).items()):
        if info.type == pafs.FileType.Directory and re.fullmatch(r"dt=\d{4}-\d{2}-\d{2}", name):
            try:
                day(name[3:])
            except StorageError:
                continue
            total = total + collect(output_uri, name[3:], grace, now)
    return total


def read_commit(output_uri: str, d: dt.date | str) -> Commit | None:
    uri = join(partition(output_uri, d), COMMIT_FILE)
    if not exists(uri):
        return None
    try:
        c = Commit(**read_json(uri))
        c.check()
    except (ValueError, TypeError, StorageError) as exc:
        raise CorruptCommit(f"{redact(uri)} is not a readable commit ({type(exc).__name__}: {exc}); "
                            "rerun the day to rewrite it") from None
    return c


def read_committed(output_uri: str, d: dt.date | str, table: str):
    """The committed rows of one output table for one day, as a pyarrow Table."""
    c = read_commit(output_uri, d)
    if c is None:
        raise FileNotFoundError(f"no committed output for dt={day(d)} under {output_uri}")
    uris = c.uris(output_uri, table)
    if not uris:
        raise FileNotFoundError(f"dt={day(d)} has no committed '{table}' "
                                f"(tables: {', '.join(sorted(c.files))})")
    fs, _ = resolve(output_uri)
    return pq.ParquetDataset([resolve(u)[1] for u in uris], filesystem=fs, partitioning=None).read()


def write_parquet(table: pa.Table, uri: str) -> str:
    """Write ``table`` as the Parquet file ``uri``, creating its folder; returns ``uri``.

    The one way raymedia writes Parquet to a URI, so every such write goes through
    ``resolve`` (and its refusal of URIs that carry credentials)."""
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)
    return uri


def write_partitioned(table: pa.Table, uri: str, filename: str, threads: int = 1) -> list[str]:
    """Write a table with a ``dt`` column as ``uri/dt=D/filename``, one file per day present.

    The ``dt`` column becomes the directory (Hive style) and is not stored in the files;
    rows keep their order within a day. ``threads`` writes days in parallel: a multi-year
    log is thousands of days, and the events contract allows no fewer files than one a day.
    """
    table = table.sort_by("dt")
    days = table["dt"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]]) if len(days) else np.array([], int)
    bounds = np.r_[starts, len(days)]
    data = table.drop_columns(["dt"])

    def write(i: int) -> str:
        return write_parquet(data.slice(starts[i], bounds[i + 1] - starts[i]),
                             join(partition(uri, str(days[starts[i]])), filename))

    if threads <= 1:
        return [write(i) for i in range(len(starts))]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(write, range(len(starts))))
