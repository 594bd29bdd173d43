"""The subsidy saga on the real Kafka and PostgreSQL: session.completed events (produced here with a raw
producer, as the training service would) become paid or rejected claims, exactly once."""
import asyncio
import time
import uuid
from datetime import date

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from funding_support import events_in_outbox, key, ledger_ok, open_fund, running_funding
from shared.consumer import wait_assigned
from shared.events import decode, encode, envelope
from shared.events.training import SessionCompleted
from shared.kafka import make_producer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def saga(stack, make_database):
    dsn = await make_database("funding")
    producer = make_producer(stack.kafka.bootstrap)
    await producer.start()
    async with running_funding(stack, dsn, consumer=True) as (app, client):
        await wait_assigned(app.state.subsidy_consumer)
        yield app, client, producer
    await producer.stop()


def completed(organiser: str, on: date, persons: int, category="pre_job", session_id=None) -> SessionCompleted:
    members = [uuid.uuid4() for _ in range(persons)]
    return SessionCompleted(
        session_id=session_id or uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="电工岗前培训", number=3,
        organiser_id=organiser, organiser_kind="branch", organiser_name="宁夏枸杞产业集团有限公司工会委员会",
        region_code="640104", city_code="640100", subsidy_category=category, person_times=persons + 1,
        passed=persons, failed=1, eligible_member_ids=members, eligible_persons=persons, completed_on=on)


async def produce(producer, data: SessionCompleted, event_id: str | None = None) -> str:
    event = envelope(data, event_id=event_id)
    k, value, headers = encode(event)
    await (await producer.send("training.events", value, key=k, headers=headers))
    return event.id


