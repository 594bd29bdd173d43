"""Event catalogue: the envelope, the registry and every event type.

Importing this package registers every event type (one module per producing service).
"""

from shared.events import funding, intake, membership, notifier, reform, training  # noqa: F401  (registers the types)
from shared.events.base import REGISTRY, EventData, event, json_schema
from shared.events.envelope import (
    CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    UnknownEventType,
    decode,
    encode,
    encode_value,
    envelope,
    json_time,
    parse_data,
)

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "CloudEvent",
    "EventData",
    "InvalidEvent",
    "UnknownEventType",
    "decode",
    "encode",
    "encode_value",
    "envelope",
    "event",
    "json_schema",
    "json_time",
    "parse_data",
]
