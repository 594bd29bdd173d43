"""Training's HTTP routes: thin; rules live in domain.py, SQL in store.py.

Writes need ``training:write``, reads ``training:read``; a caller acts only on sessions,
competitions and studios inside its region scope. Certificate verification by serial and the
reference list of key industries are public.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from datetime import date
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request

from services.training import domain, store
from shared import outbox, regions
from shared.auth import Principal, require
from shared.events.training import CompetitionKind, OrganiserKind, ProviderKind, StudioKind, StudioLevel, SubsidyCategory, Tier
from shared.http import write
from shared.logging import trace_id_var
from shared.problems import Problem, invalid, not_found

router = APIRouter(prefix="/v1")
WRITE = require("training:write")
READ = require("training:read")


# ============================================================================ helpers
def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None


def _s(v: Any) -> str | None:
    return str(v) if v is not None else None


def encode_cursor(seq: int | None) -> str | None:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=") if seq is not None else None


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "seq":
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(400, "bad-cursor", "Cursor is not valid", "pass back the next_cursor of a previous page") from None


def page_body(rows: list, next_seq: int | None, view) -> dict:
    return {"items": [view(r) for r in rows], "next_cursor": encode_cursor(next_seq)}


def scope_codes(principal: Principal, requested: str | None) -> list[str]:
    """Region codes a list may show: the requested region (and what is under it) within the caller's scope."""
    if requested is not None:
        if regions.get(requested) is None:
            raise invalid("region_code", "not a Ningxia region code (GB/T 2260)")
        if principal.may_act_on(requested):
            return regions.descendants(requested)
        if regions.contains(requested, principal.region):
            return regions.descendants(principal.region)
        principal.ensure_region(requested)  # raises 403
    return regions.descendants(principal.region)


def _event_trace() -> str | None:
    return trace_id_var.get()


async def _emit(conn: asyncpg.Connection, *events) -> None:
    for e in events:
        await outbox.add(conn, e, trace_id=_event_trace())


async def _emit_many(conn: asyncpg.Connection, events: list) -> None:
    if events:
        await outbox.add_many(conn, events, trace_id=_event_trace())


Limit = Query(50, ge=1, le=500, description="page size")
Cursor = Query(None, description="next_cursor of the previous page")


# ============================================================================ views
def programme_view(r) -> dict:
    return {"id": str(r["id"]), "name": r["name"], "occupation": r["occupation"], "target_level": r["target_level"],
            "target_level_name": domain.SKILL_LEVEL_NAMES[r["target_level"]], "provider_kind": r["provider_kind"],
            "provider_name": r["provider_name"], "subsidy_category": r["subsidy_category"],
            "sessions": r["sessions_count"], "created_at": r["created_at"].isoformat()}


def session_view(r) -> dict:
    view = {
        "id": str(r["id"]), "programme_id": str(r["programme_id"]), "number": r["number"],
        "organiser": {"id": r["organiser_id"], "kind": r["organiser_kind"], "name": r["organiser_name"]},
        "region_code": r["region_code"], "city_code": r["city_code"], "subsidy_category": r["subsidy_category"],
        "starts_on": _iso(r["starts_on"]), "ends_on": _iso(r["ends_on"]), "capacity": r["capacity"],
        "enrolled": r["enrolled"], "places_left": r["capacity"] - r["enrolled"], "status": r["status"],
        "started_on": _iso(r["started_on"]), "completed_on": _iso(r["completed_on"]),
        "cancelled_on": _iso(r["cancelled_on"]), "cancel_reason": r["cancel_reason"],
    }
    if r["status"] == "completed":
        view["results"] = {"person_times": r["person_times"], "passed": r["passed"], "failed": r["failed"],
                           "eligible_persons": r["eligible_persons"]}
    return view


def enrolment_view(r) -> dict:
    return {"id": str(r["id"]), "session_id": str(r["session_id"]), "member_id": str(r["member_id"]),
            "branch_id": _s(r["branch_id"]), "status": r["status"], "closed": r["closed"],
            "withdraw_reason": r["withdraw_reason"], "enrolled_at": r["enrolled_at"].isoformat(),
            "attended_at": _s(r["attended_at"] and r["attended_at"].isoformat()),
            "assessed_at": _s(r["assessed_at"] and r["assessed_at"].isoformat()),
            "withdrawn_at": _s(r["withdrawn_at"] and r["withdrawn_at"].isoformat())}


def certificate_view(r) -> dict:
    return {"id": str(r["id"]), "serial": r["serial"], "member_id": str(r["member_id"]),
            "enrolment_id": _s(r["enrolment_id"]), "session_id": _s(r["session_id"]),
            "programme_id": _s(r["programme_id"]), "programme_name": r["programme_name"],
            "occupation": r["occupation"], "level": r["level"], "level_name": domain.SKILL_LEVEL_NAMES[r["level"]],
            "issuer": r["issuer"], "region_code": r["region_code"], "issued_on": _iso(r["issued_on"])}


