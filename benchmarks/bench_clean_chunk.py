r"""Clean + chunk: the DuckDB SQL models vs the same rules in pandas / Python ``re``.

Both paths start from the same ``raw_documents`` Parquet layer (ingest is Python JSON parsing in
both designs, so it is timed separately) and write the same layers (clean_documents, documents,
quarantine, passages) as zstd Parquet:

* SQL:    ``etl.pipeline.run_stage`` for clean_documents, documents, quarantine, passages (the real
          ``etl/sql/*.sql`` files through Warehouse.materialize_sql, contract checks included);
* pandas: ``pd.read_parquet`` + ``Series.str.replace`` with each regexp step of
          ``etl/sql/clean_documents.sql`` translated to Python ``re`` (RE2's ``\s`` is ASCII
          ``[\t\n\f\r ]``, spelled out) + the chunking of ``etl/sql/passages.sql`` in Python.

Then the outputs are compared row by row ((doc_id, text) and (passage_id, text) set differences)
and, with ``--large``, the SQL path is timed again at 1M documents.

    python benchmarks/bench_clean_chunk.py                      # 100k docs
    python benchmarks/bench_clean_chunk.py --docs 10000         # quick
    python benchmarks/bench_clean_chunk.py --large 1000000      # + SQL path at 1M docs
"""

from __future__ import annotations

import argparse
import re
import time
import unicodedata
from pathlib import Path
from urllib.parse import quote

from common import cpu_seconds, dir_size, ensure_corpus, load, machine, make_config, run_stages, save_json, table

WS = r"[\t\n\f\r ]"  # RE2 \s
ZSTD_LEVEL = 1  # the same as the SQL layers (etl.warehouse.LAYER_PARQUET) and pyarrow's default

# sha256 (first 16 hex) of the SQL files this translation was written against; the SQL models are
# edited concurrently, so a mismatch is reported (and the row comparison shows what drifted).
TRANSLATED_FROM = {"clean_documents.sql": "6ea7b04232faeccf", "passages.sql": "931ab7f7cdbb3bb9"}


def sql_drift(sql_dir: Path) -> list[str]:
    """SQL files changed since the pandas translation was written."""
    import hashlib

    return [name for name, h in TRANSLATED_FROM.items()
            if hashlib.sha256((sql_dir / name).read_bytes()).hexdigest()[:16] != h]


# ---- the pandas / re implementation of etl/sql/clean_documents.sql -----------------------------------
def _c(p: str, flags: int = 0) -> re.Pattern:
    return re.compile(p, flags)


# NamuMark literals ({{{...}}} and {{{#!syntax ...}}}): their text is kept verbatim, its markup characters hidden
# from the later steps as noncharacters U+FDD2.. and put back at the end (noncharacters in the input are removed)
LITERAL_CHARS = "[]{}<>|'_^,~-=#*."
_HIDE = str.maketrans(LITERAL_CHARS, "".join(chr(0xFDD2 + i) for i in range(len(LITERAL_CHARS))))
_SHOW = {v: k for k, v in _HIDE.items()}
CSS_COLOURS = "|".join("""
    aliceblue antiquewhite aqua aquamarine azure beige bisque black blanchedalmond blue blueviolet brown
    burlywood cadetblue chartreuse chocolate coral cornflowerblue cornsilk crimson cyan darkblue darkcyan
    darkgoldenrod darkgray darkgreen darkgrey darkkhaki darkmagenta darkolivegreen darkorange darkorchid
    darkred darksalmon darkseagreen darkslateblue darkslategray darkslategrey darkturquoise darkviolet
    deeppink deepskyblue dimgray dimgrey dodgerblue firebrick floralwhite forestgreen fuchsia gainsboro
    ghostwhite gold goldenrod gray green greenyellow grey honeydew hotpink indianred indigo ivory khaki
    lavender lavenderblush lawngreen lemonchiffon lightblue lightcoral lightcyan lightgoldenrodyellow
    lightgray lightgreen lightgrey lightpink lightsalmon lightseagreen lightskyblue lightslategray
    lightslategrey lightsteelblue lightyellow lime limegreen linen magenta maroon mediumaquamarine
    mediumblue mediumorchid mediumpurple mediumseagreen mediumslateblue mediumspringgreen mediumturquoise
    mediumvioletred midnightblue mintcream mistyrose moccasin navajowhite navy oldlace olive olivedrab
    orange orangered orchid palegoldenrod palegreen paleturquoise palevioletred papayawhip peru pink plum
    powderblue purple rebeccapurple red rosybrown royalblue saddlebrown salmon sandybrown seagreen seashell
    sienna silver skyblue slateblue slategray slategrey snow springgreen steelblue tan teal thistle tomato
    transparent turquoise violet wheat white whitesmoke yellow yellowgreen
""".split())  # the CSS colour names


