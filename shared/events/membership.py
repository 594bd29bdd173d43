"""Events of the membership service (topic ``membership.events``).

They carry region codes (county and city) and branch ids so consumers need no
lookup, and never a full ID number or phone number: a member appears by id,
masked ID number at most, never the clear value.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, event

RegionCode = Field(pattern=r"^64\d{4}$", description="GB/T 2260 code (county or city)")
CityCode = Field(default=None, pattern=r"^64\d{2}00$", description="GB/T 2260 code of the city")


class BranchKind(StrEnum):
    enterprise = "enterprise"  # 企业工会
    joint = "joint"  # 联合工会
    industry = "industry"  # 行业工会
    new_form = "new_form"  # 新就业形态工会


class EmploymentForm(StrEnum):
    standard = "standard"  # 标准劳动关系
    courier = "courier"  # 快递员
    ride_hailing = "ride_hailing"  # 网约车司机
    truck_driver = "truck_driver"  # 货车司机
    food_delivery = "food_delivery"  # 外卖骑手


# -- branches ------------------------------------------------------------------
@event("changai.membership.branch.established.v1", subject="branch_id")
class BranchEstablished(EventData):
    """A union branch (基层工会) was established."""

    branch_id: UUID
    name: str
    credit_code: str
    region_code: str = RegionCode
    city_code: str | None = CityCode
    industry_section: str = Field(pattern=r"^[A-T]$")
    kind: BranchKind
    parent_id: UUID | None = None
    founded_on: date


@event("changai.membership.branch.updated.v1", subject="branch_id")
class BranchUpdated(EventData):
    """A branch's details changed; the fields carry the state after the change."""

    branch_id: UUID
    name: str
    region_code: str = RegionCode
    city_code: str | None = CityCode
    industry_section: str = Field(pattern=r"^[A-T]$")
    kind: BranchKind
    parent_id: UUID | None = None
    changed: list[str] = Field(default_factory=list, description="names of the fields that changed")


@event("changai.membership.branch.merged.v1", subject="branch_id")
class BranchMerged(EventData):
    """A branch was merged into another; its members moved with it (each has its own transferred event)."""

    branch_id: UUID
    into_branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    kind: BranchKind
    members_moved: int = Field(ge=0)
    merged_on: date


@event("changai.membership.branch.dissolved.v1", subject="branch_id")
class BranchDissolved(EventData):
    """A branch was dissolved (empty, or its members transferred to a stated branch first)."""

    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    kind: BranchKind
    transferred_to: UUID | None = None
    members_moved: int = Field(default=0, ge=0)
    dissolved_on: date


# -- members -------------------------------------------------------------------
@event("changai.membership.member.joined.v1", subject="member_id")
class MemberJoined(EventData):
    """A worker joined a union branch (入会). No ID number, no phone: only what was derived at entry."""

    member_id: UUID
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    employment_form: EmploymentForm
    occupation: str | None = None
    skill_level: int | None = Field(default=None, ge=1, le=5, description="1 高级技师 … 5 初级工")
    birth_year: int | None = None
    sex: str | None = Field(default=None, pattern=r"^(male|female)$")
    joined_on: date
    import_id: UUID | None = Field(
        default=None,
        description="the bulk import that added the member, if any: "
        "its members are told to channels as one digest, not one notice each",
    )
    id_hash: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="membership's keyed lookup hash of the ID number (HMAC-SHA256 under a key derived from the "
        "platform's data key, hex), never the number: training matches a provider's attendance report by it",
    )


@event("changai.membership.member.lookup.v1", subject="member_id")
class MemberLookup(EventData):
    """A member's lookup hash, published again (``python -m services.membership publish-lookups``).

    For members whose ``member.joined`` predates its ``id_hash``: keyed by the member, so it follows that
    member's ``member.joined``; the same fact again changes nothing. Not a change of the member: the notifier
    tells no channel of it."""

    member_id: UUID
    region_code: str = RegionCode
    id_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="membership's keyed lookup hash of the ID number (as member.joined's id_hash), never the number",
    )


@event("changai.membership.member.transferred.v1", subject="member_id")
class MemberTransferred(EventData):
    """A member moved between branches (转会)."""

    member_id: UUID
    from_branch_id: UUID
    to_branch_id: UUID
    from_region_code: str = RegionCode
    to_region_code: str = RegionCode
    from_city_code: str | None = CityCode
    to_city_code: str | None = CityCode
    employment_form: EmploymentForm
    reason: str | None = None  # e.g. "merge" when a branch merge moved the member
    transferred_on: date


@event("changai.membership.member.left.v1", subject="member_id")
class MemberLeft(EventData):
    """A member left the union (退会)."""

    member_id: UUID
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    employment_form: EmploymentForm
    left_on: date


@event("changai.membership.member.lapsed.v1", subject="member_id")
class MemberLapsed(EventData):
    """A membership lapsed (e.g. dues unpaid, contact lost)."""

    member_id: UUID
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    employment_form: EmploymentForm
    lapsed_on: date


@event("changai.membership.member.skill_level_changed.v1", subject="member_id")
class MemberSkillLevelChanged(EventData):
    """A member's vocational skill level changed (level 1 is the highest, 高级技师)."""

    member_id: UUID
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    from_level: int | None = Field(default=None, ge=1, le=5)
    to_level: int = Field(ge=1, le=5)
    certificate_id: UUID | None = None


# -- outdoor-worker service stations -------------------------------------------
@event("changai.membership.station.opened.v1", subject="station_id")
class StationOpened(EventData):
    """An outdoor-worker service station (户外劳动者服务站点) opened."""

    station_id: UUID
    name: str
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    services: list[str] = Field(default_factory=list)
    opened_on: date


@event("changai.membership.station.closed.v1", subject="station_id")
class StationClosed(EventData):
    """A service station closed."""

    station_id: UUID
    branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    closed_on: date


@event("changai.membership.station.transferred.v1", subject="station_id")
class StationTransferred(EventData):
    """An open station's operating branch changed (its branch was merged or dissolved with a transfer target)."""

    station_id: UUID
    from_branch_id: UUID
    to_branch_id: UUID
    region_code: str = RegionCode
    city_code: str | None = CityCode
    reason: str | None = None
    transferred_on: date
