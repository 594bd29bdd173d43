"""The notifier's commands (and reads): one async function each, called by the HTTP routes.

Each takes the connection (the caller's transaction: the route's ``write`` with its Idempotency-Key),
the command, the actor (a ``Principal``) and, where time matters, the clock; it checks who may do it
with the one owner rule (``Principal.may_act_for``) — a channel, delivery or branch outside the actor's
scope is ``NotFound`` (404: never told it exists), a write naming an owner outside it ``OutOfScope``
(403), lists cut to the scope — decides with ``domain``, writes with ``store``, and queues its events
(outbox) and deliver records in the same transaction. Refusals are ``shared.errors`` exceptions;
``shared.http`` makes them problems.

Who owns a channel: a branch or a federation (a token acts on those of its region and below), or a
reform member unit (its liaison's token, with the ``unit`` claim, acts on its own unit's channels and
no other; the office, a region-level token without a unit, on every unit's).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.notifier import domain, inputs, outbound, store, topics, vault
from services.notifier.pipeline import deliver_record
from services.notifier.render import Names, Renderer
from services.notifier.samples import sample
from services.notifier.settings import NotifierSettings
from shared import outbox, regions
from shared.auth import Principal
from shared.errors import Conflict, Invalid, NotFound
from shared.events import REGISTRY
from shared.events.notifier import ChannelPaused, ChannelResumed
from shared.logging import trace_id_var
from shared.privacy import scrub_text

_renderer: Renderer | None = None


def renderer() -> Renderer:
    global _renderer
    if _renderer is None:
        _renderer = Renderer()
    return _renderer


@dataclass
class Owner:
    """A channel's owner, resolved and checked: its kind, branch or unit, region and name."""

    kind: str  # branch | federation | reform_unit
    branch_id: uuid.UUID | None
    region: str
    name: str | None
    unit_id: uuid.UUID | None = None


@dataclass
class ChannelResult:
    """A channel row as the answer shows it, with its owner's name; a new signing secret (shown once)."""

    row: asyncpg.Record
    owner_name: str | None = None
    signing_secret: str | None = None
    released: int | None = None  # resume: held notices sent now


@dataclass
class Rotated:
    channel_id: uuid.UUID
    active: int
    previous_valid_until: datetime | None
    signing_secret: str


@dataclass
class DeliveryResult:
    row: asyncpg.Record
    attempts: list[asyncpg.Record] = field(default_factory=list)


@dataclass
class DeliveryQuery:
    branch_id: uuid.UUID | None = None
    channel_id: uuid.UUID | None = None
    event_type: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None


@dataclass
class ChannelQuery:
    branch_id: uuid.UUID | None = None
    region_code: str | None = None
    kind: str | None = None
    status: str | None = None
    unit_id: uuid.UUID | None = None


def _actor_unit(actor: Principal) -> uuid.UUID | None:
    """The unit a liaison's token speaks for (a claim that is no unit id speaks for none)."""
    return domain.as_uuid(actor.unit) if actor.unit is not None else None


def _unit_filter(actor: Principal, requested: uuid.UUID | None) -> tuple[bool, uuid.UUID | None]:
    """(any to show, the unit to filter on): a liaison sees its own unit's channels only."""
    if actor.unit is None:
        return True, requested
    own = _actor_unit(actor)
    if own is None or (requested is not None and requested != own):
        return False, None
    return True, own


