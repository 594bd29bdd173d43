"""The intake's commands to the owning services, and the outcomes those services publish.

Commands (``COMMANDS``, not the domain ``REGISTRY``): the intake turns an accepted upstream event into a
normalised command on the owning service's command topic: ``membership.commands`` keyed by the person (a
keyed hash, never the ID number), so one person's commands keep their order; ``training.commands`` keyed by
the session (a provider's attendance reports); ``funding.commands`` keyed by the disbursement (a finance
system's settlements). A command is a CloudEvent
like every record of the platform (same envelope, same outbox), but it is addressed to one service and is
not a fact: it is not in the domain catalogue, and only its addressee reads it.

The person's personal data (name, ID number, phone) travels sealed: AES-256-GCM under a key both the
intake and membership derive from the platform's data key (``shared.crypto.FieldCipher`` purpose
``commands``), bound to the intake's record id. Nothing else on the command is personal. Training's
attendance command carries no sealed data: only membership's lookup hash of the trainee's ID number
(``CommandKeys.member_hash``), which training's member read model matches.

Outcomes (``changai.<service>.command.applied.v1`` / ``.rejected.v1``, in the domain catalogue, on
``<service>.events``): what the owning service did with a command, with the RFC 9457 problem of a
refusal; the intake turns them into the answer to the source.
"""

from __future__ import annotations

import base64
from datetime import date, datetime
from typing import Any
from uuid import UUID

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, ValidationError

from shared.auth import Principal
from shared.crypto import FieldCipher
from shared.errors import DomainError, status_of
from shared.events.base import EventData, event
from shared.events.membership import EmploymentForm, RegionCode
from shared.identifiers import keyed_hash
from shared.privacy import scrub_text

COMMANDS_SOURCE = "/changai/intake"
COMMANDS: dict[str, type[EventData]] = {}


def command(event_type: str, *, subject: str, topic: str):
    """Declare a command type (like ``event``, but addressed to ``topic`` and kept out of ``REGISTRY``)."""

    def register(cls):
        if subject not in cls.model_fields:
            raise ValueError(f"{cls.__name__} has no subject field {subject!r}")
        cls.event_type = event_type
        cls.topic = topic
        cls.source = COMMANDS_SOURCE
        cls.subject_field = subject
        COMMANDS[event_type] = cls
        return cls

    return register


class _CommandBase(EventData):
    intake_id: UUID = Field(description="the intake's record of the upstream event (the answer is keyed by it)")
    upstream_source: str = Field(description="the upstream CloudEvents source")
    upstream_type: str
    region_scope: str = Field(pattern=r"^64\d{4}$", description="the source's region scope: the actor's")
    actor: str = Field(description="the source's client id (the actor the owning service records)")

    def acting_as(self, write_scope: str) -> Principal:
        """The actor an owning service applies this command as: the source, within its registered region scope,
        with only that service's write scope (the one way an intake command becomes an actor)."""
        return Principal(f"intake:{self.actor}", frozenset({write_scope}), self.region_scope)

    def outcome_fields(self, command_id: str | UUID) -> dict[str, Any]:
        """What every outcome (applied or rejected) of this command says about it."""
        return dict(
            command_id=command_id,
            intake_id=self.intake_id,
            command=self.event_type,
            upstream_source=self.upstream_source,
            region_code=self.region_scope,
        )


class _Command(_CommandBase):
    person_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="keyed hash of the ID number (record key)")
    sealed: str = Field(description="the person's data, sealed (base64; CommandKeys.open)")


@command("changai.command.membership.join.v1", subject="person_key", topic="membership.commands")
class JoinCommand(_Command):
    """An employee hired: the person joins the employer's branch (membership's join use case)."""

    employer_credit_code: str
    branch_id: UUID | None = None
    joined_on: date
    employment_form: EmploymentForm = EmploymentForm.standard
    occupation: str | None = None


@command("changai.command.membership.leave.v1", subject="person_key", topic="membership.commands")
class LeaveCommand(_Command):
    """An employee left: the member leaves (退会; membership's leave use case)."""

    left_on: date
    reason: str | None = None


@command("changai.command.membership.certificate.v1", subject="person_key", topic="membership.commands")
class CertificateCommand(_Command):
    """A certificate the human-resources and social-security department issued: recorded for the member,
    raising the member's skill level when higher (membership's record_certificate use case)."""

    certificate_no: str
    occupation: str
    occupation_code: str | None = None
    level: int = Field(ge=1, le=5)
    issued_on: date
    issuer: str


@command("changai.command.training.attendance.v1", subject="session_id", topic="training.commands")
class AttendanceCommand(_CommandBase):
    """A training provider recorded a trainee's attendance: the member's enrolment in the session is marked
    attended (training's record_attendance use case). The trainee is named by ``member_hash``, membership's
    lookup hash of the ID number (``CommandKeys.member_hash``): training's member read model holds it, the
    ID number itself never leaves the intake. Keyed by the session, so one session's reports keep order."""

    session_id: UUID
    member_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="membership's lookup hash of the ID number")
    learner_ref: str = Field(description="the provider's own id of the trainee")
    attended_on: date
    minutes: int = Field(ge=1, le=1440)


