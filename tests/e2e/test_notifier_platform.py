"""The notifier as it runs: membership API, notifier API and notifier worker as processes.

A branch established through the membership API reaches its city federation's WeCom robot
(in Chinese, naming the branch) and the seed webhook of ``CHANGAI_NOTIFIER_WEBHOOKS``; the
branch's own DingTalk channel, registered through the notifier API once the notifier has
learnt the branch from membership events, passes a test send.
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from shared.auth import mint_token
from shared.identifiers import uscc_check_char

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "notifier"))

from notifier_fakes import Receivers  # noqa: E402
from notifier_harness import fast_settings, start_at_end  # noqa: E402

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + "bm90aWZpZXItZTJlLXNlZWQtc2VjcmV0LTMyYnl0ZXM="
MEMBERSHIP = {"Authorization": "Bearer " + mint_token("hr-system", ["membership:write", "membership:read"], "640000")}
NOTIFIER = {"Authorization": "Bearer " + mint_token("yinchuan-federation", ["notifier:write", "notifier:read"],
                                                    "640100")}


def credit_code() -> str:
    first = "91640100" + "".join(random.choice("0123456789ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


@pytest.fixture(scope="module")
async def running(stack, make_database):
    fakes = Receivers().start()
    membership_dsn, notifier_dsn = await make_database("membership"), await make_database("notifier")
    app_id = f"notifier-e2e{uuid.uuid4().hex[:6]}"
    await start_at_end(stack.bootstrap, f"changai-{app_id}")
    # membership.commands holds earlier modules' intake commands (1,200 from the intake fault test): with the
    # default group this fresh membership would reject each (unknown branch) and the seeded region webhook would
    # queue ~1,000 command.rejected notices ahead of this test's branch (seen in a stress run). A group of its own
    # starts at the topic's end.
    commands_group = f"membership-commands-{app_id}"
    await start_at_end(stack.bootstrap, commands_group, names=["membership.commands"])
    common = {**fast_settings(fakes.base, 25), "CHANGAI_NOTIFIER_APP_ID": app_id,
              "CHANGAI_NOTIFIER_WEBHOOKS": json.dumps({"640000": fakes.hook("seed", [SECRET])}),
              "CHANGAI_NOTIFIER_WEBHOOK_SECRET": SECRET}
    m_env = stack.service_env("membership", database_url=membership_dsn, CHANGAI_OUTBOX_POLL_INTERVAL_S="0.2",
                              CHANGAI_COMMANDS_GROUP_ID=commands_group)
    w_env = stack.service_env("notifier-worker", database_url=notifier_dsn, **common)
    a_env = stack.service_env("notifier-api", database_url=notifier_dsn, **common)
    await asyncio.gather(
        stack.start_service("membership", ["-m", "services.membership", "api"], m_env),
        stack.start_service("notifier-worker", ["-m", "services.notifier", "worker"], w_env, health_path="/readyz",
                            timeout=90),
        stack.start_service("notifier-api", ["-m", "services.notifier", "api"], a_env),
    )
    async with httpx.AsyncClient(timeout=30) as http:
        yield {"fakes": fakes, "http": http, "membership": f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}",
               "notifier": f"http://127.0.0.1:{a_env['CHANGAI_HTTP_PORT']}"}
    fakes.stop()


async def _until(check, timeout: float = 30.0):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.2)
    return result


async def test_a_branch_established_in_membership_is_announced_and_can_register_its_own_robot(running):
    fakes, http = running["fakes"], running["http"]
    key = f"yinchuan-{uuid.uuid4().hex}"
    fakes.wecom_robot(key, limit=20, window=2.5)  # the worker keeps to 20 per 3 s (fast settings)
    federation = await http.post(f"{running['notifier']}/v1/channels", headers=NOTIFIER, json={
        "kind": "wecom", "name": "银川市总工会群", "owner": {"region_code": "640100"}, "config": {"key": key},
        "event_types": ["changai.membership.branch.*"]})
    assert federation.status_code == 201, federation.text
    assert federation.json()["scope"] == "subtree" and key not in federation.text

    name = f"银川市兴庆区枸杞加工{uuid.uuid4().hex[:4]}有限公司工会"
    created = await http.post(f"{running['membership']}/v1/branches", headers=MEMBERSHIP, json={
        "name": name, "credit_code": credit_code(), "region_code": "640104", "industry_section": "C",
        "kind": "enterprise", "founded_on": "2021-03-01"})
    assert created.status_code == 201, created.text
    branch_id = created.json()["id"]

    async def robot_notice():
        return [c for c in fakes.received(f"wecom:{key}") if name in c.content]

    (notice,) = await _until(robot_notice)
    assert notice.answer == 0 and "【新建基层工会】" in notice.content and "银川市兴庆区" in notice.content

    async def seed_notice():
        return [c for c in fakes.received("hook:seed") if c.json.get("subject") == branch_id]

    (seed,) = await _until(seed_notice)
    Webhook(SECRET).verify(seed.body, seed.headers)
    assert seed.headers["webhook-id"] == seed.json["id"] and seed.json["type"] == "changai.membership.branch.established.v1"

    async def known():
        return (await http.get(f"{running['notifier']}/v1/branches/{branch_id}", headers=NOTIFIER)).status_code == 200

    await _until(known)
    token = f"dt-{uuid.uuid4().hex}"
    fakes.dingtalk_robot(token, secret="SECe2e-secret", keyword="工会")
    own = await http.post(f"{running['notifier']}/v1/channels", headers=NOTIFIER, json={
        "kind": "dingtalk", "name": "本会钉钉群", "owner": {"branch_id": branch_id},
        "config": {"access_token": token, "secret": "SECe2e-secret", "keyword": "工会"}})
    assert own.status_code == 201, own.text
    assert own.json()["event_types"] and "changai.training.session.completed.v1" in own.json()["event_types"]
    test = await http.post(f"{running['notifier']}/v1/channels/{own.json()['id']}/test", headers=NOTIFIER)
    assert test.status_code == 200 and test.json()["delivered"] is True, test.text
    (call,) = fakes.received(f"dingtalk:{token}")
    assert call.answer == 0 and "测试通知" in call.content

    # A token of another city sees neither the channel nor its log.
    other = {"Authorization": "Bearer " + mint_token("x", ["notifier:read"], "640200")}
    assert (await http.get(f"{running['notifier']}/v1/channels/{own.json()['id']}", headers=other)).status_code == 404
    log = (await http.get(f"{running['notifier']}/v1/deliveries", headers=other)).json()
    assert log["items"] == []
