"""Quiet hours after the years chinese-calendar knows: schedules loaded as data, a logged and
measured fallback (issue 15, finding 11)."""
from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest

from services.notifier import domain, holidays

SCHEDULE_2027 = """\
year: 2027
holidays:
  - 2027-01-01
  - {from: 2027-02-06, to: 2027-02-12, name: 春节}
workdays:
  - 2027-02-20   # a Saturday made a working day (调休)
"""


@pytest.fixture
def calendar_dir(tmp_path):
    previous = holidays.default()
    yield tmp_path
    holidays.use(previous)


def test_a_year_nobody_knows_falls_back_to_weekdays_and_says_so_once(calendar_dir, caplog):
    holidays.use(holidays.Calendar(calendar_dir))
    assert not holidays.default().known(2027)
    with caplog.at_level(logging.WARNING, logger="services.notifier.holidays"):
        assert holidays.is_workday(date(2027, 1, 1))  # New Year's Day, a Friday: wrongly a workday, and said
        assert holidays.is_workday(date(2027, 1, 4))
    warnings = [r for r in caplog.records if "no holiday schedule for 2027" in r.getMessage()]
    assert len(warnings) == 1


def test_a_loaded_year_drives_quiet_hours(calendar_dir):
    (calendar_dir / "2027.yaml").write_text(SCHEDULE_2027, encoding="utf-8")
    holidays.use(holidays.Calendar(calendar_dir))
    calendar = holidays.default()
    assert calendar.known(2027) and calendar.source(2027) == "2027.yaml"
    assert not holidays.is_workday(date(2027, 1, 1))
    assert not holidays.is_workday(date(2027, 2, 10))      # Spring Festival range
    assert holidays.is_workday(date(2027, 2, 20))          # 调休 Saturday
    assert not holidays.is_workday(date(2027, 2, 21))      # an ordinary Sunday
    quiet = {"start": "22:00", "end": "08:00", "rest_days": True}
    # 1 Jan 2027, 10:00 in Shanghai: a holiday, then a weekend: held until Monday 4 Jan, 08:00.
    now = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
    assert domain.quiet_until(now, quiet) == datetime(2027, 1, 4, 0, 0, tzinfo=UTC)
    # Saturday 20 Feb 2027 is a working day: 10:00 goes out at once.
    assert domain.quiet_until(datetime(2027, 2, 20, 2, 0, tzinfo=UTC), quiet) is None


def test_the_package_still_answers_for_its_years(calendar_dir):
    holidays.use(holidays.Calendar(calendar_dir))
    assert holidays.default().source(2026) == "chinese-calendar"
    assert not holidays.is_workday(date(2026, 10, 1))


def test_a_new_file_is_picked_up_without_a_restart(calendar_dir):
    holidays.use(holidays.Calendar(calendar_dir, recheck_s=0))
    assert not holidays.default().known(2028)
    (calendar_dir / "2028.json").write_text('{"year": 2028, "holidays": ["2028-01-01"], "workdays": []}')
    assert holidays.default().known(2028) and not holidays.is_workday(date(2028, 1, 1))


@pytest.mark.parametrize("name,text,problem", [
    ("2029.yaml", "year: 2029\nholidays: [2030-01-01]\n", "not in 2029"),
    ("2029.yaml", "year: 2029\nholidays: [2029-01-01]\nworkdays: [2029-01-01]\n", "holiday and a workday"),
    ("2029.yaml", "holidays: [2029-01-01]\n", "needs 'year'"),
    ("2029.yaml", "year: 2029\nholidays: [{from: 2029-02-10, to: 2029-02-01}]\n", "runs forward"),
    ("2029.json", "{not json", "not valid JSON"),
    ("2029.yaml", "year: 2029\nholidays: [tomorrow]\n", "not a date"),
])
def test_a_broken_file_is_reported_and_not_used(calendar_dir, caplog, name, text, problem):
    (calendar_dir / name).write_text(text, encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="services.notifier.holidays"):
        calendar = holidays.Calendar(calendar_dir)
    assert not calendar.known(2029) and any(problem in e for e in calendar.errors)
    assert any(problem in r.getMessage() for r in caplog.records)


def test_the_gauge_says_which_years_are_known(calendar_dir, monkeypatch):
    from prometheus_client import REGISTRY

    monkeypatch.setattr("shared.clock.today_cn", lambda: date(2026, 12, 2))
    holidays.use(holidays.Calendar(calendar_dir))
    assert REGISTRY.get_sample_value("changai_notifier_holiday_calendar_known",
                                     {"year": "2026", "which": "current"}) == 1.0
    assert REGISTRY.get_sample_value("changai_notifier_holiday_calendar_known",
                                     {"year": "2027", "which": "next"}) == 0.0
    (calendar_dir / "2027.yaml").write_text(SCHEDULE_2027, encoding="utf-8")
    holidays.use(holidays.Calendar(calendar_dir))
    assert REGISTRY.get_sample_value("changai_notifier_holiday_calendar_known",
                                     {"year": "2027", "which": "next"}) == 1.0
