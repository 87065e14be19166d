"""Importers: the three public formats become the events contract, partitioned by day,
and an imported data set runs through the pipeline from the command line."""

import datetime as dt

import pyarrow.dataset as pads
import pytest

from raymedia import schema, storage
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
