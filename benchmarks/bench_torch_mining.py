"""The torch engine of the mining stages against the CPU path (issue 16): neighbours and k-means.

Synthetic unit vectors shaped like e5 embeddings (topic clusters plus noise; ``--dim 1024`` for
e5-large) are written as the ``.npy`` files the pipeline exports, then:

* neighbours: ``etl.mine.write_neighbours`` with ``mining.engine = "usearch"`` (HNSW above
  ``exact_below``, as the pipeline runs it) and ``"torch"`` (exact, on the GPU when present):
  seconds and the usearch layer's recall@k against the torch (exact) layer;
* clusters: ``etl.mine.write_clusters`` with scikit-learn and with torch: seconds and inertia.

    python benchmarks/bench_torch_mining.py --passages 200000 --queries 100000 --dim 1024
    python benchmarks/bench_torch_mining.py --passages 4000 --queries 1000 --dim 64   # CPU smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import machine, save_json, table

from etl.config import ClusteringConfig, MiningConfig
from etl.mine import write_clusters, write_neighbours


def make_vectors(n: int, dim: int, topics: int, seed: int) -> np.ndarray:
    """Unit vectors around ``topics`` random directions, written in chunks (bounded memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        noise = rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        x = centres[rng.integers(topics, size=m)] + 0.6 * noise
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def neighbour_sets(path: Path) -> dict[str, set[str]]:
    """query_id -> set of passage ids of a neighbours layer."""
    t = pq.read_table(path, columns=["query_id", "passage_id"]).to_pydict()
    out: dict[str, set[str]] = {}
    for q, p in zip(t["query_id"], t["passage_id"], strict=True):
        out.setdefault(q, set()).add(p)
    return out


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=60, help="mining.search_depth")
    ap.add_argument("--clusters", type=int, default=0, help="clustering.k (0 = auto)")
    ap.add_argument("--skip-usearch", action="store_true", help="time only the torch engine")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "p.npy", make_vectors(a.passages, a.dim, max(8, a.passages // 500), 1))
        np.save(d / "q.npy", make_vectors(a.queries, a.dim, max(8, a.passages // 500), 2))
        pids = [f"p{i:08d}" for i in range(a.passages)]
        qids = [f"q{i:08d}" for i in range(a.queries)]
        layers = {}
        for engine in ("torch",) if a.skip_usearch else ("torch", "usearch"):
            cfg = MiningConfig(search_depth=a.k, top_k=min(30, a.k), engine=engine)
            t0 = time.perf_counter()
            stats = write_neighbours(d / f"n_{engine}.parquet", d / "p.npy", pids, d / "q.npy", qids, cfg,
                                     d / "ann.usearch", progress=False)
            sec = time.perf_counter() - t0
            layers[engine] = d / f"n_{engine}.parquet"
            rows.append({"stage": "neighbours", "engine": engine, "device": stats.get("device", "cpu"),
                         "exact": bool(stats["exact_search"]), "shards": int(stats["index_shards"]),
                         "seconds": round(sec, 2), "queries_per_s": round(a.queries / sec, 1)})
            print(rows[-1], flush=True)
        if "usearch" in layers:
            truth, got = neighbour_sets(layers["torch"]), neighbour_sets(layers["usearch"])
            recall = float(np.mean([len(got.get(q, set()) & s) / len(s) for q, s in truth.items()]))
            rows[-1]["recall_vs_exact"] = round(recall, 4)
        for engine in ("torch", "usearch"):
            t0 = time.perf_counter()
            stats = write_clusters(d / f"c_{engine}.parquet", d / "p.npy", pids, ClusteringConfig(k=a.clusters), 42,
                                   engine=engine)
            sec = time.perf_counter() - t0
            rows.append({"stage": "clusters", "engine": stats["engine"], "device": stats.get("device", "cpu"),
                         "k": int(stats["k"]), "seconds": round(sec, 2), "inertia": round(stats["inertia"], 1)})
            print(rows[-1], flush=True)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print(table(rows, cols))
    save_json(a.out or Path(__file__).parent / "out" / "torch_mining.json", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
