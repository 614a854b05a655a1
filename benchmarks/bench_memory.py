"""Peak RSS (and wall time) of every non-embedding pipeline stage, each in a fresh process.

Each stage runs as ``/usr/bin/time -v python bench_memory.py --child STAGE ...``: a new Python
process that opens the warehouse and calls ``etl.pipeline.run_stage(stage, ctx, force=True)`` (or
``etl.export.export`` for the export step). Peak RSS is the child's ``ru_maxrss`` (reported by the
child itself, and by GNU time as a fallback when the child is killed). RSS counts file pages
mapped and touched (``np.load(mmap_mode="r")``), so memory-mapped embeddings show up in it.

The embedding stages (``passage_embeddings``, ``query_embeddings``) are NOT run: they are replaced
by a SUBSTITUTE that writes precomputed random vectors as those two layers (same columns and
types): passages get draws from a two-level Gaussian mixture (benchmarks/bench_ann.py), each query
gets its positive passage's vector plus noise, renormalized. Their rows are marked
``substitute`` in the output. Stages after them (neighbours, clusters, candidates, teacher_scores
with the bi-encoder teacher, scored_candidates, examples, export) run for real on those vectors.

    python benchmarks/bench_memory.py --docs 1000000 --until queries   # text stages at 1M docs
    python benchmarks/bench_memory.py --docs 100000                    # all stages at 100k docs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import ensure_corpus, load, machine, make_config, save_json, table

HERE = Path(__file__).resolve().parent
SUBSTITUTED = ("passage_embeddings", "query_embeddings")


# ---- child side --------------------------------------------------------------------------------
def _write_passage_vectors(ctx, out: Path, dim: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_ann import mixture

    schema = pa.schema([("passage_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    reader = ctx.wh.con.sql("SELECT passage_id FROM passages ORDER BY passage_id").to_arrow_reader(100_000)
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    n = 0
    try:
        for i, batch in enumerate(reader):
            m = batch.num_rows
            vec = mixture(m, dim, 2000, seed, stream=1000 + i)
            emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32)),
                                           pa.array(vec.reshape(-1)))
            writer.write_table(pa.table({"passage_id": batch.column(0), "embedding": emb}, schema=schema))
            n += m
    finally:
        writer.close()
    return {"substitute": True, "dim": dim, "rows": n}


def _write_query_vectors(ctx, out: Path, dim: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("query_id", pa.string()), ("embedding", pa.list_(pa.float32())),
                        ("positive_embedding", pa.list_(pa.float32()))])
    reader = ctx.wh.con.sql(
        "SELECT q.query_id, q.positive_text IS NOT NULL AS has_pos, e.embedding FROM queries q "
        "JOIN passage_embeddings e ON e.passage_id = q.positive_passage_id ORDER BY q.query_id"
    ).to_arrow_reader(50_000)
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    rng = np.random.default_rng([seed, 99])
    n = 0

    def lists(v: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
        off = pa.array(np.arange(0, (len(v) + 1) * dim, dim, dtype=np.int32))
        arr = pa.ListArray.from_arrays(off, pa.array(v.reshape(-1)))
        if valid is None:
            return arr
        return pa.ListArray.from_arrays(off, pa.array(v.reshape(-1)), mask=pa.array(~valid))

    try:
        for batch in reader:
            m = batch.num_rows
            pos = batch.column(2).flatten().to_numpy().astype(np.float32).reshape(m, dim)
            q = pos + rng.standard_normal((m, dim), dtype=np.float32) * (0.9 / np.sqrt(dim))
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            p2 = pos + rng.standard_normal((m, dim), dtype=np.float32) * (0.2 / np.sqrt(dim))
            p2 /= np.linalg.norm(p2, axis=1, keepdims=True)
            has = batch.column(1).to_numpy(zero_copy_only=False).astype(bool)
            writer.write_table(pa.table({"query_id": batch.column(0), "embedding": lists(q),
                                         "positive_embedding": lists(p2, has)}, schema=schema))
            n += m
    finally:
        writer.close()
    return {"substitute": True, "dim": dim, "rows": n}


class RssSampler:
    """Peak anonymous and file-backed resident memory of this process, sampled from /proc every 50 ms.

    ``ru_maxrss`` (peak RSS) counts pages of memory-mapped files too (the embedding matrices the
    mining stages read by random row); those are clean page cache the kernel can drop at any time.
    ``RssAnon`` is the memory the process itself allocated (heap, DuckDB buffers, arrays).
    """

    def __init__(self) -> None:
        import threading

        self.peak_anon_kb = 0
        self.peak_file_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        self.peak_anon_kb = max(self.peak_anon_kb, int(line.split()[1]))
                    elif line.startswith("RssFile:"):
                        self.peak_file_kb = max(self.peak_file_kb, int(line.split()[1]))
        except OSError:  # not Linux
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def stop(self) -> None:
        """Take a last sample and stop."""
        self._sample()
        self._stop.set()


def child(stage: str, overrides: list[str], dim: int, seed: int) -> None:
    """Run one stage in this (fresh) process and print its result with this process's peak RSS."""
    import resource

    from etl.config import load_config
    from etl.pipeline import Context, run_stage
    from etl.warehouse import Warehouse

    sampler = RssSampler()
    cfg = load_config(None, overrides)
    wh = Warehouse(cfg)
    wh.con.execute("SET enable_progress_bar = false")
    t0 = time.perf_counter()
    extra: dict = {}
    try:
        ctx = Context(cfg, wh)
        if stage in SUBSTITUTED:
            tmp = wh.tmp_path(stage)
            fn = _write_passage_vectors if stage == "passage_embeddings" else _write_query_vectors
            extra = fn(ctx, tmp, dim, seed)
            rows = wh.register_file(stage, tmp)
        elif stage == "export":
            from etl import export as export_mod

            summary = export_mod.export(ctx, log=lambda *_: None)
            rows = int(summary.get("total_queries", 0))
        else:
            from common import stage_by_name

            res = run_stage(stage_by_name(stage), ctx, force=True)
            rows, extra = res.rows, res.extra
    finally:
        wh.close()
    sampler.stop()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"stage": stage, "rows": rows, "seconds": time.perf_counter() - t0,
                                  "maxrss_kb": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime,
                                  "peak_anon_kb": sampler.peak_anon_kb, "peak_file_kb": sampler.peak_file_kb,
                                  "extra": extra}, default=str), flush=True)


