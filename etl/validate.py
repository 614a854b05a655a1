"""Validate an exported JSONL file against the trainer's ``kd`` format and our own guarantees.

Each line must be an object with ``query`` (non-empty string), ``docs`` (list of non-empty
strings, no two equal after :func:`normalized_text_key`) and ``scores`` (finite numbers, same
length as ``docs``), optionally the trainer's ``first_rank`` (int). Our guarantees on top: an even
number of docs within [min_docs, max_docs] (the trainer pairs docs by a stride and silently drops
leftovers), the positive first with the strictly highest score, and scores in non-increasing order.
A doc repeated in one record, exactly or up to whitespace and case (two overlapping passages), is
a violation naming both slots, among the negatives as well as against the positive.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

ALLOWED_KEYS = {"query", "docs", "scores", "first_rank"}

# RE2's (DuckDB's) \s is ASCII only: tab, newline, form feed, carriage return, space. Not \v, not
# U+00A0, U+3000 or the other Unicode spaces Python's re treats as \s.
_RE2_SPACE = re.compile(r"[\t\n\f\r ]+")


def normalized_text_key(text: str) -> str:
    r"""The text two docs are compared by: NFC, all whitespace removed, lower-cased.

    The same rule as the SQL's ``lower(regexp_replace(text, '\s+', '', 'g'))`` on NFC text
    (``etl/sql/candidates.sql``'s ``text_key``), character for character:

    * whitespace is RE2's ``\s`` = ``[\t\n\f\r ]``, ASCII only (Python's ``\s`` and
      ``str.split()`` also take ``\v``, U+00A0, U+3000, ..., which the SQL keeps);
    * ``lower()`` is DuckDB's one-code-point-at-a-time mapping. Python's ``str.lower()`` differs in
      two places, both undone here: it maps U+0130 (İ) to ``i`` + U+0307 where DuckDB gives ``i``, and
      it lower-cases a word-final U+03A3 (Σ) to ``ς`` where DuckDB always gives ``σ``. Every other
      code point lower-cases alike (checked over all of Unicode in ``tests/test_validator.py``).
    """
    text = _RE2_SPACE.sub("", unicodedata.normalize("NFC", text))
    return text.replace("\u0130", "i").replace("\u03a3", "\u03c3").lower()


def duplicate_doc_slots(docs: list[str]) -> list[tuple[int, int]]:
    """``(first, later)`` 0-based slots of docs whose :func:`normalized_text_key` equals an earlier doc's."""
    first: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for i, d in enumerate(docs):
        key = normalized_text_key(d)
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def _describe_duplicates(docs: list[str], pairs: list[tuple[int, int]]) -> str:
    """``docs[0] (positive) = docs[3] (identical); docs[2] = docs[5] (equal after ...)``."""
    parts = []
    for a, b in pairs:
        how = "identical" if docs[a] == docs[b] else "equal after NFC, lower-case, whitespace removed"
        parts.append(f"docs[{a}]{' (positive)' if a == 0 else ''} = docs[{b}] ({how})")
    return "; ".join(parts)


@dataclass
class ValidationReport:
    """Result of validating one file."""

    path: str
    records: int = 0
    violations: list[str] = field(default_factory=list)
    total_violations: int = 0

    @property
    def ok(self) -> bool:
        """True when no record broke a rule."""
        return self.total_violations == 0 and self.records > 0

    def summary(self) -> dict[str, object]:
        """For metadata.json: ``{"records", "violations" (count), "first_violations" (listed ones)}``."""
        return {"records": self.records, "violations": self.total_violations,
                "first_violations": list(self.violations)}


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_record(rec: object, min_docs: int, max_docs: int) -> list[str]:
    """All rule violations of one parsed record (empty list when it is valid)."""
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    errs: list[str] = []
    missing = {"query", "docs", "scores"} - rec.keys()
    if missing:
        errs.append(f"missing keys {sorted(missing)}")
    extra = rec.keys() - ALLOWED_KEYS
    if extra:
        errs.append(f"unexpected keys {sorted(extra)}")
    if missing:
        return errs
    q, docs, scores = rec["query"], rec["docs"], rec["scores"]
    if not isinstance(q, str) or not q.strip():
        errs.append("query must be a non-empty string")
    if not isinstance(docs, list) or not all(isinstance(d, str) and d.strip() for d in docs):
        errs.append("docs must be a list of non-empty strings")
        return errs
    if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
        errs.append("scores must be a list of numbers")
        return errs
    if "first_rank" in rec and (not isinstance(rec["first_rank"], int) or isinstance(rec["first_rank"], bool)):
        errs.append("first_rank must be an integer")
    if len(docs) != len(scores):
        errs.append(f"len(docs)={len(docs)} != len(scores)={len(scores)}")
        return errs
    n = len(docs)
    if not (min_docs <= n <= max_docs):
        errs.append(f"{n} docs, expected between {min_docs} and {max_docs}")
    if n % 2:
        errs.append(f"odd number of docs ({n}): the trainer's stride pairing would drop one")
    dups = duplicate_doc_slots(docs)
    if dups:
        errs.append(f"duplicate doc texts in one record: {_describe_duplicates(docs, dups)}")
    if not all(math.isfinite(s) for s in scores):
        errs.append("non-finite score")
        return errs
    if n >= 2 and not scores[0] > max(scores[1:]):
        errs.append("the first doc (positive) must have the strictly highest score")
    if any(scores[i] < scores[i + 1] for i in range(1, n - 1)):
        errs.append("scores after the positive must be non-increasing")
    return errs


def validate_file(path: str | Path, min_docs: int = 6, max_docs: int = 32, max_listed: int = 20) -> ValidationReport:
    """Check every line of a JSONL file; the report lists the first ``max_listed`` violations."""
    rep = ValidationReport(path=str(path))
    p = Path(path)
    if not p.is_file():
        rep.violations.append(f"{path}: no such file")
        rep.total_violations = 1
        return rep
    with open(p, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                errs = ["blank line"]
            else:
                rep.records += 1
                try:
                    errs = check_record(json.loads(raw.decode("utf-8")), min_docs, max_docs)
                except UnicodeDecodeError:
                    errs = ["not valid UTF-8"]
                except json.JSONDecodeError as exc:
                    errs = [f"invalid JSON: {exc.msg}"]
            for e in errs:
                rep.total_violations += 1
                if len(rep.violations) < max_listed:
                    rep.violations.append(f"{p.name}:{line_no}: {e}")
    if rep.records == 0 and rep.total_violations == 0:
        rep.violations.append(f"{p.name}: no records")
        rep.total_violations = 1
    return rep
