"""Funds, grants and disbursements on the real PostgreSQL: exact under concurrency, never paid twice."""
import asyncio
import random
import uuid

import asyncpg
import pytest

from funding_support import approve, events_in_outbox, key, ledger_ok, open_fund

pytestmark = pytest.mark.integration


async def test_fund_grant_disburse_revoke_close_keeps_the_ledger_sound(funding):
    app, client, dsn = funding
    pool = app.state.db
    fund = await open_fund(client, "280000000.00", "central_budget", name="中央预算内产教融合资金")
    assert (fund["total"], fund["available"], fund["committed"], fund["disbursed"]) == \
        ("280000000.00", "280000000.00", "0.00", "0.00")
    await ledger_ok(pool)

    grant = await approve(client, fund["id"], "23333333.33", kind="project", name="产教融合项目一", region="640104")
    assert (grant["amount"], grant["remaining"], grant["status"]) == ("23333333.33", "23333333.33", "open")
    await ledger_ok(pool)

    paid = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "10000000.00"}, headers=key())
    assert paid.status_code == 201, paid.text
    assert (paid.json()["grant_remaining"], paid.json()["grant_status"]) == ("13333333.33", "open")
    await ledger_ok(pool)

    topped = await client.post(f"/v1/funds/{fund['id']}/top-ups", json={"amount": "0.67"}, headers=key())
    assert topped.status_code == 200 and topped.json()["total"] == "280000000.67"
    await ledger_ok(pool)

    refused = await client.post(f"/v1/funds/{fund['id']}/close", headers=key())
    assert refused.status_code == 409 and refused.json()["committed"] == "13333333.33"

    revoked = await client.post(f"/v1/grants/{grant['id']}/revoke", json={"reason": "project cancelled"},
                                headers=key())
    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["status"], revoked.json()["released_now"], revoked.json()["paid"]) == \
        ("revoked", "13333333.33", "10000000.00")
    await ledger_ok(pool)
    again = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "1.00"}, headers=key())
    assert again.status_code == 409 and again.json()["type"].endswith("/grant-not-open")

    figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (figures["total"], figures["available"], figures["committed"], figures["disbursed"],
            figures["allocated"]) == ("280000000.67", "270000000.67", "0.00", "10000000.00", "10000000.00")

    closed = await client.post(f"/v1/funds/{fund['id']}/close", json={"reason": "fiscal year over"}, headers=key())
    assert closed.status_code == 200, closed.text
    assert (closed.json()["status"], closed.json()["returned"], closed.json()["total"], closed.json()["available"]) == \
        ("closed", "270000000.67", "10000000.00", "0.00")
    await ledger_ok(pool)
    for path, body in ((f"/v1/funds/{fund['id']}/top-ups", {"amount": "1.00"}),
                       ("/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "project", "beneficiary_id": "p",
                                       "beneficiary_name": "pp", "purpose": "late", "amount": "1.00"})):
        late = await client.post(path, json=body, headers=key())
        assert late.status_code == 409 and late.json()["type"].endswith("/fund-closed"), late.text

    assert await events_in_outbox(pool, fund["id"]) == [
        "changai.funding.fund.opened.v1", "changai.funding.fund.topped_up.v1", "changai.funding.fund.closed.v1"]
    assert await events_in_outbox(pool, grant["id"]) == [
        "changai.funding.grant.approved.v1", "changai.funding.disbursement.made.v1", "changai.funding.grant.revoked.v1"]

    journal = (await client.get(f"/v1/accounts/{fund['account_id']}/journal")).json()
    assert [(l["kind"], l["amount"], l["balance_after"]) for l in journal["items"]] == [
        ("fund_opened", "280000000.00", "280000000.00"), ("grant_approved", "-23333333.33", "256666666.67"),
        ("fund_topped_up", "0.67", "256666667.34"), ("grant_revoked", "13333333.33", "270000000.67"),
        ("fund_closed", "-270000000.67", "0.00")]
    assert journal["account"]["balance"] == "0.00"


