"""The FastAPI app every HTTP service is built from.

``create_app`` gives a service: ``/livez``, ``/readyz`` (database and Kafka),
``/metrics``, RFC 9457 problem details for every error, request metrics per route
template (bounded cardinality), trace ids, a database pool with migrations
applied, and the outbox relay. ``write`` runs a route's transaction with
``Idempotency-Key`` support: a repeat returns the first answer.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import asyncpg
import orjson
from asyncpg.transaction import Transaction
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import logging as changai_logging
from shared import migrate
from shared.auth import Principal, document_scopes
from shared.boundary import (
    Boundary,
    DatabaseOutage,
    add_docs,
    body_limit,
    document_problems,
    guard_inputs,
    http_problem,
    render_problem,
)
from shared.errors import DomainError, status_of
from shared.events.envelope import new_traceparent, trace_id_of
from shared.outbox import OutboxRelay
from shared.problems import Problem
from shared.settings import Settings
from shared.timing import within

log = logging.getLogger(__name__)

__all__ = ["Db", "body_limit", "create_app", "db_pool", "problem_response", "serve", "write"]

REQUESTS = Counter("changai_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
LATENCY = Histogram(
    "changai_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# A part of a service's lifespan: given the app, starts something and returns how to stop it.
LifespanPart = Callable[[FastAPI], Awaitable[Callable[[], Awaitable[None]] | None]]


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    return render_problem(problem, request.url.path if request else None)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "<body>"


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            Problem(400, "malformed-json", "Request body is not valid JSON", errors[0].get("msg")), request
        )
    items = [
        {"field": _field(tuple(e.get("loc", ()))), "reason": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    detail = "; ".join(f"{i['field']}: {i['reason']}" for i in items[:5])
    return problem_response(Problem(422, "validation-error", "Request is not valid", detail, errors=items), request)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem_response(http_problem(exc), request)


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc, request)


async def _on_domain_error(request: Request, exc: DomainError) -> JSONResponse:
    """The one place where a domain refusal becomes an RFC 9457 problem."""
    return problem_response(Problem(status_of(exc), exc.kind, exc.title, exc.detail, **exc.extra), request)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(
        Problem(500, "internal-error", "Internal error", "the error was logged with this request's trace id"), request
    )


class RequestMetrics:
    """ASGI middleware: trace id in and out, latency and count per route template."""

    def __init__(self, app, service: str):
        self.app = app
        self.service = service
        # (method, route template, status) -> its counter and histogram: prometheus' labels() takes a lock and
        # builds the label tuple on every call; the templates and statuses are few (bounded cardinality)
        self.series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        traceparent = ""
        for name, value in scope.get("headers") or ():  # the last one, as a dict of the headers would keep
            if name == b"traceparent":
                traceparent = value.decode()
        traceparent = traceparent or new_traceparent()
        token = changai_logging.trace_id_var.set(trace_id_of(traceparent))
        status = [500]
        start = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"traceparent", traceparent.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            if template not in ("/metrics", "/livez", "/readyz"):
                key = (scope["method"], template, status[0])
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = (
                        REQUESTS.labels(self.service, key[0], template, str(key[2])),
                        LATENCY.labels(self.service, key[0], template),
                    )
                series[0].inc()
                series[1].observe(time.perf_counter() - start)
            changai_logging.trace_id_var.reset(token)


def create_app(
    *,
    service: str,
    settings: Settings,
    routers: list[APIRouter],
    title: str,
    description: str = "",
    parts: Sequence[LifespanPart] = (),
    with_database: bool = True,
    with_relay: bool = True,
) -> FastAPI:
    changai_logging.configure(service, settings.log_level, settings.log_repeat_window_s)
    outage = DatabaseOutage()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.settings = settings
            app.state.relay = None
            if with_database:
                await migrate.prepare(settings, service)  # applies, or only checks (CHANGAI_MIGRATE_ON_START)
                app.state.db = await asyncpg.create_pool(
                    settings.database_url,
                    min_size=settings.db_pool_min,
                    max_size=settings.db_pool_max,
                    timeout=settings.db_connect_timeout_s,
                    reset=keep_session,
                )
                stack.push_async_callback(close_pool, app.state.db)
                stack.push_async_callback(outage.stop)
                if with_relay:
                    relay = OutboxRelay(
                        app.state.db,
                        settings.kafka_bootstrap,
                        service,
                        dsn=settings.database_url,
                        poll_interval=settings.outbox_poll_interval_s,
                        batch_size=settings.outbox_batch_size,
                    )
                    relay.start()
                    app.state.relay = relay
                    stack.push_async_callback(stop_within, "outbox relay", relay.stop)
            for part in parts:
                stop = await part(app)
                if stop is not None:
                    stack.push_async_callback(stop_within, getattr(part, "__name__", "part"), stop)
            log.info("service started", extra={"port": settings.http_port})
            yield

    # docs_url/redoc_url off: FastAPI's own pages load Swagger UI from a CDN (add_docs serves it locally).
    # guard_inputs runs on every route, after routing and before the route's own parameters.
    app = FastAPI(
        title=title,
        description=description,
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(guard_inputs)],
    )
    # Starlette's stubs type every handler as taking Exception, though it calls each with the class it was
    # registered for: a handler of a subclass is correct and its ignore covers that stub limitation only.
    app.add_exception_handler(Problem, _on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(DomainError, _on_domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(
        Boundary,
        max_body_bytes=settings.http_max_body_bytes,
        retry_after_s=settings.http_unavailable_retry_after_s,
        outage=outage,
    )
    app.add_middleware(RequestMetrics, service=service)  # outermost: counts what the boundary answered
    app.state.db_outage = outage
    if settings.http_docs:
        add_docs(app)

    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks = {}
        ok = True
        if with_database:
            try:
                async with asyncio.timeout(2):
                    await db_pool(request).fetchval("SELECT 1")
                checks["database"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["database"] = f"unavailable: {type(exc).__name__}"
                ok = False
        relay: OutboxRelay | None = getattr(request.app.state, "relay", None)
        if relay is not None:
            # Kafka down is reported but does not make the service unready: writes are still
            # accepted and wait in the outbox, which is the point of the outbox.
            checks["kafka"] = await _kafka_check(relay)
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    if not settings.metrics_port:  # else served on its own port only (serve)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        document_scopes(router.routes)
        app.include_router(router)
    document_problems(app)
    return app


async def _kafka_check(relay: OutboxRelay) -> str:
    if relay.producer is None:
        return "connecting (events wait in the outbox)"
    try:
        async with asyncio.timeout(2):
            await relay.producer.client.fetch_all_metadata()
        return "ok"
    except Exception:  # noqa: BLE001
        return "unreachable (events wait in the outbox)"


def serve(app: FastAPI, settings: Settings) -> None:
    """Run the API with uvicorn (the entry point of every HTTP service).

    Idle keep-alive connections are kept longer than clients and load balancers keep theirs
    (commonly 60 s): a server that closes first races the client's next request on that
    connection, which then fails with a connection error (seen in the funding benchmark with
    uvicorn's default of 5 s)."""
    import uvicorn

    if settings.metrics_port:
        from prometheus_client import start_http_server

        # The same registry as /metrics, on a port of its own that no ingress routes (a thread).
        start_http_server(settings.metrics_port, addr=settings.http_host)
    tune_gc(app)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_s,
    )


