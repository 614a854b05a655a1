"""Robust runs: determinism, kill -9 and resume, stage skipping / re-running / --force, and the
warehouse lock. All with the tiny model (embedding quality does not matter here)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from etl_helpers import (
    RunDirs,
    kill9,
    make_articles,
    run_cli,
    start_cli,
    tiny_run_dirs,
    wait_for,
    write_jsonl,
)

from etl.config import DEFAULT_SQL_DIR, load_config
from etl.pipeline import STAGE_NAMES, STAGES, run_pipeline

EXPORT_FILES = ["train.jsonl", "val.jsonl", "embeddings/document_embeddings.npy", "embeddings/document_ids.txt",
                "embeddings/query_embeddings.npy", "embeddings/query_ids.txt"]
# embeddings/ann_index.usearch is not compared byte for byte: usearch builds its HNSW graph with
# several threads, so the file differs between identical runs (its contents are checked instead).


def same_export(a: RunDirs, b: RunDirs) -> list[str]:
    """Names of the export files whose bytes differ between two runs."""
    return [n for n in EXPORT_FILES if (a.export / n).read_bytes() != (b.export / n).read_bytes()]


def visible_files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")}


# ---- determinism -------------------------------------------------------------------------------

def test_same_input_config_and_seed_give_identical_bytes(tmp_path, tiny_model, tiny_corpus, tiny_reference_run):
    again = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model)
    res = run_cli(["run", "--config", str(again.config)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert same_export(tiny_reference_run, again) == []
    assert visible_files(again.export) == visible_files(tiny_reference_run.export)
    from usearch.index import Index

    a = Index.restore(str(tiny_reference_run.export / "embeddings" / "ann_index.usearch"))
    b = Index.restore(str(again.export / "embeddings" / "ann_index.usearch"))
    assert len(a) == len(b) > 0 and a.ndim == b.ndim


def test_reference_run_exports_real_records(tiny_reference_run):
    meta = tiny_reference_run.metadata
    assert meta["total_queries"] >= 20
    assert meta["embedding_model"].endswith("st")
    assert meta["stages"]["passage_embeddings"]["extra"]["embedded"] == meta["layers"]["passages"]


# ---- kill -9 at any point, then run again --------------------------------------------------------

def state(d: RunDirs, layer: str) -> Path:
    return d.warehouse / "state" / f"{layer}.json"


def layer_being_written(d: RunDirs, layer: str) -> bool:
    return any((d.warehouse / "layers").glob(f".{layer}.parquet.*.tmp"))


# point -> (trigger: when to kill, landed: the kill really interrupted that step, last stage finished before it)
KILL_POINTS = {
    "during_passage_embeddings": (lambda d: layer_being_written(d, "passage_embeddings"),
                                  lambda d: not state(d, "passage_embeddings").exists(), "queries"),
    "during_query_embeddings": (lambda d: layer_being_written(d, "query_embeddings"),
                                lambda d: not state(d, "query_embeddings").exists(), "passage_embeddings"),
    "export_start": (lambda d: state(d, STAGES[-1].name).exists(),
                     lambda d: not (d.export / "metadata.json").exists(), STAGES[-1].name),
    "export_after_train_jsonl": (lambda d: (d.export.with_name(d.export.name + ".staging") / "train.jsonl").exists(),
                                 lambda d: not (d.export / "metadata.json").exists(), STAGES[-1].name),
}


def assert_nothing_half_written(d: RunDirs, reference: RunDirs) -> None:
    """Every file under its final name is complete (files are written to a temporary name, then renamed)."""
    for name in ("train.jsonl", "val.jsonl"):
        p = d.export / name
        if p.exists():
            assert p.read_bytes() == (reference.export / name).read_bytes(), f"partial {name}"
    for p in (d.warehouse / "layers").glob("*.parquet"):
        pq.read_metadata(p)  # raises on a truncated file
    for p in (d.export / "embeddings").glob("*.npy") if (d.export / "embeddings").exists() else []:
        np.load(p, mmap_mode="r")
    for p in (d.warehouse / "state").glob("*.json"):
        json.loads(p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_resumes_to_a_byte_identical_export(tmp_path, tiny_model, tiny_corpus,
                                                              tiny_reference_run, point):
    trigger, landed, finished_before = KILL_POINTS[point]
    d = tiny_run_dirs(tmp_path / "run", tiny_corpus, tiny_model)
    log = tmp_path / "killed.log"
    proc = start_cli(["run", "--config", str(d.config)], log)
    try:
        reached = wait_for(lambda: trigger(d), proc, timeout=400)
    finally:
        kill9(proc)
    output = log.read_text(encoding="utf-8", errors="replace")
    assert reached, f"the run never reached {point}:\n{output}"
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself before the kill:\n{output}"
    assert landed(d), f"the kill came too late to interrupt {point}"
    assert_nothing_half_written(d, tiny_reference_run)

    res = run_cli(["run", "--config", str(d.config)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert same_export(tiny_reference_run, d) == []
    assert visible_files(d.export) == visible_files(tiny_reference_run.export)
    # it resumed: stages finished before the kill are not redone
    done = STAGE_NAMES[: STAGE_NAMES.index(finished_before) + 1]
    assert "queries" in done
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.startswith("  ")}
    for stage in done:
        assert lines[stage].endswith("skipped (fresh)"), lines[stage]


# ---- skipped when unchanged, re-run when changed, --force ------------------------------------------

def downstream(*changed: str) -> set[str]:
    """The changed stages and every stage that depends on them, plus the export."""
    out = set(changed)
    for stage in STAGES:
        if out & set(stage.deps):
            out.add(stage.name)
    return out | {"export"}


class Runner:
    """In-process pipeline runs on one warehouse; records which stages ran (were not skipped)."""

    def __init__(self, root: Path, model: str, n_docs: int = 24):
        self.corpus = root / "corpus"
        write_jsonl(self.corpus / "a.jsonl", make_articles(n_docs, seed=5, sentences=16))
        self.dirs = tiny_run_dirs(root, self.corpus, model)

    def run(self, overrides=(), force=()) -> set[str]:
        lines: list[str] = []
        cfg = load_config(self.dirs.config, list(overrides))
        run_pipeline(cfg, force=list(force), log=lines.append)
        ran = {ln.split()[0] for ln in lines if ln.startswith("  ") and not ln.endswith("skipped (fresh)")}
        assert len([ln for ln in lines if ln.startswith("  ")]) == len(STAGE_NAMES), lines  # one line per stage
        return ran

    def export_bytes(self) -> dict[str, bytes]:
        return {n: (self.dirs.export / n).read_bytes() for n in ("train.jsonl", "val.jsonl")}


@pytest.fixture
def runner(tmp_path, tiny_model):
    """A warehouse after a full run and a second run (which skips every stage)."""
    r = Runner(tmp_path, tiny_model)
    assert r.run() == set(STAGE_NAMES)
    r.run()
    return r


def test_second_run_skips_every_stage(tmp_path, tiny_model):
    r = Runner(tmp_path, tiny_model)
    assert r.run() == set(STAGE_NAMES)
    assert r.run() == set()


def test_unchanged_inputs_and_config_skip_every_stage(runner):
    before = runner.export_bytes()
    assert runner.run() == set()
    assert runner.export_bytes() == before


def test_changed_setting_reruns_exactly_the_stages_downstream(runner):
    assert runner.run(["chunk.target_chars=300"]) == downstream("chunks")
    assert runner.run(["chunk.target_chars=300", "scoring.scale=20.0"]) == downstream("examples")
    assert runner.run(["chunk.target_chars=300", "scoring.scale=20.0"]) == set()


def test_setting_no_stage_reads_reruns_nothing(runner):
    assert runner.run(["run.progress=true", "embedding.batch_size=4"]) == set()


def test_changed_input_file_reruns_ingest(runner):
    with open(runner.corpus / "a.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(make_articles(1, seed=99, start=500)[0], ensure_ascii=False) + "\n")
    ran = runner.run()
    assert {"raw_documents", "clean_documents", "documents", "passages", "passage_embeddings", "export"} <= ran
    assert "query_file_rows" not in ran


def test_force_reruns_one_stage(runner):
    before = runner.export_bytes()
    assert runner.run(force=["clusters"]) == {"clusters"}
    assert runner.run(force=["export"]) == {"export"}
    assert runner.run(force=["all"]) == set(STAGE_NAMES)
    assert runner.export_bytes() == before


def test_edited_sql_model_reruns_its_stage(runner, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(DEFAULT_SQL_DIR, sql)
    # a different sql directory with identical models changes nothing
    assert runner.run([f"paths.sql='{sql}'"]) == set()
    model = sql / "examples.sql"
    model.write_text("-- an edit\n" + model.read_text(encoding="utf-8"), encoding="utf-8")
    assert runner.run([f"paths.sql='{sql}'"]) == downstream("examples")  # + judged_examples


def test_sql_model_may_end_with_a_comment(runner, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(DEFAULT_SQL_DIR, sql)
    with open(sql / "examples.sql", "a", encoding="utf-8") as fh:
        fh.write("\n-- a trailing comment\n")
    assert runner.run([f"paths.sql='{sql}'"]) == downstream("examples")  # + judged_examples


def test_deleted_layer_file_is_rebuilt_alone(runner):
    before = runner.export_bytes()
    (runner.dirs.warehouse / "layers" / "clusters.parquet").unlink()
    assert runner.run() == {"clusters"}
    assert runner.export_bytes() == before


def test_deleted_export_directory_is_written_again(runner):
    before = runner.export_bytes()
    shutil.rmtree(runner.dirs.export)
    ran = runner.run()
    assert "export" in ran and "neighbours" in ran
    assert runner.export_bytes() == before
    assert (runner.dirs.export / "embeddings" / "ann_index.usearch").is_file()


# ---- one run per warehouse at a time ---------------------------------------------------------------

def test_second_run_on_a_locked_warehouse_refuses(tmp_path, tiny_model, tiny_corpus):
    from etl.warehouse import Warehouse

    d = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model)
    holder = Warehouse(load_config(d.config))  # holds the DuckDB lock, like a run in progress
    try:
        res = run_cli(["run", "--config", str(d.config)])
    finally:
        holder.close()
    assert res.returncode == 1
    assert "in use by another process" in res.stderr and str(d.warehouse) in res.stderr
    assert "Traceback" not in res.stderr
    assert list((d.warehouse / "state").glob("*.json")) == []


def test_two_runs_at_once_the_second_refuses_and_the_first_finishes(tmp_path, tiny_model, tiny_corpus,
                                                                     tiny_reference_run):
    d = tiny_run_dirs(tmp_path / "run", tiny_corpus, tiny_model)
    first = start_cli(["run", "--config", str(d.config)], tmp_path / "first.log")
    try:
        assert wait_for(lambda: layer_being_written(d, "passage_embeddings"), first, timeout=400), \
            (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGSTOP)  # freeze it mid-run, lock held
        try:
            second = run_cli(["run", "--config", str(d.config)])
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 1
        assert "is in use by another process" in second.stderr
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    finally:
        kill9(first)
    assert same_export(tiny_reference_run, d) == []


def test_export_datasets_can_be_switched_off(tmp_path, tiny_model):
    """export.datasets = false writes the JSONL splits only (no datasets/ copy), and says so in metadata."""
    r = Runner(tmp_path, tiny_model, n_docs=80)
    r.run(["export.datasets=false"])
    meta = json.loads((r.dirs.export / "metadata.json").read_text(encoding="utf-8"))
    assert meta["datasets"] == {"skipped": "export.datasets = false"}
    assert not (r.dirs.export / "datasets").exists()
    assert meta["total_queries"] > 0
    assert (r.dirs.export / "train.jsonl").exists() and (r.dirs.export / "val.jsonl").exists()
