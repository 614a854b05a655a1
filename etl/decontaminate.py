r"""Stage ``decontamination``: what of the corpus equals or heavily overlaps an evaluation set.

Each ``[[decontaminate]]`` file (JSONL, ``.json`` or ``.parquet``, read with the query-file reader)
holds evaluation questions (``query``) and/or passages (``text``), field names remapped by its
``columns`` table. The layer lists, per evaluation set:

* ``kind = 'question'``: every distinct question key (:func:`question_key`: NFC, every run of
  whitespace one space, stripped, lower-cased). ``etl/sql/candidates.sql`` drops a query whose
  key is among them (``contaminated_query`` on its positive).
* ``kind = 'passage'``: every corpus passage (layer ``passages``) that matches an evaluation
  passage: ``match = 'exact'`` when their :func:`etl.validate.normalized_text_key` are equal,
  ``'ngram'`` when they share at least ``decontamination.min_containment`` of the word
  ``decontamination.ngram``-grams of the shorter of the two (words: ``\w+`` runs of the NFC,
  lower-cased text). Such a passage is never a positive (``contaminated_positive``: the query is
  dropped) nor a negative (``contaminated``). A text with fewer words than ``ngram`` has no
  n-grams and is matched exactly only.

Why 13-grams at 50 % of the shorter text: an evaluation passage (a KorQuAD / MIRACL paragraph)
copied into the corpus, whole or cut into chunks, shares nearly all of its 13-grams with each
chunk, while a corpus passage that quotes one sentence of it (15-25 words, so 3-13 shared
13-grams out of the ~60-150 of a passage) stays far below half: documents are not dropped for
one shared sentence (measured in tests/test_decontaminate.py).

``sha256`` is the SHA-256 of the excluded text as compared (question key / normalized text key),
``eval_sha256`` that of the evaluation text it matched: the export's ``decontamination.json``
manifest lists them, so a user can check an evaluation set against the export without the texts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config, DecontaminateConfig
from .ingest import ColumnTracker, check_parquet_columns, file_kind, iter_records
from .validate import normalized_text_key

SCHEMA = pa.schema([
    ("name", pa.string()), ("kind", pa.string()), ("key", pa.string()), ("passage_id", pa.string()),
    ("match", pa.string()), ("containment", pa.float64()), ("sha256", pa.string()),
    ("eval_sha256", pa.string()),
])

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def _duck_lower(s: str) -> str:
    """``lower()`` as DuckDB does it (see :func:`etl.validate.normalized_text_key`)."""
    return s.replace("\u0130", "i").replace("\u03a3", "\u03c3").lower()


def question_key(q: str) -> str:
    r"""NFC, whitespace runs -> one space, stripped, lower-cased.

    The SQL twin (candidates.sql): ``lower(trim(regexp_replace(nfc_normalize(q),
    '[\s\pZ\x{0B}\x{1C}-\x{1F}\x{85}]+', ' ', 'g')))``: the class lists exactly the characters
    Python's ``\s`` matches.
    """
    return _duck_lower(_WS.sub(" ", unicodedata.normalize("NFC", q)).strip())


def word_ngrams(text: str, n: int) -> set[str]:
    r"""The distinct word ``n``-grams of ``text`` (words: ``\w+`` runs of the NFC, lower-cased text)."""
    words = _WORD.findall(unicodedata.normalize("NFC", text).lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def containment(a: set[str], b: set[str]) -> float:
    """Shared n-grams over the n-grams of the smaller set (0 when either is empty)."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()


