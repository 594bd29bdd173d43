"""The subsidy saga's batches on the real PostgreSQL: the consumer's handler (``on_sessions_completed``) takes a
partition's completions at once; each claim is decided as on its own, paid or rejected exactly once, and the
fund never goes below zero, also with batches and single grants racing on it."""
import asyncio
import uuid
from datetime import date

import asyncpg
import pytest

from funding_support import events_in_outbox, key, ledger_ok, open_fund
from services.funding import consumers, store
from shared.events import decode, envelope
from shared.events.envelope import trace_id_of
from shared.events.training import SessionCompleted

pytestmark = pytest.mark.integration

PAID_EVENTS = ["changai.funding.subsidy.claimed.v1", "changai.funding.subsidy.paid.v1"]
GRANT_EVENTS = ["changai.funding.grant.approved.v1", "changai.funding.disbursement.made.v1"]


def completed(organiser: str, on: date, persons: int, category="pre_job", session_id=None) -> SessionCompleted:
    return SessionCompleted(
        session_id=session_id or uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="电工岗前培训", number=2,
        organiser_id=organiser, organiser_kind="branch", organiser_name="某工会委员会",
        region_code="640104", city_code="640100", subsidy_category=category, person_times=persons,
        passed=persons, failed=0, eligible_member_ids=[uuid.uuid4() for _ in range(persons)],
        eligible_persons=persons, completed_on=on)


def item(data: SessionCompleted, event_id: str | None = None):
    return envelope(data, event_id=event_id), data


async def setup(client, year: int, amount: str, category="pre_job") -> tuple[dict, str]:
    fund = await open_fund(client, amount, "skills_account", year)
    resp = await client.put(f"/v1/subsidy-routes/{category}", json={"fund_id": fund["id"], "year": year},
                            headers=key())
    assert resp.status_code == 200, resp.text
    organiser = f"branch-{uuid.uuid4().hex[:8]}"
    resp = await client.put(f"/v1/beneficiaries/branch/{organiser}", json={"name": "某工会委员会",
                                                                           "region_code": "640104"}, headers=key())
    assert resp.status_code in (200, 201), resp.text
    return fund, organiser


async def claims_of(pool, sessions) -> dict:
    rows = await pool.fetch("SELECT * FROM subsidy_claims WHERE session_id = ANY($1::uuid[])",
                            [s.session_id for s in sessions])
    return {r["session_id"]: r for r in rows}