# -- owners, subscriptions, settings ----------------------------------------------------------------
async def resolve_owner(conn, actor: Principal, owner: inputs.Owner) -> Owner:
    """The owner a new channel names, checked against the actor's scope (403 outside it)."""
    if owner.unit_id is not None:
        actor.ensure_owner(regions.REGION_ROOT, owner.unit_id)
        name = (await store.reform_unit_names(conn, [owner.unit_id])).get(owner.unit_id)
        if name is None:
            raise Invalid(
                "owner.unit_id",
                "no such member unit (the notifier learns units from reform events; "
                "a new unit may take a moment to appear)",
            )
        # a unit's channels are the region's ledger's (640000), routed by the unit's id
        return Owner("reform_unit", None, regions.REGION_ROOT, name, unit_id=owner.unit_id)
    if owner.branch_id is not None:
        branch = await store.get_branch(conn, owner.branch_id)
        if branch is None or branch["status"] != "active":
            raise Invalid(
                "owner.branch_id",
                "no such active branch (the notifier learns branches from "
                "membership events; a new branch may take a moment to appear)",
            )
        actor.ensure_owner(branch["region_code"])
        return Owner("branch", owner.branch_id, branch["region_code"], branch["name"])
    assert owner.region_code is not None, "Owner's validator requires a branch id or a region code"
    region = regions.get(owner.region_code)
    if region is None:
        raise Invalid("owner.region_code", "not a Ningxia region, city or county code")
    actor.ensure_owner(region.code)
    return Owner("federation", None, region.code, f"{region.name}总工会")


def channel_scope(requested: str | None, owner_kind: str) -> str:
    """``subtree`` (everything under the owner) or ``own``; a member unit's channel has no subtree."""
    if owner_kind == "reform_unit":
        if requested == "subtree":
            raise Invalid("scope", "a member unit's channel hears its own unit's tasks: scope is own")
        return "own"
    return requested or ("subtree" if owner_kind == "federation" else "own")


def event_types(patterns: list[str] | None, owner_kind: str) -> list[str]:
    """The subscriptions a channel asks for, each matching a known type; the owner's defaults when none."""
    if patterns is None:
        return domain.default_subscriptions(owner_kind)
    known = list(REGISTRY)
    for i, p in enumerate(patterns):
        if not domain.valid_pattern(p, known):
            raise Invalid(f"event_types.{i}", f"{p!r} matches no event type")
    if not patterns:
        raise Invalid("event_types", "subscribe to at least one event type")
    return sorted(set(patterns))


def _config_refused(exc: Exception) -> Invalid:
    """A kind's settings refused by its model: one 422 listing every field (pydantic's errors, or the message)."""
    errors: list[dict] = getattr(exc, "errors", lambda: [])()
    items = [
        {"field": "config." + ".".join(map(str, e.get("loc", ()))), "reason": e.get("msg", "")} for e in errors
    ] or [{"field": "config", "reason": str(exc)}]
    refused = Invalid(items[0]["field"], items[0]["reason"])
    refused.detail = "; ".join(f"{i['field']}: {i['reason']}" for i in items[:5])
    refused.extra["errors"] = items
    return refused


async def channel_settings(
    kind: str, raw: dict, settings: NotifierSettings, existing: dict | None = None
) -> tuple[dict, dict, str | None]:
    """(secrets, public config, new signing secret) for a kind's settings; a webhook's URL is checked
    against the outbound rules (https, public addresses) here."""
    try:
        cfg = inputs.CONFIGS[kind].model_validate(raw)
    # pydantic's ValidationError, shaped as a problem; the last resort also turns any other error a kind's
    # validator raises about the client's config into a 422, never a 500.
    except Exception as exc:  # noqa: BLE001 — deliberate last resort: the config is the client's input
        raise _config_refused(exc) from None
    secrets = dict(existing or {})
    new_secret = None
    # CONFIGS maps each kind to its own class: the isinstance checks are the kind checks, typed.
    if isinstance(cfg, inputs.WebhookConfig):
        try:
            await outbound.check_url(cfg.url, allow_private=settings.outbound_allow_private)
        except outbound.UnsafeURL as exc:
            raise Invalid("config.url", str(exc)) from None
        secrets["url"] = cfg.url
        if not secrets.get("signing"):
            new_secret = vault.new_webhook_secret()
            secrets["signing"] = [{"secret": new_secret, "expires_at": None}]
        return secrets, {"url": domain.mask_url(cfg.url)}, new_secret
    if isinstance(cfg, inputs.WecomConfig):
        key = cfg.key
        if cfg.webhook_url:
            try:
                key = inputs.robot_key_from_url(cfg.webhook_url, settings.notifier_wecom_url, "key")
            except ValueError as exc:
                raise Invalid("config.webhook_url", str(exc)) from None
        if not key:
            raise Invalid("config.key", "give the robot's key or its webhook_url")
        secrets["key"] = key
        return secrets, {"key": domain.mask(key), "format": cfg.format}, None
    if isinstance(cfg, inputs.DingtalkConfig):
        token = cfg.access_token
        if cfg.webhook_url:
            try:
                token = inputs.robot_key_from_url(cfg.webhook_url, settings.notifier_dingtalk_url, "access_token")
            except ValueError as exc:
                raise Invalid("config.webhook_url", str(exc)) from None
        if not token:
            raise Invalid("config.access_token", "give the robot's access_token or its webhook_url")
        secrets["token"] = token
        if cfg.secret:
            secrets["secret"] = cfg.secret
        if not secrets.get("secret") and not cfg.keyword:
            raise Invalid("config", "a DingTalk robot needs signing (secret) or a keyword: set the one the robot uses")
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


