"""Waiting with a time limit without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns normally when the awaited thing completes in the
same loop turn as the task's cancellation, and the cancellation is lost (fixed in 3.12, where
``wait_for`` is built on ``asyncio.timeout``). A background loop that waits that way can then
survive ``task.cancel()`` and keep running: the outbox relay did, once in a full test run, and
its service's shutdown waited on it. ``asyncio.timeout`` does not have the flaw; these use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; whether it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``timeout`` seconds (it is then cancelled)."""
    async with asyncio.timeout(timeout):
        return await awaitable
