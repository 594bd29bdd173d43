"""Article-replay steps of the funding service (资金), appended to ``demo.STEPS``.

* ``funding``: the 2021 money of the report — 280 million yuan of central and 46 million of
  regional budget for 12 industry–education projects, 100,000 yuan for each new innovation
  studio, 9.9 million for 10 high-skill training bases — opened as funds, granted and paid in
  part on the double-entry ledger; the pre-job subsidy standard (300 → 800 yuan per person);
  the skills-upgrading account set to pay it; the demo's branches registered as payees.
* ``subsidies``: the claims the subsidy saga made for training sessions completed so far
  (rejected ones retried once the organiser is a registered payee); then the per-fund report
  and the ledger check.

Every write's Idempotency-Key comes from what it is (``demo_replay.key``): a re-run replays the first
answers, so the second run opens no second fund and pays nothing twice.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from demo_replay import key

FUNDING_URL = os.environ.get("CHANGAI_DEMO_FUNDING_URL", "http://127.0.0.1:8003")
FUNDED_YEAR = 2021

# (name, source kind, amount in yuan): the funds of docs/domain.md. The skills-upgrading account's size is
# not in the report: 20 million is illustrative, enough for 25,000 pre-job subsidies at 800 yuan.
FUNDS = (
    ("中央预算内资金·产教融合 2021", "central_budget", "280000000.00"),
    ("自治区预算内统筹投资·产教融合 2021", "regional_budget", "46000000.00"),
    ("劳模和工匠人才创新工作室专项资金 2021", "union_funds", "1500000.00"),
    ("高技能人才培训基地和技能大师工作室专项资金 2021", "special_fund", "9900000.00"),
    ("职业技能提升行动专账 2021", "skills_account", "20000000.00"),
)
INDUSTRIES = ("枸杞", "葡萄酒", "奶产业", "肉牛和滩羊", "电子信息", "新型材料", "绿色食品", "清洁能源", "文化旅游",
              "装备制造", "现代物流", "数字经济")
STATE: dict[str, Any] = {}


def _skip(demo, reason: str) -> Exception:
    """demo.py's Skip, whether demo.py runs as a script (__main__) or was imported as `demo`."""
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return getattr(demo.config, "funding_url", None) or FUNDING_URL


