"""/metrics off the public API port when CHANGAI_METRICS_PORT is set (issue 19 item 12)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from shared.http import create_app
from shared.settings import Settings


def _app(**kw):
    return create_app(service="metrics-check", settings=Settings(**kw), routers=[], title="t", with_database=False)


def test_metrics_only_on_the_metrics_port_when_one_is_set():
    with TestClient(_app()) as client:
        assert client.get("/metrics").status_code == 200
    with TestClient(_app(metrics_port=9100)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/livez").status_code == 200
