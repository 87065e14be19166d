"""The evaluation protocol as one command: read a data set, train (or load) the models,
rank every held-out item with every model and baseline, write metrics.json and
report.html (``raymedia evaluate``; ``benchmarks/quality.py``).

Protocols:
- ``leave-last-out`` on the whole data set: the run's day D is the day after the last
  event partition and the window covers every partition, so each user's last interaction
  is the test item, the second-to-last the validation item (early stopping), the rest train.
- ``temporal`` (global temporal split): the test day T is the last partition; the models
  train on every day before T, and each user active on T who has a history before it is
  ranked on their first interaction of day T from that whole history. Users new on T and
  items new on T cannot be ranked by anyone and are counted, not evaluated.
- ``cold-items``: the split of ``temporal``, and the items whose first interaction (any
  event but an impression) falls on T are the targets: each user who took such a cold item
  on T is ranked once per cold item taken, from their history before T, over every item
  the catalog has published by the end of T (the user's other items of T masked). Two
  variants of each model train side by side on the same inputs: id-only (``kind``: a new
  item gets the mean of its category, ``models.grow_items``) and content-aware
  (``kind+content``, ``content.enabled=on``; when the catalog has content), next to the
  category-popularity baseline. The models' vocabulary is the one of T's start; the items
  published on T are appended as a scoring run appends items published since its model.
Nothing is committed: the run's working files (user state, rejects) are removed.

History length: unless the config or an override sets ``data.history_len``, it comes
from the data (``dataset.history_len_from``); with ``checkpoint_uri`` it is the model's own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymedia import checkpoint, models, storage
from raymedia import config as config_mod
from raymedia.dataset import default_catalog, event_days, history_len_from, history_len_overrides, with_history_len

PROTOCOLS = ("leave-last-out", "temporal", "cold-items")
CONTENT = "+content"            # the cold-item protocol's content-aware variant of a model kind


def run(events_uri: str, out: str, model: str = "all", exclude_seen: bool = True,
        catalog_uri: str | None = None, checkpoint_uri: str | None = None,
        protocol: str = "leave-last-out", config: str | None = None,
        overrides: list[str] | tuple = ()) -> dict:
    """Run the protocol; returns the metrics (also written to ``out``/metrics.json with
    ``out``/report.html next to it). ``checkpoint_uri`` is a models root (the latest
    version of each kind) or one published model version; without it the models are
    trained on the data set first, into ``out``/models."""
    from raymedia import evaluate as ev
    from raymedia import pipeline, report
    from raymedia.inference import ScoringContext

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    kinds = list(models.KINDS) if model == "all" else [models.kind(model)]
    days = event_days(events_uri)
    temporal, cold = protocol == "temporal", protocol == "cold-items"
    if (temporal or cold) and len(days) < 2:
        raise ValueError(f"--protocol {protocol} needs at least two day partitions, {events_uri} has {len(days)}")
    if cold and checkpoint_uri:
        raise ValueError("--protocol cold-items trains the id-only and the content-aware models side by "
                         "side on the same split; it takes no --checkpoint")
    day = days[-1] + dt.timedelta(days=0 if temporal or cold else 1)
    out = out.rstrip("/")
    auto_len = history_len_overrides(config, overrides)
    cfg = config_mod.load(config, [
        *auto_len,
        f"data.events_uri={events_uri}", f"data.catalog_uri={catalog_uri or default_catalog(events_uri)}",
        f"data.lookback_days={(day - days[0]).days}", f"output.uri={out}/work",
        f"output.models_uri={out}/models", f"data.exclude_seen={str(exclude_seen).lower()}",
        f"train.models={','.join(kinds)}", *overrides, *(['content.enabled="on"'] if cold else [])])
    secs: dict[str, float] = {}
    run_id = storage.new_run_id()
    if checkpoint_uri:
        uris = {k: _model_uri(checkpoint_uri, k) for k in kinds}
        base = checkpoint.load_vocab(next(iter(uris.values())))
        inputs = pipeline.prepare(cfg, day, run_id, base, learn_items=False)
        secs.update(inputs.seconds)
        if auto_len:
            cfg = with_history_len(cfg, checkpoint.read_meta(next(iter(uris.values()))).max_len)
    else:
        storage.check_writable(cfg.output.models_uri, "--out")
        inputs = pipeline.prepare(cfg, day, run_id)
        secs.update(inputs.seconds)
        if auto_len:
            cfg = with_history_len(cfg, history_len_from(inputs.histories))
        train = pipeline.train_all if not cold else _train_variants
        uris = train(cfg, inputs, pipeline.TrainPlan("full", None, "raymedia evaluate"), secs)
    histories, test_info = inputs.histories, {}
    context = ScoringContext.build(uris, day.isoformat(), inputs.vocab, cfg.data.catalog_uri, inputs.content)
    recommendable = None
    if temporal:
        histories, test_info = _with_test_day_targets(inputs.histories, events_uri, day, inputs.vocab)
    if cold:
        context, recommendable = _published_by_end_of(context, cfg, day)
        histories, test_info = _with_cold_targets(inputs.histories, events_uri, days, context.vocab,
                                                  inputs.vocab.size)
        test_info["cold_items"]["variants"] = sorted(uris)
    with pipeline._timed(secs, "evaluate"):
        metrics = ev.evaluate(histories, ev.EvalInputs(context, protocol, recommendable=recommendable), cfg)
    metrics.update(test_info)
    metrics["training"] = {k: list(checkpoint.read_meta(u).history) for k, u in uris.items()}
    metrics["models_uris"] = uris
    metrics["data"] = {"events_uri": storage.redact(events_uri), "days": len(days),
                       "first_day": days[0].isoformat(), "last_day": days[-1].isoformat(),
                       "items": int(inputs.vocab.size - 1)}
    metrics["history_len"] = cfg.data.history_len
    metrics["seconds"] = secs
    storage.delete_dir(inputs.run_uri)
    storage.write_json(storage.join(out, "metrics.json"), _finite(metrics))
    storage.write_bytes(storage.join(out, "report.html"), report.render(metrics).encode())
    return metrics


def _read_day(events_uri: str, day: dt.date, columns: list[str]) -> pa.Table:
    import pyarrow.dataset as pads
    fs, path = storage.resolve(storage.partition(events_uri, day))
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)


def _taken(t: pa.Table) -> pa.Table:
    """The rows that are interactions (every event but an impression)."""
    return t.filter(pc.not_equal(t["event"], "impression"))


def join_targets(batch: pa.Table, targets: pa.Table) -> pa.Table:
    """The rows of ``batch`` (one per user) once per row of ``targets`` with that user
    (``user_id`` first, then the columns to append), in the order of ``targets``: a user
    with several targets is ranked once for each; users of the batch without one drop out."""
    at = pc.index_in(targets["user_id"], value_set=batch["user_id"])
    keep = pc.is_valid(at)
    rows = batch.take(pc.drop_null(at))
    for name in targets.column_names[1:]:
        rows = rows.append_column(name, targets[name].filter(keep))
    return rows


def _with_targets(histories, targets: pa.Table):
    """``join_targets`` over every batch of the histories; returns them and their count."""
    import ray
    ref = ray.put(targets)
    with_targets = histories.map_batches(lambda batch: join_targets(batch, ray.get(ref)),
                                         batch_format="pyarrow").materialize()
    return with_targets, with_targets.count()


def _with_test_day_targets(histories, events_uri: str, day: dt.date, vocab):
    """Histories of the users active on ``day`` with a ``target`` column: the vocabulary
    index of their first non-impression interaction that day (unknown items dropped)."""
    t = _taken(_read_day(events_uri, day, ["user_id", "item_id", "event", "ts"]))
    t = t.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    users = t["user_id"].combine_chunks()
    first = np.ones(len(users), dtype=bool)
    if len(users) > 1:
        first[1:] = pc.not_equal(users.slice(1), users.slice(0, len(users) - 1)).to_numpy(zero_copy_only=False)
    t = t.filter(pa.array(first))
    target = vocab.lookup(t["item_id"])
    known = pa.table({"user_id": t["user_id"], "target": pa.array(target)}).filter(pa.array(target > 0))
    with_targets, ranked = _with_targets(histories, known)
    return with_targets, {"test_day": day.isoformat(), "test_day_users": int(len(t)),
                          "test_day_unknown_items": int(len(t) - known.num_rows),
                          "test_day_without_history": int(known.num_rows - ranked)}


def cold_items(earlier: pa.Table, test: pa.Table) -> pa.Array:
    """Items taken in the test period (``test``: item_id, event) that no earlier event but
    an impression touched (``earlier``: item_id, event), sorted."""
    warm = _taken(earlier)["item_id"]
    taken = pc.unique(_taken(test)["item_id"].combine_chunks())
    return pc.filter(taken, pc.invert(pc.is_in(taken, value_set=warm.combine_chunks()))).sort()


def cold_targets(earlier: pa.Table, test: pa.Table) -> pa.Table:
    """The cold-item protocol's targets: one row per user and cold item (``cold_items``)
    the user took in the test period (``test``: user_id, item_id, event, ts), in the order
    the user first took them, with ``taken``: every item the user took in the period (the
    user's other items are masked when one target is ranked)."""
    took = _taken(test)
    cold = cold_items(earlier, test)
    first = (took.group_by(["user_id", "item_id"]).aggregate([("ts", "min")])
             .sort_by([("user_id", "ascending"), ("ts_min", "ascending"), ("item_id", "ascending")]))
    pairs = first.filter(pc.is_in(first["item_id"], value_set=cold))
    per_user = took.group_by("user_id").aggregate([("item_id", "distinct")])
    at = pc.index_in(pairs["user_id"], value_set=per_user["user_id"])
    return pa.table({"user_id": pairs["user_id"], "item_id": pairs["item_id"],
                     "taken": per_user["item_id_distinct"].take(at)})


def _with_cold_targets(histories, events_uri: str, days: list[dt.date], vocab, trained_size: int):
    """Histories with one row per cold target of the last day (``cold_targets``): ``target``
    and ``others`` (the user's other items that day) as vocabulary indices. Targets the
    vocabulary lacks (not in the catalog) are counted and dropped; ``published_before`` counts
    the targets in the models' own vocabulary (indices below ``trained_size``: published
    before the day, so the models hold an id row for them that no training example touched)."""
    earlier = pa.concat_tables([_read_day(events_uri, d, ["item_id", "event"]) for d in days[:-1]])
    test = _read_day(events_uri, days[-1], ["user_id", "item_id", "event", "ts"])
    pairs = cold_targets(earlier, test)
    target = vocab.lookup(pairs["item_id"])
    taken = [vocab.lookup(pa.array(items, pairs["item_id"].type)) for items in pairs["taken"].to_pylist()]
    others = pa.array([row[row != t].tolist() for row, t in zip(taken, target)], pa.list_(pa.int64()))
    known = pa.table({"user_id": pairs["user_id"], "target": pa.array(target),
                      "others": others}).filter(pa.array(target > 0))
    with_targets, ranked = _with_targets(histories, known)
    return with_targets, {"test_day": days[-1].isoformat(), "cold_items": {
        "items": int(len(cold_items(earlier, test))), "targets": ranked,
        "users": len(with_targets.unique("user_id")) if ranked else 0,
        "unknown_items": int(len(pairs) - known.num_rows), "without_history": int(known.num_rows - ranked),
        "published_before": int(((target > 0) & (target < trained_size)).sum())}}


def _train_variants(cfg, inputs, plan, secs: dict) -> dict[str, str]:
    """The cold-item protocol's models: each kind id-only (content off), and content-aware as
    ``kind+content`` when the catalog has content; each variant under its own models root."""
    from raymedia import pipeline
    root = cfg.output.models_uri
    id_only = dataclasses.replace(cfg, content=dataclasses.replace(cfg.content, enabled="off"),
                                  output=dataclasses.replace(cfg.output, models_uri=f"{root}/id-only"))
    times: dict[str, float] = {}
    uris = pipeline.train_all(id_only, dataclasses.replace(inputs, content=None), plan, times)
    secs["train_id_only"] = times["train"]
    if inputs.content is not None and inputs.content.has_content.any():
        with_content = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, models_uri=f"{root}/content"))
        content_uris = pipeline.train_all(with_content, inputs, plan, times)
        secs["train_content"] = times["train"]
        uris |= {kind + CONTENT: u for kind, u in content_uris.items()}
    return uris


