"""report.html for one evaluation run, or one nightly run: self-contained (plots are
embedded PNGs, no external files or network), rendered from metrics.json alone.

Plots: metrics of every model against the baselines, metric by user-history length,
the return prediction's reliability diagram and score distributions, training curves,
and the item popularity of the recommendations against the catalog's; for a nightly run
also the "Lists" table of its committed lists (``lists_table``).
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fig(w: float = 6.0, h: float = 3.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(w, h))


def _val(v) -> float:
    return float("nan") if v is None else float(v)


def plot_metrics(m: dict):
    k = m["k"]
    names = sorted(m["models"], key=lambda n: -_val(m["models"][n][f"ndcg@{k}"]))
    fig, ax = _fig()
    x = np.arange(len(names))
    for i, key in enumerate((f"hr@{k}", f"ndcg@{k}", "mrr")):
        ax.bar(x + (i - 1) * 0.27, [_val(m["models"][n].get(key)) for n in names], 0.27, label=key.upper())
    ax.set_xticks(x, [n + (" (baseline)" if n in m.get("baselines", []) else "") for n in names],
                  rotation=15)
    ax.set_title(f"Full ranking over {m.get('catalog_items')} items, {m['users']} users")
    ax.legend()
    return fig


def plot_history_length(m: dict):
    k, by = m["k"], m["by_history_length"]
    fig, ax = _fig()
    x = np.arange(len(by["buckets"]))
    for name, vals in sorted(by["models"].items()):
        ax.plot(x, [_val(v) for v in vals[f"ndcg@{k}"]], marker="o", label=name)
    ax.set_xticks(x, [f"{b}\n({n})" for b, n in zip(by["buckets"], by["users"])])
    ax.set_xlabel("events in the user's history (users)")
    ax.set_ylabel(f"NDCG@{k}")
    ax.legend()
    return fig


def plot_calibration(m: dict):
    ret = m["return"]
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = [x for x in ret["bins"] if x["count"]]
    a.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    a.plot([x["mean_predicted"] for x in bins], [x["observed_rate"] for x in bins], marker="o",
           label=f"ECE {_val(ret.get('ece')):.3f}")
    a.set_xlabel("mean predicted P(return within 7 days)")
    a.set_ylabel("observed return rate")
    a.set_title("reliability")
    a.legend()
    edges = np.linspace(0, 1, len(ret["score_histogram"]["positive"]) + 1)
    for label, counts in (("returned", ret["score_histogram"]["positive"]),
                          ("did not return", ret["score_histogram"]["negative"])):
        b.stairs(counts, edges, label=label, fill=False)
    b.set_xlabel("predicted probability")
    b.set_ylabel("users")
    b.set_title(f"scores (AUC {_val(ret.get('auc')):.3f})")
    b.legend()
    return fig


def plot_training(m: dict):
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, hist in sorted(m.get("training", {}).items()):
        ep = [h["epoch"] for h in hist]
        a.plot(ep, [h["loss"] for h in hist], marker="o", label=name)
        if any(h.get("val_ndcg") is not None for h in hist):
            b.plot(ep, [_val(h.get("val_ndcg")) for h in hist], marker="o", label=name)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.legend()
    b.set_xlabel("epoch")
    b.set_ylabel(f"validation NDCG@{m['k']}")
    b.legend()
    return fig


def plot_popularity(m: dict):
    fig, ax = _fig()
    cat = np.asarray(m["catalog_popularity_percentiles"], dtype=float)
    edges = np.linspace(0, 1, len(cat) + 1)
    ax.stairs(cat / max(cat.sum(), 1), edges, label="catalog", fill=True, alpha=0.3)
    for name, counts in sorted(m["recommended_popularity_percentiles"].items()):
        c = np.asarray(counts, dtype=float)
        bias = m["models"][name].get("popularity_bias")
        ax.stairs(c / max(c.sum(), 1), edges, label=f"{name} (mean {_val(bias):.2f})")
    ax.set_xlabel("item popularity percentile (0 = least popular)")
    ax.set_ylabel(f"share of top-{m['k']} slots")
    ax.legend()
    return fig


BEYOND = {"coverage": "coverage", "popularity_bias": "popularity bias", "novelty_bits": "novelty (bits)",
          "category_diversity": "category diversity", "serendipity": "serendipity"}


def _table(m: dict) -> str:
    k = m["k"]
    sampled = m.get("sampled", {}).get("models", {})
    cols = [f"hr@{k}", f"ndcg@{k}", "mrr", *BEYOND]
    head = "".join(f"<th>{html.escape(c.upper() if '@' in c else BEYOND.get(c, c))}</th>" for c in cols)
    rows = []
    for name, mm in sorted(m["models"].items(), key=lambda kv: -_val(kv[1][f"ndcg@{k}"])):
        cells = "".join(f"<td>{_fmt(mm.get(c))}</td>" for c in cols)
        s = sampled.get(name, {})
        kind = "baseline" if name in m.get("baselines", []) else "model"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{kind}</td>{cells}"
                    f"<td>{_fmt(s.get(f'hr@{k}'))}</td><td>{_fmt(s.get(f'ndcg@{k}'))}</td></tr>")
    neg = m.get("sampled", {}).get("negatives")
    return (f"<table><tr><th>ranker</th><th></th>{head}<th>sampled HR@{k}</th>"
            f"<th>sampled NDCG@{k}</th></tr>{''.join(rows)}</table>"
            f"<p class=note>Full ranking over all {m.get('catalog_items')} items is the primary figure; "
            f"the sampled columns rank the test item against {neg} random negatives and are "
            f"always labelled sampled. Beyond accuracy, over each ranker's top-{k} lists: coverage of "
            f"the catalog, mean popularity percentile, novelty (mean -log2 of the items' share of "
            f"interactions), category diversity (share of item pairs in different categories) and "
            f"serendipity (share of listed items that are the held-out item and not in the popularity "
            f"list).</p>")


LIST_ROWS = (("users", "users (lists)"), ("mean_length", "mean list length"),
             ("category_diversity", "category diversity (share of item pairs in different categories)"),
             ("distinct_categories", "distinct categories per list"),
             ("embedding_diversity", "embedding diversity (mean cosine distance of item pairs)"),
             ("novelty_bits", "novelty (mean -log2 share of interactions, bits)"),
             ("mean_age_days", "mean age of listed items (days)"), ("median_age_days", "median age (days)"),
             ("new_item_share", "share of new items (no training interaction)"),
             ("coverage", "catalog coverage"), ("distinct_items", "distinct items listed"),
             ("catalog_items", "recommendable catalog items"))


def lists_table(m: dict) -> str:
    """The run's committed lists (metrics.json ``lists``): one row per statistic, then the
    items each list rule placed; empty when the metrics have no ``lists`` (``raymedia evaluate``)."""
    lists = m.get("lists")
    if not lists:
        return ""
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(lists.get(key))}</td></tr>"
                   for key, label in LIST_ROWS)
    hits = lists.get("rule_hits") or {}
    rows += "".join(f"<tr><td>items placed by rule: {html.escape(r)}</td><td>{n}</td></tr>"
                    for r, n in sorted(hits.items()))
    return (f'<h2>Lists</h2><table data-table="lists"><tr><th>the run\'s committed lists</th><th></th></tr>'
            f"{rows}</table><p class=note>Every list the run wrote (after the list rules, cold-start users "
            f"included); embedding distance in the item vectors of the "
            f"{html.escape(str(lists.get('embedding_model')))} model; ages over the "
            f"{lists.get('dated_items')} listed items with a publish date.</p>")


def _fits(m: dict) -> str:
    """One line on the strong baselines: seconds each fit took, or why it was skipped."""
    fits = m.get("baseline_fits") or {}
    if not fits:
        return ""
    parts = [f"{html.escape(n)}: fitted in {f['seconds']:.1f} s" if "seconds" in f
             else f"{html.escape(n)}: skipped ({html.escape(str(f.get('skipped')))})"
             for n, f in sorted(fits.items())]
    return f"<p class=note>Strong baselines (same users, same masks): {'; '.join(parts)}.</p>"


def cold_items_line(m: dict) -> str:
    """What the cold-item protocol ranked (empty for the other protocols)."""
    c = m.get("cold_items")
    if not c:
        return ""
    return (f"cold items (first taken on {m.get('test_day')}): {c['items']} items, {c['targets']} targets of "
            f"{c['users']} users ranked over every item published by the end of that day; "
            f"{c['published_before']} of them published before that day; {c['unknown_items']} targets "
            f"not in the catalog, {c['without_history']} of users without a history; models: id-only "
            f"(kind) and content-aware (kind+content)")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def table(metrics: dict) -> str:
    """metrics.json as the printed table (``raymedia evaluate``, ``raymedia demo``): every model
    and baseline, full ranking first, then sampled."""
    k = metrics.get("k", 10)
    sampled = metrics.get("sampled", {}).get("models", {})
    base = set(metrics.get("baselines", []))
    head = (f"{'model':<16} {'HR@' + str(k):>7} {'NDCG@' + str(k):>8} {'MRR':>7} {'cover':>6} "
            f"{'popbias':>7} {'novelty':>7} {'catdiv':>7} | {'sampled HR@' + str(k):>14} {'NDCG@' + str(k):>8}")
    lines = [head, "-" * len(head)]
    for name, m in sorted(metrics.get("models", {}).items(), key=lambda kv: -(kv[1][f"ndcg@{k}"] or 0)):
        s = sampled.get(name, {})
        label = name + (" *" if name in base else "")
        lines.append(f"{label:<16} {_num(m[f'hr@{k}'])} {_num(m[f'ndcg@{k}'], 8)} {_num(m.get('mrr'))} "
                     f"{_num(m.get('coverage'), 6)} {_num(m.get('popularity_bias'))} "
                     f"{_num(m.get('novelty_bits'))} {_num(m.get('category_diversity'))} | "
                     f"{_num(s.get(f'hr@{k}'), 14)} {_num(s.get(f'ndcg@{k}'), 8)}")
    ret = metrics.get("return")
    seen = {True: "seen items excluded", False: "repeats allowed", None: ""}[metrics.get("exclude_seen")]
    lines.append(f"(* baseline; {metrics.get('users', 0)} users, {metrics.get('protocol')}, "
                 f"{metrics.get('ranking')} ranking over {metrics.get('catalog_items')} items, {seen}; "
                 f"sampled: {metrics.get('sampled', {}).get('negatives')} random negatives)")
    if metrics.get("cold_items"):
        lines.append(cold_items_line(metrics))
    fits = metrics.get("baseline_fits") or {}
    if fits:
        lines.append("baselines: " + "; ".join(
            f"{n} fitted in {f['seconds']:.1f}s" if "seconds" in f else f"{n} skipped ({f.get('skipped')})"
            for n, f in sorted(fits.items())))
    if metrics.get("lists"):
        lines.append(lists_line(metrics["lists"]))
    if ret:
        lines.append(f"return-within-7d: AUC {_num(ret.get('auc')).strip()}, ECE {_num(ret.get('ece')).strip()}, "
                     f"Brier {_num(ret.get('brier')).strip()} on {ret['users']} held-out users "
                     f"(base rate {_num(ret.get('base_rate')).strip()})")
    return "\n".join(lines)


def lists_line(lists: dict) -> str:
    """The run's lists in one printed line (``table``)."""
    hits = ", ".join(f"{r} {n}" for r, n in sorted((lists.get("rule_hits") or {}).items()))
    return (f"lists: {lists['users']} users, {_num(lists.get('mean_length')).strip()} items each, category "
            f"diversity {_num(lists.get('category_diversity')).strip()}, "
            f"{_num(lists.get('distinct_categories')).strip()} categories, embedding diversity "
            f"{_num(lists.get('embedding_diversity')).strip()}, novelty {_num(lists.get('novelty_bits')).strip()} "
            f"bits, median age {_num(lists.get('median_age_days')).strip()} days, new items "
            f"{_num(lists.get('new_item_share')).strip()}, coverage {_num(lists.get('coverage')).strip()}"
            + (f"; placed by rule: {hits}" if hits else ""))


