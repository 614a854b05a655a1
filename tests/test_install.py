"""Install without the repository: the wheel carries the SQL models, the default config and the sample.

The wheel is built from a copy of the project's files (offline: ``--no-build-isolation`` with the
current environment's setuptools), installed with ``--no-deps --no-index`` into a fresh virtualenv
that sees the current environment's dependencies through a ``.pth`` file (its site-packages only:
the editable install's finder there is not activated, so the source tree stays out of reach), and
then run from empty directories, where nothing but the installed package can supply a model file.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from etl_helpers import REPO, make_articles, write_config, write_jsonl

PACKAGE_DATA = sorted(
    str(p.relative_to(REPO)) for pattern in ("etl/sql/**/*.sql", "etl/data/sample/**/*", "etl/prompts/*.txt")
    for p in REPO.glob(pattern) if p.is_file()
) + ["etl/default.toml"]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(wheel, venv, env): the project's wheel installed into a fresh virtualenv."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update({"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"})
    src = root / "src"  # build from a copy: pip's in-tree build would leave build/ and *.egg-info in the repo
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "etl", src / "etl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    res = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-w", root / "dist", src], root, env)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (root / "dist").glob("ko_sparse_etl-*.whl")
    venv = root / "venv"
    res = run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    assert res.returncode == 0, res.stderr
    python = venv / "bin" / "python"
    res = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], root, env)
    assert res.returncode == 0, res.stdout + res.stderr
    (site_dir,) = (venv / "lib").glob("python3*/site-packages")
    deps = [d for d in site.getsitepackages() if Path(d).is_dir()]
    # the dependencies' directories, never the source tree itself (CI's .venv may live inside the
    # checkout; its site-packages holds no etl/, and .pth files there are not read through this .pth)
    assert not any(Path(d).resolve() == REPO or (Path(d) / "etl").exists() for d in deps)
    (site_dir / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")
    return wheel, venv, env


def test_wheel_holds_every_model_the_default_config_and_the_sample(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len([n for n in PACKAGE_DATA if n.endswith(".sql")]) >= 30
    missing = [n for n in PACKAGE_DATA if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert "etl/cli.py" in names


def test_installed_package_runs_to_passages_from_an_empty_directory(installed, tmp_path):
    _, venv, env = installed
    python = venv / "bin" / "python"
    where = run([python, "-c", "import etl, etl.config as c; print(etl.__file__); print(c.DEFAULT_SQL_DIR)"],
                tmp_path, env)
    assert where.returncode == 0, where.stderr
    etl_file, sql_dir = (Path(x) for x in where.stdout.split())
    assert venv in etl_file.parents and venv in sql_dir.parents, where.stdout  # not the source tree

    write_jsonl(tmp_path / "data" / "docs.jsonl", make_articles(4, sentences=12))
    data = tmp_path / "data"
    cfg = write_config(data / "cfg.toml", warehouse=data / "wh", export=data / "out",
                       sources=[("syn", [str(data / "docs.jsonl")])])
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run([python, "-m", "etl", "run", "--config", cfg, "--until", "passages"], empty, env)
    assert res.returncode == 0, res.stdout + res.stderr
    import pyarrow.parquet as pq

    assert pq.read_metadata(tmp_path / "data" / "wh" / "layers" / "passages.parquet").num_rows >= 4
    assert list(empty.iterdir()) == []

    # the console script with the bundled default config and sample, from another empty directory
    cwd = tmp_path / "default"
    cwd.mkdir()
    res = run([venv / "bin" / "ko-sparse-etl", "run", "--until", "passages", "--set", "run.progress=false"], cwd, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (cwd / "warehouse" / "layers" / "passages.parquet").is_file()
    stats = run([venv / "bin" / "ko-sparse-etl", "stats"], cwd, env)
    assert stats.returncode == 1 and "incomplete" in stats.stderr  # a half-built warehouse says so

    # an editable copy of the packaged models
    res = run([python, "-m", "etl", "sql", "--copy", "my_sql"], cwd, env)
    assert res.returncode == 0, res.stderr
    copied = sorted(str(p.relative_to(cwd / "my_sql")) for p in (cwd / "my_sql").rglob("*.sql"))
    assert copied == sorted(str(Path(n).relative_to("etl/sql")) for n in PACKAGE_DATA if n.startswith("etl/sql/"))
