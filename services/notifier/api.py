"""The notifier's HTTP API: channels and subscriptions, secret rotation, test sends, pause and
resume, the delivery log and resends. Scopes ``notifier:write`` / ``notifier:read``; a token
acts on the channels of branches and federations inside its region.

Secrets are never returned: a webhook's signing secret is shown once, in the answer that
created or rotated it (and not in an idempotent replay of that answer, which is stored).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.notifier import domain, inputs, outbound, store, topics, vault
from services.notifier.pipeline import deliver_record
from services.notifier.render import Names, Renderer
from services.notifier.samples import sample
from services.notifier.settings import NotifierSettings
from shared import outbox, regions
from shared.auth import Principal, require
from shared.events import REGISTRY
from shared.events.notifier import ChannelPaused, ChannelResumed
from shared.http import write
from shared.logging import trace_id_var
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.privacy import scrub_text
from shared.problems import Problem, invalid, not_found

router = APIRouter(prefix="/v1", tags=["notices"])
_renderer: Renderer | None = None

# -- what the API answers ---------------------------------------------------------------------

ChannelKind = Literal["webhook", "wecom", "dingtalk", "email"]
ChannelStatus = Literal["active", "paused", "disabled"]
DeliveryStatus = Literal["routed", "ready", "sending", "retrying", "deferred", "held", "delivered", "dead"]
EventTypeFilter = Query(None, max_length=200, pattern=r"^[a-z0-9_.]+$", description="an event type")


class OwnerOut(BaseModel):
    kind: Literal["branch", "federation"]
    branch_id: str | None = None
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


def renderer() -> Renderer:
    global _renderer
    if _renderer is None:
        _renderer = Renderer()
    return _renderer


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


# -- helpers --------------------------------------------------------------------------------


async def _owner(conn, principal: Principal, owner: inputs.Owner) -> tuple[str, uuid.UUID | None, str, str]:
    """(owner kind, branch id, region, name), checked against the caller's scope."""
    if owner.branch_id is not None:
        branch = await store.get_branch(conn, owner.branch_id)
        if branch is None or branch["status"] != "active":
            raise invalid(
                "owner.branch_id",
                "no such active branch (the notifier learns branches from "
                "membership events; a new branch may take a moment to appear)",
            )
        principal.ensure_region(branch["region_code"])
        return "branch", owner.branch_id, branch["region_code"], branch["name"]
    assert owner.region_code is not None, "Owner's validator requires a branch id or a region code"
    region = regions.get(owner.region_code)
    if region is None:
        raise invalid("owner.region_code", "not a Ningxia region, city or county code")
    principal.ensure_region(region.code)
    return "federation", None, region.code, f"{region.name}总工会"


def _event_types(patterns: list[str] | None, owner_kind: str) -> list[str]:
    if patterns is None:
        return domain.default_subscriptions(owner_kind)
    known = list(REGISTRY)
    for i, p in enumerate(patterns):
        if not domain.valid_pattern(p, known):
            raise invalid(f"event_types.{i}", f"{p!r} matches no event type")
    if not patterns:
        raise invalid("event_types", "subscribe to at least one event type")
    return sorted(set(patterns))


