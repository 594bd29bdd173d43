"""Funding rules: what valid requests are, who may act where, how a subsidy claim is decided,
the refusals (domain exceptions from ``shared.errors``) and the ledger's invariants. No I/O.

Money is integer fen everywhere in here; the HTTP layer reads and writes decimal yuan
strings (``shared.money``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from shared.auth import Principal
from shared.errors import Conflict, Invalid, OutOfScope, RuleBroken
from shared.events.funding import BeneficiaryKind, RejectionReason, SourceKind
from shared.events.training import OrganiserKind, SubsidyCategory
from shared.money import Yuan, fen_to_yuan, yuan_to_fen
from shared.privacy import scrub_text
from shared.regions import REGION_ROOT, RegionCode

# Request field: "800.00" only, more than zero, held as fen.
PositiveYuan = Annotated[int, BeforeValidator(yuan_to_fen), Field(gt=0)]
# Ids and names are printable text: a control character (a NUL above all, which PostgreSQL refuses
# in text) is a 422, never a 500.
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
# Free text (purposes, memos, notes, reasons) may hold line breaks, never a NUL.
NO_NUL = r"^[^\x00]*$"
# Text a user typed reaches events (Kafka, kept for good) and the append-only journal: an ID or phone
# number typed into it is masked on the way in, whoever sends the command.
Scrubbed = AfterValidator(scrub_text)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class FundIn(_In):
    """A fund (资金来源) as the finance office opens it."""

    name: Annotated[str, Scrubbed] = Field(min_length=2, max_length=200, pattern=PRINTABLE)
    source_kind: SourceKind
    fiscal_year: int = Field(ge=2000, le=2100)
    amount: Yuan = Field(ge=0, description='decimal yuan string, e.g. "280000000.00"')
    opened_on: date | None = None


class TopUpIn(_In):
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "1000000.00"')
    note: Annotated[str | None, Scrubbed] = Field(default=None, max_length=500, pattern=NO_NUL)


class CloseIn(_In):
    reason: Annotated[str | None, Scrubbed] = Field(default=None, max_length=500, pattern=NO_NUL)


class GrantIn(_In):
    """A grant (资金安排): money of a fund committed to a beneficiary for a purpose."""

    fund_id: uuid.UUID
    beneficiary_kind: BeneficiaryKind
    beneficiary_id: str = Field(min_length=1, max_length=100, pattern=PRINTABLE)
    beneficiary_name: Annotated[str, Scrubbed] = Field(min_length=2, max_length=200, pattern=PRINTABLE)
    purpose: Annotated[str, Scrubbed] = Field(min_length=2, max_length=500, pattern=NO_NUL)
    region_code: RegionCode | None = Field(
        default=None,
        description="where the grant's money goes; left out: the payee's region if registered, else the caller's",
    )
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "100000.00"')
    approved_on: date | None = None


class RevokeIn(_In):
    reason: Annotated[str | None, Scrubbed] = Field(default=None, max_length=500, pattern=NO_NUL)


class DisbursementIn(_In):
    amount: PositiveYuan = Field(description='decimal yuan string, e.g. "50000.00"')
    paid_on: date | None = None
    memo: Annotated[str | None, Scrubbed] = Field(default=None, max_length=500, pattern=NO_NUL)


class SettlementIn(_In):
    """The bank's report that a disbursement was paid out (a finance system's, through the intake)."""

    amount_fen: int = Field(strict=True, gt=0, description="the amount settled, integer fen")
    settled_at: AwareDatetime
    bank_reference: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$")


def settle(disbursement, cmd: SettlementIn, settled_on: date) -> bool:
    """Whether this settlement changes the disbursement (False: the same settlement reported again).
    The amount must match to the fen; a disbursement is settled once, after it was paid."""
    if cmd.amount_fen != disbursement["amount_fen"]:
        raise RuleBroken(
            f"the bank settled {fen_to_yuan(cmd.amount_fen)} yuan; disbursement {disbursement['id']} paid "
            f"{fen_to_yuan(disbursement['amount_fen'])}",
            kind="amount-mismatch",
            title="The settled amount is not the disbursement's",
        )
    if disbursement["bank_reference"] is not None:
        if disbursement["bank_reference"] == cmd.bank_reference:
            return False
        raise Conflict(
            f"disbursement {disbursement['id']} was settled under another bank reference",
            kind="already-settled",
            title="The disbursement is settled already",
        )
    if settled_on < disbursement["paid_on"]:
        raise Invalid("settled_at", f"before the disbursement was paid ({disbursement['paid_on']})")
    return True


class BeneficiaryIn(_In):
    name: Annotated[str, Scrubbed] = Field(min_length=2, max_length=200, pattern=PRINTABLE)
    region_code: RegionCode | None = Field(
        default=None, description="left out: the caller's region (a payee already registered keeps its region)"
    )


class RuleIn(_In):
    rate: Yuan = Field(ge=0, description='yuan per person, e.g. "800.00"')
    note: Annotated[str | None, Scrubbed] = Field(default=None, max_length=500, pattern=NO_NUL)


class RouteIn(_In):
    fund_id: uuid.UUID
    year: int | None = Field(
        default=None, ge=2000, le=2100, description="year of session completion this route is for; null: any year"
    )


# -- who may act where -------------------------------------------------------------
ADMIN_SCOPE = "funding:admin"


def ensure_admin(actor: Principal) -> None:
    """Region-wide settings (funds, subsidy rules and routes): a region-level token with ``funding:admin``."""
    if ADMIN_SCOPE not in actor.scopes:
        raise OutOfScope(
            f"this needs scope {ADMIN_SCOPE!r}", kind="insufficient-scope", title="Token lacks the required scope"
        )
    actor.ensure_region_level()


def grant_region(actor: Principal, requested: str | None, payee_region: str | None) -> str:
    """Where a grant belongs: as asked (within the caller's scope, else 403), else the registered payee's
    region (the caller can see it, or the payee was already refused as not found), else the caller's own
    region — never the whole province on a city's behalf."""
    if requested is not None:
        actor.ensure_region(requested)
        return requested
    return payee_region or actor.region


def owner_region(region_code: str | None) -> str:
    """A record with no region of its own (a fund, a budget source) is the federation's: region-level."""
    return region_code or REGION_ROOT


# -- refusals ------------------------------------------------------------------------
def insufficient(account_kind: str, account_id: int, balance_fen: int, requested_fen: int) -> Conflict:
    return Conflict(
        f"the {account_kind} has {fen_to_yuan(balance_fen)} yuan; {fen_to_yuan(requested_fen)} was asked",
        kind="insufficient-funds",
        title=f"The {account_kind} cannot afford this",
        account=account_kind,
        account_id=account_id,
        balance=fen_to_yuan(balance_fen),
        requested=fen_to_yuan(requested_fen),
    )


def fund_closed(fund_id: uuid.UUID, closed_on: date | None) -> Conflict:
    return Conflict(
        f"fund {fund_id} was closed on {closed_on}",
        kind="fund-closed",
        title="The fund is closed",
        fund_id=str(fund_id),
    )


def grant_not_open(grant_id: uuid.UUID, status: str, what: str, **extra) -> Conflict:
    return Conflict(
        f"grant {grant_id} is {status}: {what}",
        kind="grant-not-open",
        title=f"The grant is {status}",
        status_now=status,
        **extra,
    )


def fund_has_commitments(fund_id: uuid.UUID, committed_fen: int) -> Conflict:
    return Conflict(
        f"{fen_to_yuan(committed_fen)} yuan is granted and unpaid: pay or revoke those grants first",
        kind="fund-has-commitments",
        title="The fund still has unpaid grants",
        committed=fen_to_yuan(committed_fen),
        fund_id=str(fund_id),
    )


def claim_paid(claim_id: uuid.UUID, disbursement_id: uuid.UUID | None) -> Conflict:
    return Conflict(
        f"claim {claim_id} was paid by disbursement {disbursement_id}",
        kind="claim-paid",
        title="The claim is already paid",
    )


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


def decide_subsidy(
    *,
    persons: int,
    rule: Rule | None,
    organiser_known: bool,
    fund: FundState | None,
    category: str,
    completed_on: date,
    organiser: str,
) -> Decision:
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
        return reject(
            RejectionReason.organiser_unknown,
            f"organiser {organiser} is not a registered beneficiary of the funding service",
        )
    if fund is None:
        return reject(
            RejectionReason.no_fund, f"no fund is configured to pay {category} subsidies for {completed_on.year}"
        )
    if fund.status != "open":
        return reject(RejectionReason.no_fund, f"the fund configured for {category} ({fund.id}) is closed")
    if fund.available_fen < amount:
        return reject(
            RejectionReason.fund_exhausted,
            f"fund {fund.id} has {fen_str(fund.available_fen)} yuan available; "
            f"the claim needs {fen_str(amount)} ({persons} × {fen_str(rate)})",
        )
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

    total_fen: int  # appropriated (opened + topped up) minus returned on closing
    available_fen: int  # the fund account's balance
    committed_fen: int  # the fund's grant accounts: granted, unpaid
    disbursed_fen: int  # paid to beneficiaries from this fund

    @property
    def allocated_fen(self) -> int:
        return self.committed_fen + self.disbursed_fen

    def violations(self) -> list[str]:
        out = []
        if self.available_fen + self.committed_fen + self.disbursed_fen != self.total_fen:
            out.append(
                f"available {self.available_fen} + committed {self.committed_fen} + disbursed "
                f"{self.disbursed_fen} != total {self.total_fen}"
            )
        for name in ("total_fen", "available_fen", "committed_fen", "disbursed_fen"):
            if getattr(self, name) < 0:
                out.append(f"{name} is negative ({getattr(self, name)})")
        return out
