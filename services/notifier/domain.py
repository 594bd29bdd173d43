"""The notifier's rules: who hears of an event, what counts as delivered, when to wait. No I/O.

* Routing: an event concerns some branches (by id), some reform member units (a task's lead unit)
  and some regions; a channel gets it when it subscribes to the type and its owner is one of those
  branches or units, or a federation whose region contains the event's (scope ``subtree``), or
  exactly that region (scope ``own``).
* Outcomes: robots answer HTTP 200 even when they refuse, so their ``errcode`` decides.
* Budgets, quiet hours, retry schedules, byte-exact truncation, DingTalk signing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from services.notifier import holidays  # also puts the calendar's gauge on every notifier process's /metrics
from shared import regions
from shared.webhooks import (  # noqa: F401  (re-exported: the notifier judges webhook answers with them)
    Outcome,
    classify_http,
    parse_retry_after,
    payload_hash,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
KINDS = ("webhook", "wecom", "dingtalk", "email")
ROBOTS = ("wecom", "dingtalk")
LOCALES = ("zh-CN", "en")
TEST_TYPE = "changai.notifier.test.v1"  # a test send (not a registered event: no one publishes it)

# What a new branch's channel hears unless told otherwise: what happens to the branch itself.
BRANCH_DEFAULTS = (
    "changai.membership.branch.updated.v1",
    "changai.membership.branch.merged.v1",
    "changai.membership.branch.dissolved.v1",
    "changai.membership.member.transferred.v1",
    "changai.membership.station.opened.v1",
    "changai.membership.station.closed.v1",
    "changai.training.session.scheduled.v1",
    "changai.training.session.completed.v1",
    "changai.training.session.cancelled.v1",
    "changai.training.competition.participants_registered.v1",
    "changai.funding.grant.approved.v1",
    "changai.funding.grant.revoked.v1",
    "changai.funding.disbursement.made.v1",
    "changai.funding.subsidy.paid.v1",
    "changai.funding.subsidy.rejected.v1",
    "changai.notifier.channel.paused.v1",
    "changai.notifier.channel.resumed.v1",
)
# The office (a region-level federation channel) hears overdue tasks as one digest per supervision
# scan (``supervision.digest``), not one notice per task: it is in FEDERATION_DEFAULTS, the task
# types are not (a channel may still subscribe to them).
SUPERVISION_DIGEST = "changai.reform.supervision.digest.v1"
# A federation hears what happens to the branches, sessions, competitions, studios and money
# under it; not each member joining or enrolling (thousands a day in a city: a robot taking 20
# messages a minute would never catch up). Those can be subscribed to explicitly.
FEDERATION_DEFAULTS = (
    "changai.membership.branch.*",
    "changai.membership.station.*",
    "changai.training.session.completed.v1",
    "changai.training.session.cancelled.v1",
    "changai.training.competition.*",
    "changai.training.studio.*",
    "changai.funding.*",
    "changai.notifier.channel.*",
    SUPERVISION_DIGEST,
)
# A reform member unit's channel (its liaison's group): the supervision of the tasks it leads.
UNIT_DEFAULTS = (
    "changai.reform.task.assigned.v1",
    "changai.reform.task.sent_back.v1",
    "changai.reform.task.completed.v1",
    "changai.reform.task.progress_due.v1",
    "changai.reform.task.overdue.v1",
    "changai.notifier.channel.paused.v1",
    "changai.notifier.channel.resumed.v1",
)
# Events that are never routed as notices (they describe notices, so routing them would loop; or change nothing).
NOT_ROUTED = (
    "changai.notifier.delivery.succeeded.v1",
    "changai.notifier.delivery.failed.v1",
    "changai.notifier.digest.sent.v1",
    # A member's lookup hash published again (a backfill of every member): no change of anyone's, and a
    # 'changai.membership.*' channel would get one notice per member of the region.
    "changai.membership.member.lookup.v1",
)


# -- subscriptions ---------------------------------------------------------------
def subscribed(patterns: Iterable[str], event_type: str) -> bool:
    """``*``, an exact type, or a prefix ending in ``.*`` (``changai.training.*``)."""
    return any(p == "*" or p == event_type or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns)


def valid_pattern(pattern: str, known: Iterable[str]) -> bool:
    known = list(known)
    if pattern == "*" or pattern in known:
        return True
    return pattern.endswith(".*") and any(k.startswith(pattern[:-1]) for k in known)


def default_subscriptions(owner_kind: str) -> list[str]:
    if owner_kind == "reform_unit":
        return list(UNIT_DEFAULTS)
    return list(BRANCH_DEFAULTS if owner_kind == "branch" else FEDERATION_DEFAULTS)


# -- who an event concerns ---------------------------------------------------------
@dataclass
class Concern:
    """The branches an event is about (by id, or still to look up) and its regions."""

    branches: set[uuid.UUID] = field(default_factory=set)
    members: set[uuid.UUID] = field(default_factory=set)  # to look up: member → branch
    sessions: set[uuid.UUID] = field(default_factory=set)  # to look up: session → organising branch
    regions: set[str] = field(default_factory=set)
    units: set[uuid.UUID] = field(default_factory=set)  # reform member units: a task's lead unit


def as_uuid(value: Any) -> uuid.UUID | None:
    """The value as a UUID, or None when it is not one (events carry ids as text or UUIDs)."""
    if isinstance(value, uuid.UUID):
        return value
    if value is None:  # most fields asked for are absent: no raised and caught ValueError for them
        return None
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


BRANCH_FIELDS = ("branch_id", "from_branch_id", "to_branch_id", "into_branch_id", "transferred_to")
REGION_FIELDS = ("region_code", "from_region_code", "to_region_code")
# A reform task's event reaches its lead unit's channels (a re-assignment also the unit it was taken from).
UNIT_FIELDS = ("lead_unit_id", "previous_lead_unit_id")


# Per event class, whether it has an attribute: asking a pydantic event for a field it lacks raises
# and catches an AttributeError inside getattr (pydantic's __getattr__ formats a message first), and
# routing asks each event for ~15 fields most events lack (profiled: a large share of an import's
# routing CPU). The answer depends on the class only, so it is looked up once per class and name.
_HAS: dict[tuple[type, str], bool] = {}


def field_of(data: Any, name: str) -> Any:
    """``data``'s field ``name`` (a dict's key, an event's attribute), None when it has none."""
    if isinstance(data, dict):
        return data.get(name)
    key = (type(data), name)
    has = _HAS.get(key)
    if has is None:
        cls = type(data)
        fields = getattr(cls, "model_fields", None)
        has = _HAS[key] = (name in fields or hasattr(cls, name)) if isinstance(fields, dict) else True
    return getattr(data, name, None) if has else None


