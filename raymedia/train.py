"""One training loop for both models, run by Ray Train's ``TorchTrainer``.

The driver hands the training rows in as a Ray Dataset; each worker reads its
shard with ``get_dataset_shard`` and trains a DDP-wrapped model
(``prepare_model``; CUDA when the cluster has GPUs, gloo on CPU). One Ray Train
run trains every model of the night, one after the other, on the same worker
group: starting a worker group and its dataset feed is a fixed cost (about 15 s
on 2 cores), paid once a night instead of once per model. Rank 0 reports a
checkpoint every epoch and publishes each model to the registry as soon as it is
finished, so a restarted run skips the published models and resumes the one in
progress from its latest checkpoint.

Early stopping: after each epoch every worker ranks the validation targets of its
shard (``features.validation_users``: each one's second-to-last event, held out of
training) over all items; NDCG@10 is summed across ranks, so every rank takes the
same decision. The checkpoint's weights are the best epoch's (the current ones go
to ``current.pt`` for resuming); training stops after ``train.patience`` epochs
without improvement, at the epoch budget (``train.epochs``) or once
``train.time_budget_s`` seconds of training are spent, whichever comes first.
Learning rate: linear warm-up over ``train.warmup_steps`` steps (at most a
quarter of an epoch), then cosine decay to 0.1 x lr over the epoch or time budget
(``train.lr_schedule``). Rank 0 logs one line per epoch. Seeds are fixed per rank
and epoch (``train.seed``), so figures repeat (a time budget ends them where the
machine's speed says).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import ray
import torch

from raymedia import checkpoint, features, metrics, models, ranking, storage
from raymedia.checkpoint import ModelMeta
from raymedia.cluster import cluster_gpus
from raymedia.config import Config
from raymedia.data.vocab import Vocab
from raymedia.models.content import ContentTokens, spec_for
from raymedia.schema import US_PER_DAY

log = logging.getLogger(__name__)
OPTIMIZER = "optimizer.pt"
CURRENT = "current.pt"          # the last epoch's weights (the checkpoint's model.pt holds the best)
VAL_K = 10
MIN_LR_RATIO = 0.1


def lr_factor(step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer ``step`` (0-based) and training
    ``progress`` (0..1 through the epochs): linear warm-up, then cosine to 0.1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "constant":
        return warm
    p = min(max(progress, 0.0), 1.0)
    return warm * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * p)))


def validate(model: torch.nn.Module, shard, batch_size: int, device, exclude_seen: bool,
             chunk: int = 65536) -> tuple[float, int]:
    """(sum of NDCG@10, count) of this worker's validation targets, full ranking."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        items = model.item_matrix()
        for batch in shard.iter_torch_batches(batch_size=batch_size, device=device):
            keep = batch["val_target"] > 0
            if not bool(keep.any()):
                continue
            sub = {k: v[keep] for k, v in batch.items()}
            users = model.user_vectors(sub)
            seen = sub.get("seen", sub["items"]) if exclude_seen else None
            r = ranking.rank(ranking.DotScores(users.float(), items.float()), sub["val_target"],
                             torch.empty(len(users), 0, dtype=torch.long, device=users.device),
                             1, chunk, seen).rank
            total += float(metrics.ndcg_gains(r.cpu().numpy(), VAL_K).sum())
            count += int(len(r))
    model.train(was_training)
    return total, count


def log_epoch(kind: str, h: dict, epochs: int, history: list[dict]) -> None:
    """One line per epoch: loss, validation NDCG@10, seconds, the best epoch so far."""
    best = next((b for b in history if b["epoch"] == h["best_epoch"]), None)
    val = "-" if h["val_ndcg"] is None else f"{h['val_ndcg']:.4f}"
    print(f"{kind} epoch {h['epoch'] + 1}/{epochs}: loss {h['loss']:.4f}, validation NDCG@{VAL_K} "
          f"{val} on {h['val_users']} users, {h['seconds']:.1f}s "
          f"({h['samples'] / max(h['seconds'], 1e-9):.0f} samples/s); best "
          + (f"{best['val_ndcg']:.4f} at epoch {best['epoch'] + 1}" if best else "-"), flush=True)


