"""Export ``examples``: ``train.jsonl``, ``val.jsonl``, ``metadata.json``, ``README.md``, ``datasets/``, ``report/``.

JSONL is written by DuckDB (``COPY ... (FORMAT JSON)``: UTF-8, Korean not escaped, keys in the
order query, docs, scores), ordered by query_id; scores are DOUBLE rounded in ``examples.sql``. The
``examples`` layer holds passage ids, not texts: ``etl/sql/export_records.sql`` joins the texts one
batch of ``export.batch_records`` records at a time.
The ``embeddings/`` directory (npy + id files + usearch index) is written into the export directory
by the neighbours stage; ``datasets/{train,val}`` (``save_to_disk``, when the ``datasets`` package
is installed) by :mod:`etl.hfexport`; ``report/`` (report.md + plots) by :mod:`etl.report`; the
dataset card ``README.md`` (Hugging Face front matter) by :mod:`etl.card`; ``st/{train,validation}``
(sentence-transformers' sparse training format, ``export.sentence_transformers``) by :mod:`etl.stformat`;
``idf.json`` (``export.idf_tokenizer``) by :mod:`etl.idf`.

The export is atomic as a whole. It is built in ``<export>.staging/`` (a sibling of the export
directory, so on the same file system) and validated there:

* valid: the staged export is swapped in. (1) ``<export>`` is renamed to ``<export>.old``, (2)
  every entry of it the export does not write itself (``embeddings/``, anything a user put there)
  is moved into the staged directory, (3) ``<export>.staging`` is renamed to ``<export>``, (4)
  ``<export>.old`` is deleted; a stale ``<export>.rejected/`` is removed.
* invalid: ``<export>`` is not touched; the staged export, with a ``metadata.json`` whose
  ``"validation"`` lists the violations, replaces ``<export>.rejected/``, and
  :class:`ExportValidationError` is raised (``python -m etl run`` exits 1).

A run killed in between leaves one of a few states, which :func:`recover_export` (called at the
start of every run, under the warehouse lock) resolves before any stage reads the export: a
``.staging`` without ``.old`` had not begun its swap and is deleted (the export is untouched, and
the next export builds it again); a ``.old`` next to a ``.staging`` means the swap had begun, which
only happens after validation, and it is finished; a ``.old`` next to the export is the previous
one, half deleted, and goes. A reader who looks before that run finds the previous export whole in
``<export>.old`` and the new one whole in ``<export>.staging``.

Whether the export is fresh is the runner's call, as for any stage (:func:`etl.pipeline.run_export`):
the same fingerprint (input layers, code, settings, :func:`input_signature`) recorded in
``state/export.json`` after the swap, and the files there (:func:`outputs_present`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import card
from .context import now_iso, read_sql
from .hfexport import count_records, export_datasets
from .idf import write_idf
from .stformat import export_st
from .validate import ValidationReport, validate_file
from .warehouse import atomic_write_text

if TYPE_CHECKING:
    from .config import Config
    from .context import Context

# What the export writes into the export directory; everything else there (embeddings/, written by
# the neighbours stage) is carried over from the previous export when a new one is swapped in.
EXPORT_OUTPUTS = frozenset({"train.jsonl", "val.jsonl", "metadata.json", "datasets", "report", "README.md",
                            "st", "idf.json", "decontamination.json"})
SPLITS = ("train", "val")


def staging_dir(out: Path) -> Path:
    """Where the next export is built and validated: ``<export>.staging``."""
    return out.with_name(out.name + ".staging")


def rejected_dir(out: Path) -> Path:
    """Where an export that failed validation is kept: ``<export>.rejected``."""
    return out.with_name(out.name + ".rejected")


def old_dir(out: Path) -> Path:
    """The previous export while a new one is swapped in: ``<export>.old``."""
    return out.with_name(out.name + ".old")


class ExportValidationError(RuntimeError):
    """The export broke the output format; it was kept in ``rejected`` and the previous export is unchanged."""

    def __init__(self, message: str, rejected: Path, reports: list[ValidationReport]):
        super().__init__(message)
        self.rejected = rejected
        self.reports = reports


class ExportRecoveryError(RuntimeError):
    """The export directories are in a state no interrupted run leaves; a person has to decide."""


def _finish_swap(out: Path, staging: Path, old: Path) -> None:
    """Steps 2-4 of the swap: carry the entries the export does not write from ``old``, rename, delete."""
    for entry in sorted(old.iterdir()):
        if entry.name not in EXPORT_OUTPUTS and not (staging / entry.name).exists():
            os.replace(entry, staging / entry.name)
    os.replace(staging, out)
    shutil.rmtree(old)


def _swap_in(out: Path, staging: Path) -> None:
    """Put the validated ``staging`` directory at ``out``, keeping the entries of ``out`` the export does not write."""
    old = old_dir(out)
    if out.exists():
        os.replace(out, old)
        _finish_swap(out, staging, old)
    else:
        os.replace(staging, out)


def recover_export(out: Path) -> str | None:
    """Resolve what a run killed during the export left beside ``out``; say what was done (None: nothing).

    Must run before any stage reads ``out`` (the neighbours stage's ``embeddings/`` may sit in
    ``<export>.old`` after a crash during the swap). See the module docstring for the states.
    """
    out = Path(out)
    staging, old = staging_dir(out), old_dir(out)
    if old.exists():
        if staging.exists() and out.exists():
            raise ExportRecoveryError(
                f"{out}, {old} and {staging} all exist, which no interrupted run leaves: keep the one "
                f"you want as {out} and remove the others")
        if staging.exists():
            _finish_swap(out, staging, old)
            return f"finished swapping in the validated export {staging} (the run was interrupted)"
        if out.exists():
            shutil.rmtree(old)
            return f"removed the previous export {old} (the run was interrupted while deleting it)"
        os.replace(old, out)
        return f"restored the previous export from {old}"
    if staging.exists():
        shutil.rmtree(staging)
        return f"removed the unfinished export {staging}"
    return None


def _copy_jsonl(ctx: Context, split: str, path: Path) -> int:
    """Write ``split``'s records to ``path`` (atomically), ``export.batch_records`` records at a time.

    Each batch (a query_id range of the split) is one ``COPY (etl/sql/export_records.sql) TO part``,
    appended to a temporary file renamed to ``path`` at the end: the texts of one batch are all
    that is held in memory, and the file is in query_id order like the ``examples`` layer.
    """
    con, cfg = ctx.wh.con, ctx.cfg
    sql = read_sql(cfg.sql_dir / "export_records.sql")
    ranges = ctx.wh.key_ranges("examples", "query_id", cfg.export.batch_records, "split = ?", [split])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    part = path.with_name(f".{path.name}.{os.getpid()}.part.tmp")  # .tmp: swept by the next run after a crash
    con.execute("SET VARIABLE records_split = ?", [split])
    con.execute("SET VARIABLE export_first_rank = ?", [cfg.export.first_rank])
    sql = _record_columns(con, sql, cfg.export.first_rank)
    written = 0  # the records COPY wrote (examples + judged_examples' extra records)
    try:
        with open(tmp, "wb") as out:
            for lo, hi in ranges:
                con.execute("SET VARIABLE records_from = ?", [lo])
                con.execute("SET VARIABLE records_to = ?::VARCHAR", [hi])
                written += int(con.execute(f"COPY ({sql}) TO '{part}' (FORMAT JSON)").fetchall()[0][0])
                if part.exists():  # DuckDB writes nothing for an empty result on some versions
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
                    part.unlink()
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, part):
            leftover.unlink(missing_ok=True)
    return written


def _record_columns(con: Any, sql: str, first_rank: bool) -> str:
    """The records query projected to the JSONL keys: query, docs, scores (+ first_rank), in query_id order.

    An edited copy of export_records.sql from before first_rank (no query_id column) is used as it
    is; it cannot give first_rank, which is then a clear error.
    """
    con.execute("SET VARIABLE records_from = NULL::VARCHAR")
    con.execute("SET VARIABLE records_to = NULL::VARCHAR")
    cols = [r[0] for r in con.execute(f"DESCRIBE ({sql})").fetchall()]
    if "query_id" not in cols or (first_rank and "first_rank" not in cols):
        if first_rank:
            raise ValueError("export.first_rank = true needs the query_id and first_rank columns of "
                             "export_records.sql; your paths.sql copy predates them (see the packaged one: "
                             "`python -m etl sql`)")
        return sql
    keys = ["query", "docs", "scores"] + (["first_rank"] if first_rank else [])
    return f"SELECT {', '.join(keys)} FROM ({sql}) ORDER BY query_id"


def read_stats_sql(sql_dir: Path, name: str) -> str:
    """The SELECT of ``etl/sql/stats/<name>.sql``."""
    return read_sql(sql_dir / "stats" / f"{name}.sql")


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
        "rank_window": int(con.execute("SELECT getvariable('top_k')").fetchall()[0][0]),  # mining.top_k as used
        "passage_duplicates": int(con.execute("SELECT count(*) FROM passage_duplicates").fetchall()[0][0]),
        "queries_total": int(con.execute("SELECT count(*) FROM queries").fetchall()[0][0]),
        "queries_total_by_method": by("SELECT method, count(*) FROM queries GROUP BY 1 ORDER BY 1"),
        "layers": {name: ctx.wh.count(name) for name in ctx.wh.existing_layers()},
        **_decontamination_stats(ctx),
        **({"judged_positive_records": by(read_stats_sql(ctx.cfg.sql_dir, "judged_positives"))}
           if ctx.cfg.judge.keep_as_positive else {}),
    }


def _decontamination_stats(ctx: Context) -> dict[str, Any]:
    """``{"decontamination": per evaluation set counts}`` when ``[[decontaminate]]`` is configured, else {}."""
    if not ctx.cfg.decontaminate:
        return {}
    from .decontaminate import stats

    st = ctx.wh.state("decontamination") or {}
    return {"decontamination": stats(ctx.cfg, ctx.wh.con, (st.get("extra") or {}).get("sets"))}


def _validate(files: list[Path], n_docs: int) -> list[ValidationReport]:
    """Validate the non-empty JSONL files (a small corpus can give an empty ``val.jsonl``)."""
    return [validate_file(p, min_docs=n_docs, max_docs=n_docs) for p in files if p.stat().st_size > 0]


def _validation_meta(reports: list[ValidationReport], where: Path) -> dict[str, Any]:
    """``{"<where>/train.jsonl": {"records", "violations", "first_violations"}, ...}``."""
    return {str(where / Path(r.path).name): r.summary() for r in reports}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _st_present(cfg: Config, out: Path, meta: dict[str, Any]) -> bool:
    """The previous export's ``st/`` is what this config asks for (or was skipped for want of ``datasets``)."""
    summary = meta.get("st")
    if not cfg.export.sentence_transformers:
        return not (out / "st").exists()
    if not isinstance(summary, dict):
        return False
    if "splits" in summary:
        return all((out / "st" / split).is_dir() for split, info in summary["splits"].items()
                   if isinstance(info, dict) and "rows" in info)
    import importlib.util

    return importlib.util.find_spec("datasets") is None


