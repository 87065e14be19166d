"""What the Ray cluster offers: asked by training (GPU or not), the inference actor
pools (a GPU per actor) and tuning (trials at once); a module of its own so none of
them imports another for it."""

from __future__ import annotations

import ray


def cluster_gpus() -> float:
    """GPUs in the Ray cluster (0 on a CPU cluster)."""
    return ray.cluster_resources().get("GPU", 0)