def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as tdist
    if not (tdist.is_available() and tdist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def use_gpu(cfg: Config) -> bool:
    if cfg.train.use_gpu == "auto":
        return cluster_gpus() > 0
    return cfg.train.use_gpu == "yes"


def training_rows(histories: ray.data.Dataset, cfg: Config, asof_us: int) -> ray.data.Dataset:
    """History rows -> padded training sequences (last event held out for evaluation)."""
    def rows(batch: pa.Table) -> dict[str, np.ndarray]:
        x = features.batch_inputs(batch, "train", cfg.data.history_len, asof_us,
                                  cfg.data.return_horizon_days * US_PER_DAY,
                                  cfg.train.val_share)[1]
        if cfg.data.exclude_seen:
            x["targets"] = novel_targets(x["items"], x["targets"])
        return x
    return histories.map_batches(rows, batch_format="pyarrow")


def novel_targets(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Targets with repeats removed: position t's target is dropped (0) when the item
    already occurs at positions 0..t. Used when seen items are excluded from the
    recommendations: the models then learn only what they may recommend."""
    L = items.shape[1]
    causal = np.tril(np.ones((L, L), dtype=bool))                    # j <= t
    seen = ((targets[:, :, None] == items[:, None, :]) & causal[None]).any(-1)
    return np.where(seen, 0, targets)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run's workers need, built by ``train`` on the driver and
    handed to each worker as one value of Ray Train's ``train_loop_config``."""
    meta: ModelMeta
    models_uri: str                 # the registry rank 0 publishes the finished model to
    vocab: pa.Table                 # ``Vocab.to_table()``: plain Arrow travels to the workers
    parent: str | None              # the published model a warm start begins from
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    time_budget_s: float            # 0: no time budget
    threads: int                    # torch threads per worker
    patience: int
    lr_schedule: str
    warmup_steps: int
    exclude_seen: bool
    steps_per_epoch: int
    content: ContentTokens | None = None     # the vocabulary's content tokens (models/content.py)


def _loop(config: dict) -> None:
    """Per-worker training loop (runs inside a Ray Train worker): ``config["plan"]`` holds
    one ``TrainSettings`` per model, trained in order. A model already in the registry was
    finished before a restart; the run's checkpoint belongs to the model in progress."""
    import ray.train

    resume = ray.train.get_checkpoint()
    resumed = None
    if resume:
        with resume.as_directory() as d:
            resumed = checkpoint.read_meta(d).kind
    for s in config["plan"]:
        if not storage.exists(checkpoint.record_uri(s.models_uri, s.meta.kind, s.meta.version)):
            _fit(s, resume if resumed == s.meta.kind else None)


def _fit(s: TrainSettings, resume) -> None:
    """Train one model (from ``resume``, its latest checkpoint, after a restart) and publish it."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(s.seed + rank)
    torch.set_num_threads(s.threads)
    vocab = Vocab.from_table(s.vocab)
    meta = s.meta
    model = models.build(meta.kind, meta.kwargs, vocab.size, vocab.num_categories,
                         meta.max_len, torch.as_tensor(vocab.item_category),
                         torch.as_tensor(vocab.popularity))
    model.set_content(s.content)
    if s.parent and not resume:
        # warm start: the parent's weights, its item table grown for the new items
        parent = checkpoint.load(s.parent)
        models.grow_items(parent.model, torch.as_tensor(vocab.item_category), torch.as_tensor(vocab.popularity))
        model.load_state_dict(parent.model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    start, history, best_state = 0, [], None
    if resume:
        with resume.as_directory() as d:
            current = os.path.join(d, CURRENT)
            best = torch.load(os.path.join(d, checkpoint.WEIGHTS), weights_only=True)
            state = torch.load(current, weights_only=True) if os.path.exists(current) else best
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("__")})
            best_state = {k: v for k, v in best.items() if not k.startswith("__")}
            opt.load_state_dict(torch.load(os.path.join(d, OPTIMIZER), weights_only=True))
            start = int(state["__epoch"]) + 1
            stopped = checkpoint.read_meta(d).stopped_early
            history = list(checkpoint.read_meta(d).history)
            if (stopped or start >= s.epochs) and rank == 0:      # finished, not yet published
                checkpoint.publish(d, s.models_uri, meta.kind, meta.version)
        if stopped or start >= s.epochs:
            return
    inner = model
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    epochs, patience, budget = s.epochs, s.patience, s.time_budget_s
    # warm-up never longer than a quarter of an epoch (small data sets have few steps)
    warmup = min(s.warmup_steps, max(1, s.steps_per_epoch // 4))
    step = sum(h["batches"] for h in history)
    scored = [h for h in history if h.get("val_ndcg") is not None]
    best_epoch = max(scored, key=lambda h: h["val_ndcg"])["epoch"] if scored else None
    spent = sum(h["seconds"] for h in history)      # training seconds, across resumes
    for epoch in range(start, epochs):
        model.train()
        t0, wait, losses, samples = time.perf_counter(), 0.0, [], 0
        per_epoch = history[-1]["batches"] if history else 0
        t_fetch = time.perf_counter()
        for i, batch in enumerate(shard.iter_torch_batches(
                batch_size=s.batch_size, device=device,
                local_shuffle_buffer_size=4 * s.batch_size,
                local_shuffle_seed=s.seed + epoch)):
            wait += time.perf_counter() - t_fetch
            progress = (epoch + (min(i / per_epoch, 1.0) if per_epoch else 0.0)) / epochs
            if budget:
                progress = max(progress, (spent + time.perf_counter() - t0) / budget)
            lr = s.lr * lr_factor(step, progress, warmup, s.lr_schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            losses.append(float(out["loss"].detach()))
            samples += len(batch["items"])
            t_fetch = time.perf_counter()
        elapsed = time.perf_counter() - t0
        spent += elapsed
        total, count = _all_sum(list(validate(inner, shard, 8 * s.batch_size, device,
                                              s.exclude_seen)), device)
        val = total / count if count else None
        improved = val is not None and (best_epoch is None or val > next(
            h["val_ndcg"] for h in history if h["epoch"] == best_epoch))
        if improved or best_state is None:
            best_state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
        if improved:
            best_epoch = epoch
        report = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                  "first_batch_loss": losses[0] if losses else float("nan"),
                  "batches": len(losses), "samples": samples, "seconds": elapsed, "data_wait_s": wait,
                  "lr": opt.param_groups[0]["lr"], "val_ndcg": val, "val_users": int(count),
                  "best_epoch": best_epoch}
        history.append(report)
        stop = (patience > 0 and best_epoch is not None and epoch - best_epoch >= patience) \
            or bool(budget and spent >= budget)
        if rank == 0:
            log_epoch(meta.kind, report, epochs, history)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                checkpoint.save_dir(d, inner, replace(meta, history=tuple(history), best_epoch=best_epoch,
                                                      stopped_early=stop and epoch + 1 < epochs),
                                    vocab, extra={"epoch": torch.tensor(epoch)})
                os.replace(os.path.join(d, checkpoint.WEIGHTS), os.path.join(d, CURRENT))
                torch.save({**best_state, "__epoch": torch.tensor(epoch)},
                           os.path.join(d, checkpoint.WEIGHTS))
                torch.save(opt.state_dict(), os.path.join(d, OPTIMIZER))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({k: v for k, v in report.items() if v is not None}, checkpoint=ckpt)
            if rank == 0 and (stop or epoch + 1 == epochs):
                checkpoint.publish(d, s.models_uri, meta.kind, meta.version)
        if stop:
            break


def train(kinds: Sequence[str], cfg: Config, histories: ray.data.Dataset, vocab: Vocab, asof: dt.date,
          version: str, parents: Mapping[str, str | None] | None = None, callbacks: list | None = None,
          content: ContentTokens | None = None) -> dict[str, str]:
    """Train the models of ``kinds`` on the histories in one Ray Train run (one after the
    other on one worker group); returns {kind: published model URI}.

    With ``content`` (the vocabulary's tokens from the catalog) the models get a content
    path: item vectors = id row + content vector (``models/content.py``).

    With ``parents[kind]`` (a published model of the same kind whose vocabulary
    ``vocab`` extends) that model warm-starts from it for ``train.warm_epochs``.
    ``callbacks`` are Ray Train callbacks (``raymedia tune`` passes Tune's
    ``TuneReportCallback``, which hands each epoch's report to the trial).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    parents = parents or {}
    asof_us = features.day_start_us(asof)
    steps = math.ceil(histories.count() / cfg.train.num_workers / cfg.train.batch_size)
    plan = tuple(_settings(kind, cfg, vocab, asof, version, parents.get(kind), steps, content) for kind in kinds)
    train_root = storage.join(cfg.output.models_uri, "_ray_train")
    fs, path = storage.resolve(train_root)
    fs.create_dir(path, recursive=True)
    gpu = use_gpu(cfg)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        datasets={"train": training_rows(histories, cfg, asof_us)},
        run_config=RunConfig(
            name="-".join([*kinds, version]), storage_path=path,
            storage_filesystem=None if storage.is_local(train_root) else fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
            logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks),
    )
    for s in plan:
        log.info("training %s (%d worker(s), gpu=%s, at most %d epochs%s)", s.meta.kind,
                 cfg.train.num_workers, gpu, s.epochs,
                 f" or {s.time_budget_s:g}s" if s.time_budget_s else "")
    result = trainer.fit()
    uris = {}
    for kind in kinds:
        if not storage.exists(checkpoint.record_uri(cfg.output.models_uri, kind, version)):
            raise RuntimeError(f"training {kind} published no model: {result.error}")
        uris[kind] = checkpoint.version_uri(cfg.output.models_uri, kind, version)
    return uris


def _settings(kind: str, cfg: Config, vocab: Vocab, asof: dt.date, version: str, parent: str | None,
              steps_per_epoch: int, content: ContentTokens | None) -> TrainSettings:
    """One model's ``TrainSettings`` (a warm start runs ``train.warm_epochs``, no time budget)."""
    return TrainSettings(
        meta=ModelMeta.new(kind, version, cfg, vocab, asof, checkpoint.read_meta(parent) if parent else None,
                           spec_for(content, cfg.content.id_dropout)),
        models_uri=cfg.output.models_uri, vocab=vocab.to_table(), parent=parent,
        epochs=cfg.train.warm_epochs if parent else cfg.train.epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay, seed=cfg.train.seed,
        time_budget_s=0.0 if parent else cfg.train.time_budget_s,
        threads=max(1, int(cfg.train.cpus_per_worker)), patience=cfg.train.patience,
        lr_schedule=cfg.train.lr_schedule, warmup_steps=cfg.train.warmup_steps,
        exclude_seen=cfg.data.exclude_seen, steps_per_epoch=steps_per_epoch, content=content)
