"""A notifier under test: its own database, a worker process, the API in-process, fakes to call.

The worker's consumer group starts at the current end of every topic it reads (offsets are
committed for the new group before it starts), so it neither replays other tests' history
nor misses an event produced after :meth:`Notifier.start` returns.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack
from datetime import date

import asyncpg
import httpx
import orjson

from services.notifier import topics
from services.notifier.main import build_app
from services.notifier.settings import NotifierSettings
from shared.auth import mint_token
from shared.events import EventData, encode, envelope
from shared.events.membership import BranchEstablished
from shared.kafka import make_producer
from tests.integration.kafka_records import read_records
from tests.integration.kafka_records import start_at_end as at_end

WORKER_TOPICS = (*topics.DOMAIN_SOURCES, topics.DELIVER, topics.DEFERRED, *topics.RETRIES)
TOKEN = mint_token("notifier-tests", ["notifier:write", "notifier:read"], "640000")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fast_settings(receivers_base: str, smtp_port: int) -> dict[str, str]:
    """Schedules short enough for tests: 3 retries (4 attempts) over 4.1 s; a channel failing
    for 3 s is paused (so a receiver failing 3 times is not, one down past the schedule is);
    robots take 20 messages per 3 s; the sweeper looks every second."""
    return {
        "CHANGAI_NOTIFIER_WEBHOOKS": "{}",
        "CHANGAI_OUTBOUND_ALLOW_PRIVATE": "1",
        "CHANGAI_NOTIFIER_WECOM_URL": f"{receivers_base}/cgi-bin/webhook/send",
        "CHANGAI_NOTIFIER_DINGTALK_URL": f"{receivers_base}/robot/send",
        "CHANGAI_NOTIFIER_SMTP_HOST": "127.0.0.1",
        "CHANGAI_NOTIFIER_SMTP_PORT": str(smtp_port),
        "CHANGAI_NOTIFIER_SMTP_FROM": "notices@changai.test",
        "CHANGAI_NOTIFIER_RETRY_WEBHOOK": "0.2,0.4,3.5",
        "CHANGAI_NOTIFIER_RETRY_WECOM": "0.2,0.4,3.5",
        "CHANGAI_NOTIFIER_RETRY_DINGTALK": "0.2,0.4,3.5",
        "CHANGAI_NOTIFIER_RETRY_EMAIL": "0.2,0.4,3.5",
        "CHANGAI_NOTIFIER_RETRY_JITTER": "0",
        "CHANGAI_NOTIFIER_PAUSE_AFTER_S": "3",
        "CHANGAI_NOTIFIER_ROBOT_RATE": "20",
        "CHANGAI_NOTIFIER_ROBOT_WINDOW_S": "3",
        "CHANGAI_NOTIFIER_WECOM_THROTTLE_S": "1",
        "CHANGAI_NOTIFIER_DINGTALK_BLOCKED_S": "1",
        "CHANGAI_NOTIFIER_ATTEMPT_TIMEOUT_S": "3",
        "CHANGAI_NOTIFIER_LEASE_MARGIN_S": "1",
        "CHANGAI_NOTIFIER_SESSION_TIMEOUT_S": "6",
        "CHANGAI_NOTIFIER_SWEEP_INTERVAL_S": "1",
        "CHANGAI_NOTIFIER_SWEEP_GRACE_S": "3",
        "CHANGAI_NOTIFIER_TEST_SEND_WAIT_S": "10",
        "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2",
    }


async def start_at_end(bootstrap: str, group: str, names=WORKER_TOPICS) -> None:
    """Commit the current end offsets of ``names`` for the (new) consumer group ``group``."""
    await at_end(bootstrap, group, names)


class Notifier:
    def __init__(self, stack, dsn: str, env: dict[str, str]):
        self.stack, self.dsn, self.extra_env = stack, dsn, env
        self.app_id = f"notifier-t{uuid.uuid4().hex[:8]}"
        self.worker = None
        self.worker_env: dict[str, str] = {}
        self.settings = NotifierSettings(**{k.removeprefix("CHANGAI_").lower(): v for k, v in env.items()
                                            if k != "CHANGAI_NOTIFIER_WEBHOOKS"},
                                         database_url=dsn, kafka_bootstrap=stack.bootstrap,
                                         notifier_webhooks={})
        self._exit = AsyncExitStack()
        self.api: httpx.AsyncClient | None = None
        self.db: asyncpg.Pool | None = None
        self.producer = None

    async def start(self) -> "Notifier":
        from services.notifier.consumers import ensure_topics

        await ensure_topics(self.settings)
        await start_at_end(self.stack.bootstrap, f"changai-{self.app_id}")
        await self.start_worker()
        app = build_app(self.settings)
        await self._exit.enter_async_context(app.router.lifespan_context(app))
        self.api = await self._exit.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://notifier", headers=AUTH,
                              timeout=30))
        self.db = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        self._exit.push_async_callback(self.db.close)
        self.producer = make_producer(self.stack.bootstrap)
        await self.producer.start()
        self._exit.push_async_callback(self.producer.stop)
        return self

    async def start_worker(self) -> None:
        port = self.stack.free_port()
        self.worker_env = self.stack.service_env(
            "notifier-worker", http_port=port, database_url=self.dsn, CHANGAI_NOTIFIER_APP_ID=self.app_id,
            **self.extra_env)
        self.worker = await self.stack.start_service(
            "notifier-worker", ["-m", "services.notifier", "worker"], self.worker_env, health_path="/readyz",
            timeout=90)

    def kill_worker(self) -> None:
        self.worker.kill()

    async def stop(self) -> None:
        await self._exit.aclose()
        if self.worker is not None:
            await self.worker.stop(grace=5)

    # -- driving it -----------------------------------------------------------------------------
    async def publish(self, data: EventData):
        event = envelope(data)
        key, value, headers = encode(event)
        await self.producer.send_and_wait(data.topic, value, key=key, headers=headers)
        return event

    async def branch(self, region: str = "640104", name: str | None = None) -> uuid.UUID:
        """A branch established (as membership would publish it), once the read model has it."""
        branch_id = uuid.uuid4()
        await self.publish(BranchEstablished(
            branch_id=branch_id, name=name or f"测试工会{branch_id.hex[:6]}", credit_code="91640100MA76H5BT9B",
            region_code=region, city_code=region[:4] + "00", industry_section="C", kind="enterprise",
            founded_on=date(2021, 3, 1)))
        await self.until(lambda: self.api_ok(f"/v1/branches/{branch_id}"), "the read model to have the branch")
        return branch_id

    async def api_ok(self, path: str) -> bool:
        return (await self.api.get(path)).status_code == 200

    async def channel(self, kind: str, config: dict, *, branch_id=None, region_code=None, unit_id=None,
                      **extra) -> dict:
        owner = ({"branch_id": str(branch_id)} if branch_id else {"unit_id": str(unit_id)} if unit_id
                 else {"region_code": region_code})
        body = {"kind": kind, "name": f"{kind} {uuid.uuid4().hex[:4]}", "owner": owner, "config": config, **extra}
        response = await self.api.post("/v1/channels", json=body)
        assert response.status_code == 201, response.text
        made = response.json()
        await self.worker_knows(made)
        return made

    async def worker_knows(self, channel: dict) -> None:
        """Wait for the worker to route by the channel as written (its page shows the channel's status
        and subscriptions): it learns a channel by NOTIFY a moment after the API answers, and an event
        published in that moment would be routed without it (the digest test's race)."""
        if self.worker is None or not self.worker.alive():
            return  # a killed worker loads every channel when it starts again
        url = f"http://127.0.0.1:{self.worker_env['CHANGAI_HTTP_PORT']}/channels/{channel['id']}"

        async def known() -> bool:
            async with httpx.AsyncClient(timeout=5) as http:
                answer = await http.get(url)
            seen = answer.json() if answer.status_code == 200 else {}
            return seen.get("status") == channel["status"] and seen.get("event_types") == channel["event_types"]

        await self.until(known, f"the worker to know channel {channel['id']}")

    async def deliveries(self, **filters) -> list[dict]:
        params = {k: str(v) for k, v in filters.items() if v is not None}
        params.setdefault("limit", "200")  # the most a page holds (shared.pagination)
        response = await self.api.get("/v1/deliveries", params=params)
        assert response.status_code == 200, response.text
        return response.json()["items"]

    @staticmethod
    async def until(check, what: str, timeout: float = 20.0, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(interval)


def values(records) -> list[dict]:
    out = []
    for r in records:
        try:
            out.append(orjson.loads(r.value))
        except orjson.JSONDecodeError:
            pass
    return out


__all__ = ["Notifier", "fast_settings", "read_records", "values", "AUTH", "json"]
