"""The intake's figures, per source and type (labels are registered values only: a refused event's own
claims never become a label, so a sender cannot grow the series)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.events.upstream import UPSTREAM

RECEIVED = Counter("changai_intake_events_received_total", "Upstream events received", ["source", "type", "channel"])
DUPLICATES = Counter("changai_intake_duplicates_total", "Redeliveries of an event already accepted", ["source", "type"])
REJECTED = Counter(
    "changai_intake_rejected_total",
    "Events refused, by the intake or by the owning service",
    ["source", "type", "reason"],
)
APPLIED = Counter("changai_intake_applied_total", "Events applied by the owning service", ["source", "type"])
LAG = Histogram(
    "changai_intake_lag_seconds",
    "From the event's time to its outcome (applied or rejected)",
    ["source", "type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400),
)

REPLIES = Counter("changai_intake_replies_total", "Answers sent to sources' webhooks", ["source", "result"])


def type_label(event_type: str | None) -> str:
    return event_type if event_type in UPSTREAM else "other"


def count(source_label: str, channel: str, results) -> None:
    """After the transaction committed: what a request or a Kafka batch brought."""
    for r in results:
        t = type_label(r.type)
        RECEIVED.labels(source_label, t, channel).inc()
        if r.outcome == "duplicate":
            DUPLICATES.labels(source_label, t).inc()
        elif r.outcome == "rejected":
            REJECTED.labels(source_label, t, (r.problem or {}).get("type", "").rsplit("/", 1)[-1] or "unknown").inc()
