"""Membership service: wiring and entry point (``python -m services.membership api``)."""
from __future__ import annotations

import sys

import uvicorn

from services.membership.api import router
from shared.http import create_app
from shared.settings import Settings


def build_app(settings: Settings | None = None):
    settings = settings or Settings(service="membership")
    return create_app(service="membership", settings=settings, routers=[router],
                      title="Changai membership (工会会员与组织)",
                      description="Regions, union branches, members, transfers and service stations.")


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = Settings(service="membership")
    uvicorn.run(build_app(settings), host=settings.http_host, port=settings.http_port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
