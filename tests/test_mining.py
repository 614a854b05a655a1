"""Nearest-neighbour mining at bounded memory (etl/mine.py): index shards, vector store, cosine UDFs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from etl.config import MiningConfig
from etl.mine import CosineUDFs, VectorStore, shard_bounds, write_neighbours


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def vectors(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    P, Q = _unit(rng, 2500, 24), _unit(rng, 300, 24)
    np.save(tmp_path / "p.npy", P)
    np.save(tmp_path / "q.npy", Q)
    return tmp_path / "p.npy", tmp_path / "q.npy", P, Q


def _neighbours(path: Path) -> dict[str, list[str]]:
    t = pq.read_table(path).to_pylist()
    out: dict[str, list[str]] = {}
    for r in sorted(t, key=lambda r: (r["query_id"], r["rank"])):
        out.setdefault(r["query_id"], []).append(r["passage_id"])
    return out


def test_shards_respect_the_memory_bound() -> None:
    cfg = MiningConfig(index_memory_mb=1)
    bounds = shard_bounds(10_000, 384, cfg)
    assert len(bounds) > 1
    assert bounds[0][0] == 0 and bounds[-1][1] == 10_000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert shard_bounds(10_000, 384, MiningConfig(index_memory_mb=4096)) == [(0, 10_000)]


def test_sharded_index_finds_the_exact_neighbours(vectors, tmp_path: Path) -> None:
    """Several small HNSW shards, merged, give the same top-k as brute force on a small corpus."""
    p_npy, q_npy, P, Q = vectors
    pids = [f"p{i:05d}" for i in range(len(P))]
    qids = [f"q{i:04d}" for i in range(len(Q))]
    k = 20
    exact = tmp_path / "exact.parquet"
    write_neighbours(exact, p_npy, pids, q_npy, qids, MiningConfig(search_depth=k, top_k=k, exact_below=10**9),
                     None, progress=False)
    sharded = tmp_path / "sharded.parquet"
    cfg = MiningConfig(search_depth=k, top_k=k, exact_below=0, index_memory_mb=1, expansion_search=256)
    stats = write_neighbours(sharded, p_npy, pids, q_npy, qids, cfg, tmp_path / "ann.usearch", progress=False)
    assert stats["index_shards"] > 1
    assert len(list(tmp_path.glob("ann-*-of-*.usearch"))) == stats["index_shards"]
    truth = np.argsort(-(Q @ P.T), axis=1)[:, :k]
    want = {qids[i]: [pids[j] for j in truth[i]] for i in range(len(Q))}
    assert _neighbours(exact) == want
    got = _neighbours(sharded)
    recall = np.mean([len(set(got[q]) & set(want[q])) / k for q in qids])
    assert recall >= 0.99
    sims = pq.read_table(sharded).column("similarity").to_numpy()
    assert np.isfinite(sims).all()


def test_vector_store_reads_rows_across_releases(vectors) -> None:
    p_npy, _, P, _ = vectors
    store = VectorStore(p_npy, release_bytes=4096)  # slices release the mapping after every read
    idx = np.array([5, 2499, 0, 5, 1234])
    for _ in range(3):
        np.testing.assert_array_equal(store.rows(idx), P[idx])
        np.testing.assert_array_equal(store.slice(100, 140), P[100:140])


def test_cosine_udfs_match_numpy(vectors) -> None:
    p_npy, q_npy, P, Q = vectors
    con = duckdb.connect()
    CosineUDFs(p_npy, q_npy).register(con)
    rng = np.random.default_rng(1)
    qi, pi, pj = rng.integers(0, len(Q), 5000), rng.integers(0, len(P), 5000), rng.integers(0, len(P), 5000)
    con.execute("CREATE TABLE t AS SELECT * FROM (SELECT unnest(?) AS qi, unnest(?) AS pi, unnest(?) AS pj)",
                [qi.tolist(), pi.tolist(), pj.tolist()])
    rows = con.execute("SELECT query_passage_cos(qi, pi), passage_passage_cos(pi, pj) FROM t").fetchall()
    got = np.array(rows)
    want_qp = (Q[qi].astype(np.float64) * P[pi]).sum(1)
    want_pp = (P[pi].astype(np.float64) * P[pj]).sum(1)
    np.testing.assert_allclose(got[:, 0], want_qp, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], want_pp, atol=1e-6)
