"""A user's recommendations, scores and predictions are bit-identical whatever batch they
are scored in: alone, in batches of random sizes and orders, at every position, with 1 or
2 torch threads (no Ray: the Scorer in process, randomly initialised models)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymedia import checkpoint, config, models, schema, sponsored
from raymedia.data.vocab import Vocab
from raymedia.inference import ScoringContext
from raymedia.score import Bidder, Scorer

ITEMS, USERS, HISTORY_LEN = 300, 48, 20
ASOF = "2026-01-20"


def _vocab() -> Vocab:
    rng = np.random.default_rng(0)
    cats = rng.integers(1, 9, ITEMS)
    return Vocab(pa.array(np.arange(1000, 1000 + ITEMS)), np.concatenate([[0], cats]),
                 [f"c{i}" for i in range(1, 9)], np.concatenate([[0], rng.integers(0, 50, ITEMS)]).astype(float))


def _cfg(root: str, *extra: str):
    return config.load(None, [f"output.models_uri={root}/models", f"data.history_len={HISTORY_LEN}",
                              "score.top_k=25", "score.item_chunk=64", *extra])


def _publish(cfg, vocab: Vocab, content: dict | None = None) -> dict[str, str]:
    """Both models, random, the sequence model's items made to near-tie in pairs (the
    K-th score sits among near-ties, where float32 rounding used to flip the order);
    ``content``: with that content path."""
    uris = {}
    for kind in models.KINDS:
        torch.manual_seed(1)
        meta = checkpoint.ModelMeta.new(kind, "v1", cfg, vocab, content=content)
        model = models.build(kind, meta.kwargs, vocab.size, vocab.num_categories,
                             HISTORY_LEN, torch.as_tensor(vocab.item_category), torch.as_tensor(vocab.popularity))
        with torch.no_grad():
            w = model.item_emb.weight
            w[1:100] = w[101:200] * (1 + 2.0 ** -22)
            w[200:210] = w[210:220]                      # exact ties: the lower index first
            if model.item_content is not None:           # token rows as training leaves them (they start at 0)
                model.item_content.encoder.bag.weight[1:].normal_(0, 0.1)
        d = f"{cfg.output.models_uri}-staging/{kind}"
        checkpoint.save_dir(d, model, meta, vocab)
        uris[kind] = checkpoint.publish(d, cfg.output.models_uri, kind, "v1")
    return uris


def _catalog(path: str) -> str:
    """The items' titles from a few words (one in ten without any: the id path alone)."""
    rng = np.random.default_rng(4)
    words = np.array(["storm", "league", "election", "recipe", "film", "market", "goal", "vote"])
    titles = [None if i % 10 == 0 else " ".join(rng.choice(words, 3)) for i in range(ITEMS)]
    pq.write_table(schema.conform_catalog(pa.table({"item_id": np.arange(1000, 1000 + ITEMS),
                                                    "title": titles,
                                                    "category": [f"c{i % 8}" for i in range(ITEMS)]})), path)
    return path


