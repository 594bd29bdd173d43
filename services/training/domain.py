"""Training rules: what valid input is, which transitions are allowed, and the event each change
produces. No I/O: the use cases (``usecases.py``) load rows, call these functions, and store what
they return. Refusals are ``shared.errors`` exceptions (``refuse`` gives each its stable kind).

Lifecycles (every transition is one event):

* session:    scheduled → in_progress → completed | cancelled   (cancel also from scheduled)
* enrolment:  enrolled → attended → passed | failed;  enrolled | attended → withdrawn
* competition: announced → held → results_published
* studio:     recognised → (evaluated)* → revoked
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import regions
from shared.clock import today_cn
from shared.errors import Conflict, DomainError, Invalid, NotFound, RuleBroken
from shared.events.training import (
    CertificateIssued,
    CompetitionAnnounced,
    CompetitionHeld,
    CompetitionKind,
    CompetitionParticipantsRegistered,
    CompetitionResultsPublished,
    EnrolmentAssessed,
    EnrolmentAttended,
    EnrolmentEnrolled,
    EnrolmentWithdrawn,
    OrganiserKind,
    ProgrammeRegistered,
    ProviderKind,
    SessionCancelled,
    SessionCompleted,
    SessionScheduled,
    SessionStarted,
    StudioEvaluated,
    StudioKind,
    StudioLevel,
    StudioRecognised,
    StudioRevoked,
    SubsidyCategory,
    Tier,
    Winner,
)
from shared.identifiers import InvalidIdentifier, validate_credit_code

BULK_MAX = 5000
E = TypeVar("E", bound=DomainError)

# The nine key industries of the region (九大重点产业), docs/domain.md.
KEY_INDUSTRIES: dict[str, tuple[str, str]] = {
    "goji": ("枸杞", "goji"),
    "wine": ("葡萄酒", "wine"),
    "dairy": ("奶产业", "dairy"),
    "beef_cattle_tan_sheep": ("肉牛和滩羊", "beef cattle and Tan sheep"),
    "electronic_information": ("电子信息", "electronic information"),
    "new_materials": ("新型材料", "new materials"),
    "green_food": ("绿色食品", "green food"),
    "clean_energy": ("清洁能源", "clean energy"),
    "cultural_tourism": ("文化旅游", "cultural tourism"),
}
_INDUSTRY_ALIASES = {
    **{k: k for k in KEY_INDUSTRIES},
    **{zh: k for k, (zh, _) in KEY_INDUSTRIES.items()},
    **{en.lower(): k for k, (_, en) in KEY_INDUSTRIES.items()},
}

SKILL_LEVEL_NAMES = {5: "初级工", 4: "中级工", 3: "高级工", 2: "技师", 1: "高级技师"}
RANK_MAX = 100_000  # a winner's rank: bounded so it fits every integer column and encoder on the way


def _no_nul(v: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here as a 422 instead of failing in the database.
    if "\x00" in v:
        raise ValueError("must not contain a NUL character")
    return v


# Every free-text input (bodies and query filters): a str without NUL.
Text = Annotated[str, AfterValidator(_no_nul)]


def normalise_industry(value: str) -> tuple[str, bool]:
    """(industry, is one of the nine key industries). A key industry is stored by its code."""
    v = value.strip()
    code = _INDUSTRY_ALIASES.get(v) or _INDUSTRY_ALIASES.get(v.lower())
    return (code, True) if code else (v, False)


def _known_region(v: str | None, *, allow_root: bool = True) -> str | None:
    if v is None:
        return v
    region = regions.get(v)
    if region is None or (not allow_root and region.level == "region"):
        raise ValueError(
            "must be the code of Ningxia, one of its cities or counties (GB/T 2260)"
            if allow_root
            else "must be the code of a Ningxia city or county (GB/T 2260)"
        )
    return v


def no_future_date(v: date | None, today: date | None = None) -> date | None:
    if v is not None and v > (today or today_cn()):
        raise ValueError("cannot be in the future")
    return v


def refuse(cls: type[E], kind: str, title: str, detail: str | None = None, **extra: Any) -> E:
    """A domain refusal with its stable kind (the problem ``type``) and title."""
    return cls(detail, kind=kind, title=title, **extra)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ============================================================================ programmes
class ProgrammeIn(_In):
    """A training programme (培训项目)."""

    name: Text = Field(min_length=2, max_length=200)
    occupation: Text = Field(min_length=1, max_length=100, description="职业（工种）")
    target_level: int = Field(ge=1, le=5, description="1 高级技师 … 5 初级工")
    provider_kind: ProviderKind
    provider_name: Text = Field(min_length=2, max_length=200)
    subsidy_category: SubsidyCategory


def register_programme(cmd: ProgrammeIn, programme_id: uuid.UUID | None = None) -> ProgrammeRegistered:
    return ProgrammeRegistered(programme_id=programme_id or uuid.uuid4(), **cmd.model_dump())


# ============================================================================ sessions
class SessionIn(_In):
    """A session (培训班, one 期 of a programme)."""

    programme_id: uuid.UUID
    organiser_kind: OrganiserKind
    organiser_id: Text = Field(description="the organising branch's id, or the enterprise's unified social credit code")
    organiser_name: Text | None = Field(
        default=None, max_length=200, description="required for an enterprise; a branch's name comes from membership"
    )
    region_code: Text | None = Field(default=None, description="defaults to the organising branch's region")
    starts_on: date
    ends_on: date
    capacity: int = Field(ge=1, le=10000)

    @field_validator("region_code")
    @classmethod
    def _region(cls, v):
        return _known_region(v)

    @model_validator(mode="after")
    def _check(self) -> SessionIn:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on is before starts_on")
        if self.organiser_kind is OrganiserKind.branch:
            try:
                self.organiser_id = str(uuid.UUID(self.organiser_id))
            except ValueError:
                raise ValueError("organiser_id of a branch must be the branch's id (UUID)") from None
        else:
            try:
                self.organiser_id = validate_credit_code(self.organiser_id)
            except InvalidIdentifier as exc:
                raise ValueError(
                    f"organiser_id of an enterprise must be its unified social credit code: {exc}"
                ) from None
            if not self.organiser_name:
                raise ValueError("organiser_name is required for an enterprise organiser")
            if not self.region_code:
                raise ValueError("region_code is required for an enterprise organiser")
        return self


def resolve_organiser(cmd: SessionIn, branch: Mapping | None) -> tuple[str | None, str]:
    """(organiser name, region code) of a new session; refuses an unknown or closed branch."""
    if cmd.organiser_kind is OrganiserKind.enterprise:
        return cmd.organiser_name, cmd.region_code  # type: ignore[return-value]
    if branch is None:
        raise refuse(
            RuleBroken,
            "unknown-organiser",
            "Organising branch is not known",
            f"branch {cmd.organiser_id} is not (yet) known to training; branches arrive from membership events",
            errors=[{"field": "organiser_id", "reason": "no such branch"}],
        )
    if branch["status"] != "active":
        raise refuse(
            Conflict,
            "organiser-inactive",
            "Organising branch is no longer active",
            f"branch {cmd.organiser_id} was {branch['status']}",
        )
    return cmd.organiser_name or branch["name"], cmd.region_code or branch["region_code"]


def schedule_session(
    cmd: SessionIn, programme: Mapping, number: int, region_code: str, session_id: uuid.UUID | None = None
) -> SessionScheduled:
    return SessionScheduled(
        session_id=session_id or uuid.uuid4(),
        programme_id=programme["id"],
        number=number,
        organiser_id=cmd.organiser_id,
        organiser_kind=cmd.organiser_kind,
        region_code=region_code,
        city_code=regions.city_of(region_code),
        subsidy_category=programme["subsidy_category"],
        starts_on=cmd.starts_on,
        ends_on=cmd.ends_on,
        capacity=cmd.capacity,
    )


class StartIn(_In):
    started_on: date | None = Field(default=None, description="defaults to today")

    @field_validator("started_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class CompleteIn(_In):
    completed_on: date | None = Field(default=None, description="结业 date; defaults to today")

    @field_validator("completed_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class CancelIn(_In):
    reason: Text | None = Field(default=None, max_length=500)
    cancelled_on: date | None = None

    @field_validator("cancelled_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


def _session_state_problem(session: Mapping, doing: str) -> Conflict:
    status = session["status"]
    kind = {
        "completed": "session-completed",
        "cancelled": "session-cancelled",
        "scheduled": "session-not-started",
        "in_progress": "session-in-progress",
    }[status]
    title = {
        "completed": "Session is already completed",
        "cancelled": "Session was cancelled",
        "scheduled": "Session has not started",
        "in_progress": "Session is in progress",
    }[status]
    return Conflict(
        f"cannot {doing}: session {session['id']} is {status}", kind=kind, title=title, session_status=status
    )


def session_closed(session: Mapping, doing: str) -> Conflict:
    """The refusal of ``doing`` something to a session in its current state."""
    return _session_state_problem(session, doing)


def _region_fields(session: Mapping) -> dict:
    return {
        "region_code": session["region_code"],
        "city_code": session["city_code"],
        "subsidy_category": session["subsidy_category"],
    }


def start_session(session: Mapping, started_on: date) -> SessionStarted:
    if session["status"] != "scheduled":
        raise _session_state_problem(session, "start it")
    if started_on < session["starts_on"]:
        raise Invalid("started_on", f"before the scheduled start {session['starts_on']}")
    return SessionStarted(session_id=session["id"], started_on=started_on, **_region_fields(session))


def cancel_session(
    session: Mapping, live: list[Mapping], reason: str | None, cancelled_on: date
) -> tuple[SessionCancelled, list[EnrolmentWithdrawn]]:
    if session["status"] not in ("scheduled", "in_progress"):
        raise _session_state_problem(session, "cancel it")
    withdrawn = [
        EnrolmentWithdrawn(
            enrolment_id=e["id"],
            session_id=session["id"],
            member_id=e["member_id"],
            reason="session cancelled",
            **_region_fields(session),
        )
        for e in live
        if e["status"] in ("enrolled", "attended")
    ]
    return SessionCancelled(
        session_id=session["id"], reason=reason, cancelled_on=cancelled_on, **_region_fields(session)
    ), withdrawn


@dataclass(frozen=True)
class Completion:
    event: SessionCompleted
    absent: list[EnrolmentWithdrawn]  # enrolled but never attended: closed as withdrawn


def complete_session(
    session: Mapping,
    programme: Mapping,
    enrolments: Iterable[Mapping],
    active_member_ids: set[uuid.UUID],
    completed_on: date,
) -> Completion:
    """Close the session and its enrolments.

    Person-times are the enrolments that completed the session (passed or failed); the
    subsidy-eligible persons are the members who passed and are still active members.
    An attendee without a result blocks completion (record the result first); an enrolment
    that never attended is closed as withdrawn ("absent").
    """
    if session["status"] != "in_progress":
        raise _session_state_problem(session, "complete it")
    if session["started_on"] and completed_on < session["started_on"]:
        raise Invalid("completed_on", f"before the session started ({session['started_on']})")
    passed: list[Mapping] = []
    failed: list[Mapping] = []
    pending: list[Mapping] = []
    absent: list[Mapping] = []
    for e in enrolments:
        {"passed": passed, "failed": failed, "attended": pending, "enrolled": absent}.get(e["status"], []).append(e)
    if pending:
        raise refuse(
            Conflict,
            "results-pending",
            "Attendees without a result",
            f"{len(pending)} attendee(s) have no result yet; record passed or failed for each first",
            pending_member_ids=sorted(str(e["member_id"]) for e in pending)[:100],
            pending=len(pending),
        )
    eligible = sorted({e["member_id"] for e in passed if e["member_id"] in active_member_ids}, key=str)
    event = SessionCompleted(
        session_id=session["id"],
        programme_id=programme["id"],
        programme_name=programme["name"],
        number=session["number"],
        organiser_id=session["organiser_id"],
        organiser_kind=session["organiser_kind"],
        organiser_name=session["organiser_name"],
        person_times=len(passed) + len(failed),
        passed=len(passed),
        failed=len(failed),
        eligible_member_ids=eligible,
        eligible_persons=len(eligible),
        completed_on=completed_on,
        **_region_fields(session),
    )
    withdrawn = [
        EnrolmentWithdrawn(
            enrolment_id=e["id"],
            session_id=session["id"],
            member_id=e["member_id"],
            reason="absent",
            **_region_fields(session),
        )
        for e in absent
    ]
    return Completion(event, withdrawn)


# ============================================================================ enrolments
class EnrolIn(_In):
    member_id: uuid.UUID


class BulkEnrolIn(_In):
    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=BULK_MAX)


class AttendanceIn(_In):
    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=BULK_MAX)


class ResultItem(_In):
    member_id: uuid.UUID
    result: Text = Field(pattern=r"^(passed|failed)$")


class ResultsIn(_In):
    results: list[ResultItem] = Field(min_length=1, max_length=BULK_MAX)


class ResultIn(_In):
    result: Text = Field(pattern=r"^(passed|failed)$")


class WithdrawIn(_In):
    reason: Text | None = Field(default=None, max_length=500)


@dataclass
class Outcome:
    member_id: uuid.UUID
    enrolment_id: uuid.UUID | None = None
    problem: DomainError | None = None


def ensure_enrolments_open(session: Mapping, doing: str = "enrol") -> None:
    if session["status"] not in ("scheduled", "in_progress"):
        raise _session_state_problem(session, doing)


def decide_enrolments(
    session: Mapping,
    requested: list[uuid.UUID],
    members: Mapping[uuid.UUID, Mapping],
    already: set[uuid.UUID],
    hidden: AbstractSet[uuid.UUID] = frozenset(),
) -> list[Outcome]:
    """Who of ``requested`` gets a place, in request order, and why the others do not. ``hidden``: members
    outside the caller's scope, answered as not found (the caller may not learn they exist)."""
    ensure_enrolments_open(session)
    free = session["capacity"] - session["enrolled"]
    seen: set[uuid.UUID] = set()
    outcomes = []
    for mid in requested:
        member = members.get(mid)
        problem: DomainError | None
        if mid in seen:
            problem = duplicate_item(mid)
        elif mid in hidden:
            problem = NotFound("member", mid)
        elif mid in already:
            problem = refuse(
                Conflict,
                "already-enrolled",
                "Member is already enrolled in this session",
                f"member {mid} already holds a place in session {session['id']}",
            )
        elif member is None:
            problem = refuse(
                RuleBroken,
                "not-a-member",
                "Not a union member",
                f"{mid} is not (yet) known to training as a union member",
            )
        elif member["status"] != "active":
            ended = member["ended_on"].isoformat() if member["ended_on"] else "earlier"
            problem = refuse(
                Conflict,
                "member-not-active",
                "Member is no longer a union member",
                f"member {mid} {member['status']} on {ended}",
                member_status=member["status"],
            )
        elif free <= 0:
            problem = refuse(
                Conflict,
                "session-full",
                "Session is full",
                f"session {session['id']} has all {session['capacity']} places taken",
                capacity=session["capacity"],
            )
        else:
            problem = None
            free -= 1
        seen.add(mid)
        outcomes.append(Outcome(mid, uuid.uuid4() if problem is None else None, problem))
    return outcomes


