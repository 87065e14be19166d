"""User state: the incremental nightly merge equals a from-scratch rebuild, row for row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymedia.data import read, state
from raymedia.data.vocab import Vocab
from raymedia.schema import US_PER_DAY as DAY
from raymedia.schema import EventType as E

LOOKBACK, N = 3, 4


def _events(rng: np.random.Generator, day: int, users: int = 40, items: int = 12) -> pa.Table:
    """Raw valid events of one day: sessions on few items so merges, repeats and
    impressions-only users all occur; some sessions cross nothing but midnight."""
    n = int(rng.integers(60, 120))
    ts = day * DAY + np.sort(rng.integers(0, DAY, n))
    ts[:5] = day * DAY + DAY - 1 - np.arange(5)          # the last microseconds of the day
    event = rng.choice(list(E), n).astype(np.int8)
    return pa.table({
        "user_id": pa.array(rng.integers(0, users, n)),
        "item_id": pa.array(rng.integers(0, items, n)),
        "event": pa.array(event),
        "ts": pa.array(ts, pa.int64()),
        "dwell_s": pa.array(rng.choice([0.0, 3.5, 30.0], n).astype(np.float32)),
    })


def _rebuild(days: dict[int, pa.Table], d: int) -> pa.Table:
    rows = pa.concat_tables([state.log_rows(days[k]) for k in range(d - LOOKBACK, d) if k in days])
    return state.state_block(rows, N)


def test_merging_one_day_into_yesterdays_state_equals_a_rebuild_of_the_window():
    rng = np.random.default_rng(3)
    days = {d: _events(rng, d) for d in range(100, 110)}
    days[104] = days[104].slice(0, 0)                      # a day without events
    current = _rebuild(days, 103)
    for d in range(104, 111):
        carried = state.carried_rows(current, first_day=d - LOOKBACK)
        current = state.state_block(pa.concat_tables([carried, state.log_rows(days[d - 1])]), N)
        expected = _rebuild(days, d)
        assert current.num_rows == expected.num_rows > 0
        assert current.to_pylist() == expected.to_pylist(), f"day {d}"
    assert max(len(r) for r in current["item_ids"].to_pylist()) == N
    assert max(len(r) for r in current["seen_ids"].to_pylist()) > N      # the seen set is not cut


def test_seen_set_holds_every_item_of_the_window_older_than_the_last_n():
    """Against a plain-Python reference over every user and night of the merge: the state's
    last N plus its seen set are exactly the items of the window, each seen set sorted, once,
    with the last day of the item outside the last N."""
    rng = np.random.default_rng(5)
    days = {d: _events(rng, d) for d in range(100, 108)}
    for d in range(103, 109):
        st = _rebuild(days, d)
        window = pa.concat_tables([days[k] for k in range(d - LOOKBACK, d)]).to_pylist()
        for row in st.to_pylist():
            mine = [e for e in window if e["user_id"] == row["user_id"]
                    and e["event"] != E.IMPRESSION]
            assert set(row["item_ids"]) | set(row["seen_ids"]) == {e["item_id"] for e in mine}
            assert row["seen_ids"] == sorted(set(row["seen_ids"]))
            tail_start = min(row["ts"]) if row["ts"] else None
            for item, day in zip(row["seen_ids"], row["seen_days"]):
                older = [e["ts"] // DAY for e in mine if e["item_id"] == item and e["ts"] < tail_start]
                assert day == max(older)


def test_state_block_by_hand():
    """Rising engagement on one item merges (click -> play -> like); a repeat at the same
    level is a rewatch; midnight splits; impressions only mark the user as seen."""
    ev = pa.table({
        "user_id": [1, 1, 1, 1, 1, 1, 2],
        "item_id": [7, 7, 7, 7, 8, 8, 9],
        "event": pa.array([E.CLICK, E.PLAY, E.LIKE, E.PLAY, E.PLAY, E.COMPLETE,
                           E.IMPRESSION], pa.int8()),
        "ts": pa.array([10, 20, 30, 40, DAY - 1, DAY + 5, 50], pa.int64()),
        "dwell_s": pa.array([1.0, 2.0, None, 4.0, 5.0, 6.0, 1.0], pa.float32()),
    })
    out = state.state_block(state.log_rows(ev), n=10).to_pylist()
    assert out[0]["item_ids"] == [7, 7, 8, 8]
    assert out[0]["events"] == [E.LIKE, E.PLAY, E.PLAY, E.COMPLETE]
    assert out[0]["ts"] == [10, 40, DAY - 1, DAY + 5]
    assert out[0]["dwell_s"] == [3.0, 4.0, 5.0, 6.0]
    assert out[0]["days"] == [0, 1] and out[0]["counts"] == [3, 1] and out[0]["last_day"] == 1
    assert out[0]["seen_ids"] == [] and out[0]["seen_days"] == []
    assert out[1] == {"user_id": 2, "item_ids": [], "events": [], "ts": [], "dwell_s": [],
                      "days": [], "counts": [], "last_day": 0, "seen_ids": [], "seen_days": []}
    short = state.state_block(state.log_rows(ev), n=2).to_pylist()[0]
    assert short["item_ids"] == [8, 8] and short["seen_ids"] == [7] and short["seen_days"] == [0]


def test_histories_use_the_models_vocabulary_and_count_every_interaction():
    ev = pa.table({"user_id": [1, 1, 1, 1], "item_id": ["a", "zz", "b", "c"],
                   "event": pa.array([E.PLAY] * 4, pa.int8()),
                   "ts": pa.array([1, 2, 3, 4], pa.int64()), "dwell_s": pa.array([0.0] * 4, pa.float32())})
    st = state.state_block(state.log_rows(ev), n=10)
    vocab = Vocab.build(pa.table({"item_id": ["a", "b", "c"], "category": ["x", "y", "x"],
                                  "published_at": pa.array([None] * 3, pa.timestamp("us", "UTC")),
                                  "available": [True] * 3}), pa.array([], pa.string()))
    h = state.to_histories(st, vocab, n=2).to_pylist()[0]
    assert h["items"] == [2, 3]               # "zz" is unknown to the model; last 2 known kept
    assert h["ts"] == [3, 4] and h["n_events"] == 4
    assert h["seen"] == []                    # the last 2 of the state (n=10) are all there is
    st = state.state_block(state.log_rows(ev), n=1)            # "a", "zz", "b" fall out of the last 1
    assert state.to_histories(st, vocab, n=1).to_pylist()[0]["seen"] == [1, 2]   # "zz" unknown
    assert state.to_histories(st, vocab, n=1, seen_from=1).to_pylist()[0]["seen"] == []   # horizon


def _catalog(ids: list) -> pa.Table:
    return pa.table({"item_id": pa.array(ids, pa.int64()), "category": pa.array(["x"] * len(ids), pa.string()),
                     "published_at": pa.array([None] * len(ids), pa.timestamp("us", "UTC")),
                     "available": [True] * len(ids)})


NO_ITEMS = pa.array([], pa.int64())


def test_item_counts_are_what_training_learns_from_the_histories():
    """Per item, its interactions in the histories but each user's last (evaluation's),
    with the model's vocabulary (unknown items dropped first) or one learning them all;
    the vocabulary's popularity is those counts."""
    rng = np.random.default_rng(7)
    st = _rebuild({d: _events(rng, d) for d in range(100, 104)}, 104)
    model = Vocab.build(_catalog(list(range(8))), NO_ITEMS)          # items 8..11 unknown
    learning = Vocab.build(_catalog([]), pc.list_flatten(st["item_ids"]))
    for vocab, n in ((model, N), (model, 2), (None, N)):
        v = vocab or learning
        expected: dict = {}
        for items in state.to_histories(st, v, n)["items"].to_pylist():
            for k, i in enumerate(items):
                expected[i] = expected.get(i, 0) + (k < len(items) - 1)
        counts = state.item_counts(st, n, vocab)
        assert dict(zip(v.lookup(counts["item_id"]).tolist(), counts["count"].to_pylist())) == expected
        pop = Vocab.build(_catalog([]), counts["item_id"], counts=counts).popularity
        assert pop[0] == 0 and sum(pop) == sum(expected.values()) > 0
    base = Vocab.build(_catalog([1, 2]), NO_ITEMS, counts=pa.table({"item_id": [2], "count": [5]}))
    assert base.popularity.tolist() == [0, 0, 5]
    assert Vocab.build(_catalog([1, 2, 3]), NO_ITEMS, base=base).popularity.tolist() == [0, 0, 5, 0]


