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
            c.settings = settings
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
    # issue 12: IPv6 forms embedding an IPv4 loopback, and URLs that do not parse (were 500s)
    ("https://[::7f00:1]/hook", "non-public"),
    ("https://[::127.0.0.1]/hook", "non-public"),
    ("https://[64:ff9b::7f00:1]/hook", "non-public"),
    ("https://[2002:7f00:1::]/hook", "non-public"),
    ("https://[::ffff:127.0.0.1]/hook", "non-public"),
    ("https://127.0.0.1:99999/", "not a valid URL"),
    ("https://[::1/", "not a valid URL"),
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
    problem(await api.get("/v1/deliveries", params={"cursor": "garbage"}), 400, "bad-cursor")
    assert (await api.get("/v1/deliveries", params={"status": "dead"})).json() == {"items": [], "next_cursor": None}
    for params in ({"status": "nonsense"}, {"status": "dead\x00"}, {"event_type": "x\x00y"}, {"limit": "500"},
                   {"limit": "0"}):
        response = await api.get("/v1/deliveries", params=params)
        assert response.status_code in (400, 422), (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    problem(await api.get(f"/v1/deliveries/{uuid.uuid4()}"), 404, "not-found")
    problem(await api.post(f"/v1/deliveries/{uuid.uuid4()}/resend"), 404, "not-found")
    preview = await api.get("/v1/templates/changai.funding.subsidy.rejected.v1",
                            params={"kind": "dingtalk", "keyword": "产改"})
    assert preview.status_code == 200
    assert preview.json()["body"]["markdown"]["text"].endswith("产改")
    problem(await api.get("/v1/templates/changai.nope.v1"), 404, "not-found")


async def test_channel_list_pages_with_an_opaque_cursor(api):
    made = [(await api.post("/v1/channels", json=wecom(api.branch, name=f"分页{i}"))).json()["id"] for i in range(3)]
    seen, cursor = [], None
    while True:
        params = {"limit": "2", "branch_id": str(api.branch)}
        if cursor:
            params["cursor"] = cursor
        body = (await api.get("/v1/channels", params=params)).json()
        assert set(body) == {"items", "next_cursor"} and len(body["items"]) <= 2
        seen += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert set(made) <= set(seen) and len(seen) == len(set(seen))
    for params in ({"kind": "sms"}, {"status": "x\x00"}, {"cursor": "%%%"}, {"region_code": "99"}):
        assert (await api.get("/v1/channels", params=params)).status_code in (400, 422), params


async def test_every_route_documents_its_answer(api):
    spec = (await api.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = [code for code in op["responses"] if code.startswith("2") and code != "204"]
            for code in ok:
                schema = op["responses"][code].get("content", {}).get("application/json", {}).get("schema")
                assert schema and schema != {}, (method, path, code)


async def test_one_click_unsubscribe_removes_the_address_and_pauses_an_empty_channel(api):
    from services.notifier import outbound

    made = (await api.post("/v1/channels", json=wecom(api.branch, kind="email", config={
        "to": ["a@union.test", "b@union.test"]}))).json()
    key = api.settings.data_key_bytes()

    def link(address: str, token: str | None = None) -> dict:
        return {"address": address, "token": token or outbound.unsubscribe_token(key, made["id"], address)}

    url = f"/v1/unsubscribe/{made['id']}"
    form = {"content": b"List-Unsubscribe=One-Click", "headers": {"content-type": "application/x-www-form-urlencoded",
                                                                  "Authorization": ""}}
    problem(await api.post(url, params=link("a@union.test", "forged"), **form), 404, "not-found")
    problem(await api.post(url, params=link("c@union.test", outbound.unsubscribe_token(key, made["id"], "a@union.test")),
                           **form), 404, "not-found")
    page = await api.get(url, params=link("a@union.test"), headers={"Authorization": ""})
    assert page.status_code == 200 and "<form method=\"post\"" in page.text
    assert (await api.get(f"/v1/channels/{made['id']}")).json()["config"]["to"] == ["a***@union.test",
                                                                                 "b***@union.test"]  # GET changes nothing
    first = await api.post(url, params=link("a@union.test"), **form)
    assert first.status_code == 200 and first.json()["recipients_left"] == 1
    view = (await api.get(f"/v1/channels/{made['id']}")).json()
    assert view["config"]["to"] == ["b***@union.test"] and view["status"] == "active"
    last = await api.post(url, params=link("b@union.test"), **form)
    assert last.json()["recipients_left"] == 0
    view = (await api.get(f"/v1/channels/{made['id']}")).json()
    assert view["status"] == "paused" and view["paused_reason"] == "every recipient unsubscribed"


async def test_a_pause_reason_is_scrubbed_before_it_is_stored_or_published(api):
    made = (await api.post("/v1/channels", json=wecom(api.branch))).json()
    typed = "群主换了，联系 138 1234 5678，身份证 640104199001018143"
    paused = (await api.post(f"/v1/channels/{made['id']}/pause", json={"reason": typed})).json()
    assert paused["paused_reason"] == "群主换了，联系 [phone]，身份证 [id-number]"
    conn = await asyncpg.connect(api.dsn)
    try:
        events = await conn.fetch("SELECT value FROM outbox WHERE event_type = 'changai.notifier.channel.paused.v1'")
        stored = await conn.fetchval("SELECT paused_reason FROM channels WHERE id = $1", uuid.UUID(made["id"]))
    finally:
        await conn.close()
    assert events and all(b"1234" not in bytes(e["value"]) and b"8143" not in bytes(e["value"]) for e in events)
    assert "[phone]" in stored and "5678" not in stored