def public_certificate_view(r) -> dict:
    """What anyone holding the serial sees: the certificate, nothing about the person."""
    region = regions.get(r["region_code"])
    return {"serial": r["serial"], "valid": True, "occupation": r["occupation"], "level": r["level"],
            "level_name": domain.SKILL_LEVEL_NAMES[r["level"]], "programme_name": r["programme_name"],
            "issuer": r["issuer"], "issued_on": _iso(r["issued_on"]), "region_code": r["region_code"],
            "region_name": region.name if region else None}


def competition_view(r) -> dict:
    return {"id": str(r["id"]), "name": r["name"], "kind": r["kind"], "tier": r["tier"], "industry": r["industry"],
            "key_industry": r["key_industry"],
            "industry_name": domain.KEY_INDUSTRIES[r["industry"]][0] if r["key_industry"] else r["industry"],
            "region_code": r["region_code"], "city_code": r["city_code"], "starts_on": _iso(r["starts_on"]),
            "ends_on": _iso(r["ends_on"]), "status": r["status"],
            "participants": {"named": r["named"], "reported": r["reported"], "total": r["named"] + r["reported"]},
            "held_on": _iso(r["held_on"]), "published_on": _iso(r["published_on"]),
            "winners": _winners(r["winners"])}


def _winners(raw) -> list | None:
    if raw is None:
        return None
    return orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw


def studio_view(r) -> dict:
    return {"id": str(r["id"]), "kind": r["kind"], "name": r["name"], "host_enterprise": r["host_enterprise"],
            "lead_worker": r["lead_worker"], "lead_member_id": _s(r["lead_member_id"]), "level": r["level"],
            "industry": r["industry"], "key_industry": r["key_industry"], "region_code": r["region_code"],
            "city_code": r["city_code"], "status": r["status"], "recognised_on": _iso(r["recognised_on"]),
            "last_rating": r["last_rating"], "last_evaluated_on": _iso(r["last_evaluated_on"]),
            "revoked_on": _iso(r["revoked_on"]), "revoke_reason": r["revoke_reason"]}


def member_view(r) -> dict:
    return {"id": str(r["id"]), "branch_id": str(r["branch_id"]), "region_code": r["region_code"],
            "city_code": r["city_code"], "employment_form": r["employment_form"], "occupation": r["occupation"],
            "skill_level": r["skill_level"], "status": r["status"], "joined_on": _iso(r["joined_on"]),
            "ended_on": _iso(r["ended_on"])}


# ============================================================================ reference and read model
@router.get("/reference/industries", tags=["reference"], summary="The nine key industries (九大重点产业)")
async def key_industries() -> list[dict]:
    return [{"code": code, "name": zh, "name_en": en} for code, (zh, en) in domain.KEY_INDUSTRIES.items()]


