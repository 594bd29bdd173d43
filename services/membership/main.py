"""Membership service: wiring and entry point.

python -m services.membership api                 # the HTTP API (+ outbox relay, certificates, intake commands)
python -m services.membership publish-lookups     # member.lookup of every member (see publish_lookups)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg
from fastapi import FastAPI

from services.membership import usecases
from services.membership.api import router
from services.membership.commands import commands_part
from services.membership.consumers import certificate_consumer
from services.membership.pii import Vault
from services.membership.settings import MembershipSettings
from shared.http import create_app, serve
from shared.settings import Settings

__all__ = ["MembershipSettings", "build_app", "main", "publish_lookups"]


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
    """The app (the service process's garbage collector is tuned by ``shared.http.serve``, as every service's)."""
    settings = _membership_settings(settings)
    commands = [commands_part(settings.commands_group_id)] if settings.consume_commands else []
    return create_app(
        service="membership",
        settings=settings,
        routers=[router],
        title="Changai membership (工会会员与组织)",
        description="Regions, union branches, members, transfers, service stations and bulk import.",
        parts=[vault_part, certificates_part, *commands],
    )


async def publish_lookups(
    dsn: str,
    *,
    batch: int = 5000,
    created_before: datetime | None = None,
    progress: Callable[[str], None] = print,
) -> int:
    """``member.lookup`` of every member (created before ``created_before`` when given) into the outbox, a
    batch a transaction, in id order; returns how many. The running service's outbox relay publishes them.
    Safe to stop and run again: each member's fact again changes nothing downstream."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    total, after = 0, None
    try:
        while True:
            async with conn.transaction():
                n, last = await usecases.publish_lookups(conn, after=after, limit=batch, created_before=created_before)
            if last is None:
                break
            total, after = total + n, last
            progress(f"... {total} member.lookup events written to the outbox (last member {after})")
    finally:
        await conn.close()
    progress(f"published: {total} member.lookup events in {time.monotonic() - started:.1f} s")
    return total


def _lookups_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.membership publish-lookups",
        description="Write member.lookup {member_id, region_code, id_hash} of every member to the outbox "
        "(for readers whose member.joined had no id_hash); the running service's relay publishes them.",
    )
    parser.add_argument("--batch", type=int, default=5000, help="members a transaction (default 5000)")
    parser.add_argument(
        "--created-before",
        type=datetime.fromisoformat,
        default=None,
        metavar="TIME",
        help="only members created before this time (ISO 8601 with its offset, e.g. when the release that put "
        "id_hash on member.joined went live); default: every member",
    )
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.created_before is not None and args.created_before.tzinfo is None:
        parser.error("--created-before needs its offset (e.g. 2026-12-07T20:00:00+08:00)")
    return args


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    settings = MembershipSettings(service="membership")
    if role == "api":
        serve(build_app(settings), settings)
    elif role == "publish-lookups":
        from shared import migrate

        args = _lookups_args(argv[1:])

        async def run() -> None:
            await migrate.prepare(settings, "membership")
            await publish_lookups(settings.database_url, batch=args.batch, created_before=args.created_before)

        asyncio.run(run())
    else:
        raise SystemExit(f"unknown role {role!r}; use: api | publish-lookups")


if __name__ == "__main__":
    main(sys.argv[1:])
