"""The upstream event catalogue: the CloudEvents other systems emit to the platform (the intake service).

These are not the platform's own events (those are ``changai.*``, in ``REGISTRY``): they are the types an
enterprise's HR system, a training provider or a department's system sends to ``POST /v1/events`` or
produces to ``intake.<kind>``, named as such systems name them. Each is a pydantic model (``UPSTREAM``);
its JSON Schema is committed in ``shared/events/schemas/upstream/`` (``python -m shared.events.upstream
--write``) and a test refuses a breaking change, as for the domain catalogue.

Personal data (ID numbers, phones, names) arrives in clear over TLS, as it does at membership's API; the
intake seals it at once (``shared.events.intake.CommandKeys``) and keeps or forwards only ciphertext.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.events.membership import EmploymentForm
from shared.identifiers import InvalidIdentifier, credit_code_field, normalise_phone, parse_resident_id

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "upstream"
SCHEMA_BASE = "https://changai.example/schemas/upstream/"


class UpstreamData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    def __repr__(self) -> str:  # personal data never reaches a traceback or a log
        return f"{type(self).__name__}(...)"

    __str__ = __repr__


def _id_number(value: str) -> str:
    try:
        return parse_resident_id(value).number
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


class EmployeeHired(UpstreamData):
    """An enterprise's HR system hired an employee (becomes a membership join at the employer's branch)."""

    employee_ref: str = Field(min_length=1, max_length=64, description="the HR system's own employee id")
    name: str = Field(min_length=1, max_length=50, description="姓名")
    id_number: str = Field(description="resident ID number (GB 11643); sealed on arrival, never stored in clear")
    phone: str | None = Field(default=None, description="mainland mobile number; sealed on arrival")
    employer_credit_code: str = Field(description="the employer's unified social credit code (GB 32100)")
    branch_id: UUID | None = Field(default=None, description="the union branch, when the HR system knows it")
    hired_on: date
    employment_form: EmploymentForm = EmploymentForm.standard
    occupation: str | None = Field(default=None, max_length=50)

    _id = field_validator("id_number")(_id_number)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return normalise_phone(v)
        except InvalidIdentifier as exc:
            raise ValueError(str(exc)) from None

    _credit_code = field_validator("employer_credit_code")(credit_code_field)


class EmployeeLeft(UpstreamData):
    """An employee left the enterprise (becomes the member leaving, 退会)."""

    id_number: str = Field(description="resident ID number (GB 11643); sealed on arrival, never stored in clear")
    left_on: date
    reason: str | None = Field(default=None, max_length=200)

    _id = field_validator("id_number")(_id_number)


class HrssCertificateIssued(UpstreamData):
    """The human-resources and social-security department (人社厅) issued a vocational skill level certificate
    (职业技能等级证书): recorded for the member, whose skill level it raises when higher."""

    certificate_no: str = Field(
        min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$", description="证书编号, the issuer's own"
    )
    name: str = Field(min_length=1, max_length=50, description="姓名 on the certificate")
    id_number: str = Field(description="resident ID number (GB 11643); sealed on arrival, never stored in clear")
    occupation: str = Field(min_length=1, max_length=50, description="职业（工种）")
    occupation_code: str | None = Field(
        default=None, pattern=r"^\d-\d{2}-\d{2}-\d{2}$", description="职业编码 (大典 2022), e.g. 4-02-07-10"
    )
    level: int = Field(ge=1, le=5, description="1 高级技师 … 5 初级工")
    issued_on: date
    issuer: str = Field(min_length=1, max_length=100, description="the evaluation body or department that issued it")

    _id = field_validator("id_number")(_id_number)


class AttendanceRecorded(UpstreamData):
    """A training provider's learning platform recorded a trainee's attendance at a session (签到/学时):
    becomes the attendance of the member's enrolment in that session (training's record_attendance)."""

    session_id: UUID = Field(description="the training session, as the platform scheduled it (its id)")
    learner_ref: str = Field(
        min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$", description="the provider's own id of the trainee"
    )
    id_number: str = Field(
        description="the trainee's resident ID number (GB 11643); hashed on arrival, never stored in clear"
    )
    attended_on: date = Field(description="the day of the lesson")
    minutes: int = Field(ge=1, le=1440, description="minutes attended that day (学时 as minutes)")

    _id = field_validator("id_number")(_id_number)


class PaymentSettled(UpstreamData):
    """A finance system's bank reported a disbursement paid out (到账): the disbursement becomes settled
    (funding's settle_disbursement), its amount matching to the fen."""

    disbursement_id: UUID = Field(description="the platform's disbursement, as the payment order named it")
    amount_fen: int = Field(strict=True, gt=0, le=10**13, description="the amount settled, integer fen (分)")
    currency: Literal["CNY"] = "CNY"
    settled_at: AwareDatetime = Field(description="when the bank settled it (RFC 3339, with its offset)")
    bank_reference: str = Field(
        min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$", description="the bank's transaction serial (流水号)"
    )


UPSTREAM: dict[str, type[UpstreamData]] = {
    "enterprise.hr.employee.hired.v1": EmployeeHired,
    "enterprise.hr.employee.left.v1": EmployeeLeft,
    "cn.gov.nx.hrss.certificate.issued.v1": HrssCertificateIssued,  # over HTTP (no Kafka intake topic yet)
    "training.provider.attendance.recorded.v1": AttendanceRecorded,
    "finance.payment.settled.v1": PaymentSettled,
}
# The Kafka intake topic each type is read from (its channel in docs/asyncapi.yaml); HTTP takes every type.
TOPIC_OF: dict[str, str] = {
    "enterprise.hr.employee.hired.v1": "intake.hr",
    "enterprise.hr.employee.left.v1": "intake.hr",
    "training.provider.attendance.recorded.v1": "intake.training",
    "finance.payment.settled.v1": "intake.finance",
}


def json_schema(event_type: str) -> dict[str, Any]:
    schema = UPSTREAM[event_type].model_json_schema()
    schema["$id"] = f"{SCHEMA_BASE}{event_type}.json"
    schema["title"] = event_type
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    return {name: json_schema(name) for name in sorted(UPSTREAM)}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write() -> None:
    from shared.events.catalog import breaking_changes

    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        path = SCHEMA_DIR / f"{name}.json"
        if path.exists():
            problems = breaking_changes(json.loads(path.read_text()), schema)
            if problems:
                raise SystemExit(f"{name}: breaking change ({'; '.join(problems)}): accept a new version instead")
        path.write_text(render(schema), encoding="utf-8")
    print(f"{len(UPSTREAM)} upstream schemas written")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    if parser.parse_args().write:
        write()
    else:
        print(json.dumps(schemas(), indent=2, ensure_ascii=False))
