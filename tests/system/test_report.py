"""`raymedia evaluate` on the shared trained run: the printed table, metrics.json's schema,
and report.html opened in headless Chromium with every plot rendered."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from raymedia import cli
from raymedia.evaluate import SCHEMA_VERSION

RANKERS = {"sequence", "two_tower", "popularity", "own_history", "most_frequent", "item_knn", "als", "ease"}
PLOTS = ["metrics", "history_length", "calibration", "training", "popularity"]


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """`raymedia evaluate --checkpoint` with the run's models (no training), repeats allowed."""
    out = str(tmp_path_factory.mktemp("evaluate"))
    cfg = trained_run["cfg"]
    argv = ["evaluate", "--events", cfg.data.events_uri, "--catalog", cfg.data.catalog_uri,
            "--model", "all", "--no-exclude-seen", "--checkpoint", cfg.output.models_uri,
            "--out", out, "--set", "ray.progress_bars=false"]     # history_len: the models' own
    return out, argv


def test_evaluate_prints_every_model_and_baseline_and_writes_metrics(evaluated, trained_run, capsys):
    out, argv = evaluated
    cfg = trained_run["cfg"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for name in RANKERS:
        assert re.search(rf"^{name}\b.*\d\.\d{{4}}", printed, re.M), printed
    assert "sampled" in printed and "repeats allowed" in printed
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)          # strict JSON: no NaN
    assert m["schema_version"] == SCHEMA_VERSION and m["protocol"] == "leave-last-out"
    assert m["ranking"] == "full" and m["exclude_seen"] is False
    assert m["history_len"] == cfg.data.history_len        # not set: taken from the checkpoint
    assert set(m["models"]) == RANKERS and set(m["baselines"]) == RANKERS - {"sequence", "two_tower"}
    for name, v in m["models"].items():
        assert set(v) == {"hr@10", "ndcg@10", "mrr", "coverage", "popularity_bias", "novelty_bits",
                          "category_diversity", "serendipity"}
        assert v["novelty_bits"] > 0 and 0 <= v["serendipity"] <= v["hr@10"]
        assert 0 <= v["ndcg@10"] <= v["hr@10"] <= 1 and 0 < v["coverage"] <= 1
        sampled = m["sampled"]["models"][name]
        assert sampled["hr@10"] >= v["hr@10"]      # 100 negatives are easier than all items
    assert m["sampled"]["ranking"] == "sampled" and m["sampled"]["negatives"] == 100
    # the popularity baseline recommends the same 10 items to everyone
    assert m["models"]["popularity"]["coverage"] * m["catalog_items"] == pytest.approx(10)
    assert m["models"]["popularity"]["popularity_bias"] > 0.9
    assert m["models"]["popularity"]["serendipity"] == 0        # its own list is the expected one
    assert "lists" not in m             # no committed lists here: that section is a run's
    assert sum(m["by_history_length"]["users"]) == m["users"]
    ret = m["return"]
    assert 0 <= ret["ece"] <= 1 and sum(b["count"] for b in ret["bins"]) == ret["users"]
    assert set(m["training"]) == {"sequence", "two_tower"} and all(m["training"].values())
    assert set(m["baseline_fits"]) == {"als", "ease"} and all(f["seconds"] >= 0 for f in m["baseline_fits"].values())
    assert re.search(r"^baselines: als fitted in [\d.]+s; ease fitted in [\d.]+s$", printed, re.M), printed
    with open(os.path.join(out, "report.html")) as f:
        assert "Strong baselines (same users, same masks): als: fitted in" in f.read()


def test_report_renders_every_plot_in_headless_chromium(evaluated):
    out, _ = evaluated
    report = os.path.join(out, "report.html")
    assert os.path.exists(report), "run the evaluate test first (same module)"
    html = open(report).read()
    assert "http://" not in html and "https://" not in html          # self-contained
    assert html.count("data:image/png;base64,") == len(PLOTS)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=10000", "--dump-dom", f"file://{report}"],
                         capture_output=True, text=True, timeout=120).stdout
    status = re.search(r'id="plots-status"[^>]*>plots rendered: ([^<]*)<', dom)
    assert status, dom[-2000:]
    assert status.group(1).split(",") == PLOTS     # each <img> decoded with a non-zero width


@pytest.mark.slow
def test_temporal_split_ranks_the_test_days_first_interactions(trained_run, tmp_path):
    import json as _json

    from raymedia import dataset, offline
    cfg = trained_run["cfg"]
    m = offline.run(cfg.data.events_uri, str(tmp_path), protocol="temporal",
                    catalog_uri=cfg.data.catalog_uri, checkpoint_uri=cfg.output.models_uri,
                    overrides=[f"data.history_len={cfg.data.history_len}", "ray.progress_bars=false"])
    assert m["protocol"] == "temporal" and "return" not in m
    assert m["test_day"] == dataset.event_days(cfg.data.events_uri)[-1].isoformat()
    ranked = m["test_day_users"] - m["test_day_unknown_items"] - m["test_day_without_history"]
    assert m["users"] == ranked > 100
    assert m["models"]["sequence"]["ndcg@10"] > m["models"]["popularity"]["ndcg@10"]
    with open(tmp_path / "metrics.json") as f:
        assert _json.load(f)["protocol"] == "temporal"
