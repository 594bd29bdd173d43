"""Training's answers: a pydantic model per resource (the OpenAPI's response schemas) and the
function that builds it from a stored row. Routes return these; writes dump them into ``write``."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field

from services.training import domain
from services.training.usecases import Completed, Enrolled, Recorded, Registered, SessionCertificates
from shared import regions
from shared.errors import DomainError, status_of
from shared.events.training import (
    CompetitionKind,
    OrganiserKind,
    ProviderKind,
    StudioKind,
    StudioLevel,
    SubsidyCategory,
    Tier,
)
from shared.problems import Problem


def problem_body(exc: DomainError) -> dict[str, Any]:
    """A refused item of a bulk command, shaped like the problem the single command would answer."""
    return Problem(status_of(exc), exc.kind, exc.title, exc.detail, **exc.extra).body()


def dump(model: BaseModel, **kw: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", **kw)


# ============================================================================ reference and members
class Industry(BaseModel):
    code: str
    name: str
    name_en: str


def industries() -> list[Industry]:
    return [Industry(code=code, name=zh, name_en=en) for code, (zh, en) in domain.KEY_INDUSTRIES.items()]


class Member(BaseModel):
    """Training's read-model view of a member (from membership's events)."""

    id: uuid.UUID
    branch_id: uuid.UUID
    region_code: str
    city_code: str | None
    employment_form: str
    occupation: str | None
    skill_level: int | None
    status: str
    joined_on: date | None
    ended_on: date | None


def member(r) -> Member:
    return Member(
        id=r["id"],
        branch_id=r["branch_id"],
        region_code=r["region_code"],
        city_code=r["city_code"],
        employment_form=r["employment_form"],
        occupation=r["occupation"],
        skill_level=r["skill_level"],
        status=r["status"],
        joined_on=r["joined_on"],
        ended_on=r["ended_on"],
    )


# ============================================================================ programmes
class Programme(BaseModel):
    id: uuid.UUID
    name: str
    occupation: str
    target_level: int
    target_level_name: str
    provider_kind: ProviderKind
    provider_name: str
    subsidy_category: SubsidyCategory
    sessions: int
    created_at: datetime


def programme(r) -> Programme:
    return Programme(
        id=r["id"],
        name=r["name"],
        occupation=r["occupation"],
        target_level=r["target_level"],
        target_level_name=domain.SKILL_LEVEL_NAMES[r["target_level"]],
        provider_kind=r["provider_kind"],
        provider_name=r["provider_name"],
        subsidy_category=r["subsidy_category"],
        sessions=r["sessions_count"],
        created_at=r["created_at"],
    )


# ============================================================================ sessions
class Organiser(BaseModel):
    id: str
    kind: OrganiserKind
    name: str | None


class SessionResults(BaseModel):
    person_times: int
    passed: int
    failed: int
    eligible_persons: int
    absent: int | None = None  # in the answer to the completion only
    eligible_member_ids: list[uuid.UUID] | None = None  # idem


class Session(BaseModel):
    id: uuid.UUID
    programme_id: uuid.UUID
    number: int
    organiser: Organiser
    region_code: str
    city_code: str | None
    subsidy_category: SubsidyCategory
    starts_on: date
    ends_on: date
    capacity: int
    enrolled: int
    places_left: int
    status: str
    started_on: date | None
    completed_on: date | None
    cancelled_on: date | None
    cancel_reason: str | None
    results: SessionResults | None = None  # once completed


def session(r) -> Session:
    results = (
        SessionResults(
            person_times=r["person_times"],
            passed=r["passed"],
            failed=r["failed"],
            eligible_persons=r["eligible_persons"],
        )
        if r["status"] == "completed"
        else None
    )
    return Session(
        id=r["id"],
        programme_id=r["programme_id"],
        number=r["number"],
        organiser=Organiser(id=r["organiser_id"], kind=r["organiser_kind"], name=r["organiser_name"]),
        region_code=r["region_code"],
        city_code=r["city_code"],
        subsidy_category=r["subsidy_category"],
        starts_on=r["starts_on"],
        ends_on=r["ends_on"],
        capacity=r["capacity"],
        enrolled=r["enrolled"],
        places_left=r["capacity"] - r["enrolled"],
        status=r["status"],
        started_on=r["started_on"],
        completed_on=r["completed_on"],
        cancelled_on=r["cancelled_on"],
        cancel_reason=r["cancel_reason"],
        results=results,
    )


def completed(done: Completed) -> Session:
    view = session(done.session)
    e = done.completion.event
    assert view.results is not None  # a completed session has results
    view.results.absent = len(done.completion.absent)
    view.results.eligible_member_ids = list(e.eligible_member_ids)
    return view


# ============================================================================ enrolments
class Enrolment(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    member_id: uuid.UUID
    branch_id: uuid.UUID | None
    status: str
    closed: bool
    withdraw_reason: str | None
    enrolled_at: datetime
    attended_at: datetime | None
    assessed_at: datetime | None
    withdrawn_at: datetime | None


def enrolment(r) -> Enrolment:
    return Enrolment(
        id=r["id"],
        session_id=r["session_id"],
        member_id=r["member_id"],
        branch_id=r["branch_id"],
        status=r["status"],
        closed=r["closed"],
        withdraw_reason=r["withdraw_reason"],
        enrolled_at=r["enrolled_at"],
        attended_at=r["attended_at"],
        assessed_at=r["assessed_at"],
        withdrawn_at=r["withdrawn_at"],
    )


class ItemOutcome(BaseModel):
    """One member's outcome in a bulk command: what was done (with the enrolment id), or refused with a problem."""

    member_id: uuid.UUID
    outcome: str
    enrolment_id: uuid.UUID | None = None
    problem: dict[str, Any] | None = None


