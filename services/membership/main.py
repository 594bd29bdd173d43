"""Membership service: wiring and entry point (``python -m services.membership api``)."""

from __future__ import annotations

import sys

from fastapi import FastAPI

from services.membership.api import router
from services.membership.commands import commands_part
from services.membership.consumers import certificate_consumer
from services.membership.pii import Vault
from services.membership.settings import MembershipSettings
from shared.http import create_app, serve
from shared.settings import Settings

__all__ = ["MembershipSettings", "build_app", "main"]


def _membership_settings(settings: Settings | None) -> MembershipSettings:
    if settings is None:
        return MembershipSettings(service="membership")
    if isinstance(settings, MembershipSettings):
        return settings
    return MembershipSettings(**settings.model_dump())


async def vault_part(app: FastAPI):
    app.state.vault = Vault(app.state.settings.data_key_bytes())
    return None


async def certificates_part(app: FastAPI):
    settings: MembershipSettings = app.state.settings
    if not settings.consume_certificates:
        return None
    consumer = certificate_consumer(app.state.db, settings.kafka_bootstrap, settings.certificates_group_id)
    consumer.start()
    app.state.certificates = consumer
    return consumer.stop


def build_app(settings: Settings | None = None):
    settings = _membership_settings(settings)
    return create_app(
        service="membership",
        settings=settings,
        routers=[router],
        title="Changai membership (工会会员与组织)",
        description="Regions, union branches, members, transfers, service stations and bulk import.",
        parts=[vault_part, certificates_part, commands_part],
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = MembershipSettings(service="membership")
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
