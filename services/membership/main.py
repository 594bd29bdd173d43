"""Membership service: wiring and entry point (``python -m services.membership api``)."""

from __future__ import annotations

import gc
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


# Measured on the 450,000-member import (docs/membership.md, "Where the time goes"): with CPython's
# defaults the garbage collector took ~20 % of the service's CPU, most of it full collections that walk
# every object the service loaded at startup (~100,000: FastAPI, pydantic, the event catalogue) again and
# again while an import allocates millions of short-lived objects, all freed by reference counting.
# So the service process freezes what startup built (never scanned again) and collects its youngest
# generation every 50,000 allocations instead of 700; the older generations keep their defaults.
GC_GEN0_THRESHOLD = 50_000


async def freeze_startup_objects(app: FastAPI):
    """Last lifespan part of the service process: what startup built lives as long as the process."""
    gc.collect()
    gc.freeze()
    return None


def build_app(settings: Settings | None = None, *, process: bool = False):
    """The app; ``process``: it is this process's only app (``main``), so it may tune the process's
    garbage collector (not in tests, which build many apps in one interpreter)."""
    settings = _membership_settings(settings)
    commands = [commands_part(settings.commands_group_id)] if settings.consume_commands else []
    return create_app(
        service="membership",
        settings=settings,
        routers=[router],
        title="Changai membership (工会会员与组织)",
        description="Regions, union branches, members, transfers, service stations and bulk import.",
        parts=[vault_part, certificates_part, *commands, *([freeze_startup_objects] if process else [])],
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = MembershipSettings(service="membership")
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    serve(build_app(settings, process=True), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
