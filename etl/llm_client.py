"""The chat-completions client of the LLM stages: the ``openai`` SDK, a shared 429 pause, key redaction.

Install with ``pip install 'ko-sparse-etl[llm]'`` (the ``openai`` SDK); any OpenAI-compatible
server works, since the SDK takes any ``base_url``. The SDK retries connection errors, timeouts,
408, 409, 429 and 5xx up to ``llm.max_retries`` times with its exponential backoff (0.5 s doubling,
at most 8 s, with jitter), honours ``Retry-After`` and pools connections; ``llm.timeout_s`` bounds
each request. On top of it:

* a 429 pauses every worker, not only the one that got it, for its ``Retry-After`` (capped at
  :data:`MAX_RETRY_AFTER_S`) or ``llm.backoff_s * 2**attempt`` (capped at :data:`MAX_BACKOFF_S`);
* a 2xx body that is not a chat completion (``malformed_response``) is asked again, up to
  ``llm.max_retries`` times with that same backoff (the SDK would not retry it);
* redirects are never followed, so the key is never sent to another host;
* the key is replaced by ``[REDACTED]`` in everything the client returns.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import LLMConfig
from .llm_prompt import LLMError

MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0
REDACTED = "[REDACTED]"
DETAIL_CHARS = 300
EXTRA_HINT = "pip install 'ko-sparse-etl[llm]' (or pip install 'openai>=1.40')"
_NO_KEY = "ko-sparse-etl-no-key"  # the SDK insists on a key; the header is removed before sending


class MalformedResponseError(ValueError):
    """A 2xx body that is not a chat-completions response."""


class MissingExtraError(LLMError):
    """The ``openai`` SDK (extra ``llm``) is not installed."""


def import_openai() -> Any:
    """The ``openai`` module, or :class:`MissingExtraError` naming the extra to install."""
    try:
        import openai
    except ImportError as exc:
        raise MissingExtraError(
            f"the LLM stages (query method 'llm', the [judge]) need the openai SDK, which is not installed: "
            f"{EXTRA_HINT}") from exc
    return openai


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        secs = (when - datetime.now(UTC)).total_seconds()
    if secs != secs:  # NaN
        return None
    return min(max(secs, 0.0), MAX_RETRY_AFTER_S)


def extract_content(raw: bytes) -> tuple[str, str | None, dict[str, int]]:
    """(content, finish_reason, usage) of a chat-completions body; :class:`MalformedResponseError` otherwise.

    ``content`` null (e.g. a reasoning model that spent ``max_tokens`` thinking) is returned as "".
    """
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedResponseError("body is not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedResponseError("body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        err = body.get("error")
        raise MalformedResponseError("no choices" + (f" (error: {str(err)[:DETAIL_CHARS]})" if err else ""))
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
    elif "text" in choice:  # completions-style servers
        content = choice.get("text")
    else:
        raise MalformedResponseError("choice has no message")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise MalformedResponseError("message content is not text")
    finish = choice.get("finish_reason")
    usage_raw = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    usage = {k: int(v) for k, v in usage_raw.items()
             if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int) and not isinstance(v, bool)}
    return content, finish if isinstance(finish, str) else None, usage


@dataclass
class CallResult:
    """Outcome of one passage's call, after retries."""

    status: str  # "ok" or the failure reason of the last attempt
    content: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    detail: str = ""


