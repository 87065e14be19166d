"""Per-user state: each user's last N interactions, built from scratch or merged nightly.

The *user state of day D* holds, for every user active in the window
``[D - lookback, D)``, their last N interactions (item id, event, time, dwell),
their interaction count per day of the window, the last day they were seen
(impressions count as being seen) and the *seen set*: every other item they
interacted with in the window (older than the last N), sorted by id, each once,
with the last day they did (``seen_ids``, ``seen_days``), so that scoring can
exclude everything a user has seen, not only the model's input. It keeps item
*ids*, not vocabulary indices, so it survives retraining and new items.

Two ways to build it, equal row for row:

- **rebuild**: every event of the window -> interactions -> ``state_block``;
- **incremental**: yesterday's state, with what fell out of the window dropped,
  plus one new day of events -> ``state_block``.

They agree because interactions never span midnight (a viewing is merged from
consecutive rows on one item with rising engagement, within one UTC day), the
last N of a window are inside the last N of the previous window plus the new
day, day counts, not truncated lists, give the event counts, and an item's last
day before the last N is the larger of its carried one (dropped once outside the
window) and that of today's interactions pushed out of the last N.

Rows flow through one schema (``LOG_SCHEMA``): ``kind`` says whether a row is a
new event, a carried interaction, a carried day count, a carried last-seen
day or a carried seen item. All of a user's rows meet in one block after a hash shuffle on
``user_id`` (the guarantee Ray's own ``map_groups`` relies on); each block is
then one vectorised pass, not one Python call per user. Rows of kind ``STATS``
belong to no user (``state_block`` leaves them out): the read stage's counts,
carried as data to the pass that writes the state (``write``), which returns
them with the files it wrote.

``to_histories`` maps a state to model inputs with one model's vocabulary.

``write`` is the one Ray pass of a night's state: shuffle, merge, write each
block, and return per block its file, users, items with their training
interactions and the read counts, so nothing reads the state again before
scoring; ``histories`` then streams the written files into model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from raymedia import storage
from raymedia.data.vocab import Vocab
from raymedia.schema import US_PER_DAY, EventType
from raymedia.writer import write_part

NEW, CARRIED, DAY_COUNT, LAST_SEEN, SEEN, STATS = range(6)
FORMAT = 2          # state layout version: 2 added the seen set (older states are rebuilt)


def log_schema(user_type: pa.DataType, item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", user_type), ("item_id", item_type), ("event", pa.int8()),
                      ("ts", pa.int64()), ("dwell_s", pa.float32()), ("day", pa.int32()),
                      ("kind", pa.int8()), ("pos", pa.int32()), ("count", pa.int32())])


def state_schema(user_type: pa.DataType, item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", user_type), ("item_ids", pa.list_(item_type)),
                      ("events", pa.list_(pa.int8())), ("ts", pa.list_(pa.int64())),
                      ("dwell_s", pa.list_(pa.float32())), ("days", pa.list_(pa.int32())),
                      ("counts", pa.list_(pa.int32())), ("last_day", pa.int32()),
                      ("seen_ids", pa.list_(item_type)), ("seen_days", pa.list_(pa.int32()))])


def epoch_day(ts_us) -> np.ndarray:
    return np.floor_divide(np.asarray(ts_us, dtype=np.int64), US_PER_DAY).astype(np.int32)


def log_rows(events: pa.Table) -> pa.Table:
    """Valid events (``user_id, item_id, event code, ts (us), dwell_s``) -> NEW log rows.

    Impressions are exposure, not taste: only one row per user survives, to
    record that the user was seen (a user with nothing but impressions is a
    cold-start user, recommended from popularity).
    """
    is_imp = pc.equal(events["event"], int(EventType.IMPRESSION)).to_numpy(zero_copy_only=False)
    if is_imp.any():
        imp = events.filter(pa.array(is_imp))
        _, first = np.unique(pc.dictionary_encode(imp["user_id"]).combine_chunks().indices.to_numpy(),
                             return_index=True)
        imp = imp.take(pa.array(first))
        imp = imp.set_column(1, "item_id", pa.nulls(imp.num_rows, events.schema.field("item_id").type))
        events = pa.concat_tables([events.filter(pa.array(~is_imp)), imp])
    n = events.num_rows
    ts = events["ts"].to_numpy()
    return pa.table({
        "user_id": events["user_id"], "item_id": events["item_id"], "event": events["event"],
        "ts": events["ts"], "dwell_s": pc.fill_null(events["dwell_s"], 0.0),
        "day": pa.array(epoch_day(ts)), "kind": pa.array(np.full(n, NEW, np.int8)),
        "pos": pa.array(np.zeros(n, np.int32)), "count": pa.array(np.zeros(n, np.int32)),
    }, schema=log_schema(events.schema.field("user_id").type, events.schema.field("item_id").type))


def carried_rows(state: pa.Table, first_day: int) -> pa.Table:
    """Yesterday's state -> CARRIED / DAY_COUNT / LAST_SEEN / SEEN log rows still inside the window."""
    user_t = state.schema.field("user_id").type
    item_t = state.schema.field("item_ids").type.value_type
    parts = []

    def flat(col: str) -> tuple[np.ndarray, np.ndarray]:
        arr = state[col].combine_chunks()
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.repeat(np.arange(state.num_rows), lengths), lengths

    owner, lengths = flat("item_ids")
    ts = pc.list_flatten(state["ts"]).to_numpy()
    day = epoch_day(ts)
    pos = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = day >= first_day
    parts.append(pa.table({
        "user_id": state["user_id"].take(pa.array(owner[keep])),
        "item_id": pc.list_flatten(state["item_ids"]).filter(pa.array(keep)),
        "event": pc.list_flatten(state["events"]).filter(pa.array(keep)),
        "ts": pa.array(ts[keep]),
        "dwell_s": pc.list_flatten(state["dwell_s"]).filter(pa.array(keep)),
        "day": pa.array(day[keep]), "kind": pa.array(np.full(keep.sum(), CARRIED, np.int8)),
        "pos": pa.array(pos[keep].astype(np.int32)), "count": pa.array(np.zeros(keep.sum(), np.int32)),
    }, schema=log_schema(user_t, item_t)))
    owner, _ = flat("days")
    days = pc.list_flatten(state["days"]).to_numpy()
    keep = days >= first_day
    parts.append(_meta_rows(state["user_id"].take(pa.array(owner[keep])), days[keep],
                            pc.list_flatten(state["counts"]).to_numpy()[keep], DAY_COUNT, item_t))
    last = state["last_day"].to_numpy()
    keep = last >= first_day
    parts.append(_meta_rows(state["user_id"].filter(pa.array(keep)), last[keep],
                            np.zeros(keep.sum(), np.int32), LAST_SEEN, item_t))
    owner, _ = flat("seen_ids")
    days = pc.list_flatten(state["seen_days"]).to_numpy()
    keep = days >= first_day
    parts.append(_meta_rows(state["user_id"].take(pa.array(owner[keep])), days[keep],
                            np.zeros(keep.sum(), np.int32), SEEN, item_t,
                            pc.list_flatten(state["seen_ids"]).filter(pa.array(keep))))
    return pa.concat_tables(parts)


