"""The intake's checks of one upstream event, and the upstream catalogue's committed schemas."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.intake import domain, wire
from shared.errors import DomainError, status_of
from shared.events import upstream
from shared.events.catalog import breaking_changes
from shared.events.intake import CommandKeys
from shared.identifiers import id_check_char, uscc_check_char

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
FIVE_MIN = timedelta(minutes=5)
SOURCE = domain.Source(uuid.uuid4(), "urn:hr:a", "640104", ("enterprise.hr.employee.hired.v1",), "hr-a", "active")
NUMBER = "64010419900307" + "123"
NUMBER += id_check_char(NUMBER)
CODE = "91640104MA7" + "6BCD12"
CODE += uscc_check_char(CODE)


def hired(**extra):
    return {"employee_ref": "E1", "name": "马春燕", "id_number": NUMBER, "employer_credit_code": CODE,
            "hired_on": "2024-05-01", **extra}


def incoming(**extra) -> domain.Incoming:
    attrs = dict(id="1", source="urn:hr:a", type="enterprise.hr.employee.hired.v1", time=NOW, data=hired())
    return domain.Incoming(**{**attrs, **extra})


def refusal(event: domain.Incoming) -> tuple[int, str]:
    with pytest.raises(DomainError) as caught:
        domain.check_event(event, SOURCE, NOW, FIVE_MIN)
    return status_of(caught.value), caught.value.kind


def test_a_good_event_passes_and_its_command_carries_no_clear_id_number():
    checked = domain.check_event(incoming(), SOURCE, NOW, FIVE_MIN)
    keys = CommandKeys(b"k" * 32)
    intake_id = uuid.uuid4()
    command = domain.to_command(checked, SOURCE, intake_id, keys)
    assert NUMBER not in command.model_dump_json() and "马春燕" not in command.model_dump_json()
    assert keys.open(intake_id, command.sealed)["id_number"] == NUMBER
    assert command.person_key == keys.person_key(NUMBER) and command.region_scope == "640104"


def test_refusals():
    assert refusal(incoming(source="urn:hr:b")) == (403, "forged-source")
    assert refusal(incoming(type="enterprise.hr.employee.left.v1")) == (403, "type-not-registered")
    assert refusal(incoming(type="x.y.v1")) == (422, "unknown-event-type")
    assert refusal(incoming(time=NOW + FIVE_MIN + timedelta(seconds=1))) == (422, "time-in-future")
    assert refusal(incoming(data=[1])) == (422, "schema-mismatch")
    assert refusal(incoming(data=hired(extra_field=1))) == (422, "schema-mismatch")
    assert refusal(incoming(data=hired(employer_credit_code="91640104MA76BCD12X"))) == (422, "schema-mismatch")
    assert refusal(incoming(datacontenttype="text/plain")) == (422, "validation-error")
    domain.check_event(incoming(time=NOW + FIVE_MIN), SOURCE, NOW, FIVE_MIN)  # the bound itself is accepted


def test_a_refused_id_number_is_never_echoed():
    bad = NUMBER[:-1] + ("0" if NUMBER[-1] != "0" else "1")
    with pytest.raises(DomainError) as caught:
        domain.check_event(incoming(data=hired(id_number=bad)), SOURCE, NOW, FIVE_MIN)
    assert bad not in json.dumps(domain.problem_of(caught.value), ensure_ascii=False)


def test_wire_modes_and_malformed_messages():
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "urn:hr:a", "ce-type": "t",
               "content-type": "application/json"}
    event = wire.parse_binary(headers, orjson.dumps({"a": 1}))
    assert (event.id, event.source, event.data) == ("1", "urn:hr:a", {"a": 1})
    assert wire.mode({"content-type": "application/cloudevents-batch+json; charset=utf-8"}) == "batch"
    for bad in (b"nope", b"[]", b'{"specversion": "1.0", "id": "1", "type": "t"}',
                b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": "bad"}',
                b'{"specversion": "1.0", "id": "1", "source": "s\\u0000", "type": "t"}'):
        with pytest.raises(DomainError) as caught:
            wire.parse_structured(bad)
        assert caught.value.kind == "not-a-cloudevent"
    items = wire.parse_batch(orjson.dumps([{"specversion": "1.0", "id": "1", "source": "s", "type": "t"}, 3,
                                           {"big": "x" * 100}]), 500, 80)
    assert isinstance(items[0], domain.Incoming) and isinstance(items[1], DomainError)
    assert status_of(items[2]) == 413


def test_upstream_schemas_match_their_snapshots_and_change_only_compatibly():
    for name, schema in upstream.schemas().items():
        path = upstream.SCHEMA_DIR / f"{name}.json"
        assert path.exists(), f"run python -m shared.events.upstream --write for {name}"
        assert not breaking_changes(json.loads(path.read_text()), schema), name
        assert upstream.render(schema) == path.read_text(), name


def test_every_upstream_type_is_in_the_asyncapi_document_and_on_its_intake_topic():
    from shared.events import catalog
    from shared.events.upstream import TOPIC_OF, UPSTREAM
    from shared.topics import BY_NAME

    doc = catalog.asyncapi()
    for name in UPSTREAM:
        msg = name.replace(".", "_")
        assert doc["components"]["messages"][msg]["payload"]["$ref"].endswith(f"upstream/{name}.json")
        if name in TOPIC_OF:  # also on a Kafka intake topic (every type is accepted over HTTP)
            assert TOPIC_OF[name] in BY_NAME and TOPIC_OF[name].startswith("intake."), name
            assert msg in doc["channels"][TOPIC_OF[name].replace(".", "_")]["messages"]
    assert set(TOPIC_OF) <= set(UPSTREAM)
