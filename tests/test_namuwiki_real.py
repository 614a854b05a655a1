"""Stages ingest -> clean -> chunk on the real Namuwiki dump records in ../shared/data/namuwiki-raw:
markup gone, text kept (compared with each record's reference rendering)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from etl_helpers import NAMUWIKI_RAW, rows, run_stages, write_config

from etl.config import load_config

RECORDS = sorted(NAMUWIKI_RAW.glob("record*.json")) if NAMUWIKI_RAW.is_dir() else []
pytestmark = pytest.mark.skipif(not RECORDS, reason=f"real Namuwiki records not found at {NAMUWIKI_RAW}")

# NamuMark that must not survive cleaning. '[[' is checked as link syntax ([[x]] or [[x|y]]) and '[*' as a
# footnote opener ('[* ' or '[*name '), because code blocks legitimately contain nested lists such as
# [[1, 2], [3, 4]] and Python's [*range(10)].
LEFTOVERS = ("||", "'''", "{{{", "[include")
LINK = re.compile(r"\[\[[^\[\]\n]*(?:\||\]\])")
FOOTNOTE = re.compile(r"\[\*\w* ")
WORD = re.compile(r"\w+")


@pytest.fixture(scope="module")
def namu(tmp_path_factory):
    """Documents and passages built from the seven records (the files are read in place)."""
    root = tmp_path_factory.mktemp("namu")
    cfg_path = write_config(root / "cfg.toml", warehouse=root / "wh", export=root / "out",
                            sources=[("namuwiki", [str(NAMUWIKI_RAW / "record*.json")],
                                      {"url_prefix": "https://namu.wiki/w/"})])
    wh = run_stages(load_config(cfg_path), "queries")
    try:
        first = dict(rows(wh, "SELECT doc_id, query FROM queries WHERE method = 'first_sentence'"))
        docs = rows(wh, "SELECT c.file, d.doc_id, d.title, d.text, d.url FROM documents d "
                        "JOIN clean_documents c USING (doc_id)")
        passages = rows(wh, "SELECT doc_id, chunk_no, text FROM passages ORDER BY doc_id, chunk_no")
        quarantine = rows(wh, "SELECT file, reason FROM quarantine")
        raw = rows(wh, "SELECT count(*), count(reject_reason) FROM raw_documents")[0]
    finally:
        wh.close()
    by_record = {Path(f).stem: {"doc_id": i, "title": t, "text": x, "url": u} for f, i, t, x, u in docs}
    chunks: dict[str, list[str]] = {}
    for doc_id, _, text in passages:
        chunks.setdefault(doc_id, []).append(text)
    return {"docs": by_record, "passages": chunks, "quarantine": quarantine, "raw": raw, "first": first}


def raw_record(name: str) -> dict:
    return json.loads((NAMUWIKI_RAW / f"{name}.json").read_text(encoding="utf-8"))


def reference_sentences(name: str, title: str) -> list[list[str]]:
    """Words of each sentence line of recordN.reference.txt (section header lines skipped)."""
    out = []
    for ln in (NAMUWIKI_RAW / f"{name}.reference.txt").read_text(encoding="utf-8").splitlines():
        ln = ln.strip()
        if not ln or ln == title or ln.startswith(title + " - "):
            continue
        words = WORD.findall(ln)
        if words:
            out.append(words)
    return out


NAMES = [p.stem for p in RECORDS]


def test_every_record_becomes_one_document(namu):
    assert namu["raw"] == (len(RECORDS), 0)
    assert namu["quarantine"] == []
    assert sorted(namu["docs"]) == NAMES
    for name, doc in namu["docs"].items():
        rec = raw_record(name)
        assert doc["title"] == rec["title"]
        assert doc["doc_id"] == f"namuwiki:{rec['title']}"


@pytest.mark.parametrize("name", NAMES)
def test_text_is_kept(namu, name):
    """Most reference sentences have (almost) all their words in our cleaned text."""
    doc = namu["docs"][name]
    ours = set(WORD.findall(doc["text"]))
    sentences = reference_sentences(name, doc["title"])
    assert len(sentences) >= 5
    covered = [sum(w in ours for w in words) / len(words) >= 0.8 for words in sentences]
    assert sum(covered) / len(covered) >= 0.95, f"{name}: only {sum(covered)}/{len(covered)} sentences kept"


@pytest.mark.parametrize("name", NAMES)
def test_markup_is_gone(namu, name):
    text = namu["docs"][name]["text"]
    left = {m: text.count(m) for m in LEFTOVERS if m in text}
    links = LINK.findall(text) + FOOTNOTE.findall(text)
    assert not left and not links, f"{name}: leftover markup {left} {links[:5]}"


def test_markup_in_raw_records_is_real(namu):
    """The check above means something: the raw records are full of each kind of markup."""
    raw = "".join(raw_record(n)["text"] for n in NAMES)
    for m in LEFTOVERS:
        assert m in raw
    assert LINK.search(raw) and FOOTNOTE.search(raw)


def test_footnotes_removed_with_their_text(namu):
    # record1: "진짜로 코너 이름이 “……”[* 큰 따옴표도 포함된다.]이다" -> the footnote text is gone
    text = namu["docs"]["record1"]["text"]
    assert "진짜로 코너 이름이 “……”이다" in text
    assert "큰 따옴표도 포함된다" not in text


def test_link_labels_replace_links(namu):
    # record1: "[[김희원(코미디언)|김희원]]" -> "김희원"
    text = namu["docs"]["record1"]["text"]
    assert "김희원(코미디언)" not in text
    assert "김희원" in text


@pytest.mark.parametrize("name", NAMES)
def test_passages_cover_the_document(namu, name):
    """Chunking keeps every non-space character of the document, in order, in passages <= 900 chars."""
    doc = namu["docs"][name]
    chunks = namu["passages"][doc["doc_id"]]
    assert all(0 < len(c) <= 900 for c in chunks)
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    assert squash("".join(chunks)) == squash(doc["text"])
    if len(doc["text"]) > 2000:
        assert len(chunks) >= len(doc["text"]) // 900


def test_url_from_prefix_when_record_has_none(namu):
    doc = namu["docs"]["record5"]  # C++
    assert doc["url"] == "https://namu.wiki/w/C%2B%2B"


def ngram_coverage(reference: str, ours: str, n: int = 10) -> float:
    """Share of the reference's character n-grams (whitespace removed) that occur in our text."""
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    ref, got = squash(reference), squash(ours)
    grams = {ref[i:i + n] for i in range(len(ref) - n + 1)}
    return len(grams & {got[i:i + n] for i in range(len(got) - n + 1)}) / len(grams)