def _meta_rows(users, days: np.ndarray, counts: np.ndarray, kind: int, item_t: pa.DataType,
               items: pa.Array | None = None) -> pa.Table:
    n = len(days)
    return pa.table({
        "user_id": users, "item_id": pa.nulls(n, item_t) if items is None else items,
        "event": pa.array(np.zeros(n, np.int8)),
        "ts": pa.array(np.zeros(n, np.int64)), "dwell_s": pa.array(np.zeros(n, np.float32)),
        "day": pa.array(days.astype(np.int32)), "kind": pa.array(np.full(n, kind, np.int8)),
        "pos": pa.array(np.zeros(n, np.int32)), "count": pa.array(counts.astype(np.int32)),
    }, schema=log_schema(users.type, item_t))


def stat_rows(codes: np.ndarray, counts: np.ndarray, user_t: pa.DataType, item_t: pa.DataType) -> pa.Table:
    """STATS rows: ``event`` a statistic's code, ``count`` its value. Their ``user_id`` is a
    placeholder (0 or ""; the state leaves STATS rows out), not null: a null in the key
    column changes how the hash shuffle hashes that block, and a user's rows from
    blocks with and without nulls would land in different partitions."""
    n = len(codes)
    placeholder = (pa.array(np.zeros(n, np.int64)).cast(user_t) if pa.types.is_integer(user_t)
                   else pa.array([""] * n, user_t))
    return pa.table({
        "user_id": placeholder, "item_id": pa.nulls(n, item_t),
        "event": pa.array(np.asarray(codes, np.int8)), "ts": pa.array(np.zeros(n, np.int64)),
        "dwell_s": pa.array(np.zeros(n, np.float32)), "day": pa.array(np.zeros(n, np.int32)),
        "kind": pa.array(np.full(n, STATS, np.int8)), "pos": pa.array(np.zeros(n, np.int32)),
        "count": pa.array(np.asarray(counts, np.int32)),
    }, schema=log_schema(user_t, item_t))


