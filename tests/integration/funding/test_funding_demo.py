"""The funding steps of the article-replay demo, against the service in-process (with the subsidy saga)."""
import uuid
from datetime import date

import httpx
import pytest

import demo as article  # deploy/local is on sys.path (tests/conftest.py)
import demo_funding
from funding_support import ledger_ok, running_funding
from shared.consumer import wait_assigned
from shared.events import encode, envelope
from shared.events.training import SessionCompleted
from shared.kafka import make_producer

pytestmark = pytest.mark.integration


async def test_the_demo_steps_fund_grant_pay_and_show_a_paid_subsidy(stack, make_database, capsys):
    dsn = await make_database("funding")
    async with running_funding(stack, dsn, consumer=True) as (app, _):
        await wait_assigned(app.state.subsidy_consumer)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=30) as client:
            demo = article.Demo(article.DemoConfig(), client)
            branch = {"id": str(uuid.uuid4()), "name": "宁夏枸杞产业集团有限公司工会委员会", "region_code": "640104"}
            demo.branches.append(branch)
            names = [name for name, _ in article.STEPS]
            assert names.index("funding") < names.index("subsidies")
            await demo_funding.step_funding(demo)

            # What the training service would publish when the branch's session completes.
            producer = make_producer(stack.kafka.bootstrap)
            await producer.start()
            try:
                data = SessionCompleted(
                    session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="枸杞种植岗前培训", number=1,
                    organiser_id=branch["id"], organiser_kind="branch", organiser_name=branch["name"],
                    region_code="640104", city_code="640100", subsidy_category="pre_job", person_times=12, passed=12,
                    failed=0, eligible_member_ids=[uuid.uuid4() for _ in range(12)], eligible_persons=12,
                    completed_on=date(2021, 9, 10))
                k, v, h = encode(envelope(data))
                await (await producer.send("training.events", v, key=k, headers=h))
            finally:
                await producer.stop()
            await demo_funding.step_subsidies(demo)
        assert demo.failures == 0
        await ledger_ok(app.state.db)
    out = capsys.readouterr().out
    print(out)
    assert "409 refused: fund has 500000.00" in out
    assert "paid 9600.00 = 12 × 800.00" in out
    assert "total 280000000.00 allocated 279999999.96 disbursed 139999999.92 remaining 0.04" in out
    assert "ledger check" in out and "balanced" in out