def _literal(m: re.Match) -> str:
    return (m.group(1) if m.group(1) is not None else m.group(2)).translate(_HIDE)


CLEAN_STEPS: list[tuple[str, list[tuple[re.Pattern, object]]]] = [
    ("noncharacters", [(_c("[\ufdd0-\ufdef]"), "")]),
    ("s1 {{{ wrappers / literals", [
        (_c(rf"\{{\{{\{{#!(?:wiki|folding|style)[^\n]*|\{{\{{\{{#!html|\{{\{{\{{[+-][1-5]{WS}?"
            rf"|\{{\{{\{{(?:#(?:[0-9A-Fa-f]{{8}}|[0-9A-Fa-f]{{6}}|[0-9A-Fa-f]{{3,4}}|(?i:{CSS_COLOURS})),?)+{WS}"), ""),
        (_c(r"(?s)\{\{\{#!syntax(?:[ \t]+[^ \t\n]*)?[ \t]*\n?(.*?)\n?\}\}\}|\{\{\{(.*?)\n?\}\}\}"), _literal)]),
    ("s2 comments/rules", [(_c(rf"(?m)^(##[^\n]*|-{{4,}}{WS}*)$"), "")]),
    ("s3 braces/ref/templates", [(_c(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
                                 (_c(r"\{\{[^{}]*\}\}"), ""),
                                 (_c(r"\{\{\{|\}\}\}"), "")]),
    ("s4 footnotes", [(_c(r"\[\*[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]"), "")]),
    ("s5 file/category", [(_c(rf"\[\[{WS}*(파일|분류|File|Category|이미지|Image){WS}*:[^\]]*\]\]"), "")]),
    ("s6 links", [(_c(r"\[\[(?:[^\]|]*\|)?((?:[^\[\]|]|\[[^\[\]]*\])*)\]\]"), r"\1")]),
    ("s7 macros", [(_c(r"\[(br|BR)\]"), "\n"), (_c(r"\[[A-Za-z가-힣_]+(\((?:[^()\]]|\([^()]*\))*\))?\]"), "")]),
    ("s8 headings", [(_c(r"(?m)^[ \t]*=(?:[ \t]*=)*[ \t]*#?[^=\n]+?#?[ \t]*=(?:[ \t]*=)*[ \t]*$"), "\n")]),
    ("s9 tables/tags", [(_c(r"<[^<>\n]{0,120}>"), ""),
                        (_c(r"\|\|[ \t]*\n([ \t]*[^|\t\n\f\r ])"), "||\n\n\\1"),
                        (_c(r"\|\|(?:[ \t]*\|\|)+"), "||"),
                        (_c(r"(?m)^[ \t]*\|\||\|\|[ \t]*$"), ""),
                        (_c(r"\|\|"), " | ")]),
    ("s10 text styles/lists", [(_c(r"~~[^~\n]*~~"), ""),
                               (_c(r"(^|[^-])--[^-\t\n\f\r ][^\n]*?--"), r"\1"),
                               (_c(r"'''|''|__|\^\^|,,"), ""),
                               (_c(r"(^|\n)([ \t]*>[^\n]*)\n([ \t]*[^>\t\n\f\r ])"), "\\1\\2\n\n\\3"),
                               (_c(r"(?m)^[ \t]*(>+[ \t]*|\*+[ \t]+|[0-9]+\.[ \t]+)"), "")]),
    ("s11 whitespace", [(_c("[ \t\x0b\f\u00a0\u3000]+"), " "), (_c(r" ?\n ?"), "\n"), (_c(r"\n{3,}"), "\n\n")]),
    ("s12 literals back", [(_c("[\ufdd2-\ufde2]+"), lambda m: m.group(0).translate(_SHOW))]),
]
REDIRECT = _c(rf"^{WS}*#(?i:redirect|넘겨주기){WS}")
TITLE_WS = _c(rf"{WS}+")
LINE_BREAK = _c(rf"{WS}*\n{WS}*")
SENT_END = _c(r"([.!?。…]) +")


def pandas_clean(raw_path: Path, cfg, out_dir: Path) -> dict[str, int]:
    """clean_documents + documents + quarantine as pandas code; writes the three Parquet files."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = pd.read_parquet(raw_path)
    bad = raw[raw["reject_reason"].notna()]
    df = raw[raw["reject_reason"].isna()].copy()
    del raw
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    df["title"] = df["title"].map(nfc).str.replace(TITLE_WS, " ", regex=True).str.strip(" ")
    df["is_redirect"] = df["text"].str.slice(0, 200).str.contains(REDIRECT, regex=True)
    text = df["text"].str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False).map(nfc)
    df = df.drop(columns=["text"])
    # doc ids: source:<orig_id or title>, repeated ids get ~N by (file, line_no)
    df["base_id"] = df["orig_id"].fillna(df["title"]).str.replace("~", "~~", regex=False)
    df = df.assign(text=text).sort_values(["source", "file", "line_no"], kind="stable")
    df["id_rank"] = df.groupby(["source", "base_id"], sort=False).cumcount() + 1
    for _name, steps in CLEAN_STEPS:
        for pat, repl in steps:
            df["text"] = df["text"].str.replace(pat, repl, regex=True)
    df["text"] = df["text"].str.strip(" \n")
    df["doc_id"] = df["source"] + ":" + df["base_id"] + df["id_rank"].map(lambda r: f"~{r}" if r > 1 else "")
    prefixes = {s.name: s.url_prefix for s in cfg.sources}
    missing = df["url"].isna()
    df.loc[missing, "url"] = [prefixes.get(s, "") + quote(t.replace(" ", "_"), safe="")
                              for s, t in zip(df.loc[missing, "source"], df.loc[missing, "title"], strict=True)]
    n = df["text"].str.len()
    df["n_chars"] = n
    c = cfg.clean
    reason = pd.Series(pd.NA, index=df.index, dtype="object")
    reason = reason.mask(reason.isna() & (n > c.max_chars), "too_long")
    reason = reason.mask(n < c.min_chars, "too_short")
    reason = reason.mask(n == 0, "empty_text")
    if c.drop_redirects:
        reason = reason.mask(df["is_redirect"], "redirect")
    reason = reason.mask(~df["namespace"].isin(c.namespaces), "namespace")
    if c.dedupe:  # first by (source, file, line_no) wins; df is in that order
        ok = reason.isna()
        dup = ok & df["text"].where(ok).duplicated(keep="first")
        reason = reason.mask(dup, "duplicate_text")
    df["drop_reason"] = reason
    cols = ["doc_id", "source", "orig_id", "url", "title", "language", "namespace", "text", "n_chars", "file",
            "line_no", "drop_reason"]
    clean = df[cols].sort_values("doc_id", kind="stable")
    clean.to_parquet(out_dir / "clean_documents.parquet", compression="zstd", compression_level=ZSTD_LEVEL, index=False)
    docs = clean[clean["drop_reason"].isna()][["doc_id", "source", "orig_id", "url", "title", "language",
                                               "text", "n_chars"]]
    docs.to_parquet(out_dir / "documents.parquet", compression="zstd", compression_level=ZSTD_LEVEL, index=False)
    dropped = clean[clean["drop_reason"].notna()]
    quarantine = pd.concat([
        pd.DataFrame({"stage": "ingest", "source": bad["source"], "file": bad["file"], "line_no": bad["line_no"],
                      "doc_id": None, "title": None, "reason": bad["reject_reason"], "excerpt": bad["raw_excerpt"]}),
        pd.DataFrame({"stage": "clean", "source": dropped["source"], "file": dropped["file"],
                      "line_no": dropped["line_no"], "doc_id": dropped["doc_id"], "title": dropped["title"],
                      "reason": dropped["drop_reason"], "excerpt": dropped["text"].str.slice(0, 200)}),
    ]).sort_values(["stage", "source", "file", "line_no"], kind="stable")
    quarantine.to_parquet(out_dir / "quarantine.parquet", compression="zstd", compression_level=ZSTD_LEVEL, index=False)
    return {"clean_documents": len(clean), "documents": len(docs), "quarantine": len(quarantine)}


def chunk_text(text: str, target: int, max_chars: int, min_chars: int) -> list[str]:
    """etl/sql/passages.sql for one document, in Python (line breaks kept as newlines)."""
    piece = max_chars - target - min_chars
    sents = SENT_END.sub("\\1\x1f", LINE_BREAK.sub("\x1e\x1f", text)).split("\x1f")
    chunks: list[list[str]] = []
    last_raw = -1
    offset = 0
    for s in sents:
        line_end = s.endswith("\x1e")
        s = s.replace("\x1e", "").strip(" ")
        if not s:
            continue
        n = max(1, -(-len(s) // piece))
        for k in range(n):
            p = s[k * piece:(k + 1) * piece]
            raw_chunk = offset // target
            if raw_chunk != last_raw:
                chunks.append([])
                last_raw = raw_chunk
            chunks[-1].append(p + ("\n" if line_end and k == n - 1 else " "))
            offset += len(p) + 1
    out = ["".join(c).rstrip(" \n") for c in chunks]
    if len(out) > 1 and len(out[-1]) < min_chars:
        last = out.pop()
        out[-1] = out[-1] + "\n" + last
    return out


def pandas_chunk(docs_path: Path, cfg, out_dir: Path) -> int:
    """The passages layer in pandas/Python; writes passages.parquet."""
    import pandas as pd

    docs = pd.read_parquet(docs_path, columns=["doc_id", "source", "title", "text"])
    c = cfg.chunk
    ids, srcs, titles, nos, texts = [], [], [], [], []
    for doc_id, source, title, text in zip(docs["doc_id"], docs["source"], docs["title"], docs["text"],
                                           strict=True):
        for i, t in enumerate(chunk_text(text, c.target_chars, c.max_chars, c.min_chars)):
            ids.append(f"{doc_id}#{i}")
            srcs.append(source)
            titles.append(title)
            nos.append(i)
            texts.append(t)
    passages = pd.DataFrame({"passage_id": ids, "doc_id": [i.rsplit("#", 1)[0] for i in ids], "source": srcs,
                             "title": titles, "chunk_no": pd.array(nos, dtype="int32"), "text": texts,
                             "n_chars": [len(t) for t in texts]})
    passages = passages.sort_values("passage_id", kind="stable")
    passages.to_parquet(out_dir / "passages.parquet", compression="zstd", compression_level=ZSTD_LEVEL, index=False)
    return len(passages)


# ---- comparison ----------------------------------------------------------------------------------
def compare(sql_layers: Path, pd_dir: Path) -> dict[str, int]:
    """Rows in one output but not the other, for documents and passages (0 = identical)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    out = {}
    for layer, key in (("documents", "doc_id"), ("passages", "passage_id")):
        a, b = f"'{sql_layers / (layer + '.parquet')}'", f"'{pd_dir / (layer + '.parquet')}'"
        out[f"{layer}_only_sql"] = con.execute(
            f"SELECT count(*) FROM (SELECT {key}, text FROM {a} EXCEPT SELECT {key}, text FROM {b})").fetchone()[0]
        out[f"{layer}_only_pandas"] = con.execute(
            f"SELECT count(*) FROM (SELECT {key}, text FROM {b} EXCEPT SELECT {key}, text FROM {a})").fetchone()[0]
    out["quarantine_reason_diff"] = con.execute(
        f"SELECT count(*) FROM ((SELECT stage, reason, file, line_no FROM '{sql_layers / 'quarantine.parquet'}' "
        f"EXCEPT ALL SELECT stage, reason, file, line_no FROM '{pd_dir / 'quarantine.parquet'}') UNION ALL "
        f"(SELECT stage, reason, file, line_no FROM '{pd_dir / 'quarantine.parquet'}' EXCEPT ALL "
        f"SELECT stage, reason, file, line_no FROM '{sql_layers / 'quarantine.parquet'}'))").fetchone()[0]
    return out


SQL_STAGES = ["clean_documents", "documents", "quarantine", "passages"]
def tuned_sql_dir(cfg, tuned: Path, dest: Path) -> Path:
    """A copy of the SQL models with the proposed files (``tuned/*.sql``, from ``--tuned DIR``) laid over them."""
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(cfg.sql_dir, dest)
    for f in tuned.glob("*.sql"):
        shutil.copy(f, dest / f.name)
    return dest


def run_tuned(corpus: Path, wh: Path, base_wh: Path, tuned: Path, threads: int = 0, log=print) -> dict:
    """The SQL path with the models of ``tuned`` over etl/sql/, same raw_documents; layers compared with ``base_wh``."""
    import os
    import shutil

    import duckdb
    import pyarrow.parquet as pq

    if wh.exists():
        shutil.rmtree(wh)
    (wh / "layers").mkdir(parents=True)
    os.link(base_wh / "layers" / "raw_documents.parquet", wh / "layers" / "raw_documents.parquet")
    sql_dir = tuned_sql_dir(make_config(corpus, base_wh), tuned, wh / "sql")
    extra = [f'paths.sql="{sql_dir}"'] + ([f"duckdb.threads={threads}"] if threads else [])
    cfg = make_config(corpus, wh, extra)
    log(f"  SQL path with {tuned} ({', '.join(sorted(f.name for f in tuned.glob('*.sql')))}):"
        f" (load {load()})")
    c0 = cpu_seconds()
    t, rows, per = sql_path(cfg, log=log)
    c = cpu_seconds() - c0
    log(f"    total {t:.1f}s wall, {c:.1f}s CPU (load {load()})")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    diff = {}
    for layer, key in (("clean_documents", "doc_id"), ("documents", "doc_id"), ("quarantine", "line_no"),
                       ("passages", "passage_id")):
        a, b = f"'{base_wh / 'layers' / (layer + '.parquet')}'", f"'{wh / 'layers' / (layer + '.parquet')}'"
        if not (base_wh / "layers" / (layer + ".parquet")).exists():
            diff[layer] = "no etl/sql/ output to compare"
            continue
        diff[layer] = con.execute(f"SELECT (SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})) + "
                                  f"(SELECT count(*) FROM (FROM {b} EXCEPT ALL FROM {a}))").fetchone()[0]
        if key != "line_no":
            same_order = (pq.read_table(a.strip("'"), columns=[key]).column(0)
                          .equals(pq.read_table(b.strip("'"), columns=[key]).column(0)))
            diff[layer + "_order_differs"] = int(not same_order)
    log(f"    differences vs etl/sql/ outputs (rows, order): {diff}")
    return {"tuned_s": t, "tuned_cpu_s": c, "tuned_rows": rows, "tuned_stage_s": per, "tuned_diff": diff}


def sql_path(cfg, log=print) -> tuple[float, dict[str, int], dict[str, float]]:
    """Run the four SQL stages; return (seconds, rows per layer, seconds per layer)."""
    t0 = time.perf_counter()
    res = run_stages(cfg, SQL_STAGES, log=log)
    return time.perf_counter() - t0, {k: v.rows for k, v in res.items()}, {k: v.seconds for k, v in res.items()}


def run(docs: int, files: int, corpus: Path, wh: Path, pandas_out: Path, threads: int = 0,
        skip_pandas: bool = False, tuned: Path | None = None, sets: list[str] | None = None, log=print) -> dict:
    """Generate (if needed), ingest, SQL path, pandas path, compare; return the results."""
    ensure_corpus(corpus, docs, files, log=log)
    extra = ([f"duckdb.threads={threads}"] if threads else []) + list(sets or [])
    cfg = make_config(corpus, wh, extra)
    log(f"  DuckDB memory_limit {cfg.duckdb.memory_limit}, threads {cfg.duckdb.threads or 'all'}")
    log(f"  ingest (Python, raw_documents) of {docs:,} docs ... (load {load()})")
    t0, c0 = time.perf_counter(), cpu_seconds()
    ing = run_stages(cfg, ["raw_documents"], log=log)["raw_documents"]
    t_ingest, c_ingest = time.perf_counter() - t0, cpu_seconds() - c0
    raw_path = wh / "layers" / "raw_documents.parquet"
    log(f"  SQL path (DuckDB): (load {load()})")
    c0 = cpu_seconds()
    t_sql, rows_sql, per_sql = sql_path(cfg, log=log)
    c_sql = cpu_seconds() - c0
    log(f"    total {t_sql:.1f}s wall, {c_sql:.1f}s CPU (load {load()})")
    result = {"docs": docs, "corpus_bytes": dir_size(corpus), "ingest_s": t_ingest, "ingest_cpu_s": c_ingest,
              "raw_rows": ing.rows, "sql_s": t_sql, "sql_cpu_s": c_sql, "sql_rows": rows_sql,
              "sql_stage_s": per_sql}
    if tuned:
        result.update(run_tuned(corpus, wh.with_name(wh.name + "_tuned"), wh, tuned, threads, log=log))
    if skip_pandas:
        return result
    log(f"  pandas path: (load {load()})")
    t0, c0 = time.perf_counter(), cpu_seconds()
    rows_pd = pandas_clean(raw_path, cfg, pandas_out)
    t_clean = time.perf_counter() - t0
    log(f"    clean+documents+quarantine {t_clean:8.1f}s  {rows_pd}")
    t1 = time.perf_counter()
    rows_pd["passages"] = pandas_chunk(pandas_out / "documents.parquet", cfg, pandas_out)
    t_chunk = time.perf_counter() - t1
    log(f"    passages                   {t_chunk:8.1f}s  {rows_pd['passages']:,} rows")
    t_pd, c_pd = time.perf_counter() - t0, cpu_seconds() - c0
    log(f"    total {t_pd:.1f}s wall, {c_pd:.1f}s CPU (load {load()})")
    diff = compare(wh / "layers", pandas_out)
    drift = sql_drift(cfg.sql_dir)
    if drift:
        log(f"  WARNING: {', '.join(drift)} changed since the pandas translation was written")
    result.update(sql_drift=drift, pandas_s=t_pd, pandas_cpu_s=c_pd,
                  pandas_clean_s=t_clean,
                  pandas_chunk_s=t_chunk, pandas_rows=rows_pd,
                  ratio=t_pd / t_sql, diff=diff)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--large", type=int, default=0, help="also time the SQL path at this many docs (e.g. 1000000)")
    ap.add_argument("--large-files", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0 = all cores)")
    ap.add_argument("--tuned", type=Path, default=None, metavar="DIR",
                    help="also run the SQL models in DIR (laid over a copy of etl/sql/) and compare their layers")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"), help="scratch directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both SQL runs, e.g. --set 'duckdb.memory_limit=\"4GB\"'")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    r = run(a.docs, a.files, a.work / f"synth_{a.docs}", a.work / f"wh_{a.docs}", a.work / f"pandas_{a.docs}",
            a.threads, tuned=a.tuned, sets=a.set)
    rows = [
        {"path": "ingest (Python, raw_documents)", "docs": a.docs, "seconds": r["ingest_s"],
         "cpu_s": r["ingest_cpu_s"], "documents": "", "passages": ""},
        {"path": "SQL clean+chunk (DuckDB)", "docs": a.docs, "seconds": r["sql_s"], "cpu_s": r["sql_cpu_s"],
         "documents": r["sql_rows"]["documents"], "passages": r["sql_rows"]["passages"]},
        {"path": "pandas clean+chunk", "docs": a.docs, "seconds": r["pandas_s"], "cpu_s": r["pandas_cpu_s"],
         "documents": r["pandas_rows"]["documents"], "passages": r["pandas_rows"]["passages"]},
    ]
    if a.tuned:
        rows.insert(2, {"path": "SQL clean+chunk, --tuned DIR", "docs": a.docs, "seconds": r["tuned_s"],
                        "cpu_s": r["tuned_cpu_s"], "documents": r["tuned_rows"]["documents"],
                        "passages": r["tuned_rows"]["passages"]})
    results = {"small": r}
    if a.large:
        print(f"\nSQL path at {a.large:,} documents:")
        big = run(a.large, a.large_files, a.work / f"synth_{a.large}", a.work / f"wh_{a.large}",
                  a.work / f"pandas_{a.large}", a.threads, skip_pandas=True, tuned=a.tuned,
                  sets=a.set)
        results["large"] = big
        rows.append({"path": "ingest (Python, raw_documents)", "docs": a.large, "seconds": big["ingest_s"],
                     "cpu_s": big["ingest_cpu_s"], "documents": "", "passages": ""})
        rows.append({"path": "SQL clean+chunk (DuckDB)", "docs": a.large, "seconds": big["sql_s"],
                     "cpu_s": big["sql_cpu_s"],
                     "documents": big["sql_rows"]["documents"], "passages": big["sql_rows"]["passages"]})
        if a.tuned:
            rows.append({"path": "SQL clean+chunk, --tuned DIR", "docs": a.large, "seconds": big["tuned_s"],
                         "cpu_s": big["tuned_cpu_s"], "documents": big["tuned_rows"]["documents"],
                         "passages": big["tuned_rows"]["passages"]})
    print()
    print(table(rows))
    print(f"\npandas / SQL at {a.docs:,} docs: {r['ratio']:.2f}x wall, "
          f"{r['pandas_cpu_s'] / r['sql_cpu_s']:.2f}x CPU (goal >= 5x)")
    print(f"output differences (rows only in one side): {r['diff']}")
    if a.tuned:
        print(f"pandas / tuned SQL at {a.docs:,} docs: {r['pandas_s'] / r['tuned_s']:.2f}x wall; "
              f"tuned output differences vs etl/sql/: {r['tuned_diff']}")
    if a.large:
        print(f"SQL clean+chunk at {a.large:,} docs: {results['large']['sql_s']:.0f}s (goal < 300s)")
        if a.tuned:
            print(f"tuned SQL clean+chunk at {a.large:,} docs: {results['large']['tuned_s']:.0f}s; "
                  f"differences vs etl/sql/: {results['large']['tuned_diff']}")
    save_json(Path(__file__).parent / "out" / "clean_chunk.json", results)


if __name__ == "__main__":
    main()
