"""The torch path of the mining stages: exact top-k neighbours and k-means, on a GPU when present.

Used when ``mining.engine`` resolves to ``torch`` (``auto``: a CUDA device is present). The same
code runs on the CPU, which is how it is tested.

* :func:`topk_candidates` — exact top-k by blocked matrix products: the passages of one shard sit
  on the device (half precision on a GPU, float32 on the CPU), each query batch is multiplied with
  them block by block and a running top-``m`` (``m`` = :func:`candidate_count`, a few more than
  ``k``) is kept on the device. :func:`etl.mine.search` then re-scores those candidates in float32
  on the host exactly as for the usearch path, so the similarities and the tie order are the same
  as the exact search's, and the half-precision products only choose the candidates.
* :func:`kmeans` — k-means++ initialisation (greedy, ``2 + ln k`` local trials, as scikit-learn
  does), Lloyd iterations, best of ``n_init``; :func:`assign` gives nearest centres. Random draws
  come from a NumPy generator seeded with ``run.seed``, so a seed gives the same clustering on any
  device up to float rounding, and the same clustering run to run on one device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PASSAGE_BLOCK = 65_536  # passages per matrix product (bounds the scores block: queries x block)


def torch_available() -> bool:
    """Whether torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        return False
    return True


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False without torch)."""
    if not torch_available():
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(engine: str) -> str:
    """``mining.engine`` -> ``usearch`` or ``torch``: ``auto`` is torch when a CUDA device is present."""
    if engine == "auto":
        return "torch" if cuda_available() else "usearch"
    if engine == "torch" and not torch_available():
        raise RuntimeError("mining.engine = 'torch' needs torch: pip install -e '.[st]' (or engine = 'usearch')")
    return engine


def device_of(device: str = "auto") -> Any:
    """A ``torch.device``: ``auto`` = the first CUDA device when present, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_dtype(device: Any) -> Any:
    """Scalar type of the candidate products: float16 on a GPU, float32 on the CPU.

    float16 rather than bfloat16: unit vectors never leave float16's range, and its 10-bit mantissa
    gives ~8x smaller errors than bfloat16's 7 bits (about 1e-5 on a 1024-d cosine).
    """
    import torch

    return torch.float32 if device.type == "cpu" else torch.float16


