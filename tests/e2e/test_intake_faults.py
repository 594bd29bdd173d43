"""Fault test of the event intake: the intake and membership (the owning service) are killed with SIGKILL
in the middle of a stream of hires: the intake while a batch request is in flight, membership while it
applies a partition's batch of commands. Both are started again and the source sends everything again (an
upstream system retries what it did not see accepted). Every hire must end applied exactly once: as many
members as hires, one ``member.joined`` per member on ``membership.events`` (read to its end offsets; a
record the relay published twice across the crash carries the same event id, which consumers drop), and
every event answered ``applied`` with its own member.

1,200 hires in batches of 200: enough that both kills land while work is under way (the batches take
seconds on this machine), small enough for the test to take about a minute beside the service starts.
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import TopicPartition

from shared.auth import mint_token
from shared.events import decode
from shared.kafka import read_to_end
from shared.topics import BY_NAME
from tests.e2e.test_projection_dashboards import credit_code, id_number

pytestmark = pytest.mark.e2e
HIRES, BATCH = 1200, 200
HIRED = "enterprise.hr.employee.hired.v1"


async def wait_until(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_killed_mid_batch_every_accepted_hire_is_applied_exactly_once(stack, make_database):
    rng = random.Random()
    run = uuid.uuid4().hex[:8]
    m_dsn, i_dsn = await make_database("membership"), await make_database("intake")
    m_env = stack.service_env("membership", database_url=m_dsn, CHANGAI_COMMANDS_GROUP_ID=f"faults-commands-{run}",
                              CHANGAI_CONSUME_CERTIFICATES="false", CHANGAI_LOG_LEVEL="WARNING")
    i_env = stack.service_env("intake", database_url=i_dsn, CHANGAI_INTAKE_OUTCOMES_GROUP_ID=f"faults-outcomes-{run}",
                              CHANGAI_INTAKE_CONSUME_KAFKA="false", CHANGAI_LOG_LEVEL="WARNING")

    async def start_membership():
        return await stack.start_service("membership", ["-m", "services.membership", "api"], m_env, timeout=90)

    async def start_intake():
        return await stack.start_service("intake", ["-m", "services.intake", "api"], i_env, timeout=90)

    membership, intake = await asyncio.gather(start_membership(), start_intake())
    m_url = f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}/v1"
    i_url = f"http://127.0.0.1:{i_env['CHANGAI_HTTP_PORT']}/v1"
    admin = {"Authorization": "Bearer " + mint_token("faults", ["membership:write", "intake:admin"], "640000")}
    client_id, source = f"faults-hr-{run}", f"urn:changai:faults:hr:{run}"
    m_conn, i_conn = await asyncpg.connect(m_dsn), await asyncpg.connect(i_dsn)
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            code = credit_code("640104", rng)
            r = await http.post(f"{m_url}/branches", headers=admin, json={
                "name": f"故障测试工会{run}", "credit_code": code, "region_code": "640104", "industry_section": "C",
                "kind": "enterprise", "founded_on": "2021-03-01"})
            assert r.status_code == 201, r.text
            branch_id = r.json()["id"]
            r = await http.post(f"{i_url}/sources", headers=admin, json={
                "source": source, "name": "故障测试人事系统", "region_code": "640104", "event_types": [HIRED],
                "client_id": client_id})
            assert r.status_code == 201, r.text
            emitter = {"Authorization": "Bearer " + mint_token(client_id, ["intake:emit"], "640104", ttl_s=3600),
                       "content-type": "application/cloudevents-batch+json"}
            numbers: set[str] = set()
            while len(numbers) < HIRES:
                numbers.add(id_number("640104", rng))
            events = [{"specversion": "1.0", "id": f"{run}-{i}", "source": source, "type": HIRED,
                       "datacontenttype": "application/json",
                       "data": {"employee_ref": f"E{i}", "name": "故障员工", "id_number": number,
                                "employer_credit_code": code, "hired_on": "2024-05-01", "employment_form": "courier"}}
                      for i, number in enumerate(sorted(numbers))]
            bodies = [orjson.dumps(events[i:i + BATCH]) for i in range(0, HIRES, BATCH)]

            async def send_all(chosen: list[bytes]) -> dict[str, str]:
                """Each batch once, two in flight; an event's outcome, or nothing when its request failed."""
                seen: dict[str, str] = {}
                gate = asyncio.Semaphore(2)

                async def send(body: bytes) -> None:
                    async with gate:
                        try:
                            resp = await http.post(f"{i_url}/events", headers=emitter, content=body)
                        except httpx.TransportError:
                            return  # the intake died under this request: the source will send it again
                        assert resp.status_code == 207, resp.text[:300]
                        seen.update({x["id"]: x["outcome"] for x in resp.json()["results"]})

                await asyncio.gather(*(send(b) for b in chosen))
                return seen

            async def stored() -> int:
                return await i_conn.fetchval("SELECT count(*) FROM intake_events")

            async def members() -> int:
                return await m_conn.fetchval("SELECT count(*) FROM members")

            first = await send_all(bodies[:2])
            await wait_until("membership started applying", lambda: _at_least(members, 1))
            membership.kill()  # SIGKILL while it applies the commands of the first batches
            killed_at = await members()
            sending = asyncio.create_task(send_all(bodies[2:]))
            await wait_until("the intake accepted a third batch", lambda: _at_least(stored, 3 * BATCH))
            intake.kill()  # SIGKILL with the next batches in flight
            first |= await sending
            assert set(first.values()) == {"accepted"}, first
            membership, intake = await asyncio.gather(start_membership(), start_intake())
            again = await send_all(bodies)  # the source sends everything again after the outage
            assert len(again) == HIRES and set(again.values()) <= {"accepted", "duplicate"}, again
            assert sum(1 for o in again.values() if o == "duplicate") >= len(first)
            print(f"killed membership at {killed_at} members, the intake at {len(first)} events acknowledged")

            async def all_applied() -> bool:
                return await i_conn.fetchval("SELECT count(*) FROM intake_events WHERE status = 'applied'") == HIRES

            await wait_until("every hire applied", all_applied, timeout=240)
        # exactly once: one intake row per event, one member per hire, each answered with its own member
        assert await stored() == HIRES
        assert await members() == HIRES
        assert await i_conn.fetchval("SELECT count(DISTINCT member_id) FROM intake_events") == HIRES
        assert await m_conn.fetchval("SELECT count(*) FROM members WHERE branch_id = $1", uuid.UUID(branch_id)) == HIRES
    finally:
        await m_conn.close()
        await i_conn.close()
    # membership.events to its end: one member.joined (one event id) per member of this branch
    joined: dict[str, set[str]] = defaultdict(set)
    partitions = [TopicPartition("membership.events", p) for p in range(BY_NAME["membership.events"].partitions)]
    async for record in read_to_end(stack.bootstrap, partitions, timeout=120):
        if b"member.joined" not in (record.value or b"") or branch_id.encode() not in record.value:
            continue
        event = decode(record.value)
        if event.type == "changai.membership.member.joined.v1" and event.data["branch_id"] == branch_id:
            joined[event.data["member_id"]].add(event.id)
    assert len(joined) == HIRES
    assert all(len(ids) == 1 for ids in joined.values()), [m for m, ids in joined.items() if len(ids) > 1][:5]


async def _at_least(count, n: int) -> bool:
    return await count() >= n
