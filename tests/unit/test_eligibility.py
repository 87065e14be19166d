"""Per-user eligibility (``rules.Eligibility``): the catalog's ``regions`` and ``age_rating``
against the user-attributes table, with its defaults, and the contract of both inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedia import config, schema
from raymedia.config import ConfigError
from raymedia.data import read
from raymedia.rules import Eligibility

ITEMS = 300
VOCAB_IDS = pa.array(np.random.default_rng(3).permutation(np.arange(1000, 1000 + ITEMS)))   # index i+1
REGIONS = ["de", "fr", "us"]
RATINGS = [0, 6, 12, 16, 18]


def _catalog(seed: int = 0) -> pa.Table:
    """Items shown everywhere (null or empty regions) or in one or two regions; age ratings
    0..18 (some null); plus a region no user lives in."""
    rng = np.random.default_rng(seed)
    regions = []
    for i in range(ITEMS):
        k = i % 5
        regions.append(None if k == 0 else [] if k == 1 else
                       sorted(set(rng.choice(REGIONS + ["jp"], 1 + (k == 4), replace=False).tolist())))
    return pa.table({
        "item_id": pa.array(np.arange(1000, 1000 + ITEMS)),
        "title": [f"t{i}" for i in range(ITEMS)], "category": ["c"] * ITEMS,
        "published_at": pa.nulls(ITEMS, pa.timestamp("us", tz="UTC")), "available": [True] * ITEMS,
        "regions": pa.array(regions, pa.list_(pa.string())),
        "age_rating": pa.array([None if i % 11 == 0 else int(rng.choice(RATINGS)) for i in range(ITEMS)],
                               pa.int32()),
    })


def _users(ids, regions, ages) -> pa.Table:
    return pa.table({"user_id": ids, "region": pa.array(regions, pa.string()), "age": pa.array(ages, pa.int32())})


def _eligible(catalog: pa.Table, region: str | None, age: int) -> np.ndarray:
    """The rule itself, row by row: bool per vocabulary index."""
    at = {v: i + 1 for i, v in enumerate(VOCAB_IDS.to_pylist())}
    out = np.ones(ITEMS + 1, bool)
    for row in catalog.to_pylist():
        where = [r for r in (row["regions"] or []) if r is not None]
        out[at[row["item_id"]]] = (not where or region in where) and (row["age_rating"] or 0) <= age
    return out


def test_each_user_is_blocked_exactly_the_items_the_catalog_does_not_allow_them():
    cat = _catalog()
    ids = pa.array(np.arange(50, dtype=np.int64) * 7 + 3)
    rng = np.random.default_rng(1)
    regions = [None if i % 9 == 0 else str(rng.choice(REGIONS + ["xx"])) for i in range(50)]
    ages = [None if i % 8 == 0 else int(rng.integers(0, 30)) for i in range(50)]
    e = Eligibility.build(cat, VOCAB_IDS, _users(ids, regions, ages), default_region="fr", default_age=12)
    keys = e.user_keys(ids)
    for b in range(50):
        region = regions[b] if regions[b] is not None else "fr"
        age = ages[b] if ages[b] is not None else 12
        np.testing.assert_array_equal(~e.blocked(keys[b])[1:], _eligible(cat, region, age)[1:])
    # users not in the table: the defaults; the same key whatever the batch they come in
    other = pa.array([1, 2, 10_000_000], pa.int64())
    assert e.user_keys(other).tolist() == [e.default_key] * 3
    np.testing.assert_array_equal(~e.blocked(e.default_key)[1:], _eligible(cat, "fr", 12)[1:])
    mixed = pa.concat_arrays([other, ids.take(pa.array([5, 0, 49]))])
    assert e.user_keys(mixed).tolist() == [e.default_key] * 3 + keys[[5, 0, 49]].tolist()
    # groups: one key per (region code, age band), far fewer than users
    assert len(set(keys.tolist())) <= (len(e.regions) + 1) * (len(e.ratings) + 1)
    assert e.regions.to_pylist() == ["de", "fr", "jp", "us"] and e.ratings.tolist() == [6, 12, 16, 18]


def test_without_a_table_every_user_gets_the_conservative_default():
    cat = _catalog()
    e = Eligibility.build(cat, VOCAB_IDS, None)
    key = e.user_keys(pa.array(["a", "b"]))
    assert key.tolist() == [e.default_key] * 2
    allowed = ~e.blocked(e.default_key)
    np.testing.assert_array_equal(allowed[1:], _eligible(cat, None, 0)[1:])     # unrestricted, rated 0
    assert 0 < allowed[1:].sum() < ITEMS / 2


def test_a_catalog_that_restricts_nothing_needs_no_eligibility():
    cat = _catalog()
    assert Eligibility.build(cat.drop(["regions", "age_rating"]), VOCAB_IDS, None) is None
    empty = cat.set_column(cat.column_names.index("regions"), "regions",
                           pa.array([[]] * ITEMS, pa.list_(pa.string())))
    assert Eligibility.build(empty.drop(["age_rating"]), VOCAB_IDS, None) is None


def test_string_ids_and_ids_that_share_a_hash_are_told_apart():
    import dataclasses
    cat = _catalog()
    users = _users(pa.array(["u1", "u2", "u3"]), ["de", "us", "fr"], [30, 5, 16])
    e = Eligibility.build(cat, VOCAB_IDS, users, default_age=0)
    keys = e.user_keys(pa.array(["u3", "nobody", "u1", "u2"]))
    assert keys[1] == e.default_key and len(set(keys.tolist())) == 4
    # three table ids with one hash: the lookup compares the ids themselves
    from raymedia import features
    last = e.ids[2].as_py()                                    # the last of the run of equal hashes
    same = dataclasses.replace(e, hashes=np.full(3, features.user_hash(pa.array([last]))[0], np.uint64), run=3)
    assert same.user_keys(pa.array([last, "nobody"])).tolist() == [e.keys[2], e.default_key]
    assert dataclasses.replace(same, run=1).user_keys(pa.array([last])).tolist() == [e.default_key]
    assert e.keys[2] != e.default_key
    with pytest.raises(schema.ContractError, match="column 'user_id' is string but the users scored have int64"):
        e.user_keys(pa.array([1, 2]))


# ---------------------------------------------------------------------------------------
# the contract of the inputs

def _write(tmp_path, table, name="attrs.parquet") -> str:
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


def test_user_attributes_are_read_conformed_and_checked_against_the_events_ids(tmp_path):
    uri = _write(tmp_path, pa.table({"user_id": pa.array([1, 2], pa.int32()), "region": ["de", None],
                                     "age": pa.array([30, None], pa.int8()), "extra": [1, 2]}))
    t = read.read_user_attributes(uri, pa.int64())
    assert t.schema.types == schema.USER_ATTRIBUTES.types and t["age"].to_pylist() == [30, None]
    only_age = read.read_user_attributes(_write(tmp_path, pa.table({"user_id": ["a"], "age": [3]}), "b.parquet"))
    assert only_age["region"].null_count == 1 and only_age.schema.field("user_id").type == pa.string()
    with pytest.raises(schema.ContractError, match=rf"{uri}: column 'user_id' is integer but the events' user_id is string"):
        read.read_user_attributes(uri, pa.string())


@pytest.mark.parametrize("table, message", [
    (pa.table({"id": [1], "region": ["de"]}), "missing required column 'user_id'"),
    (pa.table({"user_id": [1], "country": ["de"]}), "has neither a 'region' nor an 'age' column"),
    (pa.table({"user_id": [1], "region": [49]}), "column 'region' has type int64; it must be a string"),
    (pa.table({"user_id": [1], "age": [30.5]}), "column 'age' has type double; it must be an integer"),
    (pa.table({"user_id": [1.0], "age": [30]}), "column 'user_id' has type double; it must be an integer or a string"),
    (pa.table({"user_id": [1, None, None], "age": [1, 2, 3]}), r"column 'user_id' is null in 2 of 3 row\(s\) \(first at row 1\)"),
    (pa.table({"user_id": [1, 2], "age": [30, -1]}), r"column 'age' is negative in 1 row\(s\) \(first at row 1: -1\)"),
    (pa.table({"user_id": ["a", "b", "a"], "age": [1, 2, 3]}), "user_id 'a' appears 2 times"),
])
def test_a_broken_user_attributes_table_fails_naming_the_file_and_column(tmp_path, table, message):
    uri = _write(tmp_path, table)
    with pytest.raises(schema.ContractError, match=f"{uri}: {message}"):
        read.read_user_attributes(uri)


def test_user_attribute_files_of_two_id_kinds_and_a_missing_table_are_refused(tmp_path):
    folder = tmp_path / "attrs"
    folder.mkdir()
    _write(folder, pa.table({"user_id": [1], "age": [3]}), "a.parquet")
    _write(folder, pa.table({"user_id": ["x"], "age": [3]}), "b.parquet")
    with pytest.raises(schema.ContractError, match="integer in some files and string in others"):
        read.read_user_attributes(str(folder))
    with pytest.raises(FileNotFoundError, match="user attributes .*nope does not exist"):
        read.read_user_attributes(str(tmp_path / "nope"))


@pytest.mark.parametrize("column, values, message", [
    ("age_rating", pa.array(["12"]), "column 'age_rating' has type string; it must be an integer"),
    ("age_rating", pa.array([-3]), r"column 'age_rating' is negative in 1 row\(s\) \(first at row 0: -3\)"),
    ("regions", pa.array(["de"]), "column 'regions' of type string cannot be read as list<item: string>"),
])
def test_a_catalog_with_broken_eligibility_columns_fails_naming_the_column(tmp_path, column, values, message):
    cat = _catalog().slice(0, 1).drop(["regions", "age_rating"]).append_column(column, values)
    uri = _write(tmp_path, cat, "catalog.parquet")
    with pytest.raises(schema.ContractError, match=f"{uri}: {message}"):
        read.read_catalog(uri)


def test_catalog_eligibility_columns_are_kept_and_do_not_count_as_content(tmp_path):
    from raymedia.models.content import in_use
    cat = read.read_catalog(_write(tmp_path, _catalog().drop(["age_rating"]), "catalog.parquet"))
    assert cat.schema.field("regions").type == pa.list_(pa.string()) and "age_rating" not in cat.column_names
    assert not in_use(cat, "auto")


def test_eligibility_config_keys_are_checked():
    cfg = config.load(None, ["data.user_attributes_uri=s3://b/users", "rules.default_region=de", "rules.default_age=16"])
    assert (cfg.data.user_attributes_uri, cfg.rules.default_region, cfg.rules.default_age) == ("s3://b/users", "de", 16)
    assert config.load(None, []).data.user_attributes_uri == ""
    with pytest.raises(ConfigError, match="data.user_attributes_uri .* carries credentials"):
        config.load(None, ["data.user_attributes_uri=s3://k:secret@b/users"])
    with pytest.raises(ConfigError, match="rules.default_age must be >= 0"):
        config.load(None, ["rules.default_age=-1"])
