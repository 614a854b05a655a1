"""Length-packed batches (``embedding.max_batch_tokens``) vs fixed ``batch_size`` batches (issue 16).

Both variants go through the project's code path,
``etl.embed.embed_batched(SentenceTransformerEmbedder(model_dir), texts, "passage", batch_size,
max_chars, max_batch_tokens=0 | N)``, on the same texts and model:

* fixed: today's default, texts sorted by character length, ``--batch-size`` texts per batch;
* packed: texts sorted by token length, each batch at most ``--budget`` padded tokens (members x
  longest member), so short texts share large batches and long ones go a few at a time.

Printed side by side: batches, padded tokens (what a padded forward computes on), padding waste,
the spread of per-batch padded work (the GPU wants near-constant work per batch), the tokenizer
pre-pass the planner needs, texts/s, and the ratios; and the largest difference between the two
runs' vectors (padding is masked, so float noise only).

Model: ``bench_embed_st.build_model`` (no downloads): a WordPiece tokenizer trained on the bundled
Korean sample and a random BERT (hidden 256, 4 layers, 512 positions), CPU fp32. Texts
(``--source``):

* ``sample`` (default): ``bench_embed.make_texts`` spans of the bundled Korean Wikipedia sample,
  long-tailed lengths (lognormal, median ``--median`` chars, clipped to 30..1500);
* ``autorag``: the pages of ``../shared/data/autorag/ocr_corpus_v3.parquet`` (OCR'd Korean PDF pages,
  7-2,484 chars, median 870; read-only, skipped with a message when absent), the first ``--n``;
* ``queries``: the same sample spans cut to query length (median 40 chars), the query stage's mix.

    python benchmarks/bench_packing.py                          # 300 sample spans, ~2 min on 2 cores
    python benchmarks/bench_packing.py --source autorag --n 300 --budget 8192
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_embed import make_texts
from bench_embed_st import build_model
from common import load, machine, save_json, table

AUTORAG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "autorag" / "ocr_corpus_v3.parquet"


def load_texts(source: str, n: int, seed: int, median: float) -> list[str] | None:
    """The benchmark's texts, or None when ``source`` is ``autorag`` and the file is absent."""
    if source == "sample":
        return make_texts(n, seed=seed, median=median)
    if source == "queries":
        return make_texts(n, seed=seed, median=40.0, sigma=0.5)
    if source == "autorag":
        if not AUTORAG.exists():
            return None
        import pyarrow.parquet as pq

        return [t for t in pq.read_table(AUTORAG, columns=["contents"]).column(0).to_pylist() if t][:n]
    raise ValueError(f"unknown --source {source!r}")


def batch_stats(tokens: np.ndarray, batches: list[np.ndarray]) -> dict:
    """Padded tokens of a plan (sum of members x longest), its batch count and per-batch spread."""
    padded = np.array([len(b) * int(tokens[b].max()) for b in batches])
    return {"batches": len(batches), "padded_tokens": int(padded.sum()),
            "padding_waste": 1 - float(tokens.sum()) / float(padded.sum()),
            "batch_padded_min": int(padded.min()), "batch_padded_max": int(padded.max()),
            "batch_padded_cv": float(padded.std() / padded.mean()),
            "texts_per_batch_max": max(len(b) for b in batches)}


