"""The wiring of ``benchmarks/bench_real_queries.py``'s judged column (``--judge-url``), without running it.

The benchmark itself needs the real question sets and, for the judged column, an OpenAI-compatible
server; here: the overrides it passes make a valid ``[judge]`` config on top of the config it
generates, the column reads "n/a (no --judge-url)" without a server, and the judge's counts and
the false negatives among the passages it called relevant reach the table.
"""

from __future__ import annotations

import sys

import pytest
from etl_helpers import REPO

from etl.config import load_config

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_real_queries as bench  # noqa: E402


def test_judge_url_adds_a_judged_column_with_a_valid_judge_config(tmp_path):
    cols = bench.plan_columns({"default": [], "spread": ["negatives.sampling=spread"]},
                              "http://127.0.0.1:8000/v1", "qwen-judge", "JUDGE_KEY")
    assert list(cols) == ["default", "spread", "judged"]
    (tmp_path / "queries.jsonl").write_text("", encoding="utf-8")
    toml = tmp_path / "config.toml"
    toml.write_text(bench.to_toml(bench.base_config("labelled", tmp_path)), encoding="utf-8")
    cfg = load_config(toml, cols["judged"])
    assert cfg.judge.enabled and cfg.judge.base_url == "http://127.0.0.1:8000/v1"
    assert cfg.judge.model == "qwen-judge" and cfg.llm.api_key_env == "JUDGE_KEY"
    assert cfg.negatives.sampling == "top" and not cfg.judge.keep_as_positive  # top picks + the judge
    assert not load_config(toml, cols["default"]).judge.enabled


def test_without_a_judge_url_the_column_reads_not_available():
    cols = bench.plan_columns({"default": []}, None, "")
    assert cols == {"default": [], "judged": None}
    empty = {"queries": {}, "positives": {}, "records": {}, "baseline": {}, "passages": {}, "judged": {}}
    table = bench.side_by_side("labelled", {"default": bench.measure([], empty, {}), "judged": None})
    header, *rows = table.splitlines()
    assert header.split()[-1] == "judged"
    assert rows and all(r.endswith(bench.NO_JUDGE) for r in rows)


@pytest.mark.parametrize("args,message", [
    (({"default": []}, None, "m"), "--judge-model needs --judge-url"),
    (({"default": []}, "http://h/v1", ""), "needs --judge-model"),
    (({"default": []}, "localhost:8000", "m"), "must be an http"),
    (({"judged": []}, None, ""), "is the judge's column"),
])
def test_bad_judge_options_stop_with_a_clear_message(args, message):
    with pytest.raises(SystemExit, match=message):
        bench.plan_columns(*args)


def test_the_judges_counts_and_its_false_negatives_reach_the_table():
    question = {"query": "훈민정음은 언제 반포되었나요?", "gold": ["d0"], "answer": "1446년"}
    run = {"queries": {"q1": question["query"]}, "positives": {"q1": ["p0"]},
           "records": {"q1": [("positive", "p0", 0.9), ("hard", "p1", 0.8)]}, "baseline": {},
           "passages": {"p0": ("d0", "세종은 1446년에 훈민정음을 반포했다."), "p1": ("d1", "한글날은 10월 9일이다."),
                        "p2": ("d2", "훈민정음은 1446년에 반포되었다."), "p3": ("d3", "집현전의 학자들.")},
           "judged": {"q1": [("p2", "relevant"), ("p3", "relevant"), ("p1", "not_relevant")]}}
    extra = {"enabled": True, "model": "j", "hardest": 3, "pairs": 3, "cache_hits": 0, "calls_made": 4,
             "prompt_tokens": 300, "completion_tokens": 60,
             "verdicts": {"relevant": 2, "not_relevant": 1, "failed": 0}, "failures": {}}
    m = bench.measure([question], run, {"metadata": {"stages": {"judged_negatives": {"extra": extra}}}})
    assert m["judged_relevant_n"] == 2 and m["judged_relevant_answer"] == 1  # p2 holds the answer
    rows = dict(bench.report_rows("labelled", m))
    assert rows["LLM judge: pairs judged"] == "3"
    assert rows["  judge: relevant / not / failed"] == "2 / 1 / 0"
    assert rows["  judge: relevant that are FN answer-containing"] == "1 (50.0%)"
    assert rows["  judge: calls (cache hits)"] == "4 (0)"
    assert rows["  judge: prompt / completion tokens"] == "300 / 60"
    assert "  judge: extra records (keep_as_positive)" not in rows
    meta = {"stages": {"judged_negatives": {"extra": extra}}, "judged_positive_records": {"exported": 1}}
    kept = dict(bench.report_rows("labelled", bench.measure([question], run, {"metadata": meta})))
    assert kept["  judge: extra records (keep_as_positive)"] == "1"
    assert "LLM judge: pairs judged" not in dict(bench.report_rows("labelled", bench.measure([question], run, {})))
