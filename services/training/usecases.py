"""Training's use cases: one async function per command (and per read), called by the HTTP routes and
the bulk roster path alike.

Each takes the connection (the caller's transaction), the command (with the id it addresses), the
actor (a ``Principal``) and, where a date defaults to today, today's date in China. It authorises with
the one region rule — a read, or a write addressed by the id of a record outside the actor's scope, is
``NotFound`` (404: it never tells the record exists); a write naming a region, organiser branch,
reporting branch or member outside the scope is ``OutOfScope`` (403); lists are cut to the scope —
decides with ``domain``, writes with ``store``, queues its events in the outbox in the same
transaction, and returns the rows the answer is made of. Refusals are ``shared.errors`` exceptions.

Every change to a session's enrolments first locks the session row (``FOR UPDATE``): that is what keeps
capacity exact under concurrency (``CHECK (enrolled <= capacity)`` is the backstop).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeAlias

import asyncpg

from services.training import domain, store
from shared import outbox
from shared.auth import Principal
from shared.errors import Conflict, DomainError, Invalid, NotFound
from shared.events import EventData
from shared.events.training import OrganiserKind
from shared.logging import trace_id_var

Record: TypeAlias = asyncpg.Record


async def emit(conn: asyncpg.Connection, *events: EventData) -> None:
    await outbox.emit(conn, *events)


async def emit_many(conn: asyncpg.Connection, events: Sequence[EventData]) -> None:
    """Queue events in the outbox in this transaction, in order: one INSERT, or COPY for many."""
    await outbox.emit(conn, *events)


# ============================================================================ loading within the scope
async def _visible_session(conn, session_id: uuid.UUID, actor: Principal, *, lock: bool = False) -> Record:
    session = await store.get_session(conn, session_id, lock=lock)
    if session is None:
        raise NotFound("session", session_id)
    actor.ensure_visible(session["region_code"], "session", session_id)
    return session


async def _locked_enrolment(conn, enrolment_id: uuid.UUID, actor: Principal) -> tuple[Record, Record]:
    """(enrolment, its session locked): the enrolment is re-read under the session lock."""
    enrolment = await store.get_enrolment(conn, enrolment_id)
    if enrolment is None:
        raise NotFound("enrolment", enrolment_id)
    session = await store.get_session(conn, enrolment["session_id"], lock=True)
    actor.ensure_visible(session["region_code"] if session else None, "enrolment", enrolment_id)
    return await store.get_enrolment(conn, enrolment_id), session


async def _visible_competition(conn, competition_id: uuid.UUID, actor: Principal, *, lock: bool = False) -> Record:
    c = await store.get_competition(conn, competition_id, lock=lock)
    if c is None:
        raise NotFound("competition", competition_id)
    actor.ensure_visible(c["region_code"], "competition", competition_id)
    return c


async def _visible_studio(conn, studio_id: uuid.UUID, actor: Principal, *, lock: bool = False) -> Record:
    s = await store.get_studio(conn, studio_id, lock=lock)
    if s is None:
        raise NotFound("studio", studio_id)
    actor.ensure_visible(s["region_code"], "studio", studio_id)
    return s


# ============================================================================ reads
async def get_member(conn, member_id: uuid.UUID, actor: Principal) -> Record:
    row = await store.get_member(conn, member_id)
    if row is None:
        raise NotFound("member", member_id)
    actor.ensure_visible(row["region_code"], "member", member_id)
    return row


async def get_programme(conn, programme_id: uuid.UUID, actor: Principal) -> Record:
    row = await store.get_programme(conn, programme_id)
    if row is None:  # programmes belong to no region: any reader sees them
        raise NotFound("programme", programme_id)
    return row


async def list_programmes(conn, actor: Principal, *, after: int | None, limit: int, **filters: Any) -> list[Record]:
    return await store.list_programmes(conn, after=after, limit=limit, **filters)


async def get_session(conn, session_id: uuid.UUID, actor: Principal) -> Record:
    return await _visible_session(conn, session_id, actor)


async def list_sessions(
    conn, actor: Principal, *, region_code: str | None, after: int | None, limit: int, **filters: Any
) -> list[Record]:
    return await store.list_sessions(
        conn, region_codes=actor.scope_codes(region_code), after=after, limit=limit, **filters
    )


async def get_enrolment(conn, enrolment_id: uuid.UUID, actor: Principal) -> Record:
    row = await store.get_enrolment(conn, enrolment_id)
    session = await store.get_session(conn, row["session_id"]) if row is not None else None
    if row is None or session is None or not actor.may_act_on(session["region_code"]):
        raise NotFound("enrolment", enrolment_id)
    return row


async def list_session_enrolments(
    conn, session_id: uuid.UUID, actor: Principal, *, after: int | None, limit: int, status: str | None = None
) -> list[Record]:
    await _visible_session(conn, session_id, actor)
    return await store.list_enrolments(conn, session_id=session_id, status=status, after=after, limit=limit)


async def list_enrolments(conn, actor: Principal, *, after: int | None, limit: int, **filters: Any) -> list[Record]:
    return await store.list_enrolments(conn, region_codes=actor.scope_codes(None), after=after, limit=limit, **filters)


async def list_certificates(
    conn, actor: Principal, *, region_code: str | None, after: int | None, limit: int, **filters: Any
) -> list[Record]:
    return await store.list_certificates(
        conn, region_codes=actor.scope_codes(region_code), after=after, limit=limit, **filters
    )


async def verify_certificate(conn, serial: str) -> Record:
    """Public: anyone holding the serial may verify it. A malformed serial is not looked up."""
    serial = serial.strip().upper()
    row = await store.certificate_by_serial(conn, serial) if domain.SERIAL.fullmatch(serial) else None
    if row is None:
        raise NotFound("certificate")
    return row


async def get_competition(conn, competition_id: uuid.UUID, actor: Principal) -> Record:
    return await _visible_competition(conn, competition_id, actor)


async def list_competitions(
    conn,
    actor: Principal,
    *,
    region_code: str | None,
    industry: str | None,
    after: int | None,
    limit: int,
    **filters: Any,
) -> list[Record]:
    return await store.list_competitions(
        conn,
        region_codes=actor.scope_codes(region_code),
        after=after,
        limit=limit,
        industry=industry and domain.normalise_industry(industry)[0],
        **filters,
    )


async def list_named_participants(
    conn, competition_id: uuid.UUID, actor: Principal, *, after: uuid.UUID | None, limit: int
) -> list[Record]:
    await _visible_competition(conn, competition_id, actor)
    return await store.named_participants(conn, competition_id, after=after, limit=limit)


async def list_reported_headcounts(
    conn, competition_id: uuid.UUID, actor: Principal, *, after: uuid.UUID | None, limit: int
) -> list[Record]:
    await _visible_competition(conn, competition_id, actor)
    return await store.reported_headcounts(conn, competition_id, after=after, limit=limit)


async def get_studio(conn, studio_id: uuid.UUID, actor: Principal) -> tuple[Record, list[Record]]:
    s = await _visible_studio(conn, studio_id, actor)
    return s, await store.evaluations(conn, studio_id)


async def list_studios(
    conn,
    actor: Principal,
    *,
    region_code: str | None,
    industry: str | None,
    after: int | None,
    limit: int,
    **filters: Any,
) -> list[Record]:
    return await store.list_studios(
        conn,
        region_codes=actor.scope_codes(region_code),
        after=after,
        limit=limit,
        industry=industry and domain.normalise_industry(industry)[0],
        **filters,
    )


async def person_times(
    conn, actor: Principal, *, start: date, end: date, region_code: str | None, by: str
) -> list[Record]:
    if end < start:
        raise Invalid("to", "before from")
    return await store.person_times(conn, start, end, actor.scope_codes(region_code), by)


# ============================================================================ programmes
async def register_programme(conn, cmd: domain.ProgrammeIn, actor: Principal, today: date) -> Record:
    event = domain.register_programme(cmd)
    await store.insert_programme(conn, event)
    await emit(conn, event)
    return await store.get_programme(conn, event.programme_id)


# ============================================================================ sessions
async def schedule_session(conn, cmd: domain.SessionIn, actor: Principal, today: date) -> Record:
    if cmd.region_code:
        actor.ensure_region(cmd.region_code)
    programme = await store.get_programme(conn, cmd.programme_id)
    if programme is None:
        raise Invalid("programme_id", "no such programme")
    branch = (
        await store.get_branch(conn, uuid.UUID(cmd.organiser_id))
        if cmd.organiser_kind is OrganiserKind.branch
        else None
    )
    organiser_name, region_code = domain.resolve_organiser(cmd, branch)
    if branch is not None:  # acting for a branch: its own region decides, whatever region_code says
        actor.ensure_region(branch["region_code"])
    actor.ensure_region(region_code)
    number = await store.next_session_number(conn, programme["id"])
    event = domain.schedule_session(cmd, programme, number, region_code)
    await store.insert_session(conn, event, organiser_name)
    await emit(conn, event)
    return await store.get_session(conn, event.session_id)


async def start_session(conn, session_id: uuid.UUID, cmd: domain.StartIn, actor: Principal, today: date) -> Record:
    session = await _visible_session(conn, session_id, actor, lock=True)
    event = domain.start_session(session, cmd.started_on or today)
    await store.set_started(conn, session_id, event.started_on)
    await emit(conn, event)
    return await store.get_session(conn, session_id)


@dataclass
class Completed:
    session: Record
    completion: domain.Completion


async def complete_session(
    conn, session_id: uuid.UUID, cmd: domain.CompleteIn, actor: Principal, today: date
) -> Completed:
    """Closes the enrolments and emits ``session.completed`` with the person-times and the
    subsidy-eligible members (active members who passed)."""
    session = await _visible_session(conn, session_id, actor, lock=True)
    programme = await store.get_programme(conn, session["programme_id"])
    assert programme is not None  # sessions.programme_id references programmes
    enrolments = await store.session_enrolments(conn, session_id)
    active = await store.active_members(conn, [e["member_id"] for e in enrolments if e["status"] == "passed"])
    done = domain.complete_session(session, programme, enrolments, active, cmd.completed_on or today)
    e = done.event
    await store.set_completed(
        conn,
        session_id,
        e.completed_on,
        e.person_times,
        e.passed,
        e.failed,
        e.eligible_persons,
        [w.enrolment_id for w in done.absent],
    )
    await emit_many(conn, [*done.absent, e])
    return Completed(await store.get_session(conn, session_id), done)


async def cancel_session(conn, session_id: uuid.UUID, cmd: domain.CancelIn, actor: Principal, today: date) -> Record:
    session = await _visible_session(conn, session_id, actor, lock=True)
    live = list((await store.live_enrolments(conn, session_id)).values())
    event, withdrawn = domain.cancel_session(session, live, cmd.reason, cmd.cancelled_on or today)
    await store.set_cancelled(conn, session_id, event.cancelled_on, cmd.reason, [w.enrolment_id for w in withdrawn])
    await emit_many(conn, [*withdrawn, event])
    return await store.get_session(conn, session_id)


# ============================================================================ enrolments
@dataclass
class Enrolled:
    session: Record  # as locked, before these enrolments
    outcomes: list[domain.Outcome] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(o.problem is None for o in self.outcomes)

    @property
    def places_left(self) -> int:
        return self.session["capacity"] - self.session["enrolled"] - self.accepted


async def enrol_members(
    conn, session_id: uuid.UUID, member_ids: list[uuid.UUID], actor: Principal, today: date
) -> Enrolled:
    """Members get places in request order until the session is full; an outcome per member. A session
    that no longer takes enrolments refuses the whole command."""
    session = await _visible_session(conn, session_id, actor, lock=True)
    members = await store.members_by_id(conn, member_ids)
    # The one region rule: a member outside the caller's scope is not there for it (404), as on a read;
    # enrolling another city's member is that city's federation's (or the region's) to do.
    hidden = {mid for mid, m in members.items() if not actor.may_act_on(m["region_code"])}
    already = set(await store.live_enrolments(conn, session_id, member_ids))
    outcomes = domain.decide_enrolments(session, member_ids, members, already, hidden)
    accepted = [o for o in outcomes if o.problem is None]
    try:
        await store.insert_enrolments(
            conn,
            session_id,
            [
                (o.enrolment_id, o.member_id, members[o.member_id]["branch_id"])
                for o in accepted
                if o.enrolment_id is not None  # every accepted outcome has its new id
            ],
        )
    except asyncpg.UniqueViolationError:  # not reachable under the session lock; the index is the backstop
        raise Conflict(
            "a member is already enrolled", kind="already-enrolled", title="Member is already enrolled in this session"
        ) from None
    except asyncpg.CheckViolationError:  # idem: the capacity CHECK
        raise Conflict("no place left", kind="session-full", title="Session is full") from None
    await emit_many(conn, domain.enrolled_events(session, accepted))
    return Enrolled(session, outcomes)


async def enrol(conn, session_id: uuid.UUID, cmd: domain.EnrolIn, actor: Principal, today: date) -> Record:
    done = await enrol_members(conn, session_id, [cmd.member_id], actor, today)
    [outcome] = done.outcomes
    if outcome.problem or outcome.enrolment_id is None:
        raise outcome.problem or Conflict("not enrolled")
    return await store.get_enrolment(conn, outcome.enrolment_id)


@dataclass
class Recorded:
    outcomes: list[domain.Outcome]
    done: int
    labels: dict[uuid.UUID, str] = field(default_factory=dict)  # member -> what was recorded


async def record_attendance(
    conn, session_id: uuid.UUID, cmd: domain.AttendanceIn, actor: Principal, today: date
) -> Recorded:
    session = await _visible_session(conn, session_id, actor, lock=True)
    live = await store.live_enrolments(conn, session_id, cmd.member_ids)
    outcomes, events = domain.decide_attendance(session, cmd.member_ids, live)
    await store.mark_attended(conn, [e.enrolment_id for e in events])
    await emit_many(conn, events)
    return Recorded(outcomes, len(events))


async def record_results(conn, session_id: uuid.UUID, cmd: domain.ResultsIn, actor: Principal, today: date) -> Recorded:
    session = await _visible_session(conn, session_id, actor, lock=True)
    items = [(r.member_id, r.result) for r in cmd.results]
    live = await store.live_enrolments(conn, session_id, [m for m, _ in items])
    outcomes, events = domain.decide_results(session, items, live)
    await store.mark_assessed(conn, [(e.enrolment_id, e.result) for e in events])
    await emit_many(conn, events)
    return Recorded(outcomes, len(events), {m: r for m, r in items})


async def attend_one(conn, enrolment_id: uuid.UUID, actor: Principal, today: date) -> Record:
    enrolment, session = await _locked_enrolment(conn, enrolment_id, actor)
    live = {enrolment["member_id"]: enrolment} if enrolment["status"] != "withdrawn" else {}
    [outcome], events = domain.decide_attendance(session, [enrolment["member_id"]], live)
    if outcome.problem:
        raise outcome.problem
    await store.mark_attended(conn, [enrolment_id])
    await emit_many(conn, events)
    return await store.get_enrolment(conn, enrolment_id)


async def assess_one(conn, enrolment_id: uuid.UUID, cmd: domain.ResultIn, actor: Principal, today: date) -> Record:
    enrolment, session = await _locked_enrolment(conn, enrolment_id, actor)
    live = {enrolment["member_id"]: enrolment} if enrolment["status"] != "withdrawn" else {}
    [outcome], events = domain.decide_results(session, [(enrolment["member_id"], cmd.result)], live)
    if outcome.problem:
        raise outcome.problem
    await store.mark_assessed(conn, [(enrolment_id, cmd.result)])
    await emit_many(conn, events)
    return await store.get_enrolment(conn, enrolment_id)


async def withdraw_one(conn, enrolment_id: uuid.UUID, cmd: domain.WithdrawIn, actor: Principal, today: date) -> Record:
    enrolment, session = await _locked_enrolment(conn, enrolment_id, actor)
    event = domain.withdraw(session, enrolment, cmd.reason)
    await store.mark_withdrawn(conn, enrolment, cmd.reason)
    await emit(conn, event)
    return await store.get_enrolment(conn, enrolment_id)


# ============================================================================ certificates
async def _issue(conn, enrolment, session, programme, issuer: str | None, issued_on: date):
    event = domain.issue_certificate(enrolment, session, programme, issuer, issued_on)
    try:
        async with conn.transaction():  # savepoint: a (60-bit) serial collision is refused, not a 500
            await store.insert_certificate(conn, event, session["id"], programme["name"])
    except asyncpg.UniqueViolationError as exc:
        if "enrolment_id" in str(exc.constraint_name or ""):
            raise Conflict(
                "enrolment already has a certificate",
                kind="certificate-exists",
                title="Enrolment already has a certificate",
            ) from None
        raise Conflict("concurrent change; try again") from None
    await emit(conn, event)
    return event


async def issue_certificate(conn, cmd: domain.CertificateIn, actor: Principal, today: date) -> Record:
    enrolment, session = await _locked_enrolment(conn, cmd.enrolment_id, actor)
    existing = await store.certificate_for_enrolment(conn, cmd.enrolment_id)
    if existing:
        raise Conflict(
            f"certificate {existing['serial']} was issued on {existing['issued_on']}",
            kind="certificate-exists",
            title="Enrolment already has a certificate",
            serial=existing["serial"],
        )
    programme = await store.get_programme(conn, session["programme_id"])
    event = await _issue(conn, enrolment, session, programme, cmd.issuer, cmd.issued_on or today)
    return await store.certificate_by_serial(conn, event.serial)


@dataclass
class SessionCertificates:
    issued: list[tuple[Record, str]]  # (enrolment, serial)
    already_issued: int


async def issue_session_certificates(
    conn, session_id: uuid.UUID, cmd: domain.SessionCertificatesIn, actor: Principal, today: date
) -> SessionCertificates:
    session = await _visible_session(conn, session_id, actor, lock=True)
    programme = await store.get_programme(conn, session["programme_id"])
    done = await store.certified_enrolments(conn, session_id)
    issued = []
    for e in await store.session_enrolments(conn, session_id):
        if e["status"] == "passed" and e["id"] not in done:
            event = await _issue(conn, e, session, programme, cmd.issuer, cmd.issued_on or today)
            issued.append((e, event.serial))
    return SessionCertificates(issued, len(done))


# ============================================================================ competitions
async def announce_competition(conn, cmd: domain.CompetitionIn, actor: Principal, today: date) -> Record:
    actor.ensure_region(cmd.region_code)
    event = domain.announce_competition(cmd)
    await store.insert_competition(conn, event, domain.normalise_industry(cmd.industry)[1])
    await emit(conn, event)
    return await store.get_competition(conn, event.competition_id)


@dataclass
class Registered:
    competition: Record
    named_added: int
    reported_added: int
    already_registered: list[uuid.UUID]


async def register_participants(
    conn, competition_id: uuid.UUID, cmd: domain.ParticipantsIn, actor: Principal, today: date
) -> Registered:
    c = await _visible_competition(conn, competition_id, actor, lock=True)
    members = await store.members_by_id(conn, cmd.member_ids)
    branch = await store.get_branch(conn, cmd.branch_id) if cmd.branch_id else None
    if branch is not None:  # a headcount reported for a branch outside the scope: acting for another region
        actor.ensure_region(branch["region_code"])
    registered = await store.registered_members(conn, competition_id)
    new, again, event = domain.register_participants(c, cmd, members, registered, branch)
    if event is not None:
        await store.add_participants(conn, event, members, cmd.headcount or 0)
        await emit(conn, event)
    return Registered(await store.get_competition(conn, competition_id), len(new), cmd.headcount or 0, again)


async def hold_competition(
    conn, competition_id: uuid.UUID, cmd: domain.HeldIn, actor: Principal, today: date
) -> Record:
    c = await _visible_competition(conn, competition_id, actor, lock=True)
    event = domain.hold_competition(c, cmd.held_on)
    await store.set_held(conn, competition_id, cmd.held_on)
    await emit(conn, event)
    return await store.get_competition(conn, competition_id)


async def publish_results(
    conn, competition_id: uuid.UUID, cmd: domain.CompetitionResultsIn, actor: Principal, today: date
) -> Record:
    c = await _visible_competition(conn, competition_id, actor, lock=True)
    event = domain.publish_results(c, cmd, await store.registered_members(conn, competition_id))
    await store.set_results(conn, event)
    await emit(conn, event)
    return await store.get_competition(conn, competition_id)


# ============================================================================ studios and training bases
async def recognise_studio(conn, cmd: domain.StudioIn, actor: Principal, today: date) -> Record:
    actor.ensure_region(cmd.region_code)
    lead = await store.get_member(conn, cmd.lead_member_id) if cmd.lead_member_id else None
    if lead is not None:  # naming another region's member as lead: acting for that region
        actor.ensure_region(lead["region_code"])
    event = domain.recognise_studio(cmd, lead)
    await store.insert_studio(conn, event, domain.normalise_industry(cmd.industry)[1])
    await emit(conn, event)
    return await store.get_studio(conn, event.studio_id)


async def evaluate_studio(
    conn, studio_id: uuid.UUID, cmd: domain.EvaluationIn, actor: Principal, today: date
) -> Record:
    s = await _visible_studio(conn, studio_id, actor, lock=True)
    event = domain.evaluate_studio(s, cmd)
    await store.add_evaluation(conn, event, cmd.notes)
    await emit(conn, event)
    return await store.get_studio(conn, studio_id)


async def revoke_studio(conn, studio_id: uuid.UUID, cmd: domain.RevokeIn, actor: Principal, today: date) -> Record:
    s = await _visible_studio(conn, studio_id, actor, lock=True)
    event = domain.revoke_studio(s, cmd)
    await store.set_revoked(conn, event)
    await emit(conn, event)
    return await store.get_studio(conn, studio_id)


# ============================================================================ rosters (bulk)
@dataclass
class RosterRow:
    line: int
    member_id: uuid.UUID
    result: str  # enrolled | attended | passed | failed | absent


@dataclass
class RosterReport:
    """One session's part of a roster upload: what each row did, and whether the session completed."""

    session_id: uuid.UUID
    rows: int = 0
    recorded: int = 0  # rows that changed something
    unchanged: int = 0  # rows already in the state they ask for (a repeated upload)
    refused: list[tuple[RosterRow, Any]] = field(default_factory=list)  # (row, DomainError)
    completed: bool = False
    problem: Any = None  # a refusal of the whole session, or of its completion (DomainError)

    def refuse_all(self, rows: list[RosterRow], problem: DomainError) -> RosterReport:
        """The whole session refused: nothing of it is kept, every row answers ``problem``."""
        self.problem, self.refused, self.recorded, self.unchanged = problem, [(r, problem) for r in rows], 0, 0
        return self


