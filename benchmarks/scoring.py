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
core left to reading and writing). ``--content`` measures every path twice in the same run,
side by side: id-only models, then models with a content path (the generated catalog's
titles, descriptions and tags; tokenized once per run on the driver, each item's content
vector computed once per actor).

Models are randomly initialised (throughput does not depend on training). Appends a table to
BENCHMARKS.md unless --no-record.

    python benchmarks/scoring.py --users 20000 --items 5000
    python benchmarks/scoring.py --users 30000 --items 5000 --content
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
from raymedia.models.content import run_tokens, spec_for  # noqa: E402
from raymedia.score import Scorer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=14)
    workload_args(p)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--recommender", default="two_tower", choices=models.KINDS)
    p.add_argument("--content", action="store_true",
                   help="measure every path twice, side by side: id-only models, then models with a "
                        "content path over the generated catalog's content columns (content.enabled=on)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="raymedia-bench-")
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days + 1, seed=0)
    variants = {"id only": "off", "content": "on"} if args.content else {"id only": "off"}
    cfgs = {name: config.load(None, [
        f"data.events_uri={work}/events", f"data.catalog_uri={work}/catalog",
        f"output.uri={work}/{enabled}/scores", f"output.models_uri={work}/{enabled}/models",
        f"data.lookback_days={args.days}", f"two_tower.dim={args.dim}", f"sequence.dim={args.dim}",
        f"score.top_k={args.k}", f"score.batch_size={args.batch_size}", f"content.enabled={enabled}",
        f"score.recommender={args.recommender}", "eval.enabled=false", "ray.progress_bars=false"])
        for name, enabled in variants.items()}
    cfg = cfgs["id only"]
    pipeline.init_ray(cfg)
    generate(gen, work, overwrite=True)
    day = gen.start + dt.timedelta(days=args.days)      # D: a rebuild from `days` days of events
    parts = read.event_partitions(cfg.data.events_uri, read.window(day, args.days))
    log_items = read.read_events(cfg.data.events_uri, parts).unique("item_id")
    catalog = read.read_catalog(cfg.data.catalog_uri)
    vocab = Vocab.build(catalog, pa.array(log_items), features.day_start_us(day))
    runs = {name: measure(c, work, day, vocab, catalog, args) for name, c in cfgs.items()}

    first = runs["id only"]
    paths = ["bare compute (top-K + sequence heads), one process",
             "Scorer in process (features + compute + Arrow rows)",
             "scoring stage on Ray Data: read state -> histories -> actors -> write",
             "nightly run end to end: yesterday's state + 1 day of events -> state -> score -> commit",
             f"rebuild run end to end: {args.days} days of events -> state -> score -> commit "
             f"({first['input_rows']:,} events)"]
    header = (f"scoring: {first['users']:,} users, {first['items']:,} items, dim {args.dim}, K {args.k}, "
              f"recommender {args.recommender}, batch {args.batch_size}, {cfg.score.concurrency} actor x "
              f"{cfg.score.num_cpus:g} CPU, {os.cpu_count()} cores")
    cols = "".join(f" users/s {name} | vs bare |" for name in runs) + (" content / id only |" if args.content else "")
    lines = [header, "", f"| path |{cols}", "|---|" + "---:|" * (2 * len(runs) + args.content)]
    for i, path in enumerate(paths):
        cells = "".join(f" {r['speed'][i]:,.0f} | {r['speed'][i] / r['speed'][0]:.2f} |" for r in runs.values())
        ratio = f" {runs['content']['speed'][i] / first['speed'][i]:.2f} |" if args.content else ""
        lines.append(f"| {path} |{cells}{ratio}")
    lines.append("")
    for name, r in runs.items():
        lines += [f"{name}: Scorer load (models, item matrices, content vectors) {r['load_s']:.2f} s; "
                  f"nightly run stage seconds: {r['nightly_s']}; rebuild: {r['rebuild_s']}"]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Scoring with content (issue 17)" if args.content else "Scoring throughput", text)
    storage.delete_dir(work) if args.work is None else None


def measure(cfg, work: str, day: dt.date, vocab: Vocab, catalog: pa.Table, args) -> dict:
    """Every path's users/s with one set of random models (a content path when the config
    says content.enabled=on), on the data already generated under ``work``."""
    nxt = day + dt.timedelta(days=1)                     # D+1: nightly, D's state + dt=D
    content = spec_for(run_tokens(catalog, vocab.item_ids, cfg.content.enabled, cfg.content.buckets),
                       cfg.content.id_dropout)
    publish_random_models(cfg, vocab, "bench", content)

    t0 = time.perf_counter()
    rebuild = pipeline.run_day(cfg, day, train_models=False)
    rebuild_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    nightly = pipeline.run_day(cfg, nxt, train_models=False)
    nightly_s = time.perf_counter() - t0
    assert nightly.plan["state"]["mode"] == "incremental", nightly.plan
    assert bool(nightly.content) == (content is not None), nightly.content
    n_users = nightly.counts["users_scored"]

    # the scoring stage alone, streamed from D+1's committed user state, with the run's context
    state_uris = storage.read_commit(cfg.output.uri, nxt).uris(cfg.output.uri, "user_state")
    vocab_n = Vocab.build(catalog, pa.array([], vocab.item_ids.type), features.day_start_us(nxt), base=vocab)
    n = pipeline.state_len(cfg)
    fs, _ = storage.resolve(cfg.output.uri)
    context = ScoringContext.build(nightly.model_uris, nxt.isoformat(), vocab_n, cfg.data.catalog_uri)
    t0 = time.perf_counter()
    histories = state.read_files(state_uris).map_batches(          # as the job reads them
        state.to_histories, batch_format="pyarrow", fn_kwargs={"vocab": vocab_n, "n": n})
    written = pipeline.score_histories(cfg, histories, context, f"{work}/{cfg.content.enabled}/streamed",
                                       "bench", dt.datetime.now(dt.timezone.utc).isoformat())
    stream_s = time.perf_counter() - t0
    assert sum(w["rows"] for w in written if w["table"] == "recommendations") == n_users

    # the same users in process: the Scorer on Arrow batches, then the bare model compute
    table = state.to_histories(pa.concat_tables(
        [pq.read_table(storage.resolve(u)[1], filesystem=fs) for u in state_uris]), vocab_n, n)
    t0 = time.perf_counter()
    scorer = Scorer(context, cfg, context.recommendable(cfg.data.catalog_uri))
    load_s = time.perf_counter() - t0
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
    return {"users": n_users, "items": vocab_n.size - 1, "input_rows": rebuild.counts["input_rows"],
            "speed": [n_users / bare, n_users / in_proc, n_users / stream_s, n_users / nightly_s,
                      rebuild.counts["users_scored"] / rebuild_s],
            "load_s": load_s, "nightly_s": nightly.seconds, "rebuild_s": rebuild.seconds}


if __name__ == "__main__":
    main()
