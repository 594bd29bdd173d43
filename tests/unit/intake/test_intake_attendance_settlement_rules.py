"""The two upstream types that do not reach membership: a training provider's attendance report
(``training.provider.attendance.recorded.v1`` → training) and a finance system's settlement
(``finance.payment.settled.v1`` → funding): what each refuses, and the command each becomes."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.funding import domain as funding
from services.intake import domain
from services.membership.pii import Vault
from shared.errors import DomainError, status_of
from shared.events.intake import AttendanceCommand, CommandKeys, SettleCommand
from shared.identifiers import id_check_char

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
FIVE_MIN = timedelta(minutes=5)
ATTENDANCE = "training.provider.attendance.recorded.v1"
SETTLED = "finance.payment.settled.v1"
SOURCE = domain.Source(uuid.uuid4(), "urn:p:a", "640104", (ATTENDANCE, SETTLED), "p-a", "active")
NUMBER = "64010419900307" + "123"
NUMBER += id_check_char(NUMBER)
SESSION, DISBURSEMENT = uuid.uuid4(), uuid.uuid4()


def attendance(**extra):
    return {"session_id": str(SESSION), "learner_ref": "L-001", "id_number": NUMBER, "attended_on": "2026-04-30",
            "minutes": 90, **extra}


def settled(**extra):
    return {"disbursement_id": str(DISBURSEMENT), "amount_fen": 5_000_000, "settled_at": "2026-04-30T10:00:00+08:00",
            "bank_reference": "NXB20260430-0001", **extra}


def incoming(event_type: str, data: dict) -> domain.Incoming:
    return domain.Incoming(id="1", source="urn:p:a", type=event_type, time=NOW, data=data)


def refused(event_type: str, data: dict) -> tuple[int, str, str]:
    with pytest.raises(DomainError) as caught:
        domain.check_event(incoming(event_type, data), SOURCE, NOW, FIVE_MIN)
    problem = domain.problem_of(caught.value)
    assert NUMBER not in json.dumps(problem, ensure_ascii=False)  # a refused value is never echoed
    return status_of(caught.value), caught.value.kind, caught.value.extra["errors"][0]["field"]


@pytest.mark.parametrize(("data", "field"), [
    (attendance(session_id="S-1"), "data.session_id"),
    (attendance(id_number=NUMBER[:-1] + ("0" if NUMBER[-1] != "0" else "1")), "data.id_number"),
    (attendance(minutes=0), "data.minutes"),
    (attendance(minutes=1441), "data.minutes"),
    (attendance(attended_on="2026-13-01"), "data.attended_on"),
    (attendance(learner_ref="L 1"), "data.learner_ref"),
    (attendance(hours=2), "data.hours"),
    ({k: v for k, v in attendance().items() if k != "id_number"}, "data.id_number"),
])
def test_an_attendance_report_with_a_bad_field_is_refused_naming_it(data, field):
    assert refused(ATTENDANCE, data) == (422, "schema-mismatch", field)


@pytest.mark.parametrize(("data", "field"), [
    (settled(amount_fen="50000.00"), "data.amount_fen"),  # integer fen, never a decimal string
    (settled(amount_fen=50000.5), "data.amount_fen"),
    (settled(amount_fen=0), "data.amount_fen"),
    (settled(currency="USD"), "data.currency"),
    (settled(settled_at="2026-04-30T10:00:00"), "data.settled_at"),  # a time without its offset
    (settled(bank_reference="NXB 1"), "data.bank_reference"),
    (settled(disbursement_id="D-1"), "data.disbursement_id"),
])
def test_a_settlement_with_a_bad_field_is_refused_naming_it(data, field):
    assert refused(SETTLED, data) == (422, "schema-mismatch", field)


def test_an_attendance_becomes_a_training_command_naming_the_trainee_by_membership_lookup_hash_only():
    key = b"k" * 32
    checked = domain.check_event(incoming(ATTENDANCE, attendance()), SOURCE, NOW, FIVE_MIN)
    command = domain.to_command(checked, SOURCE, uuid.uuid4(), CommandKeys(key))
    assert isinstance(command, AttendanceCommand) and command.topic == "training.commands"
    assert command.subject() == str(SESSION)  # keyed by the session: its reports keep their order
    assert command.member_hash == Vault(key).lookup_hash(NUMBER).hex()  # what membership stores, and publishes
    assert NUMBER not in command.model_dump_json() and command.region_scope == "640104"


def test_a_settlement_becomes_a_funding_command_keyed_by_the_disbursement():
    checked = domain.check_event(incoming(SETTLED, settled()), SOURCE, NOW, FIVE_MIN)
    command = domain.to_command(checked, SOURCE, uuid.uuid4(), CommandKeys(b"k" * 32))
    assert isinstance(command, SettleCommand) and command.topic == "funding.commands"
    assert (command.subject(), command.amount_fen, command.bank_reference) == (
        str(DISBURSEMENT), 5_000_000, "NXB20260430-0001")


def test_funding_settles_once_with_the_exact_amount_after_the_payment():
    paid = {"id": DISBURSEMENT, "amount_fen": 5_000_000, "paid_on": datetime(2026, 4, 29).date(),
            "bank_reference": None}
    cmd = funding.SettlementIn(amount_fen=5_000_000, settled_at=NOW, bank_reference="R1")
    assert funding.settle(paid, cmd, NOW.date()) is True
    with pytest.raises(DomainError) as caught:
        funding.settle(paid, funding.SettlementIn(amount_fen=4_999_999, settled_at=NOW, bank_reference="R1"),
                       NOW.date())
    assert (status_of(caught.value), caught.value.kind) == (422, "amount-mismatch")
    with pytest.raises(DomainError) as caught:
        funding.settle(paid, cmd, datetime(2026, 4, 28).date())
    assert status_of(caught.value) == 422
    done = {**paid, "bank_reference": "R1"}
    assert funding.settle(done, cmd, NOW.date()) is False  # the same settlement again: nothing changes
    with pytest.raises(DomainError) as caught:
        funding.settle(done, funding.SettlementIn(amount_fen=5_000_000, settled_at=NOW, bank_reference="R2"),
                       NOW.date())
    assert (status_of(caught.value), caught.value.kind) == (409, "already-settled")
