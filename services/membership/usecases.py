"""Membership's use cases: one async function per command (and per read), called by the HTTP routes,
the certificate consumer and the bulk importer alike.

Each takes the connection (the caller's transaction; a pool for a plain read), the command, the actor
(a ``Principal``) and, where a date defaults to today, today's date in China. It authorises with the one
region rule (out of scope: 404 on a read or on a write addressed by id, 403 on a write naming a region
or a branch outside the scope; lists cut to the scope), decides with ``domain``, writes with ``store``,
queues its events in the outbox, and returns the result. Refusals are ``shared.errors`` exceptions.

Lock order, everywhere: branches (sorted by id) before members before stations (see ``store``).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeAlias

import asyncpg
from starlette.requests import ClientDisconnect

from services.membership import domain, store
from services.membership.importer import Importer, ImportFailed
from services.membership.pii import Vault, home_prefecture, mask_phone, uuid7
from shared import inbox, regions
from shared.auth import Principal
from shared.errors import Conflict, DomainError, Invalid, NotFound
from shared.events import CloudEvent, EventData
from shared.events.training import CertificateIssued
from shared.identifiers import mask_id_number
from shared.logging import trace_id_var
from shared.outbox import add_many, emit
from shared.privacy import scrub_text

log = logging.getLogger(__name__)
Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

LOOKUP_WINDOW_S = 60
CERTIFICATES = "membership.certificate-issued"  # the inbox's consumer name
# The certificate consumer acts for the federation: a certificate may concern a member anywhere.
CERTIFICATE_ACTOR = Principal("membership.certificates", frozenset({"membership:write"}), regions.REGION_ROOT)


# -- branches ----------------------------------------------------------------------
async def _parent_in_scope(conn: asyncpg.Connection, parent_id: uuid.UUID, actor: Principal) -> None:
    parent = await store.get_branch(conn, parent_id)
    domain.referenced_branch(parent, actor, "parent_id")  # a parent in another city: 403


async def establish_branch(
    conn: asyncpg.Connection, cmd: domain.BranchIn, actor: Principal, today: date
) -> asyncpg.Record:
    actor.ensure_region(cmd.region_code)
    existing = await store.active_branch_by_credit_code(conn, cmd.credit_code)
    if existing:
        raise domain.branch_exists(existing, actor)
    if cmd.parent_id:
        await _parent_in_scope(conn, cmd.parent_id, actor)
    event = domain.establish_branch(cmd)
    try:
        async with conn.transaction():  # a savepoint: the unique index may refuse it
            await store.insert_branch(conn, event)
    except asyncpg.UniqueViolationError:  # a concurrent request won the race
        raise domain.branch_exists(None, actor) from None
    await emit(conn, event)
    return await store.get_branch(conn, event.branch_id)


@dataclass
class BranchDetail:
    branch: asyncpg.Record
    member_count: int
    open_stations: int


async def get_branch(conn: Conn, branch_id: uuid.UUID, actor: Principal) -> BranchDetail:
    row = await store.get_branch(conn, branch_id)
    actor.ensure_visible(row["region_code"] if row else None, "branch", branch_id)
    return BranchDetail(
        row, await store.branch_member_count(conn, branch_id), await store.open_station_count(conn, branch_id)
    )


async def list_branches(
    conn: Conn,
    actor: Principal,
    *,
    region: str | None,
    industry_section: str | None,
    kind: str | None,
    status: str | None,
    founded_from: date | None,
    founded_to: date | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.list_branches(
        conn,
        regions=actor.scope_codes(region),
        industry_section=industry_section,
        kind=kind,
        status=status,
        founded_from=founded_from,
        founded_to=founded_to,
        after=after,
        limit=limit,
    )


async def update_branch(
    conn: asyncpg.Connection, branch_id: uuid.UUID, cmd: domain.BranchPatch, actor: Principal, today: date
) -> asyncpg.Record:
    branch = domain.path_branch(await store.lock_branches(conn, [branch_id], "UPDATE"), branch_id, actor)
    if cmd.region_code is not None:
        actor.ensure_region(cmd.region_code)
    if cmd.parent_id is not None:
        await _parent_in_scope(conn, cmd.parent_id, actor)
        if await store.parent_chain_has(conn, cmd.parent_id, branch_id):
            raise Invalid("parent_id", "would make the branch its own ancestor")
    event = domain.update_branch(branch, cmd)
    if event is not None:
        await store.update_branch(conn, event)
        await emit(conn, event)
    return await store.get_branch(conn, branch_id)


async def _move_everything(
    conn: asyncpg.Connection, source, target, reason: str, on: date, actor: Principal
) -> tuple[int, list[EventData]]:
    """Move a branch's active members and open stations to another branch; (members moved, events)."""
    moved = await store.move_active_members(conn, source["id"], target["id"])
    await store.insert_transfers(
        conn, [(uuid.uuid4(), m["id"], source["id"], target["id"], reason, on, actor.subject) for m in moved]
    )
    events: list[EventData] = [
        domain.member_moved(m["id"], m["employment_form"], source, target, reason, on) for m in moved
    ]
    stations = await store.move_open_stations(conn, source["id"], target["id"])
    events += [domain.station_moved(s["id"], s["region_code"], source, target, reason, on) for s in stations]
    return len(moved), events


