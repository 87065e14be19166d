"""One run for day D, as data flowing: read -> histories -> train -> score -> write ->
evaluate -> commit. The jobs and the CLI are thin wrappers over ``run_day``."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import ray

from raymedia import checkpoint, features, lists, report, schema, sponsored, storage
from raymedia.config import Config
from raymedia.data import read, state
from raymedia.data.vocab import Vocab
from raymedia.evaluate import EvalInputs, evaluate
from raymedia.inference import ScoringContext, actor_pool
from raymedia.kinds import KINDS as MODEL_KINDS
from raymedia.models.content import CategoryFill, ContentTokens, fill_categories, in_use, run_tokens
from raymedia.rules import ListRules
from raymedia.score import Bidder, Scorer
from raymedia.train import train
from raymedia.writer import RunWriter, reason_counts, sponsored_counts, write_batch

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> None:
    """Join the configured cluster (or the one ``ray job submit`` runs us on), else start one.

    Non-secret storage settings travel to the workers in the job's runtime_env.
    """
    env = storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        sigterm = signal.getsignal(signal.SIGTERM)     # ray.init replaces it with sys.exit(15)
        ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus,
                 logging_level=logging.WARNING, include_dashboard=None,
                 configure_logging=True, log_to_driver=True,
                 runtime_env={"env_vars": env} if env else None)
        if threading.current_thread() is threading.main_thread() and callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)     # the CLI's: one line, exit 143
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
    plan: dict = field(default_factory=dict)       # how the user state was built, how training started
    cleanup: storage.Cleanup | None = None         # best-effort removal after the commit point
    content: dict = field(default_factory=dict)    # what the run scored with of content (``content_info``)
    sponsored: dict = field(default_factory=dict)  # sponsored slots: fill, spend, expected clicks


@contextmanager
def _timed(seconds: dict, stage: str):
    t0 = time.perf_counter()
    log.info("stage %s ...", stage)
    yield
    seconds[stage] = round(time.perf_counter() - t0, 2)
    log.info("stage %s done in %.1fs", stage, seconds[stage])


@dataclass(frozen=True)
class Inputs:
    """What the read stages produce for a day: user state, histories, vocabulary, counts."""
    day: dt.date
    run_id: str
    run_uri: str
    partitions: list[str]
    vocab: Vocab
    histories: ray.data.Dataset
    stats: read.ReadStats
    state_files: list[str]
    state_info: dict
    seconds: dict[str, float]       # per stage
    content: ContentTokens | None = None    # the vocabulary's content, from the day's catalog
    categories: CategoryFill | None = None  # categories predicted for catalog items without one


def run_uri(cfg: Config, day: dt.date, run_id: str) -> str:
    return storage.run_path(cfg.output.uri, day, run_id)      # validated date and run id


def state_len(cfg: Config) -> int:
    """Interactions kept per user: the model input plus one held out for evaluation."""
    return cfg.data.history_len + 1


def seen_from(cfg: Config, day: dt.date) -> int:
    """First epoch day whose interactions ``data.exclude_seen`` masks (``data.seen_days``)."""
    days = cfg.data.seen_days or cfg.data.lookback_days
    return int(state.epoch_day(features.day_start_us(day - dt.timedelta(days=days))))


def previous_state(cfg: Config, day: dt.date, rebuild: bool = False) -> tuple[storage.Commit | None, str]:
    """The committed user state of ``day - 1`` if this run can build on it, else why not."""
    if not cfg.state.incremental:
        return None, "state.incremental is off"
    if rebuild:
        return None, "asked to rebuild (first day of a backfill)"
    prev = day - dt.timedelta(days=1)
    try:
        c = storage.read_commit(cfg.output.uri, prev)
    except storage.CorruptCommit as exc:     # rebuilt as if missing; the message says why
        log.warning("%s", exc)
        return None, str(exc)
    if c is None:
        return None, f"dt={prev} is not committed"
    info = c.details.get("state", {})
    if not c.files.get("user_state"):
        return None, f"dt={prev} has no user state"
    wanted = {"events_uri": cfg.data.events_uri, "lookback_days": cfg.data.lookback_days,
              "length": state_len(cfg), "format": state.FORMAT}
    changed = [k for k, v in wanted.items() if info.get(k) != v]
    if changed:
        return None, f"the user state of dt={prev} was built with other {', '.join(changed)}"
    return c, f"dt={prev} generation {c.generation}"


@dataclass(frozen=True)
class StateSource:
    """What tonight's user state is built from: ``prev`` (yesterday's committed state) plus
    one day of events, or, when ``prev`` is None, every day of the window; ``why`` says why."""
    prev: storage.Commit | None
    why: str
    partitions: list[str]
    files: read.EventFiles


def state_source(cfg: Config, day: dt.date, rebuild: bool = False) -> StateSource:
    """Where ``day``'s state comes from, its event files preflighted; refused before any work
    (EmptyInput) when a rebuild would read no data file."""
    prev, why = previous_state(cfg, day, rebuild)
    if prev is not None:
        days = [day - dt.timedelta(days=1)]
        log.info("user state: incremental from %s + events of dt=%s", why, days[0])
    else:
        days = read.window(day, cfg.data.lookback_days)
        log.info("user state: rebuilding from %d days of events (%s)", len(days), why)
    partitions = read.event_partitions(cfg.data.events_uri, days, allow_none=prev is not None)
    files = read.preflight(partitions)
    if not files.files and prev is None:
        raise schema.EmptyInput(f"dt={day}: the {len(partitions)} event partition(s) of the window "
                                f"under {cfg.data.events_uri} hold no data files; nothing was committed")
    return StateSource(prev, why, partitions, files)


def _log_rows(cfg: Config, day: dt.date, src: StateSource, out: str, base: Vocab | None) -> ray.data.Dataset:
    """The new events' log rows (and their STATS rows), plus what yesterday's state carries."""
    parts = []
    if src.files.files:
        parts.append(read.read_log_rows(cfg.data.events_uri, src.files, out, base))
    if src.prev is not None:
        first_day = int(state.epoch_day(features.day_start_us(day - dt.timedelta(days=cfg.data.lookback_days))))
        parts.append(state.read_files(src.prev.uris(cfg.output.uri, "user_state")).map_batches(
            state.carried_rows, batch_format="pyarrow", fn_kwargs={"first_day": first_day}))
    return parts[0] if len(parts) == 1 else parts[0].union(parts[1])


def _check_read(cfg: Config, day: dt.date, src: StateSource, stats: read.ReadStats, out: str) -> None:
    """Refuse a rebuild that read no rows (EmptyInput) and a night whose share of rejected
    rows is above ``data.max_reject_fraction`` (RejectThresholdExceeded)."""
    if stats.input_rows == 0 and src.prev is None:
        raise schema.EmptyInput(f"dt={day}: the {len(src.partitions)} event partition(s) of the window "
                                f"under {cfg.data.events_uri} hold no rows; nothing was committed")
    log.info("read %d rows: %d valid, %d rejected %s, %d impressions, %d of unknown items",
             stats.input_rows, stats.valid_rows, stats.rejected_rows, stats.rejected,
             stats.impressions, stats.unknown_item)
    share = stats.rejected_rows / max(stats.input_rows, 1)
    if share > cfg.data.max_reject_fraction:
        raise schema.RejectThresholdExceeded(
            f"dt={day}: {share:.1%} of {stats.input_rows} input rows broke the events contract "
            f"({', '.join(f'{k} {v}' for k, v in sorted(stats.rejected.items()))}), above "
            f"data.max_reject_fraction={cfg.data.max_reject_fraction}; nothing was committed; "
            f"the rejected rows are in {storage.join(out, 'rejects')}")


def prepare(cfg: Config, day: dt.date, run_id: str, base: Vocab | None = None,
            learn_items: bool = True, rebuild_state: bool = False, keep_popularity: bool = False,
            reuse_histories: bool = True) -> Inputs:
    """Day ``day``'s user state (as of 00:00 UTC) and the model histories it gives.

    Nightly (incremental): the state committed with ``day - 1`` plus the one
    partition ``dt=day-1``. Otherwise, or when that state is missing or was
    built differently: every partition of the look-back window (said in the
    log and in the commit). One Ray pass reads, builds and writes the state and
    returns its items and the read counts (``state.write``). The vocabulary is
    ``base`` (the scoring model's, or the warm start's parent) extended with the
    catalog's new items, plus, when ``learn_items``, every item in the state; its
    popularity is the histories' training interactions, or ``base``'s when
    ``keep_popularity`` (a scoring run ranks cold-start users as its model
    learned). The histories stream from the written state; materialized when
    ``reuse_histories`` (read more than once: training, evaluation). Rejected
    rows go under the run's (uncommitted) directory.
    """
    seconds: dict[str, float] = {}
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    src = state_source(cfg, day, rebuild_state)
    catalog = read.read_catalog(cfg.data.catalog_uri)          # refused before any work
    if cfg.data.user_attributes_uri:                            # so is a broken user-attributes table
        read.read_user_attributes(cfg.data.user_attributes_uri,
                                  src.files.schema.field("user_id").type if src.files.files else None)
    init_ray(cfg)
    categories = None
    if in_use(catalog, cfg.content.enabled):    # items without a category get one from their text
        with _timed(seconds, "categories"):
            categories = fill_categories(catalog)
            catalog = categories.apply(catalog)
    out = run_uri(cfg, day, run_id)
    asof_us = features.day_start_us(day)
    no_items = pa.array([], catalog["item_id"].type)
    fixed = None if learn_items else Vocab.build(catalog, no_items, asof_us, base)
    with _timed(seconds, "state"):
        written = state.write(_log_rows(cfg, day, src, out, None if learn_items else base),
                              state_len(cfg), cfg.state.shuffle_partitions, out, fixed)
    stats = read.ReadStats.from_rows(written.stats)
    _check_read(cfg, day, src, stats, out)
    with _timed(seconds, "vocabulary"):
        vocab = Vocab.build(catalog, written.items["item_id"] if learn_items else no_items, asof_us, base,
                            None if keep_popularity else written.items)
    with _timed(seconds, "content"):
        content = run_tokens(catalog, vocab.item_ids, cfg.content.enabled, cfg.content.buckets)
    histories = state.histories(out, written.files, vocab, state_len(cfg), seen_from(cfg, day))
    if reuse_histories:
        with _timed(seconds, "histories"):
            histories = histories.materialize()
    info = {"mode": "incremental" if src.prev is not None else "rebuild", "from": src.why,
            "events_uri": cfg.data.events_uri, "lookback_days": cfg.data.lookback_days,
            "length": state_len(cfg), "format": state.FORMAT, "users": written.users,
            "new_items": vocab.size - base.size if base is not None else 0}
    return Inputs(day, run_id, out, src.partitions, vocab, histories, stats,
                  list(written.files), info, seconds, content, categories)


@dataclass
class TrainPlan:
    """How tonight's models start: from scratch, or warm from ``parent`` (a model URI)."""
    start: str                      # "full" | "warm"
    parent: str | None
    reason: str


