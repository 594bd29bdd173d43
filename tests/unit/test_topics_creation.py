"""Who creates Kafka topics (shared.topics, issue 19 item 1): in Kubernetes and production no
application does (Strimzi's KafkaTopics own them); elsewhere with the configured replication."""
from __future__ import annotations

import asyncio

import pytest

from shared.settings import Settings
from shared.topics import BY_NAME, apps_create_topics, ensure_topics


class RecordingAdmin:
    """Stands in for the Kafka admin client: the test is about what would be asked of Kafka."""

    def __init__(self, existing=(), appear_after: int | None = None, later=()):
        self.existing = set(existing)
        self.created: list = []
        self.lists = 0
        self.appear_after, self.later = appear_after, set(later)

    async def list_topics(self):
        self.lists += 1
        if self.appear_after is not None and self.lists > self.appear_after:
            self.existing |= self.later
        return list(self.existing)

    async def create_topics(self, new_topics):
        self.created += new_topics
        self.existing |= {t.name for t in new_topics}


WANTED = (BY_NAME["notifier.deliver"], BY_NAME["notifier.events"])
# Production refuses the published secrets: these are the test's own.
SECRETS = dict(jwt_secret="topics-test-jwt-secret-of-its-own", data_key="dG9waWNzLXRlc3QtZGF0YS1rZXktMzItYnl0ZXMhISE=",
               notifier_webhook_secret="whsec_dG9waWNzLXRlc3Q=")


@pytest.mark.parametrize("environment", ["kubernetes", "production", "prod", " Production "])
def test_never_created_in_kubernetes_or_production(environment):
    settings = Settings(environment=environment, kafka_create_topics=True, topic_wait_s=30, **SECRETS)
    assert not apps_create_topics(settings)
    admin = RecordingAdmin(appear_after=2, later={t.name for t in WANTED})
    # Waits (bounded) until the operator has created them, and creates nothing itself.
    assert asyncio.run(ensure_topics("unused:9092", WANTED, settings=settings, admin=admin)) == []
    assert admin.created == [] and admin.lists == 3


def test_missing_topics_in_kubernetes_end_in_a_clear_error():
    settings = Settings(environment="kubernetes", topic_wait_s=0.01)

    async def run():
        from shared.topics import wait_for_topics

        await wait_for_topics("unused:9092", [t.name for t in WANTED], 0.01, admin=RecordingAdmin(), interval=0.005)

    with pytest.raises(TimeoutError, match="notifier.deliver"):
        asyncio.run(run())
    admin = RecordingAdmin()
    with pytest.raises(TimeoutError, match="kafkatopics"):
        asyncio.run(ensure_topics("unused:9092", WANTED, settings=settings, admin=admin))
    assert admin.created == []


def test_switched_off_elsewhere_too():
    settings = Settings(environment="dev", kafka_create_topics=False, topic_wait_s=30)
    admin = RecordingAdmin(existing={t.name for t in WANTED})
    assert asyncio.run(ensure_topics("unused:9092", WANTED, settings=settings, admin=admin)) == []
    assert admin.created == []


@pytest.mark.parametrize("environment", ["local", "compose"])
def test_created_locally_with_the_configured_replication(environment):
    settings = Settings(environment=environment, topic_replication_factor=3)
    admin = RecordingAdmin(existing={"notifier.events"})
    assert asyncio.run(ensure_topics("unused:9092", WANTED, settings=settings, admin=admin)) == ["notifier.deliver"]
    (made,) = admin.created
    assert (made.name, made.num_partitions, made.replication_factor) == ("notifier.deliver", 6, 3)
    # An explicit factor (the stream processors' changelogs) wins over the setting.
    admin = RecordingAdmin()
    asyncio.run(ensure_topics("unused:9092", WANTED, settings=settings, admin=admin, replication_factor=2))
    assert {t.replication_factor for t in admin.created} == {2}


def test_faust_declares_no_topic_in_kubernetes():
    from shared.streams import create_stream_app

    assert create_stream_app("topics-check", Settings(environment="local")).conf.topic_allow_declare is True
    assert create_stream_app("topics-check", Settings(environment="kubernetes")).conf.topic_allow_declare is False
