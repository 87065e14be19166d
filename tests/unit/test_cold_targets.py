"""The cold-item protocol's pure parts (which items are cold, which users and targets are
ranked, the category-popularity baseline) and the generator's news-like fresh items."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raymedia.data.generate import DAY_S, FRESH_SUBTOPICS, GeneratorConfig, _world, generate_chunk, make_catalog
from raymedia.evaluate import category_popularity, padded
from raymedia.offline import cold_items, cold_targets, join_targets

T = 1_000


def events(rows):
    """(user_id, item_id, event, ts) tuples as a table."""
    u, i, e, t = zip(*rows)
    return pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64()),
                     "event": pa.array(e), "ts": pa.array(t, pa.int64())})


EARLIER = events([(1, 10, "click", 1), (2, 11, "play", 2), (3, 12, "impression", 3)])
TEST = events([
    (1, 12, "click", T + 5),        # 12 was only shown before: cold
    (1, 13, "complete", T + 1),     # never seen before: cold, taken first by user 1
    (1, 10, "click", T + 2),        # warm
    (2, 13, "like", T + 9),
    (2, 13, "click", T + 3),        # user 2 took 13 twice: one target, at the first time
    (3, 14, "impression", T + 4),   # only shown on the test day: not taken, not cold
    (4, 11, "play", T + 6),         # user 4 took a warm item only: not ranked
])


def test_cold_items_are_first_taken_in_the_test_period():
    assert cold_items(EARLIER, TEST).to_pylist() == [12, 13]
    # an impression before the test period does not warm an item, an interaction does
    assert cold_items(events([(9, 12, "share", 0)]), TEST).to_pylist() == [10, 11, 13]
    assert cold_items(EARLIER, events([(1, 10, "click", T)])).to_pylist() == []


def test_cold_targets_one_row_per_user_and_cold_item_in_first_taken_order():
    t = cold_targets(EARLIER, TEST)
    assert list(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist())) == [(1, 13), (1, 12), (2, 13)]
    taken = [sorted(x) for x in t["taken"].to_pylist()]
    assert taken == [[10, 12, 13], [10, 12, 13], [13]]      # masked except the target itself


def test_join_targets_ranks_a_user_once_per_target():
    histories = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()),
                          "items": pa.array([[5, 6], [7], [8, 9]], pa.list_(pa.int64()))})
    targets = pa.table({"user_id": pa.array([3, 1, 3, 4], pa.int64()), "target": pa.array([11, 12, 13, 14]),
                        "others": pa.array([[13], [], [11], []], pa.list_(pa.int64()))})
    out = join_targets(histories, targets)
    assert out["user_id"].to_pylist() == [3, 1, 3]          # user 2 has no target, user 4 no history
    assert out["items"].to_pylist() == [[8, 9], [5, 6], [8, 9]]
    assert out["target"].to_pylist() == [11, 12, 13] and out["others"].to_pylist() == [[13], [], [11]]


def test_category_popularity_orders_categories_then_own_popularity():
    item_category = np.array([0, 1, 1, 2, 2, 1])
    popularity = np.array([0.0, 5, 1, 4, 3, 0])              # category 1: 6, category 2: 7
    s = category_popularity(item_category, popularity)
    assert s[0] == 0                                         # padding
    assert list(np.argsort(-s[1:], kind="stable") + 1) == [3, 4, 1, 2, 5]
    assert s[5] == 6.0 and s[2] > s[5]                       # a cold item: its category's figure


def test_padded_list_column():
    col = pa.chunked_array([pa.array([[3, 4], []], pa.list_(pa.int64())), pa.array([[7]], pa.list_(pa.int64()))])
    assert padded(col).tolist() == [[3, 4], [0, 0], [7, 0]]
    assert padded(pa.array([[], []], pa.list_(pa.int64()))).tolist() == [[0], [0]]
    assert padded(pa.array([[1], [2, 5]], pa.list_(pa.int64())).slice(1)).tolist() == [[2, 5]]


FRESH = GeneratorConfig(users=400, items=600, days=6, seed=2, fresh_item_fraction=0.5, fresh_days=1.5)


@pytest.fixture(scope="module")
def fresh_world():
    ev = pa.concat_tables([generate_chunk(FRESH, c) for c in range(FRESH.chunks)])
    return ev.filter(pc.not_equal(ev["event"], "impression")), make_catalog(FRESH)


def test_fresh_items_are_taken_only_while_live(fresh_world):
    taken, catalog = fresh_world
    w = _world(FRESH)
    item = taken["item_id"].to_numpy() - 1
    fresh = w.subtopic[item] >= 0
    start_us = (FRESH.start - dt.date(1970, 1, 1)).days * DAY_S * 1_000_000
    age_days = ((taken["ts"].cast(pa.int64()).to_numpy() - start_us) / 1e6 - w.pub_s[item]) / DAY_S
    assert 0.1 < fresh.mean() < 0.5                       # a share of the picks, not all
    assert age_days[fresh].min() >= 0
    # live for fresh_days after publication (a session may run a little past its planned start)
    assert np.quantile(age_days[fresh], 0.99) <= FRESH.fresh_days
    assert (w.pub_s[w.subtopic >= 0] >= 0).all() and (w.series[w.subtopic >= 0] < 0).all()


def test_fresh_items_say_what_they_are_about(fresh_world):
    _, catalog = fresh_world
    w = _world(FRESH)
    rows = catalog.to_pylist()
    sub = {r["subcategory"] for r in rows if r["subcategory"]}
    assert sub <= {f"cat_{c:02d}/{t}" for c in range(FRESH.categories) for t in range(FRESH_SUBTOPICS)}
    assert len(sub) > FRESH.categories * FRESH_SUBTOPICS // 2
    for r, t in zip(rows, w.subtopic.tolist()):
        assert ("news" in r["tags"]) == (t >= 0)
        assert (r["subcategory"] is None) == (t < 0)
    # items about the same subtopic share words their category's other items lack
    words = {}
    for r in rows:
        if r["subcategory"]:
            words.setdefault(r["subcategory"], []).append(set(r["description"].rstrip(".").split()))
    for group in words.values():
        if len(group) >= 4:
            shared = set.union(*[a & b for a in group for b in group if a is not b])
            assert shared


def test_without_fresh_items_the_world_is_unchanged():
    base = GeneratorConfig(users=200, items=150, days=3, seed=1)
    off = GeneratorConfig(users=200, items=150, days=3, seed=1, fresh_item_fraction=0.0, fresh_days=2.0,
                          fresh_share=0.9)
    assert generate_chunk(base, 0).equals(generate_chunk(off, 0))
    assert make_catalog(base).equals(make_catalog(off))
    assert "subcategory" not in make_catalog(base).column_names
