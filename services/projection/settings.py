"""The projection's settings (environment, prefix ``CHANGAI_``), on top of the platform's."""

from __future__ import annotations

from pydantic import Field

from services.projection.domain import DEDUPE_WINDOW, DOMAIN_TOPICS
from shared.settings import Settings


class ProjectionSettings(Settings):
    service: str = "projection"
    http_port: int = 8005
    # Faust app id = consumer group id = prefix of the changelog topics.
    projection_app_id: str = "changai-projection"
    # Read "<prefix>membership.events" etc. instead (an isolated run on a shared cluster: tests, benchmarks).
    projection_topic_prefix: str = ""
    projection_batch_max: int = 5000
    projection_fetch_wait_ms: int = 200
    projection_session_timeout_s: float = 10.0
    projection_faust_sensors: bool = True
    # Event ids remembered per source partition to skip an event published twice (domain.RecentIds).
    projection_dedupe_window: int = Field(default=DEDUPE_WINDOW, ge=0)

    def source_topics(self) -> list[str]:
        return [self.projection_topic_prefix + t for t in DOMAIN_TOPICS]

    def dlq_topics(self) -> list[str]:
        return [self.projection_topic_prefix + t for t in dead_letter_topics()]


def dead_letter_topics() -> list[str]:
    """Every dead-letter topic the platform declares (``<topic>.dlq``, one partition each)."""
    from shared.topics import TOPICS

    return [t.name for t in TOPICS if t.name.endswith(".dlq")]
