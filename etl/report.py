"""Dataset quality report: ``report.md`` plus PNG plots, every number from SQL over the warehouse.

The queries live in ``etl/sql/report/*.sql`` (plain SELECTs over the layer views, runnable by hand in
the DuckDB CLI against ``warehouse/etl.duckdb``); the dropped-query reasons come from
``etl/sql/stats/dropped_queries.sql``. Python only lays the results out, draws the plots and extracts
each cluster's top terms: c-TF-IDF (the class-based TF-IDF of BERTopic) over Korean nouns found by
kiwipiepy's morphological analyzer (``NNG``/``NNP`` nouns, ``SL`` foreign words, ``SH`` hanja),
computed on the passages nearest each centroid of the largest clusters. Without kiwipiepy the terms fall back to
whitespace tokens of two or more characters.

Sections: overview funnel, score distributions by role (positive / hard / related / easy), the
teacher-score gap between the positive and each negative role, docs per record, passages per
source, cluster sizes with their top terms, filter removals, dropped queries and why, quarantine
by reason, and a few records shown in full. A section whose layer is missing says so and the rest
of the report is still written. Files are written to temporary names and renamed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Config
from .warehouse import atomic_write_text

ROLE_ORDER = ("positive", "hard", "related", "easy")
ROLE_COLORS = {"positive": "#2ca02c", "hard": "#d62728", "related": "#ff7f0e", "easy": "#1f77b4"}
PLOTS = ("scores_by_role.png", "teacher_gap.png", "docs_per_query.png", "passages_per_source.png",
         "cluster_sizes.png", "filter_removals.png")
NOUN_TAGS = frozenset({"NNG", "NNP", "SL", "SH"})
STOP_TERMS = frozenset({"경우", "때문", "이후", "이전", "정도", "사용", "이상", "이하", "당시", "자신", "하나",
                        "가지", "관련", "대부분", "일부", "모두", "사이", "동안", "가운데", "the", "and", "of"})
TOP_TERMS = 8
CLUSTER_ROWS = 40  # clusters listed in the table (largest first)
TERM_PASSAGE_BUDGET = 2_000  # passages (<= 600 chars each) analysed for the listed clusters' terms
SAMPLES = 4


@dataclass
class Result:
    """Rows of one report query, or the error that prevented it."""

    name: str
    columns: list[str]
    rows: list[tuple]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the query ran."""
        return self.error is None

    def dicts(self) -> list[dict[str, Any]]:
        """Rows as dictionaries."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def read_report_sql(sql_dir: Path, name: str, folder: str = "report") -> str:
    """The SELECT of ``etl/sql/<folder>/<name>.sql`` without trailing semicolons."""
    return (sql_dir / folder / f"{name}.sql").read_text(encoding="utf-8").strip().rstrip(";")


def run_report_sql(con: Any, sql_dir: Path, name: str, folder: str = "report") -> Result:
    """Run one report query to completion; a missing layer or SQL error becomes ``Result.error``."""
    import duckdb

    try:
        cur = con.execute(read_report_sql(sql_dir, name, folder))
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except (duckdb.Error, OSError) as exc:
        return Result(name, [], [], error=str(exc).strip().splitlines()[0][:300])
    return Result(name, columns, rows)


# ---- Korean terms per cluster ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    """One shared Kiwi instance (loading the model takes about a second), or None without kiwipiepy."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        return None
    return Kiwi()


_FALLBACK_TOKEN = re.compile(r"[0-9A-Za-z\uac00-\ud7a3\u4e00-\u9fff]{2,}")


def extract_terms(texts: Sequence[str]) -> list[list[str]]:
    """Content terms of each text: Kiwi nouns / foreign words / hanja (2+ characters), lower-cased.

    Without kiwipiepy: runs of Hangul, Latin letters, digits or CJK characters of 2+ characters.
    """
    kiwi = _kiwi()
    if kiwi is None:
        return [[t.lower() for t in _FALLBACK_TOKEN.findall(text) if t.lower() not in STOP_TERMS]
                for text in texts]
    out: list[list[str]] = []
    for tokens in kiwi.tokenize(list(texts)):
        terms = []
        for tok in tokens:
            if tok.tag in NOUN_TAGS:
                form = tok.form.lower()
                if len(form) >= 2 and form not in STOP_TERMS:
                    terms.append(form)
        out.append(terms)
    return out