def concern(event_type: str, data: Any) -> Concern:
    c = Concern()

    def get(name: str) -> Any:
        return field_of(data, name)

    for name in BRANCH_FIELDS:
        if (b := as_uuid(get(name))) is not None:
            c.branches.add(b)
    kind = str(get("organiser_kind") or "")
    # subsidy events carry no organiser kind: an id that is a known branch reaches it, others reach no one.
    if get("organiser_id") is not None and kind in ("", "branch") and (b := as_uuid(get("organiser_id"))) is not None:
        c.branches.add(b)
    if str(get("beneficiary_kind") or "") == "branch" and (b := as_uuid(get("beneficiary_id"))) is not None:
        c.branches.add(b)
    if not c.branches:
        if (m := as_uuid(get("member_id"))) is not None:
            c.members.add(m)
        if (s := as_uuid(get("session_id"))) is not None and get("organiser_id") is None:
            c.sessions.add(s)
    for name in UNIT_FIELDS:
        if (u := as_uuid(get(name))) is not None:
            c.units.add(u)
    for name in REGION_FIELDS:
        code = get(name)
        if code and regions.get(str(code)):
            c.regions.add(str(code))
    if not c.regions:
        c.regions.add(regions.REGION_ROOT)  # fund events and the like: the regional federation's business
    return c


@dataclass(repr=False)
class Channel:
    """A channel as the worker holds it: its secrets decrypted, in memory only (never in repr or logs)."""

    id: uuid.UUID
    kind: str
    name: str
    owner_kind: str  # branch | federation | reform_unit
    owner_branch_id: uuid.UUID | None
    owner_region: str
    scope: str  # own | subtree
    event_types: list[str]
    locale: str = "zh-CN"
    status: str = "active"  # active | paused | disabled
    config: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict)
    quiet_hours: dict | None = None
    owner_unit_id: uuid.UUID | None = None  # a reform member unit's channel

    def __repr__(self) -> str:
        owner = self.owner_branch_id or self.owner_unit_id or self.owner_region
        return f"Channel({self.id}, {self.kind}, {self.owner_kind}:{owner})"

    @property
    def owner_key(self) -> tuple[str, str]:
        if self.owner_kind == "branch":
            return (self.owner_kind, str(self.owner_branch_id))
        if self.owner_kind == "reform_unit":
            return (self.owner_kind, str(self.owner_unit_id))
        return (self.owner_kind, self.owner_region)


