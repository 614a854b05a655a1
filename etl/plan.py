"""``python -m etl plan``: which stages a run would execute, and why (like ``dbt ls`` / ``terraform plan``).

A stage runs when its fingerprint (:func:`etl.pipeline.stage_fingerprint`) differs from the one
recorded when its layer was built. To say *why*, every materialization also records the parts of
its fingerprint (:func:`fingerprint_parts`): the hash of its code (SQL model or Python body, and
each ``etl`` module it runs), of each config key it reads, and the fingerprints of its input
layers. ``plan`` compares them with what a run would compute now (inputs chained through
:func:`etl.pipeline.planned_fingerprints`, so a change upstream shows on every stage below it):

* ``not built yet``: no layer (a fresh warehouse, or a run that stopped before it)
* ``config KEY changed``, ``code changed: NAME``, ``upstream layer NAME changes``
* ``input files changed``: the same code, settings and inputs layers, yet another fingerprint: the
  source / query files, the LLM prompt or the embedding model version
* ``output files missing``: the neighbours stage's ``embeddings/`` files are gone

Nothing is built or changed; the warehouse is opened read-only when it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .warehouse import sha

if TYPE_CHECKING:
    from .pipeline import Context, Stage


@dataclass
class PlannedStage:
    """One line of the plan: a stage, whether it would run, and the reasons."""

    name: str
    runs: bool
    reasons: list[str]


def _code_parts(stage: Stage, ctx: Context) -> dict[str, str]:
    """Hash of each piece of code a stage runs (mirrors :func:`etl.pipeline._code_version`)."""
    from . import pipeline

    parts: dict[str, str] = {}
    if stage.is_sql:
        parts[f"etl/sql/{stage.name}.sql"] = sha(pipeline.sql_model(ctx.cfg, stage.name).read_text(encoding="utf-8"))
    else:
        assert stage.python is not None
        parts[f"etl/pipeline.py:{stage.python.__name__}"] = sha(pipeline._stage_code(stage.python))
    modules = pipeline.STAGE_MODULES[stage.name]
    if not pipeline.stage_uses_modules(stage, ctx.cfg):
        modules = ()
    for m in modules:
        parts[m] = sha(pipeline.module_source(m))
    return parts


def fingerprint_parts(stage: Stage, ctx: Context,
                      dep_fingerprint: Callable[[str], str] | None = None) -> dict[str, Any]:
    """``{"code": {piece: hash}, "config": {key: hash}, "deps": {layer: fingerprint}}`` of a stage."""
    from .pipeline import _config_part

    dep_fp = dep_fingerprint or ctx.wh.fingerprint
    return {"code": _code_parts(stage, ctx),
            "config": {k: sha(_config_part(ctx.cfg, k)) for k in stage.config_keys},
            "deps": {d: dep_fp(d) for d in stage.deps}}


def _reasons(stage: Stage, ctx: Context, planned: dict[str, str], recorded: dict[str, Any] | None) -> list[str]:
    if recorded is None:
        return ["not built yet"]
    if recorded.get("fingerprint") == planned[stage.name]:
        from .pipeline import _outputs_present

        return [] if _outputs_present(stage, ctx) else ["output files missing"]
    old = recorded.get("parts")
    if not isinstance(old, dict):
        return ["fingerprint changed (recorded by an older version, which did not keep its parts)"]
    new = fingerprint_parts(stage, ctx, planned.__getitem__)
    out = [f"config {k} changed" for k, v in new["config"].items() if old.get("config", {}).get(k) != v]
    out += [f"code changed: {k}" for k, v in new["code"].items() if old.get("code", {}).get(k) != v]
    out += [f"code no longer run: {k}" for k in old.get("code", {}) if k not in new["code"]]
    out += [f"upstream layer {d} changes" for d, v in new["deps"].items() if old.get("deps", {}).get(d) != v]
    return out or ["input files changed (sources, query files, evaluation files, LLM prompt or embedding model "
                   "version)"]


def make_plan(ctx: Context) -> list[PlannedStage]:
    """What ``run`` would do on this warehouse and config: every stage, then the export."""
    from . import export as export_mod
    from .pipeline import STAGES, planned_fingerprints

    planned = planned_fingerprints(ctx)
    out: list[PlannedStage] = []
    for stage in STAGES:
        reasons = _reasons(stage, ctx, planned, ctx.wh.state(stage.name))
        out.append(PlannedStage(stage.name, bool(reasons), reasons))
    out.append(PlannedStage("export", *_export_reasons(ctx, planned, export_mod)))
    return out


def _export_reasons(ctx: Context, planned: dict[str, str], export_mod: Any) -> tuple[bool, list[str]]:
    changed = [d for d in ("examples", "passages", "queries") if planned[d] != ctx.wh.fingerprint(d)]
    if changed:
        return True, [f"upstream layer {d} changes" for d in changed]
    why = export_mod.stale_reason(ctx, planned)
    return bool(why), [why] if why else []
