"""Model inputs from histories, and which items today's catalog lets us recommend."""

import numpy as np
import pyarrow as pa

from raymedia.features import batch_inputs, time_bucket

H = 3_600_000_000  # one hour in microseconds


def test_model_inputs_layouts_and_return_label():
    day = 24 * H
    hist = pa.table({"user_id": pa.array([1, 2, 3]),
                     "items": [[4, 5, 6, 7], [8, 9], [3]],
                     "events": [[2, 3, 3, 4], [2, 2], [3]],
                     "ts": [[0, 1 * H, 10 * day, 12 * day], [0, 2 * day], [5 * day]],
                     "n_events": pa.array([4, 2, 1], pa.int32())})
    asof, horizon = 14 * day, 7 * day
    kept, x = batch_inputs(hist, "train", 4, asof, horizon)      # every user validates (default)
    assert x["items"][0].tolist() == [4, 5, 0, 0] and x["targets"][0].tolist() == [5, 0, 0, 0]
    kept, x = batch_inputs(hist, "train", 4, asof, horizon, val_share=0.0)   # no validation users
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


def test_history_len_is_auto_only_when_neither_the_config_nor_an_override_sets_it(tmp_path):
    from raymedia import dataset
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  history_len: 30\n")
    other = tmp_path / "o.yaml"
    other.write_text("train:\n  epochs: 3\n")
    assert dataset.history_len_overrides(str(cfg), []) == []
    assert dataset.history_len_overrides(None, ["data.history_len=12"]) == []
    auto = [f"data.history_len={dataset.AUTO_LEN[1]}"]
    assert dataset.history_len_overrides(str(other), ["train.epochs=2"]) == auto
    assert dataset.history_len_overrides(None, []) == auto
