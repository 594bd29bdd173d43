"""Membership rules: what valid branches, members and stations are, and the event each change produces.

No I/O here: the use cases (``usecases.py``) load state through ``store``, ask these functions
what the change is (raising a ``shared.errors`` domain exception when a rule forbids it) and store
the result; ``shared.http`` turns a refusal into an RFC 9457 problem, the importer into a report row.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.membership.pii import InvalidIdentifier, age_on, normalise_phone, parse_id_number
from shared import regions
from shared.auth import Principal
from shared.clock import today_cn
from shared.errors import Conflict, Invalid
from shared.events.membership import (
    BranchDissolved,
    BranchEstablished,
    BranchKind,
    BranchMerged,
    BranchUpdated,
    EmploymentForm,
    MemberJoined,
    MemberLapsed,
    MemberLeft,
    MemberLookup,
    MemberSkillLevelChanged,
    MemberTransferred,
    StationClosed,
    StationOpened,
    StationTransferred,
)
from shared.identifiers import credit_code_field

MIN_MEMBER_AGE = 16  # the minimum working age (Labour Law art. 15): younger people cannot be members
SKILL_LEVELS = {1: "高级技师", 2: "技师", 3: "高级工", 4: "中级工", 5: "初级工"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _region(v: str, *, county_only: bool = False) -> str:
    region = regions.get(v)
    if region is None or region.level == "region" or (county_only and region.level != "county"):
        raise ValueError(
            "must be the code of a Ningxia " + ("county" if county_only else "city or county") + " (GB/T 2260)"
        )
    return v


def _not_future(v: date | None) -> date | None:
    if v is not None and v > today_cn():
        raise ValueError("cannot be in the future")
    return v


def _text(v: str | None) -> str | None:
    if v is not None and _CONTROL.search(v):
        raise ValueError("must not contain control characters")
    return v


# -- branches ------------------------------------------------------------------
class BranchIn(BaseModel):
    """A union branch as an upstream system establishes it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=2, max_length=100, description="工会名称")
    credit_code: str = Field(description="employer's unified social credit code (GB 32100)")
    region_code: str = Field(description="GB/T 2260 code of a Ningxia city or county")
    industry_section: str = Field(pattern=r"^[A-T]$", description="GB/T 4754 section, A–T")
    kind: BranchKind
    parent_id: uuid.UUID | None = None
    founded_on: date

    _credit_code = field_validator("credit_code")(credit_code_field)

    _name = field_validator("name")(_text)
    _region = field_validator("region_code")(_region)

    @field_validator("founded_on")
    @classmethod
    def _founded(cls, v: date) -> date:
        _not_future(v)
        return v


class BranchPatch(BaseModel):
    """Fields of a branch that may change; absent fields stay as they are. The employer's credit code never changes."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=2, max_length=100)
    region_code: str | None = None
    industry_section: str | None = Field(default=None, pattern=r"^[A-T]$")
    kind: BranchKind | None = None
    parent_id: uuid.UUID | None = None

    _name = field_validator("name")(_text)

    @field_validator("region_code")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        return None if v is None else _region(v)

    @model_validator(mode="after")
    def _something(self) -> BranchPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        return self


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into_branch_id: uuid.UUID
    merged_on: date | None = Field(default=None, description="defaults to today")

    _on = field_validator("merged_on")(_not_future)


class DissolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transfer_to: uuid.UUID | None = Field(default=None, description="branch that takes the members and stations")
    dissolved_on: date | None = Field(default=None, description="defaults to today")

    _on = field_validator("dissolved_on")(_not_future)


def establish_branch(cmd: BranchIn, branch_id: uuid.UUID | None = None) -> BranchEstablished:
    return BranchEstablished(
        branch_id=branch_id or uuid.uuid4(),
        name=cmd.name,
        credit_code=cmd.credit_code,
        region_code=cmd.region_code,
        city_code=regions.city_of(cmd.region_code),
        industry_section=cmd.industry_section,
        kind=cmd.kind,
        parent_id=cmd.parent_id,
        founded_on=cmd.founded_on,
    )


def referenced_branch(branch, actor: Principal, field: str):
    """A branch a command names in its body: missing is 422 on ``field``, outside the scope 403."""
    if branch is None:
        raise Invalid(field, "no such branch")
    actor.ensure_region(branch["region_code"])
    return branch


def path_branch(branches: dict, branch_id: uuid.UUID, actor: Principal):
    """The branch a write is addressed to (by its id in the path): missing or outside the scope, 404."""
    branch = branches.get(branch_id)
    actor.ensure_visible(branch["region_code"] if branch else None, "branch", branch_id)
    return branch


def branch_exists(existing, actor: Principal) -> Conflict:
    """The employer (credit code) already has an active branch: named when it is in the caller's scope."""
    if existing is None or not actor.may_act_on(existing["region_code"]):
        return Conflict(
            "the employer's branch is outside your organisation scope" if existing else None,
            kind="branch-exists",
            title="Employer already has an active union branch",
        )
    return Conflict(
        f"the employer already has branch {existing['id']}",
        kind="branch-exists",
        title="Employer already has an active union branch",
        branch_id=str(existing["id"]),
    )


