"""A branch is where membership says it is: funding reads membership's branch events, so another city cannot
register or pay a branch by naming its id before it was registered as a payee (the limit of the region rule
when funding knew only its own payees)."""
import asyncio
import time
import uuid
from datetime import date

import pytest

from funding_support import key, open_fund, running_funding
from shared.events import encode, envelope
from shared.events.membership import BranchEstablished, BranchUpdated
from shared.kafka import make_producer
from test_funding_scope import SHIZUISHAN, XINGQING, YINCHUAN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def branch_aware(stack, make_database):
    dsn = await make_database("funding")
    producer = make_producer(stack.kafka.bootstrap)
    await producer.start()
    async with running_funding(stack, dsn, branches=True) as (app, client):
        yield app, client, producer
    await producer.stop()


async def send(producer, data) -> None:
    k, value, headers = encode(envelope(data))
    await (await producer.send("membership.events", value, key=k, headers=headers))


async def known_in(pool, branch_id, region: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while await pool.fetchval("SELECT region_code FROM branches WHERE id = $1", str(branch_id)) != region:
        assert time.monotonic() < deadline, f"branch {branch_id} not known in {region}"
        await asyncio.sleep(0.1)


def established(region: str) -> BranchEstablished:
    return BranchEstablished(branch_id=uuid.uuid4(), name="兴庆区某企业工会", credit_code="91640100MA76000001",
                             region_code=region, city_code=region[:4] + "00", industry_section="C",
                             kind="enterprise", founded_on=date(2020, 1, 1))


async def test_another_city_cannot_claim_a_branch_it_does_not_have(branch_aware):
    app, client, producer = branch_aware
    branch = established("640104")
    await send(producer, branch)
    await known_in(app.state.db, branch.branch_id, "640104")
    bid = str(branch.branch_id)

    taken = await client.put(f"/v1/beneficiaries/branch/{bid}", json={"name": "冒名"}, headers={**SHIZUISHAN, **key()})
    assert taken.status_code == 404, taken.text
    fund = await open_fund(client, "1000.00")
    grant = {"fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": bid, "beneficiary_name": "冒名",
             "purpose": "by naming another city's branch", "amount": "10.00"}
    assert (await client.post("/v1/grants", json=grant, headers={**SHIZUISHAN, **key()})).status_code == 404
    assert await app.state.db.fetchval("SELECT count(*) FROM beneficiaries WHERE id = $1", bid) == 0

    # Its own city may not put it in another county; its county registers it, region left out: 兴庆区.
    moved = await client.put(f"/v1/beneficiaries/branch/{bid}", json={"name": "某工会", "region_code": "640105"},
                             headers={**YINCHUAN, **key()})
    assert moved.status_code == 422 and moved.json()["errors"][0]["field"] == "region_code", moved.text
    own = await client.put(f"/v1/beneficiaries/branch/{bid}", json={"name": "兴庆区某企业工会"},
                           headers={**XINGQING, **key()})
    assert own.status_code == 201 and own.json()["region_code"] == "640104", own.text


async def test_a_grant_to_a_known_branch_takes_the_branchs_region(branch_aware):
    app, client, producer = branch_aware
    branch = established("640202")
    await send(producer, branch)
    moved = BranchUpdated(branch_id=branch.branch_id, name="大武口区某企业工会", region_code="640205", city_code="640200",
                          industry_section="C", kind="enterprise", changed=["region_code"])
    await send(producer, moved)  # same key: after the first; the last word wins
    await known_in(app.state.db, branch.branch_id, "640205")
    fund = await open_fund(client, "1000.00")
    made = await client.post("/v1/grants", headers={**SHIZUISHAN, **key()}, json={
        "fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": str(branch.branch_id),
        "beneficiary_name": "惠农区某企业工会", "purpose": "region left out", "amount": "10.00"})
    assert made.status_code == 201 and made.json()["region_code"] == "640205", made.text
