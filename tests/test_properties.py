"""Property-based tests (hypothesis): arbitrary JSON-ish lines and arbitrary Unicode text go through
ingest -> clean -> chunk with no exception and no row unaccounted for (loaded + quarantined = read)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from etl_helpers import rows, run_stages, write_config
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from etl import ingest
from etl.config import SourceConfig, load_config
from etl.validate import normalized_text_key

SLOW = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
# markup and characters the cleaner and chunker treat specially, mixed into arbitrary text
SPECIAL = ["\x00", "\x1e", "\x1f", "\ud800", "\udfff", "\r\n", "\n", "\n\n", "\u3000", "\u200b", "[[", "]]", "|",
           "||", "{{{", "}}}", "{{{#!wiki style=\"x\"\n", "'''", "[*", "]", "[include(틀:x)]", "== 제목 ==\n",
           "#redirect ", "다. ", "。", "…", "?", "<ref>", "</ref>", "~~", "--", "가", "é", "e\u0301", "🙂"]
texts = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL)), max_size=25).map("".join)
records = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=8), st.integers(0, 50), json_values),
    "title": st.one_of(texts, st.integers(), json_values),
    "text": st.one_of(texts, json_values),
    "url": st.one_of(st.text(max_size=10), json_values),
    "language": st.one_of(st.sampled_from(["ko", "en", ""]), json_values),
    "namespace": st.one_of(st.integers(-1, 2), st.sampled_from(["0", "1", "x"]), json_values),
})


def as_line(value) -> bytes:
    """One JSONL line (no newline inside) from a record / JSON value / arbitrary text / bytes."""
    if isinstance(value, bytes):
        return value.replace(b"\n", b" ")
    if isinstance(value, tuple):  # ("text", s): arbitrary, mostly not JSON
        return value[1].replace("\n", " ").encode("utf-8", "surrogatepass")
    return json.dumps(value, ensure_ascii=bool(len(json.dumps(value)) % 2)).encode("utf-8", "surrogatepass")


lines = st.lists(st.one_of(records, json_values, st.tuples(st.just("text"), texts), st.binary(max_size=40)),
                 max_size=12).map(lambda vs: [as_line(v) for v in vs])

SMALL_CHUNKS = {"clean": {"min_chars": 1}, "chunk": {"target_chars": 20, "max_chars": 45, "min_chars": 5}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def run_through_chunking(base: Path, data: bytes) -> dict:
    """Ingest ``data`` as one .jsonl file and run clean + chunk; return what the checks need."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "in").mkdir()
    (root / "in" / "x.jsonl").write_bytes(data)
    cfg_path = write_config(root / "cfg.toml", warehouse=root / "wh", export=root / "out",
                            sources=[("s", [str(root / "in" / "*.jsonl")])], settings=SMALL_CHUNKS)
    wh = run_stages(load_config(cfg_path), "passages")  # chunks: every chunk (passages drops repeated texts)
    try:
        return {
            "raw": rows(wh, "SELECT count(*), count(reject_reason) FROM raw_documents")[0],
            "docs": rows(wh, "SELECT doc_id, text FROM documents"),
            "quarantine": rows(wh, "SELECT stage, file, line_no, reason FROM quarantine"),
            "passages": rows(wh, "SELECT doc_id, chunk_no, text FROM chunks ORDER BY doc_id, chunk_no"),
            "kept": rows(wh, "SELECT text FROM passages"),
            "dups": rows(wh, "SELECT passage_id, kept_passage_id FROM passage_duplicates"),
        }
    finally:
        wh.close()


def check_accounting(got: dict, expected_read: int) -> None:
    n_raw, n_rejected = got["raw"]
    assert n_raw == expected_read, "every non-blank line is one raw row"
    assert n_raw == len(got["docs"]) + len(got["quarantine"]), "loaded + quarantined = read"
    assert sum(1 for s, *_ in got["quarantine"] if s == "ingest") == n_rejected
    assert all(f.endswith("x.jsonl") and reason for _, f, _, reason in got["quarantine"])