@dataclass
class BranchEnded:
    branch: asyncpg.Record
    members_moved: int


async def merge_branch(
    conn: asyncpg.Connection, branch_id: uuid.UUID, cmd: domain.MergeIn, actor: Principal, today: date
) -> BranchEnded:
    locked = await store.lock_branches(conn, [branch_id, cmd.into_branch_id], "UPDATE")
    branch = domain.path_branch(locked, branch_id, actor)
    into = domain.referenced_branch(locked.get(cmd.into_branch_id), actor, "into_branch_id")
    domain.check_merge(branch, into)
    on = cmd.merged_on or today
    moved, events = await _move_everything(conn, branch, into, "merge", on, actor)
    await store.end_branch(conn, branch_id, "merged", on, merged_into=into["id"])
    events.append(domain.branch_merged(branch, into["id"], moved, on))
    await emit(conn, *events)
    return BranchEnded(await store.get_branch(conn, branch_id), moved)


async def dissolve_branch(
    conn: asyncpg.Connection, branch_id: uuid.UUID, cmd: domain.DissolveIn, actor: Principal, today: date
) -> BranchEnded:
    locked = await store.lock_branches(conn, [branch_id] + ([cmd.transfer_to] if cmd.transfer_to else []), "UPDATE")
    branch = domain.path_branch(locked, branch_id, actor)
    target = domain.referenced_branch(locked.get(cmd.transfer_to), actor, "transfer_to") if cmd.transfer_to else None
    domain.check_dissolve(
        branch,
        target,
        await store.branch_member_count(conn, branch_id),
        await store.open_station_count(conn, branch_id),
    )
    on = cmd.dissolved_on or today
    moved, events = await _move_everything(conn, branch, target, "dissolution", on, actor) if target else (0, [])
    await store.end_branch(conn, branch_id, "dissolved", on, transferred_to=target["id"] if target else None)
    events.append(domain.branch_dissolved(branch, target["id"] if target else None, moved, on))
    await emit(conn, *events)
    return BranchEnded(await store.get_branch(conn, branch_id), moved)


# -- members -------------------------------------------------------------------------
def _person(cmd: domain.MemberIn, rules: domain.MemberRules) -> domain.NewMember:
    return rules(
        cmd.name,
        cmd.id_number,
        cmd.phone,
        cmd.employment_form,
        cmd.occupation,
        cmd.skill_level,
        cmd.branch_id,
        cmd.joined_on,
    )


def _member_fields(person: domain.NewMember, branch) -> dict[str, Any]:
    return dict(
        branch_id=branch["id"],
        name=person.name,
        employment_form=person.employment_form,
        occupation=person.occupation,
        joined_on=person.joined_on,
    )


def _secrets(vault: Vault, member_id: uuid.UUID, person: domain.NewMember) -> dict[str, Any]:
    return dict(
        id_cipher=vault.encrypt("id_number", member_id, person.number),
        id_masked=mask_id_number(person.number),
        phone_cipher=vault.encrypt("phone", member_id, person.phone) if person.phone else None,
        phone_masked=mask_phone(person.phone) if person.phone else None,
    )


def _joined(member_id: uuid.UUID, branch, person: domain.NewMember, skill: int | None, id_hash: bytes) -> EventData:
    return domain.member_joined(
        member_id,
        branch,
        employment_form=person.employment_form,
        occupation=person.occupation,
        skill_level=skill,
        born=person.birth_date,
        sex=person.sex,
        joined_on=person.joined_on,
        id_hash=id_hash,
    )


