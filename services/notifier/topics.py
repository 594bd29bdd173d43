"""The notifier's own Kafka topics (declared in ``shared.topics.TOPICS``)."""
from __future__ import annotations

RETRY_TIERS = 8  # notifier.retry.1 … notifier.retry.8

DELIVER = "notifier.deliver"    # render → deliver: one record per delivery, keyed by channel (one owner each)
DEFERRED = "notifier.deferred"  # waits that are not retries: quiet hours, a lease still held
DEAD = "notifier.deliveries.dlq"  # deliveries whose attempts are exhausted
DOMAIN_SOURCES = ("membership.events", "training.events", "funding.events", "notifier.events")


def retry_topic(n: int) -> str:
    return f"notifier.retry.{n}"


RETRIES = tuple(retry_topic(n) for n in range(1, RETRY_TIERS + 1))
INTERNAL = (DELIVER, DEFERRED, *RETRIES, DEAD)
