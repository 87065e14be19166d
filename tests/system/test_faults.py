"""Outputs are never half-written or duplicated, and bad input never becomes bad output.

Runs reuse the models the session's trained run published; subprocess runs join
the session's local Ray as separate drivers (as `ray job submit` jobs would).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_config, small_overrides
from raymedia import pipeline, schema, storage
from raymedia.cli import main

FAST = ("eval.enabled=false",)


def _cli(root: str, day: dt.date, *extra: str) -> list[str]:
    import ray
    sets = small_overrides(root, f"ray.address={ray.get_runtime_context().gcs_address}", *extra)
    return [sys.executable, "-m", "raymedia.cli", "score", "--date", day.isoformat(),
            *[a for s in sets for a in ("--set", s)]]


def _assert_one_row_per_user(out: str, day: dt.date, expected_users: int) -> None:
    recs = storage.read_committed(out, day, "recommendations")
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)) == expected_users


def test_killed_before_commit_is_invisible_and_a_rerun_commits_exactly_once(trained_run):
    root, out = trained_run["root"], trained_run["cfg"].output.uri
    day = trained_run["day"] + dt.timedelta(days=1)          # never committed before
    proc = subprocess.Popen(_cli(root, day, "score.batch_size=32", "score.rows_per_file=32"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pattern = f"{out}/dt={day}/run=*/recommendations/*.parquet"
    deadline = time.time() + 300
    while not glob.glob(pattern):
        assert proc.poll() is None, "the run ended before writing anything"
        assert time.time() < deadline, "no output file appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)                       # the driver dies mid-write
    proc.wait()
    partial = glob.glob(f"{out}/dt={day}/run=*")
    assert partial and storage.read_commit(out, day) is None   # files exist, nothing visible
    with pytest.raises(FileNotFoundError):
        storage.read_committed(out, day, "recommendations")

    result = pipeline.run_day(small_config(root, *FAST), day, train_models=False)
    _assert_one_row_per_user(out, day, result.counts["users_scored"])
    assert glob.glob(f"{out}/dt={day}/run=*") == [f"{out}/dt={day}/run={result.run_id}"]


def _race(root: str, day: dt.date, out: str) -> None:
    """Two runs of one day at once into ``out``: exactly one exits 0 with a complete
    commit, the other exits 2 having removed its files."""
    procs = [subprocess.Popen(_cli(root, day, f"output.uri={out}", *FAST), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[1][-3000:] for p in procs]     # what each run was doing
        pytest.fail(f"a run of the race did not finish in 600 s: {tails}")
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], [r[1][-2000:] for r in results]
    loser = next(r for r in results if r[2] == 2)
    assert "another run committed" in loser[1] and "Traceback" not in loser[1]
    winner = next(r for r in results if r[2] == 0)
    commit = storage.read_commit(out, day)
    assert commit.run_id in winner[0] and commit.generation == 1
    _assert_one_row_per_user(out, day, commit.rows["recommendations"])
    assert glob.glob(f"{out}/dt={day}/run=*") == [f"{out}/dt={day}/run={commit.run_id}"]


def test_two_concurrent_runs_exactly_one_commits(trained_run, tmp_path):
    _race(trained_run["root"], trained_run["day"], str(tmp_path / "scores"))


@pytest.mark.slow
@pytest.mark.timeout(3600)      # 20 races of about a minute each: past the suite's 900 s per test
def test_two_concurrent_runs_twenty_times_in_a_row_exactly_one_commits_each_time(trained_run, tmp_path):
    for i in range(20):
        _race(trained_run["root"], trained_run["day"], str(tmp_path / f"scores-{i}"))


def test_a_cleanup_failure_leaves_the_commit_in_place_and_exits_0(trained_run, tmp_path, capsys):
    """A run directory that cannot be deleted (as root a read-only bind mount, since root
    ignores permissions; otherwise a directory without write permission) is reported in the
    run's result; the commit stands and the command exits 0."""
    root, day, out = trained_run["root"], trained_run["day"], str(tmp_path / "scores")
    stuck = tmp_path / "scores" / f"dt={day}" / "run=stuck"
    stuck.mkdir(parents=True)
    (stuck / "part-0.parquet").write_bytes(b"left by a run that crashed")
    storage.write_json(storage.marker_uri(out, day, "stuck"), storage.RunMarker(
        "stuck", 0, "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00").__dict__)
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", "-o", "ro", stuck, stuck], capture_output=True).returncode:
            pytest.skip("root without CAP_SYS_ADMIN: cannot make an undeletable directory")
        error, undo = "Read-only file system", ["umount", stuck]
    else:
        stuck.chmod(0o555)              # its file cannot be unlinked, so it cannot be removed
        error, undo = "Permission denied", ["chmod", "755", stuck]
    try:
        sets = small_overrides(root, f"output.uri={out}", *FAST)
        rc = main(["score", "--date", day.isoformat(), *[a for s in sets for a in ("--set", s)]])
    finally:
        subprocess.run(undo, check=True)
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{\n"):])
    assert rc == 0
    assert len(result["cleanup"]["failed"]) == 1 and "run=stuck" in result["cleanup"]["failed"][0]
    assert error in result["cleanup"]["failed"][0]
    commit = storage.read_commit(out, day)
    assert commit.run_id == result["run_id"]
    _assert_one_row_per_user(out, day, commit.rows["recommendations"])


def test_sigterm_to_the_driver_exits_143_with_one_line(trained_run, tmp_path):
    root, day, out = trained_run["root"], trained_run["day"], str(tmp_path / "scores")
    proc = subprocess.Popen(_cli(root, day, f"output.uri={out}", *FAST), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(f"{out}/dt={day}/run=*/user_state/*.parquet"):   # Ray is working for it
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "the run wrote nothing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "raymedia: stopped by SIGTERM" in err and "Traceback" not in err
    assert storage.read_commit(out, day) is None


@pytest.fixture
def dirty_world(trained_run, tmp_path):
    """A copy of the world's events with one extra file of broken rows in the last day."""
    root = str(tmp_path)
    shutil.copytree(f"{trained_run['root']}/events", f"{root}/events")
    shutil.copytree(f"{trained_run['root']}/catalog", f"{root}/catalog")
    last = trained_run["day"] - dt.timedelta(days=1)
    base = dt.datetime.combine(last, dt.time(12), dt.timezone.utc)
    good = [(5_000_001, 1, "play", base, 30.0), (5_000_001, 2, "complete", base + dt.timedelta(minutes=5), 600.0),
            (5_000_001, 3, "like", base + dt.timedelta(minutes=9), None)]
    bad = [(None, 1, "play", base, 1.0, "null_user_id"),
           (5_000_002, None, "play", base, 1.0, "null_item_id"),
           (5_000_002, 4, "teleport", base, 1.0, "unknown_event"),
           (5_000_002, 4, "play", base, -3.0, "negative_dwell"),
           (5_000_002, 4, "play", base + dt.timedelta(days=2), 1.0, "ts_outside_partition"),
           (5_000_001, 1, "play", base, 30.0, "duplicate")]
    rows = good + [b[:5] for b in bad]
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "item_id": pa.array([r[1] for r in rows], pa.int64()),
                      "event": [r[2] for r in rows],
                      "ts": pa.array([r[3] for r in rows], schema.TS_TYPE),
                      "dwell_s": pa.array([r[4] for r in rows], pa.float32())})
    pq.write_table(table, f"{root}/events/dt={last}/part-zz-late.parquet")
    sets = (f"output.uri={root}/scores", f"output.models_uri={trained_run['cfg'].output.models_uri}", *FAST)
    return {"root": root, "day": trained_run["day"], "bad": bad, "sets": sets, "last": last}


