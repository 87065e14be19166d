"""Backfills: day by day, point in time, resumable after a kill, no leakage from the future."""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from conftest import small_config, small_overrides
from raymedia import checkpoint, pipeline, storage


def _active_users(root: str, day: dt.date, lookback: int) -> set:
    events = pads.dataset(f"{root}/events", partitioning="hive").to_table()
    lo, hi = str(day - dt.timedelta(days=lookback)), str(day)
    window = events.filter(pc.and_(pc.greater_equal(events["dt"], lo), pc.less(events["dt"], hi)))
    return set(window.filter(pc.not_equal(window["event"], "impression"))["user_id"].to_pylist())


def test_killed_backfill_resumes_at_the_first_uncommitted_day_without_leakage(trained_run, tmp_path):
    import ray
    root = str(tmp_path)
    shutil.copytree(f"{trained_run['root']}/events", f"{root}/events")
    shutil.copytree(f"{trained_run['root']}/catalog", f"{root}/catalog")
    version = trained_run["result"].model_uris["sequence"].rsplit("/", 1)[1]
    sets = small_overrides(root, f"output.models_uri={trained_run['cfg'].output.models_uri}",
                           "eval.enabled=false")
    last = trained_run["day"]
    days = [last - dt.timedelta(days=i) for i in range(4, -1, -1)]
    cmd = [sys.executable, "-m", "raymedia.cli", "backfill", "--start", str(days[0]), "--end",
           str(days[-1]), "--model-version", version,
           *[a for s in [*sets, f"ray.address={ray.get_runtime_context().gcs_address}"]
             for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    out = f"{root}/scores"
    deadline = time.time() + 400
    while not os.path.exists(f"{out}/dt={days[2]}/_COMMIT.json"):
        assert proc.poll() is None and time.time() < deadline, "backfill stopped before day 3"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {d: storage.read_commit(out, d) for d in days[:3]}
    assert all(first.values()) and storage.read_commit(out, days[3]) is None

    lines: list[str] = []
    cfg = small_config(root, *sets[-2:])
    results = pipeline.backfill(cfg, days[0], days[-1], model_version=version, echo=lines.append)
    assert [r.dt for r in results] == [str(days[3]), str(days[4])]
    assert all("already committed, skipped" in line for line in lines[:3])
    assert "[5/5]" in lines[-1] and "0 day(s) left" in lines[-1]
    for d in days:
        c = storage.read_commit(out, d)
        if d in first:
            assert c.run_id == first[d].run_id           # untouched by the restart
        users = storage.read_committed(out, d, "recommendations")["user_id"].to_pylist()
        assert len(users) == len(set(users))
        assert set(users) == _active_users(root, d, cfg.data.lookback_days)
    assert glob.glob(f"{out}/dt={days[3]}/run=*") == [f"{out}/dt={days[3]}/run={results[0].run_id}"]
    # each (re)started backfill rebuilds its first day's user state, then chains night to night
    modes = [storage.read_commit(out, d).details["state"]["mode"] for d in days]
    assert modes == ["rebuild", "incremental", "incremental", "rebuild", "incremental"]

    # Events on or after day 3 must not change day 3's output.
    before = storage.read_committed(out, days[2], "recommendations").sort_by("user_id")
    late = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), "item_id": pa.array([1, 2, 3], pa.int64()),
                     "event": ["play"] * 3,
                     "ts": pa.array([dt.datetime.combine(days[2], dt.time(9), dt.timezone.utc)] * 3,
                                    pa.timestamp("us", tz="UTC")),
                     "dwell_s": pa.array([5.0] * 3, pa.float32())})
    pq.write_table(late, f"{root}/events/dt={days[2]}/part-late.parquet")
    pipeline.backfill(cfg, days[2], days[2], overwrite=True, model_version=version, echo=lines.append)
    after = storage.read_committed(out, days[2], "recommendations").sort_by("user_id")
    assert storage.read_commit(out, days[2]).generation == 2
    for col in ("user_id", "items", "scores"):
        assert after[col].to_pylist() == before[col].to_pylist()


def test_point_in_time_model_selection(trained_run):
    models = trained_run["cfg"].output.models_uri
    day = trained_run["day"]                      # the models were trained as of this day
    assert checkpoint.as_of(models, "sequence", str(day)) == trained_run["result"].model_uris["sequence"]
    with pytest.raises(FileNotFoundError, match="was trained before dt="):
        checkpoint.as_of(models, "sequence", str(day - dt.timedelta(days=1)))
    with pytest.raises(FileNotFoundError, match="no two_tower model version 'nope'"):
        checkpoint.version_uri(models, "two_tower", "nope")
