"""Stage ``judged_negatives``: an LLM judges whether each query's hardest negatives answer it.

Optional (``[judge] enabled = true``). For every query, the ``judge.hardest`` usable negatives of
``scored_candidates`` (no ``filter_reason``, not the positive) with the highest teacher scores are
sent, one chat completion per (query, passage), to the OpenAI-compatible server of
``judge.base_url`` (``""`` = ``llm.base_url``) through the same client as query method ``llm``
(:class:`etl.llm_client.ChatClient`: the SDK's retries, the shared 429 pause, no redirects, key
redaction; key, timeout and retries from ``[llm]``). The editable template ``judge.prompt_file``
(default ``etl/prompts/judge.ko.txt``; placeholders ``{query}``, ``{title}``, ``{passage}``) asks for
``{"answer": "yes"|"no", "reason": ...}``.

Layer rows, one per judged pair: ``verdict`` = ``relevant`` (the passage answers the query: a false
negative), ``not_relevant``, or ``failed`` (``reason`` = the transport failure or ``unparseable``);
``examples.sql`` leaves the ``relevant`` ones out of the record (filter ``judged_relevant``) and
picks the next negative instead. A failed judgement keeps the negative.

Answers are cached under ``<warehouse>/cache/judge/`` (:class:`etl.llm_cache.ResponseCache`) by
(model, prompt hash, query hash + passage hash), so a re-run pays only for new pairs. The cost is in
the stage counts (``calls_made``, ``prompt_tokens``, ``completion_tokens``: tokens of new answers;
cached ones cost nothing), hence in ``metadata.json`` under ``stages.judged_negatives.extra``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import PACKAGE_DIR, Config, LLMConfig
from .llm import RowWriter
from .llm_cache import ResponseCache
from .llm_client import DETAIL_CHARS, CachedCallRun, ChatClient, answer_misses_on_ray, drive_requests
from .llm_prompt import LLMError, passage_hash, resolve_api_key

SCHEMA = pa.schema([
    ("query_id", pa.string()), ("passage_id", pa.string()), ("verdict", pa.string()), ("reason", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()),
])
DEFAULT_PROMPT_FILE = PACKAGE_DIR / "prompts" / "judge.ko.txt"
READ_BATCH_ROWS = 1024
REASON_CHARS = 200
VERDICTS = ("relevant", "not_relevant", "failed")


def judge_llm_config(cfg: Config) -> LLMConfig:
    """The ``[llm]`` settings with the judge's model, server, concurrency and sampling settings."""
    j = cfg.judge
    return dataclasses.replace(cfg.llm, model=j.model or cfg.llm.model, base_url=j.base_url or cfg.llm.base_url,
                               max_concurrency=j.max_concurrency, temperature=j.temperature,
                               max_tokens=j.max_tokens, prompt_file=j.prompt_file)


def load_template(cfg: Config) -> str:
    """Read the judge's template; it must contain ``{query}`` and ``{passage}``."""
    path = Path(cfg.judge.prompt_file).expanduser().resolve() if cfg.judge.prompt_file else DEFAULT_PROMPT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMError(f"config key 'judge.prompt_file': cannot read {path}: {exc.strerror}") from exc
    for placeholder in ("{query}", "{passage}"):
        if placeholder not in text:
            raise LLMError(f"config key 'judge.prompt_file': template {path} lacks the {placeholder} placeholder")
    return unicodedata.normalize("NFC", text)