def enrolled_events(session: Mapping, outcomes: Iterable[Outcome]) -> list[EnrolmentEnrolled]:
    return [
        EnrolmentEnrolled(
            enrolment_id=o.enrolment_id, session_id=session["id"], member_id=o.member_id, **_region_fields(session)
        )
        for o in outcomes
        if o.problem is None
    ]


def _enrolment_problem(
    enrolment: Mapping | None, member_id: uuid.UUID, session: Mapping, want: set[str], doing: str
) -> Conflict | None:
    if enrolment is None:
        return refuse(
            Conflict,
            "not-enrolled",
            "Member is not enrolled in this session",
            f"member {member_id} holds no place in session {session['id']}",
        )
    if enrolment["status"] not in want:
        return refuse(
            Conflict,
            "invalid-transition",
            f"Cannot {doing}",
            f"enrolment {enrolment['id']} is {enrolment['status']}; {doing} needs {' or '.join(sorted(want))}",
            enrolment_status=enrolment["status"],
        )
    return None


def duplicate_item(member_id: uuid.UUID) -> Conflict:
    return refuse(
        Conflict,
        "duplicate-item",
        "Member listed twice",
        f"member {member_id} appears more than once in this request; only the first is applied",
    )


def decide_attendance(
    session: Mapping, requested: list[uuid.UUID], live: Mapping[uuid.UUID, Mapping]
) -> tuple[list[Outcome], list[EnrolmentAttended]]:
    if session["status"] != "in_progress":
        raise _session_state_problem(session, "record attendance")
    outcomes, events, seen = [], [], set()
    for mid in requested:
        e = live.get(mid)
        problem = (
            duplicate_item(mid)
            if mid in seen
            else _enrolment_problem(e, mid, session, {"enrolled"}, "record attendance")
        )
        seen.add(mid)
        if problem is None and e is not None:
            events.append(
                EnrolmentAttended(
                    enrolment_id=e["id"], session_id=session["id"], member_id=mid, **_region_fields(session)
                )
            )
        outcomes.append(Outcome(mid, e["id"] if e else None, problem))
    return outcomes, events