async def _kind_secrets(
    kind: str, raw: dict, settings: NotifierSettings, existing: dict | None = None
) -> tuple[dict, dict, str | None]:
    """(secrets, public config, new signing secret) for a kind's settings."""
    try:
        cfg = inputs.CONFIGS[kind].model_validate(raw)
    # pydantic's ValidationError, shaped as a problem; the last resort also turns any other error a kind's
    # validator raises about the client's config into a 422, never a 500.
    except Exception as exc:  # noqa: BLE001 — deliberate last resort: the config is the client's input
        errors: list[dict] = getattr(exc, "errors", lambda: [])()
        items = [
            {"field": "config." + ".".join(map(str, e.get("loc", ()))), "reason": e.get("msg", "")} for e in errors
        ] or [{"field": "config", "reason": str(exc)}]
        raise Problem(
            422,
            "validation-error",
            "Request is not valid",
            "; ".join(f"{i['field']}: {i['reason']}" for i in items[:5]),
            errors=items,
        ) from None
    secrets = dict(existing or {})
    new_secret = None
    # CONFIGS maps each kind to its own class: the isinstance checks are the kind checks, typed.
    if isinstance(cfg, inputs.WebhookConfig):
        try:
            await outbound.check_url(cfg.url, allow_private=settings.outbound_allow_private)
        except outbound.UnsafeURL as exc:
            raise invalid("config.url", str(exc)) from None
        secrets["url"] = cfg.url
        if not secrets.get("signing"):
            new_secret = vault.new_webhook_secret()
            secrets["signing"] = [{"secret": new_secret, "expires_at": None}]
        return secrets, {"url": domain.mask_url(cfg.url)}, new_secret
    if isinstance(cfg, inputs.WecomConfig):
        key = cfg.key
        if cfg.webhook_url:
            try:
                key = outbound_key(cfg.webhook_url, settings.notifier_wecom_url, "key")
            except ValueError as exc:
                raise invalid("config.webhook_url", str(exc)) from None
        if not key:
            raise invalid("config.key", "give the robot's key or its webhook_url")
        secrets["key"] = key
        return secrets, {"key": domain.mask(key), "format": cfg.format}, None
    if isinstance(cfg, inputs.DingtalkConfig):
        token = cfg.access_token
        if cfg.webhook_url:
            try:
                token = outbound_key(cfg.webhook_url, settings.notifier_dingtalk_url, "access_token")
            except ValueError as exc:
                raise invalid("config.webhook_url", str(exc)) from None
        if not token:
            raise invalid("config.access_token", "give the robot's access_token or its webhook_url")
        secrets["token"] = token
        if cfg.secret:
            secrets["secret"] = cfg.secret
        if not secrets.get("secret") and not cfg.keyword:
            raise invalid("config", "a DingTalk robot needs signing (secret) or a keyword: set the one the robot uses")
        return (
            secrets,
            {
                "token": domain.mask(token),
                "signed": bool(secrets.get("secret")),
                "keyword": cfg.keyword,
                "format": cfg.format,
            },
            None,
        )
    assert isinstance(cfg, inputs.EmailConfig), f"no settings for channel kind {kind!r}"
    secrets["to"] = cfg.to
    return secrets, {"to": [domain.mask_email(a) for a in cfg.to]}, None


def outbound_key(url: str, base: str, param: str) -> str:
    return inputs.robot_key_from_url(url, base, param)


async def _load_channel(conn, channel_id: uuid.UUID, principal: Principal, *, lock: bool = False):
    row = await store.get_channel(conn, channel_id, lock=lock)
    if row is None or not principal.may_act_on(row["owner_region"]):
        raise not_found("channel", channel_id)
    return row


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
    secrets, config, new_secret = await _kind_secrets(body.kind, body.config, settings)
    channel_id = uuid.uuid4()

    async def run(conn: asyncpg.Connection):
        owner_kind, branch_id, region, owner_name = await _owner(conn, principal, body.owner)
        scope = body.scope or ("subtree" if owner_kind == "federation" else "own")
        await store.insert_channel(
            conn,
            id=channel_id,
            kind=body.kind,
            name=body.name,
            owner_kind=owner_kind,
            owner_branch_id=branch_id,
            owner_region=region,
            scope=scope,
            event_types=_event_types(body.event_types, owner_kind),
            locale=body.locale,
            config=config,
            secrets=vault.seal(settings.data_key_bytes(), channel_id, secrets),
            quiet_hours=body.quiet_hours.model_dump() if body.quiet_hours else None,
            created_by=principal.subject,
        )
        return 201, channel_view(await store.get_channel(conn, channel_id), owner_name)

    # The request hash covers the body; secrets in it are hashed, never stored.
    response = await write(request, principal, "channels.create", body.model_dump(mode="json"), run)
    return _with_secret(response, new_secret)


