"""DDP: two Ray Train workers give the same figures as one, within noise, and no user is
dropped or counted twice (validation targets are summed across ranks; evaluation ranks
every user exactly once). Slow: it trains both models twice."""

from __future__ import annotations

import pytest

from raymedia import offline

pytestmark = pytest.mark.slow


def _run(world, out, workers):
    root = world["root"]
    return offline.run(f"{root}/events", out, model="all", catalog_uri=f"{root}/catalog",
                       overrides=["data.history_len=30", "train.epochs=4", "train.batch_size=32",
                                  "train.patience=0", "ray.progress_bars=false",
                                  "train.cpus_per_worker=0.5",     # 2 workers leave a CPU to Ray Data
                                  f"train.num_workers={workers}"])


def test_two_workers_match_one_worker(world, tmp_path):
    one = _run(world, str(tmp_path / "one"), 1)
    two = _run(world, str(tmp_path / "two"), 2)
    assert one["users"] == two["users"] > 500
    assert sum(one["by_history_length"]["users"]) == sum(two["by_history_length"]["users"]) == one["users"]
    for kind in ("sequence", "two_tower"):
        v1 = [h["val_users"] for h in one["training"][kind]]
        v2 = [h["val_users"] for h in two["training"][kind]]
        assert v1 == v2 and v1[0] > 50, (kind, v1, v2)     # every validation user once, on some rank
        assert len(two["training"][kind]) == 4
        a, b = one["models"][kind]["ndcg@10"], two["models"][kind]["ndcg@10"]
        # 2 ranks x batch 32 = one optimizer step per 64 sequences: same data, different noise
        assert abs(a - b) < 0.03 + 0.15 * max(a, b), (kind, a, b)
        assert two["models"][kind]["ndcg@10"] > 1.5 * two["models"]["popularity"]["ndcg@10"]
    for base in ("popularity", "own_history"):
        assert one["models"][base] == pytest.approx(two["models"][base], rel=1e-9)   # no training