# CPython collects its youngest generation every 700 allocations, and every 10th of those the next one, and
# so on: the full collections walk every object startup built (~100,000 in a service: FastAPI, pydantic, the
# event catalogue) again and again, though a request's objects are freed by reference counting. Measured on
# membership's 450,000-member import: ~20 % of the service's CPU (docs/membership.md); on single writes it
# is the p99 (a full collection is a pause of milliseconds for every request in flight; docs/platform.md).
GC_GEN0_THRESHOLD = 50_000


def tune_gc(app: FastAPI) -> None:
    """For the service process only (``serve``; tests build many apps in one interpreter): what startup built
    is frozen once the lifespan has started (never scanned again; it lives as long as the process), and the
    youngest generation is collected every 50,000 allocations instead of 700 (the older ones keep theirs)."""
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    started = app.router.lifespan_context

    @asynccontextmanager
    async def frozen_after_start(app_: Any) -> AsyncIterator[Any]:
        async with started(app_) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = frozen_after_start


SHUTDOWN_STEP_SECONDS = 20.0


async def stop_within(name: str, stop: Callable[[], Awaitable[None]], timeout: float | None = None) -> None:
    """Run one shutdown step, but never let it hang the rest: after ``timeout`` it is abandoned (cancelled,
    not awaited) and logged with where every task was waiting, so the hang can be found."""
    task = asyncio.ensure_future(stop())
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_SECONDS if timeout is None else timeout)
    if task in done:
        task.result()  # a step that failed still fails shutdown loudly
        return
    task.cancel()
    log.error("shutdown step did not finish in time; moving on", extra={"step": name, "waiting_tasks": task_stacks()})


