"""Items as content: the cold-item protocol on synthetic data with news-like fresh items.

    python benchmarks/cold_items.py --seeds 0 1 2            # one world per seed
    python benchmarks/cold_items.py --seeds 0 1 2 --record   # + the tables in BENCHMARKS.md

For each seed: a generated world whose items are partly news (``fresh_item_fraction``:
published during the window, taken in their first ``fresh_days``), then

- ``raymedia evaluate --protocol cold-items``: the items first taken on the last day,
  ranked for the users who took them by the id-only models (a new item gets its category's
  mean), the content-aware ones (``kind+content``) and category popularity;
- leave-last-out (seen items excluded) with ``content.enabled=off`` and ``=on``: what the
  content path does to the usual figures, warm items included.

Each run's metrics.json is kept under --out and reused when it exists, so seeds can run in
separate invocations (``--seeds 0``, then ``--seeds 1`` ...) and a last one with every seed
prints and records the spread over seeds (mean, min, max) and the margin of content over
id-only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
from common import ROOT, log_setup, record  # noqa: F401  (puts the repo on sys.path)

from raymedia import offline, storage

KINDS = ("sequence", "two_tower")


def world(args, seed: int):
    from raymedia.data.generate import GeneratorConfig
    return GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=seed,
                           fresh_item_fraction=args.fresh_item_fraction, fresh_days=args.fresh_days,
                           fresh_share=args.fresh_share)


def run_seed(args, seed: int) -> dict[str, dict]:
    """The three runs of one seed (metrics.json of each, computed once)."""
    from raymedia.data.generate import generate
    root = f"{args.out}/seed{seed}"
    if not storage.exists(f"{root}/data/events"):
        generate(world(args, seed), f"{root}/data")
    events, catalog = f"{root}/data/events", f"{root}/data/catalog"
    overrides = ["ray.progress_bars=false", f"train.seed={seed}", *args.overrides]
    # quoted: YAML reads a bare on/off as a boolean
    runs = {"cold": ("cold-items", []), "llo-id": ("leave-last-out", ['content.enabled="off"']),
            "llo-content": ("leave-last-out", ['content.enabled="on"'])}
    out = {}
    for name, (protocol, extra) in runs.items():
        path = f"{root}/{name}/metrics.json"
        if not os.path.exists(path):
            t0 = time.perf_counter()
            offline.run(events, f"{root}/{name}", protocol=protocol, catalog_uri=catalog,
                        overrides=[*overrides, *extra])
            logging.info("seed %d %s done in %.0f s", seed, name, time.perf_counter() - t0)
        with open(path) as f:
            out[name] = json.load(f)
    return out


def spread(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})"


def tables(results: dict[int, dict[str, dict]], k: int = 10) -> str:
    seeds = sorted(results)
    cold = [results[s]["cold"] for s in seeds]
    lines = [f"#### Cold items (first taken on the last day), {len(seeds)} seeds: mean (min-max)", "",
             f"| ranker | HR@{k} | NDCG@{k} | per seed NDCG@{k} |", "|---|---:|---:|---|"]
    names = sorted(cold[0]["models"], key=lambda n: -np.mean([m["models"][n][f"ndcg@{k}"] for m in cold]))
    for n in names:
        hr = [m["models"][n][f"hr@{k}"] for m in cold]
        nd = [m["models"][n][f"ndcg@{k}"] for m in cold]
        lines.append(f"| {n} | {spread(hr)} | {spread(nd)} | {', '.join(f'{x:.4f}' for x in nd)} |")
    c = [m["cold_items"] for m in cold]
    lines += ["", "Per seed: " + "; ".join(
        f"seed {s}: {x['items']} cold items, {x['targets']} targets of {x['users']} users" for s, x in zip(seeds, c)),
        "", "Margin of content over id-only on cold items (NDCG@10, per seed): " + "; ".join(
            f"{kind} " + ", ".join(f"{m['models'][kind + offline.CONTENT][f'ndcg@{k}'] - m['models'][kind][f'ndcg@{k}']:+.4f}"
                                   for m in cold)
            for kind in KINDS if kind + offline.CONTENT in cold[0]["models"])]
    lines += ["", f"#### Leave-last-out, seen items excluded (every item, warm included), {len(seeds)} seeds", "",
              f"| model | content off HR@{k} | content on HR@{k} | content off NDCG@{k} | content on NDCG@{k} |",
              "|---|---:|---:|---:|---:|"]
    for kind in KINDS:
        off = [results[s]["llo-id"]["models"][kind] for s in seeds]
        on = [results[s]["llo-content"]["models"][kind] for s in seeds]
        lines.append(f"| {kind} | {spread([m[f'hr@{k}'] for m in off])} | {spread([m[f'hr@{k}'] for m in on])} "
                     f"| {spread([m[f'ndcg@{k}'] for m in off])} | {spread([m[f'ndcg@{k}'] for m in on])} |")
    pop = [results[s]["llo-id"]["models"]["popularity"][f"ndcg@{k}"] for s in seeds]
    lines += ["", f"Popularity NDCG@{k} on the same users: {spread(pop)}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--fresh-item-fraction", type=float, default=0.5)
    p.add_argument("--fresh-days", type=float, default=1.5)
    p.add_argument("--fresh-share", type=float, default=0.3)
    p.add_argument("--out", default="/tmp/raymedia-cold-items")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    args = p.parse_args(argv)
    log_setup()
    args.out = args.out.rstrip("/")
    t0 = time.perf_counter()
    results = {s: run_seed(args, s) for s in args.seeds}
    text = tables(results)
    elapsed = time.perf_counter() - t0
    print(text)
    print(f"\ndone in {elapsed:.0f}s; metrics under {args.out}/")
    if args.record:
        w = world(args, args.seeds[0])
        record("Items as content: the cold-item protocol (issue 17)",
               f"World: {w.users} users, {w.items} items, {w.days} days, fresh_item_fraction "
               f"{w.fresh_item_fraction}, fresh_days {w.fresh_days}, fresh_share {w.fresh_share}; "
               f"overrides {args.overrides or 'none'}.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
