"""The fakes are at least as strict as the services they stand for (issue 15, finding 12):
checked here against their vendors' documented rules, so a kinder fake fails a test."""
from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from notifier_fakes import DINGTALK_MAX_BYTES, Receivers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fakes():
    f = Receivers().start()
    yield f
    f.stop()


def post(url: str, body) -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def markdown(text: str, title: str = "t") -> dict:
    return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}


def test_wecom_takes_20_a_minute_per_key_and_4096_bytes(fakes):
    key = f"k-{uuid.uuid4().hex}"
    fakes.wecom_robot(key)  # the documented defaults: 20 in any 60 s
    url = f"{fakes.base}/cgi-bin/webhook/send?key={key}"
    ok = {"msgtype": "markdown", "markdown": {"content": "好" * 1365}}  # 4,095 bytes
    assert [post(url, ok)["errcode"] for _ in range(20)] == [0] * 20
    assert post(url, ok)["errcode"] == 45009  # the 21st within the minute
    other = f"k-{uuid.uuid4().hex}"
    fakes.wecom_robot(other)
    big = f"{fakes.base}/cgi-bin/webhook/send?key={other}"
    assert post(big, {"msgtype": "markdown", "markdown": {"content": "好" * 1366}})["errcode"] == 40058
    assert post(big, {"msgtype": "text", "text": {"content": "好" * 683}})["errcode"] == 40058  # > 2,048
    assert post(big, {"msgtype": "voice"})["errcode"] == 40008
    assert post(f"{fakes.base}/cgi-bin/webhook/send?key=unknown", ok)["errcode"] == 93000


def test_dingtalk_blocks_a_robot_for_10_minutes_after_20_a_minute(fakes):
    token = f"t-{uuid.uuid4().hex}"
    fakes.dingtalk_robot(token, keyword="产改")
    url = f"{fakes.base}/robot/send?access_token={token}"
    assert [post(url, markdown("产改 通知"))["errcode"] for _ in range(20)] == [0] * 20
    assert post(url, markdown("产改 通知"))["errcode"] == 130101
    robot = fakes.dingtalk[token]
    assert robot.blocked_until - robot.accepted[-1] >= 600 - 1  # blocked for the documented 10 minutes
    robot.accepted.clear()  # even with the minute's budget free again, the block holds
    assert post(url, markdown("产改 通知"))["errcode"] == 130101


def test_dingtalk_checks_keywords_size_title_and_type(fakes):
    token = f"t-{uuid.uuid4().hex}"
    fakes.dingtalk_robot(token, keywords=("产改", "工会"))
    url = f"{fakes.base}/robot/send?access_token={token}"
    assert post(url, markdown("工会 通知"))["errcode"] == 0           # any one of its keywords
    assert post(url, markdown("通知", title="产改"))["errcode"] == 0  # in the title counts too
    assert post(url, markdown("通知"))["errcode"] == 310000
    assert post(url, markdown("产改" + "好" * (DINGTALK_MAX_BYTES // 3)))["errcode"] == 460101
    assert post(url, {"msgtype": "markdown", "markdown": {"text": "产改"}})["errcode"] == 400402
    assert post(url, {"msgtype": "voice", "voice": {"text": "产改"}})["errcode"] == 400105
    assert post(f"{fakes.base}/robot/send?access_token=nobody", markdown("产改"))["errcode"] == 300001