def _num(v, width: int = 7) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.4f}"


def render(m: dict) -> str:
    """The report as one HTML string."""
    plots = {"metrics": ("Models against baselines", plot_metrics),
             "history_length": ("Metric by user-history length", plot_history_length),
             "calibration": ("Return prediction: calibration and scores", plot_calibration),
             "training": ("Training curves", plot_training),
             "popularity": ("Popularity of recommended items against the catalog", plot_popularity)}
    sections = []
    for key, (title, fn) in plots.items():
        if key == "calibration" and not (m.get("return") and m["return"].get("users")):
            sections.append(f"<h2>{title}</h2><p>No held-out users with a return label.</p>")
            continue
        if key == "popularity" and "catalog_popularity_percentiles" not in m:
            continue
        if key == "training" and not m.get("training"):       # a run's metrics: no curves
            continue
        sections.append(f'<h2>{title}</h2><img class="plot" data-plot="{key}" alt="{html.escape(title)}" '
                        f'src="data:image/png;base64,{_png(fn(m))}">')
    ret = m.get("return") or {}
    seen = {True: "seen items excluded", False: "repeats allowed"}.get(m.get("exclude_seen"), "")
    data = m.get("data", {})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>raymedia evaluation</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img.plot{{max-width:100%;display:block}}
