"""The cross-encoder score cache (etl/teacher.py): resumable after kill -9, never scores a pair twice.

A tiny ``CrossEncoder`` (tests/tiny_models.py) scores one pair per batch and the cache is flushed
every 0.05 s, so a run killed mid-scoring has written part of its scores. The next run takes those
from the cache and scores only the rest; a later re-run of the stage scores nothing; the scores are
the model's own either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from etl_helpers import kill_stage_after_first_cache_file, make_articles, run_cli, tiny_run_dirs, write_jsonl  # noqa: E402
from tiny_models import build_tiny_cross_encoder  # noqa: E402

from etl import teacher  # noqa: E402
from etl.config import TeacherConfig  # noqa: E402
from etl.embed import prepare_text  # noqa: E402


def cached_rows(d: Path) -> int:
    return sum(pq.read_metadata(f).num_rows for f in d.glob("part-*.parquet"))


def test_score_cache_writer_flushes_by_time_and_dedupes(tmp_path: Path) -> None:
    class Clock:
        t = 0.0

    clock = Clock()
    w = teacher.ScoreCacheWriter(tmp_path, flush_rows=10**6, flush_seconds=10.0, clock=lambda: clock.t)
    key = lambda i: teacher.pair_hashes(TeacherConfig(cross_encoder="m"), f"q{i}", "doc")  # noqa: E731
    w.add([key(0), key(1)], np.array([0.1, 0.2]))
    assert cached_rows(tmp_path) == 0
    clock.t = 6.0  # the next batch would come at ~12 s: the oldest score would be older than 10 s
    w.add([key(2), key(0)], np.array([0.3, 0.1]))  # key(0) again: not written twice
    assert cached_rows(tmp_path) == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_pair_hashes_match_the_sql() -> None:
    import duckdb

    t = TeacherConfig(cross_encoder="some/model", max_chars=100)
    con = duckdb.connect()
    con.execute("SET VARIABLE teacher_cache_key = ?", [teacher.cache_key_prefix(t)])
    q, d = "한국어 질문?", "문서 본문 'quoted'"
    got = con.execute("SELECT sha256(getvariable('teacher_cache_key') || ?), "
                      "sha256(getvariable('teacher_cache_key') || ?)", [q, d]).fetchall()[0]
    assert tuple(got) == teacher.pair_hashes(t, q, d)
    other = TeacherConfig(cross_encoder="some/model", max_chars=101)
    assert teacher.pair_hashes(other, q, d) != teacher.pair_hashes(t, q, d)


def test_kill_9_mid_scoring_resumes_from_the_score_cache(tmp_path: Path, tiny_model: str) -> None:
    ce_dir = build_tiny_cross_encoder(tmp_path / "ce")
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", make_articles(20, seed=5, sentences=12))
    settings = {"teacher": {"kind": "cross_encoder", "cross_encoder": str(ce_dir), "device": "cpu",
                            "batch_size": 1, "flush_seconds": 0.05}}
    dirs = tiny_run_dirs(tmp_path / "run", corpus, tiny_model, settings=settings)
    cache_dir = dirs.warehouse / "cache" / "teacher" / teacher.model_slug(str(ce_dir))
    kill_stage_after_first_cache_file(dirs, "teacher_scores", cache_dir, tmp_path / "killed.log")
    state = dirs.warehouse / "state" / "teacher_scores.json"
    args = ["run", "--config", str(dirs.config), "--until", "teacher_scores"]
    kept = cached_rows(cache_dir)
    assert kept > 0

    res = run_cli(args)
    assert res.returncode == 0, res.stdout + res.stderr
    extra = json.loads(state.read_text(encoding="utf-8"))["extra"]
    assert extra["ce_cache_hits"] >= kept  # every pair scored before the kill came from the cache
    assert extra["ce_model_scored"] == extra["scored"] - extra["ce_cache_hits"] > 0
    total_pairs = cached_rows(cache_dir)
    assert kept < total_pairs <= extra["scored"]

    # the scores are the model's, for pairs scored before and after the kill
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(ce_dir), device="cpu")
    t = TeacherConfig(cross_encoder=str(ce_dir))
    pairs = dirs.q("""
        SELECT t.ce_score, q.query, CASE WHEN t.role = 'positive' AND q.positive_text IS NOT NULL
                                         THEN q.positive_text ELSE p.text END
        FROM teacher_scores t JOIN queries q USING (query_id) JOIN passages p ON p.passage_id = t.passage_id
        ORDER BY md5(t.query_id || t.passage_id || t.role || t.rank) LIMIT 40""")
    want = model.predict([(prepare_text(q, t.max_chars), prepare_text(d, t.max_chars)) for _, q, d in pairs],
                         batch_size=1, show_progress_bar=False)
    np.testing.assert_allclose([r[0] for r in pairs], want, atol=1e-5)
    dirs.close()

    # a re-run of the stage (another batch size changes its fingerprint) scores no pair again
    res = run_cli([*args, "--set", "teacher.batch_size=4"])
    assert res.returncode == 0, res.stdout + res.stderr
    again = json.loads(state.read_text(encoding="utf-8"))["extra"]
    assert again["scored"] == extra["scored"]
    assert (again["ce_model_scored"], again["ce_cache_hits"]) == (0, extra["scored"])
    assert cached_rows(cache_dir) == total_pairs
