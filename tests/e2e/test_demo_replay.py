"""The article replay (``make run``'s demo) is idempotent: run twice against the same services, the second
run creates nothing. Its writes carry Idempotency-Keys derived from what they are and bodies from seeded
data (deploy/local/demo_replay.py), so every service replays its first answers.

The demo's steps run as they do under ``make run`` against the membership, training, funding, reform and
intake APIs as processes (real Kafka and PostgreSQL), at a scale of a few records where the report's
counts are a parameter (branches, imported members, stations, the intake's hires); the steps whose sizes
are the report's own (19 competitions, 22 units and 123 tasks of the reform ledgers, 62 documents, the
funds) run whole: two replays of ~750 writes and the start of five services, ~12 s on a quiet machine,
~90 s at load 40. Prometheus scrapes the intake (the intake step reads its counters back); the notifier
and the projection are left out (their steps skip): they only read what these services write.

Two checks, either fails if a write goes back to a random key: the second run's writes are all answered
as replays (``Idempotent-Replayed``) except the member imports, which carry no key and answer "already a
member" per row; and every count the APIs give (branches, members, stations, sessions, competitions,
studios, funds and their sums, ledger entries, claims, reform units, tasks, documents, pilots, intake
sources) is equal before and after the second run. The intake step's upstream events (an HR system's
hires and leavers, a training provider's attendance) are answered ``duplicate`` every one on the second
run, and its figures (the answers' outcomes, the intake's applied counters in Prometheus) are the same.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import demo as article  # deploy/local is on sys.path (tests/conftest.py)
import httpx
import pytest
from demo_replay import Scale
from e2e_services import APIS

from shared.auth import mint_token

pytestmark = pytest.mark.e2e

SERVICES = ("membership", "training", "funding", "reform", "intake")
# The smallest numbers that still run every step: 3 branches of 2021 besides the demo's 3 (one merged away
# by the moves step), 20 imported members, 2 stations.
# 60 hires: still more than the 30 trainees and the leavers (hires 7 and 41) the intake step takes from them.
SCALE = Scale("test", orgs_2021=6, members_2021=20, stations=2, intake_hires=60)
READ = {
    "membership": ["membership:read"],
    "training": ["training:read"],
    "funding": ["funding:read"],
    "reform": ["reform:read"],
    "intake": ["intake:admin"],
}
LISTS = (  # (api, list path, params): counted whole, page by page
    ("membership", "/v1/branches", {}),
    ("membership", "/v1/members", {}),
    ("membership", "/v1/stations", {}),
    ("training", "/v1/programmes", {}),
    ("training", "/v1/sessions", {}),
    ("training", "/v1/competitions", {}),
    ("training", "/v1/studios", {}),
    ("training", "/v1/certificates", {}),
    ("funding", "/v1/funds", {}),
    ("funding", "/v1/grants", {}),
    ("funding", "/v1/subsidy-claims", {}),
    ("reform", "/v1/units", {}),
    ("reform", "/v1/tasks", {}),
    ("reform", "/v1/documents", {}),
    ("reform", "/v1/pilots", {}),
    ("intake", "/v1/sources", {}),
)


def _auth(api: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token("e2e-replay-figures", READ[api], "640000")}


async def _count(http: httpx.AsyncClient, base: str, path: str, api: str, params: dict) -> int:
    total, cursor = 0, None
    while True:
        resp = await http.get(
            f"{base}{path}",
            params={**params, "limit": 200, **({"cursor": cursor} if cursor else {})},
            headers=_auth(api),
        )
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:200]}"
        body = resp.json()
        total += len(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return total


async def figures(http: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, Any]:
    """Every count and sum the demo's writes change, as the APIs answer them."""
    out: dict[str, Any] = {}
    for api, path, params in LISTS:
        out[f"{api} {path}"] = await _count(http, urls[api], path, api, params)
    summary = await http.get(
        f"{urls['training']}/v1/summary/person-times",
        params={"from": "2021-01-01", "to": "2021-08-31"},
        headers=_auth("training"),
    )
    out["person-times"] = summary.json()["total"]
    report = await http.get(
        f"{urls['funding']}/v1/reports/funds", params={"fiscal_year": 2021}, headers=_auth("funding")
    )
    out["funds"] = sorted(
        (f["name"], f["total"], f["allocated"], f["disbursed"], f["available"]) for f in report.json()["items"]
    )
    check = (await http.get(f"{urls['funding']}/v1/ledger/check", headers=_auth("funding"))).json()
    assert check["ok"], check
    out["ledger"] = (check["entries"], check["lines"], check["accounts"])
    for year in (2020, 2021):
        r = (await http.get(f"{urls['reform']}/v1/years/{year}/report", headers=_auth("reform"))).json()
        out[f"reform {year}"] = (r["tasks"], r["completed"], len(r["pilots"]))
    return out


