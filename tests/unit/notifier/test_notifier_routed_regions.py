"""Every event type the notifier routes to federations by place carries its region (issue 15).

The notifier routes an event to a federation's channel by the event's region (``region_code``,
or both ends of a transfer); an event without one reaches only the region's root channel
(640000), so a city or county federation never hears of it. This walks the whole catalogue:
a new event type about a place without a region field fails here.
"""
from __future__ import annotations

from services.notifier import domain, topics
from shared.events import REGISTRY

# Types routed otherwise, with the reason. Nothing else may lack a region.
NOT_ROUTED_BY_REGION = {
    # The notifier's own: routed by the channel they are about (its owner), or not routed at all.
    "changai.notifier.channel.paused.v1": "to the paused channel's owner",
    "changai.notifier.channel.resumed.v1": "to the resumed channel itself",
    "changai.notifier.delivery.succeeded.v1": "never routed (describes a notice)",
    "changai.notifier.delivery.failed.v1": "never routed (describes a notice)",
    "changai.notifier.digest.sent.v1": "never routed (made per channel; its regions are in by_region)",
    # A programme is an entry of the province's training catalogue, not an event at a place; its
    # sessions (scheduled, completed, cancelled) carry the organiser's region.
    "changai.training.programme.registered.v1": "the province's catalogue: the region's own channel",
}


def _routed_types() -> list[str]:
    sources = {t.removesuffix(".events") for t in topics.DOMAIN_SOURCES}
    return sorted(t for t, cls in REGISTRY.items() if cls.topic.removesuffix(".events") in sources)


def test_the_notifier_reads_every_domain_topic_of_the_catalogue():
    topics_in_catalogue = {cls.topic for cls in REGISTRY.values()}
    assert topics_in_catalogue <= set(topics.DOMAIN_SOURCES), topics_in_catalogue - set(topics.DOMAIN_SOURCES)


def test_every_routed_event_type_carries_its_region():
    missing = [t for t in _routed_types() if t not in NOT_ROUTED_BY_REGION
               and not set(domain.REGION_FIELDS) & set(REGISTRY[t].model_fields)]
    assert not missing, f"event types routed by region without a region field: {missing}"


def test_the_exemptions_are_still_needed():
    for t in NOT_ROUTED_BY_REGION:
        assert t in REGISTRY, f"{t} is no longer in the catalogue: drop its exemption"
        assert not set(domain.REGION_FIELDS) & set(REGISTRY[t].model_fields), f"{t} has a region now"


def test_a_region_in_the_event_reaches_that_citys_federation():
    # The field the test looks for is the one routing reads: an event of a county reaches its city.
    for t in _routed_types():
        if t in NOT_ROUTED_BY_REGION:
            continue
        fields = set(domain.REGION_FIELDS) & set(REGISTRY[t].model_fields)
        data = {name: "640104" for name in fields}
        assert "640104" in domain.concern(t, data).regions, t
