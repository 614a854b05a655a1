"""What every stage and the export share: the run :class:`Context`, the SQL model loader, UTC timestamps.

A module of its own so that the runner (:mod:`etl.pipeline`), the export (:mod:`etl.export`) and
the plan (:mod:`etl.plan`) can all use them without importing each other (no import cycle in
``etl/``; ``tests/test_structure.py`` checks it, counting lazy and type-checking imports).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import embed as embed_mod
from .config import Config
from .warehouse import LayerResult, Warehouse

if TYPE_CHECKING:
    from .distributed import RayEngine

ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"


def utc_now(fmt: str = ISO_SECONDS) -> str:
    """The current UTC time formatted with ``fmt`` (default ISO 8601 to the second, ``2026-01-31T12:00:00Z``)."""
    return datetime.now(UTC).strftime(fmt)


def now_iso() -> str:
    """Current UTC time, ISO 8601 (``2026-01-31T12:00:00Z``)."""
    return utc_now()


def strip_sql(text: str) -> str:
    """The statement of a SQL file without surrounding blanks and trailing semicolons."""
    return text.strip().rstrip(";")


def read_sql(path: Path) -> str:
    """Read a SQL file (a model, a report section, a stats query) as one statement without its ``;``."""
    return strip_sql(path.read_text(encoding="utf-8"))


def sql_model(cfg: Config, name: str) -> Path:
    """Path of a SQL model in ``paths.sql`` (the packaged ``etl/sql/`` by default); a clear error if missing."""
    path = cfg.sql_dir / f"{name}.sql"
    if not path.is_file():
        if not cfg.paths.sql:
            raise FileNotFoundError(f"SQL model {name}.sql is missing from the installed package ({cfg.sql_dir}): "
                                    "the installation is incomplete; reinstall ko-sparse-etl")
        raise FileNotFoundError(
            f"SQL model {name}.sql not found in paths.sql = {str(cfg.sql_dir)!r}; `python -m etl sql --copy DIR` "
            "writes a full editable copy of the packaged models to DIR")
    return path


@dataclass
class Context:
    """What stages get: config, warehouse (connection + paths) and lazily loaded models."""

    cfg: Config
    wh: Warehouse
    results: dict[str, LayerResult] = field(default_factory=dict)
    top_k_logged: bool = False
    _udfs: embed_mod.EmbeddingUDFs | None = None
    _engine: RayEngine | None = None

    def engine(self) -> RayEngine | None:
        """The Ray engine when ``distributed.engine = "ray"`` (connected on first use), else None (local)."""
        if self.cfg.distributed.engine != "ray":
            return None
        if self._engine is None:
            from .distributed import RayEngine

            self._engine = RayEngine(self.cfg.distributed)
        return self._engine.start()

    def close_engine(self) -> None:
        """Shut down a Ray cluster this run started (a no-op for the local engine)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def progress(self) -> bool:
        """Whether to draw progress bars."""
        return self.cfg.run.progress

    def udfs(self) -> embed_mod.EmbeddingUDFs:
        """Load the embedding model once, register the UDFs and the cache view."""
        if self._udfs is None:
            ecfg = self.cfg.embedding
            d = self.cfg.distributed
            if d.engine == "ray" and d.gpus_per_worker > 0:
                # the Ray actors hold the GPUs; the driver's copy only gives the dimension and the UDFs
                # (which find every vector in the cache), so it stays on the CPU
                ecfg = dataclasses.replace(ecfg, device="cpu", processes=1)
            embedder = embed_mod.load_embedder(ecfg)
            cache = (embed_mod.CacheWriter(self.cache_dir, embedder.dim, flush_seconds=self.cfg.embedding.flush_seconds)
                     if self.cfg.embedding.cache else None)
            self._udfs = embed_mod.EmbeddingUDFs(embedder, self.cfg.embedding, self.progress, cache)
            self._udfs.register(self.wh.con)
            self.wh.con.execute("SET VARIABLE embedding_dim = ?", [embedder.dim])
            self.refresh_cache_view()
        return self._udfs

    @property
    def cache_dir(self) -> Path:
        """Embedding cache of the configured model."""
        return self.wh.root / "cache" / "embeddings" / embed_mod.model_slug(self.cfg.embedding.model)

    def refresh_cache_view(self) -> None:
        """(Re)create the ``embedding_cache`` view over the cache files (empty when caching is off).

        The cache holds each text once: the UDFs only see cache misses, the writer skips hashes it
        already wrote, and ``--shard`` splits work by text hash, so shards never overlap.
        """
        files = sorted(self.cache_dir.glob("*.parquet")) if self.cfg.embedding.cache else []
        if files:
            listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            self.wh.con.execute(
                "CREATE OR REPLACE TEMP VIEW embedding_cache AS "
                f"SELECT text_hash, embedding FROM read_parquet([{listing}])")
        else:
            self.wh.con.execute(
                "CREATE OR REPLACE TEMP VIEW embedding_cache AS "
                "SELECT NULL::VARCHAR AS text_hash, NULL::FLOAT[] AS embedding WHERE false")
