"""Funding service: wiring and entry point (``python -m services.funding api``).

One process serves the HTTP API, runs the subsidy saga (a consumer of ``training.events``) and
keeps where membership's branches are (a consumer of ``membership.events``); set
``CHANGAI_FUNDING_SUBSIDY_CONSUMER=false`` and ``CHANGAI_FUNDING_BRANCH_CONSUMER=false`` to run an
API-only replica. It also applies the intake's settlements (``funding.commands``, ``commands.py``;
``CHANGAI_FUNDING_COMMANDS_CONSUMER=false`` turns that off).
"""

from __future__ import annotations

import sys

from services.funding.api import router
from services.funding.commands import commands_part
from services.funding.consumers import branch_part, seed_part, subsidy_part
from services.funding.settings import FundingSettings
from shared.http import create_app, serve


def build_app(settings: FundingSettings | None = None):
    settings = settings or FundingSettings()
    return create_app(
        service="funding",
        settings=settings,
        routers=[router],
        title="Changai funding (资金)",
        description="Funds, grants and disbursements on a double-entry ledger; training subsidies "
        "paid automatically when sessions complete.",
        parts=[
            seed_part(settings),
            subsidy_part(settings),
            branch_part(settings),
            *([commands_part(settings.funding_commands_group)] if settings.funding_commands_consumer else []),
        ],
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = FundingSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
