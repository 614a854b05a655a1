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
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import duckdb

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from etl.decontaminate import _EvalPassages, word_ngrams  # noqa: E402
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"eval_pages": len(eval_texts), "inside": len(inside), "outside": len(outside),
                                     "results": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