def _group_lists(t: pa.Table, columns: list[str]) -> pa.Table:
    """One row per user_id with the listed columns aggregated into lists, order kept."""
    agg = t.group_by("user_id", use_threads=False).aggregate([(c, "list") for c in columns])
    return agg.select(["user_id", *[f"{c}_list" for c in columns]]).rename_columns(["user_id", *columns])


def state_block(block: pa.Table, n: int) -> pa.Table:
    """All log rows of some users -> one state row per user (see the module doc)."""
    user_t = block.schema.field("user_id").type
    item_t = block.schema.field("item_id").type
    kind = block["kind"].to_numpy()
    if (kind == STATS).any():
        block = block.filter(pa.array(kind != STATS))
        kind = block["kind"].to_numpy()
    if block.num_rows == 0:
        return state_schema(user_t, item_t).empty_table()
    event = block["event"].to_numpy()
    is_inter = ((kind == NEW) & (event != EventType.IMPRESSION)) | (kind == CARRIED)
    inter = block.filter(pa.array(is_inter)).sort_by(
        [("user_id", "ascending"), ("ts", "ascending"), ("pos", "ascending"),
         ("item_id", "ascending"), ("event", "ascending"), ("dwell_s", "ascending")])
    runs = _merge_runs(inter)

    # day counts: today's new interactions plus the carried counts of earlier days
    new_runs = runs.filter(pc.equal(runs["kind"], NEW)).select(["user_id", "day"])
    counted = pa.concat_tables([
        new_runs.append_column("count", pa.array(np.ones(new_runs.num_rows, np.int32))),
        block.filter(pc.equal(block["kind"], DAY_COUNT)).select(["user_id", "day", "count"]),
    ])
    per_day = counted.group_by(["user_id", "day"], use_threads=False).aggregate([("count", "sum")])
    per_day = pa.table({"user_id": per_day["user_id"], "days": per_day["day"],
                        "counts": per_day["count_sum"].cast(pa.int32())}).sort_by(
        [("user_id", "ascending"), ("days", "ascending")])
    counts = _group_lists(per_day, ["days", "counts"])
    last = block.group_by("user_id", use_threads=False).aggregate([("day", "max")])
    last = pa.table({"user_id": last["user_id"], "last_day": last["day_max"]})

    in_tail = _from_end(runs) <= n
    tail = runs.filter(pa.array(in_tail))
    lists = _group_lists(tail.rename_columns(
        ["item_ids" if c == "item_id" else "events" if c == "event" else c for c in tail.column_names]),
        ["item_ids", "events", "ts", "dwell_s"])
    # the seen set: items of interactions older than the last n (today's and carried ones),
    # each with the last day it was seen
    older = pa.concat_tables([runs.filter(pa.array(~in_tail)).select(["user_id", "item_id", "day"]),
                              block.filter(pc.equal(block["kind"], SEEN)).select(["user_id", "item_id", "day"])])
    older = older.group_by(["user_id", "item_id"], use_threads=False).aggregate([("day", "max")])
    older = pa.table({"user_id": older["user_id"], "seen_ids": older["item_id"],
                      "seen_days": older["day_max"]}).sort_by([("user_id", "ascending"),
                                                               ("seen_ids", "ascending")])
    seen = _group_lists(older, ["seen_ids", "seen_days"])

    last = last.sort_by("user_id")
    users = last["user_id"].combine_chunks()
    schema = state_schema(user_t, item_t)
    cols = []
    for f in schema:
        if f.name in ("user_id", "last_day"):
            col = last[f.name].combine_chunks()
        else:       # users without interactions (only impressions) get empty lists
            src = next(t for t in (lists, counts, seen) if f.name in t.column_names)
            at = pc.index_in(users, value_set=src["user_id"].combine_chunks())
            col = src[f.name].combine_chunks().take(at)
            col = pc.if_else(pc.is_null(at), pa.scalar([], f.type), col)
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _merge_runs(inter: pa.Table) -> pa.Table:
    """Consecutive NEW rows of one user, item and day with rising engagement -> one interaction.

    Click -> play -> complete -> like of one viewing is one interaction that
    keeps the deepest event, the first time and the total dwell; the same item
    again at the same or a lower level is a new one (a rewatch, a re-edit).
    CARRIED rows were merged the night they arrived and stay as they are.
    """
    if inter.num_rows == 0:
        return inter
    users = inter["user_id"].combine_chunks()
    items = inter["item_id"].combine_chunks()
    event = inter["event"].to_numpy()
    day = inter["day"].to_numpy()
    kind = inter["kind"].to_numpy()
    start = np.ones(inter.num_rows, dtype=bool)
    if inter.num_rows > 1:
        same = (pc.equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
                & pc.equal(items[1:], items[:-1]).to_numpy(zero_copy_only=False))
        start[1:] = (~same | (event[1:] <= event[:-1]) | (day[1:] != day[:-1])
                     | (kind[1:] != NEW) | (kind[:-1] != NEW))
    starts = np.flatnonzero(start)
    runs = inter.take(pa.array(starts))
    runs = runs.set_column(runs.schema.get_field_index("event"), "event",
                           pa.array(np.maximum.reduceat(event, starts).astype(np.int8)))
    dwell = inter["dwell_s"].to_numpy().astype(np.float64)
    return runs.set_column(runs.schema.get_field_index("dwell_s"), "dwell_s",
                           pa.array(np.add.reduceat(dwell, starts).astype(np.float32)))