def c_tf_idf(terms_by_class: dict[Any, Counter], top_n: int = TOP_TERMS) -> dict[Any, list[tuple[str, float]]]:
    """Class-based TF-IDF: ``tf(t, c) / |c| * log(1 + A / f(t))``, A = mean terms per class.

    ``terms_by_class`` maps a class (cluster) to its term counts; returns the ``top_n`` terms of
    each class with their weights, best first (ties broken alphabetically).
    """
    totals = {c: sum(cnt.values()) for c, cnt in terms_by_class.items()}
    nonempty = [n for n in totals.values() if n]
    if not nonempty:
        return {c: [] for c in terms_by_class}
    avg_terms = sum(nonempty) / len(nonempty)
    freq: Counter = Counter()
    for cnt in terms_by_class.values():
        freq.update(cnt)
    out: dict[Any, list[tuple[str, float]]] = {}
    for c, cnt in terms_by_class.items():
        if not totals[c]:
            out[c] = []
            continue
        weights = [(t, n / totals[c] * math.log(1.0 + avg_terms / freq[t])) for t, n in cnt.items()]
        weights.sort(key=lambda tw: (-tw[1], tw[0]))
        out[c] = weights[:top_n]
    return out


def cluster_terms(con: Any, sql_dir: Path, n_clusters: int) -> tuple[dict[int, list[str]], str]:
    """Top terms of the largest clusters from ``etl/sql/report/cluster_texts.sql``; also a note on the method.

    The terms are computed for the ``CLUSTER_ROWS`` largest clusters (those the report lists), with
    the document frequencies of c-TF-IDF taken over these clusters; about ``TERM_PASSAGE_BUDGET``
    passages are analysed in all (Kiwi handles roughly 60k characters a second on one core).
    """
    listed = max(1, min(n_clusters, CLUSTER_ROWS))
    per_cluster = max(5, TERM_PASSAGE_BUDGET // listed)
    con.execute("SET VARIABLE report_cluster_limit = ?", [listed])
    con.execute("SET VARIABLE report_cluster_sample = ?", [per_cluster])
    res = run_report_sql(con, sql_dir, "cluster_texts")
    if not res.ok:
        return {}, f"cluster terms not available: {res.error}"
    counts: dict[int, Counter] = {}
    rows = res.rows
    terms = extract_terms([r[2] or "" for r in rows])
    for (cluster_id, _pid, _text), t in zip(rows, terms, strict=True):
        counts.setdefault(int(cluster_id), Counter()).update(t)
    top = c_tf_idf(counts)
    method = "kiwipiepy nouns (NNG/NNP/SL/SH)" if _kiwi() is not None else "whitespace tokens (kiwipiepy not installed)"
    note = (f"Top terms: c-TF-IDF over {method} across the {listed} largest clusters, from up to "
            f"{per_cluster} passages nearest each centroid ({len(rows):,} passages analysed).")
    return {c: [t for t, _ in tw] for c, tw in top.items()}, note


# ---- markdown helpers ------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:,.4f}".rstrip("0").rstrip(".") if not value.is_integer() else f"{value:,.0f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], limit: int | None = None) -> str:
    """A GitHub-flavoured markdown table (pipes and newlines in cells escaped)."""
    if not rows:
        return "_(no rows)_\n"
    shown = rows[:limit] if limit else rows
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in shown]
    if limit and len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit:,} more rows not shown._")
    return "\n".join(lines) + "\n"


def _result_table(res: Result, limit: int | None = None) -> str:
    if not res.ok:
        return f"_not available: {res.error}_\n"
    return md_table(res.columns, res.rows, limit)


def _source_line(*names: str) -> str:
    files = ", ".join(f"`etl/sql/{n}.sql`" if "/" in n else f"`etl/sql/report/{n}.sql`" for n in names)
    return f"<sub>from {files}</sub>\n"


