"""Notifier: wiring and entry points.

    python -m services.notifier api      # the HTTP API (channels, log, resends)
    python -m services.notifier worker   # the Faust worker: route → render → deliver, retries

Both refuse to start when a registered event type has no template.
"""

from __future__ import annotations

import asyncio
import sys

from services.notifier.settings import NotifierSettings


def build_app(settings: NotifierSettings | None = None):
    from services.notifier.api import router
    from services.notifier.pipeline import seed_channels
    from services.notifier.usecases import renderer
    from shared.http import create_app

    settings = settings or NotifierSettings()
    renderer().check()

    async def seed(app) -> None:
        await seed_channels(app.state.db, settings)

    app = create_app(
        service="notifier",
        settings=settings,
        routers=[router],
        parts=[seed],
        title="Changai notifier (通知)",
        description="Notice channels of union branches and federations (webhook, WeCom, DingTalk, "
        "e-mail), subscriptions, the delivery log and resends.",
    )
    app.state.settings = settings
    return app


def run_worker(settings: NotifierSettings) -> None:
    from services.notifier.consumers import build_worker, ensure_topics
    from services.notifier.render import Renderer
    from shared import logging as changai_logging
    from shared.streams import run_worker as run

    changai_logging.configure("notifier-worker", settings.log_level)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per notice sent is the delivery log's job
    # httpcore traces every step of a request at DEBUG (~10 records a notice when enabled): never wanted here
    logging.getLogger("httpcore").setLevel(logging.INFO)
    Renderer().check()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(ensure_topics(settings))
    finally:
        loop.close()
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, _ = build_worker(settings)
    run(app, settings)


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "worker"
    settings = NotifierSettings()
    if role == "api":
        from shared.http import serve

        serve(build_app(settings), settings)
    elif role == "worker":
        run_worker(settings)
    else:
        raise SystemExit(f"unknown role {role!r}; use: api | worker")


if __name__ == "__main__":
    main(sys.argv[1:])
