"""Training pieces that need no Ray: the learning-rate schedule, the validation split of
the training rows, and the dwell-time input."""

import math

import numpy as np
import pyarrow as pa
import pytest

from raymedia import features
from raymedia.schema import US_PER_DAY as DAY_US
from raymedia.train import MIN_LR_RATIO, lr_factor



def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    assert lr_factor(0, 0.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(4, 0.0, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 0.0, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 0.5, 10, "cosine") == pytest.approx(MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5)
    assert lr_factor(100, 1.0, 10, "cosine") == pytest.approx(MIN_LR_RATIO)
    assert lr_factor(100, 0.9, 10, "constant") == 1.0 and lr_factor(0, 0.9, 0, "constant") == 1.0
    decay = [lr_factor(100, p / 10, 10, "cosine") for p in range(11)]
    assert decay == sorted(decay, reverse=True)
    assert decay[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3)))


def _histories(n_users: int, length: int) -> pa.Table:
    return pa.table({"user_id": list(range(n_users)),
                     "items": [[u % 7 + i + 1 for i in range(length)] for u in range(n_users)],
                     "events": [[3] * length] * n_users,
                     "ts": [[DAY_US * 10 + i for i in range(length)]] * n_users,
                     "dwell_s": [[0.0, 1.0, 100.0, None, 5000.0][:length]] * n_users,
                     "n_events": [length] * n_users})


@pytest.mark.parametrize("share, lo, hi", [(0.1, 10, 35), (1.0, 200, 200)])
def test_validation_users_hold_out_their_second_to_last_event(share, lo, hi):
    table = _histories(200, 5)
    _, x = features.batch_inputs(table, "train", 8, DAY_US * 20, DAY_US * 7, share)
    val = features.validation_users(table["user_id"].combine_chunks(), share)
    assert lo <= val.sum() <= hi                                 # train.val_share of the users
    items = np.array(table["items"].to_pylist())
    # everyone: inputs are the first 3 events; the last event (test) is never a target
    assert (x["length"] == 3).all() and not (x["targets"] == items[:, 4:5]).any()
    # validation users: the second-to-last event is the validation target, not a training one
    assert (x["val_target"][val] == items[val, 3]).all()
    assert (x["targets"][val, 2] == 0).all() and (x["targets"][val, :2] == items[val, 1:3]).all()
    assert (x["val_target"][~val] == 0).all() and (x["targets"][~val, 2] == items[~val, 3]).all()


def test_a_validation_sample_is_drawn_independently_of_the_return_evaluation_users():
    ids = _histories(2000, 3)["user_id"].combine_chunks()
    val, held = features.validation_users(ids, 0.5), features.return_eval_users(ids)
    assert 0.4 < val[held].mean() < 0.6 and 0.4 < val[~held].mean() < 0.6
    assert (features.validation_users(ids, 0.2) <= val).all()          # samples are nested


def test_chunked_cross_entropy_equals_the_full_one_in_value_and_gradient():
    import torch
    import torch.nn.functional as F

    from raymedia.models.sequence import _ChunkedCrossEntropy
    torch.manual_seed(0)
    h = torch.randn(300, 16, requires_grad=True)
    w = torch.randn(1001, 16, requires_grad=True)
    target = torch.randint(0, 1000, (300,))
    full = F.cross_entropy(h @ w[1:].T, target)
    full_grads = torch.autograd.grad(full, (h, w))
    for chunk in (1, 7, 300, 1000):          # chunk sizes that do and do not divide the rows
        loss = _ChunkedCrossEntropy.apply(h, w[1:], target, chunk)
        grads = torch.autograd.grad(loss, (h, w))
        assert torch.allclose(loss, full, rtol=1e-6, atol=1e-6)
        assert all(torch.allclose(g, f, rtol=1e-5, atol=1e-7) for g, f in zip(grads, full_grads))


def test_dwell_time_is_a_bucketed_input():
    b = features.dwell_bucket(np.array([0.0, np.nan, 1.0, 100.0, 5000.0, 1e12]))
    assert b.tolist() == [1, 1, 3, 8, 14, features.NUM_DWELL_BUCKETS - 1]
    _, x = features.batch_inputs(_histories(2, 5), "score", 8, DAY_US * 20, DAY_US * 7)
    assert x["dwell"][0].tolist() == [1, 3, 8, 1, 14, 0, 0, 0]   # null dwell: 'none'; 0: padding


def test_with_seen_items_excluded_repeats_are_not_training_targets():
    from raymedia.train import novel_targets
    items = np.array([[5, 6, 5, 7, 0], [1, 2, 3, 0, 0]])
    targets = np.array([[6, 5, 7, 6, 0], [2, 3, 2, 0, 0]])
    # user 0: 6 new, 5 seen at 0, 7 new, 6 seen at 1; user 1: 2 new, 3 new, 2 seen
    assert novel_targets(items, targets).tolist() == [[6, 0, 7, 0, 0], [2, 3, 0, 0, 0]]


def test_return_head_is_evaluated_only_on_users_held_out_of_its_training():
    table = _histories(200, 5)
    ids = table["user_id"].combine_chunks()
    held_out = features.return_eval_users(ids)
    _, train = features.batch_inputs(table, "train", 8, DAY_US * 20, DAY_US * 7)
    _, ev = features.batch_inputs(table, "eval", 8, DAY_US * 20, DAY_US * 7)
    assert 20 < held_out.sum() < 70
    assert (train["ret_mask"][held_out] == 0).all() and (train["ret_mask"][~held_out] == 1).all()
    assert (ev["ret_mask"] > 0).tolist() == held_out.tolist()      # the Evaluator's test set
