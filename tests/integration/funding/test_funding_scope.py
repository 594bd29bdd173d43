"""Funding under the one region rule (issue 12, hole 1): a token scoped to 石嘴山市 (640200) neither sees nor
moves 银川市 (640100) money; region-wide settings need a region-level token with funding:admin; hostile inputs
are 4xx problems. Every case here was answered 2xx before the fix."""
import uuid
from datetime import date

import orjson
import pytest

from funding_support import approve, key, ledger_ok, open_fund
from services.funding import usecases
from shared.auth import mint_token
from shared.clock import today_cn
from shared.events.training import SessionCompleted

pytestmark = pytest.mark.integration


def bearer(region: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(f"t-{region}", list(scopes or ("funding:write", "funding:read")),
                                                    region)}


SHIZUISHAN = bearer("640200")                                                         # 石嘴山市
SHIZUISHAN_ADMIN = bearer("640200", "funding:write", "funding:read", "funding:admin")
YINCHUAN = bearer("640100")                                                           # 银川市
XINGQING = bearer("640104")                                                           # 银川市兴庆区
ROOT_NO_ADMIN = bearer("640000")                                                      # the region, without admin


async def yinchuan_grant(client, amount="1000.00") -> tuple[dict, dict, str]:
    """A fund (root admin), a payee registered in 兴庆区 and a grant to it there."""
    fund = await open_fund(client, "100000.00")
    payee = f"branch-{uuid.uuid4().hex[:8]}"
    resp = await client.put(f"/v1/beneficiaries/branch/{payee}", json={"name": "兴庆区某企业工会", "region_code": "640104"},
                            headers=key())
    assert resp.status_code == 201, resp.text
    grant = await approve(client, fund["id"], amount, kind="branch", bid=payee, name="兴庆区某企业工会",
                          region="640104")
    return fund, grant, payee


async def outbox_data(pool, subject: str, event_type: str) -> list[dict]:
    rows = await pool.fetch("SELECT value FROM outbox WHERE key = $1 AND event_type = $2 ORDER BY seq",
                            subject, event_type)
    return [orjson.loads(r["value"])["data"] for r in rows]


async def test_another_city_can_neither_pay_from_nor_revoke_a_grant_and_is_told_it_does_not_exist(funding):
    app, client, _ = funding
    _, grant, _ = await yinchuan_grant(client)
    for path, body in ((f"/v1/grants/{grant['id']}/disbursements", {"amount": "100.00"}),
                       (f"/v1/grants/{grant['id']}/revoke", {})):
        resp = await client.post(path, json=body, headers={**SHIZUISHAN, **key()})
        assert resp.status_code == 404 and resp.json()["type"].endswith("/not-found"), (path, resp.text)
    after = (await client.get(f"/v1/grants/{grant['id']}")).json()
    assert (after["paid"], after["remaining"], after["status"]) == ("0.00", "1000.00", "open")
    # The grant's own county, and the city above it, may.
    paid = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "100.00"},
                             headers={**XINGQING, **key()})
    assert paid.status_code == 201, paid.text
    revoked = await client.post(f"/v1/grants/{grant['id']}/revoke", json={}, headers={**YINCHUAN, **key()})
    assert revoked.status_code == 200 and revoked.json()["released_now"] == "900.00"
    await ledger_ok(app.state.db)


