"""What every benchmark shares: the repo on sys.path, and appending a figure to BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def publish_random_models(cfg, vocab, version: str, content: dict | None = None) -> dict[str, str]:
    """Both models, randomly initialised (throughput does not depend on training), published
    to ``cfg.output.models_uri`` like trained ones; returns their URIs. ``content``: their
    content path (``models.content.spec_for``), None for id-only models."""
    import tempfile
    import torch
    from raymedia import checkpoint, models
    uris = {}
    for kind in models.KINDS:
        torch.manual_seed(0)
        meta = checkpoint.ModelMeta.new(kind, version, cfg, vocab, content=content)
        model = models.build(kind, meta.kwargs, vocab.size, vocab.num_categories,
                             cfg.data.history_len, torch.as_tensor(vocab.item_category),
                             torch.as_tensor(vocab.popularity))
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save_dir(d, model, meta, vocab)
            uris[kind] = checkpoint.publish(d, cfg.output.models_uri, kind, version)
    return uris


def workload_args(p) -> None:
    """The scoring workload (users x items, embedding dim, top-K) that the scoring,
    exact-cost and peers benchmarks share by default, so their figures compare."""
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100)


def record(title: str, text: str) -> None:
    """Append a section (machine, versions, command, table) to BENCHMARKS.md."""
    import ray
    import torch
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}, ray {ray.__version__}")
    cmd = " ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write(f"\n### {title} ({dt.date.today()})\n\n`{cmd}` on {machine}\n\n{text}\n")


def log_setup() -> None:
    """INFO logs of raymedia's stages, Ray's own chatter at WARNING; Ray Train's v2 API."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "ray.data", "ray.train", "ray.tune", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
