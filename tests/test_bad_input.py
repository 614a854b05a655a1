"""Bad input, one class per test: every record read either loads or lands in the quarantine layer
with its source file, line/row number and reason; counts are exact.

These run the stages up to ``quarantine`` (or ``user_queries``) only: no embedding model needed.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etl_helpers import make_articles, rows, run_stages, write_config, write_jsonl, write_lines

from etl import ingest
from etl.config import SourceConfig, load_config
from etl.ingest import SourceError

ARTS = make_articles(40, seed=3, sentences=10)  # distinct texts of ~300 chars (> clean.min_chars)


def art(i: int, **changes) -> dict:
    rec = dict(ARTS[i])
    for k, v in changes.items():
        if v is KeyError:
            rec.pop(k, None)
        else:
            rec[k] = v
    return rec


def line(rec) -> str:
    return json.dumps(rec, ensure_ascii=False)


@dataclass
class Outcome:
    quarantine: list[tuple[str, str, str, int, str]]  # (stage, source, file name, line_no, reason)
    documents: list[tuple[str, str, str, str, str]]  # (doc_id, title, url, language, file name)
    raw_rows: int

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for *_, reason in self.quarantine:
            out[reason] = out.get(reason, 0) + 1
        return out

    @property
    def doc_ids(self) -> list[str]:
        return sorted(d[0] for d in self.documents)


def ingest_dir(tmp_path: Path, sources: dict[str, list[str]] | None = None, settings=None,
               until: str = "quarantine") -> Outcome:
    """Run the stages up to ``until`` over ``tmp_path/in`` (or the given source globs)."""
    sources = sources or {"src": [str(tmp_path / "in" / "*")]}
    cfg_path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                            sources=list(sources.items()), settings=settings)
    wh = run_stages(load_config(cfg_path), until)
    try:
        q = rows(wh, "SELECT stage, source, file, line_no, reason FROM quarantine ORDER BY ALL")
        docs = rows(wh, "SELECT d.doc_id, d.title, d.url, d.language, c.file FROM documents d "
                        "JOIN clean_documents c USING (doc_id) ORDER BY d.doc_id")
        raw = rows(wh, "SELECT count(*) FROM raw_documents")[0][0]
    finally:
        wh.close()
    out = Outcome([(s, src, Path(f).name, n, r) for s, src, f, n, r in q],
                  [(i, t, u, la, Path(f).name) for i, t, u, la, f in docs], raw)
    # nothing is lost silently: every raw row is a document or a quarantine row
    assert out.raw_rows == len(out.documents) + len(out.quarantine)
    return out


IN = "in"


def test_malformed_json_lines(tmp_path):
    write_lines(tmp_path / IN / "a.jsonl", [
        line(art(0)),
        '{"id": "x", "title": "제목", "text": ',
        line(art(1)),
        "not json at all",
        '{"id": 1,, "title": "t"}',
        line(art(2)),
    ])
    out = ingest_dir(tmp_path)
    assert out.counts == {"malformed_json": 3}
    assert [(f, n) for _, _, f, n, _ in out.quarantine] == [("a.jsonl", 2), ("a.jsonl", 4), ("a.jsonl", 5)]
    assert {s for s, *_ in out.quarantine} == {"ingest"}
    assert out.doc_ids == ["src:d00000", "src:d00001", "src:d00002"]


def test_truncated_last_line(tmp_path):
    full = line(art(2))
    p = tmp_path / IN / "a.jsonl"
    p.parent.mkdir(parents=True)
    p.write_bytes((line(art(0)) + "\n" + line(art(1)) + "\n" + full[: len(full) // 2]).encode("utf-8"))
    out = ingest_dir(tmp_path)
    assert out.quarantine == [("ingest", "src", "a.jsonl", 3, "malformed_json")]
    assert out.doc_ids == ["src:d00000", "src:d00001"]


def test_truncated_last_line_cut_inside_a_multibyte_character(tmp_path):
    full = line(art(2)).encode("utf-8")
    cut = full.index("다".encode()) + 1  # in the middle of a 3-byte Hangul syllable
    p = tmp_path / IN / "a.jsonl"
    p.parent.mkdir(parents=True)
    p.write_bytes(line(art(0)).encode() + b"\n" + full[:cut])
    out = ingest_dir(tmp_path)
    assert out.quarantine == [("ingest", "src", "a.jsonl", 2, "invalid_utf8")]
    assert out.doc_ids == ["src:d00000"]


def test_invalid_utf8_line(tmp_path):
    bad = line(art(1)).encode("utf-8").replace("다".encode(), b"\xff\xfe", 1)
    write_lines(tmp_path / IN / "a.jsonl", [line(art(0)), bad, line(art(2)), "한글".encode("cp949")])
    out = ingest_dir(tmp_path)
    assert out.counts == {"invalid_utf8": 2}
    assert [(f, n) for _, _, f, n, _ in out.quarantine] == [("a.jsonl", 2), ("a.jsonl", 4)]
    assert out.doc_ids == ["src:d00000", "src:d00002"]


def test_json_file_not_in_utf8(tmp_path):
    (tmp_path / IN).mkdir()
    (tmp_path / IN / "euckr.json").write_bytes(json.dumps([art(1), art(2)], ensure_ascii=False).encode("cp949"))
    write_jsonl(tmp_path / IN / "good.jsonl", [art(0)])
    out = ingest_dir(tmp_path)
    assert len(out.quarantine) == 1
    stage, source, fname, line_no, reason = out.quarantine[0]
    # the position is the first element that could not be read
    assert (stage, source, fname, line_no, reason) == ("ingest", "src", "euckr.json", 1, "invalid_utf8")
    assert out.doc_ids == ["src:d00000"]


def test_wrong_types(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", [
        art(0, id="n1", title=123),  # number title: loads as "123"
        art(1, id="n2", title=3.5),  # loads as "3.5"
        art(2, text=["문단 하나", "문단 둘"]),  # list text
        art(3, text=12345),  # number text
        art(4, title={"ko": "제목"}),  # object title
        art(5, title=True),  # bool title
        art(6, id=["a", "b"]),  # list id
        art(7, namespace="main"),  # namespace not a number
        art(8, id="n3", namespace="0"),  # numeric string namespace: loads
        [art(9)],  # an array, not an object
        42,
        "문자열",
    ])
    out = ingest_dir(tmp_path)
    assert out.counts == {"wrong_type:text": 2, "wrong_type:title": 2, "wrong_type:id": 1,
                          "wrong_type:namespace": 1, "not_an_object": 3}
    assert [n for *_, n, _ in out.quarantine] == sorted([3, 4, 5, 6, 7, 8, 10, 11, 12])
    assert [(d[0], d[1]) for d in out.documents] == [("src:n1", "123"), ("src:n2", "3.5"), ("src:n3", ARTS[8]["title"])]


def test_missing_text_or_title(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", [
        art(0),
        art(1, text=KeyError),
        art(2, title=KeyError),  # no title: derived from the id, not quarantined
        {"id": "only-id"},
        art(3),
        {"text": " \n "},  # no title, url or id, and no text line to derive one from
    ])
    out = ingest_dir(tmp_path)
    assert out.counts == {"missing_text": 2, "missing_title": 1}
    assert [(n, r) for *_, n, r in out.quarantine] == [(2, "missing_text"), (4, "missing_text"), (6, "missing_title")]
    assert out.doc_ids == ["src:d00000", "src:d00002", "src:d00003"]
    assert {d[0]: d[1] for d in out.documents}["src:d00002"] == "d00002"


def test_null_fields(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", [
        art(0, text=None),
        art(1, title=None),
        art(2, id=None, url=None, language=None, namespace=None),
    ])
    out = ingest_dir(tmp_path)
    assert out.counts == {"missing_text": 1}
    # null title -> derived from the id; null id -> the title is the id; null language -> the source's language
    assert [(d[0], d[1], d[3]) for d in out.documents] == [
        ("src:d00001", "d00001", "ko"), (f"src:{ARTS[2]['title']}", ARTS[2]["title"], "ko")]


EMPTYISH = [
    art(0, text=""),
    art(1, text="   \n\t  \r\n "),
    art(2, text="\u3000\u00a0 \u3000"),
    art(3, text="[[분류:빈 문서]]\n[목차]\n## 주석만 있음"),  # markup only
    art(4),
]


def test_empty_and_whitespace_only_text_is_quarantined(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", EMPTYISH)
    out = ingest_dir(tmp_path)
    assert [(s, f, n) for s, _, f, n, _ in out.quarantine] == [("clean", "a.jsonl", i) for i in (1, 2, 3, 4)]
    assert out.quarantine[0][4] == "empty_text"
    assert {r for *_, r in out.quarantine} <= {"empty_text", "too_short"}
    assert out.doc_ids == ["src:d00004"]


def test_whitespace_only_text_is_reported_as_empty(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", EMPTYISH)
    out = ingest_dir(tmp_path)
    assert out.counts == {"empty_text": 4}


def huge_text(min_bytes: int = 10_500_000) -> str:
    sent = "Huge document sentence number {} about 서울 and [[링크|label]] markup. "
    parts, size, i = [], 0, 0
    while size < min_bytes:
        s = sent.format(i)
        parts.append(s)
        size += len(s.encode("utf-8"))
        i += 1
    return "".join(parts)


@pytest.fixture(scope="module")
def huge_corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("huge") / IN
    write_jsonl(d / "a.jsonl", [art(0), {"id": "big", "title": "큰 문서", "text": huge_text()}, art(1)])
    assert (d / "a.jsonl").stat().st_size > 10_000_000
    return d


def test_huge_document_over_max_chars_is_quarantined(tmp_path, huge_corpus):
    out = ingest_dir(tmp_path, {"src": [str(huge_corpus / "*")]}, settings={"clean": {"max_chars": 5_000_000}})
    assert out.quarantine == [("clean", "src", "a.jsonl", 2, "too_long")]
    assert out.doc_ids == ["src:d00000", "src:d00001"]


def test_huge_document_within_max_chars_loads_and_chunks(tmp_path, huge_corpus):
    cfg_path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                            sources=[("src", [str(huge_corpus / "*")])], settings={"clean": {"max_chars": 20_000_000}})
    wh = run_stages(load_config(cfg_path), "passages")
    try:
        (n_chars,) = rows(wh, "SELECT n_chars FROM documents WHERE doc_id = 'src:big'")[0]
        n, longest, total = rows(wh, "SELECT count(*), max(length(text)), sum(length(text)) FROM passages "
                                     "WHERE doc_id = 'src:big'")[0]
    finally:
        wh.close()
    expected = huge_text().replace("[[링크|label]]", "label").strip()
    assert n_chars == len(expected)  # markup removed, all text kept
    assert longest <= 900
    assert n >= n_chars // 900
    assert total >= n_chars * 0.99


def test_duplicate_ids_within_and_across_files(tmp_path):
    write_jsonl(tmp_path / "a" / "a.jsonl", [art(0, id="x"), art(1, id="x"), art(2, id="y")])
    write_jsonl(tmp_path / "a" / "b.jsonl", [art(3, id="x"), art(2, id="y")])  # b:2 repeats a:3 exactly
    write_jsonl(tmp_path / "o" / "o.jsonl", [art(4, id="x")])
    out = ingest_dir(tmp_path, {"src": [str(tmp_path / "a" / "*.jsonl")], "other": [str(tmp_path / "o" / "*")]})
    assert out.doc_ids == ["other:x", "src:x", "src:x~2", "src:x~3", "src:y"]
    by_id = {d[0]: d for d in out.documents}
    assert by_id["src:x"][1] == ARTS[0]["title"] and by_id["src:x~3"][4] == "b.jsonl"
    # the exact repeat of a record is a duplicate text, quarantined where it was read
    assert out.quarantine == [("clean", "src", "b.jsonl", 2, "duplicate_text")]


def test_duplicate_id_suffix_cannot_collide_with_a_real_id(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", [art(0, id="x"), art(1, id="x"), art(2, id="x~2")])
    out = ingest_dir(tmp_path)
    assert len(out.documents) == 3
    assert len(set(out.doc_ids)) == 3


def test_mixed_schemas_in_one_glob(tmp_path):
    d = tmp_path / IN
    write_jsonl(d / "wiki.jsonl", [art(0, url="https://ko.wikipedia.org/wiki/x", language="ko")])
    (d / "namu.json").write_text(json.dumps(
        [{"namespace": 0, "title": ARTS[1]["title"], "text": ARTS[1]["text"], "contributors": ["u1", "198.51.100.7"]},
         {"namespace": 0, "title": ARTS[2]["title"], "text": ARTS[2]["text"], "contributors": None}],
        ensure_ascii=False, indent=4), encoding="utf-8")
    write_jsonl(d / "extra.jsonl", [art(3, categories=["a", "b"], meta={"rev": 7}, score=0.5)])
    pq.write_table(pa.table({"id": [501, 502], "title": [ARTS[4]["title"], ARTS[5]["title"]],
                             "text": [ARTS[4]["text"], ARTS[5]["text"]], "views": [1, 2]}), d / "table.parquet")
    with gzip.open(d / "packed.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(line(art(6)) + "\n" + line(art(7)) + "\n")
    (d / "concat.json").write_text(line(art(8)) + "\n" + line(art(9)), encoding="utf-8")  # objects back to back
    out = ingest_dir(tmp_path)
    assert out.quarantine == []
    assert out.doc_ids == sorted(["src:d00000", f"src:{ARTS[1]['title']}", f"src:{ARTS[2]['title']}", "src:d00003",
                                  "src:501", "src:502", "src:d00006", "src:d00007", "src:d00008", "src:d00009"])
    assert {d[0]: d[2] for d in out.documents}["src:d00000"] == "https://ko.wikipedia.org/wiki/x"


def test_parquet_rows_are_numbered(tmp_path):
    (tmp_path / IN).mkdir()
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "title": [ARTS[0]["title"], None, ARTS[2]["title"]],
                             "text": [ARTS[0]["text"], ARTS[1]["text"], None]}), tmp_path / IN / "t.parquet")
    out = ingest_dir(tmp_path)
    assert out.quarantine == [("ingest", "src", "t.parquet", 3, "missing_text")]
    assert out.doc_ids == ["src:p1", "src:p2"]  # p2 has no title: derived from its id


def test_empty_files_load_nothing_and_break_nothing(tmp_path):
    d = tmp_path / IN
    d.mkdir()
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.jsonl").write_bytes(b"\n\n   \n\t\n")
    (d / "empty.json").write_bytes(b"")
    (d / "empty_array.json").write_bytes(b"[ ]")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "title": pa.array([], pa.string()),
                             "text": pa.array([], pa.string())}), d / "empty.parquet")
    write_jsonl(d / "good.jsonl", [art(0)])
    out = ingest_dir(tmp_path)
    assert out.quarantine == []
    assert out.raw_rows == 1
    assert out.doc_ids == ["src:d00000"]


def test_unknown_extensions_and_unreadable_parquet(tmp_path):
    d = tmp_path / IN
    write_jsonl(d / "good.jsonl", [art(0)])
    (d / "notes.txt").write_text("그냥 메모", encoding="utf-8")
    (d / "data.csv").write_text("id,title,text\n1,a,b\n", encoding="utf-8")
    (d / "dump.xml.bz2").write_bytes(b"BZh91AY&SY")
    (d / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (d / "zero.parquet").write_bytes(b"")
    out = ingest_dir(tmp_path)
    assert out.counts == {"unknown_extension": 3, "unreadable_parquet": 2}
    assert sorted((f, n) for _, _, f, n, _ in out.quarantine) == [
        ("broken.parquet", 0), ("data.csv", 0), ("dump.xml.bz2", 0), ("notes.txt", 0), ("zero.parquet", 0)]
    assert out.doc_ids == ["src:d00000"]


def test_corrupt_gzip_is_quarantined(tmp_path):
    d = tmp_path / IN
    write_jsonl(d / "good.jsonl", [art(0)])
    packed = gzip.compress(("\n".join(line(art(i)) for i in range(1, 6)) + "\n").encode("utf-8"))
    (d / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (d / "plain.jsonl.gz").write_text(line(art(7)) + "\n", encoding="utf-8")  # not compressed at all
    out = ingest_dir(tmp_path)
    files = {f for _, _, f, _, _ in out.quarantine}
    assert {"truncated.jsonl.gz", "plain.jsonl.gz"} <= files
    assert "src:d00000" in out.doc_ids


def test_json_file_with_two_arrays_loses_nothing_silently(tmp_path):
    (tmp_path / IN).mkdir()
    (tmp_path / IN / "two.json").write_text(
        json.dumps([art(0)], ensure_ascii=False) + "\n" + json.dumps([art(1), art(2)], ensure_ascii=False),
        encoding="utf-8")
    out = ingest_dir(tmp_path)
    assert len(out.documents) + len(out.quarantine) >= 2, "records after the first array vanished"


def test_utf8_bom_does_not_cost_the_first_record(tmp_path):
    p = tmp_path / IN / "bom.jsonl"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\xef\xbb\xbf" + (line(art(0)) + "\n" + line(art(1)) + "\n").encode("utf-8"))
    out = ingest_dir(tmp_path)
    assert out.quarantine == []
    assert out.doc_ids == ["src:d00000", "src:d00001"]


def test_json_array_streamed_across_chunk_boundaries(tmp_path):
    recs = [art(i) for i in range(6)] + [{"title": "t", "text": "a\"b\\c}]{[", "n": [1, {"x": "]"}]}]
    p = tmp_path / "arr.json"
    p.write_text(json.dumps(recs, ensure_ascii=False, indent=2), encoding="utf-8")
    for chunk in (7, 64, 300, 1 << 20):
        got = [(n, rec, err) for n, rec, err, _ in ingest._iter_json(p, chunk_chars=chunk)]
        assert got == [(i + 1, r, None) for i, r in enumerate(recs)], f"chunk_chars={chunk}"


def test_json_array_number_at_chunk_boundary(tmp_path):
    p = tmp_path / "nums.json"
    p.write_text("[1234, 5678]", encoding="utf-8")
    got = [rec for _, rec, _, _ in ingest._iter_json(p, chunk_chars=4)]
    assert got == [1234, 5678]


def test_glob_matching_nothing_names_the_glob(tmp_path):
    pattern = str(tmp_path / "nothing-here" / "*.jsonl")
    with pytest.raises(SourceError, match="matches no file") as exc:
        ingest.resolve_files(SourceConfig(name="s", paths=[pattern]))
    assert pattern in str(exc.value) and "'s'" in str(exc.value)


def test_glob_matching_only_directories_is_an_error(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(SourceError, match="matches no file"):
        ingest.resolve_files(SourceConfig(name="s", paths=[str(tmp_path / "*.jsonl")]))


def test_glob_matching_nothing_fails_before_any_work(tmp_path):
    from etl.pipeline import run_pipeline

    write_jsonl(tmp_path / IN / "a.jsonl", [art(0)])
    cfg_path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                            sources=[("good", [str(tmp_path / IN / "*.jsonl")]),
                                     ("bad", [str(tmp_path / "typo" / "*.jsonl")])])
    with pytest.raises(SourceError, match="typo"):
        run_pipeline(load_config(cfg_path), log=lambda _: None)
    assert not (tmp_path / "wh").exists()
    assert not (tmp_path / "out").exists()


def test_same_file_matched_by_two_globs_is_read_once(tmp_path):
    write_jsonl(tmp_path / IN / "a.jsonl", [art(0), art(1)])
    out = ingest_dir(tmp_path, {"src": [str(tmp_path / IN / "*.jsonl"), str(tmp_path / IN / "a.*")]})
    assert out.raw_rows == 2
    assert out.quarantine == []


# ---- query files ---------------------------------------------------------------------------

def test_query_file_lines_with_unknown_ids_are_rejected_with_reasons(tmp_path):
    write_jsonl(tmp_path / "syn" / "a.jsonl", [art(0), art(1), art(2)])
    write_jsonl(tmp_path / "alt" / "a.jsonl", [art(3, id="d00000")])  # same original id in another source
    qpath = write_lines(tmp_path / "queries.jsonl", [
        line({"query": "질문 하나", "doc_id": "syn:d00000"}),
        line({"query": "질문 둘", "doc_id": "d00001"}),  # a source's original id, unambiguous
        line({"query": "질문 셋", "doc_id": "nope"}),
        line({"query": "질문 넷", "doc_id": "syn:missing"}),
        line({"query": "질문 다섯", "passage_id": "syn:d00000#9"}),
        line({"query": "질문 여섯", "doc_id": "syn:d00001", "passage_id": "syn:d00000#0"}),
        "{not json",
        line({"doc_id": "syn:d00000"}),
        line({"query": "질문 아홉", "doc_id": 5.5}),
        line({"query": "질문 열"}),
        line({"query": "질문 열하나", "doc_id": "d00000"}),  # in both sources
    ])
    cfg_path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                            sources=[("syn", [str(tmp_path / "syn" / "*")]), ("alt", [str(tmp_path / "alt" / "*")])],
                            query_files=[("mine", str(qpath))])
    wh = run_stages(load_config(cfg_path), "user_queries")
    try:
        got = rows(wh, "SELECT line_no, reject_reason, doc_id, passage_id, file FROM user_queries "
                       "ORDER BY line_no")
    finally:
        wh.close()
    assert [(n, r) for n, r, *_ in got] == [
        (1, None), (2, None), (3, "unknown_doc_id"), (4, "unknown_doc_id"), (5, "unknown_passage_id"),
        (6, "passage_not_in_doc"), (7, "malformed_json"), (8, "missing_query"), (9, "wrong_type:doc_id"),
        (10, "missing_doc_id"), (11, "ambiguous_doc_id")]
    assert got[0][2:4] == ("syn:d00000", None)  # a document named: no fixed passage
    assert got[1][2:4] == ("syn:d00001", None)
    assert {Path(f).name for *_, f in got} == {"queries.jsonl"}


def test_missing_query_file_is_an_error_naming_it(tmp_path):
    write_jsonl(tmp_path / "syn" / "a.jsonl", [art(0)])
    cfg_path = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                            sources=[("syn", [str(tmp_path / "syn" / "*")])],
                            query_files=[("mine", str(tmp_path / "no-such-queries.jsonl"))])
    with pytest.raises(FileNotFoundError, match="no-such-queries.jsonl"):
        run_stages(load_config(cfg_path), "query_file_rows")
