"""The run writer on a local directory (no Ray): the manifest it builds from the writes it
recorded, its commit, a lost race, a plain failure, and cleanup failures after the commit
point; and the one Parquet-to-URI helper of ``storage`` that every writer uses."""

import datetime as dt
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedia import schema, storage
from raymedia.data.importers import import_events
from raymedia.writer import RunWriter, write_batch, write_part

DAY = "2026-01-10"
GRACE = dt.timedelta(minutes=30)


def _scored(users, cold):
    n = len(users)
    return pa.table({"user_id": pa.array(users, pa.int64()),
                     "items": pa.array([[7, 8]] * n, pa.list_(pa.int64())),
                     "scores": pa.array([[0.5, 0.25]] * n, pa.list_(pa.float32())),
                     "p_return_7d": pa.array([0.5] * n, pa.float32()),
                     "next_category": pa.array(["news"] * n),
                     "n_events": pa.array([3] * n, pa.int32()),
                     "cold_start": pa.array(cold)})


def _write_day(w: RunWriter) -> None:
    """What a run writes: user state, two scored batches, rejects, metrics."""
    w.record_writes(write_part(pa.table({"user_id": [1, 2, 3]}), w.run_uri, "user_state").to_pylist())
    for users, cold in (([1, 2], [False, True]), ([3], [True])):
        w.record_writes(write_batch(_scored(users, cold), w.run_uri, "v1",
                                    "2026-01-10T00:00:00+00:00").to_pylist())
    storage.write_parquet(pa.table({"reason": ["null user_id"] * 2}),
                          storage.join(w.run_uri, "rejects", "part-abc.parquet"))
    w.record_folder("rejects", 2)
    w.write_json("metrics", "metrics.json", {"ndcg@10": 0.25})


def _manifest(w: RunWriter) -> storage.Commit:
    return w.manifest({"sequence": "v1"}, ["events/dt=2026-01-09"], "h", "now", {"why": "test"})


def _beating(run_id: str) -> bool:
    return any(t.name == f"heartbeat-{run_id}" for t in threading.enumerate())


def test_the_manifest_names_every_recorded_file_relative_to_the_day_with_summed_rows(tmp_path):
    w = RunWriter(str(tmp_path), DAY, "r1", GRACE)
    _write_day(w)
    c = _manifest(w)
    c.check()
    assert (c.dt, c.run_id, c.model_versions, c.input_partitions) == (DAY, "r1", {"sequence": "v1"},
                                                                      ["events/dt=2026-01-09"])
    assert c.rows == {"user_state": 3, "recommendations": 3, "predictions": 3, "rejects": 2}
    assert sorted(c.files) == ["metrics", "predictions", "recommendations", "rejects", "user_state"]
    assert [len(c.files[t]) for t in ("user_state", "recommendations", "predictions")] == [1, 2, 2]
    assert c.files["rejects"] == ["run=r1/rejects/part-abc.parquet"]
    assert c.files["metrics"] == ["run=r1/metrics.json"]
    assert all(fs == sorted(fs) for fs in c.files.values())
    # every listed file is where the manifest says, and nothing else is in the run
    listed = sorted(u for t in c.files for u in c.uris(str(tmp_path), t))
    assert listed == storage.list_files(w.run_uri)
    recs = pq.ParquetDataset([storage.resolve(u)[1] for u in c.uris(str(tmp_path), "recommendations")]).read()
    assert sorted(recs["user_id"].to_pylist()) == [1, 2, 3]
    assert set(recs["model_version"].to_pylist()) == {"v1"}


def test_a_run_without_rejected_rows_lists_no_rejects_but_counts_zero(tmp_path):
    w = RunWriter(str(tmp_path), DAY, "r1", GRACE)
    w.record_folder("rejects", 0)
    assert "rejects" not in _manifest(w).files and w.rows == {"rejects": 0}