async def test_a_second_replay_creates_nothing_and_leaves_every_figure(stack, make_database):
    run = uuid.uuid4().hex[:8]
    common = {"CHANGAI_LOG_LEVEL": "WARNING", "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2"}
    extra = {  # consumer groups of this test's own
        "training": {
            "CHANGAI_MEMBERS_GROUP": f"training-members-{run}",
            "CHANGAI_COMMANDS_GROUP_ID": f"training-commands-{run}",
        },
        "funding": {"CHANGAI_FUNDING_SUBSIDY_GROUP": f"funding.subsidy-{run}"},
        "membership": {"CHANGAI_COMMANDS_GROUP_ID": f"membership-commands-{run}"},
        "intake": {
            "CHANGAI_INTAKE_OUTCOMES_GROUP_ID": f"intake-outcomes-{run}",
            "CHANGAI_INTAKE_CONSUME_KAFKA": "false",
        },
    }
    services = {api: APIS[api] for api in SERVICES}
    envs = {}
    for api, (service, db) in services.items():
        envs[api] = stack.service_env(service, database_url=await make_database(db), **common, **extra.get(service, {}))
    await asyncio.gather(
        *(
            stack.start_service(service, ["-m", f"services.{api}", "api"], envs[api], timeout=120)
            for api, (service, _) in services.items()
        )
    )
    urls = {api: f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}" for api, env in envs.items()}
    job = f"intake-demo-{run}"  # the intake step reads the intake's counters under this job
    stack.prometheus.set_targets({job: [f"127.0.0.1:{envs['intake']['CHANGAI_HTTP_PORT']}"]})
    config = article.DemoConfig(
        membership_url=urls["membership"],
        training_url=urls["training"],
        funding_url=urls["funding"],
        reform_url=urls["reform"],
        intake_url=urls["intake"],
        intake_job=job,
        prometheus_url=stack.prometheus.url,
        running={APIS[api][0] for api in SERVICES},
        scale=SCALE,
    )
    try:
        await _replay_twice(config, urls)
    finally:
        stack.prometheus.set_targets({job: []})


async def _replay_twice(config: article.DemoConfig, urls: dict[str, str]) -> None:
    first = await article.replay(config)
    assert first.failures == 0
    assert first.writes["fresh"] > 700, first.writes  # the demo did write: branches, members, funds, the ledgers ...
    async with httpx.AsyncClient(timeout=30) as http:
        before = await figures(http, urls)
        assert before["membership /v1/branches"] == SCALE.orgs_2021
        assert before["funding /v1/funds"] == 5

        second = await article.replay(config)
        assert second.failures == 0
        # Every keyed write was answered with the first run's answer; only the keyless member imports ran again.
        assert {w for w in second.fresh if w != "POST /v1/members:import"} == set(), second.fresh
        assert second.writes["replayed"] > 700, second.writes
        after = await figures(http, urls)
    assert after == before
    # The upstream events: all stored the first time (60 hires and a stray, 2 leavers, 30 attendance reports),
    # every one a duplicate the second; the step's figures (answers, applied counters) unchanged.
    assert first.events == {"accepted": SCALE.intake_hires + 1 + 2 + 30}, first.events
    assert second.events == {"duplicate": SCALE.intake_hires + 1 + 2 + 30}, second.events
    intake = {k: v for k, v in first.figures.items() if k.startswith("intake")}
    assert len(intake) == 6, intake  # answers of the 3 types; the applied counter of each, as Prometheus has it
    assert intake["intake applied enterprise.hr.employee.hired.v1"] == str(SCALE.intake_hires)
    assert {k: v for k, v in second.figures.items() if k.startswith("intake")} == intake
