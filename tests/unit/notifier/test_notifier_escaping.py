"""Values are data in every channel kind: a hostile branch name cannot add markup, links, images,
headings, mentions, lines or headers to a notice (issue 15, finding 6)."""
from __future__ import annotations

import re

import pytest

from services.notifier import outbound
from services.notifier.render import Names, Notice, Renderer, robot_body
from services.notifier.samples import sample

renderer = Renderer()

HOSTILE = [
    "**urgent** [click](http://evil)",
    "![x](http://evil/img)",
    "正常名\n\n# HEAD\n- item\n> quote",
    "<font color=\"warning\">红</font><@all>",
    "`code` ~~del~~ | a | b |",
    "1. first\r\n2. second\u2028## third",
]


def _notice(name: str, locale: str = "zh-CN") -> Notice:
    data = sample("changai.membership.branch.established.v1").model_copy(update={"name": name})
    return renderer.notice(data.event_type, data, locale, Names())


def _content(body: dict) -> str:
    inner = body.get("markdown") or body.get("text")
    return inner.get("content") or inner.get("text")


def _no_markdown(content: str) -> None:
    """What WeCom's and DingTalk's markdown would turn into markup, other than the layout's own."""
    assert "[click]" not in content and "](http" not in content and "![" not in content
    assert "http://" not in content, content  # no bare link either
    assert "<@" not in content and "<font color=\"warning\">红" not in content
    assert "**urgent**" not in content and "`" not in content and "~~" not in content
    for line in content.split("\n"):
        # The only line starts are the layout's own: its title, quotes (WeCom facts), items (DingTalk facts).
        assert not re.match(r"\s*(#{1,3} |#{5,}|>\s*quote|- item|\d+\. |=+$)", line), line


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("kind", ["wecom", "dingtalk"])
def test_robot_markdown_shows_hostile_names_as_text(kind, name):
    notice = _notice(name)
    content = _content(renderer.layout(notice, kind, "markdown", keyword="产改"))
    _no_markdown(content)
    # The layout's lines: title, summary and one per fact (and, for DingTalk, blank separators and
    # the keyword): the name added none.
    lines = [line for line in content.split("\n") if line.strip()]
    expected = 2 + len(notice.facts) + (1 if kind == "dingtalk" else 0)
    assert len(lines) == expected, content
    assert "urgent" in content or "HEAD" in content or "红" in content or "code" in content or "first" in content \
        or "x" in content  # still readable


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("kind", ["wecom", "dingtalk"])
def test_robot_text_has_one_line_per_part_and_no_mentions(kind, name):
    notice = _notice(name)
    body = renderer.layout(notice, kind, "text", keyword="产改")
    content = _content(body)
    lines = [line for line in content.split("\n") if line.strip()]
    assert len(lines) == 1 + len(notice.facts) + (1 if kind == "dingtalk" else 0), content
    assert "http://" not in content
    if kind == "wecom":
        assert "<@" not in content and "<font" not in content


def test_dingtalk_markdown_title_is_one_line():
    body = renderer.layout(_notice("甲\n\n# HEAD"), "dingtalk", "markdown", keyword="产改")
    assert "\n" not in body["markdown"]["title"]


@pytest.mark.parametrize("name", [*HOSTILE, "<script>alert(1)</script>", "<img src=x onerror=alert(1)>"])
def test_email_escapes_html_and_keeps_headers_single_line(name):
    mail = renderer.layout(_notice(name), "email")
    assert "\n" not in mail["subject"] and "\r" not in mail["subject"]
    assert "<script>" not in mail["html"] and "<img" not in mail["html"] and "<font" not in mail["html"]
    assert "&lt;" in mail["html"] or "<" not in name
    assert "http://" not in mail["html"] and "http://" not in mail["text"] and "http://" not in mail["subject"]
    assert "\n# HEAD" not in mail["text"]
    # The message can be built and sent: no header injection, no exception.
    message = outbound.email_message(sender="a@x.cn", to=["b@x.cn"], subject=mail["subject"], text=mail["text"],
                                     html=mail["html"], message_id="<e.c@changai.notifier>")
    assert message["Subject"] and "HEAD" not in (message["X-Injected"] or "")


def test_plain_values_stay_readable():
    content = _content(renderer.layout(_notice("宁夏**某**公司工会 [一分会]"), "wecom", "markdown"))
    assert "宁夏＊＊某＊＊公司工会 ［一分会］" in content


def test_the_layouts_own_markup_is_kept():
    wecom = _content(renderer.layout(_notice("甲工会"), "wecom", "markdown"))
    assert wecom.startswith("**【") and "\n> " in wecom and "<font color=\"comment\">" in wecom
    ding = _content(renderer.layout(_notice("甲工会"), "dingtalk", "markdown", keyword="产改"))
    assert ding.startswith("#### 【") and "\n- " in ding


def test_dingtalk_keyword_survives_the_cut_even_when_it_was_in_the_text():
    # The keyword is in the text (so it was not added), but past the byte limit: the cut removes
    # it, and it must be put back (DingTalk refuses a message without it: 310000).
    content = "长" * 2000 + "产改"
    body = robot_body("dingtalk", "markdown", "t", content, "zh-CN", keyword="产改")
    text = body["markdown"]["text"]
    assert len(text.encode()) <= 4096 and "产改" in text and "（内容过长，已截断）" in text
    short = robot_body("dingtalk", "markdown", "t", "产改 通知", "zh-CN", keyword="产改")
    assert short["markdown"]["text"] == "产改 通知"  # present and not cut: not added twice