async def test_fifty_concurrent_disbursements_against_a_grant_that_affords_ten(funding):
    app, client, _ = funding
    fund = await open_fund(client, "5000.00")
    grant = await approve(client, fund["id"], "1050.00")  # ten payments of 100.00, and 50.00 left over

    async def pay():
        return await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "100.00"}, headers=key())

    responses = await asyncio.gather(*(pay() for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 10 and statuses.count(409) == 40, statuses
    for r in responses:
        if r.status_code == 409:
            body = r.json()
            assert body["type"].endswith("/insufficient-funds") and body["account"] == "grant"
            assert (body["balance"], body["requested"]) == ("50.00", "100.00")
            assert r.headers["content-type"] == "application/problem+json"
    after = (await client.get(f"/v1/grants/{grant['id']}")).json()
    assert (after["paid"], after["remaining"], after["status"]) == ("1000.00", "50.00", "open")
    rows = await app.state.db.fetchval("SELECT count(*) FROM disbursements WHERE grant_id = $1", uuid.UUID(grant["id"]))
    assert rows == 10
    await ledger_ok(app.state.db)


async def test_fifty_concurrent_grants_against_a_fund_that_affords_ten(funding):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00")

    async def grant():
        return await client.post("/v1/grants", headers=key(), json={
            "fund_id": fund["id"], "beneficiary_kind": "training_base", "beneficiary_id": f"tb-{uuid.uuid4().hex[:6]}",
            "beneficiary_name": "高技能人才培训基地", "purpose": "training base", "amount": "99.00"})

    responses = await asyncio.gather(*(grant() for _ in range(50)))
    assert sum(r.status_code == 201 for r in responses) == 10
    refused = [r.json() for r in responses if r.status_code != 201]
    assert len(refused) == 40 and {(b["status"], b["account"], b["balance"]) for b in refused} == {(409, "fund", "10.00")}
    figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (figures["available"], figures["committed"]) == ("10.00", "990.00")
    await ledger_ok(app.state.db)


async def test_the_same_idempotency_key_twenty_times_at_once_pays_once(funding):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00")
    grant = await approve(client, fund["id"], "1000.00")
    headers = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}

    responses = await asyncio.gather(*(
        client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "300.00"}, headers=headers)
        for _ in range(20)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    after = (await client.get(f"/v1/grants/{grant['id']}")).json()
    assert (after["paid"], after["remaining"]) == ("300.00", "700.00")
    assert len((await client.get(f"/v1/grants/{grant['id']}/disbursements")).json()["items"]) == 1
    assert (await events_in_outbox(app.state.db, grant["id"])).count("changai.funding.disbursement.made.v1") == 1

    other = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "301.00"}, headers=headers)
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key-reused")
    await ledger_ok(app.state.db)


@pytest.mark.parametrize("amount", [300, 300.5, 0.1, "300.001", "-5.00", "1,000.00", "３００"])
async def test_floats_numbers_and_more_than_two_decimals_are_refused(funding, amount):
    app, client, _ = funding
    fund = await open_fund(client, "1000.00")
    grant = await approve(client, fund["id"], "500.00")
    entries = await app.state.db.fetchval("SELECT count(*) FROM journal_entries")
    attempts = [
        ("/v1/funds", {"name": "float fund", "source_kind": "union_funds", "fiscal_year": 2021, "amount": amount}),
        (f"/v1/funds/{fund['id']}/top-ups", {"amount": amount}),
        ("/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "studio", "beneficiary_id": "s",
                        "beneficiary_name": "ss", "purpose": "studio", "amount": amount}),
        (f"/v1/grants/{grant['id']}/disbursements", {"amount": amount}),
    ]
    for path, body in attempts:
        resp = await client.post(path, json=body, headers=key())
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["type"].endswith("/validation-error")
        assert any(e["field"] == "amount" for e in resp.json()["errors"])
    rule = await client.put("/v1/subsidy-rules/new_form/2021-01-01", json={"rate": amount}, headers=key())
    assert rule.status_code == 422
    assert await app.state.db.fetchval("SELECT count(*) FROM journal_entries") == entries
    assert await app.state.db.fetchval("SELECT count(*) FROM subsidy_rules WHERE category = 'new_form'") == 0


