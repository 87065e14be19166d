"""A model's metadata (``checkpoint.ModelMeta``): built once, written as model.json with the
keys checkpoints have always had, read back the same, old checkpoints included."""

import dataclasses
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymedia import checkpoint, config, models
from raymedia.checkpoint import ModelMeta
from raymedia.data.vocab import Vocab

# the keys train.py wrote before ModelMeta existed (readers outside raymedia may rely on them)
TRAINED_KEYS = {"kind", "version", "kwargs", "max_len", "vocab_digest", "trained_asof", "config_hash",
                "start", "parent", "full_asof", "history", "best_epoch", "stopped_early"}


def _vocab() -> Vocab:
    return Vocab(pa.array(np.arange(1, 31)), np.concatenate([[0], np.arange(30) % 3 + 1]),
                 ["a", "b", "c"], np.concatenate([[0], np.arange(30)]).astype(float))


def _cfg(*extra):
    return config.load(None, ["data.history_len=12", *extra])


def test_a_trained_models_meta_round_trips_through_model_json():
    vocab = _vocab()
    meta = ModelMeta.new("sequence", "20260110-r1", _cfg(), vocab, dt.date(2026, 1, 10))
    meta = dataclasses.replace(meta, history=({"epoch": 0, "loss": 2.5, "val_ndcg": 0.1},),
                               best_epoch=0, stopped_early=True)
    data = json.loads(json.dumps(meta.to_json()))
    assert set(data) == TRAINED_KEYS
    assert data["trained_asof"] == data["full_asof"] == "2026-01-10" and data["start"] == "full"
    assert data["max_len"] == 12 and data["vocab_digest"] == vocab.digest()
    assert data["kwargs"] == models.model_kwargs("sequence", _cfg())
    assert ModelMeta.from_json(data) == meta


def test_checkpoints_written_before_model_meta_still_read():
    old_full = {"kind": "two_tower", "version": "v1", "kwargs": {"dim": 8}, "max_len": 12,
                "vocab_digest": "abc", "trained_asof": "2026-01-05", "config_hash": "h",
                "start": "full", "parent": None, "history": [{"epoch": 0, "loss": 1.0}],
                "best_epoch": 0, "stopped_early": False}          # no full_asof: older than it
    m = ModelMeta.from_json(old_full)
    assert m.full_asof == "2026-01-05" and m.history == ({"epoch": 0, "loss": 1.0},)
    bench = {"kind": "sequence", "version": "bench", "kwargs": {}, "max_len": 12,
             "vocab_digest": "abc", "history": []}                 # random models of the benchmarks
    m = ModelMeta.from_json(bench)
    assert m.trained_asof is None and m.full_asof is None and m.start == "full"


def test_a_warm_start_keeps_its_full_retrains_day_and_refuses_another_shape():
    vocab = _vocab()
    parent = ModelMeta.new("sequence", "v1", _cfg(), vocab, dt.date(2026, 1, 5))
    parent = dataclasses.replace(parent, start="warm", full_asof="2026-01-01")
    warm = ModelMeta.new("sequence", "v2", _cfg(), vocab, dt.date(2026, 1, 6), parent)
    assert (warm.start, warm.parent, warm.full_asof, warm.trained_asof) == ("warm", "v1", "2026-01-01",
                                                                           "2026-01-06")
    with pytest.raises(ValueError, match="cannot warm-start sequence from v1: its shape"):
        ModelMeta.new("sequence", "v2", _cfg("sequence.dim=32", "sequence.heads=2"), vocab,
                      dt.date(2026, 1, 6), parent)


def test_a_saved_checkpoint_reads_back_its_meta(tmp_path):
    vocab, cfg = _vocab(), _cfg()
    model = models.build("two_tower", models.model_kwargs("two_tower", cfg), vocab.size,
                         vocab.num_categories, 12, torch.as_tensor(vocab.item_category))
    meta = ModelMeta.new("two_tower", "v1", cfg, vocab, dt.date(2026, 1, 10))
    checkpoint.save_dir(str(tmp_path), model, meta, vocab)
    assert checkpoint.read_meta(str(tmp_path)) == meta
    assert set(json.loads((tmp_path / checkpoint.META).read_text())) == TRAINED_KEYS
