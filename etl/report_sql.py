"""The report's queries: ``etl/sql/report/<name>.sql`` run to a :class:`Result` (rows, or the error).

A missing layer or a broken query becomes ``Result.error``, so the report still writes every
other section and says which one is not available.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import read_sql


@dataclass
class Result:
    """Rows of one report query, or the error that prevented it."""

    name: str
    columns: list[str]
    rows: list[tuple]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the query ran."""
        return self.error is None

    def dicts(self) -> list[dict[str, Any]]:
        """Rows as dictionaries."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def read_report_sql(sql_dir: Path, name: str, folder: str = "report") -> str:
    """The SELECT of ``etl/sql/<folder>/<name>.sql`` without trailing semicolons."""
    return read_sql(sql_dir / folder / f"{name}.sql")


def run_report_sql(con: Any, sql_dir: Path, name: str, folder: str = "report") -> Result:
    """Run one report query to completion; a missing layer or SQL error becomes ``Result.error``."""
    import duckdb

    try:
        cur = con.execute(read_report_sql(sql_dir, name, folder))
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except (duckdb.Error, OSError) as exc:
        return Result(name, [], [], error=str(exc).strip().splitlines()[0][:300])
    return Result(name, columns, rows)