async def test_the_database_itself_refuses_unbalanced_entries_overdrafts_and_edits(funding):
    app, client, _ = funding
    fund = await open_fund(client, "100.00")
    grant = await approve(client, fund["id"], "60.00")
    fid = uuid.UUID(fund["id"])
    async with app.state.db.acquire() as conn:
        source = await conn.fetchval("SELECT id FROM accounts WHERE kind = 'source' AND source_kind = 'skills_account'")
        post = "SELECT post_entry('fund_topped_up', $1, NULL, NULL, 'x', current_date, $2::bigint[], $3::bigint[])"
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.fetchval(post, fid, [source, fund["account_id"]], [-100, 99])
        with pytest.raises(asyncpg.CheckViolationError) as overdraft:  # 40.00 is available, 40.01 asked
            await conn.fetchval(post.replace("fund_topped_up", "grant_approved"), fid,
                                [fund["account_id"], grant["account_id"]], [-4001, 4001])
        assert overdraft.value.constraint_name == "account_no_overdraft"
        with pytest.raises(asyncpg.CheckViolationError, match="another fund"):
            other = await open_fund(client, "1.00")
            await conn.fetchval(post, fid, [source, other["account_id"]], [-1, 1])
        # Lines written around post_entry are still held to balance, at commit.
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                entry = await conn.fetchval(
                    "INSERT INTO journal_entries (kind, fund_id, effective_on) VALUES ('fund_topped_up', $1, "
                    "current_date) RETURNING id", fid)
                await conn.execute("INSERT INTO journal_lines (entry_id, account_id, amount) VALUES ($1, $2, 500)",
                                   entry, fund["account_id"])
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE journal_lines SET amount = amount * 2")
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("DELETE FROM journal_entries")
    await ledger_ok(app.state.db)


async def test_reports_per_fund_source_and_beneficiary(funding):
    app, client, _ = funding
    year = 2031  # a fiscal year no other test of this module uses
    central = await open_fund(client, "280000000.00", "central_budget", year)
    regional = await open_fund(client, "46000000.00", "regional_budget", year)
    studio_id = f"studio-{uuid.uuid4().hex[:6]}"
    g1 = await approve(client, central["id"], "100000.00", kind="studio", bid=studio_id, name="创新工作室甲")
    g2 = await approve(client, regional["id"], "50000.00", kind="studio", bid=studio_id, name="创新工作室甲")
    assert (await client.post(f"/v1/grants/{g1['id']}/disbursements", json={"amount": "100000.00"},
                              headers=key())).status_code == 201
    assert (await client.post(f"/v1/grants/{g2['id']}/disbursements", json={"amount": "20000.00"},
                              headers=key())).status_code == 201

    report = (await client.get("/v1/reports/funds", params={"fiscal_year": year})).json()
    assert report["totals"] == {"funds": 2, "total": "326000000.00", "allocated": "150000.00", "committed": "30000.00",
                                "disbursed": "120000.00", "remaining": "325850000.00"}
    sources = {(s["source_kind"], s["fiscal_year"]): s for s in (await client.get("/v1/reports/sources")).json()["items"]}
    assert sources[("central_budget", year)] == {"source_kind": "central_budget", "fiscal_year": year, "funds": 1,
                                                 "total": "280000000.00", "allocated": "100000.00",
                                                 "committed": "0.00", "disbursed": "100000.00",
                                                 "remaining": "279900000.00"}
    studio = (await client.get(f"/v1/beneficiaries/studio/{studio_id}")).json()
    assert (studio["grants"], studio["granted"], studio["outstanding"], studio["disbursed"]) == \
        (2, "150000.00", "30000.00", "120000.00")
    listed = (await client.get("/v1/reports/beneficiaries", params={"kind": "studio"})).json()["items"]
    assert any(b["id"] == studio_id and b["disbursed"] == "120000.00" for b in listed)
    journal = (await client.get(f"/v1/accounts/{studio['account_id']}/journal", params={"limit": 1})).json()
    assert [l["amount"] for l in journal["items"]] == ["100000.00"] and journal["next_cursor"]
    rest = (await client.get(f"/v1/accounts/{studio['account_id']}/journal",
                             params={"cursor": journal["next_cursor"]})).json()
    assert [(l["amount"], l["balance_after"]) for l in rest["items"]] == [("20000.00", "120000.00")]
    assert rest["next_cursor"] is None and rest["items"][0]["counterparts"] == [{"account_id": g2["account_id"], "amount": "-20000.00"}]
    check = (await client.get("/v1/ledger/check")).json()
    assert check["ok"] and check["violations"] == []


