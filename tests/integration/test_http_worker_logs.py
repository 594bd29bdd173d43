"""The stream workers (Faust) log like the APIs: JSON lines through shared.logging (scrubbed, repeats of
aiokafka held back), not Faust's own plain-text handler, which replaced ours before."""
import json
import re
import uuid

import pytest

pytestmark = pytest.mark.integration

FAUST_PLAIN = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \[\d+\] \[(DEBUG|INFO|WARNING|ERROR)\]")


async def test_the_projection_worker_logs_json_lines(stack):
    env = stack.service_env("projection", CHANGAI_PROJECTION_APP_ID=f"logs-projection-{uuid.uuid4().hex[:8]}",
                            CHANGAI_PROJECTION_TOPIC_PREFIX=f"logs-{uuid.uuid4().hex[:8]}.", CHANGAI_LOG_LEVEL="INFO")
    worker = await stack.start_service("projection", ["-m", "services.projection", "worker"], env, timeout=90)
    try:
        lines = worker.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    finally:
        await worker.stop()
    plain = [line for line in lines if FAUST_PLAIN.match(line)]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert not plain, plain[:5]
    assert any(e["logger"].startswith(("faust", "mode")) for e in entries), lines[:20]
    assert {e["service"] for e in entries} == {"projection"}
