"""Funding's pure rules: subsidy standards in force, the claim decision, request validation, fund figures."""
import uuid
from datetime import date

import pytest
from pydantic import ValidationError

from services.funding import domain
from services.funding.domain import FundFigures, FundState, Rule
from shared.auth import Principal
from shared.errors import OutOfScope
from shared.events.funding import RejectionReason

SEEDS = domain.seed_rules(date(2021, 1, 1), date(2019, 1, 1))


@pytest.mark.parametrize("on, rate", [
    (date(2019, 1, 1), 30_000), (date(2020, 12, 31), 30_000), (date(2021, 1, 1), 80_000), (date(2024, 6, 1), 80_000),
])
def test_rule_in_force_is_the_latest_effective_from_not_after_the_date(on, rate):
    assert domain.rule_in_force(SEEDS, on).rate_fen == rate


def test_no_rule_before_the_first_and_change_date_is_configurable():
    assert domain.rule_in_force(SEEDS, date(2018, 12, 31)) is None
    moved = domain.seed_rules(date(2021, 7, 1), date(2019, 1, 1))
    assert domain.rule_in_force(moved, date(2021, 6, 30)).rate_fen == 30_000
    assert domain.rule_in_force(moved, date(2021, 7, 1)).rate_fen == 80_000
    with pytest.raises(ValueError):
        domain.seed_rules(date(2019, 1, 1), date(2021, 1, 1))


def decide(persons=3, rule=Rule("pre_job", date(2021, 1, 1), 80_000), known=True, available=10_000_000,
           status="open", fund=True):
    state = FundState(uuid.uuid4(), status, available) if fund else None
    return domain.decide_subsidy(persons=persons, rule=rule, organiser_known=known, fund=state, category="pre_job",
                                 completed_on=date(2021, 5, 1), organiser="branch b-1")


def test_a_claim_pays_persons_times_the_rate():
    d = decide(persons=3)
    assert (d.paid, d.amount_fen, d.rate_fen, d.reason) == (True, 240_000, 80_000, None)


def test_a_fund_that_holds_exactly_the_amount_pays():
    assert decide(persons=2, available=160_000).paid


@pytest.mark.parametrize("kwargs, reason", [
    (dict(persons=0), RejectionReason.nothing_eligible),
    (dict(rule=None), RejectionReason.no_rule),
    (dict(rule=Rule("pre_job", date(2021, 1, 1), 0)), RejectionReason.no_rule),
    (dict(known=False), RejectionReason.organiser_unknown),
    (dict(fund=False), RejectionReason.no_fund),
    (dict(status="closed"), RejectionReason.no_fund),
    (dict(persons=2, available=159_999), RejectionReason.fund_exhausted),
])
def test_rejections_say_why(kwargs, reason):
    d = decide(**kwargs)
    assert not d.paid and d.reason == reason and d.detail


def test_exhausted_detail_carries_the_balance_and_the_need():
    d = decide(persons=2, available=100_000)
    assert "1000.00" in d.detail and "1600.00" in d.detail and d.amount_fen == 160_000


def test_eligible_persons_are_distinct_members():
    a, b = uuid.uuid4(), uuid.uuid4()
    assert domain.eligible_persons([a, b, a], 3) == 2
    assert domain.eligible_persons([], 4) == 4  # a producer that reports only a count
    assert domain.eligible_persons([], 0) == 0


@pytest.mark.parametrize("amount", [800, 800.5, "800.005", "-1.00", "1e3", "", "800.00 ", None])
def test_amounts_must_be_decimal_strings_with_at_most_two_decimals(amount):
    with pytest.raises(ValidationError):
        domain.DisbursementIn.model_validate({"amount": amount})