def _published_by_end_of(context, cfg, day: dt.date):
    """The context and the mask of a scoring run at the end of ``day``: the models'
    vocabulary with the catalog's items published by then appended (as ``Vocab.build``
    appends items published since a model was trained), their content, and what is
    recommendable then. The models' day (``asof``) stays: their inputs are as of ``day``."""
    from raymedia import features
    from raymedia.data import read
    from raymedia.data.vocab import Vocab
    from raymedia.models.content import run_tokens
    catalog = read.read_catalog(cfg.data.catalog_uri)
    end_us = features.day_start_us(day + dt.timedelta(days=1))
    vocab = Vocab.build(catalog, pa.array([], catalog["item_id"].type), end_us, context.vocab)
    content = None if context.content is None else run_tokens(catalog, vocab.item_ids, "on", cfg.content.buckets)
    return dataclasses.replace(context, vocab=vocab, content=content), vocab.recommendable(catalog, end_us)


def _model_uri(uri: str, kind: str) -> str:
    """A published model version, or the latest one of ``kind`` under a models root."""
    if storage.exists(storage.join(uri, checkpoint.META)):
        meta = checkpoint.read_meta(uri)
        if meta.kind != kind:
            raise ValueError(f"--checkpoint {uri} is a {meta.kind} model, not {kind}; "
                             "give the models root to evaluate several models")
        return uri
    return checkpoint.latest(uri, kind)


def _finite(obj):
    """JSON without NaN (not valid JSON): NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
