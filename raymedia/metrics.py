"""Metrics of rankings and predictions, from 0-based ranks of each user's one relevant item
(-1: the item was masked, a miss) and from predicted probabilities. Pure numpy: the
evaluation (``evaluate``) and training's early stopping (``train.validate``) share one
definition of each.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_BINS = 10


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose test item ranks in the top k (rank -1 = masked = miss)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else float("nan")


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks)
    hit = (ranks >= 0) & (ranks < k)
    return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k over the users (``ndcg_gains``)."""
    return float(np.mean(ndcg_gains(ranks, k))) if len(ranks) else float("nan")


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking; a masked test item scores 0."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return float("nan")
    return float(np.mean(np.where(ranks >= 0, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)))


def coverage(top: np.ndarray, num_items: int) -> float:
    """Share of the catalog (``num_items``) that appears in at least one top-K list.

    ``top`` is (users, K) item indices, -1 or 0 for empty slots."""
    top = np.asarray(top)
    distinct = np.unique(top[top > 0])
    return float(len(distinct) / num_items) if num_items else float("nan")


def popularity_percentile(popularity: np.ndarray) -> np.ndarray:
    """Per item index: the share of catalog items strictly less popular, plus half the ties
    (so the catalog's mean is 0.5). Index 0 (padding) is not an item."""
    pop = np.asarray(popularity, dtype=np.float64)[1:]
    order = np.sort(pop)
    less = np.searchsorted(order, pop, side="left")
    equal = np.searchsorted(order, pop, side="right") - less
    out = np.zeros(len(pop) + 1)
    out[1:] = (less + 0.5 * equal) / max(len(pop), 1)
    return out


def popularity_bias(top: np.ndarray, percentile: np.ndarray) -> float:
    """Mean popularity percentile of the recommended items (0.5: like the catalog)."""
    top = np.asarray(top)
    items = top[top > 0]
    return float(np.mean(percentile[items])) if len(items) else float("nan")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via the rank statistic, ties counted half; NaN when one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # average ranks (1-based) over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(p: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean squared error of the predicted probabilities; None without users."""
    p, y = np.asarray(p), np.asarray(labels)
    return float(np.mean((p - y) ** 2)) if len(p) else None


def calibration(p: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability bins (equal width on [0, 1]) and the expected calibration error.

    ECE = sum over bins of (bin users / users) * |mean prediction - observed rate|.
    A prediction of exactly 1.0 falls in the last bin. Empty bins are listed with count 0.
    """
    p, y = np.asarray(p, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    table, ece = [], 0.0
    for b in range(bins):
        n = int(count[b])
        mp = float(sum_p[b] / n) if n else None
        rate = float(sum_y[b] / n) if n else None
        if n:
            ece += n / len(p) * abs(mp - rate)
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                      "mean_predicted": mp, "observed_rate": rate})
    return {"ece": float(ece) if len(p) else float("nan"), "bins": table}
