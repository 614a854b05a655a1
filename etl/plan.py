"""``python -m etl plan``: which stages a run would execute, and why (like ``dbt ls`` / ``terraform plan``).

A stage runs when its fingerprint (:func:`etl.pipeline.stage_fingerprint`) differs from the one
recorded when its layer was built. To say *why*, every materialization also records the parts of
its fingerprint (:func:`etl.pipeline.fingerprint_parts`): the hash of its code (SQL model or Python body, and
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

from dataclasses import dataclass
from typing import Any

from . import export as export_mod
from .context import Context
from .pipeline import STAGES, Stage, _outputs_present, fingerprint_parts, planned_fingerprints


@dataclass
class PlannedStage:
    """One line of the plan: a stage, whether it would run, and the reasons."""

    name: str
    runs: bool
    reasons: list[str]


def _reasons(stage: Stage, ctx: Context, planned: dict[str, str], recorded: dict[str, Any] | None) -> list[str]:
    if recorded is None:
        return ["not built yet"]
    if recorded.get("fingerprint") == planned[stage.name]:
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
    planned = planned_fingerprints(ctx)
    out: list[PlannedStage] = []
    for stage in STAGES:
        reasons = _reasons(stage, ctx, planned, ctx.wh.state(stage.name))
        out.append(PlannedStage(stage.name, bool(reasons), reasons))
    out.append(PlannedStage("export", *_export_reasons(ctx, planned)))
    return out


def _export_reasons(ctx: Context, planned: dict[str, str]) -> tuple[bool, list[str]]:
    changed = [d for d in export_mod.EXPORT_LAYERS if planned[d] != ctx.wh.fingerprint(d)]
    if changed:
        return True, [f"upstream layer {d} changes" for d in changed]
    why = export_mod.stale_reason(ctx, planned)
    return bool(why), [why] if why else []
