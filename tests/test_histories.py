"""Histories: one row per user, consecutive same-item events merged, last N kept."""

import numpy as np
import pandas as pd
import pyarrow as pa

from raymedia.data.read import histories_block
from raymedia.features import batch_inputs, time_bucket

H = 3_600_000_000  # one hour in microseconds


def _block(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item", "event", "ts", "dwell_s"])
    return pa.Table.from_pandas(df, schema=pa.schema([
        ("user_id", pa.int64()), ("item", pa.int64()), ("event", pa.int8()),
        ("ts", pa.int64()), ("dwell_s", pa.float32())]), preserve_index=False)


def test_histories_block_by_hand():
    t = _block([
        (2, 7, 3, 5 * H, 10.0),
        (1, 5, 2, 1 * H, 1.0),     # click, then complete + like of the same item: one interaction
        (1, 5, 4, 1 * H + 5, 50.0),
        (1, 5, 5, 1 * H + 9, None),
        (1, 6, 3, 2 * H, 3.0),
        (1, 5, 3, 3 * H, 4.0),     # the same item again later is a new interaction
        (1, 5, 3, 4 * H, 4.0),     # ... and so is a repeat at the same engagement (a rewatch)
        (2, 8, 2, 6 * H, 2.0),
    ])
    out = histories_block(t, history_len=2).to_pylist()
    assert [r["user_id"] for r in out] == [1, 2]
    assert out[0]["items"] == [5, 5] and out[0]["n_events"] == 4
    assert out[1]["items"] == [7, 8] and out[1]["events"] == [3, 2] and out[1]["ts"] == [5 * H, 6 * H]
    full = histories_block(t, history_len=10).to_pylist()[0]
    assert full["items"] == [5, 6, 5, 5] and full["events"] == [5, 3, 3, 3] and full["ts"][0] == H


def test_build_histories_on_ray_matches_a_pandas_reference(ray_session, tmp_path):
    import ray
    from raymedia.data.read import build_histories
    from raymedia.data.vocab import Vocab
    rng = np.random.default_rng(0)
    n = 5000
    events = pa.table({
        "user_id": rng.integers(0, 300, n), "item_id": rng.integers(0, 50, n),
        "event": rng.choice(["impression", "click", "play", "complete"], n),
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("us", tz="UTC")),
        "dwell_s": rng.random(n).astype("float32")})
    vocab = Vocab.build(pa.table({"item_id": np.arange(50), "category": ["c"] * 50}),
                        events["item_id"])
    ds = ray.data.from_arrow([events.slice(0, 2000), events.slice(2000)])
    got = build_histories(ds, vocab, 8, partitions=3, events_uri="mem",
                          run_uri=str(tmp_path / "run")).to_pandas()
    assert got["user_id"].is_unique
    df = events.to_pandas()
    df = df[df.event != "impression"].sort_values(["user_id", "ts", "item_id"])
    for uid, g in df.groupby("user_id"):
        items = (g.item_id.to_numpy() + 1).tolist()
        code = g.event.map({"click": 2, "play": 3, "complete": 4}).tolist()
        merged = [x for i, x in enumerate(items)
                  if i == 0 or x != items[i - 1] or code[i] <= code[i - 1]]
        row = got[got.user_id == uid].iloc[0]
        assert list(row["items"]) == merged[-8:] and row["n_events"] == len(merged)
    assert set(got.user_id) == set(df.user_id)


def test_model_inputs_layouts_and_return_label():
    day = 24 * H
    hist = pa.table({"user_id": pa.array([1, 2, 3]),
                     "items": [[4, 5, 6, 7], [8, 9], [3]],
                     "events": [[2, 3, 3, 4], [2, 2], [3]],
                     "ts": [[0, 1 * H, 10 * day, 12 * day], [0, 2 * day], [5 * day]],
                     "n_events": pa.array([4, 2, 1], pa.int32())})
    asof, horizon = 14 * day, 7 * day
    kept, x = batch_inputs(hist, "train", 4, asof, horizon)
    assert kept["user_id"].to_pylist() == [1]
    assert x["items"][0].tolist() == [4, 5, 0, 0] and x["targets"][0].tolist() == [5, 6, 0, 0]
    assert x["gaps"][0].tolist() == [1, int(time_bucket(np.array([H]))[0]), 0, 0]
    # state as of day 7: last event before it is position 1; returned (events on days 10, 12)
    assert (x["ret_pos"][0], x["ret_label"][0]) == (1, 1.0)
    kept, x = batch_inputs(hist, "eval", 4, asof, horizon)
    assert kept["user_id"].to_pylist() == [1, 2]
    assert x["target"].tolist() == [7, 9] and x["items"][1].tolist() == [8, 0, 0, 0]
    assert x["ret_label"].tolist() == [1.0, 0.0]        # user 2's last event is before day 7
    kept, x = batch_inputs(hist, "score", 2, asof, horizon)
    assert x["items"].tolist() == [[6, 7], [8, 9], [3, 0]] and x["length"].tolist() == [2, 2, 1]
    assert x["ret_pos"].tolist() == [1, 1, 0]


def test_recommendable_follows_todays_catalog():
    from raymedia.data.vocab import Vocab
    day = 100 * 24 * H
    catalog = pa.table({
        "item_id": [10, 11, 12, 13], "category": ["a", "a", "b", None],
        "available": [True, False, None, True],
        "published_at": pa.array([0, 0, day - 1, day + 1], pa.timestamp("us", tz="UTC"))})
    vocab = Vocab.build(catalog, pa.array([10, 99]))      # 99: only in the logs
    ok = vocab.recommendable(catalog, day)
    assert ok[vocab.lookup(pa.array([10, 11, 12, 13, 99]))].tolist() == [True, False, True, False, False]
    assert not ok[0]
