"""The "article replay" demo: drives the running platform through its public APIs.

    python deploy/local/demo.py [--membership URL] [--receiver URL] [--prometheus URL]
    CHANGAI_DEMO_SCALE=small|full   (default small; see demo_replay.py and docs/demo.md)

`stack.py run` runs it once everything is up. The demo is a list of steps (`STEPS`);
each step is an async function of the shared `Demo` context that prints its progress
as table rows (`demo.row(...)`). Later work appends steps to the list.

Every write carries an Idempotency-Key derived from what it is and a body built from seeded data
(demo_replay.py), so a second run on the same state replays the first answers: it creates nothing and
leaves every figure as it was. The demo counts the writes the services answered afresh and the ones
they replayed, and prints the time of each step.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from demo_replay import Scale, key, scale_from_env, seeded
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

# Branches to establish: (name, region code, industry section). Their credit codes are drawn from a
# generator seeded by the name, so a re-run sends the same bodies under the same keys.
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
    scale: Scale = field(default_factory=scale_from_env)
    training_url: str | None = None  # None: the module's default (CHANGAI_DEMO_<SERVICE>_URL or the fixed port)
    funding_url: str | None = None
    notifier_url: str | None = None
    reform_url: str | None = None
    projection_group: str = "changai-projection"  # the projection's consumer group, whose lag the figures wait on
    intake_url: str | None = None
    intake_job: str = "intake"  # the intake's Prometheus job (the intake step reads its counters)
    projection_job: str | None = None  # a test's own projection job (the intake step's figures from it only)

    def runs(self, service: str) -> bool:
        return self.running is None or service in self.running


@dataclass
class Demo:
    config: DemoConfig
    client: Any  # httpx.AsyncClient
    token: str | None = None
    branches: list[dict] = field(default_factory=list)
    replayed: set[str] = field(default_factory=set)  # ids of demo branches an earlier run established
    failures: int = 0
    writes: Counter = field(default_factory=Counter)  # "fresh" / "replayed" / "refused" / "unkeyed" answers
    fresh: list[str] = field(default_factory=list)  # "METHOD /path" of every write answered afresh
    replayed_keys: set[str] = field(default_factory=set)  # Idempotency-Keys answered with an earlier run's answer
    times: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds) in order
    figures: dict[str, str] = field(default_factory=dict)  # the figures step's rows, as Prometheus had them
    events: Counter = field(default_factory=Counter)  # the intake's answers to the demo's upstream events

    def row(self, step: str, item: str, result: str) -> None:
        print(f"{pad(step, 10)} {pad(item, 46)} {result}", flush=True)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def received(self) -> list[dict]:
        response = await self.client.get(f"{self.config.receiver_url}/received")
        response.raise_for_status()
        return response.json()

    async def count_write(self, response: Any) -> None:
        """httpx response hook: tell the writes a service did from the ones it replayed (a re-run must do none)."""
        request = response.request
        if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return
        if "idempotency-key" not in request.headers:
            self.writes["unkeyed"] += 1
        if response.status_code >= 300:
            self.writes["refused"] += 1
        elif response.headers.get("idempotent-replayed") == "true":
            self.writes["replayed"] += 1
            self.replayed_keys.add(request.headers["idempotency-key"])
        else:
            self.writes["fresh"] += 1
            self.fresh.append(f"{request.method} {request.url.path}")


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
    for name, region, section in BRANCHES:
        body = {"name": name, "credit_code": credit_code(region, seeded("branch", name)), "region_code": region,
                "industry_section": section, "kind": "enterprise", "founded_on": "2021-03-01"}
        try:
            response = await demo.client.post(f"{demo.config.membership_url}/v1/branches", json=body,
                                              headers={**demo.auth(), "Idempotency-Key": key("branch", name)})
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"membership not reachable at {demo.config.membership_url} ({exc.__class__.__name__})") from None
        if response.status_code == 201:
            branch = response.json()
            demo.branches.append(branch)
            again = response.headers.get("idempotent-replayed") == "true"
            if again:
                demo.replayed.add(branch["id"])
            demo.row("branches", f"{name[:16]} ({region})",
                     f"201 {'already established' if again else 'created'} {branch.get('id', '?')}")
        else:
            demo.failures += 1
            demo.row("branches", f"{name[:16]} ({region})", f"{response.status_code} {response.text[:80]}")


ESTABLISHED = "changai.membership.branch.established.v1"


async def told_before(demo: Demo, event_type: str, branch_id: str | None = None) -> bool:
    """Whether the notifier's delivery log has a delivered notice of ``event_type`` (for ``branch_id``):
    a re-run's replayed write is not told again, and the receiver (restarted) has not kept the first one."""
    from demo_notifier import _headers, _url

    params = {"event_type": event_type, "status": "delivered", "limit": 1}
    if branch_id:
        params["branch_id"] = branch_id
    response = await demo.client.get(f"{_url(demo)}/v1/deliveries", params=params, headers=_headers())
    return response.status_code == 200 and bool(response.json()["items"])


