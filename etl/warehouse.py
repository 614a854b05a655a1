"""The warehouse: one Parquet file per layer, a DuckDB database with a view per layer, the runner.

Layout under ``paths.warehouse``::

    layers/<layer>.parquet     one file per layer, written to a temporary name then renamed
    state/<layer>.json         fingerprint, row count and timing of the last materialization
    state/export.json          the same for the export (a step without a layer: its files are the export)
    cache/embeddings/...       embedding cache (see etl.embed)
    etl.duckdb                 a view per layer over layers/<layer>.parquet (absolute paths)

A SQL model is a plain ``SELECT`` in ``etl/sql/<layer>.sql`` that reads earlier layers by name.
Parameters come from the config as DuckDB variables, read with ``getvariable('name')``.
Contracts are comment lines in the model file, checked right after materialization::

    -- @unique: passage_id
    -- @not_null: passage_id, doc_id, text
    -- @check: length(text) > 0

A broken contract stops the run, naming the layer and a few offending rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from .config import SQL_VARIABLES, Config, config_value
from .embed import cache_key_prefix


class ContractError(RuntimeError):
    """A layer broke its contract."""


class WarehouseLockedError(RuntimeError):
    """Another process holds the warehouse."""


@dataclass
class Contract:
    """Declarative checks for a layer (unique keys, not-null columns, row predicates)."""

    unique: list[list[str]] = field(default_factory=list)
    not_null: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, sql: str) -> Contract:
        """Read ``-- @unique:``, ``-- @not_null:`` and ``-- @check:`` comment lines."""
        c = cls()
        for m in re.finditer(r"^\s*--\s*@(unique|not_null|check):\s*(.+?)\s*$", sql, re.M):
            kind, body = m.group(1), m.group(2)
            if kind == "unique":
                c.unique.append([x.strip() for x in body.split(",")])
            elif kind == "not_null":
                c.not_null.extend(x.strip() for x in body.split(","))
            else:
                c.checks.append(body)
        return c


@dataclass
class LayerResult:
    """What a stage reports: rows written, seconds spent, whether it was skipped, extra counters."""

    name: str
    rows: int
    seconds: float
    skipped: bool = False
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sha(*parts: Any) -> str:
    """Short stable hash of the given parts."""
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


# COPY options of every SQL layer. zstd level 1 (pyarrow's default) rather than DuckDB's 3: text layers come out ~25 %
# larger, and writing one costs ~15 % less CPU (100k docs: documents 1.96 s vs 2.26 s; clean_documents + documents +
# quarantine 12.2 s vs 13.0 s).
LAYER_PARQUET = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 10000"


def _q(path: Path) -> str:
    """Quote a path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


