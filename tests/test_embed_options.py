"""The e5 forward options (embedding.attention, embedding.bf16) of the sentence-transformers backend.

On the CPU: every attention implementation gives the same vectors (float noise apart), bf16 leaves
the model in float32, and an implementation the install lacks is a clear error naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from etl.config import ConfigError, load_config  # noqa: E402
from etl.embed import SentenceTransformerEmbedder  # noqa: E402

TEXTS = ["서울은 대한민국의 수도이다.", "짧은 글", "한국어 위키백과 문서의 첫 문장은 보통 정의로 시작한다. " * 3]


def test_attention_implementations_give_the_same_vectors(tiny_model: str) -> None:
    auto = SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=2)
    eager = SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=2, attention="eager")
    sdpa = SentenceTransformerEmbedder(tiny_model, device="cpu", batch_size=2, attention="sdpa", bf16=True)
    assert eager._model[0].auto_model.config._attn_implementation == "eager"
    assert sdpa._model[0].auto_model.config._attn_implementation == "sdpa"
    assert sdpa.dtype == "fp32"  # bf16 / fp16 apply on CUDA only
    a = auto.encode(TEXTS, "passage")
    np.testing.assert_allclose(eager.encode(TEXTS, "passage"), a, atol=1e-5)
    np.testing.assert_allclose(sdpa.encode(TEXTS, "passage"), a, atol=1e-5)


def test_unavailable_attention_is_a_clear_error(tiny_model: str) -> None:
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="embedding.attention"):
        SentenceTransformerEmbedder(tiny_model, device="cpu", attention="flash_attention_2")


def test_unknown_attention_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="embedding.attention"):
        load_config(None, ["embedding.attention=fast"])
