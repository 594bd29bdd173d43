"""Membership's SQL, through asyncpg.

Lock order, everywhere: branches (sorted by id) before members before stations, so a
merge, a transfer, a join and the certificate consumer never deadlock one another.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, TypeAlias

import asyncpg

from shared.events.membership import BranchEstablished, BranchUpdated

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

# -- branches ------------------------------------------------------------------
BRANCH_COLUMNS = (
    "id, seq, name, credit_code, region_code, industry_section, kind, parent_id, founded_on, status, "
    "ended_on, merged_into, transferred_to, created_at, updated_at"
)


async def insert_branch(conn: asyncpg.Connection, e: BranchEstablished) -> None:
    await conn.execute(
        """INSERT INTO branches (id, name, credit_code, region_code, industry_section, kind, parent_id, founded_on)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        e.branch_id,
        e.name,
        e.credit_code,
        e.region_code,
        e.industry_section,
        e.kind.value,
        e.parent_id,
        e.founded_on,
    )


async def active_branch_by_credit_code(conn: asyncpg.Connection, credit_code: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, region_code FROM branches WHERE credit_code = $1 AND status = 'active'", credit_code
    )


async def active_branches_by_credit_codes(conn: asyncpg.Connection, codes: list[str]) -> dict[str, uuid.UUID]:
    """The active branch of each employer named by credit code (a batch of the intake's joins)."""
    rows = await conn.fetch(
        "SELECT credit_code, id FROM branches WHERE credit_code = ANY($1::text[]) AND status = 'active'",
        sorted(set(codes)),
    )
    return {r["credit_code"]: r["id"] for r in rows}


async def branch_exists(conn: asyncpg.Connection, branch_id: uuid.UUID) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM branches WHERE id = $1)", branch_id)


