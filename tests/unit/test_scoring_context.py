"""The scoring context carries its content tokens, made once per run on the driver, and
the actors that load the models never read the catalog themselves (issue 17)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymedia import checkpoint, config, models, schema
from raymedia.data.vocab import Vocab
from raymedia.inference import LoadedModels, ScoringContext
from raymedia.models.content import catalog_tokens

ASOF = "2026-01-20"


def _vocab() -> Vocab:
    return Vocab(pa.array(np.arange(1, 21)), np.concatenate([[0], np.arange(20) % 2 + 1]),
                 ["news", "sport"], np.concatenate([[0], np.arange(20)]).astype(float))


def _publish(root: str, vocab: Vocab, content: dict | None, version: str = "v1") -> dict[str, str]:
    cfg = config.load(None, [f"output.models_uri={root}/models", "data.history_len=6",
                             "two_tower.dim=8", "sequence.dim=8"])
    uris = {}
    for kind in models.KINDS:
        meta = checkpoint.ModelMeta.new(kind, version, cfg, vocab, content=content)
        model = models.build(kind, meta.kwargs, vocab.size, vocab.num_categories, 6,
                             torch.as_tensor(vocab.item_category))
        checkpoint.save_dir(f"{root}/staging-{version}-{kind}", model, meta, vocab)
        uris[kind] = checkpoint.publish(f"{root}/staging-{version}-{kind}", cfg.output.models_uri, kind, version)
    return uris


def _catalog(path) -> str:
    ids = np.arange(1, 21)
    pq.write_table(schema.conform_catalog(pa.table({
        "item_id": ids, "title": [f"story {i}" for i in ids], "category": ["news", "sport"] * 10,
        "description": [f"about {'politics' if i % 2 else 'football'}" for i in ids]})), path)
    return str(path)


def test_id_only_models_get_no_tokens_and_no_catalog_read(tmp_path):
    uris = _publish(str(tmp_path), _vocab(), None)
    ctx = ScoringContext.build(uris, ASOF, None, str(tmp_path / "no-such-catalog"))
    assert ctx.content is None and ctx.vocab is None


def test_content_models_get_the_vocabularys_tokens_made_once_on_the_driver(tmp_path):
    vocab, catalog_uri = _vocab(), _catalog(tmp_path / "catalog.parquet")
    uris = _publish(str(tmp_path), vocab, {"buckets": 256, "embedding_dim": 0, "id_dropout": 0.5})
    ctx = ScoringContext.build(uris, ASOF, None, catalog_uri)      # the models' own vocabulary
    want = catalog_tokens(pq.read_table(catalog_uri), vocab.item_ids, 256)
    assert ctx.vocab.digest() == vocab.digest() and ctx.content.buckets == 256
    assert np.array_equal(ctx.content.ids, want.ids) and np.array_equal(ctx.content.offsets, want.offsets)
    assert ctx.content.has_content[1:].all()
    # the run's own tokens are handed on as they are when hashed as the models were ...
    assert ScoringContext.build(uris, ASOF, vocab, "unread", want).content is want
    # ... and made again from the catalog when not (a run with other content.buckets)
    other = catalog_tokens(pq.read_table(catalog_uri), vocab.item_ids, 64)
    assert ScoringContext.build(uris, ASOF, vocab, catalog_uri, other).content.buckets == 256
    # an actor given a context without them refuses, rather than read the catalog itself
    cfg = config.load(None, ["data.history_len=6"])
    with pytest.raises(ValueError, match="carries no content tokens"):
        LoadedModels(ScoringContext(uris, ASOF, vocab), cfg)
    loaded = LoadedModels(ctx, cfg)
    assert all(m.model.item_content.cached is not None for m in loaded.models.values())


def test_models_hashing_content_differently_cannot_share_a_context(tmp_path):
    vocab = _vocab()
    a = _publish(str(tmp_path), vocab, {"buckets": 256, "embedding_dim": 0, "id_dropout": 0.5}, "a")
    b = _publish(str(tmp_path), vocab, {"buckets": 128, "embedding_dim": 0, "id_dropout": 0.5}, "b")
    with pytest.raises(ValueError, match=r"different numbers of rows \[128, 256\]"):
        ScoringContext.build({"two_tower": a["two_tower"], "sequence": b["sequence"]}, ASOF, vocab,
                             _catalog(tmp_path / "catalog.parquet"))