def prompt_hash(template: str, llm: LLMConfig) -> str:
    """sha256 of the template (before substitution), the model, temperature and max_tokens."""
    payload = json.dumps(["judge", template, llm.model, llm.temperature, llm.max_tokens], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompt_signature(cfg: Config) -> str:
    """The current prompt hash (for the stage fingerprint: editing the template re-runs the stage)."""
    return prompt_hash(load_template(cfg), judge_llm_config(cfg))


_PLACEHOLDER = re.compile(r"\{(query|title|passage)\}")


def render_prompt(template: str, query: str, title: str, passage: str) -> str:
    """Substitute ``{query}``, ``{title}`` and ``{passage}`` in one pass; other braces are left as is."""
    values = {"query": query, "title": title, "passage": passage}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def pair_key(query: str, title: str, text: str) -> str:
    """Cache key of a (query, passage) pair: sha256 of the query, ``:``, the passage hash."""
    q = hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{q}:{passage_hash(title, text)}"


_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_YES = {"yes", "y", "true", "relevant", "예", "네", "응", "맞음", "맞습니다", "있음", "있습니다"}
_NO = {"no", "n", "false", "not_relevant", "irrelevant", "아니오", "아니요", "아니", "아님", "없음", "없습니다"}
_ANSWER_KEYS = ("answer", "verdict", "relevant", "answers_query", "label", "답", "판정", "정답")
_FIRST_WORD = re.compile(r"[\w가-힣_]+")


def _word_verdict(value: Any) -> str | None:
    if isinstance(value, bool):
        return "relevant" if value else "not_relevant"
    if not isinstance(value, str):
        return None
    m = _FIRST_WORD.search(value.strip().lower())
    if not m:
        return None
    word = m.group(0)
    return "relevant" if word in _YES else "not_relevant" if word in _NO else None


def parse_verdict(text: str) -> tuple[str | None, str]:
    """(``relevant`` / ``not_relevant`` / None when unreadable, the model's reason) of a judge's answer.

    Accepts a JSON object (``{"answer": "yes", "reason": ...}``, also ``verdict``/``relevant``/``답``,
    booleans), inside code fences or prose, else a bare yes/no (예/아니오, ...) as the first word.
    """
    text = _THINK.sub("", unicodedata.normalize("NFC", text or "")).strip()
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        reason = lowered.get("reason", lowered.get("이유", ""))
        reason = reason if isinstance(reason, str) else json.dumps(reason, ensure_ascii=False)
        for key in _ANSWER_KEYS:
            if key in lowered:
                verdict = _word_verdict(lowered[key])
                if verdict is not None:
                    return verdict, reason.strip()[:REASON_CHARS]
    plain = re.sub(r"\s+", " ", re.sub(r"```\w*|[*_`\"'「」]", " ", text)).strip()
    verdict = _word_verdict(plain)
    if verdict is not None:
        return verdict, plain[:REASON_CHARS]
    return None, ""


def pairs_sql(hardest: int) -> str:
    """The (query, passage) pairs to judge: per query, the usable negatives with the highest teacher scores."""
    return f"""
        WITH neg AS (
            SELECT query_id, passage_id, max(teacher_score) AS best_score
            FROM scored_candidates
            WHERE filter_reason IS NULL AND role <> 'positive'
            GROUP BY query_id, passage_id
            QUALIFY row_number() OVER (PARTITION BY query_id ORDER BY max(teacher_score) DESC, passage_id)
                    <= {int(hardest)}
        )
        SELECT n.query_id, n.passage_id, q.query, p.title, p.text
        FROM neg n JOIN queries q USING (query_id) JOIN passages p USING (passage_id)
        ORDER BY n.query_id, n.passage_id"""


def write_empty(out: Path) -> None:
    """Write the layer with no rows (the judge is not enabled)."""
    pq.write_table(SCHEMA.empty_table(), out)


@dataclass(kw_only=True)
class _JudgeRun(CachedCallRun):
    """The state of one execution of the stage (the shared call handling is :class:`CachedCallRun`)."""

    model: str
    phash: str
    template: str
    verdicts: Counter[str] = field(default_factory=Counter)

    def emit(self, pair: dict[str, Any], content: str | None, finish: str | None, failure: str | None) -> None:
        """Write the verdict row of one pair."""
        verdict, reason = (None, "") if content is None else parse_verdict(content)
        if failure is None and verdict is None:
            failure = "unparseable"
            self.examples.setdefault(failure, (content or "")[:DETAIL_CHARS])
        if failure is not None:
            verdict, reason = "failed", failure
            self.failures[failure] += 1
        self.verdicts[verdict] += 1
        self.writer.add({"query_id": pair["query_id"], "passage_id": pair["passage_id"], "verdict": verdict,
                         "reason": reason, "model": self.model, "prompt_hash": self.phash})

    def offer(self, pair: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        """Answer a pair from the cache, join an identical pair in flight, or submit a call."""
        self.counts["pairs"] += 1
        self.submit(pair, pair_key(pair["query"], pair["title"], pair["text"]),
                    lambda: render_prompt(self.template, pair["query"], pair["title"], pair["text"]), pool)

    def nothing_worked(self, n: int) -> str:
        """The error of a run in which no judgement came back."""
        reasons = ", ".join(f"{k}: {v}" for k, v in self.failures.most_common())
        example = next(iter(self.examples.values()), "")
        return self.client.redact(f"judged_negatives: no answer from {self.client.url} (model {self.model!r}) "
                                  f"for {n} (query, passage) pairs [{reasons}]. First error: {example}")


def write_judged_negatives(cfg: Config, con: Any, out: Path, cache_dir: Path, progress: bool = True,
                           engine: Any = None) -> dict[str, Any]:
    """Judge the hardest negatives of every query, write layer ``out`` and return the stage counts.

    ``con`` must expose ``scored_candidates``, ``queries`` and ``passages``. Raises
    :class:`LLMError` when the configuration is unusable or when pairs were sent but not one
    answer came back. Counts: ``pairs`` judged, ``cache_hits``, ``calls_made`` (HTTP requests,
    retries included), ``retries``, ``responses`` (new answers, now cached), ``prompt_tokens`` and
    ``completion_tokens`` (of the new answers), ``verdicts`` (by verdict), ``failures`` (by
    reason), ``error_examples``. ``engine``: as for :func:`etl.llm.write_llm_questions` (the Ray engine).
    """
    llm = judge_llm_config(cfg)
    api_key = resolve_api_key(llm)
    template = load_template(cfg)
    phash = prompt_hash(template, llm)
    out = Path(out)
    cache = ResponseCache(Path(cache_dir), llm.model, phash)
    cached_entries = cache.load()
    client = ChatClient(llm, api_key)
    sql = pairs_sql(cfg.judge.hardest)
    n_pairs = int(con.sql(f"SELECT count(*) FROM ({sql})").fetchall()[0][0])
    tmp = out.with_name(f".{out.name}.unsorted")
    tmp.unlink(missing_ok=True)
    run = _JudgeRun(model=llm.model, phash=phash, template=template, client=client, cache=cache,
                    writer=RowWriter(tmp, SCHEMA),
                    bar=tqdm(total=n_pairs, desc="judged_negatives", unit="pair", disable=not progress),
                    breaker=max(8, 2 * llm.max_concurrency))
    run.counts["pairs"] = 0
    ray_counts = {} if engine is None else answer_misses_on_ray(
        engine, ((pair_key(p["query"], p["title"], p["text"]),
                  functools.partial(render_prompt, template, p["query"], p["title"], p["text"]))
                 for batch in con.sql(sql).to_arrow_reader(READ_BATCH_ROWS) for p in batch.to_pylist()),
        cache, llm, api_key)
    run.counts.update({k: ray_counts.get(k, 0) for k in ("calls_made", "retries", "prompt_tokens",
                                                          "completion_tokens")})
    window = max(2, 4 * llm.max_concurrency)
    pool = ThreadPoolExecutor(max_workers=llm.max_concurrency, thread_name_prefix="judge")
    reader = con.sql(sql).to_arrow_reader(READ_BATCH_ROWS)
    try:
        drive_requests((pair for batch in reader for pair in batch.to_pylist()), run, pool, client, cache, window,
                       on_abort=lambda: tmp.unlink(missing_ok=True))
    finally:
        reader.close()

    counts = run.counts
    if counts["pairs"] > 0 and counts["responses"] + counts["cache_hits"] == 0:
        tmp.unlink(missing_ok=True)
        raise LLMError(run.nothing_worked(counts["pairs"]))
    table = pq.read_table(tmp, schema=SCHEMA).sort_by([("query_id", "ascending"), ("passage_id", "ascending")])
    pq.write_table(table, out, compression="zstd")
    tmp.unlink(missing_ok=True)
    return {
        "enabled": True,
        "model": llm.model,
        "prompt_hash": phash,
        "hardest": cfg.judge.hardest,
        "pairs": counts["pairs"],
        "cache_hits": counts["cache_hits"],
        "calls_made": counts["calls_made"],
        "retries": counts["retries"],
        "responses": counts["responses"],
        "prompt_tokens": counts["prompt_tokens"],
        "completion_tokens": counts["completion_tokens"],
        "verdicts": {v: run.verdicts.get(v, 0) for v in VERDICTS},
        "failures": dict(sorted(run.failures.items())),
        "error_examples": {k: client.redact(v) for k, v in sorted(run.examples.items())},
        "cache_entries_loaded": cached_entries,
        "cache_files_written": cache.files_written,
        **{k: ray_counts[k] for k in ("ray", "ray_responses", "ray_failed") if k in ray_counts},
    }
