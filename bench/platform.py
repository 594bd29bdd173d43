"""The walking skeleton's latency: API call → signed webhook received, 100 branches one after another (issue 18:
p99 < 50 ms sequentially; the figure column is the median).

    python -m bench platform      (CHANGAI_BENCH_PLATFORM_N=… calls instead of 100)
"""
from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import httpx

from bench.common import aim, aims_table, load_avg, percentile, servers, summary, table
from shared.auth import mint_token
from shared.identifiers import uscc_check_char

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
N = int(os.environ.get("CHANGAI_BENCH_PLATFORM_N", "100"))


def credit_code() -> str:
    first = "91640100" + "".join(random.choice(ALPHABET[:10] + "ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


async def main() -> None:
    async with servers() as s:
        receiver_port = s.env("receiver")["CHANGAI_HTTP_PORT"]
        receiver = f"http://127.0.0.1:{receiver_port}"
        await s.start("receiver", ["deploy/local/receiver.py", "--port", receiver_port, "--keep", "1000"],
                      s.env("receiver", CHANGAI_HTTP_PORT=receiver_port))
        m_env = s.env("membership", database_url=await s.database("membership"), receiver_url=receiver)
        n_env = s.env("notifier-worker", database_url=await s.database("notifier"), receiver_url=receiver)
        await asyncio.gather(s.start("membership", ["-m", "services.membership", "api"], m_env),
                             s.start("notifier-worker", ["-m", "services.notifier", "worker"], n_env))
        token = {"Authorization": "Bearer " + mint_token("bench", ["membership:write"])}
        url = f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}/v1/branches"
        latencies = []
        async with httpx.AsyncClient(timeout=30) as http:
            await http.delete(f"{receiver}/received")
            for i in range(N + 5):  # the first 5 warm up connections and the consumer group
                body = {"name": f"基准测试工会{i}", "credit_code": credit_code(), "region_code": "640104",
                        "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"}
                started = time.perf_counter()
                resp = await http.post(url, json=body, headers=token)
                resp.raise_for_status()
                branch_id = resp.json()["id"]
                while True:
                    notices = (await http.get(f"{receiver}/received")).json()
                    if any(n["subject"] == branch_id for n in notices):
                        break
                    await asyncio.sleep(0.002)
                if i >= 5:
                    latencies.append((time.perf_counter() - started) * 1000)
        print(table([("API call → webhook received", len(latencies), *summary(latencies))],
                    ("path", "n", "median ms", "p90 ms", "p99 ms", "max ms")))
        p99 = percentile(latencies, 99)
        print(aims_table([aim(f"API call → signed webhook received, {len(latencies)} sequential", statistics.median(
            latencies), p99, None, None, "p99 < 50 ms", p99 < 50, load_avg(), " ms", sized=N >= 100)]))
