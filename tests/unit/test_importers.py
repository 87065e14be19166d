"""Importers: MovieLens (with its item files), SASRec text and MIND become the events
contract, partitioned by day, and a catalog with content; catalog content columns."""

import datetime as dt

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from raymedia import schema, storage
from raymedia.data import read
from raymedia.data.importers import import_events

from conftest import MIND_BEHAVIORS, MIND_NEWS, write_mind

ML = [(1, 10, 5, 978300760), (1, 11, 3, 978302109), (2, 10, 4, 978301968), (2, 12, 1, 978824291)]
ML_LAYOUTS = [      # the three MovieLens ratings layouts (file name, text) holding the ratings ML
    ("ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ML)),
    ("u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML)),
    ("ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in ML)),
]


def _read(root):
    return pads.dataset(f"{root}/events", partitioning="hive").to_table().sort_by("ts")


@pytest.mark.parametrize("name, text", ML_LAYOUTS)
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


ITEM_FILES = {
    "u.data": ("u.item", "10|Heat (1995)|01-Jan-1995||http://x|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n"
                         "11|Babe (1995)|01-Jan-1995||http://x|0|0|0|0|1|1|0|0|1|0|0|0|0|0|0|0|0|0|0\n"),
    "ratings.dat": ("movies.dat", "10::Heat (1995)::Action|Crime|Thriller\n11::Babe (1995)::Children's|Comedy|Drama\n"),
    "ratings.csv": ("movies.csv", 'movieId,title,genres\n10,Heat (1995),Action|Crime|Thriller\n'
                                  '11,"Babe, Pig (1995)",Children|Comedy|Drama\n13,Balto (1995),(no genres listed)\n'),
}


@pytest.mark.parametrize("name, text", ML_LAYOUTS)
def test_the_item_file_beside_the_ratings_gives_the_catalog_titles_genres_and_tags(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    item_file, items = ITEM_FILES[name]
    (tmp_path / item_file).write_text(items)
    if name == "ratings.csv":
        (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,Heist ,1\n2,10,heist,2\n"
                                           "2,10,Pacino,3\n1,11,pig,4\n")
    s = import_events("movielens", str(tmp_path / name), str(tmp_path / "out"))
    rows = {r["item_id"]: r for r in read.read_catalog(s.catalog_uri).to_pylist()}
    assert rows[10]["title"] == "Heat (1995)" and rows[12]["title"] == "12"    # 12: not in the item file
    assert rows[10]["category"] == "Action" and rows[12]["category"] == "unknown"
    # the most specific genre: fewest films have it (ties to the name)
    assert rows[11]["category"] in ("Children", "Children's")
    assert rows[10]["tags"][:3] == ["action", "crime", "thriller"]
    if name == "ratings.csv":
        assert rows[10]["tags"][3:] == ["heist", "pacino"]          # users' tags, most used first
        assert rows[11]["title"] == "Babe, Pig (1995)" and rows[13]["tags"] == []
        assert rows[13]["published_at"] is None                     # listed, never rated
    assert rows[12]["tags"] is None


def test_mind_impressions_clicks_and_histories_become_events(tmp_path):
    s = import_events("mind", write_mind(tmp_path / "mind", MIND_BEHAVIORS, MIND_NEWS), str(tmp_path / "out"))
    ev = _read(tmp_path / "out").sort_by([("ts", "ascending"), ("event", "descending"), ("item_id", "ascending")])
    rows = [(r["user_id"], r["item_id"], r["event"], r["ts"].isoformat()) for r in ev.to_pylist()]
    # U1's history (from their first row, in its order) is clicks on the day before the log
    assert rows[:2] == [("U1", "N4", "click", "2019-11-14T00:00:00+00:00"),
                        ("U1", "N2", "click", "2019-11-14T00:00:01+00:00")]
    at = "2019-11-15T08:55:22+00:00"
    assert sorted(r for r in rows if r[3] == at) == sorted([
        ("U1", "N1", "impression", at), ("U1", "N2", "impression", at), ("U1", "N3", "impression", at),
        ("U1", "N1", "click", at)])
    pm = "2019-11-15T23:05:00+00:00"                  # 11:05 PM
    assert sorted(r[1:3] for r in rows if r[3] == pm) == [("N1", "click"), ("N1", "impression"),
                                                          ("N3", "click"), ("N3", "impression")]
    assert len(rows) == 2 + 4 + 4 + 3 and (s.users, s.first_day, s.last_day) == (2, "2019-11-14", "2019-11-16")
    catalog = {r["item_id"]: r for r in read.read_catalog(s.catalog_uri).to_pylist()}
    n1 = catalog["N1"]
    assert (n1["title"], n1["category"], n1["subcategory"], n1["description"]) == \
        ("Bears win", "sports", "football_nfl", "Chicago beat the Packers.")
    assert n1["tags"] == ["Chicago Bears", "Green Bay Packers"] and catalog["N3"]["tags"] == ["Chicago Bulls"]
    assert n1["published_at"].isoformat() == at          # first shown
    assert catalog["N4"]["published_at"].isoformat() == "2019-11-14T00:00:00+00:00"   # first in a history


def test_mind_needs_both_files_and_times_it_can_read(tmp_path):
    folder = write_mind(tmp_path / "m1", MIND_BEHAVIORS, MIND_NEWS)
    (tmp_path / "m1" / "news.tsv").unlink()
    with pytest.raises(ValueError, match="needs a folder with behaviors.tsv and news.tsv.*news.tsv"):
        import_events("mind", folder, str(tmp_path / "out"))
    bad = [*MIND_BEHAVIORS[:2], ("3", "U1", "2019-11-16 00:00:01", "", "N3-0")]
    with pytest.raises(ValueError, match="row 3: time '2019-11-16 00:00:01'"):
        import_events("mind", write_mind(tmp_path / "m2", bad, MIND_NEWS), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()                # nothing written


def test_catalog_content_columns_are_kept_cast_and_checked():
    base = {"item_id": [1, 2], "title": ["a", "b"], "category": ["x", "y"],
            "published_at": pa.array([0, 0], pa.timestamp("us", tz="UTC")), "available": [True, True]}
    plain = schema.conform_catalog(pa.table(base)).schema          # none: as before
    assert (plain.names, plain.types) == (schema.CATALOG.names, schema.CATALOG.types)
    t = schema.conform_catalog(pa.table({**base, "tags": [["p"], None], "episode": pa.array([3, None], pa.int64()),
                                         "series_id": [7, 7], "unrelated": [0, 1],
                                         "embedding": pa.array([[1, 2], [3, 4]], pa.list_(pa.float64(), 2))}))
    assert t.column_names == [*schema.CATALOG.names, "tags", "series_id", "episode", "embedding"]
    assert t["series_id"].to_pylist() == ["7", "7"] and t["embedding"].type == pa.list_(pa.float32())
    with pytest.raises(schema.ContractError, match="'tags' of type string cannot be read"):
        schema.conform_catalog(pa.table({**base, "tags": ["p,q", "r"]}), "cat.parquet")
    for emb, message in [([[1.0, 2.0], [3.0]], "'embedding' has size 2 at row 0 but 1 at row 1"),
                         ([[1.0, float("nan")], None], "NaN or infinite values \\(first in row 0\\)"),
                         ([[], []], "empty vectors")]:
        with pytest.raises(schema.ContractError, match=message):
            schema.check_catalog(schema.conform_catalog(pa.table({**base, "embedding": emb}), "c"), "c")
