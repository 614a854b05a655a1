"""Stage ``raw_documents``: read every source file into one typed Parquet layer.

Parsing is done here, in streaming Python, rather than with DuckDB's ``read_json`` because a
user's dump must never lose a row silently: DuckDB's reader either aborts the whole file on a bad
line or (with ``ignore_errors``) skips it without saying which. Here every record read becomes one
row: a good one with its typed fields, or a rejected one with ``reject_reason``, source file and
line (or row/element) number. ``etl/sql/clean_documents.sql`` then does all cleaning in SQL.

Accepted files: ``.jsonl``/``.ndjson`` (one object per line), ``.json`` (one object, concatenated
objects, or a JSON array such as the Namuwiki dump, streamed element by element), either of those
gzip-compressed (``.gz``), and ``.parquet``. Record shapes: ``{id, url, title, text, language}``
and the raw Namuwiki dump ``{namespace, title, text, contributors}``; a source's ``columns`` table
names other fields for id, url, title, text and language (``{id = "doc_id", text = "contents"}``).
A mapped column that a file lacks is an error naming the key and the file (Parquet: checked from
the schema before any row is read; JSON: when the column occurs in no record of the file).

A record without a title gets a derived one (``title_derived`` = true): the url's last path
segment, url-decoded with ``_`` read as a space; else the id; else the first non-blank line of the
text, cut to 80 characters. Only a record where none of these exists is rejected ``missing_title``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config, SourceConfig

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("line_no", pa.int64()),
        ("orig_id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("namespace", pa.int64()),
        ("title_derived", pa.bool_()),
        ("reject_reason", pa.string()),
        ("raw_excerpt", pa.string()),
    ]
)

JSON_EXTS = (".jsonl", ".ndjson", ".json")
BATCH_ROWS = 5000
EXCERPT_CHARS = 200
DERIVED_TITLE_CHARS = 80


class SourceError(ValueError):
    """A source configuration that cannot be read (e.g. a glob matching nothing)."""


class MissingColumnError(SourceError):
    """A column named in a ``columns`` mapping that a file does not have."""


def resolve_files(source: SourceConfig) -> list[Path]:
    """Expand a source's globs into a sorted, de-duplicated file list; a glob matching nothing is an error."""
    files: list[Path] = []
    for pattern in source.paths:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise SourceError(f"source '{source.name}': glob {pattern!r} matches no file")
        files.extend(Path(m).resolve() for m in matches)
    seen: set[Path] = set()
    return [f for f in files if not (f in seen or seen.add(f))]


