"""Stage ``raw_documents``: read every source file into one typed Parquet layer.

Parsing is done here, in streaming Python, rather than with DuckDB's ``read_json`` because a
user's dump must never lose a row silently: DuckDB's reader either aborts the whole file on a bad
line or (with ``ignore_errors``) skips it without saying which. Here every record read becomes one
row: a good one with its typed fields, or a rejected one with ``reject_reason``, source file and
line (or row/element) number. ``etl/sql/clean_documents.sql`` then does all cleaning in SQL.

Accepted files: ``.jsonl``/``.ndjson`` (one object per line), ``.json`` (one object, concatenated
objects, or a JSON array such as the Namuwiki dump, streamed element by element), either of those
gzip-compressed (``.gz``), and ``.parquet``. Record shapes: ``{id, url, title, text, language}``
and the raw Namuwiki dump ``{namespace, title, text, contributors}``.
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
        ("reject_reason", pa.string()),
        ("raw_excerpt", pa.string()),
    ]
)

JSON_EXTS = (".jsonl", ".ndjson", ".json")
BATCH_ROWS = 5000
EXCERPT_CHARS = 200


class SourceError(ValueError):
    """A source configuration that cannot be read (e.g. a glob matching nothing)."""


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


def record_row(source: SourceConfig, file: str, line_no: int, rec: Any) -> dict[str, Any]:
    """Turn one parsed record into a row of ``raw_documents`` (typed, or rejected with a reason)."""
    row: dict[str, Any] = {"source": source.name, "file": file, "line_no": line_no}

    def reject(reason: str) -> dict[str, Any]:
        row.update(reject_reason=reason, raw_excerpt=_excerpt(rec))
        return row

    if not isinstance(rec, dict):
        return reject("not_an_object")
    text = rec.get("text")
    if text is None:
        return reject("missing_text")
    if not isinstance(text, str):
        return reject("wrong_type:text")
    title = rec.get("title")
    if title is None:
        return reject("missing_title")
    if isinstance(title, bool) or not isinstance(title, str | int | float):
        return reject("wrong_type:title")
    title = str(title)
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        return reject("wrong_type:id")
    ns = rec.get("namespace", 0)
    if ns is None:
        ns = 0
    if isinstance(ns, str) and ns.strip().lstrip("-").isdigit():
        ns = int(ns)
    if isinstance(ns, bool) or not isinstance(ns, int):
        return reject("wrong_type:namespace")
    url = rec.get("url")
    lang = rec.get("language")
    row.update(
        orig_id=_clean_str(str(rid)) if rid is not None and str(rid) != "" else None,
        url=_clean_str(url) if isinstance(url, str) and url else None,
        title=_clean_str(title),
        text=_clean_str(text),
        language=_clean_str(lang) if isinstance(lang, str) and lang else source.language,
        namespace=ns,
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


def _unreadable(source: SourceConfig, fname: str, line_no: int, exc: BaseException) -> dict[str, Any]:
    return {"source": source.name, "file": fname, "line_no": line_no, "reject_reason": "unreadable_file",
            "raw_excerpt": f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS]}


def iter_rows(source: SourceConfig, path: Path) -> Iterator[dict[str, Any]]:
    """All ``raw_documents`` rows of one file (good and rejected).

    A file that breaks off (truncated gzip, corrupt Parquet) keeps the rows read so far and adds
    one ``unreadable_file`` row at the position where reading failed.
    """
    kind = file_kind(path)
    fname = str(path)
    if kind == "unknown":
        yield {"source": source.name, "file": fname, "line_no": 0,
               "reject_reason": "unknown_extension", "raw_excerpt": path.name}
        return
    if kind == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - any unopenable parquet becomes one quarantine row
            yield {"source": source.name, "file": fname, "line_no": 0,
                   "reject_reason": "unreadable_parquet", "raw_excerpt": str(exc)[:EXCERPT_CHARS]}
            return
    last = 0
    try:
        if kind == "parquet":
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for rec in batch.to_pylist():
                    last += 1
                    yield record_row(source, fname, last, rec)
            return
        it = _iter_jsonl(path) if kind == "jsonl" else _iter_json(path)
        for line_no, rec, err, raw in it:
            last = line_no
            if err:
                yield {"source": source.name, "file": fname, "line_no": line_no,
                       "reject_reason": err, "raw_excerpt": _excerpt(raw)}
            else:
                yield record_row(source, fname, line_no, rec)
    except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
        yield _unreadable(source, fname, last + 1, exc)


def input_signature(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(source, file, size, mtime_ns) for every input file: part of the stage fingerprint."""
    sig = []
    for s in cfg.sources:
        for f in resolve_files(s):
            st = f.stat()
            sig.append((s.name, str(f), st.st_size, st.st_mtime_ns))
    return sig


def write_raw_documents(cfg: Config, out_path: Path, progress: bool = True) -> dict[str, int]:
    """Read all sources and write the ``raw_documents`` Parquet file; return counts per status."""
    from tqdm import tqdm

    plan = [(s, f) for s in cfg.sources for f in resolve_files(s)]
    counts: dict[str, int] = {"read": 0, "loaded": 0, "rejected": 0}
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
