"""The boundary of every API over a real socket (uvicorn) and a real PostgreSQL: an unexpected error is a
500 problem on a connection that stays open, the body limit counts what is streamed, hostile values are
422 with nothing written, and a database that cannot be reached is 503 with Retry-After, logged once
when the outage starts and once when it ends."""
import asyncio
import contextlib
import logging
import socket
from urllib.parse import urlsplit

import orjson
import pytest
import uvicorn
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from shared.auth import Principal, mint_token, require
from shared.http import body_limit, create_app
from shared.settings import Settings

pytestmark = pytest.mark.integration

router = APIRouter(prefix="/v1")


class NoteIn(BaseModel):
    text: str
    n: int


@router.post("/notes", status_code=201)
async def add_note(body: NoteIn, request: Request, principal: Principal = Depends(require("notes:write"))):
    async with request.app.state.db.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO boundary_notes (text, n) VALUES ($1, 0)", body.text)  # half a write...
        await conn.execute("UPDATE boundary_notes SET n = $1 WHERE text = $2", body.n, body.text)  # ...then n
    return {"text": body.text, "n": body.n}


@router.get("/notes")
async def list_notes(request: Request, after: int = Query(0),
                     principal: Principal = Depends(require("notes:write"))):
    rows = await request.app.state.db.fetch("SELECT text, n FROM boundary_notes WHERE n > $1 ORDER BY n", after)
    return {"items": [dict(r) for r in rows]}


@router.get("/boom")
async def boom():
    raise RuntimeError("an unexpected bug")


@router.post("/uploads", status_code=201)
@body_limit(None)
async def upload(request: Request):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"bytes": size}


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage().startswith(prefix)]


class Proxy:
    """A TCP relay between the API and PostgreSQL, so the test can take the database away from this API
    alone (the session's PostgreSQL serves other tests): ``cut`` resets every connection and refuses new
    ones, ``restore`` listens again on the same port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.transports: list[asyncio.Transport] = []

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self):
        self.server.close()
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def restore(self):
        await self.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def api(stack, make_database):
    dsn = await make_database("httpboundary")
    proxy = Proxy(urlsplit(dsn).port)
    await proxy.start()
    proxied = dsn.replace(f":{urlsplit(dsn).port}/", f":{proxy.port}/")
    settings = Settings(service="httpboundary", database_url=proxied, http_max_body_bytes=64 * 1024,
                        db_pool_min=1, db_pool_max=4, db_connect_timeout_s=5)
    app = create_app(service="httpboundary", settings=settings, routers=[router], title="t", with_relay=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           timeout_keep_alive=75, lifespan="on"))
    records = Records()
    logging.getLogger("shared.http").addHandler(records)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), 60, "uvicorn to start")
    assert server.started, task.exception()
    await app.state.db.execute("CREATE TABLE IF NOT EXISTS boundary_notes (text text PRIMARY KEY, n bigint)")
    try:
        yield port, proxy, records, app
    finally:
        logging.getLogger("shared.http").removeHandler(records)
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await proxy.cut()


class Connection:
    """One HTTP/1.1 keep-alive connection, spoken by hand so the test sees what the server does to it."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                   chunks: list[bytes] | None = None):
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        for chunk in chunks or ():
            self.writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await self.writer.drain()
        if chunks is not None:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        return await self.answer()

    async def answer(self):
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        return int(status_line.split()[1]), headers, orjson.loads(body) if body else None

    def close(self):
        self.writer.close()


WRITE = {"Authorization": "Bearer " + mint_token("tester", ["notes:write"]), "Content-Type": "application/json"}


async def test_an_unexpected_error_is_a_500_problem_and_the_connection_serves_on(api):
    port, *_ = api
    conn = await Connection.open(port)
    try:
        status, headers, body = await conn.send("GET", "/v1/boom")
        assert status == 500 and headers["content-type"] == "application/problem+json"
        assert body["type"].endswith("/internal-error") and "Traceback" not in str(body)
        assert headers.get("connection", "").lower() != "close"
        status, _, body = await conn.send("GET", "/livez")  # the same connection: not reset
        assert status == 200 and body["status"] == "ok"
    finally:
        conn.close()


async def test_hostile_values_are_422_and_nothing_is_written(api):
    port, _, _, app = api
    conn = await Connection.open(port)
    try:
        for payload in (b'{"text": "nul\\u0000inside", "n": 1}', b'{"text": "huge", "n": 99999999999999999999}',
                        b'{"text": "huge-as-text", "n": "99999999999999999999"}'):
            status, headers, body = await conn.send("POST", "/v1/notes", payload, WRITE)
            assert status == 422 and headers["content-type"] == "application/problem+json", body
            assert "99999999999999999999" not in str(body)
        for path in ("/v1/notes?after=99999999999999999999", "/v1/notes?after=1%00"):
            status, _, body = await conn.send("GET", path, headers=WRITE)
            assert status == 422, body
        assert await app.state.db.fetchval("SELECT count(*) FROM boundary_notes") == 0  # no half-written row
        status, _, body = await conn.send("POST", "/v1/notes", orjson.dumps({"text": "fine", "n": 2**63 - 1}), WRITE)
        assert status == 201, body
    finally:
        conn.close()


