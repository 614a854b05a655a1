"""Stage ``llm_questions``: Korean questions generated per passage by an OpenAI-compatible server.

(Generation is being implemented; with ``llm`` absent from ``queries.methods`` the stage writes an
empty layer with the schema below.)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("passage_id", pa.string()), ("doc_id", pa.string()), ("source", pa.string()),
    ("question_no", pa.int32()), ("query", pa.string()), ("status", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()),
])


def write_empty(out: Path) -> None:
    """Write the layer with no rows (the method is not enabled)."""
    pq.write_table(SCHEMA.empty_table(), out)
