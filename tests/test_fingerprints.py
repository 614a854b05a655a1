"""Stage fingerprints cover exactly the code a stage runs (etl.pipeline.STAGE_MODULES).

Editing a module re-runs the stages that declare it and what depends on them, nothing else; an
edit of the runner in etl/pipeline.py re-runs nothing. Fingerprints are computed, not whole runs:
``planned_fingerprints`` chains each stage's inputs as a full run records them, so a changed
fingerprint is exactly a stage the next run would redo.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from etl_helpers import REPO

from etl import pipeline
from etl.config import load_config
from etl.pipeline import STAGE_MODULES, STEPS, Context, planned_fingerprints

LLM_ON = ["queries.methods=['title', 'first_sentence', 'llm']", "llm.model='some-model'", "judge.enabled=true"]


def downstream(changed: set[str]) -> set[str]:
    """The given stages and every stage that reads one of them, transitively."""
    out = set(changed)
    for stage in STEPS:  # STEPS (the stages, then the export) is in dependency order
        if out & set(stage.deps):
            out.add(stage.name)
    return out


def users_of(module: str) -> set[str]:
    return {name for name, mods in STAGE_MODULES.items() if module in mods}


def changed_stages(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if before[k] != after[k]}


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(load_config(None, LLM_ON), None)  # planned_fingerprints reads no warehouse


def test_every_stage_declares_its_modules():
    assert list(STAGE_MODULES) == [s.name for s in STEPS]
    for name, modules in STAGE_MODULES.items():
        for m in modules:
            assert m.startswith("etl.") and importlib.util.find_spec(m) is not None, (name, m)
    # the cases that were stale before the table existed
    assert "etl.mine" in STAGE_MODULES["clusters"]
    assert "etl.queryfiles" in STAGE_MODULES["query_file_rows"]


ALL_MODULES = sorted({m for mods in STAGE_MODULES.values() for m in mods})
UNUSED_BY_STAGES = ["etl.cli", "etl.publish", "etl.plan"]


@pytest.mark.parametrize("module", ALL_MODULES + UNUSED_BY_STAGES)
def test_editing_a_module_reruns_exactly_the_stages_that_use_it(monkeypatch, ctx, module):
    before = planned_fingerprints(ctx)
    real = pipeline.module_source
    monkeypatch.setattr(pipeline, "module_source",
                        lambda name: real(name) + ("\n# an edit\n" if name == module else ""))
    after = planned_fingerprints(ctx)
    assert changed_stages(before, after) == downstream(users_of(module))


def test_module_edits_seen_by_the_stages_that_were_stale(monkeypatch, ctx):
    """The concrete cases: k-means in etl/mine.py, the query-file reader, the ingest reader."""
    before = planned_fingerprints(ctx)
    real = pipeline.module_source
    for module, must, must_not in [
        ("etl.mine", {"neighbours", "clusters", "candidates", "examples"}, {"queries", "passage_embeddings"}),
        ("etl.queryfiles", {"query_file_rows", "user_queries", "queries"}, {"raw_documents", "passages"}),
        ("etl.ingest", {"raw_documents", "query_file_rows", "passages"}, set()),
        ("etl.llm", {"llm_questions", "queries"}, {"passages", "user_queries"}),
    ]:
        monkeypatch.setattr(pipeline, "module_source",
                            lambda name, module=module: real(name) + ("#" if name == module else ""))
        got = changed_stages(before, planned_fingerprints(ctx))
        assert must <= got and not (must_not & got), (module, got)


def test_llm_module_is_not_hashed_while_the_llm_method_is_off(monkeypatch):
    ctx = Context(load_config(None, []), None)
    before = planned_fingerprints(ctx)
    real = pipeline.module_source
    monkeypatch.setattr(pipeline, "module_source", lambda name: real(name) + ("#" if name == "etl.llm" else ""))
    assert changed_stages(before, planned_fingerprints(ctx)) == set()


FINGERPRINTS_SCRIPT = textwrap.dedent("""
    import json, sys
    import etl
    from etl.config import load_config
    from etl.pipeline import Context, planned_fingerprints
    assert etl.__file__.startswith(sys.argv[1]), etl.__file__
    print(json.dumps(planned_fingerprints(Context(load_config(None, []), None))))
""")


def test_editing_files_of_a_copied_package(tmp_path):
    """Real edits of the files, each in a fresh process: pipeline.py's runner, a stage helper, mine.py."""
    pkg = tmp_path / "etl"
    shutil.copytree(REPO / "etl", pkg, ignore=shutil.ignore_patterns("__pycache__"))

    def fingerprints() -> dict[str, str]:
        res = subprocess.run([sys.executable, "-c", FINGERPRINTS_SCRIPT, str(pkg)], cwd=tmp_path,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def edit(path: Path, anchor: str, added: str) -> str:
        text = path.read_text(encoding="utf-8")
        assert text.count(anchor) == 1, anchor
        path.write_text(text.replace(anchor, anchor + added), encoding="utf-8")
        return text

    base = fingerprints()
    pipeline_py, mine_py = pkg / "pipeline.py", pkg / "mine.py"
    # the runner: not stage code, so nothing re-runs (it used to re-run every Python stage)
    original = edit(pipeline_py, "def run_stage(stage: Stage, ctx: Context, force: bool = False) -> LayerResult:",
                    "\n    # an edit of the runner")
    assert changed_stages(base, fingerprints()) == set()
    pipeline_py.write_text(original, encoding="utf-8")
    # a helper that the neighbours and clusters bodies call
    edit(pipeline_py, "def _export_embeddings(ctx: Context, passages: bool = True, queries: bool = True) -> None:",
         "\n    # an edit of a stage helper")
    assert changed_stages(base, fingerprints()) == downstream({"neighbours", "clusters"})
    pipeline_py.write_text(original, encoding="utf-8")
    # etl/mine.py (the k-means change that left clusters stale)
    mine_py.write_text(mine_py.read_text(encoding="utf-8") + "\n# an edit\n", encoding="utf-8")
    assert changed_stages(base, fingerprints()) == downstream({"neighbours", "clusters", "candidates"})
