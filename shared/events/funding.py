"""Events of the funding service (topic ``funding.events``)."""
from __future__ import annotations

from shared.events.base import EventData, event  # noqa: F401
