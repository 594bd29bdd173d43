"""Consumer-lag series of partitions a process gave up are removed (issue 19 item 2): with two
replicas, a frozen value left behind would be summed with the new owner's and keep alerts firing."""
from __future__ import annotations

from prometheus_client import REGISTRY

from shared.consumer import drop_lag, report_lag


def _series(consumer: str) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for metric in REGISTRY.collect() if metric.name == "changai_consumer_lag"
            for s in metric.samples if s.labels.get("consumer") == consumer}


def test_partitions_given_up_in_a_rebalance_leave_no_series():
    report_lag("lag-test", [("a.events", 0), ("a.events", 1)], {("a.events", 0): 5, ("a.events", 1): 7})
    assert _series("lag-test") == {("a.events", "0"): 5, ("a.events", "1"): 7}
    # Rebalance: partition 1 went to another replica; partition 2 came in, its end not known yet.
    report_lag("lag-test", [("a.events", 0), ("a.events", 2)], {("a.events", 0): 3})
    assert _series("lag-test") == {("a.events", "0"): 3}
    report_lag("lag-test", [("a.events", 0), ("a.events", 2)], {("a.events", 0): 0, ("a.events", 2): 4})
    assert _series("lag-test") == {("a.events", "0"): 0, ("a.events", "2"): 4}
    # Negative (a position read after the end) is 0; another consumer's series are left alone.
    report_lag("lag-other", [("b.events", 0)], {("b.events", 0): -1})
    drop_lag("lag-test")
    assert _series("lag-test") == {}
    assert _series("lag-other") == {("b.events", "0"): 0}
    drop_lag("lag-other")