@dataclass(frozen=True)
class Target:
    channel: Channel
    branch_id: uuid.UUID | None  # the branch the notice is about, for the log's filters
    fallback_for: uuid.UUID | None = None  # a paused channel this one stands in for


class ChannelIndex:
    """Channels by owner, for routing without scanning them all."""

    def __init__(self, channels: Iterable[Channel] = ()):
        self.by_id: dict[uuid.UUID, Channel] = {}
        for ch in channels:
            self.by_id[ch.id] = ch
        self._rebuild()

    def _rebuild(self) -> None:
        self._hears: dict[str, bool] = {}
        self.by_branch: dict[uuid.UUID, list[Channel]] = {}
        self.by_region: dict[str, list[Channel]] = {}
        self.by_unit: dict[uuid.UUID, list[Channel]] = {}
        for ch in self.by_id.values():
            if ch.status == "disabled":
                continue
            if ch.owner_kind == "branch" and ch.owner_branch_id:
                self.by_branch.setdefault(ch.owner_branch_id, []).append(ch)
            elif ch.owner_kind == "reform_unit":
                # routed by the unit id only: a unit's channel is no federation's, whatever its region
                if ch.owner_unit_id:
                    self.by_unit.setdefault(ch.owner_unit_id, []).append(ch)
            else:
                self.by_region.setdefault(ch.owner_region, []).append(ch)

    def anyone_hears(self, event_type: str) -> bool:
        """Whether any channel subscribes to this type (most events need no more work)."""
        hit = self._hears.get(event_type)
        if hit is None:
            hit = self._hears[event_type] = event_type in (
                "changai.notifier.channel.paused.v1",
                "changai.notifier.channel.resumed.v1",
            ) or any(ch.status != "disabled" and subscribed(ch.event_types, event_type) for ch in self.by_id.values())
        return hit

    def put(self, ch: Channel) -> None:
        self.by_id[ch.id] = ch
        self._rebuild()

    def remove(self, channel_id: uuid.UUID) -> None:
        self.by_id.pop(channel_id, None)
        self._rebuild()

    def owned_by(self, owner_kind: str, owner: str) -> list[Channel]:
        if owner_kind in ("branch", "reform_unit"):
            ident = as_uuid(owner)
            found = self.by_branch if owner_kind == "branch" else self.by_unit
            return list(found.get(ident, [])) if ident is not None else []
        return list(self.by_region.get(owner, []))


def targets(
    index: ChannelIndex,
    event_type: str,
    c: Concern,
    branch_ancestors: dict[uuid.UUID, list[uuid.UUID]] | None = None,
    branch_regions: dict[uuid.UUID, str] | None = None,
) -> list[Target]:
    """Every channel that gets this event, once each; stand-ins for paused channels.

    ``branch_ancestors[b]`` lists b's parent branches (nearest first): their ``subtree``
    channels hear of b. When every channel of an owner that would get the notice is
    paused, the owner's other active channels get it instead, or else the nearest
    federation above it with an active channel (NOTICES.md, bar 5).
    """
    if event_type in NOT_ROUTED:
        return []
    branch_ancestors = branch_ancestors or {}
    branch_regions = branch_regions or {}
    chosen: dict[uuid.UUID, Target] = {}

    def add(ch: Channel, branch: uuid.UUID | None) -> None:
        if ch.status != "disabled" and subscribed(ch.event_types, event_type) and ch.id not in chosen:
            chosen[ch.id] = Target(ch, branch)

    first_branch = min(c.branches) if c.branches else None
    for b in sorted(c.branches):
        for ch in index.by_branch.get(b, ()):
            add(ch, b)
        for parent in branch_ancestors.get(b, ()):
            for ch in index.by_branch.get(parent, ()):
                if ch.scope == "subtree":
                    add(ch, b)
    for u in sorted(c.units):
        for ch in index.by_unit.get(u, ()):
            add(ch, None)
    for r in sorted(c.regions):
        for code in regions.ancestors(r):
            for ch in index.by_region.get(code, ()):
                if ch.scope == "subtree" or code == r:
                    add(ch, first_branch)

    # Stand-ins for owners whose channels for this notice are all paused.
    owners: dict[tuple[str, str], list[Target]] = {}
    for t in chosen.values():
        owners.setdefault(t.channel.owner_key, []).append(t)
    for (owner_kind, owner), ts in owners.items():
        if any(t.channel.status == "active" for t in ts):
            continue
        paused = ts[0].channel
        others = [ch for ch in index.owned_by(owner_kind, owner) if ch.status == "active" and ch.id not in chosen]
        if not others:
            # the federation above: a branch's region's parents; a member unit's, the office (640000)
            branch = as_uuid(owner) if owner_kind == "branch" else None
            region = owner if owner_kind == "federation" else branch_regions.get(branch) if branch else None
            for code in regions.ancestors(region)[1:] if region else [regions.REGION_ROOT]:
                others = [ch for ch in index.by_region.get(code, ()) if ch.status == "active"]
                if others:
                    break
        for ch in others:
            if ch.id not in chosen:
                chosen[ch.id] = Target(ch, ts[0].branch_id, fallback_for=paused.id)
    return list(chosen.values())


