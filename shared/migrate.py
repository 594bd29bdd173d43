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


async def apply(dsn_or_conn, service: str) -> list[str]:
    """Apply what is missing; return the names applied now."""
    conn = await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    applied_now: list[str] = []
    try:
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
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
    return applied_now


def main() -> None:
    parser = argparse.ArgumentParser(description="apply a service's migrations")
    parser.add_argument("service")
    parser.add_argument("--dsn", required=True)
    args = parser.parse_args()
    names = asyncio.run(apply(args.dsn, args.service))
    print(f"{args.service}: {len(names)} migration(s) applied" + (f": {', '.join(names)}" if names else ""))


if __name__ == "__main__":
    main()
