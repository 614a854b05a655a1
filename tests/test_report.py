"""The quality report (etl/report.py, etl/sql/report/*.sql) on a pipeline run made here.

The run uses the bundled sample corpus and a tiny bag-of-tokens sentence-transformers model built
in the test (tests/tiny_models.py), so it takes seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("matplotlib")

from tiny_models import build_tiny_embedder  # noqa: E402

from etl.config import DEFAULT_SQL_DIR, load_config  # noqa: E402
from etl.pipeline import run_pipeline  # noqa: E402
from etl.report import PLOTS, c_tf_idf, extract_terms, md_table, write_report  # noqa: E402
from etl.warehouse import Warehouse  # noqa: E402

# the tokenizer of this test's tiny model trains on these + the sample corpus (not tiny_models.KO_SENTENCES)
TOKENIZER_TEXTS = ["서울특별시는 대한민국의 수도이다.", "query: passage: 질문 문서"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["## Overview", "## Scores by role", "## Teacher-score gap", "## Docs per query",
            "## Passages per source", "## Clusters and their top terms", "## Filter removals",
            "## Queries dropped, and why", "## Quarantine", "## Sample records"]


def layers_con(warehouse: Path, only: tuple[str, ...] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per layer Parquet file and no variables set."""
    con = duckdb.connect()
    for p in sorted((warehouse / "layers").glob("*.parquet")):
        if only is None or p.stem in only:
            con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
    return con


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report_run")
    model = build_tiny_embedder(root / "model", TOKENIZER_TEXTS)
    cfg = load_config(None, [f"paths.warehouse={root / 'warehouse'}", f"paths.export={root / 'export'}",
                             f"embedding.model={model}", "run.progress=false"])
    meta = run_pipeline(cfg, log=lambda *_: None)
    wh = Warehouse(cfg)
    try:
        path = write_report(cfg, wh.con, root / "report")
    finally:
        wh.close()
    return {"cfg": cfg, "meta": meta, "path": path, "text": path.read_text(encoding="utf-8"), "root": root}


def section(text: str, heading: str) -> str:
    """The markdown between ``heading`` and the next level-2 heading."""
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start: nxt if nxt >= 0 else len(text)]


def table_rows(md: str) -> list[list[str]]:
    """Body rows of every markdown table in ``md`` (header and separator lines dropped)."""
    rows: list[list[str]] = []
    in_body = False
    for line in md.splitlines():
        if line.startswith("|---"):
            in_body = True
        elif in_body and line.startswith("| "):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        else:
            in_body = False
    return rows


def num(text: str) -> float:
    return float(text.replace(",", ""))


# ---- the report on a real run ----------------------------------------------------------------

def test_report_has_every_section_and_plot(report_run):
    text, out_dir = report_run["text"], report_run["path"].parent
    for heading in SECTIONS:
        assert heading in text, heading
    assert "not available" not in text
    for name in PLOTS:
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out_dir / ref).is_file(), ref
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_report_numbers_match_the_run(report_run):
    text, meta = report_run["text"], report_run["meta"]
    overview = {r[0]: num(r[1]) for r in table_rows(section(text, "## Overview"))}
    assert overview["training records (examples)"] == meta["total_queries"]
    assert overview["records in train"] == meta["train_samples"]
    assert overview["records in val"] == meta["val_samples"]
    dropped = section(text, "## Queries dropped")
    reasons = {r[0]: num(r[1]) for r in table_rows(dropped.split("stats/dropped_queries.sql")[1])}
    assert reasons == {k: float(v) for k, v in meta["dropped_queries"].items()}
    by_method = table_rows(dropped.split("stats/dropped_queries.sql")[0])
    assert sum(num(r[3]) for r in by_method) == meta["total_queries"]
    quarantine: Counter = Counter()
    for r in table_rows(section(text, "## Quarantine")):
        quarantine[r[2]] += int(num(r[3]))
    assert dict(quarantine) == meta["quarantine"]
    filters: Counter = Counter()
    for r in table_rows(section(text, "## Filter removals")):
        filters[r[2]] += int(num(r[3]))
    assert dict(filters) == meta["candidate_filters"]


def test_scores_by_role_table(report_run):
    rows = {r[0]: r for r in table_rows(section(report_run["text"], "## Scores by role"))}
    scale = report_run["cfg"].scoring.scale
    assert set(rows) <= {"positive", "hard", "related", "easy"} and {"positive", "hard"} <= set(rows)
    assert num(rows["positive"][2]) == num(rows["positive"][6]) == scale  # min = max = scale
    assert num(rows["hard"][1]) == report_run["meta"]["total_queries"] * report_run["cfg"].negatives.hard