def ensure_active(branch, what: str = "branch") -> None:
    if branch["status"] != "active":
        raise Conflict(
            f"branch {branch['id']} is {branch['status']}",
            kind="branch-not-active",
            title=f"The {what} is not active",
            branch_id=str(branch["id"]),
            branch_status=branch["status"],
        )


def update_branch(branch, patch: BranchPatch) -> BranchUpdated | None:
    """The update event, or None when nothing would change."""
    ensure_active(branch)
    current = {
        "name": branch["name"],
        "region_code": branch["region_code"],
        "industry_section": branch["industry_section"],
        "kind": branch["kind"],
        "parent_id": branch["parent_id"],
    }
    wanted = {k: getattr(patch, k) for k in patch.model_fields_set}
    if "parent_id" in wanted and wanted["parent_id"] == branch["id"]:
        raise Invalid("parent_id", "a branch cannot be its own parent")
    for key in ("name", "region_code", "industry_section", "kind"):
        if key in wanted and wanted[key] is None:
            raise Invalid(key, "cannot be null")
    after = {**current, **{k: (v.value if isinstance(v, BranchKind) else v) for k, v in wanted.items()}}
    changed = [k for k in ("name", "region_code", "industry_section", "kind", "parent_id") if after[k] != current[k]]
    if not changed:
        return None
    return BranchUpdated(
        branch_id=branch["id"],
        name=after["name"],
        region_code=after["region_code"],
        city_code=regions.city_of(after["region_code"]),
        industry_section=after["industry_section"],
        kind=after["kind"],
        parent_id=after["parent_id"],
        changed=changed,
    )


def check_merge(branch, into) -> None:
    if branch["id"] == into["id"]:
        raise Conflict(kind="merge-into-itself", title="A branch cannot be merged into itself")
    ensure_active(branch)
    ensure_active(into, "target branch")


def branch_merged(branch, into_id: uuid.UUID, moved: int, on: date) -> BranchMerged:
    return BranchMerged(
        branch_id=branch["id"],
        into_branch_id=into_id,
        region_code=branch["region_code"],
        city_code=regions.city_of(branch["region_code"]),
        kind=branch["kind"],
        members_moved=moved,
        merged_on=on,
    )


def check_dissolve(branch, target, members: int, stations: int) -> None:
    ensure_active(branch)
    if target is None:
        if members or stations:
            raise Conflict(
                f"{members} active member(s) and {stations} open station(s): state transfer_to to move them first",
                kind="branch-not-empty",
                title="The branch still has members or open stations",
                members=members,
                open_stations=stations,
            )
        return
    if target["id"] == branch["id"]:
        raise Conflict(kind="transfer-to-itself", title="A branch cannot transfer its members to itself")
    ensure_active(target, "target branch")


def branch_dissolved(branch, transfer_to: uuid.UUID | None, moved: int, on: date) -> BranchDissolved:
    return BranchDissolved(
        branch_id=branch["id"],
        region_code=branch["region_code"],
        city_code=regions.city_of(branch["region_code"]),
        kind=branch["kind"],
        transferred_to=transfer_to,
        members_moved=moved,
        dissolved_on=on,
    )


