"""Training throughput: Ray Train (1 and 2 DDP workers) vs a plain torch loop, same model,
data, batch size and threads per process.

- plain: one process, no Ray: the training rows as numpy arrays in memory, shuffled
  batches, the same forward / backward / clip / AdamW step as ``train._loop``;
- Ray Train: ``train.train`` as the nightly job runs it (TorchTrainer, DDP over gloo,
  rows streamed from a Ray Dataset with ``iter_torch_batches``, validation and a
  checkpoint every epoch).

samples/s = training sequences per second of the epochs' step loops (validation and
checkpointing excluded, the first epoch too: warm-up); "waiting for data" = the share of
the step loop spent in ``iter_torch_batches``. Throughput figures are the sum over workers.

    python benchmarks/training.py --users 20000 --items 2000
    python benchmarks/training.py --loss-kernel --items 9742     # the softmax loss alone, no Ray
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import numpy as np
import ray
import torch

from common import record  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, features, models, pipeline, storage, train  # noqa: E402
from raymedia.data.generate import GeneratorConfig, generate  # noqa: E402


def plain_loop(kind: str, cfg: config.Config, vocab, rows: dict[str, np.ndarray], epochs: int,
               threads: int) -> float:
    """samples/s of a single-process loop over in-memory rows (epochs after the first)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    model = models.build(kind, models.model_kwargs(kind, cfg), vocab.size, vocab.num_categories,
                         cfg.data.history_len, torch.as_tensor(vocab.item_category),
                         torch.as_tensor(vocab.popularity))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    n, bs, rng = len(rows["items"]), cfg.train.batch_size, np.random.default_rng(0)
    tensors = {k: torch.from_numpy(v) for k, v in rows.items()}
    seconds = 0.0
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        t0 = time.perf_counter()
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            out = model({k: v[idx] for k, v in tensors.items()})
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        if epoch > 0:
            seconds += time.perf_counter() - t0
    return n * (epochs - 1) / seconds


def ray_train(kind: str, overrides: list[str], inputs, day, workers: int, n: int) -> tuple[float, float]:
    """(samples/s, share of the step loop waiting for data) of ``train.train``."""
    # fractional CPUs: the workers leave a CPU to the Ray Data tasks that feed them (each
    # still runs one torch thread)
    cfg = config.load(None, [*overrides, f"train.num_workers={workers}", "train.cpus_per_worker=0.5"])
    uri = train.train([kind], cfg, inputs.histories, inputs.vocab, day, f"bench-{kind}-{workers}")[kind]
    hist = storage.read_json(storage.join(uri, "model.json"))["history"][1:]
    seconds = sum(h["seconds"] for h in hist)
    wait = sum(h["data_wait_s"] for h in hist)
    # each worker's epoch covers its shard; epochs run in lockstep (DDP), so n rows per epoch
    return n * len(hist) / seconds, wait / seconds


def loss_kernel(items: int, positions: int, dim: int, threads: int, repeats: int = 5) -> str:
    """Seconds per forward + backward of the full-softmax loss: one logits matrix vs row chunks."""
    import torch.nn.functional as F

    from raymedia.models.sequence import LOGITS_PER_CHUNK, chunked_cross_entropy
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h = torch.randn(positions, dim, requires_grad=True)
    w = torch.randn(items + 1, dim, requires_grad=True)
    target = torch.randint(0, items, (positions,))
    kernels = {"full logits matrix (F.cross_entropy)": lambda: F.cross_entropy(h @ w[1:].T, target),
               f"row chunks ({LOGITS_PER_CHUNK // items} rows, chunked_cross_entropy)":
                   lambda: chunked_cross_entropy(h, w[1:], target)}
    lines = [f"softmax loss, {positions:,} positions x {items:,} items x dim {dim}, {threads} thread(s), "
             f"best of {repeats}", "", "| kernel | s per step | positions/s | logits held |", "|---|---:|---:|---:|"]
    for name, fn in kernels.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn().backward()
            best = min(best, time.perf_counter() - t0)
        held = positions if name.startswith("full") else LOGITS_PER_CHUNK // items
        lines.append(f"| {name} | {best:.3f} | {positions / best:,.0f} | {held * items * 4 / 2**20:,.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not counted")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default="both", choices=[*models.KINDS, "both"])
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--loss-kernel", action="store_true", help="time only the softmax loss kernels")
    p.add_argument("--positions", type=int, default=6400, help="--loss-kernel: positions per step")
    args = p.parse_args()
    if args.loss_kernel:
        text = "\n\n".join(loss_kernel(args.items, args.positions, 64, t) for t in (1, 2))
        print(text)
        if not args.no_record:
            record("Training: the softmax loss kernel", text)
        return

    work = tempfile.mkdtemp(prefix="raymedia-train-bench-")
    overrides = [
        f"data.events_uri={work}/events", f"data.catalog_uri={work}/catalog",
        f"output.uri={work}/scores", f"output.models_uri={work}/models",
        f"data.lookback_days={args.days}", f"train.epochs={args.epochs}", "train.patience=0",
        f"train.batch_size={args.batch_size}", "eval.enabled=false", "ray.progress_bars=false"]
    cfg = config.load(None, overrides)
    gen = GeneratorConfig(users=args.users, items=args.items, days=args.days, seed=0)
    generate(gen, work, overwrite=True)
    day = gen.start + dt.timedelta(days=args.days)
    inputs = pipeline.prepare(cfg, day, storage.new_run_id())
    rows_ds = train.training_rows(inputs.histories, cfg, features.day_start_us(day)).materialize()
    batches = list(rows_ds.iter_batches(batch_size=None, batch_format="numpy"))
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    n = len(rows["items"])

    kinds = list(models.KINDS) if args.model == "both" else [args.model]
    table = []
    for kind in kinds:
        plain1 = plain_loop(kind, cfg, inputs.vocab, rows, args.epochs, threads=1)
        plain2 = plain_loop(kind, cfg, inputs.vocab, rows, args.epochs, threads=2)
        r1, w1 = ray_train(kind, overrides, inputs, day, 1, n)
        r2, w2 = ray_train(kind, overrides, inputs, day, 2, n)
        table += [(kind, "plain torch loop, 1 process x 1 thread", plain1, None, plain1),
                  (kind, "plain torch loop, 1 process x 2 threads", plain2, None, plain1),
                  (kind, "Ray Train, 1 worker x 1 thread", r1, w1, plain1),
                  (kind, "Ray Train, 2 workers (DDP) x 1 thread", r2, w2, plain1)]
        print(table[-4:], flush=True)
    lines = [f"training: {n:,} sequences (history {cfg.data.history_len}), {inputs.vocab.size - 1:,} items, "
             f"batch {args.batch_size} per worker, epochs 2..{args.epochs} timed", "",
             "| model | loop | samples/s | vs plain 1 thread | waiting for data |", "|---|---|---:|---:|---:|"]
    lines += [f"| {k} | {name} | {v:,.0f} | {v / base:.2f} | {'-' if w is None else f'{w:.1%}'} |"
              for k, name, v, w, base in table]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Training throughput", text)
    ray.shutdown()
    storage.delete_dir(work)


if __name__ == "__main__":
    main()