async def join(
    conn: asyncpg.Connection, cmd: domain.MemberIn, actor: Principal, today: date, *, vault: Vault
) -> asyncpg.Record:
    """A person joins a branch (入会); one who left or lapsed rejoins as the same member.
    The person's data meets the same rules (``domain.MemberRules``) as every row of a bulk import."""
    person = _person(cmd, domain.MemberRules(today))
    id_hash = vault.lookup_hash(person.number)
    branch = await store.lock_branches(conn, [person.branch_id])
    branch = domain.joining_branch(branch.get(person.branch_id), actor, person.joined_on)
    member_id = uuid7()
    fields = _member_fields(person, branch)
    skill = person.skill_level
    row = await store.insert_member(
        conn,
        id=member_id,
        id_hash=id_hash,
        birth_year=person.birth_date.year,
        sex=person.sex,
        home_region_code=home_prefecture(person.region_code),
        skill_level=skill,
        **fields,
        **_secrets(vault, member_id, person),
    )
    if row is None:
        existing = await store.member_by_hash(conn, id_hash, lock=True)
        assert existing is not None, "the insert conflicted on this hash"
        domain.check_not_member(existing, actor)
        member_id = existing["id"]
        skill = domain.rejoin_skill_level(existing["skill_level"], skill)
        row = await store.rejoin_member(
            conn, member_id, skill_level=skill, **fields, **_secrets(vault, member_id, person)
        )
    await emit(conn, _joined(member_id, branch, person, skill, id_hash))
    return await store.get_member(conn, member_id)


async def join_many(
    conn: asyncpg.Connection,
    joins: list[tuple[domain.MemberIn, Principal]],
    today: date,
    *,
    vault: Vault,
) -> list[asyncpg.Record | DomainError]:
    """The batch form of :func:`join` (the intake's commands, a partition's batch at a time): each join's
    outcome in order, the member's row or its refusal, as a sequence of ``join`` calls would give them,
    with the same rules, scope checks and ``member.joined`` events, in a few statements instead of ten
    round trips each. The people not yet members are inserted in one statement; a person already known
    (a rejoin, or a refusal that names the member) and the same person a second time in the batch go
    through ``join`` itself, each in a savepoint, after the others. A refusal touches nothing."""
    rules = domain.MemberRules(today)
    outcomes: list[asyncpg.Record | DomainError | None] = [None] * len(joins)
    people: dict[int, domain.NewMember] = {}
    for i, (cmd, _) in enumerate(joins):
        try:
            people[i] = _person(cmd, rules)
        except DomainError as exc:
            outcomes[i] = exc
    branches = await store.lock_branches(conn, [p.branch_id for p in people.values()])
    staged: dict[bytes, tuple[int, uuid.UUID, Any]] = {}  # id_hash -> (index, member id, branch)
    one_by_one: list[int] = []
    for i, person in people.items():
        try:
            branch = domain.joining_branch(branches.get(person.branch_id), joins[i][1], person.joined_on)
        except DomainError as exc:
            outcomes[i] = exc
            continue
        id_hash = vault.lookup_hash(person.number)
        if id_hash in staged:
            one_by_one.append(i)  # the same person again: after the first, as ``join`` would see it
        else:
            staged[id_hash] = (i, uuid7(), branch)
    rows = []
    for id_hash, (i, member_id, branch) in sorted(staged.items()):  # sorted by the unique key: one lock order
        person = people[i]
        fields, secrets = _member_fields(person, branch), _secrets(vault, member_id, person)
        rows.append(
            (
                member_id,
                id_hash,
                fields["branch_id"],
                fields["name"],
                secrets["id_cipher"],
                secrets["id_masked"],
                secrets["phone_cipher"],
                secrets["phone_masked"],
                person.birth_date.year,
                person.sex,
                home_prefecture(person.region_code),
                fields["employment_form"],
                fields["occupation"],
                person.skill_level,
                fields["joined_on"],
            )
        )
    inserted = await store.insert_members(conn, rows)
    events = []
    for id_hash, (i, member_id, branch) in staged.items():
        if member_id in inserted:
            events.append(_joined(member_id, branch, people[i], people[i].skill_level, id_hash))
        else:
            one_by_one.append(i)  # already a member (a rejoin or a refusal): the single join decides
    await emit(conn, *events)
    found = await store.get_members(conn, list(inserted))
    for i, member_id, _ in staged.values():
        if member_id in inserted:
            outcomes[i] = found[member_id]
    for i in sorted(one_by_one):
        cmd, actor = joins[i]
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes this join only
                outcomes[i] = await join(conn, cmd, actor, today, vault=vault)
        except DomainError as exc:
            outcomes[i] = exc
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(joins), "every join has its outcome"
    return done


