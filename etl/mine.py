"""Python stages over the embedding layers, and the cosine UDFs the ``candidates`` model calls.

Stages: ``neighbours`` (usearch) and ``clusters`` (k-means).

Embeddings are streamed out of DuckDB in record batches into ``.npy`` files (in id order), which
the stages then read through :class:`VectorStore` (a read-only memory map: sequential passes hand
their pages back as they go; rows read at random stay as reclaimable page cache). Nothing holds a
whole table in Python objects, and one HNSW index never holds more than ``mining.index_memory_mb``:
a larger corpus is indexed in shards whose results are merged.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ClusteringConfig, MiningConfig

BATCH = 20_000
ASSIGN_BATCH = 20_000  # k-means assignment rows per batch
QUERY_BATCH = 1024
RELEASE_BYTES = 64 << 20  # sequential reads hand their mapped pages back after this much


def export_embeddings(con, layer: str, id_col: str, npy_path: Path, ids_path: Path, dim: int) -> int:
    """Stream ``layer.embedding`` ordered by ``id_col`` into ``npy_path`` (+ one id per line in ``ids_path``).

    The array is written with plain sequential writes (no writable memory map, whose dirty pages
    would count against the process), under temporary names renamed when complete.
    """
    n = int(con.execute(f"SELECT count(*) FROM {layer}").fetchall()[0][0])
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy_path.with_name(f".{npy_path.name}.{os.getpid()}.tmp")
    tmp_ids = ids_path.with_name(f".{ids_path.name}.{os.getpid()}.tmp")
    reader = con.sql(f"SELECT {id_col}, embedding FROM {layer} ORDER BY {id_col}").to_arrow_reader(BATCH)
    row = 0
    with open(tmp_npy, "wb") as out, open(tmp_ids, "w", encoding="utf-8") as fh:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (n, dim)})
        for batch in reader:
            ids = batch.column(0).to_pylist()
            flat = batch.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            if flat.size != len(ids) * dim:
                raise ValueError(f"{layer}: embeddings are not all {dim}-dimensional")
            out.write(np.ascontiguousarray(flat).tobytes())
            fh.write("".join(i + "\n" for i in ids))
            row += len(ids)
    if row != n:
        raise RuntimeError(f"{layer}: exported {row} rows, expected {n}")
    os.replace(tmp_npy, npy_path)
    os.replace(tmp_ids, ids_path)
    return n


def read_ids(path: Path) -> list[str]:
    """Ids written by :func:`export_embeddings`, in row order."""
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


class VectorStore:
    """Rows of an ``.npy`` matrix read through a read-only memory map.

    Sequential reads (:meth:`slice`: index build, k-means assignment, query batches) hand their
    pages back to the kernel after every ``release_bytes`` (``madvise(MADV_DONTNEED)``; the pages
    stay in the page cache), so a pass over the file does not leave it resident. Random reads
    (:meth:`rows`: re-scoring, the cosine UDFs) keep their pages mapped: dropping them would make
    every later row a page fault again (measured: 30x slower). Those pages are clean page cache
    (``RssFile``) that the kernel reclaims under memory pressure; they are not heap memory and
    never cause an out-of-memory failure. ``benchmarks/bench_memory.py`` reports both parts.
    """

    def __init__(self, source: Path | np.ndarray, release_bytes: int = RELEASE_BYTES) -> None:
        self.array = source if isinstance(source, np.ndarray) else np.load(Path(source), mmap_mode="r")
        self.release_bytes = release_bytes
        self._read = 0

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.array.shape[1])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 copy of the rows ``idx`` (any order, repeats allowed)."""
        return np.asarray(self.array[np.asarray(idx, dtype=np.int64)], dtype=np.float32)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """float32 copy of rows ``start:stop``; releases the mapped pages every ``release_bytes``."""
        out = np.array(self.array[start:stop], dtype=np.float32)
        self._read += out.nbytes
        if self._read >= self.release_bytes:
            self.release()
        return out

    def release(self) -> None:
        """Drop this process's mapped pages of the file (no-op where madvise is unavailable)."""
        self._read = 0
        mm = getattr(self.array, "_mmap", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)


