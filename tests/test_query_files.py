"""Corpora and query files with other column names, derived titles, and query files with repeated
questions and several positives per line (the layout of a RAG-benchmark corpus + question set).

These run the stages up to ``queries`` at most: no embedding model needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etl_helpers import SHARED_DATA, make_articles, rows, run_stages, write_config, write_jsonl, write_lines

from etl.config import load_config
from etl.ingest import MissingColumnError

ARTS = make_articles(12, seed=5, sentences=10)  # distinct texts of ~300 chars (> clean.min_chars)
AUTORAG = SHARED_DATA / "autorag"


def page_id(i: int) -> str:
    return f"finance - report{i // 3}.pdf - {i % 3}"


def write_rag_corpus(path: Path, n: int = 6) -> Path:
    """A corpus in the common RAG-benchmark layout: doc_id, contents, metadata (struct); no title/url."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "doc_id": [page_id(i) for i in range(n)],
        "contents": [ARTS[i]["text"] for i in range(n)],
        "metadata": [{"last_modified_datetime": f"2024-01-0{i + 1}"} for i in range(n)],
    }), path)
    return path


def config(tmp_path: Path, sources: str, query_files: str = "", settings: dict | None = None) -> Path:
    """A config file with hand-written [[sources]] / [[query_files]] TOML (inline ``columns`` tables)."""
    path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out", sources=[],
                        settings=settings)
    path.write_text(path.read_text(encoding="utf-8") + "\n" + sources + "\n" + query_files, encoding="utf-8")
    return path


def rag_source(glob: str, columns: str = '{ id = "doc_id", text = "contents" }') -> str:
    return f'[[sources]]\nname = "rag"\npaths = [{json.dumps(glob)}]\ncolumns = {columns}\n'


def query_file(path: Path, columns: str = "", drop: bool | None = None, name: str = "human") -> str:
    out = f'[[query_files]]\nname = "{name}"\npath = {json.dumps(str(path))}\n'
    if columns:
        out += f"columns = {columns}\n"
    if drop is not None:
        out += f"drop_low_rank_positives = {'true' if drop else 'false'}\n"
    return out


# ---- corpora with other column names -----------------------------------------------------------

def test_mapped_parquet_corpus_gives_documents_with_derived_titles(tmp_path):
    write_rag_corpus(tmp_path / "in" / "corpus.parquet")
    wh = run_stages(load_config(config(tmp_path, rag_source(str(tmp_path / "in" / "*.parquet")))), "quarantine")
    try:
        docs = rows(wh, "SELECT d.doc_id, d.orig_id, d.title, d.title_derived, d.text FROM documents d "
                        "JOIN clean_documents c USING (doc_id) ORDER BY c.line_no")
        quarantine = rows(wh, "SELECT reason, count(*) FROM quarantine GROUP BY 1")
    finally:
        wh.close()
    assert quarantine == []
    assert [(d, o, t, td) for d, o, t, td, _ in docs] == [
        (f"rag:{page_id(i)}", page_id(i), page_id(i), True) for i in range(6)]
    assert [text for *_, text in docs] == [ARTS[i]["text"] for i in range(6)]


def test_unmapped_rag_corpus_is_quarantined_as_missing_text(tmp_path):
    """Without the mapping the same file has no 'text' field: every row is quarantined (the old behaviour)."""
    write_rag_corpus(tmp_path / "in" / "corpus.parquet", n=3)
    src = f'[[sources]]\nname = "rag"\npaths = [{json.dumps(str(tmp_path / "in" / "*"))}]\n'
    wh = run_stages(load_config(config(tmp_path, src)), "quarantine")
    try:
        assert rows(wh, "SELECT reason, count(*) FROM quarantine GROUP BY 1") == [("missing_text", 3)]
    finally:
        wh.close()


def test_mapped_column_missing_from_a_parquet_file_is_an_error_naming_key_and_file(tmp_path):
    write_rag_corpus(tmp_path / "in" / "corpus.parquet")
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*"), '{ id = "doc_id", text = "body" }'))
    with pytest.raises(MissingColumnError, match=r"columns\.text = 'body'.*corpus\.parquet.*contents"):
        run_stages(load_config(cfg), "raw_documents")


