"""Events of the training service (topic ``training.events``)."""
from __future__ import annotations

from shared.events.base import EventData, event  # noqa: F401
