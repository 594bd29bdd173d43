"""Migrations before the rollout (issue 19 item 7), against the real PostgreSQL of the tests:
where a Job migrates (CHANGAI_MIGRATE_ON_START=false) a service only checks the schema and refuses
to start on a missing migration; a run that waits for a lock fails after the lock timeout."""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared import migrate
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def _empty_database(dsn: str) -> str:
    parts = urlsplit(dsn)
    name = f"migcheck_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(host=parts.hostname, port=parts.port, user="postgres", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit((parts.scheme, f"postgres@{parts.hostname}:{parts.port}", f"/{name}", "", ""))


async def test_a_service_that_does_not_migrate_refuses_an_old_schema(make_database):
    dsn = await _empty_database(await make_database("funding"))
    checking = Settings(database_url=dsn, migrate_on_start=False)
    with pytest.raises(migrate.SchemaNotCurrent, match="shared/0001"):
        await migrate.prepare(checking, "funding")
    # The Job's run (the same code as local starts) applies them; the check then passes.
    await migrate.prepare(Settings(database_url=dsn, migrate_on_start=True), "funding")
    await migrate.prepare(checking, "funding")
    conn = await asyncpg.connect(dsn)
    try:
        last = await conn.fetchval("SELECT max(name) FROM schema_migrations WHERE name LIKE 'funding/%'")
        await conn.execute("DELETE FROM schema_migrations WHERE name = $1", last)
    finally:
        await conn.close()
    with pytest.raises(migrate.SchemaNotCurrent, match=last):
        await migrate.prepare(checking, "funding")


async def test_a_migration_run_gives_up_on_a_held_lock(make_database):
    dsn = await make_database("reform")
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", migrate.LOCK_ID)  # another run, stuck
        with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
            await migrate.apply(dsn, "reform", lock_timeout_s=0.2)
    finally:
        await holder.close()
    assert await migrate.apply(dsn, "reform", lock_timeout_s=0.2) == []
