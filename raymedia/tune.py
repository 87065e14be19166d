"""Hyper-parameter search with Ray Tune on the validation split (``raymedia tune``).

Each trial is one training run of one model (``train.train``: the same Ray Train
loop, rows and early stopping as the nightly job and ``raymedia evaluate``) with a
sampled config. Its per-epoch validation NDCG@10 (each user's second-to-last event,
held out of training) reaches Tune through ``TuneReportCallback`` (Ray Train V2: a
callback of the training run started inside the trial); ASHA stops trials that fall
behind, so the budget goes to the promising ones. Trials run in parallel as far as
the cluster's CPUs allow (``parallel`` sets it). The test events (each user's last)
are never used: training rows end before them and validation ranks the one before.

The search space is centred on the training defaults (``search_space``); a field the
user fixes with ``--set`` is not searched. The result is the user's own config
(``--config`` plus ``--set``) with the best trial's values, as YAML that ``--config``
accepts; the data locations of the search are not in it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass

import ray
import yaml

from raymedia import config as config_mod
from raymedia import dataset, models, storage

log = logging.getLogger(__name__)
# The trial's own process is a light driver: it asks for no CPU (a fraction would leave
# less than the whole CPU a Ray Data task needs, and the trial's data would never run),
# only for a token of memory (Tune refuses an empty request).
TRIAL_RESOURCES = {"CPU": 0, "memory": 1 << 20}
METRIC = "val_ndcg"


def search_space(kind: str) -> dict:
    """What a search varies, per model (``section.field`` -> a Tune domain)."""
    from ray import tune
    common = {"train.lr": tune.loguniform(1e-3, 1e-2), "train.batch_size": tune.choice([8, 16, 32, 64]),
              "train.weight_decay": tune.loguniform(1e-6, 1e-1)}
    if kind == "sequence":
        return {**common, "sequence.dim": tune.choice([32, 64, 128]), "sequence.layers": tune.choice([1, 2, 3]),
                "sequence.dropout": tune.uniform(0.1, 0.5)}
    return {**common, "two_tower.dim": tune.choice([32, 64, 128]),
            "two_tower.temperature": tune.loguniform(0.02, 0.2)}


@dataclass(frozen=True)
class Trial:
    params: dict            # section.field -> value
    val_ndcg: float | None  # best validation NDCG@10 it reached (None: no epoch finished)
    epochs: int             # epochs it trained before ASHA, early stopping or the budget ended it
    error: str | None = None


@dataclass(frozen=True)
class TuneResult:
    kind: str
    best: Trial
    trials: tuple[Trial, ...]   # best first; trials that finished no epoch last
    config_uri: str             # the best config as YAML


def _with(data: dict, params: dict) -> dict:
    """A copy of config ``data`` with ``section.field`` values set (typed, not parsed from text)."""
    data = config_mod.apply_overrides(data, [])
    for key, value in params.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value.item() if hasattr(value, "item") else value
    return data


def _trial(params: dict, base: dict, kind: str, histories, vocab, day: dt.date, models_uri: str,
           content=None) -> None:
    """One Tune trial: a full training run whose epochs Tune sees as they end."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raymedia import train
    trial_id = tune.get_context().get_trial_id()
    cfg = config_mod.from_dict(_with(base, {**params, "output.models_uri": storage.join(models_uri, trial_id)}))
    train.train([kind], cfg, histories, vocab, day, f"tune-{trial_id}", callbacks=[TuneReportCallback()],
                content=content)


