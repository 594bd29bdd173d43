"""The notifier's HTTP API on a real database: scopes, validation as problems, secrets, SSRF."""
from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from services.notifier import store
from services.notifier.main import build_app
from services.notifier.settings import NotifierSettings
from shared.auth import mint_token

pytestmark = pytest.mark.integration


def auth(scopes=("notifier:write", "notifier:read"), region="640000"):
    return {"Authorization": "Bearer " + mint_token("tester", list(scopes), region)}


@pytest.fixture(scope="module")
async def api(stack, make_database):
    dsn = await make_database("notifier")
    # Outbound calls locked down as in production: https and public addresses only.
    settings = NotifierSettings(database_url=dsn, kafka_bootstrap=stack.bootstrap, outbound_allow_private=False,
                                notifier_webhooks={})
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://n", headers=auth()) as c:
            conn = await asyncpg.connect(dsn)
            c.branch = uuid.uuid4()  # the read model, as the worker fills it from membership events
            await store.upsert_branch(conn, c.branch, "兴庆区某公司工会", "640104", None, "enterprise")
            c.dsn = dsn
            await conn.close()
            yield c


def problem(response, status, kind):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + kind), response.json()
    return response.json()


def wecom(branch, **over):
    body = {"kind": "wecom", "name": "本会企业微信群", "owner": {"branch_id": str(branch)},
            "config": {"key": "0123456789abcdef"}}
    body.update(over)
    return body


async def test_tokens_scopes_and_regions(api):
    problem(await api.post("/v1/channels", json=wecom(api.branch), headers={"Authorization": ""}), 401, "unauthorized")
    problem(await api.post("/v1/channels", json=wecom(api.branch), headers=auth(["notifier:read"])), 403,
            "insufficient-scope")
    problem(await api.post("/v1/channels", json=wecom(api.branch), headers=auth(region="640200")), 403, "out-of-scope")
    made = await api.post("/v1/channels", json=wecom(api.branch), headers=auth(region="640100"))
    assert made.status_code == 201
    channel_id = made.json()["id"]
    problem(await api.get(f"/v1/channels/{channel_id}", headers=auth(region="640200")), 404, "not-found")
    assert (await api.get(f"/v1/channels/{channel_id}", headers=auth(region="640104"))).status_code == 200
    listed = await api.get("/v1/channels", headers=auth(region="640200"))
    assert channel_id not in listed.text


async def test_bad_requests_are_problems_and_write_nothing(api):
    conn = await asyncpg.connect(api.dsn)
    before = await conn.fetchval("SELECT count(*) FROM channels")
    cases = [
        (wecom(api.branch, kind="sms"), "validation-error"),
        (wecom(api.branch, owner={}), "validation-error"),
        (wecom(api.branch, owner={"branch_id": str(uuid.uuid4())}), "validation-error"),  # unknown branch
        (wecom(api.branch, owner={"region_code": "110000"}), "validation-error"),
        (wecom(api.branch, event_types=["changai.nothing.*"]), "validation-error"),
        (wecom(api.branch, config={}), "validation-error"),
        (wecom(api.branch, config={"webhook_url": "https://evil.example.com/cgi-bin/webhook/send?key=x"}),
         "validation-error"),
        (wecom(api.branch, kind="dingtalk", config={"access_token": "t"}), "validation-error"),  # no sign, no keyword
        (wecom(api.branch, kind="dingtalk", config={"access_token": "t", "secret": "nope"}), "validation-error"),
        (wecom(api.branch, kind="email", config={"to": ["not-an-address"]}), "validation-error"),
        (wecom(api.branch, quiet_hours={"start": "25:00"}), "validation-error"),
        (wecom(api.branch, name="bad\x00name"), "validation-error"),
        (wecom(api.branch, extra="x"), "validation-error"),
    ]
    for body, kind in cases:
        problem(await api.post("/v1/channels", json=body), 422, kind)
    problem(await api.post("/v1/channels", content=b"{", headers={"content-type": "application/json"}), 400,
            "malformed-json")
    assert await conn.fetchval("SELECT count(*) FROM channels") == before
    await conn.close()


@pytest.mark.parametrize("url,reason", [
    ("http://93.184.216.34/hook", "https"),
    ("https://127.0.0.1/hook", "non-public"),
    ("https://10.0.0.8/hook", "non-public"),
    ("https://169.254.169.254/latest/meta-data", "non-public"),
    ("https://localhost:8443/hook", "non-public"),
])
async def test_webhook_urls_must_be_https_and_public(api, url, reason):
    body = problem(await api.post("/v1/channels", json=wecom(api.branch, kind="webhook", config={"url": url})),
                   422, "validation-error")
    assert reason in body["detail"]


