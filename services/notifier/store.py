"""The notifier's SQL: the branch read model, channels, deliveries and attempts.

The delivery row is the dedupe record (one per event × channel: its id is derived from both,
and a unique index holds) and the state machine's single source of truth: a claim
(``notifier_claim``, migration 0003) moves it to ``sending`` under a row lock with a lease,
so however many records Kafka redelivers for it, one attempt at a time reaches the receiver.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.notifier.domain import payload_hash
from shared.outbox import lane_of

# -- raw records through the outbox (internal topics) -----------------------------------


async def enqueue(conn: asyncpg.Connection, topic: str, key: str, value: dict) -> None:
    """A record for one of the notifier's own topics, written with the state change that
    needs it: the relay publishes it, so a crash can never lose it."""
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, lane, event_type, value) VALUES ($1, $2, $3, $4, $5, $6)",
        uuid.uuid4(),
        topic,
        key,
        lane_of(key),
        f"notifier.internal.{topic}",
        orjson.dumps(value),
    )


async def enqueue_many(conn: asyncpg.Connection, rows: Iterable[tuple[str, str, dict]]) -> int:
    records = [
        (uuid.uuid4(), topic, key, lane_of(key), f"notifier.internal.{topic}", orjson.dumps(value))
        for topic, key, value in rows
    ]
    if records:
        await conn.copy_records_to_table(
            "outbox", records=records, columns=["event_id", "topic", "key", "lane", "event_type", "value"]
        )
    return len(records)


# -- read model ------------------------------------------------------------------------


async def upsert_branch(
    conn,
    branch_id: uuid.UUID,
    name: str | None,
    region_code: str,
    parent_id: uuid.UUID | None,
    kind: str | None,
    status: str = "active",
) -> None:
    await conn.execute(
        """INSERT INTO branches (id, name, region_code, parent_id, kind, status)
           VALUES ($1, COALESCE($2, ''), $3, $4, $5, $6)
           ON CONFLICT (id) DO UPDATE SET name = COALESCE($2, branches.name), region_code = $3,
               parent_id = COALESCE($4, branches.parent_id), kind = COALESCE($5, branches.kind), status = $6,
               updated_at = now()""",
        branch_id,
        name,
        region_code,
        parent_id,
        kind,
        status,
    )


async def set_branch_status(conn, branch_id: uuid.UUID, region_code: str, status: str) -> None:
    await conn.execute(
        """INSERT INTO branches (id, name, region_code, status) VALUES ($1, '', $2, $3)
           ON CONFLICT (id) DO UPDATE SET status = $3, updated_at = now()""",
        branch_id,
        region_code,
        status,
    )


async def set_member_branch(conn, member_id: uuid.UUID, branch_id: uuid.UUID) -> None:
    await conn.execute(
        """INSERT INTO member_branches (member_id, branch_id) VALUES ($1, $2)
           ON CONFLICT (member_id) DO UPDATE SET branch_id = $2, updated_at = now()""",
        member_id,
        branch_id,
    )


async def set_session_organiser(conn, session_id: uuid.UUID, branch_id: uuid.UUID | None) -> None:
    await conn.execute(
        """INSERT INTO session_organisers (session_id, branch_id) VALUES ($1, $2)
           ON CONFLICT (session_id) DO UPDATE SET branch_id = COALESCE($2, session_organisers.branch_id),
               updated_at = now()""",
        session_id,
        branch_id,
    )


async def set_member_branches(conn, pairs: dict[uuid.UUID, uuid.UUID]) -> None:
    if pairs:
        await conn.execute(
            """INSERT INTO member_branches (member_id, branch_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])
               ON CONFLICT (member_id) DO UPDATE SET branch_id = EXCLUDED.branch_id, updated_at = now()""",
            list(pairs),
            list(pairs.values()),
        )


async def set_session_organisers(conn, pairs: dict[uuid.UUID, uuid.UUID | None]) -> None:
    if pairs:
        await conn.execute(
            """INSERT INTO session_organisers (session_id, branch_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])
               ON CONFLICT (session_id) DO UPDATE
               SET branch_id = COALESCE(EXCLUDED.branch_id, session_organisers.branch_id),
                   updated_at = now()""",
            list(pairs),
            list(pairs.values()),
        )


async def members_branches(conn, member_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    rows = await conn.fetch("SELECT branch_id FROM member_branches WHERE member_id = ANY($1::uuid[])", list(member_ids))
    return [r["branch_id"] for r in rows]


async def sessions_branches(conn, session_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT branch_id FROM session_organisers WHERE session_id = ANY($1::uuid[]) AND branch_id IS NOT NULL",
        list(session_ids),
    )
    return [r["branch_id"] for r in rows]


async def branch_lineage(conn, branch_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    """The branches and every parent above them (id, name, region_code, parent_id, depth)."""
    return await conn.fetch(
        """WITH RECURSIVE up AS (
               SELECT id, name, region_code, parent_id, 0 AS depth, id AS start FROM branches WHERE id = ANY($1::uuid[])
               UNION ALL
               SELECT b.id, b.name, b.region_code, b.parent_id, up.depth + 1, up.start
               FROM branches b JOIN up ON b.id = up.parent_id WHERE up.depth < 8)
           SELECT * FROM up ORDER BY start, depth""",
        list(branch_ids),
    )


async def branch_names(conn, branch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await conn.fetch("SELECT id, name FROM branches WHERE id = ANY($1::uuid[]) AND name <> ''", list(branch_ids))
    return {r["id"]: r["name"] for r in rows}


async def get_branch(conn, branch_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM branches WHERE id = $1", branch_id)


async def upsert_reform_unit(conn, unit_id: uuid.UUID, name: str) -> None:
    await conn.execute(
        "INSERT INTO reform_units (id, name) VALUES ($1, $2) "
        "ON CONFLICT (id) DO UPDATE SET name = $2, updated_at = now() WHERE reform_units.name IS DISTINCT FROM $2",
        unit_id,
        name,
    )


async def reform_unit_names(conn, unit_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await conn.fetch("SELECT id, name FROM reform_units WHERE id = ANY($1::uuid[])", list(unit_ids))
    return {r["id"]: r["name"] for r in rows}


# -- channels ---------------------------------------------------------------------------
CHANNEL_COLUMNS = (
    "id, kind, name, owner_kind, owner_branch_id, owner_unit_id, owner_region, scope, event_types, locale, config, "
    "secrets, quiet_hours, status, paused_reason, paused_at, failing_since, seed, created_by, "
    "created_at, updated_at"
)


async def all_channels(conn) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {CHANNEL_COLUMNS} FROM channels")


async def get_channel(conn, channel_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = $1" + (" FOR UPDATE" if lock else ""), channel_id
    )


async def list_channels(
    conn,
    *,
    regions: Sequence[str] | None,
    owner_branch_id: uuid.UUID | None,
    kind: str | None,
    status: str | None,
    limit: int,
    after: uuid.UUID | None,
    owner_unit_id: uuid.UUID | None = None,
) -> list:
    return await conn.fetch(
        f"""SELECT {CHANNEL_COLUMNS} FROM channels
            WHERE ($1::text[] IS NULL OR owner_region = ANY($1::text[]))
              AND ($2::uuid IS NULL OR owner_branch_id = $2) AND ($3::text IS NULL OR kind = $3)
              AND ($4::text IS NULL OR status = $4) AND ($5::uuid IS NULL OR id > $5)
              AND ($7::uuid IS NULL OR owner_unit_id = $7)
            ORDER BY id LIMIT $6""",
        list(regions) if regions is not None else None,
        owner_branch_id,
        kind,
        status,
        after,
        limit,
        owner_unit_id,
    )


async def insert_channel(
    conn,
    *,
    id: uuid.UUID,
    kind: str,
    name: str,
    owner_kind: str,
    owner_branch_id,
    owner_region,
    scope: str,
    event_types: list[str],
    locale: str,
    config: dict,
    secrets: bytes,
    quiet_hours: dict | None,
    created_by: str,
    seed: bool = False,
    owner_unit_id: uuid.UUID | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO channels (id, kind, name, owner_kind, owner_branch_id, owner_region, scope, event_types, locale,
                                 config, secrets, quiet_hours, created_by, seed, owner_unit_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
        id,
        kind,
        name,
        owner_kind,
        owner_branch_id,
        owner_region,
        scope,
        event_types,
        locale,
        orjson.dumps(config).decode(),
        secrets,
        orjson.dumps(quiet_hours).decode() if quiet_hours else None,
        created_by,
        seed,
        owner_unit_id,
    )


async def update_channel(conn, channel_id: uuid.UUID, **fields: Any) -> None:
    sets, args = [], [channel_id]
    for name, value in fields.items():
        if name in ("config", "quiet_hours"):
            value = orjson.dumps(value).decode() if value is not None else None
        args.append(value)
        sets.append(f"{name} = ${len(args)}")
    await conn.execute(f"UPDATE channels SET {', '.join(sets)}, updated_at = now() WHERE id = $1", *args)


async def pause_channel(conn, channel_id: uuid.UUID, reason: str) -> asyncpg.Record | None:
    """Pause an active channel; the row when it was paused now, None when it already was not active."""
    return await conn.fetchrow(
        "UPDATE channels SET status = 'paused', paused_reason = $2, paused_at = now(), updated_at = now() "
        "WHERE id = $1 AND status = 'active' RETURNING id, kind, owner_region",
        channel_id,
        reason[:500],
    )


async def upsert_seed_channel(conn, *, id: uuid.UUID, region: str, name: str, secrets: bytes, config: dict) -> None:
    await conn.execute(
        """INSERT INTO channels (id, kind, name, owner_kind, owner_region, scope, event_types, config, secrets, seed,
                                 created_by)
           VALUES ($1, 'webhook', $2, 'federation', $3, 'subtree', ARRAY['*'], $4, $5, true, 'settings')
           ON CONFLICT (id) DO UPDATE SET secrets = $5, config = $4, name = $2, updated_at = now()
           WHERE channels.secrets IS DISTINCT FROM $5 OR channels.config IS DISTINCT FROM $4::jsonb""",
        id,
        name,
        region,
        orjson.dumps(config).decode(),
        secrets,
    )


# -- delivering ---------------------------------------------------------------------------


@dataclass
class Claim:
    delivery_id: uuid.UUID
    attempt_id: int
    n: int
    failures: int
    payload: bytes
    event_id: uuid.UUID
    event_type: str
    event_time: datetime
    channel_id: uuid.UUID
    resend_of: uuid.UUID | None
    requested_by: str | None


async def peek_payloads(conn, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
    rows = await conn.fetch(
        "SELECT id, payload FROM deliveries WHERE id = ANY($1::uuid[]) AND payload IS NOT NULL", list(ids)
    )
    return {r["id"]: bytes(r["payload"]) for r in rows}


async def claim(
    conn,
    delivery_id: uuid.UUID,
    channel_id: uuid.UUID,
    *,
    lease_s: float,
    send_id: uuid.UUID | None,
    routed: dict | None = None,
    defer_until: datetime | None = None,
    deferred_topic: str | None = "",  # None or "": no outbox record for a deferral (migration 0004)
    deferred_value: dict | None = None,
) -> tuple[str, Claim | None]:
    """Take a delivery for one attempt, in one round trip (``notifier_claim``, migration 0003).

    ``routed`` (the delivery as the render stage made it: event id, type, time, branch, region,
    fallback, payload) creates the row on its first claim. Returns (decision, claim): ``claimed``
    with the claim, or why not: unknown | done | busy | early | held | deferred | cancelled."""
    r = routed or {}
    payload = r.get("payload")
    row = await conn.fetchrow(
        "SELECT * FROM notifier_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        delivery_id,
        channel_id,
        lease_s,
        send_id,
        r.get("event_id"),
        r.get("event_type"),
        r.get("event_time"),
        r.get("branch_id"),
        r.get("region"),
        r.get("fallback_for"),
        payload,
        payload_hash(payload) if payload is not None else None,
        defer_until,
        deferred_topic,
        lane_of(str(channel_id)),
        orjson.dumps(deferred_value) if deferred_value is not None else None,
    )
    if row["decision"] != "claimed":
        return row["decision"], None
    return "claimed", Claim(
        delivery_id,
        row["attempt_id"],
        row["n"],
        row["failures"],
        bytes(row["payload"]),
        row["event_id"],
        row["event_type"],
        row["event_time"],
        channel_id,
        row["resend_of"],
        row["requested_by"],
    )


async def finish_attempt(
    conn,
    claim: Claim,
    *,
    outcome: str,
    status_code,
    errcode,
    error,
    latency_ms: int,
    payload_hash: str | None,
    digest_of: int | None,
    send_id: uuid.UUID | None,
) -> None:
    await conn.execute(
        """UPDATE attempts SET finished_at = clock_timestamp(), outcome = $2, status_code = $3, errcode = $4,
               error = $5,
               latency_ms = $6, payload_hash = $7, digest_of = $8, send_id = COALESCE($9, send_id) WHERE id = $1""",
        claim.attempt_id,
        outcome,
        status_code,
        errcode,
        (error or None) and error[:1000],
        latency_ms,
        payload_hash,
        digest_of,
        send_id,
    )


async def mark_delivered(conn, claim: Claim, *, status_code, errcode) -> None:
    await conn.execute(
        """UPDATE deliveries SET status = 'delivered', delivered_at = clock_timestamp(), lease_until = NULL,
               last_status_code = $2, last_errcode = $3, last_error = NULL, updated_at = now() WHERE id = $1""",
        claim.delivery_id,
        status_code,
        errcode,
    )


async def mark_retry(
    conn, claim: Claim, *, delay_s: float, counts: bool, status_code, errcode, error, since: datetime | None = None
) -> datetime:
    """``since``: when the failed attempt was answered (the schedule counts from it, not from this
    write; default now)."""
    return await conn.fetchval(
        """UPDATE deliveries SET status = 'retrying', failures = failures + $2::int, lease_until = NULL,
               next_attempt_at = COALESCE($7, clock_timestamp()) + make_interval(secs => $3), last_status_code = $4,
               last_errcode = $5,
               last_error = $6, updated_at = now() WHERE id = $1 RETURNING next_attempt_at""",
        claim.delivery_id,
        1 if counts else 0,
        delay_s,
        status_code,
        errcode,
        (error or "")[:1000],
        since,
    )


DELIVERED_SQL = """
    WITH a AS (UPDATE attempts SET finished_at = clock_timestamp(), outcome = 'delivered', status_code = $3,
                   errcode = $4, error = $5, latency_ms = $6, payload_hash = $7, send_id = COALESCE($8, send_id)
               WHERE id = $2),
         d AS (UPDATE deliveries SET status = 'delivered', delivered_at = clock_timestamp(), lease_until = NULL,
                   last_status_code = $3, last_errcode = $4, last_error = NULL, updated_at = now()
               WHERE id = $1),
         c AS (UPDATE channels SET failing_since = NULL WHERE id = $9 AND failing_since IS NOT NULL),
         o AS (INSERT INTO outbox (event_id, topic, key, lane, event_type, value)
               SELECT $10, $11, $12, $13, $14, $15 WHERE $10::uuid IS NOT NULL)
    SELECT 1"""


def delivered_args(
    claim: Claim,
    *,
    status_code,
    errcode,
    error,
    latency_ms: int,
    payload_hash: str | None,
    send_id: uuid.UUID | None,
    event: tuple | None,
) -> tuple:
    """The common case as one statement's arguments: the attempt, the delivery, the channel no
    longer failing, and ``event`` (an outbox row: id, topic, key, lane, type, value)."""
    return (
        claim.delivery_id,
        claim.attempt_id,
        status_code,
        errcode,
        error,
        latency_ms,
        payload_hash,
        send_id,
        claim.channel_id,
        *(event or (None, None, None, None, None, None)),
    )


async def delivered_many(conn, rows: list[tuple]) -> None:
    """Several deliveries recorded in one round trip and one commit (group commit). ``executemany``
    is atomic by itself (asyncpg ≥ 0.22: one implicit transaction up to its Sync): an explicit
    transaction would only add a BEGIN and a COMMIT round trip, each a context switch under load."""
    await conn.executemany(DELIVERED_SQL, rows)


async def mark_dead(conn, claim: Claim, *, status_code, errcode, error) -> None:
    await conn.execute(
        """UPDATE deliveries SET status = 'dead', failures = failures + 1, lease_until = NULL, last_status_code = $2,
               last_errcode = $3, last_error = $4, updated_at = now() WHERE id = $1""",
        claim.delivery_id,
        status_code,
        errcode,
        (error or "")[:1000],
    )


async def channel_failed(conn, channel_id: uuid.UUID) -> float:
    """Note a failure; returns for how many seconds the channel has been failing."""
    return (
        await conn.fetchval(
            "UPDATE channels SET failing_since = COALESCE(failing_since, now()) WHERE id = $1 "
            "RETURNING extract(epoch FROM now() - failing_since)::float8",
            channel_id,
        )
        or 0.0
    )


async def channel_succeeded(conn, channel_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE channels SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL", channel_id
    )


async def recent_sends(conn, channel_id: uuid.UUID, window_s: float) -> list[float]:
    """Ages (seconds) of the requests sent on a channel within the window (its budget so far)."""
    rows = await conn.fetch(
        """SELECT extract(epoch FROM now() - min(started_at))::float8 AS age FROM attempts
           WHERE channel_id = $1 AND started_at > now() - make_interval(secs => $2)
             AND outcome IS DISTINCT FROM 'throttled'
           GROUP BY COALESCE(send_id::text, id::text)""",
        channel_id,
        window_s,
    )
    return [r["age"] for r in rows]


# -- each channel's queue in PostgreSQL (migration 0004) ---------------------------------------


async def spill(conn, rows: list[tuple]) -> None:
    """Deliveries of a channel with a backlog, written as ``ready`` (due now) to be read back in
    order by the worker that owns the channel. Each row: (id, event_id, event_type, event_time,
    channel_id, branch_id, region, fallback_for, payload). A row already there is left alone."""
    if not rows:
        return
    cols = list(zip(*rows, strict=True))  # every row has the same nine fields
    hashes = [payload_hash(p) for p in cols[8]]
    await conn.execute(
        """INSERT INTO deliveries (id, event_id, event_type, event_time, channel_id, branch_id, region_code,
                                   fallback_for, status, payload, payload_hash)
           SELECT id, event_id, event_type, event_time, channel_id, branch_id, region_code, fallback_for, 'ready',
                  payload, payload_hash
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[], $6::uuid[], $7::text[],
                       $8::uuid[], $9::bytea[], $10::text[])
                AS r(id, event_id, event_type, event_time, channel_id, branch_id, region_code, fallback_for, payload,
                     payload_hash)
           ON CONFLICT DO NOTHING""",
        list(cols[0]),
        list(cols[1]),
        list(cols[2]),
        list(cols[3]),
        list(cols[4]),
        list(cols[5]),
        list(cols[6]),
        list(cols[7]),
        list(cols[8]),
        hashes,
    )


DUE_COLUMNS = (
    "id, channel_id, event_type, event_time, extract(epoch FROM next_attempt_at)::float8 AS due, status, "
    "next_attempt_at"
)


async def due_of_channel(
    conn, channel_id: uuid.UUID, *, ready: int, after: tuple | None = None, waiting: int = 500
) -> tuple[list, list, float | None]:
    """What a channel has waiting in PostgreSQL: (retries, deferrals and lapsed leases due now —
    they go first; the oldest ``ready`` rows after ``after`` (next_attempt_at, id: the last one
    already read), at most ``ready`` of them; the due time (epoch s) of its next retry or deferral)."""
    due_now = await conn.fetch(
        f"""(SELECT {DUE_COLUMNS} FROM deliveries WHERE channel_id = $1 AND status IN ('retrying', 'deferred')
               AND next_attempt_at <= clock_timestamp() ORDER BY next_attempt_at LIMIT $2)
            UNION ALL
            (SELECT {DUE_COLUMNS} FROM deliveries WHERE status = 'sending' AND lease_until < clock_timestamp()
               AND channel_id = $1 LIMIT $2)""",
        channel_id,
        waiting,
    )
    backlog = []
    if ready > 0:
        backlog = await conn.fetch(
            f"""SELECT {DUE_COLUMNS} FROM deliveries WHERE channel_id = $1 AND status = 'ready'
                  AND next_attempt_at <= clock_timestamp()
                  AND ($3::timestamptz IS NULL OR (next_attempt_at, id) > ($3, $4::uuid))
                ORDER BY next_attempt_at, id LIMIT $2""",
            channel_id,
            ready,
            after[0] if after else None,
            after[1] if after else None,
        )
    later = await conn.fetchval(
        """SELECT extract(epoch FROM min(next_attempt_at))::float8 FROM deliveries
           WHERE channel_id = $1 AND status IN ('retrying', 'deferred') AND next_attempt_at > clock_timestamp()""",
        channel_id,
    )
    return list(due_now), list(backlog), later


async def due_channels(conn, horizon_s: float) -> list[asyncpg.Record]:
    """Every channel with work in PostgreSQL due within ``horizon_s``: (channel_id, due epoch s,
    whether it is a backlog of ``ready`` rows).
    Retries and deferrals by their due-time index, lapsed leases by theirs, and channels with a
    backlog of ``ready`` rows by a skip scan (one index probe per channel, however long its backlog)."""
    return await conn.fetch(
        """WITH RECURSIVE backlog AS (
               (SELECT channel_id FROM deliveries WHERE status = 'ready' ORDER BY channel_id LIMIT 1)
               UNION ALL
               SELECT (SELECT d.channel_id FROM deliveries d WHERE d.status = 'ready' AND d.channel_id > b.channel_id
                       ORDER BY d.channel_id LIMIT 1)
               FROM backlog b WHERE b.channel_id IS NOT NULL)
           SELECT channel_id, extract(epoch FROM min(next_attempt_at))::float8 AS due, false AS backlog FROM deliveries
           WHERE status IN ('retrying', 'deferred') AND next_attempt_at <= clock_timestamp() + make_interval(secs => $1)
           GROUP BY channel_id
           UNION ALL
           SELECT channel_id, extract(epoch FROM min(lease_until))::float8, false FROM deliveries
           WHERE status = 'sending' AND lease_until < clock_timestamp() GROUP BY channel_id
           UNION ALL
           SELECT b.channel_id, (SELECT extract(epoch FROM min(next_attempt_at))::float8 FROM deliveries d
                                 WHERE d.channel_id = b.channel_id AND d.status = 'ready'), true
           FROM backlog b WHERE b.channel_id IS NOT NULL""",
        horizon_s,
    )


async def robot_take(conn, robot: str, limit: int, window_s: float) -> float:
    """One send from a robot's budget (shared by every channel and worker using its key): 0 when
    taken, else the seconds to wait."""
    return await conn.fetchval("SELECT notifier_robot_take($1, $2, $3)", robot, limit, window_s)


async def block_robot(conn, robot: str, seconds: float, errcode: int | None) -> None:
    """The robot refused for sending too fast (45009, 130101): every channel of it waits."""
    await conn.execute(
        """INSERT INTO robot_blocks (robot, until, errcode)
           VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3)
           ON CONFLICT (robot) DO UPDATE SET until = GREATEST(robot_blocks.until, EXCLUDED.until),
               errcode = EXCLUDED.errcode, since = CASE WHEN robot_blocks.until < clock_timestamp()
                                                        THEN clock_timestamp() ELSE robot_blocks.since END""",
        robot,
        seconds,
        errcode,
    )


# -- the delivery log ------------------------------------------------------------------------
DELIVERY_COLUMNS = (
    "d.id, d.event_id, d.event_type, d.event_time, d.channel_id, c.kind AS channel_kind, "
    "c.name AS channel_name, c.owner_region, c.owner_unit_id, d.branch_id, d.region_code, d.fallback_for, d.resend_of, "
    "d.requested_by, d.status, d.attempts, d.failures, d.payload_hash, d.next_attempt_at, "
    "d.last_status_code, d.last_errcode, d.last_error, d.created_at, d.delivered_at"
)


async def list_deliveries(
    conn,
    *,
    regions: Sequence[str],
    branch_id,
    channel_id,
    event_type,
    status,
    since,
    until,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    owner_unit_id: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN channels c ON c.id = d.channel_id
            WHERE c.owner_region = ANY($1::text[]) AND ($11::uuid IS NULL OR c.owner_unit_id = $11)
              AND ($2::uuid IS NULL OR d.branch_id = $2) AND ($3::uuid IS NULL OR d.channel_id = $3)
              AND ($4::text IS NULL OR d.event_type = $4) AND ($5::text IS NULL OR d.status = $5)
              AND ($6::timestamptz IS NULL OR d.created_at >= $6) AND ($7::timestamptz IS NULL OR d.created_at < $7)
              AND ($8::timestamptz IS NULL OR (d.created_at, d.id) < ($8, $9::uuid))
            ORDER BY d.created_at DESC, d.id DESC LIMIT $10""",
        list(regions),
        branch_id,
        channel_id,
        event_type,
        status,
        since,
        until,
        before[0] if before else None,
        before[1] if before else None,
        limit,
        owner_unit_id,
    )