async def step_notices(demo: Demo) -> None:
    if not demo.branches:
        raise Skip("no branch created")
    if not demo.config.runs("notifier-worker"):
        raise Skip("notifier-worker is not running")
    for branch in demo.branches:
        if branch["id"] in demo.replayed:
            told = demo.config.runs("notifier-api") and await told_before(demo, ESTABLISHED, branch["id"])
            if not told:
                demo.failures += 1
            demo.row("notices", f"{ESTABLISHED[:46]}",
                     f"subject {branch['id']}  told in an earlier run: {'yes (delivery log)' if told else 'NO'}")
    wanted = {b["id"] for b in demo.branches} - demo.replayed
    deadline = time.monotonic() + demo.config.notice_timeout_s
    while wanted:
        try:
            notices = await demo.received()
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"receiver not reachable at {demo.config.receiver_url} ({exc.__class__.__name__})") from None
        for notice in notices:
            if notice["type"] == ESTABLISHED and notice["subject"] in wanted:
                wanted.discard(notice["subject"])
                demo.row("notices", f"{notice['type'][:46]}",
                         f"subject {notice['subject']}  verified {'yes' if notice['verified'] else 'NO'}")
        if wanted and time.monotonic() > deadline:
            demo.failures += 1
            demo.row("notices", f"{len(wanted)} of {len(demo.branches)} not received",
                     f"timed out after {demo.config.notice_timeout_s:.0f} s")
            return
        if wanted:
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
from demo_membership import LATE_STEPS as EARLIER_MEMBERS  # noqa: E402  (full scale: members before 2021)
from demo_membership import STEPS as MEMBERSHIP_STEPS  # noqa: E402  (members, 658 orgs, 65,585 imported, stations)
STEPS += MEMBERSHIP_STEPS
from demo_training import ROSTER_STEPS  # noqa: E402  (full scale: 134,000 person-times, once the payees exist)
from demo_training import STEPS as TRAINING_STEPS  # noqa: E402  (sessions, competitions, studios; before funding pays)
STEPS += TRAINING_STEPS
from demo_funding import STEPS as FUNDING_STEPS  # noqa: E402  (funds, grants, subsidies)
# The rosters after funding's set-up (the saga pays them at once); the earlier members after the rosters (training's
# read model has the 2021 members to learn first).
STEPS += FUNDING_STEPS[:1] + ROSTER_STEPS + EARLIER_MEMBERS + FUNDING_STEPS[1:]
from demo_notifier import STEPS as NOTIFIER_STEPS  # noqa: E402  (channels, the delivery log, a rendered notice)
STEPS += NOTIFIER_STEPS
from demo_reform import LATE_STEPS as REFORM_LATE_STEPS  # noqa: E402
from demo_reform import STEPS as REFORM_STEPS  # noqa: E402  (the coordinating office's ledgers, documents, pilots)
STEPS += REFORM_STEPS
from demo_projection import STEPS as PROJECTION_STEPS  # noqa: E402  (the figures as Prometheus has them)
STEPS += PROJECTION_STEPS
from demo_intake import STEPS as INTAKE_STEPS  # noqa: E402  (upstream systems emit events; after the figures)
STEPS += INTAKE_STEPS
STEPS += REFORM_LATE_STEPS  # the overdue task's notice, once the notifier is through the earlier steps' notices


async def replay(config: DemoConfig | None = None, steps: list[tuple[str, Step]] | None = None) -> Demo:
    """Run every step (or ``steps``); the demo's context, with its failures, writes and step times."""
    import httpx

    config = config or DemoConfig()
    started = time.monotonic()
    print(f"article replay at scale {config.scale.name!r} (CHANGAI_DEMO_SCALE)")
    print(f"{'step':<10} {'item':<46} result")
    print(f"{'-' * 10} {'-' * 46} {'-' * 30}", flush=True)
    for module in ("demo_membership", "demo_training", "demo_funding", "demo_reform"):
        getattr(sys.modules.get(module), "STATE", {}).clear()  # one run's records, never the previous run's
    demo = Demo(config, None)
    async with httpx.AsyncClient(timeout=10, event_hooks={"response": [demo.count_write]}) as client:
        demo.client = client
        for name, step in steps if steps is not None else STEPS:
            began = time.monotonic()
            try:
                await step(demo)
            except Skip as exc:
                demo.row(name, "skipped", str(exc))
            demo.times.append((name, time.monotonic() - began))
    total = time.monotonic() - started
    print(f"\n{'step':<10} {'seconds':>8}")
    for name, seconds in demo.times:
        print(f"{pad(name, 10)} {seconds:8.1f}")
    print(f"{'total':<10} {total:8.1f}")
    w = demo.writes
    print(f"writes: {w['fresh']} done, {w['replayed']} replayed (an earlier run did them), {w['refused']} refused"
          f" (on purpose or already), {w['unkeyed']} without an Idempotency-Key (bulk imports: same rows, same answer)")
    if demo.events:
        e = demo.events
        print(f"upstream events: {e['accepted']} accepted, {e['duplicate']} duplicates (an earlier run sent them), "
              f"{e['rejected']} refused")
    print(f"demo finished in {total:.1f} s at scale {config.scale.name!r}"
          + (f" with {demo.failures} failed check(s)" if demo.failures else ""), flush=True)
    return demo


async def run(config: DemoConfig | None = None) -> int:
    """Run every step; return the number of failed checks (0 = all good)."""
    return (await replay(config)).failures


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
