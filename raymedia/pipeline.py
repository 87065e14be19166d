"""One run for day D, as data flowing: read -> histories -> train -> score -> write ->
evaluate -> commit. The jobs and the CLI are thin wrappers over ``run_day``."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import ray

from raymedia import checkpoint, features, schema, storage
from raymedia.config import Config
from raymedia.data import read
from raymedia.data.vocab import Vocab
from raymedia.evaluate import evaluate
from raymedia.score import Scorer, write_batch
from raymedia.train import train

log = logging.getLogger(__name__)
MODEL_KINDS = ("two_tower", "sequence")


def init_ray(cfg: Config) -> None:
    """Join the configured cluster (or the one ``ray job submit`` runs us on), else start one.

    Non-secret storage settings travel to the workers in the job's runtime_env.
    """
    env = storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus,
                 logging_level=logging.WARNING, include_dashboard=None,
                 configure_logging=True, log_to_driver=True,
                 runtime_env={"env_vars": env} if env else None)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    ctx.print_on_execution_start = False


@dataclass
class RunResult:
    dt: str
    run_id: str
    commit_uri: str
    model_uris: dict[str, str]
    metrics: dict
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(seconds: dict, stage: str):
    t0 = time.perf_counter()
    log.info("stage %s ...", stage)
    yield
    seconds[stage] = round(time.perf_counter() - t0, 2)
    log.info("stage %s done in %.1fs", stage, seconds[stage])


@dataclass
class Inputs:
    """What the read stages produce for a day: the histories, their vocabulary, the counts."""
    day: dt.date
    run_id: str
    run_uri: str
    partitions: list[str]
    vocab: Vocab
    histories: ray.data.Dataset
    stats: dict


def run_uri(cfg: Config, day: dt.date, run_id: str) -> str:
    return storage.join(storage.partition(cfg.output.uri, day), f"run={run_id}")


def prepare(cfg: Config, day: dt.date, vocab_from: str | None, run_id: str, secs: dict) -> Inputs:
    """Read the window before ``day``, validate it and build each user's history.

    ``vocab_from`` is the model whose vocabulary scoring must use; None builds a
    new vocabulary from catalog + logs (training). Rejected rows and counts are
    written under the run's (uncommitted) directory.
    """
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    partitions = read.event_partitions(cfg.data.events_uri, read.window(day, cfg.data.lookback_days))
    read.preflight(partitions)
    init_ray(cfg)
    out = run_uri(cfg, day, run_id)
    with _timed(secs, "read"):
        events = read.read_events(cfg.data.events_uri, partitions)
    with _timed(secs, "vocabulary"):
        if vocab_from is None:
            vocab = Vocab.build(read.read_catalog(cfg.data.catalog_uri), read.distinct_items(events))
        else:
            vocab = Vocab.load(storage.join(vocab_from, checkpoint.VOCAB))
    with _timed(secs, "histories"):
        # one extra event so evaluation can hold the last one out and keep history_len inputs
        histories = read.build_histories(events, vocab, cfg.data.history_len + 1,
                                         cfg.score.shuffle_partitions, cfg.data.events_uri,
                                         out).materialize()
    stats = read.read_stats(out)
    share = stats["rejected_rows"] / max(stats["input_rows"], 1)
    log.info("read %d rows: %d valid, %d rejected %s, %d impressions, %d of unknown items",
             stats["input_rows"], stats["valid_rows"], stats["rejected_rows"], stats["rejected"],
             stats["impressions"], stats["unknown_item"])
    if share > cfg.data.max_reject_fraction:
        raise schema.RejectThresholdExceeded(
            f"dt={day}: {share:.1%} of {stats['input_rows']} input rows broke the events contract "
            f"({', '.join(f'{k} {v}' for k, v in sorted(stats['rejected'].items()))}), above "
            f"data.max_reject_fraction={cfg.data.max_reject_fraction}; nothing was committed; "
            f"the rejected rows are in {storage.join(out, 'rejects')}")
    return Inputs(day, run_id, out, partitions, vocab, histories, stats)


def train_all(cfg: Config, inputs: Inputs, secs: dict) -> dict[str, str]:
    """Train the configured models on the inputs; returns the published model URIs."""
    with _timed(secs, "train"):
        inputs.vocab.popularity = read.item_counts(inputs.histories, inputs.vocab.size, holdout_last=True)
        version = f"{inputs.day:%Y%m%d}-{inputs.run_id}"
        return {kind: train(kind, cfg, inputs.histories, inputs.vocab, inputs.day, version)
                for kind in cfg.model_names()}


def train_day(cfg: Config, day: dt.date) -> dict[str, str]:
    """Train only (``jobs/train.py``); the run's rejects stay in its uncommitted directory."""
    secs: dict[str, float] = {}
    return train_all(cfg, prepare(cfg, day, None, storage.new_run_id(), secs), secs)


def scoring_models(cfg: Config, day: dt.date, version: str | None = None,
                   point_in_time: bool = False) -> dict[str, str]:
    """Which published models score ``day``: a named version, the newest trained
    before ``day`` (backfills), or simply the latest (nightly)."""
    def pick(kind: str) -> str:
        if version:
            return checkpoint.version_uri(cfg.output.models_uri, kind, version)
        if point_in_time:
            return checkpoint.as_of(cfg.output.models_uri, kind, day.isoformat())
        return checkpoint.latest(cfg.output.models_uri, kind)
    return {kind: pick(kind) for kind in MODEL_KINDS}


