"""Events of the training service (topic ``training.events``).

Every event carries the region (county and city) and the categories the
projection counts by, so no consumer needs a lookup.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.events.base import EventData, event
from shared.events.membership import CityCode, RegionCode


class SubsidyCategory(StrEnum):
    pre_job = "pre_job"  # 岗前培训 / 以工代训
    skills_upgrade = "skills_upgrade"  # 技能提升
    new_form = "new_form"  # 新就业形态劳动者


class ProviderKind(StrEnum):
    vocational_college = "vocational_college"  # 职业院校
    technical_school = "technical_school"  # 技工院校
    enterprise = "enterprise"  # 企业


class OrganiserKind(StrEnum):
    branch = "branch"
    enterprise = "enterprise"


class CompetitionKind(StrEnum):
    labour = "labour"  # 劳动竞赛
    skills = "skills"  # 职业技能大赛


class Tier(StrEnum):
    region = "region"
    city = "city"
    county = "county"
    enterprise = "enterprise"


class StudioKind(StrEnum):
    innovation_studio = "innovation_studio"  # 劳模和工匠人才创新工作室
    training_base = "training_base"  # 高技能人才培训基地
    skill_master_studio = "skill_master_studio"  # 技能大师工作室


class StudioLevel(StrEnum):
    national = "national"
    region = "region"
    city = "city"


SkillLevel = Field(ge=1, le=5, description="1 高级技师, 2 技师, 3 高级工, 4 中级工, 5 初级工")
# Events of a bulk operation carry its id: the notifier tells them to a channel as one digest per
# operation, not one notice each (a federation hearing of a 2,000-row roster gets a few notices).
RosterUpload = Field(
    default=None,
    description="the roster upload (one bulk request) this came from, if any: its events are told to "
    "channels as one digest per upload, not one notice each",
)
# The session's region on enrolment events, added later (optional: records written before lack it),
# so that a federation's channel is routed an enrolment's changes like the session's own events.
SessionRegion = Field(
    default=None,
    pattern=r"^64\d{4}$",
    description="GB/T 2260 code of the session's county or city (always set by the producer)",
)


@event("changai.training.programme.registered.v1", subject="programme_id")
class ProgrammeRegistered(EventData):
    """A training programme (培训项目) was registered."""

    programme_id: UUID
    name: str
    occupation: str
    target_level: int = SkillLevel
    provider_kind: ProviderKind
    provider_name: str
    subsidy_category: SubsidyCategory


@event("changai.training.session.scheduled.v1", subject="session_id")
class SessionScheduled(EventData):
    """A session (培训班, one 期 of a programme) was scheduled."""

    session_id: UUID
    programme_id: UUID
    number: int = Field(ge=1, description="第n期")
    organiser_id: str
    organiser_kind: OrganiserKind
    region_code: str = RegionCode
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory
    starts_on: date
    ends_on: date
    capacity: int = Field(ge=1)


@event("changai.training.session.started.v1", subject="session_id")
class SessionStarted(EventData):
    session_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory
    started_on: date
    batch_id: UUID | None = RosterUpload


@event("changai.training.session.completed.v1", subject="session_id")
class SessionCompleted(EventData):
    """A session completed (结业): everything funding needs to pay the subsidy without calling back."""

    session_id: UUID
    programme_id: UUID
    programme_name: str
    number: int = Field(ge=1)
    organiser_id: str
    organiser_kind: OrganiserKind
    organiser_name: str | None = None
    region_code: str = RegionCode
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory
    person_times: int = Field(ge=0, description="enrolments that completed the session (人次)")
    passed: int = Field(ge=0)
    failed: int = Field(ge=0)
    eligible_member_ids: list[UUID] = Field(description="active members who passed: the subsidy-eligible persons")
    eligible_persons: int = Field(ge=0)
    completed_on: date
    batch_id: UUID | None = RosterUpload


@event("changai.training.session.cancelled.v1", subject="session_id")
class SessionCancelled(EventData):
    session_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory
    reason: str | None = None
    cancelled_on: date


@event("changai.training.enrolment.enrolled.v1", subject="enrolment_id")
class EnrolmentEnrolled(EventData):
    """A member enrolled in a session (报名)."""

    enrolment_id: UUID
    session_id: UUID
    member_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory
    batch_id: UUID | None = RosterUpload


@event("changai.training.enrolment.attended.v1", subject="enrolment_id")
class EnrolmentAttended(EventData):
    enrolment_id: UUID
    session_id: UUID
    member_id: UUID
    region_code: str | None = SessionRegion
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory | None = None
    batch_id: UUID | None = RosterUpload


@event("changai.training.enrolment.assessed.v1", subject="enrolment_id")
class EnrolmentAssessed(EventData):
    """The result of an enrolment was recorded."""

    enrolment_id: UUID
    session_id: UUID
    member_id: UUID
    result: str = Field(pattern=r"^(passed|failed)$")
    region_code: str | None = SessionRegion
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory | None = None
    batch_id: UUID | None = RosterUpload


@event("changai.training.enrolment.withdrawn.v1", subject="enrolment_id")
class EnrolmentWithdrawn(EventData):
    """An enrolment was withdrawn: by request, as absent when its session completed, or with a cancelled session."""

    enrolment_id: UUID
    session_id: UUID
    member_id: UUID
    reason: str | None = Field(default=None, description='e.g. "absent" (closed at completion), "session cancelled"')
    region_code: str | None = SessionRegion
    city_code: str | None = CityCode
    subsidy_category: SubsidyCategory | None = None
    batch_id: UUID | None = RosterUpload


@event("changai.training.certificate.issued.v1", subject="certificate_id")
class CertificateIssued(EventData):
    """A vocational skill level certificate (职业技能等级证书) was issued; membership raises the member's level."""

    certificate_id: UUID
    serial: str
    member_id: UUID
    enrolment_id: UUID | None = None
    programme_id: UUID | None = None
    occupation: str
    level: int = SkillLevel
    issuer: str
    region_code: str = RegionCode
    city_code: str | None = CityCode
    issued_on: date