def check_chunks(got: dict, max_chars: int = 45) -> None:
    # passages = chunks less the repeated normalized texts, each text kept once
    keys = [normalized_text_key(t) for (t,) in got["kept"]]
    assert len(keys) == len(set(keys))
    assert len(got["kept"]) + len(got["dups"]) == len(got["passages"])
    assert {normalized_text_key(t) for *_, t in got["passages"]} == set(keys)
    by_doc: dict[str, list[str]] = {}
    for doc_id, _, text in got["passages"]:
        assert 1 <= len(text) <= max_chars
        by_doc.setdefault(doc_id, []).append(text)
    for doc_id, text in got["docs"]:
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates
        assert squash("".join(by_doc.get(doc_id, []))) == squash(text), "chunking loses no text"


@SLOW
@given(lines=lines)
@example(lines=[b'{"title": "t", "text": "\\ud800\\u0000 x"}', b"\xff\xfe", b"   ", b"[1, 2", b'"just a string"'])
def test_arbitrary_jsonl_lines_are_all_accounted_for(workdir, lines):
    data = b"\n".join(lines) + (b"\n" if lines else b"")
    expected = sum(1 for ln in data.split(b"\n") if ln.strip())
    got = run_through_chunking(workdir, data)
    check_accounting(got, expected)
    check_chunks(got)


@SLOW
@given(docs=st.lists(st.tuples(texts, texts), min_size=1, max_size=6))
@example(docs=[("제목", "첫 문장이다. " * 30), ("\x1e\x1f", "\x1f" * 50), ("a", "[[a|b]]" * 40 + "\n\n" + "가" * 200)])
def test_arbitrary_unicode_text_is_cleaned_and_chunked(workdir, docs):
    recs = [{"id": f"r{i}", "title": title, "text": text} for i, (title, text) in enumerate(docs)]
    data = b"".join(json.dumps(r).encode("ascii") + b"\n" for r in recs)  # lone surrogates as \\u escapes
    got = run_through_chunking(workdir, data)
    check_accounting(got, len(recs))
    check_chunks(got)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rec=st.one_of(records, json_values))
def test_record_row_never_raises(rec):
    row = ingest.record_row(SourceConfig(name="s"), "f.jsonl", 7, rec)
    assert (row["source"], row["file"], row["line_no"]) == ("s", "f.jsonl", 7)
    if row.get("reject_reason"):
        assert row.get("text") is None
    else:
        assert isinstance(row["title"], str) and isinstance(row["text"], str)
        for s in (row["title"], row["text"]):
            assert "\x00" not in s
            s.encode("utf-8")


top_level = st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.text(max_size=30),
                      st.booleans(), st.none(), st.lists(json_values, max_size=3))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(elements=st.lists(top_level, max_size=8), chunk=st.integers(1, 48), indent=st.sampled_from([None, 1, 4]),
       as_array=st.booleans())
def test_json_streaming_matches_json_loads(tmp_path_factory, elements, chunk, indent, as_array):
    """``.json`` files (an array, or objects back to back) stream element by element at any chunk size."""
    # a file starting with '[' is a JSON array (the Namuwiki dump shape), so in the back-to-back
    # shape the first value cannot itself be an array
    assume(as_array or not (elements and isinstance(elements[0], list)))
    path = tmp_path_factory.mktemp("stream") / "x.json"
    if as_array:
        text = json.dumps(elements, ensure_ascii=False, indent=indent)
    else:
        text = "\n".join(json.dumps(e, ensure_ascii=False, indent=indent) for e in elements)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    got = [(n, rec, err) for n, rec, err, _ in ingest._iter_json(path, chunk_chars=chunk)]
    expected = [(i + 1, e, None) for i, e in enumerate(elements)]
    assert json.dumps(got) == json.dumps(expected)  # (compared as JSON text: NaN != NaN)