def test_mapped_column_absent_from_a_jsonl_file_is_an_error_naming_key_and_file(tmp_path):
    write_jsonl(tmp_path / "in" / "pages.jsonl", [{"doc_id": "p1", "contents": ARTS[0]["text"]}])
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*"), '{ id = "doc_id", text = "body" }'))
    with pytest.raises(MissingColumnError, match=r"source 'rag': columns\.text = 'body'.*pages\.jsonl"):
        run_stages(load_config(cfg), "raw_documents")


def test_jsonl_rows_lacking_a_mapped_column_are_quarantined(tmp_path):
    write_jsonl(tmp_path / "in" / "pages.jsonl", [
        {"doc_id": "p1", "contents": ARTS[0]["text"]},
        {"doc_id": "p2"},  # this row lacks it; the file as a whole has it
        {"doc_id": "p3", "contents": ARTS[2]["text"], "text": "ignored: text is mapped to contents"},
    ])
    wh = run_stages(load_config(config(tmp_path, rag_source(str(tmp_path / "in" / "*")))), "quarantine")
    try:
        assert rows(wh, "SELECT line_no, reason FROM quarantine") == [(2, "missing_text")]
        assert rows(wh, "SELECT doc_id, text FROM documents ORDER BY 1") == [
            ("rag:p1", ARTS[0]["text"]), ("rag:p3", ARTS[2]["text"])]
    finally:
        wh.close()


# ---- derived titles --------------------------------------------------------------------------

def test_derived_titles_are_not_quarantined_and_title_queries_skip_them(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [
        ARTS[0],  # a real title
        {"id": "x1", "url": "https://ko.wikipedia.org/wiki/%EC%84%9C%EC%9A%B8_%ED%8A%B9%EB%B3%84%EC%8B%9C",
         "text": ARTS[1]["text"]},  # title from the url's last segment
        {"id": "x2", "text": ARTS[2]["text"]},  # from the id
        {"text": "  \n첫 줄이 제목이 된다 " + "가" * 100 + "\n" + ARTS[3]["text"]},  # from the first line, 80 chars
        ARTS[4],
    ])
    src = f'[[sources]]\nname = "s"\npaths = [{json.dumps(str(tmp_path / "in" / "*"))}]\n'
    cfg = load_config(config(tmp_path, src, settings={"queries": {"methods": ["title"]}}))
    wh = run_stages(cfg, "queries")
    try:
        docs = rows(wh, "SELECT d.title, d.title_derived FROM documents d JOIN clean_documents c USING (doc_id) "
                        "ORDER BY c.line_no")
        quarantine = rows(wh, "SELECT count(*) FROM quarantine")[0][0]
        title_queries = rows(wh, "SELECT query FROM queries WHERE method = 'title' ORDER BY 1")
    finally:
        wh.close()
    assert quarantine == 0
    first_line = ("첫 줄이 제목이 된다 " + "가" * 100)[:80]
    assert docs == [(ARTS[0]["title"], False), ("서울 특별시", True), ("x2", True), (first_line, True),
                    (ARTS[4]["title"], False)]
    assert title_queries == sorted([(ARTS[0]["title"],), (ARTS[4]["title"],)])
    state = json.loads((tmp_path / "wh" / "state" / "raw_documents.json").read_text(encoding="utf-8"))
    assert state["extra"]["title_derived"] == 3


# ---- query files -----------------------------------------------------------------------------

