"""The cross-encoder and ensemble teachers (stage teacher_scores), with models built in the test.

A tiny ``CrossEncoder`` (``BertForSequenceClassification`` with
``num_labels=1`` plus a WordPiece tokenizer, saved to a temporary directory) scores the candidates;
the embedder is the same kind of tiny bag-of-tokens sentence-transformers model as in
test_trainer_compat.py (both from tests/tiny_models.py). The teacher's judgement is random, so the
checks are about plumbing: every scored row has a cross-encoder score, the exported scores follow
the teacher's scores, and the ensemble is the mean of the per-query min-max normalized bi-encoder
and cross-encoder scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from tiny_models import build_tiny_cross_encoder, build_tiny_embedder  # noqa: E402

from etl.config import load_config  # noqa: E402
from etl.embed import prepare_text  # noqa: E402
from etl.pipeline import run_pipeline  # noqa: E402

# ---- runs ------------------------------------------------------------------------------------

def layers_con(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per layer Parquet file."""
    con = duckdb.connect()
    for p in sorted((warehouse / "layers").glob("*.parquet")):
        con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
    return con


def snapshot(cfg: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What a test needs from one run, read before the next run overwrites the layers."""
    con = layers_con(cfg.warehouse_dir)
    try:
        def rows(sql: str) -> list[dict[str, Any]]:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        return {
            "cfg": cfg,
            "meta": meta,
            "teacher_scores": rows("SELECT * FROM teacher_scores ORDER BY query_id, role, rank"),
            "examples": rows("SELECT * FROM examples ORDER BY query_id"),
            "pairs": rows("""
                SELECT t.query_id, t.passage_id, t.role, t.ce_score, q.query,
                       CASE WHEN t.role = 'positive' AND q.positive_text IS NOT NULL
                            THEN q.positive_text ELSE p.text END AS text
                FROM teacher_scores t JOIN queries q USING (query_id)
                JOIN passages p ON p.passage_id = t.passage_id
                ORDER BY md5(t.query_id || t.passage_id) LIMIT 12"""),
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def teacher_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teacher_models")
    return {"embedder": build_tiny_embedder(root / "embedder"), "cross_encoder": build_tiny_cross_encoder(root / "ce")}


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory, teacher_models) -> dict[str, dict[str, Any]]:
    """One warehouse, two runs with the default filters: teacher.kind = cross_encoder, then
    ensemble (the second run reuses every stage up to candidates)."""
    root = tmp_path_factory.mktemp("teacher_runs")
    base = [f"paths.warehouse={root / 'warehouse'}", f"embedding.model={teacher_models['embedder']}",
            f"teacher.cross_encoder={teacher_models['cross_encoder']}", "teacher.device=cpu",
            "run.progress=false", "queries.max_per_source=30"]  # ~120 queries: cross-encoding dominates
    out: dict[str, dict[str, Any]] = {}
    for kind in ("cross_encoder", "ensemble"):
        cfg = load_config(None, [*base, f"paths.export={root / ('export_' + kind)}", f"teacher.kind={kind}"])
        meta = run_pipeline(cfg, log=lambda *_: None)
        out[kind] = snapshot(cfg, meta)
    return out


KINDS = ("cross_encoder", "ensemble")


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_scored_row_has_a_cross_encoder_score(teacher_runs, kind):
    run = teacher_runs[kind]
    rows = run["teacher_scores"]
    assert len(rows) > 0
    assert all(r["ce_score"] is not None and np.isfinite(r["ce_score"]) for r in rows)
    assert all(np.isfinite(r["bi_score"]) for r in rows)
    stage = run["meta"]["stages"]["teacher_scores"]
    assert stage.get("extra", {}).get("teacher", kind) == kind
    if kind == "cross_encoder":
        assert all(r["teacher_score"] == r["ce_score"] for r in rows)


def test_cross_encoder_scores_are_the_models_scores(teacher_runs, teacher_models):
    from sentence_transformers import CrossEncoder

    run = teacher_runs["cross_encoder"]
    ce = CrossEncoder(str(teacher_models["cross_encoder"]), device="cpu")
    max_chars = run["cfg"].teacher.max_chars
    pairs = [(prepare_text(r["query"], max_chars), prepare_text(r["text"], max_chars)) for r in run["pairs"]]
    expected = np.asarray(ce.predict(pairs, show_progress_bar=False), dtype=np.float64).reshape(-1)
    got = np.asarray([r["ce_score"] for r in run["pairs"]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_exported_scores_follow_the_teacher(teacher_runs, kind):
    run = teacher_runs[kind]
    cfg = run["cfg"]
    scale, decimals = cfg.scoring.scale, cfg.scoring.decimals
    examples = run["examples"]
    assert len(examples) > 5, run["meta"].get("dropped_queries")
    layer = {(r["query_id"], r["passage_id"]): r["teacher_score"] for r in run["teacher_scores"]}
    for ex in examples:
        roles, scores, ts = ex["roles"], np.asarray(ex["scores"]), np.asarray(ex["teacher_scores"])
        assert len(scores) == cfg.docs_per_query
        assert roles[0] == "positive" and roles.count("positive") == 1
        assert scores[0] == scale == scores.max()
        assert np.all(np.diff(scores) <= 0), f"{ex['query_id']}: scores not non-increasing {scores}"
        assert np.all(np.diff(ts) <= 1e-6), f"{ex['query_id']}: teacher scores out of order {ts}"
        assert ts[0] >= ts[1:].max()  # the positive beats every negative (6-decimal rounding)
        # the exported score is the teacher score min-max normalized in the record, times the scale
        expected = np.round(scale * (ts - ts.min()) / (ts.max() - ts.min()), decimals)
        np.testing.assert_allclose(scores, expected, atol=2e-3 * scale)
        for pid, t in zip(ex["passage_ids"], ts, strict=True):
            assert abs(layer[(ex["query_id"], pid)] - t) < 1e-6


def test_ensemble_is_the_mean_of_minmax_normalized_bi_and_ce(teacher_runs):
    rows = teacher_runs["ensemble"]["teacher_scores"]
    by_query: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_query.setdefault(r["query_id"], []).append(r)

    def norm(values: list[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.full(len(v), 0.5)

    assert len(by_query) > 10
    for qid, rs in by_query.items():
        expected = (norm([r["bi_score"] for r in rs]) + norm([r["ce_score"] for r in rs])) / 2.0
        got = np.asarray([r["teacher_score"] for r in rs])
        np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=qid)
        assert got.min() >= 0.0 and got.max() <= 1.0


def test_ensemble_and_cross_encoder_share_the_candidates(teacher_runs):
    # round 1 (positives, draws, the first max_candidates hard ones) is the same for both; which
    # queries get deeper rounds depends on each teacher's scores, so hard rows may differ beyond it
    def key(r):
        return r["query_id"], r["role"], r["rank"], r["passage_id"]

    ce = {key(r): r for r in teacher_runs["cross_encoder"]["teacher_scores"]}
    ens = {key(r): r for r in teacher_runs["ensemble"]["teacher_scores"]}
    assert {k for k in ce if k[1] != "hard"} == {k for k in ens if k[1] != "hard"}
    common = ce.keys() & ens.keys()
    assert len(common) > 0.8 * max(len(ce), len(ens))
    for key in common:
        r = ens[key]
        assert r["ce_score"] == pytest.approx(ce[key]["ce_score"], abs=1e-6)
        assert r["bi_score"] == ce[key]["bi_score"]


