"""The response cache of the LLM stages: answers as Parquet files, keyed by (model, prompt_hash, key).

Every complete answer is stored under the cache folder; entries are flushed every
:data:`CACHE_FLUSH_EVERY` responses (temporary name, then rename), so neither a re-run nor a crash
pays twice, and the files are merged into one when there are more than :data:`CACHE_COMPACT_ABOVE`.
The key column is named ``passage_hash`` (for query generation it is :func:`etl.llm_prompt.passage_hash`).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CACHE_SCHEMA = pa.schema([
    ("model", pa.string()), ("prompt_hash", pa.string()), ("passage_hash", pa.string()),
    ("response", pa.string()), ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("created_at", pa.string()),
])
CACHE_FLUSH_EVERY = 200
CACHE_COMPACT_ABOVE = 64  # merge the cache into one file when it has more files than this


class ResponseCache:
    """Answers keyed by (model, prompt_hash, passage_hash), as Parquet files under ``cache_dir``."""

    def __init__(self, cache_dir: Path, model: str, prompt_hash: str, flush_every: int | None = None):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.prompt_hash = prompt_hash
        self.flush_every = flush_every or CACHE_FLUSH_EVERY
        self._mem: dict[str, tuple[str, str | None]] = {}
        self._buffer: list[dict[str, Any]] = []
        self._seq = 0
        self.unreadable: list[str] = []
        self.files_written = 0

    def files(self) -> list[Path]:
        """Complete cache files (temporary names start with a dot and are ignored)."""
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def load(self) -> int:
        """Read the entries of this (model, prompt_hash); return how many. Unreadable files are skipped."""
        files = self.files()
        tables = []
        for f in files:
            try:
                t = pq.read_table(f, schema=CACHE_SCHEMA)
            except (OSError, pa.ArrowException) as exc:
                self.unreadable.append(f"{f.name}: {type(exc).__name__}")
                continue
            tables.append(t)
        for t in tables:
            mine = t.filter(pc.and_(pc.equal(t["model"], self.model), pc.equal(t["prompt_hash"], self.prompt_hash)))
            cols = mine.select(["passage_hash", "response", "finish_reason"]).to_pydict()
            for h, resp, fin in zip(cols["passage_hash"], cols["response"], cols["finish_reason"], strict=True):
                if h is not None and resp is not None:
                    self._mem[h] = (resp, fin)
        if len(tables) > CACHE_COMPACT_ABOVE and not self.unreadable:
            self._compact(files, tables)
        return len(self._mem)

    def _compact(self, files: list[Path], tables: list[pa.Table]) -> None:
        merged = pa.concat_tables(tables)
        self._write(merged, "compacted")
        for f in files:
            f.unlink(missing_ok=True)

    def get(self, key: str) -> tuple[str, str | None] | None:
        """(response, finish_reason) cached for a passage hash, or None."""
        return self._mem.get(key)

    def put(self, key: str, content: str, finish_reason: str | None, usage: dict[str, int] | None = None) -> None:
        """Remember a complete response; flush to disk every ``flush_every`` entries."""
        usage = usage or {}
        self._mem[key] = (content, finish_reason)
        self._buffer.append({
            "model": self.model, "prompt_hash": self.prompt_hash, "passage_hash": key,
            "response": content, "finish_reason": finish_reason,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered entries as one new Parquet file (temporary name, then rename)."""
        if not self._buffer:
            return
        self._write(pa.Table.from_pylist(self._buffer, schema=CACHE_SCHEMA), "responses")
        self._buffer = []

    def _write(self, table: pa.Table, tag: str) -> None:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        final = self.dir / f"{tag}-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**9:09d}-{self._seq:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        self.files_written += 1

