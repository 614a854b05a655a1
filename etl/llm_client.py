"""The chat-completions client of query method 3: retries, backoff, a shared 429 pause, key redaction.

Connection errors, timeouts, 5xx, 408, 429 and malformed bodies are retried up to
``llm.max_retries`` times with exponential backoff ``backoff_s * 2**attempt`` (capped at
:data:`MAX_BACKOFF_S`, plus up to 25 % jitter); a ``Retry-After`` header on 429/503 wins (capped at
:data:`MAX_RETRY_AFTER_S`) and a 429 pauses every worker, not only the one that got it. Other 4xx
are not retried. Redirects are never followed, so the key is never sent to another host.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import LLMConfig

MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0
RETRY_STATUS = (408, 429)  # retried besides every 5xx
REDACTED = "[REDACTED]"
DETAIL_CHARS = 300


class MalformedResponseError(ValueError):
    """A 2xx body that is not a chat-completions response."""


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


@dataclass
class _Attempt:
    status: str
    retryable: bool = False
    retry_after: float | None = None
    content: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    detail: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the Authorization header must never follow one to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


class ChatClient:
    """Thread-safe chat-completions client with retries, backoff and a shared 429 pause."""

    def __init__(self, llm: LLMConfig, api_key: str | None):
        self.llm = llm
        self.url = llm.base_url.rstrip("/") + "/chat/completions"
        self._key = api_key
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": "ko-sparse-etl"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self.stop = threading.Event()

    def redact(self, text: str) -> str:
        """``text`` with any occurrence of the API key replaced."""
        if self._key and text and self._key in text:
            return text.replace(self._key, REDACTED)
        return text

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

    def _once(self, payload: bytes) -> _Attempt:
        req = urllib.request.Request(self.url, data=payload, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.llm.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            code = int(exc.code)
            retry_after = parse_retry_after(exc.headers.get("Retry-After")) if code in (429, 503) else None
            try:
                snippet = exc.read(DETAIL_CHARS).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only a hint for the error message
                snippet = ""
            finally:
                exc.close()
            return _Attempt(f"http_error:{code}", retryable=code in RETRY_STATUS or code >= 500,
                            retry_after=retry_after, detail=f"HTTP {code}: {snippet}".strip())
        except TimeoutError as exc:
            return _Attempt("timeout", retryable=True, detail=f"no answer within {self.llm.timeout_s}s ({exc})")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return _Attempt("timeout", retryable=True, detail=f"connect timed out after {self.llm.timeout_s}s")
            return _Attempt("connection_error", retryable=True, detail=f"{type(exc).__name__}: {exc.reason}")
        except (http.client.HTTPException, OSError) as exc:
            return _Attempt("connection_error", retryable=True, detail=f"{type(exc).__name__}: {exc}")
        try:
            content, finish, usage = extract_content(raw)
        except MalformedResponseError as exc:
            return _Attempt("malformed_response", retryable=True, detail=f"{exc}: {raw[:120]!r}")
        return _Attempt("ok", content=content, finish_reason=finish, usage=usage)

    def complete(self, prompt: str) -> CallResult:
        """Send one chat completion for ``prompt``, retrying transient failures; never raises for HTTP problems."""
        payload = json.dumps({
            "model": self.llm.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.llm.temperature,
            "max_tokens": self.llm.max_tokens,
        }, ensure_ascii=False).encode("utf-8")
        attempts = self.llm.max_retries + 1
        requests = 0
        last = _Attempt("cancelled")
        for attempt in range(attempts):
            self._wait_pause()
            if self.stop.is_set():
                break
            last = self._once(payload)
            requests += 1
            if last.status == "ok" or not last.retryable or attempt == attempts - 1:
                break
            delay = last.retry_after if last.retry_after is not None else self._backoff(attempt)
            if last.status == "http_error:429":
                self._pause_all(delay)
            if self.stop.wait(delay):
                break
        content = self.redact(last.content) if last.content is not None else None
        return CallResult(last.status, content, last.finish_reason, last.usage, requests,
                          self.redact(last.detail)[:DETAIL_CHARS])

