"""Every API, centrally (shared.http + shared.boundary): hostile inputs are 4xx problems, bodies have a
limit, a JSON route wants JSON, every 401 carries its challenge, the OpenAPI documents the bearer
scheme and the problem answers, and /docs needs no CDN. The services get all of it from create_app."""
import asyncio
import re

import asyncpg
import pytest
from fastapi import APIRouter, Depends, Query, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.auth import Principal, mint_token, require
from shared.boundary import database_unavailable, value_refused
from shared.http import body_limit, create_app
from shared.money import Yuan
from shared.settings import Settings

router = APIRouter(prefix="/v1")


class Note(BaseModel):
    text: str
    count: int
    tags: list[str] = []
    ratio: float = 0.0


@router.post("/notes/{note_id}", status_code=201)
async def put_note(note_id: int, body: Note, offset: int = Query(0),
                   principal: Principal = Depends(require("notes:write"))):
    return {"id": note_id, "count": body.count}


@router.get("/notes")
async def list_notes(offset: int = Query(0), ids: list[int] = Query([]), q: str | None = None,
                     principal: Principal = Depends(require("notes:read"))):
    return {"offset": offset, "ids": ids, "q": q}


@router.get("/public")
async def public(code: str | None = None):
    return {"code": code}


@router.post("/uploads", status_code=201)
@body_limit(None)
async def upload(request: Request, principal: Principal = Depends(require("notes:write"))):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"bytes": size}


@router.post("/small", status_code=201)
@body_limit(100)
async def small(body: Note, principal: Principal = Depends(require("notes:write"))):
    return {}


class Payment(BaseModel):
    amount: Yuan


@router.post("/payments", status_code=201)
async def pay(body: Payment, principal: Principal = Depends(require("notes:write"))):
    return {"fen": body.amount}


@router.get("/calendar/{days}")
async def far_ahead(days: int):
    import datetime

    return {"day": str(datetime.date(2024, 1, 1) + datetime.timedelta(days=days))}


@router.delete("/notes/{note_id}", status_code=204)
async def delete_note(note_id: int, body: Note, principal: Principal = Depends(require("notes:write"))):
    return None


LIMIT = 4096


