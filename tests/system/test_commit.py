"""The commit protocol on its own: exclusive create, generations, what readers see,
and the best-effort cleanup after the commit point (local disk and the S3 server)."""

import datetime as dt
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedia import config, pipeline, storage
from raymedia.cli import main


def _commit(run_id, files, rows=1):
    return storage.Commit(dt="2026-01-10", run_id=run_id, files=files, rows={"recommendations": rows},
                          model_versions={}, input_partitions=[], config_hash="h", created_at="now")


def _write_run(out, run_id, n):
    path = f"{out}/dt=2026-01-10/run={run_id}/recommendations"
    storage.makedirs(path)
    fs, p = storage.resolve(f"{path}/part-0.parquet")
    pq.write_table(pa.table({"user_id": list(range(n))}), p, filesystem=fs)
    return {"recommendations": [f"run={run_id}/recommendations/part-0.parquet"]}


def _runs(out):
    return sorted(u.split("/run=")[1].split("/")[0] for u in storage.list_files(f"{out}/dt=2026-01-10")
                  if "/run=" in u)


def test_create_exclusive_lets_exactly_one_racer_win(tmp_path):
    uri = str(tmp_path / "x" / "obj.json")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: storage.create_exclusive(uri, str(i).encode()), range(8)))
    assert won.count(True) == 1
    assert storage.read_bytes(uri) == str(won.index(True)).encode()


def test_generations_reject_a_stale_commit_and_readers_see_only_the_winner(tmp_path):
    out = str(tmp_path)
    assert storage.generation(out, "2026-01-10") == 0
    a, b = _write_run(out, "a", 3), _write_run(out, "b", 5)
    storage.commit(out, _commit("a", a, 3), base_generation=0)
    with pytest.raises(storage.CommitConflict, match="another run committed"):
        storage.commit(out, _commit("b", b, 5), base_generation=0)
    c = storage.read_commit(out, "2026-01-10")
    assert (c.run_id, c.generation) == ("a", 1)
    assert storage.read_committed(out, "2026-01-10", "recommendations").num_rows == 3


def test_a_rerun_replaces_the_day_and_collect_removes_every_finished_run(tmp_path):
    out, hour = str(tmp_path), dt.timedelta(hours=1)
    storage.commit(out, _commit("a", _write_run(out, "a", 3), 3), base_generation=0)
    _write_run(out, "crashed", 7)                    # never committed, no marker: judged by age
    old = (dt.datetime.now() - 2 * hour).timestamp()
    for root, _, files in os.walk(tmp_path / "dt=2026-01-10" / "run=crashed"):
        for f in files:
            os.utime(os.path.join(root, f), (old, old))
    b = _write_run(out, "b", 4)
    storage.commit(out, _commit("b", b, 4), base_generation=storage.generation(out, "2026-01-10"))
    assert _runs(out) == ["a", "b", "crashed"]          # the commit itself deletes nothing
    cleanup = storage.collect(out, "2026-01-10", hour)
    assert storage.read_committed(out, "2026-01-10", "recommendations")["user_id"].to_pylist() == list(range(4))
    assert _runs(out) == ["b"] and not cleanup.failed and len(cleanup.removed) == 2
    assert storage.read_commit(out, "2026-01-10").generation == 2


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "scores")
    request.getfixturevalue("s3")
    return f"s3://raymedia/collect-{os.urandom(4).hex()}"