def file_kind(path: Path) -> str:
    """'jsonl', 'json', 'parquet' or 'unknown' from the file name (``.gz`` allowed for JSON)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    return "unknown"


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _clean_str(s: str) -> str:
    """Drop NUL characters and lone surrogates, which cannot be stored or embedded safely."""
    if "\x00" in s:
        s = s.replace("\x00", " ")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _excerpt(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return _clean_str(raw[:EXCERPT_CHARS])


def derive_title(url: str | None, rid: str | None, text: str) -> str | None:
    """A title for a record that has none: url's last path segment, else the id, else the text's first line."""
    if url:
        seg = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1], errors="replace").replace("_", " ").strip()
        if seg:
            return seg
    if rid:
        return rid
    for line in text.split("\n"):
        if line.strip():
            return line.strip()[:DERIVED_TITLE_CHARS]
    return None


def record_row(source: SourceConfig, file: str, line_no: int, rec: Any) -> dict[str, Any]:
    """Turn one parsed record into a row of ``raw_documents`` (typed, or rejected with a reason).

    Fields are read from the source's mapped columns (``source.columns``, default: the key itself).
    """
    row: dict[str, Any] = {"source": source.name, "file": file, "line_no": line_no}

    def reject(reason: str) -> dict[str, Any]:
        row.update(reject_reason=reason, raw_excerpt=_excerpt(rec))
        return row

    if not isinstance(rec, dict):
        return reject("not_an_object")
    text = rec.get(source.column("text"))
    if text is None:
        return reject("missing_text")
    if not isinstance(text, str):
        return reject("wrong_type:text")
    title = rec.get(source.column("title"))
    if title is not None and (isinstance(title, bool) or not isinstance(title, str | int | float)):
        return reject("wrong_type:title")
    rid = rec.get(source.column("id"))
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        return reject("wrong_type:id")
    ns = rec.get("namespace", 0)
    if ns is None:
        ns = 0
    if isinstance(ns, str) and ns.strip().lstrip("-").isdigit():
        ns = int(ns)
    if isinstance(ns, bool) or not isinstance(ns, int):
        return reject("wrong_type:namespace")
    url = rec.get(source.column("url"))
    url = _clean_str(url) if isinstance(url, str) and url else None
    lang = rec.get(source.column("language"))
    orig_id = _clean_str(str(rid)) if rid is not None and str(rid) != "" else None
    text = _clean_str(text)
    title = _clean_str(str(title)) if title is not None else ""
    derived = not title.strip()
    if derived:
        title = derive_title(url, orig_id, text) or ""
        if not title.strip():
            return reject("missing_title")
    row.update(
        orig_id=orig_id,
        url=url,
        title=title,
        text=text,
        language=_clean_str(lang) if isinstance(lang, str) and lang else source.language,
        namespace=ns,
        title_derived=derived,
        reject_reason=None,
        raw_excerpt=None,
    )
    return row


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None, bytes]]:
    """Yield (line_no, record, error, raw) for each non-blank line (a UTF-8 BOM is allowed)."""
    with _open_binary(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                yield line_no, None, "invalid_utf8", raw
                continue
            try:
                yield line_no, json.loads(line), None, raw
            except (json.JSONDecodeError, RecursionError):
                yield line_no, None, "malformed_json", raw


def _iter_json(path: Path, chunk_chars: int = 1 << 20) -> Iterator[tuple[int, Any, str | None, bytes]]:
    """Stream a ``.json`` file: JSON arrays (element by element) and/or concatenated values.

    Yields (element_no, record, error, raw). A syntax error ends the file: the rest cannot be
    re-synchronized reliably, so one rejected row records where it happened (details in ``raw``).
    """
    decoder = json.JSONDecoder()
    n = 0
    try:
        with _open_binary(path) as fb:
            fh = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="strict")
            buf = fh.read(chunk_chars)
            pos = 0
            eof = len(buf) < chunk_chars
            in_array = None

            def refill() -> None:
                nonlocal buf, pos, eof
                more = fh.read(chunk_chars) if not eof else ""
                if len(more) < chunk_chars:
                    eof = True
                buf = buf[pos:] + more
                pos = 0

            while True:
                while pos < len(buf) and (buf[pos].isspace() or (in_array and buf[pos] == ",")):
                    pos += 1
                if pos >= len(buf):
                    if eof:
                        return
                    refill()
                    continue
                ch = buf[pos]
                if in_array is None:
                    in_array = ch == "["
                    if in_array:
                        pos += 1
                        continue
                if in_array and ch == "]":  # end of one top-level array; another value may follow
                    pos += 1
                    in_array = None
                    continue
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if not eof:
                        refill()
                        continue
                    n += 1
                    detail = f"at element {n}; rest of file unreadable: {exc.msg}: {buf[pos:pos + 120]}"
                    yield n, None, "malformed_json", detail.encode("utf-8", "replace")
                    return
                if end >= len(buf) and not eof:  # a value touching the buffer end may be cut (e.g. 12|34)
                    refill()
                    continue
                n += 1
                yield n, obj, None, b""
                pos = end
                if pos > chunk_chars and not eof:
                    refill()
    except UnicodeDecodeError:
        yield n + 1, None, "invalid_utf8", f"file is not UTF-8 after element {n}; rest unreadable".encode()


def iter_records(path: Path, kind: str | None = None) -> Iterator[tuple[int, Any, str | None, bytes | str]]:
    """Every record of a ``.jsonl`` / ``.json`` / ``.parquet`` file as (line_no, record, error, raw).

    ``kind`` defaults to :func:`file_kind`. Parquet rows are numbered from 1. A file that cannot be
    opened or breaks off (truncated gzip, corrupt Parquet) ends with one error item
    (``unreadable_parquet`` at 0, or ``unreadable_file`` at the position where reading failed) whose
    ``raw`` is the error message; the records read before it are kept.
    """
    kind = kind or file_kind(path)
    if kind == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - any unopenable parquet becomes one error item
            yield 0, None, "unreadable_parquet", str(exc)
            return
    last = 0
    try:
        if kind == "parquet":
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for rec in batch.to_pylist():
                    last += 1
                    yield last, rec, None, b""
            return
        for item in _iter_jsonl(path) if kind == "jsonl" else _iter_json(path):
            last = item[0]
            yield item
    except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
        yield last + 1, None, "unreadable_file", f"{type(exc).__name__}: {exc}"


def parquet_columns(path: Path) -> list[str] | None:
    """Top-level column names of a Parquet file (None when it cannot be opened)."""
    try:
        return list(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - an unopenable file is reported by the reader, not here
        return None


def missing_column_error(what: str, key: str, column: str, path: Path, have: list[str] | None) -> MissingColumnError:
    """The error for a mapped column that file ``path`` lacks (naming key, column and file)."""
    listing = f" (its columns: {', '.join(have)})" if have is not None else ""
    return MissingColumnError(f"{what}: columns.{key} = {column!r}, but {path} has no column {column!r}{listing}")


def check_parquet_columns(what: str, columns: dict[str, str], path: Path) -> None:
    """Raise :class:`MissingColumnError` when a Parquet file lacks a mapped column (no-op for other files)."""
    if not columns or file_kind(path) != "parquet":
        return
    have = parquet_columns(path)
    if have is None:
        return
    for key, col in columns.items():
        if col not in have:
            raise missing_column_error(what, key, col, path, have)


class ColumnTracker:
    """Remembers which mapped columns occur in at least one record of a JSON file."""

    def __init__(self, columns: dict[str, str]):
        self.missing = dict(columns)
        self.records = 0

    def see(self, rec: Any) -> None:
        """Note the mapped columns present in one record."""
        if isinstance(rec, dict):
            self.records += 1
            if self.missing:
                for key in [k for k, c in self.missing.items() if c in rec]:
                    del self.missing[key]

    def check(self, what: str, path: Path) -> None:
        """At the end of a file: a mapped column that occurred in none of its records is an error."""
        if self.records and self.missing:
            key, col = next(iter(self.missing.items()))
            raise missing_column_error(what, key, col, path, None)


def iter_rows(source: SourceConfig, path: Path) -> Iterator[dict[str, Any]]:
    """All ``raw_documents`` rows of one file (good and rejected).

    A file that breaks off (truncated gzip, corrupt Parquet) keeps the rows read so far and adds
    one ``unreadable_file`` row at the position where reading failed. A mapped column (see
    ``SourceConfig.columns``) that the file lacks raises :class:`MissingColumnError`.
    """
    kind = file_kind(path)
    fname = str(path)
    if kind == "unknown":
        yield {"source": source.name, "file": fname, "line_no": 0,
               "reject_reason": "unknown_extension", "raw_excerpt": path.name}
        return
    what = f"source '{source.name}'"
    check_parquet_columns(what, source.columns, path)
    seen = ColumnTracker(source.columns if kind != "parquet" else {})
    for line_no, rec, err, raw in iter_records(path, kind):
        if err:
            yield {"source": source.name, "file": fname, "line_no": line_no,
                   "reject_reason": err, "raw_excerpt": _excerpt(raw)}
        else:
            seen.see(rec)
            yield record_row(source, fname, line_no, rec)
    seen.check(what, path)


def input_signature(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(source, file, size, mtime_ns) for every input file: part of the stage fingerprint."""
    sig = []
    for s in cfg.sources:
        for f in resolve_files(s):
            st = f.stat()
            sig.append((s.name, str(f), st.st_size, st.st_mtime_ns))
    return sig


