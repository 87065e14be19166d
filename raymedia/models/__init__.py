"""The torch modules (no I/O, no Ray) and one way to build them from a config."""

from __future__ import annotations

import dataclasses

import torch

from raymedia.config import Config
from raymedia.models.sequence import SequenceModel
from raymedia.models.two_tower import TwoTowerModel

MODELS = {"sequence": SequenceModel, "two_tower": TwoTowerModel}


def model_kwargs(kind: str, cfg: Config) -> dict:
    """Constructor arguments from the config section of that model (JSON-able)."""
    section = {"sequence": cfg.sequence, "two_tower": cfg.two_tower}[kind]
    return dataclasses.asdict(section)


def build(kind: str, kwargs: dict, vocab_size: int, num_categories: int, max_len: int,
          item_category: torch.Tensor, popularity: torch.Tensor | None = None) -> torch.nn.Module:
    extra = {"popularity": popularity} if kind == "two_tower" else {}
    return MODELS[kind](vocab_size, num_categories, max_len, item_category=item_category,
                        **kwargs, **extra)