def training_plan(cfg: Config, day: dt.date) -> TrainPlan:
    """Full retrain or warm start, by ``train.schedule`` (auto: full every ``full_every_days``)."""
    if cfg.train.schedule == "full":
        return TrainPlan("full", None, "train.schedule=full")
    try:
        parent = checkpoint.latest(cfg.output.models_uri, "sequence")
    except FileNotFoundError:
        return TrainPlan("full", None, "no model to warm-start from")
    meta = checkpoint.read_meta(parent)
    full_asof = dt.date.fromisoformat(meta.full_asof)
    if cfg.train.schedule == "auto" and (day - full_asof).days >= cfg.train.full_every_days:
        return TrainPlan("full", None, f"last full retrain was as of {full_asof}, "
                                       f"train.full_every_days={cfg.train.full_every_days}")
    return TrainPlan("warm", parent, f"warm start from {meta.version}")


def train_all(cfg: Config, inputs: Inputs, plan: TrainPlan, secs: dict) -> dict[str, str]:
    """Train the configured models on the inputs; returns the published model URIs."""
    with _timed(secs, "train"):
        log.info("training: %s (%s)", plan.start, plan.reason)
        version = f"{inputs.day:%Y%m%d}-{inputs.run_id}"
        parents = {kind: (None if plan.parent is None else
                          checkpoint.version_uri(cfg.output.models_uri, kind, plan.parent.rsplit("/", 1)[1]))
                   for kind in cfg.model_names()}
        return train(cfg.model_names(), cfg, inputs.histories, inputs.vocab, inputs.day, version, parents,
                     content=inputs.content)


