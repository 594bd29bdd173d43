"""The intake's commands: one function each, called by the routes and the consumers alike.

``accept`` is the one path of every upstream event, whichever way it came (HTTP binary, structured or
batch mode, or the Kafka intake topic): check each event (``domain.check_event``), then in ONE statement
(atomic by itself; within the caller's transaction when it has one, as the Kafka path does) record every new
(source, id) and queue its command in the outbox. A (source, id) seen before is a duplicate and changes
nothing. When that statement (or the caller's transaction) commits the events are durably accepted
(the 202); the command reaches the owning service through the outbox relay, at least once, and the owning
service's inbox applies it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from services.intake import domain, store
from services.intake.domain import Incoming, Source
from shared import outbox, regions
from shared.auth import Principal
from shared.crypto import FieldCipher
from shared.errors import Conflict, DomainError, NotFound, OutOfScope
from shared.events import encode, envelope
from shared.events.intake import AppliedOutcome, CommandKeys, RejectedOutcome
from shared.logging import trace_id_var
from shared.problems import PROBLEM_BASE


# -- sources -------------------------------------------------------------------------------
def seal_secret(cipher: FieldCipher, source_id: uuid.UUID, secret: SecretStr | None) -> bytes | None:
    return cipher.seal("reply_secret", source_id, secret.get_secret_value()) if secret is not None else None


async def register_source(
    conn: asyncpg.Connection, cmd: domain.SourceIn, actor: Principal, cipher: FieldCipher
) -> asyncpg.Record:
    actor.ensure_region_level()  # a source's scope and credentials are the federation's to grant
    domain.check_reply(cmd.reply, cmd.reply_url, cmd.reply_secret is not None)
    source_id = uuid.uuid4()
    row = await store.insert_source(
        conn,
        source_id,
        cmd.source,
        cmd.name,
        cmd.region_code,
        cmd.event_types,
        cmd.client_id,
        cmd.reply.value,
        cmd.reply_url,
        seal_secret(cipher, source_id, cmd.reply_secret),
        actor.subject,
    )
    if row is None:
        existing = await store.source_by_uri_or_client(conn, cmd.source, cmd.client_id)
        raise Conflict(
            "the source URI or the client id is already registered",
            kind="source-exists",
            title="Already registered",
            source_id=str(existing["id"]) if existing else None,
        )
    return row


async def get_source(conn, source_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    # the registry is the region's: one source by id outside a region-level token is 404 (the one region rule)
    row = await store.get_source(conn, source_id) if actor.region == regions.REGION_ROOT else None
    if row is None:
        raise NotFound("source", source_id)
    return row


async def list_sources(conn, actor: Principal, *, after: int | None, limit: int) -> list[asyncpg.Record]:
    actor.ensure_region_level()
    return await store.sources_page(conn, after, limit)


async def update_source(
    conn: asyncpg.Connection, source_id: uuid.UUID, cmd: domain.SourcePatch, actor: Principal, cipher: FieldCipher
) -> asyncpg.Record:
    actor.ensure_region_level()
    current = await store.get_source(conn, source_id, lock=True)
    if current is None:
        raise NotFound("source", source_id)
    changes = cmd.model_dump(exclude_unset=True, mode="json", exclude={"reply_secret"})
    if cmd.reply_secret is not None:
        changes["reply_secret"] = seal_secret(cipher, source_id, cmd.reply_secret)
    if changes.get("reply") == domain.Reply.poll:
        changes.setdefault("reply_url", None)
        changes["reply_secret"] = None  # a poll source keeps no secret
    has_secret = changes.get("reply_secret", current["reply_secret"]) is not None
    domain.check_reply(
        changes.get("reply", current["reply"]), changes.get("reply_url", current["reply_url"]), has_secret
    )
    if not changes:
        return current
    row = await store.update_source(conn, source_id, changes)
    if row is None:
        raise Conflict("the client id is another source's", kind="client-id-taken", title="Client id taken")
    return row


# The registrations of callers seen lately (client id -> the registration and its updated_at), per app: a single
# event then needs no read of its own, one round trip of two. Trusted only as far as the event's statement
# confirms it (``accept(..., current=...)``): a registration changed since is read again, never honoured stale.
KNOWN_MOST = 1024


class RegistrationChanged(Exception):
    """The caller's registration changed since it was read (``accept``'s ``current``): nothing was written."""


async def caller_source(
    conn, actor: Principal, known: dict[str, tuple[Source, datetime]] | None = None
) -> tuple[Source, datetime]:
    """The registered source a token speaks for (its ``sub`` is the source's client id), and when its
    registration last changed; from ``known`` when there, else read (and kept in ``known``)."""
    hit = known.get(actor.subject) if known is not None else None
    if hit is not None:
        return hit
    row = await store.source_by_client(conn, actor.subject)
    if row is None:
        raise OutOfScope(
            "no source is registered with this client id",
            kind="unregistered-client",
            title="The caller is not a registered source",
        )
    found = (store.source_of(row), row["updated_at"])
    if known is not None:
        if len(known) >= KNOWN_MOST:
            known.clear()
        known[actor.subject] = found
    return found


async def accept_from_caller(
    conn,
    actor: Principal,
    read_items: Callable[[], list],
    known: dict[str, tuple[Source, datetime]],
    *,
    batch: bool,
    channel: str,
    now: datetime,
    max_future: timedelta,
    keys: CommandKeys,
) -> tuple[Source, Accepted]:
    """``accept`` over HTTP: every event checked against the caller's own registration. A single event takes
    it from ``known`` (the callers seen lately) when there, confirmed by the event's own statement; a changed
    registration, or a refusal decided on the kept one, is read again and decided anew. A batch reads it
    (once for up to 500 events). ``read_items`` parses the request once the caller is known to be registered."""
    cached = not batch and actor.subject in known
    source, changed = await caller_source(conn, actor, None if batch else known)
    items = read_items()

    async def decide(source: Source, current: tuple[uuid.UUID, datetime] | None) -> Accepted:
        return await accept(
            conn, items, lambda _: source, channel=channel, now=now, max_future=max_future, keys=keys, current=current
        )

    if cached:
        try:
            accepted = await decide(source, (source.id, changed))
            if accepted.results[0].outcome != "rejected":
                return source, accepted
        except RegistrationChanged:
            pass
        known.pop(actor.subject, None)
        source, _ = await caller_source(conn, actor, known)
    return source, await decide(source, None)


# -- events --------------------------------------------------------------------------------
@dataclass
class Result:
    """One event's outcome: ``accepted`` | ``duplicate`` | ``rejected`` (with its problem)."""

    id: str | None
    source: str | None
    type: str | None
    outcome: str
    problem: dict[str, Any] | None = None
    time: datetime | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "source": self.source, "outcome": self.outcome}
        if self.problem is not None:
            out["problem"] = self.problem
        return out


