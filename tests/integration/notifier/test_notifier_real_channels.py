"""The worker process against receivers as strict as the real services (issue 15, findings 9, 10, 12):
webhooks and robots over HTTPS with a locally made CA (the TLS and address-pinning path runs,
with the host's name for SNI and Host), e-mail through a relay that wants STARTTLS and AUTH and
answers per recipient. Real Kafka and PostgreSQL."""
from __future__ import annotations

import uuid
from datetime import date

import pytest
from notifier_fakes import Receivers, make_tls
from notifier_harness import Notifier, fast_settings

from shared.events.training import SessionCompleted

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    ca, cert, key = make_tls(tmp_path_factory.mktemp("hooks-tls"))
    fakes = Receivers(tls=(cert, key)).start()
    fakes.ca = ca
    yield fakes
    fakes.stop()


@pytest.fixture(scope="module")
async def strict(stack, make_database, https, mailbox, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundle") / "ca-bundle.pem"
    bundle.write_bytes(https.ca.read_bytes() + mailbox.ca.read_bytes())  # both local CAs, as an operator would
    env = {**fast_settings(https.base, mailbox.port), **mailbox.env(), "CHANGAI_NOTIFIER_CA_BUNDLE": str(bundle)}
    n = await Notifier(stack, await make_database("notifier"), env).start()
    yield n
    await n.stop()


def completed(branch_id: uuid.UUID) -> SessionCompleted:
    return SessionCompleted(
        session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="枸杞栽培技术提升", number=3,
        organiser_id=str(branch_id), organiser_kind="branch", region_code="640104", city_code="640100",
        subsidy_category="skills_upgrade", person_times=36, passed=34, failed=2, eligible_member_ids=[],
        eligible_persons=30, completed_on=date(2024, 5, 1))


async def test_webhook_and_robots_over_https_with_the_hosts_name(strict, https):
    branch = await strict.branch()
    hook = f"tls-{uuid.uuid4().hex[:6]}"
    webhook = await strict.channel("webhook", {"url": f"https://localhost:{https.port}/hooks/{hook}"},
                                   branch_id=branch, event_types=["changai.training.*"])
    https.set_hook_secrets(hook, [webhook["signing_secret"]])
    key, token = f"wk-{uuid.uuid4().hex}", f"dt-{uuid.uuid4().hex}"
    https.wecom_robot(key, window=3.0)  # the worker's shortened window (fast settings): not shorter
    https.dingtalk_robot(token, keywords=("产改", "工会"), window=3.0)
    await strict.channel("wecom", {"key": key}, branch_id=branch)
    await strict.channel("dingtalk", {"access_token": token, "keyword": "产改"}, branch_id=branch)

    event = await strict.publish(completed(branch))
    (call,) = await strict.until(lambda: https.received(f"hook:{hook}"), "the webhook over HTTPS")
    assert call.verified_with == [0] and call.headers["webhook-id"] == event.id
    assert call.headers["host"] == f"localhost:{https.port}"
    assert "localhost" in https.server_names and "127.0.0.1" not in https.server_names
    (wecom,) = await strict.until(lambda: https.received(f"wecom:{key}"), "the WeCom robot over HTTPS")
    (ding,) = await strict.until(lambda: https.received(f"dingtalk:{token}"), "the DingTalk robot over HTTPS")
    assert wecom.answer == 0 and ding.answer == 0


async def test_email_through_a_relay_with_starttls_auth_and_a_busy_recipient(strict, mailbox):
    branch = await strict.branch()
    tag = uuid.uuid4().hex[:6]
    ok, busy = f"ok-{tag}@union.test", f"busy-{tag}@union.test"
    mailbox.refuse(busy, "450 4.2.1 mailbox busy, try later")
    channel = await strict.channel("email", {"to": [ok, busy]}, branch_id=branch)
    await strict.publish(completed(branch))

    async def delivered():
        log = await strict.deliveries(channel_id=channel["id"])
        return log if log and log[0]["status"] == "delivered" else None

    (d,) = await strict.until(delivered, "the e-mail delivered to both", timeout=30)
    outcomes = [a["outcome"] for a in d["attempt_log"]]
    assert outcomes[0] != "delivered" and outcomes[-1] == "delivered" and len(outcomes) == 2
    assert "delivered to 1 of 2" in d["attempt_log"][0]["error"]
    assert len(mailbox.to(ok)) == 1 and len(mailbox.to(busy)) == 1  # the retry went to the busy one only
    (mail,) = mailbox.to(ok)
    assert mail["List-Unsubscribe"].startswith("<mailto:") and mail["To"] == ok
    assert all(s["tls"] and s["user"] is not None for s in mailbox.sessions[-2:])