def test_amounts_in_fen():
    assert domain.DisbursementIn.model_validate({"amount": "800"}).amount == 80_000
    assert domain.DisbursementIn.model_validate({"amount": "0.01"}).amount == 1
    assert domain.TopUpIn.model_validate({"amount": "280000000.00"}).amount == 28_000_000_000
    with pytest.raises(ValidationError):
        domain.DisbursementIn.model_validate({"amount": "0.00"})  # a payment of nothing
    assert domain.FundIn.model_validate({"name": "empty fund", "source_kind": "union_funds", "fiscal_year": 2021,
                                         "amount": "0.00"}).amount == 0


def test_grant_request_checks_region_and_unknown_fields():
    base = {"fund_id": str(uuid.uuid4()), "beneficiary_kind": "studio", "beneficiary_id": "s-1",
            "beneficiary_name": "studio one", "purpose": "innovation studio", "amount": "100000.00"}
    assert domain.GrantIn.model_validate({**base, "region_code": "640104"}).region_code == "640104"
    for bad in ({**base, "region_code": "110000"}, {**base, "colour": "red"}, {**base, "beneficiary_kind": "person"}):
        with pytest.raises(ValidationError):
            domain.GrantIn.model_validate(bad)


def test_fund_figures_must_add_up():
    assert FundFigures(1000, 600, 300, 100).violations() == []
    assert FundFigures(1000, 600, 300, 100).allocated_fen == 400
    assert FundFigures(1000, 600, 300, 99).violations()
    assert FundFigures(0, -1, 1, 0).violations()


def test_organiser_kinds_map_to_beneficiary_kinds():
    assert domain.organiser_beneficiary_kind("branch").value == "branch"
    assert domain.organiser_beneficiary_kind("enterprise").value == "enterprise"


def test_fen_str():
    assert [domain.fen_str(v) for v in (0, 5, 80_000, 12_345_678, -150)] == ["0.00", "0.05", "800.00", "123456.78",
                                                                             "-1.50"]


# -- who may act where (issue 12, hole 1) ----------------------------------------------------
def actor(region: str, *scopes: str) -> Principal:
    return Principal("t", frozenset(scopes or ("funding:write",)), region)


def test_a_grant_takes_the_region_asked_else_the_payees_else_the_callers_never_the_province():
    city = actor("640200")
    assert domain.grant_region(city, "640205", None) == "640205"
    assert domain.grant_region(city, None, "640221") == "640221"
    assert domain.grant_region(city, None, None) == "640200"
    with pytest.raises(OutOfScope):
        domain.grant_region(city, "640104", None)
    with pytest.raises(OutOfScope):
        domain.grant_region(city, "640000", None)


def test_region_wide_settings_need_funding_admin_on_a_region_level_token():
    domain.ensure_admin(actor("640000", "funding:admin"))
    with pytest.raises(OutOfScope) as city:
        domain.ensure_admin(actor("640200", "funding:admin"))
    assert city.value.kind == "out-of-scope"
    with pytest.raises(OutOfScope) as no_scope:
        domain.ensure_admin(actor("640000", "funding:write"))
    assert no_scope.value.kind == "insufficient-scope"
    assert domain.owner_region(None) == "640000" and domain.owner_region("640104") == "640104"


def test_commands_refuse_nul_and_a_trailing_newline_and_scrub_typed_numbers():
    for bad in ({"amount": "800.00\n"}, {"amount": "1.00", "memo": "a\x00b"}):
        with pytest.raises(ValidationError):
            domain.DisbursementIn(**bad)
    with pytest.raises(ValidationError):
        domain.BeneficiaryIn(name="某\x00工会")
    with pytest.raises(ValidationError):
        domain.GrantIn(fund_id=uuid.uuid4(), beneficiary_kind="studio", beneficiary_id="a\x00b",
                       beneficiary_name="工作室", purpose="p1", amount="1.00")
    memo = domain.DisbursementIn(amount="1.00", memo="第一笔\n联系 13812345678").memo
    assert memo == "第一笔\n联系 [phone]"
    assert domain.RevokeIn(reason="身份证 640104199001018143").reason == "身份证 [id-number]"
