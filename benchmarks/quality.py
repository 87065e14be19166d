"""Model quality: the whole evaluation protocol on one data set given by path.

    python benchmarks/quality.py ../shared/data/wikipedia-edits.txt        # SASRec format
    python benchmarks/quality.py ml-1m/ratings.dat                          # MovieLens
    python benchmarks/quality.py /data/events                               # events contract
    python benchmarks/quality.py synthetic --users 3000 --items 1000 --days 21

Imports the file (any importer format, detected from the name or --format), then for
each repeat policy (repeats allowed; seen items excluded, where repeats are not training
targets either) trains both models and evaluates leave-last-out with full ranking (plus
sampled-100, labelled), every model next to the popularity, own-history,
most-frequent, item-kNN, ALS and EASE baselines. Prints NDCG@10 / HR@10 per model and baseline for each policy;
metrics.json and report.html of each policy are under --out. ``--record`` appends the
tables to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import ROOT, log_setup, record  # noqa: F401  (puts the repo on sys.path)

from raymedia import models, offline, report, storage


def detect_format(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    if name == "synthetic":
        return "synthetic"
    if name.endswith((".dat", ".data", ".csv")) or name in ("u.data",):
        return "movielens"
    if name.endswith(".txt"):
        return "sasrec"
    return "events"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="data set: events root, SASRec .txt, MovieLens ratings file, or 'synthetic'")
    p.add_argument("--format", default="auto", choices=["auto", "events", "sasrec", "movielens", "synthetic"])
    p.add_argument("--out", help="working directory (default /tmp/raymedia-quality/<name>)")
    p.add_argument("--model", default="all", choices=[*models.names(), "all"])
    p.add_argument("--repeats", default="both", choices=["both", "allowed", "excluded"],
                   help="evaluate with repeats allowed, seen items excluded, or both")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--days", type=int, default=21)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    args = p.parse_args(argv)
    log_setup()

    fmt = detect_format(args.path) if args.format == "auto" else args.format
    name = "synthetic" if fmt == "synthetic" else os.path.basename(args.path.rstrip("/")).split(".")[0]
    out = (args.out or f"/tmp/raymedia-quality/{name}").rstrip("/")
    t0 = time.perf_counter()
    if fmt == "events":
        events, catalog = args.path, None
    elif fmt == "synthetic":
        from raymedia.data.generate import GeneratorConfig, generate
        if not storage.exists(f"{out}/data/events"):
            generate(GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=args.seed),
                     f"{out}/data")
        events, catalog = f"{out}/data/events", f"{out}/data/catalog"
    else:
        from raymedia.data.importers import import_events
        if not storage.exists(f"{out}/data/events"):
            import_events(fmt, args.path, f"{out}/data")
        events, catalog = f"{out}/data/events", f"{out}/data/catalog/catalog.parquet"
    overrides = ["ray.progress_bars=false", *args.overrides]
    policies = {"both": [False, True], "allowed": [False], "excluded": [True]}[args.repeats]
    tables = []
    for exclude in policies:
        label = "seen items excluded" if exclude else "repeats allowed"
        m = offline.run(events, f"{out}/{'excluded' if exclude else 'allowed'}", model=args.model,
                        exclude_seen=exclude, catalog_uri=catalog, overrides=overrides)
        lines = markdown(m, label)
        print()
        print(report.table(m))
        tables.append("\n".join(lines))
    elapsed = time.perf_counter() - t0
    print(f"\ndone in {elapsed:.0f}s; reports under {out}/")
    if args.record:
        record(f"Model quality: {name}", "\n\n".join(tables) + f"\n\nWhole benchmark {elapsed:.0f} s.")
    return 0


def markdown(m: dict, label: str) -> list[str]:
    """The BENCHMARKS.md table of one policy's metrics."""
    k = m["k"]
    lines = [f"#### {label}", "", f"| model | HR@{k} | NDCG@{k} | MRR | coverage | pop. bias "
             f"| sampled HR@{k} | sampled NDCG@{k} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mname, v in sorted(m["models"].items(), key=lambda kv: -(kv[1][f"ndcg@{k}"] or 0)):
        s = m["sampled"]["models"][mname]
        tag = " (baseline)" if mname in m["baselines"] else ""
        lines.append(f"| {mname}{tag} | {_f(v[f'hr@{k}'])} | {_f(v[f'ndcg@{k}'])} | {_f(v['mrr'])} "
                     f"| {_f(v['coverage'], 3)} | {_f(v['popularity_bias'], 3)} "
                     f"| {_f(s[f'hr@{k}'])} | {_f(s[f'ndcg@{k}'])} |")
    ret = m.get("return") or {}
    best = {kind: next((h for h in hist if h["epoch"] == hist[-1].get("best_epoch")), hist[-1] if hist else {})
            for kind, hist in m["training"].items()}
    lines += ["", f"{m['users']} users, {m['catalog_items']} items, full ranking (sampled: "
              f"{m['sampled']['negatives']} random negatives). Return AUC "
              f"{_f(ret.get('auc'))}, ECE {_f(ret.get('ece'))} on {ret.get('users', 0)} held-out users. "
              "Best epoch (validation NDCG@10): " + ", ".join(
                  f"{kind} {b.get('epoch')} of {len(m['training'][kind])} ({_f(b.get('val_ndcg'))})"
                  for kind, b in best.items())
              + f". Stage times (s): {m['seconds']}. Baseline fits: {m.get('baseline_fits', {})}."]
    return lines


def _f(v, digits: int = 4) -> str:
    """A figure, or "-" where there is none (e.g. the popularity bias of empty lists)."""
    return "-" if v is None or v != v else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
