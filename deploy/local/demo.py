"""The "article replay" demo: drives the running platform through its public APIs.

    python deploy/local/demo.py [--membership URL] [--receiver URL] [--prometheus URL]

`stack.py run` runs it once everything is up. The demo is a list of steps (`STEPS`);
each step is an async function of the shared `Demo` context that prints its progress
as table rows (`demo.row(...)`). Later work appends steps to the list.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from stack import pad  # deploy/local is on sys.path: as a script, or through stack.py / the tests

# GB 32100 unified social credit code: 18 characters, the last a check character.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check(first17: str) -> str:
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(first17, USCC_WEIGHTS))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def credit_code(region_code: str, rng: random.Random) -> str:
    """A valid code for an enterprise (registration "91") in `region_code`, random otherwise."""
    first17 = "91" + region_code + "".join(rng.choice(USCC_ALPHABET[:10] + "ABCDEFGH") for _ in range(9))
    return first17 + uscc_check(first17)


assert uscc_check("91350100M000100Y4") == "3"  # a published valid code: the algorithm holds

# Branches to establish: (name, region code, industry section). Random credit codes, so a
# re-run establishes new branches instead of answering 409 for the old ones.
BRANCHES = (
    ("宁夏枸杞产业集团有限公司工会委员会", "640104", "C"),  # 兴庆区, goji
    ("石嘴山新型材料股份有限公司工会", "640202", "C"),  # 大武口区, new materials
    ("吴忠滩羊肉业有限公司工会", "640302", "A"),  # 利通区, Tan sheep
)


@dataclass
class DemoConfig:
    membership_url: str = "http://127.0.0.1:8001"
    receiver_url: str = "http://127.0.0.1:8009"
    prometheus_url: str = "http://127.0.0.1:19090"
    notice_timeout_s: float = 30
    metric_timeout_s: float = 60
    running: set[str] | None = None  # services known to run (None: unknown, try everything)

    def runs(self, service: str) -> bool:
        return self.running is None or service in self.running


@dataclass
class Demo:
    config: DemoConfig
    client: Any  # httpx.AsyncClient
    token: str | None = None
    branches: list[dict] = field(default_factory=list)
    notices_before: int = 0
    failures: int = 0

    def row(self, step: str, item: str, result: str) -> None:
        print(f"{pad(step, 10)} {pad(item, 46)} {result}", flush=True)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def received(self) -> list[dict]:
        response = await self.client.get(f"{self.config.receiver_url}/received")
        response.raise_for_status()
        return response.json()


class Skip(Exception):
    """A step that cannot run (something it needs is not there yet)."""


async def step_token(demo: Demo) -> None:
    try:
        from shared.auth import mint_token
    except ImportError as exc:
        raise Skip(f"shared.auth not importable ({exc})") from None
    demo.token = mint_token("article-replay", ["membership:write", "membership:read"], "640000")
    demo.row("token", "bearer token: membership:write, region 640000", "minted (HS256, local secret)")


async def step_branches(demo: Demo) -> None:
    if not demo.token:
        raise Skip("no token")
    if not demo.config.runs("membership"):
        raise Skip("membership is not running")
    try:
        demo.notices_before = len(await demo.received())
    except Exception:  # noqa: BLE001 - the receiver is optional for this step
        demo.notices_before = 0
    rng = random.Random()
    for name, region, section in BRANCHES:
        body = {"name": name, "credit_code": credit_code(region, rng), "region_code": region,
                "industry_section": section, "kind": "enterprise", "founded_on": "2021-03-01"}
        try:
            response = await demo.client.post(f"{demo.config.membership_url}/v1/branches", json=body,
                                              headers={**demo.auth(), "Idempotency-Key": str(uuid.uuid4())})
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"membership not reachable at {demo.config.membership_url} ({exc.__class__.__name__})") from None
        if response.status_code == 201:
            branch = response.json()
            demo.branches.append(branch)
            demo.row("branches", f"{name[:16]} ({region})", f"201 created {branch.get('id', '?')}")
        else:
            demo.failures += 1
            demo.row("branches", f"{name[:16]} ({region})", f"{response.status_code} {response.text[:80]}")


async def step_notices(demo: Demo) -> None:
    if not demo.branches:
        raise Skip("no branch created")
    if not demo.config.runs("notifier-worker"):
        raise Skip("notifier-worker is not running")
    wanted = demo.notices_before + len(demo.branches)
    deadline = time.monotonic() + demo.config.notice_timeout_s
    shown = demo.notices_before
    while True:
        try:
            notices = await demo.received()
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"receiver not reachable at {demo.config.receiver_url} ({exc.__class__.__name__})") from None
        for notice in notices[shown:]:
            demo.row("notices", f"{notice['type'][:46]}",
                     f"subject {notice['subject']}  verified {'yes' if notice['verified'] else 'NO'}")
        shown = max(shown, len(notices))
        if len(notices) >= wanted:
            return
        if time.monotonic() > deadline:
            demo.failures += 1
            demo.row("notices", f"{len(notices) - demo.notices_before} of {len(demo.branches)} received",
                     f"timed out after {demo.config.notice_timeout_s:.0f} s")
            return
        await asyncio.sleep(0.5)


async def step_metrics(demo: Demo) -> None:
    if not demo.branches:
        raise Skip("no branch created")
    if not demo.config.runs("projection"):
        raise Skip("projection is not running")
    query = "sum by (region) (changai_union_branches)"
    regions = {b["region_code"] for b in demo.branches}
    deadline = time.monotonic() + demo.config.metric_timeout_s
    while True:  # until the projection has counted a branch in every region the demo used
        try:
            response = await demo.client.get(f"{demo.config.prometheus_url}/api/v1/query", params={"query": query})
            result = response.json()["data"]["result"]
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"Prometheus not reachable at {demo.config.prometheus_url} ({exc.__class__.__name__})") from None
        seen = {s["metric"].get("region") for s in result}
        if regions <= seen:
            break
        if time.monotonic() > deadline:
            demo.failures += 1
            demo.row("metrics", query, f"regions {sorted(regions - seen)} missing after "
                                       f"{demo.config.metric_timeout_s:.0f} s")
            return
        await asyncio.sleep(1)
    for series in sorted(result, key=lambda s: s["metric"].get("region", "")):
        region = series["metric"].get("region", "?")
        mark = "  (this run)" if region in regions else ""
        demo.row("metrics", f"changai_union_branches region={region}", f"{series['value'][1]}{mark}")


Step = Callable[[Demo], Awaitable[None]]
# The article replay, in order. Append new steps here.
STEPS: list[tuple[str, Step]] = [
    ("token", step_token),
    ("branches", step_branches),
    ("notices", step_notices),
    ("metrics", step_metrics),
]
from demo_membership import STEPS as MEMBERSHIP_STEPS  # noqa: E402  (members, 658 orgs, 65,585 imported, stations)
STEPS += MEMBERSHIP_STEPS
from demo_training import STEPS as TRAINING_STEPS  # noqa: E402  (sessions, competitions, studios; before funding pays)
STEPS += TRAINING_STEPS
from demo_funding import STEPS as FUNDING_STEPS  # noqa: E402  (funds, grants, subsidies)
STEPS += FUNDING_STEPS
from demo_notifier import STEPS as NOTIFIER_STEPS  # noqa: E402  (channels, the delivery log, a rendered notice)
STEPS += NOTIFIER_STEPS
from demo_reform import LATE_STEPS as REFORM_LATE_STEPS  # noqa: E402
from demo_reform import STEPS as REFORM_STEPS  # noqa: E402  (the coordinating office's ledgers, documents, pilots)
STEPS += REFORM_STEPS
from demo_projection import STEPS as PROJECTION_STEPS  # noqa: E402  (the figures as Prometheus has them)
STEPS += PROJECTION_STEPS
STEPS += REFORM_LATE_STEPS  # the overdue task's notice, once the notifier is through the earlier steps' notices


async def run(config: DemoConfig | None = None) -> int:
    """Run every step; return the number of failed checks (0 = all good)."""
    import httpx

    config = config or DemoConfig()
    started = time.monotonic()
    print(f"{'step':<10} {'item':<46} result")
    print(f"{'-' * 10} {'-' * 46} {'-' * 30}", flush=True)
    async with httpx.AsyncClient(timeout=10) as client:
        demo = Demo(config, client)
        for name, step in STEPS:
            try:
                await step(demo)
            except Skip as exc:
                demo.row(name, "skipped", str(exc))
    print(f"demo finished in {time.monotonic() - started:.1f} s"
          + (f" with {demo.failures} failed check(s)" if demo.failures else ""), flush=True)
    return demo.failures


def main() -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description="the article-replay demo against a running stack")
    parser.add_argument("--membership", default=defaults.membership_url)
    parser.add_argument("--receiver", default=defaults.receiver_url)
    parser.add_argument("--prometheus", default=defaults.prometheus_url)
    args = parser.parse_args()
    return 1 if asyncio.run(run(DemoConfig(args.membership, args.receiver, args.prometheus))) else 0


if __name__ == "__main__":
    sys.exit(main())