def run(source: str = "sample", n: int = 300, batch_size: int = 32, budget: int = 4096, seed: int = 0,
        repeats: int = 2, threads: int = 2, median: float = 300.0, max_chars: int = 2000, log=print) -> dict | None:
    """Build the model, time both variants, return the measurements (None: no texts for ``source``)."""
    import torch

    from etl.embed import SentenceTransformerEmbedder, embed_batched, plan_batches, prepare_text, token_lengths

    texts = load_texts(source, n, seed, median)
    if texts is None:
        log(f"  skipped: {AUTORAG} is absent")
        return None
    torch.set_num_threads(threads)
    prepared = [prepare_text(t, max_chars) for t in texts]
    chars = np.array([len(t) for t in prepared])
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        model_dir = Path(tmp) / "bert-ko"
        build_model(model_dir, seed=seed)
        fixed = SentenceTransformerEmbedder(str(model_dir), device="cpu", fp16=False, batch_size=batch_size)
        packed = SentenceTransformerEmbedder(str(model_dir), device="cpu", fp16=False, batch_size=batch_size,
                                             max_batch_tokens=budget)
        t0 = time.perf_counter()
        tokens = token_lengths(packed, prepared, "passage")
        count_s = time.perf_counter() - t0
        stats = {"fixed": batch_stats(tokens, plan_batches(chars, batch_size)),
                 "packed": batch_stats(tokens, plan_batches(tokens, batch_size, budget))}
        log(f"  {len(texts)} {source} texts: chars median/mean/max {int(np.median(chars))}/{chars.mean():.0f}/"
            f"{chars.max()}, tokens median/mean/max {int(np.median(tokens))}/{tokens.mean():.0f}/{tokens.max()}; "
            f"token count pre-pass {count_s * 1000:.0f} ms")
        variants = {"fixed": (fixed, 0), "packed": (packed, budget)}
        for emb, b in variants.values():  # warm-up
            embed_batched(emb, texts[:64], "passage", batch_size, max_chars, max_batch_tokens=b)
        times: dict[str, list[float]] = {k: [] for k in variants}
        vecs: dict[str, np.ndarray] = {}
        for r in range(repeats):
            for name in (("fixed", "packed") if r % 2 == 0 else ("packed", "fixed")):
                emb, b = variants[name]
                t0 = time.perf_counter()
                vecs[name] = embed_batched(emb, texts, "passage", batch_size, max_chars, max_batch_tokens=b)
                times[name].append(time.perf_counter() - t0)
                log(f"    run {r + 1} {name:<6} {times[name][-1]:6.2f}s  {len(texts) / times[name][-1]:6.1f} texts/s"
                    f"  (load {load()})")
    best = {k: min(v) for k, v in times.items()}
    return {
        "source": source, "n": len(texts), "batch_size": batch_size, "max_batch_tokens": budget, "seed": seed,
        "threads": threads, "repeats": repeats, "tokens_total": int(tokens.sum()),
        "tokens_mean": float(tokens.mean()), "token_count_s": count_s,
        **{f"{k}_{s}": v for k, st in stats.items() for s, v in st.items()},
        "fixed_s": best["fixed"], "packed_s": best["packed"], "times": times,
        "fixed_texts_per_s": len(texts) / best["fixed"], "packed_texts_per_s": len(texts) / best["packed"],
        "speedup": best["fixed"] / best["packed"],
        "padded_tokens_ratio": stats["fixed"]["padded_tokens"] / stats["packed"]["padded_tokens"],
        "max_abs_diff": float(np.abs(vecs["fixed"] - vecs["packed"]).max()),
    }


def main() -> None:
    """CLI: run, print the two variants side by side, write benchmarks/out/packing_<source>.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=["sample", "autorag", "queries"], default="sample")
    ap.add_argument("--n", type=int, default=300, help="number of texts (default 300)")
    ap.add_argument("--batch-size", type=int, default=32, help="fixed variant: texts per batch (default 32)")
    ap.add_argument("--budget", type=int, default=4096, help="packed variant: max padded tokens per batch")
    ap.add_argument("--median", type=float, default=300.0, help="sample: median characters per text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant, best counts")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args()
    print(f"machine: {machine()}, load {load()}")
    wall0 = time.perf_counter()
    r = run(a.source, a.n, a.batch_size, a.budget, a.seed, a.repeats, a.threads, a.median)
    if r is None:
        return
    r["wall_s"], r["machine"] = time.perf_counter() - wall0, machine()
    rows = [{"variant": f"fixed {a.batch_size} texts", **{k: r[f"fixed_{k}"] for k in (
                "batches", "padded_tokens", "batch_padded_min", "batch_padded_max", "batch_padded_cv")},
             "waste": f"{r['fixed_padding_waste']:.0%}", "seconds": r["fixed_s"], "texts/s": r["fixed_texts_per_s"]},
            {"variant": f"packed <= {a.budget} tokens", **{k: r[f"packed_{k}"] for k in (
                "batches", "padded_tokens", "batch_padded_min", "batch_padded_max", "batch_padded_cv")},
             "waste": f"{r['packed_padding_waste']:.0%}", "seconds": r["packed_s"],
             "texts/s": r["packed_texts_per_s"]}]
    print()
    print(table(rows))
    print(f"\npadded tokens fixed / packed = {r['padded_tokens_ratio']:.2f}x (real tokens {r['tokens_total']:,}); "
          f"throughput packed / fixed = {r['speedup']:.2f}x; token count pre-pass {r['token_count_s']:.2f}s")
    print(f"max |difference| between the two runs' vectors: {r['max_abs_diff']:.2e}; wall {r['wall_s']:.0f}s")
    out = Path(__file__).parent / "out" / f"packing_{a.source}.json"
    save_json(out, r)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
