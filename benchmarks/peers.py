"""raymedia's top-K scoring vs what a user would otherwise pick, on the same factors and K.

One factor model (user factors U, item factors V, float32, random: speed does not
depend on training) and one user-item matrix of seen items; every contender
returns each user's K best unseen items by U @ V.T, using all cores:

- raymedia ``ranking.topk``: item-chunked matmul, seen items masked, exact
  deterministic top-K, batches of users on one thread per core;
- raymedia on Ray Data: the same in ``map_batches`` actors, one per core (what the nightly
  job runs);
- implicit ``AlternatingLeastSquares.recommend(users, user_items, N=K,
  filter_already_liked_items=True)`` with the same factors;
- Spark MLlib ``ALSModel.recommendForAllUsers(K)`` with the same factors, local[cores]
  (Spark has no seen-item filter: it does strictly less work).

Needs the bench extras: ``pip install -e .[bench]`` (implicit, pyspark; a JDK for Spark).

    python benchmarks/peers.py --users 20000 --items 5000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from common import record, workload_args  # noqa: E402  (puts the repo on sys.path)
from raymedia.ranking import DotScores, topk  # noqa: E402


def seen_matrix(users: int, items: int, per_user: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Zipf-popular seen items, ``per_user`` draws per user (duplicates collapse)."""
    p = 1.0 / np.arange(1, items + 1)
    cols = rng.choice(items, size=(users, per_user), p=p / p.sum())
    rows = np.repeat(np.arange(users), per_user)
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols.ravel())), shape=(users, items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def padded_seen(m: sp.csr_matrix, lo: int, hi: int) -> torch.Tensor:
    """(B, max seen) item indices + 1 (raymedia's index 0 is padding), zero padded."""
    block = m[lo:hi]
    lengths = np.diff(block.indptr)
    out = np.zeros((hi - lo, max(int(lengths.max(initial=0)), 1)), np.int64)
    rows = np.repeat(np.arange(hi - lo), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = block.indices + 1
    return torch.from_numpy(out)


def raymedia_topk(U: np.ndarray, V: torch.Tensor, seen: sp.csr_matrix, k: int, batch: int,
                  cores: int) -> np.ndarray:
    """Batches of users on ``cores`` threads, one BLAS / torch thread each (like implicit)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(lo: int) -> np.ndarray:
        hi = min(lo + batch, len(U))
        _, idx = topk(DotScores(torch.from_numpy(U[lo:hi]), V), k, 65536, padded_seen(seen, lo, hi))
        return idx.numpy() - 1
    torch.set_num_threads(1)
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(cores) as pool:
        return np.concatenate(list(pool.map(one, range(0, len(U), batch))))


class FactorScorer:
    """The Ray Data actor: holds the item factors, scores a batch of users' rows."""

    def __init__(self, V: np.ndarray, k: int):
        torch.set_num_threads(1)
        threadpool_limits(1, "blas")
        self.V = torch.from_numpy(np.vstack([np.zeros((1, V.shape[1]), np.float32), V]))
        self.k = k

    def __call__(self, batch: pa.Table) -> pa.Table:
        f = batch["factors"].combine_chunks()
        U = torch.from_numpy(f.values.to_numpy().reshape(len(f), -1))
        seen = batch["seen"].combine_chunks()
        lengths = np.diff(seen.offsets.to_numpy())
        pad = np.zeros((len(lengths), max(int(lengths.max(initial=0)), 1)), np.int64)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        pad[rows, cols] = seen.values.to_numpy() + 1
        _, idx = topk(DotScores(U, self.V), self.k, 65536, torch.from_numpy(pad))
        return pa.table({"user": batch["user"], "items": pa.array(list(idx.numpy() - 1))})


def ray_data_topk(U: np.ndarray, V: np.ndarray, seen: sp.csr_matrix, k: int, batch: int,
                  cores: int) -> float:
    import ray
    lists = pa.ListArray.from_arrays(pa.array(seen.indptr.astype(np.int32)), pa.array(seen.indices))
    factors = pa.FixedSizeListArray.from_arrays(pa.array(U.ravel()), U.shape[1])
    table = pa.table({"user": np.arange(len(U)), "factors": factors, "seen": lists})
    step = 16 * batch          # many blocks: one block would reach one actor only
    ds = ray.data.from_arrow([table.slice(lo, step) for lo in range(0, len(U), step)]).materialize()
    t0 = time.perf_counter()
    n = ds.map_batches(FactorScorer, fn_constructor_kwargs={"V": V, "k": k},
                       batch_size=batch, batch_format="pyarrow", num_cpus=1,
                       compute=ray.data.ActorPoolStrategy(size=cores)).count()
    assert n == len(U)
    return time.perf_counter() - t0


def spark_topk(U: np.ndarray, V: np.ndarray, k: int, cores: int) -> tuple[float, str]:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("raymedia-peers")
             .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    uf = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(U)], "id int, features array<float>")
    itf = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(V)], "id int, features array<float>")
    uf, itf = uf.cache(), itf.cache()
    uf.count(), itf.count()
    java = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("als", U.shape[1], uf._jdf, itf._jdf)
    java.setUserCol("user").setItemCol("item").setPredictionCol("prediction")
    model = ALSModel(java)
    model._transfer_params_from_java()
    t0 = time.perf_counter()
    model.recommendForAllUsers(k).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - t0
    version = spark.version
    spark.stop()
    return seconds, version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_args(p)
    p.add_argument("--seen", type=int, default=30, help="seen-item draws per user")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--no-spark", action="store_true")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    U = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    V = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    seen = seen_matrix(args.users, args.items, args.seen, rng)

    rows = []
    Vt = torch.from_numpy(np.vstack([np.zeros((1, args.dim), np.float32), V]))
    t0 = time.perf_counter()
    ours = raymedia_topk(U, Vt, seen, args.k, args.batch, cores)
    rows.append(("raymedia ranking.topk (in process)", time.perf_counter() - t0))

    from implicit.cpu.als import AlternatingLeastSquares
    als = AlternatingLeastSquares(factors=args.dim, dtype=np.float32, num_threads=cores)
    als.user_factors, als.item_factors = U, V
    with threadpool_limits(1, "blas"):          # implicit's own advice: it threads itself
        t0 = time.perf_counter()
        ids, _ = als.recommend(np.arange(args.users), seen, N=args.k, filter_already_liked_items=True)
        rows.append(("implicit ALS.recommend (filter seen)", time.perf_counter() - t0))
    # same answer: the top-K sets agree (order may differ only on exact ties)
    agree = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ours[:2000], ids[:2000])])

    import ray
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows.append(("raymedia on Ray Data (actor, filter seen)",
                 ray_data_topk(U, V, seen, args.k, args.batch, cores)))
    ray.shutdown()
    if not args.no_spark:
        seconds, version = spark_topk(U, V, args.k, cores)
        rows.append((f"Spark {version} ALSModel.recommendForAllUsers (no seen filter)", seconds))

    base = rows[0][1]
    lines = [f"peers: {args.users} users, {args.items} items, dim {args.dim}, K {args.k}, "
             f"~{seen.nnz / args.users:.0f} seen items per user, {cores} cores each; "
             f"top-K agreement raymedia vs implicit {agree:.4f}", "",
             "| scorer | users/s | time vs raymedia |", "|---|---:|---:|"]
    lines += [f"| {name} | {args.users / s:,.0f} | {s / base:.2f}x |" for name, s in rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("Scoring vs peers (same factors, same K)", text)


if __name__ == "__main__":
    main()