def _input_rows(root: str, day: dt.date, days: int) -> int:
    return sum(pq.read_metadata(f).num_rows
               for d in range(1, days + 1)
               for f in glob.glob(f"{root}/events/dt={day - dt.timedelta(days=d)}/*.parquet"))


def test_every_bad_row_lands_in_rejects_with_its_reason_and_counts_add_up(dirty_world):
    w = dirty_world
    cfg = small_config(w["root"], *w["sets"])
    result = pipeline.run_day(cfg, w["day"], train_models=False)
    commit = storage.read_commit(cfg.output.uri, w["day"])
    rejects = storage.read_committed(cfg.output.uri, w["day"], "rejects")
    assert sorted(rejects["reason"].to_pylist()) == sorted(b[5] for b in w["bad"])
    assert rejects["user_id"].null_count == 1 and "5000002" in rejects["user_id"].to_pylist()
    stats = commit.details["input"]
    assert stats["input_rows"] == _input_rows(w["root"], w["day"], cfg.data.lookback_days)
    assert stats["valid_rows"] + stats["rejected_rows"] == stats["input_rows"]
    assert commit.rows["rejects"] == len(w["bad"]) == result.counts["rejected_rows"]
    recs = storage.read_committed(cfg.output.uri, w["day"], "recommendations")
    assert 5_000_001 in recs["user_id"].to_pylist()          # valid rows of the same file are used
    assert 5_000_002 not in recs["user_id"].to_pylist()      # only broken rows: not a user


def test_too_many_rejects_fail_the_run_and_commit_nothing(dirty_world):
    w = dirty_world
    cfg = small_config(w["root"], *w["sets"], "data.max_reject_fraction=0.00001")
    with pytest.raises(schema.RejectThresholdExceeded, match=r"above data.max_reject_fraction=1e-05"):
        pipeline.run_day(cfg, w["day"], train_models=False)
    assert storage.read_commit(cfg.output.uri, w["day"]) is None


@pytest.mark.parametrize("content, message", [
    (b"PAR1 this is not parquet", "not a readable Parquet file"),
    (pa.table({"user_id": [1], "item_id": [2], "ts": [0]}), "missing required column 'event'"),
    (pa.table({"user_id": [1.5], "item_id": [2], "event": ["play"], "ts": ["2026-01-01"]}),
     "column 'user_id' has type double"),
])
def test_structurally_broken_files_fail_fast_naming_file_and_column(dirty_world, content, message):
    w = dirty_world
    bad = f"{w['root']}/events/dt={w['last']}/part-broken.parquet"
    if isinstance(content, bytes):
        open(bad, "wb").write(content)
    else:
        pq.write_table(content, bad)
    cfg = small_config(w["root"], *w["sets"])
    with pytest.raises(schema.ContractError) as e:
        pipeline.run_day(cfg, w["day"], train_models=False)
    assert "part-broken.parquet" in str(e.value) and message in str(e.value)
    assert storage.read_commit(cfg.output.uri, w["day"]) is None
