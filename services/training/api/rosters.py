"""Rosters in bulk: one request takes a session's whole roster, or many sessions' rosters, as CSV or
NDJSON, streamed; the sessions are recorded in batches by ``usecases.record_rosters`` (the single
commands' domain rules, set-based writes), a transaction a batch; the answer reports every refused row by
its line.

CSV: a header line, then ``session_id,member_id,result`` (``session_id`` may be left out when the path
names the session). NDJSON: one ``{"session_id": …, "member_id": …, "result": …}`` per line. ``result``
is ``enrolled``, ``attended``, ``passed``, ``failed`` or ``absent``. A session's rows come together;
sessions go into a batch as their rows end, so memory holds a few batches' rows, never the file.

Idempotent twice over: rows already in the state they ask for are ``unchanged`` (the same roster sent
again changes nothing), and an ``Idempotency-Key`` replays the first report of the same body.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any, Literal, NamedTuple, get_args

import asyncpg
import orjson
from asyncpg.pgproto.pgproto import UUID as PgUUID
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from services.training import usecases
from services.training.api import views
from services.training.api.deps import Writer
from shared.auth import Principal
from shared.clock import today_cn
from shared.errors import DomainError, Invalid
from shared.http import body_limit, db_pool, idempotency_key, replayed
from shared.problems import Problem

router = APIRouter(tags=["rosters"])
MAX_ROWS = 1_000_000
MAX_SESSION_ROWS = 10_000  # a session's capacity is at most 10,000
IN_FLIGHT = 2  # batches of one upload recorded at the same time, each on its own connection
BATCH_ROWS = 2_000  # a batch (one transaction) closes after the session that brings it to this many rows
BATCH_SESSIONS = 200
_CSV = ("text/csv", "application/csv")
_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class _Row(BaseModel):
    model_config = {"extra": "forbid"}
    session_id: uuid.UUID | None = None
    member_id: uuid.UUID
    result: Literal["enrolled", "attended", "passed", "failed", "absent"]


class _Parsed(NamedTuple):
    session_id: uuid.UUID | None
    member_id: uuid.UUID
    result: str


_RESULTS = frozenset(get_args(_Row.model_fields["result"].annotation))


class RefusedRow(BaseModel):
    line: int = Field(description="line number in the upload (the CSV header is line 1)")
    session_id: uuid.UUID | None
    member_id: uuid.UUID | None
    problem: dict[str, Any]


class SessionOutcome(BaseModel):
    first_line: int = Field(description="line of the session's first row")
    session_id: uuid.UUID
    rows: int
    recorded: int
    unchanged: int
    refused: int
    completed: bool
    problem: dict[str, Any] | None = None


class RosterReport(BaseModel):
    rows: int
    recorded: int
    unchanged: int
    refused: int
    sessions: int
    sessions_completed: int
    session_outcomes: list[SessionOutcome]
    refused_rows: list[RefusedRow]


def _format(request: Request) -> str:
    media, _, params = request.headers.get("content-type", "").partition(";")
    charset = next(
        (
            v.strip().strip('"').lower()
            for k, _, v in (p.partition("=") for p in params.split(";"))
            if k.strip().lower() == "charset"
        ),
        None,
    )
    if charset not in (None, "utf-8", "utf8"):
        raise Problem(415, "unsupported-media-type", "Send the roster as UTF-8", "charset must be utf-8")
    media = media.strip().lower()
    if media in _CSV:
        return "csv"
    if media in _NDJSON:
        return "ndjson"
    raise Problem(
        415, "unsupported-media-type", "Send CSV or NDJSON", "Content-Type text/csv or application/x-ndjson (UTF-8)"
    )


async def _lines(chunks: AsyncIterator[bytes], digest) -> AsyncIterator[tuple[int, str]]:
    """(line number, text) of each non-empty line, as the body streams in."""
    rest, n = b"", 0
    async for chunk in chunks:
        digest.update(chunk)
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for raw in whole:
            n += 1
            if raw.strip():
                yield n, _text(raw, n)
    if rest.strip():
        yield n + 1, _text(rest, n + 1)


def _text(raw: bytes, line: int) -> str:
    try:
        text = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise Invalid(f"line {line}", "not UTF-8") from None
    if "\x00" in text:
        raise Invalid(f"line {line}", "contains a NUL character")
    return text


class _Upload:
    """Parses rows, groups them by session and records the sessions in batches (``BATCH_ROWS`` rows or
    ``BATCH_SESSIONS`` sessions, a transaction each), up to ``IN_FLIGHT`` batches at a time, so memory holds
    that many batches' rows, never the file."""

    def __init__(
        self, pool: asyncpg.Pool, actor: Principal, fmt: str, path_session: uuid.UUID | None, options: dict[str, Any]
    ):
        self.pool, self.actor, self.fmt, self.path_session, self.options = pool, actor, fmt, path_session, options
        self.slots = asyncio.Semaphore(IN_FLIGHT)
        self.tasks: set[asyncio.Task] = set()
        self.today = today_cn()
        self.header: list[str] | None = None
        self.plain: list[int | None] | None = None  # the columns of session_id, member_id, result in a plain CSV
        self.current: uuid.UUID | None = None
        self.group: list[usecases.RosterRow] = []
        self.batch: list[tuple[uuid.UUID, list[usecases.RosterRow]]] = []
        self.batch_rows = 0
        self.rows = 0
        self.outcomes: list[SessionOutcome] = []
        self.refused: list[RefusedRow] = []
        # The upload's id on every event it causes (and on the subsidy payments of the sessions it
        # completes): the notifier tells an upload to a channel as one digest, not a notice per row.
        self.batch_id = uuid.uuid4()

    def _parse(self, line: int, text: str) -> _Parsed | None:
        if self.fmt == "csv" and self.header is None:
            try:
                self.header = [c.strip().lower() for c in next(csv.reader([text]))]
            except csv.Error:
                raise Invalid("header", "not a CSV line") from None
            if not {"member_id", "result"} <= set(self.header) or (
                "session_id" not in self.header and self.path_session is None
            ):
                raise Invalid("header", "columns are session_id, member_id, result")
            if set(self.header) <= set(_Row.model_fields) and len(set(self.header)) == len(self.header):
                self.plain = [self.header.index(c) if c in self.header else None for c in _Row.model_fields]
            return None
        self.rows += 1
        if self.rows > MAX_ROWS:
            raise Invalid("body", f"more than {MAX_ROWS:,} rows; split the upload")
        row = self._plain_csv(text) if self.plain is not None else None
        if row is None:
            row = self._validated(line, text)
            if row is None:
                return None
        if self.path_session is not None:
            if row.session_id not in (None, self.path_session):
                self._refuse(line, row.session_id, row.member_id, Invalid("session_id", "not the session in the path"))
                return None
            row = row._replace(session_id=self.path_session)
        elif row.session_id is None:
            self._refuse(line, None, row.member_id, Invalid("session_id", "required"))
            return None
        return row

    def _plain_csv(self, text: str) -> _Parsed | None:
        """The common row (no quotes, canonical ids, a known result) without the CSV reader and the model:
        the same values the model gives, at a tenth of its cost; anything else (None) takes the model's
        path, which also words the refusal."""
        if '"' in text:
            return None
        cells = text.split(",")
        if len(cells) != len(self.header or ()):
            return None
        s, m, r = ((cells[i].strip() if i is not None else None) for i in self.plain or ())
        if m is None or r is None or len(m) != 36 or (s is not None and len(s) != 36) or r not in _RESULTS:
            return None
        try:
            return _Parsed(PgUUID(s) if s is not None else None, PgUUID(m), r)
        except ValueError:
            return None

    def _validated(self, line: int, text: str) -> _Parsed | None:
        if self.fmt == "ndjson":
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                self._refuse(line, None, None, Invalid(f"line {line}", "not a JSON object"))
                return None
        else:
            try:
                cells = (c.strip() for c in next(csv.reader([text])))
                data = dict(zip(self.header or [], cells, strict=False))  # a short row misses fields: refused below
            except csv.Error as exc:
                self._refuse(line, None, None, Invalid(f"line {line}", f"not a CSV row: {exc}"))
                return None
        try:
            row = _Row.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "row"
            self._refuse(line, None, None, Invalid(field, first.get("msg", "not valid")))
            return None
        return _Parsed(row.session_id, row.member_id, row.result)

    def _refuse(self, line: int, session_id, member_id, exc: DomainError) -> None:
        self.refused.append(
            RefusedRow(line=line, session_id=session_id, member_id=member_id, problem=views.problem_body(exc))
        )

    async def feed(self, line: int, text: str) -> None:
        row = self._parse(line, text)
        if row is None:
            return
        if row.session_id != self.current:
            await self.end_session()
            self.current = row.session_id
        if len(self.group) >= MAX_SESSION_ROWS:
            self._refuse(
                line,
                row.session_id,
                row.member_id,
                Invalid("session_id", f"more than {MAX_SESSION_ROWS:,} rows for one session"),
            )
            return
        self.group.append(usecases.RosterRow(line, row.member_id, row.result))

    async def end_session(self) -> None:
        """A session's rows ended: into the batch, and the batch on its way once it is full."""
        if self.group:
            assert self.current is not None  # a group always belongs to a session
            self.batch.append((self.current, self.group))
            self.batch_rows += len(self.group)
            self.group = []
        if self.batch_rows >= BATCH_ROWS or len(self.batch) >= BATCH_SESSIONS:
            await self.flush()

    async def flush(self) -> None:
        if self.group:
            await self.end_session()
        if not self.batch:
            return
        batch, self.batch, self.batch_rows = self.batch, [], 0
        await self.slots.acquire()
        task = asyncio.create_task(self._record(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def finish(self) -> None:
        """Wait for the batches still being recorded (also when the upload failed: they commit on their own)."""
        await asyncio.gather(*list(self.tasks))

    async def _record(self, batch: list[tuple[uuid.UUID, list[usecases.RosterRow]]]) -> None:
        try:
            reports = await self._recorded(batch)
        finally:
            self.slots.release()
        for (sid, rows), report in zip(batch, reports, strict=True):
            for r, refusal in report.refused:
                self._refuse(r.line, sid, r.member_id, refusal)
            self.outcomes.append(
                SessionOutcome(
                    first_line=rows[0].line,
                    session_id=sid,
                    rows=report.rows,
                    recorded=report.recorded,
                    unchanged=report.unchanged,
                    refused=len(report.refused),
                    completed=report.completed,
                    problem=views.problem_body(report.problem) if report.problem else None,
                )
            )

    async def _recorded(self, batch: list[tuple[uuid.UUID, list[usecases.RosterRow]]]) -> list[usecases.RosterReport]:
        """The batch in one transaction; if it fails on a conflict the locks should have made impossible,
        each session alone, so that only the session at fault is refused (and nothing of it kept)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await usecases.record_rosters(
                    conn, batch, self.actor, self.today, batch_id=self.batch_id, **self.options
                )
        except DomainError as exc:
            if len(batch) == 1:
                sid, rows = batch[0]
                return [usecases.RosterReport(sid, rows=len(rows)).refuse_all(rows, exc)]
        return [(await self._recorded([one]))[0] for one in batch]

    def report(self) -> RosterReport:
        self.refused.sort(key=lambda r: r.line)
        self.outcomes.sort(key=lambda o: o.first_line)
        recorded = sum(o.recorded for o in self.outcomes)
        unchanged = sum(o.unchanged for o in self.outcomes)
        return RosterReport(
            rows=self.rows,
            recorded=recorded,
            unchanged=unchanged,
            refused=len(self.refused),
            sessions=len(self.outcomes),
            sessions_completed=sum(o.completed for o in self.outcomes),
            session_outcomes=self.outcomes,
            refused_rows=self.refused,
        )


async def _upload(request: Request, actor: Principal, path_session: uuid.UUID | None, options: dict[str, Any]):
    fmt = _format(request)
    key = idempotency_key(request)
    scope = f"{actor.subject}:rosters.record"
    digest = hashlib.sha256(orjson.dumps({"session": str(path_session), **options}, default=str))
    pool: asyncpg.Pool = db_pool(request)
    first = key and await pool.fetchrow(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
    )
    if first:  # a repeat: read the body only to check it is the same, and answer the first report
        async for _ in _lines(request.stream(), digest):
            pass
        return replayed(first, digest.digest())
    upload = _Upload(pool, actor, fmt, path_session, options)
    try:
        async for line, text in _lines(request.stream(), digest):
            await upload.feed(line, text)
        await upload.flush()
    finally:
        await upload.finish()
    body = upload.report().model_dump(mode="json")
    if key is not None:
        await pool.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status, body) "
            "VALUES ($1, $2, $3, 200, $4) ON CONFLICT DO NOTHING",
            scope,
            key,
            digest.digest(),
            orjson.dumps(body).decode(),
        )
    return JSONResponse(body)


def _options(complete: bool, started_on: date | None, completed_on: date | None) -> dict[str, Any]:
    today = today_cn()
    for name, value in (("started_on", started_on), ("completed_on", completed_on)):
        if value is not None and value > today:
            raise Invalid(name, "cannot be in the future")
    return {"complete": complete, "started_on": started_on, "completed_on": completed_on}


COMPLETE = Query(False, description="complete each session once its roster is recorded (结业)")
STARTED = Query(None, description="start date of a session not yet started (default: its scheduled start)")
COMPLETED = Query(None, description="completion date (default: the session's end, or today if later)")
_BODY = {
    "content": {"text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}},
    "required": True,
}


@router.post(
    "/rosters",
    response_model=RosterReport,
    openapi_extra={"requestBody": _BODY},
    summary="Record many sessions' rosters (CSV or NDJSON, streamed); a report of every refused row",
)
@body_limit(None)  # streamed line by line: no limit on the whole upload (shared.http's default is 1 MiB)
async def record_rosters(
    request: Request,
    actor: Writer,
    complete: bool = COMPLETE,
    started_on: date | None = STARTED,
    completed_on: date | None = COMPLETED,
):
    return await _upload(request, actor, None, _options(complete, started_on, completed_on))


@router.post(
    "/sessions/{session_id}/roster",
    response_model=RosterReport,
    openapi_extra={"requestBody": _BODY},
    summary="Record one session's whole roster (CSV or NDJSON, streamed)",
)
@body_limit(None)  # streamed line by line
async def record_session_roster(
    session_id: uuid.UUID,
    request: Request,
    actor: Writer,
    complete: bool = COMPLETE,
    started_on: date | None = STARTED,
    completed_on: date | None = COMPLETED,
):
    options = _options(complete, started_on, completed_on)
    await usecases.get_session(db_pool(request), session_id, actor)  # unknown or out of scope: 404 up front
    return await _upload(request, actor, session_id, options)


# A streamed upload has no body-size limit (shared.boundary's body_limit(None) marks a route so).
record_rosters.changai_max_body_bytes = None
record_session_roster.changai_max_body_bytes = None
