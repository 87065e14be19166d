"""The whole pipeline against a real S3 server (SeaweedFS on loopback): generate ->
train (Ray Train checkpoints on S3) -> score -> commit -> evaluate, the same with a
content catalog, and the commit protocol's exclusive create under a race on S3."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import s3fs

from conftest import small_config
from raymedia import checkpoint, pipeline, storage
from raymedia.data import read
from raymedia.data.generate import GeneratorConfig, generate

ROOT = "s3://raymedia/e2e"


def test_pipeline_end_to_end_on_s3(ray_session, s3):
    gen = GeneratorConfig(users=400, items=150, days=7, seed=3, categories=8)
    generate(gen, ROOT)                                   # Ray tasks write to S3
    day = gen.start + dt.timedelta(days=gen.days)
    cfg = small_config(ROOT, "data.lookback_days=7", "train.epochs=2")
    result = pipeline.run_day(cfg, day)

    fs = s3fs.S3FileSystem()                               # endpoint + keys from the environment
    assert fs.exists(f"raymedia/e2e/scores/dt={day}/_COMMIT.json")
    recs = storage.read_committed(cfg.output.uri, day, "recommendations")
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)) == result.counts["users_scored"] > 300
    for kind in ("two_tower", "sequence"):
        uri = checkpoint.latest(cfg.output.models_uri, kind)
        assert uri.startswith("s3://raymedia/e2e/models/")
        assert checkpoint.load(uri).meta.kind == kind
    assert fs.ls("raymedia/e2e/models/_ray_train")          # Ray Train's own checkpoints on S3
    assert set(result.metrics["models"]) == {"two_tower", "sequence", "popularity", "own_history",
                                             "most_frequent", "item_knn", "als", "ease"}
    commit = storage.read_commit(cfg.output.uri, day)
    assert all(f.startswith(f"run={result.run_id}/") for fs_ in commit.files.values() for f in fs_)
    assert set(storage.list_files(storage.join(storage.partition(cfg.output.uri, day),
                                               f"run={result.run_id}"))) == \
        {u for t in commit.files for u in commit.uris(cfg.output.uri, t)}


def test_a_content_catalog_trains_content_models_and_fills_categories_end_to_end_on_s3(ray_session, s3):
    """The nightly job with a catalog with content columns (the generator's descriptions and
    tags), a fifth of its categories missing, content.enabled=on, everything on S3."""
    root = "s3://raymedia/content"
    gen = GeneratorConfig(users=200, items=150, days=5, seed=5, categories=6)
    generate(gen, root)
    catalog_uri = f"{root}/catalog/catalog.parquet"
    catalog = read.read_catalog(catalog_uri)
    hide = np.arange(catalog.num_rows) % 5 == 2
    truth = np.array(catalog["category"].to_pylist())
    storage.write_parquet(catalog.set_column(2, "category", pa.array(np.where(hide, None, truth).tolist(),
                                                                     pa.string())), catalog_uri)
    day = gen.start + dt.timedelta(days=gen.days)
    cfg = small_config(root, "data.lookback_days=5", "train.epochs=1", "eval.enabled=false",
                       "content.enabled=on", "content.buckets=4096")
    result = pipeline.run_day(cfg, day)

    commit = storage.read_commit(cfg.output.uri, day)
    assert commit.run_id == result.run_id and commit.rows["recommendations"] == result.counts["users_scored"] > 100
    assert set(storage.list_files(storage.join(storage.partition(cfg.output.uri, day),
                                               f"run={result.run_id}"))) == \
        {u for t in commit.files for u in commit.uris(cfg.output.uri, t)}
    for kind in ("two_tower", "sequence"):
        meta = checkpoint.read_meta(result.model_uris[kind])
        assert meta.kwargs["content"] == {"buckets": 4096, "embedding_dim": 0, "id_dropout": 0.5}
    # the missing categories were predicted from the items' words, and the run says how well
    info = commit.details["content"]
    assert info == result.content and info["categories_filled"] == hide.sum()
    assert info["category_held_out"] > 10 and info["category_accuracy"] >= 0.8, info
    vocab = checkpoint.load_vocab(result.model_uris["sequence"])
    names = dict(zip(vocab.item_ids.to_pylist(), vocab.category_names(vocab.item_category[1:]).to_pylist()))
    filled = [names[i] for i in np.array(catalog["item_id"].to_pylist())[hide] if i in names]
    assert filled and "unknown" not in filled
    assert np.mean([names[i] == t for i, t in zip(np.array(catalog["item_id"].to_pylist())[hide],
                                                   truth[hide]) if i in names]) >= 0.8


def test_exclusive_create_on_s3_lets_exactly_one_racer_win(s3):
    uri = "s3://raymedia/race/obj.json"
    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(lambda i: storage.create_exclusive(uri, str(i).encode()), range(6)))
    assert won.count(True) == 1
    assert storage.read_bytes(uri) == str(won.index(True)).encode()


def test_stale_commit_is_refused_on_s3(s3):
    out = "s3://raymedia/commits"
    c = storage.Commit(dt="2026-02-01", run_id="a", files={}, rows={}, model_versions={},
                       input_partitions=[], config_hash="h", created_at="now")
    storage.commit(out, c, base_generation=0)
    with pytest.raises(storage.CommitConflict):
        storage.commit(out, storage.Commit(**{**c.__dict__, "run_id": "b"}), base_generation=0)
    assert storage.read_commit(out, "2026-02-01").run_id == "a"
    assert storage.generation(out, "2026-02-01") == 1


def test_wrong_credentials_fail_clearly(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.ls("raymedia/e2e")
