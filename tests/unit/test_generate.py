"""Tests of the synthetic log generator: determinism, contracts, and the
structure a recommender is meant to learn from it."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from raymedia import schema, storage
from raymedia.data.generate import GeneratorConfig, generate, generate_chunk, make_catalog

SMALL = GeneratorConfig(users=300, items=200, days=7, seed=3)
HIVE = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")


def read_events(events_uri: str) -> pa.Table:
    return ds.dataset(events_uri, format="parquet", partitioning=HIVE).to_table()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small generated world shared by the read-only tests."""
    summary = generate(SMALL, str(tmp_path_factory.mktemp("gen")))
    events = read_events(summary.events_uri)
    catalog = pq.read_table(summary.catalog_uri)
    return summary, events, catalog


def consumptions(events: pa.Table):
    """(user, item) arrays of click/play/complete rows, in (user, ts) order."""
    t = events.filter(pc.is_in(events["event"], pa.array(["click", "play", "complete"])))
    t = t.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    return t["user_id"].to_numpy(), t["item_id"].to_numpy()


def test_same_seed_same_output_other_seed_differs(tmp_path, generated):
    summary, events, _ = generated
    again = generate(SMALL, str(tmp_path / "again"))
    assert again.events == summary.events
    assert read_events(again.events_uri).equals(events)
    other = generate(GeneratorConfig(users=300, items=200, days=7, seed=4), str(tmp_path / "other"))
    assert not read_events(other.events_uri).equals(events)


def test_summary_and_layout(generated):
    summary, events, catalog = generated
    assert summary.users == 300 and summary.items == 200
    assert summary.events == events.num_rows > 0
    assert summary.days == [f"2026-01-{d:02d}" for d in range(5, 12)]
    assert summary.files == len(storage.list_files(summary.events_uri)) >= summary.users // SMALL.chunk_users
    assert catalog.num_rows == 200
    assert sorted(set(events["dt"].to_pylist())) == summary.days


def test_events_and_catalog_conform_to_contracts(generated):
    _, events, catalog = generated
    stored = events.drop_columns(["dt"])
    assert stored.schema.names == schema.EVENTS.names
    assert stored.schema.types == schema.EVENTS.types
    content = [f.name for f in schema.CATALOG_CONTENT if f.name in catalog.column_names]
    assert catalog.schema.names == schema.CATALOG.names + content
    assert content == ["description", "tags", "series_id", "episode", "duration_s"]
    assert schema.conform_catalog(catalog).equals(catalog)
    assert schema.validate_events(events, "generated")[1].num_rows == 0   # dt checked too
    assert set(events["event"].to_pylist()) <= set(schema.EventType.labels())

    dates = pc.strftime(events["ts"], format="%Y-%m-%d")
    assert pc.all(pc.equal(dates, events["dt"])).as_py()

    assert pc.all(pc.is_in(events["item_id"], catalog["item_id"])).as_py()
    published = dict(zip(catalog["item_id"].to_pylist(), catalog["published_at"].to_pylist()))
    pub = pa.array([published[i] for i in events["item_id"].to_pylist()], schema.TS_TYPE)
    assert pc.all(pc.greater_equal(events["ts"], pub)).as_py()

    dwell_null = events["dwell_s"].is_null()
    consumed = pc.is_in(events["event"], pa.array(["click", "play", "complete"]))
    assert pc.all(pc.equal(dwell_null, pc.invert(consumed))).as_py()


def test_catalog_world(generated):
    _, _, catalog = generated
    start = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)
    new = np.mean([p >= start for p in catalog["published_at"].to_pylist()])
    assert 0.01 < new < 0.12
    assert 0.9 < np.mean(catalog["available"].to_numpy()) < 1.0
    series = catalog["series_id"].is_valid().to_numpy(zero_copy_only=False)
    assert 0.2 < series.mean() < 0.4
    assert set(catalog["category"].to_pylist()) == {f"cat_{c:02d}" for c in range(16)}


