"""Reform test helpers: the service app in-process on the real PostgreSQL and Kafka."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

import httpx

from services.reform.main import build_app
from services.reform.settings import ReformSettings
from shared.auth import mint_token

OFFICE = {
    "Authorization": "Bearer " + mint_token("reform-office", ["reform:admin", "reform:read", "reform:report"], "640000")
}
CITY = {"Authorization": "Bearer " + mint_token("shizuishan", ["reform:read", "reform:report"], "640200")}


def liaison(unit_id: str) -> dict[str, str]:
    return {
        "Authorization": "Bearer "
        + mint_token(f"liaison-{unit_id[:8]}", ["reform:read", "reform:report"], "640000", unit=unit_id)
    }


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def settings_for(stack, dsn: str, **overrides) -> ReformSettings:
    return ReformSettings(
        database_url=dsn,
        kafka_bootstrap=stack.kafka.bootstrap,
        db_pool_min=1,
        db_pool_max=5,
        outbox_poll_interval_s=0.2,
        **overrides,
    )


@asynccontextmanager
async def running_reform(stack, dsn: str, **overrides):
    """The reform app with its lifespan (migrations, pool, relay, supervision) and an httpx client on it."""
    app = build_app(settings_for(stack, dsn, **overrides))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://reform", headers=OFFICE, timeout=60
        ) as client:
            yield app, client


async def post(client, path: str, body: dict | None = None, headers: dict | None = None, status: int = 201) -> dict:
    resp = await client.post(path, json=body if body is not None else {}, headers={**key(), **(headers or {})})
    assert resp.status_code == status, resp.text
    return resp.json()


async def unit(client, name: str | None = None, kind: str = "government") -> dict:
    return await post(
        client,
        "/v1/units",
        {
            "name": name or f"单位{uuid.uuid4().hex[:6]}",
            "kind": kind,
            "liaison_name": "李联络",
            "liaison_phone": "139 1234 5678",
        },
    )
