"""List rules: accuracy versus diversity, from a sweep of one rule's strength (issue 19).

    python benchmarks/rules_sweep.py --seeds 0 1 2             # the default sweeps + the preset
    python benchmarks/rules_sweep.py --seeds 0 --sweep rules.max_per_category=0,4,2 --preset ''
    python benchmarks/rules_sweep.py --seeds 0 --sweep "rules.fresh_boost=0.5,1 rules.fresh_half_life_days=1"
    python benchmarks/rules_sweep.py --seeds 0 1 2 --plot docs/rules_sweep.png --record

For each seed: a generated world (categories, series, news-like fresh items) of ``--days``
days; the last ``--holdout`` days are held out. The models train once on the days before
the first held-out day D (the run of day D: ``pipeline.prepare`` + ``train_all``, as
``raymedia run`` does; kept under --out and reused). Then, with no retraining, day D is
scored once per setting by the production ``Scorer`` (in this process: the lists are
those a run writes, which do not depend on the batch): rules off, each value of every
``--sweep KEY=V1,V2,...`` (one rule at a time, the others off), and the preset
(``--preset``, default ``configs/rules-media.yaml``). Every setting scores lists of
``score.top_k`` = ``--k`` items.

Each list is measured against what its user did from D on (a temporal hold-out): the items
the user took (any event but an impression) on the held-out days that they had not taken
before D (seen items are never listed, so a repeat is a target no setting can hit). NDCG@K
with binary relevance over that set (the ideal list holds min(|set|, K) of them) and HR@K
(any of them listed), over the users with such an item, and serendipity (``metrics``: listed
items both held out and not in the K most popular recommendable items); over every scored
user, the figures a run reports of its lists (metrics.json's ``lists``, ``raymedia.lists``
over the Scorer's per-list statistics): intra-list category diversity, distinct categories,
embedding diversity (the recommender's item vectors), novelty, age of the listed items, share
of new items, catalog coverage, mean list length (hard rules may shorten a list); and the
episodes a list holds after the first of their series (what ``collapse_series`` removes).

Prints one table (accuracy and category diversity as mean (min-max) over the seeds, the rest
as means), the preset's change against rules off per seed, writes ``--plot`` (NDCG@K against
category diversity and against the median age of the listed items) and, with ``--record``,
appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import ROOT, log_setup, record  # noqa: F401  (puts the repo on sys.path)

from raymedia import config as config_mod
from raymedia import lists, metrics, storage

log = logging.getLogger("rules_sweep")
DEFAULT_SWEEPS = ("rules.max_per_category=0,5,4,3,2,1", "rules.min_categories=2,3,4,5,6",
                  "rules.collapse_series=best,next", "rules.fresh_boost=0.2,0.5,1,2 rules.fresh_half_life_days=1")
US_PER_DAY = 86_400_000_000


# ---------------------------------------------------------------------------------------
# accuracy against a set of held-out items


def set_ndcg(lists: list[np.ndarray], relevant: list[np.ndarray], k: int) -> np.ndarray:
    """Per user: NDCG@k with binary relevance, the user's ``relevant`` items (non-empty)
    against their list (its first k items); the ideal list holds min(|relevant|, k)."""
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(disc)
    out = np.zeros(len(lists))
    for u, (items, rel) in enumerate(zip(lists, relevant)):
        hit = np.isin(items[:k], rel)
        out[u] = disc[:len(hit)][hit].sum() / ideal[min(len(rel), k) - 1]
    return out


def set_hits(lists: list[np.ndarray], relevant: list[np.ndarray], k: int) -> np.ndarray:
    """Per user: 1.0 when any of the first k items of their list is relevant."""
    return np.array([float(np.isin(items[:k], rel).any()) for items, rel in zip(lists, relevant)])


# ---------------------------------------------------------------------------------------
# one seed


def world(args, seed: int):
    from raymedia.data.generate import GeneratorConfig
    return GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=seed,
                           fresh_item_fraction=args.fresh_item_fraction)


def settings(args) -> list[tuple[str, str, list[str], str | None]]:
    """(series, label, rule overrides, config file) of every setting scored: rules off,
    each sweep value, the preset."""
    out = [("off", "rules off", [], None)]
    for spec in args.sweep:
        swept, *fixed = spec.split()        # the swept key's values, then keys it needs set with it
        key, _, values = swept.partition("=")
        for v in values.split(","):
            v = v.strip()
            if v in ("", "0", "0.0", "off"):
                continue            # "off" is scored once
            out.append((key, f"{key.removeprefix('rules.')}={v}", [f"{key}={v}", *fixed], None))
    if args.preset:
        out.append(("preset", f"preset ({os.path.basename(args.preset)})", [], args.preset))
    return out


def base_overrides(args, root: str, day: dt.date, first: dt.date, seed: int) -> list[str]:
    return [f"data.events_uri={root}/data/events", f"data.catalog_uri={root}/data/catalog",
            f"data.lookback_days={(day - first).days}", f"output.uri={root}/work",
            f"output.models_uri={root}/models", f"score.top_k={args.k}",
            "ray.progress_bars=false", f"train.epochs={args.epochs}", f"train.seed={seed}",
            *args.overrides]


def held_out(events_uri: str, days: list[dt.date], vocab) -> dict:
    """user id -> vocabulary indices of the items they took on ``days`` (not impressions)."""
    from raymedia.offline import _read_day, _taken
    t = _taken(pa.concat_tables([_read_day(events_uri, d, ["user_id", "item_id", "event"]) for d in days]))
    idx = vocab.lookup(t["item_id"])
    users = t["user_id"].to_numpy()
    keep = idx > 0
    users, idx = users[keep], idx[keep]
    order = np.lexsort((idx, users))
    users, idx = users[order], idx[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    return {int(u[0]): np.unique(i) for u, i in zip(np.split(users, bounds), np.split(idx, bounds)) if len(u)}


def run_seed(args, seed: int) -> dict[str, dict]:
    """Metrics of every setting on one seed's world (models trained once, reused)."""
    from raymedia import checkpoint, features, pipeline
    from raymedia.data import read
    from raymedia.data.generate import generate
    from raymedia.inference import ScoringContext
    from raymedia.kinds import KINDS
    from raymedia.score import Scorer

    w = world(args, seed)
    root = f"{args.out}/seed{seed}"
    if not storage.exists(f"{root}/data/generate.json"):
        generate(w, f"{root}/data")
    first = w.start
    day = first + dt.timedelta(days=args.days - args.holdout)
    base = base_overrides(args, root, day, first, seed)
    cfg = config_mod.load(None, base)
    trained = all(storage.exists(f"{root}/models/{k}") for k in KINDS)
    t0 = time.perf_counter()
    if trained:         # a scoring run of day D with the kept models (``run_day(train_models=False)``)
        uris = {k: checkpoint.latest(cfg.output.models_uri, k) for k in KINDS}
        inputs = pipeline.prepare(cfg, day, storage.new_run_id(), checkpoint.load_vocab(uris["sequence"]),
                                  learn_items=False, keep_popularity=True)
    else:               # the run of day D that trains (``run_day``)
        inputs = pipeline.prepare(cfg, day, storage.new_run_id())
        uris = pipeline.train_all(cfg, inputs, pipeline.TrainPlan("full", None, "rules sweep"), {})
    log.info("seed %d: inputs and models in %.0f s", seed, time.perf_counter() - t0)
    vocab = inputs.vocab
    context = ScoringContext.build(uris, day.isoformat(), vocab, cfg.data.catalog_uri, inputs.content)
    recommendable = context.recommendable(cfg.data.catalog_uri)
    batches = list(inputs.histories.iter_batches(batch_format="pyarrow", batch_size=cfg.score.batch_size))
    storage.delete_dir(inputs.run_uri)

    # what each user had taken before D (never listed: a repeat is no target) and took from D on
    before: dict[int, np.ndarray] = {}
    for b in batches:
        for uid, items, seen in zip(b["user_id"].to_pylist(), b["items"].to_pylist(), b["seen"].to_pylist()):
            before[uid] = np.array(sorted(set(items) | set(seen or [])), np.int64)
    after = held_out(cfg.data.events_uri, [day + dt.timedelta(days=i) for i in range(args.holdout)], vocab)
    targets = {u: np.setdiff1d(r, before.get(u, np.empty(0, np.int64))) for u, r in after.items()}
    targets = {u: r for u, r in targets.items() if len(r)}

    catalog = read.read_catalog(cfg.data.catalog_uri)
    facts = item_facts(vocab, catalog, features.day_start_us(day), recommendable, cfg.score.top_k)
    out = {}
    for series, label, rule_overrides, path in settings(args):
        scfg = config_mod.load(path, [*base, *rule_overrides])
        t1 = time.perf_counter()
        scorer = Scorer(context, scfg, recommendable)
        rows = pa.concat_tables([scorer(b) for b in batches])
        out[label] = {**measure(scfg, rows, vocab, targets, facts), "series": series}
        log.info("seed %d %s: %d users in %.1f s: %s", seed, label, rows.num_rows, time.perf_counter() - t1,
                 {k: round(v, 4) for k, v in out[label].items() if isinstance(v, float)})
    storage.write_json(f"{root}/sweep.json", {"seed": seed, "day": day.isoformat(), "results": out})
    return out