def test_collect_keeps_live_runs_and_removes_runs_that_can_no_longer_commit(out):
    """Local disk and S3 alike: a run that may still commit is never deleted under its feet."""
    day, hour = "2026-01-10", dt.timedelta(hours=1)
    beats = {}
    for run_id, base in (("winner", 0), ("loser", 0), ("later", 1), ("trainonly", None)):
        _write_run(out, run_id, 2)
        beats[run_id] = storage.Heartbeat(out, day, run_id, base, every_s=3600)
        beats[run_id].__enter__()
    try:
        storage.commit(out, _commit("winner", _write_run(out, "winner", 2)), base_generation=0)
        cleanup = storage.collect(out, day, hour)
        # loser started before generation 1 and can never commit; the others may still be working
        assert _runs(out) == ["later", "trainonly", "winner"] and not cleanup.failed
        assert [u.rsplit("=", 1)[1] for u in cleanup.removed] == ["loser"]
        assert not storage.exists(storage.marker_uri(out, day, "loser"))
        # an hour and more without a heartbeat: crashed, collected; the committed run stays
        later = storage.collect(out, day, hour, now=dt.datetime.now(dt.timezone.utc) + 2 * hour)
        assert _runs(out) == ["winner"]
        assert {"later", "trainonly"} <= {u.rsplit("=", 1)[1] for u in later.removed}
    finally:
        for b in beats.values():
            b.__exit__(None, None, None)


def test_a_heartbeat_keeps_refreshing_its_marker(tmp_path):
    with storage.Heartbeat(str(tmp_path), "2026-01-10", "r1", 3, every_s=0.05) as hb:
        first = storage.read_json(hb.uri)
        time.sleep(0.5)
        last = storage.read_json(hb.uri)
    assert first["base_generation"] == 3 and last["started_at"] == first["started_at"]
    assert last["heartbeat_at"] > first["heartbeat_at"]


def test_gc_command_collects_crashed_runs_under_an_output_root(tmp_path, capsys):
    out = str(tmp_path / "scores")
    storage.commit(out, _commit("a", _write_run(out, "a", 3), 3), base_generation=0)
    _write_run(out, "crashed", 1)
    storage.write_json(storage.marker_uri(out, "2026-01-10", "crashed"), storage.RunMarker(
        "crashed", 1, "2026-01-10T00:00:00+00:00", "2026-01-10T00:05:00+00:00").__dict__)
    _write_run(out, "fresh", 1)                                  # no marker, files just written
    assert main(["gc", "--output", out, "--older-than", "30m"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [u.rsplit("=", 1)[1] for u in result["removed"]] == ["crashed"]
    assert [u.rsplit("=", 1)[1] for u in result["kept"]] == ["fresh"]
    assert _runs(out) == ["a", "fresh"]
    with pytest.raises(SystemExit):
        main(["gc", "--output", out, "--older-than", "soon"])
    assert "not an age like 90m, 2h or 7d: 'soon'" in capsys.readouterr().err


def test_no_probe_folder_is_left_in_the_output_root(tmp_path):
    storage.check_writable(str(tmp_path / "scores"))
    assert os.listdir(tmp_path / "scores") == []


def test_a_truncated_commit_names_the_file_and_the_next_night_rebuilds_the_state(tmp_path):
    out = str(tmp_path / "scores")
    storage.commit(out, _commit("a", _write_run(out, "a", 3), 3), base_generation=0)
    target = tmp_path / "scores" / "dt=2026-01-10" / "_COMMIT.json"
    target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(storage.CorruptCommit, match=r"dt=2026-01-10/_COMMIT.json is not a readable commit"):
        storage.read_commit(out, "2026-01-10")
    cfg = config.load(None, [f"output.uri={out}"])
    prev, why = pipeline.previous_state(cfg, dt.date(2026, 1, 11))
    assert prev is None and "dt=2026-01-10/_COMMIT.json is not a readable commit" in why


def test_uncommitted_day_is_invisible(tmp_path):
    _write_run(str(tmp_path), "a", 3)
    assert storage.read_commit(str(tmp_path), "2026-01-10") is None
    with pytest.raises(FileNotFoundError, match="no committed output for dt=2026-01-10"):
        storage.read_committed(str(tmp_path), "2026-01-10", "recommendations")


def test_write_partitioned_splits_by_day(tmp_path):
    t = pa.table({"x": [1, 2, 3], "dt": ["2026-01-02", "2026-01-01", "2026-01-02"]})
    files = storage.write_partitioned(t, str(tmp_path), "part-0.parquet")
    assert [f.rsplit("/", 2)[1] for f in files] == ["dt=2026-01-01", "dt=2026-01-02"]
    assert pq.read_table(files[1])["x"].to_pylist() == [1, 3]
