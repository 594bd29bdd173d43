"""The notifier's own Kafka topics (declared in ``shared.topics.TOPICS``).

Their records are the notifier's internal envelopes, not CloudEvents: they are labelled with
their own content types (``content-type`` header), whether written through the outbox or sent
by the worker, so a CloudEvents consumer can tell them apart instead of failing on them.
"""

from __future__ import annotations

from shared import outbox

RETRY_TIERS = 8  # notifier.retry.1 … notifier.retry.8

DELIVER = "notifier.deliver"  # render → deliver: one record per delivery, keyed by channel (one owner each)
DEFERRED = "notifier.deferred"  # waits that are not retries: quiet hours, a lease still held
DEAD = "notifier.deliveries.dlq"  # deliveries whose attempts are exhausted
DOMAIN_SOURCES = ("membership.events", "training.events", "funding.events", "notifier.events", "reform.events")


def retry_topic(n: int) -> str:
    return f"notifier.retry.{n}"


RETRIES = tuple(retry_topic(n) for n in range(1, RETRY_TIERS + 1))
INTERNAL = (DELIVER, DEFERRED, *RETRIES, DEAD)

# What the internal records are (a delivery to make; a delivery given up on).
DELIVERY_CONTENT_TYPE = "application/vnd.changai.notifier.delivery+json"
DEAD_LETTER_CONTENT_TYPE = "application/vnd.changai.notifier.dead-letter+json"
CONTENT_TYPES = {
    DELIVER: DELIVERY_CONTENT_TYPE,
    DEFERRED: DELIVERY_CONTENT_TYPE,
    **{t: DELIVERY_CONTENT_TYPE for t in RETRIES},
    DEAD: DEAD_LETTER_CONTENT_TYPE,
}
DELIVERY_HEADERS = [("content-type", DELIVERY_CONTENT_TYPE.encode())]
for _topic, _type in CONTENT_TYPES.items():
    outbox.register_content_type(_topic, _type)