_WANTED = {"enrolled": 0, "absent": 0, "attended": 1, "passed": 2, "failed": 2}


class _SessionState:
    """A locked session and its enrolments as a roster batch changes them in memory: what is written at
    the batch's end (new enrolments in their final state, changed ones, the session row) and its events."""

    def __init__(self, session: Record, programme: Record, enrolments: list[Record]):
        self.original = session
        self.session: dict[str, Any] = dict(session)
        self.programme = programme
        # ordered by seq, as store.session_enrolments; each a dict with what changed ("new", "attended", ...)
        self.enrolments: list[dict[str, Any]] = [{**e, "was_closed": e["closed"]} for e in enrolments]
        self.events: list[EventData] = []

    def copy(self) -> _SessionState:
        other = _SessionState.__new__(_SessionState)
        other.original, other.programme = self.original, self.programme
        other.session = dict(self.session)
        other.enrolments = [dict(e) for e in self.enrolments]
        other.events = list(self.events)
        return other


async def record_rosters(
    conn,
    rosters: list[tuple[uuid.UUID, list[RosterRow]]],
    actor: Principal,
    today: date,
    *,
    complete: bool = False,
    started_on: date | None = None,
    completed_on: date | None = None,
    batch_id: uuid.UUID | None = None,
) -> list[RosterReport]:
    """Many sessions' whole rosters in one go (the bulk roster command), a report for each (session id,
    rows) in order: each member is enrolled and, as the row says, marked attended and assessed (``absent``:
    enrolled, never attended, closed as withdrawn at completion); then, with ``complete``, the session is
    completed. The rules are the single commands' own (``domain.decide_enrolments``, ``start_session``,
    ``decide_attendance``, ``decide_results``, ``complete_session``), applied to the batch in memory under
    the sessions' row locks, so every refusal and event is the same; the batch is then written set-based:
    the new enrolments in their final state in one INSERT, the changed ones in one UPDATE, the sessions in
    one UPDATE, every event in one outbox write (``batch_id`` on those that carry it).

    Rows already in the state they ask for are ``unchanged`` (the same roster sent twice changes nothing
    and writes no event). A refusal of a whole session (unknown, out of scope, closed to it) keeps nothing
    of that session and touches no other; a refused completion keeps the roster recorded. A session's
    rows may come in more than one part: each part sees what the ones before it did. Run it in a
    transaction; a conflict the locks should make impossible (the live-enrolment index, the capacity
    CHECK) is raised as the single command's ``Conflict``, for the caller to record the sessions one by one."""
    ids = sorted({sid for sid, _ in rosters})
    sessions = await store.lock_sessions(conn, ids)  # in id order: two batches never wait on each other crosswise
    visible = [sid for sid in ids if sid in sessions and actor.may_act_on(sessions[sid]["region_code"])]
    programmes = await store.programmes_by_id(conn, {sessions[sid]["programme_id"] for sid in visible})
    enrolments = await store.enrolments_of_sessions(conn, visible)
    wanted = {r.member_id for _, rows in rosters for r in rows}
    wanted.update(e["member_id"] for es in enrolments.values() for e in es)
    members = await store.members_by_id(conn, list(wanted))
    # the one region rule once a region, not once a member: members outside the caller's scope
    allowed = {code: actor.may_act_on(code) for code in {m["region_code"] for m in members.values()}}
    hidden = {mid for mid, m in members.items() if not allowed[m["region_code"]]}
    states = {
        sid: _SessionState(sessions[sid], programmes[sessions[sid]["programme_id"]], enrolments.get(sid, []))
        for sid in visible
    }
    reports = []
    for sid, rows in rosters:
        report = RosterReport(sid, rows=len(rows))
        state = states.get(sid)
        if state is None:  # as a write addressed by the id of a record outside the scope: not found
            reports.append(report.refuse_all(rows, NotFound("session", sid)))
            continue
        if state.session["status"] in ("completed", "cancelled"):
            reports.append(_closed_roster(report, state, rows))
            continue
        trial = state.copy()  # the part's changes, kept only if the session is not refused whole
        try:
            _open_roster(report, trial, rows, members, hidden, today, started_on)
        except DomainError as exc:
            reports.append(report.refuse_all(rows, exc))
            continue
        if complete:
            _complete_roster(report, trial, members, completed_on or min(trial.session["ends_on"], today))
        states[sid] = trial
        reports.append(report)
    await _write_rosters(conn, list(states.values()), batch_id)
    return reports