def test_complete_removes_unlisted_files_commits_and_collects_finished_runs(tmp_path):
    out = str(tmp_path)
    crashed = storage.run_path(out, DAY, "crashed")          # an older run that can no longer commit
    storage.write_parquet(pa.table({"x": [1]}), storage.join(crashed, "part-0.parquet"))
    storage.write_json(storage.marker_uri(out, DAY, "crashed"),
                       storage.RunMarker("crashed", 0, "2026-01-10T00:00:00+00:00",
                                         "2026-01-10T00:00:00+00:00").__dict__)
    w = RunWriter(out, DAY, "r1", GRACE)
    w.on_write_start()
    assert _beating("r1") and storage.exists(storage.marker_uri(out, DAY, "r1"))
    _write_day(w)
    retried = write_part(pa.table({"user_id": [9]}), w.run_uri, "recommendations")   # a lost attempt
    cleanup = w.on_write_complete(_manifest(w))
    assert not _beating("r1")
    c = storage.read_commit(out, DAY)
    assert (c.run_id, c.generation) == ("r1", 1) and c == storage.Commit(**{**_manifest(w).__dict__,
                                                                            "generation": 1})
    assert not storage.exists(storage.join(w.run_uri, retried["file"][0].as_py()))
    assert sorted(storage.read_committed(out, DAY, "recommendations")["user_id"].to_pylist()) == [1, 2, 3]
    assert cleanup == storage.Cleanup(removed=(crashed,))
    assert not storage.exists(crashed) and storage.exists(w.run_uri)
    assert w.commit_uri == storage.join(storage.partition(out, DAY), storage.COMMIT_FILE)


def test_a_run_that_lost_the_race_removes_its_files_and_raises_commit_conflict(tmp_path):
    out = str(tmp_path)
    a, b, late = (RunWriter(out, DAY, r, GRACE) for r in ("a", "b", "late"))
    for w in (a, b, late):
        w.on_write_start()
        _write_day(w)
    a.on_write_complete(_manifest(a))
    with pytest.raises(storage.CommitConflict, match="generation 1 is taken") as e:
        b.on_write_complete(_manifest(b))        # b reaches the commit point second
    assert b.on_write_failed(e.value) is None    # the caller re-raises the CommitConflict
    stopped = RuntimeError("a scoring actor died")
    with pytest.raises(storage.CommitConflict, match="another run committed while run late") as e:
        late.on_write_failed(stopped)            # whatever stopped it, it can never commit now
    assert e.value.__cause__ is stopped and "a scoring actor died" in str(e.value)
    for w in (b, late):
        assert not storage.exists(w.run_uri) and not _beating(w.run_id)
        assert not storage.exists(storage.marker_uri(out, DAY, w.run_id))
    assert storage.read_commit(out, DAY).run_id == "a" and storage.exists(a.run_uri)


def test_a_plain_failure_is_re_raised_by_the_caller_and_leaves_the_files_for_collection(tmp_path):
    out = str(tmp_path)
    w = RunWriter(out, DAY, "r1", GRACE)
    w.on_write_start()
    _write_day(w)
    assert w.on_write_failed(ValueError("bad input")) is None
    assert not _beating("r1") and storage.read_commit(out, DAY) is None
    assert storage.exists(w.run_uri) and storage.exists(storage.marker_uri(out, DAY, "r1"))


def test_an_unwritable_output_fails_at_start_with_nothing_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output directory should be")
    w = RunWriter(f"{blocker}/scores", DAY, "r1", GRACE)
    with pytest.raises(storage.OutputNotWritable, match="output.uri .* is not writable"):
        w.on_write_start()
    assert not _beating("r1")


def test_a_cleanup_failure_after_the_commit_point_is_reported_not_raised(tmp_path):
    out = str(tmp_path)
    stuck = storage.run_path(out, DAY, "stuck")      # a file where a run directory should be
    os.makedirs(os.path.dirname(stuck))
    with open(stuck, "w") as f:
        f.write("cannot be removed as a directory")
    storage.write_json(storage.marker_uri(out, DAY, "stuck"),
                       storage.RunMarker("stuck", 0, "2026-01-10T00:00:00+00:00",
                                         "2026-01-10T00:00:00+00:00").__dict__)
    w = RunWriter(out, DAY, "r1", GRACE)
    w.on_write_start()
    _write_day(w)
    cleanup = w.on_write_complete(_manifest(w))
    assert cleanup.removed == () and len(cleanup.failed) == 1 and "run=stuck" in cleanup.failed[0]
    assert storage.read_commit(out, DAY).run_id == "r1"


