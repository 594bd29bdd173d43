"""Every list of every service pages the same way (issue 14): ``limit``, an opaque ``cursor``, and the answer
``{"items": [...], "next_cursor": ...}`` (``shared.pagination``). Read from each API's OpenAPI, no server."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import pytest
from fastapi import FastAPI

SERVICES = ("funding", "intake", "membership", "notifier", "reform", "training")

# A bare JSON array is allowed only for a fixed set that no data can grow; each says why.
FIXED_SETS = {
    ("training", "/v1/reference/industries"): "the nine key industries (九大重点产业), a constant of the code",
}


@cache
def openapi(service: str) -> dict[str, Any]:
    app = FastAPI()
    app.include_router(importlib.import_module(f"services.{service}.api").router)
    return app.openapi()


def answer(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a GET's 200 answer, its ``$ref`` resolved (empty when it answers no JSON)."""
    schema = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
    schema = schema.get("schema", {})
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def gets(service: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    doc = openapi(service)
    return [(path, op, answer(doc, op)) for path, ops in doc["paths"].items() if (op := ops.get("get"))]


def is_page(schema: dict[str, Any]) -> bool:
    return {"items", "next_cursor"} <= set(schema.get("properties", {}))


@pytest.mark.parametrize("service", SERVICES)
def test_no_list_answers_a_bare_array(service: str):
    bare = [path for path, _, schema in gets(service) if schema.get("type") == "array"]
    assert [p for p in bare if (service, p) not in FIXED_SETS] == [], f"{service}: lists without a page"


@pytest.mark.parametrize("service", SERVICES)
def test_every_page_takes_limit_and_cursor(service: str):
    pages = [(path, op) for path, op, schema in gets(service) if is_page(schema)]
    assert pages, f"{service}: no paginated list found"
    for path, op in pages:
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        assert {"limit", "cursor"} <= params, (service, path, params)
        assert not params & {"offset", "page", "after", "page_size"}, (service, path, params)


def test_the_competition_participants_page():
    answers = {path: schema for path, _, schema in gets("training")}
    for path in ("/v1/competitions/{competition_id}/participants", "/v1/competitions/{competition_id}/headcounts"):
        assert is_page(answers[path]), path


def test_the_check_sees_a_bare_array():
    # The detector must recognise the shape it forbids, or the first test proves nothing.
    answers = {path: schema for path, _, schema in gets("training")}
    assert answers["/v1/reference/industries"]["type"] == "array"
