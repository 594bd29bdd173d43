"""Run a service with a fault point that exists only in tests: the outbox relay held in its crash window.

    python tests/e2e/fault_points.py -m services.membership api

With ``CHANGAI_TEST_RELAY_HOLD=<dir>``, the service's relay checks for ``<dir>/hold`` before each batch;
when it is there (the test writes it) the relay removes it, sends the batch, waits until Kafka has
acknowledged every record, writes the batch's event ids to ``<dir>/held`` and never marks the rows sent:
it holds there until the test kills the process (SIGKILL). Restarted, the relay publishes those rows
again, the same events with the same ids: the outbox's at-least-once window, forced rather than hoped
for (``tests/e2e/test_faults.py``). Without the variable the service runs unchanged.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared import outbox


def hold_after_ack(directory: Path) -> None:
    send = outbox.OutboxRelay._send  # noqa: SLF001 - the fault point wraps the relay's send

    async def held_send(self, producer, rows):
        futures = await send(self, producer, rows)
        ask = directory / "hold"
        if not ask.exists():
            return futures
        ask.unlink()

        async def hold():
            await asyncio.gather(*futures)  # every record of the batch acknowledged by Kafka
            ids = [orjson.loads(r["value"])["id"] for r in rows]
            (directory / "held.tmp").write_text("\n".join(ids))
            (directory / "held.tmp").rename(directory / "held")
            await asyncio.Event().wait()  # the mark-as-sent never comes: the process is killed here

        return [*futures, asyncio.ensure_future(hold())]

    outbox.OutboxRelay._send = held_send  # type: ignore[method-assign]  # noqa: SLF001


if __name__ == "__main__":
    if os.environ.get("CHANGAI_TEST_RELAY_HOLD"):
        hold_after_ack(Path(os.environ["CHANGAI_TEST_RELAY_HOLD"]))
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        raise SystemExit("usage: fault_points.py -m <module> [args...]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
