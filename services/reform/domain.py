"""The reform ledger's rules: who may do what to a task, its state changes, supervision. No I/O.

A task moves assigned → in_progress → completion_reported → completed; the office may send a
reported completion back (→ in_progress, with its reason). Only the lead unit reports completion,
only the office verifies it. A closed year refuses every change. Supervision (督办): a task past
its deadline (an Asia/Shanghai date) and not completed is overdue, told once per deadline; a task
with no progress report for a while gets a gentle reminder first, once per quiet spell.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl

from shared import regions
from shared.errors import Conflict, Invalid, NotFound, OutOfScope, RuleBroken
from shared.events.reform import PilotKind, PilotMode, TaskStatus, UnitKind
from shared.identifiers import InvalidIdentifier, normalise_phone
from shared.regions import RegionCode

# 宁人社发〔2021〕12号: issuer abbreviation, 发/函/办发…, year in 〔〕 (or [] / 【】 as typed), number, 号.
DOC_NUMBER = re.compile(r"^[\u4e00-\u9fffA-Za-z]{1,20}[〔\[【(（]\d{4}[〕\]】)）]\d{1,4}号$")


@dataclass(frozen=True)
class Task:
    id: uuid.UUID
    year: int
    number: int
    title: str
    lead_unit_id: uuid.UUID
    co_unit_ids: tuple[uuid.UUID, ...]
    deadline: date
    status: TaskStatus
    percent: int
    created_at: datetime
    last_report_at: datetime | None
    overdue_for: date | None
    progress_due_for: datetime | None

    def concerns(self, unit_id: uuid.UUID) -> bool:
        return unit_id == self.lead_unit_id or unit_id in self.co_unit_ids

    @property
    def label(self) -> str:
        return f"{self.year}-{self.number}"


def ensure_year_open(status: str | None, year: int) -> None:
    if status is None:
        raise NotFound("ledger year", year)
    if status != "open":
        raise Conflict(
            f"the {year} ledger is closed; it takes no more changes", kind="year-closed", title="The year is closed"
        )


def ensure_members(year: int, members: set[uuid.UUID], lead: uuid.UUID, co: list[uuid.UUID]) -> None:
    if lead not in members:
        raise RuleBroken(
            f"the lead unit is not a member unit of the {year} ledger",
            kind="not-a-member-unit",
            title="Lead unit is not a member unit of that year",
        )
    if lead in co:
        raise Invalid("co_unit_ids", "the lead unit cannot also be a co-operating unit")
    missing = [u for u in co if u not in members]
    if missing:
        raise RuleBroken(
            f"{len(missing)} co-operating unit(s) are not member units of the {year} ledger",
            kind="not-a-member-unit",
            title="Co-operating unit is not a member unit of that year",
        )


def report_progress(task: Task, unit: uuid.UUID, percent: int) -> TaskStatus:
    """A unit of the task reports progress: the status it moves to."""
    if not task.concerns(unit):
        raise NotFound("task", task.id)
    if task.status == TaskStatus.completed:
        raise Conflict("the task is completed", kind="task-completed", title="The task is already completed")
    if task.status == TaskStatus.completion_reported:
        raise Conflict(
            "completion was reported and waits for the office's verification",
            kind="completion-pending",
            title="Completion awaits verification",
        )
    if percent >= 100:
        raise Invalid("percent", "100 is a completion: report it with :report-completion")
    return TaskStatus.in_progress


def report_completion(task: Task, unit: uuid.UUID) -> TaskStatus:
    if not task.concerns(unit):
        raise NotFound("task", task.id)
    if unit != task.lead_unit_id:
        raise OutOfScope(
            "completion is reported by the lead unit only",
            kind="not-lead-unit",
            title="Only the lead unit reports completion",
        )
    if task.status == TaskStatus.completed:
        raise Conflict("the task is completed", kind="task-completed", title="The task is already completed")
    if task.status == TaskStatus.completion_reported:
        raise Conflict(
            "completion was already reported", kind="completion-pending", title="Completion awaits verification"
        )
    return TaskStatus.completion_reported


def verify(task: Task) -> TaskStatus:
    if task.status != TaskStatus.completion_reported:
        raise Conflict(
            f"only a reported completion can be verified; the task is {task.status}",
            kind="no-completion-reported",
            title="No completion to verify",
        )
    return TaskStatus.completed


def send_back(task: Task) -> TaskStatus:
    if task.status != TaskStatus.completion_reported:
        raise Conflict(
            f"only a reported completion can be sent back; the task is {task.status}",
            kind="no-completion-reported",
            title="No completion to send back",
        )
    return TaskStatus.in_progress


def reassign(task: Task) -> None:
    if task.status == TaskStatus.completed:
        raise Conflict(
            "a completed task is not re-assigned", kind="task-completed", title="The task is already completed"
        )


def overdue_days(task: Task, today: date) -> int | None:
    """Days past the deadline when an overdue notice is due now (once per deadline), else None."""
    if task.status == TaskStatus.completed or today <= task.deadline or task.overdue_for == task.deadline:
        return None
    return (today - task.deadline).days


def silent_days(task: Task, now: datetime, after: timedelta) -> int | None:
    """Days without a progress report when a gentle reminder is due now (once per quiet spell), else None.

    Only for tasks not yet reported complete and not yet overdue (then supervision speaks instead)."""
    if task.status not in (TaskStatus.assigned, TaskStatus.in_progress):
        return None
    since = task.last_report_at or task.created_at
    if now - since < after or task.progress_due_for == since or now.date() > task.deadline:
        return None
    return max(1, (now - since).days)


def check_pilot_region(kind: PilotKind, region_code: str) -> None:
    region = regions.get(region_code)
    if region is None:
        raise Invalid("region_code", "not a Ningxia region code (GB/T 2260)")
    if kind == PilotKind.city and region.level != "city":
        raise Invalid("region_code", "a city pilot names a city (e.g. 640100)")
    if kind == PilotKind.county and region.level != "county":
        raise Invalid("region_code", "a county pilot names a county or district")


def check_city(city_code: str) -> None:
    region = regions.get(city_code)
    if region is None or region.level != "city":
        raise Invalid("city_code", "not one of Ningxia's five cities")


def check_doc_number(doc_number: str) -> None:
    if not DOC_NUMBER.match(doc_number):
        raise Invalid("doc_number", "not a document number like 宁人社发〔2021〕12号")


def completion_rate(completed: int, total: int) -> float:
    return round(completed / total, 4) if total else 0.0


# -- commands (what the API, the demo and any bulk path hand to the use cases) ------------------


Text = Field(min_length=1, max_length=200)
LongText = Field(default="", max_length=4000)
Links: Any = Field(default_factory=list, max_length=10, description="attachments and evidence, as http(s) links")
Year = Field(ge=2000, le=2100)


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _mobile(value: str) -> str:
    try:
        return normalise_phone(value)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


# A liaison officer's mobile: normalised to 11 digits; stored encrypted, shown masked.
Mobile = Annotated[str, Field(max_length=30, description="mainland mobile; stored encrypted"), AfterValidator(_mobile)]


class UnitIn(Command):
    name: str = Text
    kind: UnitKind
    liaison_name: str | None = Field(default=None, min_length=1, max_length=50)
    liaison_phone: Mobile | None = None


class LiaisonIn(Command):
    liaison_name: str | None = Field(default=None, min_length=1, max_length=50)
    liaison_phone: Mobile | None = None


class YearIn(Command):
    year: int = Year
    unit_ids: list[uuid.UUID] | None = Field(
        default=None, max_length=100, description="member units of the year; all registered units if left out"
    )
    opened_on: date | None = None


class YearUnitsIn(Command):
    unit_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)


class TaskIn(Command):
    year: int = Year
    number: int = Field(ge=1, le=9999)
    title: str = Text
    content: str = LongText
    measures: str = LongText
    source_clause: str = Field(default="", max_length=200, description="the clause of the reform plan it implements")
    lead_unit_id: uuid.UUID
    co_unit_ids: list[uuid.UUID] = Field(default_factory=list, max_length=30)
    deadline: date


class AssignIn(Command):
    lead_unit_id: uuid.UUID
    co_unit_ids: list[uuid.UUID] | None = Field(default=None, max_length=30)
    deadline: date | None = None
    reason: str = Field(min_length=1, max_length=1000)


class ProgressIn(Command):
    percent: int = Field(ge=0, le=99)
    text: str = Field(min_length=1, max_length=4000)
    links: list[HttpUrl] = Links


class CompletionIn(Command):
    evidence: str = Field(min_length=1, max_length=4000)
    links: list[HttpUrl] = Links


class SendBackIn(Command):
    reason: str = Field(min_length=1, max_length=1000)


class DocumentIn(Command):
    title: str = Text
    doc_number: str = Field(min_length=4, max_length=60)
    issued_on: date
    task_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    link: HttpUrl | None = None
    unit_id: uuid.UUID | None = Field(default=None, description="the issuing unit; a liaison's own unit if left out")


class PilotIn(Command):
    year: int = Year
    kind: PilotKind
    mode: PilotMode
    name: str = Text
    region_code: RegionCode
    content: str = LongText
    responsible_unit_id: uuid.UUID | None = None


class CityPlanIn(Command):
    title: str = Text
    doc_number: str | None = Field(default=None, max_length=60)
    issued_on: date
