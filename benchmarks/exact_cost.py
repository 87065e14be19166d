"""What batch-invariant (exact) scoring costs: the Scorer's model compute in process.

Randomly initialised models (throughput does not depend on training), synthetic
histories of ``--history`` events, no Ray and no I/O, so the figure isolates the
scorer: ``bare`` is ``Scorer.compute`` on pre-built tensors (user vectors, item
scores + top-K, the heads), ``scorer`` the Scorer on Arrow batches (+ features and
output rows). Run it with the tree to measure on ``PYTHONPATH`` (e.g. before and after a
change, alternating, best of ``--repeat``):

    PYTHONPATH=. python benchmarks/exact_cost.py --users 20000 --items 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

from common import publish_random_models, workload_args  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, models  # noqa: E402
from raymedia.data.vocab import Vocab  # noqa: E402
from raymedia.inference import ScoringContext  # noqa: E402
from raymedia.score import Scorer  # noqa: E402


def histories(users: int, items: int, length: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, users)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    n = int(lengths.sum())

    def lists(values):
        return pa.ListArray.from_arrays(offsets, pa.array(values))
    return pa.table({"user_id": pa.array(np.arange(users)), "items": lists(rng.integers(1, items + 1, n)),
                     "events": lists(rng.integers(1, 5, n).astype(np.int8)),
                     "ts": lists(1_768_000_000_000_000 + np.sort(rng.integers(0, 10 ** 12, n))),
                     "dwell_s": lists(rng.uniform(0, 300, n).astype(np.float32)),
                     "n_events": pa.array(lengths.astype(np.int32))})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_args(p)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--recommender", default="two_tower", choices=models.KINDS)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="raymedia-exact-")
    cfg = config.load(None, [f"output.models_uri={work}/models", f"data.history_len={args.history}",
                             f"two_tower.dim={args.dim}", f"sequence.dim={args.dim}", f"score.top_k={args.k}",
                             f"score.recommender={args.recommender}", f"score.precision={args.precision}"])
    rng = np.random.default_rng(0)
    vocab = Vocab(pa.array(np.arange(1, args.items + 1)), np.concatenate([[0], rng.integers(1, 21, args.items)]),
                  [f"c{i}" for i in range(1, 21)], np.concatenate([[0], rng.integers(0, 1000, args.items)]).astype(float))
    scorer = Scorer(ScoringContext(publish_random_models(cfg, vocab, "bench"), "2026-01-20", vocab), cfg,
                    np.ones(vocab.size, dtype=bool))
    table = histories(args.users, args.items, args.history)
    slices = [table.slice(s, args.batch_size) for s in range(0, table.num_rows, args.batch_size)]
    inputs = [scorer.inputs(b, "score")[1] for b in slices]
    best = {"bare": float("inf"), "scorer": float("inf")}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for x in inputs:
            scorer.compute(x)
        best["bare"] = min(best["bare"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in slices:
            scorer(b)
        best["scorer"] = min(best["scorer"], time.perf_counter() - t0)
    print(f"{args.users} users, {args.items} items, dim {args.dim}, K {args.k}, history {args.history}, "
          f"{args.recommender}, {args.precision}, batch {args.batch_size}, {torch.get_num_threads()} thread(s): "
          + ", ".join(f"{k} {args.users / v:,.0f} users/s" for k, v in best.items()))


if __name__ == "__main__":
    main()
