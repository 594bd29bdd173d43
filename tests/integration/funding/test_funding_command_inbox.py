"""Funding's command inbox on its own, over the real Kafka and PostgreSQL: the intake dedupes an upstream
event before it writes a command, so only a redelivery by Kafka (a crash before the offset commit) brings the
same command to funding twice. Here the same ``funding.commands`` settlement is produced three times (once,
then twice back to back, each after the group committed past the last): one settlement, one outcome (the
settle use case alone would answer a repeat ``took_effect: false``: a second outcome)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from funding_support import approve, key, open_fund, running_funding

from services.funding.commands import INBOX
from shared.consumer import wait_assigned
from shared.events import decode, envelope
from shared.events.intake import SettleCommand
from tests.integration.command_records import send_three_times, start_at_end

pytestmark = pytest.mark.integration

TOPIC = "funding.commands"


@pytest.fixture(scope="module")
async def treasury(stack, make_database):
    """Funding with a command consumer group of its own, started at the topic's end."""
    dsn = await make_database("funding")
    group = f"funding-commands-{uuid.uuid4().hex[:8]}"
    await start_at_end(stack.bootstrap, group, TOPIC)
    async with running_funding(stack, dsn, funding_commands_group=group) as (app, client):
        await wait_assigned(app.state.commands)
        yield app, client, group


async def test_the_same_settlement_command_delivered_three_times_is_applied_once(stack, treasury):
    app, client, group = treasury
    fund = await open_fund(client, "10000.00")
    grant = await approve(client, fund["id"], "500.00", region="640104")
    r = await client.post(f"/v1/grants/{grant['id']}/disbursements", json={"amount": "123.45"}, headers=key())
    assert r.status_code == 201, r.text
    disbursement_id = uuid.UUID(r.json()["id"])
    command = SettleCommand(intake_id=uuid.uuid4(), upstream_source="urn:changai:test:finance:inbox",
                            upstream_type="finance.payment.settled.v1", region_scope="640104", actor="finance-inbox",
                            disbursement_id=disbursement_id, amount_fen=12345, settled_at=datetime.now(UTC),
                            bank_reference="NXB-INBOX-1")
    event = envelope(command)

    await send_three_times(stack.bootstrap, group, TOPIC, event)

    db = app.state.db
    rows = await db.fetch("SELECT value FROM outbox WHERE event_type LIKE 'changai.funding.command.%'")
    outcomes = [e.type for e in map(decode, (r["value"] for r in rows)) if e.data["command_id"] == event.id]
    assert outcomes == ["changai.funding.command.applied.v1"]
    assert await db.fetchval("SELECT bank_reference FROM disbursements WHERE id = $1", disbursement_id) \
        == "NXB-INBOX-1"
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'changai.funding.disbursement.settled.v1'"
                             " AND key = $1", grant["id"]) == 1
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1 AND event_id = $2",
                             INBOX, uuid.UUID(event.id)) == 1