async def test_a_grant_that_leaves_out_its_region_takes_the_callers_never_the_whole_province(funding):
    app, client, _ = funding
    fund, _, yinchuan_payee = await yinchuan_grant(client)
    body = {"fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": yinchuan_payee,
            "beneficiary_name": "兴庆区某企业工会", "purpose": "by leaving region_code out", "amount": "50.00"}
    # A Yinchuan payee, region left out: the payee is out of the caller's scope, so it does not exist for it.
    resp = await client.post("/v1/grants", json=body, headers={**SHIZUISHAN, **key()})
    assert resp.status_code == 404, resp.text
    # Naming a Yinchuan region: 403.
    named = await client.post("/v1/grants", json={**body, "beneficiary_id": "new-one", "region_code": "640104"},
                              headers={**SHIZUISHAN, **key()})
    assert named.status_code == 403 and named.json()["type"].endswith("/out-of-scope"), named.text
    # A payee of its own, region left out: the caller's region, and the payee registered there.
    own = await client.post("/v1/grants", headers={**SHIZUISHAN, **key()},
                            json={**body, "beneficiary_id": f"szs-{uuid.uuid4().hex[:6]}", "beneficiary_name": "石嘴山工会"})
    assert own.status_code == 201 and own.json()["region_code"] == "640200", own.text
    payee = (await client.get(f"/v1/beneficiaries/branch/{own.json()['beneficiary']['id']}", headers=SHIZUISHAN)).json()
    assert payee["region_code"] == "640200"
    # A Yinchuan grant left without a region by a 兴庆区 token: the payee's region.
    county = await client.post("/v1/grants", json=body, headers={**XINGQING, **key()})
    assert county.status_code == 201 and county.json()["region_code"] == "640104", county.text
    grants = await app.state.db.fetchval("SELECT count(*) FROM grants WHERE fund_id = $1", uuid.UUID(fund["id"]))
    assert grants == 3  # the Yinchuan one, 石嘴山's own, 兴庆区's: nothing from the refused attempts
    await ledger_ok(app.state.db)


async def test_another_city_cannot_rename_or_read_a_payee(funding):
    _, client, _ = funding
    _, _, payee = await yinchuan_grant(client)
    renamed = await client.put(f"/v1/beneficiaries/branch/{payee}", json={"name": "改名"},
                               headers={**SHIZUISHAN, **key()})
    assert renamed.status_code == 404, renamed.text
    assert (await client.get(f"/v1/beneficiaries/branch/{payee}", headers=SHIZUISHAN)).status_code == 404
    assert (await client.get(f"/v1/beneficiaries/branch/{payee}")).json()["name"] == "兴庆区某企业工会"
    elsewhere = await client.put(f"/v1/beneficiaries/branch/{uuid.uuid4().hex}", json={"name": "某工会", "region_code": "640104"},
                                 headers={**SHIZUISHAN, **key()})
    assert elsewhere.status_code == 403, elsewhere.text
    mine = await client.put(f"/v1/beneficiaries/branch/{uuid.uuid4().hex}", json={"name": "石嘴山某工会"},
                            headers={**SHIZUISHAN, **key()})
    assert mine.status_code == 201 and mine.json()["region_code"] == "640200", mine.text
    listed = (await client.get("/v1/reports/beneficiaries", params={"limit": 200}, headers=SHIZUISHAN)).json()
    assert listed["items"] and {b["region_code"] for b in listed["items"]} == {"640200"}


@pytest.mark.parametrize("headers, kind", [(SHIZUISHAN, "insufficient-scope"), (SHIZUISHAN_ADMIN, "out-of-scope"),
                                           (ROOT_NO_ADMIN, "insufficient-scope")],
                         ids=["city", "city-with-admin", "region-without-admin"])
