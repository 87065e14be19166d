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


# ---------------------------------------------------------------------------------------
# beyond accuracy: what a list is made of, not whether it hits the held-out item.
#
# ``top`` is (lists, K) vocabulary indices, a place <= 0 is empty (scoring pads with 0,
# evaluation with -1). Each per-list function returns one float64 per list (NaN where the
# list has too few items for the metric); the scalar metric is the mean over the lists
# where it is defined (NaN when none is), so a run can sum the per-list values batch by
# batch (``raymedia.lists``) and get the same number as one call over every list.


def _mean_defined(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def list_category_diversity(top: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Per list: the share of its item pairs whose two items are in different categories
    (intra-list diversity with the 0/1 category distance, Ziegler et al. 2005; Kaminskas &
    Bridge 2016). Items of category code 0 (unknown) are left out, as the list rules leave
    them out of caps and category counts: nothing says they differ. NaN for a list with
    fewer than two items of a known category."""
    top = np.asarray(top, dtype=np.int64)
    cat = np.where(top > 0, np.asarray(category, dtype=np.int64)[np.maximum(top, 0)], 0)
    n = (cat > 0).sum(1).astype(np.float64)
    pairs = n * (n - 1) / 2
    same = (cat[:, :, None] == cat[:, None, :]) & (cat[:, :, None] > 0)
    same_pairs = (same.sum((1, 2)) - n) / 2                     # minus each item with itself
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, 1.0 - same_pairs / pairs, np.nan)


def category_diversity(top: np.ndarray, category: np.ndarray) -> float:
    """Mean intra-list category diversity (``list_category_diversity``) over the lists with
    two or more items of a known category. 0: every list is one category; 1: all differ."""
    return _mean_defined(list_category_diversity(top, category))


def list_distinct_categories(top: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Per list: how many known categories (code > 0) its items cover."""
    top = np.asarray(top, dtype=np.int64)
    cat = np.where(top > 0, np.asarray(category, dtype=np.int64)[np.maximum(top, 0)], 0)
    s = np.sort(cat, axis=1)
    first = np.ones_like(s, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return ((s > 0) & first).sum(1).astype(np.float64)


def distinct_categories(top: np.ndarray, category: np.ndarray) -> float:
    """Mean number of known categories per list (every list counts, an empty one as 0)."""
    return float(np.mean(list_distinct_categories(top, category))) if len(top) else float("nan")


def list_embedding_diversity(top: np.ndarray, vectors: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per list: the mean cosine distance (1 - cosine similarity) over its item pairs, in the
    item vectors (``vectors``: (vocabulary, d), e.g. a model's item embeddings). A zero
    vector has similarity 0 to everything. NaN for a list with fewer than two items.

    O(K d) per list: with unit vectors u, the pairs' similarities sum to
    (|sum u|^2 - sum |u|^2) / 2. Each list's value is computed alone (float64, ``chunk``
    lists at a time, einsum's own loops, no BLAS), so it does not depend on the other lists
    passed with it."""
    top = np.asarray(top, dtype=np.int64)
    out = np.full(len(top), np.nan)
    for a in range(0, len(top), chunk):
        t = top[a:a + chunk]
        valid = t > 0
        g = np.asarray(vectors[np.maximum(t, 0)], dtype=np.float64)     # only the listed rows
        sq = np.einsum("bkd,bkd->bk", g, g)
        inv = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=(sq > 0) & valid)
        s = np.einsum("bkd,bk->bd", g, inv)                               # sum of unit vectors
        sim = (np.einsum("bd,bd->b", s, s) - (sq * inv * inv).sum(1)) / 2
        n = valid.sum(1).astype(np.float64)
        pairs = n * (n - 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:a + chunk] = np.where(pairs > 0, (pairs - sim) / pairs, np.nan)
    return out


def embedding_diversity(top: np.ndarray, vectors: np.ndarray) -> float:
    """Mean intra-list embedding diversity (``list_embedding_diversity``) over the lists
    with two or more items: 0 for lists of one direction, 1 for orthogonal items."""
    return _mean_defined(list_embedding_diversity(top, vectors))


def self_information(popularity: np.ndarray) -> np.ndarray:
    """Per vocabulary index: -log2 of the item's share of the interactions, each count
    floored at 1 (an item nobody took is as novel as one taken once). Index 0 is padding."""
    pop = np.maximum(np.asarray(popularity, dtype=np.float64), 1.0)
    total = float(np.asarray(popularity, dtype=np.float64)[1:].sum())
    out = -np.log2(pop / max(total, 1.0))
    out[0] = np.nan
    return out


def novelty(top: np.ndarray, popularity: np.ndarray) -> float:
    """Mean self-information (bits, ``self_information``) of the listed items, over every
    listed item (Zhou et al. 2010; Kaminskas & Bridge 2016): higher is less popular."""
    top = np.asarray(top, dtype=np.int64)
    items = top[top > 0]
    return float(self_information(popularity)[items].mean()) if len(items) else float("nan")


def serendipity(top: np.ndarray, targets: np.ndarray, expected: np.ndarray) -> float:
    """Serendipity after Ge et al. 2010 ("Beyond accuracy", RecSys; the form Kaminskas &
    Bridge 2016 survey): per list, the share of its items that are both relevant (in the
    user's ``targets``, (lists, T) held-out items, <= 0 padding) and unexpected (not in
    ``expected``: the list a primitive recommender gives the user, (lists, K') or one (K',)
    list for all, e.g. the popularity top-K); mean over the non-empty lists.

    Unexpectedness is against the primitive list alone (Ge et al.); whether an item lies
    outside the user's usual categories is what ``category_diversity`` and the exploration
    rule look at."""
    top = np.asarray(top, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(len(top), -1)
    expected = np.asarray(expected, dtype=np.int64)
    if expected.ndim == 1:
        expected = np.broadcast_to(expected, (len(top), len(expected)))
    valid = top > 0
    relevant = (top[:, :, None] == np.where(targets > 0, targets, -2)[:, None, :]).any(2)
    unexpected = ~(top[:, :, None] == np.where(expected > 0, expected, -2)[:, None, :]).any(2)
    n = valid.sum(1)
    hits = (valid & relevant & unexpected).sum(1)
    keep = n > 0
    return float(np.mean(hits[keep] / n[keep])) if keep.any() else float("nan")


def weighted_median(values: np.ndarray, counts: np.ndarray) -> float:
    """``np.median`` of ``values`` each repeated ``counts`` times, without repeating them."""
    values, counts = np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.int64)
    keep = counts > 0
    values, counts = values[keep], counts[keep]
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    values, ends = values[order], np.cumsum(counts[order])
    lo = values[np.searchsorted(ends, (n - 1) // 2, side="right")]
    hi = values[np.searchsorted(ends, n // 2, side="right")]
    return float((lo + hi) / 2)


def freshness_of_counts(listed: np.ndarray, age_days: np.ndarray) -> dict:
    """``freshness`` from how often each vocabulary index was listed (``listed``)."""
    listed = np.asarray(listed, dtype=np.int64)
    age = np.asarray(age_days, dtype=np.float64)
    dated = ~np.isnan(age)
    dated[0] = False
    n = int(listed[dated].sum())
    return {"dated_items": n,
            "mean_age_days": float((listed[dated] * age[dated]).sum() / n) if n else float("nan"),
            "median_age_days": weighted_median(age[dated], listed[dated])}


def freshness(top: np.ndarray, age_days: np.ndarray) -> dict:
    """Age of the listed items (days from the run's day to the item's publish date;
    ``age_days`` per vocabulary index, NaN where the catalog has no date): mean and median
    over every listed item that has a date, and how many those were (``dated_items``)."""
    top = np.asarray(top, dtype=np.int64)
    return freshness_of_counts(np.bincount(top[top > 0], minlength=len(age_days)), age_days)


def new_item_share(top: np.ndarray, is_new: np.ndarray) -> float:
    """Share of the listed items that are new (``is_new`` per vocabulary index, e.g. no
    training interaction), over every listed item."""
    top = np.asarray(top, dtype=np.int64)
    items = top[top > 0]
    return float(np.asarray(is_new, dtype=bool)[items].mean()) if len(items) else float("nan")