def write_raw_documents(cfg: Config, out_path: Path, progress: bool = True) -> dict[str, int]:
    """Read all sources and write the ``raw_documents`` Parquet file; return counts per status.

    ``title_derived`` counts the loaded records whose title was derived (see the module docstring).
    Mapped columns missing from a Parquet file are an error before any row is read.
    """
    from tqdm import tqdm

    plan = [(s, f) for s in cfg.sources for f in resolve_files(s)]
    for s, f in plan:
        check_parquet_columns(f"source '{s.name}'", s.columns, f)
    counts: dict[str, int] = {"read": 0, "loaded": 0, "rejected": 0, "title_derived": 0}
    writer = pq.ParquetWriter(out_path, SCHEMA, compression="zstd")
    try:
        batch: list[dict[str, Any]] = []
        total_bytes = sum(f.stat().st_size for _, f in plan)
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="raw_documents",
                  disable=not progress) as bar:
            for source, path in plan:
                for row in iter_rows(source, path):
                    counts["read"] += 1
                    counts["rejected" if row.get("reject_reason") else "loaded"] += 1
                    counts["title_derived"] += bool(row.get("title_derived"))
                    batch.append(row)
                    if len(batch) >= BATCH_ROWS:
                        writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                        batch = []
                bar.update(path.stat().st_size)
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
    finally:
        writer.close()
    return counts