def write_rag_questions(path: Path) -> Path:
    """qa-style Parquet: qid, query, generation_gt, retrieval_gt (list of lists of doc ids)."""
    pq.write_table(pa.table({
        "qid": ["q1", "q2", "q3", "q4", "q5", "q6", "q7"],
        "query": ["첫 질문은?", "둘째  질문은?\n", "첫 질문은?", "둘째 질문은?", "없는 문서 질문", "   ", "셋째 질문"],
        "generation_gt": [["답"]] * 7,
        "retrieval_gt": [
            [[page_id(0), page_id(1)], [page_id(2)]],  # several positives: a list of lists, flattened
            [[page_id(3)]],
            [[page_id(4)]],  # the same question again, for another page: one more positive
            [[page_id(3)]],  # identical to line 2 after whitespace normalization: duplicate_line
            [["finance - nope.pdf - 9"]],
            [[page_id(5)]],  # blank question
            [[page_id(5), page_id(5)], []],  # repeated id within the line: kept once
        ],
    }), path)
    return path


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rag")
    write_rag_corpus(tmp_path / "in" / "corpus.parquet")
    qpath = write_rag_questions(tmp_path / "qa.parquet")
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*")),
                 query_file(qpath, '{ doc_ids = "retrieval_gt" }'), settings={"queries": {"methods": []}})
    wh = run_stages(load_config(cfg), "queries")
    try:
        yield {
            "rows": rows(wh, "SELECT line_no, query, doc_ids, passage_ids, drop_low_rank, reject_reason "
                             "FROM query_file_rows ORDER BY line_no"),
            "user": rows(wh, "SELECT line_no, target_no, query, doc_id, source, passage_id, drop_low_rank, "
                             "reject_reason FROM user_queries ORDER BY line_no, target_no"),
            "queries": rows(wh, "SELECT method, query, doc_id, positive_passage_id, positive_fixed FROM queries "
                                "ORDER BY query"),
        }
    finally:
        wh.close()


def test_query_file_rows_are_normalized_and_flattened(rag_run):
    p = page_id
    assert rag_run["rows"] == [
        (1, "첫 질문은?", [p(0), p(1), p(2)], [], False, None),
        (2, "둘째 질문은?", [p(3)], [], False, None),
        (3, "첫 질문은?", [p(4)], [], False, None),
        (4, "둘째 질문은?", [p(3)], [], False, None),
        (5, "없는 문서 질문", ["finance - nope.pdf - 9"], [], False, None),
        (6, None, None, None, False, "missing_query"),
        (7, "셋째 질문", [p(5)], [], False, None),
    ]


def test_user_queries_has_one_row_per_line_and_target(rag_run):
    p = page_id
    assert rag_run["user"] == [
        (1, 1, "첫 질문은?", f"rag:{p(0)}", "rag", None, False, None),
        (1, 2, "첫 질문은?", f"rag:{p(1)}", "rag", None, False, None),
        (1, 3, "첫 질문은?", f"rag:{p(2)}", "rag", None, False, None),
        (2, 1, "둘째 질문은?", f"rag:{p(3)}", "rag", None, False, None),
        (3, 1, "첫 질문은?", f"rag:{p(4)}", "rag", None, False, None),  # a repeated question is not a duplicate
        (4, 1, "둘째 질문은?", f"rag:{p(3)}", "rag", None, False, "duplicate_line"),
        (5, 1, "없는 문서 질문", None, None, None, False, "unknown_doc_id"),
        (6, 0, None, None, None, None, False, "missing_query"),
        (7, 1, "셋째 질문", f"rag:{p(5)}", "rag", None, False, None),
    ]


def test_repeated_questions_reach_queries_once_each(rag_run):
    got = rag_run["queries"]
    assert [q for _, q, *_ in got] == sorted(["첫 질문은?", "둘째 질문은?", "셋째 질문"])
    assert {m for m, *_ in got} == {"query_file"}
    first = {q: (d, pp, fixed) for _, q, d, pp, fixed in got}["첫 질문은?"]
    assert first == (f"rag:{page_id(0)}", f"rag:{page_id(0)}#0", False)


