"""Scoring throughput: the Ray Data pipeline vs the bare model compute, side by side.

Same users, items, models, dimension and K in one run:
- bare:     ``Scorer.compute`` on pre-built tensors (user vectors x item matrix + top-K, and the
            sequence model's return/category heads), one process, no Ray, no I/O
- scorer:   the Scorer class called in-process on Arrow batches (features + compute + output rows)
- pipeline: histories.map_batches(Scorer, actor pool) -> write Parquet -> commit, on local Ray

All three use ``score.num_cpus`` torch threads (1 by default: one actor per core, the other
core left to reading and writing).

Models are randomly initialised (throughput does not depend on training). Appends a table to
BENCHMARKS.md unless --no-record.

    python benchmarks/scoring.py --users 20000 --items 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import pyarrow as pa
import ray

from common import publish_random_models, record  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, features, pipeline, storage  # noqa: E402
from raymedia.data import read  # noqa: E402
from raymedia.data.generate import GeneratorConfig, generate  # noqa: E402
from raymedia.data.vocab import Vocab  # noqa: E402
from raymedia.score import Scorer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--recommender", default="two_tower", choices=["two_tower", "sequence"])
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="raymedia-bench-")
    cfg = config.load(None, [
        f"data.events_uri={work}/events", f"data.catalog_uri={work}/catalog",
        f"output.uri={work}/scores", f"output.models_uri={work}/models",
        f"data.lookback_days={args.days}", f"two_tower.dim={args.dim}", f"sequence.dim={args.dim}",
        f"score.top_k={args.k}", f"score.batch_size={args.batch_size}",
        f"score.recommender={args.recommender}", "eval.enabled=false", "ray.progress_bars=false"])
    pipeline.init_ray(cfg)
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=0)
    generate(gen, work, overwrite=True)
    day = gen.start + dt.timedelta(days=args.days)

    parts = read.event_partitions(cfg.data.events_uri, read.window(day, args.days))
    log_items = read.read_events(cfg.data.events_uri, parts).unique("item_id")
    vocab = Vocab.build(read.read_catalog(cfg.data.catalog_uri), pa.array(log_items), features.day_start_us(day))
    uris = publish_random_models(cfg, vocab, "bench")

    # pipeline: prepare (read + histories) is timed apart from score + write + commit
    t0 = time.perf_counter()
    result = pipeline.run_day(cfg, day, train_models=False)
    pipe_total = time.perf_counter() - t0
    n_users = result.counts["users_scored"]
    pipe_score = result.seconds["score"]

    # the same histories, in process
    secs: dict = {}
    inputs = pipeline.prepare(cfg, day, storage.new_run_id(), secs, vocab, learn_items=False)
    table = pa.concat_tables(ray.get(inputs.histories.to_arrow_refs()))
    scorer = Scorer(uris, cfg, day.isoformat(), inputs.vocab)
    t0 = time.perf_counter()
    for s in range(0, table.num_rows, args.batch_size):
        scorer(table.slice(s, args.batch_size))
    in_proc = time.perf_counter() - t0

    batches = [scorer.inputs(table.slice(s, args.batch_size), "score")[1]
               for s in range(0, table.num_rows, args.batch_size)]
    t0 = time.perf_counter()
    for x in batches:
        scorer.compute(x)
    bare = time.perf_counter() - t0

    rows = [("bare compute (top-K + sequence heads)", n_users / bare),
            ("Scorer in-process (features + compute + Arrow)", n_users / in_proc),
            ("pipeline score+write+commit (Ray Data actors)", n_users / pipe_score),
            ("pipeline end to end (read + histories + score)", n_users / pipe_total)]
    header = (f"scoring: {n_users} users, {vocab.size - 1} items, dim {args.dim}, K {args.k}, "
              f"recommender {args.recommender}, batch {args.batch_size}")
    lines = [header, "", "| path | users/s | vs bare |", "|---|---:|---:|"]
    lines += [f"| {name} | {v:,.0f} | {v / rows[0][1]:.2f} |" for name, v in rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Scoring throughput", text)
    storage.delete_dir(work) if args.work is None else None


if __name__ == "__main__":
    main()
