"""The reform ledger's commands: one function each, called by the routes, the supervision scan and the demo.

Each takes the connection (inside the caller's transaction), the command, the actor and today's
date in China; it checks who may do it, applies the domain's rules, stores the change with its
history, and queues the events in the outbox in the same transaction. Who sees what:

* the office (协调小组办公室): a region-level token (640000) without a unit — everything;
* a member unit's liaison officer: a token with the ``unit`` claim — that unit's tasks (as lead or
  co-operating unit) and its documents; other tasks are 404;
* a city-scoped token: pilots and city plans in its city only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from services.reform import domain, store
from shared import regions
from shared.auth import Principal
from shared.crypto import FieldCipher
from shared.errors import Conflict, Invalid, NotFound, OutOfScope
from shared.events import EventData
from shared.events.reform import (
    CityPlanRecorded,
    DocumentIssued,
    OverdueTask,
    PilotDesignated,
    PilotKind,
    SupervisionDigest,
    TaskAssigned,
    TaskCompleted,
    TaskCompletionReported,
    TaskOverdue,
    TaskProgressDue,
    TaskProgressReported,
    TaskSentBack,
    TaskStatus,
    UnitOverdue,
    UnitRegistered,
    YearClosed,
    YearOpened,
)
from shared.identifiers import mask_phone
from shared.outbox import emit
from shared.privacy import scrub_text

ROOT = regions.REGION_ROOT


@dataclass
class Outcome:
    """What a command did: the record it answers with, whether it was new, and the events it queued."""

    record: Any
    created: bool = True
    events: list[EventData] | None = None


def actor_unit(actor: Principal) -> uuid.UUID | None:
    if actor.unit is None:
        return None
    try:
        return uuid.UUID(actor.unit)
    except ValueError:
        raise OutOfScope("the token's unit claim is not a unit id", kind="bad-unit-claim") from None


def ensure_office(actor: Principal) -> None:
    """The office's commands: a region-level token that speaks for no unit."""
    actor.ensure_region_level()
    if actor.unit is not None:
        raise OutOfScope(
            "a liaison officer's token cannot act as the office",
            kind="not-the-office",
            title="Only the office may do this",
        )


def reporting_unit(actor: Principal) -> uuid.UUID:
    unit = actor_unit(actor)
    if unit is None:
        raise OutOfScope(
            "reports come from a member unit's liaison officer: the token needs a unit claim",
            kind="no-unit",
            title="The token speaks for no unit",
        )
    return unit


def ensure_task_visible(actor: Principal, task: domain.Task) -> None:
    unit = actor_unit(actor)
    if unit is not None:
        if not task.concerns(unit):
            raise NotFound("task", task.id)
    elif actor.region != ROOT:
        raise NotFound("task", task.id)


# -- units -----------------------------------------------------------------------------
async def register_unit(conn, cmd: domain.UnitIn, actor: Principal, cipher: FieldCipher) -> Outcome:
    ensure_office(actor)
    unit_id = uuid.uuid4()
    sealed = cipher.seal("liaison_phone", unit_id, cmd.liaison_phone) if cmd.liaison_phone else None
    masked = mask_phone(cmd.liaison_phone) if cmd.liaison_phone else None
    row = await store.insert_unit(conn, unit_id, cmd.name, cmd.kind.value, cmd.liaison_name, sealed, masked)
    if row is None:
        existing = await store.unit_by_name(conn, cmd.name)
        raise Conflict(
            "a member unit of that name is registered",
            kind="unit-exists",
            title="Unit already registered",
            unit_id=str(existing["id"]) if existing else None,
        )
    events = await emit(conn, UnitRegistered(unit_id=unit_id, name=cmd.name, kind=cmd.kind, region_code=ROOT))
    return Outcome(row, True, events)


async def change_liaison(
    conn, unit_id: uuid.UUID, cmd: domain.LiaisonIn, actor: Principal, cipher: FieldCipher
) -> Outcome:
    mine = actor_unit(actor)
    if mine is None:
        ensure_office(actor)
    elif mine != unit_id:
        raise NotFound("unit", unit_id)
    sealed = cipher.seal("liaison_phone", unit_id, cmd.liaison_phone) if cmd.liaison_phone else None
    row = await store.update_liaison(
        conn, unit_id, cmd.liaison_name, sealed, mask_phone(cmd.liaison_phone) if cmd.liaison_phone else None
    )
    if row is None:
        raise NotFound("unit", unit_id)
    return Outcome(row, False, [])


