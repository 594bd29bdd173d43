"""An API process keeps an idle keep-alive connection open longer than clients keep theirs, so a
client's next request on it does not race the server closing it (uvicorn's default closes at 5 s)."""
import asyncio

import pytest

pytestmark = pytest.mark.integration


async def get_livez(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def test_an_idle_connection_outlives_the_old_five_seconds(stack, make_database):
    env = stack.service_env("funding", database_url=await make_database("funding"))  # the default keep-alive
    await stack.start_service("funding", ["-m", "services.funding", "api"], env)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(env["CHANGAI_HTTP_PORT"]))
    try:
        assert await get_livez(reader, writer) == b"HTTP/1.1 200 OK"
        await asyncio.sleep(7)  # not a wait for a condition: the idle time is what is tested (> uvicorn's 5 s)
        assert not reader.at_eof(), "the server closed the idle connection"
        assert await get_livez(reader, writer) == b"HTTP/1.1 200 OK"  # the same connection serves again
    finally:
        writer.close()