@pytest.fixture(scope="module")
def client():
    app = create_app(service="unit", settings=Settings(http_max_body_bytes=LIMIT), routers=[router], title="t",
                     with_database=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


WRITE = {"Authorization": "Bearer " + mint_token("tester", ["notes:write", "notes:read"])}


def problem(resp, status, kind):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["status"] == status and body["type"].endswith("/" + kind), body
    return body


def refused_field(resp, field):
    body = problem(resp, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == [field], body
    return body


# -- NUL and 64 bits, in every place an input comes from ------------------------------------
@pytest.mark.parametrize("payload, field", [
    ({"text": "a\u0000b", "count": 1}, "text"),
    ({"text": "a", "count": 1, "tags": ["ok", "x\u0000"]}, "tags.1"),
    ({"text": "a", "count": 1, "\u0000": 1}, "<body>"),
    ({"text": "a", "count": 99999999999999999999}, "count"),
    ({"text": "a", "count": -9223372036854775809}, "count"),
])
def test_nul_and_huge_integers_in_the_json_body_are_422(client, payload, field):
    resp = client.post("/v1/notes/1", json=payload, headers=WRITE)
    body = refused_field(resp, field)
    assert "99999999999999999999" not in resp.text and "\u0000" not in body["detail"]


def test_lone_surrogates_are_422_and_real_pairs_pass(client):
    raw = b'{"text": "a\\ud800b", "count": 1}'
    refused_field(client.post("/v1/notes/1", content=raw, headers={**WRITE, "content-type": "application/json"}),
                  "text")
    refused_field(client.post("/v1/notes/1", content=b'{"text": "a", "count": 1, "\\udfff": 1}',
                              headers={**WRITE, "content-type": "application/json"}), "<body>")
    emoji = b'{"text": "\\ud83d\\ude00 \xe5\xb7\xa5\xe4\xbc\x9a", "count": 1}'
    assert client.post("/v1/notes/1", content=emoji, headers={**WRITE, "content-type": "application/json"}
                       ).status_code == 201


def test_arithmetic_overflow_on_a_value_is_422_not_500(client):
    assert client.get("/v1/calendar/10").json() == {"day": "2024-01-11"}
    problem(client.get("/v1/calendar/99999999"), 422, "validation-error")


def test_non_finite_numbers_are_422(client):
    for raw in (b'{"text":"a","count":1,"ratio":NaN}', b'{"text":"a","count":1,"ratio":1e999}'):
        refused_field(client.post("/v1/notes/1", content=raw, headers={**WRITE, "content-type": "application/json"}),
                      "ratio")


def test_the_64_bit_edges_still_pass(client):
    for n in (9223372036854775807, -9223372036854775808):
        resp = client.post("/v1/notes/1", json={"text": "a\\u0000 is only text", "count": n}, headers=WRITE)
        assert resp.status_code == 201 and resp.json()["count"] == n, resp.text


@pytest.mark.parametrize("url, field", [
    ("/v1/notes?offset=99999999999999999999", "offset"),
    ("/v1/notes?offset=%2099999999999999999999%20", "offset"),
    ("/v1/notes?offset=9_999_999_999_999_999_999", "offset"),
    ("/v1/notes?ids=1&ids=99999999999999999999", "ids"),
    ("/v1/notes?q=a%00b", "q"),
])
def test_query_parameters(client, url, field):
    refused_field(client.get(url, headers=WRITE), field)


def test_path_parameters(client):
    refused_field(client.post("/v1/notes/99999999999999999999", json={"text": "a", "count": 1}, headers=WRITE),
                  "note_id")
    refused_field(client.post("/v1/notes/1?offset=-99999999999999999999", json={"text": "a", "count": 1},
                              headers=WRITE), "offset")
    refused_field(client.get("/v1/public?code=%00"), "code")


def test_a_string_query_parameter_may_hold_a_long_number(client):
    assert client.get("/v1/public?code=99999999999999999999").json() == {"code": "99999999999999999999"}
    assert client.get("/v1/notes?offset=7", headers=WRITE).json()["offset"] == 7


@pytest.mark.parametrize("amount", ["800.00\n", " 800.00", "800.00 ", "８００.００", "800.001", "-1.00", "1e3", 800])
def test_amounts_take_only_plain_decimal_strings(client, amount):
    refused_field(client.post("/v1/payments", json={"amount": amount}, headers=WRITE), "amount")


def test_a_plain_amount_is_fen(client):
    assert client.post("/v1/payments", json={"amount": "800.00"}, headers=WRITE).json() == {"fen": 80000}


# -- media type and body size ------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv", None])
def test_a_json_route_refuses_other_media_types_with_415(client, content_type):
    headers = {**WRITE, "content-type": content_type} if content_type else {**WRITE, "content-type": ""}
    problem(client.post("/v1/notes/1", content=b'{"text":"a","count":1}', headers=headers),
            415, "unsupported-media-type")


def test_json_with_a_charset_or_a_json_suffix_is_json(client):
    for ct in ("application/json; charset=utf-8", "application/merge-patch+json"):
        resp = client.post("/v1/notes/1", content=b'{"text":"a","count":1}', headers={**WRITE, "content-type": ct})
        assert resp.status_code == 201, resp.text


def test_a_body_over_the_default_limit_is_413(client):
    big = {"text": "a" * LIMIT, "count": 1}
    body = problem(client.post("/v1/notes/1", json=big, headers=WRITE), 413, "content-too-large")
    assert str(LIMIT) in body["detail"]


def test_a_chunked_body_over_the_limit_is_413_too(client):
    def chunks():  # no Content-Length: the bytes are counted as they come
        yield b'{"text": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'", "count": 1}'

    problem(client.post("/v1/notes/1", content=chunks(), headers={**WRITE, "content-type": "application/json"}),
            413, "content-too-large")


def test_a_route_declares_its_own_limit_or_none(client):
    problem(client.post("/v1/small", json={"text": "a" * 200, "count": 1}, headers=WRITE), 413, "content-too-large")
    resp = client.post("/v1/uploads", content=b"x" * (LIMIT * 50), headers=WRITE)
    assert resp.status_code == 201 and resp.json() == {"bytes": LIMIT * 50}


# -- 401 challenge -----------------------------------------------------------------------------
def test_every_401_carries_the_bearer_challenge(client):
    missing = client.get("/v1/notes")
    problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "error=" not in missing.headers["www-authenticate"]
    other_key = Settings(jwt_secret="another-secret-of-at-least-32-bytes!")
    for token in ("abc.def.ghi", mint_token("x", ["notes:read"], ttl_s=-10),
                  mint_token("x", ["notes:read"], settings=other_key)):
        bad = client.get("/v1/notes", headers={"Authorization": f"Bearer {token}"})
        problem(bad, 401, "unauthorized")
        assert re.match(r'Bearer realm="changai", error="invalid_token", error_description="[ -~]*"$',
                        bad.headers["www-authenticate"]), bad.headers["www-authenticate"]
    scoped = client.get("/v1/notes", headers={"Authorization": "Bearer " + mint_token("x", ["other:read"])})
    problem(scoped, 403, "insufficient-scope")
    assert 'error="insufficient_scope"' in scoped.headers["www-authenticate"]


# -- OpenAPI and docs ---------------------------------------------------------------------------
def test_openapi_documents_bearer_and_problem_answers(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert set(spec["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    post = spec["paths"]["/v1/notes/{note_id}"]["post"]
    assert post["security"] == [{"bearerAuth": []}]
    for code in ("400", "401", "403", "404", "409", "413", "415", "422", "503"):
        assert post["responses"][code]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, code
    assert "WWW-Authenticate" in post["responses"]["401"]["headers"]
    assert "Retry-After" in post["responses"]["503"]["headers"]
    get = spec["paths"]["/v1/notes"]["get"]
    assert "413" not in get["responses"] and "401" in get["responses"]
    assert {"413", "415"} <= set(spec["paths"]["/v1/notes/{note_id}"]["delete"]["responses"])
    public_get = spec["paths"]["/v1/public"]["get"]
    assert "security" not in public_get and "401" not in public_get["responses"]


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert urls and all(u.startswith("/") for u in urls), urls
    assert "cdn" not in page.text.lower()
    for url in urls:
        if url.startswith("/docs/assets/"):
            assert client.get(url).status_code == 200, url
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(("text/javascript",
                                                                                             "application/javascript"))
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "cdn" not in redoc.text.lower() and "fonts.googleapis" not in redoc.text


def test_docs_can_be_turned_off():
    app = create_app(service="unit", settings=Settings(http_docs=False), routers=[], title="t", with_database=False)
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404


# -- what the database says, classified -----------------------------------------------------------
def test_database_outages_are_told_from_bugs():
    for exc in (asyncpg.CannotConnectNowError("the database system is shutting down"),
                asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
                asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
                asyncpg.InterfaceError("connection is closed"),
                asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")):
        assert database_unavailable(exc), exc
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = asyncpg.CannotConnectNowError("the database system is starting up")
    assert database_unavailable(wrapped)
    for exc in (asyncpg.UniqueViolationError("duplicate"), asyncpg.InterfaceError("another operation is in progress"),
                ConnectionRefusedError("not the database"), RuntimeError("bug")):
        assert not database_unavailable(exc), exc


async def test_a_refused_connect_raised_inside_asyncpg_is_an_outage():
    import socket

    with socket.socket() as s:  # a port that refuses: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(OSError) as err:
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)
    assert database_unavailable(err.value)
    with pytest.raises(asyncio.TimeoutError) as err:  # a timeout not raised in asyncpg is not an outage
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
    assert not database_unavailable(err.value)


def test_values_the_database_refuses_are_recognised():
    assert value_refused(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence: 0x00"))
    assert value_refused(asyncpg.exceptions.NumericValueOutOfRangeError("integer out of range"))
    assert value_refused(asyncpg.exceptions.DataError("value out of int64 range"))
    assert value_refused(asyncpg.UniqueViolationError("duplicate")) is None