def test_cluster_table_has_korean_top_terms(report_run):
    rows = table_rows(section(report_run["text"], "## Clusters"))
    assert rows
    terms = [r[-1] for r in rows if r[-1]]
    assert len(terms) == len(rows)
    assert any(re.search("[가-힣]{2,}", t) for t in terms)
    try:
        import kiwipiepy  # noqa: F401
    except ImportError:
        assert "kiwipiepy not installed" in section(report_run["text"], "## Clusters")
    else:
        assert "kiwipiepy nouns" in section(report_run["text"], "## Clusters")


def test_sample_records_are_shown_in_full(report_run):
    con = layers_con(report_run["cfg"].warehouse_dir)
    try:
        sql = (DEFAULT_SQL_DIR / "report" / "sample_records.sql").read_text(encoding="utf-8")
        records = con.execute(sql).fetchall()
    finally:
        con.close()
    assert records
    text = section(report_run["text"], "## Sample records")
    for rec in records:
        assert rec[1] in text  # the query
        for doc in rec[6]:
            assert doc in text  # every doc, whole (inside a fenced block)


def test_report_sql_runs_by_hand(report_run):
    """Each etl/sql/report/*.sql runs as-is on plain views with no DuckDB variables set."""
    con = layers_con(report_run["cfg"].warehouse_dir)
    try:
        files = sorted((DEFAULT_SQL_DIR / "report").glob("*.sql"))
        assert len(files) >= 10
        for f in files:
            rows = con.execute(f.read_text(encoding="utf-8")).fetchall()
            assert isinstance(rows, list), f.name
    finally:
        con.close()


def test_report_with_missing_layers(report_run, tmp_path):
    out_dir = tmp_path / "partial"
    out_dir.mkdir()
    (out_dir / "cluster_sizes.png").write_bytes(b"stale")
    con = layers_con(report_run["cfg"].warehouse_dir, only=("examples", "quarantine", "documents"))
    try:
        path = write_report(report_run["cfg"], con, out_dir)
    finally:
        con.close()
    text = path.read_text(encoding="utf-8")
    assert "## Sample records" in text and "not available" in text
    assert (out_dir / "scores_by_role.png").exists()
    assert not (out_dir / "cluster_sizes.png").exists()  # stale plot of a section that failed


def test_report_rewrites_in_place(report_run, tmp_path):
    con = layers_con(report_run["cfg"].warehouse_dir)
    try:
        first = write_report(report_run["cfg"], con, tmp_path).read_text(encoding="utf-8")
        second = write_report(report_run["cfg"], con, tmp_path).read_text(encoding="utf-8")
    finally:
        con.close()
    strip = lambda s: re.sub(r"Generated [^\n]* UTC", "", s)  # noqa: E731
    assert strip(first) == strip(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*PLOTS, "report.md"])


# ---- helpers ---------------------------------------------------------------------------------

def test_extract_terms_keeps_korean_nouns():
    pytest.importorskip("kiwipiepy")
    terms = extract_terms(["서울특별시는 대한민국의 수도이자 최대 도시이다.", "Python은 프로그래밍 언어이다."])
    assert {"대한민국", "수도", "도시"} <= set(terms[0])
    assert not {"는", "의", "이다"} & set(terms[0])
    assert "python" in terms[1] and "언어" in terms[1]


def test_c_tf_idf_prefers_distinctive_terms():
    top = c_tf_idf({0: Counter({"고래": 5, "동물": 5}), 1: Counter({"행성": 5, "동물": 5}), 2: Counter()})
    assert top[0][0][0] == "고래" and top[1][0][0] == "행성"
    assert dict(top[0])["동물"] < dict(top[0])["고래"]
    assert top[2] == []


def test_md_table_escapes_cells():
    md = md_table(["a", "b"], [("x|y", "line1\nline2"), (1234567, 0.123456)])
    assert "x\\|y" in md and "line1 line2" in md and "1,234,567" in md and "0.1235" in md
    assert md_table(["a"], []) == "_(no rows)_\n"


def test_report_without_matplotlib(report_run, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # what etl.report_plots.have_matplotlib asks
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    con = layers_con(report_run["cfg"].warehouse_dir)
    try:
        text = write_report(report_run["cfg"], con, tmp_path).read_text(encoding="utf-8")
    finally:
        con.close()
    assert "matplotlib is not installed" in text and "## Sample records" in text
    assert list(tmp_path.glob("*.png")) == []
