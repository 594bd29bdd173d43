"""Upstream events that reach training and funding, over the real Kafka and PostgreSQL.

* ``training.provider.attendance.recorded.v1``: a training provider's report that a trainee attended. The
  member is a real membership member (joined through membership's API): membership publishes its lookup
  hash on member.joined, training's read model keeps it, and the intake's command names the trainee by
  the same hash. Training applies it with its attendance use case and the source hears the answer.
* ``finance.payment.settled.v1``: a finance system's report that a disbursement was paid out; funding
  settles it with its settle use case (amount to the fen, once).

Each: applied and answered; a redelivery is a duplicate and changes nothing; a source whose region scope
does not cover the session or the disbursement is answered with the owning service's 404 (the one region
rule), and so is an unknown trainee or disbursement.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from shared.consumer import wait_assigned
from tests.integration.funding.funding_support import approve, open_fund, running_funding
from tests.integration.funding.funding_support import key as funding_key
from tests.integration.intake.intake_support import ADMIN, decided, emitter, send_binary, structured
from tests.integration.membership.membership_support import unique_id_number
from tests.integration.training.training_support import (
    position_group_at_end,
    programme,
    running_training,
    session,
    wait_for,
)

pytestmark = pytest.mark.integration

ATTENDANCE = "training.provider.attendance.recorded.v1"
SETTLED = "finance.payment.settled.v1"


async def offsets_answered(bootstrap: str, attempts: int = 3) -> None:
    """A fresh broker under load may time out the first offsets request (40 s) of a module that runs first:
    ask again, at most ``attempts`` times, before the training fixture asks for them."""
    for attempt in range(attempts):
        try:
            await position_group_at_end(bootstrap, f"intake-tests-warm-{uuid.uuid4().hex[:8]}")
            return
        except KafkaError:
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="module")
async def training(stack, make_database, intake):
    dsn = await make_database("training")
    await offsets_answered(stack.bootstrap)
    async with running_training(stack, dsn) as (app, client):
        await wait_assigned(app.state.commands)
        yield app, client


@pytest.fixture(scope="module")
async def funding(stack, make_database, intake):
    dsn = await make_database("funding")
    async with running_funding(stack, dsn) as (app, client):
        await wait_assigned(app.state.commands)
        yield app, client, dsn


async def register(client, kind: str, event_type: str, region: str) -> tuple[str, dict]:
    client_id = f"{kind}-{uuid.uuid4().hex[:8]}"
    source = f"urn:changai:test:{kind}:{client_id}"
    r = await client.post("/v1/sources", headers=ADMIN, json={
        "source": source, "name": f"{kind} system", "region_code": region, "event_types": [event_type],
        "client_id": client_id})
    assert r.status_code == 201, r.text
    return source, emitter(client_id, region)


async def answered(client, event: dict, token: dict) -> dict:
    r = await send_binary(client, event, token)
    assert r.status_code == 202, r.text
    return await decided(client, event, token)


def attended(session_id: str, number: str, day: str = "2024-05-02") -> dict:
    return {"session_id": session_id, "learner_ref": f"L{uuid.uuid4().hex[:6]}", "id_number": number,
            "attended_on": day, "minutes": 180}


async def test_a_providers_attendance_report_is_applied_by_training_once_within_its_region(
        intake, membership, training):
    _, client, _ = intake
    app, training_client = training
    branch = await membership.branch("640104")
    number = unique_id_number()
    member = await membership.member(branch["id"], number=number, joined_on="2024-04-01")
    member_id = uuid.UUID(member["id"])
    # membership's member.joined (with its lookup hash) reaches training's read model
    await wait_for(lambda: app.state.db.fetchval(
        "SELECT id_hash IS NOT NULL FROM members WHERE id = $1", member_id), timeout=60)
    prog = await programme(training_client)
    s = await session(training_client, prog["id"], branch["id"], starts_on="2024-05-01", ends_on="2024-05-20")
    r = await training_client.post(f"/v1/sessions/{s['id']}/enrolments", json={"member_id": str(member_id)},
                                   headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    enrolment_id = uuid.UUID(r.json()["id"])

    source, token = await register(client, "provider", ATTENDANCE, "640104")
    first = structured(source, ATTENDANCE, attended(s["id"], number))
    answer = await answered(client, first, token)
    assert answer["status"] == "applied" and answer["member_id"] == str(member_id), answer
    row = await app.state.db.fetchrow("SELECT status, attended_at FROM enrolments WHERE id = $1", enrolment_id)
    assert row["status"] == "attended"
    assert await app.state.db.fetchval("SELECT status FROM sessions WHERE id = $1", uuid.UUID(s["id"])) \
        == "in_progress"  # started by the provider's first report, as a roster's would

    again = await send_binary(client, first, token)  # a redelivery: the same (source, id)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    next_day = structured(source, ATTENDANCE, attended(s["id"], number, "2024-05-03"))
    assert (await answered(client, next_day, token))["status"] == "applied"  # attended already: no change
    assert await app.state.db.fetchval("SELECT attended_at FROM enrolments WHERE id = $1", enrolment_id) \
        == row["attended_at"]
    attended_events = await app.state.db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'changai.training.enrolment.attended.v1' AND key = $1",
        str(enrolment_id))
    assert attended_events == 1

    stranger = structured(source, ATTENDANCE, attended(s["id"], unique_id_number()))
    refused = await answered(client, stranger, token)
    assert refused["status"] == "rejected" and refused["problem"]["type"].endswith("/unknown-trainee"), refused

    elsewhere, far = await register(client, "provider", ATTENDANCE, "640205")  # another city's provider
    out = structured(elsewhere, ATTENDANCE, attended(s["id"], number, "2024-05-04"))
    refused = await answered(client, out, far)
    assert refused["status"] == "rejected" and refused["problem"]["status"] == 404, refused

    conn = await asyncpg.connect(intake[2])
    try:  # the ID number is nowhere in the intake's tables, nor in training's outbox
        assert number not in await conn.fetchval("SELECT string_agg(t::text, '') FROM intake_events t")
        assert number not in await conn.fetchval("SELECT string_agg(convert_from(value, 'UTF8'), '') FROM outbox")
    finally:
        await conn.close()
    assert number not in await app.state.db.fetchval("SELECT string_agg(convert_from(value, 'UTF8'), '') FROM outbox")


async def test_a_finance_systems_settlement_settles_the_disbursement_once(intake, funding):
    _, client, _ = intake
    app, funding_client, _ = funding
    fund = await open_fund(funding_client, "100000.00")
    grant = await approve(funding_client, fund["id"], "5000.00", region="640104")
    r = await funding_client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "1234.56"},
                                  headers=funding_key())
    assert r.status_code == 201, r.text
    disbursement_id = r.json()["id"]
    source, token = await register(client, "finance", SETTLED, "640104")

    def settlement(amount_fen: int = 123456, reference: str = "NXB20240502-0001", target: str = disbursement_id):
        return {"disbursement_id": target, "amount_fen": amount_fen,
                "settled_at": datetime.now(UTC).isoformat(), "bank_reference": reference}

    first = structured(source, SETTLED, settlement())
    assert (await answered(client, first, token))["status"] == "applied"
    row = await app.state.db.fetchrow("SELECT settled_at, bank_reference FROM disbursements WHERE id = $1",
                                      uuid.UUID(disbursement_id))
    assert row["bank_reference"] == "NXB20240502-0001" and row["settled_at"] is not None
    again = await send_binary(client, first, token)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    resent = structured(source, SETTLED, settlement())  # the bank's report again, under a new event id
    assert (await answered(client, resent, token))["status"] == "applied"
    settled_events = await app.state.db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'changai.funding.disbursement.settled.v1' AND key = $1",
        grant["id"])
    assert settled_events == 1

    other = structured(source, SETTLED, settlement(reference="NXB20240502-0002"))
    assert (await answered(client, other, token))["problem"]["type"].endswith("/already-settled")
    r = await funding_client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "100.00"},
                                  headers=funding_key())
    second_id = r.json()["id"]
    short = structured(source, SETTLED, settlement(9999, "NXB-3", second_id))
    refused = await answered(client, short, token)
    assert refused["status"] == "rejected" and refused["problem"]["type"].endswith("/amount-mismatch"), refused
    assert await app.state.db.fetchval("SELECT settled_at FROM disbursements WHERE id = $1",
                                       uuid.UUID(second_id)) is None
    nowhere = structured(source, SETTLED, settlement(target=str(uuid.uuid4())))
    assert (await answered(client, nowhere, token))["problem"]["status"] == 404

    elsewhere, far = await register(client, "finance", SETTLED, "640205")
    out = structured(elsewhere, SETTLED, settlement(10000, "NXB-4", second_id))
    refused = await answered(client, out, far)
    assert refused["status"] == "rejected" and refused["problem"]["status"] == 404, refused
    assert await app.state.db.fetchval("SELECT settled_at FROM disbursements WHERE id = $1",
                                       uuid.UUID(second_id)) is None
