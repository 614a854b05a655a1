"""The shape of the code: the stage list matches what the SQL models read, ``etl/`` has no import
cycle, and ``etl/default.toml`` says what the config dataclasses default to."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from etl import config as config_mod
from etl.config import DEFAULT_CONFIG, DEFAULT_SQL_DIR, Config, load_config, sql_variable_keys
from etl.pipeline import STAGES, STEPS, check_sql_model, covers, model_refs_of, run_pipeline
from etl.sqlrefs import model_refs

ETL_DIR = Path(__file__).resolve().parents[1] / "etl"
STAGE = {s.name: s for s in STAGES}


# ---- the DAG, read from the SQL ----------------------------------------------------------------

@pytest.mark.parametrize("stage", [s for s in STEPS if s.is_sql or s.runs_sql], ids=lambda s: s.name)
def test_sql_model_reads_only_what_its_stage_gets(stage):
    """Every layer a packaged model reads is an earlier stage among its inputs; every variable is set
    from a config key the stage fingerprints."""
    earlier = [s.name for s in STEPS[:STEPS.index(stage)]]
    for name in ([stage.name] if stage.is_sql else []) + list(stage.runs_sql):
        refs = model_refs_of(stage.name, (DEFAULT_SQL_DIR / f"{name}.sql").read_text(encoding="utf-8"))
        if stage.is_sql:
            assert set(refs.layers) <= set(stage.deps), f"{name}.sql reads undeclared layers"
            assert set(stage.deps) <= set(refs.layers), f"stage {stage.name} declares layers {name}.sql never reads"
        assert set(refs.layers) <= set(earlier), f"{name}.sql reads a layer built after it"
        for v in refs.variables:
            for key in sql_variable_keys(v):  # KeyError: a variable nobody sets
                assert covers(stage.config_keys, key), f"{name}.sql reads {v} ({key}), not a key of {stage.name}"


def test_the_export_reads_the_layers_its_sql_reads():
    """The export step's inputs: export_records.sql's layers (candidates for first_rank) + decontamination."""
    export = STEPS[-1]
    assert export.name == "export" and export.sink and export not in STAGES
    assert set(export.deps) == {"passages", "queries", "candidates", "examples", "judged_examples",
                                  "decontamination"}
    assert covers(export.config_keys, "export.first_rank")


def test_stage_inputs_follow_the_sql():
    """The drift the hand-written list had: candidates reads passages, examples does not, top_k counts."""
    assert "passages" in STAGE["candidates"].deps
    assert "documents" not in STAGE["candidates"].deps
    assert "passages" not in STAGE["examples"].deps
    assert "mining.top_k" in STAGE["candidates"].config_keys
    for layer in ("candidates", "scored_candidates", "examples"):  # top_k: effective_top_k's inputs too
        assert {"mining.top_k", "mining.skip_top", "negatives.hard"} <= set(STAGE[layer].config_keys)


def test_every_variable_the_warehouse_sets_maps_to_a_config_key():
    cfg = Config()
    for key in config_mod.SQL_VARIABLES.values():
        config_mod.config_value(cfg, key)  # AttributeError: the table names a key Config lacks
    for keys in config_mod.DERIVED_SQL_VARIABLES.values():
        for key in keys:
            config_mod.config_value(cfg, key)


def test_model_refs_skip_comments_strings_ctes_and_table_functions():
    sql = """-- reads FROM chunks in a comment only
    -- @check: n BETWEEN 1 AND getvariable('chunk_max_chars')
    -- note: getvariable('not_read') in prose
    WITH passages AS (SELECT * FROM documents /* JOIN queries */)
    SELECT 'FROM examples', getvariable('seed') FROM passages, range(3) r
    JOIN read_parquet('x.parquet') f ON true LEFT JOIN neighbours n ON extract(epoch FROM ts) > 0"""
    refs = model_refs(sql, {"chunks", "passages", "documents", "queries", "examples", "neighbours"})
    assert refs.layers == ("documents", "neighbours")
    assert refs.variables == ("chunk_max_chars", "seed")


def _edited_copy(tmp_path: Path, name: str, old: str, new: str) -> Config:
    sql = tmp_path / "sql"
    shutil.copytree(DEFAULT_SQL_DIR, sql)
    text = (sql / f"{name}.sql").read_text(encoding="utf-8")
    assert old in text
    (sql / f"{name}.sql").write_text(text.replace(old, new, 1), encoding="utf-8")
    return load_config(None, [f'paths.sql="{sql}"', f'paths.warehouse="{tmp_path / "wh"}"',
                              f'paths.export="{tmp_path / "out"}"'])


@pytest.mark.parametrize("old,new,message", [
    ("JOIN documents", "JOIN chunks", "reads layer chunks, which is not among its inputs"),
    ("FROM scored_candidates", "FROM scored_candidates JOIN passages USING (passage_id)",
     "reads layer passages"),
    ("getvariable('n_easy')", "getvariable('chunk_max_chars')", "variable set from chunk.max_chars"),
    ("getvariable('n_easy')", "getvariable('n_eazy')", "getvariable('n_eazy') is no variable"),
])
def test_a_model_reading_what_its_stage_does_not_get_fails_before_any_work(tmp_path, old, new, message):
    cfg = _edited_copy(tmp_path, "examples", old, new)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_sql_model(STAGE["examples"], cfg)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_pipeline(cfg, log=lambda _m: None)
    assert not (tmp_path / "wh").exists()  # nothing was built


def test_a_model_reading_a_later_layer_fails(tmp_path):
    cfg = _edited_copy(tmp_path, "passages", "FROM chunks", "FROM chunks JOIN examples USING (passage_id)")
    with pytest.raises(ValueError, match="reads layer examples, which is built after it"):
        check_sql_model(STAGE["passages"], cfg)


def test_the_packaged_models_pass_the_check():
    cfg = load_config()
    for stage in STAGES:
        if stage.is_sql:
            check_sql_model(stage, cfg)


# ---- no import cycle ---------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """``etl`` modules a module imports anywhere: top level, inside functions, under TYPE_CHECKING."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    out.add(f"etl.{node.module}")
                else:  # from . import a, b: modules, or names of etl/__init__.py
                    out |= {f"etl.{a.name}" if (path.parent / f"{a.name}.py").exists() else "etl"
                            for a in node.names}
            elif node.module and (node.module == "etl" or node.module.startswith("etl.")):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name == "etl" or a.name.startswith("etl.")}
    return out


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for f in sorted(ETL_DIR.glob("*.py")):
        name = "etl" if f.stem == "__init__" else f"etl.{f.stem}"
        graph[name] = {m for m in _imports(f) if m != name and m != "etl"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_in_etl_counting_lazy_and_type_checking_imports():
    graph = _module_graph()
    assert "etl.context" in graph["etl.export"] and "etl.pipeline" not in graph["etl.export"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
                                   encoding="utf-8")
    graph = {"etl.a": _imports(tmp_path / "a.py"), "etl.b": _imports(tmp_path / "b.py")}
    assert _cycle(graph) == ["etl.a", "etl.b", "etl.a"]


# ---- defaults: etl/default.toml and the dataclasses agree -------------------------------------

def _field_defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_default_toml_states_every_default_of_the_dataclasses():
    """Each section of etl/default.toml holds every field of its dataclass, at the dataclass default."""
    data = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    defaults = _field_defaults(Config)
    lists = {k for k, v in defaults.items() if isinstance(v, list)}  # [[sources]], [[query_files]]: none by default
    assert set(data) - lists == set(defaults) - lists, "sections differ"
    for section, value in defaults.items():
        if section in lists:  # the bundled sample's sources: known keys only
            item = {"sources": config_mod.SourceConfig, "query_files": config_mod.QueryFileConfig,
                    "decontaminate": config_mod.DecontaminateConfig}[section]
            for table in data.get(section, []):
                assert set(table) <= {f.name for f in dataclasses.fields(item)}, section
            continue
        expected = _field_defaults(type(value))
        assert set(data[section]) == set(expected), (
            f"[{section}]: only in default.toml {sorted(set(data[section]) - set(expected))}, "
            f"only in the dataclass {sorted(set(expected) - set(data[section]))}")
        for key, default in expected.items():
            assert data[section][key] == default, (
                f"{section}.{key}: default.toml {data[section][key]!r}, dataclass {default!r}")
