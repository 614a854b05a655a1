"""judge.keep_as_positive: etl/sql/judged_examples.sql over hand-made layers (examples built by
examples.sql from the same hand-made scored_candidates), so every outcome is known in advance.

The end-to-end run (loopback judge server, export, validation) is
``tests/test_llm.py::test_pipeline_keeps_judged_positives_as_extra_records``.
"""

from __future__ import annotations

import duckdb
import pytest
from etl_helpers import REPO

from etl.context import strip_sql
from etl.warehouse import Contract

N_HARD, TOP_K, SCALE = 5, 30, 30.0
SQL_DIR = REPO / "etl" / "sql"


def _con(keep: bool = True) -> duckdb.DuckDBPyConnection:
    """q1: 12 usable hard candidates (0.89, 0.88, ...; h01, h03 and h12 judged relevant, h02 not),
    2 easy draws; q2: 3 hard candidates, one of them judged relevant, so no record; q3: no verdicts."""
    con = duckdb.connect()
    rows = []
    for q, n in {"q1": 12, "q2": 3, "q3": 8}.items():
        rows.append((q, f"{q}-pos", "positive", 0, 1.0, None))
        rows += [(q, f"{q}-h{r:02d}", "hard", r, 0.9 - 0.01 * r, None) for r in range(1, n + 1)]
        rows += [(q, f"{q}-e{r}", "easy", r, 0.1 + 0.01 * r, None) for r in (1, 2)]
    con.execute("CREATE TABLE scored_candidates (query_id VARCHAR, passage_id VARCHAR, role VARCHAR, rank BIGINT, "
                "teacher_score DOUBLE, filter_reason VARCHAR)")
    con.executemany("INSERT INTO scored_candidates VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.execute("ALTER TABLE scored_candidates ADD COLUMN bi_score DOUBLE")
    con.execute("UPDATE scored_candidates SET bi_score = teacher_score - 0.05")
    con.execute("CREATE TABLE queries AS SELECT DISTINCT query_id, 'question ' || query_id AS query, "
                "'title' AS method, 'syn' AS source, 'd-' || query_id AS doc_id FROM scored_candidates")
    con.execute("CREATE TABLE documents AS SELECT doc_id, 'T ' || doc_id AS title FROM queries")
    # passages: each hard/easy candidate its own document, except q1-h05, which shares q1-h01's
    con.execute("CREATE TABLE passages AS SELECT DISTINCT passage_id, CASE WHEN passage_id = 'q1-h05' "
                "THEN 'd-h01' WHEN role = 'positive' THEN 'd-' || query_id ELSE 'd-' || passage_id END AS doc_id "
                "FROM scored_candidates")
    con.execute("UPDATE passages SET doc_id = 'd-h01' WHERE passage_id = 'q1-h01'")
    # neighbours: the hard candidates and the positive, similarity = bi_score
    con.execute("CREATE TABLE neighbours AS SELECT query_id, passage_id, bi_score AS similarity, "
                "row_number() OVER (PARTITION BY query_id ORDER BY bi_score DESC) AS rank "
                "FROM scored_candidates WHERE role IN ('hard', 'positive')")
    con.execute("CREATE TABLE judged_negatives (query_id VARCHAR, passage_id VARCHAR, verdict VARCHAR)")
    con.executemany("INSERT INTO judged_negatives VALUES (?, ?, ?)", [
        ("q1", "q1-h01", "relevant"), ("q1", "q1-h02", "not_relevant"), ("q1", "q1-h03", "relevant"),
        ("q1", "q1-h12", "relevant"), ("q1", "q1-h04", "failed"), ("q2", "q2-h01", "relevant")])
    for k, v in {"top_k": TOP_K, "n_hard": N_HARD, "n_related": 0, "n_easy": 2, "score_scale": SCALE,
                 "score_decimals": 4, "val_fraction": 0.5, "negative_sampling": "top",
                 "judge_keep_as_positive": keep}.items():
        con.execute(f"SET VARIABLE {k} = ?", [v])
    con.execute("SET VARIABLE batch_from = NULL::VARCHAR")
    con.execute("SET VARIABLE batch_to = NULL::VARCHAR")
    con.execute(f"CREATE TABLE examples AS {strip_sql((SQL_DIR / 'examples.sql').read_text(encoding='utf-8'))}")
    return con


def _judged(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    """Build judged_examples, check its contract on the result, return its rows by record_id."""
    text = (SQL_DIR / "judged_examples.sql").read_text(encoding="utf-8")
    con.execute(f"CREATE OR REPLACE TABLE judged_examples AS {strip_sql(text)}")
    contract = Contract.parse(text)
    for check in contract.checks:
        bad = con.execute(f"SELECT count(*) FROM judged_examples WHERE NOT coalesce(({check}), false)").fetchall()
        assert bad == [(0,)], check
    cur = con.execute("SELECT * FROM judged_examples ORDER BY record_id")
    cols = [d[0] for d in cur.description]
    return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}


def _main(con: duckdb.DuckDBPyConnection, qid: str) -> dict:
    cur = con.execute("SELECT * FROM examples WHERE query_id = ?", [qid])
    cols = [d[0] for d in cur.description]
    return dict(zip(cols, cur.fetchone(), strict=True))


def test_each_judged_relevant_passage_gets_a_record_or_a_reason():
    con = _con()
    rows = _judged(con)
    assert list(rows) == ["q1/judged/q1-h01", "q1/judged/q1-h03", "q1/judged/q1-h12", "q2/judged/q2-h01"]
    assert {k: v["skip_reason"] for k, v in rows.items()} == {
        "q1/judged/q1-h01": None,  # the hardest: above every negative left in q1's record
        "q1/judged/q1-h03": "not_above_every_negative",  # h02 (judged not relevant) scores above it
        "q1/judged/q1-h12": "not_above_every_negative",  # beyond the hard picks
        "q2/judged/q2-h01": "no_main_record",  # q2 lost its record (too few hard negatives left)
    }
    skipped = rows["q1/judged/q1-h03"]
    assert skipped["scores"] is None and skipped["split"] is None and skipped["query"] is None


def test_the_extra_record_has_the_passage_first_and_the_query_records_negatives():
    con = _con()
    rec = _judged(con)["q1/judged/q1-h01"]
    main = _main(con, "q1")
    assert main["passage_ids"] == ["q1-pos", "q1-h02", "q1-h04", "q1-h05", "q1-h06", "q1-h07", "q1-e2", "q1-e1"]
    assert rec["passage_ids"] == ["q1-h01", *main["passage_ids"][1:]]  # same negatives, same order here
    assert rec["roles"] == main["roles"]
    assert (rec["query"], rec["split"], rec["method"], rec["doc_id"]) == (
        main["query"], main["split"], main["method"], main["doc_id"])
    # min-max within the record over the teacher's scores: h01 0.89 -> 30, e1 0.11 -> 0
    expected = [round(SCALE * (t - 0.11) / (0.89 - 0.11), 4) for t in (0.89, 0.88, 0.86, 0.85, 0.84, 0.83, 0.12, 0.11)]
    assert rec["scores"] == pytest.approx(expected, abs=1e-9)
    assert rec["teacher_scores"] == pytest.approx([0.89, 0.88, 0.86, 0.85, 0.84, 0.83, 0.12, 0.11])
    assert rec["bi_scores"] == pytest.approx([t - 0.05 for t in rec["teacher_scores"]])
    # no judged-relevant passage among the negatives of any record
    relevant = {"q1-h01", "q1-h03", "q1-h12"}
    assert not relevant & set(main["passage_ids"]) and not relevant & set(rec["passage_ids"][1:])


def test_first_rank_counts_more_similar_neighbours_of_other_documents():
    con = _con()
    rec = _judged(con)["q1/judged/q1-h01"]
    # above q1-h01 (0.84) among q1's neighbours: the positive (its own document: not counted); q1-h05
    # shares h01's document and h03 is judged relevant, neither scores above anyway
    assert rec["first_rank"] == 1
    con.execute("UPDATE neighbours SET similarity = 0.99 WHERE passage_id IN ('q1-h05', 'q1-h03', 'q1-h02')")
    assert _judged(con)["q1/judged/q1-h01"]["first_rank"] == 2  # only h02 counts


def test_off_the_layer_is_empty_and_examples_do_not_change():
    on, off = _con(keep=True), _con(keep=False)
    assert _judged(off) == {}
    assert on.execute("SELECT * FROM examples ORDER BY query_id").fetchall() == \
        off.execute("SELECT * FROM examples ORDER BY query_id").fetchall()


def test_a_rounded_tie_with_a_negative_is_skipped():
    """The validator wants the positive strictly highest after rounding: a tie at 0 decimals is skipped."""
    con = _con()
    con.execute("SET VARIABLE score_decimals = 0")
    con.execute("UPDATE scored_candidates SET teacher_score = 0.8899 WHERE passage_id = 'q1-h02'")
    con.execute("UPDATE scored_candidates SET teacher_score = 0.8901 WHERE passage_id = 'q1-h01'")
    con.execute(f"CREATE OR REPLACE TABLE examples AS "
                f"{strip_sql((SQL_DIR / 'examples.sql').read_text(encoding='utf-8'))}")
    assert _judged(con)["q1/judged/q1-h01"]["skip_reason"] == "not_above_every_negative"