def train_day(cfg: Config, day: dt.date) -> dict[str, str]:
    """Train only (``jobs/train.py``); the run's rejects stay in its uncommitted directory."""
    secs: dict[str, float] = {}
    plan = training_plan(cfg, day)
    run_id = storage.new_run_id()
    with storage.Heartbeat(cfg.output.uri, day, run_id, None):     # never commits: kept while beating
        inputs = prepare(cfg, day, run_id, _vocab_of(plan.parent))
        secs.update(inputs.seconds)
        return train_all(cfg, inputs, plan, secs)


def _vocab_of(model_uri: str | None) -> Vocab | None:
    return None if model_uri is None else checkpoint.load_vocab(model_uri)     # sha256-verified


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
            models: dict[str, str] | None = None, rebuild_state: bool = False) -> RunResult:
    """Score every user active in the look-back window before ``day`` and commit day ``day``.

    Trains first when ``train_models``; otherwise scores with ``models`` (default: latest).
    The run's ``RunWriter`` beats a heartbeat until its commit point; a run that finds
    another run committed the day meanwhile, whatever stopped it, removes its files and
    raises CommitConflict. After the commit point nothing is raised: cleanup is reported.
    """
    run_id = storage.check_run_id(run_id or storage.new_run_id())
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    sink = RunWriter(cfg.output.uri, day, run_id, dt.timedelta(minutes=cfg.output.gc_grace_minutes))
    if train_models:
        storage.check_writable(cfg.output.models_uri, "output.models_uri")
    sink.on_write_start()                # before any expensive work
    try:
        result, c = _produce(cfg, day, sink, train_models, models, rebuild_state)
        with _timed(result.seconds, "commit"):
            cleanup = sink.on_write_complete(c)
    except BaseException as exc:
        sink.on_write_failed(exc)        # CommitConflict when another run committed the day
        raise
    log.info("dt=%s committed: %s", day, ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    return replace(result, cleanup=cleanup)


def _produce(cfg: Config, day: dt.date, sink: RunWriter, train_models: bool,
             models: dict[str, str] | None, rebuild_state: bool) -> tuple[RunResult, storage.Commit]:
    """Everything before the commit point: read, train, score, evaluate, the commit to make."""
    secs: dict[str, float] = {}
    run_id = sink.run_id
    models = None if train_models else (models or scoring_models(cfg, day))
    plan = training_plan(cfg, day) if train_models else None
    slots = sponsored.SlotPlan.from_config(cfg)
    campaigns = sponsored.read_campaigns(slots.campaigns_uri) if slots.on else None    # refused before any work
    inputs = prepare(cfg, day, run_id, _vocab_of(plan.parent if plan else models["sequence"]),
                     learn_items=train_models, rebuild_state=rebuild_state, keep_popularity=not train_models,
                     reuse_histories=train_models or cfg.eval.enabled or slots.on)
    secs.update(inputs.seconds)
    model_uris = train_all(cfg, inputs, plan, secs) if train_models else dict(models)
    for kind in set(MODEL_KINDS) - set(model_uris):     # a run that trained only some kinds
        model_uris[kind] = checkpoint.latest(cfg.output.models_uri, kind)
    generated_at = dt.datetime.now(dt.timezone.utc).isoformat()
    verified = {k: checkpoint.verify(u) for k, u in model_uris.items()}   # TamperedCheckpoint
    versions = {k: v["version"] for k, v in verified.items()}
    context = ScoringContext.build(model_uris, day.isoformat(), inputs.vocab, cfg.data.catalog_uri, inputs.content)
    sponsorship = None
    if campaigns is not None:
        with _timed(secs, "sponsored"):         # pass 1: each campaign's threshold over all users
            pins = tuple(i for i, _ in ListRules.from_config(cfg).pins)
            sponsorship = allocate(cfg, inputs.histories, context, sponsored.Sponsorship(
                np.array(slots.slots, np.int64),
                sponsored.Campaigns.build(campaigns, inputs.vocab, pins, slots.campaigns_uri)))
    with _timed(secs, "score"):
        written = score_histories(cfg, inputs.histories, context, inputs.run_uri,
                                  versions[cfg.score.recommender], generated_at, sponsorship)
    sink.record("user_state", inputs.state_files, inputs.state_info["users"])
    sink.record_writes(written)
    sink.record_folder("rejects", inputs.stats.rejected_rows)
    hits = reason_counts(written)        # list rules: listed items per reason
    metrics: dict = {}
    if cfg.eval.enabled:
        with _timed(secs, "evaluate"):
            metrics = evaluate(inputs.histories, EvalInputs(context), cfg)
            run_lists = lists.of_run(written, inputs.vocab, cfg.data.catalog_uri, day.isoformat(), hits,
                                     cfg.score.recommender)
            metrics.update({"lists": run_lists} if run_lists else {})
            sink.write_json("metrics", "metrics.json", metrics)
            sink.write_bytes("metrics", "report.html", report.render(metrics).encode())
    counts = {"users_scored": sink.rows.get("recommendations", 0),
              "cold_start_users": sum(int(w["cold_start"]) for w in written if w["table"] == "recommendations"),
              "new_items": inputs.state_info["new_items"], "vocab_items": inputs.vocab.size - 1,
              "state_users": inputs.state_info["users"], "input_partitions": len(inputs.partitions),
              "input_rows": inputs.stats.input_rows, "rejected_rows": inputs.stats.rejected_rows}
    paid = {} if sponsorship is None else sponsored.report(sponsorship, sponsored_counts(written))
    result = RunResult(day.isoformat(), run_id, sink.commit_uri, model_uris, metrics, counts, secs,
                       {"state": inputs.state_info, "training": asdict(plan) if plan else None},
                       content=content_info(context.content, inputs.categories), sponsored=paid)
    sink.write_json("summary", "summary.json", asdict(result))
    return result, sink.manifest(versions, inputs.partitions, cfg.hash(), generated_at,
                                {"input": asdict(inputs.stats), "state": inputs.state_info, "counts": counts,
                                 **({"list_rules": hits} if hits else {}),
                                 **({"sponsored": sponsored.small(paid)} if paid else {}),
                                 "models": verified, **({"content": result.content} if result.content else {})})


def content_info(content: ContentTokens | None, categories: CategoryFill | None) -> dict:
    """What a run reports of its content (commit details, summary): {} when it scored without."""
    if content is None:
        return {}
    return {"items_with_content": int(content.has_content.sum()), "buckets": content.buckets,
            **(categories.summary() if categories else {})}


def allocate(cfg: Config, histories: ray.data.Dataset, context: ScoringContext,
             sponsorship: sponsored.Sponsorship) -> sponsored.Sponsorship:
    """Pass 1 of the sponsored slots: ``Bidder`` actors (sized like scoring's) give each batch's
    best users per campaign; merged here as they stream into each campaign's threshold."""
    best = sponsored.Thresholds(sponsorship.campaigns.caps)
    bids = histories.map_batches(
        Bidder, fn_constructor_kwargs={"context": context, "cfg": cfg, "sponsorship": sponsorship,
                                       "recommendable": context.recommendable(cfg.data.catalog_uri)},
        **actor_pool(cfg))
    for batch in bids.iter_batches(batch_size=None, batch_format="pyarrow"):
        best.add(batch)
    ev, key = best.result()
    return replace(sponsorship, threshold_ev=ev, threshold_key=key)


def score_histories(cfg: Config, histories: ray.data.Dataset, context: ScoringContext, run_uri: str,
                    model_version: str, generated_at: str,
                    sponsorship: sponsored.Sponsorship | None = None) -> list[dict]:
    """The scoring stage, streaming: histories -> ``Scorer`` actor pool (top-K and
    predictions; one GPU per actor on a GPU cluster) -> Parquet files under ``run_uri``.
    Returns one row per file written (table, file, rows, cold_start, and the list rules'
    and sponsored slots' counts)."""
    scored = histories.map_batches(
        Scorer, fn_constructor_kwargs={"context": context, "cfg": cfg,
                                       "recommendable": context.recommendable(cfg.data.catalog_uri),
                                       "sponsorship": sponsorship},
        **actor_pool(cfg))
    return scored.map_batches(
        write_batch, batch_size=cfg.score.rows_per_file, batch_format="pyarrow",
        fn_kwargs={"run_uri": run_uri, "model_version": model_version,
                   "generated_at": generated_at}).take_all()


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
        # the first day rebuilds its user state from the window, so a backfill after a data
        # fix never builds on a state made from the old data; later days chain incrementally
        r = run_day(cfg, day, train_models=train_models, models=models, rebuild_state=not results)
        results.append(r)
        echo(f"[{i}/{len(days)}] dt={day} committed {r.counts['users_scored']} users "
             f"from {r.counts['input_rows']} rows in {time.perf_counter() - t0:.0f}s "
             f"(model {r.model_uris['sequence'].rsplit('/', 1)[1]}); {len(days) - i} day(s) left, "
             f"{time.perf_counter() - t_start:.0f}s so far")
    return results