async def claim_of(client, session_id, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claims = (await client.get("/v1/subsidy-claims", params={"session_id": str(session_id)})).json()["items"]
        if claims:
            return claims[0]
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no claim for session {session_id}")


async def register(client, organiser: str) -> None:
    resp = await client.put(f"/v1/beneficiaries/branch/{organiser}", json={"name": "枸杞产业集团工会", "region_code": "640104"},
                            headers=key())
    assert resp.status_code in (200, 201), resp.text


async def route(client, category: str, year: int | None, fund_id: str) -> None:
    resp = await client.put(f"/v1/subsidy-routes/{category}", json={"fund_id": fund_id, "year": year}, headers=key())
    assert resp.status_code == 200, resp.text


async def test_a_session_before_the_change_pays_300_and_after_it_800_per_person(saga):
    app, client, producer = saga
    rules = (await client.get("/v1/subsidy-rules", params={"category": "pre_job"})).json()["items"]
    assert [(r["effective_from"], r["rate"], r["origin"]) for r in rules] == [
        ("2019-01-01", "300.00", "seed"), ("2021-01-01", "800.00", "seed")]
    fund = await open_fund(client, "100000.00", "skills_account", 2021, name="职业技能提升行动专账 2020-2021")
    await route(client, "pre_job", 2020, fund["id"])
    await route(client, "pre_job", 2021, fund["id"])
    organiser = f"branch-{uuid.uuid4().hex[:8]}"
    await register(client, organiser)

    before = completed(organiser, date(2020, 12, 31), 3)
    after = completed(organiser, date(2021, 1, 1), 3)
    await produce(producer, before)
    await produce(producer, after)
    c_before, c_after = await claim_of(client, before.session_id), await claim_of(client, after.session_id)
    assert (c_before["status"], c_before["persons"], c_before["rate"], c_before["amount"]) == ("paid", 3, "300.00", "900.00")
    assert (c_after["status"], c_after["persons"], c_after["rate"], c_after["amount"]) == ("paid", 3, "800.00", "2400.00")

    grant = (await client.get(f"/v1/grants/{c_after['grant_id']}")).json()
    assert (grant["beneficiary"]["id"], grant["amount"], grant["paid"], grant["status"], grant["claim_id"]) == \
        (organiser, "2400.00", "2400.00", "closed", c_after["id"])
    figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (figures["disbursed"], figures["available"], figures["committed"]) == ("3300.00", "96700.00", "0.00")
    assert (await client.get(f"/v1/beneficiaries/branch/{organiser}")).json()["disbursed"] == "3300.00"
    for claim in (c_before, c_after):
        assert await events_in_outbox(app.state.db, claim["id"]) == [
            "changai.funding.subsidy.claimed.v1", "changai.funding.subsidy.paid.v1"]
        assert await events_in_outbox(app.state.db, claim["grant_id"]) == [
            "changai.funding.grant.approved.v1", "changai.funding.disbursement.made.v1"]
    await ledger_ok(app.state.db)


async def test_the_payment_of_a_session_completed_by_a_roster_upload_carries_its_batch_id(saga):
    """A roster upload's completed sessions are paid as a batch: every event of a payment carries the
    upload's batch id, so the notifier tells a federation of them as one digest (issue 15)."""
    app, client, producer = saga
    fund = await open_fund(client, "100000.00", "skills_account", 2023)
    await route(client, "pre_job", 2023, fund["id"])
    organiser = f"branch-{uuid.uuid4().hex[:8]}"
    await register(client, organiser)
    batch_id = uuid.uuid4()
    session = completed(organiser, date(2023, 5, 1), 2).model_copy(update={"batch_id": batch_id})
    await produce(producer, session)
    claim = await claim_of(client, session.session_id)
    assert claim["status"] == "paid", claim
    rows = await app.state.db.fetch("SELECT event_type, value FROM outbox WHERE key = ANY($1::text[])",
                                    [claim["id"], claim["grant_id"]])
    marked = {r["event_type"].split(".", 2)[2]: orjson.loads(r["value"])["data"].get("batch_id") for r in rows}
    assert marked == {"subsidy.claimed.v1": str(batch_id), "subsidy.paid.v1": str(batch_id),
                      "grant.approved.v1": str(batch_id), "disbursement.made.v1": str(batch_id)}, marked
    # A session completed on its own (no batch) is paid with no batch id.
    alone = completed(organiser, date(2023, 5, 2), 1)
    await produce(producer, alone)
    single = await claim_of(client, alone.session_id)
    rows = await app.state.db.fetch("SELECT value FROM outbox WHERE key = ANY($1::text[])",
                                    [single["id"], single["grant_id"]])
    assert rows and all(orjson.loads(r["value"])["data"].get("batch_id") is None for r in rows)


async def test_an_exhausted_fund_rejects_the_claim_with_an_event_and_a_retry_pays_after_a_top_up(saga, stack):
    app, client, producer = saga
    fund = await open_fund(client, "1000.00", "skills_account", 2022)
    await route(client, "pre_job", 2022, fund["id"])
    organiser = f"branch-{uuid.uuid4().hex[:8]}"
    await register(client, organiser)

    session = completed(organiser, date(2022, 3, 1), 2)  # 2 × 800.00 = 1600.00 > 1000.00
    await produce(producer, session)
    claim = await claim_of(client, session.session_id)
    assert (claim["status"], claim["reason"], claim["amount"], claim["grant_id"]) == \
        ("rejected", "fund_exhausted", "1600.00", None)
    assert "1000.00" in claim["detail"] and "1600.00" in claim["detail"]

    # The rejection reaches Kafka as an event, keyed by the claim.
    consumer = AIOKafkaConsumer("funding.events", bootstrap_servers=stack.kafka.bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found = None
    try:
        async with asyncio.timeout(30):
            while found is None:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    for record in batch:
                        if record.key == claim["id"].encode():
                            found = decode(record.value)
    finally:
        await consumer.stop()
    assert found.type == "changai.funding.subsidy.rejected.v1"
    assert (found.data["reason"], found.data["amount_fen"], found.data["persons"], found.data["session_id"]) == \
        ("fund_exhausted", 160_000, 2, str(session.session_id))
    untouched = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (untouched["available"], untouched["committed"], untouched["disbursed"], untouched["grants"]) == \
        ("1000.00", "0.00", "0.00", 0)
    await ledger_ok(app.state.db)

    assert (await client.post(f"/v1/funds/{fund['id']}/top-ups", json={"amount": "600.00"},
                              headers=key())).status_code == 200
    retried = await client.post(f"/v1/subsidy-claims/{claim['id']}/retry", headers=key())
    assert retried.status_code == 200, retried.text
    assert (retried.json()["status"], retried.json()["amount"], retried.json()["attempts"]) == ("paid", "1600.00", 2)
    assert (await client.post(f"/v1/subsidy-claims/{claim['id']}/retry", headers=key())).status_code == 409
    assert (await client.get(f"/v1/funds/{fund['id']}")).json()["available"] == "0.00"
    await ledger_ok(app.state.db)


async def test_a_redelivered_completion_pays_nothing_more(saga):
    app, client, producer = saga
    fund = await open_fund(client, "100000.00", "skills_account", 2023)
    await route(client, "pre_job", 2023, fund["id"])
    organiser = f"branch-{uuid.uuid4().hex[:8]}"
    await register(client, organiser)

    session = completed(organiser, date(2023, 6, 1), 3)
    event_id = await produce(producer, session)
    first = await claim_of(client, session.session_id)
    assert (first["status"], first["amount"]) == ("paid", "2400.00")

    # The same event twice more (a redelivery), then the same completion under a new event id (a producer
    # that re-sent it). Same key, same partition: once the last is in the inbox, all were handled.
    await produce(producer, session, event_id=event_id)
    await produce(producer, session, event_id=event_id)
    resent_id = await produce(producer, session)
    deadline = time.monotonic() + 30
    while not await app.state.db.fetchval("SELECT EXISTS (SELECT 1 FROM inbox WHERE event_id = $1)",
                                          uuid.UUID(resent_id)):
        assert time.monotonic() < deadline, "the re-sent completion was not consumed"
        await asyncio.sleep(0.1)

    claims = (await client.get("/v1/subsidy-claims", params={"session_id": str(session.session_id)})).json()["items"]
    assert len(claims) == 1 and claims[0]["attempts"] == 1
    grants = (await client.get("/v1/grants", params={"fund_id": fund["id"]})).json()["items"]
    assert [(g["amount"], g["paid"]) for g in grants] == [("2400.00", "2400.00")]
    figures = (await client.get(f"/v1/funds/{fund['id']}")).json()
    assert (figures["disbursed"], figures["available"]) == ("2400.00", "97600.00")
    assert (await events_in_outbox(app.state.db, first["id"])).count("changai.funding.subsidy.paid.v1") == 1
    await ledger_ok(app.state.db)


async def test_claims_without_a_rule_a_fund_or_a_known_organiser_are_rejected_with_the_reason(saga):
    app, client, producer = saga
    fund = await open_fund(client, "100000.00", "skills_account", 2024)
    await route(client, "pre_job", 2024, fund["id"])
    stranger = f"branch-{uuid.uuid4().hex[:8]}"
    known = f"branch-{uuid.uuid4().hex[:8]}"
    await register(client, known)
    cases = {
        "organiser_unknown": completed(stranger, date(2024, 5, 1), 2),
        "no_rule": completed(known, date(2024, 5, 1), 2, category="new_form"),
        "no_fund": completed(known, date(2024, 5, 1), 2, category="skills_upgrade"),
        "nothing_eligible": completed(known, date(2024, 5, 1), 0),
    }
    assert (await client.put("/v1/subsidy-rules/skills_upgrade/2024-01-01", json={"rate": "1500.00"},
                             headers=key())).status_code == 201
    for data in cases.values():
        await produce(producer, data)
    for reason, data in cases.items():
        claim = await claim_of(client, data.session_id)
        assert (claim["status"], claim["reason"]) == ("rejected", reason), claim
        assert await events_in_outbox(app.state.db, claim["id"]) == ["changai.funding.subsidy.rejected.v1"]

    # Register the stranger, route the upgrade category: the retries pay.
    await register(client, stranger)
    await route(client, "skills_upgrade", None, fund["id"])
    for reason, amount in (("organiser_unknown", "1600.00"), ("no_fund", "3000.00")):
        claim = await claim_of(client, cases[reason].session_id)
        retried = (await client.post(f"/v1/subsidy-claims/{claim['id']}/retry", headers=key())).json()
        assert (retried["status"], retried["amount"]) == ("paid", amount), retried
    still = (await client.post(f"/v1/subsidy-claims/{(await claim_of(client, cases['no_rule'].session_id))['id']}/retry",
                               headers=key())).json()
    assert (still["status"], still["reason"], still["attempts"]) == ("rejected", "no_rule", 2)
    assert (await client.get(f"/v1/funds/{fund['id']}")).json()["disbursed"] == "4600.00"
    await ledger_ok(app.state.db)