def _datasets_present(cfg: Config, out: Path, meta: dict[str, Any]) -> bool:
    """The previous export's ``datasets/`` is still what this config asks for."""
    if not cfg.export.datasets:
        return True
    summary = meta.get("datasets")
    if not isinstance(summary, dict):
        return False
    if "splits" in summary:
        return all((out / "datasets" / split).is_dir() for split, info in summary["splits"].items()
                   if isinstance(info, dict) and "rows" in info)
    import importlib.util

    return importlib.util.find_spec("datasets") is None  # was skipped for want of the package: still so


def outputs_present(cfg: Config) -> bool:
    """Every file the export writes under this config is in the export directory (not whether it is valid)."""
    out = cfg.export_dir
    meta = _read_json(out / "metadata.json")
    if meta is None:
        return False
    return (all((out / f"{split}.jsonl").exists() for split in SPLITS) and "report" in meta
            and (out / "report" / "report.md").exists() and _datasets_present(cfg, out, meta)
            and (out / "README.md").exists() and _st_present(cfg, out, meta)
            and (out / "idf.json").exists() == bool(cfg.export.idf_tokenizer))


def input_signature(cfg: Config) -> str:
    """What decides the export besides its layers, code and config keys.

    That is the report's and stats' SQL (read from ``paths.sql``) and the sources' licenses (the
    card's; the ``sources`` key leaves them out).
    """
    sql_files = sorted([*(cfg.sql_dir / "report").glob("*.sql"), *(cfg.sql_dir / "stats").glob("*.sql")])
    return json.dumps({"sql": {f"{f.parent.name}/{f.name}": f.read_text(encoding="utf-8") for f in sql_files},
                       "licenses": [s.license for s in cfg.sources]}, ensure_ascii=False, sort_keys=True)