class Warehouse:
    """Holds the DuckDB connection and knows where each layer lives."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = cfg.warehouse_dir
        self.layers_dir = self.root / "layers"
        self.state_dir = self.root / "state"
        for d in (self.root, self.layers_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "etl.duckdb"
        try:
            self.con = duckdb.connect(str(self.db_path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise WarehouseLockedError(
                    f"warehouse {self.root} is in use by another process (DuckDB holds a lock on "
                    f"{self.db_path.name}); wait for that run to finish"
                ) from exc
            raise
        tmp = cfg.duckdb.temp_directory or str(self.root / "tmp")
        self.con.execute(f"SET memory_limit = '{cfg.duckdb.memory_limit}'")
        self.con.execute(f"SET temp_directory = {_q(Path(tmp))}")
        if cfg.duckdb.threads:
            self.con.execute(f"SET threads = {int(cfg.duckdb.threads)}")
        self.con.execute("SET preserve_insertion_order = true")
        self._set_variables()
        for layer in self.existing_layers():
            self._create_view(layer)

    # ---- parameters -----------------------------------------------------------------------
    def _set_variables(self) -> None:
        """Expose config values to SQL models as DuckDB variables (``getvariable('name')``).

        Which variable holds which setting: :data:`etl.config.SQL_VARIABLES` (and
        ``DERIVED_SQL_VARIABLES`` for the computed ones; ``embedding_dim`` is set when the model loads).
        """
        c = self.cfg
        variables: dict[str, Any] = {name: config_value(c, key) for name, key in SQL_VARIABLES.items()}
        variables["embedding_cache_key"] = cache_key_prefix(c.embedding)  # the embedding cache's key prefix
        variables["top_k"] = c.mining.top_k  # the runner narrows it on small corpora (pipeline.effective_top_k)
        for name, value in variables.items():
            self.con.execute(f"SET VARIABLE {name} = ?", [value])
        self.con.execute("SET VARIABLE source_url_prefix = MAP(?::VARCHAR[], ?::VARCHAR[])",
                         [[s.name for s in c.sources], [s.url_prefix for s in c.sources]])

    # ---- layers ---------------------------------------------------------------------------
    def layer_path(self, name: str) -> Path:
        """Parquet file of a layer."""
        return self.layers_dir / f"{name}.parquet"

    def existing_layers(self) -> list[str]:
        """Layers that have been materialized."""
        return sorted(p.stem for p in self.layers_dir.glob("*.parquet"))

    def has_layer(self, name: str) -> bool:
        """Whether a layer exists on disk."""
        return self.layer_path(name).exists()

    def _create_view(self, name: str) -> None:
        self.con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({_q(self.layer_path(name))})"
        )

    def count(self, name: str) -> int:
        """Row count of a layer (from Parquet metadata)."""
        return int(self.con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])

    # ---- state / fingerprints -------------------------------------------------------------
    def state(self, name: str, layer: bool = True) -> dict[str, Any] | None:
        """Last recorded materialization of a layer (or of a step without one: ``layer=False``), or None."""
        p = self.state_dir / f"{name}.json"
        if not p.exists() or (layer and not self.has_layer(name)):
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def fingerprint(self, name: str) -> str:
        """Fingerprint of the current materialization of a layer ('' if none)."""
        st = self.state(name)
        return st["fingerprint"] if st else ""

    def is_fresh(self, name: str, fingerprint: str, layer: bool = True) -> bool:
        """True when the layer exists (``layer``) and was built from the same inputs and settings."""
        st = self.state(name, layer)
        return bool(st) and st.get("fingerprint") == fingerprint

    def write_state(self, result: LayerResult, parts: dict[str, Any] | None = None) -> None:
        """Record a layer's fingerprint, rows and timing (atomically).

        ``parts``: what the fingerprint hashed, for ``python -m etl plan``'s reasons.
        """
        payload = {
            "layer": result.name,
            "fingerprint": result.fingerprint,
            "rows": result.rows,
            "seconds": round(result.seconds, 3),
            "extra": result.extra,
            **({"parts": parts} if parts is not None else {}),
        }
        atomic_write_text(self.state_dir / f"{result.name}.json", json.dumps(payload, indent=2))

    # ---- materialization ------------------------------------------------------------------
    def key_ranges(self, table: str, key: str, size: int, where: str = "true",
                   params: list[Any] | None = None) -> list[tuple[Any, Any]]:
        """Ascending ``(from, to)`` ranges of ``key``, ``size`` rows of ``table`` (matching ``where``) each.

        The last ``to`` is None (no upper bound); no rows give no ranges.
        """
        starts = [r[0] for r in self.con.execute(
            f"SELECT {key} FROM {table} WHERE {where} "
            f"QUALIFY (row_number() OVER (ORDER BY {key}) - 1) % ? = 0 ORDER BY {key}",
            [*(params or []), max(1, int(size))]).fetchall()]
        return [(lo, starts[i + 1] if i + 1 < len(starts) else None) for i, lo in enumerate(starts)]

    def materialize_sql(self, name: str, select_sql: str) -> int:
        """Write ``select_sql`` to the layer's Parquet file atomically and refresh its view."""
        final = self.layer_path(name)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        self.con.execute(f"COPY (\n{select_sql}\n) TO {_q(tmp)} ({LAYER_PARQUET})")
        os.replace(tmp, final)
        self._create_view(name)
        return self.count(name)

    def materialize_sql_batched(self, name: str, select_sql: str,
                                bounds: list[tuple[Any, Any]]) -> int:
        """Like :meth:`materialize_sql`, one key range at a time, for models that work per query.

        For each ``(lo, hi)`` the variables ``batch_from`` / ``batch_to`` are set (``hi`` None = no
        upper bound) and ``select_sql`` (which filters its input to ``lo <= key < hi``) is written
        to a part file; the parts are then concatenated in order into the layer file. Only one
        batch's working set is in memory at a time. With no bounds the model runs once, unbounded.
        """
        if not bounds:
            return self.materialize_sql(name, select_sql)
        final = self.layer_path(name)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        parts: list[Path] = []
        try:
            for i, (lo, hi) in enumerate(bounds):
                part = final.with_name(f".{final.name}.{os.getpid()}.part{i:05d}.tmp")  # .tmp: swept after a crash
                self.con.execute("SET VARIABLE batch_from = ?", [lo])
                self.con.execute("SET VARIABLE batch_to = ?", [hi])
                self.con.execute(f"COPY (\n{select_sql}\n) TO {_q(part)} ({LAYER_PARQUET})")
                parts.append(part)
            files = "[" + ", ".join(_q(p) for p in parts) + "]"
            # read_parquet keeps the files' order (preserve_insertion_order): the batches are key ranges
            # in ascending order, so the layer keeps the model's ORDER BY without a sort.
            self.con.execute(f"COPY (SELECT * FROM read_parquet({files})) TO {_q(tmp)} ({LAYER_PARQUET})")
            os.replace(tmp, final)
        finally:
            self.con.execute("RESET VARIABLE batch_from")
            self.con.execute("RESET VARIABLE batch_to")
            for p in [*parts, tmp]:
                p.unlink(missing_ok=True)
        self._create_view(name)
        return self.count(name)

    def register_file(self, name: str, written_tmp: Path) -> int:
        """Move a Parquet file written by Python into place as layer ``name``."""
        os.replace(written_tmp, self.layer_path(name))
        self._create_view(name)
        return self.count(name)

    def tmp_path(self, name: str) -> Path:
        """A temporary path next to the layer file, for writers that produce Parquet themselves."""
        final = self.layer_path(name)
        return final.with_name(f".{final.name}.{os.getpid()}.tmp")

    # ---- contracts ------------------------------------------------------------------------
    def check_contract(self, name: str, contract: Contract) -> None:
        """Run a layer's contract checks; raise ContractError naming the layer and rows."""
        problems: list[str] = []
        for cols in contract.unique:
            keys = ", ".join(cols)
            rows = self.con.execute(
                f"SELECT {keys}, count(*) AS n FROM {name} GROUP BY ALL HAVING count(*) > 1 LIMIT 5"
            ).fetchall()
            if rows:
                problems.append(f"duplicate ({keys}): {rows}")
        for col in contract.not_null:
            n = self.con.execute(f"SELECT count(*) FROM {name} WHERE {col} IS NULL").fetchall()[0][0]
            if n:
                problems.append(f"{n} rows with NULL {col}")
        for expr in contract.checks:
            # count first: it reads only the columns the check names (SELECT * would read every text)
            n = self.con.execute(
                f"SELECT count(*) FROM {name} WHERE NOT coalesce(({expr}), false)"
            ).fetchall()[0][0]
            if n:
                rows = self.con.execute(
                    f"SELECT * FROM {name} WHERE NOT coalesce(({expr}), false) LIMIT 3"
                ).fetchall()
                shown = [tuple(str(v)[:80] for v in r) for r in rows]
                problems.append(f"{n} rows fail check `{expr}`, e.g. {shown}")
        if problems:
            raise ContractError(f"layer '{name}' broke its contract:\n  - " + "\n  - ".join(problems))

    def close(self) -> None:
        """Close the connection (releases the database lock)."""
        self.con.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

