"""Stage ``query_file_rows``: user query files (``[[query_files]]``) read line by line.

Each line: ``{"query": str, "doc_id": str, "passage_id": str (optional)}``. Every line becomes a
row, rejected ones with a reason (malformed JSON, missing or mistyped fields); resolving doc and
passage ids against the corpus happens in ``etl/sql/user_queries.sql``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config
from .ingest import _clean_str, _excerpt, _iter_jsonl

SCHEMA = pa.schema([
    ("name", pa.string()), ("file", pa.string()), ("line_no", pa.int64()), ("query", pa.string()),
    ("doc_id", pa.string()), ("passage_id", pa.string()), ("reject_reason", pa.string()),
    ("raw_excerpt", pa.string()),
])


def input_signature(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(name, path, size, mtime_ns) of each query file (missing files count as size -1)."""
    out = []
    for q in cfg.query_files:
        p = Path(q.path)
        st = p.stat() if p.exists() else None
        out.append((q.name, str(p.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return out


def parse_line(rec: Any) -> tuple[dict[str, Any], str | None]:
    """Typed fields of one query-file record, or a reject reason."""
    if not isinstance(rec, dict):
        return {}, "not_an_object"
    q, d, p = rec.get("query"), rec.get("doc_id"), rec.get("passage_id")
    if not isinstance(q, str) or not q.strip():
        return {}, "missing_query"
    if p is not None and not isinstance(p, str):
        return {}, "wrong_type:passage_id"
    if d is None and p is None:
        return {}, "missing_doc_id"
    if d is not None and (isinstance(d, bool) or not isinstance(d, str | int)):
        return {}, "wrong_type:doc_id"
    return {"query": _clean_str(q.strip()), "doc_id": None if d is None else _clean_str(str(d)),
            "passage_id": p}, None


def write_query_file_rows(cfg: Config, out: Path) -> dict[str, int]:
    """Write every line of every query file as a row (typed, or rejected with a reason)."""
    rows: list[dict[str, Any]] = []
    counts = {"read": 0, "rejected": 0}
    for qf in cfg.query_files:
        path = Path(qf.path)
        if not path.is_file():
            raise FileNotFoundError(f"query_files '{qf.name}': no such file {qf.path!r}")
        for line_no, rec, err, raw in _iter_jsonl(path):
            counts["read"] += 1
            row: dict[str, Any] = {"name": qf.name, "file": str(path.resolve()), "line_no": line_no}
            if err is None:
                fields, err = parse_line(rec)
                row.update(fields)
            if err:
                counts["rejected"] += 1
                row.update(reject_reason=err, raw_excerpt=_excerpt(raw))
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out, compression="zstd")
    return counts
