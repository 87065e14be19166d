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
               trained: torch.Tensor | None = None) -> None:
    """Append item rows for items the model has never seen (in place).

    A new item starts at the popularity-weighted mean embedding of the known
    items in its category (of all known items when its category is new:
    ``content.category_fallback``), so new content can be scored the day it appears
    and a warm start begins from a sensible point. A model with a content path adds
    the item's content to that row, and gives the same fallback to the items of its
    own table that no training example touched (``trained`` False, per index of the
    table): their id rows are still the random start, which would drown their
    content, and training replaced the dropped id rows with it (DropoutNet). Known
    items keep their rows exactly. ``item_category`` and ``popularity`` are per index
    of the grown vocabulary.
    """
    import torch

    from raymedia.models.content import category_fallback
    from raymedia.models.sampling import popularity_sampler

    old = model.item_emb.weight.data
    n_old, n_new = old.shape[0], len(item_category)
    if n_new < n_old:
        raise ValueError(f"cannot shrink the item table from {n_old} to {n_new} rows")
    weight = popularity[:n_old].to(old).clamp(min=0) + 1.0
    weight[0] = 0.0                                          # padding is not an item
    rows = category_fallback(old, item_category[:n_old].long(), weight, item_category.long())
    if getattr(model, "item_content", None) is not None and trained is not None:
        unknown = (~trained[:n_old].to(old.device)).clone()
        unknown[0] = False
        old = torch.where(unknown.unsqueeze(1), rows[:n_old], old)
    emb = torch.nn.Embedding(n_new, old.shape[1], padding_idx=0).to(old.device)
    emb.weight.data = torch.cat([old, rows[n_old:].to(old)])
    model.item_emb = emb
    model.item_category = item_category.to(old.device).long()
    if hasattr(model, "sample_prob"):
        model.sample_prob = popularity_sampler(popularity).to(old.device)