async def unit(conn, unit_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    mine = actor_unit(actor)
    row = await store.unit(conn, unit_id)
    if row is None or (mine is not None and mine != unit_id) or (mine is None and actor.region != ROOT):
        raise NotFound("unit", unit_id)
    return row


# -- years -----------------------------------------------------------------------------
async def open_year(conn, cmd: domain.YearIn, actor: Principal, today: date) -> Outcome:
    ensure_office(actor)
    if cmd.unit_ids is None:
        unit_ids = [r["id"] for r in await conn.fetch("SELECT id FROM units")]
    else:
        unit_ids = list(dict.fromkeys(cmd.unit_ids))
        missing = set(unit_ids) - await store.units_exist(conn, unit_ids)
        if missing:
            raise Invalid("unit_ids", f"{len(missing)} unit id(s) are not registered member units")
    if not await store.insert_year(conn, cmd.year, cmd.opened_on or today):
        raise Conflict(f"the {cmd.year} ledger is already open", kind="year-exists", title="Year already opened")
    await store.add_year_units(conn, cmd.year, unit_ids)
    events = await emit(conn, YearOpened(year_id=str(cmd.year), year=cmd.year, units=len(unit_ids), region_code=ROOT))
    return Outcome(await year_view(conn, cmd.year), True, events)


async def add_year_units(conn, year: int, cmd: domain.YearUnitsIn, actor: Principal) -> Outcome:
    ensure_office(actor)
    domain.ensure_year_open(await store.year_status(conn, year), year)
    missing = set(cmd.unit_ids) - await store.units_exist(conn, cmd.unit_ids)
    if missing:
        raise Invalid("unit_ids", f"{len(missing)} unit id(s) are not registered member units")
    await store.add_year_units(conn, year, list(cmd.unit_ids))
    return Outcome(await year_view(conn, year), False, [])


async def year_view(conn, year: int) -> dict[str, Any]:
    row = await store.year_summary(conn, year)
    if row is None:
        raise NotFound("ledger year", year)
    return dict(row)


async def close_year(conn, year: int, actor: Principal, today: date) -> Outcome:
    """A year closes when every task in it is completed (verified); then it takes no more changes."""
    ensure_office(actor)
    row = await store.year(conn, year, lock=True)
    domain.ensure_year_open(row["status"] if row else None, year)
    counts = await store.year_counts(conn, year)
    if counts["completed"] < counts["tasks"]:
        raise Conflict(
            f"{counts['tasks'] - counts['completed']} of {counts['tasks']} tasks are not completed",
            kind="tasks-open",
            title="The year still has open tasks",
            open_tasks=counts["tasks"] - counts["completed"],
        )
    await store.close_year(conn, year, today)
    events = await emit(
        conn,
        YearClosed(
            year_id=str(year),
            year=year,
            tasks=counts["tasks"],
            completed=counts["completed"],
            documents=counts["documents"],
            pilots=counts["pilots"],
            region_code=ROOT,
        ),
    )
    return Outcome(await year_view(conn, year), False, events)


# -- tasks -----------------------------------------------------------------------------
async def _task_event(conn, task: domain.Task) -> dict[str, Any]:
    """The fields every task event carries (the lead unit's name too, for the dashboards)."""
    return {
        "task_id": task.id,
        "year": task.year,
        "number": task.number,
        "lead_unit_id": task.lead_unit_id,
        "lead_unit": await store.unit_name(conn, task.lead_unit_id),
        "region_code": ROOT,
    }


async def _locked_task(conn, task_id: uuid.UUID, actor: Principal) -> domain.Task:
    row = await store.task(conn, task_id, lock=True)
    if row is None:
        raise NotFound("task", task_id)
    task = store.task_of(row)
    ensure_task_visible(actor, task)
    domain.ensure_year_open(await store.year_status(conn, task.year), task.year)
    return task


async def add_task(conn, cmd: domain.TaskIn, actor: Principal) -> Outcome:
    ensure_office(actor)
    domain.ensure_year_open(await store.year_status(conn, cmd.year), cmd.year)
    co = list(dict.fromkeys(cmd.co_unit_ids))
    domain.ensure_members(cmd.year, await store.year_members(conn, cmd.year), cmd.lead_unit_id, co)
    row = await store.insert_task(conn, uuid.uuid4(), cmd.model_copy(update={"co_unit_ids": co}))
    if row is None:
        existing = await store.task_by_number(conn, cmd.year, cmd.number)
        raise Conflict(
            f"task {cmd.year}-{cmd.number} is already in the ledger",
            kind="task-exists",
            title="Task number taken",
            task_id=str(existing["id"]) if existing else None,
        )
    task = store.task_of(row)
    await store.add_history(
        conn,
        task.id,
        actor.subject,
        "assigned",
        unit_id=task.lead_unit_id,
        detail={"deadline": task.deadline.isoformat(), "co_unit_ids": [str(u) for u in co]},
    )
    events = await emit(
        conn, TaskAssigned(**await _task_event(conn, task), title=task.title, co_unit_ids=co, deadline=task.deadline)
    )
    return Outcome(row, True, events)


async def reassign(conn, task_id: uuid.UUID, cmd: domain.AssignIn, actor: Principal) -> Outcome:
    """Re-assignment keeps the history: the previous lead, deadline and the reason stay in task_history."""
    ensure_office(actor)
    task = await _locked_task(conn, task_id, actor)
    domain.reassign(task)
    if cmd.co_unit_ids is None:  # the co-operating units stay, less the new lead
        co = [u for u in task.co_unit_ids if u != cmd.lead_unit_id]
    else:
        co = list(dict.fromkeys(cmd.co_unit_ids))
    domain.ensure_members(task.year, await store.year_members(conn, task.year), cmd.lead_unit_id, co)
    deadline = cmd.deadline or task.deadline
    row = await store.set_task(conn, task.id, lead_unit_id=cmd.lead_unit_id, co_unit_ids=co, deadline=deadline)
    await store.add_history(
        conn,
        task.id,
        actor.subject,
        "reassigned",
        unit_id=cmd.lead_unit_id,
        text=scrub_text(cmd.reason),
        detail={
            "previous_lead_unit_id": str(task.lead_unit_id),
            "previous_deadline": task.deadline.isoformat(),
            "deadline": deadline.isoformat(),
            "co_unit_ids": [str(u) for u in co],
        },
    )
    new = store.task_of(row)
    events = await emit(
        conn,
        TaskAssigned(
            **await _task_event(conn, new),
            title=new.title,
            co_unit_ids=co,
            deadline=deadline,
            previous_lead_unit_id=task.lead_unit_id,
        ),
    )
    return Outcome(row, False, events)


async def report_progress(conn, task_id: uuid.UUID, cmd: domain.ProgressIn, actor: Principal, now: datetime) -> Outcome:
    unit = reporting_unit(actor)
    task = await _locked_task(conn, task_id, actor)
    status = domain.report_progress(task, unit, cmd.percent)
    row = await store.set_task(
        conn, task.id, status=status.value, percent=max(task.percent, cmd.percent), last_report_at=now
    )
    note = scrub_text(cmd.text)
    await store.add_history(
        conn,
        task.id,
        actor.subject,
        "progress_reported",
        unit_id=unit,
        percent=cmd.percent,
        text=note,
        links=[str(u) for u in cmd.links],
    )
    events = await emit(
        conn, TaskProgressReported(**await _task_event(conn, task), unit_id=unit, percent=cmd.percent, note=note[:500])
    )
    return Outcome(row, False, events)


async def report_completion(
    conn, task_id: uuid.UUID, cmd: domain.CompletionIn, actor: Principal, now: datetime
) -> Outcome:
    unit = reporting_unit(actor)
    task = await _locked_task(conn, task_id, actor)
    status = domain.report_completion(task, unit)
    row = await store.set_task(conn, task.id, status=status.value, percent=100, last_report_at=now)
    await store.add_history(
        conn,
        task.id,
        actor.subject,
        "completion_reported",
        unit_id=unit,
        percent=100,
        text=scrub_text(cmd.evidence),
        links=[str(u) for u in cmd.links],
    )
    events = await emit(
        conn, TaskCompletionReported(**await _task_event(conn, task), unit_id=unit, evidence_links=len(cmd.links))
    )
    return Outcome(row, False, events)


async def verify_completion(conn, task_id: uuid.UUID, actor: Principal, today: date) -> Outcome:
    ensure_office(actor)
    task = await _locked_task(conn, task_id, actor)
    status = domain.verify(task)
    row = await store.set_task(conn, task.id, status=status.value, completed_on=today)
    await store.add_history(conn, task.id, actor.subject, "completed")
    events = await emit(
        conn,
        TaskCompleted(
            **await _task_event(conn, task), completed_on=today, deadline=task.deadline, on_time=today <= task.deadline
        ),
    )
    return Outcome(row, False, events)


async def send_back(conn, task_id: uuid.UUID, cmd: domain.SendBackIn, actor: Principal) -> Outcome:
    ensure_office(actor)
    task = await _locked_task(conn, task_id, actor)
    status = domain.send_back(task)
    reason = scrub_text(cmd.reason)
    row = await store.set_task(conn, task.id, status=status.value, percent=min(task.percent, 99))
    await store.add_history(conn, task.id, actor.subject, "sent_back", text=reason)
    events = await emit(conn, TaskSentBack(**await _task_event(conn, task), reason=reason))
    return Outcome(row, False, events)


async def task(conn, task_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    row = await store.task(conn, task_id)
    if row is None:
        raise NotFound("task", task_id)
    ensure_task_visible(actor, store.task_of(row))
    return row


def visible_unit_filter(actor: Principal, requested: uuid.UUID | None) -> uuid.UUID | None:
    """The unit a task list is cut to: a liaison's own; the office's choice; a city token sees none (404)."""
    unit = actor_unit(actor)
    if unit is not None:
        if requested is not None and requested != unit:
            raise OutOfScope("a liaison officer lists its own unit's tasks only")
        return unit
    if actor.region != ROOT:
        raise OutOfScope("the task ledger is the region's: a region-level token or a unit's liaison reads it")
    return requested


# -- supervision (督办) -----------------------------------------------------------------
async def supervise(conn, today: date, now: datetime, quiet_after: timedelta, limit: int = 500) -> list[EventData]:
    """One pass of the due-time scan: overdue notices (once per deadline) and gentle reminders (once per
    quiet spell), each stage recorded on the task in the same transaction as its event. Rows are locked
    with SKIP LOCKED, so two replicas scanning at once never tell the same task twice.

    The tasks a pass finds overdue are also told to the office as one ``supervision.digest`` (by lead
    unit), written last in the same transaction: the scan is the natural batch, so the office reads one
    list per scan instead of a notice per task, and the digest lists exactly the tasks told."""
    events: list[EventData] = []
    overdue: dict[uuid.UUID, UnitOverdue] = {}
    for row in await store.due_for_supervision(conn, today, now - quiet_after, limit):
        task = store.task_of(row)
        days = domain.overdue_days(task, today)
        if days is not None:
            await store.set_task(conn, task.id, overdue_for=task.deadline)
            await store.add_history(conn, task.id, "supervision", "overdue", detail={"days_overdue": days})
            told = TaskOverdue(
                **await _task_event(conn, task),
                title=task.title,
                deadline=task.deadline,
                days_overdue=days,
                status=task.status,
            )
            events += await emit(conn, told)
            item = OverdueTask(
                task_id=task.id,
                year=task.year,
                number=task.number,
                title=task.title,
                deadline=task.deadline,
                days_overdue=days,
            )
            if task.lead_unit_id in overdue:
                overdue[task.lead_unit_id].overdue.append(item)
            else:
                overdue[task.lead_unit_id] = UnitOverdue(unit_id=task.lead_unit_id, unit=told.lead_unit, overdue=[item])
            continue
        silent = domain.silent_days(task, now, quiet_after)
        if silent is not None:
            await store.set_task(conn, task.id, progress_due_for=task.last_report_at or task.created_at)
            await store.add_history(conn, task.id, "supervision", "progress_due", detail={"days_silent": silent})
            events += await emit(
                conn,
                TaskProgressDue(
                    **await _task_event(conn, task), title=task.title, deadline=task.deadline, days_silent=silent
                ),
            )
    if overdue:
        by_unit = sorted(overdue.values(), key=lambda u: u.unit)
        events += await emit(
            conn,
            SupervisionDigest(
                digest_id=uuid.uuid4(),
                scanned_on=today,
                count=sum(len(u.overdue) for u in by_unit),
                by_unit=by_unit,
                region_code=ROOT,
            ),
        )
    return events


# -- documents, pilots, city plans ----------------------------------------------------------
async def register_document(conn, cmd: domain.DocumentIn, actor: Principal) -> Outcome:
    mine = actor_unit(actor)
    if mine is not None:
        if cmd.unit_id is not None and cmd.unit_id != mine:
            raise OutOfScope("a liaison officer registers its own unit's documents only")
        unit_id = mine
    else:
        ensure_office(actor)
        if cmd.unit_id is None:
            raise Invalid("unit_id", "the office names the issuing unit")
        unit_id = cmd.unit_id
    domain.check_doc_number(cmd.doc_number)
    if await store.unit(conn, unit_id) is None:
        raise Invalid("unit_id", "not a registered member unit")
    task_ids = list(dict.fromkeys(cmd.task_ids))
    if set(task_ids) - await store.tasks_exist(conn, task_ids):
        raise Invalid("task_ids", "a linked task is not in the ledger")
    row = await store.insert_document(
        conn, uuid.uuid4(), cmd.model_copy(update={"task_ids": task_ids, "link": cmd.link and str(cmd.link)}), unit_id
    )
    if row is None:
        raise Conflict(
            f"the unit already registered document {cmd.doc_number}",
            kind="document-exists",
            title="Document number taken for that unit",
        )
    events = await emit(
        conn,
        DocumentIssued(
            document_id=row["id"],
            unit_id=unit_id,
            unit=await store.unit_name(conn, unit_id),
            title=cmd.title,
            doc_number=cmd.doc_number,
            issued_on=cmd.issued_on,
            year=cmd.issued_on.year,
            task_ids=task_ids,
            region_code=ROOT,
        ),
    )
    return Outcome(row, True, events)


async def designate_pilot(conn, cmd: domain.PilotIn, actor: Principal) -> Outcome:
    ensure_office(actor)
    domain.check_pilot_region(cmd.kind, cmd.region_code)
    if cmd.responsible_unit_id is not None and await store.unit(conn, cmd.responsible_unit_id) is None:
        raise Invalid("responsible_unit_id", "not a registered member unit")
    row = await store.insert_pilot(conn, uuid.uuid4(), cmd)
    if row is None:
        raise Conflict(
            f"a {cmd.kind} pilot named {cmd.name} is already designated for {cmd.year}",
            kind="pilot-exists",
            title="Pilot already designated",
        )
    events = await emit(
        conn,
        PilotDesignated(
            pilot_id=row["id"],
            year=cmd.year,
            kind=cmd.kind,
            mode=cmd.mode,
            name=cmd.name,
            responsible_unit_id=cmd.responsible_unit_id,
            region_code=cmd.region_code,
        ),
    )
    return Outcome(row, True, events)


async def record_city_plan(conn, city_code: str, cmd: domain.CityPlanIn, actor: Principal) -> Outcome:
    ensure_office(actor)
    domain.check_city(city_code)
    row, created = await store.upsert_city_plan(conn, uuid.uuid4(), cmd, city_code)
    events = await emit(
        conn,
        CityPlanRecorded(
            plan_id=row["id"], city_code=city_code, title=cmd.title, issued_on=cmd.issued_on, region_code=city_code
        ),
    )
    return Outcome(row, created, events)


# -- the advancement meeting's report (推进会) ---------------------------------------------
async def year_report(conn, year: int, actor: Principal, today: date) -> dict[str, Any]:
    ensure_office_or_reader(actor)
    row = await store.year(conn, year)
    if row is None:
        raise NotFound("ledger year", year)
    rows = await store.report_rows(conn, year)
    tasks = rows["tasks"]
    completed = sum(1 for t in tasks if t["status"] == TaskStatus.completed)
    overdue = [t for t in tasks if t["status"] != TaskStatus.completed and t["deadline"] < today]
    return {
        "year": year,
        "status": row["status"],
        "tasks": len(tasks),
        "completed": completed,
        "completion_rate": domain.completion_rate(completed, len(tasks)),
        "by_status": {r["status"]: r["n"] for r in rows["by_status"]},
        "by_unit": [
            {
                "unit_id": str(r["id"]),
                "unit": r["name"],
                "tasks": r["tasks"],
                "completed": r["completed"],
                "completion_rate": domain.completion_rate(r["completed"], r["tasks"]),
            }
            for r in rows["by_unit"]
        ],
        "overdue": [
            {
                "task_id": str(t["id"]),
                "number": f"{year}-{t['number']}",
                "title": t["title"],
                "lead_unit": t["lead_unit_name"],
                "deadline": t["deadline"].isoformat(),
                "days_overdue": (today - t["deadline"]).days,
                "status": t["status"],
            }
            for t in overdue
        ],
        "documents": [
            {
                "unit": d["unit_name"],
                "doc_number": d["doc_number"],
                "title": d["title"],
                "issued_on": d["issued_on"].isoformat(),
            }
            for d in rows["documents"]
        ],
        "pilots": [
            {"kind": p["kind"], "mode": p["mode"], "name": p["name"], "region_code": p["region_code"]}
            for p in rows["pilots"]
        ],
        "task_list": [
            {
                "number": f"{year}-{t['number']}",
                "title": t["title"],
                "lead_unit": t["lead_unit_name"],
                "deadline": t["deadline"].isoformat(),
                "status": t["status"],
                "percent": t["percent"],
            }
            for t in tasks
        ],
    }


def ensure_office_or_reader(actor: Principal) -> None:
    """The meeting's report is the region's: a region-level token (the office or the group's members)."""
    if actor.region != ROOT:
        raise OutOfScope("the year's report is the region's: a region-level token reads it")


# -- lists: each cut to what the caller may see, as the single reads are ------------------------
# Each returns up to ``limit + 1`` rows after the cursor (the route's ``page`` tells whether there is more).
async def units(conn, actor: Principal, after: str | None, limit: int) -> list[asyncpg.Record]:
    ensure_office_or_reader(actor)
    return await store.units_page(conn, after, limit)


async def years(conn, actor: Principal, after: int | None, limit: int) -> list[asyncpg.Record]:
    ensure_office_or_reader(actor)
    return await store.years(conn, after=after, limit=limit)


async def tasks(
    conn,
    actor: Principal,
    *,
    year: int | None,
    status: TaskStatus | None,
    unit_id: uuid.UUID | None,
    overdue_on: date | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The task ledger; ``overdue_on``: only the tasks not completed by their deadline before that day."""
    return await store.tasks_page(
        conn,
        year=year,
        status=status.value if status else None,
        unit_id=visible_unit_filter(actor, unit_id),
        overdue_on=overdue_on,
        after=after,
        limit=limit,
    )


async def task_history(
    conn, task_id: uuid.UUID, actor: Principal, after: int | None, limit: int
) -> list[asyncpg.Record]:
    await task(conn, task_id, actor)  # unknown or not the caller's: 404
    return await store.history(conn, task_id, after, limit)


async def documents(
    conn, actor: Principal, *, unit_id: uuid.UUID | None, year: int | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    return await store.documents_page(
        conn, unit_id=visible_unit_filter(actor, unit_id), year=year, after=after, limit=limit
    )


async def pilots(
    conn,
    actor: Principal,
    *,
    year: int | None,
    kind: PilotKind | None,
    region: str | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await store.pilots_page(
        conn,
        year=year,
        kind=kind.value if kind else None,
        codes=actor.scope_codes(region),
        after=after,
        limit=limit,
    )


async def city_plans(conn, actor: Principal, after: str | None, limit: int) -> list[asyncpg.Record]:
    # A city's plan concerns the city and every county in it.
    codes = [c.code for c in regions.CITIES if actor.may_act_on(c.code) or regions.contains(c.code, actor.region)]
    return await store.city_plans(conn, codes, after=after, limit=limit)
