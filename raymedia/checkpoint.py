"""Model checkpoints on any storage: weights, metadata and vocabulary, no pickle.

A checkpoint directory holds ``model.pt`` (a state dict of tensors, loaded with
``torch.load(weights_only=True)``), ``model.json`` (kind, constructor args,
sizes, metrics) and ``vocab.parquet``. Published models live under
``<models_uri>/<kind>/<version>/`` with ``<kind>/LATEST.json`` naming the newest.

Tamper evidence: ``publish`` records the sha256 of every file of a version in a
registry record *outside* the version's directory,
``<models_uri>/<kind>/_versions/<version>.json`` (and in LATEST.json). ``load``
hashes the exact bytes it is about to deserialise and refuses a checkpoint
whose files differ from the record (TamperedCheckpoint names the file), or that
has no record at all. Each day's ``_COMMIT.json`` also lists the sha256 of the
models that scored it, so a later swap of a model is visible in every commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raymedia import models, storage
from raymedia.data.vocab import Vocab

if TYPE_CHECKING:
    from raymedia.config import Config

WEIGHTS, META, VOCAB = "model.pt", "model.json", "vocab.parquet"
FILES = (WEIGHTS, META, VOCAB)
REGISTRY = "_versions"


@dataclass(frozen=True)
class ModelMeta:
    """A model's ``model.json``: what it is, what it was trained on, how training went.

    Built once per training run (``new``), read back with ``from_json``; the JSON keys are
    the field names, so checkpoints written before this class load unchanged (a missing
    ``full_asof`` is the model's own ``trained_asof``: it was a full retrain).
    """
    kind: str
    version: str
    kwargs: dict                    # constructor arguments (``models.model_kwargs``)
    max_len: int                    # the history length it reads
    vocab_digest: str
    trained_asof: str | None = None     # the day it was trained for (None: not trained, a benchmark's)
    full_asof: str | None = None        # trained_asof of the full retrain its warm starts began from
    config_hash: str | None = None
    start: str = "full"                 # "full" | "warm"
    parent: str | None = None           # the version it warm-started from
    history: tuple[dict, ...] = ()      # one entry per epoch (loss, validation NDCG, seconds, ...)
    best_epoch: int | None = None
    stopped_early: bool = False

    @classmethod
    def new(cls, kind: str, version: str, cfg: Config, vocab: Vocab, asof: dt.date | None = None,
            parent: ModelMeta | None = None, content: dict | None = None) -> ModelMeta:
        """The metadata of a model about to be trained (or, without ``asof``, a random one);
        with ``parent`` it warm-starts from that model and keeps its full retrain's day;
        ``content``: its content path (``models.content.spec_for``), None for none."""
        day = asof.isoformat() if asof else None
        kwargs = models.model_kwargs(kind, cfg) | ({"content": content} if content else {})
        meta = cls(kind, version, kwargs, cfg.data.history_len, vocab.digest(),
                   trained_asof=day, full_asof=day, config_hash=cfg.hash())
        if parent is None:
            return meta
        if (parent.kwargs, parent.max_len) != (meta.kwargs, meta.max_len):
            raise ValueError(f"cannot warm-start {kind} from {parent.version}: its shape "
                             f"{parent.kwargs} (max_len {parent.max_len}) differs from the config's; "
                             "run a full retrain (train.schedule=full)")
        return dataclasses.replace(meta, start="warm", parent=parent.version, full_asof=parent.full_asof)

    @classmethod
    def from_json(cls, data: dict) -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        return dataclasses.replace(meta, history=tuple(meta.history),
                                   full_asof=meta.full_asof or meta.trained_asof)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "history": list(self.history)}


def read_meta(uri: str) -> ModelMeta:
    """The metadata of a model directory (published or a local checkpoint), unverified:
    for decisions about a model (which to use, how to train), not to load it (``load``)."""
    return ModelMeta.from_json(storage.read_json(storage.join(uri, META)))


class TamperedCheckpoint(ValueError):
    """A published checkpoint's files do not match its registry record."""


def _split(uri: str) -> tuple[str, str, str]:
    """(models_uri, kind, version) of a published model URI ``<models>/<kind>/<version>``."""
    root_kind, version = uri.rstrip("/").rsplit("/", 1)
    root, kind = root_kind.rsplit("/", 1)
    storage.check_name(kind, "model kind")
    storage.check_name(version, "model version")
    return root, kind, version


def record_uri(models_uri: str, kind: str, version: str) -> str:
    """Where the registry record (sha256 of each file) of a published version lives."""
    return storage.join(models_uri, storage.check_name(kind, "model kind"), REGISTRY,
                        f"{storage.check_name(version, 'model version')}.json")


def read_verified(uri: str) -> dict[str, bytes]:
    """The bytes of every file of a published model, checked against its registry record.

    Raises TamperedCheckpoint naming the file when a file's sha256 differs from
    the one recorded at publish time, or when the version has no record.
    """
    root, kind, version = _split(uri)
    rec_uri = record_uri(root, kind, version)
    if not storage.exists(rec_uri):
        raise TamperedCheckpoint(f"{uri}: no registry record {rec_uri}; only models published "
                                 "by raymedia (with a sha256 per file) are loaded")
    record = storage.read_json(rec_uri)
    data = {}
    for name in FILES:
        blob = storage.read_bytes(storage.join(uri, name))
        want = record.get("sha256", {}).get(name)
        got = storage.sha256(blob)
        if got != want:
            raise TamperedCheckpoint(
                f"{storage.join(uri, name)} has sha256 {got}, but {rec_uri} recorded {want} at "
                "publish time: the checkpoint was modified after it was published; refusing to load it")
        data[name] = blob
    return data


def verify(uri: str) -> dict:
    """Check a published model against its registry record; returns
    ``{"version", "sha256": {file: digest}}`` (what a commit records)."""
    read_verified(uri)
    root, kind, version = _split(uri)
    record = storage.read_json(record_uri(root, kind, version))
    return {"version": version, "sha256": record["sha256"]}


def save_dir(path: str, model: torch.nn.Module, meta: ModelMeta, vocab: Vocab,
             extra: dict | None = None) -> None:
    """Write a checkpoint into a local directory (Ray Train then persists it)."""
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if extra:
        state.update({f"__{k}": v for k, v in extra.items()})
    torch.save(state, os.path.join(path, WEIGHTS))
    with open(os.path.join(path, META), "w") as f:
        json.dump(meta.to_json(), f, indent=2, sort_keys=True)
    vocab.save(os.path.join(path, VOCAB))


@dataclass
class Loaded:
    model: torch.nn.Module
    meta: ModelMeta
    vocab: Vocab


def _state(blob: bytes, device: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)


def _vocab(blob: bytes) -> Vocab:
    return Vocab.from_table(pq.read_table(pa.BufferReader(blob)))


def load_vocab(uri: str) -> Vocab:
    """The verified vocabulary of a published model."""
    return _vocab(read_verified(uri)[VOCAB])


def load(uri: str, device: str = "cpu") -> Loaded:
    """A published model, its metadata and vocabulary, each file verified against the
    registry record before it is deserialised (weights with ``weights_only=True``)."""
    files = read_verified(uri)
    meta = ModelMeta.from_json(json.loads(files[META]))
    vocab = _vocab(files[VOCAB])
    state = {k: v for k, v in _state(files[WEIGHTS], device).items() if not k.startswith("__")}
    model = models.build(meta.kind, meta.kwargs, vocab.size, vocab.num_categories,
                         meta.max_len, torch.as_tensor(vocab.item_category))
    model.load_state_dict(state)
    return Loaded(model.to(device).eval(), meta, vocab)


def publish(src_dir_uri: str, models_uri: str, kind: str, version: str) -> str:
    """Copy a finished checkpoint into the model registry and point LATEST at it.

    Each file is read once, hashed and written from the same bytes; the hashes go
    into the version's registry record, written after the files and before LATEST.
    """
    dst = storage.join(models_uri, storage.check_name(kind, "model kind"),
                       storage.check_name(version, "model version"))
    digests = {}
    for name in FILES:
        blob = storage.read_bytes(storage.join(src_dir_uri, name))
        storage.write_bytes(storage.join(dst, name), blob)
        digests[name] = storage.sha256(blob)
    record = {"kind": kind, "version": version, "sha256": digests,
              "published_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    storage.write_json(record_uri(models_uri, kind, version), record)
    storage.write_json(storage.join(models_uri, kind, "LATEST.json"),
                       {"version": version, "sha256": digests})
    return dst


def latest(models_uri: str, kind: str) -> str:
    """URI of the newest published model of a kind."""
    pointer = storage.join(models_uri, storage.check_name(kind, "model kind"), "LATEST.json")
    if not storage.exists(pointer):
        raise FileNotFoundError(f"no published {kind} model under {models_uri} (train one first)")
    version = storage.read_json(pointer).get("version")
    return storage.join(models_uri, kind, storage.check_name(version, f"model version in {pointer}"))


def version_uri(models_uri: str, kind: str, version: str) -> str:
    uri = storage.join(models_uri, storage.check_name(kind, "model kind"),
                       storage.check_name(version, "model version"))
    if not storage.exists(storage.join(uri, META)):
        raise FileNotFoundError(f"no {kind} model version {version!r} under {models_uri}")
    return uri


def as_of(models_uri: str, kind: str, day: str) -> str:
    """The newest published model of a kind trained on data before ``day`` (point in time).

    A backfill of day D must not use a model that saw events after D.
    """
    found = []
    for uri in storage.list_files(storage.join(models_uri, kind)):
        if uri.endswith("/" + META):
            meta = read_meta(uri.rsplit("/", 1)[0])
            if meta.trained_asof is not None and meta.trained_asof <= day:
                found.append((meta.trained_asof, meta.version, uri.rsplit("/", 1)[0]))
    if not found:
        raise FileNotFoundError(f"no {kind} model under {models_uri} was trained before dt={day}; "
                                "name one with --model-version or retrain with --train")
    return max(found)[2]