def member_moved(
    member_id: uuid.UUID, employment_form: str, source, target, reason: str | None, on: date
) -> MemberTransferred:
    return MemberTransferred(
        member_id=member_id,
        from_branch_id=source["id"],
        to_branch_id=target["id"],
        from_region_code=source["region_code"],
        to_region_code=target["region_code"],
        from_city_code=regions.city_of(source["region_code"]),
        to_city_code=regions.city_of(target["region_code"]),
        employment_form=employment_form,
        reason=reason,
        transferred_on=on,
    )


def station_moved(station_id: uuid.UUID, region_code: str, source, target, reason: str, on: date) -> StationTransferred:
    return StationTransferred(
        station_id=station_id,
        from_branch_id=source["id"],
        to_branch_id=target["id"],
        region_code=region_code,
        city_code=regions.city_of(region_code),
        reason=reason,
        transferred_on=on,
    )


# -- members -------------------------------------------------------------------
EMPLOYMENT_FORM_ALIASES = {
    **{f.value: f.value for f in EmploymentForm},
    "标准劳动关系": "standard",
    "快递员": "courier",
    "网约车司机": "ride_hailing",
    "货车司机": "truck_driver",
    "外卖骑手": "food_delivery",
    "外卖送餐员": "food_delivery",
}
SKILL_LEVEL_ALIASES = {**{str(k): k for k in SKILL_LEVELS}, **{v: k for k, v in SKILL_LEVELS.items()}}


class MemberIn(BaseModel):
    """A worker joining a union branch (入会)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    branch_id: uuid.UUID
    name: str = Field(min_length=1, max_length=50, description="姓名")
    id_number: str = Field(description="resident ID number (GB 11643); stored encrypted, shown masked")
    phone: str | None = Field(default=None, description="mainland mobile number; stored encrypted, shown masked")
    employment_form: EmploymentForm = EmploymentForm.standard
    occupation: str | None = Field(default=None, max_length=50)
    skill_level: int | None = Field(default=None, ge=1, le=5, description="1 高级技师 … 5 初级工")
    joined_on: date | None = Field(default=None, description="defaults to today")

    # The ID number, the phone, the age and the dates are checked by MemberRules (the join use case calls
    # it), the same rules every row of a bulk import meets.

    def __repr__(self) -> str:  # never show personal data in a traceback or a log
        return f"MemberIn(branch_id={self.branch_id}, ...)"

    __str__ = __repr__


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    to_branch_id: uuid.UUID
    reason: str | None = Field(default=None, max_length=200)
    transferred_on: date | None = Field(default=None, description="defaults to today")

    _on = field_validator("transferred_on")(_not_future)
    _reason = field_validator("reason")(_text)


class EndIn(BaseModel):
    """Leaving (退会) or lapsing."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    on: date | None = Field(default=None, description="defaults to today")
    reason: str | None = Field(default=None, max_length=200)

    _on = field_validator("on")(_not_future)
    _reason = field_validator("reason")(_text)


class CertificateRecordIn(BaseModel):
    """A vocational skill level certificate issued outside the platform (人社厅's), for a member."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    certificate_no: str = Field(min_length=1, max_length=64)
    occupation: str = Field(min_length=1, max_length=50)
    occupation_code: str | None = Field(default=None, max_length=20)
    level: int = Field(ge=1, le=5, description="1 高级技师 … 5 初级工")
    issued_on: date
    issuer: str = Field(min_length=1, max_length=100)

    _issued_on = field_validator("issued_on")(_not_future)


class RevealIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=5, max_length=300, description="why the full numbers are needed (audited)")

    _reason = field_validator("reason")(_text)


class LookupIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id_number: str

    @field_validator("id_number")
    @classmethod
    def _id_number(cls, v: str) -> str:
        try:
            return parse_id_number(v, today_cn()).number
        except InvalidIdentifier as exc:
            raise ValueError(str(exc)) from None

    def __repr__(self) -> str:
        return "LookupIn(...)"

    __str__ = __repr__


_DATE = re.compile(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?|(\d{4})(\d{2})(\d{2})")


def parse_date(text: str) -> date | None:
    """A date as people write it in a sheet: ``2021-03-01``, ``2021/3/1``, ``2021.3.1``, ``2021年3月1日``,
    ``20210301``; None when it is not one."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    m = _DATE.fullmatch(text)
    if not m:
        return None
    y, mo, d = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5), m.group(6))
    try:
        return date(int(y), int(mo), int(d))
    except ValueError:
        return None