@router.get("/channels", response_model=Page[ChannelOut], summary="Channels the caller may see")
async def list_channels(
    request: Request,
    principal: Principal = Depends(require("notifier:read")),
    branch_id: uuid.UUID | None = None,
    region_code: str | None = Query(None, pattern=r"^64\d{4}$"),
    kind: ChannelKind | None = None,
    status: ChannelStatus | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    scope = regions.descendants(principal.region)
    if region_code is not None:
        if region_code not in scope:
            return {"items": [], "next_cursor": None}
        scope = [region_code]
    after = decode_cursor(cursor, uuid.UUID)
    async with request.app.state.db.acquire() as conn:
        rows = await store.list_channels(
            conn, regions=scope, owner_branch_id=branch_id, kind=kind, status=status, limit=limit + 1, after=after
        )
        names = await store.branch_names(conn, [r["owner_branch_id"] for r in rows if r["owner_branch_id"]])
    return page(
        rows,
        limit,
        key=lambda r: r["id"],
        view=lambda r: channel_view(r, names.get(r["owner_branch_id"]) if r["owner_branch_id"] else None),
    )


@router.get("/channels/{channel_id}", response_model=ChannelOut, summary="One channel (secrets masked)")
async def get_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))
):
    async with request.app.state.db.acquire() as conn:
        row = await _load_channel(conn, channel_id, principal)
        names = await store.branch_names(conn, [row["owner_branch_id"]] if row["owner_branch_id"] else [])
    return channel_view(row, names.get(row["owner_branch_id"]))


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
        row = await _load_channel(conn, channel_id, principal, lock=True)
        fields: dict = {}
        if body.name is not None:
            fields["name"] = body.name
        if body.scope is not None:
            fields["scope"] = body.scope
        if body.locale is not None:
            fields["locale"] = body.locale
        if body.event_types is not None:
            fields["event_types"] = _event_types(body.event_types, row["owner_kind"])
        if body.clear_quiet_hours:
            fields["quiet_hours"] = None
        elif body.quiet_hours is not None:
            fields["quiet_hours"] = body.quiet_hours.model_dump()
        if body.config is not None:
            key = settings.data_key_bytes()
            old = vault.open_(key, channel_id, bytes(row["secrets"]))
            # the signing secrets stay; the URL may change
            old = {"signing": old.get("signing", [])} if row["kind"] == "webhook" else {}
            secrets, config, _ = await _kind_secrets(row["kind"], body.config, settings, existing=old)
            fields["secrets"] = vault.seal(key, channel_id, secrets)
            fields["config"] = config
        if fields:
            await store.update_channel(conn, channel_id, **fields)
        return 200, channel_view(await store.get_channel(conn, channel_id))

    return await write(request, principal, f"channels.patch.{channel_id}", body.model_dump(mode="json"), run)


@router.delete("/channels/{channel_id}", status_code=204, summary="Disable a channel (its log is kept)")
async def delete_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        await _load_channel(conn, channel_id, principal, lock=True)
        await store.update_channel(conn, channel_id, status="disabled")
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
    new_secret = vault.new_webhook_secret()

    async def run(conn: asyncpg.Connection):
        row = await _load_channel(conn, channel_id, principal, lock=True)
        if row["kind"] != "webhook":
            raise Problem(
                409,
                "not-a-webhook",
                "Only webhook channels have signing secrets",
                f"channel {channel_id} is a {row['kind']} channel",
            )
        key = settings.data_key_bytes()
        secrets = vault.open_(key, channel_id, bytes(row["secrets"]))
        now = time.time()
        until = now + body.overlap_s
        signing = [s for s in secrets.get("signing", []) if not s.get("expires_at") or s["expires_at"] > now]
        for s in signing:
            s["expires_at"] = min(s["expires_at"], until) if s.get("expires_at") else until
        signing = [s for s in signing if s["expires_at"] > now]
        signing.append({"secret": new_secret, "expires_at": None})
        secrets["signing"] = signing
        await store.update_channel(conn, channel_id, secrets=vault.seal(key, channel_id, secrets))
        return 200, {
            "channel_id": str(channel_id),
            "signing_secrets_active": len(signing),
            "previous_valid_until": datetime.fromtimestamp(until, UTC).isoformat() if len(signing) > 1 else None,
        }

    response = await write(request, principal, f"channels.rotate.{channel_id}", body.model_dump(), run)
    return _with_secret(response, new_secret)


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
        row = await _load_channel(conn, channel_id, principal, lock=True)
        if row["status"] == "disabled":
            raise Problem(409, "channel-disabled", "The channel is disabled")
        # Free text a person typed: a phone or ID number in it is masked before it is stored,
        # shown or published (notifier.events is kept forever).
        reason = scrub_text(body.reason)
        paused = await store.pause_channel(conn, channel_id, reason)
        if paused:
            await outbox.add(
                conn,
                ChannelPaused(
                    channel_id=channel_id, channel_kind=row["kind"], owner_region=row["owner_region"], reason=reason
                ),
                trace_id=trace_id_var.get(),
            )
        return 200, channel_view(await store.get_channel(conn, channel_id))

    return await write(request, principal, f"channels.pause.{channel_id}", body.model_dump(), run)


