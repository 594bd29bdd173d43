"""The event registry: every event type is a pydantic model registered here.

A model is declared once, in ``shared/events/<service>.py``::

    @event("changai.membership.branch.established.v1", subject="branch_id")
    class BranchEstablished(EventData):
        branch_id: UUID
        ...

The type name gives the topic (``membership.events``) and the source
(``/changai/membership``); ``subject`` names the field holding the aggregate id,
which is also the record key, so one aggregate's events stay in order.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

TYPE_PATTERN = re.compile(
    r"^changai\.(?P<service>[a-z]+)\.(?P<aggregate>[a-z_]+)\.(?P<verb>[a-z_]+)\.v(?P<version>\d+)$"
)
SCHEMA_BASE = "https://changai.example/schemas/"


class EventData(BaseModel):
    """Base of every event payload: strict, immutable, no raw personal data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    topic: ClassVar[str]
    source: ClassVar[str]
    subject_field: ClassVar[str]

    def subject(self) -> str:
        return str(getattr(self, self.subject_field))

    @classmethod
    def dataschema(cls) -> str:
        return f"{SCHEMA_BASE}{cls.event_type}.json"


REGISTRY: dict[str, type[EventData]] = {}
E = TypeVar("E", bound=EventData)


def event(event_type: str, *, subject: str):
    match = TYPE_PATTERN.match(event_type)
    if not match:
        raise ValueError(f"event type {event_type!r} must look like changai.<service>.<aggregate>.<verb>.v<N>")

    def register(cls: type[E]) -> type[E]:
        if event_type in REGISTRY:
            raise ValueError(f"event type {event_type} registered twice")
        if subject not in cls.model_fields:
            raise ValueError(f"{cls.__name__} has no subject field {subject!r}")
        cls.event_type = event_type
        cls.topic = f"{match['service']}.events"
        cls.source = f"/changai/{match['service']}"
        cls.subject_field = subject
        REGISTRY[event_type] = cls
        return cls

    return register


def json_schema(cls: type[EventData]) -> dict[str, Any]:
    schema = cls.model_json_schema()
    schema["$id"] = cls.dataschema()
    schema["title"] = cls.event_type
    return schema
