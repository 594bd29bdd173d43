"""Events of the funding service (topic ``funding.events``).

Amounts are integer fen (分). Every event carries the fund's source kind and
fiscal year, and the beneficiary's kind, so the projection needs no lookup.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, event
from shared.events.membership import CityCode, RegionCode
from shared.events.training import SubsidyCategory

Fen = Field(ge=0, description="amount in fen (分): integer, never a float")


def Place(what: str):
    """An optional region code on events written before it was added; always set by the service now,
    so a federation's channel for that region (or above it) hears of the money."""
    return Field(default=None, pattern=r"^64\d{4}$", description=f"GB/T 2260 code of {what}")


Year = Field(ge=2000, le=2100)
# The bulk operation a payment came from, if any (the training roster upload whose completed sessions
# it pays): the notifier tells a batch to a channel as one digest, not one notice per payment.
PaymentBatch = Field(
    default=None,
    description="the batch this payment belongs to, if any (a roster upload whose completed sessions it "
    "pays): told to channels as one digest per batch, not one notice each",
)


class SourceKind(StrEnum):
    central_budget = "central_budget"  # 中央预算内
    regional_budget = "regional_budget"  # 自治区预算内
    special_fund = "special_fund"  # 专项资金
    union_funds = "union_funds"  # 工会经费
    skills_account = "skills_account"  # 职业技能提升行动专账


class BeneficiaryKind(StrEnum):
    project = "project"
    studio = "studio"
    training_base = "training_base"
    branch = "branch"
    enterprise = "enterprise"


class RejectionReason(StrEnum):
    fund_exhausted = "fund_exhausted"
    no_rule = "no_rule"
    no_fund = "no_fund"
    organiser_unknown = "organiser_unknown"
    nothing_eligible = "nothing_eligible"


@event("changai.funding.fund.opened.v1", subject="fund_id")
class FundOpened(EventData):
    """A fund (资金来源) was opened."""

    fund_id: UUID
    name: str
    source_kind: SourceKind
    fiscal_year: int = Year
    amount_fen: int = Fen
    region_code: str | None = Place("the fund's owner (640000: funds are the federation's)")


@event("changai.funding.fund.topped_up.v1", subject="fund_id")
class FundToppedUp(EventData):
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    amount_fen: int = Fen
    total_fen: int = Fen
    region_code: str | None = Place("the fund's owner (640000: funds are the federation's)")


@event("changai.funding.fund.closed.v1", subject="fund_id")
class FundClosed(EventData):
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    unspent_fen: int = Fen
    region_code: str | None = Place("the fund's owner (640000: funds are the federation's)")


@event("changai.funding.grant.approved.v1", subject="grant_id")
class GrantApproved(EventData):
    """Money of a fund was committed to a beneficiary for a purpose (资金安排)."""

    grant_id: UUID
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    beneficiary_kind: BeneficiaryKind
    beneficiary_id: str
    beneficiary_name: str
    purpose: str
    region_code: str | None = Field(default=None, pattern=r"^64\d{4}$")
    amount_fen: int = Fen
    batch_id: UUID | None = PaymentBatch


@event("changai.funding.grant.revoked.v1", subject="grant_id")
class GrantRevoked(EventData):
    """The unpaid rest of a grant went back to its fund."""

    grant_id: UUID
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    beneficiary_kind: BeneficiaryKind
    released_fen: int = Fen
    region_code: str | None = Place("the grant")


@event("changai.funding.disbursement.made.v1", subject="grant_id")
class FundsDisbursed(EventData):
    """A payment under a grant (拨付). Keyed by grant, so a grant's payments stay in order."""

    disbursement_id: UUID
    grant_id: UUID
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    beneficiary_kind: BeneficiaryKind
    beneficiary_id: str
    amount_fen: int = Fen
    grant_remaining_fen: int = Fen
    paid_on: date
    region_code: str | None = Place("the grant paid from")
    batch_id: UUID | None = PaymentBatch


@event("changai.funding.disbursement.settled.v1", subject="grant_id")
class DisbursementSettled(EventData):
    """The bank paid a disbursement out (到账), as a finance system reported it: the amount matched to the fen.
    Keyed by grant, after the disbursement's own ``disbursement.made``."""

    disbursement_id: UUID
    grant_id: UUID
    fund_id: UUID
    amount_fen: int = Fen
    paid_on: date
    settled_at: datetime
    bank_reference: str = Field(description="the bank's transaction serial (流水号)")
    region_code: str | None = Place("the grant paid from")


@event("changai.funding.subsidy.claimed.v1", subject="claim_id")
class SubsidyClaimed(EventData):
    """A training subsidy was claimed for a completed session."""

    claim_id: UUID
    session_id: UUID
    organiser_id: str
    subsidy_category: SubsidyCategory
    region_code: str = RegionCode
    city_code: str | None = CityCode
    persons: int = Field(ge=0)
    rate_fen: int = Fen
    amount_fen: int = Fen
    completed_on: date
    batch_id: UUID | None = PaymentBatch


@event("changai.funding.subsidy.paid.v1", subject="claim_id")
class SubsidyPaid(EventData):
    claim_id: UUID
    session_id: UUID
    organiser_id: str
    subsidy_category: SubsidyCategory
    region_code: str = RegionCode
    city_code: str | None = CityCode
    fund_id: UUID
    source_kind: SourceKind
    fiscal_year: int = Year
    disbursement_id: UUID
    persons: int = Field(ge=0)
    amount_fen: int = Fen
    batch_id: UUID | None = PaymentBatch


@event("changai.funding.subsidy.rejected.v1", subject="claim_id")
class SubsidyRejected(EventData):
    claim_id: UUID
    session_id: UUID
    organiser_id: str
    subsidy_category: SubsidyCategory
    region_code: str = RegionCode
    city_code: str | None = CityCode
    persons: int = Field(ge=0)
    amount_fen: int = Fen
    reason: RejectionReason
    detail: str
    batch_id: UUID | None = PaymentBatch
