"""The one declarative list of Kafka topics.

Automatic topic creation is off on the broker: every topic the platform uses is
declared here and created at start-up (``python -m shared.topics create``).
Domain topics keep events forever, because read models and the projection are
rebuilt by replaying them.
"""
from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field

FOREVER = -1
WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int = FOREVER
    cleanup_policy: str = "delete"
    purpose: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            **self.extra,
        }


DOMAIN_SERVICES = ("membership", "training", "funding", "notifier", "reform")

TOPICS: tuple[Topic, ...] = (
    Topic("membership.events", 6, purpose="membership domain events (branches, members, stations)"),
    Topic("training.events", 6, purpose="training domain events (sessions, enrolments, certificates, competitions, studios)"),
    Topic("funding.events", 6, purpose="funding domain events (funds, grants, disbursements, subsidies)"),
    Topic("notifier.events", 6, purpose="notice delivery outcomes"),
    Topic("reform.events", 6, purpose="reform coordination events (the task ledger, member units, documents, pilots)"),
    # Dead letters: kept a few weeks so an operator can inspect and replay them.
    *(Topic(f"{s}.events.dlq", 1, retention_ms=4 * WEEK_MS, purpose=f"records of {s}.events that could not be parsed or validated")
      for s in DOMAIN_SERVICES),
    # The notifier's pipeline (route → render → deliver), its retry tiers and its dead letters.
    Topic("notifier.deliver", 6, retention_ms=WEEK_MS,
          purpose="notifier: deliveries keyed by channel, so one worker owns each channel's send budget"),
    # Retries and deferrals are few and wait in memory until due: one partition each is plenty
    # (fewer idle partitions in every fetch), and their records go back keyed by channel.
    Topic("notifier.deferred", 1, retention_ms=WEEK_MS, purpose="notifier: deliveries held back (quiet hours, leases)"),
    *(Topic(f"notifier.retry.{n}", 1, retention_ms=WEEK_MS, purpose=f"notifier: deliveries waiting for retry {n}")
      for n in range(1, 9)),
    Topic("notifier.deliveries.dlq", 1, retention_ms=4 * WEEK_MS,
          purpose="notifier: deliveries whose attempts were exhausted (dead letters)"),
    # The intake (services/intake): commands to membership, keyed by the person; kept 4 weeks, longer than
    # membership can be down, and the intake's outbox can publish them again. Upstream systems that produce
    # to Kafka themselves write to intake.<kind>; records the intake refuses go to its dead letters.
    Topic("membership.commands", 6, retention_ms=4 * WEEK_MS,
          purpose="intake: normalised commands for membership (joins and leaves from upstream HR systems)"),
    Topic("membership.commands.dlq", 1, retention_ms=4 * WEEK_MS,
          purpose="records of membership.commands that could not be parsed or validated"),
    Topic("intake.hr", 6, retention_ms=WEEK_MS,
          purpose="intake: CloudEvents produced by enterprises' HR systems (employee hired / left)"),
    Topic("intake.hr.dlq", 1, retention_ms=4 * WEEK_MS,
          purpose="intake: records of intake.hr that were refused, with the reason in headers"),
)

BY_NAME = {t.name: t for t in TOPICS}


def domain_topics() -> list[str]:
    return [f"{s}.events" for s in DOMAIN_SERVICES]


async def ensure_topics(bootstrap: str, topics: tuple[Topic, ...] = TOPICS) -> list[str]:
    """Create every declared topic that does not exist yet; return the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from shared.kafka import connection

    admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(t.name, t.partitions, 1, topic_configs=t.configs()) for t in missing]
            )
        return [t.name for t in missing]
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Kafka topics of the platform")
    parser.add_argument("command", choices=["create", "list"])
    parser.add_argument("--bootstrap", default=None)
    args = parser.parse_args()
    if args.command == "list":
        print(f"{'topic':28} {'partitions':>10} {'retention.ms':>14}  cleanup")
        for t in TOPICS:
            print(f"{t.name:28} {t.partitions:>10} {t.retention_ms:>14}  {t.cleanup_policy}")
        return
    from shared.settings import Settings

    bootstrap = args.bootstrap or Settings().kafka_bootstrap
    created = asyncio.run(ensure_topics(bootstrap))
    print(f"topics created: {len(created)} ({', '.join(created) or 'all existed'})")


if __name__ == "__main__":
    main()
