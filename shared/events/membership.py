"""Events of the membership service (topic ``membership.events``).

They carry region codes (county and city) and branch ids so consumers need no
lookup, and never a full ID number or phone number.
"""
from __future__ import annotations

from datetime import date
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, event


class BranchKind(StrEnum):
    enterprise = "enterprise"        # 企业工会
    joint = "joint"                  # 联合工会
    industry = "industry"            # 行业工会
    new_form = "new_form"            # 新就业形态工会


RegionCode = Field(pattern=r"^64\d{4}$")


@event("changai.membership.branch.established.v1", subject="branch_id")
class BranchEstablished(EventData):
    branch_id: UUID
    name: str
    credit_code: str
    region_code: str = RegionCode
    city_code: str | None
    industry_section: str = Field(pattern=r"^[A-T]$")
    kind: BranchKind
    parent_id: UUID | None = None
    founded_on: date
