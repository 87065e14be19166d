"""The torch modules (no I/O, no Ray) and one way to build a model from a config; the
registry of model kinds (``raymedia.kinds``) is re-exported here.

Importing this package is cheap (no torch): the modules load on the first ``build``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from raymedia.config import Config

from raymedia.kinds import ALIASES, KINDS, kind, names  # noqa: F401  (re-exported)


def model_class(name: str) -> type:
    from raymedia.models.sequence import SequenceModel
    from raymedia.models.two_tower import TwoTowerModel
    return {"sequence": SequenceModel, "two_tower": TwoTowerModel}[kind(name)]


def model_kwargs(kind: str, cfg: Config) -> dict:
    """Constructor arguments from the config section of that model (JSON-able)."""
    section = {"sequence": cfg.sequence, "two_tower": cfg.two_tower}[kind]
    return dataclasses.asdict(section)


def build(kind: str, kwargs: dict, vocab_size: int, num_categories: int, max_len: int,
          item_category: torch.Tensor, popularity: torch.Tensor | None = None) -> torch.nn.Module:
    extra = {"popularity": popularity}
    return model_class(kind)(vocab_size, num_categories, max_len, item_category=item_category,
                        **kwargs, **extra)


def grow_items(model: torch.nn.Module, item_category: torch.Tensor, popularity: torch.Tensor,
               has_content: torch.Tensor | None = None) -> None:
    """Append item rows for items the model has never seen (in place).

    A new item starts at the popularity-weighted mean embedding of the known
    items in its category (of all known items when its category is new), so new
    content can be scored the day it appears and a warm start begins from a
    sensible point. A model with a content path gives new items that have content
    (``has_content``, per grown index) a zero id row instead: their content is what
    it knows of them, as for the items whose id it dropped in training. Known items
    keep their rows exactly. ``item_category`` and ``popularity`` are per index of
    the grown vocabulary.
    """
    import torch

    from raymedia.models.sampling import popularity_sampler

    old = model.item_emb.weight.data
    n_old, n_new = old.shape[0], len(item_category)
    if n_new < n_old:
        raise ValueError(f"cannot shrink the item table from {n_old} to {n_new} rows")
    weight = popularity[:n_old].to(old).clamp(min=0) + 1.0
    weight[0] = 0.0                                          # padding is not an item
    cats = item_category[:n_old].long()
    k = int(item_category.max()) + 1 if len(item_category) else 1
    sums = torch.zeros(k, old.shape[1], dtype=old.dtype).index_add_(0, cats, weight[:, None] * old)
    mass = torch.zeros(k, dtype=old.dtype).index_add_(0, cats, weight)
    overall = (weight[:, None] * old).sum(0) / weight.sum().clamp(min=1e-12)
    centroid = torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-12)[:, None], overall)
    new_cats = item_category[n_old:].long()
    rows = torch.where((new_cats > 0)[:, None], centroid[new_cats], overall)
    if getattr(model, "item_content", None) is not None and has_content is not None:
        rows = rows * (~has_content[n_old:n_new].to(rows.device)).unsqueeze(1).to(rows.dtype)
    emb = torch.nn.Embedding(n_new, old.shape[1], padding_idx=0).to(old.device)
    emb.weight.data = torch.cat([old, rows.to(old)])
    model.item_emb = emb
    model.item_category = item_category.to(old.device).long()
    if hasattr(model, "sample_prob"):
        model.sample_prob = popularity_sampler(popularity).to(old.device)
