"""Shared helpers for the benchmarks: configs over a synthetic corpus, stage runs, tables, machine info."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from synth import source_overrides  # noqa: E402


def make_config(corpus: Path, warehouse: Path, extra: list[str] | None = None):
    """A pipeline Config reading the synthetic corpus at ``corpus`` into ``warehouse`` (no progress bars)."""
    from etl.config import load_config

    overrides = source_overrides(corpus) + [
        f'paths.warehouse="{Path(warehouse).resolve()}"',
        f'paths.export="{Path(warehouse).resolve() / "export"}"',
        "run.progress=false",
    ] + list(extra or [])
    return load_config(None, overrides)


def stage_by_name(name: str):
    """The pipeline Stage called ``name``."""
    from etl.pipeline import STAGES

    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


def run_stages(cfg, names: list[str], force: bool = True, log=print) -> dict[str, Any]:
    """Run the named stages in order on one Warehouse/Context; return {name: LayerResult}."""
    from etl.pipeline import Context, run_stage
    from etl.warehouse import Warehouse

    wh = Warehouse(cfg)
    wh.con.execute("SET enable_progress_bar = false")
    out = {}
    try:
        ctx = Context(cfg, wh)
        for name in names:
            t0 = time.perf_counter()
            res = run_stage(stage_by_name(name), ctx, force=force)
            wall = time.perf_counter() - t0
            out[name] = res
            log(f"    {name:<18} {res.rows:>12,} rows {wall:8.1f}s{'  (skipped: fresh)' if res.skipped else ''}")
    finally:
        wh.close()
    return out


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load() -> str:
    """The 1-minute load average (the machine is shared: timings depend on it)."""
    return f"{os.getloadavg()[0]:.1f}"


def machine() -> str:
    """One line describing this machine."""
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 1024 ** 2:.0f} GiB RAM"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"


def table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    """A plain-text table of dict rows."""
    if not rows:
        return "(no rows)"
    cols = cols or list(rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True))
            for row in cells]
    return "\n".join([line, sep, *body])


def _numeric(v: str) -> bool:
    return bool(v) and v.replace(",", "").replace(".", "").replace("x", "").replace("-", "").isdigit()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def save_json(path: Path, data: Any) -> None:
    """Write results as JSON (benchmarks/out/ is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def ensure_corpus(out: Path, docs: int, files: int, seed: int = 0, log=print) -> Path:
    """Generate the synthetic corpus at ``out`` unless one with the same size and seed is there."""
    from synth import generate

    meta = out / "synth.json"
    if meta.exists():
        m = json.loads(meta.read_text(encoding="utf-8"))
        if m.get("docs") == docs and m.get("seed") == seed and len(m.get("files", [])) == files:
            return out
        shutil.rmtree(out)
    log(f"  generating {docs:,} synthetic documents into {out} ...")
    generate(out, docs, files, seed, log=log)
    return out


def dir_size(path: Path) -> int:
    """Bytes under a directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def copy_missing_files(src: Path, dst: Path, pattern: str = "*") -> int:
    """Copy the files under ``src`` matching ``pattern`` that ``dst`` lacks (same relative paths); return how many.

    Used to seed a benchmark's embedding cache from another warehouse's (the cache files are
    immutable and named by content, so an existing file is never overwritten).
    """
    if not src.is_dir():
        return 0
    copied = 0
    for f in sorted(src.rglob(pattern)):
        target = dst / f.relative_to(src)
        if f.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            copied += 1
    return copied
