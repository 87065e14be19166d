"""Model checkpoints on any storage: weights, metadata and vocabulary, no pickle.

A checkpoint directory holds ``model.pt`` (a state dict of tensors, loaded with
``torch.load(weights_only=True)``), ``model.json`` (kind, constructor args,
sizes, metrics) and ``vocab.parquet``. Published models live under
``<models_uri>/<kind>/<version>/`` with ``<kind>/LATEST.json`` naming the newest.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch

from raymedia import models, storage
from raymedia.data.vocab import Vocab

WEIGHTS, META, VOCAB = "model.pt", "model.json", "vocab.parquet"


def save_dir(path: str, model: torch.nn.Module, meta: dict, vocab: Vocab, extra: dict | None = None) -> None:
    """Write a checkpoint into a local directory (Ray Train then persists it)."""
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if extra:
        state.update({f"__{k}": v for k, v in extra.items()})
    torch.save(state, os.path.join(path, WEIGHTS))
    with open(os.path.join(path, META), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    vocab.save(os.path.join(path, VOCAB))


@dataclass
class Loaded:
    model: torch.nn.Module
    meta: dict
    vocab: Vocab


def load_state(uri: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(storage.read_bytes(storage.join(uri, WEIGHTS))),
                      map_location=device, weights_only=True)


def load(uri: str, device: str = "cpu") -> Loaded:
    meta = storage.read_json(storage.join(uri, META))
    vocab = Vocab.load(storage.join(uri, VOCAB))
    state = {k: v for k, v in load_state(uri, device).items() if not k.startswith("__")}
    model = models.build(meta["kind"], meta["kwargs"], vocab.size, vocab.num_categories,
                         meta["max_len"], torch.as_tensor(vocab.item_category))
    model.load_state_dict(state)
    return Loaded(model.to(device).eval(), meta, vocab)


def publish(src_dir_uri: str, models_uri: str, kind: str, version: str) -> str:
    """Copy a finished checkpoint into the model registry and point LATEST at it."""
    dst = storage.join(models_uri, kind, version)
    src_fs, src_path = storage.resolve(src_dir_uri)
    dst_fs, dst_path = storage.resolve(dst)
    dst_fs.create_dir(dst_path, recursive=True)
    for name in (WEIGHTS, META, VOCAB):
        pafs.copy_files(f"{src_path}/{name}", f"{dst_path}/{name}",
                        source_filesystem=src_fs, destination_filesystem=dst_fs)
    storage.write_json(storage.join(models_uri, kind, "LATEST.json"), {"version": version})
    return dst


def latest(models_uri: str, kind: str) -> str:
    """URI of the newest published model of a kind."""
    pointer = storage.join(models_uri, kind, "LATEST.json")
    if not storage.exists(pointer):
        raise FileNotFoundError(f"no published {kind} model under {models_uri} (train one first)")
    return storage.join(models_uri, kind, storage.read_json(pointer)["version"])


def version_uri(models_uri: str, kind: str, version: str) -> str:
    uri = storage.join(models_uri, kind, version)
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
            meta = storage.read_json(uri)
            if meta.get("trained_asof", "9999") <= day:
                found.append((meta["trained_asof"], meta["version"], uri.rsplit("/", 1)[0]))
    if not found:
        raise FileNotFoundError(f"no {kind} model under {models_uri} was trained before dt={day}; "
                                "name one with --model-version or retrain with --train")
    return max(found)[2]