def reason_counts(rows: pa.Table) -> dict[str, int]:
    if "reason" not in rows.column_names:
        return {}
    vc = pc.value_counts(pc.list_flatten(rows["reason"]))
    return {str(v["values"]): int(v["counts"]) for v in vc.to_pylist()}


# ---------------------------------------------------------------------------------------
# measuring lists


def item_facts(vocab, catalog: pa.Table, asof_us: int, recommendable: np.ndarray, k: int) -> dict:
    """Per vocabulary index: age in days at the run (``lists.item_ages``), series code (0:
    none); and the primitive list serendipity is measured against: the K most popular
    recommendable items."""
    series = np.zeros(vocab.size, np.int64)
    if "series_id" in catalog.column_names:
        at = vocab.lookup(catalog["item_id"])
        codes = pc.index_in(catalog["series_id"], value_set=pc.drop_null(pc.unique(catalog["series_id"])))
        series[at[at > 0]] = pc.fill_null(pc.add(codes, 1), 0).to_numpy(zero_copy_only=False)[at > 0]
    pop = np.where(recommendable, vocab.popularity, -1.0)
    popular = np.lexsort((np.arange(vocab.size), -pop))[:k]        # ties to the lower index
    return {"age": lists.item_ages(catalog, vocab.item_ids, asof_us), "series": series,
            "popular": popular[pop[popular] >= 0], "recommendable": recommendable}