class NewMember(NamedTuple):
    """A joining person's data, checked and normalised (a named tuple: built once a row of an import)."""

    name: str
    number: str  # the ID number (normalised: upper-case X)
    birth_date: date
    sex: str
    region_code: str  # the ID number's 6-digit region prefix (where the person was registered)
    phone: str | None  # 11 digits
    employment_form: str
    occupation: str | None
    skill_level: int | None
    branch_id: uuid.UUID
    joined_on: date


_UNSEEN: Any = object()  # "not remembered yet" (None is a remembered answer: no skill level)
_MEMO_LIMIT = 10_000  # distinct values remembered per column: a file repeats a few hundred; a hostile one no more


class MemberRules:
    """The rules a joining person's data must meet: one set for a join over HTTP and for every row of a
    bulk import. Values come as text (a CSV cell, where aliases such as 外卖骑手 or 高级技师 are accepted)
    or typed (a JSON field). A refusal is ``Invalid(field, reason)``; a reason never repeats the value.

    The columns a file repeats (employment form, skill level, branch, joining date) are checked once per
    distinct value and the accepted result remembered: an import's rows then cost a dictionary lookup
    each for them (the import's CPU per row counts at 450,000 rows). A refused value is checked (and
    refused) again each time, so every refusal is reported on its own row."""

    def __init__(self, today: date, default_branch: uuid.UUID | None = None):
        self.today = today
        self.default_branch = default_branch
        self._forms: dict[object, str] = {}
        self._skills: dict[object, int | None] = {}
        self._branches: dict[object, uuid.UUID] = {}
        self._dates: dict[object, date] = {}

    def __call__(
        self, name, id_number, phone, employment_form, occupation, skill_level, branch_id, joined_on
    ) -> NewMember:
        name = name.strip() if name else ""
        if not name:
            raise Invalid("name", "is required")
        if len(name) > 50 or _CONTROL.search(name):
            raise Invalid("name", "must be 1 to 50 characters without control characters")
        if not id_number or not id_number.strip():
            raise Invalid("id_number", "is required")
        try:
            person = parse_id_number(id_number, self.today)
        except InvalidIdentifier as exc:
            raise Invalid("id_number", str(exc)) from None
        if phone:
            try:
                phone = normalise_phone(phone)
            except InvalidIdentifier as exc:
                raise Invalid("phone", str(exc)) from None
        else:
            phone = None
        form = self._forms.get(employment_form)
        if form is None:
            form = _remember(self._forms, employment_form, self._form(employment_form))
        if occupation:
            occupation = occupation.strip()
            if len(occupation) > 50 or _CONTROL.search(occupation):
                raise Invalid("occupation", "must be at most 50 characters without control characters")
        occupation = occupation or None
        skill = self._skills.get(skill_level, _UNSEEN)
        if skill is _UNSEEN:
            skill = _remember(self._skills, skill_level, self._skill(skill_level))
        branch = self._branches.get(branch_id)
        if branch is None:
            branch = _remember(self._branches, branch_id, self._branch(branch_id))
        joined = self._dates.get(joined_on)
        if joined is None:
            joined = _remember(self._dates, joined_on, self._joined(joined_on))
        born = person.birth_date
        if joined.year - born.year - ((joined.month, joined.day) < (born.month, born.day)) < MIN_MEMBER_AGE:
            check_age(born, joined)  # raises, with the reason
        return NewMember(
            name,
            person.number,
            born,
            person.sex,
            person.region_code,
            phone,
            form,
            occupation,
            skill,
            branch,
            joined,
        )

    @staticmethod
    def _form(value) -> str:
        form = getattr(value, "value", value)
        if not form:
            return "standard"
        form = EMPLOYMENT_FORM_ALIASES.get(form.strip())
        if form is None:
            raise Invalid(
                "employment_form", "must be one of standard, courier, ride_hailing, truck_driver, food_delivery"
            )
        return form

    @staticmethod
    def _skill(value) -> int | None:
        if type(value) is str:
            skill = SKILL_LEVEL_ALIASES.get(value.strip()) if value.strip() else None
            if skill is None and value.strip():
                raise Invalid("skill_level", "must be 1 (高级技师) to 5 (初级工)")
            return skill
        if value is not None and value not in SKILL_LEVELS:
            raise Invalid("skill_level", "must be 1 (高级技师) to 5 (初级工)")
        return value

    def _branch(self, value) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        text = value.strip() if value else ""
        if not text:
            if self.default_branch is None:
                raise Invalid("branch_id", "is required (as a column, or ?branch_id= for the whole file)")
            return self.default_branch
        try:
            return uuid.UUID(text)
        except ValueError:
            raise Invalid("branch_id", "is not a UUID") from None

    def _joined(self, value) -> date:
        joined = value
        if type(joined) is str:
            joined = parse_date(joined.strip()) if joined.strip() else None
            if joined is None and value.strip():
                raise Invalid("joined_on", "must be a date like 2021-03-01")
        if joined is None:
            return self.today
        if joined > self.today:
            raise Invalid("joined_on", "cannot be in the future")
        return joined


