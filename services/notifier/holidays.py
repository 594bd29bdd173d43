"""China's working calendar for quiet hours: public holidays off, weekend days made workdays (调休) on.

The ``chinese-calendar`` package knows the years published when it was released (to 2026 for the
version installed). The State Council publishes each next year's schedule in November or
December; operators load it as data, without a release: one file per year in
``CHANGAI_NOTIFIER_HOLIDAYS_DIR`` (a ConfigMap in Kubernetes), YAML or JSON::

    # 2027.yaml
    year: 2027
    holidays:                 # days off: single days or ranges
      - 2027-01-01
      - {from: 2027-02-06, to: 2027-02-12, name: 春节}
    workdays:                 # weekend days that are working days (调休)
      - 2027-02-20

A file overrides the package for its year (a correction wins). The directory is read again when
it changes (checked at most once a minute), so a new year needs no restart. A year known to
neither falls back to Monday–Friday, logged once per year and process, and the gauge
``changai_notifier_holiday_calendar_known{year,which}`` (which = current | next) reads 0: the
alert ``ChangaiNotifierHolidayCalendarMissing`` fires from 1 December while the coming year is
unknown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

log = logging.getLogger(__name__)


class CalendarFileError(ValueError):
    """A schedule file that cannot be used (named in the message)."""


@dataclass
class YearSchedule:
    year: int
    holidays: set[date] = field(default_factory=set)
    workdays: set[date] = field(default_factory=set)
    source: str = ""


def _day(value, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CalendarFileError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _days(items, where: str) -> set[date]:
    out: set[date] = set()
    for i, item in enumerate(items or []):
        if isinstance(item, dict):
            first, last = _day(item.get("from"), f"{where}[{i}].from"), _day(item.get("to"), f"{where}[{i}].to")
            if last < first or (last - first).days > 31:
                raise CalendarFileError(f"{where}[{i}]: a range runs forward and within 31 days")
            out.update(first + timedelta(days=n) for n in range((last - first).days + 1))
        else:
            out.add(_day(item, f"{where}[{i}]"))
    return out


def parse(text: str, name: str) -> YearSchedule:
    """A schedule from a YAML or JSON document (JSON is YAML too, but say which failed)."""
    try:
        if name.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - a broken file is reported, never fatal
        raise CalendarFileError(f"{name}: not valid {'JSON' if name.endswith('.json') else 'YAML'} ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("year"), int):
        raise CalendarFileError(f"{name}: needs 'year' (a number) and lists 'holidays' / 'workdays'")
    year = data["year"]
    schedule = YearSchedule(
        year,
        _days(data.get("holidays"), f"{name}: holidays"),
        _days(data.get("workdays"), f"{name}: workdays"),
        source=name,
    )
    stray = sorted(d for d in schedule.holidays | schedule.workdays if d.year != year)
    if stray:
        raise CalendarFileError(f"{name}: {stray[0]} is not in {year}")
    both = schedule.holidays & schedule.workdays
    if both:
        raise CalendarFileError(f"{name}: {min(both)} is listed as a holiday and a workday")
    if not schedule.holidays:
        raise CalendarFileError(f"{name}: no holidays listed")
    return schedule


def _package_knows(year: int) -> bool:
    try:
        import chinese_calendar

        chinese_calendar.is_workday(date(year, 6, 1))
        return True
    except (ImportError, NotImplementedError):
        return False


class Calendar:
    def __init__(self, directory: str | os.PathLike | None = None, *, recheck_s: float = 60.0):
        self.directory = Path(directory) if directory else None
        self.recheck_s = recheck_s
        self.years: dict[int, YearSchedule] = {}
        self.errors: list[str] = []
        self._seen: tuple | None = None
        self._checked = 0.0
        self._warned: set[int] = set()
        self._lock = threading.Lock()
        self.reload()

    # -- loading -----------------------------------------------------------------------
    def _listing(self) -> tuple:
        if not self.directory or not self.directory.is_dir():
            return ()
        return tuple(
            sorted(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in self.directory.iterdir()
                if p.suffix in (".yaml", ".yml", ".json")
            )
        )

    def reload(self) -> None:
        listing = self._listing()
        years: dict[int, YearSchedule] = {}
        errors: list[str] = []
        for name, *_ in listing:
            try:
                schedule = parse((self.directory / name).read_text(encoding="utf-8"), name)
            except (OSError, CalendarFileError) as exc:
                errors.append(str(exc))
                continue
            if schedule.year in years:
                errors.append(f"{name}: {schedule.year} is also in {years[schedule.year].source}")
                continue
            years[schedule.year] = schedule
        for message in errors:
            if message not in self.errors:
                log.error("holiday schedule file not used: %s", message)
        self.years, self.errors, self._seen = years, errors, listing
        if years:
            log.info("holiday schedules loaded", extra={"years": sorted(years)})

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            if self._listing() != self._seen:
                self.reload()

    # -- questions -----------------------------------------------------------------------
    def source(self, year: int) -> str | None:
        """Where ``year``'s schedule comes from: the file's name, ``chinese-calendar``, or None."""
        self._maybe_reload()
        if year in self.years:
            return self.years[year].source
        return "chinese-calendar" if _package_knows(year) else None

    def known(self, year: int) -> bool:
        return self.source(year) is not None

    def is_workday(self, day: date) -> bool:
        self._maybe_reload()
        schedule = self.years.get(day.year)
        if schedule is not None:
            if day in schedule.holidays:
                return False
            if day in schedule.workdays:
                return True
            return day.weekday() < 5
        try:
            import chinese_calendar

            return chinese_calendar.is_workday(day)
        except (ImportError, NotImplementedError):
            if day.year not in self._warned:
                self._warned.add(day.year)
                log.warning(
                    "no holiday schedule for %s: quiet hours treat Monday to Friday as working days "
                    "(load the year's schedule into CHANGAI_NOTIFIER_HOLIDAYS_DIR)",
                    day.year,
                )
            return day.weekday() < 5


_default: Calendar | None = None


def default() -> Calendar:
    """The process's calendar, from the notifier's settings (created on first use)."""
    global _default
    if _default is None:
        from services.notifier.settings import NotifierSettings

        _default = Calendar(NotifierSettings().notifier_holidays_dir)
    return _default


def use(calendar: Calendar | None) -> None:
    """Replace the process's calendar (tests; a directory given at start-up)."""
    global _default
    _default = calendar


def is_workday(day: date) -> bool:
    return default().is_workday(day)


class _KnownCollector:
    """``changai_notifier_holiday_calendar_known{year,which}``: 1 when this year's and next year's
    schedules are known, computed at each scrape (Asia/Shanghai date)."""

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from shared.clock import today_cn

        metric = GaugeMetricFamily(
            "changai_notifier_holiday_calendar_known",
            "Whether the holiday / 调休 schedule of a year is known (1) or quiet hours fall back to Monday-Friday (0)",
            labels=["year", "which"],
        )
        this_year = today_cn().year
        calendar = default()
        for year, which in ((this_year, "current"), (this_year + 1, "next")):
            metric.add_metric([str(year), which], 1.0 if calendar.known(year) else 0.0)
        yield metric


def _register() -> None:
    """Once per process (a module runs once; tests that reload it would not re-register)."""
    from prometheus_client import REGISTRY

    with contextlib.suppress(ValueError):  # already registered
        REGISTRY.register(_KnownCollector())


_register()
