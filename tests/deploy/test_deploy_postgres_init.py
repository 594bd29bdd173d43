"""deploy/compose/postgres/init-databases.sh, run against the real PostgreSQL of the tests:
it creates one role and one database per service, and a service's migrations apply as that
role (no superuser needed), which is how docker-compose.yml runs the services."""
from __future__ import annotations

import os
import subprocess
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

import deploy_support as ds

pytestmark = pytest.mark.integration

SCRIPT = ds.ROOT / "deploy" / "compose" / "postgres" / "init-databases.sh"


async def test_deploy_postgres_init_script_creates_a_database_per_service(make_database):
    from shared import migrate

    server = urlsplit(await make_database("membership"))
    suffix = uuid.uuid4().hex[:8]
    names = [f"deploycheck_{suffix}_a", f"deploycheck_{suffix}_b"]
    password = "pw-" + suffix
    admin = await asyncpg.connect(host=server.hostname, port=server.port, user="postgres", database="postgres")
    try:
        done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env={
            **os.environ, "POSTGRES_USER": "postgres", "PGHOST": server.hostname, "PGPORT": str(server.port),
            "CHANGAI_DATABASES": " ".join(names), "CHANGAI_DB_PASSWORD": password})
        assert done.returncode == 0, done.stderr
        owners = dict(await admin.fetch(
            "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE d.datname = ANY($1::text[])", names))
        assert owners == {n: n for n in names}
        # A service's migrations apply as its own role.
        dsn = f"postgresql://{names[0]}:{password}@{server.hostname}:{server.port}/{names[0]}"
        applied = await migrate.apply(dsn, "membership")
        assert applied, "no migration applied"
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
            assert await conn.fetchval("SELECT current_user") == names[0]
        finally:
            await conn.close()
        # Run twice (a restarted init) it fails loudly instead of half-creating.
        again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env={
            **os.environ, "POSTGRES_USER": "postgres", "PGHOST": server.hostname, "PGPORT": str(server.port),
            "CHANGAI_DATABASES": names[0], "CHANGAI_DB_PASSWORD": password})
        assert again.returncode != 0 and "already exists" in again.stderr
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()