def default_parallel(cfg) -> int:
    """Trials at once: each trial's Ray Train workers hold their CPUs (GPUs); one CPU stays
    free for the Ray Data tasks that feed every trial's workers."""
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker
    n = int((ray.cluster_resources().get("CPU", 2) - 1) // per_trial)
    from raymedia.cluster import cluster_gpus
    from raymedia.train import use_gpu
    if use_gpu(cfg):
        n = min(n, int(cluster_gpus() // cfg.train.num_workers))
    return max(1, n)


def _fixed(overrides) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides if "=" in o}


def tune(events_uri: str, kind: str, budget: int, out: str, catalog_uri: str | None = None,
         config: str | None = None, overrides: list[str] | tuple = (), seed: int = 0,
         parallel: int | None = None) -> TuneResult:
    """Search ``kind``'s training config with ``budget`` trials on the events under
    ``events_uri`` (leave-last-out split, as ``raymedia evaluate``); the best config
    goes to ``out``/best.yaml, every trial to ``out``/trials.json."""
    from ray import tune as rtune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from raymedia import pipeline

    kind = models.kind(kind)
    if budget < 1:
        raise ValueError(f"--budget must be >= 1 trial, got {budget}")
    if parallel is not None and parallel < 1:
        raise ValueError(f"--parallel must be >= 1 trial, got {parallel}")
    out = out.rstrip("/")
    mine = config_mod.apply_overrides(config_mod.load_raw(config) if config else {}, list(overrides))
    config_mod.from_dict(mine)                                  # a bad --config / --set fails here
    fixed = _fixed(overrides)
    space = {k: v for k, v in search_space(kind).items() if k not in fixed}
    if not space:
        raise ValueError(f"--set fixes every searched field of {kind} ({', '.join(search_space(kind))}); "
                         "nothing left to tune")
    days = dataset.event_days(events_uri)
    day = days[-1] + dt.timedelta(days=1)
    auto_len = dataset.history_len_overrides(config, overrides)
    cfg = config_mod.from_dict(config_mod.apply_overrides(mine, [
        *auto_len,
        f"data.events_uri={events_uri}", f"data.catalog_uri={catalog_uri or dataset.default_catalog(events_uri)}",
        f"data.lookback_days={(day - days[0]).days}", f"output.uri={out}/work", f"train.models={kind}"]))
    storage.check_writable(out, "--out")
    inputs = pipeline.prepare(cfg, day, storage.new_run_id())         # histories materialized
    if auto_len:                                                # as raymedia evaluate: from the data
        cfg = dataset.with_history_len(cfg, dataset.history_len_from(inputs.histories))
    histories = inputs.histories
    parallel = parallel or default_parallel(cfg)
    fs, path = storage.resolve(storage.join(out, "_tune"))
    fs.create_dir(path, recursive=True)
    tuner = rtune.Tuner(
        rtune.with_resources(rtune.with_parameters(
            _trial, base=cfg.to_dict(), kind=kind, histories=histories,
            vocab=inputs.vocab, day=day, models_uri=storage.join(out, "trials"),
            content=inputs.content), TRIAL_RESOURCES),
        param_space=space,
        tune_config=rtune.TuneConfig(
            metric=METRIC, mode="max", num_samples=budget,
            # the limit goes to the generator itself: Tune ignores max_concurrent_trials
            # when a BasicVariantGenerator is passed (and then starts every trial at once)
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=parallel),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                                    grace_period=min(3, cfg.train.epochs), reduction_factor=3)),
        run_config=rtune.RunConfig(name=f"{kind}-{storage.new_run_id()}", storage_path=path,
                                   storage_filesystem=None if storage.is_local(out) else fs, verbose=0))
    log.info("tuning %s: %d trial(s), %d at a time, ASHA on validation NDCG@10 (history_len %d)",
             kind, budget, parallel, cfg.data.history_len)
    try:
        grid = tuner.fit()
    finally:
        storage.delete_dir(inputs.run_uri)
    trials = []
    for r in grid:
        hist = r.metrics_dataframe
        scored = hist[METRIC].dropna() if hist is not None and METRIC in hist else []
        scored = [float(v) for v in scored if math.isfinite(v)]
        trials.append(Trial(dict(r.config), max(scored) if scored else None, len(scored),
                            None if r.error is None else str(r.error).splitlines()[0][:500]))
    trials.sort(key=lambda t: (t.val_ndcg is None, -(t.val_ndcg or 0.0)))
    best = trials[0] if trials else None
    if best is None or best.val_ndcg is None:
        raise RuntimeError(f"no tuning trial of {kind} finished an epoch: {[t.error for t in trials]}")
    best_config = _with(mine, best.params)
    config_mod.from_dict(best_config)                           # what --config will accept
    config_uri = storage.join(out, "best.yaml")
    storage.write_bytes(config_uri, (f"# raymedia tune: best of {budget} {kind} trial(s) on "
                                     f"{storage.redact(events_uri)}, validation NDCG@10 {best.val_ndcg:.4f}\n"
                                     + yaml.safe_dump(best_config, sort_keys=True)).encode())
    storage.write_json(storage.join(out, "trials.json"), [t.__dict__ for t in trials])
    return TuneResult(kind, best, tuple(trials), config_uri)
