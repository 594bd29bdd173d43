"""Every write body of every API, sent wrong JSON types and odd strings: refused as a validation error (which
the API answers 422), never another exception (which it answers 500).

FastAPI validates a body with its pydantic type; a ``ValidationError`` becomes the 422 problem
(``shared.http``), anything else a validator raises (a ``TypeError`` on a null, an ``OverflowError`` of a
huge number in a string) escapes as a 500. So each route's body type (walked from the routers, as FastAPI
sees them) is given, at every field it has (nested objects and list items too), each value of ``WRONG``;
the models with a model validator are also given a valid body with each field replaced, so their
validator runs on the odd values too (a partial body stops at the missing fields). No I/O: the bodies never
reach a route. Found so far: notifier's quiet hours ("99999999999999999999:00", OverflowError)."""
from __future__ import annotations

import importlib
import typing
from collections.abc import Iterator

from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError

SERVICES = ["membership", "training", "funding", "intake", "notifier", "reform"]
HUGE = "9" * 25
WRONG: list = [
    None, True, False, 0, -1, 1.5, 10**30, -(10**30), "", " ", "x", "\u0000", "\ud800", "٢٢", "２２",
    HUGE, "-" + HUGE, f"{HUGE}:00", f"{HUGE}-01-01", "1e309", "NaN", "Infinity", "0x10", "2024-02-30",
    "9999-12-31", "0001-01-01", "24:00", "99:99", [], [None], ["x"], [[]], [{}], {}, {"x": 1},
]
# A valid body of each model with a model validator: with one field replaced, the validator still runs.
BASES: dict[str, dict] = {
    "SessionIn": {"programme_id": "6f1c1f34-54a1-4c63-9f0e-2b7d3c0a9e11", "organiser_kind": "enterprise",
                  "organiser_id": "91350100M000100Y43", "organiser_name": "宁夏某公司", "region_code": "640104",
                  "starts_on": "2024-04-01", "ends_on": "2024-04-20", "capacity": 10},
    "CompetitionIn": {"name": "枸杞加工技能竞赛", "kind": "skills", "tier": "city", "industry": "C",
                      "region_code": "640100", "starts_on": "2024-04-01", "ends_on": "2024-04-20"},
    "ParticipantsIn": {"branch_id": "6f1c1f34-54a1-4c63-9f0e-2b7d3c0a9e11", "headcount": 3},
    "BranchPatch": {"name": "测试工会"},
    "SourcePatch": {"name": "HR system"},
    "Owner": {"region_code": "640104"},
    "QuietHours": {"start": "22:00", "end": "08:00"},
}


def routes(items) -> Iterator[APIRoute]:
    """The routes of a router, through the routers it includes."""
    for route in items:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def write_bodies() -> Iterator[tuple[str, str, object]]:
    """(service, "METHOD path", body type) of every route that takes a JSON body."""
    for service in SERVICES:
        api = importlib.import_module(f"services.{service}.api")
        for route in routes(api.router.routes):
            for param in route.dependant.body_params:
                yield service, f"{'/'.join(sorted(route.methods))} {route.path}", param.field_info.annotation


def models_in(tp, seen: set) -> Iterator[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
        seen.add(tp)
        yield tp
        for field in tp.model_fields.values():
            yield from models_in(field.annotation, seen)
    for arg in typing.get_args(tp):
        yield from models_in(arg, seen)


def wrong_at_every_field(schema: dict, defs: dict, depth: int = 0) -> Iterator:
    """Partial bodies with a value of ``WRONG`` at every field the schema reaches (objects, list items)."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    for option in [schema, *schema.get("anyOf", []), *schema.get("allOf", [])]:
        if "$ref" in option:
            option = defs[option["$ref"].rsplit("/", 1)[-1]]
        if depth < 3 and option.get("type") == "array":
            yield from ([body] for body in wrong_at_every_field(option.get("items", {}), defs, depth + 1))
        for name, sub in option.get("properties", {}).items():
            yield from ({name: value} for value in WRONG)
            if depth < 3:
                yield from ({name: body} for body in wrong_at_every_field(sub, defs, depth + 1))


def escapes(adapter: TypeAdapter, body) -> str | None:
    """The exception other than a validation error that validating ``body`` raises, if any."""
    try:
        adapter.validate_python(body)
    except ValidationError:
        return None
    except Exception as exc:  # noqa: BLE001 - any other exception is what this test looks for
        return repr(exc)
    return None


def test_wrong_types_and_odd_strings_in_every_write_body_are_validation_errors():
    escaped, tried, operations = [], 0, 0
    for service, operation, body_type in write_bodies():
        operations += 1
        adapter = TypeAdapter(body_type)
        schema = adapter.json_schema()
        for body in [*WRONG, *wrong_at_every_field(schema, schema.get("$defs", {}))]:
            tried += 1
            if (problem := escapes(adapter, body)) is not None:
                escaped.append((service, operation, body, problem))
    assert operations >= 60, operations  # the walk found the APIs' write routes
    assert not escaped, escaped[:20]
    print(f"{operations} write bodies, {tried} bodies tried")


def test_every_model_validator_of_a_write_body_meets_wrong_values_in_a_valid_body():
    seen: set = set()
    models = [m for _, _, tp in write_bodies() for m in models_in(tp, seen)
              if m.__pydantic_decorators__.model_validators]
    assert {m.__name__ for m in models} <= set(BASES), "give the new model validator's model a valid body in BASES"
    escaped = []
    for model in models:
        base = BASES[model.__name__]
        model.model_validate(base)  # the base is valid: replaced fields below reach the model validator
        for name in model.model_fields:
            for value in WRONG:
                if (problem := escapes(TypeAdapter(model), {**base, name: value})) is not None:
                    escaped.append((model.__name__, name, value, problem))
    assert not escaped, escaped[:20]
