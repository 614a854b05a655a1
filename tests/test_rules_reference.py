"""The SQL models clean_documents + passages give exactly what the plain-Python statement of the same rules gives.

The reference is the translation that ``benchmarks/bench_clean_chunk.py`` times against the SQL path: one Python
``re`` substitution per regexp step of ``etl/sql/clean_documents.sql`` and a loop for the chunking of
``etl/sql/passages.sql``. The SQL models take shortcuts for speed (guards that skip a step where it cannot change
anything, plain ``replace()`` where it gives the regexp's result, a fast path for cleaned text in the chunker);
this test feeds both sides random texts built from the markup, whitespace and sentence marks those shortcuts are
about, with small chunk sizes so that long sentences are cut, and compares every document and passage.
"""

from __future__ import annotations

import random
import sys
import unicodedata

import pytest
from etl_helpers import REPO, rows, run_stages, write_config, write_jsonl

from etl.config import load_config

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_clean_chunk import CLEAN_STEPS, chunk_text  # noqa: E402

CHUNK = {"target_chars": 20, "max_chars": 45, "min_chars": 5}  # piece = 20 characters: long sentences get cut
TOKENS = [
    # words and sentence marks
    "가나다", "문장", "서울", "abc", "x", "1990", "3.5", "다.", ". ", "? ", "! ", "。 ", "… ", ".", "?", "…",
    "가" * 30, "긴단어" * 9,
    # whitespace
    " ", " ", "  ", "   ", "\n", "\n", "\n\n", "\n\n\n", " \n", "\n ", " \n \n ", "\t", "\u3000", "\xa0", "\x0b",
    "\f", "\r\n", "\r",
    # NamuMark / MediaWiki markup
    "[[문서]]", "[[문서|표시]]", "[[파일:그림.png|width=10]]", "[[분류:도시]]", "[[a|[[파일:b.png]]]]", "'''굵게'''",
    "''기울임''", "'", "''''", "__밑줄__", "_", "^^위^^", ",,아래,,", ",", "~~취소~~", "--지움--", "-", "----",
    "{{{#!wiki style=\"x\"\n", "{{{+1 ", "{{{#red ", "}}}", "{{{", "{{틀}}", "<ref>출처</ref>", "<b>", "||",
    "||<bgcolor=#fff> 칸 ", "[* 각주 [[링크]]]", "[br]", "[include(틀:x)]", "[목차]", "\n== 제목 ==\n",
    "\n = 제목 = \n", "=", "\n## 주석\n", "\n* 항목", "\n 1. 번호", "\n> 인용", ">", "*", "\n\t* 탭",
    # NamuMark literals and wrappers, table rows, quote blocks
    "{{{std::string}}}", "{{{[[문서]] '''x'''}}}", "{{{#!syntax cpp\n", "{{{#!syntax python\n# 주석\n", "{{{#!html ",
    "{{{#conda ", "{{{#fff,#000 ", "{{{#DarkRed ", "{{{-2 ", "{{{#!folding 펼치기\n", "{{{ ", "}}}\n", "\n||", "||\n",
    "|| ||", "\n> 인용 한 줄\n", "\n>> 이중\n",
    # characters the SQL uses internally or that NFC changes
    "\x1e", "\x1f", "e\u0301", "\u1100\u1161", "\uf900", "\ufdd0", "\ufdd1", "\ufdd4", "\ufdef",
]


def random_text(rng: random.Random) -> str:
    """A document of 1-60 tokens; a quarter of them plain (no markup or odd whitespace), like cleaned text."""
    plain = rng.random() < 0.25
    pool = [t for t in TOKENS if t.strip() and t.isprintable() and "[" not in t and "{" not in t] if plain else TOKENS
    out = []
    for _ in range(rng.randint(1, 60)):
        out.append(rng.choice(pool))
        if plain:
            out.append(rng.choice([" ", " ", ". ", "\n", "\n\n"]))
    return "".join(out)


def reference_clean(text: str) -> str:
    """etl/sql/clean_documents.sql's text rules in Python (line ends, NFC, each markup step, trim)."""
    t = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    for _name, steps in CLEAN_STEPS:
        for pattern, replacement in steps:
            t = pattern.sub(replacement, t)
    return t.strip(" \n")


@pytest.fixture(scope="module")
def cleaned_and_chunked(tmp_path_factory):
    rng = random.Random(20261125)
    texts = {f"d{i:04d}": random_text(rng) for i in range(600)}
    root = tmp_path_factory.mktemp("rules")
    write_jsonl(root / "in" / "a.jsonl", [{"id": k, "title": k, "text": v} for k, v in texts.items()])
    cfg = load_config(write_config(root / "cfg.toml", warehouse=root / "wh", export=root / "out",
                                   sources=[("s", [str(root / "in" / "*.jsonl")])],
                                   settings={"clean": {"min_chars": 1, "dedupe": False}, "chunk": CHUNK}))
    wh = run_stages(cfg, "passages")
    try:
        docs = dict(rows(wh, "SELECT orig_id, text FROM documents"))
        passages: dict[str, list[str]] = {}
        for orig_id, text in rows(wh, "SELECT d.orig_id, p.text FROM chunks p JOIN documents d USING (doc_id) "
                                      "ORDER BY d.orig_id, p.chunk_no"):
            passages.setdefault(orig_id, []).append(text)
        return texts, docs, passages
    finally:
        wh.close()


def test_clean_documents_matches_the_reference(cleaned_and_chunked):
    texts, docs, _ = cleaned_and_chunked
    expected = {k: reference_clean(v) for k, v in texts.items()}
    assert set(docs) == {k for k, v in expected.items() if v}, "documents = the records whose clean text is not empty"
    differing = [(k, texts[k], docs[k], expected[k]) for k in sorted(docs) if docs[k] != expected[k]]
    assert not differing, f"{len(differing)} documents differ, e.g. {differing[:2]}"


def test_passages_match_the_reference(cleaned_and_chunked):
    _, docs, passages = cleaned_and_chunked
    cut = 0
    for k, text in sorted(docs.items()):
        expected = chunk_text(text, CHUNK["target_chars"], CHUNK["max_chars"], CHUNK["min_chars"])
        assert passages.get(k, []) == expected, f"document {k}: {text!r}"
        cut += any(len(s) > 20 for s in text.split(". "))
    assert cut > 50, "the sample has documents with sentences long enough to be cut"
