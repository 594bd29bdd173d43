"""An import upload cut short over a real socket, then the whole file again (docs/membership.md,
"Bulk import": an upload cut short keeps the batches written, status ``failed``; uploading the
file again completes it).

The membership API runs as a process under uvicorn, as users reach it. The first upload declares
the whole file's Content-Length, sends its first 5 batches and part of the next (the last row sent
is cut in the middle), waits until those 5 batches are written, then drops the connection. The
import must end ``failed`` with its reason, having written exactly the 5 whole batches — each
member with its ``member.joined`` event, nothing of the partial batch or of the cut row. The
whole file again makes the other members, so each person is a member once, with one event.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, timedelta

import asyncpg
import httpx
import pytest

from tests.integration.membership.membership_support import auth, credit_code, id_number, outbox_events

pytestmark = pytest.mark.integration
JOINED = "changai.membership.member.joined.v1"
BATCH, ROWS, WHOLE_BATCHES = 20, 150, 5  # the cut falls in batch 6, inside row 110


async def until(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_an_upload_cut_short_keeps_whole_batches_and_the_whole_file_again_completes_it(stack, make_database):
    dsn = await make_database("membership")
    env = stack.service_env(
        "membership",
        database_url=dsn,
        CHANGAI_IMPORT_BATCH_ROWS=str(BATCH),
        CHANGAI_CONSUME_CERTIFICATES="false",
        CHANGAI_CONSUME_COMMANDS="false",
    )
    await stack.start_service("membership", ["-m", "services.membership", "api"], env)
    port = int(env["CHANGAI_HTTP_PORT"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=60) as api:
        r = await api.post(
            "/v1/branches",
            json={
                "name": f"测试工会{uuid.uuid4().hex[:6]}",
                "credit_code": credit_code("640104"),
                "region_code": "640104",
                "industry_section": "C",
                "kind": "enterprise",
                "founded_on": "2021-03-01",
            },
        )
        assert r.status_code == 201, r.text
        branch = r.json()["id"]
        numbers = [id_number("640104", born=date(1970, 1, 1) + timedelta(days=i), seq=123) for i in range(ROWS)]
        lines = [b"name,id_number,employment_form\n"] + [
            f"会员{i},{n},courier\n".encode() for i, n in enumerate(numbers)
        ]
        data = b"".join(lines)
        cut_row = WHOLE_BATCHES * BATCH + 10  # 1-based: rows 101-109 are the partial batch, row 110 is cut
        cut = len(b"".join(lines[:cut_row])) + len(lines[cut_row]) // 2

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /v1/members:import?branch_id={branch} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {auth()['Authorization']}\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        writer.write(head + data[:cut])
        await writer.drain()

        async def whole_batches_written():
            items = (await api.get("/v1/imports", params={"status": "running"})).json()["items"]
            return items[0] if items and items[0]["rows"]["accepted"] == WHOLE_BATCHES * BATCH else None

        first = await until(whole_batches_written, "the whole batches of the first upload to be written")
        writer.transport.abort()  # the connection drops mid-body (RST), as a client's network does
        assert not await reader.read(), "no answer was sent before the body ended"

        async def ended():
            body = (await api.get(f"/v1/imports/{first['id']}")).json()
            return body if body["status"] != "running" else None

        first = await until(ended, "the cut-short import to end")
        assert first["status"] == "failed" and "interrupted" in first["error"], first
        assert first["rows"]["accepted"] == WHOLE_BATCHES * BATCH and first["rows"]["rejected"] == 0, first["rows"]

        conn = await asyncpg.connect(dsn)
        try:
            written = await conn.fetchval("SELECT count(*) FROM members")
            assert written == WHOLE_BATCHES * BATCH, "a partial batch or the cut row was written"
            events = await outbox_events(dsn, JOINED)
            assert len(events) == written and {e.data["import_id"] for e in events} == {first["id"]}

            again = await api.post(
                "/v1/members:import", params={"branch_id": branch}, content=data, headers={"Content-Type": "text/csv"}
            )
            assert again.status_code == 201, again.text
            rows = again.json()["rows"]
            assert again.json()["status"] == "completed"
            assert rows == {"total": ROWS, "accepted": ROWS - written, "rejected": 0, "already_members": written}

            assert await conn.fetchval("SELECT count(*) FROM members") == ROWS  # (one per person: a unique index)
        finally:
            await conn.close()
        events = await outbox_events(dsn, JOINED)
        member_ids = [e.data["member_id"] for e in events]
        assert len(member_ids) == ROWS and len(set(member_ids)) == ROWS, "a member.joined twice or missing"
