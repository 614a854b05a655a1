"""Stage ``llm_questions``: Korean questions generated per passage by an OpenAI-compatible server.

Any server speaking the chat-completions protocol works (vLLM, Ollama, llama.cpp server, a hosted
API): one ``POST {llm.base_url}/chat/completions`` per sampled passage, asking for
``llm.questions_per_passage`` questions with the editable Korean template ``llm.prompt_file``
(default ``etl/prompts/llm_questions.ko.txt``; placeholders ``{title}``, ``{passage}``, ``{n}``).

* **Sampling** is deterministic: passages ordered by ``md5(passage_id || run.seed)``, the first
  ``llm.sample_passages`` taken (0 = all).
* **Concurrency**: a thread pool of ``llm.max_concurrency`` workers, fed a bounded window of
  passages read from DuckDB in Arrow batches.
* **Retries**: connection errors, timeouts, 5xx, 408, 429 and malformed bodies are retried up to
  ``llm.max_retries`` times with exponential backoff ``backoff_s * 2**attempt`` (capped at
  :data:`MAX_BACKOFF_S`, plus up to 25 % jitter); a ``Retry-After`` header on 429/503 wins (capped
  at :data:`MAX_RETRY_AFTER_S`) and a 429 pauses every worker, not only the one that got it. Other
  4xx (bad model name, bad key, ...) are not retried. Redirects are never followed, so the key is
  never sent to another host.
* **Cache**: every complete response is stored as Parquet under ``<warehouse>/cache/llm/``, keyed
  by ``(model, prompt_hash, passage_hash)`` (:func:`prompt_hash` covers the template text, model,
  questions_per_passage, temperature and max_tokens; :func:`passage_hash` the title and text);
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
"""

from __future__ import annotations

import ast
import email.utils
import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import PACKAGE_DIR, Config, LLMConfig

SCHEMA = pa.schema([
    ("passage_id", pa.string()), ("doc_id", pa.string()), ("source", pa.string()),
    ("question_no", pa.int32()), ("query", pa.string()), ("status", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()),
])

CACHE_SCHEMA = pa.schema([
    ("model", pa.string()), ("prompt_hash", pa.string()), ("passage_hash", pa.string()),
    ("response", pa.string()), ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("created_at", pa.string()),
])

DEFAULT_PROMPT_FILE = PACKAGE_DIR / "prompts" / "llm_questions.ko.txt"
MIN_QUESTION_CHARS = 5
CACHE_FLUSH_EVERY = 200
CACHE_COMPACT_ABOVE = 64  # merge the cache into one file when it has more files than this
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0
RETRY_STATUS = (408, 429)  # retried besides every 5xx
READ_BATCH_ROWS = 1024
ROW_FLUSH_EVERY = 5000
REDACTED = "[REDACTED]"
DETAIL_CHARS = 300


class LLMError(RuntimeError):
    """The stage cannot run (configuration) or no call succeeded; the message never holds the key."""


class MalformedResponseError(ValueError):
    """A 2xx body that is not a chat-completions response."""


# ---- configuration pieces --------------------------------------------------------------------

def resolve_api_key(llm: LLMConfig) -> str | None:
    """The API key from the environment variable named by ``llm.api_key_env`` (None when unset).

    Raises :class:`LLMError` naming the *variable* (never a value) when ``api_key_env`` is set but
    the variable is missing or empty.
    """
    name = llm.api_key_env.strip()
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value.strip():
        raise LLMError(
            f"config key 'llm.api_key_env' names the environment variable {name!r}, which is not set "
            f"(or is empty); export {name}=<your key>, or set llm.api_key_env = \"\" for a server without auth")
    return value.strip()


def prompt_path(llm: LLMConfig) -> Path:
    """The prompt template file: ``llm.prompt_file`` (relative to the current directory) or the bundled one."""
    return Path(llm.prompt_file).expanduser().resolve() if llm.prompt_file else DEFAULT_PROMPT_FILE