def decide_results(
    session: Mapping, items: list[tuple[uuid.UUID, str]], live: Mapping[uuid.UUID, Mapping]
) -> tuple[list[Outcome], list[EnrolmentAssessed]]:
    if session["status"] != "in_progress":
        raise _session_state_problem(session, "record a result")
    outcomes, events, seen = [], [], set()
    for mid, result in items:
        e = live.get(mid)
        problem = (
            duplicate_item(mid) if mid in seen else _enrolment_problem(e, mid, session, {"attended"}, "record a result")
        )
        seen.add(mid)
        if problem is None and e is not None:
            events.append(
                EnrolmentAssessed(
                    enrolment_id=e["id"],
                    session_id=session["id"],
                    member_id=mid,
                    result=result,
                    **_region_fields(session),
                )
            )
        outcomes.append(Outcome(mid, e["id"] if e else None, problem))
    return outcomes, events


def withdraw(session: Mapping, enrolment: Mapping, reason: str | None) -> EnrolmentWithdrawn:
    ensure_enrolments_open(session, "withdraw")
    problem = _enrolment_problem(enrolment, enrolment["member_id"], session, {"enrolled", "attended"}, "withdraw")
    if problem:
        raise problem
    return EnrolmentWithdrawn(
        enrolment_id=enrolment["id"],
        session_id=session["id"],
        member_id=enrolment["member_id"],
        reason=reason,
        **_region_fields(session),
    )