@event("changai.training.competition.announced.v1", subject="competition_id")
class CompetitionAnnounced(EventData):
    """A labour competition (劳动竞赛) or skills competition (职业技能大赛) was announced."""

    competition_id: UUID
    name: str
    kind: CompetitionKind
    tier: Tier
    industry: str
    region_code: str = RegionCode
    city_code: str | None = CityCode
    starts_on: date
    ends_on: date


@event("changai.training.competition.participants_registered.v1", subject="competition_id")
class CompetitionParticipantsRegistered(EventData):
    """Participants registered: named members, or a headcount a branch reported (enterprise-tier rounds)."""

    competition_id: UUID
    kind: CompetitionKind
    tier: Tier
    region_code: str = RegionCode
    city_code: str | None = CityCode
    branch_id: UUID | None = None
    member_ids: list[UUID] = Field(default_factory=list)
    headcount: int = Field(ge=0, description="participants added by this registration, named or reported")


@event("changai.training.competition.held.v1", subject="competition_id")
class CompetitionHeld(EventData):
    competition_id: UUID
    kind: CompetitionKind
    tier: Tier
    region_code: str = RegionCode
    city_code: str | None = CityCode
    participants: int = Field(ge=0)
    held_on: date


class Winner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    member_id: UUID | None = None
    name: str
    rank: int = Field(ge=1)
    award: str


@event("changai.training.competition.results_published.v1", subject="competition_id")
class CompetitionResultsPublished(EventData):
    competition_id: UUID
    kind: CompetitionKind
    tier: Tier
    region_code: str = RegionCode
    city_code: str | None = CityCode
    winners: list[Winner]
    published_on: date


@event("changai.training.studio.recognised.v1", subject="studio_id")
class StudioRecognised(EventData):
    """An innovation studio, high-skill training base or skill-master studio was recognised."""

    studio_id: UUID
    kind: StudioKind
    name: str
    host_enterprise: str
    lead_worker: str
    lead_member_id: UUID | None = None
    level: StudioLevel
    industry: str
    region_code: str = RegionCode
    city_code: str | None = CityCode
    recognised_on: date


@event("changai.training.studio.evaluated.v1", subject="studio_id")
class StudioEvaluated(EventData):
    studio_id: UUID
    kind: StudioKind
    level: StudioLevel
    region_code: str = RegionCode
    city_code: str | None = CityCode
    rating: str = Field(pattern=r"^(excellent|good|pass|fail)$")
    evaluated_on: date


@event("changai.training.studio.revoked.v1", subject="studio_id")
class StudioRevoked(EventData):
    studio_id: UUID
    kind: StudioKind
    level: StudioLevel
    region_code: str = RegionCode
    city_code: str | None = CityCode
    reason: str
    revoked_on: date