def load_template(llm: LLMConfig) -> str:
    """Read the prompt template; it must contain the ``{passage}`` placeholder."""
    path = prompt_path(llm)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMError(f"config key 'llm.prompt_file': cannot read {path}: {exc.strerror}") from exc
    if "{passage}" not in text:
        raise LLMError(f"config key 'llm.prompt_file': template {path} lacks the {{passage}} placeholder")
    return unicodedata.normalize("NFC", text)


def prompt_hash(template: str, llm: LLMConfig) -> str:
    """Cache key part for the prompt: sha256 of the template text (before substitution) and the sampling settings.

    Covers model, questions_per_passage, temperature and max_tokens (a larger max_tokens can turn a
    truncated answer into a complete one), so changing any of them asks the server again.
    """
    payload = json.dumps([template, llm.model, llm.questions_per_passage, llm.temperature, llm.max_tokens],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompt_signature(llm: LLMConfig) -> str:
    """The current prompt hash (for stage fingerprints: editing the template re-runs the stage)."""
    return prompt_hash(load_template(llm), llm)


_PLACEHOLDER = re.compile(r"\{(title|passage|n)\}")


def render_prompt(template: str, title: str, passage: str, n: int) -> str:
    """Substitute ``{title}``, ``{passage}`` and ``{n}`` in one pass; every other brace is left as is."""
    values = {"title": title, "passage": passage, "n": str(n)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def passage_hash(title: str, text: str) -> str:
    """Cache key part for a passage: sha256 of what the model sees of it (title and text)."""
    return hashlib.sha256(f"{title}\x1f{text}".encode("utf-8", "surrogatepass")).hexdigest()


# ---- response parsing ------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_MARKER = re.compile(
    r"^(?:[-*•·‣▪●○◦]\s+"                           # bullets
    r"|\(?\d{1,3}\s*[.)\]:．、)]\s+"                  # 1. 1) (1) 1: 1]
    r"|(?:Q|q|질문)\s*\d{0,3}\s*[:.)．：]\s*"          # Q1: 질문 2. Q:
    r"|\d{1,3}\s*번\s*[.):：]?\s+)")                  # 1번.
_QUESTION_END = re.compile(
    r"(?:\?|？|까|나요|가요|는가|은가|인가|던가|니|냐|죠|지요|래요|는지|은지|인지)$")
_TRAILING_PUNCT = " \t.。!…\"'“”‘’」』)]"
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "`": "`", "«": "»"}
_QUOTE_OPENERS = {v: k for k, v in _QUOTE_PAIRS.items()}
_JSON_KEYS = ("questions", "question", "queries", "query", "질문", "질문들", "질문목록", "items", "results", "data",
              "output", "text")
_SENTENCE_SPLIT = re.compile(r"(?<=[?？])\s+")
_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _strip_quotes(q: str) -> str:
    """Remove surrounding quote pairs, then a lone opening or closing quote left by a split JSON line."""
    q = q.strip()
    while len(q) >= 2 and q[0] in _QUOTE_PAIRS and q[-1] == _QUOTE_PAIRS[q[0]]:
        q = q[1:-1].strip()
    if q and q[0] in _QUOTE_PAIRS:
        c, closer = q[0], _QUOTE_PAIRS[q[0]]
        if (q.count(c) % 2 == 1) if closer == c else closer not in q:
            q = q[1:].strip()
    if q and q[-1] in _QUOTE_OPENERS:
        c, opener = q[-1], _QUOTE_OPENERS[q[-1]]
        if (q.count(c) % 2 == 1) if opener == c else opener not in q:
            q = q[:-1].strip()
    return q