def _from_end(runs: pa.Table) -> np.ndarray:
    """Per row, its place from the end of its user's rows (1 = last; rows sorted by user, then time)."""
    if runs.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    users = runs["user_id"].combine_chunks()
    change = np.ones(runs.num_rows, dtype=bool)
    change[1:] = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
    group = np.cumsum(change) - 1
    ends = np.append(np.flatnonzero(change)[1:], runs.num_rows)
    return ends[group] - np.arange(runs.num_rows)


def build(rows: ray.data.Dataset, n: int, partitions: int) -> ray.data.Dataset:
    """Log rows of any kinds -> one state row per user (hash shuffle on user_id, then one pass)."""
    return rows.repartition(partitions, keys=["user_id"]).map_batches(
        state_block, batch_size=None, batch_format="pyarrow", fn_kwargs={"n": n})


def to_histories(state: pa.Table, vocab: Vocab, n: int, seen_from: int = 0) -> pa.Table:
    """State rows -> model histories: items as ``vocab`` indices (unknown items dropped),
    the last ``n`` known ones, ``n_events`` = interactions in the window, and ``seen``: the
    known items of the seen set last seen on epoch day ``seen_from`` or later (the history's
    own items are seen too; ``features`` adds them)."""
    ids = state["item_ids"].combine_chunks()
    idx = vocab.lookup(pc.list_flatten(ids))
    owner, kept, _ = _last_known(ids, idx > 0, n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=state.num_rows))])
                       .astype(np.int32))
    take = pa.array(kept)

    def col(name: str) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pc.list_flatten(state[name].combine_chunks()).take(take))
    return pa.table({
        "user_id": state["user_id"],
        "items": pa.ListArray.from_arrays(offsets, pa.array(idx[kept])),
        "events": col("events"), "ts": col("ts"), "dwell_s": col("dwell_s"),
        "n_events": pa.array(_list_sums(state["counts"])),
        "seen": _seen_indices(state, vocab, seen_from),
    })


def _last_known(ids: pa.ListArray, known: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's last ``n`` items among the ``known`` ones (a mask over the flattened
    ``ids``): their user, their position in the flattened ids, their place from the end."""
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    owner = np.repeat(np.arange(len(ids)), lengths)
    owner, kept = owner[known], np.flatnonzero(known)
    ends = np.cumsum(np.bincount(owner, minlength=len(ids)))
    from_end = ends[owner] - np.arange(len(owner))
    tail = from_end <= n
    return owner[tail], kept[tail], from_end[tail]


def item_counts(state: pa.Table, n: int, vocab: Vocab | None = None) -> pa.Table:
    """``item_id, count``: every item of the histories ``to_histories(state, vocab, n)``
    gives (every item when ``vocab`` is None: one that will learn them all), with its
    interactions there before each user's last, the one evaluation holds out: what
    training learns from, the vocabulary's popularity."""
    ids = state["item_ids"].combine_chunks()
    flat = pc.list_flatten(ids)
    known = np.ones(len(flat), bool) if vocab is None else vocab.lookup(flat) > 0
    _, kept, from_end = _last_known(ids, known, n)
    return _sum_by_item(pa.table({"item_id": flat.take(pa.array(kept)),
                                  "count": pa.array((from_end > 1).astype(np.int64))}))


def _sum_by_item(t: pa.Table) -> pa.Table:
    return t.group_by("item_id", use_threads=False).aggregate([("count", "sum")]).select(
        ["item_id", "count_sum"]).rename_columns(["item_id", "count"])