def _open_roster(
    report: RosterReport,
    state: _SessionState,
    rows: list[RosterRow],
    members: dict[uuid.UUID, Record],
    hidden: set[uuid.UUID],
    today: date,
    started_on: date | None,
) -> None:
    session = state.session
    live = {e["member_id"]: e for e in state.enrolments if e["status"] != "withdrawn"}
    refused: dict[int, Any] = {}
    changed: set[int] = set()
    first: dict[uuid.UUID, RosterRow] = {}
    for r in rows:
        if r.member_id in first:
            refused[r.line] = domain.duplicate_item(r.member_id)
        else:
            first[r.member_id] = r

    def record(batch: list[RosterRow], outcomes: list[domain.Outcome], apply) -> None:
        for r, o in zip(batch, outcomes, strict=True):
            if o.problem is not None:
                refused[r.line] = o.problem
            else:
                changed.add(r.line)
                apply(r, live[r.member_id])

    todo = [r for r in first.values() if r.member_id not in live]  # without a live place: enrol
    if todo:
        # the one region rule: a member outside the caller's scope is not there for it (as enrol_members)
        outcomes = domain.decide_enrolments(session, [r.member_id for r in todo], members, set(), hidden)
        accepted = [o for o in outcomes if o.problem is None]
        for o in accepted:
            e = {
                "id": o.enrolment_id,
                "member_id": o.member_id,
                "branch_id": members[o.member_id]["branch_id"],
                "status": "enrolled",
                "withdraw_reason": None,
                "closed": False,
                "new": True,
            }
            state.enrolments.append(e)
            live[o.member_id] = e
        session["enrolled"] += len(accepted)
        state.events += domain.enrolled_events(session, accepted)
        record(todo, outcomes, lambda r, e: None)
    going = [r for r in first.values() if r.line not in refused]
    # a session that has not started starts when its roster says anyone attended
    if any(_WANTED[r.result] >= 1 for r in going) and session["status"] == "scheduled":
        started = domain.start_session(session, started_on or min(session["starts_on"], today))
        session["status"], session["started_on"] = "in_progress", started.started_on
        state.events.append(started)
    attend = [r for r in going if _WANTED[r.result] >= 1 and live.get(r.member_id, {}).get("status") == "enrolled"]
    if attend:
        outcomes, attended = domain.decide_attendance(session, [r.member_id for r in attend], live)
        state.events += attended
        record(attend, outcomes, lambda r, e: e.update(status="attended", attended=True))
    assess = [
        r
        for r in going
        if r.line not in refused and _WANTED[r.result] == 2 and live.get(r.member_id, {}).get("status") == "attended"
    ]
    if assess:
        outcomes, assessed = domain.decide_results(session, [(r.member_id, r.result) for r in assess], live)
        state.events += assessed
        record(assess, outcomes, lambda r, e: e.update(status=r.result, assessed=True))
    for r in going:  # a passed row for an enrolment already failed (or the reverse) is a refusal, not unchanged
        now = live[r.member_id]["status"] if r.member_id in live else None
        if (
            r.line not in refused
            and r.result in ("passed", "failed")
            and now in ("passed", "failed")
            and now != r.result
        ):
            refused[r.line] = domain.refuse(
                Conflict,
                "invalid-transition",
                "Cannot record a result",
                f"the enrolment of member {r.member_id} is already {now}",
                enrolment_status=now,
            )
    report.refused = [(r, refused[r.line]) for r in rows if r.line in refused]
    report.recorded = len(changed - set(refused))
    report.unchanged = report.rows - report.recorded - len(report.refused)