def test_read_counts_ride_with_the_log_rows_and_the_state_leaves_them_out(tmp_path):
    c = ["play", "impression", "play", "click", "play"]
    raw = pa.table({"user_id": pa.array([1, 1, None, 2, 2]), "item_id": pa.array([10, 11, 12, 99, 10]),
                    "event": c, "ts": pa.array([1, 2, 3, 4, 5], pa.timestamp("us", "UTC")),
                    "dwell_s": pa.array([1.0, 0.0, 1.0, 1.0, -1.0], pa.float32())})
    vocab = Vocab.build(_catalog([10, 11, 12]), pa.array([], pa.int64()))
    rows = read.to_log_rows(raw, "events", str(tmp_path), vocab)
    is_stat = pc.equal(rows["kind"], state.STATS)
    stats = rows.filter(is_stat).select(["event", "count"])
    assert read.ReadStats.from_rows(pa.concat_tables([stats, stats])) == read.ReadStats(
        input_rows=10, valid_rows=6, impressions=2, unknown_item=2, rejected_rows=4,
        rejected={"null_user_id": 2, "negative_dwell": 2})
    assert len(list(tmp_path.glob("rejects/*.parquet"))) == 1
    assert rows["user_id"].null_count == 0      # a null key would change how the shuffle hashes the block
    assert state.state_block(rows, N).equals(state.state_block(rows.filter(pc.invert(is_stat)), N))
    assert state.state_block(rows, N)["user_id"].to_pylist() == [1, 2]