def clean_question(q: str) -> str:
    """Normalize one question: NFC, single spaces, no markdown emphasis, numbering, trailing comma or quotes."""
    q = unicodedata.normalize("NFC", q)
    q = re.sub(r"\s+", " ", q).strip()
    q = re.sub(r"\*\*|__", "", q).strip()
    for _ in range(2):
        q = _MARKER.sub("", q, count=1).strip()
        q = _strip_quotes(q.rstrip(",;").strip())
    return re.sub(r"\s+", " ", q).strip()


def looks_like_question(q: str) -> bool:
    """True when ``q`` ends with a question mark or a Korean interrogative ending."""
    return bool(_QUESTION_END.search(q.rstrip(_TRAILING_PUNCT)))


def _from_json(obj: Any, depth: int = 0) -> list[str]:
    """Question strings inside a decoded JSON / literal value."""
    if depth > 4:
        return []
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        out: list[str] = []
        for item in obj:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                for k, v in item.items():
                    if isinstance(v, str) and str(k).lower() in _JSON_KEYS:
                        out.append(v)
                        break
                else:
                    strs = [v for v in item.values() if isinstance(v, str)]
                    if len(strs) == 1:
                        out.append(strs[0])
        return out
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _JSON_KEYS:
            if key in lowered and isinstance(lowered[key], list | dict):
                found = _from_json(lowered[key], depth + 1)
                if found:
                    return found
        for v in obj.values():
            if isinstance(v, list):
                found = _from_json(v, depth + 1)
                if found:
                    return found
        strs = [v for v in obj.values() if isinstance(v, str)]
        if strs and all(looks_like_question(clean_question(s)) for s in strs):
            return strs
    return []


