"""`raymedia evaluate --protocol cold-items` on a small world with news-like fresh items:
id-only and content-aware models side by side with category popularity, the cold-item
figures in metrics.json, the printed table and report.html."""

from __future__ import annotations

import json
import os

import pyarrow.compute as pc
import pyarrow.dataset as pads

from conftest import small_overrides
from raymedia import cli
from raymedia.offline import cold_targets

RANKERS = {"sequence", "two_tower", "sequence+content", "two_tower+content", "category_popularity"}


def test_cold_items_protocol_ranks_the_last_days_new_items(ray_session, tmp_path, capsys):
    from raymedia.data.generate import GeneratorConfig, generate
    gen = GeneratorConfig(users=500, items=500, days=6, seed=4, categories=8, fresh_item_fraction=0.5)
    generate(gen, str(tmp_path / "data"))
    out = str(tmp_path / "eval")
    # few hash rows: the default 2**18 make each content training step ~20x slower on CPU
    sets = [s for s in small_overrides(str(tmp_path / "data"), "train.epochs=3", "content.buckets=4096")
            if s.split("=")[0].startswith(("train.", "eval.", "ray.", "content."))]
    argv = ["evaluate", "--events", str(tmp_path / "data" / "events"), "--protocol", "cold-items",
            "--out", out, *[a for s in sets for a in ("--set", s)]]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    assert m["protocol"] == "cold-items" and set(m["models"]) == RANKERS
    assert m["baselines"] == ["category_popularity"]
    for name, v in m["models"].items():
        assert 0 <= v["ndcg@10"] <= v["hr@10"] <= 1
        assert m["sampled"]["models"][name]["hr@10"] >= v["hr@10"]
    # the targets are the last day's (user, cold item) pairs, each ranked once
    events = pads.dataset(str(tmp_path / "data" / "events"), format="parquet", partitioning="hive")
    table = events.to_table(columns=["user_id", "item_id", "event", "ts", "dt"])
    last = max(table["dt"].to_pylist())
    is_last = pc.equal(table["dt"], last)
    pairs = cold_targets(table.filter(pc.invert(is_last)), table.filter(is_last))
    c = m["cold_items"]
    assert m["test_day"] == str(last) and c["targets"] == m["users"] > 20
    assert c["targets"] + c["unknown_items"] + c["without_history"] == pairs.num_rows
    assert c["items"] == len(set(pairs["item_id"].to_pylist()))
    assert c["variants"] == sorted(RANKERS - {"category_popularity"})
    # the content-aware models score a new item from what it is: they find cold items at all
    assert max(m["models"][k + "+content"]["hr@10"] for k in ("sequence", "two_tower")) > 0
    assert "cold items (first taken on" in printed and "sequence+content" in printed
    with open(os.path.join(out, "report.html")) as f:
        html = f.read()
    assert "cold items (first taken on" in html and "two_tower+content" in html
