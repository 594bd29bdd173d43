"""Membership rules: what a valid branch is, and the event each change produces. No I/O."""
from __future__ import annotations

import uuid
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import regions
from shared.events.membership import BranchEstablished, BranchKind
from shared.identifiers import InvalidIdentifier, validate_credit_code


class BranchIn(BaseModel):
    """A union branch as an upstream system establishes it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=2, max_length=100, description="工会名称")
    credit_code: str = Field(description="employer's unified social credit code (GB 32100)")
    region_code: str = Field(description="GB/T 2260 code of a Ningxia city or county")
    industry_section: str = Field(pattern=r"^[A-T]$", description="GB/T 4754 section, A–T")
    kind: BranchKind
    parent_id: uuid.UUID | None = None
    founded_on: date

    @field_validator("credit_code")
    @classmethod
    def _credit_code(cls, v: str) -> str:
        try:
            return validate_credit_code(v)
        except InvalidIdentifier as exc:
            raise ValueError(str(exc)) from None

    @field_validator("region_code")
    @classmethod
    def _region(cls, v: str) -> str:
        region = regions.get(v)
        if region is None or region.level == "region":
            raise ValueError("must be the code of a Ningxia city or county (GB/T 2260)")
        return v

    @field_validator("founded_on")
    @classmethod
    def _founded(cls, v: date) -> date:
        if v > date.today():
            raise ValueError("cannot be in the future")
        return v


def establish_branch(cmd: BranchIn, branch_id: uuid.UUID | None = None) -> BranchEstablished:
    return BranchEstablished(
        branch_id=branch_id or uuid.uuid4(),
        name=cmd.name,
        credit_code=cmd.credit_code,
        region_code=cmd.region_code,
        city_code=regions.city_of(cmd.region_code),
        industry_section=cmd.industry_section,
        kind=cmd.kind,
        parent_id=cmd.parent_id,
        founded_on=cmd.founded_on,
    )