def _remember(memo: dict, value, result):
    """``result``, remembered as the accepted outcome of ``value`` (while the memo is within its limit)."""
    if len(memo) < _MEMO_LIMIT:
        memo[value] = result
    return result


def check_age(born: date, joined_on: date) -> None:
    if age_on(born, joined_on) < MIN_MEMBER_AGE:
        raise Invalid("id_number", f"a member must be at least {MIN_MEMBER_AGE} on the day of joining")


def branch_open_to(branch, actor: Principal):
    """A branch people may join now: named (422), in the caller's scope (403), active (409)."""
    branch = referenced_branch(branch, actor, "branch_id")
    ensure_active(branch)
    return branch


def joining_branch(branch, actor: Principal, joined_on: date):
    """The branch a person joins: open to the caller, and founded by the day of joining."""
    branch = branch_open_to(branch, actor)
    check_join_date(joined_on, branch)
    return branch


def is_elsewhere(existing, actor: Principal) -> bool:
    """A member outside the caller's scope: a refusal or a report row then names no member or branch."""
    return not actor.may_act_on(existing["region_code"])


def check_not_member(existing, actor: Principal) -> None:
    """A join of a person already a member (``existing``, by the lookup hash) is refused while active.
    Outside the caller's scope the refusal says only that: no member or branch id."""
    if existing["status"] != "active":
        return
    if is_elsewhere(existing, actor):
        raise Conflict(
            "a member of a branch outside your organisation scope",
            kind="already-a-member-elsewhere",
            title="This person is already a member elsewhere",
        )
    raise Conflict(
        f"member {existing['id']}",
        kind="already-a-member",
        title="This person is already a member",
        member_id=str(existing["id"]),
        branch_id=str(existing["branch_id"]),
    )


def rejoin_skill_level(certified: int | None, stated: int | None) -> int | None:
    """A rejoin never lowers a certified level (1 is the highest), and keeps it when none is stated."""
    if stated is None or (certified is not None and certified < stated):
        return certified
    return stated


def member_joined_data(
    member_id: str,
    branch_id: str,
    region_code: str,
    employment_form: str,
    occupation: str | None,
    skill_level: int | None,
    birth_year: int,
    sex: str,
    joined_on: str,
    import_id: str | None = None,
    id_hash: str | None = None,
) -> dict:
    """What ``member.joined`` says, in its JSON form (ids and dates as text): the birth year and sex
    derived from the ID number, never the number; ``import_id`` when a bulk import added the member (the
    notifier tells an import's members as one digest). The bulk import encodes it as is
    (``shared.events.encode_value``); a join builds the model from it."""
    return {
        "member_id": member_id,
        "branch_id": branch_id,
        "region_code": region_code,
        "city_code": regions.city_of(region_code),
        "employment_form": employment_form,
        "occupation": occupation,
        "skill_level": skill_level,
        "birth_year": birth_year,
        "sex": sex,
        "joined_on": joined_on,
        "import_id": import_id,
        "id_hash": id_hash,
    }