def candidate_count(k: int, n: int) -> int:
    """How many candidates per query the products keep for the float32 re-score: k + max(16, k / 4)."""
    return min(n, k + max(16, k // 4))


def device_bytes_free(device: Any) -> int:
    """Free memory of a CUDA device (0 elsewhere: the caller then uses its own bound)."""
    import torch

    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def to_device(block: np.ndarray, device: Any, dtype: Any) -> Any:
    """A host float32 block as a contiguous tensor of ``dtype`` on ``device``."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    return t.to(device=device, dtype=dtype, non_blocking=False)


def topk_candidates(shard: list[Any], offset: int, queries: np.ndarray, m: int) -> np.ndarray:
    """Row numbers (``offset`` + position in the shard) of the ``m`` best passages of each query.

    ``shard`` is the list of device blocks of one passage shard, in row order. Returns an
    (n_queries, m) int64 array; the order within a row is not meaningful (the caller re-scores).
    """
    import torch

    first = shard[0]
    q = to_device(queries, first.device, first.dtype)
    best_s: Any = None
    best_i: Any = None
    start = offset
    with torch.inference_mode():
        for block in shard:
            scores = q @ block.T
            kk = min(m, block.shape[0])
            s, i = torch.topk(scores, kk, dim=1, sorted=False)
            i = i.to(torch.int64) + start
            if best_s is None:
                best_s, best_i = s, i
            else:
                s = torch.cat([best_s, s], dim=1)
                i = torch.cat([best_i, i], dim=1)
                kk = min(m, s.shape[1])
                s, j = torch.topk(s, kk, dim=1, sorted=False)
                best_s, best_i = s, torch.gather(i, 1, j)
            start += block.shape[0]
    return best_i.cpu().numpy()


def load_shard(store: Any, lo: int, hi: int, device: Any, dtype: Any, block: int | None = None) -> list[Any]:
    """Rows ``lo:hi`` of a :class:`etl.mine.VectorStore` as device blocks of ``block`` rows (default PASSAGE_BLOCK)."""
    block = block or PASSAGE_BLOCK
    return [to_device(store.slice(s, min(hi, s + block)), device, dtype) for s in range(lo, hi, block)]


# ---- k-means -----------------------------------------------------------------------------------

def _sq_dist(x: Any, x2: Any, c: Any) -> Any:
    """Squared distances (n, k) from rows of ``x`` (squared norms ``x2``) to centres ``c``, clipped at 0."""
    d = x2[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def assign(x: Any, centres: Any, block: int = 16_384) -> tuple[Any, Any]:
    """Nearest centre of every row of ``x`` and the squared distance to it, in blocks of rows.

    The nearest centre comes from the expanded ``|x|^2 - 2 x.c + |c|^2`` (one matrix product); the
    distance returned is then recomputed directly as ``|x - c|^2``, which has no cancellation: a row
    equal to its centre gets 0, not the expanded form's float32 noise of ~1e-7 per row, which adds
    up in the inertia and becomes ~3e-4 in ``centroid_distance`` (its square root).
    """
    import torch

    labels, dists = [], []
    for s in range(0, x.shape[0], block):
        xb = x[s:s + block]
        d = _sq_dist(xb, (xb * xb).sum(1), centres)
        i = torch.argmin(d, dim=1)
        labels.append(i)
        dists.append(((xb - centres[i]) ** 2).sum(1))
    return torch.cat(labels), torch.cat(dists)


def _kmeans_pp(x: Any, x2: Any, k: int, rng: np.random.Generator) -> Any:
    """Greedy k-means++ seeding: each new centre is the best of ``2 + ln k`` D²-weighted draws."""
    import torch

    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    first = int(rng.integers(n))
    centres[0] = x[first]
    closest = _sq_dist(x, x2, x[first:first + 1])[:, 0]
    potential = float(closest.sum())
    for c in range(1, k):
        if potential <= 0.0:  # every point is a centre already: take the next rows at random
            ids = torch.as_tensor(rng.integers(n, size=trials), device=x.device)
        else:
            cum = torch.cumsum(closest.double(), 0)
            draws = torch.as_tensor(rng.random(trials) * float(cum[-1]), dtype=torch.float64, device=x.device)
            ids = torch.searchsorted(cum, draws).clamp_(max=n - 1)
        d = _sq_dist(x, x2, x[ids])  # (n, trials)
        cand = torch.minimum(closest[:, None], d)
        pots = cand.sum(0)
        best = int(torch.argmin(pots))
        centres[c] = x[ids[best]]
        closest = cand[:, best].contiguous()
        potential = float(pots[best])
    return centres


def _centre_sums(x: Any, labels: Any, k: int, block: int = 8192) -> tuple[Any, Any]:
    """Per-cluster sums of rows and counts, in a fixed order (deterministic on every device)."""
    import torch

    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    if x.device.type == "cpu":
        sums = torch.zeros((k, x.shape[1]), dtype=x.dtype)
        sums.index_add_(0, labels, x)
        return sums, counts
    sums = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], block):  # one-hot products: no atomics, so no run-to-run noise
        onehot = torch.nn.functional.one_hot(labels[s:s + block], k).to(x.dtype)
        sums += onehot.T @ x[s:s + block]
    return sums, counts


def _lloyd(x: Any, x2: Any, centres: Any, max_iter: int, tol: float) -> tuple[Any, float, int]:
    """Lloyd iterations from ``centres`` until the centres move less than ``tol`` (squared, summed)."""
    import torch

    k = centres.shape[0]
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        labels, d = assign(x, centres)
        sums, counts = _centre_sums(x, labels, k)
        new = sums / counts.clamp_min(1.0)[:, None]
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # an empty cluster restarts at the points farthest from their centre
            far = torch.argsort(d, descending=True, stable=True)[: len(empty)]
            new[empty] = x[far]
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if shift <= tol:
            break
    labels, d = assign(x, centres)
    return centres, float(d.double().sum()), n_iter


def kmeans(data: np.ndarray, k: int, seed: int, n_init: int = 3, max_iter: int = 300, tol: float = 1e-4,
           device: str = "auto") -> tuple[np.ndarray, float]:
    """k-means on ``data`` (float32 rows): best of ``n_init`` k-means++ + Lloyd runs by inertia.

    ``tol`` is relative to the data's mean per-dimension variance, as in scikit-learn. Returns the
    (k, dim) float32 centres and the inertia (sum of squared distances to the nearest centre).
    """
    import torch

    dev = device_of(device)
    x = to_device(data, dev, torch.float32)
    x2 = (x * x).sum(1)
    abs_tol = float(tol * x.var(dim=0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    rng = np.random.default_rng(seed)
    best: tuple[Any, float] | None = None
    with torch.inference_mode():
        for _ in range(n_init):
            init = _kmeans_pp(x, x2, k, rng)
            centres, inertia, _ = _lloyd(x, x2, init, max_iter, abs_tol)
            if best is None or inertia < best[1]:
                best = (centres, inertia)
    assert best is not None
    return best[0].cpu().numpy().astype(np.float32), best[1]
