"""Stage ``llm_questions``: Korean questions generated per passage by an OpenAI-compatible server.

Any server speaking the chat-completions protocol works (vLLM, Ollama, llama.cpp server, a hosted
API): one ``POST {llm.base_url}/chat/completions`` per sampled passage, asking for
``llm.questions_per_passage`` questions with the editable Korean template ``llm.prompt_file``
(default ``etl/prompts/llm_questions.ko.txt``; placeholders ``{title}``, ``{passage}``, ``{n}``).

* **Sampling** is deterministic: passages ordered by ``md5(passage_id || run.seed)``, the first
  ``llm.sample_passages`` taken (0 = all).
* **Concurrency**: a thread pool of ``llm.max_concurrency`` workers, fed a bounded window of
  passages read from DuckDB in Arrow batches.
* **Client** (:mod:`etl.llm_client`, extra ``llm``): the ``openai`` SDK retries connection errors,
  timeouts, 408, 409, 429 and 5xx up to ``llm.max_retries`` times with its backoff and
  ``Retry-After``, over pooled connections; a 429 also pauses every worker, malformed 2xx bodies
  are asked again, redirects are never followed (the key never goes to another host). Other 4xx
  (bad model name, bad key, ...) are not retried.
* **Cache** (:mod:`etl.llm_cache`): every complete response is stored as Parquet under
  ``<warehouse>/cache/llm/``, keyed by ``(model, prompt_hash, passage_hash)`` (:func:`prompt_hash`
  covers the template text, model, questions_per_passage, temperature and max_tokens;
  :func:`passage_hash` the title and text);
  entries are flushed every :data:`CACHE_FLUSH_EVERY` responses (temporary name, then rename), so
  neither a re-run nor a crash pays twice. What is cached is the model's *answer*: parse failures
  are cached too (the parser re-runs on cached text, so a better parser needs no new calls) but
  transport failures (HTTP errors, timeouts, malformed bodies) are not, so the next execution of
  the stage (``--force llm_questions`` once the stage is fresh) asks again for exactly those passages.
* **Parsing** accepts JSON (a list, an object holding a list, inside code fences or prose), Python
  literal lists, numbered / bulleted lists and plain lines, keeps question-like lines, drops
  ``<think>`` blocks, and normalizes (NFC, whitespace, numbering, quotes).
* **Filters**: a question shorter than :data:`MIN_QUESTION_CHARS` (``too_short``), repeated within
  its passage (``duplicate``), sharing a verbatim span of ``llm.max_copy_chars`` characters or more
  with the passage (``copied_span``; 0 disables) or beyond ``questions_per_passage`` (``surplus``)
  is kept in the layer with that status; only ``ok`` rows become queries (``etl/sql/queries.sql``).

Layer rows: one per question (``status`` = ``ok`` or the drop reason) and one per failed passage
(``query`` NULL; ``status`` = ``http_error:<code>``, ``timeout``, ``connection_error``,
``malformed_response``, ``empty_response``, ``truncated`` or ``unparseable``).

The API key is read from the environment variable *named* by ``llm.api_key_env`` and used only
for the ``Authorization`` header: it is never written to the layer, the cache, the stage counts,
logs or exception messages (any echo of it in a server's text is replaced by ``[REDACTED]``).

Modules: :mod:`etl.llm_prompt` (template, parsing, filters), :mod:`etl.llm_client` (the HTTP
client), :mod:`etl.llm_cache` (the response cache); this module is the stage and re-exports their API.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import Config, LLMConfig
from .llm_cache import CACHE_SCHEMA, ResponseCache
from .llm_client import (
    DETAIL_CHARS,
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    REDACTED,
    CachedCallRun,
    CallResult,
    ChatClient,
    MalformedResponseError,
    answer_misses_on_ray,
    drive_requests,
    extract_content,
    parse_retry_after,
)
from .llm_prompt import (
    DEFAULT_PROMPT_FILE,
    MIN_QUESTION_CHARS,
    LLMError,
    clean_question,
    judge_questions,
    load_template,
    longest_common_span,
    looks_like_question,
    parse_questions,
    passage_hash,
    prompt_hash,
    prompt_path,
    prompt_signature,
    render_prompt,
    resolve_api_key,
)

__all__ = [
    "CACHE_SCHEMA", "DEFAULT_PROMPT_FILE", "DETAIL_CHARS", "MAX_BACKOFF_S", "MAX_RETRY_AFTER_S", "MIN_QUESTION_CHARS",
    "REDACTED", "SCHEMA", "CallResult", "ChatClient", "LLMError", "MalformedResponseError", "ResponseCache",
    "RowWriter", "clean_question", "extract_content", "judge_questions", "load_template", "longest_common_span",
    "looks_like_question", "parse_questions", "parse_retry_after", "passage_hash", "prompt_hash", "prompt_path",
    "prompt_signature", "render_prompt", "resolve_api_key", "sample_passage_ids", "write_empty", "write_llm_questions",
]

SCHEMA = pa.schema([
    ("passage_id", pa.string()), ("doc_id", pa.string()), ("source", pa.string()),
    ("question_no", pa.int32()), ("query", pa.string()), ("status", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()),
])
READ_BATCH_ROWS = 1024
ROW_FLUSH_EVERY = 5000


def _sample_sql(seed: int, sample: int) -> str:
    limit = f" LIMIT {int(sample)}" if sample > 0 else ""
    return ("SELECT passage_id, doc_id, source, title, text FROM passages "
            f"ORDER BY md5(passage_id || CAST({int(seed)} AS VARCHAR)), passage_id{limit}")


def sample_passage_ids(con: Any, seed: int, sample: int) -> list[str]:
    """The passage ids the stage would send, in order (deterministic for a seed)."""
    return [r[0] for r in con.sql(f"SELECT passage_id FROM ({_sample_sql(seed, sample)})").fetchall()]


class RowWriter:
    """Buffers layer rows and appends them to a Parquet file (``close`` writes an empty one when no row came)."""

    def __init__(self, path: Path, schema: pa.Schema | None = None):
        self.path = path
        self.schema = schema or SCHEMA
        self._rows: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row; append the buffer to the file every ``ROW_FLUSH_EVERY`` rows."""
        self._rows.append(row)
        if len(self._rows) >= ROW_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows."""
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self.rows += len(self._rows)
        self._rows = []

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._writer is None:
            pq.write_table(self.schema.empty_table(), self.path)
        else:
            self._writer.close()
            self._writer = None


def _sort_into(unsorted: Path, out: Path) -> None:
    """Write the layer ordered by (passage_id, question_no), failure rows first, with the exact SCHEMA."""
    table = pq.read_table(unsorted, schema=SCHEMA)
    table = table.sort_by([("passage_id", "ascending"), ("question_no", "ascending", "at_start")])
    pq.write_table(table, out, compression="zstd")


def write_empty(out: Path) -> None:
    """Write the layer with no rows (the method is not enabled)."""
    pq.write_table(SCHEMA.empty_table(), out)


def _iter_passages(reader: Any) -> Iterator[dict[str, Any]]:
    for batch in reader:
        yield from batch.to_pylist()




@dataclass(kw_only=True)
class _QuestionRun(CachedCallRun):
    """The state of one execution of the stage (the shared call handling is :class:`CachedCallRun`)."""

    llm: LLMConfig
    phash: str
    template: str
    dropped: Counter[str] = field(default_factory=Counter)

    def emit(self, p: dict[str, Any], content: str | None, finish: str | None, failure: str | None) -> None:
        """Write the rows of one passage: its judged questions, or one failure row."""
        base = {"passage_id": p["passage_id"], "doc_id": p["doc_id"], "source": p["source"],
                "model": self.llm.model, "prompt_hash": self.phash}
        if failure is None:
            assert content is not None
            questions = parse_questions(content)
            if not questions:
                failure = "empty_response" if not content.strip() else (
                    "truncated" if finish == "length" else "unparseable")
                self.examples.setdefault(failure, content[:DETAIL_CHARS])
        if failure is not None:
            self.failures[failure] += 1
            self.writer.add({**base, "question_no": None, "query": None, "status": failure})
            return
        n_ok = 0
        judged = judge_questions(questions, p["text"], self.llm.questions_per_passage, self.llm.max_copy_chars)
        for i, (q, status) in enumerate(judged, start=1):
            self.writer.add({**base, "question_no": i, "query": q, "status": status})
            if status == "ok":
                n_ok += 1
            else:
                self.dropped[status] += 1
        self.counts["ok_questions"] += n_ok
        self.counts["passages_with_questions"] += n_ok > 0

    def offer(self, p: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        """Answer a passage from the cache, join an identical passage in flight, or submit a call."""
        self.counts["passages"] += 1
        self.submit(p, passage_hash(p["title"], p["text"]),
                    lambda: render_prompt(self.template, p["title"], p["text"], self.llm.questions_per_passage),
                    pool)

    def after_collect(self) -> None:
        """Show the running question and failure counts on the progress bar."""
        self.bar.set_postfix(ok=self.counts["ok_questions"], failed=sum(self.failures.values()), refresh=False)

    def nothing_worked(self, n: int) -> str:
        """The error of a run in which no answer came back for ``n`` passages."""
        return _nothing_worked(self.client, self.llm, n, self.failures, self.examples)


def write_llm_questions(cfg: Config, con: Any, out: Path, cache_dir: Path, progress: bool = True,
                        engine: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Generate questions for the sampled passages, write layer ``out`` and return the stage counts.

    ``con`` must expose a ``passages`` relation (passage_id, doc_id, source, title, text). Cached
    answers are reused; new ones are cached under ``cache_dir``. Raises :class:`LLMError` when the
    configuration is unusable or when passages were sampled but not one answer was obtained.
    Counts: ``passages`` sampled, ``cache_hits`` (passages answered from the cache), ``calls_made``
    (HTTP requests sent, retries included), ``retries``, ``responses`` (new answers, now cached),
    ``ok_questions``, ``passages_with_questions``, ``failures`` (failed passages by reason),
    ``dropped`` (questions by drop reason) and ``error_examples`` (one message per reason).
    ``engine`` (``distributed.engine = "ray"``): a callable giving the started Ray engine; the
    uncached passages are then asked by Ray actors first (:func:`etl.llm_client.answer_misses_on_ray`;
    counts ``ray``, ``ray_responses``, ``ray_failed``) and the stage runs from the cache.
    """
    llm = cfg.llm
    api_key = resolve_api_key(llm)
    template = load_template(llm)
    phash = prompt_hash(template, llm)
    out = Path(out)
    cache = ResponseCache(Path(cache_dir), llm.model, phash)
    cached_entries = cache.load()
    client = ChatClient(llm, api_key)

    n_all = int(con.sql("SELECT count(*) FROM passages").fetchall()[0][0])
    n_sample = min(n_all, llm.sample_passages) if llm.sample_passages > 0 else n_all

    unsorted = out.with_name(f".{out.name}.unsorted")
    unsorted.unlink(missing_ok=True)
    run = _QuestionRun(llm=llm, phash=phash, template=template, client=client, cache=cache,
                       writer=RowWriter(unsorted),
                       bar=tqdm(total=n_sample, desc="llm_questions", unit="passage", disable=not progress),
                       breaker=max(8, 2 * llm.max_concurrency))
    run.counts["passages"] = 0
    ray_counts: dict[str, Any] = {}
    if engine is not None:
        def prompts() -> Iterator[tuple[str, Callable[[], str]]]:
            for p in _iter_passages(con.sql(_sample_sql(cfg.run.seed, llm.sample_passages))
                                    .to_arrow_reader(READ_BATCH_ROWS)):
                yield passage_hash(p["title"], p["text"]), functools.partial(
                    render_prompt, template, p["title"], p["text"], llm.questions_per_passage)

        ray_counts = answer_misses_on_ray(engine, prompts(), cache, llm, api_key)
        run.counts.update({k: ray_counts.get(k, 0) for k in ("calls_made", "retries")})
    window = max(2, 4 * llm.max_concurrency)
    pool = ThreadPoolExecutor(max_workers=llm.max_concurrency, thread_name_prefix="llm")
    reader = con.sql(_sample_sql(cfg.run.seed, llm.sample_passages)).to_arrow_reader(READ_BATCH_ROWS)
    try:
        drive_requests(_iter_passages(reader), run, pool, client, cache, window,
                       on_abort=lambda: unsorted.unlink(missing_ok=True))
    finally:
        reader.close()

    counts, failures = run.counts, run.failures
    got_any = counts["responses"] + counts["cache_hits"] > 0
    if counts["passages"] > 0 and not got_any:
        unsorted.unlink(missing_ok=True)
        raise LLMError(run.nothing_worked(counts["passages"]))
    _sort_into(unsorted, out)
    unsorted.unlink(missing_ok=True)

    return {
        "enabled": True,
        "model": llm.model,
        "prompt_hash": phash,
        "passages": counts["passages"],
        "cache_hits": counts["cache_hits"],
        "calls_made": counts["calls_made"],
        "retries": counts["retries"],
        "responses": counts["responses"],
        "ok_questions": counts["ok_questions"],
        "passages_with_questions": counts["passages_with_questions"],
        "failed_passages": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
        "dropped": dict(sorted(run.dropped.items())),
        "error_examples": {k: client.redact(v) for k, v in sorted(run.examples.items())},
        "cache_entries_loaded": cached_entries,
        "cache_files_written": cache.files_written,
        **({"cache_files_unreadable": cache.unreadable} if cache.unreadable else {}),
        **{k: ray_counts[k] for k in ("ray", "ray_responses", "ray_failed") if k in ray_counts},
    }


def _nothing_worked(client: ChatClient, llm: LLMConfig, n: int, failures: Counter[str],
                    examples: dict[str, str]) -> str:
    reasons = ", ".join(f"{k}: {v}" for k, v in failures.most_common())
    example = next(iter(examples.values()), "")
    hint = ""
    if any(k in failures for k in ("http_error:401", "http_error:403")):
        hint = f"; check the key in the variable named by llm.api_key_env ({llm.api_key_env or 'unset'})"
    elif "http_error:404" in failures:
        hint = "; check llm.base_url (it should end in /v1) and llm.model"
    elif "connection_error" in failures or "timeout" in failures:
        hint = "; is the server running and reachable at llm.base_url?"
    return client.redact(
        f"llm_questions: no answer from {client.url} (model {llm.model!r}) for {n} passages "
        f"[{reasons}]{hint}. First error: {example}")