@router.post(
    "/channels/{channel_id}/resume", response_model=ChannelOut, summary="Resume a paused channel and send what it held"
)
async def resume_channel(
    channel_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:write"))
):
    async def run(conn: asyncpg.Connection):
        row = await _load_channel(conn, channel_id, principal, lock=True)
        if row["status"] == "disabled":
            raise Problem(409, "channel-disabled", "The channel is disabled")
        released = []
        if row["status"] == "paused":
            await store.update_channel(
                conn, channel_id, status="active", paused_reason=None, paused_at=None, failing_since=None
            )
            await outbox.add(
                conn,
                ChannelResumed(channel_id=channel_id, channel_kind=row["kind"], owner_region=row["owner_region"]),
                trace_id=trace_id_var.get(),
            )
            released = await store.release_held(conn, channel_id)
            await store.enqueue_many(
                conn,
                [
                    (
                        topics.DELIVER,
                        str(r["channel_id"]),
                        deliver_record(r["id"], r["channel_id"], r["event_type"], r["event_time"]),
                    )
                    for r in released
                ],
            )
        view = channel_view(await store.get_channel(conn, channel_id))
        view["released"] = len(released)
        return 200, view

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
        row = await _load_channel(conn, channel_id, principal)
        if row["status"] != "active":
            raise Problem(
                409,
                "channel-not-active",
                f"The channel is {row['status']}",
                "resume it first" if row["status"] == "paused" else None,
            )
        config = orjson.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        data = {"channel_name": row["name"], "requested_by": principal.subject}
        if row["kind"] == "webhook":
            payload = orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": str(uuid.uuid4()),
                    "source": "/changai/notifier",
                    "type": domain.TEST_TYPE,
                    "time": datetime.now(UTC).isoformat(),
                    "datacontenttype": "application/json",
                    "data": data,
                }
            )
        else:
            notice = renderer().notice(domain.TEST_TYPE, data, row["locale"], Names())
            payload = orjson.dumps(
                renderer().layout(notice, row["kind"], config.get("format", "markdown"), keyword=config.get("keyword"))
            )
        d = await store.insert_test_delivery(
            conn,
            channel_id=channel_id,
            region=row["owner_region"],
            payload=payload,
            payload_hash=domain.payload_hash(payload),
            requested_by=principal.subject,
            event_type=domain.TEST_TYPE,
        )
        await store.enqueue(
            conn,
            topics.DELIVER,
            str(channel_id),
            deliver_record(d["id"], channel_id, domain.TEST_TYPE, d["event_time"]),
        )
        return 202, {"delivery_id": str(d["id"])}

    response = await write(request, principal, f"channels.test.{channel_id}", {}, run)
    if response.status_code != 202:
        return response
    delivery_id = uuid.UUID(orjson.loads(response.body)["delivery_id"])
    deadline = time.monotonic() + settings.notifier_test_send_wait_s
    pool = request.app.state.db
    if request.app.state.relay is not None:
        request.app.state.relay.wake()
    while time.monotonic() < deadline:
        async with pool.acquire() as conn:
            row = await store.get_delivery(conn, delivery_id)
            assert row is not None, "the delivery was written by this request"
            if row["status"] in ("delivered", "dead"):
                attempts = await store.attempts_of(conn, [delivery_id])
                view = delivery_view(row, attempts)
                view["delivered"] = row["status"] == "delivered"
                return JSONResponse(view, status_code=200)
        await asyncio.sleep(0.1)
    return JSONResponse(
        {"delivery_id": str(delivery_id), "status": "pending", "detail": "not sent yet: follow it in the delivery log"},
        status_code=202,
        headers={"Location": f"/v1/deliveries/{delivery_id}"},
    )


# -- unsubscribing from e-mail (mail clients, no token) -----------------------------------------------


async def _unsubscribe_target(request: Request, channel_id: uuid.UUID, address: str, token: str) -> bytes:
    """The data key, once the link is proven ours; 404 for anything else (nothing to learn from it)."""
    key = settings_of(request).data_key_bytes()
    if not hmac.compare_digest(outbound.unsubscribe_token(key, str(channel_id), address).encode(), token.encode()):
        raise not_found("channel", channel_id)
    return key


@router.get("/unsubscribe/{channel_id}", include_in_schema=False)
async def unsubscribe_page(
    channel_id: uuid.UUID, request: Request, address: str = Query(max_length=320), token: str = Query(max_length=64)
):
    """A page with one button (link scanners follow GET links: only a POST unsubscribes)."""
    await _unsubscribe_target(request, channel_id, address, token)
    from html import escape

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
    key = await _unsubscribe_target(request, channel_id, address, token)
    async with request.app.state.db.acquire() as conn, conn.transaction():
        row = await store.get_channel(conn, channel_id, lock=True)
        if row is None or row["kind"] != "email":
            raise not_found("channel", channel_id)
        secrets = vault.open_(key, channel_id, bytes(row["secrets"]))
        before = list(secrets.get("to", []))
        left = [a for a in before if a.lower() != address.lower()]
        if len(left) != len(before):
            secrets["to"] = left
            await store.update_channel(
                conn,
                channel_id,
                secrets=vault.seal(key, channel_id, secrets),
                config={"to": [domain.mask_email(a) for a in left]},
            )
            if not left and row["status"] == "active":
                reason = "every recipient unsubscribed"
                if await store.pause_channel(conn, channel_id, reason):
                    await outbox.add(
                        conn,
                        ChannelPaused(
                            channel_id=channel_id,
                            channel_kind=row["kind"],
                            owner_region=row["owner_region"],
                            reason=reason,
                        ),
                        trace_id=trace_id_var.get(),
                    )
    return {"channel_id": str(channel_id), "unsubscribed": True, "recipients_left": len(left)}


