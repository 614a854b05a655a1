"""Stage llm_questions against a real chat-completions HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
import unicodedata
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl import judge, llm, llm_cache, llm_prompt
from etl.config import load_config

SECRET = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "KO_SPARSE_TEST_LLM_KEY"
TEMPLATE = "ID={title}\nN={n}\n{passage}\n질문을 {n}개 JSON 배열로 주세요. 예: [\"질문?\"]\n"


# ---- the fake server -------------------------------------------------------------------------

def ok_body(content: str | None, finish: str = "stop") -> bytes:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    }, ensure_ascii=False).encode("utf-8")


def default_answer(prompt: str) -> str:
    m = re.search(r"ID=(\S+)", prompt) or re.search(r"「(.+?)」", prompt)
    topic = m.group(1) if m else hashlib.md5(prompt.encode()).hexdigest()[:6]
    return json.dumps([f"{topic}의 특징은 무엇인가요?", f"{topic}은 언제 처음 알려졌나요?"], ensure_ascii=False)


def judge_answer(prompt: str) -> str:
    """A deterministic judge: "yes" for half of the (query, passage) pairs, by the md5 of the prompt."""
    yes = int(hashlib.md5(prompt.encode()).hexdigest(), 16) % 2 == 0
    return json.dumps({"answer": "yes" if yes else "no", "reason": "판정 이유"}, ensure_ascii=False)


class FakeLLM:
    """A chat-completions server; ``script[passage_key]`` lists actions, one per request (last repeats).

    Actions: ("ok", content) | ("status", code, headers, body) | ("slow", seconds, content)
    | ("raw", body_bytes). Passages are identified by ``ID=<title>`` in the prompt.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[dict[str, Any]] = []
        self.hits: dict[str, int] = defaultdict(int)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.delay = 0.0
        self.default: tuple = ("ok", None)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                prompt = body["messages"][0]["content"]
                m = re.search(r"ID=(\S+)", prompt)
                key = m.group(1) if m else "?"
                with fake.lock:
                    n = fake.hits[key]
                    fake.hits[key] += 1
                    fake.times[key].append(time.monotonic())
                    fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                          "body": body, "key": key, "port": self.client_address[1],
                                          "t": time.monotonic()})
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                    actions = fake.script.get(key, [fake.default])
                    action = actions[min(n, len(actions) - 1)]
                try:
                    if fake.delay:
                        time.sleep(fake.delay)
                    self._act(action, prompt)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with fake.lock:
                        fake.active -= 1

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _act(self, action: tuple, prompt: str) -> None:
                kind = action[0]
                if kind == "ok":
                    is_judge = "<질문>" in prompt or prompt.startswith("JUDGE")
                    answer = action[1] if action[1] is not None else (
                        judge_answer(prompt) if is_judge else default_answer(prompt))
                    self._send(200, ok_body(answer))
                elif kind == "status":
                    self._send(action[1], action[3], action[2])
                elif kind == "slow":
                    time.sleep(action[1])
                    self._send(200, ok_body(action[2] or default_answer(prompt)))
                elif kind == "raw":
                    self._send(200, action[1])
                elif kind == "finish":
                    self._send(200, ok_body(action[1], finish=action[2]))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.hits.clear()
            self.times.clear()


@pytest.fixture
def server():
    fake = FakeLLM()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ---- inputs ----------------------------------------------------------------------------------

def make_cfg(tmp_path: Path, server: FakeLLM, *extra: str, template: str = TEMPLATE):
    prompt = tmp_path / "prompt.txt"
    if not prompt.exists():
        prompt.write_text(template, encoding="utf-8")
    overrides = [
        'queries.methods=["title","llm"]',
        'llm.model="test-model"',
        f'llm.base_url="{server.base_url}"',
        f'llm.api_key_env="{KEY_ENV}"',
        f'llm.prompt_file="{prompt}"',
        "llm.questions_per_passage=2",
        "llm.sample_passages=0",
        "llm.max_concurrency=4",
        "llm.timeout_s=0.4",
        "llm.max_retries=2",
        "llm.backoff_s=0.01",
        "llm.max_copy_chars=20",
        f'paths.warehouse="{tmp_path / "wh"}"',
        *extra,
    ]
    return load_config(None, overrides)


PASSAGE_TEXT = ("{k} 지역은 조선 시대부터 교통의 중심지였으며 강을 따라 시장이 발달하였다. "
                "오늘날에는 관광객이 많이 찾는 도시로 알려져 있고 해마다 축제가 열린다.")