async def get_branch(conn: Conn, branch_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {BRANCH_COLUMNS} FROM branches WHERE id = $1", branch_id)


async def lock_branches(
    conn: asyncpg.Connection, ids: list[uuid.UUID], mode: str = "SHARE"
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock the branches (FOR SHARE or FOR UPDATE) in id order; returns those that exist."""
    assert mode in ("SHARE", "UPDATE")
    rows = await conn.fetch(
        f"SELECT {BRANCH_COLUMNS} FROM branches WHERE id = ANY($1::uuid[]) ORDER BY id FOR {mode}", sorted(set(ids))
    )
    return {r["id"]: r for r in rows}


async def branch_member_count(conn: Conn, branch_id: uuid.UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM members WHERE branch_id = $1 AND status = 'active'", branch_id)


async def open_station_count(conn: Conn, branch_id: uuid.UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM stations WHERE branch_id = $1 AND status = 'open'", branch_id)


async def parent_chain_has(conn: asyncpg.Connection, start: uuid.UUID, needle: uuid.UUID) -> bool:
    """True when ``needle`` is ``start`` or one of its ancestors (a parent change would make a cycle)."""
    return await conn.fetchval(
        """WITH RECURSIVE chain(id, parent_id, depth) AS (
               SELECT id, parent_id, 0 FROM branches WHERE id = $1
               UNION ALL
               SELECT b.id, b.parent_id, c.depth + 1 FROM branches b JOIN chain c ON b.id = c.parent_id
               WHERE c.depth < 64)
           SELECT EXISTS (SELECT 1 FROM chain WHERE id = $2)""",
        start,
        needle,
    )


async def update_branch(conn: asyncpg.Connection, e: BranchUpdated) -> None:
    await conn.execute(
        """UPDATE branches SET name = $2, region_code = $3, industry_section = $4, kind = $5, parent_id = $6,
                  updated_at = now() WHERE id = $1""",
        e.branch_id,
        e.name,
        e.region_code,
        e.industry_section,
        e.kind.value,
        e.parent_id,
    )


async def end_branch(
    conn: asyncpg.Connection,
    branch_id: uuid.UUID,
    status: str,
    on: date,
    *,
    merged_into: uuid.UUID | None = None,
    transferred_to: uuid.UUID | None = None,
) -> None:
    await conn.execute(
        "UPDATE branches SET status = $2, ended_on = $3, merged_into = $4, transferred_to = $5, updated_at = now() "
        "WHERE id = $1",
        branch_id,
        status,
        on,
        merged_into,
        transferred_to,
    )


async def list_branches(
    conn: Conn,
    *,
    regions: list[str],
    industry_section: str | None,
    kind: str | None,
    status: str | None,
    founded_from: date | None,
    founded_to: date | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    where: list[str] = ["region_code = ANY($1::text[])"]
    args: list[Any] = [regions]
    for clause, value in (
        ("industry_section = ${}", industry_section),
        ("kind = ${}", kind),
        ("status = ${}", status),
        ("founded_on >= ${}", founded_from),
        ("founded_on <= ${}", founded_to),
        ("seq > ${}", after),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return await conn.fetch(
        f"SELECT {BRANCH_COLUMNS} FROM branches WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(args)}", *args
    )


# -- members -------------------------------------------------------------------
MEMBER_COLUMNS = (
    "m.id, m.branch_id, m.name, m.id_masked, m.phone_masked, m.birth_year, m.sex, m.home_region_code, "
    "m.employment_form, m.occupation, m.skill_level, m.status, m.joined_on, m.ended_on, m.created_at, "
    "m.updated_at, b.region_code"
)


MEMBER_RETURNING = (
    "id, branch_id, name, id_masked, phone_masked, birth_year, sex, home_region_code, employment_form, "
    "occupation, skill_level, status, joined_on, ended_on"
)


async def insert_member(conn: asyncpg.Connection, **row: Any) -> asyncpg.Record | None:
    """Insert unless this person (id_hash) is already a member; the new row (its viewable columns), or None."""
    cols = list(row)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return await conn.fetchrow(
        f"INSERT INTO members ({', '.join(cols)}) VALUES ({placeholders}) "
        f"ON CONFLICT (id_hash) DO NOTHING RETURNING {MEMBER_RETURNING}",
        *row.values(),
    )


NEW_MEMBER_COLUMNS = (
    "id, id_hash, branch_id, name, id_cipher, id_masked, phone_cipher, phone_masked, birth_year, sex, "
    "home_region_code, employment_form, occupation, skill_level, joined_on"
)


async def insert_members(conn: asyncpg.Connection, rows: list[tuple]) -> set[uuid.UUID]:
    """Insert many new members in one statement (rows in ``NEW_MEMBER_COLUMNS`` order), each unless the
    person (id_hash) is already a member; returns the ids inserted. The caller sorts the rows by id_hash,
    so concurrent writers take the unique index's locks in one order."""
    if not rows:
        return set()
    cols = [list(c) for c in zip(*rows, strict=True)]
    inserted = await conn.fetch(
        f"INSERT INTO members ({NEW_MEMBER_COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::uuid[], "
        "$4::text[], $5::bytea[], $6::text[], $7::bytea[], $8::text[], $9::smallint[], $10::text[], $11::text[], "
        "$12::text[], $13::text[], $14::smallint[], $15::date[]) ON CONFLICT (id_hash) DO NOTHING RETURNING id",
        *cols,
    )
    return {r["id"] for r in inserted}


async def get_members(conn: Conn, member_ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await conn.fetch(
        f"SELECT {MEMBER_COLUMNS} FROM members m JOIN branches b ON b.id = m.branch_id WHERE m.id = ANY($1::uuid[])",
        member_ids,
    )
    return {r["id"]: r for r in rows}


async def member_lookups(
    conn: Conn, *, after: uuid.UUID | None, limit: int, created_before: datetime | None = None
) -> list[asyncpg.Record]:
    """The next ``limit`` members after ``after`` in id order (a keyset page; ids are UUIDv7): id, lookup hash
    and the region of the member's branch (``member.joined``'s), those created before ``created_before`` only
    when given."""
    return await conn.fetch(
        "SELECT m.id, m.id_hash, b.region_code FROM members m JOIN branches b ON b.id = m.branch_id "
        "WHERE m.id > $1 AND ($3::timestamptz IS NULL OR m.created_at < $3) ORDER BY m.id LIMIT $2",
        after or uuid.UUID(int=0),
        limit,
        created_before,
    )


async def member_by_hash(conn: Conn, id_hash: bytes, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT m.id, m.branch_id, m.status, m.skill_level, m.employment_form, b.region_code FROM members m "
        "JOIN branches b ON b.id = m.branch_id WHERE m.id_hash = $1" + (" FOR UPDATE OF m" if lock else ""),
        id_hash,
    )


async def rejoin_member(conn: asyncpg.Connection, member_id: uuid.UUID, **row: Any) -> asyncpg.Record | None:
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(row, start=2))
    return await conn.fetchrow(
        f"UPDATE members SET {sets}, status = 'active', ended_on = NULL, updated_at = now() "
        f"WHERE id = $1 AND status <> 'active' RETURNING {MEMBER_RETURNING}",
        member_id,
        *row.values(),
    )


async def get_member(conn: Conn, member_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {MEMBER_COLUMNS} FROM members m JOIN branches b ON b.id = m.branch_id WHERE m.id = $1", member_id
    )


async def member_branch_id(conn: Conn, member_id: uuid.UUID) -> uuid.UUID | None:
    return await conn.fetchval("SELECT branch_id FROM members WHERE id = $1", member_id)


async def lock_member(conn: asyncpg.Connection, member_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, branch_id, status, employment_form, skill_level FROM members WHERE id = $1 FOR UPDATE", member_id
    )


async def member_secrets(conn: asyncpg.Connection, member_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id_cipher, phone_cipher FROM members WHERE id = $1", member_id)


async def set_member_branch(conn: asyncpg.Connection, member_id: uuid.UUID, branch_id: uuid.UUID) -> None:
    await conn.execute("UPDATE members SET branch_id = $2, updated_at = now() WHERE id = $1", member_id, branch_id)


async def end_member(conn: asyncpg.Connection, member_id: uuid.UUID, status: str, on: date) -> None:
    await conn.execute(
        "UPDATE members SET status = $2, ended_on = $3, updated_at = now() WHERE id = $1", member_id, status, on
    )


async def insert_external_certificate(conn: asyncpg.Connection, **row: Any) -> bool:
    """False when the issuer's certificate number is already recorded."""
    cols = list(row)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return bool(
        await conn.fetchval(
            f"INSERT INTO external_certificates ({', '.join(cols)}) VALUES ({placeholders}) "
            "ON CONFLICT (issuer, certificate_no) DO NOTHING RETURNING true",
            *row.values(),
        )
    )


async def set_skill_level(conn: asyncpg.Connection, member_id: uuid.UUID, level: int) -> None:
    await conn.execute("UPDATE members SET skill_level = $2, updated_at = now() WHERE id = $1", member_id, level)


async def move_active_members(conn: asyncpg.Connection, source: uuid.UUID, target: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "UPDATE members SET branch_id = $2, updated_at = now() WHERE branch_id = $1 AND status = 'active' "
        "RETURNING id, employment_form",
        source,
        target,
    )


async def insert_transfers(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (id, member_id, from_branch_id, to_branch_id, reason, transferred_on, by_subject)."""
    if rows:
        await conn.copy_records_to_table(
            "member_transfers",
            records=rows,
            columns=["id", "member_id", "from_branch_id", "to_branch_id", "reason", "transferred_on", "by_subject"],
        )


async def transfers_of(conn: Conn, member_id: uuid.UUID, *, after: tuple | None, limit: int) -> list[asyncpg.Record]:
    """A page of the member's transfers, oldest first; ``after``: (created_at, id) of the last one seen."""
    return await conn.fetch(
        """SELECT t.id, t.from_branch_id, t.to_branch_id, t.reason, t.transferred_on, t.created_at,
                  f.region_code AS from_region_code, g.region_code AS to_region_code
           FROM member_transfers t JOIN branches f ON f.id = t.from_branch_id JOIN branches g ON g.id = t.to_branch_id
           WHERE t.member_id = $1 AND ($2::timestamptz IS NULL OR (t.created_at, t.id) > ($2, $3::uuid))
           ORDER BY t.created_at, t.id LIMIT $4""",
        member_id,
        *(after or (None, None)),
        limit,
    )


async def list_members(
    conn: Conn,
    *,
    regions: list[str] | None,
    branch_id: uuid.UUID | None,
    employment_form: str | None,
    status: str | None,
    skill_level: int | None,
    after: uuid.UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    where, args = [], []
    for clause, value in (
        ("b.region_code = ANY(${}::text[])", regions),
        ("m.branch_id = ${}", branch_id),
        ("m.employment_form = ${}", employment_form),
        ("m.status = ${}", status),
        ("m.skill_level = ${}", skill_level),
        ("m.id > ${}", after),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return await conn.fetch(
        f"SELECT {MEMBER_COLUMNS} FROM members m JOIN branches b ON b.id = m.branch_id "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY m.id LIMIT ${len(args)}",
        *args,
    )


async def insert_reveal(
    conn: asyncpg.Connection,
    reveal_id: uuid.UUID,
    member_id: uuid.UUID,
    subject: str,
    reason: str,
    fields: list[str],
    trace_id: str | None,
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO member_reveals (id, member_id, subject, reason, fields, trace_id) VALUES ($1, $2, $3, $4, $5, $6) "
        "RETURNING id, revealed_at",
        reveal_id,
        member_id,
        subject,
        reason,
        fields,
        trace_id,
    )


async def reveals_of(conn: Conn, member_id: uuid.UUID, *, after: tuple | None, limit: int) -> list[asyncpg.Record]:
    """A page of the member's reveals, oldest first; ``after``: (revealed_at, id) of the last one seen."""
    return await conn.fetch(
        "SELECT id, subject, reason, fields, trace_id, revealed_at FROM member_reveals WHERE member_id = $1 "
        "AND ($2::timestamptz IS NULL OR (revealed_at, id) > ($2, $3::uuid)) ORDER BY revealed_at, id LIMIT $4",
        member_id,
        *(after or (None, None)),
        limit,
    )


async def lock_lookups_of(conn: asyncpg.Connection, subject: str) -> None:
    """One caller's lookups one at a time (this transaction), so its rate limit is counted exactly."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('member_lookups/' || $1, 0))", subject)


async def lookups_in_window(conn: asyncpg.Connection, subject: str, seconds: int) -> tuple[int, Any]:
    """(lookups counted against the caller's limit in the last ``seconds``, the oldest of them)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(looked_up_at) AS oldest FROM member_lookups WHERE subject = $1 "
        "AND outcome <> 'rate_limited' AND looked_up_at > clock_timestamp() - make_interval(secs => $2)",
        subject,
        seconds,
    )
    return row["n"], row["oldest"]


async def window_left_s(conn: asyncpg.Connection, oldest, seconds: int) -> float:
    return await conn.fetchval(
        "SELECT extract(epoch FROM $1::timestamptz + make_interval(secs => $2) - clock_timestamp())::float8",
        oldest,
        seconds,
    )


async def insert_lookup(
    conn: Conn,
    lookup_id: uuid.UUID,
    subject: str,
    scope_region: str,
    outcome: str,
    member_id: uuid.UUID | None,
    trace_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO member_lookups (id, subject, scope_region, outcome, member_id, trace_id) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        lookup_id,
        subject,
        scope_region,
        outcome,
        member_id,
        trace_id,
    )


async def list_lookups(
    conn: Conn, *, scope_regions: list[str], subject: str | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    where: list[str] = ["scope_region = ANY($1::text[])"]
    args: list[Any] = [scope_regions]
    for clause, value in (("subject = ${}", subject), ("seq > ${}", after)):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return await conn.fetch(
        "SELECT seq, id, subject, scope_region, outcome, member_id, trace_id, looked_up_at FROM member_lookups "
        f"WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(args)}",
        *args,
    )


# -- stations ------------------------------------------------------------------
STATION_COLUMNS = (
    "id, seq, name, branch_id, region_code, services, status, opened_on, closed_on, created_at, updated_at"
)


async def insert_station(
    conn: asyncpg.Connection,
    station_id: uuid.UUID,
    name: str,
    branch_id: uuid.UUID,
    region_code: str,
    services: list[str],
    opened_on: date,
) -> None:
    await conn.execute(
        "INSERT INTO stations (id, name, branch_id, region_code, services, opened_on) VALUES ($1, $2, $3, $4, $5, $6)",
        station_id,
        name,
        branch_id,
        region_code,
        services,
        opened_on,
    )


async def get_station(conn: Conn, station_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {STATION_COLUMNS} FROM stations WHERE id = $1" + (" FOR UPDATE" if lock else ""), station_id
    )


async def close_station(conn: asyncpg.Connection, station_id: uuid.UUID, on: date) -> None:
    await conn.execute(
        "UPDATE stations SET status = 'closed', closed_on = $2, updated_at = now() WHERE id = $1", station_id, on
    )


async def move_open_stations(conn: asyncpg.Connection, source: uuid.UUID, target: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "UPDATE stations SET branch_id = $2, updated_at = now() WHERE branch_id = $1 "
        "AND status = 'open' RETURNING id, region_code",
        source,
        target,
    )


async def list_stations(
    conn: Conn, *, regions: list[str], branch_id: uuid.UUID | None, status: str | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    where: list[str] = ["region_code = ANY($1::text[])"]
    args: list[Any] = [regions]
    for clause, value in (("branch_id = ${}", branch_id), ("status = ${}", status), ("seq > ${}", after)):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return await conn.fetch(
        f"SELECT {STATION_COLUMNS} FROM stations WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(args)}", *args
    )


# -- imports -------------------------------------------------------------------
IMPORT_COLUMNS = (
    "id, subject, scope_region, format, encoding, default_branch_id, status, rows_total, accepted, "
    "rejected, already_members, bytes_read, bytes_expected, file_sha256, duplicate_of, ignored_columns, "
    "error, started_at, updated_at, finished_at"
)


async def create_import(
    conn: Conn,
    import_id: uuid.UUID,
    subject: str,
    scope_region: str,
    fmt: str,
    default_branch_id: uuid.UUID | None,
    bytes_expected: int | None,
) -> None:
    await conn.execute(
        "INSERT INTO imports (id, subject, scope_region, format, default_branch_id, bytes_expected) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        import_id,
        subject,
        scope_region,
        fmt,
        default_branch_id,
        bytes_expected,
    )


async def finish_import(
    conn: Conn,
    import_id: uuid.UUID,
    *,
    status: str,
    encoding: str | None,
    rows_total: int,
    bytes_read: int,
    sha256: bytes | None,
    ignored_columns: list[str],
    error: str | None,
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""UPDATE imports SET status = $2, encoding = $3, rows_total = GREATEST(rows_total, $4), bytes_read = $5,
                   file_sha256 = $6, ignored_columns = $7, error = $8, finished_at = now(), updated_at = now(),
                   duplicate_of = (SELECT p.id FROM imports p WHERE $6::bytea IS NOT NULL AND p.file_sha256 = $6
                                   AND p.status = 'completed' AND p.id <> $1 ORDER BY p.seq LIMIT 1)
            WHERE id = $1 RETURNING {IMPORT_COLUMNS}""",
        import_id,
        status,
        encoding,
        rows_total,
        bytes_read,
        sha256,
        ignored_columns,
        error,
    )


async def get_import(conn: Conn, import_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {IMPORT_COLUMNS} FROM imports WHERE id = $1", import_id)


async def completed_import_by_sha(conn: Conn, sha256: bytes, scope_region: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {IMPORT_COLUMNS} FROM imports WHERE file_sha256 = $1 AND status = 'completed' AND scope_region = $2 "
        "AND rejected = 0 ORDER BY seq LIMIT 1",
        sha256,
        scope_region,
    )


async def list_imports(
    conn: Conn, *, scope_regions: list[str], status: str | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    where: list[str] = ["scope_region = ANY($1::text[])"]
    args: list[Any] = [scope_regions]
    for clause, value in (("status = ${}", status), ("seq < ${}", after)):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return await conn.fetch(
        f"SELECT seq, {IMPORT_COLUMNS} FROM imports WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ${len(args)}",
        *args,
    )


STAGE_COLUMNS = [
    "id",
    "branch_id",
    "name",
    "id_hash",
    "id_cipher",
    "id_masked",
    "phone_cipher",
    "phone_masked",
    "birth_year",
    "sex",
    "home_region_code",
    "employment_form",
    "occupation",
    "skill_level",
    "joined_on",
    "import_row",
]


async def insert_staged_members(conn: asyncpg.Connection, records: list[tuple], import_id: uuid.UUID) -> set:
    """A batch of an import: COPY into a staging table (``STAGE_COLUMNS``), then one
    ``INSERT … ON CONFLICT (id_hash) DO NOTHING``, so a person already a member (or imported by a
    concurrent upload) is not inserted twice. The staging table is read in the order it was written.
    Returns the ids inserted."""
    await conn.execute("CREATE TEMP TABLE member_stage (LIKE members INCLUDING DEFAULTS) ON COMMIT DROP")
    await conn.copy_records_to_table("member_stage", records=records, columns=STAGE_COLUMNS)
    cols = ", ".join(STAGE_COLUMNS)
    return {
        r["id"]
        for r in await conn.fetch(
            f"INSERT INTO members ({cols}, import_id) SELECT {cols}, $1::uuid FROM member_stage "
            "ON CONFLICT (id_hash) DO NOTHING RETURNING id",
            import_id,
        )
    }


async def members_by_hashes(conn: asyncpg.Connection, hashes: list[bytes]) -> dict[bytes, dict[str, Any]]:
    """The members these lookup hashes belong to, with their branch's region (who may see them).
    Two index lookups, not a join: with a join the planner may scan ``members`` whole for each batch."""
    members = await conn.fetch(
        "SELECT id, id_hash, status, import_id, import_row, branch_id FROM members WHERE id_hash = ANY($1::bytea[])",
        hashes,
    )
    region_of = dict(
        await conn.fetch(
            "SELECT id, region_code FROM branches WHERE id = ANY($1::uuid[])", list({m["branch_id"] for m in members})
        )
    )
    return {m["id_hash"]: {**m, "region_code": region_of[m["branch_id"]]} for m in members}


async def record_import_batch(
    conn: asyncpg.Connection,
    import_id: uuid.UUID,
    report: list[tuple],
    *,
    last_row: int,
    accepted: int,
    rejected: int,
    already: int,
    bytes_read: int,
) -> None:
    """A batch's report rows ``(row, outcome, member_id, field, reason)`` and the import's counters."""
    if report:
        await conn.copy_records_to_table(
            "import_rows",
            columns=["import_id", "row", "outcome", "member_id", "field", "reason"],
            records=[(import_id, *r) for r in report],
        )
    await conn.execute(
        "UPDATE imports SET rows_total = GREATEST(rows_total, $2), accepted = accepted + $3, "
        "rejected = rejected + $4, already_members = already_members + $5, bytes_read = GREATEST(bytes_read, $6), "
        "updated_at = now() WHERE id = $1",
        import_id,
        last_row,
        accepted,
        rejected,
        already,
        bytes_read,
    )


async def import_report(
    conn: Conn, import_id: uuid.UUID, *, outcome: str | None, after_row: int, limit: int
) -> list[asyncpg.Record]:
    accepted = (
        "(SELECT import_row AS row, 'accepted' AS outcome, id AS member_id, NULL::text AS field, "
        "NULL::text AS reason FROM members WHERE import_id = $1 AND import_row > $2 "
        "ORDER BY import_row LIMIT $3)"
    )
    others = (
        "(SELECT row, outcome, member_id, field, reason FROM import_rows WHERE import_id = $1 AND row > $2 "
        + ("AND outcome = $4 " if outcome in ("rejected", "already_member") else "")
        + "ORDER BY row LIMIT $3)"
    )
    args: tuple[Any, ...]
    if outcome == "accepted":
        sql, args = accepted, (import_id, after_row, limit)
    elif outcome in ("rejected", "already_member"):
        sql, args = others, (import_id, after_row, limit, outcome)
    else:
        sql = f"SELECT * FROM ({accepted} UNION ALL {others}) r ORDER BY row LIMIT $3"
        args = (import_id, after_row, limit)
    return await conn.fetch(sql, *args)
