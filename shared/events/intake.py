"""The intake's commands to the owning services, and the outcomes those services publish.

Commands (``COMMANDS``, not the domain ``REGISTRY``): the intake turns an accepted upstream event into a
normalised command on the owning service's command topic (``membership.commands``), keyed by the person
(a keyed hash, never the ID number), so one person's commands keep their order. A command is a CloudEvent
like every record of the platform (same envelope, same outbox), but it is addressed to one service and is
not a fact: it is not in the domain catalogue, and only its addressee reads it.

The person's personal data (name, ID number, phone) travels sealed: AES-256-GCM under a key both the
intake and membership derive from the platform's data key (``shared.crypto.FieldCipher`` purpose
``commands``), bound to the intake's record id. Nothing else on the command is personal.

Outcomes (``changai.membership.command.applied.v1`` / ``.rejected.v1``, in the domain catalogue, on
``membership.events``): what the owning service did with a command, with the RFC 9457 problem of a
refusal; the intake turns them into the answer to the source.
"""

from __future__ import annotations

import base64
from datetime import date
from typing import Any
from uuid import UUID

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field

from shared.crypto import FieldCipher
from shared.events.base import EventData, event
from shared.events.membership import EmploymentForm, RegionCode
from shared.identifiers import keyed_hash

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


class _Command(EventData):
    intake_id: UUID = Field(description="the intake's record of the upstream event (the answer is keyed by it)")
    upstream_source: str = Field(description="the upstream CloudEvents source")
    upstream_type: str
    region_scope: str = Field(pattern=r"^64\d{4}$", description="the source's region scope: the actor's")
    actor: str = Field(description="the source's client id (the actor the owning service records)")
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


# -- outcomes (domain events of membership) ---------------------------------------------
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


class CommandKeys:
    """The keys the intake and membership share for commands, derived from the platform's data key."""

    def __init__(self, data_key: bytes):
        self._cipher = FieldCipher(data_key, "commands")
        self._mac = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"changai/commands/person-key", info=b"hmac-sha256 v1"
        ).derive(data_key)

    def person_key(self, id_number: str) -> str:
        return keyed_hash(self._mac, id_number).hex()

    def seal(self, intake_id: UUID, person: dict[str, Any]) -> str:
        return base64.b64encode(self._cipher.seal("person", intake_id, orjson.dumps(person).decode())).decode()

    def open(self, intake_id: UUID, sealed: str) -> dict[str, Any]:
        return orjson.loads(self._cipher.open("person", intake_id, base64.b64decode(sealed)))
