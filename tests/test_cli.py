"""The command line: run / validate / stats, --set, --until, --force, and exit codes
(0 ok, 1 runtime error or failed validation, 2 configuration / usage error)."""

from __future__ import annotations

import json
import sys

import pytest
from etl_helpers import make_articles, run_cli, write_config, write_jsonl, write_lines


def good_line(n: int = 8) -> str:
    return json.dumps({"query": "질문", "docs": [f"문서 {i}" for i in range(n)],
                       "scores": [30.0] + [float(n - i) for i in range(1, n)]}, ensure_ascii=False)


@pytest.fixture
def small_config(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", make_articles(6, sentences=10))
    return write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                        sources=[("syn", [str(tmp_path / "in" / "*.jsonl")])])


def test_no_command_is_a_usage_error():
    res = run_cli([])
    assert res.returncode == 2
    assert "usage:" in res.stderr


def test_unknown_until_stage_is_a_usage_error(small_config):
    res = run_cli(["run", "--config", str(small_config), "--until", "nope"])
    assert res.returncode == 2
    assert "invalid choice: 'nope'" in res.stderr


def test_validate_exit_codes(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", [good_line(), good_line()])
    bad = write_lines(tmp_path / "bad.jsonl", [good_line(), good_line(7), "{oops"])
    ok = run_cli(["validate", str(good)])
    assert ok.returncode == 0
    assert ok.stdout.strip() == f"OK {good}: 2 records"
    fail = run_cli(["validate", str(good), str(bad)])
    assert fail.returncode == 1
    assert f"OK {good}: 2 records" in fail.stdout
    assert f"FAIL {bad}: 2 violations in 3 records" in fail.stdout
    assert "bad.jsonl:2: odd number of docs (7)" in fail.stdout
    assert "bad.jsonl:3: invalid JSON" in fail.stdout


def test_validate_doc_count_options(tmp_path):
    f = write_lines(tmp_path / "f.jsonl", [good_line(8)])
    assert run_cli(["validate", "--min-docs", "8", "--max-docs", "8", str(f)]).returncode == 0
    res = run_cli(["validate", "--min-docs", "10", str(f)])
    assert res.returncode == 1
    assert "8 docs, expected between 10 and 32" in res.stdout


def test_validate_missing_file(tmp_path):
    res = run_cli(["validate", str(tmp_path / "nope.jsonl")])
    assert res.returncode == 1
    assert "no such file" in res.stdout


def test_stats_without_a_warehouse(tmp_path):
    res = run_cli(["stats", "--set", f"paths.warehouse='{tmp_path / 'wh'}'"])
    assert res.returncode == 2
    assert "no warehouse" in res.stderr


def test_run_until_stops_after_the_stage(small_config, tmp_path):
    res = run_cli(["run", "--config", str(small_config), "--until", "passages"])
    assert res.returncode == 0, res.stderr
    assert "  passages " in res.stdout
    assert "  queries " not in res.stdout
    assert (tmp_path / "wh" / "state" / "passages.json").is_file()
    assert not (tmp_path / "wh" / "state" / "queries.json").exists()
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_set_overrides_reach_the_stages(small_config, tmp_path):
    res = run_cli(["run", "--config", str(small_config), "--until", "quarantine",
                   "--set", "clean.min_chars=100000", "--set", "clean.max_chars=200000"])
    assert res.returncode == 0, res.stderr
    state = json.loads((tmp_path / "wh" / "state" / "documents.json").read_text())
    assert state["rows"] == 0  # every article is now "too short"
    assert json.loads((tmp_path / "wh" / "state" / "quarantine.json").read_text())["rows"] == 6


def test_unknown_force_stage_fails_before_any_work(small_config, tmp_path):
    res = run_cli(["run", "--config", str(small_config), "--force", "embeddingz"])
    assert res.returncode == 2  # a usage error, like --until nope
    assert "unknown stage 'embeddingz'" in res.stderr and "usage:" in res.stderr
    assert not (tmp_path / "wh").exists()


def test_glob_matching_nothing_is_an_error_naming_the_glob(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", make_articles(2))
    missing = str(tmp_path / "nowhere" / "*.jsonl")
    cfg = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                       sources=[("ok", [str(tmp_path / "in" / "*.jsonl")]), ("typo", [missing])])
    res = run_cli(["run", "--config", str(cfg)])
    assert res.returncode == 1
    assert missing in res.stderr and "matches no file" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "wh").exists()


