"""Metrics projection: domain events → Faust tables → Prometheus metrics.

Tables hold state per aggregate (branch id → region), never bare counters, so
applying a redelivered event again changes nothing; the figures are derived
from the tables when Prometheus scrapes. Run: ``python -m services.projection worker``.
"""
from __future__ import annotations

import sys
from collections import Counter as Tally

from prometheus_client.core import REGISTRY, GaugeMetricFamily

from shared.events.membership import BranchEstablished
from shared.settings import Settings
from shared.streams import create_stream_app, parse_or_dead_letter, run_worker

settings = Settings(service="projection")
app = create_stream_app("projection", settings)
membership_events = app.topic("membership.events", key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")
branches = app.Table("branches", default=None, partitions=6)


@app.agent(membership_events)
async def apply_membership(stream):
    async for event in stream.events():
        parsed = await parse_or_dead_letter(app, event, {BranchEstablished.event_type})
        if parsed is None:
            continue
        _, data = parsed
        branches[event.message.key] = {"region": data.region_code, "city": data.city_code, "kind": data.kind.value}


class ReformFigures:
    """Reads the tables at scrape time."""

    def collect(self):
        by_region = Tally((v["region"], v["city"] or "", v["kind"]) for v in branches.values() if v)
        gauge = GaugeMetricFamily("changai_union_branches", "Union branches (基层工会) by region, city and kind",
                                  labels=["region", "city", "kind"])
        for (region, city, kind), n in sorted(by_region.items()):
            gauge.add_metric([region, city, kind], n)
        yield gauge


REGISTRY.register(ReformFigures())


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "worker"
    if role != "worker":
        raise SystemExit(f"unknown role {role!r}; use: worker")
    run_worker(app, settings)


if __name__ == "__main__":
    main(sys.argv[1:])