@dataclass
class LookupResult:
    outcome: str  # found | not_found | rate_limited
    member: asyncpg.Record | None = None
    retry_after_s: int | None = None


async def lookup(
    conn: asyncpg.Connection, cmd: domain.LookupIn, actor: Principal, today: date, *, vault: Vault, per_minute: int
) -> LookupResult:
    """Find a member by ID number. Every lookup is audited (it confirms a guessed number), and a caller
    gets ``per_minute`` of them, counted in the audit table so the limit holds across replicas.
    Returns rather than raises, so the audit row of a refused or fruitless lookup is committed."""
    await store.lock_lookups_of(conn, actor.subject)
    counted, oldest = await store.lookups_in_window(conn, actor.subject, LOOKUP_WINDOW_S)
    if counted >= per_minute:
        left = await store.window_left_s(conn, oldest, LOOKUP_WINDOW_S)
        result = LookupResult("rate_limited", retry_after_s=min(LOOKUP_WINDOW_S, max(1, math.ceil(left))))
    else:
        found = await store.member_by_hash(conn, vault.lookup_hash(cmd.id_number))
        row = await store.get_member(conn, found["id"]) if found else None
        visible = row is not None and actor.may_act_on(row["region_code"])
        result = LookupResult("found", row) if visible else LookupResult("not_found")
    await store.insert_lookup(
        conn,
        uuid7(),
        actor.subject,
        actor.region,
        result.outcome,
        result.member["id"] if result.member else None,
        trace_id_var.get(),
    )
    return result


