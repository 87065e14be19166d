"""Publish throughput into Redis: users/s of `raymedia publish` (Ray tasks, pipelined SETs).

Writes a committed day of random recommendations (K items + scores) and predictions for
--users users (what is published does not depend on how it was scored), starts a real
redis-server on loopback (AOF with fsync every second, as a production Redis would run),
and times `publish.publish` end to end (read Parquet, JSON values, pipelined SETs from Ray
tasks, the switch), for each pipeline depth given. Depth 1 is one round trip per user.

    python benchmarks/publish.py --users 200000 --k 100 --depths 500 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from common import ROOT, record  # noqa: E402  (puts the repo on sys.path)
from raymedia import publish, schema, storage  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402


def committed_day(root: str, day: dt.date, users: int, k: int, items: int) -> None:
    """A committed day of random recommendations and predictions (real Parquet, real commit)."""
    rng = np.random.default_rng(0)
    user_ids = np.arange(users, dtype=np.int64) * 7 + 1
    recs = pa.table({
        "user_id": user_ids,
        "items": pa.FixedSizeListArray.from_arrays(rng.integers(0, items, users * k), k).cast(pa.list_(pa.int64())),
        "scores": pa.FixedSizeListArray.from_arrays(
            np.sort(rng.random(users * k, dtype=np.float32).reshape(users, k))[:, ::-1].ravel(), k
        ).cast(pa.list_(pa.float32())),
        "model_version": pa.array(["bench"] * users),
        "generated_at": pa.array([dt.datetime(2026, 1, 26, tzinfo=dt.timezone.utc)] * users, schema.TS_TYPE)})
    preds = pa.table({"user_id": user_ids, "p_return_7d": rng.random(users, dtype=np.float32),
                      "next_category": pa.array([f"c{i % 16}" for i in range(users)]),
                      "n_events": rng.integers(1, 100, users).astype(np.int32),
                      "model_version": pa.array(["bench"] * users)})
    run_id = storage.new_run_id()
    run = storage.run_path(root, day, run_id)
    files = {}
    for name, table in (("recommendations", recs), ("predictions", preds)):
        storage.makedirs(storage.join(run, name))
        pq.write_table(table, storage.join(run, name, "part-0.parquet"))
        files[name] = [f"run={run_id}/{name}/part-0.parquet"]
    storage.commit(root, storage.Commit(
        dt=day.isoformat(), run_id=run_id, files=files, rows={"recommendations": users, "predictions": users},
        model_versions={}, input_partitions=[], config_hash="bench", created_at="2026-01-26T00:00:00+00:00"),
        storage.generation(root, day))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--depths", type=int, nargs="+", default=[500, 1])
    p.add_argument("--depth1-users", type=int, default=20_000, help="users for depth 1 (slow)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", appendfsync="everysec")
        server.start()
        try:
            for i, depth in enumerate(args.depths):
                users = args.users if depth > 1 else min(args.users, args.depth1_users)
                day = dt.date(2026, 1, 26) + dt.timedelta(days=i)
                root = f"{tmp}/scores"
                committed_day(root, day, users, args.k, args.items)
                target = publish.parse_target(server.url, f"bench{depth}")
                t0 = time.perf_counter()
                r = publish.publish(root, day, target, pipeline_depth=depth)
                secs = time.perf_counter() - t0
                mem = server.client().info("memory")["used_memory"] / r.users
                rows.append((depth, r.users, secs, r.users / secs, mem))
                print(f"depth {depth}: {r.users} users in {secs:.1f}s = {r.users / secs:,.0f} users/s "
                      f"({mem:,.0f} bytes of Redis memory per user so far)", flush=True)
        finally:
            server.stop()
    text = (f"{args.k} items + scores and 3 predictions per user (JSON), 2 Ray CPUs, redis-server "
            "on the same machine (AOF, fsync every second), end to end (read, encode, SET, switch)\n\n"
            "| SETs per round trip | users | seconds | users/s |\n|---:|---:|---:|---:|\n"
            + "\n".join(f"| {d} | {u:,} | {s:.1f} | {ups:,.0f} |" for d, u, s, ups, _ in rows))
    print(text)
    if not args.no_record:
        record("Publishing to Redis", text)


if __name__ == "__main__":
    main()
