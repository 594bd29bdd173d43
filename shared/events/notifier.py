"""Events of the notifier (topic ``notifier.events``): delivery outcomes, for the projection and audit."""
from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, event


class ChannelKind(StrEnum):
    webhook = "webhook"
    wecom = "wecom"
    dingtalk = "dingtalk"
    email = "email"


@event("changai.notifier.delivery.succeeded.v1", subject="delivery_id")
class DeliverySucceeded(EventData):
    delivery_id: UUID
    event_id: UUID
    event_type: str
    channel_id: UUID
    channel_kind: ChannelKind
    owner_region: str | None = None
    attempts: int = Field(ge=1)
    latency_ms: int = Field(ge=0, description="from the domain event's time to the receiver's acknowledgement")


@event("changai.notifier.delivery.failed.v1", subject="delivery_id")
class DeliveryFailed(EventData):
    """Attempts exhausted: a dead letter, visible to operators."""
    delivery_id: UUID
    event_id: UUID
    event_type: str
    channel_id: UUID
    channel_kind: ChannelKind
    owner_region: str | None = None
    attempts: int = Field(ge=1)
    last_error: str


@event("changai.notifier.channel.paused.v1", subject="channel_id")
class ChannelPaused(EventData):
    channel_id: UUID
    channel_kind: ChannelKind
    owner_region: str | None = None
    reason: str


@event("changai.notifier.channel.resumed.v1", subject="channel_id")
class ChannelResumed(EventData):
    channel_id: UUID
    channel_kind: ChannelKind
    owner_region: str | None = None
