"""The prompt side of query method 3: configuration pieces, the template, answer parsing, question filters.

Pure functions, no I/O besides reading the template: :func:`load_template` / :func:`prompt_hash`
(the cache key part of the prompt), :func:`render_prompt`, :func:`parse_questions` (JSON, literal
lists, numbered / bulleted / plain lines) and :func:`judge_questions` (the ``too_short``,
``duplicate``, ``copied_span`` and ``surplus`` filters). The stage itself is :mod:`etl.llm`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import unicodedata
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from .config import PACKAGE_DIR, LLMConfig

DEFAULT_PROMPT_FILE = PACKAGE_DIR / "prompts" / "llm_questions.ko.txt"
MIN_QUESTION_CHARS = 5


class LLMError(RuntimeError):
    """The stage cannot run (configuration) or no call succeeded; the message never holds the key."""


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
            if max_copy_chars > 0 and longest_common_span(_norm_text(q), ref) >= max_copy_chars:
                status = "copied_span"
            if status == "ok" and n_ok >= n:
                status = "surplus"
        seen.add(key)
        n_ok += status == "ok"
        out.append((q, status))
    return out