def task_stacks(limit: int = 30) -> list[str]:
    """One line per pending task: its name and the innermost frames it is suspended in."""
    lines = []
    for t in list(asyncio.all_tasks())[:limit]:
        frames = t.get_stack(limit=None)[-3:]
        where = " < ".join(
            f"{f.f_code.co_name}@{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno}" for f in reversed(frames)
        )
        lines.append(f"{t.get_name()}: {where or '(not started)'}")
    return lines


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, beyond what asyncpg always does (roll back an open transaction, drop
    listener callbacks): nothing. asyncpg's default also sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` — one round trip on every release, a seventh of a keyed write's — to undo
    session state that no request leaves on a pool connection: settings are set per transaction
    (``set_config(..., true)``), advisory locks are transaction locks, cursors live in transactions, and
    LISTEN and session locks are taken on connections of their own (the outbox relay's, the migrations')."""


async def close_pool(pool: asyncpg.Pool, timeout: float = 10.0) -> None:
    """Close gracefully, but never hang shutdown on a connection someone failed to release."""
    try:
        await within(pool.close(), timeout)
    except TimeoutError:
        log.warning("database pool did not close in time; terminating its connections")
        pool.terminate()


def db_pool(request: Request) -> asyncpg.Pool:
    """The service's database pool, which ``create_app``'s lifespan opens (the one place that knows where)."""
    return request.app.state.db


# A route's parameter ``pool: Db`` is the service's database pool.
Db = Annotated[asyncpg.Pool, Depends(db_pool)]


# -- writes with Idempotency-Key ------------------------------------------------
Write = Callable[[asyncpg.Connection], Awaitable[tuple[int, Any]]]


def _request_hash(payload: Any) -> bytes:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)).digest()


async def write(
    request: Request,
    principal: Principal,
    operation: str,
    payload: Any,
    fn: Write,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Run ``fn(conn)`` in one transaction; honour ``Idempotency-Key``.

    The key row is inserted first in the same transaction, so a concurrent repeat
    waits on it and then replays the committed answer; a failed write rolls the
    key back, so a retry runs again. The same key with a different body is 422.

    With a key, the transaction costs two round trips of its own, not four: ``BEGIN`` travels
    with the key's insert and ``COMMIT`` with the key's answer (``_keyed``).
    """
    key = idempotency_key(request)
    pool = db_pool(request)
    scope = f"{principal.subject}:{operation}"
    digest = _request_hash(payload)
    async with pool.acquire() as conn:
        if key is not None and _literals_safe(conn, scope, key):
            status, answer, replay = await _keyed(conn, scope, key, digest, fn)
        else:
            async with conn.transaction():
                replay = await _claim_key(conn, scope, key, digest) if key is not None else None
                if replay is None:
                    status, body = await fn(conn)
                    answer = orjson.dumps(body, default=str)
                    if key is not None:
                        await conn.execute(_ANSWER, scope, key, status, answer.decode())
    if replay is not None:
        return replayed(replay, digest, headers)
    return RenderedJSON(answer, status_code=status, headers=headers)


class RenderedJSON(JSONResponse):
    """A JSON answer already rendered (by orjson, once: the bytes stored as a key's answer are the bytes sent)."""

    def render(self, content: Any) -> bytes:
        return content


_CLAIM = (
    "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true"
)
_FIRST_ANSWER = "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2"
_ANSWER = "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2"


