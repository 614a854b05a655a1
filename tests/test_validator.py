"""The output validator (etl/validate.py): every rule rejects a file that breaks it, and only it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etl_helpers import write_lines

from etl.validate import check_record, normalized_text_key, validate_file


def good_record(n: int = 8) -> dict:
    return {"query": "서울의 인구는?", "docs": [f"문서 {i}" for i in range(n)],
            "scores": [30.0] + [round(20.0 - i, 4) for i in range(n - 1)]}


def validate_one(tmp_path: Path, line: str | bytes, **kw):
    path = write_lines(tmp_path / "one.jsonl", [line])
    return validate_file(path, min_docs=kw.pop("min_docs", 6), max_docs=kw.pop("max_docs", 32))


def dumps(rec) -> str:
    return json.dumps(rec, ensure_ascii=False)


def test_valid_record_passes(tmp_path):
    rep = validate_one(tmp_path, dumps(good_record()))
    assert rep.ok, rep.violations
    assert (rep.records, rep.total_violations) == (1, 0)


def test_first_rank_is_allowed(tmp_path):
    rep = validate_one(tmp_path, dumps({**good_record(), "first_rank": 1}))
    assert rep.ok, rep.violations


def bad(**changes) -> dict:
    rec = good_record()
    for k, v in changes.items():
        if v is KeyError:
            rec.pop(k)
        else:
            rec[k] = v
    return rec


NAN = float("nan")
RULES = [
    # (id, record or raw line, expected message fragment)
    ("missing_docs", bad(docs=KeyError), "missing keys ['docs']"),
    ("missing_scores", bad(scores=KeyError), "missing keys ['scores']"),
    ("missing_query", bad(query=KeyError), "missing keys ['query']"),
    ("extra_key", bad(label=1), "unexpected keys ['label']"),
    ("length_mismatch", bad(scores=[30.0, 20.0, 10.0]), "len(docs)=8 != len(scores)=3"),
    ("odd_docs", {"query": "q", "docs": [f"d{i}" for i in range(7)], "scores": [30.0, 6, 5, 4, 3, 2, 1]},
     "odd number of docs (7)"),
    ("too_few_docs", {"query": "q", "docs": ["a", "b", "c", "d"], "scores": [30.0, 3, 2, 1]},
     "4 docs, expected between 6 and 32"),
    ("nan_score", "NAN", "non-finite score"),
    ("inf_score", "INF", "non-finite score"),
    ("positive_not_highest", bad(scores=[10.0, 20.0, 9, 8, 7, 6, 5, 4]),
     "the first doc (positive) must have the strictly highest score"),
    ("positive_tied", bad(scores=[20.0, 20.0, 9, 8, 7, 6, 5, 4]),
     "the first doc (positive) must have the strictly highest score"),
    ("unsorted_scores", bad(scores=[30.0, 5, 9, 8, 7, 6, 5, 4]), "scores after the positive must be non-increasing"),
    ("empty_doc", bad(docs=["문서"] + [""] + [f"d{i}" for i in range(6)]), "docs must be a list of non-empty strings"),
    ("whitespace_doc", bad(docs=["문서", "  \n"] + [f"d{i}" for i in range(6)]),
     "docs must be a list of non-empty strings"),
    ("duplicate_docs", bad(docs=["같은 문서"] * 2 + [f"d{i}" for i in range(6)]), "duplicate doc texts in one record"),
    # the same passage text twice, once with other line breaks / spacing / case (overlapping paragraphs)
    ("duplicate_docs_whitespace", bad(docs=["서울은 수도이다.\n\n인구가 많다.", "d1", "d2",
                                             "서울은 수도이다. 인구가  많다.", "d4", "d5", "d6", "d7"]),
     "docs[0] (positive) = docs[3] (equal after NFC, lower-case, whitespace removed)"),
    ("duplicate_negatives_case", bad(docs=["문서", "d1", "Seoul Tower 타워", "d3", "d4", "d5",
                                            "SEOUL\tTOWER 타워", "d7"]),
     "docs[2] = docs[6] (equal after NFC, lower-case, whitespace removed)"),
    ("duplicate_docs_nfd", bad(docs=["한국어 문서", "\u1112\u1161\u11ab\u1100\u116e\u11a8\u110b\u1165 문서"]
                                     + [f"d{i}" for i in range(6)]),
     "docs[0] (positive) = docs[1] (equal after NFC"),
    ("empty_query", bad(query="   "), "query must be a non-empty string"),
    ("string_scores", bad(scores=["30"] * 8), "scores must be a list of numbers"),
    ("bool_scores", bad(scores=[True] * 8), "scores must be a list of numbers"),
    ("not_object", [1, 2, 3], "record is not a JSON object"),
    ("bad_first_rank", bad(first_rank="1"), "first_rank must be an integer"),
]


@pytest.mark.parametrize("rec,fragment", [pytest.param(r, f, id=i) for i, r, f in RULES])
def test_each_rule_rejects(tmp_path, rec, fragment):
    if rec == "NAN":
        line = dumps(good_record()).replace("20.0", "NaN", 1)
    elif rec == "INF":
        line = dumps(good_record()).replace("20.0", "Infinity", 1)
    else:
        line = dumps(rec)
    rep = validate_one(tmp_path, line)
    assert not rep.ok
    assert rep.total_violations == 1, rep.violations
    assert fragment in rep.violations[0], rep.violations
    assert rep.violations[0].startswith("one.jsonl:1: ")


def test_invalid_json_line(tmp_path):
    rep = validate_one(tmp_path, '{"query": "q", "docs": [')
    assert not rep.ok
    assert rep.total_violations == 1
    assert "invalid JSON" in rep.violations[0]


def test_invalid_utf8_line(tmp_path):
    rep = validate_one(tmp_path, b'{"query": "\xff\xfe", "docs": [], "scores": []}')
    assert not rep.ok
    assert rep.violations == ["one.jsonl:1: not valid UTF-8"]


def test_blank_line_is_a_violation(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [dumps(good_record()), "", dumps(good_record())])
    rep = validate_file(path)
    assert rep.records == 2
    assert rep.violations == ["f.jsonl:2: blank line"]


def test_empty_file_fails(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    rep = validate_file(path)
    assert not rep.ok
    assert rep.violations == ["empty.jsonl: no records"]


def test_missing_file_fails(tmp_path):
    rep = validate_file(tmp_path / "nope.jsonl")
    assert not rep.ok and rep.total_violations == 1


def test_violations_are_counted_per_line_and_listing_is_capped(tmp_path):
    lines = [dumps(good_record())] + [dumps(bad(scores=[1.0, 2.0, 0, 0, 0, 0, 0, 0]))] * 30
    path = write_lines(tmp_path / "many.jsonl", lines)
    rep = validate_file(path, max_listed=5)
    assert rep.records == 31
    assert rep.total_violations == 30
    assert len(rep.violations) == 5
    assert rep.violations[0].startswith("many.jsonl:2: ")


def test_check_record_exact_docs_window():
    rec = good_record(8)
    assert check_record(rec, 8, 8) == []
    assert check_record(rec, 10, 12) == ["8 docs, expected between 10 and 12"]


def test_every_duplicate_pair_of_a_record_is_named_in_one_violation(tmp_path):
    rec = bad(docs=["가 나", "d1", "가나", "d3", "D1", "d5", "d6", "d7"])
    rep = validate_one(tmp_path, dumps(rec))
    assert rep.total_violations == 1
    assert rep.violations[0].endswith("docs[0] (positive) = docs[2] (equal after NFC, lower-case, whitespace removed); "
                                      "docs[1] = docs[4] (equal after NFC, lower-case, whitespace removed)")


def test_docs_differing_beyond_whitespace_and_case_are_distinct(tmp_path):
    rec = bad(docs=["서울 타워", "서울 타워.", "서울\u00a0타워", "서울\u3000타워", "서울\v타워", "d5", "d6", "d7"])
    rep = validate_one(tmp_path, dumps(rec))
    assert rep.ok, rep.violations  # NBSP, U+3000 and \v are not \s for the SQL either


def test_normalized_text_key_is_the_sql_rule_for_every_code_point():
    """Python's key = DuckDB's lower(regexp_replace(nfc_normalize(t), '\\s+', '', 'g')) for every code point
    (between a letter and a word-final capital sigma, so combining marks compose and Σ is word-final)."""
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        r"SELECT c, lower(regexp_replace(nfc_normalize('A' || chr(c::INTEGER) || ' Σ'), '\s+', '', 'g')) "
        "FROM range(1, 1114112) t(c) WHERE c < 55296 OR c > 57343").fetchall()
    con.close()
    assert len(rows) == 1112063
    differ = [hex(c) for c, sql_key in rows if normalized_text_key("A" + chr(c) + " Σ") != sql_key]
    assert differ == []


def test_normalized_text_key_examples():
    assert normalized_text_key(" Seoul\t\r\n\f타워 ") == "seoul타워"
    assert normalized_text_key("İSTANBUL ΟΔΟΣ") == "istanbulοδοσ"  # DuckDB's lower: i, and σ even word-final
    assert normalized_text_key("\u1112\u1161\u11ab") == "한"  # NFC
    assert normalized_text_key("a\u00a0b\u3000c\vd") == "a\u00a0b\u3000c\vd"
