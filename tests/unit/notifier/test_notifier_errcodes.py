"""One table classifies every documented robot errcode (issue 15, finding 8)."""
from __future__ import annotations

import httpx
import orjson
import pytest

from services.notifier import domain, errcodes, outbound


def test_the_table_has_each_code_once_and_a_known_action():
    keys = [(e.kind, e.code) for e in errcodes.TABLE]
    assert len(keys) == len(set(keys))
    assert all(e.action in errcodes.ACTIONS and e.meaning for e in errcodes.TABLE)


@pytest.mark.parametrize("kind,code,action", [
    ("wecom", 45009, "throttle"), ("wecom", 93000, "pause"), ("wecom", 40058, "permanent"),
    ("wecom", 40008, "permanent"), ("wecom", -1, "retry"),
    ("dingtalk", 130101, "throttle"), ("dingtalk", 310000, "pause"), ("dingtalk", 300001, "pause"),
    ("dingtalk", 460101, "permanent"), ("dingtalk", 400403, "permanent"), ("dingtalk", 300005, "retry_then_pause"),
    ("dingtalk", 400013, "pause"), ("dingtalk", 430101, "permanent"),
])
def test_documented_codes(kind, code, action):
    assert errcodes.lookup(kind, code).action == action


def test_deterministic_refusals_are_dead_letters_not_retries():
    for kind, code in (("wecom", 40058), ("wecom", 40008), ("dingtalk", 460101), ("dingtalk", 400403)):
        o = domain.classify_robot(kind, code, "x")
        assert o.result == "permanent" and not o.pause, (kind, code)


def test_an_unknown_code_is_retried_not_judged():
    assert domain.classify_robot("wecom", 123456, "new").result == "retry"


async def test_300005_is_retried_and_pauses_only_when_it_repeats():
    answers = []

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps({"errcode": answers.pop(0), "errmsg": "token is not exist"}))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        async def send(token="tok-300005"):
            return await outbound.send_dingtalk(http, "https://oapi.dingtalk.com/robot/send", token, "SECx", b"{}",
                                                timeout=5, blocked_s=600)

        answers[:] = [300005, 0, 300005, 300005]
        first = await send()
        assert (first.result, first.pause) == ("retry", False)
        assert (await send()).delivered  # intermittent: it went through; the count starts again
        assert (await send()).result == "retry"
        assert (await send()).result == "retry"
        answers[:] = [300005]
        third = await send()
        assert (third.result, third.pause) == ("permanent", True) and "3 times in a row" in third.error
        answers[:] = [300005]
        assert (await send("another-token")).result == "retry"  # counted per robot


def test_markdown_table_lists_every_code():
    table = errcodes.markdown_table()
    assert all(f"| {e.code} |" in table for e in errcodes.TABLE)


def test_the_docs_show_the_table_the_code_uses():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "notifier.md").read_text(encoding="utf-8")
    assert errcodes.markdown_table() in docs, "docs/notifier.md: paste errcodes.markdown_table() again"