def make_con(keys: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE passages (passage_id VARCHAR, doc_id VARCHAR, source VARCHAR, title VARCHAR, "
                "chunk_no INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO passages VALUES (?, ?, 'wiki', ?, 0, ?)",
                    [(f"pid-{k}", f"doc-{k}", k, PASSAGE_TEXT.format(k=k)) for k in keys])
    return con


def run_stage(cfg, con, tmp_path: Path, name: str = "layer.parquet") -> tuple[dict[str, Any], list[dict]]:
    out = tmp_path / name
    counts = llm.write_llm_questions(cfg, con, out, tmp_path / "wh" / "cache" / "llm", progress=False)
    table = pq.read_table(out)
    assert table.schema.equals(llm.SCHEMA), table.schema
    return counts, table.to_pylist()


def all_bytes_under(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


# ---- the scripted run ------------------------------------------------------------------------

NUMBERED = ("다음은 요청하신 질문입니다.\n\n1. 이 지역의 시장은 어디를 따라 발달했나요?\n"
            "2) 축제는 얼마나 자주 열리나요?\n\n도움이 되었기를 바랍니다.")
COPYING = json.dumps(["강을 따라 시장이 발달하였다는 곳은 어디인가요?",  # 15-char span only: kept
                      "오늘날에는 관광객이 많이 찾는 도시로 알려져 있는 곳은?",  # long verbatim span
                      "이 도시의 교통은 어떤 역사를 가졌나요?"], ensure_ascii=False)

SCRIPT = {
    "json": [("ok", '```json\n{"questions": ["첫째 질문은 무엇인가요?", "둘째 질문은 무엇인가요?"]}\n```')],
    "numbered": [("ok", NUMBERED)],
    "e500": [("status", 500, {}, b'{"error": "boom"}'), ("ok", None)],
    "r429": [("status", 429, {"Retry-After": "1"}, b'{"error": "slow down"}'), ("ok", None)],
    "slow": [("slow", 1.5, None), ("ok", None)],
    "malformed": [("raw", b"<html>bad gateway</html>"), ("ok", None)],
    "copy": [("ok", COPYING)],
    "e404": [("status", 404, {}, b'{"error": "model not found"}')],
    "dead": [("status", 503, {}, b"down")],
    "prose": [("ok", "죄송하지만 이 단락으로는 질문을 만들기 어렵습니다.")],
    "nojson": [("raw", b'{"id": "x", "choices": []}')],
    "redirect": [("status", 302, {"Location": "http://127.0.0.1:1/steal"}, b"")],
    "stuck": [("slow", 1.0, None)],
}


def test_scripted_run_retries_counts_cache_and_key(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script.update(SCRIPT)
    keys = sorted(SCRIPT)
    con = make_con(keys)
    cfg = make_cfg(tmp_path, server)

    counts, rows = run_stage(cfg, con, tmp_path)

    # requests per passage: retries where transient, none on 404 / redirect / prose
    assert dict(server.hits) == {
        "json": 1, "numbered": 1, "e500": 2, "r429": 2, "slow": 2, "malformed": 2, "copy": 1,
        "e404": 1, "dead": 3, "prose": 1, "nojson": 3, "redirect": 1, "stuck": 3,
    }
    # Retry-After: 1 was honoured
    t = server.times["r429"]
    assert t[1] - t[0] >= 0.95
    # every request carried the key, POSTed to /v1/chat/completions with the configured settings
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    body = server.requests[0]["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.7 and body["max_tokens"] == 512
    assert body["messages"][0]["role"] == "user"

    by_pid: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        by_pid[r["passage_id"]].append((r["question_no"], r["query"], r["status"]))
    assert by_pid["pid-json"] == [(1, "첫째 질문은 무엇인가요?", "ok"), (2, "둘째 질문은 무엇인가요?", "ok")]
    assert by_pid["pid-numbered"] == [(1, "이 지역의 시장은 어디를 따라 발달했나요?", "ok"),
                                      (2, "축제는 얼마나 자주 열리나요?", "ok")]
    assert [s for _, _, s in by_pid["pid-copy"]] == ["ok", "copied_span", "ok"]
    assert by_pid["pid-e404"] == [(None, None, "http_error:404")]
    assert by_pid["pid-dead"] == [(None, None, "http_error:503")]
    assert by_pid["pid-prose"] == [(None, None, "unparseable")]
    assert by_pid["pid-nojson"] == [(None, None, "malformed_response")]
    assert by_pid["pid-redirect"] == [(None, None, "http_error:302")]
    assert by_pid["pid-stuck"] == [(None, None, "timeout")]
    for k in ("e500", "r429", "slow", "malformed"):
        assert [s for _, _, s in by_pid[f"pid-{k}"]] == ["ok", "ok"], k
    assert {r["model"] for r in rows} == {"test-model"}
    assert rows == sorted(rows, key=lambda r: (r["passage_id"], r["question_no"] or 0))

    assert counts["passages"] == 13
    assert counts["cache_hits"] == 0
    assert counts["calls_made"] == 23
    assert counts["retries"] == 10
    assert counts["responses"] == 8  # json numbered e500 r429 slow malformed copy prose
    assert counts["ok_questions"] == 2 * 6 + 2
    assert counts["passages_with_questions"] == 7
    assert counts["failures"] == {"http_error:302": 1, "http_error:404": 1, "http_error:503": 1,
                                  "malformed_response": 1, "timeout": 1, "unparseable": 1}
    assert counts["failed_passages"] == 6
    assert counts["dropped"] == {"copied_span": 1}
    assert "model not found" in counts["error_examples"]["http_error:404"]

    # second run: the cache answers every passage that got an answer (prose included); only the
    # transport failures are asked again
    server.reset_counts()
    counts2, rows2 = run_stage(cfg, con, tmp_path, "layer2.parquet")
    assert dict(server.hits) == {"e404": 1, "dead": 3, "nojson": 3, "redirect": 1, "stuck": 3}
    assert counts2["cache_hits"] == 8
    assert counts2["responses"] == 0
    assert counts2["ok_questions"] == counts["ok_questions"]
    assert rows2 == rows

    # the key is nowhere on disk: layers, cache files, temporary leftovers
    files = all_bytes_under(tmp_path)
    assert any("cache" in str(p) for p, _ in files)
    for p, data in files:
        assert SECRET.encode() not in data, p
    assert SECRET not in json.dumps(counts) + json.dumps(counts2)


def test_second_run_makes_no_request(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    keys = [f"k{i}" for i in range(9)]
    con = make_con(keys)
    cfg = make_cfg(tmp_path, server, "llm.max_concurrency=2")
    server.delay = 0.05
    counts, rows = run_stage(cfg, con, tmp_path)
    assert len(server.requests) == 9
    assert 1 <= server.max_active <= 2  # the pool is bounded by max_concurrency
    assert counts["ok_questions"] == 18 and counts["failed_passages"] == 0 and counts["calls_made"] == 9

    server.reset_counts()
    counts2, rows2 = run_stage(cfg, con, tmp_path, "again.parquet")
    assert server.requests == []
    assert counts2["cache_hits"] == 9 and counts2["calls_made"] == 0
    assert rows2 == rows
    for p, data in all_bytes_under(tmp_path):
        assert SECRET.encode() not in data, p


def test_crash_after_calls_loses_nothing(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    con = make_con([f"k{i}" for i in range(5)])
    cfg = make_cfg(tmp_path, server)
    real_sort = llm._sort_into

    def crash(*_: Any) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(llm, "_sort_into", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(cfg, con, tmp_path)
    assert len(server.requests) == 5
    monkeypatch.setattr(llm, "_sort_into", real_sort)
    server.reset_counts()
    counts, _ = run_stage(cfg, con, tmp_path)
    assert server.requests == [] and counts["cache_hits"] == 5 and counts["ok_questions"] == 10


def test_cache_flushes_during_the_run(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setattr(llm_cache, "CACHE_FLUSH_EVERY", 3)
    con = make_con([f"k{i}" for i in range(7)])
    cfg = make_cfg(tmp_path, server)
    counts, _ = run_stage(cfg, con, tmp_path)
    files = sorted((tmp_path / "wh" / "cache" / "llm").glob("*.parquet"))
    assert counts["cache_files_written"] == 3 == len(files)  # 3 + 3 + 1
    assert sum(pq.read_metadata(f).num_rows for f in files) == 7
    assert not list((tmp_path / "wh" / "cache" / "llm").glob(".*"))  # no temporary leftovers


def test_cache_compaction_and_unreadable_files(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setattr(llm_cache, "CACHE_FLUSH_EVERY", 1)
    monkeypatch.setattr(llm_cache, "CACHE_COMPACT_ABOVE", 3)
    con = make_con([f"k{i}" for i in range(5)])
    cfg = make_cfg(tmp_path, server)
    run_stage(cfg, con, tmp_path)
    cache_dir = tmp_path / "wh" / "cache" / "llm"
    assert len(list(cache_dir.glob("*.parquet"))) == 5
    server.reset_counts()
    counts, _ = run_stage(cfg, con, tmp_path)  # loads 5 files: merged into one
    assert server.requests == [] and counts["cache_hits"] == 5
    assert [p.name.split("-")[0] for p in cache_dir.glob("*.parquet")] == ["compacted"]
    (cache_dir / "zz-garbage.parquet").write_bytes(b"not parquet")
    counts, _ = run_stage(cfg, con, tmp_path)
    assert server.requests == [] and counts["cache_hits"] == 5
    assert counts["cache_files_unreadable"] == ["zz-garbage.parquet: ArrowInvalid"]


def test_breaker_stops_a_run_that_only_fails(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = ("status", 500, {}, b"no")
    cfg = make_cfg(tmp_path, server, "llm.max_concurrency=2", "llm.max_retries=0")
    with pytest.raises(llm.LLMError, match="http_error:500"):
        run_stage(cfg, make_con([f"k{i:02d}" for i in range(40)]), tmp_path)
    time.sleep(0.1)
    assert 8 <= len(server.requests) < 20  # stopped after 8 failures in a row, not 40 calls


def test_editing_the_template_invalidates_the_cache(tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    con = make_con(["a", "b", "c"])
    cfg = make_cfg(tmp_path, server, 'llm.api_key_env=""')
    run_stage(cfg, con, tmp_path)
    assert len(server.requests) == 3
    assert {r["auth"] for r in server.requests} == {None}  # no key configured: no header
    server.reset_counts()
    run_stage(cfg, con, tmp_path)
    assert len(server.requests) == 0
    (tmp_path / "prompt.txt").write_text(TEMPLATE + "\n짧게 쓰세요.\n", encoding="utf-8")
    run_stage(cfg, con, tmp_path)
    assert len(server.requests) == 3
    server.reset_counts()
    cfg_t = make_cfg(tmp_path, server, 'llm.api_key_env=""', "llm.temperature=0.2")
    run_stage(cfg_t, con, tmp_path)
    assert len(server.requests) == 3


def test_sampling_is_deterministic(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    keys = [f"k{i:02d}" for i in range(20)]
    con = make_con(keys)
    cfg = make_cfg(tmp_path, server, "llm.sample_passages=5", "run.seed=7")
    counts, rows = run_stage(cfg, con, tmp_path)
    expected = sorted((f"pid-{k}" for k in keys), key=lambda p: hashlib.md5(f"{p}7".encode()).hexdigest())[:5]
    assert llm.sample_passage_ids(con, 7, 5) == expected
    assert sorted({r["passage_id"] for r in rows}) == sorted(expected)
    assert counts["passages"] == 5 and len(server.requests) == 5
    assert llm.sample_passage_ids(con, 8, 5) != expected
    assert len(llm.sample_passage_ids(con, 7, 0)) == 20


def test_identical_passages_share_one_call(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    con = make_con(["same"])
    con.execute("INSERT INTO passages SELECT 'pid-copy2', 'doc-2', source, title, 0, text FROM passages")
    counts, rows = run_stage(make_cfg(tmp_path, server), con, tmp_path)
    assert len(server.requests) == 1
    assert counts["cache_hits"] == 1 and counts["ok_questions"] == 4
    assert {r["passage_id"] for r in rows} == {"pid-same", "pid-copy2"}


def test_missing_key_variable_is_named_not_leaked(tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(llm.LLMError, match=KEY_ENV):
        run_stage(make_cfg(tmp_path, server), make_con(["a"]), tmp_path)
    assert server.requests == []


def test_nothing_works_raises_with_reasons(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script.update({k: [("status", 401, {}, f'{{"error": "bad key {SECRET}"}}'.encode())]
                          for k in ("a", "b")})
    with pytest.raises(llm.LLMError) as info:
        run_stage(make_cfg(tmp_path, server), make_con(["a", "b"]), tmp_path)
    msg = str(info.value)
    assert "http_error:401: 2" in msg and KEY_ENV in msg
    assert SECRET not in msg and llm.REDACTED in msg  # a server echoing the key is redacted


def test_server_down_is_a_connection_error(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = make_cfg(tmp_path, server, 'llm.base_url="http://127.0.0.1:9/v1"', "llm.max_retries=1")
    with pytest.raises(llm.LLMError, match="connection_error"):
        run_stage(cfg, make_con(["a"]), tmp_path)


def test_truncated_and_empty_answers(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script.update({"cut": [("finish", "다음과 같은 질문을", "length")],
                          "empty": [("finish", None, "length")],
                          "fine": [("ok", None)]})
    counts, rows = run_stage(make_cfg(tmp_path, server), make_con(["cut", "empty", "fine"]), tmp_path)
    assert counts["failures"] == {"empty_response": 1, "truncated": 1}
    assert counts["ok_questions"] == 2


def test_without_the_openai_extra_the_error_names_it(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    with pytest.raises(llm.LLMError, match=r"ko-sparse-etl\[llm\]"):
        run_stage(make_cfg(tmp_path, server), make_con(["a"]), tmp_path)
    assert server.requests == []


def test_a_429_pauses_every_worker(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script["a0"] = [("status", 429, {"Retry-After": "1"}, b'{"error": "slow down"}'), ("ok", None)]
    server.delay = 0.1
    keys = ["a0"] + [f"b{i}" for i in range(6)]
    counts, _ = run_stage(make_cfg(tmp_path, server, "llm.max_concurrency=2"), make_con(keys), tmp_path)
    assert counts["ok_questions"] == 2 * len(keys) and counts["retries"] == 1
    t429 = server.times["a0"][0] + server.delay  # when the 429 was answered
    during = [r["key"] for r in server.requests if t429 + 0.05 < r["t"] < t429 + 0.9]
    assert during == []  # the other worker waited too, not only the one that got the 429
    assert server.times["a0"][1] - t429 >= 0.9


def test_connections_are_reused(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    keys = [f"k{i}" for i in range(6)]
    run_stage(make_cfg(tmp_path, server, "llm.max_concurrency=1"), make_con(keys), tmp_path)
    assert len(server.requests) == 6
    assert len({r["port"] for r in server.requests}) == 1  # one pooled keep-alive connection


def test_empty_layer(tmp_path):
    out = tmp_path / "empty.parquet"
    llm.write_empty(out)
    assert pq.read_table(out).schema.equals(llm.SCHEMA) and pq.read_metadata(out).num_rows == 0


# ---- pure functions --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('["서울의 인구는 몇 명인가요?", "한강은 어디로 흐르나요?"]',
     ["서울의 인구는 몇 명인가요?", "한강은 어디로 흐르나요?"]),
    ('```json\n{"questions": ["A는 무엇인가?", "B는 누구인가?"]}\n```', ["A는 무엇인가?", "B는 누구인가?"]),
    ('물론입니다! 질문은 다음과 같습니다: ["A는 무엇인가?"] 더 필요하면 말씀하세요.', ["A는 무엇인가?"]),
    ('[{"question": "A는 무엇인가?", "answer": "a"}, {"question": "B는?"}]', ["A는 무엇인가?", "B는?"]),
    ("다음 질문입니다.\n1. A는 무엇인가요?\n2) B는 언제 생겼나요?\n참고하세요.",
     ["A는 무엇인가요?", "B는 언제 생겼나요?"]),
    ("- A는 무엇인가요\n* B는 어디에 있습니까", ["A는 무엇인가요", "B는 어디에 있습니까"]),
    ('**1. "A"는 무엇인가요?**\n**2. B는?**', ['"A"는 무엇인가요?', "B는?"]),
    ("질문 1: 서울 인구 추이\n질문 2: 한강 길이", ["서울 인구 추이", "한강 길이"]),
    ("<think>[1, 2] 고민 중</think>\n[\"생각 뒤의 질문은?\"]", ["생각 뒤의 질문은?"]),
    ('["완전한 질문인가요?", "잘린 질', ["완전한 질문인가요?"]),
    ("['작은따옴표 목록인가요?', '두 번째인가요?']", ["작은따옴표 목록인가요?", "두 번째인가요?"]),
    ("A는 무엇인가요? B는 언제인가요?", ["A는 무엇인가요?", "B는 언제인가요?"]),
    ("1. 3.5% 성장은 언제였나요?", ["3.5% 성장은 언제였나요?"]),
    ("죄송하지만 만들 수 없습니다.", []),
    ("", []),
])
def test_parse_questions(text, expected):
    assert llm.parse_questions(text) == expected


def test_parse_questions_nfc():
    nfd = unicodedata.normalize("NFD", "서울은 어디인가요?")
    assert nfd != "서울은 어디인가요?"
    assert llm.parse_questions(f'["{nfd}"]') == ["서울은 어디인가요?"]


def test_judge_questions():
    passage = "서울특별시는 대한민국의 수도이자 최대 도시이다. 한강이 도시를 가로지른다."
    got = llm.judge_questions(
        ["서울의 인구는?", "서울의  인구는 ?", "짧다", "서울특별시는 대한민국의 수도이자 최대 도시인가?",
         "한강은 어디를 흐르나?", "세 번째 좋은 질문은?"], passage, 2, 20)
    assert [s for _, s in got] == ["ok", "duplicate", "too_short", "copied_span", "ok", "surplus"]
    copied = ["서울특별시는 대한민국의 수도이자 최대 도시인가?"]
    assert [s for _, s in llm.judge_questions(copied, passage, 2, 0)] == ["ok"]  # 0 turns the filter off


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="가나다ab ", max_size=30), st.text(alphabet="가나다ab ", max_size=60))
def test_longest_common_span_is_exact(a, b):
    brute = max((j - i for i in range(len(a)) for j in range(i + 1, len(a) + 1) if a[i:j] in b), default=0)
    assert llm.longest_common_span(a, b) == brute


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="가나다ab ", min_size=5, max_size=30), st.text(alphabet="가나다ab ", max_size=60),
       st.integers(min_value=1, max_value=8))
def test_copy_filter_drops_exactly_the_long_verbatim_spans(q, passage, max_copy):
    norm = llm_prompt._norm_text
    a, b = norm(q), norm(passage)
    brute = max((j - i for i in range(len(a)) for j in range(i + 1, len(a) + 1) if a[i:j] in b), default=0)
    [(_, status)] = llm.judge_questions([q], passage, 1, max_copy)
    assert (status == "copied_span") == (brute >= max_copy)


def test_prompt_rendering_and_hash(tmp_path):
    tpl = '「{title}」 {n}개 {passage} 예: {"questions": ["…"]} {other}'
    rendered = llm.render_prompt(tpl, "{passage}", "본문 {n}", 3)
    assert rendered == '「{passage}」 3개 본문 {n} 예: {"questions": ["…"]} {other}'
    cfg = load_config(None, ['queries.methods=["llm"]', 'llm.model="m"'])
    h = llm.prompt_hash(tpl, cfg.llm)
    assert h == llm.prompt_hash(tpl, cfg.llm)
    assert h != llm.prompt_hash(tpl + " ", cfg.llm)
    for key, value in (("model", "m2"), ("questions_per_passage", 3), ("temperature", 0.1), ("max_tokens", 64)):
        other = load_config(None, ['queries.methods=["llm"]', 'llm.model="m"'])
        setattr(other.llm, key, value)
        assert llm.prompt_hash(tpl, other.llm) != h, key
    bundled = llm.load_template(cfg.llm)
    assert all(p in bundled for p in ("{title}", "{passage}", "{n}"))
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder", encoding="utf-8")
    cfg.llm.prompt_file = str(bad)
    with pytest.raises(llm.LLMError, match="passage"):
        llm.load_template(cfg.llm)


@pytest.mark.parametrize("value, expected", [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("99999", llm.MAX_RETRY_AFTER_S),
                                             ("soon", None), (None, None), ("", None)])
def test_parse_retry_after(value, expected):
    assert llm.parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    from email.utils import formatdate
    secs = llm.parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert secs is not None and 25 <= secs <= 31


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"choices": []}', b'{"choices": [{"index": 0}]}',
                                 b'{"choices": [{"message": {"content": 5}}]}', b"\xff\xfe"])
def test_extract_content_rejects_malformed(raw):
    with pytest.raises(llm.MalformedResponseError):
        llm.extract_content(raw)


def test_extract_content_variants():
    assert llm.extract_content(ok_body("안녕?"))[0] == "안녕?"
    parts = json.dumps({"choices": [{"message": {"content": [{"type": "text", "text": "가"}, {"text": "나"}]}}]})
    assert llm.extract_content(parts.encode())[0] == "가나"
    assert llm.extract_content(ok_body(None, "length"))[:2] == ("", "length")


# ---- end to end ------------------------------------------------------------------------------

DOCS = [
    ("서울특별시", "서울특별시는 대한민국의 수도이자 가장 큰 도시이다. 한강이 도시 한가운데를 동서로 가로질러 흐르며, "
     "강의 북쪽을 강북, 남쪽을 강남이라고 부른다. 조선 시대에는 한양이라 불렸고 궁궐과 성곽이 세워졌다. "
     "오늘날 서울에는 약 구백만 명이 살고 있으며 지하철 노선이 도시 곳곳을 연결한다. 남산과 북한산 같은 산이 "
     "도시를 둘러싸고 있어 등산을 즐기는 시민이 많다."),
    ("부산광역시", "부산광역시는 대한민국 남동쪽 끝에 있는 항구 도시이다. 우리나라에서 가장 큰 무역항을 가지고 있으며, "
     "해운대와 광안리 같은 해수욕장이 유명하다. 한국 전쟁 때에는 임시 수도 역할을 하였다. 해마다 가을이면 "
     "부산국제영화제가 열려 세계 여러 나라의 영화인이 모인다. 자갈치 시장은 싱싱한 수산물로 이름이 높다."),
    ("인천광역시", "인천광역시는 서울의 서쪽, 황해에 맞닿은 도시이다. 인천국제공항이 영종도에 자리 잡고 있어 "
     "해외로 나가는 관문 역할을 한다. 개항기에 일찍 항구가 열려 차이나타운과 같은 외국 문화의 흔적이 남아 있다. "
     "송도국제도시에는 높은 건물과 국제기구가 들어서 있다. 강화도에는 고인돌 유적이 있다."),
    ("대구광역시", "대구광역시는 대한민국 동남부 내륙에 있는 분지 도시이다. 여름이 매우 더운 곳으로 잘 알려져 있다. "
     "섬유 산업이 오랫동안 도시 경제를 이끌었고, 사과 재배로도 유명하였다. 팔공산과 앞산이 도시를 감싸고 있으며 "
     "서문시장은 조선 시대부터 이어져 온 큰 시장이다. 약령시에서는 한약재를 사고판다."),
    ("김치", "김치는 배추나 무 같은 채소를 소금에 절인 뒤 고춧가루, 마늘, 젓갈 따위로 양념하여 발효시킨 한국의 "
     "전통 음식이다. 늦가을에 겨울 동안 먹을 김치를 한꺼번에 담그는 일을 김장이라고 한다. 김치는 익을수록 "
     "신맛이 강해지며 찌개나 볶음밥의 재료로도 쓰인다. 김장 문화는 유네스코 인류무형문화유산에 올랐다."),
    ("비빔밥", "비빔밥은 밥 위에 나물, 고기, 달걀 등을 얹고 고추장을 넣어 비벼 먹는 한국 음식이다. 전주비빔밥이 "
     "특히 유명하며 놋그릇에 담아 내는 경우가 많다. 돌솥에 담아 뜨겁게 데운 돌솥비빔밥은 바닥에 눌은 누룽지가 "
     "별미이다. 여러 가지 재료를 한 그릇에 섞는다는 점에서 조화의 상징으로 이야기되기도 한다."),
    ("불고기", "불고기는 얇게 썬 소고기를 간장, 설탕, 배, 마늘 등으로 만든 양념에 재워 구운 한국 요리이다. "
     "달고 짭짤한 맛 덕분에 외국인에게도 인기가 많다. 예전에는 석쇠에 구웠으나 요즘은 국물이 자작한 전골식 "
     "불고기도 흔하다. 상추나 깻잎에 싸서 먹으면 더욱 맛있다. 돼지고기로 만든 제육볶음과는 다른 음식이다."),
    ("떡볶이", "떡볶이는 가래떡을 고추장 양념에 볶거나 끓여 만든 한국의 대표적인 길거리 음식이다. 어묵, 삶은 달걀, "
     "대파를 함께 넣는 경우가 많다. 원래 궁중에서는 간장으로 양념한 궁중떡볶이를 먹었다고 전해진다. 신당동 "
     "떡볶이 골목이 유명하며, 학교 앞 분식집의 단골 메뉴이기도 하다. 치즈나 라면을 넣어 먹기도 한다."),
]


def test_pipeline_end_to_end(tmp_path, server, monkeypatch):
    from etl.pipeline import run_pipeline

    monkeypatch.setenv(KEY_ENV, SECRET)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}, ensure_ascii=False) + "\n"
                              for i, (t, x) in enumerate(DOCS)), encoding="utf-8")
    toml = tmp_path / "config.toml"
    toml.write_text(f"""
[run]
progress = false
[paths]
warehouse = "{tmp_path / 'wh'}"
export = "{tmp_path / 'out'}"
[[sources]]
name = "tiny"
paths = ["{corpus}"]
[clean]
min_chars = 50
[chunk]
target_chars = 450
max_chars = 900
min_chars = 80
[queries]
methods = ["llm"]
[llm]
base_url = "{server.base_url}"
model = "test-model"
api_key_env = "{KEY_ENV}"
questions_per_passage = 2
max_concurrency = 4
timeout_s = 10.0
backoff_s = 0.01
[negatives]
hard = 5
easy = 0
related = 0
[mining]
top_k = 10
""", encoding="utf-8")
    cfg = load_config(toml)
    meta = run_pipeline(cfg, log=lambda *_: None)
    n_passages = meta["layers"]["passages"]
    assert n_passages == len(DOCS)
    assert len(server.requests) == n_passages
    assert meta["total_queries"] > 0
    assert meta["queries_by_method"].get("llm", 0) == meta["total_queries"]
    stage = meta["stages"]["llm_questions"]["extra"]
    assert stage["ok_questions"] == 2 * n_passages and stage["failed_passages"] == 0
    saved = json.loads((tmp_path / "out" / "metadata.json").read_text(encoding="utf-8"))
    assert "llm" in saved["queries_by_method"]
    records = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    records += [json.loads(line) for line in (tmp_path / "out" / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == meta["total_queries"]
    assert all(len(r["docs"]) == 6 for r in records)
    assert any("특징은 무엇인가요?" in r["query"] for r in records)  # the server's questions are the queries
    for p, data in all_bytes_under(tmp_path):
        assert SECRET.encode() not in data, p


# ---- the LLM judge of the hardest negatives --------------------------------------------------

JUDGE_TEMPLATE = "JUDGE ID={title}\nQ={query}\n{passage}\n"
YES = json.dumps({"answer": "yes", "reason": "단락이 답을 담고 있다"}, ensure_ascii=False)
NO = '```json\n{"answer": "no", "reason": "주제만 비슷하다"}\n```'


def make_judge_con(negatives: dict[str, list[tuple[str, float, str | None]]]) -> duckdb.DuckDBPyConnection:
    """queries q1.., each with a positive and its negatives (passage title, teacher score, filter_reason)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE queries (query_id VARCHAR, query VARCHAR)")
    con.execute("CREATE TABLE passages (passage_id VARCHAR, title VARCHAR, text VARCHAR)")
    con.execute("CREATE TABLE scored_candidates (query_id VARCHAR, passage_id VARCHAR, role VARCHAR, "
                "teacher_score DOUBLE, filter_reason VARCHAR)")
    titles = {t for negs in negatives.values() for t, _, _ in negs}
    con.executemany("INSERT INTO passages VALUES (?, ?, ?)",
                    [(f"pid-{t}", t, PASSAGE_TEXT.format(k=t)) for t in sorted(titles | {"pos"})])
    for qid, negs in negatives.items():
        con.execute("INSERT INTO queries VALUES (?, ?)", [qid, f"{qid} 지역의 시장은 어디에 있나요?"])
        con.execute("INSERT INTO scored_candidates VALUES (?, 'pid-pos', 'positive', 9.0, NULL)", [qid])
        con.executemany("INSERT INTO scored_candidates VALUES (?, ?, 'hard', ?, ?)",
                        [(qid, f"pid-{t}", score, reason) for t, score, reason in negs])
    return con


def judge_cfg(tmp_path: Path, server: FakeLLM, *extra: str):
    prompt = tmp_path / "judge.txt"
    prompt.write_text(JUDGE_TEMPLATE, encoding="utf-8")
    return make_cfg(tmp_path, server, "judge.enabled=true", f'judge.prompt_file="{prompt}"', "judge.hardest=2",
                    'judge.model="judge-model"', *extra)


def run_judge(cfg, con, tmp_path: Path, name: str = "judged.parquet") -> tuple[dict[str, Any], list[dict]]:
    out = tmp_path / name
    counts = judge.write_judged_negatives(cfg, con, out, tmp_path / "wh" / "cache" / "judge", progress=False)
    table = pq.read_table(out)
    assert table.schema.equals(judge.SCHEMA), table.schema
    return counts, table.to_pylist()


def test_judge_scripted_run(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script.update({
        "rel": [("ok", YES)], "irr": [("ok", NO)], "e500": [("status", 500, {}, b"boom"), ("ok", YES)],
        "dead": [("status", 503, {}, b"down")], "junk": [("ok", "글쎄요, 잘 모르겠습니다.")],
        "low": [("ok", YES)], "filtered": [("ok", YES)],
    })
    con = make_judge_con({
        "q1": [("rel", 5.0, None), ("irr", 4.0, None), ("low", 1.0, None), ("filtered", 8.0, "relative_margin")],
        "q2": [("e500", 3.0, None), ("dead", 2.5, None)],
        "q3": [("junk", 3.0, None), ("rel", 2.0, None), ("low", 1.0, None)],
    })
    cfg = judge_cfg(tmp_path, server)
    counts, rows = run_judge(cfg, con, tmp_path)

    # only the 2 hardest usable negatives of each query are asked about: never the positive, a filtered
    # candidate or a lower one; the same (query, passage) text is asked once per query
    got = {(r["query_id"], r["passage_id"]): (r["verdict"], r["reason"]) for r in rows}
    assert got == {
        ("q1", "pid-rel"): ("relevant", "단락이 답을 담고 있다"),
        ("q1", "pid-irr"): ("not_relevant", "주제만 비슷하다"),
        ("q2", "pid-e500"): ("relevant", "단락이 답을 담고 있다"),
        ("q2", "pid-dead"): ("failed", "http_error:503"),
        ("q3", "pid-junk"): ("failed", "unparseable"),
        ("q3", "pid-rel"): ("relevant", "단락이 답을 담고 있다"),
    }
    assert dict(server.hits) == {"rel": 2, "irr": 1, "e500": 2, "dead": 3, "junk": 1}
    assert {r["body"]["model"] for r in server.requests} == {"judge-model"}
    assert {r["body"]["temperature"] for r in server.requests} == {0.0}
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    prompts = {r["body"]["messages"][0]["content"] for r in server.requests if r["key"] == "irr"}
    assert prompts == {f"JUDGE ID=irr\nQ=q1 지역의 시장은 어디에 있나요?\n{PASSAGE_TEXT.format(k='irr')}\n"}
    assert counts["pairs"] == 6 and counts["responses"] == 5 and counts["calls_made"] == 9
    assert counts["prompt_tokens"] == 5 * 10 and counts["completion_tokens"] == 5 * 20  # the cost, from usage
    assert counts["verdicts"] == {"relevant": 3, "not_relevant": 1, "failed": 2}
    assert counts["failures"] == {"http_error:503": 1, "unparseable": 1}

    # second run: every answer is cached (the unparseable one too); only the transport failure is asked again
    server.reset_counts()
    counts2, rows2 = run_judge(cfg, con, tmp_path, "again.parquet")
    assert dict(server.hits) == {"dead": 3}
    assert rows2 == rows and counts2["cache_hits"] == 5 and counts2["prompt_tokens"] == 0
    # another judge model asks again
    server.reset_counts()
    run_judge(judge_cfg(tmp_path, server, 'judge.model="other"'), con, tmp_path, "other.parquet")
    assert dict(server.hits) == {"rel": 2, "irr": 1, "e500": 2, "dead": 3, "junk": 1}  # as the first run
    for p, data in all_bytes_under(tmp_path):
        assert SECRET.encode() not in data, p


def test_judge_that_never_answers_stops_with_the_reasons(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = ("status", 401, {}, f'{{"error": "bad key {SECRET}"}}'.encode())
    con = make_judge_con({f"q{i}": [(f"n{i}", 1.0, None)] for i in range(3)})
    with pytest.raises(llm.LLMError) as info:
        run_judge(judge_cfg(tmp_path, server), con, tmp_path)
    assert "http_error:401: 3" in str(info.value) and SECRET not in str(info.value)
    assert not (tmp_path / "judged.parquet").exists()


def test_judge_without_pairs_and_disabled_layer(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    counts, rows = run_judge(judge_cfg(tmp_path, server), make_judge_con({}), tmp_path)
    assert rows == [] and counts["pairs"] == 0 and server.requests == []
    out = tmp_path / "empty.parquet"
    judge.write_empty(out)
    assert pq.read_table(out).schema.equals(judge.SCHEMA)


@pytest.mark.parametrize("text, expected", [
    ('{"answer": "yes", "reason": "답이 있다"}', ("relevant", "답이 있다")),
    ('```json\n{"answer": "No", "reason": "없다"}\n```', ("not_relevant", "없다")),
    ('판단: {"verdict": "예"}', ("relevant", "")),
    ('{"relevant": false}', ("not_relevant", "")),
    ("<think>yes? no?</think>\n아니오. 다른 내용입니다.", ("not_relevant", "아니오. 다른 내용입니다.")),
    ("**Yes** - the passage states it", ("relevant", "Yes - the passage states it")),
    ("글쎄요", (None, "")),
    ("", (None, "")),
])
def test_parse_verdict(text, expected):
    assert judge.parse_verdict(text) == expected


def test_judge_prompt_and_config(tmp_path):
    tpl = "Q={query} T={title} {passage} {\"answer\": \"yes\"}"
    assert judge.render_prompt(tpl, "{passage}", "제목", "본문") == 'Q={passage} T=제목 본문 {"answer": "yes"}'
    cfg = load_config(None, ["judge.enabled=true", 'llm.model="m"'])
    assert judge.judge_llm_config(cfg).model == "m" and judge.judge_llm_config(cfg).base_url == cfg.llm.base_url
    bundled = judge.load_template(cfg)
    assert "{query}" in bundled and "{passage}" in bundled
    h = judge.prompt_signature(cfg)
    cfg.judge.temperature = 0.5
    assert judge.prompt_signature(cfg) != h
    bad = tmp_path / "bad.txt"
    bad.write_text("{passage} only", encoding="utf-8")
    cfg.judge.prompt_file = str(bad)
    with pytest.raises(llm.LLMError, match=r"\{query\}"):
        judge.load_template(cfg)
    from etl.config import ConfigError
    with pytest.raises(ConfigError, match="judge.model"):
        load_config(None, ["judge.enabled=true"])
    with pytest.raises(ConfigError, match="judge.hardest"):
        load_config(None, ["judge.enabled=true", 'judge.model="j"', "judge.hardest=0"])


def test_judge_modules_are_not_hashed_while_the_judge_is_off(monkeypatch):
    from etl import pipeline

    off = pipeline.Context(load_config(None, []), None)
    on = pipeline.Context(load_config(None, ["judge.enabled=true", 'llm.model="m"']), None)
    before_off, before_on = pipeline.planned_fingerprints(off), pipeline.planned_fingerprints(on)
    real = pipeline.module_source
    monkeypatch.setattr(pipeline, "module_source", lambda name: real(name) + ("#" if name == "etl.judge" else ""))
    assert pipeline.planned_fingerprints(off) == before_off
    after_on = pipeline.planned_fingerprints(on)
    assert {k for k in before_on if before_on[k] != after_on[k]} == {"judged_negatives", "examples", "judged_examples",
                                                                          "export"}


def judge_pipeline_config(tmp_path: Path, server: FakeLLM, extra_docs: int = 0) -> Path:
    """A config.toml for a pipeline run over DOCS (+ ``extra_docs`` synthetic articles) whose [llm]
    server is ``server`` (judge not enabled)."""
    from etl_helpers import make_articles

    corpus = tmp_path / "corpus.jsonl"
    docs = [{"id": f"d{i}", "title": t, "text": x} for i, (t, x) in enumerate(DOCS)]
    docs += make_articles(extra_docs, seed=3, sentences=4, start=len(DOCS))
    corpus.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    toml = tmp_path / "config.toml"
    toml.write_text(f"""
[run]
progress = false
[paths]
warehouse = "{tmp_path / 'wh'}"
export = "{tmp_path / 'out'}"
[[sources]]
name = "tiny"
paths = ["{corpus}"]
[clean]
min_chars = 50
[chunk]
target_chars = 450
max_chars = 900
min_chars = 80
[llm]
base_url = "{server.base_url}"
api_key_env = "{KEY_ENV}"
backoff_s = 0.01
[negatives]
hard = 5
easy = 0
related = 0
[mining]
top_k = 10
""", encoding="utf-8")
    return toml


def test_pipeline_with_the_judge(tmp_path, server, monkeypatch):
    """Turning the judge on re-runs judged_negatives and examples; judged-relevant negatives leave the records."""
    from etl.pipeline import run_pipeline

    monkeypatch.setenv(KEY_ENV, SECRET)
    toml = judge_pipeline_config(tmp_path, server)
    log: list[str] = []
    meta1 = run_pipeline(load_config(toml), log=lambda *_: None)
    assert server.requests == [] and meta1["stages"]["judged_negatives"]["extra"] == {"enabled": False}
    wh = tmp_path / "wh" / "layers"
    before = {r["query_id"]: r["passage_ids"] for r in pq.read_table(wh / "examples.parquet").to_pylist()}

    cfg = load_config(toml, ["judge.enabled=true", 'judge.model="judge-model"', "judge.hardest=2"])
    meta2 = run_pipeline(cfg, log=lambda *a: log.append(" ".join(map(str, a))))
    extra = meta2["stages"]["judged_negatives"]["extra"]
    judged = pq.read_table(wh / "judged_negatives.parquet").to_pylist()
    assert len(server.requests) == extra["calls_made"] == extra["pairs"] == len(judged) > 0
    assert extra["prompt_tokens"] == 10 * len(judged) and extra["failures"] == {}
    relevant = {(r["query_id"], r["passage_id"]) for r in judged if r["verdict"] == "relevant"}
    assert extra["verdicts"]["relevant"] == len(relevant) > 0
    after = {r["query_id"]: r["passage_ids"] for r in pq.read_table(wh / "examples.parquet").to_pylist()}
    assert not any(pid in after.get(qid, []) for qid, pid in relevant)  # gone from every record
    assert any(pid in before.get(qid, []) for qid, pid in relevant)  # and some were in them before
    for qid in set(before) - {q for q, _ in relevant}:  # records without a judged-relevant negative: unchanged
        assert after[qid] == before[qid]
    lost = set(before) - set(after)  # queries the judge left without enough negatives: counted as such
    assert sum(meta2.get("dropped_queries", {}).values()) - sum(meta1.get("dropped_queries", {}).values()) == len(lost)
    assert meta2.get("dropped_queries", {}).get("not_enough_hard_negatives", 0) >= len(lost)
    for p, data in all_bytes_under(tmp_path):
        assert SECRET.encode() not in data, p


def _records(out: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
            for split in ("train", "val")}


def test_pipeline_keeps_judged_positives_as_extra_records(tmp_path, server, monkeypatch):
    """judge.keep_as_positive: each judged-relevant passage that scores above the negatives of its
    query's record becomes the positive of an extra record (same query, those negatives, same split),
    right after that record; off, the export is the judge's export without them."""
    from etl.pipeline import run_pipeline
    from etl.validate import validate_file

    monkeypatch.setenv(KEY_ENV, SECRET)
    toml = judge_pipeline_config(tmp_path, server, extra_docs=12)  # enough negatives to replace judged ones
    judge_on = ["judge.enabled=true", 'judge.model="judge-model"', "judge.hardest=2"]
    out, wh = tmp_path / "out", tmp_path / "wh" / "layers"
    meta_off = run_pipeline(load_config(toml, judge_on), log=lambda *_: None)
    assert "judged_positive_records" not in meta_off
    assert pq.read_table(wh / "judged_examples.parquet").num_rows == 0
    off_bytes = {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "val")}
    off = _records(out)
    calls = len(server.requests)

    log: list[str] = []
    meta = run_pipeline(load_config(toml, [*judge_on, "judge.keep_as_positive=true", "export.first_rank=true"]),
                        log=lambda *a: log.append(" ".join(map(str, a))))
    ran = {ln.split()[0] for ln in log if ln.startswith("  ") and not ln.endswith("skipped (fresh)")}
    assert ran == {"judged_examples", "export"}  # the judge is not asked again, examples stay
    assert len(server.requests) == calls
    on = _records(out)
    ranks = [r.pop("first_rank") for recs in on.values() for r in recs]  # the trainer's filter field: an int
    assert all(isinstance(k, int) and k >= 1 for k in ranks)

    passages = {r["passage_id"]: r["text"] for r in pq.read_table(wh / "passages.parquet").to_pylist()}
    examples = {r["query_id"]: r for r in pq.read_table(wh / "examples.parquet").to_pylist()}
    judged = pq.read_table(wh / "judged_examples.parquet").to_pylist()
    relevant = [(r["query_id"], r["passage_id"]) for r in pq.read_table(wh / "judged_negatives.parquet").to_pylist()
                if r["verdict"] == "relevant"]
    assert sorted((r["query_id"], r["passage_id"]) for r in judged) == sorted(relevant)
    kept = [r for r in judged if r["skip_reason"] is None]
    assert kept, "the deterministic judge keeps some passages on these documents"
    outcomes = meta["judged_positive_records"]
    assert outcomes.get("exported", 0) == len(kept) and sum(outcomes.values()) == len(relevant)
    assert outcomes.get("not_above_every_negative", 0) > 0  # a judged passage below a negative kept in its record
    assert meta["total_queries"] == meta_off["total_queries"] + len(kept)
    assert meta["train_samples"] + meta["val_samples"] == sum(map(len, on.values()))

    relevant_texts: dict[str, set[str]] = {}
    for qid, pid in relevant:
        relevant_texts.setdefault(examples[qid]["query"] if qid in examples else qid, set()).add(passages[pid])
    for split in ("train", "val"):
        # the records of the option-off export, in their order, plus the extra ones right after theirs
        keys = sorted([(qid, None) for qid, e in examples.items() if e["split"] == split]
                      + [(r["query_id"], r) for r in kept if r["split"] == split],
                      key=lambda k: k[0] if k[1] is None else k[1]["record_id"])
        assert len(on[split]) == len(keys)
        assert [rec for rec, (_, j) in zip(on[split], keys, strict=True) if j is None] == off[split]
        for rec, (qid, j) in zip(on[split], keys, strict=True):
            main = examples[qid]
            assert rec["query"] == main["query"]
            assert not set(rec["docs"][1:]) & relevant_texts.get(rec["query"], set())  # never a negative
            if j is None:
                continue
            assert j["split"] == main["split"] == split
            assert rec["docs"][0] == passages[j["passage_id"]]
            assert sorted(rec["docs"][1:]) == sorted(passages[p] for p in main["passage_ids"][1:])
            assert rec["scores"][0] == 30.0 and max(rec["scores"][1:]) < 30.0
        if on[split]:
            assert validate_file(out / f"{split}.jsonl", min_docs=6, max_docs=6).ok
    assert all(v["violations"] == 0 for v in meta["validation"].values())

    run_pipeline(load_config(toml, judge_on), log=lambda *_: None)  # off again: the judge's export as before
    assert {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "val")} == off_bytes
