"""Importers: the three public formats become the events contract, partitioned by day,
and an imported data set runs through the pipeline from the command line."""

import datetime as dt
import json

import pyarrow.dataset as pads
import pytest

from raymedia import schema, storage
from raymedia.cli import main
from raymedia.data.importers import import_events

ML = [(1, 10, 5, 978300760), (1, 11, 3, 978302109), (2, 10, 4, 978301968), (2, 12, 1, 978824291)]


def _read(root):
    return pads.dataset(f"{root}/events", partitioning="hive").to_table().sort_by("ts")


@pytest.mark.parametrize("name, text", [
    ("ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ML)),
    ("u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML)),
    ("ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in ML)),
])
def test_movielens_layouts(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    s = import_events("movielens", str(tmp_path / name), str(tmp_path / "out"))
    assert (s.users, s.items, s.events) == (2, 3, 4)
    events = _read(tmp_path / "out")
    assert events["event"].to_pylist() == ["like", "complete", "play", "click"]
    assert [t.timestamp() for t in events["ts"].to_pylist()] == sorted(t for *_, t in ML)
    assert sorted(set(events["dt"].to_pylist())) == ["2000-12-31", "2001-01-06"] == [s.first_day, s.last_day]
    assert schema.validate_events(events, "import")[1].num_rows == 0


def test_sasrec_gets_increasing_timestamps_in_file_order(tmp_path):
    (tmp_path / "d.txt").write_text("1 5\n1 6\n1 5\n2 7\n2 5\n")
    s = import_events("sasrec", str(tmp_path / "d.txt"), str(tmp_path / "out"),
                      dt.datetime(2026, 1, 1, 23, 59, 58, tzinfo=dt.timezone.utc))
    events = _read(tmp_path / "out")
    assert events["user_id"].to_pylist() == [1, 1, 1, 2, 2]
    assert events["item_id"].to_pylist() == [5, 6, 5, 7, 5]         # repeats are kept
    assert events["dt"].to_pylist() == ["2026-01-01"] * 2 + ["2026-01-02"] * 3
    assert (s.users, s.items, s.next_day) == (2, 3, "2026-01-03")
    catalog = storage.read_bytes(s.catalog_uri)
    assert catalog[:4] == b"PAR1"


def test_bad_input_is_a_clear_error(tmp_path):
    (tmp_path / "x.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="not a MovieLens ratings file"):
        import_events("movielens", str(tmp_path / "x.txt"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown format 'netflix'"):
        import_events("netflix", str(tmp_path / "x.txt"), str(tmp_path / "out"))


def test_import_then_run_from_the_cli(tmp_path, ray_session, capsys):
    lines = [f"{u} {(u * 7 + k) % 40 + 1}" for u in range(1, 151) for k in range(8)]
    (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    assert main(["import", "--format", "sasrec", str(tmp_path / "seq.txt"), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    sets = [f"data.events_uri={summary['events_uri']}", f"data.catalog_uri={summary['catalog_uri']}",
            "data.lookback_days=2", f"output.uri={out}/scores", f"output.models_uri={out}/models",
            "train.epochs=1", "score.exclude_seen=false", "score.top_k=5", "ray.progress_bars=false"]
    assert main(["run", "--date", summary["next_day"], *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["show", f"{out}/scores", "--dt", summary["next_day"], "--limit", "3"]) == 0
    shown = capsys.readouterr().out
    assert "generation=1" in shown and "'recommendations': 150" in shown


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