async def test_reads_need_a_token_and_unknown_ids_are_404(funding):
    _, client, _ = funding
    assert (await client.get("/v1/funds", headers={"Authorization": ""})).status_code == 401
    missing = await client.get(f"/v1/grants/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert (await client.post(f"/v1/grants/{uuid.uuid4()}/disbursements", json={"amount": "1.00"},
                              headers=key())).status_code == 404
    bad_fund = await client.post("/v1/grants", headers=key(), json={
        "fund_id": str(uuid.uuid4()), "beneficiary_kind": "studio", "beneficiary_id": "s", "beneficiary_name": "ss",
        "purpose": "none", "amount": "1.00"})
    assert bad_fund.status_code == 422 and bad_fund.json()["errors"][0]["field"] == "fund_id"


async def test_mixed_concurrent_operations_on_one_fund_never_deadlock_or_fail(funding):
    """Payments, approvals, revocations and top-ups on one fund at once: only 2xx/409, never a 500.

    (Row locks must not fight the foreign-key checks: a payment's journal entry refers to the
    fund while a revocation holds the fund and waits for the grant.)"""
    app, client, _ = funding
    for _ in range(3):
        fund = await open_fund(client, "10000.00")
        grants = [await approve(client, fund["id"], "500.00") for _ in range(8)]

        async def pay(g):
            return await client.post(f"/v1/grants/{g['id']}/disbursements", json={"amount": "60.00"}, headers=key())

        async def revoke(g):
            return await client.post(f"/v1/grants/{g['id']}/revoke", headers=key())

        async def grant():
            return await client.post("/v1/grants", headers=key(), json={
                "fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": "busy-branch",
                "beneficiary_name": "busy branch", "purpose": "mixed", "amount": "700.00"})

        async def top_up():
            return await client.post(f"/v1/funds/{fund['id']}/top-ups", json={"amount": "100.00"}, headers=key())

        jobs = [pay(g) if n % 3 else revoke(g) for g in grants for n in range(6)] + \
            [grant() for _ in range(8)] + [top_up() for _ in range(5)]
        random.shuffle(jobs)
        responses = await asyncio.gather(*jobs)
        assert all(r.status_code in (200, 201, 409) for r in responses), \
            [(r.status_code, r.text[:200]) for r in responses if r.status_code not in (200, 201, 409)]
        await ledger_ok(app.state.db)


async def test_lists_page_by_cursor_without_gaps_or_repeats(funding):
    _, client, _ = funding
    fund = await open_fund(client, "1000.00")
    made = [(await approve(client, fund["id"], "10.00"))["id"] for _ in range(5)]
    for _ in range(3):
        assert (await client.post(f"/v1/grants/{made[0]}/disbursements", json={"amount": "1.00"},
                                  headers=key())).status_code == 201

    async def walk(path, **params):
        seen, cursor = [], None
        while True:
            body = (await client.get(path, params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            assert len(body["items"]) <= 2
            seen += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen

    assert [g["id"] for g in await walk("/v1/grants", fund_id=fund["id"])] == made
    paid = await walk(f"/v1/grants/{made[0]}/disbursements")
    assert len({p["id"] for p in paid}) == 3 and [p["entry_id"] for p in paid] == sorted(p["entry_id"] for p in paid)
    funds = await walk("/v1/funds")
    assert len({f["id"] for f in funds}) == len(funds) and fund["id"] in {f["id"] for f in funds}
    rules = await walk("/v1/subsidy-rules")
    assert [(r["category"], r["effective_from"]) for r in rules] == sorted((r["category"], r["effective_from"])
                                                                          for r in rules)
