"""Funding rules: what valid requests are, how a subsidy claim is decided, which events
each change produces, and the ledger's invariants. No I/O.

Money is integer fen everywhere in here; the HTTP layer reads and writes decimal yuan
strings (``shared.money``).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from shared import regions
from shared.events.funding import BeneficiaryKind, RejectionReason, SourceKind
from shared.events.training import OrganiserKind, SubsidyCategory
from shared.money import Yuan, yuan_to_fen

# China has no daylight saving: UTC+8 all year round is the calendar of the users.
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")

# Request field: "800.00" only, more than zero, held as fen.
PositiveYuan = Annotated[int, BeforeValidator(yuan_to_fen), Field(gt=0)]


def today() -> date:
    return datetime.now(CHINA).date()


def _region(v: str | None) -> str | None:
    if v is not None and regions.get(v) is None:
        raise ValueError("must be a Ningxia GB/T 2260 code (640000, a city or a county)")
    return v


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class FundIn(_In):
    """A fund (资金来源) as the finance office opens it."""
    name: str = Field(min_length=2, max_length=200)
    source_kind: SourceKind
    fiscal_year: int = Field(ge=2000, le=2100)
    amount: Yuan = Field(ge=0, description='decimal yuan string, e.g. "280000000.00"')
    opened_on: date | None = None


class TopUpIn(_In):
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "1000000.00"')
    note: str | None = Field(default=None, max_length=500)


class CloseIn(_In):
    reason: str | None = Field(default=None, max_length=500)


class GrantIn(_In):
    """A grant (资金安排): money of a fund committed to a beneficiary for a purpose."""
    fund_id: uuid.UUID
    beneficiary_kind: BeneficiaryKind
    beneficiary_id: str = Field(min_length=1, max_length=100)
    beneficiary_name: str = Field(min_length=2, max_length=200)
    purpose: str = Field(min_length=2, max_length=500)
    region_code: str | None = None
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "100000.00"')
    approved_on: date | None = None

    @field_validator("region_code")
    @classmethod
    def _check_region(cls, v: str | None) -> str | None:
        return _region(v)


class RevokeIn(_In):
    reason: str | None = Field(default=None, max_length=500)


class DisbursementIn(_In):
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "50000.00"')
    paid_on: date | None = None
    memo: str | None = Field(default=None, max_length=500)


class BeneficiaryIn(_In):
    name: str = Field(min_length=2, max_length=200)
    region_code: str | None = None

    @field_validator("region_code")
    @classmethod
    def _check_region(cls, v: str | None) -> str | None:
        return _region(v)


class RuleIn(_In):
    rate: Yuan = Field(ge=0, description='yuan per person, e.g. "800.00"')
    note: str | None = Field(default=None, max_length=500)


class RouteIn(_In):
    fund_id: uuid.UUID
    year: int | None = Field(default=None, ge=2000, le=2100,
                             description="year of session completion this route is for; null: any year")


# -- subsidy rules ----------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    category: str
    effective_from: date
    rate_fen: int


def rule_in_force(rules: list[Rule], on: date) -> Rule | None:
    """The rule with the latest effective-from date not after ``on``."""
    candidates = [r for r in rules if r.effective_from <= on]
    return max(candidates, key=lambda r: r.effective_from) if candidates else None


def seed_rules(change_date: date, old_from: date) -> list[Rule]:
    """Pre-job training (岗前培训 / 以工代训): 300 yuan per person, 800 from the 2021 change."""
    if old_from >= change_date:
        raise ValueError("the old pre-job rate must start before the change date")
    return [Rule("pre_job", old_from, 30_000), Rule("pre_job", change_date, 80_000)]


# -- the subsidy saga's decision ------------------------------------------------------
@dataclass(frozen=True)
class FundState:
    id: uuid.UUID
    status: str
    available_fen: int
    name: str = ""


@dataclass(frozen=True)
class Decision:
    paid: bool
    persons: int
    rate_fen: int
    amount_fen: int
    reason: RejectionReason | None = None
    detail: str = ""


def eligible_persons(member_ids: list[uuid.UUID], reported: int) -> int:
    """Distinct eligible members; the reported count only when the list is empty."""
    distinct = len(set(member_ids))
    return distinct if distinct or not reported else reported


def decide_subsidy(*, persons: int, rule: Rule | None, organiser_known: bool, fund: FundState | None,
                   category: str, completed_on: date, organiser: str) -> Decision:
    """Pay persons × the rule in force from the routed fund, all or nothing, or say why not."""
    rate = rule.rate_fen if rule else 0
    amount = persons * rate

    def reject(reason: RejectionReason, detail: str) -> Decision:
        return Decision(False, persons, rate, amount, reason, detail)

    if persons <= 0:
        return reject(RejectionReason.nothing_eligible, "no eligible person completed the session")
    if rule is None:
        return reject(RejectionReason.no_rule, f"no {category} subsidy rule in force on {completed_on.isoformat()}")
    if amount <= 0:
        return reject(RejectionReason.no_rule, f"the {category} rule in force on {completed_on.isoformat()} pays 0")
    if not organiser_known:
        return reject(RejectionReason.organiser_unknown,
                      f"organiser {organiser} is not a registered beneficiary of the funding service")
    if fund is None:
        return reject(RejectionReason.no_fund,
                      f"no fund is configured to pay {category} subsidies for {completed_on.year}")
    if fund.status != "open":
        return reject(RejectionReason.no_fund, f"the fund configured for {category} ({fund.id}) is closed")
    if fund.available_fen < amount:
        return reject(RejectionReason.fund_exhausted,
                      f"fund {fund.id} has {fen_str(fund.available_fen)} yuan available; "
                      f"the claim needs {fen_str(amount)} ({persons} × {fen_str(rate)})")
    return Decision(True, persons, rate, amount)


def organiser_beneficiary_kind(kind: OrganiserKind | str) -> BeneficiaryKind:
    return BeneficiaryKind(OrganiserKind(kind).value)  # branch → branch, enterprise → enterprise


CATEGORY_LABEL = {
    SubsidyCategory.pre_job: "岗前培训补贴 pre-job training subsidy",
    SubsidyCategory.skills_upgrade: "技能提升补贴 skills-upgrade subsidy",
    SubsidyCategory.new_form: "新就业形态培训补贴 new-form workers training subsidy",
}


def fen_str(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}" if fen >= 0 else "-" + fen_str(-fen)


# -- the ledger's invariants ----------------------------------------------------------
@dataclass(frozen=True)
class FundFigures:
    """One fund's money, each figure derived from the ledger on its own."""
    total_fen: int       # appropriated (opened + topped up) minus returned on closing
    available_fen: int   # the fund account's balance
    committed_fen: int   # the fund's grant accounts: granted, unpaid
    disbursed_fen: int   # paid to beneficiaries from this fund

    @property
    def allocated_fen(self) -> int:
        return self.committed_fen + self.disbursed_fen

    def violations(self) -> list[str]:
        out = []
        if self.available_fen + self.committed_fen + self.disbursed_fen != self.total_fen:
            out.append(f"available {self.available_fen} + committed {self.committed_fen} + disbursed "
                       f"{self.disbursed_fen} != total {self.total_fen}")
        for name in ("total_fen", "available_fen", "committed_fen", "disbursed_fen"):
            if getattr(self, name) < 0:
                out.append(f"{name} is negative ({getattr(self, name)})")
        return out