# -- the delivery log -------------------------------------------------------------------------


def _log_key(row) -> str:
    return f"{row['created_at'].isoformat()}|{row['id']}"


def _parse_log_key(text: str) -> tuple[datetime, uuid.UUID]:
    when, ident = text.split("|")
    return datetime.fromisoformat(when), uuid.UUID(ident)


def _when(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(name, "an ISO 8601 date-time, e.g. 2024-05-01T08:00:00+08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=domain.SHANGHAI)


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
    async with request.app.state.db.acquire() as conn:
        rows = await store.list_deliveries(
            conn,
            regions=regions.descendants(principal.region),
            branch_id=branch_id,
            channel_id=channel_id,
            event_type=event_type,
            status=status,
            since=_when("since", since),
            until=_when("until", until),
            limit=limit + 1,
            before=before,
        )
        attempts = await store.attempts_of(conn, [r["id"] for r in rows[:limit]])
    by_delivery: dict = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    return page(rows, limit, key=_log_key, view=lambda r: delivery_view(r, by_delivery.get(r["id"], [])))


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut, summary="One delivery with every attempt")
async def get_delivery(
    delivery_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))
):
    async with request.app.state.db.acquire() as conn:
        row = await store.get_delivery(conn, delivery_id)
        if row is None or not principal.may_act_on(row["owner_region"]):
            raise not_found("delivery", delivery_id)
        return delivery_view(row, await store.attempts_of(conn, [delivery_id]))


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
        row = await store.get_delivery(conn, delivery_id)
        if row is None or not principal.may_act_on(row["owner_region"]):
            raise not_found("delivery", delivery_id)
        if row["status"] in ("routed", "ready", "sending", "retrying", "deferred"):
            raise Problem(
                409,
                "delivery-in-progress",
                "The delivery is still in progress",
                f"it is {row['status']}; resend once it is delivered or dead",
            )
        new = await store.resend(conn, delivery_id, principal.subject)
        if new is None:
            raise Problem(409, "nothing-to-resend", "The delivery was never rendered")
        await store.enqueue(
            conn,
            topics.DELIVER,
            str(new["channel_id"]),
            deliver_record(new["id"], new["channel_id"], row["event_type"], new["event_time"]),
        )
        return 202, {"delivery_id": str(new["id"]), "resend_of": str(delivery_id)}

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
        await _load_channel(conn, body.channel_id, principal)
        rows = await store.list_deliveries(
            conn,
            regions=regions.descendants(principal.region),
            branch_id=None,
            channel_id=body.channel_id,
            event_type=None,
            status=body.status,
            since=_when("since", body.since),
            until=_when("until", body.until),
            limit=1000,
            before=None,
        )
        made = []
        for row in rows:
            new = await store.resend(conn, row["id"], principal.subject)
            if new is not None:
                made.append(str(new["id"]))
                await store.enqueue(
                    conn,
                    topics.DELIVER,
                    str(new["channel_id"]),
                    deliver_record(new["id"], new["channel_id"], row["event_type"], new["event_time"]),
                )
        return 202, {"resent": len(made), "delivery_ids": made}

    return await write(request, principal, "deliveries.resend-range", body.model_dump(mode="json"), run)


# -- read model and templates ---------------------------------------------------------------------


@router.get(
    "/branches/{branch_id}",
    response_model=BranchOut,
    summary="A branch as the notifier knows it (from membership events)",
)
async def get_branch(branch_id: uuid.UUID, request: Request, principal: Principal = Depends(require("notifier:read"))):
    async with request.app.state.db.acquire() as conn:
        row = await store.get_branch(conn, branch_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("branch", branch_id)
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
    if event_type not in REGISTRY and event_type != domain.TEST_TYPE:
        raise not_found("event type", event_type)
    notice = renderer().notice(event_type, sample(event_type), locale, Names())
    return {
        "event_type": event_type,
        "locale": locale,
        "kind": kind,
        "body": renderer().layout(notice, kind, format, keyword=keyword),
    }