@command("changai.command.funding.settle.v1", subject="disbursement_id", topic="funding.commands")
class SettleCommand(_CommandBase):
    """A finance system reported a disbursement settled at the bank (funding's settle_disbursement use
    case). Keyed by the disbursement."""

    disbursement_id: UUID
    amount_fen: int = Field(gt=0)
    settled_at: datetime
    bank_reference: str


# -- outcomes (domain events of the owning services) ------------------------------------
class _Outcome(EventData):
    command_id: UUID
    intake_id: UUID
    command: str = Field(description="the command's type")
    upstream_source: str = Field(description="the upstream source the command came from")
    region_code: str = RegionCode


@event("changai.membership.command.applied.v1", subject="intake_id")
class CommandApplied(_Outcome):
    """Membership applied an intake command (a join or a leave)."""

    member_id: UUID


@event("changai.membership.command.rejected.v1", subject="intake_id")
class CommandRejected(_Outcome):
    """Membership refused an intake command: the RFC 9457 problem (no personal data)."""

    status: int = Field(description="the HTTP status the refusal would have had at the API (4xx)")
    problem_type: str
    title: str
    detail: str | None = None


class _Rejection(_Outcome):
    status: int = Field(description="the HTTP status the refusal would have had at the API (4xx)")
    problem_type: str
    title: str
    detail: str | None = None


@event("changai.training.command.applied.v1", subject="intake_id")
class TrainingCommandApplied(_Outcome):
    """Training applied an intake command (an attendance): ``took_effect`` is false when the enrolment had
    its attendance already (a later day's report of the same trainee)."""

    session_id: UUID
    enrolment_id: UUID
    member_id: UUID
    took_effect: bool


@event("changai.training.command.rejected.v1", subject="intake_id")
class TrainingCommandRejected(_Rejection):
    """Training refused an intake command: the RFC 9457 problem (no personal data)."""


@event("changai.funding.command.applied.v1", subject="intake_id")
class FundingCommandApplied(_Outcome):
    """Funding applied an intake command (a settlement): ``took_effect`` is false for a settlement already
    recorded with the same bank reference (the bank's report sent again under a new event id)."""

    disbursement_id: UUID
    took_effect: bool


@event("changai.funding.command.rejected.v1", subject="intake_id")
class FundingCommandRejected(_Rejection):
    """Funding refused an intake command: the RFC 9457 problem (no personal data)."""


AppliedOutcome = CommandApplied | TrainingCommandApplied | FundingCommandApplied
RejectedOutcome = CommandRejected | TrainingCommandRejected | FundingCommandRejected
OUTCOMES: tuple[type[EventData], ...] = (
    CommandApplied,
    CommandRejected,
    TrainingCommandApplied,
    TrainingCommandRejected,
    FundingCommandApplied,
    FundingCommandRejected,
)
OUTCOME_TOPICS = ("membership.events", "training.events", "funding.events")


def rejection(exc: Exception) -> dict[str, Any]:
    """The fields of a refusal as the source hears it: the problem's type, title, status and a scrubbed
    detail (a ``DomainError``, or the ``ValidationError`` of data checked again by the owning service)."""
    if isinstance(exc, ValidationError):  # never echoed: the message only, scrubbed
        err = exc.errors()[0]
        return dict(
            status=422,
            problem_type="validation-error",
            title="Request is not valid",
            detail=scrub_text(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"),
        )
    assert isinstance(exc, DomainError)
    return dict(
        status=status_of(exc),
        problem_type=exc.kind,
        title=exc.title,
        detail=scrub_text(exc.detail) if exc.detail else None,
    )


class CommandKeys:
    """The keys the intake and membership share for commands, derived from the platform's data key."""

    def __init__(self, data_key: bytes):
        self._cipher = FieldCipher(data_key, "commands")
        self._mac = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"changai/commands/person-key", info=b"hmac-sha256 v1"
        ).derive(data_key)
        self._member_mac = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"changai/membership", info=b"lookup hmac-sha256 v1"
        ).derive(data_key)

    def person_key(self, id_number: str) -> str:
        return keyed_hash(self._mac, id_number).hex()

    def member_hash(self, id_number: str) -> str:
        """Membership's lookup hash of an ID number (``services.membership.pii.Vault.lookup_hash``, the
        same HKDF derivation from the data key; a unit test holds them equal): what training's member read
        model matches a trainee by."""
        return keyed_hash(self._member_mac, id_number).hex()

    def seal(self, intake_id: UUID, person: dict[str, Any]) -> str:
        return base64.b64encode(self._cipher.seal("person", intake_id, orjson.dumps(person).decode())).decode()

    def open(self, intake_id: UUID, sealed: str) -> dict[str, Any]:
        return orjson.loads(self._cipher.open("person", intake_id, base64.b64decode(sealed)))