def _histories() -> pa.Table:
    """USERS users, 0 (cold start) to 40 events each, longer than history_len for some."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 41, USERS)
    lengths[:2] = 0
    def lists(values):
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
                                        pa.array(values))
    n = int(lengths.sum())
    ts = 1_768_000_000_000_000 + np.sort(rng.integers(0, 10 ** 12, n))
    return pa.table({"user_id": pa.array(np.arange(USERS) * 7 + 3),
                     "items": lists(rng.integers(1, ITEMS + 1, n)),
                     "events": lists(rng.integers(1, 5, n).astype(np.int8)),
                     "ts": lists(ts), "dwell_s": lists(rng.uniform(0, 300, n).astype(np.float32)),
                     "n_events": pa.array(lengths.astype(np.int32))})


def _campaigns(path: str) -> str:
    """Campaigns whose caps run out among the 48 users (one targeted, one with cap 0)."""
    pq.write_table(pa.table({"campaign_id": ["a", "b", "c", "d"], "item_id": [1010, 1011, 1012, 1013],
                             "bid": [1.0, 2.5, 1.5, 9.0], "cap": [5, 12, 30, 0],
                             "categories": [None, [], ["c3", "c5"], None]}), path)
    return path


def _sponsorship(cfg, context: ScoringContext, recommendable: np.ndarray, h: pa.Table) -> sponsored.Sponsorship:
    """Pass 1 in process (``pipeline.allocate`` without Ray): two batches of ``Bidder``."""
    plan = sponsored.SlotPlan.from_config(cfg)
    camp = sponsored.Campaigns.build(sponsored.read_campaigns(plan.campaigns_uri), context.vocab)
    sp = sponsored.Sponsorship(np.array(plan.slots), camp)
    bidder, best = Bidder(context, cfg, recommendable, sp), sponsored.Thresholds(camp.caps)
    for part in (h.slice(0, 20), h.slice(20)):
        best.add(bidder(part))
    ev, key = best.result()
    return sponsored.Sponsorship(sp.slots, camp, ev, key)


def _by_user(out: pa.Table) -> dict:
    return {r["user_id"]: r for r in out.to_pylist()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("invariance"))
    vocab = _vocab()
    uris = _publish(_cfg(root), vocab)
    content_uris = _publish(_cfg(f"{root}/content"), vocab, {"buckets": 4096, "embedding_dim": 0, "id_dropout": 0.5})
    recommendable = np.ones(vocab.size, dtype=bool)
    recommendable[np.random.default_rng(2).integers(1, vocab.size, 30)] = False
    yield {"root": root, "vocab": vocab, "uris": {False: uris, True: content_uris},
           "catalog": _catalog(f"{root}/catalog.parquet"), "recommendable": recommendable,
           "campaigns": _campaigns(f"{root}/campaigns.parquet"),
           "histories": _histories()}
    torch.set_num_threads(1)


# list rules (raymedia/rules.py): near-duplicate titles, category caps, a pin, exploration; with
# them sponsored slots (raymedia/sponsored.py), the campaigns' thresholds from pass 1
RULES = ("rules.dedup_key=title", "rules.max_per_category=4", "rules.min_categories=7", "rules.pins=1005@2",
         "rules.explore_share=0.2", "sponsored.slots=4,9")


@pytest.mark.parametrize("recommender,precision,content,rules", [
    ("sequence", "fp32", False, ()), ("two_tower", "fp32", False, ()), ("sequence", "bf16", False, ()),
    ("sequence", "fp32", True, ()), ("two_tower", "fp32", True, ()),   # models with a content path
    ("sequence", "fp32", False, RULES)])
def test_every_batching_position_and_thread_count_gives_the_same_bits(setup, recommender, precision, content,
                                                                      rules):
    h, n = setup["histories"], setup["histories"].num_rows

    def scorer(threads: int) -> Scorer:
        cfg = _cfg(setup["root"], f"score.recommender={recommender}", f"score.precision={precision}",
                   f"score.num_cpus={threads}", f"data.catalog_uri={setup['catalog']}", *rules,
                   *([f"sponsored.campaigns_uri={setup['campaigns']}"] if rules else []))
        context = ScoringContext.build(setup["uris"][content], ASOF, setup["vocab"], setup["catalog"])
        assert (context.content is not None) == content
        sp = _sponsorship(cfg, context, setup["recommendable"], h) if rules else None
        return Scorer(context, cfg, setup["recommendable"], sp)

    one = scorer(1)
    alone = _by_user(pa.concat_tables([one(h.slice(i, 1)) for i in range(n)]))
    assert len(alone) == n and sum(r["cold_start"] for r in alone.values()) == 2
    assert all(len(r["items"]) == 25 for r in alone.values())
    # the run's list statistics (raymedia/lists.py) ride along and are compared below too
    assert all(r["list_stats"]["categories"] >= 1 and r["list_stats"]["embedding_diversity"] > 0
               for r in alone.values())
    if rules:                                            # the rules did shape the lists
        pinned = [r["reason"].index("pinned") for r in alone.values() if "pinned" in r["reason"]]
        assert set(pinned) == {1} and len(pinned) > n / 2
        assert sum("explore" in r["reason"] for r in alone.values()) > n / 4    # the rest know all 8 categories
        paid = [(c, p) for r in alone.values() for c, p in
                zip(r["sponsored_campaign"], [i for i, w in enumerate(r["reason"]) if w == "sponsored"], strict=True)]
        assert {p for _, p in paid} == {3, 8}               # the slots, 1-based 4 and 9
        counts = np.bincount([c for c, _ in paid], minlength=4)
        assert counts[0] == 5 and counts[1] == 12 and 0 < counts[2] <= 30 and counts[3] == 0   # caps ran out
    rng = np.random.default_rng(3)
    for _ in range(3):                                   # random orders and batch sizes
        order, parts, start = rng.permutation(n), [], 0
        while start < n:
            size = int(rng.integers(1, 20))
            parts.append(one(h.take(order[start:start + size])))
            start += size
        assert _by_user(pa.concat_tables(parts)) == alone
    batch = h.slice(0, 16)                               # each user at every position of a batch
    for shift in range(16):
        rolled = batch.take(np.roll(np.arange(16), shift))
        assert _by_user(one(rolled)) == {u: alone[u] for u in batch["user_id"].to_pylist()}
    assert _by_user(scorer(2)(h)) == alone               # 2 torch / BLAS threads, one batch


def test_two_runs_of_a_day_with_other_batch_sizes_and_actor_counts_write_the_same_rows(trained_run):
    """Real Ray, the session's trained models: batch size 256 x 1 actor vs 37 x 2 actors
    (half a CPU each, so reads and writes still find a CPU on the 2-CPU test cluster)."""
    from conftest import small_config
    from raymedia import pipeline, storage
    root, day = trained_run["root"], trained_run["day"]
    outputs = {}
    for name, batch, actors, cpus in (("a", 256, 1, 1), ("b", 37, 2, 0.5)):
        cfg = small_config(root, "eval.enabled=false", f"score.batch_size={batch}",
                           f"score.concurrency={actors}", f"score.num_cpus={cpus}",
                           f"output.uri={root}/invariance-{name}")
        pipeline.run_day(cfg, day, train_models=False)
        outputs[name] = {t: storage.read_committed(cfg.output.uri, day, t).sort_by("user_id")
                         for t in ("recommendations", "predictions")}
    for table in ("recommendations", "predictions"):
        a, b = outputs["a"][table], outputs["b"][table]
        if table == "recommendations":
            a, b = a.drop_columns(["generated_at"]), b.drop_columns(["generated_at"])
        assert a.num_rows == b.num_rows > 500
        assert a.equals(b), table


def _eligibility_inputs(setup) -> tuple[list[str], dict, dict]:
    """A catalog that shows a third of the items only in 'north', a third only in 'south'
    and one in four only from 16, and a user table: even users north, odd south, every fifth
    12 years old, every sixth missing (the defaults: no region, age 0). Returns the config
    overrides and, per item id, (regions, age_rating), per user id (region, age)."""
    root, ids = setup["root"], np.arange(1000, 1000 + ITEMS)
    regions = [["north"] if i % 3 == 0 else ["south"] if i % 3 == 1 else None for i in range(ITEMS)]
    ratings = [16 if i % 4 == 0 else 0 for i in range(ITEMS)]
    cat = pq.read_table(setup["catalog"]).append_column("regions", pa.array(regions, pa.list_(pa.string())))
    pq.write_table(cat.append_column("age_rating", pa.array(ratings, pa.int32())), f"{root}/elig-catalog.parquet")
    users = setup["histories"]["user_id"].to_pylist()
    table = [(u, "north" if b % 2 == 0 else "south", 12 if b % 5 == 0 else 30)
             for b, u in enumerate(users) if b % 6]
    pq.write_table(pa.table({"user_id": [t[0] for t in table], "region": [t[1] for t in table],
                             "age": pa.array([t[2] for t in table], pa.int16())}), f"{root}/users.parquet")
    people = {u: (None, 0) for u in users} | {t[0]: (t[1], t[2]) for t in table}
    return ([f"data.catalog_uri={root}/elig-catalog.parquet", f"data.user_attributes_uri={root}/users.parquet"],
            dict(zip(ids.tolist(), zip(regions, ratings))), people)


# pins: 1003 north only, 1004 south only and 16+, 1005 everywhere
ELIGIBILITY_RULES = tuple(r for r in RULES if not r.startswith("rules.pins")) + ("rules.pins=1003@1,1004@2,1005@3",)


@pytest.mark.parametrize("rules", [(), ELIGIBILITY_RULES])
def test_users_only_ever_get_items_eligible_for_them_whatever_the_batch(setup, rules):
    """Region and age eligibility in the Scorer: model, pinned and cold-start items alike;
    users of other regions get other lists; bit-identical in any batching."""
    h, n = setup["histories"], setup["histories"].num_rows
    overrides, items, people = _eligibility_inputs(setup)
    cfg = _cfg(setup["root"], *overrides, *rules, *([f"sponsored.campaigns_uri={setup['campaigns']}"] if rules else []))
    context = ScoringContext.build(setup["uris"][False], ASOF, setup["vocab"], cfg.data.catalog_uri)
    scorer = Scorer(context, cfg, setup["recommendable"],       # with the rules, sponsored slots too
                    _sponsorship(cfg, context, setup["recommendable"], h) if rules else None)
    alone = _by_user(pa.concat_tables([scorer(h.slice(i, 1)) for i in range(n)]))
    by_region: dict = {}
    pinned, paid = {1003: 0, 1004: 0, 1005: 0}, 0
    for u, row in alone.items():
        region, age = people[u]
        for i in row["items"]:
            where, rating = items[i]
            assert (where is None or region in where) and rating <= age, (u, i, region, age, where, rating)
        assert len(row["items"]) == 25 or rules                     # enough eligible items for a full list
        by_region.setdefault(region, []).append(set(row["items"]))
        for i in (i for i, w in zip(row["items"], row.get("reason") or []) if w == "pinned"):
            pinned[i] += 1                          # (eligible: checked above with every item)
        paid += sum(w == "sponsored" for w in row.get("reason") or [])
    assert sum(r["cold_start"] for r in alone.values()) == 2        # cold-start lists obey it too
    if rules:                                        # each pin reached the users who may see it
        north = sum(r == "north" for r, _ in people.values())
        south_16 = sum(r == "south" and a >= 16 for r, a in people.values())
        assert pinned[1005] > n / 2 and 0 < pinned[1003] <= north and 0 < pinned[1004] <= south_16 < n / 2
        assert paid > 0                              # sponsored items were placed, each eligible
    shown = {region: set().union(*lists) for region, lists in by_region.items()}
    assert {items[i][0][0] for i in shown["north"] if items[i][0]} == {"north"}
    assert {items[i][0][0] for i in shown["south"] if items[i][0]} == {"south"}
    assert all(items[i][0] is None and items[i][1] == 0 for i in shown[None])     # the defaults
    assert len(scorer.groups) == 5                   # north / south x 12 / 30, and the default
    rng = np.random.default_rng(5)
    order, parts, start = rng.permutation(n), [], 0
    while start < n:
        size = int(rng.integers(1, 20))
        parts.append(scorer(h.take(order[start:start + size])))
        start += size
    assert _by_user(pa.concat_tables(parts)) == alone
