"""What every API does to every request before and after its route, so no service has to.

``create_app`` (shared.http) installs all of it:

- :class:`Boundary` (ASGI middleware): the request-body limit (``Content-Length`` and the bytes
  actually streamed, 413), and the last catch: a database that cannot be reached is a 503 problem
  with ``Retry-After`` (logged once per outage, not per request), a value the database refuses
  (NUL in text, an integer out of range) a 422, anything else a 500 problem. It answers itself and
  returns normally, so the server keeps the keep-alive connection (Starlette's outermost handler
  re-raises after its 500, and uvicorn then drops the connection).
- :func:`guard_inputs` (an app-wide dependency, run after routing and before the route's own
  parameters): NUL characters in the query, path or JSON body, integers beyond signed 64 bits in the
  JSON body and in integer query/path parameters, non-finite numbers, and a JSON route sent another
  ``Content-Type`` (415).
- :func:`document_problems`: the OpenAPI gets the bearer security scheme and, on every operation,
  the problem answers it can give.
- :func:`add_docs`: ``/docs`` and ``/redoc`` served from an installed package, never a CDN.

A route that needs a bigger body, or a streamed one without limit, says so with :func:`body_limit`.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import re
import time
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.privacy import scrub_text
from shared.problems import MEDIA_TYPE, PROBLEM_SCHEMA, Problem
from shared.timing import within

log = logging.getLogger("shared.http")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNSET = object()


# -- answers ----------------------------------------------------------------------
def render_problem(problem: Problem, path: str | None = None) -> JSONResponse:
    """The one way a problem is written: RFC 9457 body, its headers, and the RFC 6750 challenge on a 401."""
    headers = dict(problem.headers or {})
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="changai"')
    return JSONResponse(problem.body(path), status_code=problem.status, media_type=MEDIA_TYPE, headers=headers or None)


def invalid_input(field: str, reason: str, kind: str) -> Problem:
    """422 shaped like a request-validation problem; never echoes the value (it may be personal data)."""
    return Problem(
        422,
        "validation-error",
        "Request is not valid",
        f"{field}: {reason}",
        errors=[{"field": field, "reason": reason, "type": kind}],
    )


# -- body limit ----------------------------------------------------------------------
class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: a Starlette HTTP exception, so FastAPI's body reading passes it on
    (it turns any other error there into a 400) and the app's handler writes the 413 problem."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this route takes ({limit} bytes)")
        self.limit = limit


def body_limit(max_bytes: int | None):
    """Route decorator (put it under ``@router.post(...)``): this route's body limit in bytes instead of
    the default (``CHANGAI_HTTP_MAX_BODY_BYTES``); ``None``: no limit (a streamed upload)."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.changai_max_body_bytes = max_bytes  # type: ignore[attr-defined]
        return endpoint

    return mark


# -- database outages ----------------------------------------------------------------
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def _chain(exc: BaseException, depth: int = 6):
    """The exception, what it was raised from, and the members of an exception group."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < depth * 4:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached (down, restarting, shutting down, the
    network, a connection that died, an acquire or connect that timed out) rather than a bug."""
    for e in _chain(exc):
        if isinstance(e, _UNAVAILABLE):
            return True
        if isinstance(e, asyncpg.InterfaceError) and "closed" in str(e):
            return True  # "connection is closed": the server went away under it
        if isinstance(e, OSError) and _raised_in_asyncpg(e):  # refused, reset, unreachable, timeouts
            return True
    return False


def value_refused(exc: BaseException) -> asyncpg.PostgresError | None:
    """The database refused a value (SQLSTATE class 22, e.g. NUL in text, an integer out of range):
    asyncpg raises these too for a query argument it cannot encode (beyond 64 bits)."""
    for e in _chain(exc):
        if isinstance(e, asyncpg.PostgresError) and str(getattr(e, "sqlstate", "") or "").startswith("22"):
            return e
    return None


