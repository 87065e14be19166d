"""Offline evaluation: leave-last-out, full ranking over all items (primary) and sampled
ranking against 100 negatives (always labelled ``sampled``).

Each user's last interaction is the test item; every ranker orders every item
from the rest of the history (seen items masked when the run masks them, so a
repeat test item counts as a miss for every ranker alike). Ranks use the same
deterministic ordering as scoring (ties to the lower item index). Rankers, all
in the same pass over the same users:

- the trained models (``sequence``, ``two_tower``);
- ``popularity``: training-interaction counts;
- ``own_history`` (the repeat baseline): how often the item occurs in the
  user's history, ties to the most recent, then popular items fill the rest.
  With seen items masked it reduces to popularity.
- ``most_frequent``: the plain repeat baseline often quoted in the literature: the
  user's own items by count alone (ties to the lower item index), nothing else; the
  list holds only items of the history, so with seen items masked it is empty.
- ``item_knn``: item-based collaborative filtering, cosine similarity of item
  co-occurrence in users' training histories (the test items never counted),
  100 nearest neighbours per item, a user's score = sum of the similarities to
  the items in their history (catalogs up to ``KNN_MAX_ITEMS``).
- ``als`` and ``ease``: the strong classic baselines of ``raymedia/baselines.py``, fitted on
  every item each user saw before the test item (skipped, with the reason, when they cannot run).

The ``cold-items`` protocol ranks items nobody took before the test period: every baseline
above scores such an item 0 (no interaction, no co-occurrence), so it ranks the models
(content-aware and id-only, see ``offline``) against ``category_popularity`` alone: an item
scores its category's training interactions, times a small tie-break by its own, so a cold
item comes after the warm items of its category and before every item of a less popular one.
Each row carries ``others``: the user's other items of the test period, masked like seen
items, so each target is ranked against the items that user did not take.

With ``data.exclude_seen`` every ranker masks the same items the scorer masks in
production: everything the user saw before the test item (``features``' ``seen`` input:
the user state's seen set within ``data.seen_days`` plus the history before the target).

Per ranker (each metric defined once, in ``raymedia.metrics``): HR@K, NDCG@K, MRR (full
ranking), catalog coverage of the top-K lists, their popularity bias (mean popularity
percentile of recommended items; the catalog's own mean is 0.5), beyond accuracy the novelty,
category diversity and serendipity (against the ``popularity`` ranker's list) of the top-K
lists, and HR/NDCG by user-history length. The return head is scored on the users held out
of its training (see ``features.return_eval_users``) with AUC, Brier score and calibration
(ECE over 10 equal-width bins, the bins themselves kept for the reliability plot). What a
run's committed lists are made of is ``raymedia.lists``' (metrics.json ``lists``).

``metrics.json`` has a stable schema, versioned by ``schema_version``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch

from raymedia import baselines, features, ranking
from raymedia.config import Config
from raymedia.inference import LoadedModels, ScoringContext, actor_pool
from raymedia.metrics import (auc, brier, calibration, category_diversity, coverage, hit_rate, mrr, ndcg,
                              novelty, popularity_bias, popularity_percentile, serendipity)

SCHEMA_VERSION = 1
SAMPLED_NEGATIVES = 100
HISTORY_BUCKETS = (1, 2, 4, 8, 16, 32)           # lower edges of history-length buckets
BASELINES = ("popularity", "own_history", "most_frequent", "item_knn", *baselines.NAMES, "category_popularity")
TARGETED = ("temporal", "cold-items")      # protocols whose histories carry a ``target`` column
CATEGORY_TIE_BREAK = 0.01
KNN_MAX_ITEMS = 10_000        # the item-item matrix is dense: items^2 floats
KNN_NEIGHBOURS = 100


@dataclass(frozen=True)
class EvalInputs:
    """What an evaluation ranks with: the models (``context``), the protocol (``TARGETED``:
    the histories carry a ``target`` column; ``cold-items`` also ``others``), and what
    ``evaluate`` computes when None: the ``knn`` similarities and ``fitted`` baselines (from
    the histories; not for ``cold-items``), ``recommendable`` (from the catalog at
    ``context.asof``, as scoring does)."""
    context: ScoringContext
    protocol: str = "leave-last-out"
    knn: np.ndarray | None = None
    fitted: baselines.Fitted | None = None
    recommendable: np.ndarray | None = None


def history_bucket(n: np.ndarray) -> np.ndarray:
    """Bucket index of each history length (events the ranker saw)."""
    return np.searchsorted(np.asarray(HISTORY_BUCKETS), np.asarray(n), side="right") - 1


def bucket_labels() -> list[str]:
    edges = list(HISTORY_BUCKETS)
    return [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])] + \
           [f"{edges[-1]}+"]


def _sampled_negatives(user_hash: np.ndarray, target: np.ndarray, num_items: int,
                       n: int = SAMPLED_NEGATIVES) -> np.ndarray:
    """(B, n) distinct negatives per user, uniform over the items other than the target
    (all of them when the catalog has fewer), fixed per user (seeded by the user's id),
    so sampled figures repeat exactly. ``num_items`` counts the padding index 0."""
    others = max(num_items - 2, 0)                  # real items minus the target
    n = min(n, others)
    out = np.empty((len(target), n), dtype=np.int64)
    for i, (h, t) in enumerate(zip(user_hash, target)):
        neg = np.random.default_rng(int(h)).choice(others, size=n, replace=False) + 1
        out[i] = neg + (neg >= t)                   # skip the target
    return out


def rank_all(score_chunk, n_items: int, target: torch.Tensor, negatives: torch.Tensor,
             k: int, chunk: int, seen: torch.Tensor | None,
             blocked: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Full rank, sampled rank and top-k of each user's target under one ranker
    (``ranking.rank``; the fields of ``ranking.Ranks`` as a dict).

    ``score_chunk`` is a ``ranking.DotScores`` (the models: exact) or ``(start, stop) ->``
    a fresh (B, stop - start) tensor of scores (the baselines). Ordering and masks are the
    scorer's: ties to the lower index; padding, seen and ``blocked`` items never rank.
    """
    scores = (score_chunk if isinstance(score_chunk, (ranking.DotScores, ranking.ChunkScores))
              else ranking.ChunkScores(score_chunk, n_items, chunk))
    return vars(ranking.rank(scores, target, negatives, k, chunk, seen, blocked))


def category_popularity(item_category: np.ndarray, popularity: np.ndarray,
                        tie_break: float = CATEGORY_TIE_BREAK) -> np.ndarray:
    """Per vocabulary index: the training interactions of the item's category times
    (1 + ``tie_break`` x its own share of the most popular item's); padding scores 0."""
    per_category = np.bincount(item_category, weights=popularity, minlength=int(item_category.max()) + 1)
    out = per_category[item_category] * (1.0 + tie_break * popularity / max(float(popularity.max()), 1e-12))
    out[0] = 0.0
    return out


def padded(lists: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows, longest) int64 of a list column, 0-padded (at least one column)."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    off = arr.offsets.to_numpy()
    lens = np.diff(off)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros((len(lens), max(int(lens.max()) if len(lens) else 0, 1)), dtype=np.int64)
    out[np.repeat(np.arange(len(lens)), lens), np.arange(len(values)) - np.repeat(off[:-1] - off[0], lens)] = values
    return out


def own_history_scorer(items: torch.Tensor, pop_score: torch.Tensor):
    """The repeat baseline as a chunk scorer: count of the item in the history, ties to the
    most recent occurrence, then popularity (``pop_score`` in [0, 0.49]) for the rest."""
    B, L = items.shape
    valid = items > 0
    rows = torch.arange(B, device=items.device).unsqueeze(1).expand(B, L)[valid]
    cols = items[valid]
    pos = torch.arange(L, device=items.device, dtype=torch.float32).unsqueeze(0).expand(B, L)[valid]

    def score(start: int, stop: int) -> torch.Tensor:
        s = pop_score[start:stop].unsqueeze(0).repeat(B, 1)
        inside = (cols >= start) & (cols < stop)
        flat = rows[inside] * (stop - start) + (cols[inside] - start)
        count = torch.zeros(B * (stop - start), device=s.device).index_add_(
            0, flat, torch.ones(len(flat), device=s.device)).view_as(s)
        last = torch.zeros(B * (stop - start), device=s.device).scatter_reduce_(
            0, flat, pos[inside] + 1, reduce="amax").view_as(s)
        return torch.where(count > 0, count + 0.5 + 0.49 * last / (L + 1), s)
    return score


def most_frequent_scorer(items: torch.Tensor):
    """The plain repeat baseline as a chunk scorer: how often the item occurs in the
    history, count only (ties go to the lower item index, as for every ranker); items
    outside the history score -inf, so they never enter the list (no popular fill)."""
    B, L = items.shape
    valid = items > 0
    rows = torch.arange(B, device=items.device).unsqueeze(1).expand(B, L)[valid]
    cols = items[valid]

    def score(start: int, stop: int) -> torch.Tensor:
        inside = (cols >= start) & (cols < stop)
        flat = rows[inside] * (stop - start) + (cols[inside] - start)
        count = torch.zeros(B * (stop - start), device=items.device).index_add_(
            0, flat, torch.ones(len(flat), device=items.device)).view(B, stop - start)
        return torch.where(count > 0, count, torch.full_like(count, float("-inf")))
    return score


def item_knn(batches, history_len: int, vocab_size: int,
             neighbours: int = KNN_NEIGHBOURS) -> np.ndarray | None:
    """(V, V) float32 item-item cosine similarity over the evaluation inputs (each history
    without its test item), ``neighbours`` largest per item kept, self-similarity 0.
    None when the catalog is larger than ``KNN_MAX_ITEMS``."""
    if vocab_size - 1 > KNN_MAX_ITEMS:
        return None
    co = torch.zeros(vocab_size, vocab_size, dtype=torch.float32)
    asof = features.day_start_us("2000-01-01")
    for batch in batches:                      # history rows (pyarrow tables)
        _, x = features.batch_inputs(batch, "eval", history_len, asof, 1)
        items = torch.as_tensor(x["items"])
        h = torch.zeros(len(items), vocab_size).scatter_(1, items, 1.0)
        h[:, 0] = 0
        co += h.T @ h
    count = torch.diagonal(co).clone()
    sim = co / torch.sqrt(count.unsqueeze(0) * count.unsqueeze(1)).clamp(min=1e-12)
    sim.fill_diagonal_(0)
    if neighbours < vocab_size:
        kth = torch.topk(sim, neighbours, dim=1).values[:, -1:]
        sim = torch.where(sim >= kth, sim, torch.zeros_like(sim))
    return sim.numpy()


class Evaluator(LoadedModels):
    """Callable class for ``map_batches``: history rows -> per-user ranks of every ranker."""

    section = "eval"

    def __init__(self, inputs: EvalInputs, cfg: Config):
        super().__init__(inputs.context, cfg)
        self.protocol = inputs.protocol
        # the scorer's mask: items it would never show never rank here either
        self.blocked = self.mask(inputs.recommendable)
        self.knn = None if inputs.knn is None else torch.as_tensor(inputs.knn, device=self.device)
        self.fitted = inputs.fitted or baselines.Fitted()
        self.ease = None if self.fitted.ease is None else torch.as_tensor(self.fitted.ease, device=self.device)
        self.als = (None if self.fitted.als_items is None
                    else torch.as_tensor(self.fitted.als_items, device=self.device))
        logpop = np.log1p(self.vocab.popularity)
        self.pop = torch.as_tensor(logpop, dtype=torch.float32, device=self.device)
        self.pop_fill = self.pop / max(float(self.pop.max()), 1e-12) * 0.49
        self.category_pop = torch.as_tensor(category_popularity(self.vocab.item_category, self.vocab.popularity),
                                            dtype=torch.float32, device=self.device)

    def rankers(self, x: dict) -> dict:
        out = {}
        for kind in self.models:
            out[kind] = self.item_scores(kind, self.user_vectors(kind, x))
        B = len(x["target"])
        if self.protocol == "cold-items":
            out["category_popularity"] = lambda a, b: self.category_pop[a:b].unsqueeze(0).repeat(B, 1)
            return out
        out["popularity"] = lambda a, b: self.pop[a:b].unsqueeze(0).repeat(B, 1)
        out["own_history"] = own_history_scorer(x["items"], self.pop_fill)
        out["most_frequent"] = most_frequent_scorer(x["items"])
        if self.knn is not None:
            h = torch.zeros(B, self.knn.shape[0], device=self.device).scatter_(1, x["items"], 1.0)
            h[:, 0] = 0
            out["item_knn"] = lambda a, b: h @ self.knn[:, a:b]
        out.update(baselines.scorers(self.fitted, x.get("seen", x["items"]), self.ease, self.als))
        return out

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        if self.protocol in TARGETED:
            # the whole history before the test day is the input; the target is a ``target``
            # column of vocabulary indices (temporal: the user's first interaction that day)
            kept, x = self.inputs(batch, "score")
            x["target"] = torch.as_tensor(kept["target"].to_numpy(), device=self.device)
            x["ret_label"] = torch.zeros(len(x["target"]), device=self.device)
            x["ret_mask"] = torch.ones(len(x["target"]), device=self.device)   # no return label here
        else:
            kept, x = self.inputs(batch, "eval")
        seen = x.get("seen", x["items"]) if self.cfg.data.exclude_seen else None
        if "others" in kept.column_names:      # the user's other items of the test period
            others = torch.as_tensor(padded(kept["others"]), device=self.device)
            seen = others if seen is None else torch.cat([seen, others], 1)
        chunk, k, n_items = self.cfg.eval.item_chunk, self.cfg.eval.k, self.vocab.size
        neg = torch.as_tensor(_sampled_negatives(features.user_hash(kept["user_id"]),
                                                 x["target"].cpu().numpy(), n_items), device=self.device)
        out = {"n_events": x["length"].cpu().numpy(), "target": x["target"].cpu().numpy()}
        with torch.inference_mode():
            for name, fn in self.rankers(x).items():
                r = rank_all(fn, n_items, x["target"], neg, k, chunk, seen, self.blocked)
                out[f"rank_{name}"] = r["rank"].cpu().numpy()
                out[f"sampled_{name}"] = r["sampled_rank"].cpu().numpy()
                out[f"top_{name}"] = r["top"].cpu().numpy()
            if "sequence" in self.models:
                seq = self.models["sequence"].model
                out["p_return"] = torch.sigmoid(seq.return_logit(seq.user_states(x), x)).cpu().numpy()
        out["ret_label"] = x["ret_label"].cpu().numpy()
        # in "eval" inputs ret_mask marks the users held out of the return head's training
        # (features.return_eval_users) that have a state before the cutoff: its test set
        out["ret_eval"] = (x["ret_mask"] > 0).cpu().numpy()
        return out


def summarize(rows: dict[str, np.ndarray], k: int, popularity: np.ndarray | None = None,
              exclude_seen: bool | None = None, protocol: str = "leave-last-out",
              category: np.ndarray | None = None) -> dict:
    """metrics.json from the per-user evaluation rows (schema ``SCHEMA_VERSION``).

    ``popularity`` (per vocabulary index) gives catalog coverage, popularity bias and
    novelty; with the rows' ``target`` also serendipity against the ``popularity`` ranker's
    list (each user's, with their masks); ``category`` (per vocabulary index) the category
    diversity of the top-K lists."""
    ranked = sorted(c[len("rank_"):] for c in rows if c.startswith("rank_"))
    users = int(len(rows["ret_label"]))
    result = {"schema_version": SCHEMA_VERSION, "protocol": protocol, "ranking": "full",
              "k": k, "users": users, "exclude_seen": exclude_seen,
              "catalog_items": int(len(popularity) - 1) if popularity is not None else None,
              "baselines": [b for b in BASELINES if b in ranked], "models": {},
              "sampled": {"ranking": "sampled", "negatives": SAMPLED_NEGATIVES, "models": {}},
              "by_history_length": {"buckets": bucket_labels(), "users": [], "models": {}}}
    pct = popularity_percentile(popularity) if popularity is not None else None
    bucket = history_bucket(rows["n_events"]) if "n_events" in rows else np.zeros(users, np.int64)
    result["by_history_length"]["users"] = [int((bucket == b).sum()) for b in range(len(HISTORY_BUCKETS))]
    for name in ranked:
        r = rows[f"rank_{name}"]
        m = {f"hr@{k}": hit_rate(r, k), f"ndcg@{k}": ndcg(r, k), "mrr": mrr(r)}
        top = rows.get(f"top_{name}")
        if top is not None and pct is not None:
            m["coverage"] = coverage(top[:, :k], len(popularity) - 1)
            m["popularity_bias"] = popularity_bias(top[:, :k], pct)
            m["novelty_bits"] = novelty(top[:, :k], popularity)
            if "target" in rows and "top_popularity" in rows:
                m["serendipity"] = serendipity(top[:, :k], rows["target"], rows["top_popularity"][:, :k])
        if top is not None and category is not None:
            m["category_diversity"] = category_diversity(top[:, :k], category)
        result["models"][name] = m
        if f"sampled_{name}" in rows:
            s = rows[f"sampled_{name}"]
            result["sampled"]["models"][name] = {f"hr@{k}": hit_rate(s, k), f"ndcg@{k}": ndcg(s, k)}
        result["by_history_length"]["models"][name] = {
            f"hr@{k}": [hit_rate(r[bucket == b], k) if (bucket == b).any() else None
                        for b in range(len(HISTORY_BUCKETS))],
            f"ndcg@{k}": [ndcg(r[bucket == b], k) if (bucket == b).any() else None
                          for b in range(len(HISTORY_BUCKETS))]}
    if pct is not None:
        result["catalog_popularity_percentiles"] = _hist(pct[1:])
        result["recommended_popularity_percentiles"] = {
            name: _hist(pct[rows[f"top_{name}"][:, :k][rows[f"top_{name}"][:, :k] > 0]])
            for name in ranked if f"top_{name}" in rows}
    if "p_return" in rows and protocol == "leave-last-out":
        m = rows["ret_eval"].astype(bool)
        p, y = rows["p_return"][m], rows["ret_label"][m]
        result["return"] = {"auc": auc(p, y), "users": int(m.sum()),
                            "base_rate": float(np.mean(y)) if m.any() else None,
                            "brier": brier(p, y),
                            **calibration(p, y),
                            "score_histogram": {"positive": _hist(p[y > 0.5]),
                                                "negative": _hist(p[y <= 0.5])}}
    return result


def _hist(values: np.ndarray, bins: int = 20) -> list[int]:
    """Counts over ``bins`` equal-width bins of [0, 1] (for the report's plots)."""
    return np.histogram(np.clip(np.asarray(values, dtype=np.float64), 0, 1), bins=bins,
                        range=(0.0, 1.0))[0].astype(int).tolist()


def collect(histories: ray.data.Dataset, inputs: EvalInputs, cfg: Config) -> dict[str, np.ndarray]:
    """Per-user evaluation rows of every ranker (ranks are small ints; top-K lists K ints)."""
    ranked = histories.map_batches(Evaluator, fn_constructor_kwargs={"inputs": inputs, "cfg": cfg},
                                   **actor_pool(cfg, "eval"))
    cols: dict[str, list] = {}
    for batch in ranked.iter_batches(batch_format="numpy", batch_size=None):
        for c, v in batch.items():
            cols.setdefault(c, []).append(v)
    return {c: np.concatenate(v) for c, v in cols.items()}


def evaluate(histories: ray.data.Dataset, inputs: EvalInputs, cfg: Config) -> dict:
    """Run the evaluator over all histories and summarise (metrics.json). With the run's
    vocabulary (``inputs.context.vocab``) the baselines and the mask missing from ``inputs``
    are computed here first."""
    vocab = inputs.context.vocab
    classic = inputs.protocol != "cold-items"       # the baselines that can rank a cold item
    if vocab is not None and inputs.knn is None and classic:
        batches = histories.iter_batches(batch_format="pyarrow", batch_size=2048)
        inputs = dataclasses.replace(inputs, knn=item_knn(batches, cfg.data.history_len, vocab.size))
    if vocab is not None and inputs.recommendable is None:
        inputs = dataclasses.replace(inputs, recommendable=inputs.context.recommendable(cfg.data.catalog_uri))
    if vocab is not None and inputs.fitted is None and classic:
        mode = "score" if inputs.protocol == "temporal" else "eval"
        batches = histories.iter_batches(batch_format="pyarrow", batch_size=2048)
        inputs = dataclasses.replace(inputs, fitted=baselines.fit(batches, mode, cfg.data.history_len,
                                                                  vocab.size, cfg.baselines))
    rows = collect(histories, inputs, cfg)
    pop = vocab.popularity if vocab is not None else None
    result = summarize(rows, cfg.eval.k, pop, cfg.data.exclude_seen, inputs.protocol,
                       vocab.item_category if vocab is not None else None)
    if inputs.fitted is not None:
        result["baseline_fits"] = {**{n: {"seconds": s} for n, s in inputs.fitted.seconds.items()},
                                   **{n: {"skipped": why} for n, why in inputs.fitted.skipped.items()}}
    return result
