"""Real-shaped inputs end to end: repeated questions with different positives, identical passages
in different documents, near-duplicate negatives, queries the filters leave short, and a small corpus.

The first tests run the whole CLI with the tiny model (meaningless similarities, so the margin
filters are off as in every tiny-model run); the small-corpus test runs the real bundled model on
30 articles of the bundled sample with the default settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from etl_helpers import (
    REPO,
    make_articles,
    make_run_dirs,
    run_cli,
    tiny_run_dirs,
    write_jsonl,
)

from etl.mine import CosineUDFs
from etl.validate import normalized_text_key, validate_file


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_records(export: Path) -> list[dict]:
    return read_records(export / "train.jsonl") + read_records(export / "val.jsonl")


@pytest.fixture(scope="module")
def repeated_run(tmp_path_factory, tiny_model):
    """A corpus where two documents share a paragraph, and a question file that repeats questions."""
    root = tmp_path_factory.mktemp("repeated")
    arts = make_articles(40, seed=11, sentences=12)
    # d00001 opens with the whole text of d00000 (an article quoting another): their leading chunks are equal
    arts[0]["text"] = arts[0]["text"] + "\n\n" + arts[30]["text"]  # long enough for two chunks
    arts[1]["text"] = arts[0]["text"] + "\n\n" + arts[1]["text"]
    write_jsonl(root / "corpus" / "part-0.jsonl", arts)
    questions = [
        {"query": "첫 번째 질문은 무엇인가", "doc_id": "syn:d00005"},
        {"query": "첫 번째  질문은 무엇인가 ", "doc_id": "syn:d00006"},  # the same question (whitespace), another page
        {"query": "첫 번째 질문은 무엇인가", "doc_id": "syn:d00005"},  # an identical line
        {"query": "두 번째 질문은 무엇인가", "doc_ids": [["syn:d00007"], ["syn:d00008", "syn:d00009"]]},
    ]
    write_jsonl(root / "questions.jsonl", questions)
    dirs = tiny_run_dirs(root, root / "corpus", tiny_model, query_files=[("human", str(root / "questions.jsonl"))],
                         settings={"queries": {"methods": ["first_sentence"]}})
    dirs.result = run_cli(["run", "--config", str(dirs.config)])
    if dirs.result.returncode != 0:
        pytest.fail(f"run failed:\n{dirs.result.stdout}\n{dirs.result.stderr}")
    yield dirs
    dirs.close()


def test_repeated_question_gives_one_record_whose_other_positives_are_not_negatives(repeated_run):
    d = repeated_run
    qs = d.q("SELECT query_id, query, positive_doc_ids FROM queries WHERE method = 'query_file' ORDER BY query")
    assert [q[1] for q in qs] == ["두 번째 질문은 무엇인가", "첫 번째 질문은 무엇인가"]
    assert sorted(qs[1][2]) == ["syn:d00005", "syn:d00006"]
    assert sorted(qs[0][2]) == ["syn:d00007", "syn:d00008", "syn:d00009"]
    assert d.q("SELECT count(*) FROM user_queries WHERE reject_reason = 'duplicate_line'")[0][0] == 1
    for qid, _, docs in qs:
        ex = d.q("SELECT passage_ids FROM examples WHERE query_id = ?", [qid])
        assert len(ex) == 1, "one record per distinct question"
        pids = ex[0][0]
        pos_doc = pids[0].split("#")[0]
        assert pos_doc in docs
        # no negative comes from any document named for the question
        assert not [p for p in pids[1:] if p.split("#")[0] in docs]
        # the positive is the known positive closest to the query (the bi-encoder teacher's best)
        best = d.q("""
            SELECT p.passage_id FROM queries q, query_embeddings e, passage_embeddings p
            WHERE q.query_id = ? AND e.query_id = q.query_id AND list_contains(q.positive_passage_ids, p.passage_id)
            ORDER BY list_cosine_similarity(e.embedding, p.embedding) DESC LIMIT 1""", [qid])
        assert pids[0] == best[0][0]
    # the question file is trusted: its questions are never dropped for a low positive rank
    flagged = d.q("""SELECT count(*) FROM candidates c JOIN queries q USING (query_id)
                     WHERE q.method = 'query_file' AND c.filter_reason = 'positive_rank_too_low'""")
    assert flagged[0][0] == 0
    assert d.q("SELECT bool_and(NOT drop_low_rank) FROM queries WHERE method = 'query_file'")[0][0]


def test_identical_passages_in_different_documents_are_kept_once(repeated_run):
    d = repeated_run
    dups = d.q("SELECT passage_id, kept_passage_id FROM passage_duplicates")
    assert len(dups) >= 1
    for removed, kept in dups:
        assert removed.startswith("syn:d00001#") and kept.startswith("syn:d00000#")
        assert d.q("SELECT count(*) FROM passages WHERE passage_id = ?", [removed])[0][0] == 0
    keys = [normalized_text_key(t) for (t,) in d.q("SELECT text FROM passages")]
    assert len(keys) == len(set(keys))
    assert d.metadata["passage_duplicates"] == len(dups)
    for rec in all_records(d.export):
        assert len({normalized_text_key(x) for x in rec["docs"]}) == len(rec["docs"])
    for split in ("train", "val"):
        assert validate_file(d.export / f"{split}.jsonl", min_docs=8, max_docs=8).ok


def test_a_positive_naming_a_removed_passage_resolves_to_the_kept_one(tmp_path, tiny_model, repeated_run):
    removed, kept = repeated_run.q("SELECT passage_id, kept_passage_id FROM passage_duplicates ORDER BY 1")[0]
    root = tmp_path
    corpus = repeated_run.root / "corpus"
    write_jsonl(root / "q.jsonl", [{"query": "겹치는 문단을 묻는 질문", "passage_id": removed}])
    dirs = tiny_run_dirs(root, corpus, tiny_model, query_files=[("human", str(root / "q.jsonl"))],
                         settings={"queries": {"methods": []}})
    res = run_cli(["run", "--config", str(dirs.config), "--until", "queries"])
    assert res.returncode == 0, res.stderr
    got = dirs.q("SELECT positive_passage_id, positive_passage_ids, positive_fixed FROM queries")
    assert got == [(kept, [kept], True)]
    dirs.close()


def test_random_draws_spread_over_the_corpus(repeated_run):
    # md5_number is UHUGEINT; UHUGEINT % BIGINT is computed in DOUBLE, which once put every draw on
    # a handful of passages. Now the draws of all queries together cover most of the corpus.
    n_pass, n_drawn = repeated_run.q("""SELECT (SELECT count(*) FROM passages),
        (SELECT count(DISTINCT passage_id) FROM candidates WHERE role = 'easy')""")[0]
    assert n_drawn >= 0.6 * n_pass


def test_near_duplicate_of_earlier_flags_the_later_of_two(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 16)).astype(np.float32)
    v[4] = v[1] + 1e-3 * rng.normal(size=16)  # 4 nearly equals 1
    v[5] = v[4] + 1e-3 * rng.normal(size=16)  # 5 nearly equals 4 (and 1)
    np.save(tmp_path / "p.npy", v)
    np.save(tmp_path / "q.npy", v[:1])
    udfs = CosineUDFs(tmp_path / "p.npy", tmp_path / "q.npy")
    flags = udfs.near_duplicate_of_earlier([np.array([0, 1, 2, 3, 4, 5]), np.array([4, 1]), np.array([3])], 0.98)
    assert flags[0].tolist() == [False, False, False, False, True, True]
    assert flags[1].tolist() == [False, True]  # order decides which one is kept
    assert flags[2].tolist() == [False]


def test_teacher_scores_deeper_for_queries_the_margins_leave_short(tmp_path, tiny_model, tiny_corpus):
    # one round of exactly negatives.hard candidates, and an absolute margin that removes some of them:
    # the short queries must get their next candidates scored instead of being dropped
    dirs = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model, settings={
        "teacher": {"max_candidates": 5}, "filters": {"absolute_margin": 0.001}})
    res = run_cli(["run", "--config", str(dirs.config)])
    assert res.returncode == 0, res.stdout + res.stderr
    extra = dirs.metadata["stages"]["teacher_scores"]["extra"]
    assert extra["rounds"] > 1 and extra["deepened_queries"] > 0
    # queries that needed more than one round (over 5 hard candidates scored) and still got a record
    rescued = dirs.q("""SELECT count(*) FROM examples WHERE query_id IN (
                          SELECT query_id FROM teacher_scores WHERE role = 'hard'
                          GROUP BY query_id HAVING count(*) > 5)""")
    assert rescued[0][0] > 0
    dirs.close()


def test_small_corpus_with_default_settings_gives_records(tmp_path):
    # 30 real articles (~40 passages) with every default, the bundled model included: the rank
    # window shrinks to the corpus, so the easy draws have passages outside it
    lines = (REPO / "etl" / "data" / "sample" / "wikipedia_ko" / "part-0000.jsonl").read_text(encoding="utf-8")
    src = tmp_path / "corpus" / "part-0.jsonl"
    src.parent.mkdir()
    src.write_text("\n".join(lines.splitlines()[:30]) + "\n", encoding="utf-8")
    dirs = make_run_dirs(tmp_path, [("wiki", [str(src)])])
    res = run_cli(["run", "--config", str(dirs.config)], timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rank window mining.top_k 30 -> " in res.stdout
    n_q = dirs.q("SELECT count(*) FROM queries")[0][0]
    assert n_q >= 50
    assert len(all_records(dirs.export)) >= 0.95 * n_q
    dirs.close()
