"""The export is atomic as a whole: built in ``<export>.staging``, validated, swapped in; an export that
fails validation leaves the previous one untouched, lands in ``<export>.rejected`` with its violations,
and the run exits 1. A run killed at any step of the swap is put right by the next run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from etl_helpers import run_cli, tiny_run_dirs

import etl.export as export_mod
from etl.config import DEFAULT_SQL_DIR, load_config
from etl.export import ExportRecoveryError, old_dir, recover_export, rejected_dir, staging_dir
from etl.pipeline import run_pipeline


def tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (relative path -> bytes)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def make_tree(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text, encoding="utf-8")


PREVIOUS = {"train.jsonl": "old train\n", "val.jsonl": "old val\n", "metadata.json": "{}",
            "report/report.md": "old report", "datasets/train/x.arrow": "old arrow",
            "embeddings/document_ids.txt": "p1\n", "notes.txt": "a user's file"}
STAGED = {"train.jsonl": "new train\n", "val.jsonl": "new val\n", "metadata.json": '{"new": 1}',
          "report/report.md": "new report"}
# after the swap: the staged export, plus what the export does not write itself (embeddings/, notes.txt)
SWAPPED = {**STAGED, "embeddings/document_ids.txt": "p1\n", "notes.txt": "a user's file"}


def as_bytes(files: dict[str, str]) -> dict[str, bytes]:
    return {k: v.encode("utf-8") for k, v in sorted(files.items())}


# ---- the swap and recovery from an interrupted one ---------------------------------------------

def test_swap_keeps_embeddings_and_replaces_the_export_outputs(tmp_path):
    out = tmp_path / "export"
    make_tree(out, PREVIOUS)
    make_tree(staging_dir(out), STAGED)
    export_mod._swap_in(out, staging_dir(out))
    assert tree(out) == as_bytes(SWAPPED)
    assert not staging_dir(out).exists() and not old_dir(out).exists()
    assert recover_export(out) is None


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5])
def test_a_crash_at_any_step_of_the_swap_is_finished_by_the_next_run(tmp_path, monkeypatch, crash_at):
    """Steps: rename export aside, move embeddings/, move notes.txt, rename staging, delete the old one."""
    out = tmp_path / "export"
    make_tree(out, PREVIOUS)
    make_tree(staging_dir(out), STAGED)
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def step(real):
        def wrapped(*a, **kw):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt("killed")
            return real(*a, **kw)
        return wrapped

    monkeypatch.setattr(export_mod.os, "replace", step(real_replace))
    monkeypatch.setattr(export_mod.shutil, "rmtree", step(real_rmtree))
    with pytest.raises(KeyboardInterrupt):
        export_mod._swap_in(out, staging_dir(out))
    monkeypatch.undo()
    assert recover_export(out) is not None
    # killed before the first rename: the staged export is dropped (the next run builds it again);
    # after it: the validated one waited in .staging, the previous one in .old, and the swap is finished
    assert tree(out) == as_bytes(PREVIOUS if crash_at == 1 else SWAPPED)
    assert not staging_dir(out).exists() and not old_dir(out).exists()


def test_unvalidated_staging_is_discarded_and_the_export_kept(tmp_path):
    out = tmp_path / "export"
    make_tree(out, PREVIOUS)
    make_tree(staging_dir(out), {"train.jsonl": "half"})
    assert "removed the unfinished export" in recover_export(out)
    assert tree(out) == as_bytes(PREVIOUS)
    assert not staging_dir(out).exists()


def test_lone_old_export_is_restored(tmp_path):
    out = tmp_path / "export"
    make_tree(old_dir(out), PREVIOUS)
    assert "restored" in recover_export(out)
    assert tree(out) == as_bytes(PREVIOUS)


def test_ambiguous_state_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "export"
    for d in (out, old_dir(out), staging_dir(out)):
        make_tree(d, {"train.jsonl": d.name})
    with pytest.raises(ExportRecoveryError, match="all exist"):
        recover_export(out)
    assert all((d / "train.jsonl").read_text() == d.name for d in (out, old_dir(out), staging_dir(out)))


# ---- a real run whose export fails validation ---------------------------------------------------

def sql_dir_duplicating_a_doc(root: Path) -> Path:
    """A copy of the SQL models whose export writes docs[3] as docs[1] with its spaces turned to newlines:
    a different string, the same text after normalization (what overlapping passages gave)."""
    sql = root / "sql"
    shutil.copytree(DEFAULT_SQL_DIR, sql)
    f = sql / "export_records.sql"
    text = f.read_text(encoding="utf-8")
    old = "list_transform(list_sort(t.items), lambda x: x.text) AS docs"
    assert old in text
    f.write_text(text.replace(old, "list_transform(list_sort(t.items), lambda x: CASE WHEN x.slot = 4 "
                                   "THEN replace(list_sort(t.items)[2].text, ' ', chr(10)) ELSE x.text END) AS docs"),
                 encoding="utf-8")
    return sql


@pytest.fixture
def good_run(tmp_path, tiny_model, tiny_corpus):
    """A finished run (tiny model) whose export is the previous one."""
    d = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model)
    meta = run_pipeline(load_config(d.config), log=lambda _: None)
    assert meta["total_queries"] > 0
    return d


def test_invalid_export_is_rejected_and_the_previous_one_kept(good_run, tmp_path):
    d = good_run
    before = tree(d.export)
    assert "embeddings/ann_index.usearch" in before and "datasets/train/dataset_info.json" in before
    sql = sql_dir_duplicating_a_doc(tmp_path)

    res = run_cli(["run", "--config", str(d.config), "--set", f"paths.sql='{sql}'"])
    rejected = rejected_dir(d.export)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "failed validation" in res.stderr and str(rejected) in res.stderr
    assert "duplicate doc texts in one record: docs[1] = docs[3]" in res.stderr
    assert "Traceback" not in res.stderr

    assert tree(d.export) == before  # byte for byte, metadata.json and embeddings/ included
    assert not staging_dir(d.export).exists() and not old_dir(d.export).exists()
    meta = json.loads((rejected / "metadata.json").read_text(encoding="utf-8"))
    train = meta["validation"][str(rejected / "train.jsonl")]
    assert train["violations"] == train["records"] == meta["train_samples"] > 0  # every record has the duplicate
    assert train["first_violations"][0] == ("train.jsonl:1: duplicate doc texts in one record: docs[1] = docs[3] "
                                            "(equal after NFC, lower-case, whitespace removed)")
    assert meta["rejected"]["previous_export"] == str(d.export)
    assert meta["quarantine"] == json.loads(before["metadata.json"])["quarantine"]  # the usual stats
    assert (rejected / "train.jsonl").stat().st_size > 0

    # back to the real SQL: the kept export is still fresh, and the stale rejected one goes
    lines: list[str] = []
    run_pipeline(load_config(d.config), log=lines.append)
    assert lines[-1].startswith("  export ") and lines[-1].endswith("skipped (fresh)"), lines[-1]
    assert not rejected.exists()
    after = tree(d.export)
    assert {k: v for k, v in after.items() if k != "metadata.json"} == \
        {k: v for k, v in before.items() if k != "metadata.json"}
    meta = json.loads(after["metadata.json"])
    assert meta["datasets"] == json.loads(before["metadata.json"])["datasets"]
    assert meta["validation"][str(d.export / "train.jsonl")]["violations"] == 0
