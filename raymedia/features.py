"""History rows -> padded model inputs, vectorised over a whole batch.

Sequences are right-padded (real events at positions 0..n-1, then zeros): with
causal attention no real position ever attends to padding, so no padding mask
is needed and the last event sits at ``length - 1``.

Three modes share one layout:
- ``train``: inputs are the history without its last two events, targets are
  inputs shifted by one, so the last event (the leave-last-out test item) is
  never seen; for a share of users (``validation_users``; all by default) the
  last target (the second-to-last event) is held out too, as ``val_target``, for
  early stopping.
- ``eval``: inputs are the history without its last event; ``target`` is it.
- ``score``: inputs are the whole history (recommend what comes next).

``eval`` and ``score`` inputs carry ``seen``: every item the user interacted with
before the target (eval) or at all (score), i.e. the history's ``seen`` column (the
user state's seen set, older than the history) plus the history's items, right-padded
with 0, the padding index, which is masked anyway. It is what ``data.exclude_seen`` masks.

The return label is defined as of ``T = asof - horizon``: the user's state at
the last event before T, and whether any event happened in ``[T, asof)``.
Causal attention makes the state at that position blind to later events.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUM_TIME_BUCKETS = 16
NUM_DWELL_BUCKETS = 16
US_PER_HOUR = 3_600_000_000
RETURN_EVAL_SHARE = 5   # 1 in 5 users is held out of the return head's training for its AUC
VALIDATION_SHARE = 1.0  # default share of users whose second-to-last event is the validation target

Mode = Literal["train", "eval", "score"]
MIN_EVENTS = {"train": 3, "eval": 2, "score": 1}   # events a history needs for each mode


def day_start_us(day: dt.date | str) -> int:
    """Microseconds since the epoch at 00:00 UTC of a day (the as-of time of a run)."""
    d = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return int(dt.datetime.combine(d, dt.time(), dt.timezone.utc).timestamp() * 1_000_000)


def time_bucket(delta_us: np.ndarray) -> np.ndarray:
    """Log-scale bucket (2..15) of a time gap; 0 is padding, 1 'no previous event'."""
    hours = np.maximum(np.asarray(delta_us, dtype=np.float64), 0) / US_PER_HOUR
    return np.clip(np.floor(np.log2(1.0 + 4.0 * hours)) + 2, 2, NUM_TIME_BUCKETS - 1).astype(np.int64)


def user_hash(user_ids: pa.Array) -> np.ndarray:
    """A stable 64-bit hash per user id (int or string): the one every per-user split and
    sample draws from, so they agree across batches, runs and processes."""
    return pd.util.hash_array(np.asarray(user_ids.to_pandas(), dtype=object), categorize=False)


def dwell_bucket(dwell_s: np.ndarray) -> np.ndarray:
    """Log-scale bucket (2..15) of a dwell time in seconds; 1 for none (0, null, impression-like
    events), 0 is padding."""
    d = np.nan_to_num(np.asarray(dwell_s, dtype=np.float64), nan=0.0)
    b = np.clip(np.floor(np.log2(1.0 + np.maximum(d, 0))) + 2, 2, NUM_DWELL_BUCKETS - 1)
    return np.where(d > 0, b, 1).astype(np.int64)


def return_eval_users(user_ids: pa.Array) -> np.ndarray:
    """Deterministic user split: True for users whose return label is held out for AUC."""
    return (user_hash(user_ids) % RETURN_EVAL_SHARE) == 0


def validation_users(user_ids: pa.Array, share: float = VALIDATION_SHARE) -> np.ndarray:
    """Deterministic user sample: True for the validation users of early stopping, about
    ``share`` of them (drawn independently of the return head's evaluation users)."""
    return (user_hash(user_ids) // RETURN_EVAL_SHARE) % 10_000 < round(share * 10_000)


def _window(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(B, width) right-padded matrix of flat[starts[i]:ends[i]]."""
    lengths = np.clip(ends - starts, 0, width)
    out = np.zeros((len(starts), width), dtype=np.int64)
    rows = np.repeat(np.arange(len(starts)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = flat[np.repeat(starts, lengths) + cols]
    return out


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = pc.list_flatten(arr).to_numpy().astype(np.int64)
    return values, offsets - offsets[0]


def _seen(batch: pa.Table, items: np.ndarray, off: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(B, width) right-padded: the row's ``seen`` column (if any), then its items before ``ends``."""
    B = len(ends)
    owner = np.repeat(np.arange(B), np.diff(off))
    before = np.arange(len(items)) < ends[owner]
    values, rows = [items[before]], [owner[before]]
    if "seen" in batch.column_names:
        seen, soff = _flat(batch["seen"])
        values.insert(0, seen)
        rows.insert(0, np.repeat(np.arange(B), np.diff(soff)))
    rows_all, values_all = np.concatenate(rows), np.concatenate(values)
    order = np.argsort(rows_all, kind="stable")
    counts = np.bincount(rows_all, minlength=B)
    starts = np.cumsum(counts) - counts
    return _window(values_all[order], starts, starts + counts, max(int(counts.max(initial=0)), 1))


def model_inputs(batch: pa.Table, mode: Mode, max_len: int, asof_us: int,
                 horizon_us: int, val_share: float = VALIDATION_SHARE) -> dict[str, np.ndarray]:
    """Model input arrays for history rows long enough for the mode (see module doc)."""
    items, off = _flat(batch["items"])
    events, _ = _flat(batch["events"])
    ts, _ = _flat(batch["ts"])
    held_out = {"train": 2, "eval": 1, "score": 0}[mode]
    ends = off[1:] - held_out
    starts = np.maximum(off[:-1], ends - max_len)
    length = ends - starts
    out = {
        "items": _window(items, starts, ends, max_len),
        "events": _window(events, starts, ends, max_len),
        "length": length,
    }
    # Gap to the previous event (bucket 1 for the first kept event).
    prev = np.where(np.arange(len(ts)) > 0, np.roll(ts, 1), ts)
    gap = time_bucket(ts - prev)
    gap[off[:-1]] = 1
    out["gaps"] = _window(gap, starts, ends, max_len)
    out["gaps"][out["items"] == 0] = 0
    if "dwell_s" in batch.column_names:
        dw = batch["dwell_s"].combine_chunks()
        dwell = dwell_bucket(pc.list_flatten(dw).to_numpy(zero_copy_only=False))
    else:
        dwell = np.ones(len(items), dtype=np.int64)
    out["dwell"] = _window(dwell, starts, ends, max_len)
    out["dwell"][out["items"] == 0] = 0
    if mode == "train":
        out["targets"] = _window(items, starts + 1, ends + 1, max_len)
        out["targets"][out["items"] == 0] = 0
        # Validation users keep their last training target (the second-to-last event)
        # out of training: it is the early-stopping target, ranked from the state before it.
        val = validation_users(batch["user_id"].combine_chunks(), val_share) & (length >= 2)
        rows = np.flatnonzero(val)
        out["val_target"] = np.zeros(len(length), dtype=np.int64)
        out["val_target"][rows] = out["targets"][rows, length[rows] - 1]
        out["targets"][rows, length[rows] - 1] = 0
    if mode != "train":
        out["seen"] = _seen(batch, items, off, ends)
    if mode == "eval":
        out["target"] = items[ends]
    if mode == "score":
        out["ret_pos"] = length - 1
        out["ret_recency"] = time_bucket(asof_us - ts[ends - 1])
        return out
    cutoff = asof_us - horizon_us
    ts_in = _window(ts, starts, ends, max_len)
    before = (ts_in < cutoff) & (out["items"] > 0)
    ret_pos = before.sum(axis=1) - 1
    last_before = ts_in[np.arange(len(ret_pos)), np.maximum(ret_pos, 0)]
    out["ret_pos"] = np.maximum(ret_pos, 0)
    out["ret_recency"] = time_bucket(cutoff - last_before)
    out["ret_label"] = (ts[off[1:] - 1] >= cutoff).astype(np.float32)
    eval_users = return_eval_users(batch["user_id"].combine_chunks())
    held = eval_users if mode == "train" else ~eval_users
    out["ret_mask"] = ((ret_pos >= 0) & ~held).astype(np.float32)
    return out


def batch_inputs(batch: pa.Table, mode: Mode, max_len: int, asof_us: int, horizon_us: int,
                 val_share: float = VALIDATION_SHARE) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(the rows kept for this mode, their model inputs)."""
    n = pc.list_value_length(batch["items"]).to_numpy(zero_copy_only=False)
    kept = batch.filter(pa.array(n >= MIN_EVENTS[mode]))
    return kept, model_inputs(kept, mode, max_len, asof_us, horizon_us, val_share)
