"""Scoring at scale: users/s and peak memory per process, 100k to 5M users.

For each size N: N synthetic user states (the table a nightly run commits and the next
one reads: last <= 50 interactions per user, Zipf items) are written as Parquet files,
then scored by the job's own scoring stage, streaming end to end:

    read_parquet(user_state) -> state.to_histories -> pipeline.score_histories
    (Scorer actor pool: top-K of 50k items + sequence heads) -> Parquet files

A sampler thread reads /proc every 0.5 s and keeps each process's peak RSS (and its
private part, RssAnon: RSS minus the object-store pages it maps). Memory is flat when
the per-process peaks do not grow with N; throughput is flat when users/s does not fall.

Models are randomly initialised (speed and memory do not depend on training).

    python benchmarks/scale.py --users 100000 1000000 5000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from common import publish_random_models, record  # noqa: E402  (puts the repo on sys.path)
from raymedia import config, features, pipeline  # noqa: E402
from raymedia.data import state  # noqa: E402
from raymedia.data.generate import GeneratorConfig, make_catalog  # noqa: E402
from raymedia.data.vocab import Vocab  # noqa: E402
from raymedia.schema import US_PER_DAY  # noqa: E402

FILE_USERS = 100_000          # users per user_state file (a nightly run writes a few per partition)
DISTINCT_FILES = 4            # distinct synthetic blocks, reused with fresh user ids


def state_block(rng: np.random.Generator, users: int, items: int, history: int, asof_day: int) -> pa.Table:
    """``users`` state rows: 1..history interactions each (mean ~history/2), Zipf items."""
    lengths = rng.integers(1, history + 1, users)
    n = int(lengths.sum())
    p = 1.0 / np.arange(1, items + 1)
    item_ids = rng.choice(np.arange(1, items + 1), n, p=p / p.sum())
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    days = rng.integers(asof_day - 14, asof_day, n).astype(np.int32)
    ts = days.astype(np.int64) * US_PER_DAY + rng.integers(0, US_PER_DAY, n)

    def lists(values) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values))
    one = pa.array(np.concatenate([[0], np.arange(1, users + 1)]).astype(np.int32))
    return pa.table({
        "user_id": pa.array(np.arange(users, dtype=np.int64)),
        "item_ids": lists(item_ids.astype(np.int64)), "events": lists(rng.integers(2, 6, n).astype(np.int8)),
        "ts": lists(ts), "dwell_s": lists(rng.exponential(120, n).astype(np.float32)),
        "days": pa.ListArray.from_arrays(one, pa.array(np.full(users, asof_day - 1, np.int32))),
        "counts": pa.ListArray.from_arrays(one, pa.array(lengths.astype(np.int32))),
        "last_day": pa.array(np.full(users, asof_day - 1, np.int32)),
    })


def write_states(root: Path, users: int, blocks: list[pa.Table]) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for f, lo in enumerate(range(0, users, FILE_USERS)):
        block = blocks[f % len(blocks)].slice(0, min(FILE_USERS, users - lo))
        block = block.set_column(0, "user_id", pa.array(np.arange(lo, lo + block.num_rows, dtype=np.int64)))
        files.append(str(root / f"part-{f:05d}.parquet"))
        pq.write_table(block, files[-1])
    return files


class PeakMemory:
    """Peak RSS and RssAnon (MB) of this process and every descendant, by pid, polled."""

    def __init__(self, interval: float = 0.5):
        self.peak: dict[int, list] = {}          # pid -> [title, rss, anon]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(interval)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        stats = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                status = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
                title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, ValueError):
                continue
            children.setdefault(int(status["PPid"]), []).append(int(d.name))
            if "VmRSS" in status:
                stats[int(d.name)] = (title, int(status["VmRSS"].split()[0]) / 1024,
                                      int(status.get("RssAnon", "0 kB").split()[0]) / 1024)
        todo, mine = [os.getpid()], set()
        while todo:
            pid = todo.pop()
            if pid not in mine:
                mine.add(pid)
                todo.extend(children.get(pid, []))
        for pid in mine & stats.keys():
            title, rss, anon = stats[pid]
            cur = self.peak.setdefault(pid, [title, 0.0, 0.0])
            if not title.startswith("ray::IDLE") and title.startswith("ray::"):
                cur[0] = title               # a worker is named by the last task it ran
            cur[1], cur[2] = max(cur[1], rss), max(cur[2], anon)

    def by_role(self) -> dict[str, tuple[int, float, float]]:
        """role -> (processes, max peak RSS, max peak RssAnon) over the processes of that role."""
        out: dict[str, list] = {}
        for pid, (title, rss, anon) in self.peak.items():
            role = "driver" if pid == os.getpid() else _role(title)
            r = out.setdefault(role, [0, 0.0, 0.0])
            r[0], r[1], r[2] = r[0] + 1, max(r[1], rss), max(r[2], anon)
        return {k: tuple(v) for k, v in out.items()}


def _role(title: str) -> str:
    if title.startswith("ray::"):
        name = title[5:].split(" ", 1)[0]
        if "Scorer" in name:
            return "scoring actor"
        if "write_batch" in name:
            return "write task"
        if "ReadParquet" in name or "to_histories" in name:
            return "read + histories task"
        return "other Ray worker" if name != "IDLE" else "idle Ray worker"
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if daemon in title:
            return f"Ray daemon ({daemon})"
    return "other (Ray daemons, shells)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=1, help="scoring actors")
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="raymedia-scale-"))
    day = dt.date(2026, 2, 1)
    cfg = config.load(None, [
        f"data.events_uri={work}/events", f"data.catalog_uri={work}/catalog",
        f"output.uri={work}/scores", f"output.models_uri={work}/models",
        f"two_tower.dim={args.dim}", f"sequence.dim={args.dim}", f"score.top_k={args.k}",
        f"score.concurrency={args.concurrency}", "eval.enabled=false", "ray.progress_bars=false"])
    catalog = make_catalog(GeneratorConfig(users=1, items=args.items, start=day - dt.timedelta(days=14)))
    (work / "catalog").mkdir(parents=True, exist_ok=True)
    pq.write_table(catalog, work / "catalog" / "catalog.parquet")
    vocab = Vocab.build(catalog, pa.array([], pa.int64()), features.day_start_us(day))
    uris = publish_random_models(cfg, vocab, "bench")
    rng = np.random.default_rng(0)
    asof_day = int(state.epoch_day(features.day_start_us(day)))
    blocks = [state_block(rng, FILE_USERS, args.items, cfg.data.history_len, asof_day)
              for _ in range(DISTINCT_FILES)]
    pipeline.init_ray(cfg)
    kwargs = {"model_uris": uris, "cfg": cfg, "asof": day.isoformat(), "vocab": vocab}

    rows, roles = [], {}
    for n in args.users:
        shutil.rmtree(work / "state", ignore_errors=True)
        files = write_states(work / "state", n, blocks)
        run_uri = str(work / "scores" / f"n={n}")
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            histories = ray.data.read_parquet(files).map_batches(
                state.to_histories, batch_format="pyarrow",
                fn_kwargs={"vocab": vocab, "n": cfg.data.history_len})
            written = pipeline.score_histories(cfg, histories, kwargs, run_uri, "bench",
                                               dt.datetime.now(dt.timezone.utc).isoformat())
            seconds = time.perf_counter() - t0
        scored = sum(int(w["rows"]) for w in written if w["table"] == "recommendations")
        assert scored == n, (scored, n)
        roles[n] = mem.by_role()
        rows.append((n, seconds, n / seconds))
        print(f"{n:,} users: {seconds:.0f} s, {n / seconds:,.0f} users/s", flush=True)
        shutil.rmtree(run_uri, ignore_errors=True)

    names = sorted({r for v in roles.values() for r in v}, key=lambda r: (r.startswith("other"), r))
    lines = [f"scale: {args.items:,} items, dim {args.dim}, K {args.k}, history <= {cfg.data.history_len}, "
             f"{args.concurrency} scoring actor(s) x {cfg.score.num_cpus:g} CPU, batch {cfg.score.batch_size}, "
             f"{os.cpu_count()} cores", "",
             "| users | seconds | users/s |", "|---:|---:|---:|"]
    lines += [f"| {n:,} | {s:,.0f} | {u:,.0f} |" for n, s, u in rows]
    lines += ["", "Peak memory per process, MB: RSS (private RssAnon in brackets); the largest "
              "process of each role, processes of that role in parentheses", "",
              "| process | " + " | ".join(f"{n:,} users" for n, _, _ in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for role in names:
        cells = []
        for n, _, _ in rows:
            c, rss, anon = roles[n].get(role, (0, 0.0, 0.0))
            cells.append(f"{rss:,.0f} [{anon:,.0f}] ({c})" if c else "-")
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Scoring at scale", text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
