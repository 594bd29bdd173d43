"""Events of the reform coordination service (topic ``reform.events``).

The coordinating office (协调小组办公室) keeps the yearly task ledger (任务台账) of the
coordination group's member units. Tasks, units and pilots are the aggregates; each event
is keyed by its aggregate's id. Every event carries ``region_code``: the ledger is the
region's (640000), a pilot or a city plan its own place, so federation channels are routed
the same way as for every other service. Free text (progress notes, reasons) is scrubbed of
ID and phone numbers before it enters an event; a liaison officer's phone never does.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from shared.events.base import EventData, event
from shared.events.membership import RegionCode

Year = Field(ge=2000, le=2100)
Percent = Field(ge=0, le=100)


class UnitKind(StrEnum):
    party = "party"  # 党委部门
    congress = "congress"  # 人大
    government = "government"  # 政府部门
    mass_organisation = "mass_organisation"  # 群团组织
    other = "other"


class TaskStatus(StrEnum):
    assigned = "assigned"
    in_progress = "in_progress"
    completion_reported = "completion_reported"
    completed = "completed"


class PilotKind(StrEnum):
    city = "city"
    industry = "industry"
    county = "county"
    enterprise = "enterprise"


class PilotMode(StrEnum):
    comprehensive = "comprehensive"  # 全面试点
    project = "project"  # 项目试点


@event("changai.reform.unit.registered.v1", subject="unit_id")
class UnitRegistered(EventData):
    """A member unit joined the coordination group (its liaison officer's contact stays in the service)."""

    unit_id: UUID
    name: str
    kind: UnitKind
    region_code: str = RegionCode


@event("changai.reform.year.opened.v1", subject="year_id")
class YearOpened(EventData):
    year_id: str = Field(pattern=r"^\d{4}$", description="the ledger's year, as text (the record key)")
    year: int = Year
    units: int = Field(ge=0, description="member units of the year")
    region_code: str = RegionCode


@event("changai.reform.year.closed.v1", subject="year_id")
class YearClosed(EventData):
    year_id: str = Field(pattern=r"^\d{4}$")
    year: int = Year
    tasks: int = Field(ge=0)
    completed: int = Field(ge=0)
    documents: int = Field(ge=0)
    pilots: int = Field(ge=0)
    region_code: str = RegionCode


class _TaskEvent(EventData):
    task_id: UUID
    year: int = Year
    number: int = Field(ge=1, description="the task's number within its year (2021-17 is year 2021, number 17)")
    lead_unit_id: UUID
    lead_unit: str = Field(description="the lead unit's name (the dashboards count tasks by unit)")
    region_code: str = RegionCode


@event("changai.reform.task.assigned.v1", subject="task_id")
class TaskAssigned(_TaskEvent):
    """A task was added to the ledger, or re-assigned (``previous_lead_unit_id`` set)."""

    title: str
    co_unit_ids: list[UUID] = Field(default_factory=list)
    deadline: date
    previous_lead_unit_id: UUID | None = None


@event("changai.reform.task.progress_reported.v1", subject="task_id")
class TaskProgressReported(_TaskEvent):
    unit_id: UUID
    percent: int = Percent
    note: str = Field(default="", description="the report's text, ID and phone numbers masked")


@event("changai.reform.task.completion_reported.v1", subject="task_id")
class TaskCompletionReported(_TaskEvent):
    unit_id: UUID
    evidence_links: int = Field(ge=0, description="how many evidence links came with the report")


@event("changai.reform.task.completed.v1", subject="task_id")
class TaskCompleted(_TaskEvent):
    """The office verified the lead unit's completion."""

    completed_on: date
    deadline: date
    on_time: bool


@event("changai.reform.task.sent_back.v1", subject="task_id")
class TaskSentBack(_TaskEvent):
    reason: str = Field(description="why the office sent it back, ID and phone numbers masked")


@event("changai.reform.task.overdue.v1", subject="task_id")
class TaskOverdue(_TaskEvent):
    """Past its deadline (Asia/Shanghai dates) and not completed: the office's supervision (督办)."""

    title: str
    deadline: date
    days_overdue: int = Field(ge=1)
    status: TaskStatus


@event("changai.reform.task.progress_due.v1", subject="task_id")
class TaskProgressDue(_TaskEvent):
    """No progress report for the configured time: a gentle reminder before supervision."""

    title: str
    deadline: date
    days_silent: int = Field(ge=1)


class OverdueTask(BaseModel):
    """A task that became overdue in a supervision scan (as ``task.overdue`` tells it)."""

    task_id: UUID
    year: int = Year
    number: int = Field(ge=1)
    title: str
    deadline: date
    days_overdue: int = Field(ge=1)


class UnitOverdue(BaseModel):
    unit_id: UUID
    unit: str = Field(description="the lead unit's name")
    overdue: list[OverdueTask] = Field(min_length=1)


@event("changai.reform.supervision.digest.v1", subject="digest_id")
class SupervisionDigest(EventData):
    """One notice for the office per supervision scan that found tasks overdue: those tasks, by lead unit
    (each unit's own channels hear its tasks one by one, as ``task.overdue``; the office reads one list)."""

    digest_id: UUID
    scanned_on: date = Field(description="the scan's date in China")
    count: int = Field(ge=1, description="tasks that became overdue in the scan")
    by_unit: list[UnitOverdue] = Field(min_length=1)
    region_code: str = RegionCode


@event("changai.reform.document.issued.v1", subject="document_id")
class DocumentIssued(EventData):
    document_id: UUID
    unit_id: UUID
    unit: str = Field(description="the issuing unit's name")
    title: str
    doc_number: str = Field(description="e.g. 宁人社发〔2021〕12号")
    issued_on: date
    year: int = Year
    task_ids: list[UUID] = Field(default_factory=list)
    region_code: str = RegionCode


@event("changai.reform.pilot.designated.v1", subject="pilot_id")
class PilotDesignated(EventData):
    pilot_id: UUID
    year: int = Year
    kind: PilotKind
    mode: PilotMode
    name: str
    responsible_unit_id: UUID | None = None
    region_code: str = RegionCode


@event("changai.reform.city_plan.recorded.v1", subject="plan_id")
class CityPlanRecorded(EventData):
    """A city's implementation plan (实施方案) was recorded."""

    plan_id: UUID
    city_code: str = Field(pattern=r"^64\d{2}00$")
    title: str
    issued_on: date
    region_code: str = RegionCode
