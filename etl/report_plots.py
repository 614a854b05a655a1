"""The report's PNG plots, drawn from query results (:class:`etl.report_sql.Result`) with matplotlib.

Figures use the Agg canvas directly (no pyplot state) and are written atomically; a plot whose
query failed or returned no rows is not drawn. :func:`draw_plots` draws them all (nothing without
matplotlib) and removes the files of an earlier report that this one could not draw.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from .report_sql import Result

ROLE_ORDER = ("positive", "hard", "related", "easy")
ROLE_COLORS = {"positive": "#2ca02c", "hard": "#d62728", "related": "#ff7f0e", "easy": "#1f77b4"}
PLOTS = ("scores_by_role.png", "teacher_gap.png", "docs_per_query.png", "passages_per_source.png",
         "cluster_sizes.png", "filter_removals.png")
PLOT_KEYS = ("scores", "gap", "docs", "passages", "clusters", "filters")


def have_matplotlib() -> bool:
    """Whether matplotlib is installed (the report is written without plots otherwise)."""
    return importlib.util.find_spec("matplotlib") is not None


def draw_plots(results: dict[str, Result], scale: float, out_dir: Path) -> dict[str, str | None]:
    """Every plot's file name (None where not drawn), keyed by :data:`PLOT_KEYS`, from the named query results."""
    plots: dict[str, str | None] = dict.fromkeys(PLOT_KEYS)
    if have_matplotlib():
        plots = {
            "scores": plot_scores(results["score_histogram"], scale, out_dir),
            "gap": plot_gap(results["teacher_gap_histogram"], out_dir),
            "docs": plot_docs(results["docs_per_query"], out_dir),
            "passages": plot_passages(results["passages_per_document"], out_dir),
            "clusters": plot_clusters(results["cluster_sizes"], out_dir),
            "filters": plot_filters(results["filter_removals"], out_dir),
        }
    for name in set(PLOTS) - {p for p in plots.values() if p}:
        (out_dir / name).unlink(missing_ok=True)
    return plots


