import json
import uuid
from datetime import date

import orjson
import pytest
from pydantic import ValidationError

import shared.events as events
from shared.events import catalog
from shared.events.base import EventData, event
from shared.events.membership import BranchEstablished


def branch_event(**over):
    fields = dict(branch_id=uuid.uuid4(), name="宁夏某某公司工会", credit_code="91640100MA76H5BT9B",
                  region_code="640104", city_code="640100", industry_section="C", kind="enterprise",
                  founded_on=date(2021, 3, 1))
    fields.update(over)
    return BranchEstablished(**fields)


def test_envelope_is_structured_cloudevent_keyed_by_aggregate():
    data = branch_event()
    ce = events.envelope(data, trace_id="a" * 32)
    key, value, headers = events.encode(ce)
    body = orjson.loads(value)
    assert body["specversion"] == "1.0"
    assert body["type"] == "changai.membership.branch.established.v1"
    assert body["source"] == "/changai/membership"
    assert body["subject"] == body["partitionkey"] == str(data.branch_id) == key.decode()
    assert body["traceparent"].startswith("00-" + "a" * 32 + "-")
    assert body["dataschema"].endswith("changai.membership.branch.established.v1.json")
    assert uuid.UUID(body["id"])
    assert dict(headers)["content-type"] == b"application/cloudevents+json; charset=utf-8"


def test_decode_roundtrip_and_typed_data():
    data = branch_event()
    _, value, _ = events.encode(events.envelope(data))
    assert events.parse_data(events.decode(value)) == data


@pytest.mark.parametrize("value", [b"", b"not json", b"[1,2]", b'{"id": "x"}'])
def test_decode_refuses_non_cloudevents(value):
    with pytest.raises(events.InvalidEvent):
        events.decode(value)


def test_invalid_data_for_known_type_is_invalid_event():
    ce = events.envelope(branch_event())
    ce.data["region_code"] = "110000"  # not Ningxia
    with pytest.raises(events.InvalidEvent, match="region_code"):
        events.parse_data(ce)


def test_unknown_type_is_reported_apart_from_invalid():
    ce = events.envelope(branch_event())
    ce.type = "changai.membership.branch.renamed.v9"
    with pytest.raises(events.UnknownEventType):
        events.parse_data(ce)


def test_event_data_is_strict():
    with pytest.raises(ValidationError):
        branch_event(unexpected="x")


def test_registry_rejects_bad_names_and_duplicates():
    with pytest.raises(ValueError):
        event("membership.branch.made", subject="x")
    with pytest.raises(ValueError, match="twice"):
        @event("changai.membership.branch.established.v1", subject="branch_id")
        class Again(EventData):
            branch_id: uuid.UUID


def test_every_registered_type_routes_to_a_declared_topic():
    from shared.topics import BY_NAME
    for name, cls in events.REGISTRY.items():
        assert cls.topic in BY_NAME, name
        assert cls.source == "/changai/" + name.split(".")[1]


def test_published_schemas_match_snapshots():
    """Change a schema only compatibly, then run `python -m shared.events.catalog --write`."""
    for name, schema in catalog.schemas().items():
        path = catalog.SCHEMA_DIR / f"{name}.json"
        assert path.exists(), f"no committed schema for {name}: run python -m shared.events.catalog --write"
        committed = json.loads(path.read_text())
        assert not catalog.breaking_changes(committed, schema), name
        assert catalog.render_schema(schema) == path.read_text(), f"{name} differs from its snapshot"
    assert catalog.ASYNCAPI.read_text() == catalog.render_asyncapi()


def test_breaking_change_detection():
    old = {"properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}
    assert catalog.breaking_changes(old, old) == []
    assert catalog.breaking_changes(old, {"properties": {"a": {"type": "string"}}, "required": ["a"]})
    assert catalog.breaking_changes(old, {"properties": old["properties"], "required": ["a", "b"]})
    widened = {"properties": {**old["properties"], "c": {"type": "string"}}, "required": ["a"]}
    assert catalog.breaking_changes(old, widened) == []


def test_events_carry_no_personal_data_fields():
    forbidden = {"id_number", "resident_id", "phone", "mobile"}
    for name, cls in events.REGISTRY.items():
        assert not forbidden & set(cls.model_fields), name
