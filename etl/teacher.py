"""Stage ``teacher_scores``: the teacher's score for every candidate that may enter a record.

Which candidates: the positive, the first ``teacher.max_candidates`` usable hard candidates
(rank window first, then deeper ranks), and every usable related / easy draw.

Teachers (``teacher.kind``):

* ``biencoder`` — the e5 cosine similarity already in ``candidates.bi_score`` (no model call).
* ``cross_encoder`` — a sentence-transformers ``CrossEncoder`` (local path or hub name) scores
  (query, doc) pairs; its default activation gives scores in [0, 1] for one-label rerankers.
* ``ensemble`` — both, each min-max normalized over the query's scored candidates, then averaged:
  the OpenSearch sample's own teacher recipe (docs/quality.md).

Cross-encoder scores are cached (``teacher.cache``, on by default) in
``<warehouse>/cache/teacher/<model>/part-*.parquet``: one row per (query hash, passage hash) with
the score, the hashes covering the model and ``teacher.max_chars`` (:func:`cache_key_prefix`).
Every round first looks its pairs up there and sends only the misses to the model; new scores are
written every ``teacher.flush_seconds`` (temporary name, then rename), so a run killed with
``kill -9`` loses at most that much scoring, and re-runs (other filters, another teacher kind,
deeper rounds) never score a pair twice.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config, ConfigError, TeacherConfig
from .device import resolve_device
from .embed import model_slug, prepare_text

SCHEMA = pa.schema([
    ("query_id", pa.string()), ("role", pa.string()), ("rank", pa.int64()), ("passage_id", pa.string()),
    ("bi_score", pa.float64()), ("ce_score", pa.float64()), ("teacher_score", pa.float64()),
])
RAW_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "teacher_score"] + [("round", pa.int64())])

# usable candidates; hard ones numbered by pick (the rank window first, then deeper ranks)
SELECT_SQL = """
WITH usable AS (
    SELECT c.query_id, c.role, c.rank, c.passage_id, c.bi_score, row_number() OVER (
               PARTITION BY c.query_id, c.role ORDER BY c.rank > getvariable('top_k'), c.rank) AS pick
    FROM candidates c WHERE c.filter_reason IS NULL{short_filter}
)
SELECT u.query_id, u.role, u.rank, u.passage_id, u.bi_score{text_cols}
FROM usable u
{text_joins}
WHERE {round_filter}
{order}
"""
TEXT_COLS = """, q.query,
       CASE WHEN u.role = 'positive' AND q.positive_text IS NOT NULL THEN q.positive_text ELSE p.text END AS text"""
TEXT_JOINS = """JOIN queries q USING (query_id)
JOIN passages p ON p.passage_id = u.passage_id"""


def select_sql(with_text: bool, by_query: bool, round_no: int = 1, round_size: int | None = None) -> str:
    """The candidates to score in one round; query and doc texts only when a model reads them.

    Round 1 scores every usable positive, related and easy candidate and the first ``round_size``
    (``teacher.max_candidates``) usable hard ones; round r > 1 scores the next ``round_size`` hard
    ones of the queries listed in the temporary table ``teacher_short`` (those the filters left
    short). ``round_size`` None: every usable hard candidate in round 1. The bi-encoder teacher needs
    no text, which keeps this narrow at millions of candidates.
    """
    if round_size is None:
        round_filter = "true"
    else:
        lo, hi = (round_no - 1) * round_size, round_no * round_size
        round_filter = (f"u.role <> 'hard' OR u.pick <= {hi}" if round_no == 1
                        else f"u.role = 'hard' AND u.pick > {lo} AND u.pick <= {hi}")
    short = "" if round_no == 1 else " AND c.query_id IN (SELECT query_id FROM teacher_short)"
    return SELECT_SQL.format(text_cols=TEXT_COLS if with_text else "", text_joins=TEXT_JOINS if with_text else "",
                             order="ORDER BY u.query_id, u.role, u.rank" if by_query else "",
                             short_filter=short, round_filter=round_filter)


def scores_sql(kind: str, files: list[Path]) -> str:
    """The teacher_scores rows over the raw per-round files: the final ``teacher_score`` per kind.

    The ensemble averages the bi-encoder and cross-encoder scores after min-max normalizing each over
    the query's scored candidates (all rounds; a constant group maps to 0.5).
    """
    listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    if kind == "biencoder":
        score = "bi_score"
    elif kind == "cross_encoder":
        score = "ce_score"
    else:
        def mm(col: str) -> str:
            return (f"coalesce(({col} - min({col}) OVER w) / nullif(max({col}) OVER w - min({col}) OVER w, 0), 0.5)")
        score = f"({mm('bi_score')} + {mm('ce_score')}) / 2.0"
    window = " WINDOW w AS (PARTITION BY query_id)" if kind == "ensemble" else ""
    return (f"SELECT query_id, role, rank, passage_id, bi_score, ce_score, ({score})::DOUBLE AS teacher_score "
            f"FROM read_parquet([{listing}]){window}")


# Bump when the text preparation or the key layout changes: every cached score then becomes a miss.
SCORE_CACHE_VERSION = 1
SCORE_CACHE_SCHEMA = pa.schema([("query_hash", pa.string()), ("passage_hash", pa.string()), ("score", pa.float64())])
PREDICT_CHUNK = 8  # teacher.batch_size batches per model call: the cache receives scores this often


def score_dtype(t: TeacherConfig) -> str:
    """The precision the cross-encoder scores in: ``float16`` only with ``teacher.fp16`` on a CUDA device."""
    if not t.fp16 or t.device in ("cpu", "mps"):
        return "float32"
    if t.device == "auto":
        import torch

        return "float16" if torch.cuda.is_available() else "float32"
    return "float16"


def cache_key_prefix(t: TeacherConfig) -> str:
    """What a cached score's key covers besides the texts: model, ``max_chars`` and precision.

    The precision is :func:`score_dtype`.

    ``query_hash = sha256(prefix + query)`` and ``passage_hash = sha256(prefix + doc text)`` (the
    texts before :func:`etl.embed.prepare_text`, which depends only on them and ``max_chars``).
    The precision is in the key because fp16 noise is what swaps near-equal negatives: a float32 run
    never reads a float16 score. Device and batch size move a score by float32 rounding only and are
    left out.
    """
    return (f"etl-teacher-cache/v{SCORE_CACHE_VERSION} model={t.cross_encoder} max_chars={t.max_chars}"
            f" dtype={score_dtype(t)}\n")


def pair_hashes(t: TeacherConfig, query: str, text: str) -> tuple[str, str]:
    """(query_hash, passage_hash) of one pair, as the SQL of the rounds computes them."""
    prefix = cache_key_prefix(t)
    return (hashlib.sha256((prefix + query).encode("utf-8", "surrogatepass")).hexdigest(),
            hashlib.sha256((prefix + text).encode("utf-8", "surrogatepass")).hexdigest())


def score_cache_dir(cfg: Config) -> Path:
    """Directory of the cross-encoder score cache of ``teacher.cross_encoder``."""
    return cfg.warehouse_dir / "cache" / "teacher" / model_slug(cfg.teacher.cross_encoder)


class ScoreCacheWriter:
    """Appends (query_hash, passage_hash, score) rows to the score cache as small Parquet files.

    A file is written (temporary name, then rename) every ``flush_rows`` scores, or sooner when the
    oldest buffered score would otherwise be more than ``flush_seconds`` old by the next batch (the
    time between the last two batches is the estimate), as the embedding cache does.
    """

    def __init__(self, directory: Path, flush_rows: int = 50_000, flush_seconds: float = 30.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._clock = clock or time.monotonic
        self._oldest: float | None = None
        self._last_add: float | None = None
        self._interval = 0.0
        self._rows: dict[tuple[str, str], float] = {}
        self._seen: set[bytes] = set()
        self._seq = 0
        self.written = 0

    def add(self, keys: list[tuple[str, str]], scores: np.ndarray) -> None:
        """Buffer scores of pairs not written before by this writer; flush when due."""
        now = self._clock()
        if self._last_add is not None:
            self._interval = now - self._last_add
        self._last_add = now
        for key, score in zip(keys, scores.tolist(), strict=True):
            tag = bytes.fromhex(key[0][:16] + key[1][:16])
            if tag not in self._seen:
                self._seen.add(tag)
                self._rows[key] = float(score)
        if not self._rows:
            return
        if self._oldest is None:
            self._oldest = now
        if len(self._rows) >= self.flush_rows or now + self._interval - self._oldest >= self.flush_seconds:
            self.flush()

    def flush(self, idle: bool = False) -> None:
        """Write the buffered scores as one new cache file (``idle``: scoring pauses, reset the timing)."""
        if idle:
            self._last_add, self._interval = None, 0.0
        if not self._rows:
            return
        keys = list(self._rows)
        table = pa.table({"query_hash": pa.array([k[0] for k in keys], pa.string()),
                          "passage_hash": pa.array([k[1] for k in keys], pa.string()),
                          "score": pa.array(list(self._rows.values()), pa.float64())}, schema=SCORE_CACHE_SCHEMA)
        self._seq += 1
        final = self.dir / f"part-{time.time_ns()}-{os.getpid()}-{self._seq:05d}.parquet"
        tmp = final.with_name("." + final.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        self.written += len(keys)
        self._rows = {}
        self._oldest = None


def _cached_round_sql(con: Any, sql: str, cache_dir: Path) -> str:
    """``sql`` (a round's pairs with texts) plus the pair hashes and the cached score (NULL = miss)."""
    files = sorted(cache_dir.glob("part-*.parquet"))
    if files:
        listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        con.execute("CREATE OR REPLACE TEMP VIEW teacher_score_cache AS SELECT query_hash, passage_hash, "
                    f"any_value(score) AS score FROM read_parquet([{listing}]) GROUP BY query_hash, passage_hash")
    else:
        con.execute("CREATE OR REPLACE TEMP VIEW teacher_score_cache AS SELECT NULL::VARCHAR AS query_hash, "
                    "NULL::VARCHAR AS passage_hash, NULL::DOUBLE AS score WHERE false")
    return f"""
SELECT s.*, c.score AS cached_score
FROM (SELECT r.*, sha256(getvariable('teacher_cache_key') || r.query) AS query_hash,
             sha256(getvariable('teacher_cache_key') || coalesce(r.text, '')) AS passage_hash
      FROM ({sql}) r) s
LEFT JOIN teacher_score_cache c ON c.query_hash = s.query_hash AND c.passage_hash = s.passage_hash
"""


_MODELS: dict[tuple, Any] = {}


def load_cross_encoder(name: str, device: str = "auto", fp16: bool = True) -> Any:
    """A sentence-transformers CrossEncoder (shared within the process), in float32 unless ``fp16`` on CUDA."""
    key = (name, device, fp16)
    if key not in _MODELS:
        try:
            import torch  # noqa: F401 - CrossEncoder needs it; a clear error when it is missing
            from sentence_transformers import CrossEncoder
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("teacher.kind needs sentence-transformers and torch: pip install -e '.[st]'") from exc
        device = resolve_device(device)  # auto: cuda, else mps, else cpu (as for the embedding model)
        model = CrossEncoder(name, device=device)
        if fp16 and device.startswith("cuda"):
            model.model.half()
        else:  # exact scores: float32 even when the checkpoint's config asks for half precision
            model.model.float()
        _MODELS[key] = model
    return _MODELS[key]


def predict_pairs(model: Any, queries: list[str], texts: list[str | None], t: TeacherConfig) -> np.ndarray:
    """Cross-encoder scores of (query, text) pairs, texts cut by :func:`etl.embed.prepare_text` (float64)."""
    pairs = [(prepare_text(q, t.max_chars), prepare_text(x or "", t.max_chars)) for q, x in zip(queries, texts,
                                                                                                strict=True)]
    return np.asarray(model.predict(pairs, batch_size=t.batch_size, show_progress_bar=False),
                      dtype=np.float64).reshape(-1)


def score_worker(t: TeacherConfig, threads: int, gpu: bool) -> Callable[[pa.Table], pa.Table]:
    """Ray actor factory (:mod:`etl.distributed`): load the cross-encoder once, score each task's pairs.

    A task is one row of lists (``query_hash``, ``passage_hash``, ``query``, ``text``); the result
    has the score cache's columns. On an actor without a GPU the model runs on the CPU.
    """
    if not gpu:
        import torch

        torch.set_num_threads(threads)
    model = load_cross_encoder(t.cross_encoder, t.device if gpu else "cpu", t.fp16)

    def fn(batch: pa.Table) -> pa.Table:
        cols = {c: [v for row in batch.column(c).to_pylist() for v in row]
                for c in ("query_hash", "passage_hash", "query", "text")}
        scores = predict_pairs(model, cols["query"], cols["text"], t)
        return pa.table({"query_hash": pa.array(cols["query_hash"], pa.string()),
                         "passage_hash": pa.array(cols["passage_hash"], pa.string()),
                         "score": pa.array(scores, pa.float64())}, schema=SCORE_CACHE_SCHEMA)

    return fn


def _score_misses_on_ray(engine: Callable[[], Any], con: Any, cached_sql: str, cfg: Config,
                         cache: ScoreCacheWriter) -> tuple[int, str]:
    """Score a round's uncached pairs on Ray actors into ``cache``; (pairs scored, the engine's description).

    The pairs are those of ``cached_sql`` (:func:`_cached_round_sql`) with no cached score, each
    (query hash, passage hash) once; the driver writes the scores with ``cache`` (the local path's
    writer), so the round's local pass then finds every pair cached.
    """
    t = cfg.teacher
    if cfg.distributed.gpus_per_worker <= 0 and score_dtype(t) == "float16":
        # the cache key would say float16 for scores the CPU actors compute in float32
        raise ConfigError("teacher.fp16 = true scores in float16 on this CUDA host, but "
                          "distributed.gpus_per_worker = 0 puts the Ray actors on the CPU (float32 only): set "
                          "distributed.gpus_per_worker > 0, or teacher.fp16 = false")
    misses = ("SELECT query_hash, passage_hash, any_value(query) AS query, any_value(text) AS text "
              f"FROM ({cached_sql}) WHERE cached_score IS NULL GROUP BY query_hash, passage_hash "
              "ORDER BY query_hash, passage_hash")
    if int(con.execute(f"SELECT count(*) FROM ({misses})").fetchall()[0][0]) == 0:
        return 0, ""
    ray_engine = engine()
    per_task = t.batch_size * ray_engine.cfg.task_batches

    def todo():
        for rb in con.sql(misses).to_arrow_reader(per_task):
            yield pa.table({c: pa.array([rb.column(c).to_pylist()], pa.list_(pa.string()))
                            for c in ("query_hash", "passage_hash", "query", "text")})

    def on_result(table: pa.Table) -> None:
        keys = list(zip(table.column("query_hash").to_pylist(), table.column("passage_hash").to_pylist(),
                        strict=True))
        cache.add(keys, table.column("score").to_numpy(zero_copy_only=False))

    kwargs = {"t": t, "threads": ray_engine.cfg.cpus_per_worker, "gpu": ray_engine.cfg.gpus_per_worker > 0}
    n = ray_engine.run(todo(), score_worker, kwargs, on_result)
    cache.flush(idle=True)
    return n, ray_engine.describe()


def write_teacher_scores(cfg: Config, con: Any, out: Path, progress: bool = True,
                         filters_sql: str | None = None, engine: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Score the candidates with the configured teacher and write the ``teacher_scores`` layer.

    Scoring goes in rounds of ``teacher.max_candidates`` hard candidates per query. After each
    round ``filters_sql`` (the SELECT of etl/sql/scored_candidates.sql) runs on the scores so far;
    the queries it leaves with fewer than ``negatives.hard`` usable hard negatives get their next
    ``max_candidates`` candidates scored, until none is short or their candidates run out (every
    usable neighbour up to ``mining.search_depth``). Without ``filters_sql``: one round.

    ``engine`` (``distributed.engine = "ray"``, with the score cache on): a callable giving the
    started :class:`etl.distributed.RayEngine`; each round's uncached pairs are then scored by Ray
    actors into the cache first (counts ``ray_scored``, ``ray``), and the round runs from the cache.
    """
    from tqdm import tqdm

    t = cfg.teacher
    # with Ray actors on the GPUs the driver's copy (it scores only what Ray did not) stays on the CPU
    device = "cpu" if engine is not None and cfg.distributed.gpus_per_worker > 0 else t.device
    model = load_cross_encoder(t.cross_encoder, device, t.fp16) if t.kind != "biencoder" else None
    cache = ScoreCacheWriter(score_cache_dir(cfg), flush_seconds=t.flush_seconds) \
        if model is not None and t.cache else None
    parts: list[Path] = []
    counts: dict[str, Any] = {"teacher": t.kind, "scored": 0, "rounds": 0, "deepened_queries": 0}
    if model is not None:
        counts |= {"ce_model_scored": 0, "ce_cache_hits": 0}
    if cache is not None:
        con.execute("SET VARIABLE teacher_cache_key = ?", [cache_key_prefix(t)])
    round_no = 1
    try:
        while True:
            part = out.with_name(f".{out.stem}.round{round_no}.tmp")
            part.unlink(missing_ok=True)
            sql = select_sql(with_text=model is not None, by_query=False, round_no=round_no,
                             round_size=t.max_candidates)
            total = int(con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0])
            if total == 0 and round_no > 1:
                break
            if cache is not None:
                cache.flush(idle=True)  # the round's lookups see every score so far
                round_sql = sql
                sql = _cached_round_sql(con, round_sql, cache.dir)
                if engine is not None:
                    n_ray, via = _score_misses_on_ray(engine, con, sql, cfg, cache)
                    if n_ray:
                        counts["ray_scored"] = counts.get("ray_scored", 0) + n_ray
                        counts["ray"] = via
                        sql = _cached_round_sql(con, round_sql, cache.dir)  # now with Ray's scores
            reader = con.sql(sql).to_arrow_reader(50_000)
            writer = pq.ParquetWriter(part, RAW_SCHEMA, compression="zstd")
            try:
                with tqdm(total=total, desc=f"teacher_scores round {round_no}", unit="pair",
                          disable=not progress or model is None) as bar:
                    for batch in reader:
                        counts["scored"] += _score_and_write(writer, pa.Table.from_batches([batch]), model, cfg,
                                                             round_no, cache, counts, bar)
            finally:
                writer.close()
            parts.append(part)
            counts["rounds"] = round_no
            if filters_sql is None:
                break
            con.execute(f"CREATE OR REPLACE TEMP VIEW teacher_scores AS {scores_sql(t.kind, parts)}")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE teacher_short AS "
                f"SELECT s.query_id FROM (\n{filters_sql}\n) s GROUP BY s.query_id "
                "HAVING count_if(s.role = 'positive') = 1 "
                "AND count_if(s.role = 'hard' AND s.filter_reason IS NULL) < getvariable('n_hard')")
            n_short = int(con.execute("SELECT count(*) FROM teacher_short").fetchall()[0][0])
            if n_short == 0:
                break
            if round_no == 1:  # the queries short after round 1 are the ones scored deeper (the set only shrinks)
                counts["deepened_queries"] = n_short
            round_no += 1
        target = str(out).replace("'", "''")
        con.execute(f"COPY ({scores_sql(t.kind, parts)}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
    finally:
        if cache is not None:
            cache.flush(idle=True)
        con.execute("DROP VIEW IF EXISTS temp.teacher_scores")
        con.execute("DROP VIEW IF EXISTS temp.teacher_score_cache")
        con.execute("DROP TABLE IF EXISTS temp.teacher_short")
        for part in parts:
            part.unlink(missing_ok=True)
    if model is not None:
        counts["cross_encoder"] = t.cross_encoder
    return counts


def _score_and_write(writer: pq.ParquetWriter, table: pa.Table, model: Any, cfg: Config, round_no: int,
                     cache: ScoreCacheWriter | None = None, counts: dict[str, Any] | None = None,
                     bar: Any = None) -> int:
    """Raw scores of one batch (bi-encoder cosine, cross-encoder score when a model is loaded).

    With ``cache``, rows with a ``cached_score`` take it; the others are scored in chunks of
    ``PREDICT_CHUNK`` model batches, each chunk handed to the cache as soon as it is done.
    """
    t = cfg.teacher
    bi = np.asarray(table.column("bi_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    ce = np.full(len(bi), np.nan)
    if model is not None and len(bi):
        queries, texts = table.column("query").to_pylist(), table.column("text").to_pylist()
        todo = np.arange(len(bi))
        if cache is not None:
            cached = np.asarray(table.column("cached_score").to_numpy(zero_copy_only=False), dtype=np.float64)
            hit = ~np.isnan(cached)
            ce[hit] = cached[hit]
            todo = np.flatnonzero(~hit)
            qh, ph = table.column("query_hash").to_pylist(), table.column("passage_hash").to_pylist()
        if counts is not None:
            counts["ce_cache_hits"] += len(bi) - len(todo)
            counts["ce_model_scored"] += len(todo)
        if bar is not None:
            bar.update(len(bi) - len(todo))
        step = t.batch_size * PREDICT_CHUNK
        for s in range(0, len(todo), step):
            idx = todo[s:s + step]
            scores = predict_pairs(model, [queries[i] for i in idx], [texts[i] for i in idx], t)
            ce[idx] = scores
            if cache is not None:
                cache.add([(qh[i], ph[i]) for i in idx], scores)
            if bar is not None:
                bar.update(len(idx))
    elif bar is not None:
        bar.update(len(bi))
    writer.write_table(pa.table({
        "query_id": table.column("query_id"), "role": table.column("role"),
        "rank": table.column("rank").cast(pa.int64()), "passage_id": table.column("passage_id"),
        "bi_score": pa.array(bi), "ce_score": pa.array(np.where(np.isnan(ce), None, ce), pa.float64()),
        "round": pa.array(np.full(len(bi), round_no, dtype=np.int64)),
    }, schema=RAW_SCHEMA))
    return len(bi)
