"""The intake's rules: what a source may register and send. No I/O; refusals are ``shared.errors``.

An upstream event is checked here in the order a source would want to hear about it: a CloudEvent at
all, its source (a token may only speak for its own registered source: a forged one is 403), its type
(in the upstream catalogue and registered for the source), its time (not more than a few minutes ahead),
and its data against the type's schema. The region of what it concerns is not checked here: the intake
does not know where a branch is, so the owning service checks it with its own rule (the source's region
scope is the actor's) and the refusal comes back as the answer.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from standardwebhooks.webhooks import Webhook

from shared.errors import DomainError, Invalid, OutOfScope, status_of
from shared.events.intake import (
    AttendanceCommand,
    CertificateCommand,
    CommandKeys,
    JoinCommand,
    LeaveCommand,
    SettleCommand,
)
from shared.events.upstream import (
    UPSTREAM,
    AttendanceRecorded,
    EmployeeHired,
    EmployeeLeft,
    HrssCertificateIssued,
    PaymentSettled,
    UpstreamData,
)
from shared.privacy import scrub_text
from shared.problems import Problem
from shared.regions import RegionCode


class Reply(StrEnum):
    poll = "poll"  # the source asks GET /v1/events/{id}?source=…
    webhook = "webhook"  # the answer is also sent to reply_url


class SourceStatus(StrEnum):
    active = "active"
    suspended = "suspended"


def _source_uri(value: str) -> str:
    """A CloudEvents ``source``: a URI-reference (an absolute URI or a path), printable, no spaces."""
    if not value or any(not ("!" <= c <= "~") for c in value):
        raise ValueError("must be a URI-reference of printable ASCII without spaces")
    parts = urlsplit(value)
    if not (parts.scheme or value.startswith("/")):
        raise ValueError("must be an absolute URI (urn:…, https://…) or an absolute path (/…)")
    return value


def _event_types(values: list[str] | None) -> list[str] | None:
    if values is None:  # a PATCH's null: refused by SourcePatch's own check, not here with a TypeError (a 500)
        return None
    unknown = [t for t in values if t not in UPSTREAM]
    if unknown:
        raise ValueError(f"not in the upstream catalogue: {', '.join(unknown[:3])} (known: {', '.join(UPSTREAM)})")
    if len(set(values)) != len(values):
        raise ValueError("listed twice")
    return values


def _reply_secret(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    try:
        Webhook(value.get_secret_value())
    except Exception:  # noqa: BLE001 - the library raises several kinds for a malformed secret
        raise ValueError("must be a Standard Webhooks secret: whsec_ + base64 of 24 to 64 bytes") from None
    raw = value.get_secret_value().removeprefix("whsec_")
    if not 24 <= len(base64.b64decode(raw)) <= 64:
        raise ValueError("must be a Standard Webhooks secret: whsec_ + base64 of 24 to 64 bytes")
    return value


def _reply_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


class SourceIn(BaseModel):
    """Register an upstream system."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    source: str = Field(min_length=1, max_length=255, description="the CloudEvents `source` it emits under")
    name: str = Field(min_length=1, max_length=100)
    region_code: RegionCode = Field(description="it may emit only for branches under this region (GB/T 2260)")
    event_types: list[str] = Field(min_length=1, max_length=20)
    client_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="the `sub` of the tokens (scope intake:emit) it sends with",
    )
    reply: Reply = Reply.poll
    reply_url: str | None = Field(default=None, max_length=2000)
    reply_secret: SecretStr | None = Field(
        default=None,
        description="whsec_…: answers are signed with it (Standard Webhooks); stored encrypted, never shown",
    )

    _source = field_validator("source")(_source_uri)
    _types = field_validator("event_types")(_event_types)
    _url = field_validator("reply_url")(_reply_url)
    _secret = field_validator("reply_secret")(_reply_secret)