# ---- parent side -------------------------------------------------------------------------------
def run_child(stage: str, overrides: list[str], dim: int, seed: int, timeout: float) -> dict:
    """Run one stage under /usr/bin/time -v in a new process group; parse its result."""
    cmd = [sys.executable, str(HERE / "bench_memory.py"), "--child", stage, "--dim", str(dim), "--seed", str(seed),
           "--overrides", json.dumps(overrides)]
    if Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         cwd=str(HERE))
    try:
        out, err = p.communicate(timeout=timeout)
        status = "ok" if p.returncode == 0 else f"exit {p.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        status = f"killed after {timeout:.0f}s"
    wall = time.perf_counter() - t0
    res: dict = {"stage": stage, "status": status, "wall_s": wall}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res.update(json.loads(line[7:]))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    if m:
        res["time_maxrss_kb"] = int(m.group(1))
    rss_kb = res.get("maxrss_kb") or res.get("time_maxrss_kb") or 0
    res["peak_rss_MiB"] = rss_kb / 1024
    if res.get("peak_anon_kb"):
        res["peak_anon_MiB"] = res["peak_anon_kb"] / 1024
        res["peak_file_MiB"] = res["peak_file_kb"] / 1024
    if status != "ok":
        tail = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("\t")][-8:]
        res["error"] = "\n".join(tail)
    return res


def stage_list(until: str | None, only: list[str] | None) -> list[str]:
    """Stage names in pipeline order (+ export), optionally cut after ``until`` or filtered."""
    from etl.pipeline import STAGES

    names = [s.name for s in STAGES] + ["export"]
    if until:
        names = names[: names.index(until) + 1]
    if only:
        names = [n for n in names if n in only]
    return names


def run(docs: int, files: int, corpus: Path, wh: Path, until: str | None = None, only: list[str] | None = None,
        dim: int = 384, seed: int = 0, timeout: float = 3600, extra: list[str] | None = None, log=print) -> list[dict]:
    """Every stage in a fresh process; returns one row per stage."""
    ensure_corpus(corpus, docs, files, log=log)
    cfg = make_config(corpus, wh, extra)  # validates the overrides once here
    del cfg
    from synth import source_overrides

    overrides = source_overrides(corpus) + [
        f'paths.warehouse="{Path(wh).resolve()}"', f'paths.export="{Path(wh).resolve() / "export"}"',
        "run.progress=false", *(extra or [])]
    rows = []
    for stage in stage_list(until, only):
        r = run_child(stage, overrides, dim, seed, timeout)
        r["docs"] = docs
        r["substitute"] = stage in SUBSTITUTED
        rows.append(r)
        log(f"    {stage:<20} {r.get('rows', 0):>12,} rows {r['wall_s']:8.1f}s  peak RSS {r['peak_rss_MiB']:8,.0f} MiB"
            f" (anon {r.get('peak_anon_MiB', 0):,.0f}, file {r.get('peak_file_MiB', 0):,.0f})"
            f"  {'(SUBSTITUTE: random vectors) ' if r['substitute'] else ''}{r['status']}  (load {load()})")
        if r["status"] != "ok":
            log("      " + r.get("error", "").replace("\n", "\n      "))
            break
    return rows


COLS = ["docs", "stage", "rows", "wall_s", "cpu_s", "peak_rss_MiB", "peak_anon_MiB", "peak_file_MiB", "status"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=0, help="chunk files (default: 20 at >= 1M docs, else 8)")
    ap.add_argument("--until", help="stop after this stage (e.g. queries)")
    ap.add_argument("--only", nargs="+", help="run only these stages (the warehouse must hold their inputs)")
    ap.add_argument("--dim", type=int, default=384, help="dimension of the substitute embeddings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per stage")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.child:
        child(a.child, json.loads(a.overrides), a.dim, a.seed)
        return
    files = a.files or (20 if a.docs >= 1_000_000 else 8)
    print(f"machine: {machine()}")
    rows = run(a.docs, files, a.work / f"synth_{a.docs}", a.work / f"wh_{a.docs}", a.until, a.only, a.dim, a.seed,
               a.timeout, a.set)
    print()
    print(table(rows, COLS))
    worst = max((r for r in rows if not r["substitute"]), key=lambda r: r["peak_rss_MiB"], default=None)
    if worst:
        print(f"\nhighest peak RSS (non-embedding stages): {worst['stage']} {worst['peak_rss_MiB']:,.0f} MiB "
              f"(goal < 4096 MiB)")
    worst = max((r for r in rows if not r["substitute"]), key=lambda r: r.get("peak_anon_MiB", 0), default=None)
    if worst and worst.get("peak_anon_MiB"):
        print(f"highest peak anonymous RSS (non-embedding stages): {worst['stage']} {worst['peak_anon_MiB']:,.0f} MiB")
    save_json(a.out or HERE / "out" / f"memory_{a.docs}.json", rows)


if __name__ == "__main__":
    main()
