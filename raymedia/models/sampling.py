"""The negative-sampling distribution both models' sampled losses draw from (and
``grow_items`` extends): shared here so neither model imports the other."""

from __future__ import annotations

import torch


def popularity_sampler(popularity: torch.Tensor) -> torch.Tensor:
    """Negative-sampling distribution: smoothed popularity, never the padding index."""
    q = popularity.double() + 1.0
    q[0] = 0.0
    return (q / q.sum()).float()