@dataclass
class Accepted:
    results: list[Result] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


def refused(event: Incoming | None, exc: DomainError) -> Result:
    return Result(
        event.id if event else None,
        event.source if event else None,
        event.type if event else None,
        "rejected",
        domain.problem_of(exc),
    )


async def accept(
    conn: asyncpg.Connection,
    items: list[Incoming | DomainError],
    source_for,
    *,
    channel: str,
    now: datetime,
    max_future: timedelta,
    keys: CommandKeys,
    current: tuple[uuid.UUID, datetime] | None = None,
) -> Accepted:
    """Check and record ``items`` (an event, or the refusal of one that did not even parse) in the caller's
    transaction; ``source_for(event)`` gives the registered source the event is checked against (the
    caller's, over HTTP; the one named by the event, from Kafka) or raises its refusal. ``current``: (id,
    updated_at) of that registration when it was read earlier; RegistrationChanged (nothing written) when
    it is no longer the one in the database."""
    results: list[Result] = []
    fresh: list[tuple[int, domain.Checked, Source, uuid.UUID, uuid.UUID]] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, DomainError):
            results.append(refused(None, item))
            continue
        try:
            source = source_for(item)
            checked = domain.check_event(item, source, now, max_future)
        except DomainError as exc:
            results.append(refused(item, exc))
            continue
        result = Result(item.id, item.source, item.type, "accepted", time=checked.time)
        if (item.source, item.id) in seen:
            result.outcome = "duplicate"  # twice in one batch: the first counts
        else:
            seen.add((item.source, item.id))
            fresh.append((len(results), checked, source, uuid.uuid4(), uuid.uuid4()))
        results.append(result)
    rows = []
    encoded = []
    trace_id = trace_id_var.get()
    for _, checked, source, intake_id, command_id in fresh:
        rows.append(
            (
                intake_id,
                source.id,
                source.source,
                checked.incoming.id,
                checked.incoming.type,
                channel,
                checked.time,
                command_id,
            )
        )
        # encoded before the insert (a redelivery's is dropped by it): the event and its command in one statement
        command = domain.to_command(checked, source, intake_id, keys)
        key, value, _ = encode(envelope(command, trace_id=trace_id, event_id=str(command_id)))
        k = key.decode()
        encoded.append((command_id, command.topic, k, outbox.lane_of(k), command.event_type, value))
    inserted = await store.insert_events(conn, rows, encoded, current)
    if inserted is None:
        raise RegistrationChanged
    for index, _, _, intake_id, _ in fresh:
        if intake_id not in inserted:
            results[index].outcome = "duplicate"
    return Accepted(results)


async def event_status(conn, source: str, event_id: str, actor: Principal) -> asyncpg.Record:
    """An event's answer, to its own source only: any other caller (another source) gets 404."""
    caller = await store.source_by_client(conn, actor.subject)
    row = await store.get_event(conn, source, event_id) if caller is not None and caller["source"] == source else None
    if row is None:
        raise NotFound("event", event_id)
    return row


def answer(row: asyncpg.Record) -> dict[str, Any]:
    """An event's answer to its source (the poll's body and the webhook's)."""
    problem = row["problem"]
    return {
        "id": row["event_id"],
        "source": row["source"],
        "type": row["type"],
        "status": row["status"],
        "received_at": row["received_at"],
        "decided_at": row["decided_at"],
        "member_id": row["member_id"],
        "problem": orjson.loads(problem) if problem is not None else None,  # asyncpg gives jsonb as text
    }


async def record_outcomes(
    conn: asyncpg.Connection, outcomes: list[AppliedOutcome | RejectedOutcome], decided_at: datetime
) -> list[asyncpg.Record]:
    """The owning service's outcomes become each event's status (accepted → applied / rejected); the member
    is named in the answer when the command concerned one (a join, a leave, a certificate, an attendance)."""
    rows: list[tuple] = []
    for o in outcomes:
        if isinstance(o, AppliedOutcome):
            rows.append((o.intake_id, "applied", getattr(o, "member_id", None), None, decided_at))
        else:
            problem = {"type": PROBLEM_BASE + o.problem_type, "title": o.title, "status": o.status}
            if o.detail:
                problem["detail"] = o.detail
            rows.append((o.intake_id, "rejected", None, store.problem_json(problem), decided_at))
    return await store.decide(conn, rows)