async def test_webhook_secret_is_shown_once_and_never_stored_in_clear(api):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = wecom(api.branch, kind="webhook", config={"url": "https://93.184.216.34/hooks/union"})
    first = await api.post("/v1/channels", json=body, headers=key)
    assert first.status_code == 201
    secret = first.json()["signing_secret"]
    assert secret.startswith("whsec_") and first.json()["config"] == {"url": "https://93.184.216.34/…"}
    again = await api.post("/v1/channels", json=body, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and "signing_secret" not in again.json()
    got = await api.get(f"/v1/channels/{first.json()['id']}")
    assert secret not in got.text and "signing_secret" not in got.json()
    conn = await asyncpg.connect(api.dsn)
    try:
        rows = await conn.fetch("SELECT secrets, config::text FROM channels")
        keys = await conn.fetch("SELECT body::text FROM idempotency_keys")
    finally:
        await conn.close()
    assert all(secret.encode() not in bytes(r["secrets"]) and secret not in r["config"] for r in rows)
    assert all(secret not in (k["body"] or "") for k in keys)


async def test_defaults_patch_pause_resume_disable(api):
    made = (await api.post("/v1/channels", json=wecom(api.branch))).json()
    assert made["scope"] == "own" and made["locale"] == "zh-CN" and made["status"] == "active"
    assert "changai.funding.subsidy.paid.v1" in made["event_types"]  # sensible defaults for a branch
    federation = (await api.post("/v1/channels", json=wecom(api.branch, owner={"region_code": "640100"}))).json()
    assert federation["scope"] == "subtree" and "changai.membership.branch.*" in federation["event_types"]
    assert "changai.membership.member.joined.v1" not in federation["event_types"]
    assert federation["owner"]["name"] == "银川市总工会"

    patched = await api.patch(f"/v1/channels/{made['id']}", json={
        "event_types": ["changai.training.*"], "locale": "en",
        "quiet_hours": {"start": "22:00", "end": "07:30", "rest_days": True}, "config": {"key": "fedcba9876543210"}})
    assert patched.status_code == 200, patched.text
    view = patched.json()
    assert view["event_types"] == ["changai.training.*"] and view["locale"] == "en"
    assert view["quiet_hours"] == {"start": "22:00", "end": "07:30", "rest_days": True}
    assert view["config"]["key"] == "…3210"
    problem(await api.patch(f"/v1/channels/{made['id']}", json={"event_types": ["x"]}), 422, "validation-error")

    paused = await api.post(f"/v1/channels/{made['id']}/pause", json={"reason": "换群了"})
    assert paused.json()["status"] == "paused" and paused.json()["paused_reason"] == "换群了"
    problem(await api.post(f"/v1/channels/{made['id']}/test"), 409, "channel-not-active")
    resumed = await api.post(f"/v1/channels/{made['id']}/resume")
    assert resumed.json()["status"] == "active" and resumed.json()["released"] == 0
    problem(await api.post(f"/v1/channels/{made['id']}/rotate-secret", json={}), 409, "not-a-webhook")
    assert (await api.delete(f"/v1/channels/{made['id']}")).status_code == 204
    assert (await api.get(f"/v1/channels/{made['id']}")).json()["status"] == "disabled"


async def test_delivery_log_filters_and_preview(api):
    problem(await api.get("/v1/deliveries", params={"since": "yesterday"}), 422, "validation-error")
    problem(await api.get("/v1/deliveries", params={"cursor": "garbage"}), 422, "validation-error")
    assert (await api.get("/v1/deliveries", params={"status": "dead"})).json() == {"items": [], "next": None}
    problem(await api.get(f"/v1/deliveries/{uuid.uuid4()}"), 404, "not-found")
    problem(await api.post(f"/v1/deliveries/{uuid.uuid4()}/resend"), 404, "not-found")
    preview = await api.get("/v1/templates/changai.funding.subsidy.rejected.v1",
                            params={"kind": "dingtalk", "keyword": "产改"})
    assert preview.status_code == 200
    assert preview.json()["body"]["markdown"]["text"].endswith("产改")
    problem(await api.get("/v1/templates/changai.nope.v1"), 404, "not-found")
