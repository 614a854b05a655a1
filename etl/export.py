"""Export: ``train.jsonl``, ``val.jsonl``, ``metadata.json``, ``datasets/`` and ``report/`` from ``examples``.

JSONL is written by DuckDB (``COPY ... (FORMAT JSON)``: UTF-8, Korean not escaped, keys in the
order query, docs, scores), ordered by query_id, to temporary names renamed when complete; scores
are DOUBLE rounded in ``examples.sql``. The ``examples`` layer holds passage ids, not
texts: ``etl/sql/export_records.sql`` joins the texts one batch of ``export.batch_records`` records at
a time. Every export is validated before the run reports success.
The ``embeddings/`` directory (npy + id files + usearch index) is written by the neighbours stage;
``datasets/{train,val}`` (``save_to_disk``, when the ``datasets`` package is installed) by
:mod:`etl.hfexport`; ``report/`` (report.md + plots) by :mod:`etl.report`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .validate import validate_file
from .warehouse import atomic_write_text, sha

if TYPE_CHECKING:
    from .pipeline import Context


class ExportValidationError(RuntimeError):
    """The export broke the output format."""


def _copy_jsonl(ctx: Context, split: str, path: Path) -> int:
    """Write ``split``'s records to ``path`` (atomically), ``export.batch_records`` records at a time.

    Each batch (a query_id range of the split) is one ``COPY (etl/sql/export_records.sql) TO part``,
    appended to a temporary file renamed to ``path`` at the end: the texts of one batch are all
    that is held in memory, and the file is in query_id order like the ``examples`` layer.
    """
    con, cfg = ctx.wh.con, ctx.cfg
    sql = (cfg.sql_dir / "export_records.sql").read_text(encoding="utf-8").strip().rstrip(";")
    ranges = ctx.wh.key_ranges("examples", "query_id", cfg.export.batch_records, "split = ?", [split])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    part = path.with_name(f".{path.name}.{os.getpid()}.part.tmp")  # .tmp: swept by the next run after a crash
    con.execute("SET VARIABLE records_split = ?", [split])
    try:
        with open(tmp, "wb") as out:
            for lo, hi in ranges:
                con.execute("SET VARIABLE records_from = ?", [lo])
                con.execute("SET VARIABLE records_to = ?::VARCHAR", [hi])
                con.execute(f"COPY ({sql}) TO '{part}' (FORMAT JSON)")
                if part.exists():  # DuckDB writes nothing for an empty result on some versions
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
                    part.unlink()
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, part):
            leftover.unlink(missing_ok=True)
    return int(con.execute("SELECT count(*) FROM examples WHERE split = ?", [split]).fetchall()[0][0])


def read_stats_sql(sql_dir: Path, name: str) -> str:
    """The SELECT of ``etl/sql/stats/<name>.sql``."""
    return (sql_dir / "stats" / f"{name}.sql").read_text(encoding="utf-8").strip().rstrip(";")


def _stats(ctx: Context) -> dict[str, Any]:
    """Counts for metadata.json, all from SQL over the warehouse."""
    con = ctx.wh.con
    by = lambda sql: {r[0]: int(r[1]) for r in con.execute(sql).fetchall()}  # noqa: E731
    return {
        "queries_by_method": by("SELECT method, count(*) FROM examples GROUP BY 1 ORDER BY 1"),
        "queries_by_source": by("SELECT source, count(*) FROM examples GROUP BY 1 ORDER BY 1"),
        "quarantine": by("SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 1"),
        "candidate_filters": by(
            "SELECT filter_reason, count(*) FROM (SELECT filter_reason FROM candidates UNION ALL "
            "SELECT filter_reason FROM scored_candidates) WHERE filter_reason IS NOT NULL GROUP BY 1 ORDER BY 1"),
        "candidates_considered": int(con.execute("SELECT count(*) FROM candidates").fetchall()[0][0]),
        "queries_with_deep_negatives": int(con.execute(
            "SELECT count(*) FROM examples WHERE deep_hard_negatives > 0").fetchall()[0][0]),
        "positive_rank_flagged": int(con.execute(
            "SELECT count(*) FROM candidates WHERE role = 'positive' AND getvariable('positive_max_rank') > 0"
            " AND positive_rank > getvariable('positive_max_rank')").fetchall()[0][0]),
        "dropped_queries": by(read_stats_sql(ctx.cfg.sql_dir, "dropped_queries")),
        "user_query_rejects": by(
            "SELECT reject_reason, count(*) FROM user_queries WHERE reject_reason IS NOT NULL GROUP BY 1 ORDER BY 1"),
        "layers": {name: ctx.wh.count(name) for name in ctx.wh.existing_layers()},
    }


def export(ctx: Context, force: bool = False, started: float | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the dataset files (skipped when fresh), validate them, write metadata.json."""
    cfg, con = ctx.cfg, ctx.wh.con
    out = cfg.export_dir
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.jsonl", out / "val.jsonl"
    records_sql = (cfg.sql_dir / "export_records.sql").read_text(encoding="utf-8")
    fp = sha("export", ctx.wh.fingerprint("examples"), ctx.wh.fingerprint("passages"),
             ctx.wh.fingerprint("queries"), records_sql, str(out))
    state = ctx.wh.state_dir / "export.json"
    fresh = (not force and state.exists() and train.exists() and val.exists()
             and json.loads(state.read_text(encoding="utf-8")).get("fingerprint") == fp)
    t0 = time.perf_counter()
    if fresh:
        n_train = sum(1 for _ in open(train, "rb"))
        n_val = sum(1 for _ in open(val, "rb"))
        log(f"  {'export':<20} {n_train + n_val:>10,} rows  skipped (fresh)")
    else:
        n_train = _copy_jsonl(ctx, "train", train)
        n_val = _copy_jsonl(ctx, "val", val)
        log(f"  {'export':<20} {n_train + n_val:>10,} rows  {time.perf_counter() - t0:7.1f}s")
    n_docs = cfg.docs_per_query
    reports = [validate_file(p, min_docs=n_docs, max_docs=n_docs) for p in (train, val)
               if p.stat().st_size > 0]
    bad = [r for r in reports if not r.ok]
    if bad:
        msg = "\n".join(v for r in bad for v in r.violations)
        raise ExportValidationError(f"export failed validation:\n{msg}")
    if not fresh:
        atomic_write_text(state, json.dumps({"fingerprint": fp}))
    from .pipeline import now_iso

    stats = _stats(ctx)
    stages = {name: {"rows": r.rows, "seconds": round(r.seconds, 3), "skipped": r.skipped,
                     **({"extra": r.extra} if r.extra else {})} for name, r in ctx.results.items()}
    meta = {
        "total_queries": n_train + n_val,
        "train_samples": n_train,
        "val_samples": n_val,
        "docs_per_query": n_docs,
        "embedding_model": cfg.embedding.model,
        "source_datasets": [s.name for s in cfg.sources],
        "created_at": now_iso(),
        "format": {"fields": ["query", "docs", "scores"],
                   "doc_order": "positive first, then by score descending",
                   "roles_per_record": {"positive": 1, "hard": cfg.negatives.hard,
                                        "related": cfg.negatives.related, "easy": cfg.negatives.easy},
                   "score_scale": f"teacher cosine similarity min-max normalized per record x {cfg.scoring.scale}"},
        "stages": stages,
        **stats,
        "validation": {r.path: {"records": r.records, "violations": r.total_violations} for r in reports},
        "wall_seconds": round(time.perf_counter() - started, 2) if started else None,
        "config": cfg.to_dict(),
    }
    from .hfexport import export_datasets

    if not cfg.export.datasets:
        meta["datasets"] = {"skipped": "export.datasets = false"}
    elif not fresh or not (out / "datasets" / "train").exists():
        meta["datasets"] = export_datasets(out)
    report_md = out / "report" / "report.md"
    if not fresh or not report_md.exists():
        from .report import write_report

        meta["report"] = str(write_report(cfg, con, out / "report"))
    atomic_write_text(out / "metadata.json", json.dumps(meta, ensure_ascii=False, indent=2, default=str))
    return meta