def _json_candidates(text: str) -> list[str]:
    """Questions from the first JSON (or Python literal) list/object in ``text`` that holds any."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[\[{]", text)][:64]
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        found = _from_json(obj)
        if found:
            return found
    m = re.search(r"\[.*\]", text, re.S)
    if m and len(m.group(0)) < 50_000:
        try:
            obj = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            obj = None
        found = _from_json(obj) if obj is not None else []
        if found:
            return found
    if text.lstrip()[:1] in ("[", "{"):  # JSON cut short (max_tokens): keep the complete strings
        salvaged = []
        for s in _QUOTED.findall(text):
            try:
                salvaged.append(json.loads(f'"{s}"'))
            except json.JSONDecodeError:
                continue
        salvaged = [s for s in salvaged if looks_like_question(clean_question(s))]
        if salvaged:
            return salvaged
    return []


def _line_candidates(text: str) -> list[str]:
    """Questions from list items or plain lines; prose that is not a question is dropped."""
    marked: list[str] = []
    plain: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"\*\*|__", "", raw).strip().lstrip(">").strip()
        if not line or line.startswith(("```", "#")):
            continue
        m = _MARKER.match(line)
        if m:
            marked.append(line[m.end():])
        else:
            plain.extend(_SENTENCE_SPLIT.split(line))
    cands = [clean_question(c) for c in (marked or plain)]
    cands = [c for c in cands if c]
    questions = [c for c in cands if looks_like_question(c)]
    if questions or not marked:
        return questions
    return cands  # an explicit list of keyword-style queries


def parse_questions(text: str) -> list[str]:
    """Questions in a model's answer, in order, cleaned (may hold duplicates); [] when none are found.

    Tried in turn: JSON in code fences, JSON anywhere (list of strings, list of objects, object
    with a list under ``questions``/``질문``/...), a Python literal list, the complete strings of a
    truncated JSON list, then numbered/bulleted/plain lines keeping only question-like ones.
    """
    text = unicodedata.normalize("NFC", text or "")
    text = _THINK.sub("", text).strip()
    if not text:
        return []
    fenced = "\n".join(m.group(1) for m in _FENCE.finditer(text))
    for part in ([fenced] if fenced.strip() else []) + [text]:
        found = [clean_question(q) for q in _json_candidates(part) if isinstance(q, str)]
        found = [q for q in found if q]
        if found:
            return found
    for part in ([fenced] if fenced.strip() else []) + [_FENCE.sub("\n", text), text]:
        found = _line_candidates(part)
        if found:
            return found
    return []


# ---- filters ---------------------------------------------------------------------------------

def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", s)).strip().casefold()


def longest_common_span(a: str, b: str) -> int:
    """Length of the longest substring shared verbatim by ``a`` and ``b`` (exact; no junk heuristic)."""
    if not a or not b:
        return 0
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def judge_questions(questions: list[str], passage: str, n: int, max_copy_chars: int) -> list[tuple[str, str]]:
    """Give each question a status: ``ok``, ``too_short``, ``duplicate``, ``copied_span`` or ``surplus``.

    Comparisons ignore case and runs of whitespace. At most ``n`` questions are ``ok``; a copied
    span of ``max_copy_chars`` or more characters drops a question (``max_copy_chars`` <= 0: off).
    """
    ref = _norm_text(passage)
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(ref)
    seen: set[str] = set()
    n_ok = 0
    out: list[tuple[str, str]] = []
    for q in questions:
        key = re.sub(r"[\s?？.!]+", "", q.casefold())
        if len(q) < MIN_QUESTION_CHARS:
            status = "too_short"
        elif key in seen:
            status = "duplicate"
        else:
            status = "ok"
            if max_copy_chars > 0:
                nq = _norm_text(q)
                matcher.set_seq1(nq)
                if matcher.find_longest_match(0, len(nq), 0, len(ref)).size >= max_copy_chars:
                    status = "copied_span"
            if status == "ok" and n_ok >= n:
                status = "surplus"
        seen.add(key)
        n_ok += status == "ok"
        out.append((q, status))
    return out


# ---- HTTP client -----------------------------------------------------------------------------

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


# ---- response cache --------------------------------------------------------------------------

class ResponseCache:
    """Answers keyed by (model, prompt_hash, passage_hash), as Parquet files under ``cache_dir``."""

    def __init__(self, cache_dir: Path, model: str, prompt_hash: str, flush_every: int | None = None):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.prompt_hash = prompt_hash
        self.flush_every = flush_every or CACHE_FLUSH_EVERY
        self._mem: dict[str, tuple[str, str | None]] = {}
        self._buffer: list[dict[str, Any]] = []
        self._seq = 0
        self.unreadable: list[str] = []
        self.files_written = 0

    def files(self) -> list[Path]:
        """Complete cache files (temporary names start with a dot and are ignored)."""
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def load(self) -> int:
        """Read the entries of this (model, prompt_hash); return how many. Unreadable files are skipped."""
        files = self.files()
        tables = []
        for f in files:
            try:
                t = pq.read_table(f, schema=CACHE_SCHEMA)
            except (OSError, pa.ArrowException) as exc:
                self.unreadable.append(f"{f.name}: {type(exc).__name__}")
                continue
            tables.append(t)
        for t in tables:
            mine = t.filter(pc.and_(pc.equal(t["model"], self.model), pc.equal(t["prompt_hash"], self.prompt_hash)))
            cols = mine.select(["passage_hash", "response", "finish_reason"]).to_pydict()
            for h, resp, fin in zip(cols["passage_hash"], cols["response"], cols["finish_reason"], strict=True):
                if h is not None and resp is not None:
                    self._mem[h] = (resp, fin)
        if len(tables) > CACHE_COMPACT_ABOVE and not self.unreadable:
            self._compact(files, tables)
        return len(self._mem)

    def _compact(self, files: list[Path], tables: list[pa.Table]) -> None:
        merged = pa.concat_tables(tables)
        self._write(merged, "compacted")
        for f in files:
            f.unlink(missing_ok=True)

    def get(self, key: str) -> tuple[str, str | None] | None:
        """(response, finish_reason) cached for a passage hash, or None."""
        return self._mem.get(key)

    def put(self, key: str, result: CallResult) -> None:
        """Remember a complete response; flush to disk every ``flush_every`` entries."""
        assert result.content is not None
        self._mem[key] = (result.content, result.finish_reason)
        self._buffer.append({
            "model": self.model, "prompt_hash": self.prompt_hash, "passage_hash": key,
            "response": result.content, "finish_reason": result.finish_reason,
            "prompt_tokens": result.usage.get("prompt_tokens"),
            "completion_tokens": result.usage.get("completion_tokens"),
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered entries as one new Parquet file (temporary name, then rename)."""
        if not self._buffer:
            return
        self._write(pa.Table.from_pylist(self._buffer, schema=CACHE_SCHEMA), "responses")
        self._buffer = []

    def _write(self, table: pa.Table, tag: str) -> None:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        final = self.dir / f"{tag}-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**9:09d}-{self._seq:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        self.files_written += 1