@router.get("/members/{member_id}", tags=["members"], summary="Training's view of a member (read model)")
async def get_member(member_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_member(request.app.state.db, member_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("member", member_id)
    return member_view(row)


# ============================================================================ programmes
@router.post("/programmes", status_code=201, tags=["programmes"], summary="Register a programme (培训项目)")
async def register_programme(body: domain.ProgrammeIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        event = domain.register_programme(body)
        await store.insert_programme(conn, event)
        await _emit(conn, event)
        return 201, programme_view(await store.get_programme(conn, event.programme_id))

    return await write(request, principal, "programmes.register", body.model_dump(mode="json"), run)


@router.get("/programmes", tags=["programmes"], summary="Programmes, filtered, cursor-paginated")
async def list_programmes(request: Request, principal: Principal = Depends(READ),
                          subsidy_category: SubsidyCategory | None = None, provider_kind: ProviderKind | None = None,
                          occupation: domain.Text | None = None, limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("subsidy_category = ?", subsidy_category and subsidy_category.value) \
        .add("provider_kind = ?", provider_kind and provider_kind.value).add("occupation = ?", occupation)
    rows, nxt = await store.page(request.app.state.db, "programmes", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, programme_view)


@router.get("/programmes/{programme_id}", tags=["programmes"], summary="One programme")
async def get_programme(programme_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_programme(request.app.state.db, programme_id)
    if row is None:
        raise not_found("programme", programme_id)
    return programme_view(row)


# ============================================================================ sessions
async def _locked_session(conn, session_id: uuid.UUID, principal: Principal):
    session = await store.get_session(conn, session_id, lock=True)
    if session is None:
        raise not_found("session", session_id)
    principal.ensure_visible(session["region_code"], "session", session_id)
    return session


@router.post("/sessions", status_code=201, tags=["sessions"], summary="Schedule a session (培训班)")
async def schedule_session(body: domain.SessionIn, request: Request, principal: Principal = Depends(WRITE)):
    if body.region_code:
        principal.ensure_region(body.region_code)

    async def run(conn):
        programme = await store.get_programme(conn, body.programme_id)
        if programme is None:
            raise Problem(422, "validation-error", "Request is not valid", "programme_id: no such programme",
                          errors=[{"field": "programme_id", "reason": "no such programme"}])
        branch = await store.get_branch(conn, uuid.UUID(body.organiser_id)) \
            if body.organiser_kind is OrganiserKind.branch else None
        organiser_name, region_code = domain.resolve_organiser(body, branch)
        if branch is not None:  # acting for a branch: its own region decides, whatever region_code says
            principal.ensure_region(branch["region_code"])
        principal.ensure_region(region_code)
        number = await store.next_session_number(conn, programme["id"])
        event = domain.schedule_session(body, programme, number, region_code)
        await store.insert_session(conn, event, organiser_name)
        await _emit(conn, event)
        return 201, session_view(await store.get_session(conn, event.session_id))

    return await write(request, principal, "sessions.schedule", body.model_dump(mode="json"), run)


@router.get("/sessions", tags=["sessions"], summary="Sessions, filtered, cursor-paginated")
async def list_sessions(request: Request, principal: Principal = Depends(READ),
                        programme_id: uuid.UUID | None = None, status: str | None = Query(
                            None, pattern="^(scheduled|in_progress|completed|cancelled)$"),
                        region_code: str | None = None, subsidy_category: SubsidyCategory | None = None,
                        organiser_id: domain.Text | None = None,
                        starts_from: date | None = Query(None, description="sessions starting on or after"),
                        starts_to: date | None = Query(None, description="sessions starting on or before"),
                        limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("region_code = ANY(?::text[])", scope_codes(principal, region_code)) \
        .add("programme_id = ?", programme_id).add("status = ?", status) \
        .add("subsidy_category = ?", subsidy_category and subsidy_category.value) \
        .add("organiser_id = ?", organiser_id).add("starts_on >= ?", starts_from).add("starts_on <= ?", starts_to)
    rows, nxt = await store.page(request.app.state.db, "sessions", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, session_view)


@router.get("/sessions/{session_id}", tags=["sessions"], summary="One session")
async def get_session(session_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_session(request.app.state.db, session_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("session", session_id)
    return session_view(row)


@router.post("/sessions/{session_id}/start", tags=["sessions"], summary="Start a session (开班)")
async def start_session(session_id: uuid.UUID, request: Request, body: domain.StartIn | None = None,
                        principal: Principal = Depends(WRITE)):
    body = body or domain.StartIn()

    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        event = domain.start_session(session, body.started_on or date.today())
        await store.set_started(conn, session_id, event.started_on)
        await _emit(conn, event)
        return 200, session_view(await store.get_session(conn, session_id))

    return await write(request, principal, "sessions.start", {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.post("/sessions/{session_id}/complete", tags=["sessions"], summary="Complete a session (结业)")
async def complete_session(session_id: uuid.UUID, request: Request, body: domain.CompleteIn | None = None,
                           principal: Principal = Depends(WRITE)):
    """Closes the enrolments and emits ``changai.training.session.completed.v1`` with the person-times
    and the subsidy-eligible members (active members who passed). Attendees must all have a result;
    enrolments that never attended are closed as withdrawn (absent)."""
    body = body or domain.CompleteIn()

    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        programme = await store.get_programme(conn, session["programme_id"])
        enrolments = await store.session_enrolments(conn, session_id)
        passed = [e["member_id"] for e in enrolments if e["status"] == "passed"]
        active = await store.active_members(conn, passed)
        done = domain.complete_session(session, programme, enrolments, active, body.completed_on or date.today())
        e = done.event
        await store.set_completed(conn, session_id, e.completed_on, e.person_times, e.passed, e.failed,
                                  e.eligible_persons, [w.enrolment_id for w in done.absent])
        await _emit_many(conn, done.absent)
        await _emit(conn, e)
        view = session_view(await store.get_session(conn, session_id))
        view["results"]["absent"] = len(done.absent)
        view["results"]["eligible_member_ids"] = [str(m) for m in e.eligible_member_ids]
        return 200, view

    return await write(request, principal, "sessions.complete",
                       {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.post("/sessions/{session_id}/cancel", tags=["sessions"], summary="Cancel a session")
async def cancel_session(session_id: uuid.UUID, body: domain.CancelIn, request: Request,
                         principal: Principal = Depends(WRITE)):
    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        live = list((await store.live_enrolments(conn, session_id)).values())
        event, withdrawn = domain.cancel_session(session, live, body.reason, body.cancelled_on or date.today())
        await store.set_cancelled(conn, session_id, event.cancelled_on, body.reason, [w.enrolment_id for w in withdrawn])
        await _emit_many(conn, withdrawn)
        await _emit(conn, event)
        return 200, session_view(await store.get_session(conn, session_id))

    return await write(request, principal, "sessions.cancel",
                       {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


# ============================================================================ enrolments
async def _enrol(conn, session, member_ids: list[uuid.UUID]) -> list[domain.Outcome]:
    members = await store.members_by_id(conn, member_ids)
    already = set(await store.live_enrolments(conn, session["id"], member_ids))
    outcomes = domain.decide_enrolments(session, member_ids, members, already)
    accepted = [o for o in outcomes if o.problem is None]
    try:
        await store.insert_enrolments(conn, session["id"],
                                      [(o.enrolment_id, o.member_id, members[o.member_id]["branch_id"]) for o in accepted])
    except asyncpg.UniqueViolationError:  # not reachable under the session lock; the index is the backstop
        raise Problem(409, "already-enrolled", "Member is already enrolled in this session") from None
    except asyncpg.CheckViolationError:  # idem: the capacity CHECK
        raise Problem(409, "session-full", "Session is full") from None
    await _emit_many(conn, domain.enrolled_events(session, accepted))
    return outcomes


@router.post("/sessions/{session_id}/enrolments", status_code=201, tags=["enrolments"],
             summary="Enrol one member (报名)")
async def enrol(session_id: uuid.UUID, body: domain.EnrolIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        [outcome] = await _enrol(conn, session, [body.member_id])
        if outcome.problem:
            raise outcome.problem
        return 201, enrolment_view(await store.get_enrolment(conn, outcome.enrolment_id))

    return await write(request, principal, "enrolments.enrol", {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.post("/sessions/{session_id}/enrolments/bulk", tags=["enrolments"],
             summary="Enrol many members; a result per member")
async def enrol_bulk(session_id: uuid.UUID, body: domain.BulkEnrolIn, request: Request,
                     principal: Principal = Depends(WRITE)):
    """Members get places in request order until the session is full; each item says ``enrolled``
    (with its enrolment id) or ``refused`` (with a problem: not-a-member, member-not-active,
    already-enrolled, session-full). A session that no longer takes enrolments refuses the whole call."""
    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        outcomes = await _enrol(conn, session, body.member_ids)
        ok = sum(o.problem is None for o in outcomes)
        return 200, {"session_id": str(session_id), "requested": len(outcomes), "enrolled": ok,
                     "refused": len(outcomes) - ok, "places_left": session["capacity"] - session["enrolled"] - ok,
                     "results": [o.view("enrolled") for o in outcomes]}

    return await write(request, principal, "enrolments.bulk", {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.get("/sessions/{session_id}/enrolments", tags=["enrolments"], summary="A session's enrolments")
async def session_enrolments(session_id: uuid.UUID, request: Request, principal: Principal = Depends(READ),
                             status: str | None = Query(None, pattern="^(enrolled|attended|passed|failed|withdrawn)$"),
                             limit: int = Limit, cursor: str | None = Cursor):
    session = await store.get_session(request.app.state.db, session_id)
    if session is None or not principal.may_act_on(session["region_code"]):
        raise not_found("session", session_id)
    f = store.Filter().add("session_id = ?", session_id).add("status = ?", status)
    rows, nxt = await store.page(request.app.state.db, "enrolments", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, enrolment_view)


@router.post("/sessions/{session_id}/attendance", tags=["enrolments"], summary="Record attendance; a result per member")
async def record_attendance(session_id: uuid.UUID, body: domain.AttendanceIn, request: Request,
                            principal: Principal = Depends(WRITE)):
    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        live = await store.live_enrolments(conn, session_id, body.member_ids)
        outcomes, events = domain.decide_attendance(session, body.member_ids, live)
        await store.mark_attended(conn, [e.enrolment_id for e in events])
        await _emit_many(conn, events)
        return 200, {"session_id": str(session_id), "requested": len(outcomes), "attended": len(events),
                     "refused": len(outcomes) - len(events), "results": [o.view("attended") for o in outcomes]}

    return await write(request, principal, "enrolments.attendance",
                       {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.post("/sessions/{session_id}/results", tags=["enrolments"], summary="Record results; a result per member")
async def record_results(session_id: uuid.UUID, body: domain.ResultsIn, request: Request,
                         principal: Principal = Depends(WRITE)):
    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        items = [(r.member_id, r.result) for r in body.results]
        live = await store.live_enrolments(conn, session_id, [m for m, _ in items])
        outcomes, events = domain.decide_results(session, items, live)
        await store.mark_assessed(conn, [(e.enrolment_id, e.result) for e in events])
        await _emit_many(conn, events)
        by_result = {o.member_id: r for o, (_, r) in zip(outcomes, items)}
        return 200, {"session_id": str(session_id), "requested": len(outcomes), "recorded": len(events),
                     "refused": len(outcomes) - len(events),
                     "results": [o.view(by_result[o.member_id]) for o in outcomes]}

    return await write(request, principal, "enrolments.results",
                       {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


async def _locked_enrolment(conn, enrolment_id: uuid.UUID, principal: Principal):
    enrolment = await store.get_enrolment(conn, enrolment_id)
    if enrolment is None:
        raise not_found("enrolment", enrolment_id)
    session = await store.get_session(conn, enrolment["session_id"], lock=True)
    principal.ensure_visible(session["region_code"], "enrolment", enrolment_id)
    return await store.get_enrolment(conn, enrolment_id), session  # re-read under the session lock


@router.get("/enrolments", tags=["enrolments"], summary="Enrolments, filtered, cursor-paginated")
async def list_enrolments(request: Request, principal: Principal = Depends(READ), member_id: uuid.UUID | None = None,
                          session_id: uuid.UUID | None = None,
                          status: str | None = Query(None, pattern="^(enrolled|attended|passed|failed|withdrawn)$"),
                          limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("session_id IN (SELECT id FROM sessions WHERE region_code = ANY(?::text[]))",
                           scope_codes(principal, None)) \
        .add("member_id = ?", member_id).add("session_id = ?", session_id).add("status = ?", status)
    rows, nxt = await store.page(request.app.state.db, "enrolments", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, enrolment_view)


@router.get("/enrolments/{enrolment_id}", tags=["enrolments"], summary="One enrolment")
async def get_enrolment(enrolment_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_enrolment(request.app.state.db, enrolment_id)
    session = row and await store.get_session(request.app.state.db, row["session_id"])
    if row is None or not principal.may_act_on(session["region_code"]):
        raise not_found("enrolment", enrolment_id)
    return enrolment_view(row)


@router.post("/enrolments/{enrolment_id}/attendance", tags=["enrolments"], summary="Record one attendance")
async def attend_one(enrolment_id: uuid.UUID, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        enrolment, session = await _locked_enrolment(conn, enrolment_id, principal)
        [outcome], events = domain.decide_attendance(session, [enrolment["member_id"]],
                                                     {enrolment["member_id"]: enrolment}
                                                     if enrolment["status"] != "withdrawn" else {})
        if outcome.problem:
            raise outcome.problem
        await store.mark_attended(conn, [enrolment_id])
        await _emit_many(conn, events)
        return 200, enrolment_view(await store.get_enrolment(conn, enrolment_id))

    return await write(request, principal, "enrolments.attend", {"enrolment_id": str(enrolment_id)}, run)


@router.post("/enrolments/{enrolment_id}/result", tags=["enrolments"], summary="Record one result (passed / failed)")
async def assess_one(enrolment_id: uuid.UUID, body: domain.ResultIn, request: Request,
                     principal: Principal = Depends(WRITE)):
    async def run(conn):
        enrolment, session = await _locked_enrolment(conn, enrolment_id, principal)
        live = {enrolment["member_id"]: enrolment} if enrolment["status"] != "withdrawn" else {}
        [outcome], events = domain.decide_results(session, [(enrolment["member_id"], body.result)], live)
        if outcome.problem:
            raise outcome.problem
        await store.mark_assessed(conn, [(enrolment_id, body.result)])
        await _emit_many(conn, events)
        return 200, enrolment_view(await store.get_enrolment(conn, enrolment_id))

    return await write(request, principal, "enrolments.assess",
                       {"enrolment_id": str(enrolment_id), **body.model_dump(mode="json")}, run)


@router.post("/enrolments/{enrolment_id}/withdrawal", tags=["enrolments"], summary="Withdraw an enrolment (退训)")
async def withdraw_one(enrolment_id: uuid.UUID, request: Request, body: domain.WithdrawIn | None = None,
                       principal: Principal = Depends(WRITE)):
    body = body or domain.WithdrawIn()

    async def run(conn):
        enrolment, session = await _locked_enrolment(conn, enrolment_id, principal)
        event = domain.withdraw(session, enrolment, body.reason)
        await store.mark_withdrawn(conn, enrolment, body.reason)
        await _emit(conn, event)
        return 200, enrolment_view(await store.get_enrolment(conn, enrolment_id))

    return await write(request, principal, "enrolments.withdraw",
                       {"enrolment_id": str(enrolment_id), **body.model_dump(mode="json")}, run)


# ============================================================================ certificates
async def _issue(conn, enrolment, session, programme, issuer: str | None, issued_on: date):
    event = domain.issue_certificate(enrolment, session, programme, issuer, issued_on)
    try:
        async with conn.transaction():  # savepoint: a (60-bit) serial collision is refused, not a 500
            await store.insert_certificate(conn, event, session["id"], programme["name"])
    except asyncpg.UniqueViolationError as exc:
        if "enrolment_id" in str(exc.constraint_name or ""):
            raise Problem(409, "certificate-exists", "Enrolment already has a certificate") from None
        raise Problem(409, "conflict", "Concurrent change; try again") from None
    await _emit(conn, event)
    return event


@router.post("/certificates", status_code=201, tags=["certificates"],
             summary="Issue a certificate (职业技能等级证书) for a passed enrolment")
async def issue_certificate(body: domain.CertificateIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        enrolment, session = await _locked_enrolment(conn, body.enrolment_id, principal)
        existing = await store.certificate_for_enrolment(conn, body.enrolment_id)
        if existing:
            raise Problem(409, "certificate-exists", "Enrolment already has a certificate",
                          f"certificate {existing['serial']} was issued on {existing['issued_on']}",
                          serial=existing["serial"])
        programme = await store.get_programme(conn, session["programme_id"])
        event = await _issue(conn, enrolment, session, programme, body.issuer, body.issued_on or date.today())
        return 201, certificate_view(await store.certificate_by_serial(conn, event.serial))

    return await write(request, principal, "certificates.issue", body.model_dump(mode="json"), run)


@router.post("/sessions/{session_id}/certificates", tags=["certificates"],
             summary="Issue certificates to every passed enrolment of a session that has none")
async def issue_session_certificates(session_id: uuid.UUID, request: Request,
                                     body: domain.SessionCertificatesIn | None = None,
                                     principal: Principal = Depends(WRITE)):
    body = body or domain.SessionCertificatesIn()

    async def run(conn):
        session = await _locked_session(conn, session_id, principal)
        programme = await store.get_programme(conn, session["programme_id"])
        done = await store.certified_enrolments(conn, session_id)
        issued = []
        for e in await store.session_enrolments(conn, session_id):
            if e["status"] == "passed" and e["id"] not in done:
                event = await _issue(conn, e, session, programme, body.issuer, body.issued_on or date.today())
                issued.append({"enrolment_id": str(e["id"]), "member_id": str(e["member_id"]), "serial": event.serial})
        return 200, {"session_id": str(session_id), "issued": len(issued), "already_issued": len(done),
                     "certificates": issued}

    return await write(request, principal, "certificates.issue_session",
                       {"session_id": str(session_id), **body.model_dump(mode="json")}, run)


@router.get("/certificates", tags=["certificates"], summary="Certificates, filtered, cursor-paginated")
async def list_certificates(request: Request, principal: Principal = Depends(READ), member_id: uuid.UUID | None = None,
                            session_id: uuid.UUID | None = None, region_code: str | None = None,
                            limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("region_code = ANY(?::text[])", scope_codes(principal, region_code)) \
        .add("member_id = ?", member_id).add("session_id = ?", session_id)
    rows, nxt = await store.page(request.app.state.db, "certificates", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, certificate_view)


@router.get("/certificates/{serial}", tags=["certificates"],
            summary="Verify a certificate by its serial (public; no personal data)")
async def verify_certificate(serial: str, request: Request):
    serial = serial.strip().upper()
    row = await store.certificate_by_serial(request.app.state.db, serial) if domain.SERIAL.fullmatch(serial) else None
    if row is None:
        raise Problem(404, "not-found", "No certificate with this serial",
                      "check the serial as printed on the certificate")
    return public_certificate_view(row)


# ============================================================================ competitions
async def _locked_competition(conn, competition_id: uuid.UUID, principal: Principal):
    c = await store.get_competition(conn, competition_id, lock=True)
    if c is None:
        raise not_found("competition", competition_id)
    principal.ensure_visible(c["region_code"], "competition", competition_id)
    return c


@router.post("/competitions", status_code=201, tags=["competitions"],
             summary="Announce a labour (劳动竞赛) or skills (职业技能大赛) competition")
async def announce_competition(body: domain.CompetitionIn, request: Request, principal: Principal = Depends(WRITE)):
    principal.ensure_region(body.region_code)

    async def run(conn):
        event = domain.announce_competition(body)
        await store.insert_competition(conn, event, domain.normalise_industry(body.industry)[1])
        await _emit(conn, event)
        return 201, competition_view(await store.get_competition(conn, event.competition_id))

    return await write(request, principal, "competitions.announce", body.model_dump(mode="json"), run)


@router.get("/competitions", tags=["competitions"], summary="Competitions, filtered, cursor-paginated")
async def list_competitions(request: Request, principal: Principal = Depends(READ), kind: CompetitionKind | None = None,
                            tier: Tier | None = None, industry: domain.Text | None = None,
                            status: str | None = Query(None, pattern="^(announced|held|results_published)$"),
                            region_code: str | None = None, year: int | None = Query(None, ge=2000, le=2100),
                            limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("region_code = ANY(?::text[])", scope_codes(principal, region_code)) \
        .add("kind = ?", kind and kind.value).add("tier = ?", tier and tier.value) \
        .add("industry = ?", industry and domain.normalise_industry(industry)[0]).add("status = ?", status) \
        .add("extract(year FROM starts_on) = ?", year)
    rows, nxt = await store.page(request.app.state.db, "competitions", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, competition_view)


@router.get("/competitions/{competition_id}", tags=["competitions"], summary="One competition")
async def get_competition(competition_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_competition(request.app.state.db, competition_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("competition", competition_id)
    return competition_view(row)


@router.post("/competitions/{competition_id}/participants", tags=["competitions"],
             summary="Register participants: named members and/or a branch's reported headcount")
async def register_participants(competition_id: uuid.UUID, body: domain.ParticipantsIn, request: Request,
                                principal: Principal = Depends(WRITE)):
    async def run(conn):
        c = await _locked_competition(conn, competition_id, principal)
        members = await store.members_by_id(conn, body.member_ids)
        branch = await store.get_branch(conn, body.branch_id) if body.branch_id else None
        if branch is not None:
            principal.ensure_region(branch["region_code"])
        registered = await store.registered_members(conn, competition_id)
        new, again, event = domain.register_participants(c, body, members, registered, branch)
        if event is not None:
            await store.add_participants(conn, event, members, body.headcount or 0)
            await _emit(conn, event)
        view = competition_view(await store.get_competition(conn, competition_id))
        return 200, {"competition": view, "named_added": len(new), "reported_added": body.headcount or 0,
                     "already_registered": [str(m) for m in again]}

    return await write(request, principal, "competitions.participants",
                       {"competition_id": str(competition_id), **body.model_dump(mode="json")}, run)


@router.get("/competitions/{competition_id}/participants", tags=["competitions"],
            summary="Named participants and reported headcounts per branch")
async def list_participants(competition_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    c = await store.get_competition(request.app.state.db, competition_id)
    if c is None or not principal.may_act_on(c["region_code"]):
        raise not_found("competition", competition_id)
    named, counts = await store.participants(request.app.state.db, competition_id)
    return {"competition_id": str(competition_id), "named": [{"member_id": str(r["member_id"]),
                                                              "branch_id": _s(r["branch_id"])} for r in named],
            "reported": [{"branch_id": str(r["branch_id"]), "headcount": r["headcount"], "reports": r["reports"]}
                         for r in counts],
            "total": c["named"] + c["reported"]}


@router.post("/competitions/{competition_id}/held", tags=["competitions"], summary="Mark a competition held")
async def hold_competition(competition_id: uuid.UUID, body: domain.HeldIn, request: Request,
                           principal: Principal = Depends(WRITE)):
    async def run(conn):
        c = await _locked_competition(conn, competition_id, principal)
        event = domain.hold_competition(c, body.held_on)
        await store.set_held(conn, competition_id, body.held_on)
        await _emit(conn, event)
        return 200, competition_view(await store.get_competition(conn, competition_id))

    return await write(request, principal, "competitions.held",
                       {"competition_id": str(competition_id), **body.model_dump(mode="json")}, run)


@router.post("/competitions/{competition_id}/results", tags=["competitions"], summary="Publish results with winners")
async def publish_results(competition_id: uuid.UUID, body: domain.CompetitionResultsIn, request: Request,
                          principal: Principal = Depends(WRITE)):
    async def run(conn):
        c = await _locked_competition(conn, competition_id, principal)
        event = domain.publish_results(c, body, await store.registered_members(conn, competition_id))
        await store.set_results(conn, event)
        await _emit(conn, event)
        return 200, competition_view(await store.get_competition(conn, competition_id))

    return await write(request, principal, "competitions.results",
                       {"competition_id": str(competition_id), **body.model_dump(mode="json")}, run)


# ============================================================================ studios and training bases
async def _locked_studio(conn, studio_id: uuid.UUID, principal: Principal):
    s = await store.get_studio(conn, studio_id, lock=True)
    if s is None:
        raise not_found("studio", studio_id)
    principal.ensure_visible(s["region_code"], "studio", studio_id)
    return s


@router.post("/studios", status_code=201, tags=["studios"],
             summary="Recognise an innovation studio, training base or skill-master studio")
async def recognise_studio(body: domain.StudioIn, request: Request, principal: Principal = Depends(WRITE)):
    principal.ensure_region(body.region_code)

    async def run(conn):
        lead = await store.get_member(conn, body.lead_member_id) if body.lead_member_id else None
        if lead is not None:
            principal.ensure_region(lead["region_code"])
        event = domain.recognise_studio(body, lead)
        await store.insert_studio(conn, event, domain.normalise_industry(body.industry)[1])
        await _emit(conn, event)
        return 201, studio_view(await store.get_studio(conn, event.studio_id))

    return await write(request, principal, "studios.recognise", body.model_dump(mode="json"), run)


@router.get("/studios", tags=["studios"], summary="Studios and training bases, filtered, cursor-paginated")
async def list_studios(request: Request, principal: Principal = Depends(READ), kind: StudioKind | None = None,
                       level: StudioLevel | None = None, industry: domain.Text | None = None,
                       status: str | None = Query(None, pattern="^(recognised|revoked)$"),
                       region_code: str | None = None, limit: int = Limit, cursor: str | None = Cursor):
    f = store.Filter().add("region_code = ANY(?::text[])", scope_codes(principal, region_code)) \
        .add("kind = ?", kind and kind.value).add("level = ?", level and level.value) \
        .add("industry = ?", industry and domain.normalise_industry(industry)[0]).add("status = ?", status)
    rows, nxt = await store.page(request.app.state.db, "studios", f, decode_cursor(cursor), limit)
    return page_body(rows, nxt, studio_view)


@router.get("/studios/{studio_id}", tags=["studios"], summary="One studio, with its evaluations")
async def get_studio(studio_id: uuid.UUID, request: Request, principal: Principal = Depends(READ)):
    row = await store.get_studio(request.app.state.db, studio_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("studio", studio_id)
    view = studio_view(row)
    view["evaluations"] = [{"rating": e["rating"], "evaluated_on": _iso(e["evaluated_on"]), "notes": e["notes"]}
                           for e in await store.evaluations(request.app.state.db, studio_id)]
    return view


@router.post("/studios/{studio_id}/evaluations", tags=["studios"], summary="Record an evaluation (考核评估)")
async def evaluate_studio(studio_id: uuid.UUID, body: domain.EvaluationIn, request: Request,
                          principal: Principal = Depends(WRITE)):
    async def run(conn):
        s = await _locked_studio(conn, studio_id, principal)
        event = domain.evaluate_studio(s, body)
        await store.add_evaluation(conn, event, body.notes)
        await _emit(conn, event)
        return 200, studio_view(await store.get_studio(conn, studio_id))

    return await write(request, principal, "studios.evaluate",
                       {"studio_id": str(studio_id), **body.model_dump(mode="json")}, run)


@router.post("/studios/{studio_id}/revocation", tags=["studios"], summary="Revoke a studio's recognition")
async def revoke_studio(studio_id: uuid.UUID, body: domain.RevokeIn, request: Request,
                        principal: Principal = Depends(WRITE)):
    async def run(conn):
        s = await _locked_studio(conn, studio_id, principal)
        event = domain.revoke_studio(s, body)
        await store.set_revoked(conn, event)
        await _emit(conn, event)
        return 200, studio_view(await store.get_studio(conn, studio_id))

    return await write(request, principal, "studios.revoke",
                       {"studio_id": str(studio_id), **body.model_dump(mode="json")}, run)


# ============================================================================ summary
@router.get("/summary/person-times", tags=["summary"],
            summary="Person-times and distinct persons by region and subsidy category for a period")
async def person_times_summary(request: Request, principal: Principal = Depends(READ),
                               start: date = Query(..., alias="from", description="first completion date"),
                               end: date = Query(..., alias="to", description="last completion date"),
                               region_code: str | None = None,
                               by: str = Query("city", pattern="^(city|county)$",
                                               description="group by city or by county")):
    """Counts the sessions completed in the period: person-times are enrolments that completed them
    (passed or failed); persons are distinct members, so one worker trained twice is 2 person-times, 1 person."""
    if end < start:
        raise invalid("to", "before from")
    codes = scope_codes(principal, region_code)
    rows = await store.person_times(request.app.state.db, start, end, codes, by)
    scope = region_code or principal.region

    def cell(r) -> dict:
        return {"sessions": r["sessions"], "person_times": r["person_times"], "persons": r["persons"]}

    def name(code: str | None) -> str | None:
        region = regions.get(code) if code else None
        return region.name if region else None

    out: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat(), "region_code": scope, "by": by,
                           "rows": [], "by_region": [], "by_category": [],
                           "total": {"sessions": 0, "person_times": 0, "persons": 0}}
    for r in rows:
        code = r["region"] if r["region"] is not None else "640000"
        if r["g_region"] == 0 and r["g_category"] == 0:
            out["rows"].append({"region_code": code, "region_name": name(code),
                                "subsidy_category": r["category"], **cell(r)})
        elif r["g_region"] == 0:
            out["by_region"].append({"region_code": code, "region_name": name(code), **cell(r)})
        elif r["g_category"] == 0:
            out["by_category"].append({"subsidy_category": r["category"], **cell(r)})
        else:
            out["total"] = cell(r)
    return out
