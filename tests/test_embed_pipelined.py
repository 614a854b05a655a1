"""Pipelined GPU encoding (``SentenceTransformerEmbedder.encode_batches`` with ``pipelined``).

On CUDA the embedder tokenizes batch ``i + 1`` on a helper thread while the model runs batch ``i``.
CI has no GPU, so the same code path is forced on the CPU here (``pipelined = True``) with the
tiny locally built model: it must give the vectors ``SentenceTransformer.encode`` gives, in order,
for mixed lengths, empty batches and empty texts, through ``embed_batched`` (the UDFs' path).
"""

from __future__ import annotations

import numpy as np

from etl.embed import SentenceTransformerEmbedder, embed_batched

TEXTS = ["서울", "", "블랙홀은 중력이 매우 강한 천체이다. " * 12, "x", "세종은 훈민정음을 창제하였다.",
         "천체 " * 80, "query: 질문", "대한민국의 수도 " * 5] * 3


def test_pipelined_batches_equal_plain_encode(tiny_model):
    emb = SentenceTransformerEmbedder(tiny_model, device="cpu", fp16=False, batch_size=4)
    assert emb.pipelined is False  # only CUDA pipelines by default
    plain = embed_batched(emb, TEXTS, "passage", 4, 2000)
    emb.pipelined = True
    piped = embed_batched(emb, TEXTS, "passage", 4, 2000)
    assert piped.shape == (len(TEXTS), emb.dim)
    np.testing.assert_allclose(piped, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(piped, axis=1), 1.0, atol=1e-5)
    # query prefix differs from passage prefix: different vectors
    assert not np.allclose(embed_batched(emb, TEXTS[:3], "query", 4, 2000), piped[:3])


def test_pipelined_keeps_batch_order_and_empty_batches(tiny_model):
    emb = SentenceTransformerEmbedder(tiny_model, device="cpu", fp16=False, batch_size=4)
    batches = [["하나", "둘"], [], ["셋"], ["넷", "다섯", "여섯"]]
    expected = [emb.encode(b, "query") for b in batches]
    emb.pipelined = True
    got = emb.encode_batches(batches, "query")
    assert [g.shape for g in got] == [(2, emb.dim), (0, emb.dim), (1, emb.dim), (3, emb.dim)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)
    assert emb.encode_batches([], "query") == []