async def _claim_key(conn: asyncpg.Connection, scope: str, key: str, digest: bytes) -> asyncpg.Record | None:
    """Insert the key (a concurrent holder of it makes this wait for its end); None when it is new, else the
    first request's row."""
    if await conn.fetchval(_CLAIM, scope, key, digest):
        return None
    return await conn.fetchrow(_FIRST_ANSWER, scope, key)


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, or None without one; 400 when it is not 1 to 255 characters."""
    key = request.headers.get("idempotency-key")
    if key is not None and not (1 <= len(key) <= 255):
        raise Problem(400, "bad-idempotency-key", "Idempotency-Key must be 1 to 255 characters")
    return key


def replayed(row: asyncpg.Record, digest: bytes, headers: dict[str, str] | None = None) -> JSONResponse:
    """The first answer given under a key (``row``: its request_hash, status, body), for a repeat of the same
    request (``digest``); 422 when the key was first used with a different request."""
    if row["request_hash"] != digest:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key was used with a different request",
            "send a new key for a new request",
        )
    return JSONResponse(
        orjson.loads(row["body"]), status_code=row["status"], headers={"Idempotent-Replayed": "true", **(headers or {})}
    )


def _literal(text: str) -> str:
    """A SQL string literal. Safe only where ``standard_conforming_strings`` is on (a backslash is then an
    ordinary character and a quote is the only one to escape; ``_literals_safe`` checks) and the text has no
    NUL (which a PostgreSQL text cannot hold either)."""
    return "'" + text.replace("'", "''") + "'"


def _literals_safe(conn: asyncpg.Connection, *texts: str) -> bool:
    settings = conn.get_settings()
    return getattr(settings, "standard_conforming_strings", "off") == "on" and not any("\x00" in t for t in texts)


async def _keyed(
    conn: asyncpg.Connection, scope: str, key: str, digest: bytes, fn: Write
) -> tuple[int, bytes, asyncpg.Record | None]:
    """A keyed write in one transaction of which the bounds cost no round trip of their own: ``BEGIN`` is sent
    with the key's insert and ``COMMIT`` with the key's answer, each as one simple query (several statements,
    one round trip). A simple query takes no parameters, so the key, scope and answer travel as literals
    (``_literal``); asyncpg is told of the transaction (``_top_xact``) so that ``conn.transaction()`` within
    ``fn`` makes a savepoint, as inside ``conn.transaction()``. Returns (status, answer's JSON, None), or the first
    request's row for a key already used."""
    raw = getattr(conn, "_con", conn)  # the pool's proxy forwards reads, not writes, to the connection
    xact = raw.transaction()
    claimed = await raw.execute(
        "BEGIN; INSERT INTO idempotency_keys (scope, key, request_hash) "
        f"VALUES ({_literal(scope)}, {_literal(key)}, '\\x{digest.hex()}'::bytea) ON CONFLICT DO NOTHING"
    )
    _adopt(raw, xact)
    try:
        if claimed == "INSERT 0 0":
            replay = await raw.fetchrow(_FIRST_ANSWER, scope, key)
            await raw.execute("ROLLBACK")
            return 0, b"", replay
        status, body = await fn(conn)
        answer = orjson.dumps(body, default=str)
        await raw.execute(
            f"UPDATE idempotency_keys SET status = {int(status)}, body = {_literal(answer.decode())} "
            f"WHERE scope = {_literal(scope)} AND key = {_literal(key)}; COMMIT"
        )
        return status, answer, None
    except BaseException:
        _adopt(raw, None)
        if not raw.is_closed() and raw.is_in_transaction():
            try:
                await raw.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - e.g. cancelled mid-query: the pool replaces a terminated connection
                raw.terminate()
        raise
    finally:
        _adopt(raw, None)


def _adopt(conn: asyncpg.Connection, xact: Transaction | None) -> None:
    """Tell asyncpg that ``xact`` is the connection's open transaction (begun by a simple query of ours), or
    that none is: its own ``conn.transaction()`` then nests as a savepoint, and the pool's release rolls back
    what is left open. asyncpg has no public call for it (pinned in requirements.lock; docs/platform.md)."""
    conn._top_xact = xact  # noqa: SLF001


def new_id() -> uuid.UUID:
    return uuid.uuid4()