def _seen_indices(state: pa.Table, vocab: Vocab, seen_from: int) -> pa.ListArray:
    """The seen set as ``vocab`` indices: unknown items and those seen before ``seen_from`` dropped."""
    ids = state["seen_ids"].combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    owner = np.repeat(np.arange(state.num_rows), lengths)
    idx = vocab.lookup(pc.list_flatten(ids))
    keep = (idx > 0) & (pc.list_flatten(state["seen_days"]).to_numpy() >= seen_from)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=state.num_rows))])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(idx[keep]))


def _list_sums(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(arr).to_numpy().astype(np.int64)
    owner = np.repeat(np.arange(len(arr)), lengths)
    return np.bincount(owner, weights=values, minlength=len(arr)).astype(np.int32)


@dataclass(frozen=True)
class Written:
    """What the one pass over a night's log rows leaves (``write``)."""
    files: tuple[str, ...]       # the state's Parquet files, relative to the run
    users: int
    items: pa.Table              # item_id, count: ``item_counts`` over every user
    stats: pa.Table              # event, count: the STATS rows that rode along


def write(rows: ray.data.Dataset, n: int, partitions: int, run_uri: str,
          vocab: Vocab | None = None) -> Written:
    """Log rows -> the user state written under ``run_uri/user_state/``, in one Ray pass:
    the hash shuffle, then per block merge, write, ``item_counts`` (with ``vocab``, None
    when the vocabulary will learn every item) and the STATS rows, summed on the driver."""
    parts = list(rows.repartition(partitions, keys=["user_id"]).map_batches(
        _write_block, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"n": n, "run_uri": run_uri, "vocab": vocab}).iter_batches(
        batch_size=None, batch_format="pyarrow"))
    if not parts:           # no rows at all (ids of no type: the vocabulary casts them)
        parts = [_summary(pa.table({}), None,
                          pa.table({"item_id": pa.array([], pa.int64()), "count": pa.array([], pa.int64())}),
                          pa.table({"event": pa.array([], pa.int8()), "count": pa.array([], pa.int32())}))]
    summary = pa.concat_tables(parts)
    items = _sum_by_item(pa.table({"item_id": pc.list_flatten(summary["item_ids"]),
                                   "count": pc.list_flatten(summary["item_counts"])}))
    stats = pa.table({"event": pc.list_flatten(summary["stat_events"]),
                      "count": pc.list_flatten(summary["stat_counts"]).cast(pa.int64())})
    return Written(tuple(f for f in summary["file"].to_pylist() if f is not None),
                   int(pc.sum(summary["rows"]).as_py() or 0), items, stats)


def _write_block(block: pa.Table, n: int, run_uri: str, vocab: Vocab | None) -> pa.Table:
    """One shuffled block -> its state rows written as one file -> one summary row."""
    st = state_block(block, n)
    written = write_part(st, run_uri, "user_state")["file"][0].as_py() if st.num_rows else None
    stats = block.filter(pc.equal(block["kind"], STATS)).select(["event", "count"])
    return _summary(st, written, item_counts(st, n, vocab), stats)


def _summary(st: pa.Table, file: str | None, items: pa.Table, stats: pa.Table) -> pa.Table:
    def one(values: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)
    return pa.table({"file": pa.array([file], pa.string()), "rows": pa.array([st.num_rows], pa.int64()),
                     "item_ids": one(items["item_id"]), "item_counts": one(items["count"]),
                     "stat_events": one(stats["event"]), "stat_counts": one(stats["count"])})


def read_files(uris: list[str]) -> ray.data.Dataset:
    """A user state's Parquet files, one read task each, read with pyarrow (as the events
    are): Ray Data's Parquet reader plans each read with a task of its own first, seconds
    of fixed cost twice a night (yesterday's state, then tonight's for the histories)."""
    return ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=max(1, len(uris))).map_batches(
        _read_file, batch_size=1, batch_format="pyarrow")


def _read_file(batch: pa.Table) -> pa.Table:
    fs, path = storage.resolve(batch["uri"][0].as_py())
    return pq.read_table(path, filesystem=fs)


def histories(run_uri: str, files: tuple[str, ...], vocab: Vocab, n: int, seen_from: int) -> ray.data.Dataset:
    """The written state's files streamed into model histories (``to_histories``), lazily:
    each consumer reads them again unless the caller materializes."""
    return read_files([storage.join(run_uri, f) for f in files]).map_batches(
        to_histories, batch_format="pyarrow", fn_kwargs={"vocab": vocab, "n": n, "seen_from": seen_from})