def input_signature(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(name, path, size, mtime_ns) of each evaluation file (missing files count as size -1)."""
    out = []
    for d in cfg.decontaminate:
        p = Path(d.path)
        st = p.stat() if p.exists() else None
        out.append((d.name, str(p.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return out


def read_eval_set(d: DecontaminateConfig) -> tuple[list[str], list[str], dict[str, int]]:
    """(questions, passages, counts) of one evaluation file; unusable records are counted, not fatal.

    A missing file, or a mapped column the file lacks, is an error naming the set.
    """
    path = Path(d.path)
    what = f"decontaminate '{d.name}'"
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {d.path!r}")
    check_parquet_columns(what, d.columns, path)
    kind = file_kind(path)
    kind = "jsonl" if kind == "unknown" else kind
    seen = ColumnTracker(d.columns if kind != "parquet" else {})
    questions: list[str] = []
    passages: list[str] = []
    counts = {"records": 0, "rejected": 0}
    for _line_no, rec, err, _raw in iter_records(path, kind):
        counts["records"] += 1
        if err is not None or not isinstance(rec, dict):
            counts["rejected"] += 1
            continue
        seen.see(rec)
        q, t = rec.get(d.column("query")), rec.get(d.column("text"))
        got = False
        if isinstance(q, str) and q.strip():
            questions.append(q)
            got = True
        if isinstance(t, str) and t.strip():
            passages.append(t)
            got = True
        if not got:
            counts["rejected"] += 1
    seen.check(what, path)
    return questions, passages, counts


class _EvalPassages:
    """One evaluation set's passages, indexed by normalized text and by n-gram."""

    def __init__(self, texts: list[str], n: int) -> None:
        self.exact: dict[str, str] = {}
        self.grams: list[set[str]] = []
        self.shas: list[str] = []
        self.index: dict[str, list[int]] = defaultdict(list)
        for text in dict.fromkeys(texts):
            key = normalized_text_key(text)
            sha = _sha(key)
            self.exact.setdefault(key, sha)
            grams = word_ngrams(text, n)
            i = len(self.grams)
            self.grams.append(grams)
            self.shas.append(sha)
            for g in grams:
                self.index[g].append(i)

    def match(self, key: str, grams: set[str], threshold: float) -> tuple[str, float, str] | None:
        """(match, containment, eval_sha256) of a corpus passage, or None."""
        if key in self.exact:
            return "exact", 1.0, self.exact[key]
        hits: Counter[int] = Counter()
        for g in grams:
            for i in self.index.get(g, ()):
                hits[i] += 1
        best: tuple[float, int] | None = None
        for i, shared in hits.items():
            c = shared / min(len(grams), len(self.grams[i]))
            if c >= threshold and (best is None or c > best[0]):
                best = (c, i)
        return ("ngram", round(best[0], 6), self.shas[best[1]]) if best else None


def write_decontamination(cfg: Config, con: Any, out: Path) -> dict[str, Any]:
    """Write the ``decontamination`` layer (empty without ``[[decontaminate]]``); return per-set counts."""
    rows: list[dict[str, Any]] = []
    sets: dict[str, dict[str, int]] = {}
    evals: list[tuple[str, _EvalPassages]] = []
    n = cfg.decontamination.ngram
    for d in cfg.decontaminate:
        questions, passages, counts = read_eval_set(d)
        keys = dict.fromkeys(k for k in (question_key(q) for q in questions) if k)
        for k in keys:
            rows.append({"name": d.name, "kind": "question", "key": k, "sha256": _sha(k), "match": "exact"})
        sets[d.name] = {**counts, "questions": len(keys), "passages": len(set(passages)), "passages_matched": 0}
        if passages:
            evals.append((d.name, _EvalPassages(passages, n)))
    if evals:
        cur = con.execute("SELECT passage_id, text FROM passages ORDER BY passage_id")
        while batch := cur.fetchmany(10_000):
            for pid, text in batch:
                key = normalized_text_key(text)
                grams = word_ngrams(text, n)
                for name, ev in evals:
                    m = ev.match(key, grams, cfg.decontamination.min_containment)
                    if m is not None:
                        rows.append({"name": name, "kind": "passage", "passage_id": pid, "match": m[0],
                                     "containment": m[1], "sha256": _sha(key), "eval_sha256": m[2]})
                        sets[name]["passages_matched"] += 1
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out, compression="zstd")
    return {"sets": sets}


def stats(cfg: Config, con: Any, read_counts: dict[str, dict[str, int]] | None = None) -> dict[str, dict[str, int]]:
    """Per evaluation set: what was read (``read_counts``: the stage's extra) and what was excluded.

    The exclusion counts come from ``etl/sql/stats/decontamination.sql``; every configured set has an
    entry, with zeros where nothing matched.
    """
    sql = (cfg.sql_dir / "stats" / "decontamination.sql").read_text(encoding="utf-8").strip().rstrip(";")
    res = con.execute(sql)
    cols = [c[0] for c in res.description]
    found = {r[0]: dict(zip(cols[1:], (int(x) for x in r[1:]), strict=True)) for r in res.fetchall()}
    zero = dict.fromkeys(cols[1:], 0)
    out: dict[str, dict[str, int]] = {}
    for d in cfg.decontaminate:
        read = (read_counts or {}).get(d.name, {})
        out[d.name] = {"records_read": int(read.get("records", 0)), "records_rejected": int(read.get("rejected", 0)),
                       "eval_passages": int(read.get("passages", 0)), **zero, **found.get(d.name, {})}
    return out


def write_manifest(cfg: Config, con: Any, path: Path) -> dict[str, Any]:
    """Write ``decontamination.json``: the SHA-256 of every excluded query and passage, per set.

    ``queries``: SHA-256 of each excluded query's normalized text (:func:`question_key`), which is
    also the hash of the evaluation question it equals. ``passages``: per excluded corpus passage,
    its id, the SHA-256 of its :func:`etl.validate.normalized_text_key`, how it matched, the
    containment, and the SHA-256 of the evaluation passage it matched. Returns a short summary.
    """
    import json

    from .warehouse import atomic_write_text

    qsql = ("SELECT d.name, list(DISTINCT d.sha256 ORDER BY d.sha256) FROM decontamination d "
            "JOIN (SELECT lower(trim(regexp_replace(nfc_normalize(query), "
            "'[\\s\\pZ\\x{0B}\\x{1C}-\\x{1F}\\x{85}]+', ' ', 'g'))) AS key FROM queries) q "
            "ON d.kind = 'question' AND q.key = d.key GROUP BY 1")
    psql = ("SELECT name, list({'passage_id': passage_id, 'sha256': sha256, 'match': match, "
            "'containment': containment, 'eval_sha256': eval_sha256} ORDER BY passage_id) "
            "FROM decontamination WHERE kind = 'passage' GROUP BY 1")
    queries = dict(con.execute(qsql).fetchall())
    passages = dict(con.execute(psql).fetchall())
    doc = {
        "hash": "sha256",
        "query_normalization": "NFC, whitespace runs -> one space, stripped, lower-cased",
        "passage_normalization": "NFC, all whitespace removed, lower-cased (etl.validate.normalized_text_key)",
        "ngram": cfg.decontamination.ngram, "min_containment": cfg.decontamination.min_containment,
        "sets": {d.name: {"path": str(Path(d.path).resolve()),
                          "queries": queries.get(d.name, []), "passages": passages.get(d.name, [])}
                 for d in cfg.decontaminate},
    }
    text = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    atomic_write_text(path, text)
    return {"path": path.name, "sha256": _sha(text),
            "queries": sum(len(v) for v in queries.values()), "passages": sum(len(v) for v in passages.values())}