async def test_region_wide_settings_need_a_region_level_token_with_funding_admin(funding, headers, kind):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00")
    attempts = [
        ("POST", "/v1/funds", {"name": "a city's fund", "source_kind": "union_funds", "fiscal_year": 2021,
                               "amount": "1.00"}),
        ("POST", f"/v1/funds/{fund['id']}/top-ups", {"amount": "1000000.00"}),
        ("POST", f"/v1/funds/{fund['id']}/close", {}),
        ("PUT", "/v1/subsidy-rules/pre_job/2099-01-01", {"rate": "99999.00"}),
        ("DELETE", "/v1/subsidy-rules/pre_job/2021-01-01", None),
        ("PUT", "/v1/subsidy-routes/pre_job", {"fund_id": fund["id"], "year": None}),
    ]
    for method, path, body in attempts:
        resp = await client.request(method, path, json=body, headers={**headers, **key()})
        assert resp.status_code == 403 and resp.json()["type"].endswith("/" + kind), (method, path, resp.text)
    assert (await client.get(f"/v1/funds/{fund['id']}")).json()["total"] == "1000.00"
    db = app.state.db
    assert not await db.fetchval("SELECT EXISTS (SELECT 1 FROM subsidy_rules WHERE effective_from = '2099-01-01')")
    assert await db.fetchval("SELECT count(*) FROM subsidy_routes WHERE fund_id = $1", uuid.UUID(fund["id"])) == 0
    assert not await db.fetchval("SELECT EXISTS (SELECT 1 FROM funds WHERE name = 'a city''s fund')")


async def test_reads_are_cut_to_the_callers_region(funding):
    app, client, _ = funding
    fund, grant, payee = await yinchuan_grant(client)
    assert (await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "10.00"},
                              headers=key())).status_code == 201
    for path in (f"/v1/grants/{grant['id']}", f"/v1/grants/{grant['id']}/disbursements",
                 f"/v1/accounts/{grant['account_id']}/journal", f"/v1/accounts/{fund['account_id']}/journal"):
        resp = await client.get(path, headers=SHIZUISHAN)
        assert resp.status_code == 404, (path, resp.text)
    payee_account = (await client.get(f"/v1/beneficiaries/branch/{payee}")).json()["account_id"]
    assert (await client.get(f"/v1/accounts/{payee_account}/journal", headers=SHIZUISHAN)).status_code == 404
    assert (await client.get(f"/v1/accounts/{payee_account}/journal", headers=YINCHUAN)).status_code == 200
    # The grant's city sees the grant and its payee's journal, not the federation's fund account.
    assert (await client.get(f"/v1/grants/{grant['id']}", headers=YINCHUAN)).status_code == 200
    assert (await client.get(f"/v1/accounts/{fund['account_id']}/journal", headers=YINCHUAN)).status_code == 404
    assert (await client.get(f"/v1/accounts/{fund['account_id']}/journal")).status_code == 200
    assert (await client.get("/v1/ledger/check", headers=YINCHUAN)).status_code == 403

    mine = await approve(client, fund["id"], "5.00", region="640205")  # 惠农区, in 石嘴山
    listed = (await client.get("/v1/grants", params={"fund_id": fund["id"]}, headers=SHIZUISHAN)).json()
    assert [g["id"] for g in listed["items"]] == [mine["id"]]
    above = (await client.get("/v1/grants", params={"fund_id": fund["id"], "region": "640000"},
                              headers=SHIZUISHAN)).json()
    assert [g["id"] for g in above["items"]] == [mine["id"]]  # a region above the scope narrows to it
    beside = await client.get("/v1/grants", params={"region": "640104"}, headers=SHIZUISHAN)
    assert beside.status_code == 403
    everything = (await client.get("/v1/grants", params={"fund_id": fund["id"]})).json()
    assert {g["id"] for g in everything["items"]} == {grant["id"], mine["id"]}


