"""Reform coordination (改革协调): wiring and entry point (``python -m services.reform api``).

One process serves the HTTP API and runs the supervision scan (督办): every
``CHANGAI_REFORM_SUPERVISION_INTERVAL_S`` it tells overdue tasks and silent ones, each once.
Several replicas may all scan: the task rows are claimed with SKIP LOCKED and the stage told is
stored with its event, so each notice is told exactly once whichever replica finds it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta

from fastapi import FastAPI
from prometheus_client import Counter

from services.reform import usecases
from services.reform.api import router
from services.reform.settings import ReformSettings
from shared.clock import now_cn
from shared.crypto import FieldCipher
from shared.http import create_app, serve
from shared.timing import wait_set

log = logging.getLogger(__name__)

SUPERVISION = Counter("changai_reform_supervision_notices_total", "Supervision notices told (督办)", ["stage"])


async def run_supervision(pool, settings: ReformSettings) -> int:
    """One scan in one transaction; returns how many notices it told."""
    now = now_cn()
    async with pool.acquire() as conn, conn.transaction():
        events = await usecases.supervise(conn, now.date(), now, timedelta(days=settings.reform_progress_quiet_days))
    for event in events:
        SUPERVISION.labels(event.event_type.split(".")[3]).inc()
    return len(events)


def supervision_part(settings: ReformSettings):
    async def supervision(app: FastAPI):
        app.state.cipher = FieldCipher(settings.data_key_bytes(), "reform")
        if not settings.reform_supervision:
            return None
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    told = await run_supervision(app.state.db, settings)
                    if told:
                        log.info("supervision notices told", extra={"notices": told})
                except Exception:
                    log.warning("supervision scan failed; retrying at the next interval", exc_info=True)
                await wait_set(stop, settings.reform_supervision_interval_s)

        task = asyncio.create_task(loop(), name="reform-supervision")

        async def halt() -> None:
            stop.set()
            await task

        return halt

    return supervision


def build_app(settings: ReformSettings | None = None) -> FastAPI:
    settings = settings or ReformSettings()
    return create_app(
        service="reform",
        settings=settings,
        routers=[router],
        title="Changai reform coordination (改革协调)",
        description="The coordinating office's task ledger (任务台账), member units and liaison officers, "
        "policy documents, pilots, city plans, supervision and the advancement meeting's report.",
        parts=[supervision_part(settings)],
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = ReformSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
