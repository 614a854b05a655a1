"""How the decontamination rule (etl/decontaminate.py) behaves on real text, per n-gram size and threshold.

Evaluation passages: a random half of the AutoRAG OCR pages (``../shared/data/autorag/``, read as
the raw ``contents``); corpus: the passages our chunker made of all pages (layer ``passages`` of a
warehouse built on that corpus, e.g. ``benchmarks/bench_real_queries.py``'s ``<work>/autorag/wh_default``).
For each (n, threshold) it reports

* recall: the share of passages cut from an evaluation page that match some evaluation passage
  (they are that page's text, so every one should);
* false matches: the share of passages of the other pages that match (pages of one PDF share
  headers and boilerplate: none should, for the rule to drop copies and not neighbours);
* one quoted sentence: passages of other pages (those of >= 60 words) with one sentence of 8-30
  words of an evaluation page inserted in the middle: the share that match (none should). An
  evaluation page that is itself one such sentence counts as a match: the whole page is quoted.

    python benchmarks/bench_decontamination.py --warehouse /tmp/bench_h9/autorag/wh_default

``--pipeline SET_DIR`` (``bench_real_queries.py``'s ``<work>/autorag``, after its default run) also
runs the pipeline end to end with a ``[[decontaminate]]`` set made of a random half of the AutoRAG
questions (seed 1) and their gold pages: it copies ``wh_default`` to ``wh_decon``, runs
``python -m etl run`` with ``config.toml`` plus that set into ``export_decon``, and prints the
metadata counts, the exported records whose query is an evaluation question (must be 0) and the
largest 13-gram containment of an exported doc in an evaluation page (must be below the threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from etl.decontaminate import _EvalPassages, containment, question_key, word_ngrams  # noqa: E402
from etl.validate import normalized_text_key  # noqa: E402

AUTORAG = REPO.parent / "shared" / "data" / "autorag"


def main(argv: list[str] | None = None) -> int:
    """Print recall / false matches / quoted-sentence matches per (ngram, threshold); write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warehouse", type=Path, required=True, help="warehouse whose passages layer chunks autorag")
    ap.add_argument("--autorag", type=Path, default=AUTORAG)
    ap.add_argument("--ngrams", default="8,13")
    ap.add_argument("--thresholds", default="0.3,0.5,0.8")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "out" / "decontamination.json")
    ap.add_argument("--pipeline", type=Path, default=None, metavar="SET_DIR",
                    help="also run the pipeline with half the questions + their gold pages as an evaluation set")
    args = ap.parse_args(argv)
    con = duckdb.connect()
    pages = con.execute(f"SELECT doc_id, contents FROM read_parquet('{args.autorag / 'ocr_corpus_v3.parquet'}') "
                        "ORDER BY doc_id").fetchall()
    passages = con.execute("SELECT passage_id, doc_id, text FROM read_parquet(?) ORDER BY passage_id",
                           [str(args.warehouse / "layers" / "passages.parquet")]).fetchall()
    rng = random.Random(0)
    eval_ids = {d for d, _ in pages if rng.random() < 0.5}
    eval_texts = [t for d, t in pages if d in eval_ids and t and t.strip()]
    orig = lambda doc_id: doc_id.split(":", 1)[1]  # noqa: E731  "autorag:<page>" -> "<page>"
    inside = [(p, t) for p, d, t in passages if orig(d) in eval_ids]
    outside = [(p, t) for p, d, t in passages if orig(d) not in eval_ids]
    sentences = [s for t in eval_texts for s in re.split(r"(?<=[.!?])\s+", t) if 8 <= len(s.split()) <= 30]
    quoted = []
    for _p, t in outside:
        if len(t.split()) < 60:
            continue
        w = t.split()
        s = rng.choice(sentences)
        quoted.append(" ".join(w[: len(w) // 2] + [s] + w[len(w) // 2:]))
    print(f"{len(eval_texts)} evaluation pages; {len(inside)} passages cut from them, {len(outside)} from "
          f"the other {len(pages) - len(eval_texts)} pages; {len(sentences)} sentences of 8-30 words quoted "
          f"into {len(quoted)} passages of >= 60 words")
    results = []
    print(f"{'n':>3} {'thr':>5} {'recall':>8} {'false':>8} {'quoted':>8}")
    def share(ev: _EvalPassages, n: int, items: list[tuple[str, str]], thr: float) -> float:
        hit = sum(ev.match(normalized_text_key(t), word_ngrams(t, n), thr) is not None for _p, t in items)
        return hit / max(len(items), 1)

    for n in (int(x) for x in args.ngrams.split(",")):
        ev = _EvalPassages(eval_texts, n)
        for thr in (float(x) for x in args.thresholds.split(",")):
            row = {"ngram": n, "threshold": thr, "recall": share(ev, n, inside, thr),
                   "false_matches": share(ev, n, outside, thr),
                   "quoted_sentence_matches": share(ev, n, [("", t) for t in quoted], thr)}
            results.append(row)
            print(f"{n:>3} {thr:>5} {row['recall']:>8.1%} {row['false_matches']:>8.2%} "
                  f"{row['quoted_sentence_matches']:>8.2%}")
    out: dict = {"eval_pages": len(eval_texts), "inside": len(inside), "outside": len(outside), "results": results}
    if args.pipeline:
        out["pipeline"] = run_pipeline(args.pipeline, args.autorag)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


def run_pipeline(set_dir: Path, autorag: Path) -> dict:
    """The end-to-end run of ``--pipeline`` (see the module docstring); returns what it prints."""
    con = duckdb.connect()
    qa = con.execute(f"SELECT qid, query, retrieval_gt FROM read_parquet('{autorag / 'qa_v4.parquet'}') "
                     "ORDER BY qid").fetchall()
    pages = dict(con.execute(f"SELECT doc_id, contents FROM read_parquet('{autorag / 'ocr_corpus_v3.parquet'}')")
                 .fetchall())
    rng = random.Random(1)
    ev = [q for q in qa if rng.random() < 0.5]
    gold = sorted({p for q in ev for group in q[2] for p in group})
    eval_path = set_dir / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in
                                 [{"question": q[1]} for q in ev] + [{"context": pages[p]} for p in gold]),
                         encoding="utf-8")
    cfg = set_dir / "config_decon.toml"
    cfg.write_text((set_dir / "config.toml").read_text(encoding="utf-8") + "\n[[decontaminate]]\n"
                   f'name = "autorag_half"\npath = {json.dumps(str(eval_path))}\n'
                   'columns = { query = "question", text = "context" }\n', encoding="utf-8")
    wh, export = set_dir / "wh_decon", set_dir / "export_decon"
    shutil.rmtree(wh, ignore_errors=True)
    shutil.copytree(set_dir / "wh_default", wh, symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "etl", "run", "--config", str(cfg), "--set", f"paths.warehouse={str(wh)!r}",
                    "--set", f"paths.export={str(export)!r}", "--set", "run.progress=false", "--quiet"],
                   check=True, env=env)
    meta = json.loads((export / "metadata.json").read_text(encoding="utf-8"))
    recs = [json.loads(line) for f in ("train.jsonl", "val.jsonl")
            for line in (export / f).read_text(encoding="utf-8").splitlines()]
    keys = {question_key(q[1]) for q in ev}
    grams = [word_ngrams(pages[p], 13) for p in gold]
    res = {"eval_questions": len(ev), "eval_pages": len(gold), "questions_in": len(qa), "records": len(recs),
           "counts": meta["decontamination"]["autorag_half"],
           "records_with_an_eval_question": sum(question_key(r["query"]) in keys for r in recs),
           "max_doc_containment": round(max(containment(word_ngrams(d, 13), g) for r in recs for d in r["docs"]
                                            for g in grams), 3)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    raise SystemExit(main())