def outcome(o: domain.Outcome, done: str) -> ItemOutcome:
    if o.problem is None:
        return ItemOutcome(member_id=o.member_id, outcome=done, enrolment_id=o.enrolment_id)
    return ItemOutcome(member_id=o.member_id, outcome="refused", problem=problem_body(o.problem))


class BulkEnrolled(BaseModel):
    session_id: uuid.UUID
    requested: int
    enrolled: int
    refused: int
    places_left: int
    results: list[ItemOutcome]


def bulk_enrolled(done: Enrolled) -> BulkEnrolled:
    n = len(done.outcomes)
    return BulkEnrolled(
        session_id=done.session["id"],
        requested=n,
        enrolled=done.accepted,
        refused=n - done.accepted,
        places_left=done.places_left,
        results=[outcome(o, "enrolled") for o in done.outcomes],
    )


class AttendanceRecorded(BaseModel):
    session_id: uuid.UUID
    requested: int
    attended: int
    refused: int
    results: list[ItemOutcome]


def attendance(session_id: uuid.UUID, done: Recorded) -> AttendanceRecorded:
    n = len(done.outcomes)
    return AttendanceRecorded(
        session_id=session_id,
        requested=n,
        attended=done.done,
        refused=n - done.done,
        results=[outcome(o, "attended") for o in done.outcomes],
    )


class ResultsRecorded(BaseModel):
    session_id: uuid.UUID
    requested: int
    recorded: int
    refused: int
    results: list[ItemOutcome]


def results(session_id: uuid.UUID, done: Recorded) -> ResultsRecorded:
    n = len(done.outcomes)
    return ResultsRecorded(
        session_id=session_id,
        requested=n,
        recorded=done.done,
        refused=n - done.done,
        results=[outcome(o, done.labels[o.member_id]) for o in done.outcomes],
    )


# ============================================================================ certificates
class Certificate(BaseModel):
    id: uuid.UUID
    serial: str
    member_id: uuid.UUID
    enrolment_id: uuid.UUID | None
    session_id: uuid.UUID | None
    programme_id: uuid.UUID | None
    programme_name: str | None
    occupation: str
    level: int
    level_name: str
    issuer: str
    region_code: str
    issued_on: date