def test_catalog_words_say_what_an_item_is(generated):
    """A series' episodes share its name; a category's items share its words, and two
    categories share none: content a model can learn new items from."""
    _, _, catalog = generated
    rows = catalog.to_pylist()
    by_series: dict = {}
    for r in rows:
        if r["series_id"]:
            by_series.setdefault(r["series_id"], []).append(r)
    for eps in by_series.values():
        names = {r["title"].rsplit(" ", 1)[0] for r in eps}
        assert len(names) == 1 and all(r["title"].endswith(f" {r['episode']}") for r in eps)
        assert all(r["tags"][-1] == names.pop().lower() for r in eps[:1])
    words: dict = {}
    for r in rows:
        words.setdefault(r["category"], set()).update(r["tags"][:2])
    cats = sorted(words)
    assert all(not (words[a] & words[b]) for a in cats for b in cats if a < b)
    assert all(r["description"].endswith(".") and len(r["description"].split()) == 10 for r in rows)


def test_popularity_is_heavy_tailed(generated):
    _, events, _ = generated
    items = events.filter(pc.not_equal(events["event"], "impression"))["item_id"].to_numpy()
    counts = np.sort(np.bincount(items))[::-1]
    assert counts[:20].sum() / counts.sum() > 0.4          # top 10% of 200 items


def test_series_are_watched_in_order(generated):
    _, events, catalog = generated
    next_ep = {}
    by_episode = {}
    for item, series, ep in zip(catalog["item_id"].to_pylist(), catalog["series_id"].to_pylist(),
                                catalog["episode"].to_pylist()):
        if series is not None:
            by_episode[(series, ep)] = item
    for (series, ep), item in by_episode.items():
        if (series, ep + 1) in by_episode:
            next_ep[item] = by_episode[(series, ep + 1)]
    users, items = consumptions(events)
    same_user = users[:-1] == users[1:]
    expected = np.array([next_ep.get(i, -1) for i in items[:-1]])
    pairs = same_user & (expected > 0)
    assert pairs.sum() > 100
    assert np.mean(items[1:][pairs] == expected[pairs]) > 0.2


def test_users_concentrate_on_few_categories(generated):
    _, events, catalog = generated
    category = dict(zip(catalog["item_id"].to_pylist(), catalog["category"].to_pylist()))
    users, items = consumptions(events)
    shares = []
    for user in np.unique(users):
        cats = [category[i] for i in items[users == user]]
        shares.append(max(cats.count(c) for c in set(cats)) / len(cats))
    assert np.mean(shares) > 0.4


def test_chunking_changes_streams_not_volume(tmp_path):
    # 1200 users keep the chunk-to-chunk volume noise well inside the 20% bound.
    sizes = {}
    for chunk_users in (50, 300):
        cfg = GeneratorConfig(users=1200, items=200, days=7, seed=1, chunk_users=chunk_users)
        summary = generate(cfg, str(tmp_path / str(chunk_users)))
        events = read_events(summary.events_uri)
        user_ids = events["user_id"].to_numpy()
        assert summary.users == 1200 and summary.files == len(storage.list_files(summary.events_uri))
        assert user_ids.min() >= 1 and user_ids.max() <= 1200
        sizes[chunk_users] = (summary.events, len(np.unique(user_ids)))
    (events_a, users_a), (events_b, users_b) = sizes.values()
    assert abs(events_a / events_b - 1) < 0.2
    assert abs(users_a / users_b - 1) < 0.05


def test_generate_chunk_matches_written_files(tmp_path):
    cfg = GeneratorConfig(users=120, items=100, days=3, chunk_users=50, seed=7)
    summary = generate(cfg, str(tmp_path))
    written = read_events(summary.events_uri)
    chunk = generate_chunk(cfg, 1)
    assert chunk.column_names == [*schema.EVENTS.names, "dt"]
    assert set(chunk["user_id"].to_pylist()) <= set(range(51, 101))
    ids = pc.and_(pc.greater_equal(written["user_id"], 51), pc.less_equal(written["user_id"], 100))
    order = [("dt", "ascending"), ("user_id", "ascending"), ("ts", "ascending")]
    assert written.filter(ids).sort_by(order).equals(chunk.sort_by(order))
    assert make_catalog(cfg).equals(pq.read_table(summary.catalog_uri))
    with pytest.raises(ValueError, match="chunk"):
        generate_chunk(cfg, 3)


@pytest.mark.parametrize("field,value", [
    ("users", 0), ("items", 1), ("days", 0), ("seed", -1), ("categories", 5000),
    ("chunk_users", 0), ("series_fraction", 1.5), ("start", datetime.datetime(2026, 1, 5)),
    ("mean_session_len", 0.5), ("taste_concentration", 0.0), ("continue_prob", 1.0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**{field: value})