class DatabaseOutage:
    """One warning when the database becomes unreachable, one when it is back (with how long and how
    many requests were answered 503 meanwhile); a probe watches for the end."""

    def __init__(self, probe_interval_s: float = 1.0):
        self.probe_interval_s = probe_interval_s
        self.since: float | None = None
        self.refused = 0
        self._watch: asyncio.Task | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def note(self, exc: BaseException, pool: asyncpg.Pool | None) -> None:
        self.refused += 1
        if self.since is not None:
            return
        self.since = time.monotonic()
        log.error(
            "database unavailable: answering 503 until it is back",
            extra={"error": type(exc).__name__, "reason": scrub_text(str(exc))[:200]},
        )
        if pool is not None:
            self._watch = asyncio.get_running_loop().create_task(
                self._wait_until_back(pool), name="database-outage-watch"
            )
        else:
            self.since = None  # nothing to watch: the next failure reports again

    async def _wait_until_back(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)  # a probe's pace, not a test's wait
            try:
                await within(pool.fetchval("SELECT 1"), 5)
            except Exception:  # noqa: BLE001 - still down
                continue
            log.warning(
                "database reachable again",
                extra={
                    "outage_s": round(time.monotonic() - (self.since or time.monotonic()), 1),
                    "refused_requests": self.refused,
                },
            )
            self.since, self.refused, self._watch = None, 0, None
            return

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None


