"""The fuzzer: schemathesis against each API's live OpenAPI, over real sockets, with a real token.

Every API runs as a process under uvicorn (``e2e_services.start_apis``). schemathesis (the CLI, so
each run is its own process and its report is a file) generates requests from each API's
``/openapi.json`` — valid and invalid bodies, parameters and headers — with a region-level token that
holds every scope, and checks each answer:

* ``not_a_server_error``: never a 5xx, whatever the input;
* ``status_code_conformance``: only statuses the OpenAPI documents for the operation;
* ``response_schema_conformance``: the body matches the documented response schema.

Bounded: at most ``MAX_EXAMPLES`` generated cases per operation and ``MAX_SECONDS`` per API, the
APIs at once, so the whole test stays under three minutes (plus the servers' start). One worker per
API: with two threads, hypothesis's lambda-source lookup (``ast.parse`` in threads) failed with "AST
constructor recursion depth mismatch" on Python 3.11. Prints, per API: operations,
test cases (examples) and failures; a failure's reproduction (curl) is in the assertion message.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from e2e_services import start_apis

from shared.auth import mint_token

pytestmark = pytest.mark.e2e

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
MAX_EXAMPLES = int(os.environ.get("CHANGAI_FUZZ_MAX_EXAMPLES", "20"))
MAX_SECONDS = int(os.environ.get("CHANGAI_FUZZ_MAX_SECONDS", "140"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"  # installed with the test extras, beside python


@pytest.fixture(scope="module")
async def fuzz_apis(stack, make_database):
    # No notifier worker: the fuzzer's channels must not send anything anywhere.
    return await start_apis(stack, make_database, notifier_worker=False)


async def fuzz(api: str, url: str, token: str, report_dir: Path) -> dict:
    report = report_dir / f"{api}.json"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
        "--max-time", str(MAX_SECONDS), "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-shrink",
        "--seed", os.environ.get("CHANGAI_FUZZ_SEED", "2026"), "--request-timeout", "30",
        "--header", f"Authorization: Bearer {token}", "--report", "json", "--report-json-path", str(report),
        "--output-truncate", "true", "--warnings", "off",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=report_dir,  # its cache too
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (report_dir / f"{api}.txt").write_text(text)
    return {"api": api, "rc": proc.returncode, "output": text,
            "report": json.loads(report.read_text()) if report.exists() else None}


def summarise(result: dict) -> tuple[int, int, list[str]]:
    """(operations tested, test cases generated, failures) from schemathesis's JSON run report."""
    report = result["report"] or {}
    ops = int((report.get("operations") or {}).get("tested") or 0)
    cases = int((report.get("test_cases") or {}).get("generated") or 0)
    failures = [f"{g.get('title')} ({g.get('code') or g.get('type')}, {g.get('count')} cases): "
                f"{', '.join(g.get('operations') or [])}" for g in report.get("failures") or []]
    failures += [f"error: {e.get('title')} ({e.get('count')})" for e in report.get("errors") or []]
    return ops, cases, failures


# The APIs are fuzzed at once, each for MAX_SECONDS; on top come schemathesis' own start (seconds of imports per
# API) and the last case's answer (--request-timeout 30). Under load the default 300 s cut it short (seen at load 46).
@pytest.mark.timeout(MAX_SECONDS + 300)
async def test_fuzz_every_api(fuzz_apis, stack):
    async with httpx.AsyncClient(timeout=30) as http:
        await fuzz_apis.load_openapi(http)
    scopes = {op.get("x-changai-scope") for spec in fuzz_apis.openapi.values() for ops in spec["paths"].values()
              for op in ops.values() if isinstance(op, dict)} - {None}
    token = mint_token("fuzzer", sorted(scopes), "640000", ttl_s=3600)  # every scope, the whole region
    report_dir = stack.state_dir.parent / f"fuzz-{os.getpid()}"  # kept after the session: the reports
    report_dir.mkdir(parents=True, exist_ok=True)
    results = await asyncio.gather(*(fuzz(api, url, token, report_dir) for api, url in fuzz_apis.urls.items()))
    lines, problems = [], []
    for r in results:
        ops, cases, failures = summarise(r)
        lines.append(f"  {r['api']:<11} operations {ops:>3}  examples {cases:>6}  failures {len(failures):>3}  "
                     f"(exit {r['rc']})")
        if r["rc"] != 0 or failures:
            tail = "\n".join(r["output"].splitlines()[-60:])
            problems.append(f"--- {r['api']} (exit {r['rc']}):\n" + "\n".join(failures[:40]) + "\n" + tail)
    print("\nschemathesis, per API (report in " + str(report_dir) + "):\n" + "\n".join(lines))
    assert not problems, "\n".join(problems)
