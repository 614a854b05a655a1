"""Stage ``teacher_scores``: the teacher's score for every candidate that may enter a record.

Which candidates: the positive, the first ``teacher.max_candidates`` usable hard candidates
(rank window first, then deeper ranks), and every usable related / easy draw.

Teachers (``teacher.kind``):

* ``biencoder`` — the e5 cosine similarity already in ``candidates.teacher_sim`` (no model call).
* ``cross_encoder`` — a sentence-transformers ``CrossEncoder`` (local path or hub name) scores
  (query, doc) pairs; its default activation gives scores in [0, 1] for one-label rerankers.
* ``ensemble`` — both, each min-max normalized over the query's scored candidates, then averaged:
  the OpenSearch sample's own teacher recipe (REFERENCE.md section 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config
from .embed import prepare_text

SCHEMA = pa.schema([
    ("query_id", pa.string()), ("role", pa.string()), ("rank", pa.int64()), ("passage_id", pa.string()),
    ("bi_score", pa.float64()), ("ce_score", pa.float64()), ("teacher_score", pa.float64()),
])

SELECT_SQL = """
WITH usable AS (
    SELECT c.query_id, c.role, c.rank, c.passage_id, c.teacher_sim, row_number() OVER (
               PARTITION BY c.query_id, c.role ORDER BY c.rank > getvariable('top_k'), c.rank) AS pick
    FROM candidates c WHERE c.filter_reason IS NULL
)
SELECT u.query_id, u.role, u.rank, u.passage_id, u.teacher_sim AS bi_score{text_cols}
FROM usable u
{text_joins}
WHERE u.role <> 'hard' OR u.pick <= getvariable('teacher_max_candidates')
{order}
"""
TEXT_COLS = """, q.query,
       CASE WHEN u.role = 'positive' AND q.positive_text IS NOT NULL THEN q.positive_text ELSE p.text END AS text"""
TEXT_JOINS = """JOIN queries q USING (query_id)
JOIN passages p ON p.passage_id = u.passage_id"""


def select_sql(with_text: bool, by_query: bool) -> str:
    """The candidates to score; query and doc texts only when a model reads them.

    The bi-encoder teacher needs no text, which keeps this narrow at millions of candidates. Only
    the ensemble normalizes per query, so only it needs its input grouped by query (a sort of tens
    of millions of rows at full scale).
    """
    return SELECT_SQL.format(text_cols=TEXT_COLS if with_text else "", text_joins=TEXT_JOINS if with_text else "",
                             order="ORDER BY u.query_id, u.role, u.rank" if by_query else "")


_MODELS: dict[tuple, Any] = {}


def load_cross_encoder(name: str, device: str = "auto", fp16: bool = True) -> Any:
    """A sentence-transformers CrossEncoder (shared within the process)."""
    key = (name, device, fp16)
    if key not in _MODELS:
        try:
            import torch
            from sentence_transformers import CrossEncoder
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("teacher.kind needs sentence-transformers and torch: pip install -e '.[st]'") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = CrossEncoder(name, device=device)
        if fp16 and device.startswith("cuda"):
            model.model.half()
        _MODELS[key] = model
    return _MODELS[key]


def minmax_per_query(query_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores min-max normalized to [0, 1] within each query (a constant group maps to 0.5)."""
    out = np.empty_like(scores, dtype=np.float64)
    if len(scores) == 0:
        return out
    _, inverse = np.unique(query_ids, return_inverse=True)
    lo = np.full(inverse.max() + 1, np.inf)
    hi = np.full(inverse.max() + 1, -np.inf)
    np.minimum.at(lo, inverse, scores)
    np.maximum.at(hi, inverse, scores)
    span = hi[inverse] - lo[inverse]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (scores - lo[inverse]) / np.where(span > 0, span, 1.0), 0.5)
    return out


def write_teacher_scores(cfg: Config, con: Any, out: Path, progress: bool = True) -> dict[str, Any]:
    """Score the candidates with the configured teacher and write the ``teacher_scores`` layer."""
    from tqdm import tqdm

    t = cfg.teacher
    total = int(con.execute("SELECT count(*) FROM candidates WHERE filter_reason IS NULL").fetchall()[0][0])
    model = load_cross_encoder(t.cross_encoder, t.device, t.fp16) if t.kind != "biencoder" else None
    by_query = t.kind == "ensemble"
    reader = con.sql(select_sql(with_text=model is not None, by_query=by_query)).to_arrow_reader(50_000)
    writer = pq.ParquetWriter(out, SCHEMA, compression="zstd")
    scored = 0
    pending: list[pa.RecordBatch] = []
    try:
        with tqdm(total=total, desc="teacher_scores", unit="pair", disable=not progress or model is None) as bar:
            for batch in reader:
                if not by_query:  # every row is scored on its own
                    scored += _score_and_write(writer, pa.Table.from_batches([batch]), model, cfg)
                    bar.update(batch.num_rows)
                    continue
                pending.append(batch)
                # keep whole queries together for the per-query normalization of the ensemble
                if sum(b.num_rows for b in pending) < 20_000:
                    continue
                table = pa.Table.from_batches(pending)
                last_q = table.column("query_id")[-1].as_py()
                qids = np.asarray(table.column("query_id").to_pylist(), dtype=object)
                keep = qids != last_q
                if keep.any():
                    scored += _score_and_write(writer, table.filter(pa.array(keep)), model, cfg)
                    bar.update(int(keep.sum()))
                pending = [table.filter(pa.array(~keep)).combine_chunks().to_batches()[0]] if (~keep).any() else []
            if pending:
                table = pa.Table.from_batches(pending)
                scored += _score_and_write(writer, table, model, cfg)
                bar.update(table.num_rows)
    finally:
        writer.close()
    return {"teacher": t.kind, "scored": scored, **({"cross_encoder": t.cross_encoder} if model else {})}


def _score_and_write(writer: pq.ParquetWriter, table: pa.Table, model: Any, cfg: Config) -> int:
    t = cfg.teacher
    bi = np.asarray(table.column("bi_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    ce = np.full(len(bi), np.nan)
    if model is not None and len(bi):
        pairs = [(prepare_text(q, t.max_chars), prepare_text(d, t.max_chars))
                 for q, d in zip(table.column("query").to_pylist(), table.column("text").to_pylist(), strict=True)]
        ce = np.asarray(model.predict(pairs, batch_size=t.batch_size, show_progress_bar=False),
                        dtype=np.float64).reshape(-1)
    if t.kind == "biencoder":
        score = bi
    elif t.kind == "cross_encoder":
        score = ce
    else:
        qids = np.asarray(table.column("query_id").to_pylist(), dtype=object)
        score = (minmax_per_query(qids, bi) + minmax_per_query(qids, ce)) / 2.0
    writer.write_table(pa.table({
        "query_id": table.column("query_id"), "role": table.column("role"),
        "rank": table.column("rank").cast(pa.int64()), "passage_id": table.column("passage_id"),
        "bi_score": pa.array(bi), "ce_score": pa.array(np.where(np.isnan(ce), None, ce), pa.float64()),
        "teacher_score": pa.array(score),
    }, schema=SCHEMA))
    return len(bi)
