"""What the notifier's API accepts (request bodies), validated before any I/O."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.notifier.domain import LOCALES, validate_quiet_hours

_EMAIL = re.compile(r"^[^@\s<>,;]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Owner(Strict):
    """A branch (by id), a federation (by region code: the region, a city or a county), or a reform
    member unit (by id: its liaison's group hears the supervision of the tasks it leads)."""

    branch_id: uuid.UUID | None = None
    region_code: str | None = Field(default=None, pattern=r"^64\d{4}$")
    unit_id: uuid.UUID | None = Field(default=None, description="a member unit of the reform coordination group")

    @model_validator(mode="after")
    def _one(self):
        if sum(v is not None for v in (self.branch_id, self.region_code, self.unit_id)) != 1:
            raise ValueError(
                "give exactly one of branch_id (a branch), region_code (a federation) or unit_id (a reform member unit)"
            )
        return self


class QuietHours(Strict):
    start: str = "22:00"
    end: str = "08:00"
    rest_days: bool = False  # also China's days off (holidays; 调休 workdays count as workdays)

    @model_validator(mode="after")
    def _valid(self):
        validate_quiet_hours(self.model_dump())
        return self


class WebhookConfig(Strict):
    url: str = Field(max_length=2000)


class WecomConfig(Strict):
    key: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2000, description="the robot's URL as WeCom shows it")
    format: Literal["markdown", "text"] = "markdown"


class DingtalkConfig(Strict):
    access_token: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2000, description="the robot's URL as DingTalk shows it")
    secret: str | None = Field(default=None, max_length=200, description="signing secret (SEC…), if signing is on")
    keyword: str | None = Field(
        default=None, max_length=20, description="a keyword set on the robot: added to every message"
    )
    format: Literal["markdown", "text"] = "markdown"

    @field_validator("secret")
    @classmethod
    def _sec(cls, v):
        if v is not None and not v.startswith("SEC"):
            raise ValueError("a DingTalk signing secret starts with SEC")
        return v


class EmailConfig(Strict):
    to: list[str] = Field(min_length=1, max_length=20)

    @field_validator("to")
    @classmethod
    def _addresses(cls, v):
        for address in v:
            if not _EMAIL.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return v


CONFIGS: dict[str, type[Strict]] = {
    "webhook": WebhookConfig,
    "wecom": WecomConfig,
    "dingtalk": DingtalkConfig,
    "email": EmailConfig,
}


def _name(v: str) -> str:
    if _CONTROL.search(v):
        raise ValueError("must not contain control characters")
    return v


class ChannelIn(Strict):
    kind: Literal["webhook", "wecom", "dingtalk", "email"]
    name: str = Field(min_length=1, max_length=100)
    owner: Owner
    scope: Literal["own", "subtree"] | None = Field(
        default=None, description="subtree: everything under the owner (default for federations)"
    )
    event_types: list[str] | None = Field(
        default=None, max_length=100, description="types, 'prefix.*' or '*'; default: sensible per owner"
    )
    locale: Literal["zh-CN", "en"] = "zh-CN"
    quiet_hours: QuietHours | None = None
    config: dict

    @field_validator("name")
    @classmethod
    def _n(cls, v):
        return _name(v)

    def kind_config(self):
        return CONFIGS[self.kind].model_validate(self.config)


class ChannelPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    scope: Literal["own", "subtree"] | None = None
    event_types: list[str] | None = Field(default=None, max_length=100)
    locale: Literal["zh-CN", "en"] | None = None
    quiet_hours: QuietHours | None = None
    clear_quiet_hours: bool = False
    config: dict | None = Field(default=None, description="the kind's settings; secrets given here replace the old")

    @field_validator("name")
    @classmethod
    def _n(cls, v):
        return v if v is None else _name(v)


class Rotate(Strict):
    overlap_s: int = Field(
        default=86400, ge=0, le=7 * 86400, description="how long the old secret keeps signing alongside the new one"
    )


class PauseIn(Strict):
    reason: str = Field(default="paused by its owner", min_length=1, max_length=300)


class ResendRange(Strict):
    channel_id: uuid.UUID
    since: str | None = None
    until: str | None = None
    status: Literal["dead", "delivered", "held", "retrying"] = "dead"


def robot_key_from_url(url: str, expected_base: str, param: str) -> str:
    """The key / token from a robot URL as the user copied it; its host must be the robot's."""
    parts, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(expected_base)
    if (parts.scheme, parts.hostname, parts.path.rstrip("/")) != (base.scheme, base.hostname, base.path.rstrip("/")):
        raise ValueError(f"must be a {base.hostname} robot URL ({expected_base}?{param}=…)")
    values = urllib.parse.parse_qs(parts.query).get(param)
    if not values or not values[0]:
        raise ValueError(f"the URL has no {param}")
    return values[0]


__all__ = [
    "CONFIGS",
    "LOCALES",
    "ChannelIn",
    "ChannelPatch",
    "Owner",
    "PauseIn",
    "QuietHours",
    "ResendRange",
    "Rotate",
    "robot_key_from_url",
]
