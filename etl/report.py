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

The sections are data (:data:`SECTIONS`: title, prose, the queries shown as tables, the plot);
the queries run through :mod:`etl.report_sql` and the plots are drawn by :mod:`etl.report_plots`.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .context import utc_now
from .report_plots import PLOTS, draw_plots, have_matplotlib
from .report_sql import Result, read_report_sql, run_report_sql
from .warehouse import atomic_write_text

__all__ = ["PLOTS", "SECTIONS", "Result", "Section", "c_tf_idf", "cluster_terms", "extract_terms", "md_table",
           "read_report_sql", "run_report_sql", "write_report"]

NOUN_TAGS = frozenset({"NNG", "NNP", "SL", "SH"})
STOP_TERMS = frozenset({"경우", "때문", "이후", "이전", "정도", "사용", "이상", "이하", "당시", "자신", "하나",
                        "가지", "관련", "대부분", "일부", "모두", "사이", "동안", "가운데", "the", "and", "of"})
TOP_TERMS = 8
CLUSTER_ROWS = 40  # clusters listed in the table (largest first)
TERM_PASSAGE_BUDGET = 2_000  # passages (<= 600 chars each) analysed for the listed clusters' terms
SAMPLES = 4


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
            zip(r["roles"], r["scores"], r["teacher_scores"], r["bi_scores"], r["passage_ids"], strict=True))]
        parts.append(md_table(cols, table))
        for j, (role, score, doc) in enumerate(zip(r["roles"], r["scores"], r["docs"], strict=True)):
            parts.append(f"**doc {j}** ({role}, score {_cell(score)} of {scale:g}):\n")
            parts.append(_fence(doc))
    return parts


@dataclass(frozen=True)
class Section:
    """One section of report.md as data: its title, prose, query tables and plot.

    Rendered as ``## title``, the prose, then per block a "from <files>" line and the table of one
    query's result, then the plot (when drawn). ``prose`` may name ``{docs_per_query}``.
    """

    title: str
    prose: str = ""
    blocks: tuple[tuple[tuple[str, ...], str], ...] = ()  # ((files named, query shown as a table), ...)
    plot: tuple[str, str] | None = None  # (key of report_plots.draw_plots, alt text)


SECTIONS: tuple[Section, ...] = (
    Section("Overview", blocks=((("overview",), "overview"),)),
    Section("Scores by role",
            "Exported scores: the teacher score min-max normalized within each record, times the scale. "
            "The positive is always the record's maximum; hard negatives should sit well above easy ones.\n",
            ((("score_summary", "score_histogram"), "score_summary"),), ("scores", "score distribution by role")),
    Section("Teacher-score gap, positive vs negatives",
            "Gap = the positive's teacher score minus the negative's (raw teacher scores, before "
            "normalization; `cosine` columns: the e5 bi-encoder cosine). Gaps near zero are negatives the "
            "teacher rates as relevant as the positive: the likeliest false negatives.\n",
            ((("teacher_gap", "teacher_gap_histogram"), "teacher_gap"),), ("gap", "teacher-score gap")),
    Section("Docs per query",
            "Expected: {docs_per_query} docs in every record (even, so the trainer's stride pairs use every doc).\n",
            ((("docs_per_query",), "docs_per_query"),), ("docs", "docs per query")),
    Section("Passages per source", "",
            ((("passages_per_source", "passages_per_document"), "passages_per_source"),),
            ("passages", "passages per document")),
    Section("Clusters and their top terms"),  # the table and its terms: _clusters_section
    Section("Filter removals",
            "Candidates removed before selection. Structural filters run on the candidate list (layer "
            "`candidates`); teacher-score filters compare each scored candidate with the positive (layer "
            "`scored_candidates`). `pct_of_role`: share of that role's candidates.\n",
            ((("filter_removals",), "filter_removals"),), ("filters", "filter removals")),
    Section("Queries dropped, and why",
            "A query that cannot fill every slot of its record is dropped, never padded.\n",
            ((("queries_by_method",), "queries_by_method"),
             (("stats/dropped_queries",), "stats/dropped_queries"))),
    Section("Quarantine", "Records read that did not become documents.\n",
            ((("quarantine_by_reason",), "quarantine_by_reason"),)),
    Section("Sample records",
            "Records as the trainer sees them (docs in exported order: positive first, then by score), with "
            "each doc's role, teacher score, e5 cosine and passage id.\n",
            ((("sample_records",), ""),)),  # the records themselves: _samples_section
)
# report queries that no section shows as a table but a plot or a section body reads
EXTRA_QUERIES = ("score_histogram", "teacher_gap_histogram", "passages_per_document", "cluster_sizes",
                 "user_query_rejects", "sample_records")


