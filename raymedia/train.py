"""One training loop for both models, run by Ray Train's ``TorchTrainer``.

The driver hands the training rows in as a Ray Dataset; each worker reads its
shard with ``get_dataset_shard`` and trains a DDP-wrapped model
(``prepare_model``; CUDA when the cluster has GPUs, gloo on CPU). Rank 0
reports a checkpoint every epoch, so a restarted run resumes from the latest
one. The finished checkpoint is published to the model registry.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import ray
import torch

from raymedia import checkpoint, features, models, storage
from raymedia.config import Config
from raymedia.data.vocab import Vocab

log = logging.getLogger(__name__)
OPTIMIZER = "optimizer.pt"


def use_gpu(cfg: Config) -> bool:
    if cfg.train.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.train.use_gpu == "yes"


def training_rows(histories: ray.data.Dataset, cfg: Config, asof_us: int) -> ray.data.Dataset:
    """History rows -> padded training sequences (last event held out for evaluation)."""
    def rows(batch: pa.Table) -> dict[str, np.ndarray]:
        return features.batch_inputs(batch, "train", cfg.data.history_len, asof_us,
                                     cfg.data.return_horizon_days * 86_400_000_000)[1]
    return histories.map_batches(rows, batch_format="pyarrow")


def _loop(config: dict) -> None:
    """Per-worker training loop (runs inside a Ray Train worker)."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    vocab = Vocab.from_table(config["vocab"])
    meta = config["meta"]
    model = models.build(meta["kind"], meta["kwargs"], vocab.size, vocab.num_categories,
                         meta["max_len"], torch.as_tensor(vocab.item_category),
                         torch.as_tensor(vocab.popularity))
    resume = ray.train.get_checkpoint()
    if config["parent"] and not resume:
        # warm start: the parent's weights, its item table grown for the new items
        parent = checkpoint.load(config["parent"])
        models.grow_items(parent.model, torch.as_tensor(vocab.item_category), torch.as_tensor(vocab.popularity))
        model.load_state_dict(parent.model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    start, history = 0, []
    if resume:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, checkpoint.WEIGHTS), weights_only=True)
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("__")})
            opt.load_state_dict(torch.load(os.path.join(d, OPTIMIZER), weights_only=True))
            start = int(state["__epoch"]) + 1
            history = storage.read_json(os.path.join(d, checkpoint.META))["history"]
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start, config["epochs"]):
        model.train()
        t0, wait, losses = time.perf_counter(), 0.0, []
        t_fetch = time.perf_counter()
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], device=device,
                                              local_shuffle_buffer_size=4 * config["batch_size"],
                                              local_shuffle_seed=config["seed"] + epoch):
            wait += time.perf_counter() - t_fetch
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(out["loss"].detach()))
            t_fetch = time.perf_counter()
        elapsed = time.perf_counter() - t0
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "first_batch_loss": losses[0] if losses else float("nan"),
                   "batches": len(losses), "seconds": elapsed, "data_wait_s": wait}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                checkpoint.save_dir(d, inner, {**meta, "history": history}, vocab,
                                    extra={"epoch": torch.tensor(epoch)})
                torch.save(opt.state_dict(), os.path.join(d, OPTIMIZER))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def train(kind: str, cfg: Config, histories: ray.data.Dataset, vocab: Vocab, asof: dt.date,
          version: str, parent: str | None = None) -> str:
    """Train one model on the histories; returns the published model URI.

    With ``parent`` (a published model of the same kind whose vocabulary
    ``vocab`` extends) training warm-starts from it for ``train.warm_epochs``.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    asof_us = features.day_start_us(asof)
    meta = {"kind": kind, "version": version, "kwargs": models.model_kwargs(kind, cfg),
            "max_len": cfg.data.history_len, "vocab_digest": vocab.digest(),
            "trained_asof": asof.isoformat(), "config_hash": cfg.hash(),
            "start": "warm" if parent else "full", "parent": None, "full_asof": asof.isoformat()}
    if parent:
        pmeta = storage.read_json(storage.join(parent, checkpoint.META))
        if pmeta["kwargs"] != meta["kwargs"] or pmeta["max_len"] != meta["max_len"]:
            raise ValueError(f"cannot warm-start {kind} from {pmeta['version']}: its shape "
                             f"{pmeta['kwargs']} (max_len {pmeta['max_len']}) differs from the config's; "
                             "run a full retrain (train.schedule=full)")
        meta.update(parent=pmeta["version"], full_asof=pmeta.get("full_asof", pmeta["trained_asof"]))
    train_root = storage.join(cfg.output.models_uri, "_ray_train")
    fs, path = storage.resolve(train_root)
    fs.create_dir(path, recursive=True)
    gpu = use_gpu(cfg)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={
            "meta": meta, "vocab": vocab.to_table(), "parent": parent,
            "epochs": cfg.train.warm_epochs if parent else cfg.train.epochs,
            "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "weight_decay": cfg.train.weight_decay, "seed": cfg.train.seed,
            "threads": cfg.train.cpus_per_worker,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        datasets={"train": training_rows(histories, cfg, asof_us)},
        run_config=RunConfig(
            name=f"{kind}-{version}", storage_path=path,
            storage_filesystem=None if storage.is_local(train_root) else fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
            logging_config=LoggingConfig(log_level="WARNING")),
    )
    log.info("training %s (%d worker(s), gpu=%s, %d epochs)", kind, cfg.train.num_workers, gpu,
             cfg.train.epochs)
    result = trainer.fit()
    for h in result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []:
        log.info("%s epoch %d: loss %.4f (%.1fs, %.1fs waiting for data)", kind, h["epoch"], h["loss"],
                 h["seconds"], h["data_wait_s"])
    if result.checkpoint is None:
        raise RuntimeError(f"training {kind} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return checkpoint.publish(d, cfg.output.models_uri, kind, version)
