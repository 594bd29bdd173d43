"""The notifier's HTTP API: channels and subscriptions, secret rotation, test sends, pause and
resume, the delivery log and resends. Scopes ``notifier:write`` / ``notifier:read``; a token
acts on the channels of branches and federations inside its region; a reform member unit's liaison
(a token with the ``unit`` claim) on its own unit's channels only. Each route parses, calls its
use case (``usecases.py``: the rules, the scope checks, the writes) and shapes the answer.

Secrets are never returned: a webhook's signing secret is shown once, in the answer that
created or rotated it (and not in an idempotent replay of that answer, which is stored).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from html import escape
from typing import Literal

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.notifier import domain, inputs, usecases
from services.notifier.settings import NotifierSettings
from shared.auth import Principal, require
from shared.clock import now_cn
from shared.http import db_pool, write
from shared.pagination import Cursor, Limit, Page, decode_cursor, page

router = APIRouter(prefix="/v1", tags=["notices"])

# -- what the API answers ---------------------------------------------------------------------

ChannelKind = Literal["webhook", "wecom", "dingtalk", "email"]
ChannelStatus = Literal["active", "paused", "disabled"]
DeliveryStatus = Literal["routed", "ready", "sending", "retrying", "deferred", "held", "delivered", "dead"]
EventTypeFilter = Query(None, max_length=200, pattern=r"^[a-z0-9_.]+$", description="an event type")


class OwnerOut(BaseModel):
    kind: Literal["branch", "federation", "reform_unit"]
    branch_id: str | None = None
    unit_id: str | None = None
    region_code: str
    name: str | None = None


class ChannelOut(BaseModel):
    id: str
    kind: ChannelKind
    name: str
    owner: OwnerOut
    scope: Literal["own", "subtree"]
    event_types: list[str]
    locale: str
    quiet_hours: dict | None = None
    config: dict
    status: ChannelStatus
    paused_reason: str | None = None
    paused_at: str | None = None
    failing_since: str | None = None
    seed: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    released: int | None = None  # resume: held notices sent now


class ChannelCreated(ChannelOut):
    signing_secret: str | None = None  # webhooks: shown once, in this answer only
    signing_secret_note: str | None = None


class AttemptOut(BaseModel):
    n: int
    started_at: str | None = None
    finished_at: str | None = None
    outcome: str
    status_code: int | None = None
    errcode: int | None = None
    error: str | None = None
    latency_ms: int | None = None
    payload_hash: str | None = None
    digest_of: int | None = None
    requested_by: str | None = None


class ChannelRef(BaseModel):
    id: str
    kind: str | None = None
    name: str | None = None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    event_time: str | None = None
    channel: ChannelRef
    owner_region: str
    branch_id: str | None = None
    region_code: str | None = None
    status: str
    attempts: int
    failures: int
    payload_hash: str | None = None
    next_attempt_at: str | None = None
    last_status_code: int | None = None
    last_errcode: int | None = None
    last_error: str | None = None
    created_at: str | None = None
    delivered_at: str | None = None
    fallback_for: str | None = None
    resend_of: str | None = None
    requested_by: str | None = None
    attempt_log: list[AttemptOut] | None = None
    delivered: bool | None = None  # test send: its outcome


class TestSendPending(BaseModel):
    delivery_id: str
    status: Literal["pending"]
    detail: str


class RotateOut(BaseModel):
    channel_id: str
    signing_secrets_active: int
    previous_valid_until: str | None = None
    signing_secret: str | None = None
    signing_secret_note: str | None = None


class ResendOut(BaseModel):
    delivery_id: str
    resend_of: str


class ResendRangeOut(BaseModel):
    resent: int
    delivery_ids: list[str]


class BranchOut(BaseModel):
    id: str
    name: str
    region_code: str
    parent_id: str | None = None
    kind: str | None = None
    status: str


class PreviewOut(BaseModel):
    event_type: str
    locale: str
    kind: str
    body: dict


class UnsubscribedOut(BaseModel):
    channel_id: str
    unsubscribed: bool
    recipients_left: int


def settings_of(request: Request) -> NotifierSettings:
    return request.app.state.settings


# -- views ------------------------------------------------------------------------------------


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def channel_view(row, owner_name: str | None = None) -> dict:
    config = row["config"]
    config = orjson.loads(config) if isinstance(config, str) else config
    quiet = row["quiet_hours"]
    quiet = orjson.loads(quiet) if isinstance(quiet, str) else quiet
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "name": row["name"],
        "owner": {
            "kind": row["owner_kind"],
            "branch_id": str(row["owner_branch_id"]) if row["owner_branch_id"] else None,
            "unit_id": str(row["owner_unit_id"]) if row["owner_unit_id"] else None,
            "region_code": row["owner_region"],
            "name": owner_name,
        },
        "scope": row["scope"],
        "event_types": list(row["event_types"]),
        "locale": row["locale"],
        "quiet_hours": quiet,
        "config": config,
        "status": row["status"],
        "paused_reason": row["paused_reason"],
        "paused_at": _iso(row["paused_at"]),
        "failing_since": _iso(row["failing_since"]),
        "seed": row["seed"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def attempt_view(a) -> dict:
    return {
        "n": a["n"],
        "started_at": _iso(a["started_at"]),
        "finished_at": _iso(a["finished_at"]),
        "outcome": a["outcome"] or "in_flight",
        "status_code": a["status_code"],
        "errcode": a["errcode"],
        "error": a["error"],
        "latency_ms": a["latency_ms"],
        "payload_hash": a["payload_hash"],
        "digest_of": a["digest_of"],
        "requested_by": a["requested_by"],
    }


def delivery_view(row, attempts: list | None = None) -> dict:
    view = {
        "id": str(row["id"]),
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "event_time": _iso(row["event_time"]),
        "channel": {"id": str(row["channel_id"]), "kind": row["channel_kind"], "name": row["channel_name"]},
        "owner_region": row["owner_region"],
        "branch_id": str(row["branch_id"]) if row["branch_id"] else None,
        "region_code": row["region_code"],
        "status": row["status"],
        "attempts": row["attempts"],
        "failures": row["failures"],
        "payload_hash": row["payload_hash"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] in ("retrying", "deferred") else None,
        "last_status_code": row["last_status_code"],
        "last_errcode": row["last_errcode"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_at"]),
        "delivered_at": _iso(row["delivered_at"]),
        "fallback_for": str(row["fallback_for"]) if row["fallback_for"] else None,
        "resend_of": str(row["resend_of"]) if row["resend_of"] else None,
        "requested_by": row["requested_by"],
    }
    if attempts is not None:
        view["attempt_log"] = [attempt_view(a) for a in attempts]
    return view


def _channel_answer(result: usecases.ChannelResult) -> dict:
    view = channel_view(result.row, result.owner_name)
    if result.released is not None:
        view["released"] = result.released
    return view


def _with_secret(response: JSONResponse, secret: str | None) -> JSONResponse:
    """Add the new signing secret to a fresh answer; a replayed answer never carries it."""
    if secret is None or response.headers.get("idempotent-replayed"):
        return response
    body = orjson.loads(response.body)
    body["signing_secret"] = secret
    body["signing_secret_note"] = "shown once: store it now; it is never returned again"
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=headers)


# -- channels -------------------------------------------------------------------------------


@router.post(
    "/channels",
    status_code=201,
    response_model=ChannelCreated,
    summary="Register a notice channel (webhook, WeCom, DingTalk, e-mail)",
)
async def create_channel(
    body: inputs.ChannelIn, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    settings = settings_of(request)
    secret: list[str | None] = [None]

    async def run(conn: asyncpg.Connection):
        result = await usecases.create_channel(conn, body, principal, settings=settings)
        secret[0] = result.signing_secret
        return 201, _channel_answer(result)

    # The request hash covers the body; secrets in it are hashed, never stored.
    response = await write(request, principal, "channels.create", body.model_dump(mode="json"), run)
    return _with_secret(response, secret[0])


@router.get("/channels", response_model=Page[ChannelOut], summary="Channels the caller may see")
async def list_channels(
    request: Request,
    principal: Principal = Depends(require("notifier:read")),
    branch_id: uuid.UUID | None = None,
    region_code: str | None = Query(None, pattern=r"^64\d{4}$"),
    unit_id: uuid.UUID | None = Query(None, description="a reform member unit's channels"),
    kind: ChannelKind | None = None,
    status: ChannelStatus | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    query = usecases.ChannelQuery(
        branch_id=branch_id, region_code=region_code, kind=kind, status=status, unit_id=unit_id
    )
    after = decode_cursor(cursor, uuid.UUID)
    async with db_pool(request).acquire() as conn:
        rows, names = await usecases.list_channels(conn, query, principal, limit=limit, after=after)
    return page(
        rows,
        limit,
        key=lambda r: r["id"],
        view=lambda r: channel_view(r, names.get(r["owner_branch_id"] or r["owner_unit_id"])),
    )


@router.get("/channels/{channel_id}", response_model=ChannelOut, summary="One channel (secrets masked)")
async def get_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))
):
    async with db_pool(request).acquire() as conn:
        return _channel_answer(await usecases.get_channel(conn, channel_id, principal))


@router.patch(
    "/channels/{channel_id}",
    response_model=ChannelOut,
    summary="Change a channel's name, subscriptions, locale, quiet hours or settings",
)
async def patch_channel(
    channel_id: uuid.UUID,
    body: inputs.ChannelPatch,
    request: Request,
    principal: Principal = Depends(require("notifier:write")),
):
    settings = settings_of(request)

    async def run(conn: asyncpg.Connection):
        return 200, _channel_answer(await usecases.update_channel(conn, channel_id, body, principal, settings=settings))

    return await write(request, principal, f"channels.patch.{channel_id}", body.model_dump(mode="json"), run)


@router.delete("/channels/{channel_id}", status_code=204, summary="Disable a channel (its log is kept)")
async def delete_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        await usecases.delete_channel(conn, channel_id, principal)
        return 204, {}

    await write(request, principal, f"channels.delete.{channel_id}", {}, run)
    return Response(status_code=204)


@router.post(
    "/channels/{channel_id}/rotate-secret",
    response_model=RotateOut,
    summary="New webhook signing secret; the old one keeps signing for the overlap window",
)
async def rotate_secret(
    channel_id: uuid.UUID,
    body: inputs.Rotate,
    request: Request,
    principal: Principal = Depends(require("notifier:write")),
):
    settings = settings_of(request)
    secret: list[str | None] = [None]

    async def run(conn: asyncpg.Connection):
        rotated = await usecases.rotate_secret(
            conn, channel_id, body, principal, usecases.wall_clock(), settings=settings
        )
        secret[0] = rotated.signing_secret
        return 200, {
            "channel_id": str(rotated.channel_id),
            "signing_secrets_active": rotated.active,
            "previous_valid_until": _iso(rotated.previous_valid_until),
        }

    response = await write(request, principal, f"channels.rotate.{channel_id}", body.model_dump(), run)
    return _with_secret(response, secret[0])


@router.post(
    "/channels/{channel_id}/pause",
    response_model=ChannelOut,
    summary="Pause a channel: its notices are held until it resumes",
)
async def pause_channel(
    channel_id: uuid.UUID,
    body: inputs.PauseIn,
    request: Request,
    principal: Principal = Depends(require("notifier:write")),
):
    async def run(conn: asyncpg.Connection):
        return 200, _channel_answer(await usecases.pause_channel(conn, channel_id, body, principal))

    return await write(request, principal, f"channels.pause.{channel_id}", body.model_dump(), run)


@router.post(
    "/channels/{channel_id}/resume", response_model=ChannelOut, summary="Resume a paused channel and send what it held"
)
async def resume_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        return 200, _channel_answer(await usecases.resume_channel(conn, channel_id, principal))

    return await write(request, principal, f"channels.resume.{channel_id}", {}, run)


@router.post(
    "/channels/{channel_id}/test",
    response_model=DeliveryOut | TestSendPending,
    responses={202: {"model": TestSendPending, "description": "not sent yet: follow it in the log"}},
    summary="Send a test notice now, through the channel's own queue",
)
async def test_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    settings = settings_of(request)

    async def run(conn: asyncpg.Connection):
        delivery_id = await usecases.test_send(conn, channel_id, principal, now_cn())
        return 202, {"delivery_id": str(delivery_id)}

    response = await write(request, principal, f"channels.test.{channel_id}", {}, run)
    if response.status_code != 202:
        return response
    # The answer waits (bounded) for the worker's attempt: a person testing a channel wants its outcome.
    delivery_id = uuid.UUID(orjson.loads(response.body)["delivery_id"])
    deadline = time.monotonic() + settings.notifier_test_send_wait_s
    pool = db_pool(request)
    if request.app.state.relay is not None:
        request.app.state.relay.wake()
    while time.monotonic() < deadline:
        async with pool.acquire() as conn:
            outcome = await usecases.test_outcome(conn, delivery_id)
        if outcome is not None:
            view = delivery_view(outcome.row, outcome.attempts)
            view["delivered"] = outcome.row["status"] == "delivered"
            return JSONResponse(view, status_code=200)
        await asyncio.sleep(0.1)
    return JSONResponse(
        {"delivery_id": str(delivery_id), "status": "pending", "detail": "not sent yet: follow it in the delivery log"},
        status_code=202,
        headers={"Location": f"/v1/deliveries/{delivery_id}"},
    )


# -- unsubscribing from e-mail (mail clients, no token) -----------------------------------------------


@router.get("/unsubscribe/{channel_id}", include_in_schema=False)
async def unsubscribe_page(
    channel_id: uuid.UUID, request: Request, address: str = Query(max_length=320), token: str = Query(max_length=64)
):
    """A page with one button (link scanners follow GET links: only a POST unsubscribes)."""
    usecases.check_unsubscribe_link(channel_id, address, token, settings_of(request))
    action = escape(str(request.url), quote=True)
    return Response(
        f'<!DOCTYPE html><html lang="zh-CN"><meta charset="utf-8"><title>退订通知</title>'
        f"<p>不再向 {escape(domain.mask_email(address))} 发送此渠道的通知？</p>"
        f'<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        f'<button type="submit">退订 / Unsubscribe</button></form></html>',
        media_type="text/html",
    )


@router.post("/unsubscribe/{channel_id}", include_in_schema=False, response_model=UnsubscribedOut)
async def unsubscribe(
    channel_id: uuid.UUID, request: Request, address: str = Query(max_length=320), token: str = Query(max_length=64)
):
    """RFC 8058 one-click unsubscribe: the address leaves the channel's recipients; a channel left
    with none is paused (its owner is told, as for any pause)."""
    async with db_pool(request).acquire() as conn, conn.transaction():
        left = await usecases.unsubscribe(conn, channel_id, address, token, settings=settings_of(request))
    return {"channel_id": str(channel_id), "unsubscribed": True, "recipients_left": left}


# -- the delivery log -------------------------------------------------------------------------


def _log_key(row) -> str:
    return f"{row['created_at'].isoformat()}|{row['id']}"


def _parse_log_key(text: str) -> tuple[datetime, uuid.UUID]:
    when, ident = text.split("|")
    return datetime.fromisoformat(when), uuid.UUID(ident)


@router.get(
    "/deliveries",
    response_model=Page[DeliveryOut],
    summary="The delivery log: every notice and each of its attempts, newest first",
)
async def list_deliveries(
    request: Request,
    principal: Principal = Depends(require("notifier:read")),
    branch_id: uuid.UUID | None = None,
    channel_id: uuid.UUID | None = None,
    event_type: str | None = EventTypeFilter,
    status: DeliveryStatus | None = None,
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    before = decode_cursor(cursor, _parse_log_key)
    query = usecases.DeliveryQuery(branch_id, channel_id, event_type, status, since, until)
    async with db_pool(request).acquire() as conn:
        rows, attempts = await usecases.list_deliveries(conn, query, principal, limit=limit, before=before)
    return page(rows, limit, key=_log_key, view=lambda r: delivery_view(r, attempts.get(r["id"], [])))


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut, summary="One delivery with every attempt")
async def get_delivery(
    delivery_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))
):
    async with db_pool(request).acquire() as conn:
        result = await usecases.get_delivery(conn, delivery_id, principal)
    return delivery_view(result.row, result.attempts)


@router.post(
    "/deliveries/{delivery_id}/resend",
    status_code=202,
    response_model=ResendOut,
    summary="Send a notice again (logged with who asked)",
)
async def resend_delivery(
    delivery_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        new = await usecases.resend(conn, delivery_id, principal)
        return 202, {"delivery_id": str(new), "resend_of": str(delivery_id)}

    return await write(request, principal, f"deliveries.resend.{delivery_id}", {}, run)


@router.post(
    "/deliveries/resend",
    status_code=202,
    response_model=ResendRangeOut,
    summary="Resend a channel's notices in a time range (dead ones by default)",
)
async def resend_range(
    body: inputs.ResendRange, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        made = await usecases.resend_range(conn, body, principal)
        return 202, {"resent": len(made), "delivery_ids": [str(d) for d in made]}

    return await write(request, principal, "deliveries.resend-range", body.model_dump(mode="json"), run)


# -- read model and templates ---------------------------------------------------------------------


@router.get(
    "/branches/{branch_id}",
    response_model=BranchOut,
    summary="A branch as the notifier knows it (from membership events)",
)
async def get_branch(branch_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))):
    async with db_pool(request).acquire() as conn:
        row = await usecases.get_branch(conn, branch_id, principal)
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "region_code": row["region_code"],
        "parent_id": str(row["parent_id"]) if row["parent_id"] else None,
        "kind": row["kind"],
        "status": row["status"],
    }


@router.get(
    "/templates/{event_type}",
    response_model=PreviewOut,
    summary="Preview a notice: a sample of the type rendered for a channel kind",
)
async def preview(
    event_type: str,
    principal: Principal = Depends(require("notifier:read")),
    locale: str = Query("zh-CN", pattern="^(zh-CN|en)$"),
    kind: str = Query("wecom", pattern="^(wecom|dingtalk|email)$"),
    format: str = Query("markdown", pattern="^(markdown|text)$"),
    keyword: str | None = None,
):
    body = usecases.preview(event_type, locale, kind, format, keyword)
    return {"event_type": event_type, "locale": locale, "kind": kind, "body": body}
