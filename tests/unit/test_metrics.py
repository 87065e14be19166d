"""Evaluation metrics and rankers against hand-computed values."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymedia import features
from raymedia.evaluate import (SAMPLED_NEGATIVES, SCHEMA_VERSION, _sampled_negatives,
                               most_frequent_scorer, own_history_scorer, rank_all, summarize)
from raymedia.metrics import (auc, calibration, coverage, hit_rate, mrr, ndcg, popularity_bias,
                              popularity_percentile)


def test_hit_rate_ndcg_and_mrr_by_hand():
    ranks = np.array([0, 1, 9, 10, -1])       # -1: test item masked (a miss)
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5) and ndcg(ranks, 1) == pytest.approx(1 / 5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 0) / 5)


def test_k_larger_than_catalog_counts_every_unmasked_item():
    assert hit_rate(np.array([3, 4]), 1000) == 1.0
    assert math.isnan(hit_rate(np.array([]), 10)) and math.isnan(mrr(np.array([])))
    # 3 items (index 0 is padding), K = 10: every item is in the top-K, the list has 3 entries
    scores = torch.tensor([[0.0, 0.1, 0.3, 0.2]])
    r = rank_all(lambda a, b: scores[:, a:b].clone(), 4, torch.tensor([1]), torch.tensor([[2, 3]]),
                 10, 2, None)
    assert r["rank"].tolist() == [2] and r["sampled_rank"].tolist() == [2]
    assert r["top"].tolist() == [[2, 3, 1, -1]]          # padding never ranks
    assert hit_rate(r["rank"].numpy(), 10) == 1.0


def test_ties_go_to_the_lower_item_index_and_masked_targets_miss():
    scores = torch.ones(2, 5)
    seen = torch.tensor([[4, 0], [2, 0]])         # user 0 saw item 4, user 1 saw item 2
    r = rank_all(lambda a, b: scores[:, a:b].clone(), 5, torch.tensor([3, 2]),
                 torch.tensor([[1, 4], [1, 3]]), 2, 3, seen)
    assert r["rank"].tolist() == [2, -1]          # items 1, 2 tie ahead of 3; 2 is masked
    assert r["sampled_rank"].tolist() == [1, -1]  # negative 1 ahead (tie, lower index), 4 masked
    assert r["top"].tolist() == [[1, 2], [1, 3]]


def test_chunking_does_not_change_ranks():
    g = torch.Generator().manual_seed(0)
    u, items = torch.randn(7, 4, generator=g), torch.randn(50, 4, generator=g)
    target, neg = torch.randint(1, 50, (7,), generator=g), torch.randint(1, 50, (7, 9), generator=g)
    fn = lambda a, b: u @ items[a:b].T                      # noqa: E731
    one = rank_all(fn, 50, target, neg, 10, 50, None)
    many = rank_all(fn, 50, target, neg, 10, 7, None)
    for key in one:
        assert torch.equal(one[key], many[key])
    full = (u @ items.T)
    full[:, 0] = -float("inf")
    expect = (full > full[torch.arange(7), target].unsqueeze(1)).sum(1)
    assert one["rank"].tolist() == expect.tolist()


def test_own_history_counts_then_recency_then_popularity():
    # history (oldest first): 3, 5, 3, 5, 2 -> 3 and 5 twice (5 more recent), then 2, then popular
    hist = torch.tensor([[3, 5, 3, 5, 2, 0]])
    pop = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.4, 0.2, 0.3])
    fn = own_history_scorer(hist, pop)
    r = rank_all(fn, 7, torch.tensor([3]), torch.tensor([[1, 2]]), 7, 3, None)
    assert r["top"].tolist() == [[5, 3, 2, 4, 6, 1, -1]]
    assert r["rank"].tolist() == [1]
    # the same user with repeats excluded: popularity only
    r = rank_all(fn, 7, torch.tensor([4]), torch.tensor([[1, 6]]), 7, 3, hist)
    assert r["top"].tolist()[0][:3] == [4, 6, 1] and r["rank"].tolist() == [0]


def test_most_frequent_counts_only_and_never_fills_the_list():
    # history (oldest first): 3, 5, 3, 5, 2 -> 3 and 5 twice (tie: the lower index, 3, first;
    # recency does not count here), then 2; nothing else is ever recommended
    hist = torch.tensor([[3, 5, 3, 5, 2, 0], [6, 0, 0, 0, 0, 0]])
    fn = most_frequent_scorer(hist)
    r = rank_all(fn, 7, torch.tensor([5, 4]), torch.tensor([[1, 2], [1, 6]]), 7, 3, None)
    assert r["top"].tolist() == [[3, 5, 2, -1, -1, -1, -1], [6, -1, -1, -1, -1, -1, -1]]
    assert r["rank"].tolist() == [1, -1]              # 4 is not in user 1's history: a miss
    assert r["sampled_rank"].tolist() == [0, -1]      # negatives 1, 2: only 2 is scored, lower
    assert hit_rate(r["rank"].numpy(), 2) == pytest.approx(1 / 2)
    assert ndcg(r["rank"].numpy(), 2) == pytest.approx((1 / math.log2(3)) / 2)
    # with repeats excluded every candidate is masked: an empty list, every user a miss
    r = rank_all(fn, 7, torch.tensor([3, 6]), torch.tensor([[1, 2], [1, 2]]), 7, 3, hist)
    assert r["rank"].tolist() == [-1, -1] and (r["top"] == -1).all()


def test_users_with_one_event_are_not_evaluated_and_two_events_use_one():
    batch = pa.table({"user_id": [1, 2], "items": [[7], [5, 5]], "events": [[3], [3, 3]],
                      "ts": [[10], [10, 20]], "dwell_s": [[None], [None, None]], "n_events": [1, 2]})
    kept, x = features.batch_inputs(batch, "eval", 4, 100, 10)
    assert kept["user_id"].to_pylist() == [2] and x["length"].tolist() == [1]
    assert x["target"].tolist() == [5]
    fn = own_history_scorer(torch.as_tensor(x["items"]), torch.zeros(8))
    r = rank_all(fn, 8, torch.as_tensor(x["target"]), torch.tensor([[1]]), 10, 8, None)
    assert r["rank"].tolist() == [0]            # a repeat: the own-history baseline's first pick


def test_sampled_negatives_are_fixed_per_user_and_never_the_target():
    target = np.array([1, 5, 9])
    a = _sampled_negatives(np.array([11, 12, 13], dtype=np.uint64), target, 10)
    b = _sampled_negatives(np.array([11, 12, 13], dtype=np.uint64), target, 10)
    assert a.shape == (3, 8) and np.array_equal(a, b)        # fewer items than 100: all others
    assert ((a >= 1) & (a <= 9)).all() and not (a == target[:, None]).any()
    assert set(a[1].tolist()) == set(range(1, 10)) - {5}
    big = _sampled_negatives(np.arange(50, dtype=np.uint64), np.full(50, 7), 1001)
    assert big.shape == (50, SAMPLED_NEGATIVES) and not (big == 7).any()
    assert all(len(set(row)) == SAMPLED_NEGATIVES for row in big.tolist())     # distinct
    assert 400 < big.mean() < 600 and big.min() >= 1 and big.max() <= 1000   # uniform-ish


def test_coverage_and_popularity_bias():
    top = np.array([[1, 2], [2, -1]])
    assert coverage(top, 4) == 0.5
    pct = popularity_percentile(np.array([0, 10, 20, 20, 40]))
    assert pct[1:].tolist() == [0.125, 0.5, 0.5, 0.875]       # ties share their mid-rank
    assert pct[1:].mean() == pytest.approx(0.5)
    assert popularity_bias(top, pct) == pytest.approx((0.125 + 0.5 + 0.5) / 3)


def test_calibration_by_hand():
    c = calibration([0.05, 0.15, 0.15, 0.95, 1.0], [0, 1, 0, 1, 1], bins=10)
    assert [b["count"] for b in c["bins"]] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert c["bins"][1]["mean_predicted"] == pytest.approx(0.15)
    assert c["bins"][1]["observed_rate"] == 0.5 and c["bins"][2]["observed_rate"] is None
    assert c["ece"] == pytest.approx((1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5)


def test_auc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) (0.8>0.1) (0.4=0.4 half) (0.4>0.1)
    assert auc([0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    assert math.isnan(auc([0.3, 0.4], [1, 1]))


def _two_users_summary() -> dict:
    """metrics.json of two users ranked by a model ``a`` and the popularity baseline."""
    rows = {"rank_a": np.array([0, 20]), "rank_popularity": np.array([5, -1]),
            "sampled_a": np.array([0, 3]), "sampled_popularity": np.array([1, -1]),
            "top_a": np.array([[1, 2], [1, 3]]), "top_popularity": np.array([[3, 2], [3, 2]]),
            "p_return": np.array([0.9, 0.2]), "ret_label": np.array([1.0, 0.0]),
            "ret_eval": np.array([True, True]), "n_events": np.array([3, 40]), "target": np.array([1, 4])}
    return summarize(rows, 10, popularity=np.array([0, 1, 2, 3, 4]), exclude_seen=True,
                     category=np.array([0, 1, 1, 2, 2]))


def test_summarize_reports_each_ranker_sampled_and_return_calibration():
    s = _two_users_summary()
    assert s["schema_version"] == SCHEMA_VERSION and s["ranking"] == "full"
    assert s["models"]["a"]["hr@10"] == 0.5 and s["models"]["a"]["ndcg@10"] == 0.5
    assert s["models"]["a"]["mrr"] == pytest.approx((1 + 1 / 21) / 2)
    assert s["models"]["a"]["coverage"] == 0.75 and s["models"]["popularity"]["coverage"] == 0.5
    assert s["sampled"]["ranking"] == "sampled" and s["sampled"]["negatives"] == 100
    # beyond accuracy: 10 interactions, self-information log2(10 / count)
    a, pop = s["models"]["a"], s["models"]["popularity"]
    assert a["novelty_bits"] == pytest.approx((2 * math.log2(10) + math.log2(5) + math.log2(10 / 3)) / 4)
    assert a["category_diversity"] == 0.5 and pop["category_diversity"] == 1.0     # [1 2] one category
    # user 0's held-out item 1 is first in a's list and not in the popularity list [3 2]
    assert a["serendipity"] == pytest.approx((1 / 2 + 0) / 2) and pop["serendipity"] == 0.0
    assert s["sampled"]["models"]["a"]["hr@10"] == 1.0
    assert s["baselines"] == ["popularity"]
    by = s["by_history_length"]
    assert by["buckets"][0] == "1" and by["buckets"][-1] == "32+"
    assert by["models"]["a"]["hr@10"][by["buckets"].index("2-3")] == 1.0
    assert by["models"]["a"]["hr@10"][-1] == 0.0 and sum(by["users"]) == 2
    ret = s["return"]
    assert ret["auc"] == 1.0 and ret["users"] == 2 and ret["base_rate"] == 0.5
    assert ret["brier"] == pytest.approx((0.01 + 0.04) / 2) and ret["ece"] == pytest.approx(0.15)


def test_the_printed_table_shows_every_ranker_best_first_with_baselines_marked():
    """The one printer of metrics.json (raymedia evaluate and raymedia demo print it)."""
    from raymedia import report
    lines = report.table(_two_users_summary()).splitlines()
    assert lines[0].split()[:3] == ["model", "HR@10", "NDCG@10"]
    assert lines[2].split()[:3] == ["a", "0.5000", "0.5000"]
    assert lines[3].split()[:4] == ["popularity", "*", "0.5000", "0.1781"]     # (1/log2(7)) / 2
    assert "(* baseline; 2 users" in lines[4] and "seen items excluded" in lines[4]
    assert lines[5].startswith("return-within-7d: AUC 1.0000")


def test_item_knn_by_hand():
    from raymedia.evaluate import item_knn
    # users' training histories (the last item of each row is its test item, not counted)
    batch = pa.table({"user_id": [1, 2, 3], "items": [[1, 2, 9], [1, 2, 9], [1, 3, 9]],
                      "events": [[3] * 3] * 3, "ts": [[1, 2, 3]] * 3,
                      "dwell_s": [[1.0] * 3] * 3, "n_events": [3] * 3})
    sim = item_knn([batch], 4, 10)
    # item 1 in 3 histories, item 2 in 2 (both with 1), item 3 in 1 (with 1); 9 never counted
    assert sim[1, 2] == pytest.approx(2 / math.sqrt(3 * 2))
    assert sim[1, 3] == pytest.approx(1 / math.sqrt(3 * 1)) and sim[2, 3] == 0
    assert np.allclose(sim, sim.T) and (np.diag(sim) == 0).all() and not sim[9].any()
    # one neighbour kept per item: item 1 keeps its closest (2)
    assert np.count_nonzero(item_knn([batch], 4, 10, neighbours=1)[1]) == 1
    assert item_knn([batch], 4, 10**6) is None               # too large a catalog: skipped


# ---------------------------------------------------------------------------------------
# beyond accuracy

def test_category_diversity_and_distinct_categories_by_hand():
    from raymedia.metrics import (category_diversity, distinct_categories, list_category_diversity,
                                  list_distinct_categories)
    category = np.array([0, 1, 1, 2, 3, 0])       # item 5: unknown category
    top = np.array([[1, 2, 3, 0],                 # cats 1 1 2: 2 of 3 pairs differ
                    [1, 3, 4, 5],                 # cats 1 2 3 (+unknown): 3 of 3 pairs
                    [1, 2, 0, 0],                 # cats 1 1: 0 of 1 pair
                    [5, 4, -1, -1],               # one known item: no pair (-1: empty, eval's)
                    [0, 0, 0, 0]])                # empty
    assert np.allclose(list_category_diversity(top, category)[:3], [2 / 3, 1.0, 0.0])
    assert np.isnan(list_category_diversity(top, category)[3:]).all()
    assert category_diversity(top, category) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert list_distinct_categories(top, category).tolist() == [2, 3, 1, 1, 0]
    assert distinct_categories(top, category) == pytest.approx(7 / 5)
    assert math.isnan(category_diversity(top[3:], category))


def test_embedding_diversity_by_hand():
    from raymedia.metrics import embedding_diversity, list_embedding_diversity
    vectors = np.array([[0, 0], [1, 0], [0, 2], [-3, 0], [1, 1], [0, 0]], dtype=np.float32)
    top = np.array([[1, 2, 3], [1, 4, 0], [2, 0, 0], [1, 5, 0]])
    # list 0: (1,2) orthogonal 1, (1,3) opposite 2, (2,3) orthogonal 1 -> 4/3
    # list 1: (1,4) cos 1/sqrt2; list 2: one item; list 3: item 5 is a zero vector -> 1
    per = list_embedding_diversity(top, vectors)
    assert per[0] == pytest.approx(4 / 3) and per[1] == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(per[2]) and per[3] == pytest.approx(1.0)
    assert embedding_diversity(top, vectors) == pytest.approx((4 / 3 + 1 - 1 / math.sqrt(2) + 1) / 3)
    # a list's value does not depend on the lists computed with it
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(50, 8)), rng.integers(0, 50, (300, 10))
    assert np.array_equal(list_embedding_diversity(t, v, chunk=7)[5:9], list_embedding_diversity(t[5:9], v))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    for row, got in zip(t[:20], list_embedding_diversity(t[:20], v)):      # against every pair
        items = row[row > 0]
        pairs = [1 - u[a] @ u[b] for i, a in enumerate(items) for b in items[i + 1:]]
        assert got == pytest.approx(np.mean(pairs), abs=1e-12)


def test_novelty_is_self_information_with_a_floor_of_one():
    from raymedia.metrics import novelty, self_information
    pop = np.array([0, 8, 4, 2, 2, 0])            # 16 interactions; item 5 never taken
    info = self_information(pop)
    assert info[1:].tolist() == [1.0, 2.0, 3.0, 3.0, 4.0]
    assert novelty(np.array([[1, 2, 0], [5, -1, 0]]), pop) == pytest.approx((1 + 2 + 4) / 3)
    assert math.isnan(novelty(np.zeros((2, 3), np.int64), pop))


def test_serendipity_counts_relevant_items_outside_the_primitive_list():
    from raymedia.metrics import serendipity
    top = np.array([[1, 2, 3, 4], [5, 6, 0, 0], [0, 0, 0, 0]])
    targets = np.array([[2, 4], [6, 0], [1, 0]])
    popular = np.array([1, 2, 7])                 # one primitive list for everybody
    # list 0: 2 relevant but expected, 4 relevant and unexpected -> 1/4; list 1: 6 -> 1/2
    assert serendipity(top, targets, popular) == pytest.approx((1 / 4 + 1 / 2) / 2)
    per_user = np.array([[9, 9], [6, 0], [1, 1]])   # a primitive list per user
    assert serendipity(top, targets, per_user) == pytest.approx((2 / 4 + 0) / 2)
    assert serendipity(top, np.array([2, 6, 1]), popular) == pytest.approx((0 + 1 / 2) / 2)


def test_freshness_and_new_item_share_by_hand():
    from raymedia.metrics import freshness, new_item_share, weighted_median
    age = np.array([np.nan, 1.0, 3.0, np.nan, 10.0])     # item 3 has no publish date
    top = np.array([[1, 2, 3], [1, 4, 0], [1, -1, 0]])
    f = freshness(top, age)
    # dated listed items: 1, 2, 1, 4, 1 -> ages 1 3 1 10 1
    assert f == {"dated_items": 5, "mean_age_days": pytest.approx(16 / 5), "median_age_days": 1.0}
    assert freshness(top[:2, :2], age)["median_age_days"] == np.median([1, 3, 1, 10])
    assert weighted_median([5.0, 1.0, 3.0], [1, 0, 3]) == 3.0 and math.isnan(weighted_median([1.0], [0]))
    assert new_item_share(top, np.array([False, False, True, True, False])) == pytest.approx(2 / 6)
