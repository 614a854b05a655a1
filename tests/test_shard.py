"""``python -m etl run --shard i/n``: each shard embeds its slice of the texts (by text hash) into
the embedding cache and stops; a plain run afterwards embeds nothing and exports what an unsharded
run exports. ``--shard`` without the cache is refused."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from etl_helpers import run_cli, tiny_run_dirs


def test_two_shards_then_a_plain_run_equal_one_run(tmp_path, tiny_model, tiny_corpus, tiny_reference_run):
    dirs = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model)
    for i in (0, 1):
        res = run_cli(["run", "--config", str(dirs.config), "--shard", f"{i}/2"])
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"(shard {i}/2)" in res.stdout
        assert not (dirs.export / "train.jsonl").exists()  # a shard run stops after embedding
    cache = list((dirs.warehouse / "cache" / "embeddings").rglob("*.parquet"))
    assert cache, "the shards write the embedding cache"
    res = run_cli(["run", "--config", str(dirs.config)])
    assert res.returncode == 0, res.stdout + res.stderr
    stages = json.loads((dirs.export / "metadata.json").read_text(encoding="utf-8"))["stages"]
    assert stages["passage_embeddings"]["extra"]["embedded"] == 0  # every vector came from the shards
    assert stages["query_embeddings"]["extra"]["embedded"] == 0
    # Same records, same docs. A shard batches other texts together, and padded batches of other
    # shapes move a vector by ~1e-7 (CPU float32), so the teacher's cosines agree to ~1e-6; the
    # exported scores are those cosines min-max normalized per record, which can magnify that noise
    # by scale / (max - min), so the raw cosines are the ones compared.
    for name in ("train.jsonl", "val.jsonl"):
        got, want = read(dirs.export / name), read(tiny_reference_run.export / name)
        assert [(r["query"], r["docs"]) for r in got] == [(r["query"], r["docs"]) for r in want], name
    assert got, "the tiny corpus exports records"
    got, want = (pq.read_table(d.warehouse / "layers" / "examples.parquet",
                               columns=["query_id", "passage_ids", "teacher_scores"]).to_pylist()
                 for d in (dirs, tiny_reference_run))
    assert [(r["query_id"], r["passage_ids"]) for r in got] == [(r["query_id"], r["passage_ids"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert max(abs(a - b) for a, b in zip(g["teacher_scores"], w["teacher_scores"], strict=True)) <= 1e-5


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shard_needs_the_cache(tmp_path, tiny_model, tiny_corpus):
    dirs = tiny_run_dirs(tmp_path, tiny_corpus, tiny_model, settings={"embedding": {"cache": False}})
    res = run_cli(["run", "--config", str(dirs.config), "--shard", "0/2"])
    assert res.returncode == 2
    assert "embedding.cache" in res.stderr
