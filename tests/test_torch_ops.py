"""The torch engine of the mining stages (etl/torch_ops.py), on the CPU.

* neighbours: ``mining.engine = "torch"`` writes the same layer as the usearch exact search (rows,
  ranks, similarities), with one shard and with several merged shards, duplicates included;
* k-means: inertia within a few % of scikit-learn's on the same data, the same result for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")

from etl import torch_ops  # noqa: E402
from etl.config import ClusteringConfig, ConfigError, MiningConfig, load_config  # noqa: E402
from etl.mine import write_clusters, write_neighbours  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def vectors(tmp_path: Path) -> tuple[Path, Path, list[str], list[str]]:
    rng = np.random.default_rng(11)
    P = _unit(rng.standard_normal((3000, 32)))
    P[2990:] = P[:10]  # exact duplicates: tied similarities, broken by row number in both engines
    Q = _unit(rng.standard_normal((257, 32)))
    Q[:5] = P[100:105]  # queries that are passages: a similarity of 1 at rank 1
    np.save(tmp_path / "p.npy", P)
    np.save(tmp_path / "q.npy", Q)
    return (tmp_path / "p.npy", tmp_path / "q.npy", [f"p{i:05d}" for i in range(len(P))],
            [f"q{i:04d}" for i in range(len(Q))])


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).sort_by([("query_id", "ascending"), ("rank", "ascending")]).to_pylist()


def test_torch_engine_writes_the_exact_search_layer(vectors, tmp_path: Path) -> None:
    p_npy, q_npy, pids, qids = vectors
    base = {"search_depth": 40, "top_k": 30, "exact_below": 10**9}
    exact = tmp_path / "exact.parquet"
    s1 = write_neighbours(exact, p_npy, pids, q_npy, qids, MiningConfig(**base, engine="usearch"), None,
                          progress=False)
    got = tmp_path / "torch.parquet"
    s2 = write_neighbours(got, p_npy, pids, q_npy, qids, MiningConfig(**base, engine="torch"), None,
                          progress=False)
    assert (s1["engine"], s2["engine"]) == ("usearch", "torch")
    want, have = _rows(exact), _rows(got)
    assert len(want) == len(have) == 257 * 40
    # same ranks and float64 similarities everywhere
    assert [(r["query_id"], r["rank"], r["similarity"]) for r in have] == \
        [(r["query_id"], r["rank"], r["similarity"]) for r in want]
    # same passages wherever the similarity does not tie; a planted duplicate pair ties, and there
    # the torch engine keeps the lower row (usearch's exact search may cut the pair at rank k)
    twin = {f"p{i:05d}": f"p{i + 2990:05d}" for i in range(10)}
    twin |= {b: a for a, b in twin.items()}
    differ = [(w["passage_id"], h["passage_id"]) for w, h in zip(want, have, strict=True)
              if w["passage_id"] != h["passage_id"]]
    assert all(twin.get(w) == h for w, h in differ), differ
    assert len(differ) < 10
    for q in {r["query_id"] for r in have}:
        ids = [r["passage_id"] for r in have if r["query_id"] == q]
        for a, b in list(twin.items())[:10]:
            if a in ids and b in ids:
                assert ids.index(a) + 1 == ids.index(b)  # tied pair: adjacent, lower row first
    first = [r for r in have if r["query_id"] == "q0000"][0]
    assert first["passage_id"] == "p00100" and first["similarity"] == pytest.approx(1.0, abs=1e-6)


def test_torch_shards_merge_to_the_same_layer(vectors, tmp_path: Path, monkeypatch) -> None:
    """Passages in several device shards (forced small here), merged by the running top-k files."""
    p_npy, q_npy, pids, qids = vectors
    monkeypatch.setattr(torch_ops, "PASSAGE_BLOCK", 700)
    cfg = MiningConfig(search_depth=25, top_k=25, exact_below=10**9, engine="torch", device_memory_mb=1)
    out = tmp_path / "sharded.parquet"
    stats = write_neighbours(out, p_npy, pids, q_npy, qids, cfg, None, progress=False)
    assert stats["index_shards"] > 1
    assert _rows(out) == _rows(write_neighbours_torch_single(p_npy, pids, q_npy, qids, tmp_path))
    assert not list(tmp_path.glob(".*.topk*"))  # the merge files are removed


def write_neighbours_torch_single(p_npy: Path, pids: list[str], q_npy: Path, qids: list[str],
                                  tmp_path: Path) -> Path:
    """The one-shard torch layer (the reference for the sharded one)."""
    out = tmp_path / "single.parquet"
    cfg = MiningConfig(search_depth=25, top_k=25, exact_below=10**9, engine="torch")
    assert write_neighbours(out, p_npy, pids, q_npy, qids, cfg, None, progress=False)["index_shards"] == 1
    return out


def test_auto_engine_is_usearch_without_cuda(vectors, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch_ops, "cuda_available", lambda: False)
    assert torch_ops.resolve_engine("auto") == "usearch"
    monkeypatch.setattr(torch_ops, "cuda_available", lambda: True)
    assert torch_ops.resolve_engine("auto") == "torch"
    assert torch_ops.resolve_engine("usearch") == "usearch"


def test_unknown_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mining.engine"):
        load_config(None, ["mining.engine=faiss"])


# ---- k-means ------------------------------------------------------------------------------------

def _embedding_like(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    """Unit vectors around ``centres`` random directions (embeddings cluster by topic)."""
    rng = np.random.default_rng(seed)
    c = _unit(rng.standard_normal((centres, dim)))
    x = c[rng.integers(centres, size=n)] + 0.35 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return _unit(x)


@pytest.mark.parametrize(("data", "k"), [("topics", 24), ("uniform", 30)])
def test_torch_kmeans_inertia_is_close_to_scikit_learn(data: str, k: int) -> None:
    from sklearn.cluster import KMeans

    x = (_embedding_like(4000, 48, 24, 3) if data == "topics"
         else _unit(np.random.default_rng(5).standard_normal((4000, 48))))
    ref = KMeans(n_clusters=k, n_init=3, random_state=42).fit(x.astype(np.float64)).inertia_
    centres, inertia = torch_ops.kmeans(x, k, seed=42, n_init=3, device="cpu")
    assert centres.shape == (k, 48) and centres.dtype == np.float32
    assert inertia == pytest.approx(ref, rel=0.03)
    # the reported inertia is the assignment's own
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
    assert inertia == pytest.approx(float(d2.sum()), rel=1e-4)


def test_torch_kmeans_is_deterministic_for_a_seed() -> None:
    x = _embedding_like(2000, 32, 12, 9)
    a, ia = torch_ops.kmeans(x, 12, seed=7, device="cpu")
    b, ib = torch_ops.kmeans(x, 12, seed=7, device="cpu")
    np.testing.assert_array_equal(a, b)
    assert ia == ib
    c, _ = torch_ops.kmeans(x, 12, seed=8, device="cpu")
    assert not np.array_equal(a, c)


def test_kmeans_with_more_clusters_than_distinct_points() -> None:
    """k above the number of distinct rows: no NaN centre, inertia 0."""
    x = np.repeat(_unit(np.random.default_rng(1).standard_normal((5, 8))), 20, axis=0)
    centres, inertia = torch_ops.kmeans(x, 8, seed=1, device="cpu")
    assert np.isfinite(centres).all()
    assert inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("minibatch_above", [10_000, 1500])
def test_torch_clusters_layer(tmp_path: Path, minibatch_above: int) -> None:
    """The layer (every passage, its nearest centre and the distance) and an inertia near scikit-learn's."""
    x = _embedding_like(3000, 32, 20, 4)
    np.save(tmp_path / "p.npy", x)
    ids = [f"p{i:05d}" for i in range(len(x))]
    cfg = ClusteringConfig(k=20, minibatch_above=minibatch_above)
    sk = write_clusters(tmp_path / "sk.parquet", tmp_path / "p.npy", ids, cfg, 42, engine="usearch")
    tc = write_clusters(tmp_path / "tc.parquet", tmp_path / "p.npy", ids, cfg, 42, engine="torch")
    assert (sk["engine"], tc["engine"]) == ("sklearn", "torch")
    assert tc["inertia"] == pytest.approx(sk["inertia"], rel=0.05)
    t = pq.read_table(tmp_path / "tc.parquet").to_pydict()
    assert t["passage_id"] == ids
    lab = np.asarray(t["cluster_id"])
    assert lab.min() >= 0 and lab.max() < 20 and len(set(lab.tolist())) >= 15
    dist = np.asarray(t["centroid_distance"])
    # distances are to the nearest centre: members of one cluster sit around its mean
    for c in range(3):
        members = x[lab == c]
        if len(members):
            centre = members.mean(0)
            np.testing.assert_allclose(dist[lab == c], np.linalg.norm(members - centre, axis=1), atol=0.05)