# -- channels -------------------------------------------------------------------------------------
def _visible(actor: Principal, row: asyncpg.Record | None) -> bool:
    return row is not None and actor.may_act_for(row["owner_region"], row["owner_unit_id"])


async def visible_channel(conn, channel_id: uuid.UUID, actor: Principal, *, lock: bool = False) -> asyncpg.Record:
    """A channel the actor may see (404 otherwise: it is not told the channel exists)."""
    row = await store.get_channel(conn, channel_id, lock=lock)
    if row is None or not _visible(actor, row):
        raise NotFound("channel", channel_id)
    return row


async def owner_names(conn, rows: list[asyncpg.Record]) -> dict[uuid.UUID, str]:
    """The names of the branches and member units owning these channels, by owner id."""
    names = await store.branch_names(conn, [r["owner_branch_id"] for r in rows if r["owner_branch_id"]])
    units = [r["owner_unit_id"] for r in rows if r["owner_unit_id"]]
    if units:
        names.update(await store.reform_unit_names(conn, units))
    return names


async def _owner_name(conn, row: asyncpg.Record) -> str | None:
    owner = row["owner_branch_id"] or row["owner_unit_id"]
    return (await owner_names(conn, [row])).get(owner) if owner else None


async def create_channel(
    conn, cmd: inputs.ChannelIn, actor: Principal, *, settings: NotifierSettings, channel_id: uuid.UUID | None = None
) -> ChannelResult:
    """Register a channel: its owner checked, its secrets sealed under the data key (bound to its id)."""
    channel_id = channel_id or uuid.uuid4()
    owner = await resolve_owner(conn, actor, cmd.owner)
    secrets, config, new_secret = await channel_settings(cmd.kind, cmd.config, settings)
    await store.insert_channel(
        conn,
        id=channel_id,
        kind=cmd.kind,
        name=cmd.name,
        owner_kind=owner.kind,
        owner_branch_id=owner.branch_id,
        owner_unit_id=owner.unit_id,
        owner_region=owner.region,
        scope=channel_scope(cmd.scope, owner.kind),
        event_types=event_types(cmd.event_types, owner.kind),
        locale=cmd.locale,
        config=config,
        secrets=vault.seal(settings.data_key_bytes(), channel_id, secrets),
        quiet_hours=cmd.quiet_hours.model_dump() if cmd.quiet_hours else None,
        created_by=actor.subject,
    )
    row = await store.get_channel(conn, channel_id)
    assert row is not None, "inserted in this transaction"
    return ChannelResult(row, owner.name, signing_secret=new_secret)


async def list_channels(
    conn, query: ChannelQuery, actor: Principal, *, limit: int, after: uuid.UUID | None
) -> tuple[list[asyncpg.Record], dict[uuid.UUID, str]]:
    """Channels the actor may see (cut to its scope; ``limit`` + 1 rows), and their owners' names. A
    liaison's list is its own unit's channels."""
    shown, unit = _unit_filter(actor, query.unit_id)
    scope = regions.descendants(regions.REGION_ROOT if unit is not None and actor.unit else actor.region)
    if not shown:
        return [], {}
    if query.region_code is not None:
        if query.region_code not in scope:
            return [], {}
        scope = [query.region_code]
    rows = await store.list_channels(
        conn,
        regions=scope,
        owner_branch_id=query.branch_id,
        owner_unit_id=unit,
        kind=query.kind,
        status=query.status,
        limit=limit + 1,
        after=after,
    )
    return rows, await owner_names(conn, rows)