def _complete_roster(report: RosterReport, state: _SessionState, members: dict[uuid.UUID, Record], on: date) -> None:
    """``complete_session``'s rule on the session as its roster left it; a refusal keeps the roster."""
    session = state.session
    active = {
        e["member_id"]
        for e in state.enrolments
        if e["status"] == "passed" and (m := members.get(e["member_id"])) is not None and m["status"] == "active"
    }
    try:
        done = domain.complete_session(session, state.programme, state.enrolments, active, on)
    except DomainError as exc:
        report.problem = exc
        return
    absent = {w.enrolment_id for w in done.absent}
    for e in state.enrolments:
        if e["id"] in absent:
            e.update(status="withdrawn", withdraw_reason="absent", withdrawn=True)
        e["closed"] = True
    c = done.event
    session.update(
        status="completed",
        completed_on=c.completed_on,
        person_times=c.person_times,
        passed=c.passed,
        failed=c.failed,
        eligible_persons=c.eligible_persons,
        enrolled=session["enrolled"] - len(absent),
    )
    state.events += [*done.absent, c]
    report.completed = True


def _closed_roster(report: RosterReport, state: _SessionState, rows: list[RosterRow]) -> RosterReport:
    """A roster for a closed session (a repeated upload): rows that match how the session ended are
    unchanged; any other is refused as the single command would be."""
    final = {e["member_id"]: e for e in state.enrolments}  # ordered by seq: a member's last enrolment wins
    closed = domain.session_closed(state.session, "record a roster")
    seen: set[uuid.UUID] = set()
    for r in rows:
        e = final.get(r.member_id)
        same = e is not None and (
            e["status"] == r.result
            or (r.result == "absent" and e["status"] == "withdrawn" and e["withdraw_reason"] == "absent")
        )
        if r.member_id in seen:
            report.refused.append((r, domain.duplicate_item(r.member_id)))
        elif same:
            report.unchanged += 1
        else:
            report.refused.append((r, closed))
        seen.add(r.member_id)
    report.completed = state.session["status"] == "completed"
    return report