async def get_delivery(conn, delivery_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN channels c ON c.id = d.channel_id WHERE d.id = $1",
        delivery_id,
    )


async def attempts_of(conn, delivery_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT delivery_id, n, started_at, finished_at, outcome, status_code, errcode, error, latency_ms, "
        "payload_hash, digest_of, requested_by FROM attempts WHERE delivery_id = ANY($1::uuid[]) "
        "ORDER BY delivery_id, n",
        list(delivery_ids),
    )


async def resend(conn, original: uuid.UUID, requested_by: str) -> asyncpg.Record:
    """A new delivery of the same notice on the same channel, asked for by someone."""
    return await conn.fetchrow(
        """INSERT INTO deliveries (id, event_id, event_type, event_time, channel_id, branch_id, region_code, resend_of,
                                   requested_by, status, payload, payload_hash)
           SELECT $1, event_id, event_type, event_time, channel_id, branch_id, region_code, id, $3, 'ready', payload,
                  payload_hash FROM deliveries WHERE id = $2 AND payload IS NOT NULL
           RETURNING id, channel_id, event_time""",
        uuid.uuid4(),
        original,
        requested_by,
    )


async def release_held(conn, channel_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """UPDATE deliveries SET status = 'ready', next_attempt_at = now(), updated_at = now()
           WHERE channel_id = $1 AND status = 'held' RETURNING id, channel_id, event_type, event_time""",
        channel_id,
    )


async def insert_test_delivery(
    conn, *, channel_id: uuid.UUID, region: str, payload: bytes, payload_hash: str, requested_by: str, event_type: str
) -> asyncpg.Record:
    return await conn.fetchrow(
        """INSERT INTO deliveries (id, event_id, event_type, event_time, channel_id, region_code, requested_by, status,
                                   payload, payload_hash)
           VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6, 'ready', $7, $8) RETURNING id, channel_id, event_time""",
        uuid.uuid4(),
        uuid.uuid4(),
        event_type,
        channel_id,
        region,
        requested_by,
        payload,
        payload_hash,
    )