.note{{color:#555;font-size:90%}}</style></head>
<body>
<h1>raymedia evaluation</h1>
<p>{html.escape(str(m.get('protocol')))}, {html.escape(str(m.get('ranking')))} ranking, K={m.get('k')},
{m.get('users')} users, {m.get('catalog_items')} items, {seen}.
Data: {html.escape(str(data.get('events_uri', '')))} ({data.get('first_day', '')} to {data.get('last_day', '')}).
metrics.json schema version {m.get('schema_version')}.</p>
{f"<p>{html.escape(cold_items_line(m))}.</p>" if m.get("cold_items") else ""}
{_table(m)}
{_fits(m)}
{lists_table(m)}
<p>Return within 7 days: AUC {_fmt(ret.get('auc'))}, ECE {_fmt(ret.get('ece'))}, Brier {_fmt(ret.get('brier'))}
on {ret.get('users', 0)} held-out users (base rate {_fmt(ret.get('base_rate'))}).</p>
{''.join(sections)}
<p id="plots-status" class="note"></p>
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img.plot"), ok = [];
  imgs.forEach(function (i) {{ if (i.complete && i.naturalWidth > 0) ok.push(i.dataset.plot); }});
  document.getElementById("plots-status").textContent = "plots rendered: " + ok.join(",");
}});
</script>
</body></html>
"""