async def _write_rosters(conn, states: list[_SessionState], batch_id: uuid.UUID | None) -> None:
    """What the batch decided, set-based: a few statements for all its sessions, whatever their number."""
    new: list[tuple] = []
    changed: list[tuple] = []
    sessions: list[Record | dict] = []
    events: list[EventData] = []
    for state in states:
        for e in state.enrolments:
            if e.get("new"):
                new.append(
                    (
                        e["id"],
                        state.session["id"],
                        e["member_id"],
                        e["branch_id"],
                        e["status"],
                        e["closed"],
                        e["withdraw_reason"],
                        bool(e.get("attended")),
                        bool(e.get("assessed")),
                    )
                )
            elif e.get("attended") or e.get("assessed") or e.get("withdrawn") or e["closed"] != e["was_closed"]:
                changed.append(
                    (
                        e["id"],
                        e["status"],
                        bool(e.get("attended")),
                        bool(e.get("assessed")),
                        bool(e.get("withdrawn")),
                        e["withdraw_reason"],
                        e["closed"],
                    )
                )
        if state.session != dict(state.original):
            sessions.append(state.session)
        events += state.events
    try:
        await store.insert_final_enrolments(conn, new)
        await store.update_enrolments(conn, changed)
        await store.update_sessions(conn, sessions)
    except asyncpg.UniqueViolationError:  # not reachable under the session locks; the index is the backstop
        raise Conflict(
            "a member is already enrolled", kind="already-enrolled", title="Member is already enrolled in this session"
        ) from None
    except asyncpg.CheckViolationError:  # idem: the capacity CHECK
        raise Conflict("no place left", kind="session-full", title="Session is full") from None
    if events:
        update = {"batch_id": str(batch_id)} if batch_id else None
        await outbox.add_encoded(conn, outbox.encode_many(events, trace_id=trace_id_var.get(), update=update))