# Character 10-gram coverage of each reference rendering (its section-header lines left out) by our cleaned text.
# Before NamuMark literals kept their text: 1.000 0.934 1.000 0.971 0.959 0.959 0.992 (record1..7); after: 1.000
# 0.934 1.000 0.983 0.992 0.959 0.992. What is still missing: record2 and record6 lose text to rules the reference
# does not apply (backslash escapes, strikethrough content, colour names in table cells); the floor is set per record.
COVERAGE_FLOOR = {"record1": 0.99, "record2": 0.93, "record3": 0.99, "record4": 0.98, "record5": 0.99,
                  "record6": 0.95, "record7": 0.99}


@pytest.mark.parametrize("name", NAMES)
def test_reference_ngrams_are_kept(namu, name):
    doc = namu["docs"][name]
    ref = "\n".join(ln for ln in (NAMUWIKI_RAW / f"{name}.reference.txt").read_text(encoding="utf-8").splitlines()
                    if ln.strip() != doc["title"] and not ln.startswith(doc["title"] + " - "))
    cov = ngram_coverage(ref, doc["text"])
    assert cov >= COVERAGE_FLOOR.get(name, 0.95), f"{name}: {cov:.3f} of the reference's 10-grams kept"


def test_literals_keep_their_text(namu):
    """{{{std::string}}} and friends: the literal's text is kept verbatim (it used to become '{}')."""
    cpp, py = namu["docs"]["record5"]["text"], namu["docs"]["record4"]["text"]
    for literal in ("std::string", "std::auto_ptr", "std::vector<int>", "std::basic_string<char>"):
        assert literal in raw_record("record5")["text"] and literal in cpp, literal
    assert cpp.count("{}") <= raw_record("record5")["text"].count("{}"), "a literal became '{}'"
    assert "my-venv" in py and "#conda install <패키지명>" in py
    # code blocks ({{{#!syntax ...}}}) keep their code, uninterpreted ('__hello__' is not underline markup)
    assert 'print("Hello, world!")' in py and "import __hello__" in py


# The article's opening sentence, by record (the reference rendering's first sentence is not always it: it starts
# record4 with the note under a code block). Records whose lead has no sentence of its own are left out.
OPENING = {
    "record1": "개그콘서트의 전 코너.",
    "record3": "슈퍼로봇대전 Z 스페셜 디스크에서 나오는 특수부대.",
    "record4": "1991년에 발표된, MATLAB과 유사한 인터프리터 방식의 프로그래밍 언어.",
    "record5": "C언어를 부분집합으로 갖고 객체 지향 및 일반화 프로그래밍과 같은 멀티 패러다임을 지원하는 "
               "프로그래밍 언어이다.",
    "record7": "네이버 웹툰 덴마의 3부 첫 번째 에피소드이자 에 이은 2번째 장기 프리퀄 스토리.",
}


@pytest.mark.parametrize("name", sorted(OPENING))
def test_first_sentence_is_the_opening_sentence(namu, name):
    """Not a table header row (record7: '순번 해당 화 A.E.') nor the note under a code block (record4)."""
    if name not in namu["docs"]:
        pytest.skip(f"{name} not in the data folder")
    assert namu["first"][namu["docs"][name]["doc_id"]] == OPENING[name]


def test_table_rows_stay_lines_with_cell_separators(namu):
    text = namu["docs"]["record7"]["text"]
    assert "순번 | 해당 화 | A.E. | 화당 편수\n" in text