def test_runtime_error_is_one_line_and_exit_1_unless_debugging(small_config, tmp_path):
    text = small_config.read_text() + f'\n[[query_files]]\nname = "q"\npath = "{tmp_path / "missing.jsonl"}"\n'
    small_config.write_text(text)
    res = run_cli(["run", "--config", str(small_config), "--until", "query_file_rows"])
    assert res.returncode == 1
    assert res.stderr.startswith("error: FileNotFoundError: ")
    assert "missing.jsonl" in res.stderr and "Traceback" not in res.stderr
    dbg = run_cli(["run", "--config", str(small_config), "--until", "query_file_rows"], debug=True)
    assert dbg.returncode == 1
    assert "Traceback" in dbg.stderr


def test_entry_point_module_runs(tmp_path):
    import subprocess

    res = subprocess.run([sys.executable, "-m", "etl", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("run", "validate", "stats"):
        assert cmd in res.stdout


def test_stats_and_report_on_an_incomplete_warehouse_exit_1_naming_it(small_config, tmp_path):
    res = run_cli(["run", "--config", str(small_config), "--until", "passages"])
    assert res.returncode == 0, res.stderr
    stats = run_cli(["stats", "--config", str(small_config)])
    assert stats.returncode == 1
    assert "incomplete" in stats.stderr and "queries" in stats.stderr and str(tmp_path / "wh") in stats.stderr
    assert "python -m etl run" in stats.stderr
    # a stats query over layers that exist works, and exits 0
    ok = run_cli(["stats", "--config", str(small_config), "quarantine_reasons"])
    assert ok.returncode == 0, ok.stderr
    report = run_cli(["report", "--config", str(small_config)])
    assert report.returncode == 1
    assert "no report" in report.stderr and "incomplete" in report.stderr
    assert not (tmp_path / "out" / "report").exists()


def test_report_without_a_warehouse(tmp_path):
    res = run_cli(["report", "--set", f"paths.warehouse='{tmp_path / 'wh'}'"])
    assert res.returncode == 2
    assert "no warehouse" in res.stderr


def test_sql_copy_is_used_through_paths_sql(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", make_articles(4, sentences=10))
    write_jsonl(tmp_path / "in" / "b.jsonl", make_articles(3, sentences=10, start=10))
    cfg = write_config(tmp_path / "cfg.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                       sources=[("a", [str(tmp_path / "in" / "a.jsonl")]), ("b", [str(tmp_path / "in" / "b.jsonl")])])
    copy = tmp_path / "my_sql"
    res = run_cli(["sql", "--copy", str(copy)])
    assert res.returncode == 0, res.stderr
    assert f"paths.sql = \"{copy}\"" in res.stdout
    from etl.config import DEFAULT_SQL_DIR

    packaged = sorted(p.relative_to(DEFAULT_SQL_DIR) for p in DEFAULT_SQL_DIR.rglob("*.sql"))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*.sql")) == packaged
    assert run_cli(["sql", "--copy", str(copy)]).returncode == 2  # not over an existing copy
    model = copy / "documents.sql"
    model.write_text(model.read_text(encoding="utf-8").rstrip() + "\n  AND source <> 'b'\n", encoding="utf-8")

    def sources(*extra: str) -> list[str]:
        res = run_cli(["run", "--config", str(cfg), "--until", "documents", *extra])
        assert res.returncode == 0, res.stderr
        import duckdb

        layer = tmp_path / "wh" / "layers" / "documents.parquet"
        return [r[0] for r in duckdb.sql(f"SELECT DISTINCT source FROM '{layer}' ORDER BY 1").fetchall()]

    assert sources() == ["a", "b"]
    assert sources("--set", f"paths.sql='{copy}'") == ["a"]  # the edited copy ran
    (copy / "passages.sql").unlink()
    res = run_cli(["run", "--config", str(cfg), "--set", f"paths.sql='{copy}'", "--until", "passages"])
    assert res.returncode == 1
    assert "passages.sql not found" in res.stderr and str(copy) in res.stderr and "sql --copy" in res.stderr
