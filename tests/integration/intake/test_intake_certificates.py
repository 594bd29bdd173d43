"""A certificate the human-resources and social-security department (人社厅) issued, emitted as
``cn.gov.nx.hrss.certificate.issued.v1``: membership records it for the member found by ID number and
raises the member's skill level when higher (its record_certificate use case, the same rule and event as a
training certificate's); the same certificate again, an unknown person, or a member outside the source's
region is refused and the source hears why."""
from __future__ import annotations

import uuid

import asyncpg

from shared.events import decode
from tests.integration.intake.intake_support import ADMIN, decided, emitter, send_binary, structured
from tests.integration.membership.membership_support import unique_id_number

CERTIFICATE = "cn.gov.nx.hrss.certificate.issued.v1"


async def register(client, region: str) -> tuple[str, dict]:
    client_id = f"hrss-{uuid.uuid4().hex[:8]}"
    source = f"urn:changai:test:hrss:{client_id}"
    r = await client.post("/v1/sources", headers=ADMIN, json={
        "source": source, "name": "人社厅职业技能鉴定系统", "region_code": region, "event_types": [CERTIFICATE],
        "client_id": client_id})
    assert r.status_code == 201, r.text
    return source, emitter(client_id, region)


def certificate(number: str, level: int, certificate_no: str | None = None) -> dict:
    return {"certificate_no": certificate_no or f"S{uuid.uuid4().hex[:12].upper()}", "name": "马春燕",
            "id_number": number, "occupation": "快递员", "occupation_code": "4-02-07-10", "level": level,
            "issued_on": "2024-06-01", "issuer": "宁夏回族自治区人力资源和社会保障厅"}


async def test_a_certificate_is_recorded_and_raises_the_members_level(intake, membership):
    _, client, _ = intake
    branch = await membership.branch("640104")
    number = unique_id_number()
    member = await membership.member(branch["id"], number=number, skill_level=4)
    source, token = await register(client, "640000")
    first = structured(source, CERTIFICATE, certificate(number, 3))
    assert (await send_binary(client, first, token)).status_code == 202
    answer = await decided(client, first, token)
    assert answer["status"] == "applied" and answer["member_id"] == member["id"], answer
    again = structured(source, CERTIFICATE, first["data"])  # the same certificate, a new event id
    assert (await send_binary(client, again, token)).status_code == 202
    assert (await decided(client, again, token))["problem"]["type"].endswith("/certificate-recorded")
    lower = structured(source, CERTIFICATE, certificate(number, 5))  # recorded, the level stays 3
    assert (await decided_after(client, lower, token))["status"] == "applied"
    nobody = structured(source, CERTIFICATE, certificate(unique_id_number(), 2))
    assert (await decided_after(client, nobody, token))["problem"]["status"] == 404
    conn = await asyncpg.connect(membership.dsn)
    try:
        assert await conn.fetchval("SELECT skill_level FROM members WHERE id = $1", uuid.UUID(member["id"])) == 3
        assert await conn.fetchval("SELECT count(*) FROM external_certificates WHERE member_id = $1",
                                   uuid.UUID(member["id"])) == 2
        changes = [decode(r["value"]) for r in await conn.fetch(
            "SELECT value FROM outbox WHERE event_type = 'changai.membership.member.skill_level_changed.v1'")]
        mine = [e.data for e in changes if e.data["member_id"] == member["id"]]
        assert [(c["from_level"], c["to_level"]) for c in mine] == [(4, 3)]
        assert number not in await conn.fetchval("SELECT string_agg(t::text, '') FROM external_certificates t")
    finally:
        await conn.close()


async def test_a_member_outside_the_sources_region_is_not_found(intake, membership):
    _, client, _ = intake
    elsewhere = await membership.branch("640205")
    number = unique_id_number()
    await membership.member(elsewhere["id"], number=number)
    source, token = await register(client, "640104")  # a county's system, the member in another city
    event = structured(source, CERTIFICATE, certificate(number, 2))
    answer = await decided_after(client, event, token)
    assert answer["status"] == "rejected" and answer["problem"]["status"] == 404, answer


async def decided_after(client, event: dict, token: dict) -> dict:
    r = await send_binary(client, event, token)
    assert r.status_code == 202, r.text
    return await decided(client, event, token)