def test_jsonl_query_file_with_passage_lists_and_drop_flag(tmp_path):
    write_rag_corpus(tmp_path / "in" / "corpus.parquet", n=3)
    p0, p1, p2 = (f"rag:{page_id(i)}" for i in range(3))
    qpath = write_lines(tmp_path / "q.jsonl", [
        json.dumps({"q": "패시지 질문", "pids": [f"{p0}#0", [f"{p1}#0"]]}, ensure_ascii=False),
        json.dumps({"q": "문서와 패시지", "doc": page_id(2), "pid": f"{p0}#0"}, ensure_ascii=False),
        json.dumps({"q": "정수 아이디", "doc": 7}, ensure_ascii=False),
        json.dumps({"q": "틀린 형식", "doc": [1.5]}, ensure_ascii=False),
        json.dumps({"q": "패시지 질문", "pids": [[f"{p1}#0"], f"{p0}#0"]}, ensure_ascii=False),  # same ids
    ])
    qf = query_file(qpath, '{ query = "q", doc_id = "doc", passage_id = "pid", passage_ids = "pids" }', drop=True)
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*")), qf, settings={"queries": {"methods": []}})
    wh = run_stages(load_config(cfg), "user_queries")
    try:
        got = rows(wh, "SELECT line_no, target_no, doc_id, passage_id, drop_low_rank, reject_reason "
                       "FROM user_queries ORDER BY line_no, target_no")
    finally:
        wh.close()
    assert got == [
        (1, 1, p0, f"{p0}#0", True, None),
        (1, 2, p1, f"{p1}#0", True, None),
        (2, 1, p0, f"{p0}#0", True, "passage_not_in_doc"),
        (3, 1, None, None, True, "unknown_doc_id"),
        (4, 0, None, None, True, "wrong_type:doc_id"),
        (5, 1, p1, f"{p1}#0", True, "duplicate_line"),
        (5, 2, p0, f"{p0}#0", True, "duplicate_line"),
    ]


def test_query_file_mapped_column_missing_is_an_error_naming_key_and_file(tmp_path):
    write_rag_corpus(tmp_path / "in" / "corpus.parquet", n=3)
    qpath = write_rag_questions(tmp_path / "qa.parquet")
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*")),
                 query_file(qpath, '{ doc_ids = "gold" }'), settings={"queries": {"methods": []}})
    with pytest.raises(MissingColumnError, match=r"query_files 'human': columns\.doc_ids = 'gold'.*qa\.parquet"):
        run_stages(load_config(cfg), "query_file_rows")
    jpath = write_jsonl(tmp_path / "q.jsonl", [{"query": "질문", "retrieval_gt": [[page_id(0)]]}])
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*")),
                 query_file(jpath, '{ doc_ids = "gold" }'), settings={"queries": {"methods": []}})
    with pytest.raises(MissingColumnError, match=r"query_files 'human': columns\.doc_ids = 'gold'.*q\.jsonl"):
        run_stages(load_config(cfg), "query_file_rows")


def test_query_file_as_json_array(tmp_path):
    write_rag_corpus(tmp_path / "in" / "corpus.parquet", n=2)
    jpath = tmp_path / "q.json"
    jpath.write_text(json.dumps([{"query": "하나", "doc_id": page_id(0)}, {"query": "둘", "doc_ids": [page_id(1)]}],
                                ensure_ascii=False), encoding="utf-8")
    cfg = config(tmp_path, rag_source(str(tmp_path / "in" / "*")), query_file(jpath),
                 settings={"queries": {"methods": []}})
    wh = run_stages(load_config(cfg), "user_queries")
    try:
        assert rows(wh, "SELECT line_no, doc_id, reject_reason FROM user_queries ORDER BY 1") == [
            (1, f"rag:{page_id(0)}", None), (2, f"rag:{page_id(1)}", None)]
    finally:
        wh.close()


# ---- the real benchmark (shared data) ------------------------------------------------------------

@pytest.mark.skipif(not (AUTORAG / "qa_v4.parquet").exists(), reason="shared autorag data absent")
def test_real_autorag_corpus_and_questions_reach_queries(tmp_path):
    cfg = config(tmp_path, rag_source(str(AUTORAG / "ocr_corpus_v3.parquet")),
                 query_file(AUTORAG / "qa_v4.parquet", '{ doc_ids = "retrieval_gt" }'),
                 settings={"queries": {"methods": []}})
    wh = run_stages(load_config(cfg), "queries")
    try:
        (n_rows,) = rows(wh, "SELECT count(*) FROM query_file_rows")[0]
        rejects = dict(rows(wh, "SELECT reject_reason, count(*) FROM user_queries WHERE reject_reason IS NOT NULL "
                                "GROUP BY 1"))
        (n_queries,) = rows(wh, "SELECT count(*) FROM queries")[0]
        missing_text = rows(wh, "SELECT count(*) FROM quarantine WHERE reason = 'missing_text'")[0][0]
    finally:
        wh.close()
    assert n_rows == 114
    assert missing_text == 0
    assert rejects == {}  # every retrieval_gt page id resolves to a document
    assert n_queries == 114  # one query per distinct question
