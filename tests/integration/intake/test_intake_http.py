"""The intake over HTTP against membership, both in-process on the real PostgreSQL and Kafka: an upstream
HR system's CloudEvents (binary, structured, batch) become membership joins through membership's own use
case, and the answer comes back to the source."""
from __future__ import annotations

import uuid

import asyncpg
import orjson

from tests.integration.intake.intake_support import (
    ADMIN,
    HIRED,
    LEFT,
    decided,
    emitter,
    hired,
    send_batch,
    send_binary,
    send_structured,
    structured,
)
from tests.integration.membership.membership_support import credit_code, unique_id_number


async def register(client, *, region: str = "640104", types=(HIRED, LEFT)) -> tuple[str, dict]:
    client_id = f"hr-{uuid.uuid4().hex[:8]}"
    source = f"urn:changai:test:hr:{client_id}"
    r = await client.post("/v1/sources", json={"source": source, "name": "某企业人事系统", "region_code": region,
                                               "event_types": list(types), "client_id": client_id},
                          headers={**ADMIN, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    return source, emitter(client_id, region)


async def test_sources_are_registered_listed_and_changed_by_operators_only(intake):
    _, client, _ = intake
    source, token = await register(client)
    listed = (await client.get("/v1/sources", headers=ADMIN)).json()
    row = next(s for s in listed["items"] if s["source"] == source)
    assert row["region_code"] == "640104" and row["reply"] == "poll"
    r = await client.patch(f"/v1/sources/{row['id']}", json={"event_types": [HIRED]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["event_types"] == [HIRED]
    assert (await client.get("/v1/sources", headers=token)).status_code == 403  # an emitter is no operator
    city = {"Authorization": ADMIN["Authorization"].replace(ADMIN["Authorization"], "Bearer " + __import__(
        "shared.auth", fromlist=["mint_token"]).mint_token("city-op", ["intake:admin"], "640100"))}
    assert (await client.get("/v1/sources", headers=city)).status_code == 403  # region-level only
    again = await client.post("/v1/sources", json={"source": source, "name": "x", "region_code": "640104",
                                                   "event_types": [HIRED], "client_id": "other"}, headers=ADMIN)
    assert again.status_code == 409


async def test_binary_structured_and_batch_events_become_joins_and_are_answered(intake, membership):
    _, client, dsn = intake
    branch = await membership.branch("640104")
    code = branch["credit_code"]
    source, token = await register(client)
    one = structured(source, HIRED, hired(code, unique_id_number()))
    r = await send_binary(client, one, token)
    assert r.status_code == 202, r.text
    assert r.json()["outcome"] == "accepted"
    two = structured(source, HIRED, hired(code, unique_id_number()))
    assert (await send_structured(client, two, token)).status_code == 202
    batch = [structured(source, HIRED, hired(code, unique_id_number())) for _ in range(3)]
    r = await send_batch(client, batch, token)
    assert r.status_code == 207, r.text
    assert r.json()["accepted"] == 3 and {x["outcome"] for x in r.json()["results"]} == {"accepted"}
    for event in [one, two, *batch]:
        answer = await decided(client, event, token)
        assert answer["status"] == "applied", answer
        member = await membership.client.get(f"/v1/members/{answer['member_id']}",
                                             headers=__import__("tests.integration.membership.membership_support",
                                                                fromlist=["auth"]).auth())
        assert member.status_code == 200 and member.json()["branch_id"] == branch["id"]
    figures = (await client.get("/metrics")).text
    labels = f'source="{source}",type="{HIRED}"'
    assert f"changai_intake_applied_total{{{labels}}} 5.0" in figures
    assert f"changai_intake_lag_seconds_count{{{labels}}} 5.0" in figures
    assert f'changai_intake_events_received_total{{channel="http",{labels}}} 5.0' in figures
    # the ID number is nowhere in clear in the intake's database (rows and the outbox's commands)
    number = one["data"]["id_number"]
    conn = await asyncpg.connect(dsn)
    try:
        for table in ("intake_events", "outbox"):
            dump = await conn.fetchval(f"SELECT string_agg(t::text, '') FROM {table} t")
            assert number not in dump, table
    finally:
        await conn.close()


async def test_a_redelivery_is_a_duplicate_and_changes_nothing(intake, membership):
    _, client, dsn = intake
    branch = await membership.branch("640104")
    source, token = await register(client)
    event = structured(source, HIRED, hired(branch["credit_code"], unique_id_number()))
    assert (await send_binary(client, event, token)).status_code == 202
    again = await send_structured(client, event, token)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    r = await send_batch(client, [event, event], token)
    assert [x["outcome"] for x in r.json()["results"]] == ["duplicate", "duplicate"]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM intake_events WHERE event_id = $1", event["id"]) == 1
    finally:
        await conn.close()
    assert (await decided(client, event, token))["status"] == "applied"


async def test_refusals_forged_source_unregistered_type_future_time_schema_and_size(intake, membership):
    _, client, _ = intake
    branch = await membership.branch("640104")
    source, token = await register(client, types=(HIRED,))
    other_source, _ = await register(client)
    data = hired(branch["credit_code"], unique_id_number())
    forged = await send_binary(client, structured(other_source, HIRED, data), token)
    assert forged.status_code == 403 and forged.json()["type"].endswith("/forged-source")
    left = await send_binary(client, structured(source, LEFT, {"id_number": data["id_number"],
                                                               "left_on": "2024-06-01"}), token)
    assert left.status_code == 403 and left.json()["type"].endswith("/type-not-registered")
    unknown = await send_binary(client, structured(source, "enterprise.hr.payroll.run.v1", {}), token)
    assert unknown.status_code == 422
    future = await send_binary(client, structured(source, HIRED, data, time="2999-01-01T00:00:00Z"), token)
    assert future.status_code == 422 and future.json()["type"].endswith("/time-in-future")
    bad = await send_binary(client, structured(source, HIRED, {**data, "id_number": "640104199003071231"}), token)
    assert bad.status_code == 422 and bad.json()["type"].endswith("/schema-mismatch")
    assert "640104199003071231" not in bad.text  # the value refused is never echoed
    big = await send_binary(client, structured(source, HIRED, {**data, "occupation": "x" * 70_000}), token)
    assert big.status_code == 413
    too_many = await send_batch(client, [structured(source, HIRED, data)] * 501, token)
    assert too_many.status_code == 413
    not_ce = await client.post("/v1/events", content=b"{}", headers={**token, "content-type": "application/json"})
    assert not_ce.status_code == 415
    mixed = await send_batch(client, [structured(source, HIRED, data), structured(other_source, HIRED, data), 7],
                             token)
    assert [x["outcome"] for x in mixed.json()["results"]] == ["accepted", "rejected", "rejected"]
    assert mixed.json()["results"][1]["problem"]["status"] == 403


async def test_outside_the_sources_region_membership_refuses_and_the_source_hears_why(intake, membership):
    _, client, _ = intake
    elsewhere = await membership.branch("640205")  # another city than the source's 640104
    source, token = await register(client)
    event = structured(source, HIRED, hired(elsewhere["credit_code"], unique_id_number()))
    assert (await send_binary(client, event, token)).status_code == 202
    answer = await decided(client, event, token)
    assert answer["status"] == "rejected", answer
    assert answer["problem"]["status"] in (403, 404), answer
    no_branch = structured(source, HIRED, hired(credit_code("640104"), unique_id_number()))
    assert (await send_binary(client, no_branch, token)).status_code == 202
    assert (await decided(client, no_branch, token))["problem"]["type"].endswith("/no-branch-for-employer")


async def test_a_leave_ends_the_membership(intake, membership):
    _, client, _ = intake
    branch = await membership.branch("640104")
    source, token = await register(client)
    number = unique_id_number()
    join = structured(source, HIRED, hired(branch["credit_code"], number))
    assert (await send_binary(client, join, token)).status_code == 202
    member_id = (await decided(client, join, token))["member_id"]
    leave = structured(source, LEFT, {"id_number": number, "left_on": "2024-06-01", "reason": "离职"})
    assert (await send_structured(client, leave, token)).status_code == 202
    answer = await decided(client, leave, token)
    assert answer["status"] == "applied" and answer["member_id"] == member_id


async def test_an_event_is_answered_to_its_own_source_only(intake, membership):
    _, client, _ = intake
    branch = await membership.branch("640104")
    source, token = await register(client)
    _, other_token = await register(client)
    event = structured(source, HIRED, hired(branch["credit_code"], unique_id_number()))
    assert (await send_binary(client, event, token)).status_code == 202
    r = await client.get(f"/v1/events/{event['id']}", params={"source": source}, headers=other_token)
    assert r.status_code == 404
    assert orjson.loads(r.content)["status"] == 404


async def test_the_webhook_validation_handshake_grants_the_origin_asked(intake):
    """CloudEvents HTTP Web Hooks, section 4: an OPTIONS with WebHook-Request-Origin is answered with the
    origin allowed and the rate (requests a minute); no token is needed (consent, not authorisation)."""
    _, client, _ = intake
    r = await client.options("/v1/events", headers={"WebHook-Request-Origin": "hr.example.com",
                                                    "WebHook-Request-Rate": "120"})
    assert r.status_code == 200, r.text
    assert r.headers["webhook-allowed-origin"] == "hr.example.com"
    assert r.headers["webhook-allowed-rate"] == "120"
    assert "POST" in r.headers["allow"]
    greedy = await client.options("/v1/events", headers={"WebHook-Request-Origin": "hr.example.com",
                                                         "WebHook-Request-Rate": "99999999"})
    assert greedy.headers["webhook-allowed-rate"] == "60000"  # never more than the intake allows
    for bad in ({}, {"WebHook-Request-Origin": "not a host name"}):
        refused = await client.options("/v1/events", headers=bad)
        assert refused.status_code == 400 and "webhook-allowed-origin" not in refused.headers
        assert refused.json()["type"].endswith("/not-a-webhook-handshake")


async def test_a_change_to_the_registration_is_honoured_at_the_next_event_though_the_caller_is_known(intake):
    """A single event trusts the caller's registration read at an earlier event only as far as its own statement
    confirms it unchanged: a suspension, a reactivation or a narrower list of types counts at the next event."""
    _, client, dsn = intake
    source, token = await register(client)
    row = next(s for s in (await client.get("/v1/sources", headers=ADMIN)).json()["items"] if s["source"] == source)

    async def emit(event_type: str = HIRED):
        return await send_binary(client, structured(source, event_type, hired(credit_code("640104"),
                                                                              unique_id_number())), token)

    async def change(**fields):
        r = await client.patch(f"/v1/sources/{row['id']}", json=fields, headers=ADMIN)
        assert r.status_code == 200, r.text

    assert (await emit()).status_code == 202  # the caller is known from here on
    assert (await emit()).status_code == 202
    await change(status="suspended")
    r = await emit()
    assert r.status_code == 403 and r.json()["type"].endswith("/source-suspended"), r.text
    await change(status="active")
    assert (await emit()).status_code == 202
    await change(event_types=[LEFT])
    r = await emit()
    assert r.status_code == 403 and r.json()["type"].endswith("/type-not-registered"), r.text
    conn = await asyncpg.connect(dsn)
    try:  # the accepted ones only, each with its command
        assert await conn.fetchval("SELECT count(*) FROM intake_events WHERE source = $1", source) == 3
        assert await conn.fetchval(
            "SELECT count(*) FROM outbox o JOIN intake_events e ON o.event_id = e.command_id WHERE e.source = $1",
            source) == 3
    finally:
        await conn.close()
