"""Intake test helpers: membership and the intake in-process on the real PostgreSQL and Kafka."""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import orjson

from services.intake.main import build_app
from services.intake.settings import IntakeSettings
from shared.auth import mint_token

ADMIN = {"Authorization": "Bearer " + mint_token("intake-operator", ["intake:admin"], "640000")}
HIRED = "enterprise.hr.employee.hired.v1"
LEFT = "enterprise.hr.employee.left.v1"


def emitter(client_id: str, region: str = "640104") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(client_id, ["intake:emit"], region)}


@asynccontextmanager
async def running_intake(stack, dsn: str, **overrides):
    settings = IntakeSettings(database_url=dsn, kafka_bootstrap=stack.kafka.bootstrap, db_pool_min=1, db_pool_max=5,
                              outbox_poll_interval_s=0.2, **overrides)
    app = build_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://intake",
                                                                   timeout=60) as client:
        yield app, client


def hired(credit_code: str, number: str, **extra) -> dict:
    return {"employee_ref": f"E{uuid.uuid4().hex[:8]}", "name": "马春燕", "id_number": number,
            "phone": "139 1234 5678", "employer_credit_code": credit_code, "hired_on": "2024-05-01",
            "employment_form": "courier", **extra}


def structured(source: str, event_type: str, data: dict, **attrs) -> dict:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": event_type,
            "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
            "data": data, **attrs}


def binary_headers(event: dict) -> dict[str, str]:
    headers = {f"ce-{k}": str(v) for k, v in event.items() if k not in ("data", "datacontenttype")}
    headers["content-type"] = "application/json"
    return headers


async def send_binary(client, event: dict, headers: dict) -> httpx.Response:
    return await client.post("/v1/events", content=orjson.dumps(event["data"]),
                             headers={**headers, **binary_headers(event)})


async def send_structured(client, event: dict, headers: dict) -> httpx.Response:
    return await client.post("/v1/events", content=orjson.dumps(event),
                             headers={**headers, "content-type": "application/cloudevents+json"})


async def send_batch(client, events: list[dict], headers: dict) -> httpx.Response:
    return await client.post("/v1/events", content=orjson.dumps(events),
                             headers={**headers, "content-type": "application/cloudevents-batch+json"})


async def decided(client, event: dict, headers: dict, timeout: float = 60, *, may_be_unseen: bool = False) -> dict:
    """Poll the event's answer until it is applied or rejected (bounded); ``may_be_unseen``: a 404 means
    not received yet (an event produced to Kafka, not yet read by the intake's consumer group)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/v1/events/{event['id']}", params={"source": event["source"]}, headers=headers)
        if not (may_be_unseen and r.status_code == 404):
            assert r.status_code == 200, r.text
            body = r.json()
            if body["status"] != "accepted":
                return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {event['id']} still accepted after {timeout} s")
        await asyncio.sleep(0.1)