def member_joined(
    member_id: uuid.UUID,
    branch,
    *,
    employment_form: str,
    occupation: str | None,
    skill_level: int | None,
    born: date,
    sex: str,
    joined_on: date,
    id_hash: bytes | None = None,
) -> MemberJoined:
    return MemberJoined.model_validate(
        member_joined_data(
            str(member_id),
            str(branch["id"]),
            branch["region_code"],
            employment_form,
            occupation,
            skill_level,
            born.year,
            sex,
            joined_on.isoformat(),
            id_hash=id_hash.hex() if id_hash is not None else None,
        )
    )


def member_lookup(member_id: uuid.UUID, region_code: str, id_hash: bytes) -> MemberLookup:
    """``member.lookup``: the member's lookup hash again, for a reader whose ``member.joined`` had none."""
    return MemberLookup(member_id=member_id, region_code=region_code, id_hash=id_hash.hex())


def ensure_member_active(member) -> None:
    if member["status"] != "active":
        raise Conflict(
            f"member {member['id']} is {member['status']}",
            kind="member-not-active",
            title="The member is not active",
            member_id=str(member["id"]),
            member_status=member["status"],
        )


def check_join_date(joined_on: date, branch) -> None:
    if joined_on < branch["founded_on"]:
        raise Invalid("joined_on", "before the branch was founded")


def check_transfer(member, source, target) -> None:
    ensure_member_active(member)
    if source["id"] == target["id"]:
        raise Conflict(kind="same-branch", title="The member is already in that branch")
    ensure_active(target, "target branch")


def member_ended(kind: str, member, branch, on: date) -> MemberLeft | MemberLapsed:
    ensure_member_active(member)
    common = dict(
        member_id=member["id"],
        branch_id=branch["id"],
        region_code=branch["region_code"],
        city_code=regions.city_of(branch["region_code"]),
        employment_form=member["employment_form"],
    )
    return MemberLeft(**common, left_on=on) if kind == "left" else MemberLapsed(**common, lapsed_on=on)


def raised_skill_level(current: int | None, certified: int) -> bool:
    """Level 1 (高级技师) is the highest: a certificate raises the level only to a smaller number."""
    return current is None or certified < current


def skill_level_changed(member, branch, to_level: int, certificate_id: uuid.UUID | None) -> MemberSkillLevelChanged:
    return MemberSkillLevelChanged(
        member_id=member["id"],
        branch_id=branch["id"],
        region_code=branch["region_code"],
        city_code=regions.city_of(branch["region_code"]),
        from_level=member["skill_level"],
        to_level=to_level,
        certificate_id=certificate_id,
    )


# -- stations ------------------------------------------------------------------
class StationIn(BaseModel):
    """An outdoor-worker service station (户外劳动者服务站点)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=2, max_length=100)
    branch_id: uuid.UUID = Field(description="the branch that operates it")
    region_code: str = Field(description="GB/T 2260 code of the county it is in")
    services: list[str] = Field(
        default_factory=list, max_length=20, description="e.g. 饮水, 休息, 充电, 加热, 如厕, 医药箱"
    )
    opened_on: date | None = Field(default=None, description="defaults to today")

    _name = field_validator("name")(_text)
    _on = field_validator("opened_on")(_not_future)

    @field_validator("region_code")
    @classmethod
    def _county(cls, v: str) -> str:
        return _region(v, county_only=True)

    @field_validator("services")
    @classmethod
    def _services(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            item = item.strip()
            if not 1 <= len(item) <= 30 or _CONTROL.search(item):
                raise ValueError("each service is 1 to 30 characters")
            if item not in out:
                out.append(item)
        return out


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    closed_on: date | None = Field(default=None, description="defaults to today")

    _on = field_validator("closed_on")(_not_future)


def station_opened(station_id: uuid.UUID, cmd: StationIn, branch, on: date) -> StationOpened:
    ensure_active(branch)
    return StationOpened(
        station_id=station_id,
        name=cmd.name,
        branch_id=branch["id"],
        region_code=cmd.region_code,
        city_code=regions.city_of(cmd.region_code),
        services=cmd.services,
        opened_on=on,
    )


def station_closed(station, on: date) -> StationClosed:
    if station["status"] != "open":
        raise Conflict(kind="station-closed", title="The station is already closed", station_id=str(station["id"]))
    return StationClosed(
        station_id=station["id"],
        branch_id=station["branch_id"],
        region_code=station["region_code"],
        city_code=regions.city_of(station["region_code"]),
        closed_on=on,
    )
