"""/metrics text, the committed dashboards, and the Prometheus rules (promtool)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.projection import dashboards
from services.projection.domain import Projection
from services.projection.exposition import FiguresCollector, Renderer, figures_registry
from services.projection.families import EXPORTED
from services.projection.synthetic import encode_all, full_label_set, scenario
from shared.events import decode, parse_data

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def projection_of(events) -> Projection:
    proj = Projection({}, {})
    for i, (topic, key, value, _) in enumerate(encode_all(events)):
        ce = decode(value)
        proj.apply(topic, i % 6, i, key.decode(), ce, parse_data(ce))
    return proj


def test_cached_rendering_equals_the_prometheus_client_collector():
    events = scenario() + full_label_set()
    proj = projection_of(events[: len(events) // 2])
    renderer, registry = Renderer(proj), figures_registry(FiguresCollector(proj))
    assert renderer.render() == generate_latest(registry)
    for i, (topic, key, value, _) in enumerate(encode_all(events[len(events) // 2:]), start=len(events)):
        ce = decode(value)
        proj.apply(topic, i % 6, i, key.decode(), ce, parse_data(ce))
    assert renderer.render() == generate_latest(registry)  # cached lines refreshed where values changed
    families = {f.name: f for f in text_string_to_metric_families(renderer.render().decode())}
    assert {f.name.removesuffix("_total") if f.prometheus_type == "counter" else f.name for f in EXPORTED} \
        <= set(families)


def test_every_metric_follows_the_naming_conventions():
    for family in EXPORTED:
        assert re.fullmatch(r"changai_[a-z_]+", family.name), family.name
        assert family.name.endswith("_total") == (family.prometheus_type == "counter"), family.name
        if family.scale != 1:
            assert "_yuan" in family.name, family.name
        assert "id" not in family.labels and not any(label.endswith("_id") for label in family.labels)


def test_committed_dashboards_are_what_the_generator_gives():
    for name, build in dashboards.DASHBOARDS.items():
        committed = (dashboards.OUT / name).read_text(encoding="utf-8")
        assert committed == dashboards.render(build), f"{name} is stale: python -m services.projection dashboards"


def test_dashboards_query_only_metrics_that_exist():
    exported = {f.name for f in EXPORTED}
    platform = {"changai_http_requests_total", "changai_http_request_duration_seconds_bucket", "changai_consumer_lag",
                "changai_outbox_backlog", "changai_outbox_oldest_unpublished_age_seconds",
                "changai_outbox_published_total", "changai_dead_letters_total",
                "changai_projection_scrape_duration_seconds", "changai_faust_total_rebalances",
                "changai_faust_messages_received_total", "changai_notice_delivery_latency_seconds_bucket",
                # the event intake's own /metrics (services/intake/metrics.py)
                "changai_intake_events_received_total", "changai_intake_applied_total",
                "changai_intake_rejected_total", "changai_intake_duplicates_total", "changai_intake_lag_seconds_bucket"}
    for name, build in dashboards.DASHBOARDS.items():
        board = build()
        assert board["panels"], name
        for title, expr in dashboards.queries(board):
            used = set(re.findall(r"\b(changai_[a-z_]+)\b", expr))
            # a Kafka panel reads Strimzi's exporters (their names: tests/deploy/test_deploy_platform.py)
            assert (used or expr == "up" or dashboards.kubernetes_only(expr)) and used <= exported | platform, (
                name,
                title,
                used - exported - platform,
            )
    overview = dashboards.reform_overview()
    titles = [p["title"] for p in overview["panels"] if p["type"] != "row"]
    assert all(re.search(r"[\u4e00-\u9fff].*· [A-Z]", t) for t in titles), titles  # 中文 · English
    assert any("by city" in t for t in titles)


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install the Debian prometheus package")
    return exe


def test_prometheus_rules_are_valid():
    rules = sorted(PROMETHEUS_DIR.glob("*.rules.yml"))
    assert rules
    result = subprocess.run([_promtool(), "check", "rules", *map(str, rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rules_unit_tests_pass():
    tests = sorted(p.name for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml"))
    result = subprocess.run([_promtool(), "test", "rules", *tests], cwd=PROMETHEUS_DIR / "tests",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    text = (PROMETHEUS_DIR / "changai.rules.yml").read_text()
    tests = "".join(p.read_text() for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml"))
    alerts = re.findall(r"- alert: (\w+)", text)
    assert len(alerts) >= 6
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
