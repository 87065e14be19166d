"""Filesystems from URIs, partition paths and the commit protocol.

One place turns a URI into the filesystem every other module uses: fsspec
resolves it (s3://, gs://, file://, memory://, plain paths) and pyarrow gets
a native filesystem for local disk or an fsspec-backed one otherwise, so Ray
Data, pyarrow and torch checkpoints all see the same bytes.

Commit protocol (object storage has no atomic rename): a run writes its files
under ``dt=D/run=<run_id>/`` and then one small ``dt=D/_COMMIT.json`` naming
them. Readers read only what a commit names, so a crashed run is invisible.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq

COMMIT_FILE = "_COMMIT.json"


def _fsspec(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """Absolute local path of a local URI (Ray Train needs one for local storage)."""
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for any fsspec URI."""
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
    """Validated ``YYYY-MM-DD``: partition paths are built only from these."""
    if isinstance(d, str):
        d = dt.date.fromisoformat(d)
    return d.isoformat()


def partition(uri: str, d: dt.date | str) -> str:
    return join(uri, f"dt={day(d)}")


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable, unique run id: UTC time plus a random suffix."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


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

    def uris(self, output_uri: str, table: str) -> list[str]:
        return [join(partition(output_uri, self.dt), f) for f in self.files.get(table, [])]


def commit(output_uri: str, c: Commit) -> str:
    """Publish a day's run, then remove the files of any run it replaces."""
    day_uri = partition(output_uri, c.dt)
    previous = read_commit(output_uri, c.dt)
    target = join(day_uri, COMMIT_FILE)
    write_json(target, c.__dict__)
    if previous is not None and previous.run_id != c.run_id:
        delete_dir(join(day_uri, f"run={previous.run_id}"))
    return target


def read_commit(output_uri: str, d: dt.date | str) -> Commit | None:
    uri = join(partition(output_uri, d), COMMIT_FILE)
    if not exists(uri):
        return None
    return Commit(**read_json(uri))


def read_committed(output_uri: str, d: dt.date | str, table: str):
    """The committed rows of one output table for one day, as a pyarrow Table."""
    c = read_commit(output_uri, d)
    if c is None:
        raise FileNotFoundError(f"no committed output for dt={day(d)} under {output_uri}")
    uris = c.uris(output_uri, table)
    fs, _ = resolve(output_uri)
    return pq.ParquetDataset([resolve(u)[1] for u in uris], filesystem=fs).read()
