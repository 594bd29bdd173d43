"""The notifier worker's web port (issue 12 item 7): bound like the APIs, only what operators need."""
from __future__ import annotations

import asyncio

import pytest

from services.notifier.consumers import build_worker
from services.notifier.settings import NotifierSettings


def _app(**settings):
    app, _ = build_worker(NotifierSettings(http_port=18999, **settings))
    return app


def test_the_worker_binds_the_settings_host_not_every_interface():
    assert _app().conf.web_bind == "127.0.0.1"
    assert _app(http_host="10.1.2.3").conf.web_bind == "10.1.2.3"  # a pod sets it to be scraped


def test_faust_router_table_and_statistics_views_are_not_served():
    served = [prefix for prefix, _ in _app().web.blueprints._enabled]  # noqa: SLF001 - what Faust will mount
    assert "/router" not in served and "/table" not in served and "/graph" not in served
    assert "" in served  # only Faust's minimal index, {"status": "OK"}


@pytest.mark.parametrize("path, expected", [("/livez", 200), ("/metrics", 200), ("/router/", 404),
                                            ("/table/", 404), ("/graph/", 404), ("/stats/", 404),
                                            # a channel this worker does not route by (not started: none)
                                            ("/channels/7d8a3c52-8d8e-4c41-9b7e-2f0d1c3a4b5e", 404),
                                            ("/channels/not-an-id", 404)])
def test_what_the_worker_answers(path, expected):
    """The web server as the worker runs it (its routes, no Kafka needed for them)."""
    from aiohttp.test_utils import TestClient, TestServer

    app = _app()

    async def call() -> int:
        web = app.web
        web.init_server()
        client = TestClient(TestServer(web.web_app))
        await client.start_server()
        try:
            return (await client.get(path)).status
        finally:
            await client.close()

    assert asyncio.run(call()) == expected
