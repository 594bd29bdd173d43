"""Events of the notifier (topic ``notifier.events``): delivery outcomes, for the projection and audit."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, event

# Three events carry the type of the event they are about in a field named ``event_type`` (their published
# schema), beside EventData's class variable ``event_type`` (their own registered type). Both hold at run
# time: pydantic keeps field values on the instance, the registry and the envelope read the class. mypy
# cannot model a field shadowing a ClassVar, hence the three ``type: ignore[misc]``; renaming the field
# would change the published events.


class ChannelKind(StrEnum):
    webhook = "webhook"
    wecom = "wecom"
    dingtalk = "dingtalk"
    email = "email"


@event("changai.notifier.delivery.succeeded.v1", subject="delivery_id")
class DeliverySucceeded(EventData):
    delivery_id: UUID
    event_id: UUID
    event_type: str  # type: ignore[misc]  # the field shadows the ClassVar (see the top of this module)
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
    event_type: str  # type: ignore[misc]  # the field shadows the ClassVar (see the top of this module)
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


@event("changai.notifier.digest.sent.v1", subject="batch_id")
class NoticeDigest(EventData):
    """One notice for many events of one bulk operation (a member import, a roster, a batch of
    payments), sent to a channel instead of one notice per row. Made by the notifier for each
    channel and sent to it (webhooks receive it as this CloudEvent); never published on a topic."""

    batch_kind: str = Field(description="membership.import, or <service>.batch for a batch_id")
    batch_id: UUID
    event_type: str = Field(description="the type of the events summarised")  # type: ignore[misc]  # see top
    count: int = Field(ge=1)
    by_region: dict[str, int] = Field(description="events per region code (county or city)")
    branches: int = Field(ge=0, description="distinct branches concerned")
    first_time: datetime
    last_time: datetime
    report_url: str | None = Field(default=None, description="the operation's report (an import's rows)")
    final: bool = Field(
        default=False,
        description="no more events of the batch came for a while: the last digest of it unless it resumes",
    )
