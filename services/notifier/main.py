"""Notifier: wiring and entry point (``python -m services.notifier worker``)."""
from __future__ import annotations

import sys

from services.notifier import consumers
from shared.settings import Settings
from shared.streams import create_stream_app, run_worker

settings = Settings(service="notifier")
app = create_stream_app("notifier", settings)
consumers.wire(app, settings)


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "worker"
    if role != "worker":
        raise SystemExit(f"unknown role {role!r}; use: worker")
    run_worker(app, settings)


if __name__ == "__main__":
    main(sys.argv[1:])
