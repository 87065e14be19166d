"""The ``raymedia`` command: demo, generate, import, run, train, score, backfill, show, publish, gc, config."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import threading
import time

from raymedia import config as config_mod
from raymedia import models, schema, storage

log = logging.getLogger("raymedia")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (any URI)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set train.epochs=3")


def _publish_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--publish" if not required else "--to", dest="publish", required=required,
                   metavar="REDIS_URL", help="publish the committed day to this Redis: "
                   "redis://[:password@]host:port/db (or the password in REDIS_PASSWORD)")
    p.add_argument("--prefix", default="raymedia", help="Redis key prefix (default: raymedia)")
    p.add_argument("--keep-days", type=float, default=2.0,
                   help="days a replaced version stays readable before it expires (default: 2)")
    p.add_argument("--force", action="store_true",
                   help="publish even if the day is older than the live one")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from None


def _count(s: str) -> int:
    """A non-negative integer (``--limit``)."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _age(s: str) -> dt.timedelta:
    """``90m``, ``2h``, ``7d``: how old an uncommitted run must be to be collected."""
    m = re.fullmatch(r"(\d{1,6})([mhd])", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not an age like 90m, 2h or 7d: {s!r}")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[m[2]]
    return dt.timedelta(**{unit: int(m[1])})


def parser(prog: str = "raymedia") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate data, train both models, score, commit, evaluate")
    d.add_argument("--out", default="out/demo", help="root for data, models and scores")
    d.add_argument("--users", type=int, default=3000)
    d.add_argument("--items", type=int, default=1000)
    d.add_argument("--days", type=int, default=21)
    d.add_argument("--seed", type=int, default=0)
    _config_args(d)

    g = sub.add_parser("generate", help="write synthetic media logs and a catalog")
    g.add_argument("--users", type=int, required=True)
    g.add_argument("--items", type=int, required=True)
    g.add_argument("--days", type=int, required=True)
    g.add_argument("--out", required=True, help="output root URI (events/ and catalog/ go under it)")
    g.add_argument("--start", type=_date, default=dt.date(2026, 1, 5))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true", help="replace events already under --out")

    i = sub.add_parser("import", help="import MovieLens (with its item file), SASRec-format or MIND logs as events and a catalog")
    i.add_argument("--format", required=True, choices=["movielens", "sasrec", "mind"])
    i.add_argument("path", help="ratings.dat, u.data, ratings.csv, a SASRec .txt, or a MIND folder (any URI)")
    i.add_argument("--out", required=True, help="output root URI (events/ and catalog/ go under it)")
    i.add_argument("--start", type=_date, default=dt.date(2026, 1, 1),
                   help="first timestamp's day for formats without timestamps (sasrec)")

    s = sub.add_parser("show", help="print a committed day's outputs")
    s.add_argument("uri", help="output root (output.uri)")
    s.add_argument("--dt", type=_date, required=True)
    s.add_argument("--table", default="recommendations",
                   help="recommendations, predictions or rejects")
    s.add_argument("--limit", type=_count, default=10, help="rows to print (>= 0)")

    gcp = sub.add_parser("gc", help="remove uncommitted run directories left by crashed or "
                         "losing runs (never a committed run, never one still beating)")
    gcp.add_argument("--output", required=True, help="output root (output.uri), local or S3")
    gcp.add_argument("--older-than", type=_age, default=None, metavar="AGE",
                     help="collect runs whose heartbeat is older than AGE, e.g. 90m, 2h, 7d "
                          "(default: output.gc_grace_minutes)")
    _config_args(gcp)

    for name, helptext in (("run", "nightly run for one day: user state, train (optional), score, evaluate, commit"),
                           ("train", "train the models on the window before a day"),
                           ("score", "score and commit a day with the latest models")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--date", type=_date, required=True, help="the day to produce (reads days before it)")
        if name == "run":
            r.add_argument("--no-train", action="store_true", help="score with the latest models")
            _publish_args(r, required=False)
        _config_args(r)

    pub = sub.add_parser("publish", help="load a committed day into Redis and switch readers to it")
    pub.add_argument("--date", type=_date, required=True, help="the committed day to publish")
    _publish_args(pub, required=True)
    _config_args(pub)

    b = sub.add_parser("backfill", help="run a date range day by day, point in time, resumable")
    b.add_argument("--start", type=_date, required=True, help="first day to produce")
    b.add_argument("--end", type=_date, required=True, help="last day to produce (inclusive)")
    b.add_argument("--overwrite", action="store_true", help="recompute days already committed")
    b.add_argument("--model-version", help="score every day with this model version "
                   "(default: for each day, the newest model trained before it)")
    b.add_argument("--train", action="store_true", help="retrain for every day instead")
    _publish_args(b, required=False)      # publishes the last day, once every day is committed
    _config_args(b)

    e = sub.add_parser("evaluate", help="train (or load) the models on a data set, rank held-out "
                       "items against baselines, write metrics.json + report.html, print the table")
    e.add_argument("--events", required=True, help="events root with dt=YYYY-MM-DD partitions (any URI)")
    e.add_argument("--catalog", help="catalog URI (default: catalog/ next to the events root)")
    e.add_argument("--protocol", default="leave-last-out", choices=["leave-last-out", "temporal", "cold-items"],
                   help="leave-last-out; temporal: train before the last day, test on it; cold-items: "
                        "that split, ranking the items first taken on the last day, id-only models "
                        "against content-aware ones")
    e.add_argument("--model", default="all", choices=[*models.names(), "all"])
    e.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True,
                   help="mask items the user already had (--no-exclude-seen: repeats allowed)")
    e.add_argument("--checkpoint", help="models root or one published model version: skip training")
    e.add_argument("--out", required=True, help="where metrics.json, report.html (and models/) go")
    _config_args(e)

    t = sub.add_parser("tune", help="search a model's training config with Ray Tune (ASHA) on the "
                       "validation split; writes the best config as YAML for --config")
    t.add_argument("--events", required=True, help="events root with dt=YYYY-MM-DD partitions (any URI)")
    t.add_argument("--catalog", help="catalog URI (default: catalog/ next to the events root)")
    t.add_argument("--model", required=True, choices=models.names())
    t.add_argument("--budget", type=int, required=True, help="trials to run")
    t.add_argument("--parallel", type=int, default=None,
                   help="trials at once (default: as many as the cluster's CPUs allow, one CPU left "
                        "for the data tasks)")
    t.add_argument("--out", required=True, help="where best.yaml, trials.json and the trials go")
    _config_args(t)

    c = sub.add_parser("config", help="print the resolved config")
    c.add_argument("action", choices=["show"])
    _config_args(c)
    return p


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "ray.data", "ray.train", "ray.tune", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def publish_cmd(cfg, args, day: dt.date) -> int:
    """Publish a committed day and print one line saying what readers now see.
    Exit status 1 when Redis failed (readers stay on the version they had)."""
    from raymedia import pipeline, publish
    target = publish.parse_target(args.publish, args.prefix)
    pipeline.init_ray(cfg)
    try:
        r = publish.publish(cfg.output.uri, day, target, force=args.force, keep_days=args.keep_days)
    except publish.PublishError as exc:
        print(f"raymedia: publish failed: {exc}", file=sys.stderr)
        return 1
    what = "published" if r.status == "switched" else "already live:"
    print(f"{what} dt={r.dt} as {target.key(r.version)}:* ({r.users} users) at {target.url} "
          f"in {r.seconds:.1f}s; live = {r.live}"
          + (f"; expiring in {args.keep_days:g} days: {', '.join(r.retired)}" if r.retired else ""),
          file=sys.stderr)
    return 0


def _run(cfg, args) -> int:
    from raymedia import pipeline
    if getattr(args, "publish", None):          # a bad URL fails before any work, not after
        from raymedia.publish import parse_target
        parse_target(args.publish, args.prefix)
    if args.command == "publish":
        return publish_cmd(cfg, args, args.date)
    if args.command == "train":
        uris = pipeline.train_day(cfg, args.date)
        print(json.dumps({"models": uris}, indent=2))
        return 0
    if args.command == "backfill":
        results = pipeline.backfill(cfg, args.start, args.end, overwrite=args.overwrite,
                                    model_version=args.model_version, train_models=args.train,
                                    echo=lambda line: print(line, flush=True))
        print(json.dumps({"committed": [r.dt for r in results]}))
        return publish_cmd(cfg, args, args.end) if args.publish else 0
    train = args.command == "run" and not args.no_train
    result = pipeline.run_day(cfg, args.date, train_models=train)
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    return publish_cmd(cfg, args, args.date) if args.command == "run" and args.publish else 0


def demo(args) -> int:
    from raymedia import pipeline, report
    from raymedia.data.generate import GeneratorConfig, generate

    t0 = time.perf_counter()
    out = args.out.rstrip("/")
    overrides = [f"data.events_uri={out}/events", f"data.catalog_uri={out}/catalog",
                 f"output.uri={out}/scores", f"output.models_uri={out}/models",
                 f"data.lookback_days={args.days}", "train.epochs=6", *args.overrides]
    cfg = config_mod.load(args.config, overrides)
    pipeline.init_ray(cfg)
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=args.seed)
    summary = generate(gen, out)
    print(f"generated {summary.events} events of {summary.users} users on {summary.items} items "
          f"over {len(summary.days)} days -> {summary.events_uri}")
    day = gen.start + dt.timedelta(days=args.days)
    result = pipeline.run_day(cfg, day)
    print()
    print(report.table(result.metrics))
    print()
    print(f"scored {result.counts['users_scored']} users for dt={result.dt} (run {result.run_id})")
    print(f"  commit:  {result.commit_uri}")
    for kind, uri in result.model_uris.items():
        print(f"  model:   {kind:<10} {uri}")
    print("  stages:  " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


def import_cmd(args) -> int:
    from raymedia.data.importers import import_events
    start = dt.datetime.combine(args.start, dt.time(), dt.timezone.utc)
    s = import_events(args.format, args.path, args.out, start)
    print(json.dumps({**s.__dict__, "next_day": s.next_day}, indent=2))
    days = (dt.date.fromisoformat(s.last_day) - dt.date.fromisoformat(s.first_day)).days + 1
    print(f"run it: raymedia run --date {s.next_day} --set data.events_uri={s.events_uri} "
          f"--set data.catalog_uri={s.catalog_uri} --set data.lookback_days={days}", file=sys.stderr)
    return 0


def evaluate_cmd(args) -> int:
    from raymedia import offline, report
    m = offline.run(args.events, args.out, model=args.model, exclude_seen=args.exclude_seen,
                    catalog_uri=args.catalog, checkpoint_uri=args.checkpoint, protocol=args.protocol,
                    config=args.config, overrides=args.overrides)
    print(report.table(m))
    print(f"wrote {storage.join(args.out, 'metrics.json')} and {storage.join(args.out, 'report.html')}")
    return 0


def tune_cmd(args) -> int:
    from raymedia import tune
    r = tune.tune(args.events, args.model, args.budget, args.out, catalog_uri=args.catalog,
                  config=args.config, overrides=args.overrides, parallel=args.parallel)
    for t in r.trials:
        ndcg = "-" if t.val_ndcg is None else f"{t.val_ndcg:.4f}"
        print(f"validation NDCG@10 {ndcg} after {t.epochs} epoch(s): {t.params}"
              + (f" (failed: {t.error})" if t.error else ""))
    print(f"best config: {r.config_uri} (use it with --config)")
    return 0


def show(args) -> int:
    """A committed day: its commit, then the first rows of one table (only committed files)."""
    c = storage.read_commit(args.uri, args.dt)
    if c is None:
        raise FileNotFoundError(f"no committed output for dt={args.dt} under {args.uri}")
    print(f"dt={c.dt} run={c.run_id} generation={c.generation} created={c.created_at}")
    print(f"rows: {c.rows}  models: {c.model_versions}")
    df = storage.read_committed(args.uri, args.dt, args.table).slice(0, args.limit).to_pandas()
    for col in df.columns:          # long lists: show their head
        if len(df) and hasattr(df[col].iloc[0], "__len__") and not isinstance(df[col].iloc[0], str):
            df[col] = df[col].map(lambda v: ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x)
                                                      for x in list(v)[:5]) + (" ..." if len(v) > 5 else ""))
    print(df.to_string(index=False))
    return 0


