"""The one declarative list of Kafka topics.

Automatic topic creation is off on the broker: every topic the platform uses is
declared here. Locally and in Compose the services create the ones they miss at start-up
(``python -m shared.topics create``), with ``CHANGAI_TOPIC_REPLICATION_FACTOR`` replicas.
In Kubernetes Strimzi's Topic Operator owns them (deploy/k8s/base/kafka/topics.yaml is
generated from this file): a topic created there by an application would get the wrong
replication, which the operator cannot repair, so the applications only wait for them.
Domain topics keep events forever, because read models and the projection are
rebuilt by replaying them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    Topic(
        "training.events",
        6,
        purpose="training domain events (sessions, enrolments, certificates, competitions, studios)",
    ),
    Topic("funding.events", 6, purpose="funding domain events (funds, grants, disbursements, subsidies)"),
    Topic("notifier.events", 6, purpose="notice delivery outcomes"),
    Topic("reform.events", 6, purpose="reform coordination events (the task ledger, member units, documents, pilots)"),
    # Dead letters: kept a few weeks so an operator can inspect and replay them.
    *(
        Topic(
            f"{s}.events.dlq",
            1,
            retention_ms=4 * WEEK_MS,
            purpose=f"records of {s}.events that could not be parsed or validated",
        )
        for s in DOMAIN_SERVICES
    ),
    # The notifier's pipeline (route → render → deliver), its retry tiers and its dead letters.
    Topic(
        "notifier.deliver",
        6,
        retention_ms=WEEK_MS,
        purpose="notifier: deliveries keyed by channel, so one worker owns each channel's send budget",
    ),
    # Retries and deferrals are few and wait in memory until due: one partition each is plenty
    # (fewer idle partitions in every fetch), and their records go back keyed by channel.
    Topic("notifier.deferred", 1, retention_ms=WEEK_MS, purpose="notifier: deliveries held back (quiet hours, leases)"),
    *(
        Topic(f"notifier.retry.{n}", 1, retention_ms=WEEK_MS, purpose=f"notifier: deliveries waiting for retry {n}")
        for n in range(1, 9)
    ),
    Topic(
        "notifier.deliveries.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="notifier: deliveries whose attempts were exhausted (dead letters)",
    ),
    # The intake (services/intake): commands to membership (keyed by the person), training (by session) and
    # funding (by disbursement); kept 4 weeks, longer than
    # membership can be down, and the intake's outbox can publish them again. Upstream systems that produce
    # to Kafka themselves write to intake.<kind>; records the intake refuses go to its dead letters.
    Topic(
        "membership.commands",
        6,
        retention_ms=4 * WEEK_MS,
        purpose="intake: normalised commands for membership (joins and leaves from upstream HR systems)",
    ),
    Topic(
        "membership.commands.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="records of membership.commands that could not be parsed or validated",
    ),
    Topic(
        "training.commands",
        6,
        retention_ms=4 * WEEK_MS,
        purpose="intake: normalised commands for training (attendance from training providers), keyed by session",
    ),
    Topic(
        "training.commands.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="records of training.commands that could not be parsed or validated",
    ),
    Topic(
        "funding.commands",
        6,
        retention_ms=4 * WEEK_MS,
        purpose="intake: normalised commands for funding (settlements from finance systems), keyed by disbursement",
    ),
    Topic(
        "funding.commands.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="records of funding.commands that could not be parsed or validated",
    ),
    Topic(
        "intake.hr",
        6,
        retention_ms=WEEK_MS,
        purpose="intake: CloudEvents produced by enterprises' HR systems (employee hired / left)",
    ),
    Topic(
        "intake.hr.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="intake: records of intake.hr that were refused, with the reason in headers",
    ),
    Topic(
        "intake.training",
        6,
        retention_ms=WEEK_MS,
        purpose="intake: CloudEvents produced by training providers' systems (attendance recorded)",
    ),
    Topic(
        "intake.training.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="intake: records of intake.training that were refused, with the reason in headers",
    ),
    Topic(
        "intake.finance",
        6,
        retention_ms=WEEK_MS,
        purpose="intake: CloudEvents produced by finance systems (payment settled)",
    ),
    Topic(
        "intake.finance.dlq",
        1,
        retention_ms=4 * WEEK_MS,
        purpose="intake: records of intake.finance that were refused, with the reason in headers",
    ),
)

# The stream processors' own topics (Faust): each app's leader-election topic and each table's changelog.
# Declared here so that Kubernetes has a KafkaTopic for each: Faust does not declare them where the
# applications create no topics (shared.streams, topic_allow_declare). App id -> its tables.
STREAM_APPS: dict[str, tuple[str, ...]] = {
    "changai-notifier": (),
    "changai-projection": ("counters", "aggregates"),  # services/projection/main.py TABLES
}
# Changelogs are rewritten all the time (the same keys): compacted often.
CHANGELOG_CONFIGS = {"min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"}


def stream_topics(app_id: str, tables: tuple[str, ...] = ()) -> tuple[Topic, ...]:
    leader = Topic(
        f"{app_id}-__assignor-__leader", 1, retention_ms=WEEK_MS, purpose=f"Faust: leader election of {app_id}"
    )
    return (
        leader,
        *(
            Topic(
                f"{app_id}-{t}-changelog",
                6,
                cleanup_policy="compact",
                extra=CHANGELOG_CONFIGS,
                purpose=f"Faust: changelog of the {t} table of {app_id}",
            )
            for t in tables
        ),
    )


STREAM_TOPICS: tuple[Topic, ...] = tuple(t for app, tables in STREAM_APPS.items() for t in stream_topics(app, tables))

BY_NAME = {t.name: t for t in TOPICS}

# Environments where Strimzi's KafkaTopics own the topics: there no application creates one.
OPERATOR_MANAGED_ENVIRONMENTS = frozenset({"kubernetes", "production", "prod"})


def apps_create_topics(settings) -> bool:
    """Whether this process may create topics: never in Kubernetes or production (whatever
    CHANGAI_KAFKA_CREATE_TOPICS says), elsewhere unless CHANGAI_KAFKA_CREATE_TOPICS=false."""
    managed = settings.environment.strip().lower() in OPERATOR_MANAGED_ENVIRONMENTS
    return bool(settings.kafka_create_topics) and not managed


async def wait_for_topics(
    bootstrap: str, names: list[str] | tuple[str, ...], timeout: float, admin=None, interval: float = 2.0
) -> None:
    """Return once every topic of ``names`` exists; TimeoutError naming the missing ones after ``timeout`` s."""
    import logging
    import time

    log = logging.getLogger(__name__)
    own = admin is None
    if own:
        from aiokafka.admin import AIOKafkaAdminClient

        from shared.kafka import connection

        admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=15000)
        await admin.start()
    try:
        deadline = time.monotonic() + timeout
        logged = False
        while True:
            missing = sorted(set(names) - set(await admin.list_topics()))
            if not missing:
                if logged:
                    log.info("Kafka topics present: %s", ", ".join(sorted(names)))
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka topics still missing after {timeout:.0f} s: {', '.join(missing)} "
                    "(in Kubernetes their KafkaTopics create them: kubectl get kafkatopics)"
                )
            if not logged:
                log.warning(
                    "waiting up to %.0f s for Kafka topics this service does not create here: %s",
                    timeout,
                    ", ".join(missing),
                )
                logged = True
            await asyncio.sleep(interval)
    finally:
        if own:
            await admin.close()


def domain_topics() -> list[str]:
    return [f"{s}.events" for s in DOMAIN_SERVICES]


async def ensure_topics(
    bootstrap: str,
    topics: tuple[Topic, ...] = TOPICS,
    *,
    settings=None,
    replication_factor: int | None = None,
    admin=None,
) -> list[str]:
    """Create every declared topic that does not exist yet; return the names created.

    Where the applications create no topics (apps_create_topics: Kubernetes, production) it creates
    nothing and waits instead, at most CHANGAI_TOPIC_WAIT_S, for the topics to exist. The replication
    is ``replication_factor`` or CHANGAI_TOPIC_REPLICATION_FACTOR."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    if settings is None:
        from shared.settings import Settings

        settings = Settings()
    own = admin is None
    if own:
        from aiokafka.admin import AIOKafkaAdminClient

        from shared.kafka import connection

        admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=15000)
        await admin.start()
    try:
        if not apps_create_topics(settings):
            await wait_for_topics(bootstrap, [t.name for t in topics], settings.topic_wait_s, admin=admin)
            return []
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        replicas = replication_factor or settings.topic_replication_factor
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them meanwhile
                await admin.create_topics(
                    [NewTopic(t.name, t.partitions, replicas, topic_configs=t.configs()) for t in missing]
                )
        return [t.name for t in missing]
    finally:
        if own:
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

    settings = Settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    created = asyncio.run(ensure_topics(bootstrap, settings=settings))
    print(f"topics created: {len(created)} ({', '.join(created) or 'all existed'})")


if __name__ == "__main__":
    main()
