"""Events of the notifier service (topic ``notifier.events``)."""
from __future__ import annotations

from shared.events.base import EventData, event  # noqa: F401
