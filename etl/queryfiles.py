"""Stage ``query_file_rows``: user query files (``[[query_files]]``) read record by record.

A file is JSONL (``.jsonl``/``.ndjson``, and any name that is not ``.json``/``.parquet``), a
``.json`` array / concatenated objects, or ``.parquet``; ``.gz`` is allowed for the JSON kinds.
Each record: ``{"query": str, "doc_id" | "doc_ids" | "passage_id" | "passage_ids": ...}``, field
names remapped by the file's ``columns`` table (``{doc_ids = "retrieval_gt"}``). An id field holds
one id (str or int), a list of ids, or a list of lists (flattened, order kept, repeats removed);
``doc_id`` and ``doc_ids`` go together into ``doc_ids``, ``passage_id`` and ``passage_ids`` into
``passage_ids``. The query is NFC-normalized, stripped, and every run of whitespace becomes one space.

Every record becomes one row, rejected ones with a reason (malformed JSON, missing or mistyped
fields); resolving ids against the corpus, repeated lines and one row per named document or
passage are the business of ``etl/sql/user_queries.sql``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config, QueryFileConfig
from .ingest import ColumnTracker, _clean_str, _excerpt, check_parquet_columns, file_kind, iter_records

SCHEMA = pa.schema([
    ("name", pa.string()), ("file", pa.string()), ("line_no", pa.int64()), ("query", pa.string()),
    ("doc_ids", pa.list_(pa.string())), ("passage_ids", pa.list_(pa.string())),
    ("drop_low_rank", pa.bool_()), ("reject_reason", pa.string()), ("raw_excerpt", pa.string()),
])

_WS = re.compile(r"\s+")


def input_signature(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(name, path, size, mtime_ns) of each query file (missing files count as size -1)."""
    out = []
    for q in cfg.query_files:
        p = Path(q.path)
        st = p.stat() if p.exists() else None
        out.append((q.name, str(p.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return out


def normalize_query(q: str) -> str:
    """NFC, stripped, every run of whitespace one space."""
    return _WS.sub(" ", unicodedata.normalize("NFC", _clean_str(q))).strip()


def flatten_ids(value: Any, out: list[str]) -> bool:
    """Append the ids in ``value`` (an id, a list, a list of lists) to ``out``; False on a wrong type.

    Ids are str or int (not bool); empty strings and None are skipped; repeats are kept here.
    """
    if value is None:
        return True
    if isinstance(value, list | tuple):
        return all(flatten_ids(v, out) for v in value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    s = _clean_str(str(value))
    if s:
        out.append(s)
    return True


def parse_line(rec: Any, qf: QueryFileConfig | None = None) -> tuple[dict[str, Any], str | None]:
    """Typed fields of one query-file record, or a reject reason.

    Reasons: ``not_an_object``, ``missing_query``, ``wrong_type:<key>`` (for the first mistyped
    field, named by its config key), ``missing_doc_id`` (no id in any id field).
    """
    qf = qf or QueryFileConfig()
    if not isinstance(rec, dict):
        return {}, "not_an_object"
    q = rec.get(qf.column("query"))
    if q is not None and not isinstance(q, str):
        return {}, "wrong_type:query"
    query = normalize_query(q) if q is not None else ""
    if not query:
        return {}, "missing_query"
    ids: dict[str, list[str]] = {"doc_ids": [], "passage_ids": []}
    for key, target in (("doc_id", "doc_ids"), ("doc_ids", "doc_ids"),
                        ("passage_id", "passage_ids"), ("passage_ids", "passage_ids")):
        if not flatten_ids(rec.get(qf.column(key)), ids[target]):
            return {"query": query}, f"wrong_type:{key}"
    if not ids["doc_ids"] and not ids["passage_ids"]:
        return {"query": query}, "missing_doc_id"
    return {"query": query, **{k: list(dict.fromkeys(v)) for k, v in ids.items()}}, None


def _query_kind(path: Path) -> str:
    """Query files: Parquet and JSON by their extension, anything else is read as JSONL."""
    kind = file_kind(path)
    return "jsonl" if kind == "unknown" else kind


def write_query_file_rows(cfg: Config, out: Path) -> dict[str, int]:
    """Write every record of every query file as a row (typed, or rejected with a reason).

    A missing file, or a mapped column the file lacks (Parquet: from its schema, before reading;
    JSON: when no record has it), is an error naming the query file.
    """
    rows: list[dict[str, Any]] = []
    counts = {"read": 0, "rejected": 0}
    for qf in cfg.query_files:
        path = Path(qf.path)
        if not path.is_file():
            raise FileNotFoundError(f"query_files '{qf.name}': no such file {qf.path!r}")
        what = f"query_files '{qf.name}'"
        check_parquet_columns(what, qf.columns, path)
        kind = _query_kind(path)
        seen = ColumnTracker(qf.columns if kind != "parquet" else {})
        fname = str(path.resolve())
        for line_no, rec, err, raw in iter_records(path, kind):
            counts["read"] += 1
            row: dict[str, Any] = {"name": qf.name, "file": fname, "line_no": line_no,
                                   "drop_low_rank": qf.drop_low_rank_positives}
            if err is None:
                seen.see(rec)
                fields, err = parse_line(rec, qf)
                row.update(fields)
                raw = raw or rec  # Parquet rows have no raw bytes: excerpt the record
            if err:
                counts["rejected"] += 1
                row.update(reject_reason=err, raw_excerpt=_excerpt(raw))
            rows.append(row)
        seen.check(what, path)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out, compression="zstd")
    return counts