def series_repeats(top: np.ndarray, series: np.ndarray) -> float:
    """Mean per list of the items after the first of their series (episodes of a series
    the list already holds): what ``collapse_series`` removes."""
    out = []
    for row in series[top]:
        row = row[row > 0]
        out.append(len(row) - len(np.unique(row)))
    return float(np.mean(out)) if out else float("nan")


def measure(cfg, rows: pa.Table, vocab, targets: dict, facts: dict) -> dict:
    """The figures of one setting's lists (module doc): accuracy on the held-out items,
    serendipity and series repeats here, the rest as a run's metrics.json reports its
    lists (``lists.summary`` over the Scorer's per-list statistics)."""
    k = cfg.score.top_k
    users = rows["user_id"].to_pylist()
    listed = [vocab.lookup(pa.array(items, vocab.item_ids.type)) for items in rows["items"].to_pylist()]
    top = np.zeros((len(listed), k), np.int64)
    for i, x in enumerate(listed):
        top[i, :len(x)] = x[:k]
    evaluated = [i for i, u in enumerate(users) if u in targets]
    rel = [targets[users[i]] for i in evaluated]
    ev_lists = [listed[i][:k] for i in evaluated]
    longest = max((len(r) for r in rel), default=1)
    held = np.zeros((len(rel), longest), np.int64)
    for i, r in enumerate(rel):
        held[i, :len(r)] = r
    run = lists.total([{"table": "recommendations", "lists": lists.ListSums.of(rows[lists.STATS]).to_json()}],
                      vocab.size)
    summary = lists.summary(run, vocab.popularity, facts["age"], facts["recommendable"], reason_counts(rows),
                            cfg.score.recommender)
    return {
        f"ndcg@{k}": float(set_ndcg(ev_lists, rel, k).mean()),
        f"hr@{k}": float(set_hits(ev_lists, rel, k).mean()),
        "serendipity": metrics.serendipity(top[evaluated], held, facts["popular"]),
        "series_repeats": series_repeats(top, facts["series"]),
        "users": len(users), "evaluated_users": len(evaluated),
        **{name: summary[name] for name in (
            "category_diversity", "distinct_categories", "embedding_diversity", "novelty_bits",
            "mean_age_days", "median_age_days", "new_item_share", "coverage", "mean_length", "rule_hits")},
    }