# ---- the stage -------------------------------------------------------------------------------

def _sample_sql(seed: int, sample: int) -> str:
    limit = f" LIMIT {int(sample)}" if sample > 0 else ""
    return ("SELECT passage_id, doc_id, source, title, text FROM passages "
            f"ORDER BY md5(passage_id || CAST({int(seed)} AS VARCHAR)), passage_id{limit}")


def sample_passage_ids(con: Any, seed: int, sample: int) -> list[str]:
    """The passage ids the stage would send, in order (deterministic for a seed)."""
    return [r[0] for r in con.sql(f"SELECT passage_id FROM ({_sample_sql(seed, sample)})").fetchall()]


class _RowWriter:
    """Buffers layer rows and appends them to a Parquet file."""

    def __init__(self, path: Path):
        self.path = path
        self._rows: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROW_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA))
        self.rows += len(self._rows)
        self._rows = []

    def close(self) -> None:
        self.flush()
        if self._writer is None:
            pq.write_table(SCHEMA.empty_table(), self.path)
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


def write_llm_questions(cfg: Config, con: Any, out: Path, cache_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Generate questions for the sampled passages, write layer ``out`` and return the stage counts.

    ``con`` must expose a ``passages`` relation (passage_id, doc_id, source, title, text). Cached
    answers are reused; new ones are cached under ``cache_dir``. Raises :class:`LLMError` when the
    configuration is unusable or when passages were sampled but not one answer was obtained.
    Counts: ``passages`` sampled, ``cache_hits`` (passages answered from the cache), ``calls_made``
    (HTTP requests sent, retries included), ``retries``, ``responses`` (new answers, now cached),
    ``ok_questions``, ``passages_with_questions``, ``failures`` (failed passages by reason),
    ``dropped`` (questions by drop reason) and ``error_examples`` (one message per reason).
    """
    llm = cfg.llm
    api_key = resolve_api_key(llm)
    template = load_template(llm)
    phash = prompt_hash(template, llm)
    n_q = llm.questions_per_passage
    out = Path(out)
    cache = ResponseCache(Path(cache_dir), llm.model, phash)
    cached_entries = cache.load()
    client = ChatClient(llm, api_key)

    n_all = int(con.sql("SELECT count(*) FROM passages").fetchall()[0][0])
    n_sample = min(n_all, llm.sample_passages) if llm.sample_passages > 0 else n_all

    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    examples: dict[str, str] = {}
    unsorted = out.with_name(f".{out.name}.unsorted")
    unsorted.unlink(missing_ok=True)
    writer = _RowWriter(unsorted)

    def emit(p: dict[str, Any], content: str | None, finish: str | None, failure: str | None) -> None:
        base = {"passage_id": p["passage_id"], "doc_id": p["doc_id"], "source": p["source"],
                "model": llm.model, "prompt_hash": phash}
        if failure is None:
            assert content is not None
            questions = parse_questions(content)
            if not questions:
                failure = "empty_response" if not content.strip() else (
                    "truncated" if finish == "length" else "unparseable")
                examples.setdefault(failure, content[:DETAIL_CHARS])
        if failure is not None:
            failures[failure] += 1
            writer.add({**base, "question_no": None, "query": None, "status": failure})
            return
        n_ok = 0
        for i, (q, status) in enumerate(judge_questions(questions, p["text"], n_q, llm.max_copy_chars), start=1):
            writer.add({**base, "question_no": i, "query": q, "status": status})
            if status == "ok":
                n_ok += 1
            else:
                dropped[status] += 1
        counts["ok_questions"] += n_ok
        counts["passages_with_questions"] += n_ok > 0

    in_flight: dict[Future[CallResult], str] = {}
    waiting: dict[str, list[dict[str, Any]]] = {}
    window = max(2, 4 * llm.max_concurrency)
    breaker = max(8, 2 * llm.max_concurrency)  # this many failed passages with no success: stop
    consecutive_failures = 0
    pool = ThreadPoolExecutor(max_workers=llm.max_concurrency, thread_name_prefix="llm")
    bar = tqdm(total=n_sample, desc="llm_questions", unit="passage", disable=not progress)
    reader = con.sql(_sample_sql(cfg.run.seed, llm.sample_passages)).to_arrow_reader(READ_BATCH_ROWS)
    aborted = True

    def collect(done: set[Future[CallResult]]) -> None:
        nonlocal consecutive_failures
        for fut in done:
            key = in_flight.pop(fut)
            res = fut.result()
            counts["calls_made"] += res.requests
            counts["retries"] += max(res.requests - 1, 0)
            passages = waiting.pop(key)
            if res.status == "ok":
                counts["responses"] += 1
                consecutive_failures = 0
                cache.put(key, res)
                counts["cache_hits"] += len(passages) - 1  # identical passages share one answer
                for p in passages:
                    emit(p, res.content, res.finish_reason, None)
            else:
                consecutive_failures += 1
                examples.setdefault(res.status, res.detail)
                for p in passages:
                    emit(p, None, None, res.status)
            bar.update(len(passages))
            bar.set_postfix(ok=counts["ok_questions"], failed=sum(failures.values()), refresh=False)
        if consecutive_failures >= breaker and counts["responses"] == 0 and counts["cache_hits"] == 0:
            raise LLMError(_nothing_worked(client, llm, consecutive_failures, failures, examples))

    try:
        counts["passages"] = 0
        for p in _iter_passages(reader):
            counts["passages"] += 1
            key = passage_hash(p["title"], p["text"])
            hit = cache.get(key)
            if hit is not None:
                counts["cache_hits"] += 1
                emit(p, hit[0], hit[1], None)
                bar.update(1)
                continue
            if key in waiting:
                waiting[key].append(p)
                continue
            waiting[key] = [p]
            prompt = render_prompt(template, p["title"], p["text"], n_q)
            in_flight[pool.submit(client.complete, prompt)] = key
            while len(in_flight) >= window:
                collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
        while in_flight:
            collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
        aborted = False
    finally:
        reader.close()
        if aborted:
            client.stop.set()
        pool.shutdown(wait=not aborted, cancel_futures=aborted)
        cache.flush()
        bar.close()
        writer.close()
        if aborted:
            unsorted.unlink(missing_ok=True)

    got_any = counts["responses"] + counts["cache_hits"] > 0
    if counts["passages"] > 0 and not got_any:
        unsorted.unlink(missing_ok=True)
        raise LLMError(_nothing_worked(client, llm, counts["passages"], failures, examples))
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
        "dropped": dict(sorted(dropped.items())),
        "error_examples": {k: client.redact(v) for k, v in sorted(examples.items())},
        "cache_entries_loaded": cached_entries,
        "cache_files_written": cache.files_written,
        **({"cache_files_unreadable": cache.unreadable} if cache.unreadable else {}),
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
