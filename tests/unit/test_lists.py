"""A run's list statistics (raymedia/lists.py): per-user values from the scoring actors,
summed per output file by write_batch, added up on the driver. The same numbers as the
metric functions over every list at once, whatever the batching, to the last digit."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedia import lists, metrics, report, schema
from raymedia.writer import write_batch

GENERATED = "2026-01-10T00:00:00+00:00"


def _world(seed: int = 0, users: int = 300, items: int = 60, k: int = 8):
    """Random lists of 0..k distinct items, categories with unknowns, vectors, popularity."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, k + 1, users)
    idx = np.concatenate([rng.choice(np.arange(1, items + 1), n, replace=False) for n in lengths]).astype(np.int64)
    category = rng.integers(0, 5, items + 1)
    vectors = rng.normal(size=(items + 1, 6)).astype(np.float32)
    popularity = rng.integers(0, 30, items + 1).astype(np.float64)
    popularity[0] = 0
    return idx, lengths, category, vectors, popularity


def _sums(idx, lengths, category, vectors, cuts) -> list[dict]:
    """write_batch-like rows: one ``lists`` JSON per group of users between ``cuts``."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        stats = lists.user_stats(idx[offsets[a]:offsets[b]], lengths[a:b], category, vectors)
        rows.append({"table": "recommendations", "lists": lists.ListSums.of(stats).to_json()})
        rows.append({"table": "predictions", "lists": lists.ListSums.of(stats).to_json()})   # not counted
    return rows


def test_any_batching_gives_the_same_summary_as_the_metrics_over_every_list():
    idx, lengths, category, vectors, popularity = _world()
    users = len(lengths)
    age = np.where(np.arange(61) % 7 == 0, np.nan, np.arange(61) * 1.5)
    recommendable = np.ones(61, bool)
    recommendable[0] = False
    hits = {"model": 5}
    one = lists.summary(lists.total(_sums(idx, lengths, category, vectors, [0, users]), 61),
                        popularity, age, recommendable, hits, "sequence")
    rng = np.random.default_rng(1)
    for _ in range(5):
        cuts = [0, *sorted(rng.choice(np.arange(1, users), int(rng.integers(1, 40)), replace=False)), users]
        rows = _sums(idx, lengths, category, vectors, cuts)
        rng.shuffle(rows)
        assert lists.summary(lists.total(rows, 61), popularity, age, recommendable, hits, "sequence") == one
    top = lists.padded(idx, lengths)
    assert one["users"] == users and one["listed_items"] == lengths.sum()
    assert one["mean_length"] == pytest.approx(lengths.mean(), abs=1e-6)
    assert one["category_diversity"] == pytest.approx(metrics.category_diversity(top, category), abs=1e-6)
    assert one["distinct_categories"] == pytest.approx(metrics.distinct_categories(top, category), abs=1e-6)
    assert one["embedding_diversity"] == pytest.approx(metrics.embedding_diversity(top, vectors), abs=1e-6)
    assert one["novelty_bits"] == pytest.approx(metrics.novelty(top, popularity), abs=1e-6)
    f = metrics.freshness(top, age)
    assert one["mean_age_days"] == pytest.approx(f["mean_age_days"], abs=1e-6)
    assert one["median_age_days"] == f["median_age_days"] and one["dated_items"] == f["dated_items"]
    assert one["new_item_share"] == pytest.approx(metrics.new_item_share(top, popularity == 0), abs=1e-6)
    assert one["distinct_items"] == len(np.unique(idx)) and one["catalog_items"] == 60
    assert one["coverage"] == pytest.approx(metrics.coverage(top, 60), abs=1e-6)
    assert one["rule_hits"] == hits and one["embedding_model"] == "sequence"


def test_summary_by_hand():
    category = np.array([0, 1, 1, 2, 0])
    vectors = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    idx, lengths = np.array([1, 2, 3, 4, 3]), np.array([3, 0, 2])        # [1 2 3] [] [4 3]
    run = lists.total(_sums(idx, lengths, category, vectors, [0, 1, 3]), 5)
    pop = np.array([0, 4, 2, 2, 0], np.float64)                          # 8 interactions, item 4 new
    age = np.array([np.nan, 1.0, 2.0, np.nan, 9.0])
    s = lists.summary(run, pop, age, np.array([False, True, True, True, True]), {}, "two_tower")
    assert s["users"] == 3 and s["listed_items"] == 5 and s["mean_length"] == pytest.approx(5 / 3, abs=1e-6)
    # [1 2 3]: cats 1 1 2 -> 2/3 of pairs differ; [4 3]: 4 unknown -> undefined
    assert s["category_diversity"] == pytest.approx(2 / 3, abs=1e-6) and s["category_diversity_lists"] == 1
    assert s["distinct_categories"] == pytest.approx((2 + 0 + 1) / 3, abs=1e-6)
    # [1 2 3]: distances 0, 1, 1 -> 2/3; [4 3]: same direction -> 0
    assert s["embedding_diversity"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-6)
    # self-information: item 1 log2(8/4) = 1 bit, items 2 and 3 2 bits, item 4 (count floor 1) 3 bits
    assert s["novelty_bits"] == pytest.approx((1 + 2 + 2 + 3 + 2) / 5, abs=1e-6)
    assert (s["dated_items"], s["mean_age_days"], s["median_age_days"]) == (3, 4.0, 2.0)
    assert s["new_item_share"] == pytest.approx(1 / 5) and s["coverage"] == 1.0
    assert lists.total([{"table": "recommendations", "file": "x"}], 5) is None      # no statistics kept


def test_write_batch_sums_the_statistics_and_never_writes_them(tmp_path):
    n = 3
    batch = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()),
                      "items": pa.array([[7, 8], [8], []], pa.list_(pa.int64())),
                      "scores": pa.array([[0.5, 0.25], [0.5], []], pa.list_(pa.float32())),
                      "p_return_7d": pa.array([0.5] * n, pa.float32()), "next_category": pa.array(["a"] * n),
                      "n_events": pa.array([3] * n, pa.int32()), "cold_start": pa.array([False] * n),
                      lists.STATS: lists.user_stats(np.array([1, 2, 2]), np.array([2, 1, 0]),
                                                    np.array([0, 1, 2]), None)})
    rows = write_batch(batch, str(tmp_path), "v1", GENERATED).to_pylist()
    recs = next(r for r in rows if r["table"] == "recommendations")
    assert pq.read_table(str(tmp_path / recs["file"])).schema.names == schema.RECOMMENDATIONS.names
    sums = json.loads(recs["lists"])
    assert (sums["users"], sums["items"], sums["counts"]) == (3, [1, 2], [1, 2])
    assert sums["category_diversity"] == lists.SCALE and sums["category_lists"] == 1
    assert sums["embedding_lists"] == 0 and sums["categories"] == 2 + 1 + 0


def test_report_shows_the_lists_table_and_line():
    m = {"k": 10, "users": 2, "models": {"a": {"hr@10": 0.5, "ndcg@10": 0.5, "mrr": 0.5, "novelty_bits": 3.25}},
         "by_history_length": {"buckets": ["1"], "users": [2], "models": {}},
         "lists": {"users": 7, "mean_length": 9.5, "category_diversity": 0.75, "distinct_categories": 4.0,
                   "embedding_diversity": None, "embedding_model": "sequence", "novelty_bits": 6.5,
                   "mean_age_days": 3.0, "median_age_days": 2.0, "dated_items": 60, "new_item_share": 0.125,
                   "coverage": 0.5, "distinct_items": 30, "catalog_items": 60, "rule_hits": {"pinned": 7}}}
    html = report.lists_table(m)
    assert 'data-table="lists"' in html and "<td>0.7500</td>" in html and "rule: pinned</td><td>7" in html
    assert report.lists_table({"k": 10}) == ""
    text = report.table(m)
    assert "lists: 7 users, 9.5000 items each, category diversity 0.7500" in text
    assert "embedding diversity -" in text and "placed by rule: pinned 7" in text
    assert text.splitlines()[2].split()[:8] == ["a", "0.5000", "0.5000", "0.5000", "-", "-", "3.2500", "-"]