# ---------------------------------------------------------------------------------------
# the table and the plot

COLUMNS = ("ndcg@{k}", "hr@{k}", "category_diversity", "distinct_categories", "embedding_diversity",
           "novelty_bits", "serendipity", "median_age_days", "mean_age_days", "new_item_share", "coverage",
           "series_repeats", "mean_length")
HIDDEN = ("new_item_share",)      # shown only when some setting lists a new item
SHORT = {"category_diversity": "cat. div.", "distinct_categories": "categories", "embedding_diversity": "emb. div.",
         "novelty_bits": "novelty (bits)", "serendipity": "serendip.", "median_age_days": "median age (d)",
         "mean_age_days": "mean age (d)", "new_item_share": "new items", "coverage": "coverage",
         "series_repeats": "series repeats", "mean_length": "length"}
TWO_DIGITS = ("median_age_days", "mean_age_days", "mean_length", "series_repeats", "distinct_categories",
              "novelty_bits")


def spread(values: list[float], digits: int = 4) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def table(results: dict[int, dict[str, dict]], k: int) -> str:
    """Accuracy and category diversity as mean (min-max) over the seeds, the rest as means."""
    seeds = sorted(results)
    labels = list(results[seeds[0]])
    cols = [c.format(k=k) for c in COLUMNS
            if c not in HIDDEN or any(results[s][lb][c] for s in seeds for lb in labels)]
    ranged = (f"ndcg@{k}", f"hr@{k}", "category_diversity")
    lines = ["| setting | " + " | ".join(c.upper() if c in ranged[:2] else SHORT.get(c, c) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for label in labels:
        cells = []
        for c in cols:
            v = [results[s][label][c] for s in seeds]
            digits = 2 if c in TWO_DIGITS else 4
            cells.append(spread(v, digits) if c in ranged else f"{np.mean(v):.{digits}f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative(results: dict[int, dict[str, dict]], k: int, label: str, ref: str = "rules off") -> dict[str, list[float]]:
    """Per seed: the relative change of each figure of ``label`` against ``ref``."""
    seeds = sorted(results)
    out = {}
    for c in results[seeds[0]][label]:
        if isinstance(results[seeds[0]][label][c], float):
            out[c] = [results[s][label][c] / results[s][ref][c] - 1 if results[s][ref][c] else float("nan")
                      for s in seeds]
    return out


def plot(results: dict[int, dict[str, dict]], k: int, path: str) -> None:
    """Two panels, each point a setting (mean over the seeds, bars min-max): the change of
    NDCG@K against rules off, paired per seed (a seed's world sets the level, the rule the
    change), over the category diversity of the lists, and over the change of their median
    age. A line per swept rule, from rules off through its values; the preset a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seeds = sorted(results)
    labels = list(results[seeds[0]])
    nd = f"ndcg@{k}"

    def change(label: str, c: str) -> np.ndarray:
        return np.array([100 * (results[s][label][c] / results[s]["rules off"][c] - 1) for s in seeds])

    panels = (("category_diversity", lambda lb: np.array([results[s][lb]["category_diversity"] for s in seeds]),
               "intra-list category diversity"),
              ("median_age_days", lambda lb: change(lb, "median_age_days"),
               "median age of the listed items, change against rules off (%)"))
    series: dict[str, list[str]] = {}
    for label in labels:
        series.setdefault(results[seeds[0]][label]["series"], []).append(label)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, (xn, x_of, x_label) in zip(axes, panels):
        for name, members in series.items():
            if name == "off":
                continue
            preset = name == "preset"
            members = members if preset else ["rules off", *members]
            xs = np.array([x_of(m) for m in members])
            ys = np.array([change(m, nd) for m in members])
            ax.errorbar(xs.mean(1), ys.mean(1), yerr=[ys.mean(1) - ys.min(1), ys.max(1) - ys.mean(1)],
                        xerr=[xs.mean(1) - xs.min(1), xs.max(1) - xs.mean(1)], capsize=2,
                        **({"marker": "*", "markersize": 13, "color": "crimson", "linestyle": "none",
                            "label": members[0]} if preset else {"marker": "o", "markersize": 4,
                                                                 "label": name.removeprefix("rules.")}))
            if not preset:
                for m, x, y in zip(members[1:], xs.mean(1)[1:], ys.mean(1)[1:]):
                    ax.annotate(m.split("=")[-1], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"NDCG@{k} change against rules off (%)")
        ax.grid(alpha=0.3)
        if xn == "median_age_days":
            ax.invert_xaxis()       # fresher to the right
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"List rules on day D of a generated world, lists of {k}: accuracy against diversity and "
                 f"freshness ({len(seeds)} seed(s): mean, bars min-max)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--days", type=int, default=12)
    p.add_argument("--holdout", type=int, default=2, help="last days held out (day D is the first of them)")
    p.add_argument("--fresh-item-fraction", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--k", type=int, default=10, help="list length (score.top_k) and the K of NDCG@K")
    p.add_argument("--sweep", action="append", default=None, metavar="'rules.KEY=V1,V2,... [rules.OTHER=V]'",
                   help=f"a rule and its values, then any key it needs with it, e.g. 'rules.fresh_boost=0.5,1 "
                        f"rules.fresh_half_life_days=1' (repeatable; default: {'; '.join(DEFAULT_SWEEPS)})")
    p.add_argument("--preset", default=str(ROOT / "configs" / "rules-media.yaml"),
                   help="a config file whose rules are scored too ('' for none)")
    p.add_argument("--out", default="/tmp/raymedia-rules-sweep")
    p.add_argument("--plot", default=None, help="PNG path (default <out>/rules_sweep.png)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    args.sweep = args.sweep or list(DEFAULT_SWEEPS)
    for spec in args.sweep:
        if not all(part.startswith("rules.") and "=" in part for part in spec.split()):
            p.error(f"--sweep {spec!r} must look like 'rules.KEY=V1,V2,... [rules.OTHER=V ...]'")
    if not 0 < args.holdout < args.days:
        p.error("--holdout must be between 1 and --days - 1")
    log_setup()
    args.out = args.out.rstrip("/")
    t0 = time.perf_counter()
    results = {s: run_seed(args, s) for s in args.seeds}
    text = table(results, args.k)
    elapsed = time.perf_counter() - t0
    path = args.plot or f"{args.out}/rules_sweep.png"
    plot(results, args.k, path)
    print(text)
    if args.preset:
        label = next(lb for lb in results[args.seeds[0]] if results[args.seeds[0]][lb]["series"] == "preset")
        rel = relative(results, args.k, label)
        print("\npreset vs rules off: " + ", ".join(f"{c} {spread([100 * x for x in v], 1)}%"
                                                  for c, v in rel.items() if not np.isnan(v).any()))
    print(f"\ndone in {elapsed:.0f}s; plot {path}, per-seed figures under {args.out}/seed*/sweep.json")
    if args.record:
        w = world(args, args.seeds[0])
        record("List rules: accuracy versus diversity (issue 19)",
               f"World: {w.users} users, {w.items} items, {w.days} days ({args.holdout} held out), "
               f"{w.categories} categories, series_fraction {w.series_fraction}, fresh_item_fraction "
               f"{w.fresh_item_fraction}; {args.epochs} epochs; lists of {args.k}; overrides "
               f"{args.overrides or 'none'}.\n\n{text}\n\n![accuracy vs diversity]({os.path.relpath(path, ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