# -- the middleware -------------------------------------------------------------------
class Boundary:
    """ASGI middleware (inside the request metrics): body limit and the last catch of every error."""

    def __init__(self, app, max_body_bytes: int | None, retry_after_s: int, outage: DatabaseOutage):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.outage = outage

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        received = 0

        async def limited_receive():
            nonlocal received
            # Read after routing, so the route's own limit (body_limit) is known.
            limit = getattr(scope.get("endpoint"), "changai_max_body_bytes", self.max_body_bytes)
            if limit is not None and received == 0:
                declared = _content_length(scope)
                if declared is not None and declared > limit:
                    raise BodyTooLarge(limit)
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                received += len(message.get("body", b""))  # chunked uploads have no Content-Length
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only closing the connection tells the client
            problem = self.problem_for(exc, scope)
            await render_problem(problem, scope.get("path"))(scope, receive, send)

    def problem_for(self, exc: Exception, scope) -> Problem:
        if isinstance(exc, Problem):
            return exc
        if isinstance(exc, StarletteHTTPException):
            return http_problem(exc)
        if database_unavailable(exc):
            app = scope.get("app")
            self.outage.note(exc, getattr(getattr(app, "state", None), "db", None))
            return Problem(
                503,
                "database-unavailable",
                "The database is not available",
                "try again shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        if isinstance(exc, OverflowError):  # arithmetic on a value from the request: a date past 9999, a huge count
            log.warning("a value of the request is out of range", exc_info=exc, extra={"path": scope.get("path")})
            return Problem(422, "validation-error", "Request is not valid", "a value is out of range")
        refused = value_refused(exc)
        if refused is not None:
            log.warning(
                "the database refused a value of the request",
                extra={"sqlstate": refused.sqlstate, "error": type(refused).__name__, "path": scope.get("path")},
            )
            return Problem(
                422,
                "validation-error",
                "Request is not valid",
                "a value is not accepted: text with NUL characters, a number out of range, or text too long",
            )
        log.error("unhandled error", exc_info=exc, extra={"path": scope.get("path")})
        return Problem(500, "internal-error", "Internal error", "the error was logged with this request's trace id")


_HTTP_KINDS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("content-too-large", "Content too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def http_problem(exc: StarletteHTTPException) -> Problem:
    """A Starlette/FastAPI HTTP exception (unknown route, wrong method, body too large) as a problem."""
    kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", None))
    detail = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    if title is None or detail == title:
        return Problem(exc.status_code, kind, title or detail, headers=headers)
    return Problem(exc.status_code, kind, title, detail, headers=headers)


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers") or ():
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- inputs ----------------------------------------------------------------------------
_INT = TypeAdapter(int)
# Cheap look at the raw JSON before walking it: NUL escapes, long digit runs, huge exponents, NaN.
_SUSPECT_JSON = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|[0-9]{19}|NaN|Infinity|[eE][+-]?[0-9]{3}")
# Per route object (APIRoute is not hashable: by id, with the route kept to tell a reused id from it).
_int_params: dict[int, tuple[Any, list[tuple[str, str]]]] = {}


def _is_int(tp: Any) -> bool:
    if tp is bool:
        return False
    if tp is int:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_int(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType, list, set, frozenset, tuple):
        return any(_is_int(a) for a in typing.get_args(tp))
    return isinstance(tp, type) and issubclass(tp, int) and not issubclass(tp, (bool, Enum))


def _integer_params(route) -> list[tuple[str, str]]:
    """(where, name) of the route's integer query and path parameters, its dependencies' included."""
    cached = _int_params.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    found: list[tuple[str, str]] = []
    todo = [route.dependant]
    while todo:
        d = todo.pop()
        found += [("query", f.alias) for f in d.query_params if _is_int(f.field_info.annotation)]
        found += [("path", f.alias) for f in d.path_params if _is_int(f.field_info.annotation)]
        todo.extend(d.dependencies)
    _int_params[id(route)] = (route, found)
    return found


def _out_of_range(raw: str) -> bool:
    try:
        value = _INT.validate_python(raw)  # pydantic's own reading ("1_0", " 7 ", "7.0"), then the range
    except ValidationError:
        return False  # not an integer at all: the route's validation says so
    return not INT64_MIN <= value <= INT64_MAX


def _walk_json(data: Any) -> Problem | None:
    todo: list[tuple[tuple, Any]] = [((), data)]
    while todo:
        loc, value = todo.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return invalid_input(
                    ".".join(map(str, loc)) or "<body>", "NUL characters are not accepted", "nul_character"
                )
            if not value.isascii() and not _is_unicode(value):
                return invalid_input(
                    ".".join(map(str, loc)) or "<body>", "not valid Unicode text (a lone surrogate escape)", "unicode"
                )
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                return invalid_input(".".join(map(str, loc)) or "<body>", "integer beyond 64 bits", "int_range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                return invalid_input(".".join(map(str, loc)) or "<body>", "number is not finite", "finite_number")
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key or not (key.isascii() or _is_unicode(key)):
                    return invalid_input(
                        ".".join(map(str, loc)) or "<body>", "not an acceptable member name", "nul_character"
                    )
                todo.append(((*loc, key), item))
        elif isinstance(value, list):
            todo.extend(((*loc, i), item) for i, item in enumerate(value))
    return None


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON "\\ud800"): it cannot be stored or logged as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def guard_inputs(request: Request) -> None:
    """App-wide dependency: refuse what would reach the database as a 500 (NUL, beyond 64 bits) and a JSON
    body of another media type, before the route's own parameters are read."""
    scope = request.scope
    query = scope.get("query_string") or b""
    if b"%00" in query or b"\x00" in query:
        for key, value in request.query_params.multi_items():
            if "\x00" in key or "\x00" in value:
                raise invalid_input(
                    key.replace("\x00", "") or "<query>", "NUL characters are not accepted", "nul_character"
                )
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise invalid_input(name, "NUL characters are not accepted", "nul_character")
    route = scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    for where, name in _integer_params(route):
        values = request.query_params.getlist(name) if where == "query" else [request.path_params.get(name)]
        if any(isinstance(v, str) and _out_of_range(v) for v in values):
            raise invalid_input(name, "integer beyond 64 bits", "int_range")
    body_field = getattr(route, "body_field", None)
    if body_field is None or type(body_field.field_info).__name__ in ("Form", "File"):
        return
    body = await request.body()  # already read (and kept) by FastAPI for this route
    if not body:
        return
    if not _is_json(request.headers.get("content-type")):
        raise Problem(415, "unsupported-media-type", "Send JSON", "this route takes Content-Type: application/json")
    if _SUSPECT_JSON.search(body):
        found = _walk_json(await request.json())  # parsed once: FastAPI keeps the parse
        if found is not None:
            raise found


# -- OpenAPI ----------------------------------------------------------------------------
_PROBLEM_ANSWERS = {
    "400": "Malformed request: JSON that does not parse, a bad cursor or Idempotency-Key",
    "401": "No token, or a token that is not valid (expired, wrong key or issuer)",
    "403": "The token lacks the scope, or names a region outside the token's",
    "404": "Not found, or outside the caller's region",
    "409": "Conflicts with the current state",
    "413": "Request body larger than the route takes",
    "415": "Content-Type the route does not take",
    "422": "Request is not valid (fields, values, rules)",
    "503": "A dependency (the database) is not available; retry after Retry-After seconds",
}
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "a token with the route's scope and an organisation scope (org: a region code)",
}


def _secured(dependant) -> bool:
    todo = [dependant]
    while todo:
        d = todo.pop()
        if getattr(d.call, "changai_scope", None):
            return True
        todo.extend(d.dependencies)
    return False


def document_problems(app: FastAPI) -> None:
    """Post-process the app's OpenAPI once: the bearer scheme, each secured route's ``security``, and on
    every operation the problem answers (``application/problem+json``, schema ``Problem``)."""
    from fastapi.routing import APIRoute

    build = app.openapi
    done: list[dict] = []  # the schema last documented (FastAPI rebuilds its own when routes change)

    def api_routes(routes, prefix: str = ""):
        for r in routes:
            if isinstance(r, APIRoute):
                yield prefix + r.path_format, r
            elif hasattr(r, "original_router"):  # an included router, kept whole by newer FastAPI
                yield from api_routes(r.original_router.routes, prefix + getattr(r.include_context, "prefix", ""))

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's own, cached until the routes change
        if done and done[0] is schema:
            return schema
        secured = {(path, m.lower()): _secured(r.dependant) for path, r in api_routes(app.routes) for m in r.methods}
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        components.setdefault("securitySchemes", {})["bearerAuth"] = BEARER
        ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                if not isinstance(op, dict) or method not in ("get", "put", "post", "delete", "patch", "head"):
                    continue
                is_secured = secured.get((path, method), False)
                if is_secured:
                    op.setdefault("security", [{"bearerAuth": []}])
                responses = op.setdefault("responses", {})
                for code, description in _PROBLEM_ANSWERS.items():
                    if code in ("401", "403") and not is_secured:
                        continue
                    if code in ("413", "415") and method not in ("post", "put", "patch") and "requestBody" not in op:
                        continue
                    answer = responses.setdefault(code, {"description": description})
                    if code == "422" and answer.get("description") == "Validation Error":
                        answer["description"] = description
                    answer["content"] = {MEDIA_TYPE: ref}
                    if code == "401":
                        answer["headers"] = {
                            "WWW-Authenticate": {
                                "schema": {"type": "string"},
                                "description": "Bearer challenge (RFC 6750)",
                            }
                        }
                    if code == "503":
                        answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        schemas = components["schemas"]
        text = repr(schema.get("paths"))
        for unused in ("HTTPValidationError", "ValidationError"):
            if unused in schemas and f"#/components/schemas/{unused}'" not in text:
                del schemas[unused]
        done[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the OpenAPI


# -- docs without a CDN -----------------------------------------------------------------
def add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts served by this app from the installed
    ``fastapi-offline`` package: a federation's intranet cannot reach a public CDN."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount("/docs/assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs/assets/favicon.png",
            with_google_fonts=False,
        )