class SourcePatch(BaseModel):
    """Change a registration (the source URI never changes: the dedupe key is built on it)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=100)
    region_code: RegionCode | None = None
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=20)
    client_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    reply: Reply | None = None
    reply_url: str | None = Field(default=None, max_length=2000)
    reply_secret: SecretStr | None = Field(default=None, description="a new signing secret (rotation)")
    status: SourceStatus | None = None

    _types = field_validator("event_types")(_event_types)
    _url = field_validator("reply_url")(_reply_url)
    _secret = field_validator("reply_secret")(_reply_secret)

    @model_validator(mode="after")
    def _no_null_for_required(self) -> SourcePatch:
        # Leaving a field out keeps it; sending null for one a source must have is refused (only
        # reply_url may be cleared), rather than reaching the database's NOT NULL.
        for name in ("name", "region_code", "event_types", "client_id", "reply", "status", "reply_secret"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} may be left out but not null")
        return self


def check_reply(reply: str, reply_url: str | None, has_secret: bool) -> None:
    if reply == Reply.webhook and reply_url is None:
        raise Invalid("reply_url", "a webhook reply needs reply_url")
    if reply == Reply.webhook and not has_secret:
        raise Invalid("reply_secret", "a webhook reply needs reply_secret (whsec_…)")
    if reply == Reply.poll and reply_url is not None:
        raise Invalid("reply_url", "only a webhook reply has a reply_url")


@dataclass(frozen=True)
class Source:
    id: uuid.UUID
    source: str
    region_code: str
    event_types: tuple[str, ...]
    client_id: str
    status: str


@dataclass(frozen=True)
class Incoming:
    """One CloudEvent as received (attributes parsed by the cloudevents SDK), not yet checked."""

    id: str
    source: str
    type: str
    time: datetime | None
    data: Any
    datacontenttype: str | None = None


@dataclass(frozen=True)
class Checked:
    """An event that passed every check: its data, and the time the lag is measured from."""

    incoming: Incoming
    data: UpstreamData
    time: datetime


def check_event(event: Incoming, source: Source, now: datetime, max_future: timedelta) -> Checked:
    """The checks of one event sent by ``source``'s client (see the module's docstring)."""
    if event.source != source.source:
        raise OutOfScope(
            f"this client emits as {source.source!r}; the event names another source",
            kind="forged-source",
            title="The event's source is not the caller's",
        )
    if source.status != SourceStatus.active:
        raise OutOfScope("the source is suspended", kind="source-suspended", title="The source is suspended")
    model = UPSTREAM.get(event.type)
    if model is None:
        raise Invalid("type", "not in the upstream catalogue", kind="unknown-event-type")
    if event.type not in source.event_types:
        raise OutOfScope(
            f"the source is not registered for {event.type}",
            kind="type-not-registered",
            title="The source is not registered for this event type",
        )
    time = event.time or now
    if time.tzinfo is None:
        raise Invalid("time", "must carry a zone offset (RFC 3339)")
    if time > now + max_future:
        raise Invalid("time", f"more than {int(max_future.total_seconds())} s in the future", kind="time-in-future")
    if event.datacontenttype not in (None, "application/json") and not event.datacontenttype.startswith(
        "application/json;"
    ):
        raise Invalid("datacontenttype", "data must be application/json")
    if not isinstance(event.data, dict):
        raise Invalid("data", "must be a JSON object", kind="schema-mismatch")
    try:
        data = model.model_validate(event.data)
    except ValidationError as exc:
        # never echo the value refused (it may be an ID number)
        errors = [
            {"field": "data." + ".".join(map(str, e["loc"])), "reason": scrub_text(e["msg"]), "type": e["type"]}
            for e in exc.errors()
        ]
        refusal = Invalid(errors[0]["field"], errors[0]["reason"], kind="schema-mismatch")
        refusal.extra["errors"] = errors
        raise refusal from None
    return Checked(event, data, time)


def problem_of(exc: DomainError) -> dict[str, Any]:
    """The RFC 9457 problem of a refusal, as a batch result and the answer carry it."""
    return Problem(status_of(exc), exc.kind, exc.title, exc.detail, **exc.extra).body()


def to_command(
    checked: Checked, source: Source, intake_id: uuid.UUID, keys: CommandKeys
) -> JoinCommand | LeaveCommand | CertificateCommand | AttendanceCommand | SettleCommand:
    """The normalised command for the owning service: membership's keyed by the person, the person's data
    sealed; training's keyed by the session, the trainee named by membership's lookup hash (no ID number);
    funding's keyed by the disbursement (no personal data at all)."""
    common = dict(
        intake_id=intake_id,
        upstream_source=source.source,
        upstream_type=checked.incoming.type,
        region_scope=source.region_code,
        actor=source.client_id,
    )
    data = checked.data
    if isinstance(data, EmployeeHired):
        return JoinCommand(
            **common,
            person_key=keys.person_key(data.id_number),
            sealed=keys.seal(intake_id, {"name": data.name, "id_number": data.id_number, "phone": data.phone}),
            employer_credit_code=data.employer_credit_code,
            branch_id=data.branch_id,
            joined_on=data.hired_on,
            employment_form=data.employment_form,
            occupation=data.occupation,
        )
    if isinstance(data, EmployeeLeft):
        return LeaveCommand(
            **common,
            person_key=keys.person_key(data.id_number),
            sealed=keys.seal(intake_id, {"id_number": data.id_number}),
            left_on=data.left_on,
            reason=scrub_text(data.reason) if data.reason else None,
        )
    if isinstance(data, HrssCertificateIssued):
        return CertificateCommand(
            **common,
            person_key=keys.person_key(data.id_number),
            sealed=keys.seal(intake_id, {"name": data.name, "id_number": data.id_number}),
            certificate_no=data.certificate_no,
            occupation=data.occupation,
            occupation_code=data.occupation_code,
            level=data.level,
            issued_on=data.issued_on,
            issuer=data.issuer,
        )
    if isinstance(data, AttendanceRecorded):
        return AttendanceCommand(
            **common,
            session_id=data.session_id,
            member_hash=keys.member_hash(data.id_number),
            learner_ref=data.learner_ref,
            attended_on=data.attended_on,
            minutes=data.minutes,
        )
    if isinstance(data, PaymentSettled):
        return SettleCommand(
            **common,
            disbursement_id=data.disbursement_id,
            amount_fen=data.amount_fen,
            settled_at=data.settled_at,
            bank_reference=data.bank_reference,
        )
    raise TypeError(f"no command for {type(data).__name__}")  # every catalogue type has a branch above
