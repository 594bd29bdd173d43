"""The reform ledger's rules, without I/O."""

import uuid
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from services.reform import domain
from shared.errors import Conflict, Invalid, NotFound, OutOfScope, RuleBroken
from shared.events.reform import PilotKind, TaskStatus

LEAD, CO, OTHER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
T0 = datetime(2021, 3, 1, 9, tzinfo=timezone.utc)


def task(**kw) -> domain.Task:
    base = domain.Task(
        id=uuid.uuid4(),
        year=2021,
        number=17,
        title="完善技能评价",
        lead_unit_id=LEAD,
        co_unit_ids=(CO,),
        deadline=date(2021, 6, 30),
        status=TaskStatus.assigned,
        percent=0,
        created_at=T0,
        last_report_at=None,
        overdue_for=None,
        progress_due_for=None,
    )
    return replace(base, **kw)


def test_progress_moves_to_in_progress_for_lead_and_co_units():
    assert domain.report_progress(task(), LEAD, 30) == TaskStatus.in_progress
    assert domain.report_progress(task(), CO, 30) == TaskStatus.in_progress


def test_a_unit_outside_the_task_does_not_see_it():
    with pytest.raises(NotFound):
        domain.report_progress(task(), OTHER, 30)
    with pytest.raises(NotFound):
        domain.report_completion(task(), OTHER)


def test_completion_is_reported_by_the_lead_unit_only():
    assert domain.report_completion(task(status=TaskStatus.in_progress), LEAD) == TaskStatus.completion_reported
    with pytest.raises(OutOfScope):
        domain.report_completion(task(), CO)


def test_progress_after_completion_reported_or_completed_is_a_conflict():
    with pytest.raises(Conflict):
        domain.report_progress(task(status=TaskStatus.completion_reported), LEAD, 50)
    with pytest.raises(Conflict):
        domain.report_progress(task(status=TaskStatus.completed), LEAD, 50)
    with pytest.raises(Invalid):
        domain.report_progress(task(), LEAD, 100)


def test_only_a_reported_completion_is_verified_or_sent_back():
    assert domain.verify(task(status=TaskStatus.completion_reported)) == TaskStatus.completed
    assert domain.send_back(task(status=TaskStatus.completion_reported)) == TaskStatus.in_progress
    for status in (TaskStatus.assigned, TaskStatus.in_progress, TaskStatus.completed):
        with pytest.raises(Conflict):
            domain.verify(task(status=status))
        with pytest.raises(Conflict):
            domain.send_back(task(status=status))


def test_a_closed_year_refuses_changes():
    domain.ensure_year_open("open", 2021)
    with pytest.raises(Conflict) as exc:
        domain.ensure_year_open("closed", 2020)
    assert exc.value.kind == "year-closed"
    with pytest.raises(NotFound):
        domain.ensure_year_open(None, 2019)


def test_lead_and_co_units_must_be_member_units_of_the_year():
    members = {LEAD, CO}
    domain.ensure_members(2021, members, LEAD, [CO])
    with pytest.raises(RuleBroken):
        domain.ensure_members(2021, members, OTHER, [])
    with pytest.raises(RuleBroken):
        domain.ensure_members(2021, members, LEAD, [OTHER])
    with pytest.raises(Invalid):
        domain.ensure_members(2021, members, LEAD, [LEAD])


def test_overdue_is_told_once_per_deadline_in_china_dates():
    t = task(deadline=date(2021, 6, 30))
    assert domain.overdue_days(t, date(2021, 6, 30)) is None  # the deadline day itself is on time
    assert domain.overdue_days(t, date(2021, 7, 2)) == 2
    assert domain.overdue_days(replace(t, overdue_for=date(2021, 6, 30)), date(2021, 7, 9)) is None
    # a new deadline is a new stage
    moved = replace(t, overdue_for=date(2021, 6, 30), deadline=date(2021, 7, 5))
    assert domain.overdue_days(moved, date(2021, 7, 9)) == 4
    assert domain.overdue_days(replace(t, status=TaskStatus.completed), date(2021, 9, 1)) is None


def test_progress_reminder_once_per_quiet_spell_and_not_once_overdue():
    quiet = timedelta(days=30)
    t = task(deadline=date(2021, 12, 31))
    assert domain.silent_days(t, T0 + timedelta(days=29), quiet) is None
    assert domain.silent_days(t, T0 + timedelta(days=31), quiet) == 31
    assert domain.silent_days(replace(t, progress_due_for=T0), T0 + timedelta(days=40), quiet) is None
    reported = replace(t, progress_due_for=T0, last_report_at=T0 + timedelta(days=35))
    assert domain.silent_days(reported, T0 + timedelta(days=70), quiet) == 35
    assert domain.silent_days(replace(t, deadline=date(2021, 3, 15)), T0 + timedelta(days=31), quiet) is None
    assert domain.silent_days(replace(t, status=TaskStatus.completion_reported), T0 + timedelta(days=60), quiet) is None


def test_document_numbers_look_like_official_ones():
    for ok in ("宁人社发〔2021〕12号", "宁总工发[2020]3号", "宁教办【2021】101号"):
        domain.check_doc_number(ok)
    for bad in ("12号", "宁人社发2021-12", "宁人社发〔21〕12号", "=cmd|' /C calc'!A0"):
        with pytest.raises(Invalid):
            domain.check_doc_number(bad)


def test_pilot_regions_fit_their_kind():
    domain.check_pilot_region(PilotKind.city, "640100")
    domain.check_pilot_region(PilotKind.county, "640104")
    domain.check_pilot_region(PilotKind.enterprise, "640104")
    with pytest.raises(Invalid):
        domain.check_pilot_region(PilotKind.city, "640104")
    with pytest.raises(Invalid):
        domain.check_pilot_region(PilotKind.county, "640100")
    with pytest.raises(Invalid):
        domain.check_city("640104")


def test_liaison_phone_is_normalised_and_bad_ones_refused():
    assert (
        domain.UnitIn(name="自治区人社厅", kind="government", liaison_phone="+86 139-1234-5678").liaison_phone
        == "13912345678"
    )
    with pytest.raises(ValidationError):
        domain.UnitIn(name="自治区人社厅", kind="government", liaison_phone="12345")
    with pytest.raises(ValidationError):
        domain.TaskIn(year=2021, number=1, title="x", lead_unit_id=LEAD, deadline="2021-06-30", surprise=1)
