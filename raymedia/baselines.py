"""Strong classic baselines fitted in the evaluation run, so that every figure the project
publishes says whether a model beats what a kept library gives in an afternoon.

Both learn from one binary user x item matrix X (vocabulary indices as columns): a row per
evaluated user, the items they had seen before their test item (``features``' ``seen``
input, so the test item never leaks in), rows in user-id order. Both then score a user from
that row alone, as the item-kNN baseline does:

- **EASE** (Steck, WWW 2019), closed form: ``P = (XᵀX + λI)⁻¹``, ``B = I - P·diag(1/diag P)``
  (so ``diag B = 0``), scores ``x·B``. It inverts an items x items matrix: catalogs above
  ``baselines.ease_max_items`` are skipped with the reason logged.
- **ALS** (Hu, Koren & Volinsky, ICDM 2008) from the ``implicit`` library (the ``[eval]``
  extra; skipped, with the reason logged, without it): item factors Y fitted on X; a user's
  vector is ALS's own user step solved exactly from their row, ``(YᵀY + λI + (α-1)·Y_sᵀY_s)⁻¹
  α·Σ_s y_s`` over their items s, which is what implicit's ``recalculate_user`` solves.

Fits are seeded and single-threaded (BLAS and implicit), so figures repeat on any machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymedia.config import BaselinesConfig

log = logging.getLogger(__name__)
NAMES = ("als", "ease")


@dataclass(frozen=True)
class Fitted:
    """What the evaluator needs to score the baselines (None: not fitted, see ``skipped``)."""
    ease: np.ndarray | None = None           # (V, V) float32 item-item weights B
    als_items: np.ndarray | None = None      # (V, factors) float32 item factors Y, row 0 zero
    als_regularization: float = 0.0
    als_alpha: float = 1.0
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def user_matrix(batches, mode: str, history_len: int, vocab_size: int):
    """Binary scipy CSR (users x ``vocab_size``) of each history row's ``seen`` input, rows
    sorted by user id (so the fit does not depend on how Ray ordered the blocks)."""
    import scipy.sparse as sp
    from raymedia import features
    users, rows, cols, n = [], [], [], 0
    for batch in batches:                      # history rows (pyarrow tables)
        kept, x = features.batch_inputs(batch, mode, history_len, 0, 1)
        seen = x["seen"]
        r, c = np.nonzero(seen)
        rows.append(r + n)
        cols.append(seen[r, c])
        users.append(kept["user_id"].combine_chunks())
        n += len(seen)
    if not n:
        return sp.csr_matrix((0, vocab_size), dtype=np.float32)
    order = pc.sort_indices(pa.concat_arrays(users)).to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    r, c = rank[np.concatenate(rows)], np.concatenate(cols)
    X = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, vocab_size))
    X.data[:] = 1.0                            # repeats count once
    return X


def ease(X, lam: float) -> np.ndarray:
    """EASE weights ``B`` (float32, V x V) of a binary user x item matrix (see module doc)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, "blas"):
        G = (X.T @ X).toarray().astype(np.float64)
        G[np.diag_indices_from(G)] += lam
        P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B.astype(np.float32)


def als_items(X, cfg: BaselinesConfig) -> np.ndarray:
    """implicit's ALS item factors (V x factors, float32; padding row 0 zeroed), seeded and
    single-threaded. ImportError when the ``[eval]`` extra is not installed."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=cfg.als_factors, regularization=cfg.als_regularization,
                                        alpha=cfg.als_alpha, iterations=cfg.als_iterations,
                                        random_state=cfg.seed, num_threads=1)
        model.fit(X.tocsr(), show_progress=False)
    Y = np.array(model.item_factors, dtype=np.float32)
    Y[0] = 0.0
    return Y


def fit(batches, mode: str, history_len: int, vocab_size: int, cfg: BaselinesConfig) -> Fitted:
    """Fit the configured baselines on the evaluation inputs (``batches`` of history rows)."""
    X = user_matrix(batches, mode, history_len, vocab_size)
    out: dict = {"seconds": {}, "skipped": {}}
    if X.shape[0] == 0:
        out["skipped"] = {n: "no user with an item before their test item" for n in NAMES
                          if getattr(cfg, n)}
    elif cfg.ease and vocab_size - 1 > cfg.ease_max_items:
        out["skipped"]["ease"] = (f"{vocab_size - 1} items > baselines.ease_max_items="
                                  f"{cfg.ease_max_items} (EASE inverts an items x items matrix)")
    elif cfg.ease:
        t0 = time.perf_counter()
        out["ease"] = ease(X, cfg.ease_lambda)
        out["seconds"]["ease"] = round(time.perf_counter() - t0, 2)
    if cfg.als and X.shape[0]:
        t0 = time.perf_counter()
        try:
            out["als_items"] = als_items(X, cfg)
            out["seconds"]["als"] = round(time.perf_counter() - t0, 2)
        except ImportError as exc:
            out["skipped"]["als"] = f"implicit is not installed (pip install 'raymedia[eval]'): {exc}"
    for name, why in out["skipped"].items():
        log.warning("baseline %s skipped: %s", name, why)
    return Fitted(als_regularization=cfg.als_regularization, als_alpha=cfg.als_alpha, **out)


def _distinct(seen: torch.Tensor) -> torch.Tensor:
    """Each row's items once (repeats set to the padding index 0)."""
    s = torch.sort(seen, dim=1).values
    s[:, 1:] = torch.where(s[:, 1:] == s[:, :-1], torch.zeros_like(s[:, 1:]), s[:, 1:])
    return s


def als_users(Y: torch.Tensor, seen: torch.Tensor, regularization: float, alpha: float) -> torch.Tensor:
    """(B, factors) ALS user vectors of rows of seen items (padding 0; Y's row 0 is zero)."""
    Y64 = Y.double()
    Ys = Y64[_distinct(seen)]                                      # (B, W, f)
    f = Y.shape[1]
    A = Y64.T @ Y64 + regularization * torch.eye(f, dtype=torch.float64, device=Y.device)
    A = A.unsqueeze(0) + (alpha - 1.0) * Ys.transpose(1, 2) @ Ys
    b = alpha * Ys.sum(1)
    return torch.linalg.solve(A, b).float()


def scorers(fitted: Fitted, seen: torch.Tensor, ease_w: torch.Tensor | None,
            als_y: torch.Tensor | None) -> dict:
    """Chunk scorers ``(start, stop) -> (B, stop - start)`` of the fitted baselines for
    users given by their seen items (``ease_w``, ``als_y``: the fitted arrays on the device)."""
    out = {}
    if ease_w is not None:
        h = torch.zeros(len(seen), ease_w.shape[0], device=seen.device).scatter_(1, seen, 1.0)
        h[:, 0] = 0
        out["ease"] = lambda a, b: h @ ease_w[:, a:b]
    if als_y is not None:
        u = als_users(als_y, seen, fitted.als_regularization, fitted.als_alpha)
        out["als"] = lambda a, b: u @ als_y[a:b].T
    return out
