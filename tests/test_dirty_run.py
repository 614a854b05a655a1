"""A whole CLI run over a corpus holding every class of bad input at once (tiny model): the run
succeeds, and the run summary and metadata.json count quarantined records per reason, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etl_helpers import make_articles, run_cli, tiny_run_dirs, write_jsonl, write_lines

from etl.validate import validate_file

ARTS = make_articles(48, seed=11, sentences=12)

EXPECTED_QUARANTINE = {
    "malformed_json": 2,  # a broken line + a truncated last line
    "invalid_utf8": 1,
    "wrong_type:text": 1,
    "wrong_type:title": 1,
    "missing_text": 2,  # one missing, one null
    "empty_text": 2,  # "" and spaces only
    "duplicate_text": 1,  # an exact repeat of a good article under a new id (bad.jsonl sorts first)
    "unknown_extension": 1,
    "namespace": 1,
    "redirect": 1,
    "too_long": 1,  # a 10+ MB document
}
EXPECTED_QUERY_REJECTS = {"unknown_doc_id": 2, "malformed_json": 1}


def j(rec) -> str:
    return json.dumps(rec, ensure_ascii=False)


def write_dirty_corpus(d: Path) -> None:
    write_jsonl(d / "good.jsonl", ARTS[:40])
    bad = [
        "{\"id\": \"b1\", \"title\": ",  # malformed
        j({**ARTS[40], "id": "b2", "text": ["a", "b"]}),  # wrong type text
        j({**ARTS[41], "id": "b3", "title": {"x": 1}}),  # wrong type title
        j({**ARTS[42], "id": "b4", "title": 4242}),  # number title: loads
        j({"id": "b5", "title": "제목만"}),  # missing text
        j({"id": "b6", "text": ARTS[43]["text"]}),  # missing title: derived from the id, loads
        j({"id": "b7", "title": "널", "text": None}),  # null text
        j({"id": "b8", "title": "빈", "text": ""}),
        j({"id": "b9", "title": "공백", "text": "      "}),
        j({**ARTS[0], "id": "b10"}),  # exact duplicate text of good.jsonl:1
        "한글 줄".encode("cp949"),  # invalid UTF-8
    ]
    p = write_lines(d / "bad.jsonl", bad)
    with open(p, "ab") as fh:  # truncated last line, no newline
        fh.write(j({**ARTS[44], "id": "b11"})[:40].encode("utf-8"))
    (d / "notes.txt").write_text("메모", encoding="utf-8")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "namu.json").write_text(json.dumps([
        {"namespace": 0, "title": ARTS[45]["title"], "text": ARTS[45]["text"], "contributors": ["u"]},
        {"namespace": 1, "title": "틀:도시", "text": ARTS[46]["text"], "contributors": []},
        {"namespace": 0, "title": "넘겨주기 문서", "text": "#redirect 다른 문서", "contributors": None},
    ], ensure_ascii=False, indent=4), encoding="utf-8")
    sent = "A very long document sentence number {} for the size test. "
    write_jsonl(d / "huge.jsonl", [{"id": "huge", "title": "큰 문서",
                                    "text": "".join(sent.format(i) for i in range(180_000))}])
    assert (d / "huge.jsonl").stat().st_size > 10_000_000


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("dirty")
    write_dirty_corpus(root / "corpus")
    qfile = write_lines(root / "queries.jsonl", [
        j({"query": f"{ARTS[1]['title']}의 특징", "doc_id": "syn:d00001"}),
        j({"query": "없는 문서 질문", "doc_id": "syn:nope"}),
        "{broken",
        j({"query": "다른 없는 문서", "doc_id": "zzz"}),
        j({"query": f"{ARTS[2]['title']} 역사", "doc_id": "d00002"}),
    ])
    dirs = tiny_run_dirs(root, root / "corpus", tiny_model, query_files=[("user", str(qfile))], pattern="*")
    dirs.result = run_cli(["run", "--config", str(dirs.config)])
    yield dirs
    dirs.close()


def test_dirty_run_succeeds(dirty_run):
    assert dirty_run.result.returncode == 0, dirty_run.result.stdout + dirty_run.result.stderr
    for name in ("train.jsonl", "val.jsonl"):
        p = dirty_run.export / name
        if p.stat().st_size:
            assert validate_file(p, min_docs=8, max_docs=8).ok
    assert dirty_run.metadata["total_queries"] > 0


def test_metadata_counts_quarantine_per_reason(dirty_run):
    assert dirty_run.metadata["quarantine"] == EXPECTED_QUARANTINE


def test_run_summary_counts_quarantine_per_reason(dirty_run):
    out = dirty_run.result.stdout
    for reason, n in EXPECTED_QUARANTINE.items():
        assert f"Quarantined {n:,} records: {reason}\n" in out
    assert out.count("Quarantined ") == len(EXPECTED_QUARANTINE)


def test_quarantine_rows_name_file_line_and_reason(dirty_run):
    got = {(Path(f).name, n, r) for f, n, r in dirty_run.q("SELECT file, line_no, reason FROM quarantine")}
    assert {("bad.jsonl", 1, "malformed_json"), ("bad.jsonl", 12, "malformed_json"),
            ("bad.jsonl", 11, "invalid_utf8"), ("bad.jsonl", 2, "wrong_type:text"),
            ("good.jsonl", 1, "duplicate_text"), ("notes.txt", 0, "unknown_extension"),
            ("namu.json", 2, "namespace"), ("namu.json", 3, "redirect"), ("huge.jsonl", 1, "too_long")} <= got
    assert len(got) == sum(EXPECTED_QUARANTINE.values())


def test_every_record_read_is_accounted_for(dirty_run):
    (n_raw,) = dirty_run.q("SELECT count(*) FROM raw_documents")[0]
    (n_docs,) = dirty_run.q("SELECT count(*) FROM documents")[0]
    assert n_raw == n_docs + sum(EXPECTED_QUARANTINE.values())
    # 40 good (one of them kept under its duplicate's id) + number-titled + untitled + namespace-0 Namuwiki article
    assert n_docs == 43
    assert dirty_run.metadata["stages"]["raw_documents"]["extra"] == {"read": n_raw, "loaded": n_raw - 8,
                                                                       "rejected": 8, "title_derived": 1}


def test_untitled_record_is_a_document_without_a_title_query(dirty_run):
    assert dirty_run.q("SELECT title, title_derived FROM documents WHERE doc_id = 'syn:b6'") == [("b6", True)]
    assert dirty_run.q("SELECT count(*) FROM queries WHERE doc_id = 'syn:b6' AND method = 'title'") == [(0,)]


def test_query_file_rejects_are_counted_with_reasons(dirty_run):
    assert dirty_run.metadata["user_query_rejects"] == EXPECTED_QUERY_REJECTS
    got = dirty_run.q("SELECT line_no, reject_reason FROM user_queries ORDER BY line_no")
    assert got == [(1, None), (2, "unknown_doc_id"), (3, "malformed_json"), (4, "unknown_doc_id"), (5, None)]


def test_run_summary_counts_query_file_rejects(dirty_run):
    out = dirty_run.result.stdout
    assert "unknown_doc_id" in out and "2" in out.split("unknown_doc_id")[0].splitlines()[-1]
