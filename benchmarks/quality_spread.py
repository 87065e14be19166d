"""The spread of the quality figures the tests assert, over training seeds and torch thread
counts, so their bars are set from measurements, not from one machine's run.

- ``pipeline``: the session world of tests/conftest.py (``trained_run``): two-tower and
  sequence NDCG@10 / popularity NDCG@10, and the return head's AUC (tests/system/test_pipeline.py);
- ``nightly``: the world of tests/system/test_nightly.py: a full run on day 1, then a one-epoch
  warm start on day 3, sequence NDCG@10 / popularity NDCG@10.

    python benchmarks/quality_spread.py --seeds 0 1 2 --threads 1 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import ROOT  # noqa: E402,F401  (puts the repo on sys.path)
from conftest import small_config  # noqa: E402

import ray  # noqa: E402

from raymedia import models, pipeline  # noqa: E402
from raymedia.data.generate import GeneratorConfig, generate  # noqa: E402


_GENERATED: set[str] = set()


def _generate(gen: GeneratorConfig, root: str) -> None:
    if root not in _GENERATED:
        generate(gen, root, overwrite=True)
        _GENERATED.add(root)


def ratios(metrics: dict) -> dict[str, float]:
    m = metrics["models"]
    pop = m["popularity"]["ndcg@10"]
    out = {f"{k}/pop": m[k]["ndcg@10"] / pop for k in models.KINDS if k in m}
    if "return" in metrics:
        out["auc"] = metrics["return"]["auc"]
    return out


def pipeline_world(work: str, seed: int, threads: int) -> dict[str, float]:
    root = f"{work}/world"
    gen = GeneratorConfig(users=1200, items=400, days=14, seed=7, categories=12)
    _generate(gen, root)
    cfg = small_config(root, f"train.seed={seed}", f"train.cpus_per_worker={threads}",
                       f"output.uri={work}/p{seed}-{threads}/scores",
                       f"output.models_uri={work}/p{seed}-{threads}/models")
    return ratios(pipeline.run_day(cfg, gen.start + dt.timedelta(days=gen.days)).metrics)


def nightly_world(work: str, seed: int, threads: int) -> dict[str, float]:
    root = f"{work}/nightly"
    gen = GeneratorConfig(users=600, items=300, days=10, seed=11, categories=8, new_item_fraction=0.15)
    _generate(gen, root)
    d1, d3 = gen.start + dt.timedelta(days=7), gen.start + dt.timedelta(days=9)
    base = ["data.lookback_days=7", "data.history_len=20", "train.epochs=3", f"train.seed={seed}",
            f"train.cpus_per_worker={threads}", f"output.models_uri={work}/n{seed}-{threads}/models"]
    pipeline.run_day(small_config(root, *base, "eval.enabled=false",
                                  f"output.uri={work}/n{seed}-{threads}/scores"), d1)
    warm = small_config(root, *base, "train.schedule=warm", "train.warm_epochs=1", "eval.enabled=true",
                        f"output.uri={work}/n{seed}-{threads}/warm")
    return ratios(pipeline.run_day(warm, d3).metrics)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--worlds", nargs="+", default=["nightly", "pipeline"])
    args = p.parse_args()
    ray.init(num_cpus=max(args.threads) + 2, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = tempfile.mkdtemp(prefix="raymedia-spread-")
    runs = {"nightly": nightly_world, "pipeline": pipeline_world}
    for world in args.worlds:
        for threads in args.threads:
            for seed in args.seeds:
                r = runs[world](work, seed, threads)
                print(f"{world} seed={seed} threads={threads}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
