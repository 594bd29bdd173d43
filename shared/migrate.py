"""Numbered SQL migrations, applied in order and recorded; safe to run twice.

Every service database first gets the platform's own tables (``shared/migrations``:
outbox, inbox, idempotency keys), then the service's ``services/<name>/migrations``.
An advisory lock makes concurrent runs (several replicas starting) wait for each other.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
LOCK_ID = 0x636861_6E6761  # "changa": one lock for every migration run in a database


def migration_dirs(service: str) -> list[tuple[str, Path]]:
    return [("shared", ROOT / "shared" / "migrations"), (service, ROOT / "services" / service / "migrations")]


class SchemaNotCurrent(RuntimeError):
    """The database lacks a migration of this build (or one changed): the migrations Job has not run."""


def _wanted(service: str) -> dict[str, str]:
    wanted = {}
    for scope, folder in migration_dirs(service):
        if folder.is_dir():
            for path in sorted(folder.glob("*.sql")):
                wanted[f"{scope}/{path.name}"] = hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()
    return wanted


async def check(dsn: str, service: str) -> None:
    """Refuse (SchemaNotCurrent) unless every migration file of this build is applied, unchanged."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = (
            {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
            if exists
            else {}
        )
    finally:
        await conn.close()
    wanted = _wanted(service)
    missing = [n for n in wanted if n not in done]
    changed = [n for n in wanted if n in done and done[n] != wanted[n]]
    if missing or changed:
        raise SchemaNotCurrent(
            f"{service}: the database schema is not this build's (missing: {', '.join(missing) or 'none'}; "
            f"changed: {', '.join(changed) or 'none'}). CHANGAI_MIGRATE_ON_START is false: run the migrations "
            f"Job first (python -m shared.migrate {service})"
        )


async def prepare(settings, service: str) -> None:
    """At a service's start: apply the migrations (local, Compose), or where a Job applies them
    (Kubernetes, CHANGAI_MIGRATE_ON_START=false) only check that they are all applied."""
    if settings.migrate_on_start:
        await apply(settings.database_url, service, lock_timeout_s=settings.migrate_lock_timeout_s)
    else:
        await check(settings.database_url, service)


async def apply(dsn_or_conn, service: str, *, lock_timeout_s: float | None = None) -> list[str]:
    """Apply what is missing; return the names applied now. With ``lock_timeout_s`` a run that waits
    longer than that for a lock (another run, or a table a migration alters) fails instead of hanging."""
    conn = await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    applied_now: list[str] = []
    try:
        if lock_timeout_s:
            await conn.execute(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
            for scope, folder in migration_dirs(service):
                if not folder.is_dir():
                    continue
                for path in sorted(folder.glob("*.sql")):
                    name = f"{scope}/{path.name}"
                    sql = path.read_text(encoding="utf-8")
                    checksum = hashlib.sha256(sql.encode()).hexdigest()
                    if name in done:
                        if done[name] != checksum:
                            raise RuntimeError(f"migration {name} changed after it was applied; add a new one instead")
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", name, checksum
                        )
                    applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
            if lock_timeout_s:
                await conn.execute("RESET lock_timeout")
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
    return applied_now


def main() -> None:
    parser = argparse.ArgumentParser(description="apply a service's migrations (the Kubernetes migrations Job)")
    parser.add_argument("service")
    parser.add_argument("--dsn", default=None, help="default: CHANGAI_DATABASE_URL")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="seconds to wait for a lock before failing (default: CHANGAI_MIGRATE_LOCK_TIMEOUT_S)",
    )
    parser.add_argument("--check", action="store_true", help="apply nothing; exit 1 unless all are applied")
    args = parser.parse_args()
    import os

    # Not Settings(): a production Settings asks for secrets a migration does not use.
    dsn = args.dsn or os.environ.get("CHANGAI_DATABASE_URL")
    if not dsn:
        raise SystemExit("give --dsn or set CHANGAI_DATABASE_URL")
    if args.check:
        try:
            asyncio.run(check(dsn, args.service))
        except SchemaNotCurrent as exc:
            raise SystemExit(str(exc)) from None
        print(f"{args.service}: every migration applied")
        return
    timeout = (
        args.lock_timeout
        if args.lock_timeout is not None
        else float(os.environ.get("CHANGAI_MIGRATE_LOCK_TIMEOUT_S", "30"))
    )
    names = asyncio.run(apply(dsn, args.service, lock_timeout_s=timeout))
    print(f"{args.service}: {len(names)} migration(s) applied" + (f": {', '.join(names)}" if names else ""))


if __name__ == "__main__":
    main()