def gc_cmd(cfg, args) -> int:
    """Collect orphans under one output root; exit 1 if a directory could not be removed."""
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    grace = args.older_than or dt.timedelta(minutes=cfg.output.gc_grace_minutes)
    result = storage.gc(storage.check_uri(args.output, "--output"), grace)
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 1 if result.failed else 0


class Terminated(BaseException):
    """SIGTERM reached the driver: unwind (finally blocks run, Ray shuts down), exit 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None, prog: str = "raymedia") -> int:
    args = parser(prog).parse_args(argv)
    _quiet_logs()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        if args.command == "generate":
            from raymedia.data.generate import GeneratorConfig, generate
            s = generate(GeneratorConfig(users=args.users, items=args.items, days=args.days,
                                         start=args.start, seed=args.seed), args.out,
                         overwrite=args.overwrite)
            print(json.dumps(s.__dict__, indent=2, default=str))
            return 0
        if args.command == "demo":
            return demo(args)
        if args.command == "import":
            return import_cmd(args)
        if args.command == "show":
            return show(args)
        if args.command == "evaluate":
            return evaluate_cmd(args)
        if args.command == "tune":
            return tune_cmd(args)
        cfg = config_mod.load(args.config, args.overrides)
        if args.command == "config":
            print(config_mod.dump(cfg), end="")
            return 0
        if args.command == "gc":
            return gc_cmd(cfg, args)
        return _run(cfg, args)
    except (config_mod.ConfigError, ValueError, FileNotFoundError, FileExistsError,
            storage.CommitConflict, schema.RejectThresholdExceeded) as exc:
        print(f"raymedia: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("raymedia: stopped by SIGTERM; a run that had not reached its commit published "
              "nothing (its files are collected later)", file=sys.stderr, flush=True)
        return 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
