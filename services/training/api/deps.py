"""What every training route depends on: the scopes and a write's runner (the database pool is shared.http.Db)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from shared.auth import Principal, require
from shared.clock import today_cn
from shared.http import write

WRITE = require("training:write")
READ = require("training:read")
Writer = Annotated[Principal, Depends(WRITE)]
Reader = Annotated[Principal, Depends(READ)]


async def run_write(
    request: Request,
    actor: Principal,
    operation: str,
    payload: dict[str, Any],
    command: Callable[[asyncpg.Connection, Principal, Any], Awaitable[BaseModel]],
    status: int = 200,
    **dump: Any,
) -> JSONResponse:
    """One write: ``command(conn, actor, today)`` in a transaction with ``Idempotency-Key`` (a repeat replays
    the first answer); the answer is the response model it returns."""
    today = today_cn()

    async def run(conn: asyncpg.Connection) -> tuple[int, Any]:
        return status, (await command(conn, actor, today)).model_dump(mode="json", **dump)

    return await write(request, actor, operation, payload, run)