async def get_channel(conn, channel_id: uuid.UUID, actor: Principal) -> ChannelResult:
    row = await visible_channel(conn, channel_id, actor)
    return ChannelResult(row, await _owner_name(conn, row))


async def update_channel(
    conn, channel_id: uuid.UUID, cmd: inputs.ChannelPatch, actor: Principal, *, settings: NotifierSettings
) -> ChannelResult:
    """Change a channel's name, scope, subscriptions, locale, quiet hours or settings (a webhook keeps its
    signing secrets when its URL changes)."""
    row = await visible_channel(conn, channel_id, actor, lock=True)
    fields: dict[str, Any] = {}
    if cmd.name is not None:
        fields["name"] = cmd.name
    if cmd.scope is not None:
        fields["scope"] = channel_scope(cmd.scope, row["owner_kind"])
    if cmd.locale is not None:
        fields["locale"] = cmd.locale
    if cmd.event_types is not None:
        fields["event_types"] = event_types(cmd.event_types, row["owner_kind"])
    if cmd.clear_quiet_hours:
        fields["quiet_hours"] = None
    elif cmd.quiet_hours is not None:
        fields["quiet_hours"] = cmd.quiet_hours.model_dump()
    if cmd.config is not None:
        key = settings.data_key_bytes()
        old = vault.open_(key, channel_id, bytes(row["secrets"]))
        old = {"signing": old.get("signing", [])} if row["kind"] == "webhook" else {}
        secrets, config, _ = await channel_settings(row["kind"], cmd.config, settings, existing=old)
        fields["secrets"] = vault.seal(key, channel_id, secrets)
        fields["config"] = config
    if fields:
        await store.update_channel(conn, channel_id, **fields)
    return await _reread(conn, channel_id)


async def _reread(conn, channel_id: uuid.UUID) -> ChannelResult:
    row = await store.get_channel(conn, channel_id)
    assert row is not None, "read in this transaction"
    return ChannelResult(row, await _owner_name(conn, row))


async def delete_channel(conn, channel_id: uuid.UUID, actor: Principal) -> None:
    """Disable a channel; its log is kept."""
    await visible_channel(conn, channel_id, actor, lock=True)
    await store.update_channel(conn, channel_id, status="disabled")


async def rotate_secret(
    conn, channel_id: uuid.UUID, cmd: inputs.Rotate, actor: Principal, now: float, *, settings: NotifierSettings
) -> Rotated:
    """A new webhook signing secret; the ones still valid keep signing for ``cmd.overlap_s`` (``now``: epoch s)."""
    row = await visible_channel(conn, channel_id, actor, lock=True)
    if row["kind"] != "webhook":
        raise Conflict(
            f"channel {channel_id} is a {row['kind']} channel",
            kind="not-a-webhook",
            title="Only webhook channels have signing secrets",
        )
    key = settings.data_key_bytes()
    secrets = vault.open_(key, channel_id, bytes(row["secrets"]))
    until = now + cmd.overlap_s
    signing = [s for s in secrets.get("signing", []) if not s.get("expires_at") or s["expires_at"] > now]
    for s in signing:
        s["expires_at"] = min(s["expires_at"], until) if s.get("expires_at") else until
    signing = [s for s in signing if s["expires_at"] > now]
    new_secret = vault.new_webhook_secret()
    signing.append({"secret": new_secret, "expires_at": None})
    secrets["signing"] = signing
    await store.update_channel(conn, channel_id, secrets=vault.seal(key, channel_id, secrets))
    previous = datetime.fromtimestamp(until, UTC) if len(signing) > 1 else None
    return Rotated(channel_id, len(signing), previous, new_secret)


async def _paused(conn, row: asyncpg.Record, reason: str) -> None:
    """Pause an active channel and tell its owner (``channel.paused`` through the outbox)."""
    if await store.pause_channel(conn, row["id"], reason):
        await outbox.add(
            conn,
            ChannelPaused(
                channel_id=row["id"], channel_kind=row["kind"], owner_region=row["owner_region"], reason=reason
            ),
            trace_id=trace_id_var.get(),
        )


