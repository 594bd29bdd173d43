"""Where the code reaches past a library's public API, pin the versions it was checked against.

Private attributes change without notice, in any release. Each entry names the places that use them
(docs/platform.md, "Where the code relies on a library's private attributes"). When an upgrade fails
this test: re-check those places and the tests that exercise them, then widen the range here."""
from __future__ import annotations

from importlib.metadata import version

from packaging.specifiers import SpecifierSet

CHECKED = {
    # shared/streams.py bound_fetch_wait: AIOKafkaConsumerThread._create_worker_consumer (ADR 0003)
    "faust-streaming": SpecifierSet(">=0.15.3,<0.16"),
    # shared/streams.py: AIOKafkaConsumer._fetch_max_wait_ms; services/training/consumers.py:
    # consumer._client.fetch_all_metadata(); services/projection/rebuild.py: admin._send_request
    "aiokafka": SpecifierSet(">=0.14.0,<0.15"),
    # services/projection/exposition.py renders the text format itself with prometheus_client.utils
    # .floatToGoString, held byte-equal to generate_latest by tests/unit/projection
    "prometheus-client": SpecifierSet(">=0.26.0,<0.27"),
    # services/notifier/outbound.py http_client: AsyncHTTPTransport._pool._network_backend (the SSRF guard's
    # pinned addresses)
    "httpx": SpecifierSet(">=0.29.0,<0.30"),
    "httpcore": SpecifierSet(">=1.0.9,<1.1"),
    # shared/http.py _adopt: Connection._top_xact (a transaction begun by a simple query of ours, nested
    # conn.transaction() calls become savepoints) and the pool proxy's _con
    "asyncpg": SpecifierSet(">=0.32.0,<0.33"),
}


def test_libraries_are_the_versions_the_private_uses_were_checked_against():
    outside = {name: version(name) for name, spec in CHECKED.items() if version(name) not in spec}
    assert not outside, f"re-check the private uses (docs/platform.md) for {outside}, then widen CHECKED"


async def test_the_private_attributes_are_there():
    import httpx
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from prometheus_client.utils import floatToGoString

    assert callable(AIOKafkaConsumerThread._create_worker_consumer)
    assert callable(AIOKafkaAdminClient._send_request)
    from aiokafka.consumer import fetcher  # the notifier's fair_fetch_order wraps these two

    assert callable(fetcher.Fetcher.fetched_records) and isinstance(fetcher.FetchResult, type)
    assert "_records" in fetcher.Fetcher.__init__.__code__.co_names
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=321)  # never started
    try:
        assert consumer._fetch_max_wait_ms == 321  # the attribute start() hands to its Fetcher
        assert callable(consumer._client.fetch_all_metadata)
    finally:
        await consumer.stop()
    assert floatToGoString(1.5) == "1.5"
    transport = httpx.AsyncHTTPTransport()
    try:
        assert transport._pool._network_backend is not None  # replaced by the notifier's PinnedBackend
    finally:
        await transport.aclose()


def test_asyncpg_keeps_its_open_transaction_where_shared_http_sets_it():
    from asyncpg.connection import Connection
    from asyncpg.pool import PoolConnectionProxy

    assert "_top_xact" in Connection.__slots__ or "_top_xact" in Connection.__init__.__code__.co_names
    assert "_con" in PoolConnectionProxy.__slots__
