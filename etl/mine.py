"""Python stages over the embedding layers: ``neighbours`` (usearch) and ``clusters`` (k-means).

Embeddings are streamed out of DuckDB in record batches into ``.npy`` files (memory-mapped, in id
order), which both stages then read in batches; nothing holds a whole table in Python objects.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ClusteringConfig, MiningConfig

BATCH = 20_000


def export_embeddings(con, layer: str, id_col: str, npy_path: Path, ids_path: Path, dim: int) -> int:
    """Stream ``layer.embedding`` ordered by ``id_col`` into ``npy_path`` (+ one id per line in ``ids_path``).

    Both files are written under temporary names and renamed when complete.
    """
    n = int(con.execute(f"SELECT count(*) FROM {layer}").fetchall()[0][0])
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy_path.with_name(f".{npy_path.name}.{os.getpid()}.tmp")
    tmp_ids = ids_path.with_name(f".{ids_path.name}.{os.getpid()}.tmp")
    arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=(n, dim))
    reader = con.sql(f"SELECT {id_col}, embedding FROM {layer} ORDER BY {id_col}").to_arrow_reader(BATCH)
    row = 0
    with open(tmp_ids, "w", encoding="utf-8") as fh:
        for batch in reader:
            ids = batch.column(0).to_pylist()
            emb = batch.column(1)
            flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            arr[row : row + len(ids)] = flat.reshape(len(ids), dim)
            fh.write("".join(i + "\n" for i in ids))
            row += len(ids)
    arr.flush()
    del arr
    os.replace(tmp_npy, npy_path)
    os.replace(tmp_ids, ids_path)
    return n


def read_ids(path: Path) -> list[str]:
    """Ids written by :func:`export_embeddings`, in row order."""
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def build_index(vectors: np.ndarray, cfg: MiningConfig, path: Path | None = None):
    """Build a usearch HNSW index (cosine, explicit dtype) over ``vectors`` added in batches; save it."""
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="cos", dtype=cfg.dtype, connectivity=cfg.connectivity,
                  expansion_add=cfg.expansion_add, expansion_search=cfg.expansion_search)
    for start in range(0, len(vectors), 100_000):
        chunk = np.ascontiguousarray(vectors[start : start + 100_000])
        index.add(np.arange(start, start + len(chunk), dtype=np.uint64), chunk)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        index.save(str(tmp))
        os.replace(tmp, path)
    return index


def search(index, passages: np.ndarray, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` passage rows per query, re-scored exactly in float32.

    Returns (rows, sims), each (n_queries, k); rows are -1 and sims NaN where fewer than k matches
    were found (usearch pads keys with 0, so ``counts`` is respected). Ties are broken by row
    number so the result is deterministic.
    """
    from usearch.index import search as brute_force

    k = min(k, len(passages))
    if exact:
        matches = brute_force(passages, queries, k, metric="cos", exact=True)
    else:
        matches = index.search(queries, k)
    n = len(queries)
    keys = np.asarray(matches.keys).reshape(n, -1)[:, :k].astype(np.int64)
    counts = np.asarray(matches.counts).reshape(-1)
    valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
    keys = np.where(valid, keys, 0)
    # exact float32 re-score of every retrieved passage, vectorized over the batch
    vecs = np.asarray(passages[keys.reshape(-1)], dtype=np.float32).reshape(n, keys.shape[1], -1)
    sims = np.einsum("nkd,nd->nk", vecs, np.asarray(queries, dtype=np.float32)).astype(np.float64)
    sims = np.where(valid, sims, -np.inf)
    order = np.lexsort((keys, -sims), axis=-1)  # similarity descending, then row number
    keys = np.take_along_axis(keys, order, axis=-1)
    sims = np.take_along_axis(sims, order, axis=-1)
    valid = np.isfinite(sims)
    rows = np.where(valid, keys, -1)
    return rows, np.where(valid, sims, np.nan)


NEIGHBOUR_SCHEMA = pa.schema([("query_id", pa.string()), ("rank", pa.int32()),
                              ("passage_id", pa.string()), ("similarity", pa.float64())])


def write_neighbours(out: Path, passages_npy: Path, passage_ids: list[str], queries_npy: Path,
                     query_ids: list[str], cfg: MiningConfig, index_path: Path | None,
                     progress: bool = True) -> dict[str, float]:
    """The ``neighbours`` layer: top-k passages per query with exact cosine similarity."""
    from tqdm import tqdm

    P = np.load(passages_npy, mmap_mode="r")
    Q = np.load(queries_npy, mmap_mode="r")
    exact = len(P) < cfg.exact_below
    index = build_index(P, cfg, index_path)
    writer = pq.ParquetWriter(out, NEIGHBOUR_SCHEMA, compression="zstd")
    written = 0
    try:
        for start in tqdm(range(0, len(Q), 1024), desc="neighbours", disable=not progress):
            q = np.ascontiguousarray(Q[start : start + 1024])
            rows, sims = search(index, P, q, cfg.search_depth, exact)
            qi, rank = np.nonzero(rows >= 0)
            table = pa.table({
                "query_id": pa.array([query_ids[start + i] for i in qi], pa.string()),
                "rank": pa.array(rank + 1, pa.int32()),
                "passage_id": pa.array([passage_ids[r] for r in rows[qi, rank]], pa.string()),
                "similarity": pa.array(sims[qi, rank], pa.float64()),
            })
            writer.write_table(table)
            written += len(table)
    finally:
        writer.close()
    return {"exact_search": float(exact), "index_size": float(len(P)), "rows": float(written)}


def auto_k(n: int, k: int) -> int:
    """Number of clusters: ``k`` if set, else round(sqrt(n / 2)) clamped to [2, 4096] and to n."""
    if k <= 0:
        k = int(round(math.sqrt(n / 2)))
        k = max(2, min(4096, k))
    return max(1, min(k, n))


def write_clusters(out: Path, passages_npy: Path, passage_ids: list[str], cfg: ClusteringConfig,
                   seed: int) -> dict[str, float]:
    """The ``clusters`` layer: k-means cluster id and distance to its centroid for every passage.

    Up to ``minibatch_above`` passages: KMeans on all of them. Above: MiniBatchKMeans fitted on a
    seeded sample of that size, then every passage assigned in batches.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    P = np.load(passages_npy, mmap_mode="r")
    n = len(P)
    k = auto_k(n, cfg.k)
    if n <= cfg.minibatch_above:
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(np.asarray(P))
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=cfg.minibatch_above, replace=False))
        model = MiniBatchKMeans(n_clusters=k, batch_size=cfg.batch_size, n_init=3,
                                random_state=seed).fit(np.asarray(P[sample]))
    centers = model.cluster_centers_.astype(np.float32)
    writer = pq.ParquetWriter(out, pa.schema([("passage_id", pa.string()), ("cluster_id", pa.int32()),
                                              ("centroid_distance", pa.float64())]), compression="zstd")
    try:
        for start in range(0, n, 100_000):
            x = np.asarray(P[start : start + 100_000], dtype=np.float32)
            d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
            lab = d2.argmin(1)
            dist = np.sqrt(np.maximum(d2[np.arange(len(x)), lab], 0.0))
            writer.write_table(pa.table({
                "passage_id": pa.array(passage_ids[start : start + len(x)], pa.string()),
                "cluster_id": pa.array(lab.astype(np.int32)),
                "centroid_distance": pa.array(dist.astype(np.float64)),
            }))
    finally:
        writer.close()
    return {"k": float(k), "inertia": float(model.inertia_)}
