"""What each documented ``errcode`` of a WeCom or DingTalk group robot means for a notice: one table.

Robots answer HTTP 200 even when they refuse; the ``errcode`` of the JSON answer decides. Actions:

* ``throttle`` — the robot is over its budget (20 a minute per key / token; DingTalk then blocks
  it for 10 minutes): wait, the attempt does not count as a failure;
* ``retry`` — a passing fault: retried on the kind's schedule;
* ``permanent`` — this message can never be accepted (too long, a type or parameter the robot
  refuses, content its filter rejects): dead letter at once, the channel stays active;
* ``pause`` — the channel's configuration is wrong (key or token unknown, robot removed or
  disabled, group dissolved, signature, keyword or IP setting): dead letter, channel paused, owner told;
* ``retry_then_pause`` — DingTalk's 300005 is reported intermittently for valid tokens: retried,
  and the channel paused only after :data:`PAUSE_AFTER_REPEATS` answers in a row.

Codes not in the table are retried (a code a vendor adds later is not taken for a verdict).
Sources: WeCom "群机器人配置说明" (developer.work.weixin.qq.com/document/path/91770) and its global
return codes (path/90313); DingTalk "自定义机器人发送群消息" and its error-code list
(open.dingtalk.com/document/orgapp/custom-robot-access, …/robot-message-type), and the codes
those robots answer in practice that the issue reports (300005, 460101, 400403).
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("throttle", "retry", "permanent", "pause", "retry_then_pause")
PAUSE_AFTER_REPEATS = 3


@dataclass(frozen=True)
class Errcode:
    kind: str  # wecom | dingtalk
    code: int
    meaning: str
    action: str


TABLE: tuple[Errcode, ...] = (
    # -- WeCom group robot (qyapi.weixin.qq.com/cgi-bin/webhook/send) ----------------------------
    Errcode("wecom", -1, "system busy", "retry"),
    Errcode("wecom", 45009, "api freq out of limit (20 messages a minute per robot)", "throttle"),
    Errcode("wecom", 45033, "too many concurrent calls", "throttle"),
    Errcode("wecom", 93000, "invalid webhook url: the key is wrong or the robot was removed", "pause"),
    Errcode("wecom", 40008, "invalid message type", "permanent"),
    Errcode("wecom", 40035, "invalid parameter", "permanent"),
    Errcode("wecom", 40058, "invalid parameter (content over its length limit, or a field missing)", "permanent"),
    Errcode("wecom", 44004, "text content is empty", "permanent"),
    Errcode("wecom", 45002, "content size out of limit", "permanent"),
    # -- DingTalk custom robot (oapi.dingtalk.com/robot/send) --------------------------------------
    Errcode("dingtalk", -1, "system busy", "retry"),
    Errcode("dingtalk", 130101, "send too fast, exceed 20 times per minute: blocked for 10 minutes", "throttle"),
    Errcode("dingtalk", 410100, "sending too fast: rate limited", "throttle"),
    Errcode("dingtalk", 300001, "access token does not exist", "pause"),
    Errcode(
        "dingtalk", 300005, "token is not exist (also reported intermittently for valid tokens)", "retry_then_pause"
    ),
    Errcode("dingtalk", 310000, "security setting not met: signature, timestamp, keyword or IP allow-list", "pause"),
    Errcode("dingtalk", 400013, "the group was dissolved", "pause"),
    Errcode("dingtalk", 400101, "access token does not exist", "pause"),
    Errcode("dingtalk", 400102, "the robot is disabled", "pause"),
    Errcode("dingtalk", 400106, "the robot does not exist", "pause"),
    Errcode("dingtalk", 400105, "message type not supported", "permanent"),
    Errcode("dingtalk", 400402, "markdown title missing", "permanent"),
    Errcode("dingtalk", 400403, "message parameters invalid", "permanent"),
    Errcode("dingtalk", 460101, "message too large", "permanent"),
    Errcode("dingtalk", 430101, "contains an unsafe external link", "permanent"),
    Errcode("dingtalk", 430102, "contains inappropriate text", "permanent"),
    Errcode("dingtalk", 430103, "contains an inappropriate image", "permanent"),
    Errcode("dingtalk", 430104, "contains inappropriate content", "permanent"),
)

BY_CODE: dict[tuple[str, int], Errcode] = {(e.kind, e.code): e for e in TABLE}


def lookup(kind: str, code: int) -> Errcode | None:
    return BY_CODE.get((kind, code))


def markdown_table() -> str:
    """The table as the docs show it (docs/notifier.md is checked against this)."""
    rows = ["| robot | errcode | meaning | what the notifier does |", "|---|---|---|---|"]
    words = {
        "throttle": "wait (not a failure)",
        "retry": "retry on the schedule",
        "permanent": "dead letter now",
        "pause": "dead letter, pause the channel, tell the owner",
        "retry_then_pause": f"retry; pause after {PAUSE_AFTER_REPEATS} in a row",
    }
    for e in TABLE:
        rows.append(f"| {'WeCom' if e.kind == 'wecom' else 'DingTalk'} | {e.code} | {e.meaning} | {words[e.action]} |")
    return "\n".join(rows)
