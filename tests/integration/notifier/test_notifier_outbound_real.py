"""Outbound calls against real servers on 127.0.0.1 (no Kafka or PostgreSQL needed):

* webhooks over HTTPS with a locally made CA: the connection goes to a checked address, TLS
  (SNI, certificate) and ``Host`` name the host, the pool is keyed by the name, and the next
  checked address is tried when one does not answer (issue 15, finding 10);
* e-mail through a relay as strict as a real one: STARTTLS, AUTH, answers per recipient
  (finding 9), implicit TLS as an option.
"""
from __future__ import annotations

import types
import uuid

import pytest
from notifier_fakes import Mailbox, Receivers, make_tls
from pydantic import SecretStr

from services.notifier import outbound, vault
from shared import webhooks

pytestmark = pytest.mark.integration


UNRESOLVABLE = "hooks.changai.invalid"  # .invalid is reserved: no DNS answers it (RFC 6761)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"), names=("localhost", UNRESOLVABLE))


@pytest.fixture(scope="module")
def https(tls):
    _, cert, key = tls
    fakes = Receivers(tls=(cert, key)).start()
    yield fakes
    fakes.stop()


async def _post(http, url: str, secret: str, fakes: Receivers, name: str):
    return await outbound.send_webhook(http, url, [{"secret": secret, "expires_at": None}], str(uuid.uuid4()),
                                       b'{"type":"t"}', timeout=5, allow_private=True)


async def test_webhook_over_https_goes_to_the_checked_address_with_the_hosts_name(tls, https, monkeypatch):
    ca, _, _ = tls
    secret = vault.new_webhook_secret()
    https.hook("tls-a", [secret])
    async with outbound.http_client(ca_bundle=str(ca)) as http:
        outcome = await _post(http, f"https://localhost:{https.port}/hooks/tls-a", secret, https, "tls-a")
        assert outcome.delivered, outcome.error
        (call,) = https.received("hook:tls-a")
        assert call.verified_with == [0]
        assert call.headers["host"] == f"localhost:{https.port}"
        assert https.server_names[-1] == "localhost"  # SNI names the host, not an address
        # The pool holds the connection under the host's name (two names on one address never share one).
        # white-box: the pool's key is what must not be an address
        origins = {c._origin.host for c in http._transport._pool.connections}  # noqa: SLF001
        assert origins == {b"localhost"}

    # A name no DNS answers, checked to 127.0.0.1: only a connection made to the checked address
    # reaches the receiver (a client that resolved the name itself would fail), and TLS and Host
    # still name the host.
    async def checked(url, *, allow_private, resolve=True):
        return UNRESOLVABLE, ["127.0.0.1"]

    monkeypatch.setattr(webhooks, "check_url", checked)
    async with outbound.http_client(ca_bundle=str(ca)) as http:
        outcome = await _post(http, f"https://{UNRESOLVABLE}:{https.port}/hooks/tls-a", secret, https, "tls-a")
    assert outcome.delivered, outcome.error
    call = https.received("hook:tls-a")[-1]
    assert call.headers["host"] == f"{UNRESOLVABLE}:{https.port}" and https.server_names[-1] == UNRESOLVABLE


async def test_a_certificate_not_signed_by_a_trusted_ca_is_refused(tls, https):
    secret = vault.new_webhook_secret()
    https.hook("tls-b", [secret])
    async with outbound.http_client(ca_bundle="") as http:  # the system's store only: our CA unknown
        outcome = await _post(http, f"https://localhost:{https.port}/hooks/tls-b", secret, https, "tls-b")
    assert (outcome.result == "retry" and "SSL" in (outcome.error or "").upper()) or "certificate" in outcome.error
    assert not https.received("hook:tls-b")


async def test_pinning_tries_each_checked_address_in_turn(tls, https, monkeypatch):
    """The first checked address does not answer (nothing listens on 127.0.0.2): the next is used."""
    ca, _, _ = tls
    secret = vault.new_webhook_secret()
    https.hook("tls-c", [secret])

    async def check(url, *, allow_private, resolve=True):
        return "localhost", ["127.0.0.2", "127.0.0.1"]

    monkeypatch.setattr(webhooks, "check_url", check)  # the sender (shared.webhooks) resolves through it
    async with outbound.http_client(ca_bundle=str(ca)) as http:
        outcome = await _post(http, f"https://localhost:{https.port}/hooks/tls-c", secret, https, "tls-c")
    assert outcome.delivered, outcome.error
    assert https.received("hook:tls-c")

    async def none_answers(url, *, allow_private, resolve=True):
        return "localhost", ["127.0.0.2", "127.0.0.3"]

    monkeypatch.setattr(webhooks, "check_url", none_answers)
    async with outbound.http_client(ca_bundle=str(ca)) as http:
        outcome = await _post(http, f"https://localhost:{https.port}/hooks/tls-c", secret, https, "tls-c")
    assert outcome.result == "retry" and "no checked address" in outcome.error