def _render(section: Section, results: dict[str, Result], plots: dict[str, str | None], cfg: Config) -> list[str]:
    md = [f"## {section.title}\n", section.prose.format(docs_per_query=cfg.docs_per_query)]
    for files, table in section.blocks:
        md.append(_source_line(*files))
        if table:
            md.append(_result_table(results[table]))
    if section.plot:
        md.append(_img(plots[section.plot[0]], section.plot[1]))
    return md


def _clusters_section(con: Any, sql_dir: Path, clusters: Result, plots: dict[str, str | None]) -> list[str]:
    if not clusters.ok:
        return [_result_table(clusters)]
    terms, note = cluster_terms(con, sql_dir, len(clusters.rows))
    cols = clusters.columns + ["top terms"]
    rows = [tuple(r) + (", ".join(terms.get(int(r[0]), [])),) for r in clusters.rows]
    return [_source_line("cluster_sizes", "cluster_texts"), note + "\n\n", md_table(cols, rows, limit=CLUSTER_ROWS),
            _img(plots["clusters"], "cluster sizes")]


def _query_names() -> list[str]:
    """Every query the report runs, each once, in section order."""
    names = [t for s in SECTIONS for _, t in s.blocks if t] + list(EXTRA_QUERIES)
    return list(dict.fromkeys(names))


def write_report(cfg: Config, con: Any, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots from SQL over the warehouse; return the report path.

    ``con`` is a DuckDB connection holding the layer views and the config variables
    (``etl.warehouse.Warehouse(cfg).con``). Queries are read from ``cfg.sql_dir / 'report'`` and
    ``cfg.sql_dir / 'stats' / 'dropped_queries.sql'``; the sections are :data:`SECTIONS`. Plot files
    of an earlier report that this run could not draw are removed, so the directory always matches
    report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sql_dir = cfg.sql_dir
    scale = float(cfg.scoring.scale)
    con.execute("SET VARIABLE report_samples = ?", [SAMPLES])
    results = {}
    for name in _query_names():  # "stats/dropped_queries": etl/sql/stats/, others etl/sql/report/
        folder, _, base = name.rpartition("/")
        results[name] = run_report_sql(con, sql_dir, base, folder or "report")
    plots = draw_plots(results, scale, out_dir)

    n, f, t = cfg.negatives, cfg.filters, cfg.teacher
    teacher = t.kind + (f" ({t.cross_encoder})" if t.kind != "biencoder" else "")
    md: list[str] = [
        "# Dataset quality report\n",
        f"Generated {utc_now('%Y-%m-%d %H:%M UTC')} from the warehouse `{cfg.warehouse_dir}`. "
        "Every number below is a SQL query over the layer views; each section names its file, which "
        "runs unchanged in the DuckDB CLI against `etl.duckdb` (unset variables take the defaults).\n",
        "" if have_matplotlib() else "_Plots skipped: matplotlib is not installed (pip install -e '.[report]')._\n",
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
    ]
    for section in SECTIONS:
        md += _render(section, results, plots, cfg)
        if section.title == "Clusters and their top terms":
            md += _clusters_section(con, sql_dir, results["cluster_sizes"], plots)
        elif section.title == "Queries dropped, and why":
            rejects = results["user_query_rejects"]
            if rejects.ok and rejects.rows:
                md += ["Query-file lines rejected:\n", _source_line("user_query_rejects"), _result_table(rejects)]
            if cfg.decontaminate:
                md += ["## Decontamination\n",
                       "Per evaluation set ([[decontaminate]]): queries equal to an evaluation question (normalized) "
                       "and corpus passages equal to or overlapping an evaluation passage (word "
                       f"{cfg.decontamination.ngram}-grams, >= {cfg.decontamination.min_containment:.0%} of the "
                       "shorter text) are kept out of every record; `decontamination.json` beside the export lists "
                       "their SHA-256.\n",
                       _source_line("stats/decontamination"),
                       _result_table(run_report_sql(con, sql_dir, "decontamination", folder="stats"))]
        elif section.title == "Sample records":
            md += _samples_section(results["sample_records"], scale)
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(part.rstrip("\n") + "\n" for part in md if part))
    return report
