"""Training's SQL, through asyncpg."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, TypeAlias

import asyncpg
import orjson

from shared.events import EventData
from shared.events.membership import (
    BranchDissolved,
    BranchEstablished,
    BranchMerged,
    BranchUpdated,
    MemberJoined,
    MemberLapsed,
    MemberLeft,
    MemberLookup,
    MemberSkillLevelChanged,
    MemberTransferred,
)
from shared.events.training import (
    CertificateIssued,
    CompetitionAnnounced,
    CompetitionParticipantsRegistered,
    CompetitionResultsPublished,
    ProgrammeRegistered,
    SessionScheduled,
    StudioEvaluated,
    StudioRecognised,
    StudioRevoked,
)

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


# ============================================================================ filters and lists
class Filter:
    """``WHERE`` clauses with numbered placeholders: ``f.add("status = ?", "active")``; a None value adds nothing."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, clause: str, value: Any) -> Filter:
        if value is not None:
            self.args.append(value)
            self.clauses.append(clause.replace("?", f"${len(self.args)}"))
        return self

    def sql(self) -> str:
        return " AND ".join(self.clauses) or "true"


async def _page(conn: Conn, table: str, f: Filter, after: int | None, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` rows in ``seq`` order after the cursor (the extra row says there are more)."""
    f.add("seq > ?", after)
    return await conn.fetch(f"SELECT * FROM {table} WHERE {f.sql()} ORDER BY seq LIMIT {int(limit) + 1}", *f.args)


def _value(v: Any) -> Any:
    return getattr(v, "value", v)  # an enum filter by its value


async def list_programmes(
    conn: Conn,
    *,
    after: int | None,
    limit: int,
    subsidy_category=None,
    provider_kind=None,
    occupation: str | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("subsidy_category = ?", _value(subsidy_category))
        .add("provider_kind = ?", _value(provider_kind))
        .add("occupation = ?", occupation)
    )
    return await _page(conn, "programmes", f, after, limit)


async def list_sessions(
    conn: Conn,
    *,
    region_codes: list[str],
    after: int | None,
    limit: int,
    programme_id: uuid.UUID | None = None,
    status: str | None = None,
    subsidy_category=None,
    organiser_id: str | None = None,
    starts_from: date | None = None,
    starts_to: date | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("region_code = ANY(?::text[])", region_codes)
        .add("programme_id = ?", programme_id)
        .add("status = ?", status)
        .add("subsidy_category = ?", _value(subsidy_category))
        .add("organiser_id = ?", organiser_id)
        .add("starts_on >= ?", starts_from)
        .add("starts_on <= ?", starts_to)
    )
    return await _page(conn, "sessions", f, after, limit)


async def list_enrolments(
    conn: Conn,
    *,
    after: int | None,
    limit: int,
    region_codes: list[str] | None = None,
    member_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    status: str | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("session_id IN (SELECT id FROM sessions WHERE region_code = ANY(?::text[]))", region_codes)
        .add("member_id = ?", member_id)
        .add("session_id = ?", session_id)
        .add("status = ?", status)
    )
    return await _page(conn, "enrolments", f, after, limit)


async def list_certificates(
    conn: Conn,
    *,
    region_codes: list[str],
    after: int | None,
    limit: int,
    member_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("region_code = ANY(?::text[])", region_codes)
        .add("member_id = ?", member_id)
        .add("session_id = ?", session_id)
    )
    return await _page(conn, "certificates", f, after, limit)


async def list_competitions(
    conn: Conn,
    *,
    region_codes: list[str],
    after: int | None,
    limit: int,
    kind=None,
    tier=None,
    industry: str | None = None,
    status: str | None = None,
    year: int | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("region_code = ANY(?::text[])", region_codes)
        .add("kind = ?", _value(kind))
        .add("tier = ?", _value(tier))
        .add("industry = ?", industry)
        .add("status = ?", status)
        .add("extract(year FROM starts_on) = ?", year)
    )
    return await _page(conn, "competitions", f, after, limit)


async def list_studios(
    conn: Conn,
    *,
    region_codes: list[str],
    after: int | None,
    limit: int,
    kind=None,
    level=None,
    industry: str | None = None,
    status: str | None = None,
) -> list[asyncpg.Record]:
    f = (
        Filter()
        .add("region_code = ANY(?::text[])", region_codes)
        .add("kind = ?", _value(kind))
        .add("level = ?", _value(level))
        .add("industry = ?", industry)
        .add("status = ?", status)
    )
    return await _page(conn, "studios", f, after, limit)


# ============================================================================ member read model
async def model_generation(conn: Conn, *, share_lock: bool = False) -> int:
    return await conn.fetchval("SELECT generation FROM member_model" + (" FOR SHARE" if share_lock else ""))


async def reset_member_model(conn: asyncpg.Connection, consumer: str) -> int:
    """Empty the read model and its inbox rows and start a new generation; returns it."""
    await conn.fetchval("SELECT generation FROM member_model FOR UPDATE")  # waits for in-flight applies
    await conn.execute("TRUNCATE members, branches")
    await conn.execute("DELETE FROM inbox WHERE consumer = $1", consumer)
    return await conn.fetchval(
        "UPDATE member_model SET generation = generation + 1, rebuilt_at = NULL RETURNING generation"
    )


async def mark_rebuilt(conn: Conn) -> None:
    await conn.execute("UPDATE member_model SET rebuilt_at = now()")


_JOINED = """INSERT INTO members (id, branch_id, region_code, city_code, employment_form, occupation, skill_level,
                                   status, joined_on, ended_on, id_hash)
              VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, NULL, $9)
              ON CONFLICT (id) DO UPDATE SET branch_id = $2, region_code = $3, city_code = $4, employment_form = $5,
                  occupation = COALESCE($6, members.occupation), skill_level = COALESCE($7, members.skill_level),
                  status = 'active', joined_on = $8, ended_on = NULL, id_hash = COALESCE($9, members.id_hash),
                  updated_at = now()"""
_TRANSFERRED = """INSERT INTO members (id, branch_id, region_code, city_code, employment_form, status)
                  VALUES ($1, $2, $3, $4, $5, 'active')
                  ON CONFLICT (id) DO UPDATE SET branch_id = $2, region_code = $3, city_code = $4,
                      employment_form = $5, updated_at = now()"""
_ENDED = """INSERT INTO members (id, branch_id, region_code, city_code, employment_form, status, ended_on)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (id) DO UPDATE SET status = $6, ended_on = $7, updated_at = now()"""
_SKILL = "UPDATE members SET skill_level = $2, updated_at = now() WHERE id = $1"
# A lookup hash published again (member.lookup, after the member's member.joined): the row untouched when it
# has that hash already (the fact twice, or a member.joined that carried it), so a second backfill writes nothing.
_LOOKUP = "UPDATE members SET id_hash = $2, updated_at = now() WHERE id = $1 AND id_hash IS DISTINCT FROM $2"
_BRANCH = """INSERT INTO branches (id, name, region_code, city_code, kind, status)
             VALUES ($1, $2, $3, $4, $5, 'active')
             ON CONFLICT (id) DO UPDATE SET name = $2, region_code = $3, city_code = $4, kind = $5,
                 updated_at = now()"""
_BRANCH_CLOSED = """INSERT INTO branches (id, name, region_code, city_code, kind, status, merged_into)
                    VALUES ($1, '', $2, $3, $4, $5, $6)
                    ON CONFLICT (id) DO UPDATE SET status = $5, merged_into = $6, updated_at = now()"""


def membership_statement(d: EventData) -> tuple[str, tuple] | None:
    """The SQL that folds one membership event into the read model (an upsert: order per member
    matters, and the consumer keeps it; applying the same event twice gives the same row)."""
    if isinstance(d, MemberJoined):
        return _JOINED, (
            d.member_id,
            d.branch_id,
            d.region_code,
            d.city_code,
            d.employment_form.value,
            d.occupation,
            d.skill_level,
            d.joined_on,
            bytes.fromhex(d.id_hash) if d.id_hash else None,
        )
    if isinstance(d, MemberTransferred):
        return _TRANSFERRED, (d.member_id, d.to_branch_id, d.to_region_code, d.to_city_code, d.employment_form.value)
    if isinstance(d, MemberLeft):
        return _ENDED, (
            d.member_id,
            d.branch_id,
            d.region_code,
            d.city_code,
            d.employment_form.value,
            "left",
            d.left_on,
        )
    if isinstance(d, MemberLapsed):
        return _ENDED, (
            d.member_id,
            d.branch_id,
            d.region_code,
            d.city_code,
            d.employment_form.value,
            "lapsed",
            d.lapsed_on,
        )
    if isinstance(d, MemberSkillLevelChanged):
        return _SKILL, (d.member_id, d.to_level)
    if isinstance(d, MemberLookup):
        return _LOOKUP, (d.member_id, bytes.fromhex(d.id_hash))
    if isinstance(d, (BranchEstablished, BranchUpdated)):
        return _BRANCH, (d.branch_id, d.name, d.region_code, d.city_code, d.kind.value)
    if isinstance(d, BranchMerged):
        return _BRANCH_CLOSED, (d.branch_id, d.region_code, d.city_code, d.kind.value, "merged", d.into_branch_id)
    if isinstance(d, BranchDissolved):
        return _BRANCH_CLOSED, (d.branch_id, d.region_code, d.city_code, d.kind.value, "dissolved", d.transferred_to)
    return None


async def apply_membership_event(conn: asyncpg.Connection, d: EventData) -> None:
    statement = membership_statement(d)
    if statement:
        await conn.execute(statement[0], *statement[1])


async def apply_membership_events(conn: asyncpg.Connection, items: Sequence[EventData]) -> None:
    """Many events in order: consecutive statements of the same kind go as one pipelined executemany."""
    run_sql: str | None = None
    run_args: list[tuple] = []
    for d in items:
        statement = membership_statement(d)
        if statement is None:
            continue
        if statement[0] != run_sql and run_args:
            await conn.executemany(run_sql, run_args)
            run_args = []
        run_sql = statement[0]
        run_args.append(statement[1])
    if run_args:
        await conn.executemany(run_sql, run_args)


async def claim_many(conn: asyncpg.Connection, consumer: str, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """``shared.inbox.claim`` for a batch: the ids not applied before (now claimed in this transaction)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list(event_ids),
    )
    return {r["event_id"] for r in rows}


async def members_by_id(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM members WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"]: r for r in rows}


async def get_member(conn: Conn, member_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM members WHERE id = $1", member_id)


async def member_by_hash(conn: Conn, id_hash: bytes) -> asyncpg.Record | None:
    """The member whose ID number has this lookup hash (membership's, from member.joined or member.lookup), or None."""
    return await conn.fetchrow("SELECT * FROM members WHERE id_hash = $1 ORDER BY updated_at DESC LIMIT 1", id_hash)


async def get_branch(conn: Conn, branch_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM branches WHERE id = $1", branch_id)


async def active_members(conn: Conn, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM members WHERE id = ANY($1::uuid[]) AND status = 'active'", list(ids))
    return {r["id"] for r in rows}


# ============================================================================ programmes
async def insert_programme(conn: asyncpg.Connection, e: ProgrammeRegistered) -> None:
    await conn.execute(
        """INSERT INTO programmes (id, name, occupation, target_level, provider_kind, provider_name, subsidy_category)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        e.programme_id,
        e.name,
        e.occupation,
        e.target_level,
        e.provider_kind.value,
        e.provider_name,
        e.subsidy_category.value,
    )


async def get_programme(conn: Conn, programme_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM programmes WHERE id = $1", programme_id)


async def next_session_number(conn: asyncpg.Connection, programme_id: uuid.UUID) -> int:
    """第n期: numbers a programme's sessions 1, 2, ... (the row lock serialises concurrent scheduling)."""
    return await conn.fetchval(
        "UPDATE programmes SET sessions_count = sessions_count + 1 WHERE id = $1 RETURNING sessions_count", programme_id
    )


# ============================================================================ sessions
async def insert_session(conn: asyncpg.Connection, e: SessionScheduled, organiser_name: str | None) -> None:
    await conn.execute(
        """INSERT INTO sessions (id, programme_id, number, organiser_id, organiser_kind, organiser_name, region_code,
                                 city_code, subsidy_category, starts_on, ends_on, capacity)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        e.session_id,
        e.programme_id,
        e.number,
        e.organiser_id,
        e.organiser_kind.value,
        organiser_name,
        e.region_code,
        e.city_code,
        e.subsidy_category.value,
        e.starts_on,
        e.ends_on,
        e.capacity,
    )


async def get_session(conn: Conn, session_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    """With ``lock``, the row is locked until the transaction ends: every change to a session's
    enrolments takes this lock first, which is what keeps capacity exact under concurrency."""
    return await conn.fetchrow("SELECT * FROM sessions WHERE id = $1" + (" FOR UPDATE" if lock else ""), session_id)


async def set_started(conn: asyncpg.Connection, session_id: uuid.UUID, on: date) -> None:
    await conn.execute(
        "UPDATE sessions SET status = 'in_progress', started_on = $2, updated_at = now() WHERE id = $1", session_id, on
    )


async def set_completed(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    on: date,
    person_times: int,
    passed: int,
    failed: int,
    eligible: int,
    absent_ids: list[uuid.UUID],
) -> None:
    if absent_ids:
        await conn.execute(
            """UPDATE enrolments SET status = 'withdrawn', withdraw_reason = 'absent', withdrawn_at = now()
               WHERE id = ANY($1::uuid[])""",
            absent_ids,
        )
    await conn.execute("UPDATE enrolments SET closed = true WHERE session_id = $1", session_id)
    await conn.execute(
        """UPDATE sessions SET status = 'completed', completed_on = $2, person_times = $3, passed = $4, failed = $5,
               eligible_persons = $6, enrolled = enrolled - $7, updated_at = now() WHERE id = $1""",
        session_id,
        on,
        person_times,
        passed,
        failed,
        eligible,
        len(absent_ids),
    )


async def set_cancelled(
    conn: asyncpg.Connection, session_id: uuid.UUID, on: date, reason: str | None, withdrawn_ids: list[uuid.UUID]
) -> None:
    if withdrawn_ids:
        await conn.execute(
            """UPDATE enrolments SET status = 'withdrawn', withdraw_reason = 'session cancelled', withdrawn_at = now()
               WHERE id = ANY($1::uuid[])""",
            withdrawn_ids,
        )
    await conn.execute("UPDATE enrolments SET closed = true WHERE session_id = $1", session_id)
    await conn.execute(
        """UPDATE sessions SET status = 'cancelled', cancelled_on = $2, cancel_reason = $3,
               enrolled = enrolled - $4, updated_at = now() WHERE id = $1""",
        session_id,
        on,
        reason,
        len(withdrawn_ids),
    )


# ============================================================================ enrolments
async def live_enrolments(
    conn: Conn, session_id: uuid.UUID, member_ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, asyncpg.Record]:
    """Enrolments not withdrawn, by member (of the members given, or all)."""
    if member_ids is None:
        rows = await conn.fetch("SELECT * FROM enrolments WHERE session_id = $1 AND status <> 'withdrawn'", session_id)
    else:
        rows = await conn.fetch(
            "SELECT * FROM enrolments WHERE session_id = $1 AND status <> 'withdrawn' AND member_id = ANY($2::uuid[])",
            session_id,
            list(member_ids),
        )
    return {r["member_id"]: r for r in rows}


async def insert_enrolments(
    conn: asyncpg.Connection, session_id: uuid.UUID, rows: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID | None]]
) -> None:
    """rows: (enrolment id, member id, branch id); also takes the places on the session."""
    if not rows:
        return
    ids, members, branches = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO enrolments (id, session_id, member_id, branch_id)
           SELECT e.id, $1, e.member_id, e.branch_id FROM unnest($2::uuid[], $3::uuid[], $4::uuid[])
               AS e(id, member_id, branch_id)""",
        session_id,
        ids,
        members,
        branches,
    )
    await conn.execute(
        "UPDATE sessions SET enrolled = enrolled + $2, updated_at = now() WHERE id = $1", session_id, len(rows)
    )


async def mark_attended(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
    if ids:
        await conn.execute(
            "UPDATE enrolments SET status = 'attended', attended_at = now() WHERE id = ANY($1::uuid[])", ids
        )


async def mark_assessed(conn: asyncpg.Connection, items: list[tuple[uuid.UUID, str]]) -> None:
    if items:
        ids, results = (list(c) for c in zip(*items, strict=True))
        await conn.execute(
            """UPDATE enrolments e SET status = v.result, assessed_at = now()
               FROM unnest($1::uuid[], $2::text[]) AS v(id, result) WHERE e.id = v.id""",
            ids,
            results,
        )


async def mark_withdrawn(conn: asyncpg.Connection, enrolment: asyncpg.Record, reason: str | None) -> None:
    await conn.execute(
        "UPDATE enrolments SET status = 'withdrawn', withdraw_reason = $2, withdrawn_at = now() WHERE id = $1",
        enrolment["id"],
        reason,
    )
    await conn.execute(
        "UPDATE sessions SET enrolled = enrolled - 1, updated_at = now() WHERE id = $1", enrolment["session_id"]
    )


async def get_enrolment(conn: Conn, enrolment_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM enrolments WHERE id = $1", enrolment_id)


async def session_enrolments(conn: Conn, session_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM enrolments WHERE session_id = $1 ORDER BY seq", session_id)


async def enrolments_by_id(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM enrolments WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"]: r for r in rows}


# ============================================================================ rosters (bulk, set-based)
async def lock_sessions(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock many sessions at once, in id order (two batches locking overlapping sets never deadlock):
    the roster batch's ``get_session(lock=True)``."""
    rows = await conn.fetch("SELECT * FROM sessions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", list(ids))
    return {r["id"]: r for r in rows}


async def programmes_by_id(conn: Conn, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM programmes WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"]: r for r in rows}


async def enrolments_of_sessions(conn: Conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[asyncpg.Record]]:
    """Every enrolment of these sessions, each session's in ``seq`` order (as ``session_enrolments``)."""
    out: dict[uuid.UUID, list[asyncpg.Record]] = {}
    if ids:
        for r in await conn.fetch(
            "SELECT * FROM enrolments WHERE session_id = ANY($1::uuid[]) ORDER BY session_id, seq", list(ids)
        ):
            out.setdefault(r["session_id"], []).append(r)
    return out


async def insert_final_enrolments(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """New enrolments straight in the state a roster leaves them (one row each instead of an INSERT and up
    to three UPDATEs), by COPY in the given order (their ``seq``). rows: (id, session id, member id, branch
    id, status, closed, withdraw reason, attended, assessed); the times are the transaction's ``now()``, as
    the single commands'."""
    if not rows:
        return
    now = await conn.fetchval("SELECT now()")  # the transaction's start: what now() gives every statement in it
    await conn.copy_records_to_table(
        "enrolments",
        columns=[
            "id",
            "session_id",
            "member_id",
            "branch_id",
            "status",
            "closed",
            "withdraw_reason",
            "attended_at",
            "assessed_at",
            "withdrawn_at",
            "enrolled_at",
        ],
        records=[
            (
                i,
                s,
                m,
                b,
                status,
                closed,
                reason,
                now if attended else None,
                now if assessed else None,
                now if status == "withdrawn" else None,
                now,
            )
            for i, s, m, b, status, closed, reason, attended, assessed in rows
        ],
    )


async def update_enrolments(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """Existing enrolments a roster moved on. rows: (id, status, attended, assessed, withdrawn, withdraw
    reason, closed)."""
    if rows:
        await conn.execute(
            """UPDATE enrolments e SET status = v.status, closed = v.closed,
                   attended_at = CASE WHEN v.attended THEN now() ELSE e.attended_at END,
                   assessed_at = CASE WHEN v.assessed THEN now() ELSE e.assessed_at END,
                   withdraw_reason = CASE WHEN v.withdrawn THEN v.reason ELSE e.withdraw_reason END,
                   withdrawn_at = CASE WHEN v.withdrawn THEN now() ELSE e.withdrawn_at END
               FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bool[], $5::bool[], $6::text[], $7::bool[])
                    AS v(id, status, attended, assessed, withdrawn, reason, closed)
               WHERE e.id = v.id""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


_SESSION_COLUMNS = (
    "id",
    "status",
    "started_on",
    "enrolled",
    "completed_on",
    "person_times",
    "passed",
    "failed",
    "eligible_persons",
)


async def update_sessions(conn: asyncpg.Connection, sessions: Sequence[Any]) -> None:
    """Sessions as a roster batch left them (under their locks, so the figures are absolute)."""
    if sessions:
        await conn.execute(
            """UPDATE sessions s SET status = v.status, started_on = v.started_on, enrolled = v.enrolled,
                   completed_on = v.completed_on, person_times = v.person_times, passed = v.passed,
                   failed = v.failed, eligible_persons = v.eligible_persons, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::date[], $4::int[], $5::date[], $6::int[], $7::int[],
                           $8::int[], $9::int[])
                    AS v(id, status, started_on, enrolled, completed_on, person_times, passed, failed,
                         eligible_persons)
               WHERE s.id = v.id""",
            *([s[c] for s in sessions] for c in _SESSION_COLUMNS),
        )


# ============================================================================ certificates
async def insert_certificate(
    conn: asyncpg.Connection, e: CertificateIssued, session_id: uuid.UUID | None, programme_name: str | None
) -> None:
    await conn.execute(
        """INSERT INTO certificates (id, serial, member_id, enrolment_id, session_id, programme_id, programme_name,
                                     occupation, level, issuer, region_code, city_code, issued_on)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
        e.certificate_id,
        e.serial,
        e.member_id,
        e.enrolment_id,
        session_id,
        e.programme_id,
        programme_name,
        e.occupation,
        e.level,
        e.issuer,
        e.region_code,
        e.city_code,
        e.issued_on,
    )


async def certificate_by_serial(conn: Conn, serial: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM certificates WHERE serial = $1", serial)


async def certificate_for_enrolment(conn: Conn, enrolment_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM certificates WHERE enrolment_id = $1", enrolment_id)


async def certified_enrolments(conn: Conn, session_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT enrolment_id FROM certificates WHERE session_id = $1", session_id)
    return {r["enrolment_id"] for r in rows}


# ============================================================================ competitions
async def insert_competition(conn: asyncpg.Connection, e: CompetitionAnnounced, key_industry: bool) -> None:
    await conn.execute(
        """INSERT INTO competitions (id, name, kind, tier, industry, key_industry, region_code, city_code, starts_on,
                                     ends_on) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        e.competition_id,
        e.name,
        e.kind.value,
        e.tier.value,
        e.industry,
        key_industry,
        e.region_code,
        e.city_code,
        e.starts_on,
        e.ends_on,
    )


async def get_competition(conn: Conn, competition_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM competitions WHERE id = $1" + (" FOR UPDATE" if lock else ""), competition_id
    )


async def registered_members(conn: Conn, competition_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT member_id FROM competition_members WHERE competition_id = $1", competition_id)
    return {r["member_id"] for r in rows}


async def add_participants(
    conn: asyncpg.Connection,
    e: CompetitionParticipantsRegistered,
    members: dict[uuid.UUID, asyncpg.Record],
    reported: int,
) -> None:
    if e.member_ids:
        await conn.execute(
            """INSERT INTO competition_members (competition_id, member_id, branch_id)
               SELECT $1, m.id, m.branch_id FROM unnest($2::uuid[], $3::uuid[]) AS m(id, branch_id)""",
            e.competition_id,
            list(e.member_ids),
            [members[m]["branch_id"] for m in e.member_ids],
        )
    if reported:
        await conn.execute(
            "INSERT INTO competition_headcounts (competition_id, branch_id, headcount) VALUES ($1, $2, $3)",
            e.competition_id,
            e.branch_id,
            reported,
        )
    await conn.execute(
        "UPDATE competitions SET named = named + $2, reported = reported + $3 WHERE id = $1",
        e.competition_id,
        len(e.member_ids),
        reported,
    )


async def named_participants(
    conn: Conn, competition_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` named participants in member-id order after the cursor (the primary key's order)."""
    return await conn.fetch(
        "SELECT member_id, branch_id, registered_at FROM competition_members "
        "WHERE competition_id = $1 AND ($2::uuid IS NULL OR member_id > $2) ORDER BY member_id LIMIT $3",
        competition_id,
        after,
        int(limit) + 1,
    )


async def reported_headcounts(
    conn: Conn, competition_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` branches' reported headcounts (summed over their reports) in branch-id order."""
    return await conn.fetch(
        "SELECT branch_id, sum(headcount)::int AS headcount, count(*)::int AS reports "
        "FROM competition_headcounts WHERE competition_id = $1 AND ($2::uuid IS NULL OR branch_id > $2) "
        "GROUP BY branch_id ORDER BY branch_id LIMIT $3",
        competition_id,
        after,
        int(limit) + 1,
    )


async def set_held(conn: asyncpg.Connection, competition_id: uuid.UUID, on: date) -> None:
    await conn.execute("UPDATE competitions SET status = 'held', held_on = $2 WHERE id = $1", competition_id, on)


async def set_results(conn: asyncpg.Connection, e: CompetitionResultsPublished) -> None:
    await conn.execute(
        "UPDATE competitions SET status = 'results_published', published_on = $2, winners = $3::jsonb WHERE id = $1",
        e.competition_id,
        e.published_on,
        orjson.dumps([w.model_dump(mode="json") for w in e.winners]).decode(),
    )


# ============================================================================ studios
async def insert_studio(conn: asyncpg.Connection, e: StudioRecognised, key_industry: bool) -> None:
    await conn.execute(
        """INSERT INTO studios (id, kind, name, host_enterprise, lead_worker, lead_member_id, level, industry,
                                key_industry, region_code, city_code, recognised_on)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        e.studio_id,
        e.kind.value,
        e.name,
        e.host_enterprise,
        e.lead_worker,
        e.lead_member_id,
        e.level.value,
        e.industry,
        key_industry,
        e.region_code,
        e.city_code,
        e.recognised_on,
    )


async def get_studio(conn: Conn, studio_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM studios WHERE id = $1" + (" FOR UPDATE" if lock else ""), studio_id)


async def add_evaluation(conn: asyncpg.Connection, e: StudioEvaluated, notes: str | None) -> None:
    await conn.execute(
        "INSERT INTO studio_evaluations (studio_id, rating, evaluated_on, notes) VALUES ($1, $2, $3, $4)",
        e.studio_id,
        e.rating,
        e.evaluated_on,
        notes,
    )
    await conn.execute(
        "UPDATE studios SET last_rating = $2, last_evaluated_on = $3 WHERE id = $1",
        e.studio_id,
        e.rating,
        e.evaluated_on,
    )


async def evaluations(conn: Conn, studio_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT rating, evaluated_on, notes FROM studio_evaluations WHERE studio_id = $1 ORDER BY seq", studio_id
    )


async def set_revoked(conn: asyncpg.Connection, e: StudioRevoked) -> None:
    await conn.execute(
        "UPDATE studios SET status = 'revoked', revoked_on = $2, revoke_reason = $3 WHERE id = $1",
        e.studio_id,
        e.revoked_on,
        e.reason,
    )


# ============================================================================ summary
async def person_times(conn: Conn, start: date, end: date, region_codes: list[str], by: str) -> list[asyncpg.Record]:
    """Person-times and distinct persons of sessions completed in [start, end], by region and category,
    with the subtotals (GROUPING SETS: distinct persons do not add up across groups)."""
    region = "s.city_code" if by == "city" else "s.region_code"
    return await conn.fetch(
        f"""SELECT {region} AS region, s.subsidy_category AS category,
                   GROUPING({region}) AS g_region, GROUPING(s.subsidy_category) AS g_category,
                   count(DISTINCT s.id) AS sessions, count(e.id) AS person_times,
                   count(DISTINCT e.member_id) AS persons
            FROM sessions s LEFT JOIN enrolments e ON e.session_id = s.id AND e.status IN ('passed', 'failed')
            WHERE s.status = 'completed' AND s.completed_on BETWEEN $1 AND $2
              AND s.region_code = ANY($3::text[])
            GROUP BY GROUPING SETS (({region}, s.subsidy_category), ({region}), (s.subsidy_category), ())
            ORDER BY 3 DESC, 4 DESC, 1 NULLS FIRST, 2 NULLS FIRST""",
        start,
        end,
        region_codes,
    )
