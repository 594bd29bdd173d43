"""The Faust app factory: its consumers fetch with the bounded wait (Faust itself hard-codes 1,500 ms)."""
from shared.settings import Settings
from shared.streams import create_stream_app


async def test_worker_consumer_fetch_wait_is_bounded(tmp_path):
    settings = Settings(data_dir=str(tmp_path), stream_fetch_max_wait_ms=20)
    app = create_stream_app("unit-streams", settings)
    thread = app.consumer._thread  # Faust's consumer thread, which builds the aiokafka consumer on start
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 20
    finally:
        await consumer.stop()

    create_stream_app("unit-streams-2", Settings(data_dir=str(tmp_path), stream_fetch_max_wait_ms=35))
    again = thread._create_worker_consumer(app.transport)
    try:
        assert again._fetch_max_wait_ms == 35  # set again, not stacked
    finally:
        await again.stop()
