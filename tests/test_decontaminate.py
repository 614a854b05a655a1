"""Decontamination against evaluation sets ([[decontaminate]]): matching rules, the SQL/Python
normalization twins, and a tiny-model run whose export holds no evaluation question or passage."""

from __future__ import annotations

import hashlib
import json
import random

import duckdb
import pytest
from etl_helpers import rows, run_stages, tiny_run_dirs, write_jsonl

from etl.config import ConfigError, load_config
from etl.decontaminate import containment, question_key, word_ngrams
from etl.validate import normalized_text_key

SQL_KEY = r"lower(trim(regexp_replace(nfc_normalize(?), '[\s\pZ\x{0B}\x{1C}-\x{1F}\x{85}]+', ' ', 'g')))"


def _words(rng: random.Random, n: int) -> list[str]:
    syll = "가나다라마바사아자차카타파하강산해별달빛솔봄숲들"
    return ["".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def test_copied_passage_and_its_chunks_match_but_one_shared_sentence_does_not():
    rng = random.Random(3)
    ev = _words(rng, 120)  # an evaluation paragraph of 120 words (a KorQuAD context is ~80-200)
    ev_text = " ".join(ev)
    g_ev = word_ngrams(ev_text, 13)
    # the paragraph cut into two chunks of our corpus: each chunk is (nearly) all evaluation text
    for chunk in (ev[:60], ev[60:]):
        assert containment(word_ngrams(" ".join(chunk), 13), g_ev) == 1.0
    # a chunk that starts mid-paragraph and goes on into other text: a copy while most of it is copied
    assert containment(word_ngrams(" ".join(ev[70:] + _words(rng, 10)), 13), g_ev) > 0.75  # 38 of 48
    # ... and kept once half of it is other text (30 copied words of 55: 18 of 43 13-grams)
    assert 0.4 < containment(word_ngrams(" ".join(ev[90:] + _words(rng, 25)), 13), g_ev) < 0.5
    # a corpus passage of 100 words that quotes one 20-word sentence of it: not contaminated
    quote = _words(rng, 40) + ev[30:50] + _words(rng, 40)
    c = containment(word_ngrams(" ".join(quote), 13), g_ev)
    assert 0 < c < 0.1  # 8 shared 13-grams of 88
    # punctuation and case do not hide a copy; fewer words than n: no n-grams (exact match only)
    assert word_ngrams("A, b. " + " ".join(ev[:12]), 13) == word_ngrams("a b " + " ".join(ev[:12]), 13)
    assert word_ngrams(" ".join(ev[:12]), 13) == set()


@pytest.mark.parametrize("q", ["  Who  WROTE\tit? ", "İstanbul\u00a0ΣΑΣ", "가\u3000나\x0b다\x1c라\x85마\u2028바",
                               "e\u0301cole  \n", "ÅNGSTRÖM\u202fx"])
def test_question_key_equals_the_sql_normalization(q):
    con = duckdb.connect()
    assert con.execute(f"SELECT {SQL_KEY}", [q]).fetchone()[0] == question_key(q)


def test_decontaminate_config_is_checked(tmp_path):
    base = tmp_path / "c.toml"
    base.write_text('[[sources]]\nname = "s"\npaths = ["x"]\n[[decontaminate]]\nname = "e"\npath = "e.jsonl"\n'
                    'columns = { question = "q" }\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"decontaminate\[0\]\.columns\.question"):
        load_config(base)
    base.write_text('[[sources]]\nname = "s"\npaths = ["x"]\n[[decontaminate]]\nname = "e"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"decontaminate\[0\].*needs both"):
        load_config(base)


def test_eval_files_jsonl_and_parquet_with_bad_records_and_a_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from etl.config import DecontaminateConfig
    from etl.decontaminate import read_eval_set
    from etl.ingest import MissingColumnError

    j = tmp_path / "e.jsonl"
    j.write_bytes('{"q": "질문 하나"}\n{"q": 3, "ctx": "본문"}\nnot json\n[1]\n{"ctx": "  "}\n'.encode())
    qs, ps, counts = read_eval_set(DecontaminateConfig("e", str(j), {"query": "q", "text": "ctx"}))
    assert (qs, ps, counts) == (["질문 하나"], ["본문"], {"records": 5, "rejected": 3})
    pq.write_table(pa.table({"question": ["a?", None], "context": [None, "text b"]}), tmp_path / "e.parquet")
    qs, ps, _ = read_eval_set(DecontaminateConfig("p", str(tmp_path / "e.parquet"),
                                                  {"query": "question", "text": "context"}))
    assert (qs, ps) == (["a?"], ["text b"])
    with pytest.raises(MissingColumnError, match=r"decontaminate 'p'.*columns.text = 'passage'"):
        read_eval_set(DecontaminateConfig("p", str(tmp_path / "e.parquet"), {"text": "passage"}))
    with pytest.raises(MissingColumnError, match=r"decontaminate 'e'.*columns.text = 'passage'"):
        read_eval_set(DecontaminateConfig("e", str(j), {"text": "passage"}))
    with pytest.raises(FileNotFoundError, match="decontaminate 'x'"):
        read_eval_set(DecontaminateConfig("x", str(tmp_path / "nope.jsonl")))


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def contaminated_run(tmp_path_factory, tiny_model, tiny_corpus):
    """A tiny-model run with an evaluation set made from the corpus's own passages and titles."""
    from etl.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("decontam")
    eval_path, q_path = root / "eval.jsonl", root / "questions.jsonl"
    eval_path.write_text("", encoding="utf-8")
    q_path.write_text("", encoding="utf-8")
    dirs = tiny_run_dirs(root, tiny_corpus, tiny_model, query_files=[("human", str(q_path))])
    dirs.config.write_text(dirs.config.read_text(encoding="utf-8") + (
        f'\n[[decontaminate]]\nname = "korquad"\npath = {json.dumps(str(eval_path))}\n'
        'columns = { query = "question", text = "context" }\n'), encoding="utf-8")
    cfg = load_config(dirs.config)
    wh = run_stages(cfg, "passages")
    try:
        ps = rows(wh, "SELECT passage_id, title, text FROM passages WHERE chunk_no = 0 ORDER BY passage_id LIMIT 40")
    finally:
        wh.close()
    exact, edited, quoted = ps[0], ps[1], ps[2]
    words = edited[2].split()
    sentence = quoted[2].split(". ")[1] + "."  # one sentence of passage `quoted`
    filler = " ".join(f"채움말{i}" for i in range(80))
    write_jsonl(eval_path, [
        {"question": "  " + ps[5][1].replace(" ", "   ") + " "},  # a title query, other whitespace
        {"question": "아무 데도 없는 질문"},
        {"context": exact[2]},  # the passage itself
        {"context": "머리말 추가. " + " ".join(words[3:]) + " 꼬리말."},  # edited at both ends: n-gram match
        {"context": filler + " " + sentence + " " + filler},  # shares one sentence only
        {"id": 7},  # neither field: rejected, not fatal
    ])
    write_jsonl(q_path, [  # a question naming a contaminated and a clean passage; one naming only the first
        {"query": "두 문단을 묻는 질문", "passage_ids": [exact[0], ps[7][0]]},
        {"query": "오염된 문단만 묻는 질문", "passage_id": exact[0]},
    ])
    cfg = load_config(dirs.config)
    meta = run_pipeline(cfg, log=lambda _m: None)
    yield {"dirs": dirs, "meta": meta, "exact": exact, "edited": edited, "quoted": quoted, "title": ps[5][1],
           "clean": ps[7][0]}
    dirs.close()


def test_export_has_no_evaluation_question_or_passage(contaminated_run):
    r = contaminated_run
    d = r["dirs"]
    bad = {r["exact"][0], r["edited"][0]}
    assert {p for (p,) in d.q("SELECT passage_id FROM decontamination WHERE kind = 'passage'")} == bad
    used = {p for (ids,) in d.q("SELECT passage_ids FROM examples") for p in ids}
    assert used and not used & bad
    exported = [json.loads(line) for f in ("train.jsonl", "val.jsonl")
                for line in (d.export / f).read_text(encoding="utf-8").splitlines()]
    assert exported
    assert all(question_key(x["query"]) != question_key(r["title"]) for x in exported)
    bad_keys = {normalized_text_key(r["exact"][2]), normalized_text_key(r["edited"][2])}
    assert not {normalized_text_key(doc) for x in exported for doc in x["docs"]} & bad_keys
    # one shared sentence does not exclude a passage
    assert d.q("SELECT count(*) FROM decontamination WHERE passage_id = ?", [r["quoted"][0]]) == [(0,)]
    assert d.q("SELECT count(*) FROM candidates WHERE filter_reason = 'contaminated_query'") == [(1,)]


def test_a_question_with_a_clean_known_positive_keeps_it_and_one_without_is_dropped(contaminated_run):
    r = contaminated_run
    d = r["dirs"]
    got = d.q("SELECT q.query, c.passage_id, c.filter_reason FROM candidates c JOIN queries q USING (query_id) "
              "WHERE q.method = 'query_file' AND c.role = 'positive' ORDER BY q.query")
    assert got == [("두 문단을 묻는 질문", r["clean"], None),
                   ("오염된 문단만 묻는 질문", r["exact"][0], "contaminated_positive")]
    dropped = d.q("SELECT q.query FROM candidates c JOIN queries q USING (query_id) "
                  "WHERE c.filter_reason = 'contaminated_positive'")
    assert ("오염된 문단만 묻는 질문",) in dropped and ("두 문단을 묻는 질문",) not in dropped
    # the second question and the title / first-sentence queries of the two contaminated passages
    assert d.metadata["dropped_queries"]["contaminated_positive"] == len(dropped) >= 3


def test_without_decontaminate_nothing_is_excluded_and_no_manifest_is_written(tiny_reference_run):
    d = tiny_reference_run
    assert d.q("SELECT count(*) FROM decontamination") == [(0,)]
    assert not (d.export / "decontamination.json").exists()
    assert "decontamination" not in d.metadata and "decontamination_manifest" not in d.metadata


def test_metadata_report_and_manifest_count_per_set(contaminated_run):
    r = contaminated_run
    d = r["dirs"]
    m = d.metadata["decontamination"]["korquad"]
    assert m["records_read"] == 6 and m["records_rejected"] == 1
    assert (m["eval_questions"], m["queries_excluded"]) == (2, 1)
    assert (m["eval_passages"], m["passages_exact"], m["passages_ngram"], m["passages_excluded"]) == (3, 1, 1, 2)
    assert m["positives_excluded"] >= 1 and m["negatives_excluded"] >= 0
    assert "## Decontamination" in (d.export / "report" / "report.md").read_text(encoding="utf-8")
    manifest = json.loads((d.export / "decontamination.json").read_text(encoding="utf-8"))
    s = manifest["sets"]["korquad"]
    assert s["queries"] == [_sha(question_key(r["title"]))]
    by_id = {p["passage_id"]: p for p in s["passages"]}
    assert by_id[r["exact"][0]]["sha256"] == _sha(normalized_text_key(r["exact"][2]))
    assert by_id[r["exact"][0]]["match"] == "exact" and by_id[r["edited"][0]]["match"] == "ngram"
    assert by_id[r["exact"][0]]["eval_sha256"] == by_id[r["exact"][0]]["sha256"]
    assert d.metadata["decontamination_manifest"]["passages"] == 2


def test_an_edited_evaluation_file_reruns_decontamination_and_what_follows(tmp_path):
    from etl.pipeline import Context, planned_fingerprints

    ev = tmp_path / "eval.jsonl"
    ev.write_text('{"query": "질문"}\n', encoding="utf-8")
    sets = [f"decontaminate=[{{name = 'e', path = {json.dumps(str(ev))}}}]"]
    before = planned_fingerprints(Context(load_config(None, sets), None))
    ev.write_text('{"query": "다른 질문"}\n', encoding="utf-8")
    after = planned_fingerprints(Context(load_config(None, sets), None))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"decontamination", "candidates", "teacher_scores", "scored_candidates", "judged_negatives",
                       "examples", "judged_examples", "export"}
    more = planned_fingerprints(Context(load_config(None, [*sets, "decontamination.ngram=8"]), None))
    assert more["decontamination"] != after["decontamination"] and more["passages"] == after["passages"]