class ChatClient:
    """Thread-safe chat-completions client over the ``openai`` SDK, with a shared 429 pause.

    ``complete(prompt)`` never raises for HTTP problems: it returns a :class:`CallResult` whose
    ``status`` is ``ok`` or the reason of the last failure (``http_error:<code>``, ``timeout``,
    ``connection_error``, ``malformed_response``) and whose ``requests`` counts the HTTP requests
    sent, the SDK's retries included.
    """

    def __init__(self, llm: LLMConfig, api_key: str | None):
        openai = import_openai()
        self.llm = llm
        self.url = llm.base_url.rstrip("/") + "/chat/completions"
        self._key = api_key
        self._errors = openai
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._local = threading.local()
        self.stop = threading.Event()
        http = openai.DefaultHttpxClient(
            follow_redirects=False, timeout=llm.timeout_s,
            event_hooks={"request": [self._before_request], "response": [self._after_response]})
        self._sdk = openai.OpenAI(base_url=llm.base_url.rstrip("/"), api_key=api_key or _NO_KEY,
                                  max_retries=llm.max_retries, timeout=llm.timeout_s, http_client=http,
                                  default_headers={"User-Agent": "ko-sparse-etl"})

    def close(self) -> None:
        """Close the connection pool."""
        self._sdk.close()

    def redact(self, text: str) -> str:
        """``text`` with any occurrence of the API key replaced."""
        if self._key and text and self._key in text:
            return text.replace(self._key, REDACTED)
        return text

    # -- hooks run by the HTTP client for every request the SDK sends (its retries included) --

    def _before_request(self, request: Any) -> None:
        self._wait_pause()
        self._local.requests = getattr(self._local, "requests", 0) + 1
        if not self._key:
            request.headers.pop("Authorization", None)

    def _after_response(self, response: Any) -> None:
        if response.status_code == 429:
            delay = parse_retry_after(response.headers.get("Retry-After"))
            self._pause_all(delay if delay is not None else self._backoff(self._local.requests - 1))

    def _backoff(self, attempt: int) -> float:
        delay = min(self.llm.backoff_s * (2 ** attempt), MAX_BACKOFF_S)
        return delay * (1.0 + random.uniform(0.0, 0.25))

    def _wait_pause(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                left = self._pause_until - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(left)

    def _pause_all(self, seconds: float) -> None:
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _once(self, prompt: str) -> CallResult:
        """One SDK call (with the SDK's own retries) turned into a :class:`CallResult`."""
        errors = self._errors
        try:
            raw = self._sdk.chat.completions.with_raw_response.create(
                model=self.llm.model, messages=[{"role": "user", "content": prompt}],
                temperature=self.llm.temperature, max_tokens=self.llm.max_tokens)
            body = raw.http_response.content
        except errors.APIStatusError as exc:
            code = int(exc.status_code)
            try:
                snippet = exc.response.text[:DETAIL_CHARS]
            except Exception:  # noqa: BLE001 - the body is only a hint for the error message
                snippet = ""
            return CallResult(f"http_error:{code}", detail=f"HTTP {code}: {snippet}".strip())
        except errors.APITimeoutError:
            return CallResult("timeout", detail=f"no answer within {self.llm.timeout_s}s")
        except errors.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            return CallResult("connection_error", detail=f"{type(cause).__name__}: {cause}")
        try:
            content, finish, usage = extract_content(body)
        except MalformedResponseError as exc:
            return CallResult("malformed_response", detail=f"{exc}: {body[:120]!r}")
        return CallResult("ok", content=content, finish_reason=finish, usage=usage)

    def complete(self, prompt: str) -> CallResult:
        """Send one chat completion for ``prompt``: the SDK retries transport failures, this loop malformed bodies."""
        self._local.requests = 0
        last = CallResult("cancelled")
        for attempt in range(self.llm.max_retries + 1):
            self._wait_pause()
            if self.stop.is_set():
                break
            last = self._once(prompt)
            if last.status != "malformed_response" or attempt == self.llm.max_retries:
                break
            if self.stop.wait(self._backoff(attempt)):
                break
        content = self.redact(last.content) if last.content is not None else None
        return CallResult(last.status, content, last.finish_reason, last.usage, self._local.requests,
                          self.redact(last.detail)[:DETAIL_CHARS])


@dataclass
class CachedCallRun:
    """What the LLM question stage and the judge share: cached, de-duplicated, bounded chat calls.

    Each item (a passage, a (query, passage) pair) has a cache key: a cached answer is used at
    once, an item whose key is already in flight waits for that call, anything else is submitted.
    Finished calls are cached and every waiting item is handed to :meth:`emit` (the stage's own
    rows). After ``breaker`` failed calls in a row with no answer at all yet, :meth:`collect`
    raises :class:`LLMError` with :meth:`nothing_worked`. Counts: ``cache_hits``, ``calls_made``,
    ``retries``, ``responses``, ``prompt_tokens``, ``completion_tokens``.
    """

    client: ChatClient
    cache: Any
    writer: Any
    bar: Any
    breaker: int = 8
    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    in_flight: dict[Future[CallResult], str] = field(default_factory=dict)
    waiting: dict[str, list[Any]] = field(default_factory=dict)
    consecutive_failures: int = 0

    def emit(self, item: Any, content: str | None, finish: str | None, failure: str | None) -> None:
        """Write the rows of one item: from its answer (``content``), or for its ``failure``."""
        raise NotImplementedError

    def nothing_worked(self, n: int) -> str:
        """The error of a run in which ``n`` calls failed and no answer came back."""
        raise NotImplementedError

    def after_collect(self) -> None:
        """Called after each finished call has been emitted (e.g. to update the progress bar's postfix)."""

    def submit(self, item: Any, key: str, prompt: Callable[[], str], pool: Any) -> None:
        """Answer ``item`` from the cache, join an identical item in flight, or submit ``prompt()``."""
        hit = self.cache.get(key)
        if hit is not None:
            self.counts["cache_hits"] += 1
            self.emit(item, hit[0], hit[1], None)
            self.bar.update(1)
            return
        if key in self.waiting:
            self.waiting[key].append(item)
            return
        self.waiting[key] = [item]
        self.in_flight[pool.submit(self.client.complete, prompt())] = key

    def collect(self, done: Iterable[Future[CallResult]]) -> None:
        """Record finished calls; raise :class:`LLMError` when only failures came so far, past the breaker."""
        for fut in done:
            key = self.in_flight.pop(fut)
            res = fut.result()
            self.counts["calls_made"] += res.requests
            self.counts["retries"] += max(res.requests - 1, 0)
            items = self.waiting.pop(key)
            if res.status == "ok":
                assert res.content is not None
                self.counts["responses"] += 1
                self.counts["prompt_tokens"] += res.usage.get("prompt_tokens", 0)
                self.counts["completion_tokens"] += res.usage.get("completion_tokens", 0)
                self.consecutive_failures = 0
                self.cache.put(key, res.content, res.finish_reason, res.usage)
                self.counts["cache_hits"] += len(items) - 1  # identical items share one answer
                for item in items:
                    self.emit(item, res.content, res.finish_reason, None)
            else:
                self.consecutive_failures += 1
                self.examples.setdefault(res.status, res.detail)
                for item in items:
                    self.emit(item, None, None, res.status)
            self.bar.update(len(items))
            self.after_collect()
        if (self.consecutive_failures >= self.breaker and self.counts["responses"] == 0
                and self.counts["cache_hits"] == 0):
            raise LLMError(self.nothing_worked(self.consecutive_failures))


def drive_requests(items: Iterable[Any], run: Any, pool: Any, client: Any, cache: Any, window: int,
                   on_abort: Callable[[], None]) -> None:
    """Offer every item to ``run`` with at most ``window`` requests in flight and collect the answers.

    ``run`` is a stage's state (``offer(item, pool)``, ``collect(done)``, ``in_flight``, ``bar``,
    ``writer``); the question stage and the judge share this loop. On any error the client is
    stopped, queued work is cancelled and ``on_abort()`` removes the partial output; in every case
    the response cache is flushed and the run's progress bar and writer are closed.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    aborted = True
    try:
        for item in items:
            run.offer(item, pool)
            while len(run.in_flight) >= window:
                run.collect(wait(run.in_flight, return_when=FIRST_COMPLETED).done)
        while run.in_flight:
            run.collect(wait(run.in_flight, return_when=FIRST_COMPLETED).done)
        aborted = False
    finally:
        if aborted:
            client.stop.set()
        pool.shutdown(wait=not aborted, cancel_futures=aborted)
        if not aborted:
            client.close()
        cache.flush()
        run.bar.close()
        run.writer.close()
        if aborted:
            on_abort()


# ---- the Ray engine (distributed.engine = "ray") ---------------------------------------------------

def chat_worker(llm: LLMConfig, api_key: str | None) -> Callable[[Any], Any]:
    """Ray actor factory (:mod:`etl.distributed`): one :class:`ChatClient`; each task's prompts sent concurrently.

    A task is one row of lists (``key``, ``prompt``); up to ``llm.max_concurrency`` calls per actor
    are in flight. The result has one row per prompt: the :class:`CallResult` fields.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    client = ChatClient(llm, api_key)

    def fn(batch: Any) -> Any:
        keys = [k for row in batch.column("key").to_pylist() for k in row]
        prompts = [p for row in batch.column("prompt").to_pylist() for p in row]
        with ThreadPoolExecutor(max_workers=llm.max_concurrency, thread_name_prefix="llm-ray") as pool:
            res = list(pool.map(client.complete, prompts))
        return pa.table({
            "key": pa.array(keys, pa.string()), "status": pa.array([r.status for r in res], pa.string()),
            "content": pa.array([r.content for r in res], pa.string()),
            "finish_reason": pa.array([r.finish_reason for r in res], pa.string()),
            "prompt_tokens": pa.array([r.usage.get("prompt_tokens", 0) for r in res], pa.int64()),
            "completion_tokens": pa.array([r.usage.get("completion_tokens", 0) for r in res], pa.int64()),
            "requests": pa.array([r.requests for r in res], pa.int64()),
        })

    return fn


def answer_misses_on_ray(engine: Callable[[], Any], items: Iterable[tuple[str, Callable[[], str]]], cache: Any,
                         llm: LLMConfig, api_key: str | None) -> dict[str, Any]:
    """Ask Ray actors the prompts of the items (cache key, prompt) whose answer is not cached; cache the answers.

    Each key is asked once. The driver ``put``s every complete answer into ``cache`` (the stage's
    :class:`etl.llm_cache.ResponseCache`), so the stage's local pass then answers those items from
    the cache; a prompt whose call failed on Ray is not cached and is asked once more by the local
    pass, which records the failure. The API key reaches the actors as a constructor argument
    (through Ray's object store). Returns the counts (``calls_made``, ``retries``,
    ``prompt_tokens``, ``completion_tokens``, ``ray_responses``, ``ray_failed``, ``ray``) or ``{}``
    when nothing was missing (Ray is then not started).
    """
    import pyarrow as pa

    pending: list[tuple[str, str]] = []
    seen: set[str] = set()
    state: dict[str, Any] = {}

    def tasks() -> Iterable[Any]:
        for key, prompt in items:
            if key in seen or cache.get(key) is not None:
                continue
            seen.add(key)
            pending.append((key, prompt()))
            if "engine" not in state:
                state["engine"] = engine()
            if len(pending) >= llm.max_concurrency * state["engine"].cfg.task_batches:
                yield _prompt_task(pa, pending)
                pending.clear()
        if pending:
            yield _prompt_task(pa, pending)

    counts: Counter[str] = Counter()

    def on_result(table: Any) -> None:
        for row in table.to_pylist():
            counts["calls_made"] += row["requests"]
            counts["retries"] += max(row["requests"] - 1, 0)
            if row["status"] == "ok":
                counts["ray_responses"] += 1
                counts["prompt_tokens"] += row["prompt_tokens"]
                counts["completion_tokens"] += row["completion_tokens"]
                usage = {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"]}
                cache.put(row["key"], row["content"], row["finish_reason"], usage)
            else:
                counts["ray_failed"] += 1

    todo = iter(tasks())
    first = next(todo, None)  # the engine is started only once a key is missing
    if first is None:
        return {}
    ray_engine = state["engine"]
    ray_engine.run(itertools.chain([first], todo), chat_worker, {"llm": llm, "api_key": api_key}, on_result)
    cache.flush()
    return {**counts, "ray": ray_engine.describe()}


def _prompt_task(pa: Any, pending: list[tuple[str, str]]) -> Any:
    return pa.table({"key": pa.array([[k for k, _ in pending]], pa.list_(pa.string())),
                     "prompt": pa.array([[p for _, p in pending]], pa.list_(pa.string()))})