def paused_notice_targets(
    index: ChannelIndex, paused: Channel, branch_regions: dict[uuid.UUID, str] | None = None
) -> list[Target]:
    """Where "your channel was paused" goes: the owner's other active channels, else the federation above."""
    others = [ch for ch in index.owned_by(*paused.owner_key) if ch.status == "active" and ch.id != paused.id]
    if not others and paused.owner_kind == "reform_unit":  # a member unit's channel: the office hears it
        others = [ch for ch in index.by_region.get(regions.REGION_ROOT, ()) if ch.status == "active"]
    if not others:
        region = (
            paused.owner_region
            if paused.owner_kind == "federation"
            else ((branch_regions or {}).get(paused.owner_branch_id) if paused.owner_branch_id else None)
            or paused.owner_region
        )
        for code in regions.ancestors(region)[1:] or [regions.REGION_ROOT]:
            others = [ch for ch in index.by_region.get(code, ()) if ch.status == "active" and ch.id != paused.id]
            if others:
                break
    return [Target(ch, paused.owner_branch_id) for ch in others]


# -- outcomes: shared.webhooks.Outcome (a webhook's answer is judged there; robots' here) ------


def classify_robot(
    kind: str,
    errcode: int | None,
    errmsg: str | None,
    *,
    wecom_throttle_s: float = 60.0,
    dingtalk_blocked_s: float = 600.0,
) -> Outcome:
    """WeCom / DingTalk answer 200 even when they refuse: ``errcode`` decides, by the one table
    in :mod:`services.notifier.errcodes` (a code not in it is retried)."""
    from services.notifier import errcodes

    msg = (errmsg or "")[:300]
    if errcode == 0:
        return Outcome("delivered", errcode=0)
    if errcode is None:
        return Outcome("retry", error="answer without errcode")
    known = errcodes.lookup(kind, errcode)
    action = known.action if known else "retry"
    error = f"{known.meaning if known else f'errcode {errcode}'}: {msg}"
    if action == "throttle":
        return Outcome(
            "throttled",
            errcode=errcode,
            error=error,
            retry_after_s=wecom_throttle_s if kind == "wecom" else dingtalk_blocked_s,
        )
    if action == "pause":
        return Outcome("permanent", errcode=errcode, error=error, pause=True)
    if action == "permanent":
        return Outcome("permanent", errcode=errcode, error=error)
    return Outcome("retry", errcode=errcode, error=error)