async def test_the_body_limit_counts_streamed_bytes_and_a_route_may_be_unlimited(api):
    port, *_ = api
    conn = await Connection.open(port)
    try:
        chunks = [b'{"text": "'] + [b"a" * 16384] * 8 + [b'", "n": 1}']  # 128 KiB, no Content-Length
        status, _, body = await conn.send("POST", "/v1/notes", headers=WRITE, chunks=chunks)
        assert status == 413 and body["type"].endswith("/content-too-large"), body
        assert (await conn.send("GET", "/livez"))[0] == 200  # the unread rest was skipped: the connection serves on
    finally:
        conn.close()
    conn = await Connection.open(port)
    try:
        status, _, body = await conn.send("POST", "/v1/notes", b"{" + b" " * (70 * 1024) + b"}", WRITE)
        assert status == 413, body
        assert (await conn.send("GET", "/livez"))[0] == 200
    finally:
        conn.close()
    conn = await Connection.open(port)
    try:
        status, _, body = await conn.send("POST", "/v1/uploads", headers={"Content-Type": "text/csv"},
                                          chunks=[b"x" * 65536] * 48)  # 3 MiB through the exempt route
        assert status == 201 and body == {"bytes": 3 * 1024 * 1024}
    finally:
        conn.close()


async def test_a_database_outage_is_503_with_retry_after_and_logged_once_each_way(api):
    port, proxy, records, _ = api
    records.records.clear()
    conn = await Connection.open(port)
    try:
        status, _, _ = await conn.send("POST", "/v1/notes", orjson.dumps({"text": "before", "n": 10}), WRITE)
        assert status == 201
        await proxy.cut()
        for i in range(20):
            status, headers, body = await conn.send("POST", "/v1/notes",
                                                    orjson.dumps({"text": f"during {i}", "n": 11 + i}), WRITE)
            assert status == 503, body
            assert body["type"].endswith("/database-unavailable") and int(headers["retry-after"]) > 0
            status, headers, body = await conn.send("GET", "/v1/notes", headers=WRITE)
            assert status == 503 and "retry-after" in headers, body
        assert len(records.messages("database unavailable")) == 1
        assert not records.messages("unhandled error")
        assert not records.messages("database reachable again")
        await proxy.restore()
        await until(lambda: records.messages("database reachable again"), 30, "the end of the outage to be logged")
        [back] = records.messages("database reachable again")
        assert back.refused_requests == 40
        status, _, body = await conn.send("POST", "/v1/notes", orjson.dumps({"text": "after", "n": 99}), WRITE)
        assert status == 201, body
        texts = [r["text"] for r in (await conn.send("GET", "/v1/notes?after=9", headers=WRITE))[2]["items"]]
        assert "before" in texts and "after" in texts and not [t for t in texts if t.startswith("during")]
    finally:
        conn.close()


async def test_a_real_service_with_its_relay_through_an_outage(stack, make_database):
    """The fault of issue 12 (PostgreSQL stopped under a stream of writes: 500s with two tracebacks per
    request) on the membership service as it runs, outbox relay included: 503 with Retry-After while the
    database is away, one line when it goes and one when it is back, a handful of rate-limited lines from
    the relay and asyncpg's pool, and writes accepted again afterwards."""
    import json
    import random

    import httpx

    from shared.identifiers import uscc_check_char

    dsn = await make_database("membership")
    proxy = Proxy(urlsplit(dsn).port)
    await proxy.start()
    env = stack.service_env("membership", database_url=dsn.replace(f":{urlsplit(dsn).port}/", f":{proxy.port}/"),
                            CHANGAI_DB_CONNECT_TIMEOUT_S="3")
    svc = await stack.start_service("membership", ["-m", "services.membership", "api"], env, timeout=120)
    auth = {"Authorization": "Bearer " + mint_token("t", ["membership:read", "membership:write"], "640000")}

    def branch() -> dict:
        first = "91640104" + "".join(random.choice("0123456789ABCDEFGH") for _ in range(9))
        return {"name": f"停库测试工会{random.randrange(10**6)}", "credit_code": first + uscc_check_char(first),
                "region_code": "640104", "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"}

    def log_lines() -> list[dict]:
        lines = []
        for raw in svc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if raw.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(raw))
        return lines

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}", timeout=30) as http:
            assert (await http.post("/v1/branches", json=branch(), headers=auth)).status_code == 201
            before = len(log_lines())
            await proxy.cut()
            answers = []
            for _ in range(25):
                answers.append(await http.post("/v1/branches", json=branch(), headers=auth))
                answers.append(await http.get("/v1/branches", headers=auth))
            assert {r.status_code for r in answers} == {503}, [(r.status_code, r.text[:200]) for r in answers[:4]]
            assert all(r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0
                       for r in answers)
            await proxy.restore()

            async def written() -> bool:
                return (await http.post("/v1/branches", json=branch(), headers=auth)).status_code == 201

            deadline = asyncio.get_running_loop().time() + 60
            while not await written():
                assert asyncio.get_running_loop().time() < deadline, "writes were not accepted again"
                await asyncio.sleep(0.2)
            await until(lambda: any(line["message"] == "database reachable again" for line in log_lines()), 30,
                        "the end of the outage in the log")
        during = log_lines()[before:]
        messages = [line["message"] for line in during]
        assert messages.count("database unavailable: answering 503 until it is back") == 1, messages
        assert messages.count("database reachable again") == 1, messages
        assert "unhandled error" not in messages and "Exception in ASGI application" not in messages
        tracebacks = [line for line in during if "Traceback" in str(line.get("error", ""))]
        print(f"outage of {len(answers)} requests: {len(during)} log lines, {len(tracebacks)} with a traceback:",
              sorted({(m["logger"], m["message"]) for m in during}))
        assert len(during) < 20 and len(tracebacks) <= 4, [(m["logger"], m["message"]) for m in during]
    finally:
        await svc.stop()
        await proxy.cut()
