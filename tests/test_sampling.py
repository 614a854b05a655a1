"""negatives.sampling: "top" (the best-scored usable hard candidates) and "spread" (evenly across the
usable teacher-score range), run as examples.sql over a hand-made scored_candidates layer."""

from __future__ import annotations

import subprocess

import duckdb
import pytest
from etl_helpers import REPO

from etl.config import ConfigError, load_config

N_HARD, TOP_K = 5, 30


def _con(n_window: dict[str, int], deep: int = 3) -> duckdb.DuckDBPyConnection:
    """Queries q<i> with n_window usable hard candidates in the rank window (scores 0.9, 0.89, ...),
    `deep` more beyond it, and 2 easy draws scoring below all of them."""
    con = duckdb.connect()
    rows = []
    for q, n in n_window.items():
        rows.append((q, f"{q}-pos", "positive", 0, 1.0, None))
        for r in range(1, n + deep + 1):
            rank = r if r <= n else TOP_K + r
            rows.append((q, f"{q}-h{r:02d}", "hard", rank, 0.9 - 0.01 * r, None))
        rows.append((q, f"{q}-h99", "hard", 2, 0.95, "relative_margin"))  # filtered: never picked
        rows += [(q, f"{q}-e{r}", "easy", r, 0.1 + 0.01 * r, None) for r in (1, 2)]
    con.execute("CREATE TABLE scored_candidates (query_id VARCHAR, passage_id VARCHAR, role VARCHAR, rank BIGINT, "
                "teacher_score DOUBLE, filter_reason VARCHAR)")
    con.executemany("INSERT INTO scored_candidates VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.execute("ALTER TABLE scored_candidates ADD COLUMN bi_score DOUBLE DEFAULT 0.5")
    con.execute("CREATE TABLE queries AS SELECT DISTINCT query_id, 'question ' || query_id AS query, "
                "'title' AS method, "
                "'syn' AS source, 'd-' || query_id AS doc_id FROM scored_candidates")
    con.execute("CREATE TABLE documents AS SELECT doc_id, 'T ' || doc_id AS title FROM queries")
    con.execute("CREATE TABLE judged_negatives (query_id VARCHAR, passage_id VARCHAR, verdict VARCHAR)")  # judge off
    for k, v in {"top_k": TOP_K, "n_hard": N_HARD, "n_related": 0, "n_easy": 2, "score_scale": 30.0,
                 "score_decimals": 4, "val_fraction": 0.1}.items():
        con.execute(f"SET VARIABLE {k} = ?", [v])
    return con


def _examples(con: duckdb.DuckDBPyConnection, sampling: str, sql: str | None = None) -> list[tuple]:
    con.execute("SET VARIABLE negative_sampling = ?", [sampling])
    sql = sql or (REPO / "etl" / "sql" / "examples.sql").read_text(encoding="utf-8")
    return con.execute(sql.strip().rstrip(";")).fetchall()


def _hard(con, sampling: str) -> dict[str, list[str]]:
    return {r[0]: sorted(p for p, role in zip(r[8], r[7], strict=True) if role == "hard")
            for r in _examples(con, sampling)}


def test_top_takes_the_best_scored_window_candidates():
    assert _hard(_con({"q1": 12}), "top")["q1"] == [f"q1-h{r:02d}" for r in range(1, 6)]


def test_spread_takes_the_hardest_the_least_hard_and_evenly_between():
    hard = _hard(_con({"q1": 12, "q2": 9}), "spread")
    assert hard["q1"] == ["q1-h01", "q1-h04", "q1-h07", "q1-h09", "q1-h12"]  # 1 + round(i * 11 / 4)
    assert hard["q2"] == ["q2-h01", "q2-h03", "q2-h05", "q2-h07", "q2-h09"]  # 1 + i * 2
    # never a deep-rank or filtered candidate while the window has enough
    assert not any(p.endswith(("h99", "h10", "h11")) for p in hard["q2"])


def test_spread_on_a_window_of_n_hard_or_fewer_is_top():
    con = _con({"q1": 5, "q2": 3})
    assert _hard(con, "spread") == _hard(con, "top")
    assert _hard(con, "top")["q2"] == ["q2-h01", "q2-h02", "q2-h03", "q2-h04", "q2-h05"]  # 2 from deep ranks


def test_top_is_what_examples_sql_picked_before_the_option():
    """The default keeps the export byte-identical: the same rows as the examples.sql before "spread"."""
    try:
        old = subprocess.run(["git", "-C", str(REPO), "show", "4d4a87e:etl/sql/examples.sql"],
                             capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("no git history of examples.sql here")
    con = _con({"q1": 12, "q2": 5, "q3": 3, "q4": 30})
    assert _examples(con, "top") == _examples(con, "top", old)


def test_unknown_sampling_is_a_config_error():
    with pytest.raises(ConfigError, match="negatives.sampling"):
        load_config(None, ["negatives.sampling=simans"])
