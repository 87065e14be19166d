"""Evaluation metrics against hand-computed values."""

import math

import numpy as np
import pytest

from raymedia.evaluate import auc, hit_rate, ndcg, summarize


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([0, 1, 9, 10, -1])       # -1: test item masked (a miss)
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5) and ndcg(ranks, 1) == pytest.approx(1 / 5)


def test_k_larger_than_catalog_counts_every_unmasked_item():
    assert hit_rate(np.array([3, 4]), 1000) == 1.0
    assert math.isnan(hit_rate(np.array([]), 10))


def test_auc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) (0.8>0.1) (0.4=0.4 half) (0.4>0.1)
    assert auc([0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    assert math.isnan(auc([0.3, 0.4], [1, 1]))


def test_summarize_reports_each_model_and_return_auc():
    rows = {"rank_a": np.array([0, 20]), "rank_popularity": np.array([5, -1]),
            "p_return": np.array([0.9, 0.2]), "ret_label": np.array([1.0, 0.0]),
            "ret_eval": np.array([True, True]), "n_events": np.array([3, 4])}
    s = summarize(rows, 10)
    assert s["models"]["a"] == {"hr@10": 0.5, "ndcg@10": 0.5}
    assert s["models"]["popularity"]["hr@10"] == 0.5
    assert s["return"] == {"auc": 1.0, "users": 2, "base_rate": 0.5}
