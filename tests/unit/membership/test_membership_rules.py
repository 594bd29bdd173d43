"""Membership's rules without I/O: skill levels, branch updates, dissolution, scope, the relay's partitioner."""
import os
import random
import uuid
from datetime import date

import pytest
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from services.membership import domain
from shared.auth import Principal
from shared.errors import DomainError, Invalid, status_of
from shared.outbox import murmur2


def branch(**extra):
    return {"id": uuid.uuid4(), "name": "银川市快递行业工会", "region_code": "640104", "industry_section": "G",
            "kind": "industry", "parent_id": None, "status": "active", "founded_on": date(2021, 1, 1), **extra}


@pytest.mark.parametrize("current, certified, raised", [
    (None, 5, True), (5, 4, True), (3, 1, True), (3, 3, False), (2, 4, False), (1, 1, False)])
def test_level_1_is_the_highest(current, certified, raised):
    assert domain.raised_skill_level(current, certified) is raised


def test_update_reports_only_changed_fields():
    b = branch()
    patch = domain.BranchPatch(name="宁夏快递行业工会", industry_section="G", region_code="640502")
    event = domain.update_branch(b, patch)
    assert event.changed == ["name", "region_code"] and event.city_code == "640500"
    assert domain.update_branch(b, domain.BranchPatch(name=b["name"])) is None
    with pytest.raises(DomainError) as exc:
        domain.update_branch(b, domain.BranchPatch(parent_id=b["id"]))
    assert status_of(exc.value) == 422
    with pytest.raises(DomainError) as exc:
        domain.update_branch(branch(status="merged"), domain.BranchPatch(name="新名称"))
    assert status_of(exc.value) == 409 and exc.value.kind == "branch-not-active"
    with pytest.raises(ValidationError):
        domain.BranchPatch()
    with pytest.raises(ValidationError):
        domain.BranchPatch(credit_code="91350100M000100Y43")  # the employer never changes


def test_dissolve_needs_an_empty_branch_or_a_target():
    b, target = branch(), branch()
    domain.check_dissolve(b, None, 0, 0)
    with pytest.raises(DomainError) as exc:
        domain.check_dissolve(b, None, 3, 0)
    assert status_of(exc.value) == 409 and exc.value.extra["members"] == 3
    with pytest.raises(DomainError):
        domain.check_dissolve(b, None, 0, 1)
    domain.check_dissolve(b, target, 3, 1)
    with pytest.raises(DomainError):
        domain.check_dissolve(b, b, 3, 1)
    with pytest.raises(DomainError):
        domain.check_dissolve(b, branch(status="dissolved"), 3, 1)


def test_merge_refusals():
    b = branch()
    with pytest.raises(DomainError, match="itself"):
        domain.check_merge(b, b)
    with pytest.raises(DomainError):
        domain.check_merge(b, branch(status="merged"))


def test_member_input_rules():
    number = "64010419900307123"
    from shared.identifiers import id_check_char
    number += id_check_char(number)
    ok = domain.MemberIn(branch_id=uuid.uuid4(), name="张三", id_number=number, phone="13912345678")
    assert ok.employment_form == "standard" and number not in repr(ok) and "13912345678" not in str(ok)
    young = domain.MemberIn(branch_id=uuid.uuid4(), name="张三", id_number=number, joined_on=date(2005, 1, 1))
    with pytest.raises(Invalid, match="at least 16"):  # the rules every join and import row meets
        domain.MemberRules(date(2021, 9, 1))(young.name, young.id_number, young.phone, young.employment_form,
                                             young.occupation, young.skill_level, young.branch_id, young.joined_on)
    with pytest.raises(ValidationError):
        domain.MemberIn(branch_id=uuid.uuid4(), name="张三", id_number=number, skill_level=0)
    with pytest.raises(ValidationError):
        domain.MemberIn(branch_id=uuid.uuid4(), name="张三", id_number=number, employment_form="astronaut")


@pytest.mark.parametrize("scope, code, allowed", [
    ("640000", "640104", True), ("640100", "640104", True), ("640100", "640100", True),
    ("640100", "640202", False), ("640104", "640105", False), ("640104", "640100", False)])
def test_scope_city_acts_on_its_counties_only(scope, code, allowed):
    assert Principal("u", frozenset(), scope).may_act_on(code) is allowed


def test_relay_partitioner_is_kafkas_default():
    rng = random.Random(3)
    partitioner = DefaultPartitioner()
    for _ in range(20000):
        key = os.urandom(rng.randrange(0, 80)) if rng.random() < 0.5 else str(uuid.uuid4()).encode()
        parts = list(range(rng.choice((1, 3, 6, 12))))
        assert partitioner(key, parts, parts) == parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]


def test_relay_observe_many_equals_observe():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from shared.outbox import observe_many

    rng = random.Random(5)
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
    values = [rng.choice((0.005, 0.01, 1.0, 300.0, 301.0)) if rng.random() < 0.3 else rng.expovariate(1)
              for _ in range(5000)]
    outputs = []
    for many in (False, True):
        registry = CollectorRegistry()
        child = Histogram("delay", "d", ["service"], buckets=buckets, registry=registry).labels("m")
        if many:
            observe_many(child, values)
        else:
            for v in values:
                child.observe(v)
        outputs.append([line for line in generate_latest(registry).decode().splitlines() if "_created" not in line])
    assert outputs[0] == outputs[1]