def export(ctx: Context, fresh: bool = False, started: float | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the export, atomically as a whole, and return its metadata.

    ``fresh`` (the runner's call: same fingerprint, files present): the export is kept when its
    files still validate, and only its metadata.json is rewritten. Otherwise the export is built in
    ``<export>.staging``, validated, and swapped in; when it fails validation it goes to
    ``<export>.rejected`` instead and :class:`ExportValidationError` is raised, leaving the previous
    export as it was.
    """
    cfg, con = ctx.cfg, ctx.wh.con
    out = cfg.export_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_export(out)  # the run did this before its stages; a no-op unless export() is called alone
    n_docs = cfg.docs_per_query
    files = [out / f"{split}.jsonl" for split in SPLITS]
    old_meta = _read_json(out / "metadata.json") or {}
    t0 = time.perf_counter()
    reports: list[ValidationReport] = []
    if fresh:
        reports = _validate(files, n_docs)
        fresh = all(r.ok for r in reports)  # edited by hand since: build it again
    if fresh:
        n_train, n_val = (count_records(f) for f in files)
        log(f"  {'export':<20} {n_train + n_val:>10,} rows  skipped (fresh)")
        build = out
    else:
        build = staging_dir(out)
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        n_train, n_val = (_copy_jsonl(ctx, split, build / f"{split}.jsonl") for split in SPLITS)
        log(f"  {'export':<20} {n_train + n_val:>10,} rows  {time.perf_counter() - t0:7.1f}s")
        reports = _validate([build / f"{split}.jsonl" for split in SPLITS], n_docs)
    meta = _metadata(ctx, n_train, n_val, started)
    if not all(r.ok for r in reports):
        _reject(out, build, meta, reports)
    meta["validation"] = _validation_meta(reports, out)

    from .report import write_report

    if fresh:
        for key in ("datasets", "st", "idf", "report", "card", "decontamination_manifest"):
            if key in old_meta:
                meta[key] = old_meta[key]
    else:
        meta["datasets"] = (export_datasets(build, final_dir=out, first_rank=cfg.export.first_rank)
                            if cfg.export.datasets
                            else {"skipped": "export.datasets = false"})
        meta["st"] = (export_st(build, n_docs, final_dir=out) if cfg.export.sentence_transformers
                      else {"skipped": "export.sentence_transformers = false"})
        if cfg.export.idf_tokenizer:
            meta["idf"] = {**write_idf(con, cfg.export.idf_tokenizer, build / "idf.json"),
                           "path": str(out / "idf.json")}
        if cfg.decontaminate:  # the SHA-256 manifest of what was excluded, beside the records
            from .decontaminate import write_manifest

            meta["decontamination_manifest"] = {**write_manifest(cfg, con, build / "decontamination.json"),
                                                "path": str(out / "decontamination.json")}
        write_report(cfg, con, build / "report")
        meta["report"] = str(out / "report" / "report.md")
        atomic_write_text(build / "README.md", card.render(cfg, meta, build))
        meta["card"] = str(out / "README.md")
    atomic_write_text(build / "metadata.json", _dumps(meta))
    if not fresh:
        _swap_in(out, build)
    shutil.rmtree(rejected_dir(out), ignore_errors=True)  # stale: this export passed
    return meta


def _dumps(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=False, indent=2, default=str)


def _reject(out: Path, build: Path, meta: dict[str, Any], reports: list[ValidationReport]) -> NoReturn:
    """Keep the failed export in ``<export>.rejected`` (replacing an older one) and raise."""
    rejected = rejected_dir(out)
    bad = [r for r in reports if not r.ok]
    total = sum(r.total_violations for r in bad)
    meta["validation"] = _validation_meta(reports, rejected)
    meta["rejected"] = {"reason": f"failed validation: {total:,} violations", "previous_export": str(out)}
    atomic_write_text(build / "metadata.json", _dumps(meta))
    shutil.rmtree(rejected, ignore_errors=True)
    os.replace(build, rejected)
    first = "\n".join(f"  {v}" for r in bad for v in r.violations[:5])
    raise ExportValidationError(
        f"export failed validation ({total:,} violations); the previous export {out} is unchanged, "
        f"the rejected one is in {rejected} (violations in its metadata.json); first ones:\n{first}",
        rejected, reports)


def _metadata(ctx: Context, n_train: int, n_val: int, started: float | None) -> dict[str, Any]:
    """metadata.json without ``validation``, ``datasets`` and ``report``."""
    cfg = ctx.cfg
    stages = {name: {"rows": r.rows, "seconds": round(r.seconds, 3), "skipped": r.skipped,
                     **({"extra": r.extra} if r.extra else {})} for name, r in ctx.results.items()}
    return {
        "total_queries": n_train + n_val,
        "train_samples": n_train,
        "val_samples": n_val,
        "docs_per_query": cfg.docs_per_query,
        "embedding_model": cfg.embedding.model,
        "source_datasets": [s.name for s in cfg.sources],
        "created_at": now_iso(),
        "format": {"fields": ["query", "docs", "scores"],
                   "doc_order": "positive first, then by score descending",
                   "roles_per_record": {"positive": 1, "hard": cfg.negatives.hard,
                                        "related": cfg.negatives.related, "easy": cfg.negatives.easy},
                   "score_scale": f"teacher cosine similarity min-max normalized per record x {cfg.scoring.scale}"},
        "stages": stages,
        **_stats(ctx),
        "validation": None,  # set by the caller
        "wall_seconds": round(time.perf_counter() - started, 2) if started else None,
        "config": cfg.to_dict(),
    }
