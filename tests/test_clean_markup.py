"""Stage clean_documents on small NamuMark / MediaWiki snippets: markup gone, text kept.
(Works without ../shared/data; the real dump records are covered by test_namuwiki_real.py.)"""

from __future__ import annotations

import pytest
from etl_helpers import rows, run_stages, write_config, write_jsonl

from etl.config import load_config

# id: (raw text, must appear in the clean text, must not appear)
CASES = {
    "bold_italic": ("'''굵게''' 그리고 ''기울임'' 끝", ["굵게 그리고 기울임 끝"], ["''"]),
    "link": ("앞 [[문서]] 뒤", ["앞 문서 뒤"], ["[["]),
    "link_label": ("앞 [[문서 이름|표시]] 뒤", ["앞 표시 뒤"], ["문서 이름", "|"]),
    "link_anchor": ("[[문서#s-2|표시]] 끝", ["표시 끝"], ["s-2"]),
    "external_link": ("[[https://www.example.com/a|외부 링크]] 끝", ["외부 링크 끝"], ["example.com"]),
    "category": ("본문 [[분류:한국의 도시]] 끝", ["본문"], ["분류", "한국의 도시"]),
    "file": ("[[파일:그림.jpg|width=300]] 본문", ["본문"], ["그림.jpg", "width"]),
    "footnote": ("본문[* 각주 내용 [[링크]] 포함] 계속", ["본문 계속"], ["각주 내용", "[*"]),
    "named_footnote": ("본문[*A 이름 붙은 각주] 다시[*A] 끝", ["본문 다시 끝"], ["이름 붙은 각주", "[*"]),
    "include": ("[include(틀:도시, 색=파랑)]\n본문", ["본문"], ["include", "틀:도시"]),
    "macros": ("나이 [age(1990-01-01)] 날짜 [date] 목차 [목차] 끝", ["나이", "날짜", "끝"],
               ["age(", "[date]", "[목차]"]),
    "wiki_block": ("{{{#!wiki style=\"color:red\"\n안쪽 글\n}}}", ["안쪽 글"], ["{{{", "}}}", "style"]),
    "size_color": ("{{{+1 큰 글씨}}} {{{#red 빨강}}} {{{#fff 흰}}}", ["큰 글씨", "빨강", "흰"], ["{{{", "#red", "+1"]),
    "table": ("||<tablealign=right><bgcolor=#fff> 칸1 ||<-2> 칸2 ||\n|| 칸3 || 칸4 ||", ["칸1", "칸2", "칸3", "칸4"],
              ["||", "tablealign", "bgcolor", "<-2>"]),
    "heading": ("== 개요 ==\n본문 하나\n=== 소제목 ===\n본문 둘", ["본문 하나", "본문 둘"], ["=="]),
    "strike": ("~~취소선~~ 남김 --지움-- 끝", ["남김", "끝"], ["취소선", "지움", "~~"]),
    "comment_rule": ("## 숨은 주석\n본문\n----\n끝", ["본문", "끝"], ["숨은 주석", "----"]),
    "sup_sub_under": ("x^^위^^ y,,아래,, __밑줄__", ["위", "아래", "밑줄"], ["^^", ",,", "__"]),
    "list_quote": (" * 항목 하나\n 1. 번호 항목\n> 인용문", ["항목 하나", "번호 항목", "인용문"], ["* ", "1. ", ">"]),
    "br": ("첫 줄[br]둘째 줄", ["첫 줄\n둘째 줄"], ["[br]"]),
    "mediawiki": (" = 제목 = \n본문<ref>출처</ref> 계속 {{틀}}", ["본문 계속"], ["출처", "{{", "<ref>"]),
    "literal": ("형식 {{{std::string}}}과 {{{[[링크 아님]]}}} 및 {{{'''굵게 아님'''}}} 끝",
                ["형식 std::string과 [[링크 아님]] 및 '''굵게 아님''' 끝"], ["{{{", "}}}"]),
    "literal_not_colour": ("명령 {{{#conda install <패키지명>}}} 실행", ["명령 #conda install <패키지명> 실행"],
                           ["{{{"]),
    "colour_pair": ("{{{#000,#fff 파이썬}}} 과 {{{#DarkRed 빨강}}}", ["파이썬 과 빨강"], ["#000", "DarkRed", "{{{"]),
    "code_block": ("설명\n{{{#!syntax python\n# 주석\nx = [[1, 2], [3]]  # '''doc'''\n}}}\n위 코드의 뜻.",
                   ["설명\n# 주석\nx = [[1, 2], [3]] # '''doc'''\n위 코드의 뜻."], ["{{{", "syntax"]),
    "html_block": ("{{{#!html <b>굵은</b> 글}}} 끝", ["굵은 글 끝"], ["<b>", "html", "{{{"]),
    "table_cells": ("||<bgcolor=#ddd> 이름 || 값 ||\n|| 가 || || 나 ||\n표 다음 문장.",
                    ["이름 | 값\n가 | 나\n\n표 다음 문장."], ["||", "bgcolor"]),
    "quote_block": ("> 인용 첫 줄\n> - 누군가\n본문 시작.", ["인용 첫 줄\n- 누군가\n\n본문 시작."], [">"]),
    "bracketed_label": ("[[https://x.example/p|[python] 멀티 코어]] 끝", ["멀티 코어", "끝"], ["[[", "x.example"]),
}


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    root = tmp_path_factory.mktemp("markup")
    write_jsonl(root / "in" / "a.jsonl", [{"id": k, "title": k, "text": raw} for k, (raw, _, _) in CASES.items()])
    cfg = load_config(write_config(root / "cfg.toml", warehouse=root / "wh", export=root / "out",
                                   sources=[("m", [str(root / "in" / "*.jsonl")])],
                                   settings={"clean": {"min_chars": 1, "dedupe": False}}))
    wh = run_stages(cfg, "documents")
    try:
        return dict(rows(wh, "SELECT orig_id, text FROM documents"))
    finally:
        wh.close()


@pytest.mark.parametrize("case", list(CASES))
def test_markup_removed_text_kept(cleaned, case):
    _, keep, gone = CASES[case]
    text = cleaned[case]
    for k in keep:
        assert k in text, f"{case}: lost {k!r} from {text!r}"
    for g in gone:
        assert g not in text, f"{case}: left {g!r} in {text!r}"