async def pause_channel(conn, channel_id: uuid.UUID, cmd: inputs.PauseIn, actor: Principal) -> ChannelResult:
    """Pause a channel: its notices are held until it resumes."""
    row = await visible_channel(conn, channel_id, actor, lock=True)
    if row["status"] == "disabled":
        raise Conflict(kind="channel-disabled", title="The channel is disabled")
    # Free text a person typed: a phone or ID number in it is masked before it is stored,
    # shown or published (notifier.events is kept forever).
    await _paused(conn, row, scrub_text(cmd.reason))
    return await _reread(conn, channel_id)


async def resume_channel(conn, channel_id: uuid.UUID, actor: Principal) -> ChannelResult:
    """Resume a paused channel and send the notices it held, in their order."""
    row = await visible_channel(conn, channel_id, actor, lock=True)
    if row["status"] == "disabled":
        raise Conflict(kind="channel-disabled", title="The channel is disabled")
    released: list[asyncpg.Record] = []
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
    result = await _reread(conn, channel_id)
    result.released = len(released)
    return result


async def test_send(conn, channel_id: uuid.UUID, actor: Principal, now: datetime) -> uuid.UUID:
    """Queue a test notice through the channel's own queue; the delivery's id (the worker sends it)."""
    row = await visible_channel(conn, channel_id, actor)
    if row["status"] != "active":
        raise Conflict(
            "resume it first" if row["status"] == "paused" else None,
            kind="channel-not-active",
            title=f"The channel is {row['status']}",
        )
    config = orjson.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
    data = {"channel_name": row["name"], "requested_by": actor.subject}
    if row["kind"] == "webhook":
        payload = orjson.dumps(
            {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/changai/notifier",
                "type": domain.TEST_TYPE,
                "time": now.isoformat(),
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
        requested_by=actor.subject,
        event_type=domain.TEST_TYPE,
    )
    await store.enqueue(
        conn, topics.DELIVER, str(channel_id), deliver_record(d["id"], channel_id, domain.TEST_TYPE, d["event_time"])
    )
    return d["id"]


async def test_outcome(conn, delivery_id: uuid.UUID) -> DeliveryResult | None:
    """A test send's outcome once it has one (delivered or dead), else None."""
    row = await store.get_delivery(conn, delivery_id)
    assert row is not None, "the delivery was written by the test send"
    if row["status"] not in ("delivered", "dead"):
        return None
    return DeliveryResult(row, await store.attempts_of(conn, [delivery_id]))


# -- unsubscribing (RFC 8058: the signed link is the proof, no token) --------------------------------
def check_unsubscribe_link(channel_id: uuid.UUID, address: str, token: str, settings: NotifierSettings) -> bytes:
    """The data key, once the link is proven ours; 404 for anything else (nothing to learn from it)."""
    import hmac

    key = settings.data_key_bytes()
    if not hmac.compare_digest(outbound.unsubscribe_token(key, str(channel_id), address).encode(), token.encode()):
        raise NotFound("channel", channel_id)
    return key


async def unsubscribe(conn, channel_id: uuid.UUID, address: str, token: str, *, settings: NotifierSettings) -> int:
    """Take the address off an e-mail channel's recipients; a channel left with none is paused (its owner
    told). Returns how many recipients are left."""
    key = check_unsubscribe_link(channel_id, address, token, settings)
    row = await store.get_channel(conn, channel_id, lock=True)
    if row is None or row["kind"] != "email":
        raise NotFound("channel", channel_id)
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
            await _paused(conn, row, "every recipient unsubscribed")
    return len(left)


# -- the delivery log ---------------------------------------------------------------------------------
def parse_when(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(name, "an ISO 8601 date-time, e.g. 2024-05-01T08:00:00+08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=domain.SHANGHAI)


async def list_deliveries(
    conn, query: DeliveryQuery, actor: Principal, *, limit: int, before: tuple[datetime, uuid.UUID] | None
) -> tuple[list[asyncpg.Record], dict[uuid.UUID, list[asyncpg.Record]]]:
    """The log, newest first, cut to the actor's channels (``limit`` + 1 rows: the page's and whether there
    is more); the attempts of the page's deliveries. A liaison's log is its own unit's channels'."""
    shown, unit = _unit_filter(actor, None)
    if not shown:
        return [], {}
    rows = await store.list_deliveries(
        conn,
        regions=regions.descendants(regions.REGION_ROOT if unit is not None else actor.region),
        owner_unit_id=unit,
        branch_id=query.branch_id,
        channel_id=query.channel_id,
        event_type=query.event_type,
        status=query.status,
        since=parse_when("since", query.since),
        until=parse_when("until", query.until),
        limit=limit + 1,
        before=before,
    )
    attempts = await store.attempts_of(conn, [r["id"] for r in rows[:limit]])
    by_delivery: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    return rows, by_delivery


async def _visible_delivery(conn, delivery_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    row = await store.get_delivery(conn, delivery_id)
    if row is None or not _visible(actor, row):
        raise NotFound("delivery", delivery_id)
    return row


async def get_delivery(conn, delivery_id: uuid.UUID, actor: Principal) -> DeliveryResult:
    row = await _visible_delivery(conn, delivery_id, actor)
    return DeliveryResult(row, await store.attempts_of(conn, [delivery_id]))


async def _resend_one(conn, delivery_id: uuid.UUID, event_type: str, actor: Principal) -> asyncpg.Record | None:
    new = await store.resend(conn, delivery_id, actor.subject)
    if new is not None:
        await store.enqueue(
            conn,
            topics.DELIVER,
            str(new["channel_id"]),
            deliver_record(new["id"], new["channel_id"], event_type, new["event_time"]),
        )
    return new


async def resend(conn, delivery_id: uuid.UUID, actor: Principal) -> uuid.UUID:
    """Send a finished notice again, as a new delivery logged with who asked; its id."""
    row = await _visible_delivery(conn, delivery_id, actor)
    if row["status"] in ("routed", "ready", "sending", "retrying", "deferred"):
        raise Conflict(
            f"it is {row['status']}; resend once it is delivered or dead",
            kind="delivery-in-progress",
            title="The delivery is still in progress",
        )
    new = await _resend_one(conn, delivery_id, row["event_type"], actor)
    if new is None:
        raise Conflict(kind="nothing-to-resend", title="The delivery was never rendered")
    return new["id"]


async def resend_range(conn, cmd: inputs.ResendRange, actor: Principal) -> list[uuid.UUID]:
    """Resend a channel's notices in a time range (up to 1,000; dead ones by default); the new ids."""
    channel = await visible_channel(conn, cmd.channel_id, actor)
    rows = await store.list_deliveries(
        conn,
        regions=[channel["owner_region"]],
        branch_id=None,
        channel_id=cmd.channel_id,
        event_type=None,
        status=cmd.status,
        since=parse_when("since", cmd.since),
        until=parse_when("until", cmd.until),
        limit=1000,
        before=None,
    )
    made = []
    for row in rows:
        new = await _resend_one(conn, row["id"], row["event_type"], actor)
        if new is not None:
            made.append(new["id"])
    return made


# -- read model and templates -----------------------------------------------------------------------
async def get_branch(conn, branch_id: uuid.UUID, actor: Principal) -> asyncpg.Record:
    row = await store.get_branch(conn, branch_id)
    if row is None or not actor.may_act_for(row["region_code"]):
        raise NotFound("branch", branch_id)
    return row


def preview(event_type: str, locale: str, kind: str, fmt: str, keyword: str | None) -> dict:
    """A sample of the type rendered for a channel kind (what its channels would be sent)."""
    if event_type not in REGISTRY and event_type != domain.TEST_TYPE:
        raise NotFound("event type", event_type)
    notice = renderer().notice(event_type, sample(event_type), locale, Names())
    return renderer().layout(notice, kind, fmt, keyword=keyword)


def wall_clock() -> float:
    """Epoch seconds (signing secrets expire by it; the worker compares the same clock)."""
    return time.time()