def bytes_per_vector(dim: int, cfg: MiningConfig) -> int:
    """Upper estimate of one vector's memory in a usearch HNSW index.

    Measured with usearch 2.x (``Index.memory_usage``): scalars + about 40 bytes per unit of
    connectivity per slot, and the index grows its capacity in powers of two, so up to 2x that.
    """
    scalar = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i8": 1, "b1": 1 / 8}.get(cfg.dtype, 4)
    return 2 * (int(math.ceil(dim * scalar)) + 40 * cfg.connectivity + 16)


def shard_bounds(n: int, dim: int, cfg: MiningConfig) -> list[tuple[int, int]]:
    """Row ranges of the index shards: equal parts, each within ``cfg.index_memory_mb``."""
    per_shard = max(1, (cfg.index_memory_mb << 20) // bytes_per_vector(dim, cfg))
    parts = max(1, math.ceil(n / per_shard))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def as_store(vectors: VectorStore | np.ndarray) -> VectorStore:
    """``vectors`` as a :class:`VectorStore` (an in-memory matrix is wrapped as is)."""
    return vectors if isinstance(vectors, VectorStore) else VectorStore(vectors)


def build_index(vectors: VectorStore | np.ndarray, cfg: MiningConfig, path: Path | None = None,
                start: int = 0, stop: int | None = None):
    """Build a usearch HNSW index (cosine, explicit dtype) over rows ``start:stop``, keyed by row; save it."""
    from usearch.index import Index

    store = as_store(vectors)
    stop = len(store) if stop is None else stop
    index = Index(ndim=store.dim, metric="cos", dtype=cfg.dtype, connectivity=cfg.connectivity,
                  expansion_add=cfg.expansion_add, expansion_search=cfg.expansion_search)
    for s in range(start, stop, 100_000):
        chunk = store.slice(s, min(stop, s + 100_000))
        index.add(np.arange(s, s + len(chunk), dtype=np.uint64), chunk)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        index.save(str(tmp))
        os.replace(tmp, path)
    return index


def search(index, vectors: VectorStore | np.ndarray, queries: np.ndarray, k: int,
           exact_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` passage rows per query, re-scored exactly in float32.

    ``index`` is a usearch index keyed by row number; with ``exact_rows`` (a float32 matrix of every
    passage) the search is brute force instead. Returns (rows, sims), each (n_queries, k); rows are
    -1 and sims NaN where fewer than k matches were found (usearch pads keys with 0, so ``counts``
    is respected). Ties are broken by row number so the result is deterministic.
    """
    from usearch.index import search as brute_force

    store = as_store(vectors)
    n = len(queries)
    k = min(k, len(store))
    if exact_rows is not None:
        matches = brute_force(exact_rows, queries, k, metric="cos", exact=True)
    else:
        matches = index.search(queries, k)
    keys = np.asarray(matches.keys).reshape(n, -1)[:, :k].astype(np.int64)
    counts = np.asarray(matches.counts).reshape(-1)
    valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
    return rescore(store, queries, np.where(valid, keys, 0), valid, k)


def rescore(store: VectorStore, queries: np.ndarray, keys: np.ndarray, valid: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 re-score of the retrieved rows ``keys`` (n, m) of each query; the best ``k``.

    Every engine's candidates go through here, so similarities and the tie order (similarity
    descending, then row ascending) do not depend on how the candidates were found.
    """
    n = len(queries)
    # exact float32 re-score of every retrieved passage, vectorized over the batch
    vecs = store.rows(keys.reshape(-1)).reshape(n, keys.shape[1], -1)
    sims = np.einsum("nkd,nd->nk", vecs, np.asarray(queries, dtype=np.float32)).astype(np.float64)
    return _top(keys, np.where(valid, sims, -np.inf), k)


def _top(keys: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (similarity descending, then row ascending) of each row; invalid = -inf."""
    order = np.lexsort((keys, -sims), axis=-1)[:, :k]  # similarity descending, then row number
    keys = np.take_along_axis(keys, order, axis=-1)
    sims = np.take_along_axis(sims, order, axis=-1)
    valid = np.isfinite(sims)
    return np.where(valid, keys, -1), np.where(valid, sims, np.nan)


NEIGHBOUR_SCHEMA = pa.schema([("query_id", pa.string()), ("rank", pa.int32()),
                              ("passage_id", pa.string()), ("similarity", pa.float64())])


def write_neighbours(out: Path, passages_npy: Path, passage_ids: list[str], queries_npy: Path,
                     query_ids: list[str], cfg: MiningConfig, index_path: Path | None,
                     progress: bool = True) -> dict[str, float]:
    """The ``neighbours`` layer: top-``search_depth`` passages per query with exact cosine similarity.

    ``cfg.engine`` (:func:`etl.torch_ops.resolve_engine`): ``usearch`` (the CPU path; ``auto``
    without a CUDA device) or ``torch`` (:func:`write_neighbours_torch`, exact on any device).
    usearch: below ``cfg.exact_below`` passages the search is exact. Above, one HNSW index per shard
    of at most ``cfg.index_memory_mb``; with several shards, each is built, searched by every query
    and freed in turn, and a running top-k per query (kept in files, not memory) merges their results.
    """
    from tqdm import tqdm

    from .torch_ops import resolve_engine

    if index_path is not None:  # index files of an earlier run (its shard count may differ)
        for old in index_path.parent.glob(f"{index_path.stem}*{index_path.suffix}"):
            old.unlink()
    if resolve_engine(cfg.engine) == "torch":
        return write_neighbours_torch(out, passages_npy, passage_ids, queries_npy, query_ids, cfg, progress)
    P = VectorStore(passages_npy)
    Q = VectorStore(queries_npy)
    n_q = len(Q)
    k = min(cfg.search_depth, len(P))
    exact = len(P) < cfg.exact_below
    shards = [(0, len(P))] if exact else shard_bounds(len(P), P.dim, cfg)
    work = out.with_name(f".{out.name}.topk")
    best_rows = work.with_suffix(".rows") if len(shards) > 1 else None
    best_sims = work.with_suffix(".sims") if len(shards) > 1 else None
    exact_rows = P.slice(0, len(P)) if exact else None  # exact search: one shard, all rows in memory
    writer = pq.ParquetWriter(out, NEIGHBOUR_SCHEMA, compression="zstd")
    written = 0
    try:
        for si, (lo, hi) in enumerate(shards):
            path = index_path
            if index_path is not None and len(shards) > 1:
                path = index_path.with_name(f"{index_path.stem}-{si:03d}-of-{len(shards):03d}{index_path.suffix}")
            index = build_index(P, cfg, path, lo, hi)
            last = si == len(shards) - 1
            desc = "neighbours" if len(shards) == 1 else f"neighbours shard {si + 1}/{len(shards)}"
            for start in tqdm(range(0, n_q, QUERY_BATCH), desc=desc, disable=not progress):
                q = Q.slice(start, start + QUERY_BATCH)
                rows, sims = search(index, P, q, k, exact_rows)
                if best_rows is not None:
                    rows, sims = _merge_running(best_rows, best_sims, start, rows, sims, k, first=si == 0)
                if last:
                    written += _write_batch(writer, query_ids, passage_ids, start, rows, sims)
            del index
    finally:
        writer.close()
        for f in (best_rows, best_sims):
            if f is not None:
                f.unlink(missing_ok=True)
    return {"exact_search": float(exact), "index_size": float(len(P)), "index_shards": float(len(shards)),
            "rows": float(written), "engine": "usearch"}


def torch_shard_bounds(n: int, dim: int, cfg: MiningConfig, device: Any, elem_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of the passage shards the torch engine holds on the device one at a time.

    Each within ``cfg.device_memory_mb`` (0: half the device's free memory on a GPU,
    ``cfg.index_memory_mb`` on the CPU), less room for the scores blocks.
    """
    from .torch_ops import PASSAGE_BLOCK, device_bytes_free

    budget = cfg.device_memory_mb << 20
    if budget <= 0:
        free = device_bytes_free(device)
        budget = free // 2 if free else cfg.index_memory_mb << 20
    budget -= 4 * QUERY_BATCH * PASSAGE_BLOCK * 4  # scores block, its top-k and temporaries
    per_shard = max(PASSAGE_BLOCK, budget // max(1, dim * elem_bytes))
    parts = max(1, math.ceil(n / per_shard))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def write_neighbours_torch(out: Path, passages_npy: Path, passage_ids: list[str], queries_npy: Path,
                           query_ids: list[str], cfg: MiningConfig, progress: bool = True) -> dict[str, Any]:
    """The ``neighbours`` layer by exact search in torch (``mining.engine = "torch"``), on a GPU when present.

    One passage shard at a time sits on the device (float16 on a GPU, float32 on the CPU); every
    query batch takes its :func:`etl.torch_ops.candidate_count` best rows of the shard by blocked
    matrix products, which :func:`rescore` re-scores in float32 as the usearch path does, and shards
    merge through the same running top-k files. The output layer is the usearch exact search's: the
    same rows, ranks and similarities wherever the similarities do not tie.
    """
    from tqdm import tqdm

    from .torch_ops import candidate_count, compute_dtype, device_of, load_shard, topk_candidates

    P = VectorStore(passages_npy)
    Q = VectorStore(queries_npy)
    n_q = len(Q)
    k = min(cfg.search_depth, len(P))
    m = candidate_count(k, len(P))
    device = device_of("auto")
    dtype = compute_dtype(device)
    elem = 4 if str(dtype) == "torch.float32" else 2
    shards = torch_shard_bounds(len(P), P.dim, cfg, device, elem)
    work = out.with_name(f".{out.name}.topk")
    best_rows = work.with_suffix(".rows") if len(shards) > 1 else None
    best_sims = work.with_suffix(".sims") if len(shards) > 1 else None
    writer = pq.ParquetWriter(out, NEIGHBOUR_SCHEMA, compression="zstd")
    written = 0
    try:
        for si, (lo, hi) in enumerate(shards):
            blocks = load_shard(P, lo, hi, device, dtype)
            last = si == len(shards) - 1
            desc = f"neighbours (torch, {device.type})" + ("" if len(shards) == 1 else f" shard {si + 1}/{len(shards)}")
            for start in tqdm(range(0, n_q, QUERY_BATCH), desc=desc, disable=not progress):
                q = Q.slice(start, start + QUERY_BATCH)
                keys = topk_candidates(blocks, lo, q, min(m, hi - lo))
                valid = np.ones(keys.shape, dtype=bool)
                if keys.shape[1] < k:  # a shard smaller than k: pad as usearch pads a short result
                    pad = k - keys.shape[1]
                    keys = np.pad(keys, ((0, 0), (0, pad)))
                    valid = np.pad(valid, ((0, 0), (0, pad)))
                rows, sims = rescore(P, q, keys, valid, k)
                if best_rows is not None:
                    rows, sims = _merge_running(best_rows, best_sims, start, rows, sims, k, first=si == 0)
                if last:
                    written += _write_batch(writer, query_ids, passage_ids, start, rows, sims)
            del blocks
    finally:
        writer.close()
        for f in (best_rows, best_sims):
            if f is not None:
                f.unlink(missing_ok=True)
    return {"exact_search": 1.0, "index_size": float(len(P)), "index_shards": float(len(shards)),
            "rows": float(written), "engine": "torch", "device": device.type}


def _merge_running(rows_file: Path, sims_file: Path, start: int, rows: np.ndarray, sims: np.ndarray, k: int,
                   first: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge a batch's shard results into the running top-k kept in two flat files; return the merged batch."""
    n = len(rows)
    if not first:
        with open(rows_file, "rb") as fr, open(sims_file, "rb") as fs:
            fr.seek(start * k * 8)
            fs.seek(start * k * 8)
            old_rows = np.fromfile(fr, dtype=np.int64, count=n * k).reshape(n, k)
            old_sims = np.fromfile(fs, dtype=np.float64, count=n * k).reshape(n, k)
        keys = np.concatenate([old_rows, rows], axis=1)
        sc = np.concatenate([old_sims, sims], axis=1)
        sc = np.where(keys >= 0, np.nan_to_num(sc, nan=-np.inf), -np.inf)
        rows, sims = _top(np.where(keys >= 0, keys, np.iinfo(np.int64).max), sc, k)
    mode = "wb" if first and start == 0 else "r+b"
    with open(rows_file, mode) as fr, open(sims_file, mode) as fs:
        fr.seek(start * k * 8)
        fs.seek(start * k * 8)
        fr.write(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        fs.write(np.ascontiguousarray(sims, dtype=np.float64).tobytes())
    return rows, sims


def _write_batch(writer: pq.ParquetWriter, query_ids: list[str], passage_ids: list[str], start: int,
                 rows: np.ndarray, sims: np.ndarray) -> int:
    qi, rank = np.nonzero(rows >= 0)
    table = pa.table({
        "query_id": pa.array([query_ids[start + i] for i in qi], pa.string()),
        "rank": pa.array(rank + 1, pa.int32()),
        "passage_id": pa.array([passage_ids[r] for r in rows[qi, rank]], pa.string()),
        "similarity": pa.array(sims[qi, rank], pa.float64()),
    })
    writer.write_table(table)
    return len(table)


class CosineUDFs:
    """DuckDB scalar functions giving cosine similarities by embedding row, for ``etl/sql/candidates.sql``.

    ``query_passage_cos(q_row, p_row)`` and ``passage_passage_cos(p_row, p_row)`` read rows of the
    exported ``.npy`` files (row = position in id order, as written by :func:`export_embeddings`),
    so the SQL never joins embedding lists: each call moves two integers in and one double out.
    Computed in float64 per row, so a value never depends on how DuckDB batches the calls.
    """

    def __init__(self, passages_npy: Path, queries_npy: Path) -> None:
        self.P = VectorStore(passages_npy)
        self.Q = VectorStore(queries_npy)

    @staticmethod
    def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        b = b.astype(np.float64)
        den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)

    def _udf(self, left: VectorStore):
        def fn(x: pa.Array, y: pa.Array) -> pa.Array:
            i = x.to_numpy(zero_copy_only=False)
            j = y.to_numpy(zero_copy_only=False)
            return pa.array(self._cos(left.rows(i), self.P.rows(j)), pa.float64())
        return fn

    def near_duplicate_of_earlier(self, rows: list[np.ndarray], threshold: float | list[float]) -> list[np.ndarray]:
        """For each list of passage rows: True where a row's cosine to an earlier row of its list is >= threshold.

        The lists are a query's negative candidates in picking order, so the later of two
        near-duplicates is flagged (also when the earlier one is flagged itself: no two unflagged
        rows of a list are ever near-duplicates). The vectors of all lists are read in one gather
        and every list's Gram matrix comes from one batched float32 product.
        """
        thresholds = [float(threshold)] * len(rows) if np.isscalar(threshold) else [float(t) for t in threshold]
        lengths = [len(r) for r in rows]
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
        if not len(flat) or max(lengths) < 2:
            return [np.zeros(n, dtype=bool) for n in lengths]
        v = np.asarray(self.P.rows(flat), dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        v /= np.where(norms > 0, norms, 1.0)[:, None]
        # pad the lists to one length and take every list's Gram matrix in one batched product
        width = max(lengths)
        pos = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        start = 0
        for i, n in enumerate(lengths):
            pos[i, :n] = np.arange(start, start + n)
            mask[i, :n] = True
            start += n
        x = v[pos] * mask[:, :, None]
        gram = np.matmul(x, x.transpose(0, 2, 1))  # float32: the threshold is compared to ~1e-6
        earlier = np.triu(np.ones((width, width), dtype=bool), k=1)[None, :, :]  # [i, j] for i < j
        hit = ((gram >= np.asarray(thresholds, dtype=np.float32)[:, None, None]) & earlier).any(axis=1)
        return [hit[i, :n] for i, n in enumerate(lengths)]

    def _near_dup_udf(self, x: pa.Array, t: pa.Array) -> pa.Array:
        lists = x.to_pylist()
        thr = t.to_numpy(zero_copy_only=False)
        present = [i for i, r in enumerate(lists) if r is not None]
        flags = self.near_duplicate_of_earlier([np.asarray(lists[i], dtype=np.int64) for i in present],
                                               [float(thr[i]) for i in present])
        res: list[list[bool] | None] = [None] * len(lists)
        for i, f in zip(present, flags, strict=True):
            res[i] = f.tolist()
        return pa.array(res, pa.list_(pa.bool_()))

    def register(self, con: Any) -> None:
        """Create (or replace) the cosine UDFs on ``con``.

        ``query_passage_cos(q_row, p_row)``, ``passage_passage_cos(p_row, p_row)`` and
        ``near_duplicate_of_earlier(p_rows BIGINT[], threshold DOUBLE) -> BOOLEAN[]`` (see
        :meth:`near_duplicate_of_earlier`).
        """
        import duckdb

        big, dbl = duckdb.sqltype("BIGINT"), duckdb.sqltype("DOUBLE")
        for name, left in (("query_passage_cos", self.Q), ("passage_passage_cos", self.P)):
            try:
                con.remove_function(name)
            except Exception:  # noqa: BLE001 - not registered yet
                pass
            con.create_function(name, self._udf(left), [big, big], dbl, type="arrow", side_effects=False)
        try:
            con.remove_function("near_duplicate_of_earlier")
        except Exception:  # noqa: BLE001 - not registered yet
            pass
        con.create_function("near_duplicate_of_earlier", self._near_dup_udf, [duckdb.list_type(big), dbl],
                            duckdb.list_type(duckdb.sqltype("BOOLEAN")), type="arrow", side_effects=False)


def auto_k(n: int, k: int) -> int:
    """Number of clusters: ``k`` if set, else round(sqrt(n / 2)) clamped to [2, 4096] and to n."""
    if k <= 0:
        k = int(round(math.sqrt(n / 2)))
        k = max(2, min(4096, k))
    return max(1, min(k, n))


def nearest_centre(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's nearest centre and the squared distance to it (clipped at 0), as float32 matrix maths."""
    d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
    lab = d2.argmin(1)
    return lab, np.maximum(d2[np.arange(len(x)), lab], 0.0)


def write_clusters(out: Path, passages_npy: Path, passage_ids: list[str], cfg: ClusteringConfig,
                   seed: int, engine: str = "usearch") -> dict[str, Any]:
    """The ``clusters`` layer: k-means cluster id and distance to its centroid for every passage.

    Up to ``minibatch_above`` passages: KMeans on all of them. Above: MiniBatchKMeans fitted on a
    seeded sample of that size, then every passage assigned in batches. ``engine`` is
    ``mining.engine``: where it resolves to ``torch``, :func:`write_clusters_torch` instead.
    """
    from .torch_ops import resolve_engine

    if resolve_engine(engine) == "torch":
        return write_clusters_torch(out, passages_npy, passage_ids, cfg, seed)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    P = VectorStore(passages_npy)
    n = len(P)
    k = auto_k(n, cfg.k)
    # Fitted on float64: for float32 input scikit-learn's k-means++ computes its distances in float64
    # anyway, converting chunk by chunk, which made the fit ~2.6x slower than a float64 fit with the
    # same three initialisations and the same mean inertia (benchmarks/bench_kmeans.py).
    if n <= cfg.minibatch_above:
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(P.slice(0, n).astype(np.float64))
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=cfg.minibatch_above, replace=False))
        model = MiniBatchKMeans(n_clusters=k, batch_size=cfg.batch_size, n_init=3,
                                random_state=seed).fit(P.rows(sample).astype(np.float64))
    centers = model.cluster_centers_.astype(np.float32)
    writer = pq.ParquetWriter(out, pa.schema([("passage_id", pa.string()), ("cluster_id", pa.int32()),
                                              ("centroid_distance", pa.float64())]), compression="zstd")
    try:
        # batch of ASSIGN_BATCH passages: the (batch x k) distance matrix and its temporaries stay
        # ~0.3 GB at k = 1,500 (100k rows took ~2 GB at 1M docs)
        for start in range(0, n, ASSIGN_BATCH):
            x = P.slice(start, start + ASSIGN_BATCH)
            lab, d2 = nearest_centre(x, centers)
            dist = np.sqrt(d2)
            writer.write_table(pa.table({
                "passage_id": pa.array(passage_ids[start : start + len(x)], pa.string()),
                "cluster_id": pa.array(lab.astype(np.int32)),
                "centroid_distance": pa.array(dist.astype(np.float64)),
            }))
    finally:
        writer.close()
    return {"k": float(k), "inertia": float(model.inertia_), "engine": "sklearn"}


CLUSTER_SCHEMA = pa.schema([("passage_id", pa.string()), ("cluster_id", pa.int32()),
                            ("centroid_distance", pa.float64())])


def write_clusters_torch(out: Path, passages_npy: Path, passage_ids: list[str], cfg: ClusteringConfig,
                         seed: int) -> dict[str, Any]:
    """The ``clusters`` layer by k-means in torch (:func:`etl.torch_ops.kmeans`), on a GPU when present.

    Fitted on the same rows as the scikit-learn path (all passages up to ``minibatch_above``, else
    the same seeded sample of that size) with full Lloyd iterations, best of 3 k-means++ starts
    seeded by ``run.seed``; then every passage is assigned on the device in batches.
    """
    import torch

    from .torch_ops import assign, device_of, kmeans, to_device

    P = VectorStore(passages_npy)
    n = len(P)
    k = auto_k(n, cfg.k)
    if n <= cfg.minibatch_above:
        fit_rows = P.slice(0, n)
    else:
        rng = np.random.default_rng(seed)
        fit_rows = P.rows(np.sort(rng.choice(n, size=cfg.minibatch_above, replace=False)))
    device = device_of("auto")
    centres, inertia = kmeans(fit_rows, k, seed, n_init=3, device=str(device))
    del fit_rows
    c = to_device(centres, device, torch.float32)
    writer = pq.ParquetWriter(out, CLUSTER_SCHEMA, compression="zstd")
    try:
        with torch.inference_mode():
            for start in range(0, n, ASSIGN_BATCH):
                x = P.slice(start, start + ASSIGN_BATCH)
                lab, d2 = assign(to_device(x, device, torch.float32), c)
                writer.write_table(pa.table({
                    "passage_id": pa.array(passage_ids[start : start + len(x)], pa.string()),
                    "cluster_id": pa.array(lab.cpu().numpy().astype(np.int32)),
                    "centroid_distance": pa.array(np.sqrt(d2.cpu().numpy().astype(np.float64))),
                }, schema=CLUSTER_SCHEMA))
    finally:
        writer.close()
    return {"k": float(k), "inertia": inertia, "engine": "torch", "device": device.type}
