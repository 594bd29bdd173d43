"""End to end: real membership service, real Kafka, the projection worker, the real Prometheus.

A scenario goes through the membership API (branches and members: outbox → Kafka →
projection) and the event intake (an upstream HR system's hire, its redelivery and a refused
event: the pipeline dashboard's intake panels), and, for the services being built beside it, as events published on the real
topics. Then every panel query of both dashboards must return data from Prometheus, and
the key figures must have moved by exactly what the scenario sent.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter

import httpx
import pytest

from services.projection import dashboards
from services.projection.synthetic import encode_all, produce, reform_ledger, scenario
from shared.auth import mint_token
from shared.events import membership as me
from shared.events import training as te
from shared.identifiers import id_check_char, uscc_check_char
from shared.regions import REGIONS

pytestmark = pytest.mark.e2e
JOB = f"projection-e2e-{uuid.uuid4().hex[:6]}"
MEMBERSHIP_JOB = f"membership-e2e-{uuid.uuid4().hex[:6]}"
INTAKE_JOB = f"intake-e2e-{uuid.uuid4().hex[:6]}"
ALPHABET = "0123456789ABCDEFGH"


def credit_code(region: str, rng: random.Random) -> str:
    first = "91" + region + "".join(rng.choice(ALPHABET) for _ in range(9))
    return first + uscc_check_char(first)


def id_number(region: str, rng: random.Random) -> str:
    first = region + f"19{rng.randint(70, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(100, 999)}"
    return first + id_check_char(first)


async def by_city(prom, metric: str, **match) -> Counter:
    selector = ",".join([f'job="{JOB}"', *(f'{k}="{v}"' for k, v in match.items())])
    result = await prom.query(f"sum by (city) ({metric}{{{selector}}})")
    return Counter({r["metric"].get("city", ""): float(r["value"][1]) for r in result})


async def settle(prom, query, want, timeout: float = 90):
    """Poll Prometheus until `query()` returns `want`."""
    deadline = time.monotonic() + timeout
    while True:
        got = await query()
        if got == want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus shows {got}, expected {want}")
        await asyncio.sleep(1)


def expand(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$year", dashboards.YEAR_DEFAULT)


async def test_dashboards_show_the_scenario(stack, make_database):
    rng = random.Random()
    # -- the servers: membership (API + outbox relay) and the projection on the real topics
    m_env = stack.service_env("membership", database_url=await make_database("membership"))
    i_env = stack.service_env("intake", database_url=await make_database("intake"),
                              CHANGAI_INTAKE_OUTCOMES_GROUP_ID=f"e2e-outcomes-{uuid.uuid4().hex[:8]}",
                              CHANGAI_INTAKE_CONSUME_KAFKA="false")
    p_env = stack.service_env("projection", CHANGAI_PROJECTION_APP_ID=f"e2e-projection-{uuid.uuid4().hex[:8]}",
                              CHANGAI_LOG_LEVEL="WARNING")
    await asyncio.gather(stack.start_service("membership", ["-m", "services.membership", "api"], m_env),
                         stack.start_service("intake", ["-m", "services.intake", "api"], i_env),
                         stack.start_service("projection", ["-m", "services.projection", "worker"], p_env,
                                             timeout=90))
    stack.prometheus.set_targets({JOB: [f"127.0.0.1:{p_env['CHANGAI_HTTP_PORT']}"],
                                  MEMBERSHIP_JOB: [f"127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}"],
                                  INTAKE_JOB: [f"127.0.0.1:{i_env['CHANGAI_HTTP_PORT']}"]})
    prom = stack.prometheus
    try:
        await _scenario_and_checks(stack, prom, m_env, i_env, rng)
    finally:
        prom.set_targets({JOB: [], MEMBERSHIP_JOB: [], INTAKE_JOB: []})


async def _scenario_and_checks(stack, prom, m_env, i_env, rng) -> None:
    # caught up with whatever the shared topics held before: lag 0 everywhere, seen by Prometheus
    await prom.wait_for(f'changai_projection_ready{{job="{JOB}"}} == 1', timeout=90)
    await prom.wait_for(f'sum(changai_consumer_lag{{job="{JOB}"}}) == 0', timeout=120)
    members_before = await by_city(prom, "changai_union_members")
    branches_before = await by_city(prom, "changai_union_branches")
    person_times_before = await by_city(prom, "changai_training_person_times_total", year="2021")

    # -- the scenario, part 1: through the membership API
    api = f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}/v1"
    token = {"Authorization": "Bearer " + mint_token("e2e", ["membership:write", "membership:read"], "640000")}
    api_branches, api_members = Counter(), Counter()
    async with httpx.AsyncClient(timeout=30) as http:
        branch_ids = []
        for county in ("640104", "640302"):
            r = await http.post(f"{api}/branches", headers={**token, "Idempotency-Key": str(uuid.uuid4())},
                                json={"name": f"端到端测试工会{county}", "credit_code": credit_code(county, rng),
                                      "region_code": county, "industry_section": "C", "kind": "enterprise",
                                      "founded_on": "2021-03-01"})
            assert r.status_code == 201, r.text
            branch_ids.append((r.json()["id"], county))
            api_branches[REGIONS[county].parent] += 1
        for i in range(5):
            branch_id, county = branch_ids[i % 2]
            r = await http.post(f"{api}/members", headers={**token, "Idempotency-Key": str(uuid.uuid4())},
                                json={"branch_id": branch_id, "name": f"测试{i}", "id_number": id_number(county, rng),
                                      "employment_form": "courier", "joined_on": "2021-05-01"})
            assert r.status_code == 201, r.text
            api_members[REGIONS[county].parent] += 1
        # an upstream HR system: one hire (a join through the intake), its redelivery, one refused
        intake = f"http://127.0.0.1:{i_env['CHANGAI_HTTP_PORT']}/v1"
        client_id = f"e2e-hr-{uuid.uuid4().hex[:8]}"
        source = f"urn:changai:e2e:hr:{client_id}"
        admin = {"Authorization": "Bearer " + mint_token("e2e", ["intake:admin"], "640000")}
        r = await http.post(f"{intake}/sources", headers=admin, json={
            "source": source, "name": "端到端人事系统", "region_code": "640104", "client_id": client_id,
            "event_types": ["enterprise.hr.employee.hired.v1"]})
        assert r.status_code == 201, r.text
        emitter = {"Authorization": "Bearer " + mint_token(client_id, ["intake:emit"], "640104"),
                   "content-type": "application/cloudevents-batch+json"}
        branch_id, county = branch_ids[0]
        hire = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source,
                "type": "enterprise.hr.employee.hired.v1", "datacontenttype": "application/json",
                "data": {"employee_ref": "E1", "name": "马春燕", "id_number": id_number(county, rng),
                         "employer_credit_code": credit_code(county, rng), "branch_id": branch_id,
                         "hired_on": "2021-05-01", "employment_form": "courier"}}  # the branch id names the branch
        refused = {**hire, "id": str(uuid.uuid4()), "data": {**hire["data"], "id_number": "640104199003071231"}}
        r = await http.post(f"{intake}/events", headers=emitter, content=json.dumps([hire, hire, refused]))
        assert r.status_code == 207 and [x["outcome"] for x in r.json()["results"]] == [
            "accepted", "duplicate", "rejected"], r.text
        api_members[REGIONS[county].parent] += 1

    # -- part 2: the other services' events, published as their outboxes would, and one poison record
    events = scenario(seed=rng.randrange(10**9))
    await produce(
        stack.bootstrap,
        encode_all(events) + encode_all(reform_ledger()) + [("notifier.events", b"e2e-poison", b"\x00 not json", [])],
    )
    members, branches, person_times = Counter(api_members), Counter(api_branches), Counter()
    for e in events:
        if isinstance(e, me.MemberJoined):
            members[e.city_code] += 1
        elif isinstance(e, me.MemberTransferred):
            members[e.from_city_code] -= 1
            members[e.to_city_code] += 1
        elif isinstance(e, (me.MemberLeft, me.MemberLapsed)):
            members[e.city_code] -= 1
        elif isinstance(e, me.BranchEstablished):
            branches[e.city_code] += 1
        elif isinstance(e, me.BranchUpdated):
            pass  # counted below from the final state
        elif isinstance(e, te.SessionCompleted) and e.completed_on.year == 2021:
            person_times[e.city_code] += e.person_times
    final_city: dict = {}
    for e in events:
        if isinstance(e, (me.BranchEstablished, me.BranchUpdated)):
            final_city[e.branch_id] = e.city_code
        elif isinstance(e, (me.BranchMerged, me.BranchDissolved)):
            final_city.pop(e.branch_id)
    branches = Counter(api_branches) + Counter(final_city.values())

    def plus(before: Counter, delta: Counter) -> Counter:
        return Counter({k: v for k, v in (before + Counter()).items()} | {
            k: before.get(k, 0) + delta.get(k, 0) for k in delta})

    # -- the key figures moved by exactly what was sent
    await settle(prom, lambda: by_city(prom, "changai_union_members"), plus(members_before, members))
    await settle(prom, lambda: by_city(prom, "changai_union_branches"), plus(branches_before, branches))
    await settle(prom, lambda: by_city(prom, "changai_training_person_times_total", year="2021"),
                 plus(person_times_before, person_times))
    await prom.wait_for(f'changai_dlq_records_total{{job="{JOB}",topic="notifier.events"}}', timeout=60)
    await prom.wait_for(f'changai_outbox_published_total{{job="{MEMBERSHIP_JOB}"}} > 0', timeout=60)
    await prom.wait_for(f'changai_intake_applied_total{{job="{INTAKE_JOB}"}} > 0', timeout=90)

    # -- every panel of both dashboards has data (polled: rate() over 1m needs two scrapes of every series,
    # which a few more scrape intervals give; 60 s bounds it)
    async def panels_without_data() -> list[str]:
        empty = []
        for name, build in dashboards.DASHBOARDS.items():
            for title, expr in dashboards.queries(build()):
                if dashboards.kubernetes_only(expr):
                    continue  # Strimzi's exporters, absent here: tests/deploy/test_deploy_platform.py checks their names
                if not await prom.query(expand(expr)):
                    empty.append(f"{name}: {title}: {expr}")
        return empty

    deadline = time.monotonic() + 60
    while (empty := await panels_without_data()) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert re.match(r"^\d", (await prom.query(f'sum(changai_funds_amount_yuan{{job="{JOB}"}})'))[0]["value"][1])
