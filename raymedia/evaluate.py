"""Offline evaluation: leave-last-out, full ranking over all items.

Each user's last interaction is the test item; the models rank every item
from the rest of the history (seen items masked when the run masks them, so a
repeat test item counts as a miss for every model alike). Ranks use the same
deterministic ordering as scoring. The popularity baseline is ranked side by
side in the same pass. The return head is scored on the users held out of its
training (see ``features.return_eval_users``) with AUC.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch

from raymedia.config import Config
from raymedia.data.vocab import Vocab
from raymedia.score import _Models, target_ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose test item ranks in the top k (rank -1 = masked = miss)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return float("nan")
    hit = (ranks >= 0) & (ranks < k)
    return float(np.mean(np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)))


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


class Evaluator(_Models):
    """Callable class for ``map_batches``: history rows -> per-user test ranks."""

    def __init__(self, model_uris: dict[str, str], cfg: Config, asof: str, vocab: Vocab | None = None):
        super().__init__(model_uris, cfg, asof, vocab)
        pop = torch.as_tensor(np.log1p(self.vocab.popularity), dtype=torch.float32)
        self.items["popularity"] = pop.unsqueeze(1).to(self.device)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        kept, x = self.inputs(batch, "eval")
        seen = x["items"] if self.cfg.score.exclude_seen else None
        chunk = self.cfg.score.item_chunk
        out = {"n_events": x["length"].cpu().numpy()}
        with torch.inference_mode():
            for kind in self.models:
                out[f"rank_{kind}"] = target_ranks(self.user_vectors(kind, x), self.items[kind],
                                                   x["target"], chunk, seen).cpu().numpy()
            ones = torch.ones(len(x["target"]), 1, device=self.device)
            out["rank_popularity"] = target_ranks(ones, self.items["popularity"], x["target"],
                                                  chunk, seen).cpu().numpy()
            if "sequence" in self.models:
                seq = self.models["sequence"].model
                out["p_return"] = torch.sigmoid(seq.return_logit(seq.user_states(x), x)).cpu().numpy()
        out["ret_label"] = x["ret_label"].cpu().numpy()
        # ret_mask marks the head's training users; the rest (with a valid state) are its test set
        out["ret_eval"] = ((x["ret_mask"] == 0) & (x["ret_pos"] >= 0)).cpu().numpy()
        return out


def summarize(rows: dict[str, np.ndarray], k: int) -> dict:
    """Metrics from the per-user evaluation rows."""
    ranked = sorted(c[len("rank_"):] for c in rows if c.startswith("rank_"))
    result = {"protocol": "leave-last-out", "ranking": "full", "k": k,
              "users": int(len(rows["ret_label"])), "models": {}}
    for name in ranked:
        r = rows[f"rank_{name}"]
        result["models"][name] = {f"hr@{k}": hit_rate(r, k), f"ndcg@{k}": ndcg(r, k)}
    if "p_return" in rows:
        m = rows["ret_eval"].astype(bool)
        result["return"] = {"auc": auc(rows["p_return"][m], rows["ret_label"][m]),
                            "users": int(m.sum()),
                            "base_rate": float(np.mean(rows["ret_label"][m])) if m.any() else None}
    return result


def evaluate(histories: ray.data.Dataset, models: dict, cfg: Config) -> dict:
    """Run the evaluator over all histories and summarise (per-user ranks are small ints).

    ``models`` are the Evaluator's arguments: ``model_uris``, ``asof`` and the run's ``vocab``.
    """
    ranked = histories.map_batches(
        Evaluator, fn_constructor_kwargs={**models, "cfg": cfg},
        batch_size=cfg.score.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.score.concurrency),
        num_cpus=cfg.score.num_cpus, num_gpus=1 if _gpus() else 0)
    cols: dict[str, list] = {}
    for batch in ranked.iter_batches(batch_format="numpy", batch_size=None):
        for c, v in batch.items():
            cols.setdefault(c, []).append(v)
    rows = {c: np.concatenate(v) for c, v in cols.items()}
    return summarize(rows, cfg.eval.k)


def _gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
