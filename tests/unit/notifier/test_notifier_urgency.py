"""Quiet work first (issue 15): bulk work gives way while a quiet notice is on its way, and only for a
bounded time, so a slow receiver or a database away never holds an import back for long. And the
field reads that routing does on every event give the same answers as getattr, without its cost."""

from __future__ import annotations

import uuid
from datetime import date

from services.notifier import domain
from services.notifier.pipeline import YIELDED, Urgency, batch_of, branch_ids_in
from shared.events.membership import MemberJoined


def _yielded() -> float:
    return YIELDED._value.get()  # noqa: SLF001 - the counter's value, as /metrics shows it


async def test_quiet_work_in_flight_holds_bulk_work_for_its_first_moments_only():
    u = Urgency(max_wait_s=0.05, tick_s=0.001)
    assert not u.pending()
    with u.quiet():
        assert u.pending() and u.in_flight == 1
        before = _yielded()
        await u.bulk_turn()  # gives way while the piece is young (up to max_wait_s a unit)
        assert _yielded() > before
        u.hold_s = 0.0  # the piece is older than the hold now: a slow receiver, a database away
        assert not u.pending() and u.in_flight == 0
        before = _yielded()
        await u.bulk_turn()  # bulk work moves on at once
        assert _yielded() == before
    assert not u._flights  # noqa: SLF001 - nothing left behind


async def test_bulk_work_does_not_wait_when_nothing_quiet_is_pending():
    u = Urgency(max_wait_s=1.0)
    before = _yielded()
    await u.bulk_turn()
    assert _yielded() == before


def test_field_reads_answer_as_getattr_does():
    branch, import_id = uuid.uuid4(), uuid.uuid4()
    joined = MemberJoined(member_id=uuid.uuid4(), branch_id=branch, region_code="640104", city_code="640100",
                          employment_form="courier", birth_year=1990, sex="female", joined_on=date(2024, 5, 1),
                          import_id=import_id)
    for name in ("branch_id", "region_code", "import_id", "batch_id", "organiser_id", "no_such_field"):
        assert domain.field_of(joined, name) == getattr(joined, name, None)
    assert domain.field_of({"branch_id": str(branch)}, "branch_id") == str(branch)
    assert domain.as_uuid(None) is None and domain.as_uuid(str(branch)) == branch
    assert batch_of(joined) == ("membership.import", import_id)
    assert branch_ids_in(joined) == {branch}
    c = domain.concern("changai.membership.member.joined.v1", joined)
    assert c.branches == {branch} and c.regions == {"640104"}