# ============================================================================ certificates
_SERIAL_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/1/I/O: read aloud and typed by hand
SERIAL = re.compile(rf"^NX\d{{4}}-[{_SERIAL_ALPHABET}]{{4}}-[{_SERIAL_ALPHABET}]{{4}}-[{_SERIAL_ALPHABET}]{{4}}$")


def new_serial(year: int) -> str:
    """``NX2021-7K3M-Q9TZ-P4W2``: 60 random bits, so a serial cannot be guessed from another."""
    body = "".join(secrets.choice(_SERIAL_ALPHABET) for _ in range(12))
    return f"NX{year}-{body[:4]}-{body[4:8]}-{body[8:]}"


class CertificateIn(_In):
    enrolment_id: uuid.UUID
    issuer: Text | None = Field(default=None, max_length=200, description="defaults to the programme's provider")
    issued_on: date | None = None

    @field_validator("issued_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class SessionCertificatesIn(_In):
    issuer: Text | None = Field(default=None, max_length=200)
    issued_on: date | None = None

    @field_validator("issued_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


def issue_certificate(
    enrolment: Mapping,
    session: Mapping,
    programme: Mapping,
    issuer: str | None,
    issued_on: date,
    certificate_id: uuid.UUID | None = None,
) -> CertificateIssued:
    if enrolment["status"] != "passed":
        raise refuse(
            Conflict,
            "enrolment-not-passed",
            "Only a passed enrolment earns a certificate",
            f"enrolment {enrolment['id']} is {enrolment['status']}",
            enrolment_status=enrolment["status"],
        )
    return CertificateIssued(
        certificate_id=certificate_id or uuid.uuid4(),
        serial=new_serial(issued_on.year),
        member_id=enrolment["member_id"],
        enrolment_id=enrolment["id"],
        programme_id=programme["id"],
        occupation=programme["occupation"],
        level=programme["target_level"],
        issuer=issuer or programme["provider_name"],
        region_code=session["region_code"],
        city_code=session["city_code"],
        issued_on=issued_on,
    )


# ============================================================================ competitions
TIER_LEVELS = {
    Tier.region: {"region"},
    Tier.city: {"city"},
    Tier.county: {"county"},
    Tier.enterprise: {"city", "county"},
}


class CompetitionIn(_In):
    """A labour competition (劳动竞赛) or a vocational skills competition (职业技能大赛)."""

    name: Text = Field(min_length=2, max_length=200)
    kind: CompetitionKind
    tier: Tier
    industry: Text = Field(
        min_length=1,
        max_length=100,
        description="one of the nine key industries by code or Chinese name, or another industry",
    )
    region_code: str
    starts_on: date
    ends_on: date

    @model_validator(mode="after")
    def _check(self) -> CompetitionIn:
        region = regions.get(self.region_code)
        if region is None:
            raise ValueError("region_code must be a Ningxia code (GB/T 2260)")
        if region.level not in TIER_LEVELS[self.tier]:
            raise ValueError(
                f"a {self.tier.value}-tier competition needs a {' or '.join(sorted(TIER_LEVELS[self.tier]))}"
                f" code; {self.region_code} is a {region.level}"
            )
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on is before starts_on")
        return self


def announce_competition(cmd: CompetitionIn, competition_id: uuid.UUID | None = None) -> CompetitionAnnounced:
    industry, _ = normalise_industry(cmd.industry)
    return CompetitionAnnounced(
        competition_id=competition_id or uuid.uuid4(),
        name=cmd.name,
        kind=cmd.kind,
        tier=cmd.tier,
        industry=industry,
        region_code=cmd.region_code,
        city_code=regions.city_of(cmd.region_code),
        starts_on=cmd.starts_on,
        ends_on=cmd.ends_on,
    )


class ParticipantsIn(_In):
    """Named members, or a headcount a branch reported (enterprise-tier rounds report numbers), or both."""

    member_ids: list[uuid.UUID] = Field(default_factory=list, max_length=BULK_MAX)
    branch_id: uuid.UUID | None = Field(default=None, description="the reporting branch (with headcount)")
    headcount: int | None = Field(default=None, ge=1, le=1_000_000, description="unnamed participants reported")

    @model_validator(mode="after")
    def _check(self) -> ParticipantsIn:
        if (self.headcount is None) != (self.branch_id is None):
            raise ValueError("a reported headcount needs the reporting branch_id, and branch_id needs a headcount")
        if not self.member_ids and self.headcount is None:
            raise ValueError("give member_ids, or branch_id with headcount")
        return self


class HeldIn(_In):
    held_on: date

    @field_validator("held_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class WinnerIn(_In):
    member_id: uuid.UUID | None = None
    name: Text = Field(min_length=1, max_length=100)
    rank: int = Field(ge=1, le=RANK_MAX)
    award: Text = Field(min_length=1, max_length=100)


class CompetitionResultsIn(_In):
    winners: list[WinnerIn] = Field(min_length=1, max_length=1000)
    published_on: date

    @field_validator("published_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


def _competition_state(c: Mapping, want: str, doing: str) -> None:
    if c["status"] != want:
        raise refuse(
            Conflict,
            "invalid-transition",
            f"Cannot {doing}",
            f"competition {c['id']} is {c['status']}; {doing} needs {want}",
            competition_status=c["status"],
        )


def _competition_fields(c: Mapping) -> dict:
    return {
        "competition_id": c["id"],
        "kind": c["kind"],
        "tier": c["tier"],
        "region_code": c["region_code"],
        "city_code": c["city_code"],
    }


def register_participants(
    c: Mapping,
    cmd: ParticipantsIn,
    members: Mapping[uuid.UUID, Mapping],
    registered: set[uuid.UUID],
    branch: Mapping | None,
) -> tuple[list[uuid.UUID], list[uuid.UUID], CompetitionParticipantsRegistered | None]:
    """(new named members, already registered, event or None when nothing changed)."""
    _competition_state(c, "announced", "register participants")
    bad = []
    for mid in dict.fromkeys(cmd.member_ids):
        m = members.get(mid)
        if m is None or m["status"] != "active":
            bad.append(
                {
                    "field": "member_ids",
                    "member_id": str(mid),
                    "reason": "not a union member" if m is None else f"member {m['status']}",
                }
            )
    if bad:
        raise refuse(
            RuleBroken,
            "not-a-member",
            "Participants must be active union members",
            f"{len(bad)} of the named participants are not active members",
            errors=bad,
        )
    if cmd.branch_id is not None:
        if branch is None:
            raise refuse(
                RuleBroken,
                "unknown-branch",
                "Reporting branch is not known",
                f"branch {cmd.branch_id} is not (yet) known to training",
                errors=[{"field": "branch_id", "reason": "no such branch"}],
            )
        if branch["status"] != "active":
            raise refuse(
                Conflict,
                "branch-inactive",
                "Reporting branch is no longer active",
                f"branch {cmd.branch_id} was {branch['status']}",
            )
    unique = list(dict.fromkeys(cmd.member_ids))
    new = [m for m in unique if m not in registered]
    again = [m for m in unique if m in registered]
    added = len(new) + (cmd.headcount or 0)
    if added == 0:
        return new, again, None
    return (
        new,
        again,
        CompetitionParticipantsRegistered(
            branch_id=cmd.branch_id, member_ids=new, headcount=added, **_competition_fields(c)
        ),
    )


def hold_competition(c: Mapping, held_on: date) -> CompetitionHeld:
    _competition_state(c, "announced", "mark it held")
    if held_on < c["starts_on"]:
        raise Invalid("held_on", f"before the competition starts ({c['starts_on']})")
    return CompetitionHeld(participants=c["named"] + c["reported"], held_on=held_on, **_competition_fields(c))


def publish_results(c: Mapping, cmd: CompetitionResultsIn, registered: set[uuid.UUID]) -> CompetitionResultsPublished:
    _competition_state(c, "held", "publish results")
    if cmd.published_on < c["held_on"]:
        raise Invalid("published_on", "before the competition was held")
    bad = [
        {"field": f"winners.{i}.member_id", "reason": "not a registered participant"}
        for i, w in enumerate(cmd.winners)
        if w.member_id is not None and w.member_id not in registered
    ]
    if bad:
        raise refuse(
            RuleBroken,
            "not-a-participant",
            "A winner is not a registered participant",
            "a winner named by member id must have been registered as a participant",
            errors=bad,
        )
    named = [w.member_id for w in cmd.winners if w.member_id is not None]
    if len(named) != len(set(named)):
        raise Invalid("winners", "a member is listed twice")
    winners = [Winner(**w.model_dump()) for w in sorted(cmd.winners, key=lambda w: w.rank)]
    return CompetitionResultsPublished(winners=winners, published_on=cmd.published_on, **_competition_fields(c))


# ============================================================================ studios and training bases
class StudioIn(_In):
    """An innovation studio (创新工作室), high-skill training base (培训基地) or skill-master studio
    (技能大师工作室)."""

    kind: StudioKind
    name: Text = Field(min_length=2, max_length=200)
    host_enterprise: Text = Field(min_length=2, max_length=200)
    lead_worker: Text = Field(min_length=1, max_length=100, description="领衔人 (model worker / craftsman)")
    lead_member_id: uuid.UUID | None = None
    level: StudioLevel
    industry: Text = Field(min_length=1, max_length=100)
    region_code: str
    recognised_on: date

    @field_validator("region_code")
    @classmethod
    def _region(cls, v):
        return _known_region(v, allow_root=False)

    @field_validator("recognised_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class EvaluationIn(_In):
    rating: Text = Field(pattern=r"^(excellent|good|pass|fail)$")
    evaluated_on: date
    notes: Text | None = Field(default=None, max_length=2000)

    @field_validator("evaluated_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


class RevokeIn(_In):
    reason: Text = Field(min_length=2, max_length=500)
    revoked_on: date

    @field_validator("revoked_on")
    @classmethod
    def _date_not_future(cls, v):
        return no_future_date(v)


def recognise_studio(cmd: StudioIn, lead: Mapping | None, studio_id: uuid.UUID | None = None) -> StudioRecognised:
    if cmd.lead_member_id is not None and lead is None:
        raise refuse(
            RuleBroken,
            "not-a-member",
            "Lead worker is not a known union member",
            f"lead_member_id {cmd.lead_member_id} is not known to training",
            errors=[{"field": "lead_member_id", "reason": "not a union member"}],
        )
    industry, _ = normalise_industry(cmd.industry)
    return StudioRecognised(
        studio_id=studio_id or uuid.uuid4(),
        kind=cmd.kind,
        name=cmd.name,
        host_enterprise=cmd.host_enterprise,
        lead_worker=cmd.lead_worker,
        lead_member_id=cmd.lead_member_id,
        level=cmd.level,
        industry=industry,
        region_code=cmd.region_code,
        city_code=regions.city_of(cmd.region_code),
        recognised_on=cmd.recognised_on,
    )


def _studio_fields(s: Mapping) -> dict:
    return {
        "studio_id": s["id"],
        "kind": s["kind"],
        "level": s["level"],
        "region_code": s["region_code"],
        "city_code": s["city_code"],
    }


def _studio_active(s: Mapping, doing: str) -> None:
    if s["status"] != "recognised":
        raise refuse(
            Conflict,
            "studio-revoked",
            "Studio was revoked",
            f"cannot {doing}: studio {s['id']} was revoked on {s['revoked_on']}",
        )


def evaluate_studio(s: Mapping, cmd: EvaluationIn) -> StudioEvaluated:
    _studio_active(s, "evaluate it")
    if cmd.evaluated_on < s["recognised_on"]:
        raise Invalid("evaluated_on", "before the studio was recognised")
    return StudioEvaluated(rating=cmd.rating, evaluated_on=cmd.evaluated_on, **_studio_fields(s))


def revoke_studio(s: Mapping, cmd: RevokeIn) -> StudioRevoked:
    _studio_active(s, "revoke it")
    if cmd.revoked_on < s["recognised_on"]:
        raise Invalid("revoked_on", "before the studio was recognised")
    return StudioRevoked(reason=cmd.reason, revoked_on=cmd.revoked_on, **_studio_fields(s))
