"""The SSRF guard and Standard Webhooks signing, without a network."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notifier import outbound, vault


@pytest.mark.parametrize("url", [
    "http://93.184.216.34/hook",             # plain http
    "https://127.0.0.1/hook",                # loopback
    "https://10.1.2.3/hook",                 # private
    "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "https://[::1]/hook",
    "https://[::ffff:192.168.0.1]/hook",     # IPv4-mapped private
    "https://0.0.0.0/hook",
    "https://user:pw@93.184.216.34/hook",
    "ftp://93.184.216.34/x",
    "not a url",
    # IPv6 forms that carry an IPv4 loopback or private address (issue 12, finding 7)
    "https://[::7f00:1]/hook",               # IPv4-compatible ::127.0.0.1
    "https://[::127.0.0.1]/hook",
    "https://[64:ff9b::7f00:1]/hook",        # NAT64 well-known prefix
    "https://[64:ff9b:1::a00:1]/hook",       # NAT64 local-use prefix, 10.0.0.1
    "https://[2002:7f00:1::]/hook",          # 6to4 of 127.0.0.1
    "https://[2002:c0a8:1::1]/hook",         # 6to4 of 192.168.0.1
    "https://[::ffff:127.0.0.1]/hook",       # IPv4-mapped
    "https://[::ffff:0:7f00:1]/hook",        # IPv4-translated
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
    "https://[fe80::1%25eth0]/hook",         # link-local with a zone
    # not URLs at all: a refusal, not an exception
    "https://127.0.0.1:99999/",
    "https://[::1/",
    "https://93.184.216.34:port/",
])
async def test_unsafe_urls_are_refused(url):
    with pytest.raises(outbound.UnsafeURL):
        await outbound.check_url(url, allow_private=False)


async def test_public_https_is_allowed_and_private_only_when_permitted():
    assert await outbound.check_url("https://93.184.216.34/hook", allow_private=False) == ("93.184.216.34",
                                                                                          ["93.184.216.34"])
    assert await outbound.check_url("http://127.0.0.1:9/hook", allow_private=True)


async def test_names_resolving_to_private_addresses_are_refused():
    with pytest.raises(outbound.UnsafeURL, match="non-public"):
        await outbound.check_url("https://localhost/hook", allow_private=False)


def test_signatures_verify_with_the_standardwebhooks_library_during_a_rotation():
    old, new = vault.new_webhook_secret(), vault.new_webhook_secret()
    body = b'{"type":"changai.membership.branch.established.v1","data":{"name":"\xe5\xb7\xa5\xe4\xbc\x9a"}}'
    now = datetime.now(timezone.utc)
    signature = outbound.sign_webhook([old, new], "evt-1", body, now)
    assert len(signature.split(" ")) == 2 and all(s.startswith("v1,") for s in signature.split(" "))
    headers = {"webhook-id": "evt-1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    for secret in (old, new):  # a receiver holding either secret accepts the notice
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(vault.new_webhook_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body + b" ", headers)  # the exact bytes are signed


def test_expired_secrets_stop_signing():
    now = time.time()
    signing = [{"secret": "whsec_a", "expires_at": now - 1}, {"secret": "whsec_b", "expires_at": now + 60},
               {"secret": "whsec_c", "expires_at": None}]
    assert outbound.active_secrets(signing, now) == ["whsec_b", "whsec_c"]


def test_robot_urls_carry_key_and_dingtalk_signature():
    assert outbound.wecom_url("https://qyapi.weixin.qq.com/cgi-bin/webhook/send", "k+1") == \
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k%2B1"
    url = outbound.dingtalk_url("https://oapi.dingtalk.com/robot/send", "tok", "SECabc", now_ms=1700000000000)
    assert url.startswith("https://oapi.dingtalk.com/robot/send?access_token=tok&timestamp=1700000000000&sign=")
    assert "timestamp" not in outbound.dingtalk_url("https://oapi.dingtalk.com/robot/send", "tok", None)


def test_email_has_text_and_html_and_a_stable_message_id():
    message = outbound.email_message(sender="a@x.cn", to=["b@x.cn"], subject="【培训结业】测试", text="正文",
                                     html="<p>正文</p>", message_id="<e.c@changai.notifier>")
    assert message["Message-ID"] == "<e.c@changai.notifier>"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    assert "=?utf-8?" in message.as_string()  # the Chinese subject is encoded for transport


@pytest.mark.parametrize("url", ["https://[64:ff9b::5db8:d822]/hook", "https://[2002:5db8:d822::1]/hook",
                                 "https://[2606:4700:4700::1111]/hook"])
async def test_ipv6_forms_of_public_addresses_are_allowed(url):
    host, addresses = await outbound.check_url(url, allow_private=False)
    assert addresses == [host]


async def test_a_receivers_words_are_scrubbed_before_they_become_an_error():
    """errmsg may quote what a person typed; it becomes the log's error, delivery.failed and a pause reason."""
    import httpx
    import orjson

    def answer(request):
        return httpx.Response(200, content=orjson.dumps(
            {"errcode": 93000, "errmsg": "key of 张三 13812345678 / 640104199001018143 is wrong"}))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        outcome = await outbound.send_wecom(http, "https://qyapi.weixin.qq.com/cgi-bin/webhook/send", "k", b"{}",
                                            timeout=5, throttle_s=60)
    assert outcome.pause and "13812345678" not in outcome.error and "640104199001018143" not in outcome.error
    assert "[phone]" in outcome.error and "[id-number]" in outcome.error