def certificate(r) -> Certificate:
    return Certificate(
        id=r["id"],
        serial=r["serial"],
        member_id=r["member_id"],
        enrolment_id=r["enrolment_id"],
        session_id=r["session_id"],
        programme_id=r["programme_id"],
        programme_name=r["programme_name"],
        occupation=r["occupation"],
        level=r["level"],
        level_name=domain.SKILL_LEVEL_NAMES[r["level"]],
        issuer=r["issuer"],
        region_code=r["region_code"],
        issued_on=r["issued_on"],
    )


class PublicCertificate(BaseModel):
    """What anyone holding the serial sees: the certificate, nothing about the person."""

    serial: str
    valid: bool
    occupation: str
    level: int
    level_name: str
    programme_name: str | None
    issuer: str
    issued_on: date
    region_code: str
    region_name: str | None


def public_certificate(r) -> PublicCertificate:
    region = regions.get(r["region_code"])
    return PublicCertificate(
        serial=r["serial"],
        valid=True,
        occupation=r["occupation"],
        level=r["level"],
        level_name=domain.SKILL_LEVEL_NAMES[r["level"]],
        programme_name=r["programme_name"],
        issuer=r["issuer"],
        issued_on=r["issued_on"],
        region_code=r["region_code"],
        region_name=region.name if region else None,
    )


class IssuedCertificate(BaseModel):
    enrolment_id: uuid.UUID
    member_id: uuid.UUID
    serial: str


class SessionCertificatesIssued(BaseModel):
    session_id: uuid.UUID
    issued: int
    already_issued: int
    certificates: list[IssuedCertificate]


def session_certificates(session_id: uuid.UUID, done: SessionCertificates) -> SessionCertificatesIssued:
    return SessionCertificatesIssued(
        session_id=session_id,
        issued=len(done.issued),
        already_issued=done.already_issued,
        certificates=[
            IssuedCertificate(enrolment_id=e["id"], member_id=e["member_id"], serial=s) for e, s in done.issued
        ],
    )


# ============================================================================ competitions
class ParticipantCounts(BaseModel):
    named: int
    reported: int
    total: int


class WinnerView(BaseModel):
    member_id: uuid.UUID | None = None
    name: str
    rank: int
    award: str


class Competition(BaseModel):
    id: uuid.UUID
    name: str
    kind: CompetitionKind
    tier: Tier
    industry: str
    key_industry: bool
    industry_name: str
    region_code: str
    city_code: str | None
    starts_on: date
    ends_on: date
    status: str
    participants: ParticipantCounts
    held_on: date | None
    published_on: date | None
    winners: list[WinnerView] | None


def competition(r) -> Competition:
    raw = r["winners"]
    winners = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
    return Competition(
        id=r["id"],
        name=r["name"],
        kind=r["kind"],
        tier=r["tier"],
        industry=r["industry"],
        key_industry=r["key_industry"],
        industry_name=domain.KEY_INDUSTRIES[r["industry"]][0] if r["key_industry"] else r["industry"],
        region_code=r["region_code"],
        city_code=r["city_code"],
        starts_on=r["starts_on"],
        ends_on=r["ends_on"],
        status=r["status"],
        participants=ParticipantCounts(named=r["named"], reported=r["reported"], total=r["named"] + r["reported"]),
        held_on=r["held_on"],
        published_on=r["published_on"],
        winners=winners,
    )


class ParticipantsRegistered(BaseModel):
    competition: Competition
    named_added: int
    reported_added: int
    already_registered: list[uuid.UUID]


def registered(done: Registered) -> ParticipantsRegistered:
    return ParticipantsRegistered(
        competition=competition(done.competition),
        named_added=done.named_added,
        reported_added=done.reported_added,
        already_registered=done.already_registered,
    )