def _new_figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, out_dir: Path, name: str) -> str:
    """Write a figure as PNG atomically (Agg canvas; no pyplot state); return the file name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    final = out_dir / name
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-glyph warnings for non-Latin labels
        fig.savefig(tmp, format="png")
    os.replace(tmp, final)
    return name


def plot_scores(hist: Result, scale: float, out_dir: Path) -> str | None:
    """Score distribution per role (``score_histogram.sql``): ``scores_by_role.png``."""
    if not hist.ok or not hist.rows:
        return None
    by_role: dict[str, dict[int, int]] = {}
    edges: dict[int, float] = {}
    for r in hist.dicts():
        by_role.setdefault(r["role"], {})[int(r["bin"])] = int(r["n"])
        edges[int(r["bin"])] = float(r["bin_lo"])
    roles = [r for r in ROLE_ORDER if r in by_role] + sorted(set(by_role) - set(ROLE_ORDER))
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    bins = 20
    width = scale / bins
    for role in roles:
        counts = [by_role[role].get(b, 0) for b in range(bins)]
        ax.stairs(counts, [b * width for b in range(bins + 1)], label=role, color=ROLE_COLORS.get(role),
                  linewidth=1.8)
    ax.set_xlabel(f"exported score (per-record min-max of the teacher score x {scale:g})")
    ax.set_ylabel("docs")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title("Score distribution by role")
    ax.legend()
    return _save(fig, out_dir, "scores_by_role.png")


def plot_gap(hist: Result, out_dir: Path) -> str | None:
    """Teacher-score gap, positive minus negative, per role (``teacher_gap_histogram.sql``): ``teacher_gap.png``."""
    if not hist.ok or not hist.rows:
        return None
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    by_role: dict[str, list[dict[str, Any]]] = {}
    for r in hist.dicts():
        by_role.setdefault(r["role"], []).append(r)
    for role in [r for r in ROLE_ORDER if r in by_role] + sorted(set(by_role) - set(ROLE_ORDER)):
        rows = by_role[role]
        ax.bar([float(r["bin_lo"]) for r in rows], [int(r["n"]) for r in rows],
               width=[float(r["bin_hi"]) - float(r["bin_lo"]) for r in rows], align="edge",
               alpha=0.55, label=role, color=ROLE_COLORS.get(role))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("teacher score of the positive - teacher score of the negative")
    ax.set_ylabel("negatives")
    ax.set_title("Teacher-score gap, positive vs negatives")
    ax.legend()
    return _save(fig, out_dir, "teacher_gap.png")


def plot_docs(res: Result, out_dir: Path) -> str | None:
    """Docs per record (``docs_per_query.sql``): ``docs_per_query.png``."""
    if not res.ok or not res.rows:
        return None
    totals: Counter = Counter()
    for r in res.dicts():
        totals[(r["split"], int(r["docs"]))] += int(r["records"])
    splits = sorted({s for s, _ in totals})
    sizes = sorted({d for _, d in totals})
    fig = _new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        ax.bar([d + (i - (len(splits) - 1) / 2) * width for d in sizes], [totals[(split, d)] for d in sizes],
               width=width, label=split)
    ax.set_xticks(sizes)
    ax.set_xlabel("docs per record")
    ax.set_ylabel("records")
    ax.set_title("Docs per query")
    ax.legend()
    return _save(fig, out_dir, "docs_per_query.png")


def plot_passages(res: Result, out_dir: Path) -> str | None:
    """Passages per document, per source (``passages_per_document.sql``): ``passages_per_source.png``."""
    if not res.ok or not res.rows:
        return None
    by_source: dict[str, dict[int, int]] = {}
    for r in res.dicts():
        by_source.setdefault(str(r["source"]), {})[int(r["passages"])] = int(r["documents"])
    fig = _new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    sources = sorted(by_source)
    width = 0.8 / max(len(sources), 1)
    xs = list(range(1, 21))
    for i, src in enumerate(sources):
        ax.bar([x + (i - (len(sources) - 1) / 2) * width for x in xs], [by_source[src].get(x, 0) for x in xs],
               width=width, label=src)
    ax.set_xticks([1, 5, 10, 15, 20], ["1", "5", "10", "15", "20+"])
    ax.set_xlabel("passages per document")
    ax.set_ylabel("documents")
    ax.set_title("Passages per document, by source")
    ax.legend()
    return _save(fig, out_dir, "passages_per_source.png")


def plot_clusters(res: Result, out_dir: Path) -> str | None:
    """Cluster sizes (``cluster_sizes.sql``): ``cluster_sizes.png``."""
    if not res.ok or not res.rows:
        return None
    rows = res.dicts()
    fig = _new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), [int(r["passages"]) for r in rows], color="#7f7f7f", label="passages")
    ax.bar(range(len(rows)), [int(r["records"]) for r in rows], color="#2ca02c", alpha=0.7,
           width=0.5, label="records with the positive here")
    if len(rows) <= 40:
        ax.set_xticks(range(len(rows)), [str(r["cluster_id"]) for r in rows], fontsize=7)
        ax.set_xlabel("cluster id (largest first)")
    else:
        ax.set_xlabel(f"{len(rows):,} clusters, largest first")
    ax.set_ylabel("count")
    ax.set_title("Cluster sizes")
    ax.legend()
    return _save(fig, out_dir, "cluster_sizes.png")


def plot_filters(res: Result, out_dir: Path) -> str | None:
    """Candidates removed per filter (``filter_removals.sql``): ``filter_removals.png``."""
    if not res.ok or not res.rows:
        return None
    rows = res.dicts()
    labels = [f"{r['filter']} ({r['role']})" for r in rows]
    fig = _new_figure(7.5, max(2.5, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot()
    colors = ["#1f77b4" if r["stage"] == "structural" else "#d62728" for r in rows]
    ax.barh(range(len(rows)), [int(r["n"]) for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("candidates removed (blue: structural, red: teacher score)")
    ax.set_title("Filter removals")
    return _save(fig, out_dir, "filter_removals.png")


# ---- the report ------------------------------------------------------------------------------
