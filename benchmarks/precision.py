"""Does half-precision scoring keep the ranking? Top-K of bf16 / fp16 vs fp32, side by side.

Trains both models briefly on a generated world (rankings of random models say
nothing), then scores the same users in-process with ``score.precision`` fp32,
bf16 and fp16 and reports, per precision: overlap@K with the fp32 top-K (share
of the K items in common, averaged over users), the share of users whose top-K
list is identical in order, and users/s of ``Scorer.compute``. On CPUs without
native half-precision matmul the speed column is context only; the overlap is
what tells whether ``score.precision=bf16`` is safe on a GPU cluster.

    python benchmarks/precision.py --users 3000 --items 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import time

import numpy as np
import pyarrow as pa
import ray

from common import record  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, models, pipeline, storage  # noqa: E402
from raymedia.data.generate import GeneratorConfig, generate  # noqa: E402
from raymedia.inference import ScoringContext  # noqa: E402
from raymedia.score import Scorer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="raymedia-precision-")
    cfg = config.load(None, [
        f"data.events_uri={work}/events", f"data.catalog_uri={work}/catalog",
        f"output.uri={work}/scores", f"output.models_uri={work}/models",
        f"data.lookback_days={args.days}", f"score.top_k={args.k}", f"train.epochs={args.epochs}",
        "eval.enabled=false", "ray.progress_bars=false"])
    pipeline.init_ray(cfg)
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=0)
    generate(gen, work)
    day = gen.start + dt.timedelta(days=args.days)
    result = pipeline.run_day(cfg, day)
    inputs = pipeline.prepare(cfg, day, storage.new_run_id(), pipeline._vocab_of(
        result.model_uris["sequence"]), learn_items=False, keep_popularity=True)
    table = pa.concat_tables(ray.get(inputs.histories.to_arrow_refs()))

    lines = [f"precision: {table.num_rows} users, {inputs.vocab.size - 1} items, K {args.k}, "
             f"models trained {args.epochs} epochs", "",
             "| recommender | precision | overlap@K vs fp32 | identical lists | users/s (compute) |",
             "|---|---|---:|---:|---:|"]
    for rec in models.KINDS:
        top: dict[str, np.ndarray] = {}
        for precision in ("fp32", "bf16", "fp16"):
            c = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, precision=precision,
                                                                   recommender=rec))
            scorer = Scorer(ScoringContext.build(result.model_uris, day.isoformat(), inputs.vocab,
                                                 c.data.catalog_uri, inputs.content), c)
            batches = [scorer.inputs(table.slice(s, 1024), "score")[1] for s in range(0, table.num_rows, 1024)]
            t0 = time.perf_counter()
            top[precision] = np.concatenate([scorer.compute(x)["idx"].numpy() for x in batches])
            speed = table.num_rows / (time.perf_counter() - t0)
            ref = top["fp32"]
            overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ref, top[precision])])
            same = np.mean((ref == top[precision]).all(1))
            lines.append(f"| {rec} | {precision} | {overlap:.4f} | {same:.3f} | {speed:,.0f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Half-precision scoring keeps the ranking", text)
    storage.delete_dir(work)


if __name__ == "__main__":
    main()