def _split(total_fen: int, parts: int) -> list[int]:
    """Equal shares in fen; the fen that do not divide stay in the fund."""
    return [total_fen // parts] * parts


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


async def _post(demo, headers, path: str, body: dict | None = None, method: str = "POST", *, idem: str) -> dict:
    response = await demo.client.request(method, f"{_url(demo)}{path}", json=body,
                                         headers={**headers, "Idempotency-Key": idem})
    if response.status_code >= 300:
        demo.failures += 1
        demo.row("funding", f"{method} {path}"[:46], f"{response.status_code} {response.text[:100]}")
        raise _skip(demo, f"{path} answered {response.status_code}")
    return response.json()


async def step_funding(demo) -> None:
    runs = getattr(demo.config, "runs", None)
    if runs is not None and not runs("funding"):
        raise _skip(demo, "funding is not running")
    try:
        from shared.auth import mint_token
    except ImportError as exc:
        raise _skip(demo, f"shared.auth not importable ({exc})") from None
    headers = {"Authorization": "Bearer " + mint_token("article-replay", ["funding:write", "funding:read", "funding:admin"], "640000")}
    STATE["headers"] = headers
    try:
        await demo.client.get(f"{_url(demo)}/livez")
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"funding not reachable at {_url(demo)} ({exc.__class__.__name__})") from None
    started = time.monotonic()

    funds = {}
    for name, kind, amount in FUNDS:
        fund = await _post(demo, headers, "/v1/funds", {"name": name, "source_kind": kind, "fiscal_year": FUNDED_YEAR,
                                                        "amount": amount, "opened_on": "2021-01-15"},
                           idem=key("fund", name))
        funds[kind] = fund
        demo.row("funding", f"fund {name}"[:46], f"opened {fund['total']} yuan")
    STATE["funds"] = funds

    # 12 industry–education projects, each funded from both budgets; half paid at once.
    projects = 0
    central = _split(28_000_000_000, 12)
    regional = _split(4_600_000_000, 12)
    for n, industry in enumerate(INDUSTRIES):
        for kind, share in (("central_budget", central[n]), ("regional_budget", regional[n])):
            grant = await _post(demo, headers, "/v1/grants", {
                "fund_id": funds[kind]["id"], "beneficiary_kind": "project", "beneficiary_id": f"cjrh-2021-{n + 1:02d}",
                "beneficiary_name": f"产教融合项目{n + 1:02d}（{industry}）", "purpose": "产教融合项目建设 2021",
                "amount": _yuan(share)}, idem=key("grant", kind, n))
            await _post(demo, headers, f"/v1/grants/{grant['id']}/disbursements", {"amount": _yuan(share // 2)},
                        idem=key("disbursement", grant["id"], 1))
        projects += 1
    demo.row("funding", "12 产教融合 projects × (central + regional)", f"{projects} funded, first half paid")

    # Studios: 100,000 yuan each, paid in full. Training bases: 9.9 million over 10, half paid.
    for n in range(10):
        grant = await _post(demo, headers, "/v1/grants", {
            "fund_id": funds["union_funds"]["id"], "beneficiary_kind": "studio", "beneficiary_id": f"studio-2021-{n + 1:02d}",
            "beneficiary_name": f"劳模和工匠人才创新工作室{n + 1:02d}", "purpose": "新认定创新工作室资助",
            "amount": "100000.00"}, idem=key("grant", "studio", n))
        await _post(demo, headers, f"/v1/grants/{grant['id']}/disbursements", {"amount": "100000.00"},
                    idem=key("disbursement", grant["id"], 1))
        grant = await _post(demo, headers, "/v1/grants", {
            "fund_id": funds["special_fund"]["id"], "beneficiary_kind": "training_base",
            "beneficiary_id": f"base-2021-{n + 1:02d}", "beneficiary_name": f"高技能人才培训基地{n + 1:02d}",
            "purpose": "高技能人才培训基地建设", "amount": "990000.00"}, idem=key("grant", "training_base", n))
        await _post(demo, headers, f"/v1/grants/{grant['id']}/disbursements", {"amount": "495000.00"},
                    idem=key("disbursement", grant["id"], 1))
    demo.row("funding", "10 studios × 100,000 / 10 bases × 990,000", "granted; studios paid, bases half paid")

    # An overdraft is refused by the ledger, with the balance (a refused write keeps no key: refused every run).
    response = await demo.client.post(f"{_url(demo)}/v1/grants", headers={**headers, "Idempotency-Key": key("overdraft")},
                                      json={"fund_id": funds["union_funds"]["id"], "beneficiary_kind": "studio",
                                            "beneficiary_id": "studio-2021-11", "beneficiary_name": "第11个工作室",
                                            "purpose": "新认定创新工作室资助", "amount": "600000.00"})
    if response.status_code == 409:
        demo.row("funding", "an 11th studio asking 600,000.00", f"409 refused: fund has {response.json()['balance']}")
    else:
        demo.failures += 1
        demo.row("funding", "an 11th studio asking 600,000.00", f"expected 409, got {response.status_code}")

    rules = (await demo.client.get(f"{_url(demo)}/v1/subsidy-rules", params={"category": "pre_job"},
                                   headers=headers)).json()["items"]
    demo.row("funding", "pre-job subsidy standard (岗前培训)",
             " → ".join(f"{r['rate']} from {r['effective_from']}" for r in rules))
    await _post(demo, headers, "/v1/subsidy-routes/pre_job", {"fund_id": funds["skills_account"]["id"], "year": None},
                method="PUT", idem=key("route", "pre_job"))
    demo.row("funding", "pre-job subsidies paid from", "职业技能提升行动专账 2021")
    for branch in demo.branches:  # training organisers must be registered payees to be paid
        await _post(demo, headers, f"/v1/beneficiaries/branch/{branch['id']}",
                    {"name": branch["name"], "region_code": branch.get("region_code")}, method="PUT",
                    idem=key("payee", branch["id"]))
    if demo.branches:
        demo.row("funding", f"{len(demo.branches)} demo branch(es)", "registered as payees (training organisers)")
    demo.row("funding", "set-up", f"done in {time.monotonic() - started:.1f} s")


async def step_subsidies(demo) -> None:
    headers = STATE.get("headers")
    if not headers:
        raise _skip(demo, "funding set-up did not run")
    base = _url(demo)
    organisers = {b["id"] for b in demo.branches}
    claims: list[dict] = []
    deadline = time.monotonic() + 10
    while True:  # sessions completed by the training steps reach the saga through Kafka
        listed = (await demo.client.get(f"{base}/v1/subsidy-claims", params={"limit": 200}, headers=headers)).json()
        claims = [c for c in listed["items"] if not organisers or c["organiser"]["id"] in organisers]
        if claims or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for claim in claims:
        if claim["status"] == "rejected" and claim["reason"] in ("organiser_unknown", "no_fund", "fund_exhausted"):
            retried = await demo.client.post(f"{base}/v1/subsidy-claims/{claim['id']}/retry",
                                             headers={**headers, "Idempotency-Key": key("retry", claim["id"])})
            if retried.status_code == 200:
                demo.row("subsidies", f"claim {claim['id'][:8]} was {claim['reason']}", f"retried: {retried.json()['status']}")
                claim = retried.json()
        outcome = (f"paid {claim['amount']} = {claim['persons']} × {claim['rate']}" if claim["status"] == "paid"
                   else f"rejected: {claim['reason']} ({claim['detail']})")
        demo.row("subsidies", f"session {claim['session_id'][:8]} ({claim['category']}, {claim['completed_on']})",
                 outcome)
    if not claims:
        demo.row("subsidies", "claims", "none yet (sessions complete through the training service)")
    scale = getattr(demo.config, "scale", None)
    if scale is not None and scale.sessions:  # full scale: until the saga has a claim for every session
        began, deadline = time.monotonic(), time.monotonic() + 600
        wanted = scale.sessions + len(demo.branches)
        while True:
            made = paid = 0
            cursor = None
            while True:
                params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
                listed = (await demo.client.get(f"{base}/v1/subsidy-claims", params=params, headers=headers)).json()
                made += len(listed["items"])
                paid += sum(1 for c in listed["items"] if c["status"] == "paid")
                cursor = listed["next_cursor"]
                if not cursor:
                    break
            if made >= wanted or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        if made < wanted:
            demo.failures += 1
        demo.row("subsidies", f"claims for {wanted:,} completed sessions",
                 f"{made:,} made by the saga ({paid:,} paid, the pre-job ones) {time.monotonic() - began:.1f} s "
                 "after the rosters")

    report = (await demo.client.get(f"{base}/v1/reports/funds", params={"fiscal_year": FUNDED_YEAR},
                                    headers=headers)).json()
    mine = {f["id"] for f in STATE.get("funds", {}).values()}
    for fund in report["items"]:
        if fund["id"] in mine:
            demo.row("subsidies" if fund["source_kind"] == "skills_account" else "funds", fund["name"][:23],
                     f"total {fund['total']} allocated {fund['allocated']} disbursed {fund['disbursed']} "
                     f"remaining {fund['available']}")
    check = (await demo.client.get(f"{base}/v1/ledger/check", headers=headers)).json()
    if check["ok"]:
        demo.row("funds", "ledger check", f"balanced: {check['entries']} entries, {check['lines']} lines, "
                                          f"{check['accounts']} accounts")
    else:
        demo.failures += 1
        demo.row("funds", "ledger check", f"VIOLATIONS: {check['violations'][:3]}")


STEPS = [("funding", step_funding), ("subsidies", step_subsidies)]