class NamedParticipant(BaseModel):
    member_id: uuid.UUID
    branch_id: uuid.UUID | None


def named_participant(r) -> NamedParticipant:
    return NamedParticipant(member_id=r["member_id"], branch_id=r["branch_id"])


class ReportedHeadcount(BaseModel):
    branch_id: uuid.UUID
    headcount: int
    reports: int


def reported_headcount(r) -> ReportedHeadcount:
    return ReportedHeadcount(branch_id=r["branch_id"], headcount=r["headcount"], reports=r["reports"])


# ============================================================================ studios
class Evaluation(BaseModel):
    rating: str
    evaluated_on: date
    notes: str | None


class Studio(BaseModel):
    id: uuid.UUID
    kind: StudioKind
    name: str
    host_enterprise: str
    lead_worker: str
    lead_member_id: uuid.UUID | None
    level: StudioLevel
    industry: str
    key_industry: bool
    region_code: str
    city_code: str | None
    status: str
    recognised_on: date
    last_rating: str | None
    last_evaluated_on: date | None
    revoked_on: date | None
    revoke_reason: str | None
    evaluations: list[Evaluation] | None = None  # on the single-studio read


def studio(r, evaluations=None) -> Studio:
    return Studio(
        id=r["id"],
        kind=r["kind"],
        name=r["name"],
        host_enterprise=r["host_enterprise"],
        lead_worker=r["lead_worker"],
        lead_member_id=r["lead_member_id"],
        level=r["level"],
        industry=r["industry"],
        key_industry=r["key_industry"],
        region_code=r["region_code"],
        city_code=r["city_code"],
        status=r["status"],
        recognised_on=r["recognised_on"],
        last_rating=r["last_rating"],
        last_evaluated_on=r["last_evaluated_on"],
        revoked_on=r["revoked_on"],
        revoke_reason=r["revoke_reason"],
        evaluations=None
        if evaluations is None
        else [Evaluation(rating=e["rating"], evaluated_on=e["evaluated_on"], notes=e["notes"]) for e in evaluations],
    )


# ============================================================================ summary
class Cell(BaseModel):
    sessions: int
    person_times: int
    persons: int


class RegionCategoryRow(Cell):
    region_code: str
    region_name: str | None
    subsidy_category: str


class RegionRow(Cell):
    region_code: str
    region_name: str | None


class CategoryRow(Cell):
    subsidy_category: str


class PersonTimes(BaseModel):
    """Person-times (enrolments that completed a session) and distinct persons, by region × category,
    by region, by category, and in total."""

    from_: date = Field(alias="from")
    to: date
    region_code: str
    by: str
    rows: list[RegionCategoryRow]
    by_region: list[RegionRow]
    by_category: list[CategoryRow]
    total: Cell


def person_times(rows, start: date, end: date, scope: str, by: str) -> dict[str, Any]:
    def cell(r) -> dict:
        return {"sessions": r["sessions"], "person_times": r["person_times"], "persons": r["persons"]}

    def name(code: str | None) -> str | None:
        region = regions.get(code) if code else None
        return region.name if region else None

    out: dict[str, Any] = {
        "from": start,
        "to": end,
        "region_code": scope,
        "by": by,
        "rows": [],
        "by_region": [],
        "by_category": [],
        "total": {"sessions": 0, "person_times": 0, "persons": 0},
    }
    for r in rows:
        code = r["region"] if r["region"] is not None else regions.REGION_ROOT
        if r["g_region"] == 0 and r["g_category"] == 0:
            out["rows"].append(
                {"region_code": code, "region_name": name(code), "subsidy_category": r["category"], **cell(r)}
            )
        elif r["g_region"] == 0:
            out["by_region"].append({"region_code": code, "region_name": name(code), **cell(r)})
        elif r["g_category"] == 0:
            out["by_category"].append({"subsidy_category": r["category"], **cell(r)})
        else:
            out["total"] = cell(r)
    return out
