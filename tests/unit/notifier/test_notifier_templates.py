"""Every registered event type has a zh-CN and an English template that renders for every channel kind."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest

from services.notifier.domain import LOCALES, TEST_TYPE, utf8_len
from services.notifier.render import CUT, LIMITS, Names, Notice, Renderer, TemplateCheckError, robot_body
from services.notifier.samples import sample
from shared.events import REGISTRY

renderer = Renderer()


@pytest.mark.parametrize("event_type", sorted(REGISTRY) + [TEST_TYPE])
@pytest.mark.parametrize("locale", LOCALES)
def test_every_event_type_renders_in_every_locale_and_layout(event_type, locale):
    notice = renderer.notice(event_type, sample(event_type), locale, Names())
    assert notice.title and notice.summary
    assert "{{" not in notice.summary and "None" not in notice.summary
    for label, value in notice.facts:
        assert label and value, (event_type, label)
    text = renderer.text(notice)
    assert text.startswith("【" if locale == "zh-CN" else "[")
    for kind in ("wecom", "dingtalk"):
        for fmt in ("markdown", "text"):
            body = renderer.layout(notice, kind, fmt, keyword="产改")
            content = (body.get("markdown") or body.get("text"))
            content = content.get("content") or content.get("text")
            assert utf8_len(content) <= LIMITS[(kind, fmt)]
            if kind == "dingtalk":
                assert "产改" in content
                if fmt == "markdown":
                    assert body["markdown"]["title"]
    mail = renderer.layout(notice, "email")
    assert mail["subject"] and mail["text"] and mail["html"].startswith("<!DOCTYPE html>")


def test_chinese_is_the_default_and_english_is_available():
    data = sample("changai.training.session.completed.v1")
    zh = renderer.notice("changai.training.session.completed.v1", data, "zh-CN", Names())
    en = renderer.notice("changai.training.session.completed.v1", data, "en", Names())
    # The example of DOMAIN.md, word for word.
    assert renderer.text(zh).splitlines()[0] == (
        "【培训结业】宁夏枸杞产业集团有限公司工会委员会：枸杞栽培技术提升第3期已结业，参训36人次。")
    assert en.title == "Training completed" and "36 person-times" in en.summary
    unknown_locale = renderer.notice("changai.training.session.completed.v1", data, "fr", Names())
    assert unknown_locale.locale == "zh-CN"


def test_names_come_from_the_read_model_and_fall_back_to_the_id():
    data = sample("changai.membership.member.transferred.v1").model_copy(update={"to_branch_id": uuid.uuid4()})
    names = Names(branches={data.from_branch_id: "甲公司工会"})
    notice = renderer.notice(data.event_type, data, "zh-CN", names)
    assert "甲公司工会" in notice.summary
    assert f"工会（编号 {str(data.to_branch_id)[:8]}）" in notice.summary


def test_money_dates_and_regions_read_naturally():
    data = sample("changai.funding.subsidy.paid.v1")
    zh = renderer.text(renderer.notice(data.event_type, data, "zh-CN", Names()))
    en = renderer.text(renderer.notice(data.event_type, data, "en", Names()))
    assert "80,000.00 元" in zh and "CNY 80,000.00" in en
    established = sample("changai.membership.branch.established.v1")
    assert "银川市兴庆区" in renderer.text(renderer.notice(established.event_type, established, "zh-CN", Names()))
    assert "2021年" not in renderer.text(renderer.notice(established.event_type, established, "zh-CN", Names()))
    assert "2024年5月1日" in renderer.text(renderer.notice(established.event_type, established, "zh-CN", Names()))
    assert "Xingqing, Yinchuan" in renderer.text(renderer.notice(established.event_type, established, "en", Names()))


def test_markdown_values_cannot_inject_tags():
    data = sample("changai.membership.branch.established.v1").model_copy(update={"name": "<font>坏`名`</font>"})
    md = renderer.markdown(renderer.notice(data.event_type, data, "zh-CN", Names()), "wecom")
    assert "<font>坏" not in md and "＜font＞坏＇名＇" in md


def test_long_notices_are_cut_on_a_character_boundary_and_say_so():
    notice = Notice("x", "zh-CN", "长", "长" * 3000, [("项", "值" * 500)])
    for kind, fmt in LIMITS:
        body = renderer.layout(notice, kind, fmt, keyword="产改")
        raw = orjson.dumps(body)
        content = (body.get("markdown") or body.get("text"))
        content = content.get("content") or content.get("text")
        encoded = content.encode()
        assert len(encoded) <= LIMITS[(kind, fmt)]
        encoded.decode()  # a whole number of characters
        assert CUT["zh-CN"] in content
        if kind == "dingtalk":
            assert content.endswith("产改")  # the keyword survives the cut
        assert raw


def test_digest_takes_whole_notices_that_fit():
    bodies = [robot_body("wecom", "markdown", "t", f"**【通知{i}】**\n" + "内容" * 200, "zh-CN") for i in range(20)]
    body, n = renderer.digest("wecom", "markdown", "zh-CN", bodies)
    content = body["markdown"]["content"]
    assert 1 < n < 20 and utf8_len(content) <= 4096
    assert content.startswith(f"【通知汇总】以下 {n} 条通知")
    assert all(f"【通知{i}】" in content for i in range(n)) and f"【通知{n}】" not in content
    assert CUT["zh-CN"] not in content


def test_missing_template_is_a_start_up_error(tmp_path):
    (tmp_path / "zh-CN").mkdir()
    (tmp_path / "en").mkdir()
    (tmp_path / "layouts").mkdir()
    source = renderer.directory
    for path in (source / "zh-CN").glob("*.j2"):
        if "session.completed" not in path.name:
            (tmp_path / "zh-CN" / path.name).write_text(path.read_text())
    for path in (source / "en").glob("*.j2"):
        (tmp_path / "en" / path.name).write_text(path.read_text())
    (tmp_path / "layouts" / "email.html.j2").write_text((source / "layouts" / "email.html.j2").read_text())
    with pytest.raises(TemplateCheckError, match=r"zh-CN/changai\.training\.session\.completed\.v1: no template"):
        Renderer(tmp_path).check()
    assert Renderer().check() > 0


def test_a_template_using_an_unknown_field_fails_the_check(tmp_path):
    import shutil

    shutil.copytree(renderer.directory, tmp_path / "t")
    (tmp_path / "t" / "en" / "changai.funding.fund.closed.v1.j2").write_text(
        '{%- set title = "x" -%}{%- set facts = [] -%}{{ d.no_such_field }}')
    with pytest.raises(TemplateCheckError, match="fund.closed"):
        Renderer(tmp_path / "t").check()
