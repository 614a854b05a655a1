"""The CLI people know: --version, plan (fresh / finished / half-finished warehouse, changed settings),
--quiet, no progress bars off a terminal, usage errors, stats on unknown names and a closed pipe,
help under the typed name without markup, filter meanings in the summary."""

from __future__ import annotations

import subprocess
import sys

import pytest
from etl_helpers import REPO, cli_env, make_articles, run_cli, tiny_run_dirs, write_jsonl

from etl.cli import build_parser, prog_name


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux_corpus")
    write_jsonl(root / "a.jsonl", make_articles(30, seed=5, sentences=10))
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model, small_corpus):
    """A finished run through the CLI (run --quiet, stderr not a terminal)."""
    d = tiny_run_dirs(tmp_path_factory.mktemp("ux_run"), small_corpus, tiny_model)
    d.result = run_cli(["run", "--quiet", "--config", str(d.config)])
    assert d.result.returncode == 0, d.result.stderr
    return d


def plan_lines(config, *extra) -> dict[str, str]:
    res = run_cli(["plan", "--config", str(config), *extra])
    assert res.returncode == 0, res.stderr
    return {line.split()[0]: line.split(None, 1)[1] for line in res.stdout.splitlines()[1:-1]}, res.stdout


def test_version():
    res = run_cli(["--version"])
    assert res.returncode == 0 and res.stdout.startswith("python -m etl (ko-sparse-etl) ")


def test_quiet_run_prints_nothing_and_no_progress_bars(finished):
    assert finished.result.stdout == ""
    assert "it/s" not in finished.result.stderr and "%|" not in finished.result.stderr
    assert (finished.export / "train.jsonl").stat().st_size > 0


def test_plan_on_a_fresh_warehouse(tmp_path, tiny_model, small_corpus):
    d = tiny_run_dirs(tmp_path, small_corpus, tiny_model)
    lines, out = plan_lines(d.config)
    assert lines["raw_documents"] == "run    not built yet (no warehouse)"
    assert all(v.startswith("run") for v in lines.values()) and "export" in lines
    assert not d.warehouse.exists()  # plan builds nothing


def test_plan_on_a_finished_warehouse(finished):
    lines, out = plan_lines(finished.config)
    assert set(lines.values()) == {"fresh"}, out
    assert out.rstrip().endswith("0 of 23 stages would run: the export is up to date")


def test_plan_names_the_changed_config_key_and_what_follows(finished):
    lines, out = plan_lines(finished.config, "--set", "filters.absolute_margin=0.5")
    assert lines["candidates"] == "fresh"
    assert lines["teacher_scores"] == "run   config filters.absolute_margin changed"
    assert lines["scored_candidates"] == ("run   config filters.absolute_margin changed; "
                                          "upstream layer teacher_scores changes")
    assert lines["judged_negatives"] == "run   upstream layer scored_candidates changes"  # judge off: an empty layer
    assert lines["examples"] == ("run   upstream layer scored_candidates changes; "
                                 "upstream layer judged_negatives changes")
    assert lines["judged_examples"] == "run   upstream layer scored_candidates changes; " \
                                      "upstream layer judged_negatives changes; upstream layer examples changes"
    assert lines["export"] == "run   upstream layer examples changes; upstream layer judged_examples changes"


def test_plan_gives_the_exports_reasons_like_a_stages(finished):
    """The export step has the runner's freshness: a changed export setting, or a file gone."""
    lines, _ = plan_lines(finished.config, "--set", "export.first_rank=true")
    assert lines["examples"] == "fresh" and lines["export"] == "run   config export changed"
    report = finished.export / "report" / "report.md"
    kept = report.read_bytes()
    report.unlink()
    try:
        lines, _ = plan_lines(finished.config)
        assert lines["export"] == "run   output files missing"
    finally:
        report.write_bytes(kept)


def test_plan_on_a_half_finished_warehouse(tmp_path, tiny_model, small_corpus):
    d = tiny_run_dirs(tmp_path, small_corpus, tiny_model)
    assert run_cli(["run", "-q", "--config", str(d.config), "--until", "passages"]).returncode == 0
    lines, out = plan_lines(d.config)
    assert lines["passages"] == "fresh" and lines["chunks"] == "fresh"
    assert lines["query_file_rows"] == "run   not built yet"
    assert lines["export"] == "run   not built yet"  # the export is planned like a stage
    assert out.rstrip().endswith(f"{sum(v.startswith('run') for v in lines.values())} of 23 stages would run")


def test_plan_names_changed_code(finished, tmp_path):
    sql = tmp_path / "sql"
    assert run_cli(["sql", "--copy", str(sql)]).returncode == 0
    (sql / "examples.sql").write_text((sql / "examples.sql").read_text(encoding="utf-8") + "\n-- edited\n",
                                      encoding="utf-8")
    lines, _ = plan_lines(finished.config, "--set", f"paths.sql='{sql}'")
    assert lines["examples"] == "run   code changed: etl/sql/examples.sql"
    assert lines["scored_candidates"] == "fresh"


def test_stats_unknown_name_lists_the_valid_ones(finished):
    res = run_cli(["stats", "--config", str(finished.config), "nope"])
    assert res.returncode == 2
    assert "unknown stats: nope; the stats are: " in res.stderr and "dropped_queries" in res.stderr


def test_stats_survives_a_closed_pipe(finished):
    cmd = f"{sys.executable} -m etl stats --config '{finished.config}' | head -n 2"
    res = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 2
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_help_uses_the_typed_name_and_no_markup():
    assert prog_name("/x/etl/__main__.py") == "python -m etl"
    assert prog_name("/venv/bin/ko-sparse-etl") == "ko-sparse-etl"
    for prog in ("python -m etl", "ko-sparse-etl"):
        text = build_parser(prog).format_help()
        assert text.startswith(f"usage: {prog} ") and "``" not in text and ":mod:" not in text
    res = run_cli(["run", "--help"])
    assert res.stdout.startswith("usage: python -m etl run ") and "``" not in res.stdout
    assert "--quiet" in res.stdout


def test_summary_says_what_each_filter_means(tmp_path, tiny_model, small_corpus):
    d = tiny_run_dirs(tmp_path, small_corpus, tiny_model)
    res = run_cli(["run", "--config", str(d.config)])
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("Skipped ")]
    assert lines and all(": " in x for x in lines), lines
    assert any("by in_neighbours: a random draw that is among the query's nearest neighbours" in x for x in lines)
