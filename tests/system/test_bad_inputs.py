"""Bad input becomes a clear error or counted rejects, never a wrong commit.

One score-only run on a "messy" copy of the session's world covers the inputs a run
must survive (extra columns, unknown items, future timestamps, a 100k-event user, a
missing day, a catalog missing items of the logs); the rest fail before any work with
a message naming the file, field or value. The README's "Bad input" table lists each
case and the test that backs it.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import small_config
from raymedia import config, pipeline, schema, storage
from raymedia.config import ConfigError

FAST = ("eval.enabled=false",)
HUGE_USER, EXTRA_USER, UNKNOWN_USER, FUTURE_USER = 7_000_001, 7_000_002, 7_000_003, 7_000_004
# one user per file written by another tool (see _foreign_files)
FOREIGN = {"hive_name": 7_100_001, "ns_shanghai": 7_100_002, "naive_ms": 7_100_003, "text_ts": 7_100_004,
           "dictionary": 7_100_005, "uint64_int32": 7_100_006}
HUGE = 100_000


def _copy_world(trained_run, root: str) -> None:
    shutil.copytree(f"{trained_run['root']}/events", f"{root}/events")
    shutil.copytree(f"{trained_run['root']}/catalog", f"{root}/catalog")


def _events(rows: list[tuple], **extra) -> pa.Table:
    t = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                  "item_id": pa.array([r[1] for r in rows], pa.int64()),
                  "event": [r[2] for r in rows],
                  "ts": pa.array([r[3] for r in rows], schema.TS_TYPE),
                  "dwell_s": pa.array([r[4] for r in rows], pa.float32())})
    for k, v in extra.items():
        t = t.append_column(k, pa.array(v))
    return t


def _run(trained_run, root: str, *extra: str):
    cfg = small_config(root, f"output.uri={root}/scores",
                       f"output.models_uri={trained_run['cfg'].output.models_uri}", *FAST, *extra)
    return cfg, pipeline.run_day(cfg, trained_run["day"], train_models=False,
                                 models=trained_run["result"].model_uris)


@pytest.fixture(scope="module")
def messy(trained_run, tmp_path_factory):
    """Score-only run on a copy of the world with many kinds of bad (but survivable) input."""
    root = str(tmp_path_factory.mktemp("messy"))
    _copy_world(trained_run, root)
    day = trained_run["day"]
    last, first = day - dt.timedelta(days=1), day - dt.timedelta(days=14)
    base = dt.datetime.combine(last, dt.time(0), dt.timezone.utc)
    catalog = pq.read_table(glob.glob(f"{root}/catalog/*.parquet")[0])
    items = catalog["item_id"].to_numpy()

    # a missing day: the oldest day of the window is gone
    missing = day - dt.timedelta(days=14)
    shutil.rmtree(f"{root}/events/dt={missing}")
    # the catalog no longer lists 25 popular items the logs (and the model) know
    logs = pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{root}/events/dt={last}/*.parquet")])
    popular = pc.value_counts(logs["item_id"]).to_pylist()
    dropped = [v["values"] for v in sorted(popular, key=lambda v: -v["counts"])[:25]]
    for f in glob.glob(f"{root}/catalog/*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.filter(pc.invert(pc.is_in(t["item_id"], pa.array(dropped)))), f)
    # one user with 100,000 events in one day
    rng = np.random.default_rng(0)
    huge_items = rng.choice(items, HUGE)
    huge = [(HUGE_USER, int(i), "play", base + dt.timedelta(microseconds=int(s)), 30.0)
            for i, s in zip(huge_items, np.sort(rng.integers(0, schema.US_PER_DAY - 1, HUGE)))]
    pq.write_table(_events(huge), f"{root}/events/dt={last}/part-zz-huge.parquet")
    # extra columns (kept out of the contract), unknown items, a timestamp in 2099
    t0 = base + dt.timedelta(hours=12)
    pq.write_table(_events([(EXTRA_USER, int(items[0]), "play", t0, 10.0),
                            (EXTRA_USER, int(items[1]), "like", t0 + dt.timedelta(minutes=3), None)],
                           device=["tv", "phone"], country=["DE", "FR"]),
                   f"{root}/events/dt={last}/part-zz-extra.parquet")
    unknown = [(UNKNOWN_USER, int(items[2]), "play", t0, 5.0)] + [
        (UNKNOWN_USER, 99_000_000 + k, "play", t0 + dt.timedelta(minutes=k + 1), 5.0) for k in range(5)]
    future = [(FUTURE_USER, int(items[3]), "play", dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc), 1.0)]
    pq.write_table(_events(unknown + future), f"{root}/events/dt={last}/part-zz-odd.parquet")
    _foreign_files(f"{root}/events/dt={last}", base, [int(i) for i in items[4:7]])
    cfg, result = _run(trained_run, root)
    return {"root": root, "cfg": cfg, "result": result, "day": day, "missing": missing,
            "dropped": dropped, "first": first, "last": last, "huge_items": set(huge_items.tolist())}


def _foreign_files(folder: str, base: dt.datetime, items: list[int]) -> None:
    """Files as other tools write them, one user each: a Hive/Athena name without an
    extension, nanoseconds in Asia/Shanghai (tz-aware pandas), naive milliseconds, text
    timestamps, dictionary-encoded columns, unsigned and 32-bit ids; plus a _SUCCESS marker."""
    at = [base + dt.timedelta(hours=20, minutes=k, microseconds=7) for k in range(3)]

    def rows(user: int, ts, user_type=pa.int64(), item_type=pa.int64()) -> pa.Table:
        return pa.table({"user_id": pa.array([user] * 3, user_type),
                         "item_id": pa.array(items, item_type),
                         "event": pa.array(["play", "like", "complete"]), "ts": ts,
                         "dwell_s": pa.array([5.0, None, 7.0], pa.float64())})
    pq.write_table(rows(FOREIGN["hive_name"], pa.array(at, schema.TS_TYPE)), f"{folder}/000000_0")
    ns = pa.array([int(t.timestamp() * 1e6) * 1000 + 123 for t in at], pa.int64())
    pq.write_table(rows(FOREIGN["ns_shanghai"], ns.cast(pa.timestamp("ns", tz="Asia/Shanghai"))),
                   f"{folder}/part-zz-ns.parquet")
    pq.write_table(rows(FOREIGN["naive_ms"], pa.array([t.replace(tzinfo=None, microsecond=0) for t in at],
                                                       pa.timestamp("ms"))), f"{folder}/part-zz-naive.parquet")
    pq.write_table(rows(FOREIGN["text_ts"], pa.array([t.isoformat() for t in at])),
                   f"{folder}/part-zz-text.parquet")
    t = rows(FOREIGN["dictionary"], pa.array(at, schema.TS_TYPE))
    pq.write_table(t.set_column(2, "event", t["event"].dictionary_encode())
                   .set_column(0, "user_id", t["user_id"].dictionary_encode()), f"{folder}/part-zz-dict.parquet")
    pq.write_table(rows(FOREIGN["uint64_int32"], pa.array(at, schema.TS_TYPE), pa.uint64(), pa.int32()),
                   f"{folder}/part-zz-uint.parquet")
    open(f"{folder}/_SUCCESS", "wb").close()


def _committed(m, table="recommendations") -> pa.Table:
    return storage.read_committed(m["cfg"].output.uri, m["day"], table)


def test_messy_input_commits_exactly_one_row_per_user(messy):
    recs = _committed(messy)
    users = recs["user_id"].to_pylist()
    assert len(users) == len(set(users)) == messy["result"].counts["users_scored"] > 1000
    stats = storage.read_commit(messy["cfg"].output.uri, messy["day"]).details["input"]
    assert stats["valid_rows"] + stats["rejected_rows"] == stats["input_rows"]


def test_files_written_by_other_tools_are_all_read_whatever_their_name_or_types(messy):
    recs = _committed(messy)["user_id"].to_pylist()
    assert {name: user in recs for name, user in FOREIGN.items()} == {name: True for name in FOREIGN}
    rejects = _committed(messy, "rejects")["user_id"].to_pylist()
    assert not {str(u) for u in FOREIGN.values()} & set(rejects)     # no timestamp left its day
    files = [f for f in glob.glob(f"{messy['root']}/events/dt=*/*") if not os.path.basename(f).startswith("_")]
    stats = storage.read_commit(messy["cfg"].output.uri, messy["day"]).details["input"]
    assert stats["input_rows"] == sum(pq.read_metadata(f).num_rows for f in files)   # nothing skipped
    preds = _committed(messy, "predictions")
    n = dict(zip(preds["user_id"].to_pylist(), preds["n_events"].to_pylist()))
    assert all(n[u] == 3 for u in FOREIGN.values())


def test_a_missing_day_is_skipped_and_the_commit_names_the_days_read(messy):
    commit = storage.read_commit(messy["cfg"].output.uri, messy["day"])
    assert len(commit.input_partitions) == 13
    assert not any(f"dt={messy['missing']}" in p for p in commit.input_partitions)


def test_extra_columns_are_ignored(messy):
    recs = _committed(messy)
    assert EXTRA_USER in recs["user_id"].to_pylist()
    assert set(recs.column_names) == set(schema.RECOMMENDATIONS.names)


def test_unknown_items_are_counted_and_never_recommended(messy):
    stats = storage.read_commit(messy["cfg"].output.uri, messy["day"]).details["input"]
    assert stats["unknown_item"] >= 5
    recs = _committed(messy)
    assert not any(i >= 99_000_000 for items in recs["items"].to_pylist() for i in items)
    assert UNKNOWN_USER in recs["user_id"].to_pylist()          # scored on the item it has


def test_future_timestamps_are_rejects(messy):
    rejects = _committed(messy, "rejects")
    mine = rejects.filter(pc.equal(rejects["user_id"], str(FUTURE_USER)))
    assert mine["reason"].to_pylist() == ["ts_outside_partition"]
    assert FUTURE_USER not in _committed(messy)["user_id"].to_pylist()


def test_a_user_with_100k_events_gets_one_row_with_a_bounded_history(messy):
    recs = _committed(messy)
    mine = recs.filter(pc.equal(recs["user_id"], HUGE_USER))
    assert mine.num_rows == 1 and len(mine["items"][0]) <= messy["cfg"].score.top_k
    # everything this user played is seen: never recommended back (a shorter list instead)
    assert not set(mine["items"][0].as_py()) & messy["huge_items"]
    preds = _committed(messy, "predictions")
    n = preds.filter(pc.equal(preds["user_id"], HUGE_USER))["n_events"].to_pylist()
    assert len(n) == 1 and n[0] > 1000                          # every interaction counted


def test_items_missing_from_the_catalog_are_never_recommended(messy):
    recs = _committed(messy)
    shown = {i for items in recs["items"].to_pylist() for i in items}
    assert shown and not shown & set(messy["dropped"])


def test_one_user_with_all_the_events(trained_run, tmp_path):
    root = str(tmp_path)
    shutil.copytree(f"{trained_run['root']}/catalog", f"{root}/catalog")
    day = trained_run["day"]
    for d in range(1, 15):
        part = f"{trained_run['root']}/events/dt={day - dt.timedelta(days=d)}"
        t = pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{part}/*.parquet")])
        t = t.set_column(0, "user_id", pa.array(np.full(t.num_rows, 42), pa.int64()))
        os.makedirs(f"{root}/events/dt={day - dt.timedelta(days=d)}")
        pq.write_table(t, f"{root}/events/dt={day - dt.timedelta(days=d)}/part-0.parquet")
    cfg, result = _run(trained_run, root)
    recs = storage.read_committed(cfg.output.uri, day, "recommendations")
    assert recs["user_id"].to_pylist() == [42] and result.counts["users_scored"] == 1
    # the user saw every item in the window: only items they never touched may be listed
    seen = set(pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{root}/events/*/*.parquet")])
               ["item_id"].to_pylist())
    assert len(recs["items"][0]) <= cfg.score.top_k and not set(recs["items"][0].as_py()) & seen


# ------------------------------------------------------------ clear errors before any work

@pytest.fixture
def copy(trained_run, tmp_path):
    root = str(tmp_path)
    _copy_world(trained_run, root)
    return {"root": root, "day": trained_run["day"], "last": trained_run["day"] - dt.timedelta(days=1)}


def _fails(trained_run, root, exc, *extra) -> str:
    with pytest.raises(exc) as e:
        _run(trained_run, root, *extra)
    assert storage.read_commit(f"{root}/scores", trained_run["day"]) is None
    return str(e.value)


def test_an_empty_window_fails_naming_the_window(trained_run, copy):
    for d in glob.glob(f"{copy['root']}/events/dt=*"):
        shutil.rmtree(d)
    msg = _fails(trained_run, copy["root"], FileNotFoundError)
    assert f"no event partitions for {copy['day'] - dt.timedelta(days=14)}..{copy['last']}" in msg


def test_a_window_of_empty_files_fails_clearly(trained_run, copy):
    for f in glob.glob(f"{copy['root']}/events/dt=*/*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.slice(0, 0), f)
    msg = _fails(trained_run, copy["root"], schema.EmptyInput)
    assert "13 event partition(s)" not in msg and "hold no rows; nothing was committed" in msg


def test_ids_of_different_types_in_different_files_fail_naming_both(trained_run, copy):
    t = _events([(1, 2, "play", dt.datetime.combine(copy["last"], dt.time(9), dt.timezone.utc), 1.0)])
    t = t.set_column(0, "user_id", pa.array(["u1"]))
    pq.write_table(t, f"{copy['root']}/events/dt={copy['last']}/part-zz-strings.parquet")
    msg = _fails(trained_run, copy["root"], schema.ContractError)
    assert "part-zz-strings.parquet" in msg and "user_id" in msg


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop_columns(["item_id"]), "missing required column 'item_id'"),
    (lambda t: t.set_column(t.schema.get_field_index("available"), "available",
                            pa.array(["maybe"] * t.num_rows)), "column 'available'"),
    (lambda t: t.slice(0, 0), "the catalog has no rows"),
    (lambda t: t.set_column(0, "item_id", pa.array([None] + t["item_id"].to_pylist()[1:], pa.int64())),
     "column 'item_id' is null in 1 of"),
])
def test_a_broken_catalog_fails_naming_the_catalog_and_column(trained_run, copy, change, message):
    for f in glob.glob(f"{copy['root']}/catalog/*.parquet"):
        pq.write_table(change(pq.read_table(f)), f)
    msg = _fails(trained_run, copy["root"], schema.ContractError)
    assert "catalog" in msg and message in msg


def test_an_output_uri_that_cannot_be_written_fails_before_any_work(trained_run, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    cfg = small_config(trained_run["root"], f"output.uri={blocker}/scores", *FAST)
    with pytest.raises(storage.OutputNotWritable) as e:
        pipeline.run_day(cfg, trained_run["day"], train_models=False,
                         models=trained_run["result"].model_uris)
    assert f"output.uri {blocker}/scores is not writable" in str(e.value)
    assert "nothing was read or committed" in str(e.value)


def test_an_unwritable_s3_output_fails_before_any_work(trained_run, s3):
    cfg = small_config(trained_run["root"], "output.uri=s3://x/scores", *FAST)   # invalid bucket
    with pytest.raises(storage.OutputNotWritable, match=r"output.uri s3://x/scores is not writable"):
        pipeline.run_day(cfg, trained_run["day"], train_models=False,
                         models=trained_run["result"].model_uris)


@pytest.mark.parametrize("override, message", [
    ("score.top_k=-5", "score.top_k must be >= 1, got -5"),
    ("data.lookback_days=0", "data.lookback_days must be >= 1, got 0"),
    ("score.batch_size=0", "score.batch_size must be >= 1, got 0"),
    ("data.max_reject_fraction=1.5", "data.max_reject_fraction must be <= 1.0, got 1.5"),
    ("train.models=two_tower,gbdt", "train.models has unknown model(s) ['gbdt']"),
    ("train.lr=0", "train.lr must be > 0.0, got 0.0"),
    ("two_tower.temperature=.nan", "two_tower.temperature must be a finite number"),
    ("data.history_len=1000000", "data.history_len must be <= 4096"),
    ("output.uri=", "output.uri is empty"),
    ("storage.endpoint_url=ftp://example.com", "storage.endpoint_url must look like http(s)://host[:port]"),
    ("score.precision=fp8", "score.precision must be one of"),
    ("train.num_workers=1.5", "train.num_workers must be an integer, got 1.5"),
])
def test_impossible_config_values_fail_naming_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        config.load(None, [override])
    assert message in str(e.value)


def test_a_nested_hour_folder_fails_naming_the_file(trained_run, copy):
    nested = f"{copy['root']}/events/dt={copy['last']}/hour=07"
    os.makedirs(nested)
    shutil.copy(glob.glob(f"{copy['root']}/events/dt={copy['last']}/*.parquet")[0], f"{nested}/part-0.parquet")
    msg = _fails(trained_run, copy["root"], schema.ContractError)
    assert f"{nested}/part-0.parquet: a file in a nested folder" in msg


def test_a_day_partition_that_is_a_file_fails_naming_it(trained_run, copy):
    day = f"{copy['root']}/events/dt={copy['last']}"
    shutil.rmtree(day)
    shutil.copy(glob.glob(f"{copy['root']}/events/dt=*/*.parquet")[0], day)
    msg = _fails(trained_run, copy["root"], schema.ContractError)
    assert f"{day} is a file; a day partition must be a folder" in msg


def test_unsigned_ids_beyond_int64_fail_naming_file_column_and_value(trained_run, copy):
    t = _events([(1, 2, "play", dt.datetime.combine(copy["last"], dt.time(9), dt.timezone.utc), 1.0)])
    t = t.set_column(0, "user_id", pa.array([2 ** 63 + 5], pa.uint64()))
    pq.write_table(t, f"{copy['root']}/events/dt={copy['last']}/part-zz-u64.parquet")
    msg = _fails(trained_run, copy["root"], schema.ContractError)
    assert "part-zz-u64.parquet: column 'user_id' holds 9223372036854775813" in msg
