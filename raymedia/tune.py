"""Hyper-parameter search with Ray Tune on the validation split (``raymedia tune``).

Each trial is one training run of one model (``train.train``: the same Ray Train
loop, rows and early stopping as the nightly job) with a sampled config. Its
per-epoch validation NDCG@10 (every user's second-to-last event, held out of
training) reaches Tune through ``TuneReportCallback``; ASHA stops trials that fall
behind, so the budget goes to the promising ones. Trials run in parallel as far as
the cluster's CPUs allow. The test events (each user's last) are never used. The
result is the config the search started from with the best trial's values, as YAML
that ``--config`` accepts.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import ray
import yaml

from raymedia import config as config_mod
from raymedia import storage

log = logging.getLogger(__name__)
KINDS = {"sequence": "sequence", "two-tower": "two_tower", "two_tower": "two_tower"}
TRIAL_CPU = 0.01        # Tune needs a non-empty request for the trial's driver process


def search_space(kind: str) -> dict:
    """What a search varies, per model (``section.field`` -> a Tune domain)."""
    from ray import tune
    common = {"train.lr": tune.loguniform(3e-4, 3e-3), "train.batch_size": tune.choice([64, 128, 256]),
              "train.weight_decay": tune.loguniform(1e-6, 1e-2)}
    if kind == "sequence":
        return {**common, "sequence.dim": tune.choice([32, 64, 128]), "sequence.layers": tune.choice([1, 2, 3]),
                "sequence.dropout": tune.uniform(0.1, 0.5)}
    return {**common, "two_tower.dim": tune.choice([32, 64, 128]),
            "two_tower.temperature": tune.loguniform(0.02, 0.2)}


@dataclass(frozen=True)
class Trial:
    params: dict            # section.field -> value
    val_ndcg: float | None  # best validation NDCG@10 it reached
    epochs: int             # epochs it trained before ASHA, early stopping or the budget ended it


@dataclass(frozen=True)
class TuneResult:
    kind: str
    best: Trial
    trials: tuple[Trial, ...]
    config_uri: str         # the best config as YAML


def _with(data: dict, params: dict) -> dict:
    """A copy of config ``data`` with ``section.field`` values set (typed, not parsed from text)."""
    data = config_mod.apply_overrides(data, [])
    for key, value in params.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value.item() if hasattr(value, "item") else value
    return data


def _trial(params: dict, base: dict, kind: str, histories, vocab, day: dt.date, models_uri: str) -> None:
    """One Tune trial: a full training run whose epochs Tune sees as they end."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raymedia import train
    trial_id = tune.get_context().get_trial_id()
    cfg = config_mod.from_dict(_with(base, {**params, "output.models_uri": storage.join(models_uri, trial_id)}))
    train.train(kind, cfg, histories, vocab, day, f"tune-{trial_id}", callbacks=[TuneReportCallback()])


def tune(events_uri: str, kind: str, budget: int, out: str, catalog_uri: str | None = None,
         config: str | None = None, overrides: list[str] | tuple = (), seed: int = 0) -> TuneResult:
    """Search ``kind``'s training config with ``budget`` trials on the events under
    ``events_uri`` (leave-last-out split, as ``raymedia evaluate``); the best config
    goes to ``out``/best.yaml."""
    from ray import tune as rtune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from raymedia import pipeline, quality
    from raymedia.data import read

    if kind not in KINDS:
        raise ValueError(f"--model must be sequence or two-tower, got {kind!r}")
    if budget < 1:
        raise ValueError(f"--budget must be >= 1 trial, got {budget}")
    kind, out = KINDS[kind], out.rstrip("/")
    mine = config_mod.apply_overrides(yaml.safe_load(storage.read_bytes(config)) or {} if config else {},
                                      list(overrides))
    config_mod.from_dict(mine)                                  # a bad --config / --set fails here
    days = quality.event_days(events_uri)
    day = days[-1] + dt.timedelta(days=1)
    cfg = config_mod.from_dict(config_mod.apply_overrides(mine, [
        f"data.events_uri={events_uri}", f"data.catalog_uri={catalog_uri or quality.default_catalog(events_uri)}",
        f"data.lookback_days={(day - days[0]).days}", f"output.uri={out}/work", f"train.models={kind}"]))
    storage.check_writable(out, "--out")
    inputs = pipeline.prepare(cfg, day, storage.new_run_id(), {})
    inputs.vocab.popularity = read.item_counts(inputs.histories, inputs.vocab.size, holdout_last=True)
    # a trial's own process is a light driver (TRIAL_CPU); its Ray Train workers hold the CPUs;
    # one CPU stays free for the Ray Data tasks that feed every trial's workers
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker + TRIAL_CPU
    parallel = max(1, int((ray.cluster_resources().get("CPU", 2) - 1) // per_trial))
    fs, path = storage.resolve(storage.join(out, "_tune"))
    fs.create_dir(path, recursive=True)
    tuner = rtune.Tuner(
        rtune.with_resources(rtune.with_parameters(
            _trial, base=cfg.to_dict(), kind=kind, histories=inputs.histories.materialize(),
            vocab=inputs.vocab, day=day, models_uri=storage.join(out, "trials")), {"CPU": TRIAL_CPU}),
        param_space=search_space(kind),
        tune_config=rtune.TuneConfig(
            metric="val_ndcg", mode="max", num_samples=budget, max_concurrent_trials=parallel,
            search_alg=BasicVariantGenerator(random_state=seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                                    grace_period=min(3, cfg.train.epochs), reduction_factor=3)),
        run_config=rtune.RunConfig(name=f"{kind}-{storage.new_run_id()}", storage_path=path,
                                   storage_filesystem=None if storage.is_local(out) else fs, verbose=0))
    log.info("tuning %s: %d trial(s), %d at a time, ASHA on validation NDCG@10", kind, budget, parallel)
    grid = tuner.fit()
    trials = []
    for r in grid:
        hist = r.metrics_dataframe
        scored = hist["val_ndcg"].dropna() if hist is not None and "val_ndcg" in hist else []
        trials.append(Trial(dict(r.config), float(max(scored)) if len(scored) else None, len(scored)))
    ranked = sorted((t for t in trials if t.val_ndcg is not None), key=lambda t: -t.val_ndcg)
    if not ranked:
        raise RuntimeError(f"no tuning trial of {kind} finished an epoch: {[str(r.error) for r in grid if r.error]}")
    best = ranked[0]
    best_config = _with(mine, best.params)
    config_mod.from_dict(best_config)                           # what --config will accept
    config_uri = storage.join(out, "best.yaml")
    storage.write_bytes(config_uri, (f"# raymedia tune: best of {budget} {kind} trial(s) on {events_uri}, "
                                     f"validation NDCG@10 {best.val_ndcg:.4f}\n"
                                     + yaml.safe_dump(best_config, sort_keys=True)).encode())
    storage.write_json(storage.join(out, "trials.json"), [t.__dict__ for t in ranked])
    return TuneResult(kind, best, tuple(ranked), config_uri)
