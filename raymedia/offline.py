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
Nothing is committed: the run's working files (user state, rejects) are removed.

History length: unless the config or an override sets ``data.history_len``, it comes
from the data (``dataset.history_len_from``); with ``checkpoint_uri`` it is the model's own.
"""

from __future__ import annotations

import datetime as dt
import math

from raymedia import checkpoint, models, storage
from raymedia import config as config_mod
from raymedia.dataset import default_catalog, event_days, history_len_from, history_len_overrides, with_history_len

PROTOCOLS = ("leave-last-out", "temporal")


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
    temporal = protocol == "temporal"
    if temporal and len(days) < 2:
        raise ValueError(f"--protocol temporal needs at least two day partitions, {events_uri} has {len(days)}")
    day = days[-1] + dt.timedelta(days=0 if temporal else 1)
    out = out.rstrip("/")
    auto_len = history_len_overrides(config, overrides)
    cfg = config_mod.load(config, [
        *auto_len,
        f"data.events_uri={events_uri}", f"data.catalog_uri={catalog_uri or default_catalog(events_uri)}",
        f"data.lookback_days={(day - days[0]).days}", f"output.uri={out}/work",
        f"output.models_uri={out}/models", f"data.exclude_seen={str(exclude_seen).lower()}",
        f"train.models={','.join(kinds)}", *overrides])
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
        uris = pipeline.train_all(cfg, inputs, pipeline.TrainPlan("full", None, "raymedia evaluate"), secs)
    histories, test_info = inputs.histories, {}
    if temporal:
        histories, test_info = _with_test_day_targets(inputs.histories, events_uri, day, inputs.vocab)
    with pipeline._timed(secs, "evaluate"):
        context = ScoringContext.build(uris, day.isoformat(), inputs.vocab, cfg.data.catalog_uri, inputs.content)
        metrics = ev.evaluate(histories, ev.EvalInputs(context, protocol), cfg)
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


def _with_test_day_targets(histories, events_uri: str, day: dt.date, vocab):
    """Histories of the users active on ``day`` with a ``target`` column: the vocabulary
    index of their first non-impression interaction that day (unknown items dropped)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray

    fs, path = storage.resolve(storage.partition(events_uri, day))
    t = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["user_id", "item_id", "event", "ts"])
    t = t.filter(pc.not_equal(t["event"], "impression")).sort_by([("user_id", "ascending"), ("ts", "ascending")])
    users = t["user_id"].combine_chunks()
    first = np.ones(len(users), dtype=bool)
    if len(users) > 1:
        first[1:] = pc.not_equal(users.slice(1), users.slice(0, len(users) - 1)).to_numpy(zero_copy_only=False)
    t = t.filter(pa.array(first))
    target = vocab.lookup(t["item_id"])
    known = pa.table({"user_id": t["user_id"], "target": pa.array(target)}).filter(pa.array(target > 0))
    ref = ray.put(known)

    def attach(batch: pa.Table) -> pa.Table:
        k = ray.get(ref)
        at = pc.index_in(batch["user_id"], value_set=k["user_id"])
        keep = pc.is_valid(at)
        batch = batch.filter(keep)
        return batch.append_column("target", k["target"].take(pc.drop_null(at)))

    with_targets = histories.map_batches(attach, batch_format="pyarrow").materialize()
    ranked = with_targets.count()
    return with_targets, {"test_day": day.isoformat(), "test_day_users": int(len(t)),
                          "test_day_unknown_items": int(len(t) - known.num_rows),
                          "test_day_without_history": int(known.num_rows - ranked)}


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
