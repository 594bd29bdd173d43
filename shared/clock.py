"""Today's date where the federation is: Asia/Shanghai, whatever zone the host runs in.

Containers and Kubernetes nodes run in UTC, so the host's own date there is yesterday's
date to a member who joins before 08:00 Beijing time. Every date that defaults to
"today" comes from here.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

CHINA = ZoneInfo("Asia/Shanghai")


def now_cn() -> datetime:
    """The current time, aware, in China Standard Time."""
    return datetime.now(CHINA)


def today_cn() -> date:
    """Today's date in China (Asia/Shanghai)."""
    return now_cn().date()
