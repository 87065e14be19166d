"""Data steps on a real local Ray: the user state's shuffle and merge, history lengths
from the data, an imported log run from the command line, a multi-year log's read tasks."""

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from raymedia import checkpoint, dataset, storage
from raymedia.cli import main
from raymedia.data import state
from raymedia.data.importers import import_events
from raymedia.schema import US_PER_DAY

from conftest import synthetic_mind

DAY = US_PER_DAY


def test_user_state_on_ray_matches_a_pandas_reference(ray_session, tmp_path):
    """Validation, impression handling, the hash shuffle and merging, end to end on Ray."""
    import ray
    from raymedia.data.read import to_log_rows
    rng = np.random.default_rng(0)
    n = 5000
    events = pa.table({
        "user_id": rng.integers(0, 300, n), "item_id": rng.integers(0, 50, n),
        "event": rng.choice(["impression", "click", "play", "complete"], n),
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("us", tz="UTC")),
        "dwell_s": rng.random(n).astype("float32")})
    ds = ray.data.from_arrow([events.slice(0, 2000), events.slice(2000)]).map_batches(
        to_log_rows, batch_format="pyarrow", fn_kwargs={"events_uri": "mem", "run_uri": str(tmp_path)})
    got = state.build(ds, 8, partitions=3).to_pandas()
    assert got["user_id"].is_unique
    assert set(got.user_id) == set(events["user_id"].to_pylist())   # impressions-only users too
    df = events.to_pandas()
    df["day"] = events["ts"].cast(pa.int64()).to_numpy() // DAY
    df = df[df.event != "impression"].sort_values(["user_id", "ts", "item_id"])
    for uid, g in df.groupby("user_id"):
        items, days = g.item_id.tolist(), g.day.tolist()
        code = g.event.map({"click": 2, "play": 3, "complete": 4}).tolist()
        merged = [x for i, x in enumerate(items)
                  if i == 0 or x != items[i - 1] or code[i] <= code[i - 1] or days[i] != days[i - 1]]
        row = got[got.user_id == uid].iloc[0]
        assert list(row["item_ids"]) == merged[-8:] and sum(row["counts"]) == len(merged)
        assert list(row["seen_ids"]) == sorted(set(merged[:-8]))


def test_history_len_from_the_data_is_a_high_percentile_of_history_lengths_within_bounds(ray_session):
    import ray
    lo, hi, q = dataset.AUTO_LEN
    lengths = np.arange(1, 101)                  # p90 of 1..100 is 90.1 -> 91
    hist = ray.data.from_items([{"n_events": int(n)} for n in lengths])
    assert dataset.history_len_from(hist) == int(np.ceil(np.percentile(lengths, q))) == 91
    assert dataset.history_len_from(ray.data.from_items([{"n_events": 3}] * 5)) == lo
    assert dataset.history_len_from(ray.data.from_items([{"n_events": 5000}] * 5)) == hi


def test_a_mind_import_runs_from_the_cli_with_string_ids_and_a_content_catalog(tmp_path, ray_session, capsys):
    """MIND: string ids, impressions and a catalog with content columns, through a nightly run."""
    out = tmp_path / "data"
    assert main(["import", "--format", "mind", synthetic_mind(tmp_path / "mind"), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    sets = [f"data.events_uri={summary['events_uri']}", f"data.catalog_uri={summary['catalog_uri']}",
            "data.lookback_days=3", f"output.uri={out}/scores", f"output.models_uri={out}/models",
            "train.epochs=1", "data.exclude_seen=false", "score.top_k=5", "ray.progress_bars=false",
            "content.enabled=auto"]
    assert main(["run", "--date", summary["next_day"], *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["show", f"{out}/scores", "--dt", summary["next_day"], "--limit", "3"]) == 0
    shown = capsys.readouterr().out
    assert "generation=1" in shown and "'recommendations': 150" in shown
    recs = storage.read_committed(f"{out}/scores", summary["next_day"], "recommendations")
    assert recs["user_id"].type == pa.string() and recs["items"].type.value_type == pa.string()
    # the catalog has content columns: both models were trained with a content path
    for kind in ("two_tower", "sequence"):
        meta = checkpoint.read_meta(checkpoint.latest(f"{out}/models", kind))
        assert meta.kwargs["content"]["buckets"] == 1 << 18
    news = {f"N{i}" for i in range(1, 41)}
    assert all(len(r) == 5 and set(r) <= news for r in recs["items"].to_pylist())


def test_a_multi_year_log_is_one_file_per_day_read_by_a_bounded_number_of_tasks(tmp_path, ray_session):
    from raymedia.data import read
    start = 1_500_000_000                       # 2017-07-14; 400 days, 3 ratings a day
    rows = [(u, 100 + (d * 3 + u) % 50, 1 + (d + u) % 5, start + d * 86_400 + u * 60)
            for d in range(400) for u in range(1, 4)]
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))
    s = import_events("movielens", str(tmp_path / "ratings.csv"), str(tmp_path / "out"))
    days = [dt.date.fromisoformat(s.first_day) + dt.timedelta(days=i)
            for i in range((dt.date.fromisoformat(s.last_day) - dt.date.fromisoformat(s.first_day)).days + 1)]
    files = list(read.preflight(read.event_partitions(s.events_uri, days)).files)
    assert len(files) == len(days) == 400                     # the contract's minimum: one per day
    groups = read.file_groups(files)
    assert [len(g) for g in groups] == [64] * 6 + [16] and sum(groups, []) == files
    assert [len(g) for g in read.file_groups(files, 8, 3)] == [134, 134, 132]   # at most 3 tasks
    events = read.read_events(s.events_uri, read.event_partitions(s.events_uri, days))
    events = events.materialize()
    assert events.num_blocks() <= len(groups)
    got = sorted(events.take_all(), key=lambda r: r["ts"])
    assert [(r["user_id"], r["item_id"], int(r["ts"].timestamp())) for r in got] == \
        [(u, i, t) for u, i, _, t in sorted(rows, key=lambda r: r[3])]
    assert [r["dt"] for r in got] == [r["ts"].date().isoformat() for r in got]