def test_an_error_raised_by_cleanup_itself_is_reported_and_the_commit_stands(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("storage went away")
    w = RunWriter(str(tmp_path), DAY, "r1", GRACE)
    w.on_write_start()
    _write_day(w)
    monkeypatch.setattr(storage, "collect", broken)
    cleanup = w.on_write_complete(_manifest(w))
    assert cleanup.failed == (f"{storage.partition(str(tmp_path), DAY)}: OSError: storage went away",)
    assert storage.read_commit(str(tmp_path), DAY).run_id == "r1"


def test_the_writer_refuses_a_commit_before_its_start_or_of_another_run(tmp_path):
    a, b = RunWriter(str(tmp_path), DAY, "a", GRACE), RunWriter(str(tmp_path), DAY, "b", GRACE)
    with pytest.raises(RuntimeError, match="on_write_complete before on_write_start"):
        a.on_write_complete(_manifest(a))
    a.on_write_start()
    with pytest.raises(ValueError, match="given to the writer of dt=2026-01-10 run a"):
        a.on_write_complete(_manifest(b))
    a.on_write_failed(ValueError("stopped"))
    assert storage.generation(str(tmp_path), DAY) == 0


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLE:hunter2@bucket/x.parquet", "/tmp/x\n.parquet"])
def test_parquet_is_never_written_to_a_uri_with_credentials_or_control_characters(uri):
    with pytest.raises(storage.StorageError) as e:
        storage.write_parquet(pa.table({"x": [1]}), uri)
    assert "hunter2" not in str(e.value)


def test_an_importer_refuses_an_input_uri_with_credentials(tmp_path):
    with pytest.raises(storage.StorageError, match="carries credentials") as e:
        import_events("movielens", "s3://AKIAEXAMPLE:hunter2@bucket/ratings.csv", str(tmp_path))
    assert "hunter2" not in str(e.value)


def test_partitioned_writes_with_threads_equal_the_serial_ones(tmp_path):
    t = pa.table({"dt": ["2026-01-02", "2026-01-01", "2026-01-02", "2026-01-01"], "x": [1, 2, 3, 4]})
    serial = storage.write_partitioned(t, str(tmp_path / "a"), "p.parquet")
    threaded = storage.write_partitioned(t, str(tmp_path / "b"), "p.parquet", threads=4)
    assert [u.split("/a/")[1] for u in serial] == [u.split("/b/")[1] for u in threaded] == [
        "dt=2026-01-01/p.parquet", "dt=2026-01-02/p.parquet"]
    for a, b in zip(serial, threaded):
        assert pq.read_table(a) == pq.read_table(b)
    assert pq.read_table(serial[1])["x"].to_pylist() == [1, 3]      # day order kept, no dt column


def test_list_rule_columns_are_written_and_their_reasons_counted_only_when_present(tmp_path):
    from raymedia.writer import reason_counts
    plain = write_batch(_scored([1, 2], [False, False]), str(tmp_path), "v1", "2026-01-10T00:00:00+00:00")
    ruled = _scored([3, 4], [False, True])
    ruled = ruled.add_column(3, "reason", pa.array([["pinned", "model"], ["model", "explore"]]))
    ruled = ruled.add_column(4, "model_scores", pa.array([[0.75, 0.5], [0.5, 0.125]], pa.list_(pa.float32())))
    rows = write_batch(ruled, str(tmp_path), "v1", "2026-01-10T00:00:00+00:00").to_pylist()
    files = {r["table"]: r["file"] for r in rows}
    recs = pq.read_table(str(tmp_path / files["recommendations"]))
    assert recs.column_names == [*schema.RECOMMENDATIONS.names, "reason", "model_scores"]
    assert recs["reason"].to_pylist() == [["pinned", "model"], ["model", "explore"]]
    assert reason_counts(rows) == {"explore": 1, "model": 2, "pinned": 1}
    assert "reasons" not in plain.column_names and reason_counts(plain.to_pylist()) == {}
    first = plain.to_pylist()[0]["file"]
    assert pq.read_table(str(tmp_path / first)).schema.names == schema.RECOMMENDATIONS.names
