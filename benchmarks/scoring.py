"""Scoring throughput: the Ray Data pipeline vs the bare model compute, side by side.

Same users (those of day D+1), items, models, dimension and K in one run:
- bare:     ``Scorer.compute`` on pre-built tensors (user vectors x item matrix + top-K, and the
            sequence model's return/category heads), one process, no Ray, no I/O
- scorer:   the Scorer class called in-process on Arrow batches (features + compute + output rows)
- stage:    the job's scoring stage on Ray Data, streaming: read the committed user state ->
            histories -> Scorer actor pool -> write Parquet (``pipeline.score_histories``)
- nightly:  ``run_day(D+1)`` end to end: D's state + one day of events -> new state (a
            shuffle on user_id) -> score -> write -> commit
- rebuild:  ``run_day(D)`` end to end from every day of the window (the first night)

All use ``score.num_cpus`` torch threads (1 by default: one actor per core, the other
core left to reading and writing).

Models are randomly initialised (throughput does not depend on training). Appends a table to
BENCHMARKS.md unless --no-record.

    python benchmarks/scoring.py --users 20000 --items 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from common import publish_random_models, record, workload_args  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, features, models, pipeline, storage  # noqa: E402
from raymedia.data import read, state  # noqa: E402
from raymedia.data.generate import GeneratorConfig, generate  # noqa: E402
from raymedia.data.vocab import Vocab  # noqa: E402
from raymedia.inference import ScoringContext  # noqa: E402
from raymedia.score import Scorer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=14)
    workload_args(p)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--recommender", default="two_tower", choices=models.KINDS)
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
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days + 1, seed=0)
    generate(gen, work, overwrite=True)
    day = gen.start + dt.timedelta(days=args.days)      # D: a rebuild from `days` days of events
    nxt = day + dt.timedelta(days=1)                     # D+1: nightly, D's state + dt=D

    parts = read.event_partitions(cfg.data.events_uri, read.window(day, args.days))
    log_items = read.read_events(cfg.data.events_uri, parts).unique("item_id")
    catalog = read.read_catalog(cfg.data.catalog_uri)
    vocab = Vocab.build(catalog, pa.array(log_items), features.day_start_us(day))
    uris = publish_random_models(cfg, vocab, "bench")

    t0 = time.perf_counter()
    rebuild = pipeline.run_day(cfg, day, train_models=False)
    rebuild_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    nightly = pipeline.run_day(cfg, nxt, train_models=False)
    nightly_s = time.perf_counter() - t0
    assert nightly.plan["state"]["mode"] == "incremental", nightly.plan
    n_users = nightly.counts["users_scored"]

    # the scoring stage alone, streamed from D+1's committed user state
    state_uris = storage.read_commit(cfg.output.uri, nxt).uris(cfg.output.uri, "user_state")
    vocab_n = Vocab.build(catalog, pa.array([], vocab.item_ids.type), features.day_start_us(nxt), base=vocab)
    n = pipeline.state_len(cfg)
    fs, _ = storage.resolve(cfg.output.uri)
    context = ScoringContext(uris, nxt.isoformat(), vocab_n)
    t0 = time.perf_counter()
    histories = state.read_files(state_uris).map_batches(          # as the job reads them
        state.to_histories, batch_format="pyarrow", fn_kwargs={"vocab": vocab_n, "n": n})
    written = pipeline.score_histories(cfg, histories, context, f"{work}/streamed", "bench",
                                       dt.datetime.now(dt.timezone.utc).isoformat())
    stream_s = time.perf_counter() - t0
    assert sum(w["rows"] for w in written if w["table"] == "recommendations") == n_users

    # the same users in process: the Scorer on Arrow batches, then the bare model compute
    table = state.to_histories(pa.concat_tables(
        [pq.read_table(storage.resolve(u)[1], filesystem=fs) for u in state_uris]), vocab_n, n)
    scorer = Scorer(context, cfg, context.recommendable(cfg.data.catalog_uri))
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

    rows = [("bare compute (top-K + sequence heads), one process", n_users / bare),
            ("Scorer in process (features + compute + Arrow rows)", n_users / in_proc),
            ("scoring stage on Ray Data: read state -> histories -> actors -> write", n_users / stream_s),
            ("nightly run end to end: yesterday's state + 1 day of events -> state -> score -> commit",
             n_users / nightly_s),
            (f"rebuild run end to end: {args.days} days of events -> state -> score -> commit "
             f"({rebuild.counts['input_rows']:,} events)", rebuild.counts["users_scored"] / rebuild_s)]
    stages = {k: v for k, v in nightly.seconds.items()}
    header = (f"scoring: {n_users:,} users, {vocab_n.size - 1:,} items, dim {args.dim}, K {args.k}, "
              f"recommender {args.recommender}, batch {args.batch_size}, {cfg.score.concurrency} actor x "
              f"{cfg.score.num_cpus:g} CPU, {os.cpu_count()} cores")
    lines = [header, "", "| path | users/s | vs bare |", "|---|---:|---:|"]
    lines += [f"| {name} | {v:,.0f} | {v / rows[0][1]:.2f} |" for name, v in rows]
    lines += ["", f"Nightly run stage seconds: {stages}; rebuild: {rebuild.seconds}"]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Scoring throughput", text)
    storage.delete_dir(work) if args.work is None else None


if __name__ == "__main__":
    main()
