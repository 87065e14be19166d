"""End to end on a real local Ray and real Parquet files: generate -> train ->
score -> commit -> evaluate, and what a user of the outputs would check."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from raymedia import checkpoint, features, pipeline, ranking, storage
from raymedia.inference import ScoringContext
from raymedia.score import HeapTrimmer, Scorer


def _events(root):
    return pads.dataset(f"{root}/events", partitioning="hive").to_table()


def test_scores_one_row_per_active_user_with_k_distinct_unseen_items(trained_run):
    cfg, res, root = trained_run["cfg"], trained_run["result"], trained_run["root"]
    recs = storage.read_committed(cfg.output.uri, res.dt, "recommendations")
    events = _events(root)
    engaged = events.filter(pc.not_equal(events["event"], "impression"))
    active = set(engaged["user_id"].to_pylist())
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)) == len(active)
    assert set(users) == active
    seen: dict[int, set] = {}
    for u, i in zip(engaged["user_id"].to_pylist(), engaged["item_id"].to_pylist()):
        seen.setdefault(u, set()).add(i)
    preds = storage.read_committed(cfg.output.uri, res.dt, "predictions")
    n_events = dict(zip(preds["user_id"].to_pylist(), preds["n_events"].to_pylist()))
    longer = 0
    for u, items, scores in zip(users, recs["items"].to_pylist(), recs["scores"].to_pylist()):
        assert len(items) == cfg.score.top_k == len(set(items))
        assert scores == sorted(scores, reverse=True)
        assert not set(items) & seen[u]           # the whole window, not only the model input
        longer += n_events[u] > cfg.data.history_len + 1
    assert longer > 0                             # some histories are longer than the model input
    assert recs.schema.field("items").type.value_type == events.schema.field("item_id").type
    assert sorted(preds["user_id"].to_pylist()) == sorted(users)
    p = preds["p_return_7d"].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and p.std() > 0.01


def test_commit_manifest_lists_exactly_the_files_written(trained_run):
    cfg, res = trained_run["cfg"], trained_run["result"]
    commit = storage.read_commit(cfg.output.uri, res.dt)
    assert commit.run_id == res.run_id and commit.config_hash == cfg.hash()
    listed = {u for table in commit.files for u in commit.uris(cfg.output.uri, table)}
    run_dir = storage.join(storage.partition(cfg.output.uri, res.dt), f"run={res.run_id}")
    assert set(storage.list_files(run_dir)) == listed
    for table in ("recommendations", "predictions"):
        rows = sum(pq.read_metadata(storage.local_path(u)).num_rows
                   for u in commit.uris(cfg.output.uri, table))
        assert rows == commit.rows[table] == res.counts["users_scored"]
    assert len(commit.input_partitions) == cfg.data.lookback_days
    assert set(commit.model_versions) == {"two_tower", "sequence"}


def test_models_beat_popularity_widely(trained_run):
    models = trained_run["result"].metrics["models"]
    pop, tt, seq = (models[m]["ndcg@10"] for m in ("popularity", "two_tower", "sequence"))
    # an untrained model ranks at chance (~10/400 HR, far below popularity); both models see
    # the order that the series structure needs (the two-tower through its last item), which
    # tests/system/test_model_contract.py checks on a world where only the order tells the answer
    assert tt > 2.0 * pop, models
    assert seq > 2.0 * pop, models
    ret = trained_run["result"].metrics["return"]
    # measured on the fifth of users held out of the return head's training (small world)
    assert ret["users"] > 100 and ret["auc"] > 0.6, ret


def test_training_reduces_loss_and_checkpoints_load_without_pickle(trained_run):
    for kind, uri in trained_run["result"].model_uris.items():
        meta = storage.read_json(storage.join(uri, checkpoint.META))
        losses = [h["loss"] for h in meta["history"]]
        assert len(losses) == trained_run["cfg"].train.epochs
        untrained = meta["history"][0]["first_batch_loss"]
        assert losses[-1] < 0.85 * untrained and losses[-1] < losses[0], (kind, untrained, losses)
        state = torch.load(storage.local_path(storage.join(uri, checkpoint.WEIGHTS)), weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        loaded = checkpoint.load(uri)
        assert loaded.meta.kind == kind and loaded.vocab.size == meta_vocab_size(uri)
        assert "content" not in meta["kwargs"] and loaded.model.item_content is None   # content.enabled=off
        assert checkpoint.latest(trained_run["cfg"].output.models_uri, kind) == uri


def meta_vocab_size(uri):
    return pq.read_metadata(storage.local_path(storage.join(uri, checkpoint.VOCAB))).num_rows + 1


def test_metrics_describe_the_committed_lists(trained_run):
    """metrics.json's ``lists`` (raymedia/lists.py) against the written Parquet and the catalog,
    recomputed here; and the run's report.html shows them. Before the rescoring test below,
    which commits the day again without evaluation."""
    from raymedia import metrics as mt
    cfg, res = trained_run["cfg"], trained_run["result"]
    lists = res.metrics["lists"]
    recs = storage.read_committed(cfg.output.uri, res.dt, "recommendations")
    listed = [i for items in recs["items"].to_pylist() for i in items]
    catalog = pq.read_table(cfg.data.catalog_uri)
    day_us = features.day_start_us(res.dt)
    published = pc.cast(catalog["published_at"], pa.int64()).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(catalog["available"], True).to_numpy(zero_copy_only=False) & ~(published >= day_us)
    assert lists["users"] == recs.num_rows == res.counts["users_scored"]
    assert lists["listed_items"] == len(listed) and lists["mean_length"] == cfg.score.top_k
    assert lists["distinct_items"] == len(set(listed)) and lists["catalog_items"] == int(ok.sum())
    assert lists["coverage"] == round(len(set(listed)) / int(ok.sum()), 6) and 0 < lists["coverage"] < 1
    # category diversity and ages from the catalog itself (codes of its category names)
    ids = catalog["item_id"].to_pylist()
    row_of = {i: r for r, i in enumerate(ids)}
    top = np.array([[row_of[i] + 1 for i in items] for items in recs["items"].to_pylist()])
    names = sorted({c for c in catalog["category"].to_pylist() if c})
    code = np.array([0] + [names.index(c) + 1 if c else 0 for c in catalog["category"].to_pylist()])
    assert lists["category_diversity"] == pytest.approx(mt.category_diversity(top, code), abs=1e-6)
    assert lists["distinct_categories"] == pytest.approx(mt.distinct_categories(top, code), abs=1e-6)
    assert 0 < lists["category_diversity"] < 1 and 1 <= lists["distinct_categories"] <= cfg.score.top_k
    age = np.concatenate([[np.nan], np.where(np.isnan(published.astype(float)), np.nan,
                                             (day_us - published.astype(float)) / 86_400e6)])
    f = mt.freshness(top, age)
    assert lists["dated_items"] == f["dated_items"] > 0
    assert lists["mean_age_days"] == pytest.approx(f["mean_age_days"], abs=1e-6)
    assert lists["median_age_days"] == pytest.approx(f["median_age_days"], abs=1e-6)
    assert 0 < lists["embedding_diversity"] < 2 and lists["embedding_model"] == cfg.score.recommender
    assert lists["novelty_bits"] > 0 and 0 <= lists["new_item_share"] < 1 and lists["rule_hits"] == {}
    commit = storage.read_commit(cfg.output.uri, res.dt)
    assert commit.run_id == res.run_id
    assert commit.files["metrics"] == [f"run={res.run_id}/metrics.json", f"run={res.run_id}/report.html"]
    html = storage.read_bytes(commit.uris(cfg.output.uri, "metrics")[1]).decode()
    assert 'data-table="lists"' in html and "mean list length" in html
    for ranker in ("sequence", "two_tower"):       # beyond accuracy in the evaluation, too
        m = res.metrics["models"][ranker]
        assert m["novelty_bits"] > res.metrics["models"]["popularity"]["novelty_bits"]
        assert 0 <= m["serendipity"] <= m["hr@10"] and 0 < m["category_diversity"] < 1


def test_rescoring_is_deterministic_and_replaces_the_previous_run(trained_run):
    cfg, res = trained_run["cfg"], trained_run["result"]
    cfg.eval.enabled = False
    try:
        first = pipeline.run_day(cfg, trained_run["day"], train_models=False)
        a = storage.read_committed(cfg.output.uri, res.dt, "recommendations").sort_by("user_id")
        second = pipeline.run_day(cfg, trained_run["day"], train_models=False)
        b = storage.read_committed(cfg.output.uri, res.dt, "recommendations").sort_by("user_id")
    finally:
        cfg.eval.enabled = True
    assert first.run_id != second.run_id
    for col in ("user_id", "items", "scores", "model_version"):
        assert a[col].to_pylist() == b[col].to_pylist()
    day_dir = storage.partition(cfg.output.uri, res.dt)
    runs = {u.split("run=")[1].split("/")[0] for u in storage.list_files(day_dir) if "run=" in u}
    assert runs == {second.run_id}     # older runs' files are gone after the new commit


def test_never_recommends_items_the_catalog_marks_unavailable(trained_run):
    cfg, res, root = trained_run["cfg"], trained_run["result"], trained_run["root"]
    catalog = pq.read_table(f"{root}/catalog")
    blocked = set(catalog.filter(pc.invert(catalog["available"]))["item_id"].to_pylist())
    assert blocked
    events = _events(root)
    consumed = set(events.filter(pc.not_equal(events["event"], "impression"))["item_id"].to_pylist())
    assert blocked & consumed            # the models did learn these items
    recs = storage.read_committed(cfg.output.uri, res.dt, "recommendations")
    recommended = {i for items in recs["items"].to_pylist() for i in items}
    assert not recommended & blocked


def test_duckdb_reads_a_committed_day_from_the_files_the_manifest_names(trained_run):
    import duckdb
    cfg, res = trained_run["cfg"], trained_run["result"]
    commit = storage.read_commit(cfg.output.uri, res.dt)
    files = commit.uris(cfg.output.uri, "recommendations")
    row = duckdb.sql(f"select count(*), count(distinct user_id), min(len(items)) "
                     f"from read_parquet({files})").fetchall()[0]
    assert row == (commit.rows["recommendations"],) * 2 + (cfg.score.top_k,)


@pytest.mark.parametrize("recommender", ["sequence", "two_tower"])
def test_written_scores_are_the_recommenders_own_top_k_dot_products(trained_run, recommender):
    """The Scorer shares one sequence-model pass between the top-K and the prediction heads;
    what it writes must still be each user's top-K of (user vector . item vector) over the
    items not in the history (all of it, not only the model input), exactly as the recommender
    ranks them on its own."""
    cfg = trained_run["cfg"]
    cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, recommender=recommender))
    scorer = Scorer(ScoringContext.build(trained_run["result"].model_uris, trained_run["result"].dt, None,
                                        cfg.data.catalog_uri), cfg)
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, cfg.data.history_len + 5, 48)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    n = int(lengths.sum())
    asof_us = features.day_start_us(trained_run["result"].dt)
    batch = pa.table({
        "user_id": pa.array(np.arange(48, dtype=np.int64)),
        "items": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(1, scorer.vocab.size, n))),
        "events": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(2, 6, n).astype(np.int8))),
        "ts": pa.ListArray.from_arrays(offsets, pa.array(np.sort(asof_us - rng.integers(1, 10**11, n)))),
        "dwell_s": pa.ListArray.from_arrays(offsets, pa.array(rng.exponential(60, n).astype(np.float32))),
        "n_events": pa.array(lengths.astype(np.int32)),
    })
    out = scorer(batch)
    _, x = scorer.inputs(batch, "score")
    with torch.inference_mode():
        # in float64, rounded once: the scorer's exact scores; float32 ties to the lower index
        s = (scorer.user_vectors(recommender, x).double() @ scorer.items[recommender].double().T).float()
        s[:, 0] = float("-inf")
        s.scatter_(1, x["seen"], float("-inf"))           # every history item is excluded
        values, indices = ranking.decode_keys(torch.topk(ranking.score_keys(s, 0), cfg.score.top_k, dim=1).values)
        want = SimpleNamespace(values=values, indices=indices)
    assert (x["seen"] > 0).sum(1).tolist() == lengths.tolist()
    assert out["user_id"].to_pylist() == list(range(48))
    got_idx = [scorer.vocab.lookup(pa.array(items)).tolist() for items in out["items"].to_pylist()]
    assert got_idx == want.indices.tolist()
    np.testing.assert_allclose(np.array(out["scores"].to_pylist()), want.values.numpy(), rtol=1e-5, atol=1e-6)


def test_heap_trimmer_trims_only_past_its_slack():
    trim = HeapTrimmer(slack=1 << 40)
    assert trim() is False
    trim.slack = 0
    assert trim() is True and trim.floor == pytest.approx(HeapTrimmer.private_bytes(), rel=0.05)


def test_a_run_with_list_rules_writes_lists_that_obey_them_with_reasons(trained_run):
    """``raymedia run`` with rules set (the session's models, no training): every list keeps
    the rules, and each item says why it is there."""
    from conftest import small_overrides
    from raymedia import cli
    root, day = trained_run["root"], trained_run["day"]
    catalog = pq.read_table(f"{root}/catalog").to_pylist()
    facts = {r["item_id"]: r for r in catalog}
    pin = next(r["item_id"] for r in catalog if r["available"] and r["category"] != "cat_00" and r["series_id"] is None)
    sets = small_overrides(root, "eval.enabled=false", f"output.uri={root}/ruled", "rules.collapse_series=best",
                           "rules.max_per_category=5", "rules.min_categories=6", "rules.fresh_boost=0.5",
                           "rules.fresh_half_life_days=2", f"rules.pins={pin}@2", "rules.explore_share=0.1",
                           "rules.exclude_categories=cat_00")
    assert cli.main(["run", "--no-train", "--date", day.isoformat(), *[a for s in sets for a in ("--set", s)]]) == 0
    recs = storage.read_committed(f"{root}/ruled", day, "recommendations")
    assert recs.schema.field("reason").type == pa.list_(pa.string())
    assert recs.schema.field("model_scores").type == pa.list_(pa.float32())
    reasons = {x: 0 for x in ("model", "fresh", "explore", "pinned")}
    for row in recs.to_pylist():
        items, why = row["items"], row["reason"]
        assert len(items) == len(why) == len(row["model_scores"]) == len(row["scores"]) == 20
        cats = [facts[i]["category"] for i in items]
        assert "cat_00" not in cats and max(cats.count(c) for c in cats) <= 5 and len(set(cats)) >= 6
        series = [facts[i]["series_id"] for i in items if facts[i]["series_id"] is not None]
        assert len(series) == len(set(series))
        assert all((i == pin) == (w == "pinned") for i, w in zip(items, why))
        assert pin not in items or items.index(pin) == 1
        placed = [s for s, w in zip(row["scores"], why) if w in ("model", "fresh")]
        assert placed == sorted(placed, reverse=True)
        for w in why:
            reasons[w] += 1
    assert recs.num_rows == trained_run["result"].counts["users_scored"]
    assert all(reasons.values()), reasons                 # every rule placed items
    assert reasons["pinned"] > recs.num_rows / 2
    assert storage.read_commit(f"{root}/ruled", day).details["list_rules"] == reasons


def test_a_run_with_user_attributes_gives_each_user_only_items_eligible_for_them(trained_run, capsys):
    """``raymedia run`` (the session's models, no training) with a catalog that restricts items
    by region and age and a user-attributes table: no list holds an item its user may not
    see, users of two regions get different lists; a broken table fails before any work."""
    from conftest import small_overrides
    from raymedia import cli
    root, day = trained_run["root"], trained_run["day"]
    catalog = pq.read_table(f"{root}/catalog")
    ids = catalog["item_id"].to_pylist()
    where = {i: ["north"] if i % 3 == 0 else ["south"] if i % 3 == 1 else None for i in ids}
    rating = {i: 18 if i % 5 == 0 else 0 for i in ids}
    pq.write_table(catalog.append_column("regions", pa.array([where[i] for i in ids], pa.list_(pa.string())))
                   .append_column("age_rating", pa.array([rating[i] for i in ids], pa.int32())),
                   f"{root}/eligibility-catalog.parquet")
    users = sorted(set(_events(root)["user_id"].to_pylist()))
    people = {u: ("north" if u % 2 else "south", 12 if u % 4 == 0 else 40) for u in users if u % 10}
    pq.write_table(pa.table({"user_id": list(people), "region": [r for r, _ in people.values()],
                             "age": [a for _, a in people.values()]}), f"{root}/users.parquet")

    def run(*extra: str) -> int:
        sets = small_overrides(root, "eval.enabled=false", f"output.uri={root}/eligible",
                               f"data.catalog_uri={root}/eligibility-catalog.parquet", *extra)
        return cli.main(["run", "--no-train", "--date", day.isoformat(), *[a for s in sets for a in ("--set", s)]])

    assert run(f"data.user_attributes_uri={root}/users.parquet", "rules.default_age=16") == 0
    recs = storage.read_committed(f"{root}/eligible", day, "recommendations")
    shown: dict = {"north": set(), "south": set()}
    for row in recs.to_pylist():
        region, age = people.get(row["user_id"], (None, 16))      # missing: no region, rules.default_age
        assert all((where[i] is None or region in where[i]) and rating[i] <= age for i in row["items"]), row
        assert len(row["items"]) == 20
        if region:
            shown[region] |= set(row["items"])
    assert shown["north"] and shown["south"] and not shown["north"] & {i for i in ids if where[i] == ["south"]}
    assert {i for i in shown["south"] if where[i]} and not shown["south"] & {i for i in ids if where[i] == ["north"]}
    # a table whose ids are not the events' kind: refused before any work, naming the file
    pq.write_table(pa.table({"user_id": [str(u) for u in people], "age": [30] * len(people)}), f"{root}/bad.parquet")
    capsys.readouterr()
    assert run(f"data.user_attributes_uri={root}/bad.parquet", f"output.uri={root}/eligible-bad") == 2
    assert f"{root}/bad.parquet: column 'user_id' is string but the events' user_id is integer" in capsys.readouterr().err
    assert storage.read_commit(f"{root}/eligible-bad", day) is None

def test_a_run_with_sponsored_slots_fills_them_within_every_cap_and_reports_it(trained_run):
    """``raymedia run`` with campaigns (the session's models, no training): sponsored items only
    at the slots, never more lists per campaign than its cap, counted as the commit says."""
    from conftest import small_overrides
    from raymedia import cli
    root, day = trained_run["root"], trained_run["day"]
    catalog = [r for r in pq.read_table(f"{root}/catalog").to_pylist() if r["available"]]
    items = [catalog[i]["item_id"] for i in (3, 11, 40, 77)]
    caps = {"small": 40, "mid": 300, "huge": 100_000, "targeted": 150}
    pq.write_table(pa.table({"campaign_id": list(caps), "item_id": items, "bid": [1.0, 2.0, 0.5, 4.0],
                             "cap": list(caps.values()),
                             "categories": [None, [], None, [catalog[5]["category"]]]}), f"{root}/campaigns.parquet")
    sets = small_overrides(root, "eval.enabled=false", f"output.uri={root}/sponsored",
                           f"sponsored.campaigns_uri={root}/campaigns.parquet", "sponsored.slots=3,8")
    assert cli.main(["run", "--no-train", "--date", day.isoformat(), *[a for s in sets for a in ("--set", s)]]) == 0
    recs = storage.read_committed(f"{root}/sponsored", day, "recommendations")
    campaign_of = dict(zip(items, caps))
    lists = {c: 0 for c in caps}
    for row in recs.to_pylist():
        assert len(row["items"]) == len(set(row["items"])) == 20
        at = [i for i, w in enumerate(row["reason"]) if w == "sponsored"]
        assert at in ([], [2], [2, 7])                          # the slots, filled in order
        assert all(row["items"][i] in campaign_of for i in at)   # (a campaign's item may also rank organically)
        for i in at:
            lists[campaign_of[row["items"][i]]] += 1
            assert row["scores"][i] == row["model_scores"][i]
    details = storage.read_commit(f"{root}/sponsored", day).details
    report = details["sponsored"]
    assert {c: v["lists"] for c, v in report["per_campaign"].items()} == lists
    assert all(lists[c] <= cap for c, cap in caps.items())
    # caps that ran out mid run: nearly full (a user offered more campaigns than slots takes the best EVs)
    assert lists["small"] > 30 and lists["mid"] > 250
    assert 0 < lists["targeted"] <= 150 and lists["huge"] > 300
    assert report["lists"] == details["list_rules"]["sponsored"] == sum(lists.values())
    assert report["spend"] == pytest.approx(sum(lists[c] * b for c, b in zip(caps, [1.0, 2.0, 0.5, 4.0])))
    assert 0 < report["expected_clicks"] < report["lists"]