def test_ipv4_is_tried_before_ipv6():
    assert outbound.order_addresses(["::1", "2001:db8::5", "93.184.216.34", "1.1.1.1"]) == [
        "93.184.216.34", "1.1.1.1", "::1", "2001:db8::5"]


# -- e-mail ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    box = Mailbox(tmp_path_factory.mktemp("relay")).start()
    yield box
    box.stop()


def mail_settings(box: Mailbox, **over):
    env = box.env()
    values = dict(notifier_smtp_host="localhost", notifier_smtp_port=box.port,
                  notifier_smtp_username=env["CHANGAI_NOTIFIER_SMTP_USERNAME"],
                  notifier_smtp_password=SecretStr(env["CHANGAI_NOTIFIER_SMTP_PASSWORD"]),
                  notifier_smtp_starttls=None, notifier_smtp_tls=box.implicit_tls,
                  notifier_smtp_from="notices@changai.test", notifier_ca_bundle=str(box.ca),
                  notifier_public_url="https://notices.changai.test", data_key_bytes=lambda: b"k" * 32)
    values.update(over)
    return types.SimpleNamespace(**values)


PAYLOAD = {"subject": "【测试】通知", "text": "正文", "html": "<p>正文</p>"}


def _mid() -> str:
    return f"<{uuid.uuid4()}.{uuid.uuid4()}@changai.notifier>"


async def test_email_goes_over_starttls_with_auth_and_an_unsubscribe_header(relay):
    outcome = await outbound.send_email(mail_settings(relay), ["a@union.test", "b@union.test"], PAYLOAD, _mid(),
                                        timeout=10)
    assert outcome.delivered, outcome.error
    for address in ("a@union.test", "b@union.test"):
        (message,) = relay.to(address)
        assert message["To"] == address  # one message each: recipients do not see each other
        assert "https://notices.changai.test/v1/unsubscribe/" in message["List-Unsubscribe"]
        assert "mailto:notices@changai.test" in message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert all(s["tls"] for s in relay.sessions)


async def test_wrong_credentials_are_permanent_not_retried(relay):
    settings = mail_settings(relay, notifier_smtp_password=SecretStr("wrong"))
    outcome = await outbound.send_email(settings, ["c@union.test"], PAYLOAD, _mid(), timeout=10)
    assert outcome.result == "permanent" and outcome.status_code == 535 and not outcome.pause
    assert not relay.to("c@union.test")


async def test_starttls_is_not_turned_off_by_default(relay):
    """Without TLS the relay refuses AUTH (and the old default, start_tls=False, sent nothing)."""
    settings = mail_settings(relay, notifier_smtp_starttls=False)
    outcome = await outbound.send_email(settings, ["d@union.test"], PAYLOAD, _mid(), timeout=10)
    assert not outcome.delivered
    assert not relay.to("d@union.test")


async def test_partial_refusal_retries_only_the_refused_and_records_the_lost(relay):
    relay.refuse("busy@union.test", "450 4.2.1 mailbox busy")
    relay.refuse("gone@union.test", "550 5.1.1 no such user")
    mid = _mid()
    to = ["ok@union.test", "busy@union.test", "gone@union.test"]
    first = await outbound.send_email(mail_settings(relay), to, PAYLOAD, mid, timeout=10)
    assert first.result == "retry" and not first.delivered and "delivered to 1 of 3" in first.error
    assert "b***@union.test (450" in first.error
    second = await outbound.send_email(mail_settings(relay), to, PAYLOAD, mid, timeout=10)
    # busy took it now; gone refused for good: not marked delivered, said who, nobody got it twice.
    assert second.result == "permanent" and not second.pause
    assert "delivered to 2 of 3" in second.error and "g***@union.test (550" in second.error
    assert [len(relay.to(a)) for a in to] == [1, 1, 0]
    sent = [a for a, answer in relay.rcpt_log if a in to]
    assert sent == ["ok@union.test", "busy@union.test", "gone@union.test", "busy@union.test"]


async def test_every_recipient_refused_for_good_pauses_the_channel(relay):
    relay.refuse("x1@union.test", "550 5.1.1 no such user")
    outcome = await outbound.send_email(mail_settings(relay), ["x1@union.test"], PAYLOAD, _mid(), timeout=10)
    assert outcome.result == "permanent" and outcome.pause


async def test_implicit_tls(tmp_path):
    box = Mailbox(tmp_path, implicit_tls=True).start()
    try:
        outcome = await outbound.send_email(mail_settings(box), ["tls@union.test"], PAYLOAD, _mid(), timeout=10)
        assert outcome.delivered, outcome.error
        assert box.sessions[-1]["tls"]
    finally:
        box.stop()