# -- retry schedule ------------------------------------------------------------------
def retry_delay(
    schedule: tuple[float, ...],
    failures: int,
    *,
    jitter: float = 0.1,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds before retry number ``failures`` (1-based), or None when the schedule is spent."""
    if failures < 1 or failures > len(schedule):
        return None
    base = schedule[failures - 1]
    if jitter:
        base *= 1 + (rng or random).uniform(-jitter, jitter)
    if retry_after_s is not None:
        base = max(base, min(retry_after_s, 6 * 3600))
    return max(0.0, base)


# -- send budget -------------------------------------------------------------------
class SlidingWindow:
    """At most ``limit`` sends in any ``window`` seconds (a log of send times, not a token bucket:
    a bucket would let 20 through at once and 20 more over the next minute)."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.sent: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self.sent and self.sent[0] <= now - self.window:
            self.sent.popleft()

    def wait_time(self) -> float:
        """Seconds until a send is allowed (0 = now)."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        self._trim(now)
        if len(self.sent) < self.limit:
            return 0.0
        return self.sent[0] + self.window - now

    def record(self, at: float | None = None) -> None:
        if self.limit > 0:
            self.sent.append(self.clock() if at is None else at)

    def preload(self, ages_s: Iterable[float]) -> None:
        """Sends made before this process owned the channel (seconds ago), from the delivery log."""
        now = self.clock()
        for age in sorted(ages_s, reverse=True):
            if age < self.window:
                self.sent.append(now - age)


# -- quiet hours -------------------------------------------------------------------
def _is_workday(day: date) -> bool:
    """China's working calendar: public holidays off, weekend days made workdays (调休) on; years
    after the package's from operators' schedule files (:mod:`services.notifier.holidays`)."""
    return holidays.is_workday(day)


def _hhmm(text: str) -> dtime:
    h, m = text.split(":")
    return dtime(int(h), int(m))


def quiet_until(now: datetime, quiet: dict | None) -> datetime | None:
    """When a non-critical notice may go out, if ``now`` is quiet; None when it may go now.

    ``quiet`` = {"start": "22:00", "end": "08:00", "rest_days": true}: nights from start to
    end, Asia/Shanghai time, and (rest_days) whole days off in China's calendar, until the
    next working day's ``end``.
    """
    if not quiet:
        return None
    local = now.astimezone(SHANGHAI)
    start, end = _hhmm(quiet.get("start", "22:00")), _hhmm(quiet.get("end", "08:00"))
    rest_days = bool(quiet.get("rest_days", False))

    def night(t: dtime) -> bool:
        if start == end:
            return False
        return (start <= t or t < end) if start > end else (start <= t < end)

    candidate = local
    for _ in range(40):  # the longest run of days off (Spring Festival) is well under this
        day_off = rest_days and not _is_workday(candidate.date())
        if not day_off and not night(candidate.timetz().replace(tzinfo=None)):
            return None if candidate == local else candidate.astimezone(UTC)
        if day_off:
            candidate = datetime.combine(candidate.date() + timedelta(days=1), end, SHANGHAI)
        else:  # inside the night: to its end (today's or tomorrow's)
            t = candidate.timetz().replace(tzinfo=None)
            end_day = candidate.date() if t < end else candidate.date() + timedelta(days=1)
            candidate = datetime.combine(end_day, end, SHANGHAI)
    return candidate.astimezone(UTC)


_HHMM = re.compile(r"[0-9]{1,2}:[0-9]{2}")


def validate_quiet_hours(quiet: dict) -> dict:
    out = {
        "start": quiet.get("start", "22:00"),
        "end": quiet.get("end", "08:00"),
        "rest_days": bool(quiet.get("rest_days", False)),
    }
    for key in ("start", "end"):
        try:
            # ASCII digits, at most two: int() also takes "٢٢" and "99999999999999999999", whose time() is an
            # OverflowError (a 500), not the ValueError a request is refused with
            if not (isinstance(out[key], str) and _HHMM.fullmatch(out[key])):
                raise ValueError(out[key])
            _hhmm(out[key])
        except (ValueError, AttributeError):
            raise ValueError(f"quiet_hours.{key} must be HH:MM") from None
    return out


# -- text --------------------------------------------------------------------------
def truncate_utf8(text: str, max_bytes: int, marker: str) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary, ``marker``
    appended when cut (a Chinese character is 3 bytes: never cut one in half)."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text, False
    room = max_bytes - len(marker.encode())
    if room <= 0:
        return marker.encode()[:max_bytes].decode(errors="ignore"), True
    cut = raw[:room].decode(errors="ignore")  # drops a partial trailing character
    return cut + marker, True


def utf8_len(text: str) -> int:
    return len(text.encode())


# -- DingTalk signing --------------------------------------------------------------
def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """URL-encoded base64 of HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode())


# -- masking -------------------------------------------------------------------------
def mask(secret: str | None, keep: int = 4) -> str | None:
    if not secret:
        return None
    return "…" + secret[-keep:] if len(secret) > keep * 2 else "…"


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return (local[:1] + "***@" + domain) if domain else "***"


def mask_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/…"