async def test_claims_of_another_city_are_not_found_listed_or_retried(funding):
    app, client, _ = funding
    data = SessionCompleted(
        session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="电工岗前培训", number=1,
        organiser_id=f"branch-{uuid.uuid4().hex[:8]}", organiser_kind="branch", organiser_name="兴庆区某工会",
        region_code="640104", city_code="640100", subsidy_category="pre_job", person_times=2, passed=2, failed=0,
        eligible_member_ids=[uuid.uuid4(), uuid.uuid4()], eligible_persons=2, completed_on=date(2021, 3, 1))
    async with app.state.db.acquire() as conn, conn.transaction():
        claim = await usecases.claim_subsidy(conn, uuid.uuid4(), data, today_cn())
    assert claim["status"] == "rejected"  # no route, unknown organiser: it waits for a retry
    assert (await client.get(f"/v1/subsidy-claims/{claim['id']}", headers=SHIZUISHAN)).status_code == 404
    assert (await client.post(f"/v1/subsidy-claims/{claim['id']}/retry", headers={**SHIZUISHAN, **key()})
            ).status_code == 404
    listed = (await client.get("/v1/subsidy-claims", params={"session_id": str(data.session_id)},
                               headers=SHIZUISHAN)).json()
    assert listed["items"] == []
    own = (await client.get("/v1/subsidy-claims", params={"session_id": str(data.session_id)},
                            headers=YINCHUAN)).json()
    assert [c["id"] for c in own["items"]] == [str(claim["id"])]
    assert (await client.post(f"/v1/subsidy-claims/{claim['id']}/retry", headers={**XINGQING, **key()})
            ).status_code == 200


async def test_events_of_a_payment_carry_the_grants_region(funding):
    """Issue 15, item 3: a federation's channel routes money by region, so disbursement.made has one."""
    app, client, _ = funding
    fund, grant, _ = await yinchuan_grant(client)
    assert (await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "1.00"},
                              headers=key())).status_code == 201
    assert (await client.post(f"/v1/grants/{grant['id']}/revoke", headers=key())).status_code == 200
    pool = app.state.db
    for event_type in ("changai.funding.grant.approved.v1", "changai.funding.disbursement.made.v1",
                       "changai.funding.grant.revoked.v1"):
        assert [d["region_code"] for d in await outbox_data(pool, grant["id"], event_type)] == ["640104"], event_type
    opened = await outbox_data(pool, fund["id"], "changai.funding.fund.opened.v1")
    assert [d["region_code"] for d in opened] == ["640000"]


@pytest.mark.parametrize("method, path, body, status", [
    ("PUT", "/v1/beneficiaries/branch/a%00b", {"name": "某工会"}, 422),
    ("GET", "/v1/beneficiaries/branch/a%00b", None, 422),
    ("PUT", "/v1/beneficiaries/branch/ok-id", {"name": "某\u0000工会"}, 422),
    ("GET", "/v1/grants?beneficiary_id=a%00b", None, 422),
    ("GET", "/v1/subsidy-claims?organiser_id=a%00b", None, 422),
    ("GET", "/v1/accounts/99999999999999999999/journal", None, 422),
    ("GET", "/v1/accounts/1/journal?cursor=OTk5OTk5OTk5OTk5OTk5OTk5OTk5", None, 400),  # 99999999999999999999999
    ("GET", "/v1/grants?cursor=not-ours", None, 400),
    ("GET", "/v1/grants?limit=201", None, 422),
    ("GET", "/v1/subsidy-claims?offset=99999999999999999999", None, 200),  # offsets are gone: ignored
])
async def test_hostile_ids_names_and_numbers_are_4xx_problems(funding, method, path, body, status):
    _, client, _ = funding
    resp = await client.request(method, path, json=body, headers=key())
    assert resp.status_code == status, resp.text
    if status >= 400:
        assert resp.headers["content-type"] == "application/problem+json"


async def test_an_amount_with_a_trailing_newline_is_refused(funding):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00")
    grant = await approve(client, fund["id"], "900.00")
    for path, body in ((f"/v1/grants/{grant['id']}/disbursements", {"amount": "800.00\n"}),
                       (f"/v1/funds/{fund['id']}/top-ups", {"amount": "800.00\n"}),
                       ("/v1/subsidy-rules/new_form/2030-01-01", {"rate": "800.00\n"})):
        resp = await client.request("PUT" if "rules" in path else "POST", path, json=body, headers=key())
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] in ("amount", "rate"), (path, resp.text)
    assert (await client.get(f"/v1/grants/{grant['id']}")).json()["paid"] == "0.00"