def run_day(cfg: Config, day: dt.date, train_models: bool = True, run_id: str | None = None,
            models: dict[str, str] | None = None) -> RunResult:
    """Score every user active in the look-back window before ``day`` and commit day ``day``.

    Trains first when ``train_models``; otherwise scores with ``models`` (default: latest).
    """
    run_id = run_id or storage.new_run_id()
    base_generation = storage.generation(cfg.output.uri, day)
    secs: dict[str, float] = {}
    models = None if train_models else (models or scoring_models(cfg, day))
    inputs = prepare(cfg, day, None if train_models else models["sequence"], run_id, secs)
    model_uris = train_all(cfg, inputs, secs) if train_models else dict(models)
    for kind in MODEL_KINDS:
        model_uris.setdefault(kind, checkpoint.latest(cfg.output.models_uri, kind))
    day_uri = storage.partition(cfg.output.uri, day)
    generated_at = dt.datetime.now(dt.timezone.utc).isoformat()
    versions = {k: storage.read_json(storage.join(u, checkpoint.META))["version"]
                for k, u in model_uris.items()}
    gpu = ray.cluster_resources().get("GPU", 0) > 0
    with _timed(secs, "score"):
        recommendable = inputs.vocab.recommendable(read.read_catalog(cfg.data.catalog_uri),
                                                   features.day_start_us(day))
        scored = inputs.histories.map_batches(
            Scorer, fn_constructor_kwargs={"model_uris": model_uris, "cfg": cfg, "asof": day.isoformat(),
                                           "recommendable": recommendable},
            batch_size=cfg.score.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.score.concurrency),
            num_cpus=cfg.score.num_cpus, num_gpus=1 if gpu else 0)
        written = scored.map_batches(
            write_batch, batch_size=cfg.score.rows_per_file, batch_format="pyarrow",
            fn_kwargs={"run_uri": inputs.run_uri, "model_version": versions[cfg.score.recommender],
                       "generated_at": generated_at}).take_all()
    files: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    for w in written:
        files.setdefault(w["table"], []).append(f"run={run_id}/{w['file']}")
        rows[w["table"]] = rows.get(w["table"], 0) + int(w["rows"])
    rejects = storage.list_files(storage.join(inputs.run_uri, "rejects"))
    if rejects:
        files["rejects"] = [u[len(day_uri) + 1:] for u in rejects]
    rows["rejects"] = inputs.stats["rejected_rows"]
    metrics: dict = {}
    if cfg.eval.enabled:
        with _timed(secs, "evaluate"):
            metrics = evaluate(inputs.histories, model_uris, cfg, day.isoformat())
            storage.write_json(storage.join(inputs.run_uri, "metrics.json"), metrics)
            files["metrics"] = [f"run={run_id}/metrics.json"]
    _remove_unlisted(inputs.run_uri, day_uri, files)
    c = storage.Commit(dt=day.isoformat(), run_id=run_id, files={k: sorted(v) for k, v in files.items()},
                       rows=rows, model_versions=versions, input_partitions=inputs.partitions,
                       config_hash=cfg.hash(), created_at=generated_at,
                       details={"input": inputs.stats})
    with _timed(secs, "commit"):
        try:
            commit_uri = storage.commit(cfg.output.uri, c, base_generation)
        except storage.CommitConflict:
            storage.delete_dir(inputs.run_uri)
            raise
    counts = {"users_scored": rows.get("recommendations", 0), "vocab_items": inputs.vocab.size - 1,
              "input_partitions": len(inputs.partitions), "input_rows": inputs.stats["input_rows"],
              "rejected_rows": inputs.stats["rejected_rows"]}
    return RunResult(day.isoformat(), run_id, commit_uri, model_uris, metrics, counts, secs)


def _remove_unlisted(run_uri: str, day_uri: str, files: dict[str, list[str]]) -> None:
    """Delete files a retried batch left behind, so the run holds exactly what it commits."""
    listed = {storage.join(day_uri, f) for fs in files.values() for f in fs}
    for uri in storage.list_files(run_uri):
        if uri not in listed:
            log.info("removing unlisted file %s", uri)
            fs, path = storage.resolve(uri)
            fs.delete_file(path)


def summary_dict(result: RunResult) -> dict:
    return asdict(result)


def backfill(cfg: Config, start: dt.date, end: dt.date, overwrite: bool = False,
             model_version: str | None = None, train_models: bool = False,
             echo=print) -> list[RunResult]:
    """Run days ``start..end`` in order, point in time; committed days are skipped
    unless ``overwrite``, so a killed backfill started again resumes where it stopped."""
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    if not days:
        raise ValueError(f"--end {end} is before --start {start}")
    results, t_start = [], time.perf_counter()
    for i, day in enumerate(days, 1):
        if not overwrite and storage.read_commit(cfg.output.uri, day) is not None:
            echo(f"[{i}/{len(days)}] dt={day} already committed, skipped")
            continue
        t0 = time.perf_counter()
        models = None if train_models else scoring_models(cfg, day, model_version, point_in_time=True)
        r = run_day(cfg, day, train_models=train_models, models=models)
        results.append(r)
        echo(f"[{i}/{len(days)}] dt={day} committed {r.counts['users_scored']} users "
             f"from {r.counts['input_rows']} rows in {time.perf_counter() - t0:.0f}s "
             f"(model {r.model_uris['sequence'].rsplit('/', 1)[1]}); {len(days) - i} day(s) left, "
             f"{time.perf_counter() - t_start:.0f}s so far")
    return results
