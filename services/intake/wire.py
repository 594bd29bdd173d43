"""CloudEvents as they arrive: the HTTP protocol binding (binary, structured and batch modes) and the Kafka
binding (binary or structured), parsed with the ``cloudevents`` SDK into :class:`domain.Incoming`.

A message that is not a CloudEvent is a refusal (``Invalid``, kind ``not-a-cloudevent``), never a 500;
the SDK's own messages never carry the data, so they may be shown.
"""

from __future__ import annotations

from typing import Any

import orjson
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from services.intake.domain import Incoming
from shared.errors import STATUS, DomainError, Invalid
from shared.problems import Problem

FORMAT = JSONFormat()
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_PARSE_ERRORS = (BaseCloudEventException, ValueError, TypeError, AttributeError, KeyError, UnicodeDecodeError)


def not_a_cloudevent(reason: str) -> Invalid:
    return Invalid("<event>", reason[:300], kind="not-a-cloudevent")


def _incoming(event: Any) -> Incoming:
    if not isinstance(event, SdkEvent):
        raise not_a_cloudevent("only CloudEvents 1.0 are accepted")
    return Incoming(
        id=event.get_id(),
        source=event.get_source(),
        type=event.get_type(),
        time=event.get_time(),
        data=event.get_data(),
        datacontenttype=event.get_datacontenttype(),
    )


def _has_nul(body: bytes) -> bool:
    # PostgreSQL text holds no NUL; refused here rather than failing the transaction
    return b"\\u0000" in body or b"\x00" in body


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def mode(headers) -> str:
    """``batch``, ``structured`` or ``binary`` (any ``ce-specversion`` header), as the binding defines."""
    kind = media_type(headers.get("content-type"))
    if kind == BATCH:
        return "batch"
    if kind == STRUCTURED:
        return "structured"
    if "ce-specversion" in headers:
        return "binary"
    raise Problem(
        415,
        "unsupported-media-type",
        "Send a CloudEvent",
        "binary mode (ce-* headers), application/cloudevents+json or application/cloudevents-batch+json",
    )


def parse_binary(headers: dict[str, str], body: bytes) -> Incoming:
    if _has_nul(body) or any("\x00" in v for v in headers.values()):
        raise not_a_cloudevent("NUL characters are not accepted")
    try:
        return _incoming(ce_http.from_binary(ce_http.HTTPMessage(headers, body), FORMAT, SdkEvent))
    except _PARSE_ERRORS as exc:
        raise not_a_cloudevent(str(exc)) from None


def _structured(raw: Any) -> Incoming:
    if not isinstance(raw, dict):
        raise not_a_cloudevent("a structured CloudEvent is a JSON object")
    try:
        return _incoming(FORMAT.read(SdkEvent, orjson.dumps(raw)))
    except _PARSE_ERRORS as exc:
        raise not_a_cloudevent(str(exc)) from None


def parse_structured(body: bytes) -> Incoming:
    if _has_nul(body):
        raise not_a_cloudevent("NUL characters are not accepted")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise not_a_cloudevent("the body is not JSON") from None
    return _structured(raw)


def parse_batch(body: bytes, max_events: int, max_event_bytes: int) -> list[Incoming | DomainError]:
    """Each element is an event or the refusal of that element; the whole batch is refused (a problem)
    only when it is not a JSON array or has too many events."""
    if _has_nul(body):
        raise Problem(400, "not-a-batch", "The batch is not valid", "NUL characters are not accepted")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "not-a-batch", "The batch is not valid", "the body is not JSON") from None
    if not isinstance(raw, list):
        raise Problem(400, "not-a-batch", "The batch is not valid", "a batch is a JSON array of CloudEvents")
    if len(raw) > max_events:
        raise Problem(413, "too-many-events", "Too many events", f"a batch holds at most {max_events} events")
    items: list[Incoming | DomainError] = []
    for element in raw:
        try:
            if len(orjson.dumps(element)) > max_event_bytes:
                items.append(event_too_large(max_event_bytes))
                continue
            items.append(_structured(element))
        except DomainError as exc:
            items.append(exc)
    return items


class EventTooLarge(DomainError):
    kind = "event-too-large"
    title = "The event is too large"


STATUS[EventTooLarge] = 413  # the one table shared.http maps refusals by


def event_too_large(limit: int) -> EventTooLarge:
    return EventTooLarge(f"an event is at most {limit} bytes")


def parse_kafka(headers: list[tuple[str, bytes]] | None, key: bytes | None, value: bytes | None) -> Incoming:
    """A record of an intake topic: structured (content-type application/cloudevents+json) or binary."""
    hdrs = {k: v for k, v in (headers or [])}
    body = value or b""
    if _has_nul(body):
        raise not_a_cloudevent("NUL characters are not accepted")
    try:
        event = ce_kafka.from_kafka(ce_kafka.KafkaMessage(hdrs, key, body), FORMAT, SdkEvent)
    except _PARSE_ERRORS as exc:
        raise not_a_cloudevent(str(exc)) from None
    return _incoming(event)
