"""A background loop that waits with a time limit stops when it is cancelled, even if what it waits
for happens in the same loop turn (Python 3.11's asyncio.wait_for loses that cancellation)."""
import asyncio
import sys

import pytest

from shared.timing import wait_set, within


async def cancel_as_it_wakes(wait) -> bool:
    """Whether a loop ``while True: await wait(event)`` ends when cancelled as its event is set."""
    event = asyncio.Event()

    async def loop():
        while True:
            event.clear()
            await wait(event)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)  # the loop is waiting
    event.set()
    task.cancel()  # the same turn
    await asyncio.wait({task}, timeout=1)
    ended = task.done()
    while not task.done():  # clean up whatever survived
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    return ended


async def test_wait_set_never_loses_a_cancellation():
    for _ in range(20):
        assert await cancel_as_it_wakes(lambda e: wait_set(e, 60))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for was fixed in Python 3.12")
async def test_the_flaw_it_avoids_is_real_here():
    async def with_wait_for(e):
        try:
            await asyncio.wait_for(e.wait(), timeout=60)
        except asyncio.TimeoutError:
            pass

    assert not await cancel_as_it_wakes(with_wait_for)


async def test_wait_set_and_within_time_out():
    assert await wait_set(asyncio.Event(), 0.01) is False
    event = asyncio.Event()
    event.set()
    assert await wait_set(event, 0.01) is True
    assert await within(asyncio.sleep(0, "done"), 1) == "done"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(10), 0.01)