async def list_lookups(
    conn: Conn, actor: Principal, *, subject: str | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    return await store.list_lookups(conn, scope_regions=actor.scope_codes(), subject=subject, after=after, limit=limit)


async def get_member(conn: Conn, member_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    row = await store.get_member(conn, member_id)
    actor.ensure_visible(row["region_code"] if row else None, "member", member_id)
    return row


async def list_members(
    conn: Conn,
    actor: Principal,
    *,
    region: str | None,
    branch_id: uuid.UUID | None,
    employment_form: str | None,
    status: str | None,
    skill_level: int | None,
    after: uuid.UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.list_members(
        conn,
        regions=actor.scope_codes(region),
        branch_id=branch_id,
        employment_form=employment_form,
        status=status,
        skill_level=skill_level,
        after=after,
        limit=limit,
    )


async def transfers_of(
    conn: Conn, member_id: uuid.UUID, actor: Principal, *, after: tuple | None, limit: int
) -> list[asyncpg.Record]:
    await get_member(conn, member_id, actor)
    return await store.transfers_of(conn, member_id, after=after, limit=limit)


async def _lock_member_and_branches(
    conn: asyncpg.Connection, member_id: uuid.UUID, actor: Principal, extra: list[uuid.UUID]
):
    """Branches first (the member's and ``extra``), then the member: the service's one lock order."""
    for _ in range(5):
        branch_id = await store.member_branch_id(conn, member_id)
        if branch_id is None:
            raise NotFound("member", member_id)
        locked = await store.lock_branches(conn, [branch_id, *extra])
        member = await store.lock_member(conn, member_id)
        if member is not None and member["branch_id"] == branch_id:
            source = locked[branch_id]
            actor.ensure_visible(source["region_code"], "member", member_id)
            return member, source, locked
    raise Conflict(
        "the member is being moved by another request; retry", kind="busy", title="The member is being moved"
    )


async def transfer(
    conn: asyncpg.Connection, member_id: uuid.UUID, cmd: domain.TransferIn, actor: Principal, today: date
) -> asyncpg.Record:
    member, source, locked = await _lock_member_and_branches(conn, member_id, actor, [cmd.to_branch_id])
    target = domain.referenced_branch(locked.get(cmd.to_branch_id), actor, "to_branch_id")
    domain.check_transfer(member, source, target)
    on = cmd.transferred_on or today
    reason = scrub_text(cmd.reason) if cmd.reason else None  # a typed phone or ID number goes no further
    await store.set_member_branch(conn, member_id, target["id"])
    await store.insert_transfers(
        conn, [(uuid.uuid4(), member_id, source["id"], target["id"], reason, on, actor.subject)]
    )
    await emit(conn, domain.member_moved(member_id, member["employment_form"], source, target, reason, on))
    return await store.get_member(conn, member_id)


async def end_membership(
    conn: asyncpg.Connection, member_id: uuid.UUID, kind: str, cmd: domain.EndIn, actor: Principal, today: date
) -> asyncpg.Record:
    """``kind``: ``left`` (退会) or ``lapsed``. The reason is not kept (nor sent): nothing needs it yet."""
    member, branch, _ = await _lock_member_and_branches(conn, member_id, actor, [])
    on = cmd.on or today
    event = domain.member_ended(kind, member, branch, on)
    await store.end_member(conn, member_id, kind, on)
    await emit(conn, event)
    return await store.get_member(conn, member_id)


async def leave(
    conn: asyncpg.Connection, member_id: uuid.UUID, cmd: domain.EndIn, actor: Principal, today: date
) -> asyncpg.Record:
    return await end_membership(conn, member_id, "left", cmd, actor, today)


async def lapse(
    conn: asyncpg.Connection, member_id: uuid.UUID, cmd: domain.EndIn, actor: Principal, today: date
) -> asyncpg.Record:
    return await end_membership(conn, member_id, "lapsed", cmd, actor, today)


@dataclass
class Revealed:
    member_id: uuid.UUID
    id_number: str
    phone: str | None
    audit_id: uuid.UUID
    revealed_at: Any


async def reveal(
    conn: asyncpg.Connection, member_id: uuid.UUID, cmd: domain.RevealIn, actor: Principal, today: date, *, vault: Vault
) -> Revealed:
    """The full ID number and phone, with the audit row written in the same transaction."""
    await get_member(conn, member_id, actor)
    secrets = await store.member_secrets(conn, member_id)
    assert secrets is not None, "the member was just read"
    fields = ["id_number"] + (["phone"] if secrets["phone_cipher"] else [])
    audit = await store.insert_reveal(
        conn, uuid.uuid4(), member_id, actor.subject, cmd.reason, fields, trace_id_var.get()
    )
    return Revealed(
        member_id,
        vault.decrypt("id_number", member_id, secrets["id_cipher"]),
        vault.decrypt("phone", member_id, secrets["phone_cipher"]) if secrets["phone_cipher"] else None,
        audit["id"],
        audit["revealed_at"],
    )


async def reveals_of(
    conn: Conn, member_id: uuid.UUID, actor: Principal, *, after: tuple | None, limit: int
) -> list[asyncpg.Record]:
    await get_member(conn, member_id, actor)
    return await store.reveals_of(conn, member_id, after=after, limit=limit)


async def apply_certificate(
    conn: asyncpg.Connection,
    event: CloudEvent,
    data: CertificateIssued,
    actor: Principal = CERTIFICATE_ACTOR,
    today: date | None = None,
) -> str:
    """A skill certificate raises the member's level when higher, once per event (the inbox claim, the
    level and the event in one transaction); what happened: raised, not-higher, redelivered, unknown-member."""
    if not await inbox.claim(conn, CERTIFICATES, event.id):
        return "redelivered"
    # The member row lock alone: a branch change of this member needs the same lock, so the
    # branch read next is the member's branch for as long as this transaction lasts.
    member = await store.lock_member(conn, data.member_id)
    if member is None:
        return "unknown-member"
    if not domain.raised_skill_level(member["skill_level"], data.level):
        return "not-higher"
    branch = await store.get_branch(conn, member["branch_id"])
    change = domain.skill_level_changed(member, branch, data.level, data.certificate_id)
    await store.set_skill_level(conn, data.member_id, data.level)
    await emit(conn, change)
    return "raised"


async def record_certificate(
    conn: asyncpg.Connection, member_id: uuid.UUID, cmd: domain.CertificateRecordIn, actor: Principal, today: date
) -> asyncpg.Record:
    """A certificate issued outside the platform (人社厅's, through the intake): recorded for the member once
    per (issuer, number), and the member's level raised when it is higher (the same rule and event as a
    training certificate's). A member outside the caller's scope is 404."""
    member, branch, _ = await _lock_member_and_branches(conn, member_id, actor, [])
    certificate_id = uuid.uuid4()
    recorded = await store.insert_external_certificate(
        conn,
        id=certificate_id,
        member_id=member_id,
        issuer=cmd.issuer,
        certificate_no=cmd.certificate_no,
        occupation=cmd.occupation,
        occupation_code=cmd.occupation_code,
        level=cmd.level,
        issued_on=cmd.issued_on,
        recorded_by=actor.subject,
    )
    if not recorded:
        raise Conflict(
            "this issuer's certificate number is already recorded",
            kind="certificate-recorded",
            title="The certificate is already recorded",
        )
    if domain.raised_skill_level(member["skill_level"], cmd.level):
        await store.set_skill_level(conn, member_id, cmd.level)
        await emit(conn, domain.skill_level_changed(member, branch, cmd.level, certificate_id))
    row = await store.get_member(conn, member_id)
    assert row is not None, "the member is locked"
    return row


# -- stations --------------------------------------------------------------------------
async def open_station(
    conn: asyncpg.Connection, cmd: domain.StationIn, actor: Principal, today: date
) -> asyncpg.Record:
    actor.ensure_region(cmd.region_code)
    locked = await store.lock_branches(conn, [cmd.branch_id])
    branch = domain.referenced_branch(locked.get(cmd.branch_id), actor, "branch_id")
    station_id = uuid.uuid4()
    event = domain.station_opened(station_id, cmd, branch, cmd.opened_on or today)
    await store.insert_station(conn, station_id, cmd.name, branch["id"], cmd.region_code, cmd.services, event.opened_on)
    await emit(conn, event)
    return await store.get_station(conn, station_id)


async def close_station(
    conn: asyncpg.Connection, station_id: uuid.UUID, cmd: domain.CloseIn, actor: Principal, today: date
) -> asyncpg.Record:
    station = await store.get_station(conn, station_id)
    actor.ensure_visible(station["region_code"] if station else None, "station", station_id)
    assert station is not None
    await store.lock_branches(conn, [station["branch_id"]])
    station = await store.get_station(conn, station_id, lock=True)
    assert station is not None, "stations are never deleted"
    event = domain.station_closed(station, cmd.closed_on or today)
    await store.close_station(conn, station_id, event.closed_on)
    await emit(conn, event)
    return await store.get_station(conn, station_id)


async def get_station(conn: Conn, station_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    row = await store.get_station(conn, station_id)
    actor.ensure_visible(row["region_code"] if row else None, "station", station_id)
    return row


async def list_stations(
    conn: Conn,
    actor: Principal,
    *,
    region: str | None,
    branch_id: uuid.UUID | None,
    status: str | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.list_stations(
        conn, regions=actor.scope_codes(region), branch_id=branch_id, status=status, after=after, limit=limit
    )


# -- imports -----------------------------------------------------------------------------
async def import_branch(conn: Conn, branch_id: uuid.UUID | None, actor: Principal) -> None:
    """The ``?branch_id=`` of an upload: it must exist, be in the caller's scope (403) and be active."""
    if branch_id is not None:
        branch = domain.referenced_branch(await store.get_branch(conn, branch_id), actor, "branch_id")
        domain.ensure_active(branch)


async def prior_import(conn: Conn, sha256: bytes | None, actor: Principal) -> asyncpg.Record | None:
    """The same file, already imported without a rejected row by this scope (nothing to do again)."""
    return await store.completed_import_by_sha(conn, sha256, actor.region) if sha256 is not None else None


async def start_import(
    conn: Conn, fmt: str, default_branch: uuid.UUID | None, bytes_expected: int | None, actor: Principal
) -> uuid.UUID:
    import_id = uuid7()
    await store.create_import(conn, import_id, actor.subject, actor.region, fmt, default_branch, bytes_expected)
    return import_id


async def finish_import(conn: Conn, import_id: uuid.UUID, importer, status: str, error: str | None) -> asyncpg.Record:
    """Record how an import ended (``importer`` None: it failed before it read anything)."""
    if importer is None:
        return await store.finish_import(
            conn,
            import_id,
            status=status,
            encoding=None,
            rows_total=0,
            bytes_read=0,
            sha256=None,
            ignored_columns=[],
            error=error,
        )
    return await store.finish_import(
        conn,
        import_id,
        status=status,
        encoding=(importer.decoder.encoding if importer.decoder else "utf-8"),
        rows_total=importer.counts.rows,
        bytes_read=importer.counts.bytes,
        sha256=getattr(importer, "sha256", None) if status == "completed" else None,
        ignored_columns=importer.ignored_columns,
        error=error,
    )


async def list_imports(
    conn: Conn, actor: Principal, *, status: str | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    return await store.list_imports(conn, scope_regions=actor.scope_codes(), status=status, after=after, limit=limit)


async def get_import(conn: Conn, import_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    rec = await store.get_import(conn, import_id)
    if rec is None or not (actor.may_act_on(rec["scope_region"]) or rec["subject"] == actor.subject):
        raise NotFound("import", import_id)
    return rec


async def import_report(
    conn: Conn, import_id: uuid.UUID, actor: Principal, *, outcome: str | None, after_row: int, limit: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    rec = await get_import(conn, import_id, actor)
    return rec, await store.import_report(conn, import_id, outcome=outcome, after_row=after_row, limit=limit)


@dataclass
class ImportOutcome:
    record: asyncpg.Record | None  # the import as recorded (None only when the database went away)
    error: str | None = None  # why the file could not be read to the end
    database_unavailable: bool = False


async def import_members(
    pool: asyncpg.Pool,
    chunks,
    import_id: uuid.UUID,
    fmt: str,
    actor: Principal,
    today: date,
    *,
    vault: Vault,
    charset: str | None,
    default_branch: uuid.UUID | None,
    batch_rows: int,
    writers: int,
) -> ImportOutcome:
    """Stream an upload through the importer (``importer.py``). However it ends, the import is recorded
    as ``completed`` or ``failed`` with its reason, never left ``running``; rows written are kept."""
    importer: Importer | None = None
    error: str | None = None
    try:
        importer = Importer(
            pool,
            vault,
            actor,
            import_id,
            fmt,
            charset=charset,
            default_branch=default_branch,
            batch_rows=batch_rows,
            writers=writers,
            trace_id=trace_id_var.get(),
            today=today,
        )
        await importer.run(chunks)
    except ImportFailed as exc:
        error = str(exc)
    except ClientDisconnect:
        error = "the upload was interrupted before the end of the file"
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
        await _fail_quietly(
            pool, import_id, importer, "the database became unavailable; the rows written so far are kept"
        )
        return ImportOutcome(None, database_unavailable=True)
    except BaseException:
        await _fail_quietly(pool, import_id, importer, "internal error: the rows written so far are kept; upload again")
        raise
    record = await finish_import(pool, import_id, importer, "failed" if error else "completed", error)
    return ImportOutcome(record, error)


async def _fail_quietly(pool: asyncpg.Pool, import_id: uuid.UUID, importer, error: str) -> None:
    """Record a failed import; the original failure is the one to report."""
    try:
        await finish_import(pool, import_id, importer, "failed", error)
    except Exception:  # noqa: BLE001
        log.warning("could not record the failed import", extra={"import_id": str(import_id)})


# -- lookup hashes for readers that lack them (``python -m services.membership publish-lookups``) ---------
async def publish_lookups(
    conn: asyncpg.Connection, *, after: uuid.UUID | None, limit: int, created_before: datetime | None = None
) -> tuple[int, uuid.UUID | None]:
    """In the caller's transaction: ``member.lookup`` of the next ``limit`` members after ``after`` (id order)
    into the outbox; returns how many and the last member's id (the next page's ``after``; None at the end).
    An operator's one-shot for readers whose ``member.joined`` had no ``id_hash`` (training's attendance
    match), not a change of any member: no actor, no rule. It carries the keyed hash ``member.joined`` carries,
    never the ID number."""
    rows = await store.member_lookups(conn, after=after, limit=limit, created_before=created_before)
    if not rows:
        return 0, None
    await add_many(conn, [domain.member_lookup(r["id"], r["region_code"], r["id_hash"]) for r in rows])
    return len(rows), rows[-1]["id"]
