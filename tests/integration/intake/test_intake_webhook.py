"""A source that asked for a webhook gets each answer POSTed to it, signed (Standard Webhooks), and again
after its receiver failed; a poll source's events are never sent anywhere."""
from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid

import orjson
import uvicorn
from standardwebhooks.webhooks import Webhook

from tests.integration.intake.intake_support import ADMIN, HIRED, emitter, hired, send_binary, structured
from tests.integration.membership.membership_support import unique_id_number


class Receiver:
    """An HTTP receiver on 127.0.0.1 that fails its first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.calls = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        status = 503 if self.calls <= self.fail_first else 204
        if status == 204:
            self.received.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": status, "headers": [(b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": b""})


async def test_answers_reach_the_sources_webhook_signed_and_retried(intake, membership, stack):
    _, client, _ = intake
    receiver = Receiver(fail_first=1)
    port = stack.free_port()
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            await asyncio.sleep(0.05)
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        client_id = f"hr-{uuid.uuid4().hex[:8]}"
        source = f"urn:changai:test:hr:{client_id}"
        r = await client.post("/v1/sources", headers=ADMIN, json={
            "source": source, "name": "回调企业", "region_code": "640104", "event_types": [HIRED],
            "client_id": client_id, "reply": "webhook", "reply_url": f"http://127.0.0.1:{port}/answers",
            "reply_secret": secret})
        assert r.status_code == 201, r.text
        assert secret not in r.text and "reply_secret" not in r.json()
        branch = await membership.branch("640104")
        event = structured(source, HIRED, hired(branch["credit_code"], unique_id_number()))
        assert (await send_binary(client, event, emitter(client_id))).status_code == 202
        deadline = time.monotonic() + 60
        while not receiver.received:
            assert time.monotonic() < deadline, f"no answer delivered ({receiver.calls} calls)"
            await asyncio.sleep(0.1)
        headers, body = receiver.received[0]
        Webhook(secret).verify(body, headers)  # raises when the signature does not hold
        answer = orjson.loads(body)
        assert (answer["id"], answer["source"], answer["status"]) == (event["id"], source, "applied")
        assert receiver.calls >= 2  # the first try met a 503 and was retried
        assert event["data"]["id_number"] not in body.decode()
    finally:
        server.should_exit = True
        await serving
