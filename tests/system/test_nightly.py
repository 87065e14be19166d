"""Nightly jobs on consecutive days: incremental user state, new items, cold start, warm start.

Day 1 trains and builds the user state from the whole window; days 2 and 3
read only their newest day of logs plus the state committed the night before.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import small_config
from raymedia import checkpoint, pipeline, schema, storage
from raymedia.data import read
from raymedia.data.vocab import Vocab
from raymedia.features import day_start_us

COLD_USERS = [900_001, 900_002, 900_003]
HEAVY_USERS = [800_001, 800_002, 800_003, 800_004]      # 150 distinct items each, history_len 20


def _cfg(root, *extra):
    return small_config(root, "data.lookback_days=7", "data.history_len=20", "train.epochs=3",
                        "eval.enabled=false", *extra)


def _sorted(table: pa.Table) -> list[dict]:
    return table.sort_by("user_id").to_pylist()


@pytest.fixture(scope="module")
def nights(tmp_path_factory, ray_session):
    from raymedia.data.generate import GeneratorConfig, generate
    root = str(tmp_path_factory.mktemp("nightly"))
    gen = GeneratorConfig(users=600, items=300, days=10, seed=11, categories=8, new_item_fraction=0.15)
    generate(gen, root)
    d1, d2, d3 = (gen.start + dt.timedelta(days=i) for i in (7, 8, 9))
    # three users who only browsed (impressions) on day 2: cold-start users on day 3
    ts = dt.datetime.combine(d2, dt.time(12), dt.timezone.utc)
    pq.write_table(pa.table({
        "user_id": pa.array(COLD_USERS, pa.int64()), "item_id": pa.array([1, 2, 3], pa.int64()),
        "event": ["impression"] * 3, "ts": pa.array([ts] * 3, schema.TS_TYPE),
        "dwell_s": pa.array([None] * 3, pa.float32())}), f"{root}/events/dt={d2}/part-browsers.parquet")
    # four users who played 150 distinct items each, 15 a day over days 0-9 of the world
    items = read.read_catalog(f"{root}/catalog")["item_id"].to_numpy()
    rng = np.random.default_rng(5)
    for u in HEAVY_USERS:
        picks = rng.choice(items, 150, replace=False)
        for i in range(10):
            day = gen.start + dt.timedelta(days=i)
            ts = [dt.datetime.combine(day, dt.time(8, j), dt.timezone.utc) for j in range(15)]
            pq.write_table(pa.table({
                "user_id": pa.array([u] * 15, pa.int64()), "item_id": pa.array(picks[15 * i:15 * i + 15]),
                "event": ["play"] * 15, "ts": pa.array(ts, schema.TS_TYPE),
                "dwell_s": pa.array([60.0] * 15, pa.float32())}), f"{root}/events/dt={day}/part-heavy-{u}.parquet")

    cfg = _cfg(root)
    r1 = pipeline.run_day(cfg, d1)                                   # trains, builds the state
    r2 = pipeline.run_day(cfg, d2, train_models=False)
    hidden = f"{root}/hidden-events"                                 # day 3 may only read dt=d2
    os.makedirs(hidden)
    moved = [p for p in os.listdir(f"{root}/events") if p != f"dt={d2}"]
    for p in moved:
        shutil.move(f"{root}/events/{p}", f"{hidden}/{p}")
    try:
        r3 = pipeline.run_day(cfg, d3, train_models=False)
    finally:
        for p in moved:
            shutil.move(f"{hidden}/{p}", f"{root}/events/{p}")
    return {"root": root, "cfg": cfg, "days": (d1, d2, d3), "runs": (r1, r2, r3)}


def test_days_two_and_three_read_only_their_newest_day_plus_yesterdays_state(nights):
    cfg, (d1, d2, d3) = nights["cfg"], nights["days"]
    c1, c2, c3 = (storage.read_commit(cfg.output.uri, d) for d in (d1, d2, d3))
    assert len(c1.input_partitions) == 7 and c1.details["state"]["mode"] == "rebuild"
    assert c2.input_partitions == [storage.partition(cfg.data.events_uri, d1)]
    assert c3.input_partitions == [storage.partition(cfg.data.events_uri, d2)]
    for c, prev in ((c2, d1), (c3, d2)):
        assert c.details["state"]["mode"] == "incremental"
        assert c.details["state"]["from"].startswith(f"dt={prev}")
        assert c.details["input"]["input_rows"] == pq.ParquetDataset(
            c.input_partitions[0]).read().num_rows                    # exactly one day's rows
    summary = storage.read_json(storage.join(storage.partition(cfg.output.uri, d3),
                                             c3.files["summary"][0]))
    assert summary["counts"]["users_scored"] == c3.rows["recommendations"]
    assert set(summary["seconds"]) >= {"state", "vocabulary", "score"}     # histories stream: no stage


def test_incremental_state_and_outputs_equal_a_rebuild_from_scratch(nights):
    cfg, (_, _, d3) = nights["cfg"], nights["days"]
    rebuild = _cfg(nights["root"], "state.incremental=false", f"output.uri={nights['root']}/rebuilt")
    r = pipeline.run_day(rebuild, d3, train_models=False)
    assert storage.read_commit(rebuild.output.uri, d3).details["state"]["mode"] == "rebuild"
    assert len(storage.read_commit(rebuild.output.uri, d3).input_partitions) == 7
    for table in ("user_state", "recommendations", "predictions"):
        inc = storage.read_committed(cfg.output.uri, d3, table)
        full = storage.read_committed(rebuild.output.uri, d3, table)
        if table == "recommendations":
            inc, full = inc.drop_columns(["generated_at"]), full.drop_columns(["generated_at"])
        assert inc.num_rows == full.num_rows > 300
        assert _sorted(inc) == _sorted(full), table
    assert r.counts["users_scored"] == nights["runs"][2].counts["users_scored"]


def test_nothing_seen_in_the_window_is_recommended_to_users_with_long_histories(nights):
    """Users with 150 distinct items and history_len 20: none of the items they played in the
    look-back window is ever recommended, on the rebuild night and the incremental ones (the
    model input alone would mask only their last 21)."""
    cfg, root = nights["cfg"], nights["root"]
    events = pa.concat_tables([pq.read_table(f"{root}/events/{p}/part-heavy-{u}.parquet")
                               for p in sorted(os.listdir(f"{root}/events")) for u in HEAVY_USERS])
    ts = events["ts"].cast(pa.int64()).to_numpy()
    masked_some = False
    for day in nights["days"]:
        recs = storage.read_committed(cfg.output.uri, day, "recommendations").to_pylist()
        top = {r["user_id"]: r["items"] for r in recs}
        all_recommended = {i for r in recs for i in r["items"]}
        lo, hi = day_start_us(day - dt.timedelta(days=cfg.data.lookback_days)), day_start_us(day)
        for u in HEAVY_USERS:
            mine = events.filter(pa.array((events["user_id"].to_numpy() == u) & (ts >= lo) & (ts < hi)))
            seen = set(mine["item_id"].to_pylist())
            assert len(seen) > 4 * (cfg.data.history_len + 1)
            assert len(top[u]) == cfg.score.top_k and not seen & set(top[u]), (day, u)
            masked_some |= bool(seen & all_recommended)      # items others get, masked for u
    assert masked_some
    st = storage.read_committed(cfg.output.uri, nights["days"][2], "user_state")
    heavy = st.filter(pc.is_in(st["user_id"], pa.array(HEAVY_USERS))).to_pylist()
    assert all(len(r["item_ids"]) == cfg.data.history_len + 1 and len(r["seen_ids"]) > 60 for r in heavy)


def _new_items(cfg, model_uri: str, day: dt.date) -> set:
    """Items published before ``day`` that the model never saw."""
    vocab = Vocab.load(storage.join(model_uri, checkpoint.VOCAB))
    catalog = read.read_catalog(cfg.data.catalog_uri)
    live = catalog.filter(pc.and_(pc.less(pc.cast(catalog["published_at"], pa.int64()), day_start_us(day)),
                                  catalog["available"]))
    ids = live["item_id"]
    return set(ids.filter(pc.equal(pa.array(vocab.lookup(ids)), 0)).to_pylist())


def test_items_newer_than_the_model_are_recommended_the_day_they_appear(nights):
    cfg, (d1, _, d3), (r1, _, r3) = nights["cfg"], nights["days"], nights["runs"]
    new = _new_items(cfg, r1.model_uris["sequence"], d3)
    assert new, "the world must publish items after day 1"
    assert r3.counts["new_items"] >= len(new)
    recs = storage.read_committed(cfg.output.uri, d3, "recommendations")
    recommended = set(pc.list_flatten(recs["items"]).to_pylist())
    assert recommended & new, "no item published since the model was trained was recommended"
    day1 = set(pc.list_flatten(storage.read_committed(cfg.output.uri, d1, "recommendations")["items"])
               .to_pylist())
    assert not day1 & new                               # not yet published on day 1


def test_users_without_history_get_popular_items_and_are_counted(nights):
    cfg, (_, _, d3), (_, _, r3) = nights["cfg"], nights["days"], nights["runs"]
    assert r3.counts["cold_start_users"] == len(COLD_USERS)
    recs = storage.read_committed(cfg.output.uri, d3, "recommendations")
    cold = recs.filter(pc.is_in(recs["user_id"], pa.array(COLD_USERS)))
    assert cold.num_rows == len(COLD_USERS)
    lists = cold["items"].to_pylist()
    assert all(items == lists[0] for items in lists) and len(lists[0]) == cfg.score.top_k
    pop = Vocab.load(storage.join(r3.model_uris["sequence"], checkpoint.VOCAB))
    counts = pop.popularity[pop.lookup(pa.array(lists[0]))]
    assert (np.diff(counts) <= 0).all() and counts.min() >= np.sort(pop.popularity)[-2 * cfg.score.top_k]
    preds = storage.read_committed(cfg.output.uri, d3, "predictions")
    cold_preds = preds.filter(pc.is_in(preds["user_id"], pa.array(COLD_USERS)))
    assert cold_preds["p_return_7d"].null_count == len(COLD_USERS)
    assert cold_preds["n_events"].to_pylist() == [0] * len(COLD_USERS)


def test_warm_start_appends_new_items_and_keeps_the_old_indices(nights):
    cfg, (_, _, d3), (r1, _, _) = nights["cfg"], nights["days"], nights["runs"]
    warm = _cfg(nights["root"], "train.schedule=warm", "train.warm_epochs=1", "eval.enabled=true",
                f"output.uri={nights['root']}/warm")
    r = pipeline.run_day(warm, d3)
    assert r.plan["training"]["start"] == "warm"
    for kind, uri in r.model_uris.items():
        meta = storage.read_json(storage.join(uri, checkpoint.META))
        parent = storage.read_json(storage.join(r1.model_uris[kind], checkpoint.META))
        assert meta["start"] == "warm" and meta["parent"] == parent["version"]
        assert len(meta["history"]) == 1
        old = Vocab.load(storage.join(r1.model_uris[kind], checkpoint.VOCAB))
        new = Vocab.load(storage.join(uri, checkpoint.VOCAB))
        assert new.size > old.size and new.digest(old.size) == old.digest()
        assert new.categories == old.categories
        assert set(new.item_ids.slice(old.size - 1).to_pylist()) >= _new_items(warm, r1.model_uris[kind], d3)
    models = r.metrics["models"]
    # a one-epoch warm start must keep the model well above popularity. Seen: 1.43x on a
    # 2-core AMD EPYC (issue 14; 1.5x was the old bar, so it failed there). Over 3 seeds x
    # 1 and 2 threads (benchmarks/quality_spread.py --worlds nightly, BENCHMARKS.md) the
    # ratio was 1.567-1.804 (mean 1.647): the bar sits 16% below the lowest value of either
    assert models["sequence"]["ndcg@10"] > 1.2 * models["popularity"]["ndcg@10"], models


def test_auto_schedule_warm_starts_until_the_last_full_retrain_is_too_old(nights):
    (d1, _, d3) = nights["days"]
    auto = _cfg(nights["root"], "train.schedule=auto", "train.full_every_days=3")
    plan = pipeline.training_plan(auto, d3)                      # day 1's full retrain is 2 days old
    assert plan.start == "warm" and plan.parent == checkpoint.latest(auto.output.models_uri, "sequence")
    assert pipeline.training_plan(auto, d1 + dt.timedelta(days=3)).start == "full"
    assert pipeline.training_plan(_cfg(nights["root"]), d3).start == "full"   # schedule=full
