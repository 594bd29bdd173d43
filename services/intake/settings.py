"""The intake service's settings (environment, prefix ``CHANGAI_``), on top of the platform's."""

from __future__ import annotations

from pydantic import Field

from shared.settings import Settings


class IntakeSettings(Settings):
    service: str = "intake"

    # Limits of what a source may send (CloudEvents HTTP binding; a batch is one request).
    intake_max_event_bytes: int = Field(default=64 * 1024, gt=0)
    intake_max_batch_events: int = Field(default=500, gt=0)
    intake_max_batch_bytes: int = Field(default=1024 * 1024, gt=0)
    # How far in the future an event's `time` may be (clocks drift; further is a bad clock or a forgery).
    intake_max_future_s: float = Field(default=300.0, ge=0)
    # Consumers: the outcomes membership publishes, and the Kafka intake topics.
    intake_consume_outcomes: bool = True
    intake_outcomes_group_id: str = "intake-outcomes"
    intake_consume_kafka: bool = True
    intake_kafka_group_id: str = "intake-hr"
    # Answers to webhook sources (Standard Webhooks signatures): how often due answers are sent, how long a
    # receiver may take, and the longest wait between retries (doubling from 1 s).
    intake_reply_webhooks: bool = True
    intake_reply_interval_s: float = Field(default=0.5, gt=0)
    intake_reply_timeout_s: float = Field(default=10.0, gt=0)
    intake_reply_max_backoff_s: float = Field(default=3600.0, gt=0)
    intake_kafka_topics: str = "intake.hr,intake.training,intake.finance"  # comma-separated intake.<kind> topics
    # The webhook validation handshake: the most requests a minute a sender is allowed (it may ask fewer).
    intake_webhook_max_rate: int = Field(default=60000, gt=0)
