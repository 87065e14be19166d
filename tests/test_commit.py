"""The commit protocol on its own: exclusive create, generations, what readers see."""

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedia import storage


def _commit(run_id, files, rows=1):
    return storage.Commit(dt="2026-01-10", run_id=run_id, files=files, rows={"recommendations": rows},
                          model_versions={}, input_partitions=[], config_hash="h", created_at="now")


def _write_run(out, run_id, n):
    path = f"{out}/dt=2026-01-10/run={run_id}/recommendations"
    storage.makedirs(path)
    pq.write_table(pa.table({"user_id": list(range(n))}), f"{path}/part-0.parquet")
    return {"recommendations": [f"run={run_id}/recommendations/part-0.parquet"]}


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


def test_a_rerun_replaces_the_day_and_removes_every_other_run(tmp_path):
    out = str(tmp_path)
    storage.commit(out, _commit("a", _write_run(out, "a", 3), 3), base_generation=0)
    _write_run(out, "crashed", 7)                    # never committed
    stray = tmp_path / "dt=2026-01-10" / "run=b" / "recommendations" / "stray.parquet"
    b = _write_run(out, "b", 4)
    pq.write_table(pa.table({"user_id": [99]}), stray)   # not named by the commit
    storage.commit(out, _commit("b", b, 4), base_generation=storage.generation(out, "2026-01-10"))
    assert storage.read_committed(out, "2026-01-10", "recommendations")["user_id"].to_pylist() == list(range(4))
    runs = sorted(p.name for p in (tmp_path / "dt=2026-01-10").iterdir() if p.name.startswith("run="))
    assert runs == ["run=b"]
    assert storage.read_commit(out, "2026-01-10").generation == 2


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