def _fence(text: str) -> str:
    """A fenced text block longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}\n"


# ---- plots -----------------------------------------------------------------------------------

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


def _plot_scores(hist: Result, scale: float, out_dir: Path) -> str | None:
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


def _plot_gap(hist: Result, out_dir: Path) -> str | None:
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


def _plot_docs(res: Result, out_dir: Path) -> str | None:
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


def _plot_passages(res: Result, out_dir: Path) -> str | None:
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


def _plot_clusters(res: Result, out_dir: Path) -> str | None:
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


def _plot_filters(res: Result, out_dir: Path) -> str | None:
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

def _img(name: str | None, alt: str) -> str:
    return f"![{alt}]({name})\n" if name else ""


def _samples_section(res: Result, scale: float) -> list[str]:
    if not res.ok:
        return [f"_not available: {res.error}_\n"]
    if not res.rows:
        return ["_(no records)_\n"]
    parts: list[str] = []
    for i, r in enumerate(res.dicts(), start=1):
        parts.append(f"### Sample {i}: `{r['method']}` query, {r['source']}, {r['split']}\n")
        parts.append(f"**Query:** {_cell(r['query'])}  \n`{_cell(r['query_id'])}` → positive document "
                     f"`{_cell(r['doc_id'])}`\n")
        cols = ["#", "role", "score", "teacher score", "e5 cosine", "passage_id"]
        table = [(j, role, score, ts, cos, pid) for j, (role, score, ts, cos, pid) in enumerate(
            zip(r["roles"], r["scores"], r["teacher_scores"], r["teacher_sims"], r["passage_ids"], strict=True))]
        parts.append(md_table(cols, table))
        for j, (role, score, doc) in enumerate(zip(r["roles"], r["scores"], r["docs"], strict=True)):
            parts.append(f"**doc {j}** ({role}, score {_cell(score)} of {scale:g}):\n")
            parts.append(_fence(doc))
    return parts


def write_report(cfg: Config, con: Any, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots from SQL over the warehouse; return the report path.

    ``con`` is a DuckDB connection holding the layer views and the config variables
    (``etl.warehouse.Warehouse(cfg).con``). Queries are read from ``cfg.sql_dir / 'report'`` and
    ``cfg.sql_dir / 'stats' / 'dropped_queries.sql'``. Plot files of an earlier report that this
    run could not draw are removed, so the directory always matches report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sql_dir = cfg.sql_dir
    scale = float(cfg.scoring.scale)
    con.execute("SET VARIABLE report_samples = ?", [SAMPLES])
    q = functools.partial(run_report_sql, con, sql_dir)

    overview = q("overview")
    score_summary, score_hist = q("score_summary"), q("score_histogram")
    gap, gap_hist = q("teacher_gap"), q("teacher_gap_histogram")
    docs = q("docs_per_query")
    per_source, per_doc = q("passages_per_source"), q("passages_per_document")
    clusters = q("cluster_sizes")
    filters = q("filter_removals")
    by_method = q("queries_by_method")
    dropped = run_report_sql(con, sql_dir, "dropped_queries", folder="stats")
    rejects = q("user_query_rejects")
    quarantine = q("quarantine_by_reason")
    samples = q("sample_records")

    have_mpl = importlib.util.find_spec("matplotlib") is not None
    plots: dict[str, str | None] = dict.fromkeys(("scores", "gap", "docs", "passages", "clusters", "filters"))
    if have_mpl:
        plots = {
            "scores": _plot_scores(score_hist, scale, out_dir),
            "gap": _plot_gap(gap_hist, out_dir),
            "docs": _plot_docs(docs, out_dir),
            "passages": _plot_passages(per_doc, out_dir),
            "clusters": _plot_clusters(clusters, out_dir),
            "filters": _plot_filters(filters, out_dir),
        }
    for name in set(PLOTS) - {p for p in plots.values() if p}:
        (out_dir / name).unlink(missing_ok=True)

    n, f, t = cfg.negatives, cfg.filters, cfg.teacher
    teacher = t.kind + (f" ({t.cross_encoder})" if t.kind != "biencoder" else "")
    md: list[str] = [
        "# Dataset quality report\n",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} from the warehouse `{cfg.warehouse_dir}`. "
        "Every number below is a SQL query over the layer views; each section names its file, which "
        "runs unchanged in the DuckDB CLI against `etl.duckdb` (unset variables take the defaults).\n",
        "" if have_mpl else "_Plots skipped: matplotlib is not installed (pip install -e '.[report]')._\n",
        md_table(["setting", "value"], [
            ("embedding model", cfg.embedding.model),
            ("teacher", teacher),
            ("docs per record",
             f"1 positive + {n.hard} hard + {n.related} related + {n.easy} easy = {cfg.docs_per_query}"),
            ("score scale", f"per-record min-max of the teacher score x {scale:g}"),
            ("filters", f"exclude_same_document={f.exclude_same_document}, relative_margin={f.relative_margin}, "
                        f"absolute_margin={f.absolute_margin}, near_duplicate_cosine={f.near_duplicate_cosine}, "
                        f"positive_max_rank={f.positive_max_rank}"),
        ]),
        "## Overview\n", _source_line("overview"), _result_table(overview),
        "## Scores by role\n",
        "Exported scores: the teacher score min-max normalized within each record, times the scale. "
        "The positive is always the record's maximum; hard negatives should sit well above easy ones.\n",
        _source_line("score_summary", "score_histogram"), _result_table(score_summary),
        _img(plots["scores"], "score distribution by role"),
        "## Teacher-score gap, positive vs negatives\n",
        "Gap = the positive's teacher score minus the negative's (raw teacher scores, before "
        "normalization; `cosine` columns: the e5 bi-encoder cosine). Gaps near zero are negatives the "
        "teacher rates as relevant as the positive: the likeliest false negatives.\n",
        _source_line("teacher_gap", "teacher_gap_histogram"), _result_table(gap),
        _img(plots["gap"], "teacher-score gap"),
        "## Docs per query\n",
        f"Expected: {cfg.docs_per_query} docs in every record (even, so the trainer's stride pairs use every doc).\n",
        _source_line("docs_per_query"), _result_table(docs), _img(plots["docs"], "docs per query"),
        "## Passages per source\n", _source_line("passages_per_source", "passages_per_document"),
        _result_table(per_source), _img(plots["passages"], "passages per document"),
        "## Clusters and their top terms\n",
    ]
    if clusters.ok:
        terms, note = cluster_terms(con, sql_dir, len(clusters.rows))
        md.append(_source_line("cluster_sizes", "cluster_texts"))
        md.append(note + "\n\n")
        cols = clusters.columns + ["top terms"]
        rows = [tuple(r) + (", ".join(terms.get(int(r[0]), [])),) for r in clusters.rows]
        md.append(md_table(cols, rows, limit=CLUSTER_ROWS))
        md.append(_img(plots["clusters"], "cluster sizes"))
    else:
        md.append(_result_table(clusters))
    md += [
        "## Filter removals\n",
        "Candidates removed before selection. Structural filters run on the candidate list (layer "
        "`candidates`); teacher-score filters compare each scored candidate with the positive (layer "
        "`scored_candidates`). `pct_of_role`: share of that role's candidates.\n",
        _source_line("filter_removals"), _result_table(filters), _img(plots["filters"], "filter removals"),
        "## Queries dropped, and why\n",
        "A query that cannot fill every slot of its record is dropped, never padded.\n",
        _source_line("queries_by_method"), _result_table(by_method),
        _source_line("stats/dropped_queries"), _result_table(dropped),
    ]
    if rejects.ok and rejects.rows:
        md += ["Query-file lines rejected:\n", _source_line("user_query_rejects"), _result_table(rejects)]
    if cfg.decontaminate:
        md += ["## Decontamination\n",
               "Per evaluation set ([[decontaminate]]): queries equal to an evaluation question (normalized) "
               "and corpus passages equal to or overlapping an evaluation passage (word "
               f"{cfg.decontamination.ngram}-grams, >= {cfg.decontamination.min_containment:.0%} of the shorter "
               "text) are kept out of every record; `decontamination.json` beside the export lists their "
               "SHA-256.\n",
               _source_line("stats/decontamination"),
               _result_table(run_report_sql(con, sql_dir, "decontamination", folder="stats"))]
    md += [
        "## Quarantine\n", "Records read that did not become documents.\n",
        _source_line("quarantine_by_reason"), _result_table(quarantine),
        "## Sample records\n",
        "Records as the trainer sees them (docs in exported order: positive first, then by score), with "
        "each doc's role, teacher score, e5 cosine and passage id.\n",
        _source_line("sample_records"),
    ]
    md += _samples_section(samples, scale)
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(part.rstrip("\n") + "\n" for part in md if part))
    return report