async def test_a_batch_decides_each_claim_in_order_once_and_its_redelivery_changes_nothing(funding):
    app, client, _ = funding
    pool = app.state.db
    fund, organiser = await setup(client, 2025, "6000.00")
    a = completed(organiser, date(2025, 3, 1), 3)  # 2,400.00
    stranger = completed(f"branch-{uuid.uuid4().hex[:8]}", date(2025, 3, 1), 2)
    a_again = completed(organiser, date(2025, 3, 1), 3, session_id=a.session_id)  # the session under another id
    d = completed(organiser, date(2025, 3, 2), 2)  # 1,600.00: 2,000.00 left
    e = completed(organiser, date(2025, 3, 3), 3)  # 2,400.00 > 2,000.00: rejected whole, nothing moves
    f = completed(organiser, date(2025, 3, 4), 2)  # 1,600.00 still fits: 400.00 left
    first = item(a)
    batch = [first, item(stranger), item(a_again), first, item(d), item(e), item(f)]

    outcomes = await consumers.on_sessions_completed(pool, batch)
    assert outcomes == ["paid", "rejected", "duplicate-session", "redelivery", "paid", "rejected", "paid"]
    claims = await claims_of(pool, [a, stranger, d, e, f])
    assert [(claims[s.session_id]["status"], claims[s.session_id]["reason"], claims[s.session_id]["amount_fen"])
            for s in (a, stranger, d, e, f)] == [
        ("paid", None, 240_000), ("rejected", "organiser_unknown", 160_000), ("paid", None, 160_000),
        ("rejected", "fund_exhausted", 240_000), ("paid", None, 160_000)]
    assert "2000.00" in claims[e.session_id]["detail"]  # the balance the claims before it left
    assert claims[a.session_id]["event_id"] == uuid.UUID(first[0].id)
    figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (figures["available"], figures["committed"], figures["disbursed"], figures["grants"]) == \
        ("400.00", "0.00", "5600.00", 3)
    for s in (a, d, f):
        claim = claims[s.session_id]
        assert await events_in_outbox(pool, str(claim["id"])) == PAID_EVENTS
        assert await events_in_outbox(pool, str(claim["grant_id"])) == GRANT_EVENTS
        grant = (await client.get(f"/v1/grants/{claim['grant_id']}")).json()
        assert (grant["amount"], grant["paid"], grant["status"], grant["claim_id"]) == \
            (f"{claim['amount_fen'] // 100}.00", f"{claim['amount_fen'] // 100}.00", "closed", str(claim["id"]))
        payments = (await client.get(f"/v1/grants/{claim['grant_id']}/disbursements")).json()["items"]
        assert [p["amount"] for p in payments] == [grant["amount"]]
    # Each claim's four events continue the trace of the completion they answer, each a valid CloudEvent.
    a_claim = claims[a.session_id]
    rows = await pool.fetch("SELECT value FROM outbox WHERE key = ANY($1::text[])",
                            [str(a_claim["id"]), str(a_claim["grant_id"])])
    assert len(rows) == 4
    assert {trace_id_of(decode(r["value"]).traceparent) for r in rows} == {trace_id_of(first[0].traceparent)}
    for s in (stranger, e):
        assert await events_in_outbox(pool, str(claims[s.session_id]["id"])) == [
            "changai.funding.subsidy.rejected.v1"]
    report = await ledger_ok(pool)

    outbox = await pool.fetchval("SELECT count(*) FROM outbox")
    assert await consumers.on_sessions_completed(pool, batch) == ["redelivery"] * len(batch)
    assert await consumers.on_sessions_completed(pool, [item(a_again)]) == ["duplicate-session"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == outbox
    assert (await client.get(f"/v1/funds/{fund['id']}")).json() == figures
    assert (await ledger_ok(pool))["entries"] == report["entries"]


async def test_a_batch_that_fails_midway_leaves_nothing_and_comes_again_whole(funding, monkeypatch):
    app, client, _ = funding
    pool = app.state.db
    fund, organiser = await setup(client, 2026, "10000.00")
    batch = [item(completed(organiser, date(2026, 4, 1), 2)) for _ in range(3)]
    entries = (await ledger_ok(pool))["entries"]

    def crash(*_args, **_kw):
        raise ConnectionResetError("the process died after the ledger was written")

    with monkeypatch.context() as m:
        m.setattr(store, "insert_claims", crash)  # the batch's last write
        with pytest.raises(ConnectionResetError):
            await consumers.on_sessions_completed(pool, batch)
    ids = [uuid.UUID(event.id) for event, _ in batch]
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", ids) == 0
    assert (await ledger_ok(pool))["entries"] == entries
    assert (await client.get(f"/v1/funds/{fund['id']}")).json()["available"] == "10000.00"

    assert await consumers.on_sessions_completed(pool, batch) == ["paid"] * 3
    assert await consumers.on_sessions_completed(pool, batch) == ["redelivery"] * 3
    assert (await client.get(f"/v1/funds/{fund['id']}")).json()["available"] == "5200.00"
    await ledger_ok(pool)


async def test_batches_and_single_grants_racing_on_two_funds_never_overdraw_nor_deadlock(funding):
    """Four batches at once, each with claims on two funds (two categories) paid to one organiser, while single
    grants are approved from the first fund over HTTP: each fund affords ten claims' worth, exactly ten are paid
    from each, the rest rejected, no account below zero, and no deadlock between them (one lock order)."""
    app, client, _ = funding
    pool = app.state.db
    resp = await client.put("/v1/subsidy-rules/skills_upgrade/2027-01-01", json={"rate": "800.00"}, headers=key())
    assert resp.status_code == 201, resp.text
    pre_job, organiser = await setup(client, 2027, "8000.00")
    upgrade = await open_fund(client, "8000.00", "skills_account", 2027)
    resp = await client.put("/v1/subsidy-routes/skills_upgrade", json={"fund_id": upgrade["id"], "year": 2027},
                            headers=key())
    assert resp.status_code == 200, resp.text
    batches = []
    for i in range(4):
        claims = [completed(organiser, date(2027, 5, 1), 1, category) for category in ("pre_job", "skills_upgrade")
                  for _ in range(4)]
        batches.append([item(c) for c in (claims if i % 2 else claims[::-1])])  # the funds in both orders

    async def grant() -> int:
        resp = await client.post("/v1/grants", json={
            "fund_id": pre_job["id"], "beneficiary_kind": "enterprise", "beneficiary_id": f"e-{uuid.uuid4().hex[:6]}",
            "beneficiary_name": "某企业", "purpose": "岗前培训", "amount": "800.00"}, headers=key())
        assert resp.status_code in (201, 409), resp.text
        return resp.status_code

    results = await asyncio.gather(*(consumers.on_sessions_completed(pool, b) for b in batches),
                                   *(grant() for _ in range(6)))
    outcomes = [o for r in results[:4] for o in r]
    granted = results[4:].count(201)
    assert outcomes.count("paid") + granted == 20 and outcomes.count("rejected") + results[4:].count(409) == 18
    for fund in (pre_job, upgrade):
        figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
        assert (figures["available"], figures["grants"]) == ("0.00", 10), figures
    reasons = await pool.fetch("SELECT DISTINCT reason FROM subsidy_claims WHERE status = 'rejected'"
                               " AND completed_on = '2027-05-01'")
    assert [r["reason"] for r in reasons] == ["fund_exhausted"]
    await ledger_ok(pool)


async def test_the_database_refuses_a_batch_of_entries_that_does_not_balance_or_crosses_funds(funding):
    """``post_entries`` holds every entry of a batch to ``post_entry``'s rules, whatever the service sends."""
    app, client, _ = funding
    one = await open_fund(client, "100.00", "skills_account", 2028)
    other = await open_fund(client, "100.00", "skills_account", 2028)
    source = await app.state.db.fetchval("SELECT id FROM accounts WHERE kind = 'source' AND source_kind = 'skills_account'")
    balanced = {"kind": "fund_topped_up", "fund_id": uuid.UUID(one["id"]), "grant_id": None, "reference": None,
                "memo": "t", "on": date(2028, 1, 1), "lines": [(source, -100), (one["account_id"], 100)]}
    async with app.state.db.acquire() as conn:
        for wrong, constraint in (
            ({**balanced, "lines": [(source, -100), (one["account_id"], 99)]}, "journal_entry_balanced"),
            ({**balanced, "lines": [(one["account_id"], 100)]}, "journal_entry_balanced"),
            ({**balanced, "lines": [(source, -100), (other["account_id"], 100)]}, "journal_entry_one_fund"),
            ({**balanced, "lines": [(one["account_id"], -20_000), (source, 20_000)]}, "account_no_overdraft"),
        ):
            with pytest.raises(asyncpg.CheckViolationError) as refused:
                async with conn.transaction():
                    await store.post_entries(conn, [balanced, wrong])
            assert refused.value.constraint_name == constraint
        async with conn.transaction():
            ids = await store.post_entries(conn, [balanced, balanced])
        assert len(set(ids)) == 2
    assert (await client.get(f"/v1/funds/{one['id']}")).json()["available"] == "102.00"
    await ledger_ok(app.state.db)
