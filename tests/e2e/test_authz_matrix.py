"""The authorisation matrix, generated from the routes (issue 12).

Every API runs as a process under uvicorn. For EVERY operation of every API's live OpenAPI
(method + path), the test reads the scope it needs and whether it reads or writes
(``x-changai-scope`` / ``x-changai-access``, recorded from ``require(scope)`` by
``shared.auth.document_scopes``), fills its path and body with real objects made in two cities
(银川市兴庆区 640104 and 石嘴山市大武口区 640202; reform's member units A and B), and calls it as each principal:

==============  =====================================================  ===========================
principal       token                                                  expected
==============  =====================================================  ===========================
none            no Authorization header                                401
no_scope        every scope of every API except the route's, 640000    403
read_only       every ``…:read`` scope, 640000                         403 on a write (and on a read that
                                                                       needs another scope: audit); else as own
other_city      the route's scope, 石嘴山市 640200                     see the rule below
own_county      the route's scope, 银川市兴庆区 640104 (the objects')  2xx (the recipe's status)
region          the route's scope, 640000 (region-wide settings only)  2xx
party           the route's scope, as the party the object belongs to: as the route states (it may
                reform: its member unit's liaison (``unit`` claim);    act on its own: 2xx)
                intake: its source's client (token ``sub``)
other_party     the same for another unit / another source             404 by id, 403 naming it
==============  =====================================================  ===========================

The one region rule (``shared.auth.Principal``), as the other-city principal meets it:

* a read, or a write addressed by the id of a record in the path, outside the scope: **404**;
* a write naming a region outside the scope (a create with ``region_code``, or whose body
  references a record there — branch, enrolment, channel): **403** (a body reference may also
  answer 404: the rule does not say which, and both refuse without acting);
* a list: **200**, cut to the scope — the other city's object must not be in it;
* region-wide settings (funds, subsidy rules and routes): a region-level token (640000), so the
  own county is refused too (**403**); reads of them (and the programme catalogue, templates,
  reference data) are open to every holder of the read scope;
* reform's coordination ledger (units, years, tasks, documents, the meeting's report) is the
  region's: commands and lists need a region-level token (403), one record by id is 404 outside it;
  a liaison officer reports for its own unit only (another unit's task: 404);
* a reform member unit's notifier channels (``test_a_liaison_acts_on_its_own_units_channels_only``):
  every channel route on a unit's channel — its liaison and the office act, another unit's liaison and
  any county or city are refused (404 by id, 403 naming the unit; lists and the log cut to the unit);
* public routes (no token: regions, key industries, certificate verification) are recipes of kind
  ``public`` and answer every principal.

An operation of the OpenAPI without a recipe here fails the test (``test_every_route_has_a_recipe``),
so a new route cannot ship without its authorisation being stated and checked. At the end the
matrix is printed as a table (routes × principals) with each cell's status.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from e2e_services import Apis, start_apis, until

from shared.auth import mint_token
from shared.clock import today_cn
from shared.identifiers import id_check_char, uscc_check_char

pytestmark = pytest.mark.e2e

OWN, OTHER_COUNTY, OTHER_CITY, REGION = "640104", "640202", "640200", "640000"
PRINCIPALS = ("none", "no_scope", "read_only", "other_city", "own_county", "region", "party", "other_party")
TODAY = today_cn()
TAG = uuid.uuid4().hex[:6]


def credit_code(region: str) -> str:
    first = "91" + region + "".join(random.choice("0123456789ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


def id_number(region: str) -> str:
    first = f"{region}19{random.randint(70, 99)}{random.randint(1, 12):02d}{random.randint(1, 28):02d}" \
            f"{random.randint(100, 999)}"
    return first + id_check_char(first)


def day(offset: int = 0) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


# --------------------------------------------------------------------------- the world: real objects
class World:
    """Objects made through the APIs with a region-level token holding every scope. ``get(kind, county)``
    memoises one per county (for reads); ``new(kind, county)`` makes a fresh one (for writes that use
    an object up)."""

    def __init__(self, apis: Apis, http: httpx.AsyncClient, all_scopes: set[str]):
        self.apis, self.http = apis, http
        self.admin = {"Authorization": "Bearer " + mint_token("matrix-admin", sorted(all_scopes), REGION)}
        self._memo: dict[tuple, Any] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}

    async def call(self, api: str, method: str, path: str, expect: int | tuple = (200, 201, 202),
                   headers: dict | None = None, **kw) -> dict:
        """A setup call with the region-level token holding every scope (``headers`` may replace it)."""
        resp = await self.http.request(method, self.apis.urls[api] + path, headers={**self.admin, **(headers or {})},
                                       **kw)
        if resp.status_code not in ((expect,) if isinstance(expect, int) else expect):
            raise AssertionError(f"setup {method} {api}{path}: {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else {}

    async def get(self, kind: str, county: str = OWN):
        key = (kind, county)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._memo:
                self._memo[key] = await self.new(kind, county)
            return self._memo[key]

    async def new(self, kind: str, county: str = OWN):
        return await getattr(self, f"_new_{kind}")(county)

    # -- membership
    async def _new_branch(self, county):
        return await self.call("membership", "POST", "/v1/branches", 201, json={
            "name": f"矩阵测试{county}工会{uuid.uuid4().hex[:6]}", "credit_code": credit_code(county),
            "region_code": county, "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"})

    async def _new_member(self, county):
        branch = await self.get("branch", county)
        number = id_number(county)
        member = await self.call("membership", "POST", "/v1/members", 201, json={
            "branch_id": branch["id"], "name": f"矩阵{uuid.uuid4().hex[:4]}", "id_number": number,
            "employment_form": "courier", "joined_on": "2021-05-01"})
        return {**member, "id_number": number}

    async def _new_station(self, county):
        branch = await self.get("branch", county)
        return await self.call("membership", "POST", "/v1/stations", 201, json={
            "name": f"矩阵驿站{uuid.uuid4().hex[:4]}", "branch_id": branch["id"], "region_code": county,
            "services": ["饮水"]})

    async def _new_import(self, county):
        branch = await self.get("branch", county)
        line = json.dumps({"name": "导入测试", "id_number": id_number(county)}, ensure_ascii=False) + "\n"
        # An import belongs to its submitter's scope: submitted here by the county itself.
        county_token = "Bearer " + mint_token("matrix-county-clerk", ["membership:write"], county)
        return await self.call("membership", "POST", f"/v1/members:import?branch_id={branch['id']}", 201,
                               content=line.encode(), headers={"content-type": "application/x-ndjson",
                                                               "Authorization": county_token})

    # -- training (its branches and members come from membership events)
    async def _trained_member(self, county):
        member = await self.new("member", county)
        await until(lambda: self._status("training", f"/v1/members/{member['id']}", 200), timeout=90)
        return member

    async def _status(self, api, path, want):
        resp = await self.http.get(self.apis.urls[api] + path, headers=self.admin)
        return resp.status_code == want

    async def _new_programme(self, county):
        return await self.call("training", "POST", "/v1/programmes", 201, json={
            "name": f"矩阵培训项目{uuid.uuid4().hex[:4]}", "occupation": "焊工", "target_level": 4,
            "provider_kind": "enterprise", "provider_name": "矩阵培训学校", "subsidy_category": "skills_upgrade"})

    async def _new_session(self, county):  # scheduled, organised by the county's branch
        branch = await self.get("branch", county)
        await self.get("trained_member", county)  # the branch is known to training by then
        programme = await self.get("programme", REGION)
        return await self.call("training", "POST", "/v1/sessions", 201, json={
            "programme_id": programme["id"], "organiser_kind": "branch", "organiser_id": branch["id"],
            "starts_on": day(-5), "ends_on": day(-1), "capacity": 30})

    async def _new_trained_member(self, county):
        return await self._trained_member(county)

    async def _new_session_enrolled(self, county):  # scheduled, one member enrolled
        session = await self.new("session", county)
        member = await self._trained_member(county)
        enrolment = await self.call("training", "POST", f"/v1/sessions/{session['id']}/enrolments", 201,
                                    json={"member_id": member["id"]})
        return {"session": session, "member": member, "enrolment": enrolment}

    async def _new_session_running(self, county):  # in progress, one member enrolled
        s = await self.new("session_enrolled", county)
        await self.call("training", "POST", f"/v1/sessions/{s['session']['id']}/start", 200, json={})
        return s

    async def _new_session_attended(self, county):  # in progress, the member's attendance recorded
        s = await self.new("session_running", county)
        await self.call("training", "POST", f"/v1/sessions/{s['session']['id']}/attendance", 200,
                        json={"member_ids": [s["member"]["id"]]})
        return s

    async def _new_session_passed(self, county):  # in progress, the member attended and passed
        s = await self.new("session_attended", county)
        sid, mid = s["session"]["id"], s["member"]["id"]
        await self.call("training", "POST", f"/v1/sessions/{sid}/results", 200,
                        json={"results": [{"member_id": mid, "result": "passed"}]})
        return s

    async def _new_session_completed(self, county):
        s = await self.new("session_passed", county)
        await self.call("training", "POST", f"/v1/sessions/{s['session']['id']}/complete", 200, json={})
        return s

    async def _new_certificate(self, county):
        s = await self.get("session_completed", county)
        return await self.call("training", "POST", "/v1/certificates", 201,
                               json={"enrolment_id": s["enrolment"]["id"]})

    async def _new_competition(self, county):
        return await self.call("training", "POST", "/v1/competitions", 201, json={
            "name": f"矩阵劳动竞赛{uuid.uuid4().hex[:4]}", "kind": "labour", "tier": "county", "industry": "焊接",
            "region_code": county, "starts_on": day(-3), "ends_on": day(-1)})

    async def _new_competition_held(self, county):
        c = await self.new("competition", county)
        member = await self.get("trained_member", county)
        await self.call("training", "POST", f"/v1/competitions/{c['id']}/participants", 200,
                        json={"member_ids": [member["id"]]})
        await self.call("training", "POST", f"/v1/competitions/{c['id']}/held", 200, json={"held_on": day(-1)})
        return c

    async def _new_studio(self, county):
        return await self.call("training", "POST", "/v1/studios", 201, json={
            "kind": "innovation_studio", "name": f"矩阵创新工作室{uuid.uuid4().hex[:4]}", "host_enterprise": "矩阵企业",
            "lead_worker": "张工", "level": "city", "industry": "焊接", "region_code": county,
            "recognised_on": "2022-01-01"})

    # -- funding
    async def _new_fund(self, county):
        return await self.call("funding", "POST", "/v1/funds", 201, json={
            "name": f"矩阵资金{uuid.uuid4().hex[:4]}", "source_kind": "special_fund", "fiscal_year": TODAY.year,
            "amount": "100000.00"})

    async def _new_beneficiary(self, county):
        branch = await self.get("branch", county)
        return await self.call("funding", "PUT", f"/v1/beneficiaries/branch/{branch['id']}", (200, 201),
                               json={"name": branch["name"], "region_code": county})

    async def _new_grant(self, county):
        fund, beneficiary = await self.get("fund", REGION), await self.get("beneficiary", county)
        return await self.call("funding", "POST", "/v1/grants", 201, json={
            "fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": beneficiary["id"],
            "beneficiary_name": beneficiary["name"], "purpose": "矩阵测试", "region_code": county, "amount": "100.00"})

    async def _new_disbursed_grant(self, county):
        grant = await self.new("grant", county)
        await self.call("funding", "POST", f"/v1/grants/{grant['id']}/disbursements", 201, json={"amount": "10.00"})
        return grant

    async def _new_claim(self, county):  # from the completed session's event (no route for it: rejected)
        s = await self.get("session_completed", county)
        sid = s["session"]["id"]

        async def claim():
            body = await self.call("funding", "GET", f"/v1/subsidy-claims?session_id={sid}", 200)
            return (body.get("claims") or body.get("items") or [None])[0]

        return await until(claim, timeout=90)

    async def _new_rule(self, county):
        year = random.randint(2200, 9000)
        return await self.call("funding", "PUT", f"/v1/subsidy-rules/pre_job/{year}-01-01", (200, 201),
                               json={"rate": "1.00"})

    # -- reform: member units are not places; "county" only names one of two units (OWN: A, OTHER_COUNTY: B)
    async def _new_unit(self, county):
        return await self.call("reform", "POST", "/v1/units", 201, json={
            "name": f"矩阵成员单位{uuid.uuid4().hex[:6]}", "kind": "government", "liaison_name": "联络员"})

    def fresh_year(self) -> int:
        self._years = getattr(self, "_years", random.sample(range(2030, 2100), 70))
        return self._years.pop()

    async def _new_year(self, county):
        a, b = await self.get("unit", OWN), await self.get("unit", OTHER_COUNTY)
        return await self.call("reform", "POST", "/v1/years", 201,
                               json={"year": self.fresh_year(), "unit_ids": [a["id"], b["id"]]})

    def task_body(self, year: int, lead: str) -> dict:
        self._numbers = getattr(self, "_numbers", iter(range(1, 10000)))
        return {"year": year, "number": next(self._numbers), "title": "矩阵改革任务", "content": "内容",
                "measures": "措施", "lead_unit_id": lead, "deadline": day(30)}

    async def _new_task(self, county):  # led by unit A
        year, a = await self.get("year", REGION), await self.get("unit", OWN)
        return await self.call("reform", "POST", "/v1/tasks", 201, json=self.task_body(year["year"], a["id"]))

    def liaison(self, unit: dict, scopes=("reform:read", "reform:report")) -> dict:
        return {"Authorization": "Bearer " + mint_token("matrix-liaison", list(scopes), REGION, unit=unit["id"])}

    async def _new_task_reported(self, county):  # completion reported by its lead unit, awaiting the office
        task, a = await self.new("task"), await self.get("unit", OWN)
        await self.call("reform", "POST", f"/v1/tasks/{task['id']}:report-completion", 200,
                        json={"evidence": "已完成"}, headers=self.liaison(a))
        return task

    async def _new_pilot(self, county):
        year = await self.get("year", REGION)
        return await self.call("reform", "POST", "/v1/pilots", 201, json={
            "year": year["year"], "kind": "county", "mode": "project", "name": f"矩阵试点{uuid.uuid4().hex[:6]}",
            "region_code": county})

    async def _new_city_plan(self, county):
        city = {OWN: "640100", OTHER_COUNTY: "640200"}[county]
        return await self.call("reform", "PUT", f"/v1/city-plans/{city}", (200, 201),
                               json={"title": "实施方案", "issued_on": "2021-06-01"})

    # -- intake: a source is registered for a region; its client (the token's sub) emits for it
    async def _new_source(self, county):
        tag = uuid.uuid4().hex[:8]
        body = {"source": f"urn:changai:matrix:{tag}", "name": f"矩阵人事系统{tag}", "region_code": county,
                "event_types": ["enterprise.hr.employee.left.v1"], "client_id": f"matrix-hr-{tag}"}
        return {**await self.call("intake", "POST", "/v1/sources", 201, json=body), **body}

    def source_party(self, source: dict) -> dict:
        return {"sub": source["client_id"], "region": source["region_code"]}

    def cloudevent(self, source: dict) -> bytes:
        return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": source["source"],
                           "type": "enterprise.hr.employee.left.v1", "time": f"{day(-1)}T08:00:00+08:00",
                           "data": {"id_number": id_number(source["region_code"]), "left_on": day(-1)}}).encode()

    async def _new_emitted(self, county):
        source = await self.get("source", county)
        value = self.cloudevent(source)
        token = party_token(self.source_party(source), "intake:emit")
        await self.call("intake", "POST", "/v1/events", (200, 202), content=value,
                        headers={"Authorization": f"Bearer {token}", "content-type": "application/cloudevents+json"})
        return {"id": json.loads(value)["id"], "source": source}

    # -- notifier
    async def _new_channel(self, county):
        return await self.call("notifier", "POST", "/v1/channels", 201, json={
            "kind": "webhook", "name": f"矩阵{uuid.uuid4().hex[:4]}", "owner": {"region_code": county},
            "config": {"url": "http://127.0.0.1:9/hooks"}})

    async def _new_paused_channel(self, county):
        channel = await self.new("channel", county)
        await self.call("notifier", "POST", f"/v1/channels/{channel['id']}/pause", 200, json={})
        return channel

    async def _new_delivery(self, county):
        channel = await self.get("channel", county)
        answer = await self.call("notifier", "POST", f"/v1/channels/{channel['id']}/test", (200, 202))
        return {"id": answer.get("delivery_id") or answer["id"], "channel_id": channel["id"]}

    async def _new_unit_channel(self, county):  # a webhook channel of reform member unit A (OWN) or B
        unit = await self.get("notifier_unit", county)
        return await self.call("notifier", "POST", "/v1/channels", 201, json={
            "kind": "webhook", "name": f"单位通道{uuid.uuid4().hex[:4]}", "owner": {"unit_id": unit["id"]},
            "config": {"url": "http://127.0.0.1:9/unit"}})

    async def _new_notifier_unit(self, county):  # a member unit, once the notifier's read model has it
        unit = await self.get("unit", county)
        body = {"kind": "webhook", "name": "探测", "owner": {"unit_id": unit["id"]},
                "config": {"url": "http://127.0.0.1:9/x"}}

        async def known():  # a refused probe writes nothing; the first accepted one is disabled at once
            resp = await self.http.post(self.apis.urls["notifier"] + "/v1/channels", json=body, headers=self.admin)
            if resp.status_code == 201:
                await self.call("notifier", "DELETE", f"/v1/channels/{resp.json()['id']}", 204)
            return resp.status_code == 201

        await until(known, timeout=90)
        return unit

    async def _new_notifier_branch(self, county):
        branch = await self.get("branch", county)
        await until(lambda: self._status("notifier", f"/v1/branches/{branch['id']}", 200), timeout=90)
        return branch


# --------------------------------------------------------------------------- the recipes
@dataclass
class Call:
    path: dict[str, str] = field(default_factory=dict)
    json: Any = None
    query: dict[str, str] | None = None
    content: bytes | None = None
    content_type: str | None = None
    hide: str | None = None    # a list: this (the own county's object) must not show to the other city
    hide_other: str | None = None  # ... and this (the other county's object) not to the own county
    party: dict | None = None        # the party the object belongs to: mint_token's sub / unit / region for it
    other_party: dict | None = None  # ... and another party of the same kind


@dataclass
class Recipe:
    kind: str  # by_id | names_region | body_ref | list | global | region_level | region_level_by_id | party | public
    make: Callable[[World], Awaitable[Call]]
    ok: int = 200  # the own county's (or, region_level, the region's) status
    expect: dict[str, set[int]] = field(default_factory=dict)  # a principal's answer, stated for this route
    fresh: bool = False  # a new call (new objects) for every principal: more than one may succeed
    check: Callable[[str, httpx.Response], str | None] | None = None  # what a 2xx body must show; a note if not


async def _c(**kw) -> Call:
    return Call(**kw)


def const(**kw):
    async def make(w: World) -> Call:
        return Call(**kw)
    return make


def new_branch_body():
    return {"name": f"矩阵新建工会{uuid.uuid4().hex[:6]}", "credit_code": credit_code(OWN), "region_code": OWN,
            "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"}


async def _list(w: World, kind: str, api_key: str = "id") -> Call:
    own, other = await w.get(kind, OWN), await w.get(kind, OTHER_COUNTY)
    return Call(hide=str(own[api_key]), hide_other=str(other[api_key]))


RECIPES: dict[str, Recipe] = {}


def recipe(key: str, kind: str, ok: int = 200, expect: dict[str, set[int]] | None = None, fresh: bool = False,
           check=None):
    def wrap(fn):
        RECIPES[key] = Recipe(kind, fn, ok, expect or {}, fresh, check)
        return fn
    return wrap


# -- membership ------------------------------------------------------------------------------
recipe("GET /v1/regions", "public")(const())
recipe("GET /v1/regions/{code}", "public")(const(path={"code": OWN}))
recipe("POST /v1/branches", "names_region", 201)(lambda w: _c(json=new_branch_body()))
recipe("GET /v1/branches", "list")(lambda w: _list(w, "branch"))


@recipe("GET /v1/branches/{branch_id}", "by_id")
async def _(w):
    return Call(path={"branch_id": (await w.get("branch"))["id"]})


@recipe("PATCH /v1/branches/{branch_id}", "by_id")
async def _(w):
    return Call(path={"branch_id": (await w.new("branch"))["id"]}, json={"name": f"改名工会{uuid.uuid4().hex[:4]}"})


@recipe("POST /v1/branches/{branch_id}:merge", "by_id")
async def _(w):
    a, b = await w.new("branch"), await w.new("branch")
    return Call(path={"branch_id": a["id"]}, json={"into_branch_id": b["id"]})


@recipe("POST /v1/branches/{branch_id}:dissolve", "by_id")
async def _(w):
    return Call(path={"branch_id": (await w.new("branch"))["id"]}, json={})


@recipe("POST /v1/members", "body_ref", 201)
async def _(w):
    return Call(json={"branch_id": (await w.get("branch"))["id"], "name": "新会员", "id_number": id_number(OWN)})


recipe("GET /v1/members", "list")(lambda w: _list(w, "member"))


@recipe("POST /v1/members:lookup", "by_id")
async def _(w):
    return Call(json={"id_number": (await w.get("member"))["id_number"]})


recipe("GET /v1/lookups", "list")(const())


@recipe("GET /v1/members:export", "list")
async def _(w):
    own, other = await w.get("member", OWN), await w.get("member", OTHER_COUNTY)
    return Call(hide=own["name"], hide_other=other["name"])


for _path in ("/v1/members/{member_id}", "/v1/members/{member_id}/transfers"):
    @recipe(f"GET {_path}", "by_id")
    async def _(w):
        return Call(path={"member_id": (await w.get("member"))["id"]})


@recipe("POST /v1/members/{member_id}:transfer", "by_id")
async def _(w):
    member, to = await w.new("member"), await w.new("branch")
    return Call(path={"member_id": member["id"]}, json={"to_branch_id": to["id"]})


for _end in ("leave", "lapse"):
    @recipe(f"POST /v1/members/{{member_id}}:{_end}", "by_id")
    async def _(w):
        return Call(path={"member_id": (await w.new("member"))["id"]}, json={})


@recipe("POST /v1/members/{member_id}:reveal", "by_id")
async def _(w):
    return Call(path={"member_id": (await w.get("member"))["id"]}, json={"reason": "授权矩阵测试：核对身份"})


@recipe("GET /v1/members/{member_id}/reveals", "by_id")
async def _(w):
    return Call(path={"member_id": (await w.get("member"))["id"]})


@recipe("POST /v1/members:import", "body_ref", 201)
async def _(w):
    branch = await w.get("branch")
    line = json.dumps({"name": "导入会员", "id_number": id_number(OWN)}, ensure_ascii=False) + "\n"
    return Call(query={"branch_id": branch["id"]}, content=line.encode(), content_type="application/x-ndjson")


recipe("GET /v1/imports", "list")(lambda w: _list(w, "import"))


@recipe("GET /v1/imports/{import_id}", "by_id")
async def _(w):
    return Call(path={"import_id": (await w.get("import"))["id"]})


@recipe("POST /v1/stations", "names_region", 201)
async def _(w):
    return Call(json={"name": "新驿站", "branch_id": (await w.get("branch"))["id"], "region_code": OWN})


recipe("GET /v1/stations", "list")(lambda w: _list(w, "station"))


@recipe("POST /v1/stations/{station_id}:close", "by_id")
async def _(w):
    return Call(path={"station_id": (await w.new("station"))["id"]}, json={})


@recipe("GET /v1/stations/{station_id}", "by_id")
async def _(w):
    return Call(path={"station_id": (await w.get("station"))["id"]})


# -- training --------------------------------------------------------------------------------
recipe("GET /v1/reference/industries", "public")(const())


@recipe("GET /v1/members/{member_id}@training", "by_id")
async def _(w):
    return Call(path={"member_id": (await w.get("trained_member"))["id"]})


PROGRAMME = {"occupation": "电工", "target_level": 4, "provider_kind": "enterprise", "provider_name": "矩阵学校",
             "subsidy_category": "pre_job"}
recipe("POST /v1/programmes", "global", 201)(lambda w: _c(json={"name": f"项目{uuid.uuid4().hex[:4]}", **PROGRAMME}))
recipe("GET /v1/programmes", "global")(const())


@recipe("GET /v1/programmes/{programme_id}", "global")
async def _(w):
    return Call(path={"programme_id": (await w.get("programme", REGION))["id"]})


@recipe("POST /v1/sessions", "body_ref", 201)
async def _(w):
    branch, programme = await w.get("branch"), await w.get("programme", REGION)
    await w.get("session")  # the branch is known to training
    return Call(json={"programme_id": programme["id"], "organiser_kind": "branch", "organiser_id": branch["id"],
                      "starts_on": day(1), "ends_on": day(3), "capacity": 10})


recipe("GET /v1/sessions", "list")(lambda w: _list(w, "session"))


def session_route(key: str, state: str, body=lambda s: {}, fresh: bool = True, ok: int = 200):
    @recipe(key, "by_id", ok)
    async def _(w):
        s = await (w.new if fresh else w.get)(state)
        session = s.get("session", s)
        return Call(path={"session_id": session["id"]}, json=body(s))


session_route("GET /v1/sessions/{session_id}", "session", fresh=False)
session_route("POST /v1/sessions/{session_id}/start", "session_enrolled")
session_route("POST /v1/sessions/{session_id}/complete", "session_passed")
session_route("POST /v1/sessions/{session_id}/cancel", "session", body=lambda s: {"reason": "矩阵测试"})
session_route("GET /v1/sessions/{session_id}/enrolments", "session_enrolled", fresh=False)
session_route("POST /v1/sessions/{session_id}/attendance", "session_running",
              body=lambda s: {"member_ids": [s["member"]["id"]]})
session_route("POST /v1/sessions/{session_id}/results", "session_attended",
              body=lambda s: {"results": [{"member_id": s["member"]["id"], "result": "passed"}]})
session_route("POST /v1/sessions/{session_id}/certificates", "session_completed")


@recipe("POST /v1/sessions/{session_id}/enrolments", "by_id", 201)
async def _(w):
    session, member = await w.new("session"), await w.get("trained_member")
    return Call(path={"session_id": session["id"]}, json={"member_id": member["id"]})


@recipe("POST /v1/sessions/{session_id}/enrolments/bulk", "by_id")
async def _(w):
    session, member = await w.new("session"), await w.get("trained_member")
    return Call(path={"session_id": session["id"]}, json={"member_ids": [member["id"]]})


@recipe("GET /v1/enrolments", "list")
async def _(w):
    own, other = await w.get("session_enrolled", OWN), await w.get("session_enrolled", OTHER_COUNTY)
    return Call(hide=own["enrolment"]["id"], hide_other=other["enrolment"]["id"])


def enrolment_route(key: str, state: str, body=None, fresh: bool = True):
    @recipe(key, "by_id")
    async def _(w):
        s = await (w.new if fresh else w.get)(state)
        return Call(path={"enrolment_id": s["enrolment"]["id"]}, json=body)


enrolment_route("GET /v1/enrolments/{enrolment_id}", "session_enrolled", fresh=False)
enrolment_route("POST /v1/enrolments/{enrolment_id}/attendance", "session_running")
enrolment_route("POST /v1/enrolments/{enrolment_id}/result", "session_attended", body={"result": "passed"})
enrolment_route("POST /v1/enrolments/{enrolment_id}/withdrawal", "session_enrolled", body={"reason": "矩阵测试"})


def roster_answer(principal: str, resp: httpx.Response) -> str | None:
    """A roster upload answers 200 with a report: another city's rows must be refused in it (403/404) and
    nothing recorded; the own county's row recorded."""
    report = resp.json()
    problems = [r["problem"] for r in report.get("refused_rows", [])] + \
               [o["problem"] for o in report.get("session_outcomes", []) if o.get("problem")]
    if principal == "other_city":
        if report["recorded"] or not report["refused"] or not {p.get("status") for p in problems} & {403, 404}:
            return f"another city's roster must be refused (403/404) and nothing recorded: {resp.text[:300]}"
    elif principal == "own_county" and report["recorded"] != 1:
        return f"the own county's row was not recorded: {resp.text[:300]}"
    return None


def roster_line(member_id: str, session_id: str | None = None) -> bytes:
    row = {"member_id": member_id, "result": "enrolled"} | ({"session_id": session_id} if session_id else {})
    return (json.dumps(row) + "\n").encode()


# A roster is a streamed upload answered with a report of every row: refused rows are in the report.
@recipe("POST /v1/rosters", "body_ref", expect={"other_city": {200}}, check=roster_answer)
async def _(w):
    session, member = await w.new("session"), await w.get("trained_member")
    return Call(content=roster_line(member["id"], session["id"]), content_type="application/x-ndjson")


@recipe("POST /v1/sessions/{session_id}/roster", "by_id", check=roster_answer)
async def _(w):
    session, member = await w.new("session"), await w.get("trained_member")
    return Call(path={"session_id": session["id"]}, content=roster_line(member["id"]),
                content_type="application/x-ndjson")


@recipe("POST /v1/certificates", "body_ref", 201)
async def _(w):
    return Call(json={"enrolment_id": (await w.new("session_completed"))["enrolment"]["id"]})


@recipe("GET /v1/certificates", "list")
async def _(w):
    own, other = await w.get("certificate", OWN), await w.get("certificate", OTHER_COUNTY)
    return Call(hide=own["serial"], hide_other=other["serial"])


@recipe("GET /v1/certificates/{serial}", "public")
async def _(w):
    return Call(path={"serial": (await w.get("certificate"))["serial"]})


@recipe("POST /v1/competitions", "names_region", 201)
async def _(w):
    return Call(json={"name": f"竞赛{uuid.uuid4().hex[:4]}", "kind": "skills", "tier": "county", "industry": "焊接",
                      "region_code": OWN, "starts_on": day(1), "ends_on": day(2)})


recipe("GET /v1/competitions", "list")(lambda w: _list(w, "competition"))


def competition_route(key: str, state: str, body=None, fresh: bool = True, ok: int = 200):
    @recipe(key, "by_id", ok)
    async def _(w):
        c = await (w.new if fresh else w.get)(state)
        member = await w.get("trained_member")
        return Call(path={"competition_id": c["id"]}, json=body(member) if callable(body) else body)


competition_route("GET /v1/competitions/{competition_id}", "competition", fresh=False)
competition_route("GET /v1/competitions/{competition_id}/participants", "competition", fresh=False)
competition_route("GET /v1/competitions/{competition_id}/headcounts", "competition", fresh=False)
competition_route("POST /v1/competitions/{competition_id}/participants", "competition",
                  body=lambda m: {"member_ids": [m["id"]]})
competition_route("POST /v1/competitions/{competition_id}/held", "competition", body={"held_on": day(-1)})
competition_route("POST /v1/competitions/{competition_id}/results", "competition_held",
                  body=lambda m: {"winners": [{"member_id": m["id"], "name": m["name"], "rank": 1, "award": "一等奖"}],
                                  "published_on": day(0)})


@recipe("POST /v1/studios", "names_region", 201)
async def _(w):
    return Call(json={"kind": "training_base", "name": f"基地{uuid.uuid4().hex[:4]}", "host_enterprise": "矩阵企业",
                      "lead_worker": "李工", "level": "city", "industry": "焊接", "region_code": OWN,
                      "recognised_on": "2022-01-01"})


recipe("GET /v1/studios", "list")(lambda w: _list(w, "studio"))


@recipe("GET /v1/studios/{studio_id}", "by_id")
async def _(w):
    return Call(path={"studio_id": (await w.get("studio"))["id"]})


@recipe("POST /v1/studios/{studio_id}/evaluations", "by_id")
async def _(w):
    return Call(path={"studio_id": (await w.new("studio"))["id"]},
                json={"rating": "good", "evaluated_on": day(-1)})


@recipe("POST /v1/studios/{studio_id}/revocation", "by_id")
async def _(w):
    return Call(path={"studio_id": (await w.new("studio"))["id"]}, json={"reason": "矩阵测试", "revoked_on": day(0)})


recipe("GET /v1/summary/person-times", "list")(const(query={"from": "2021-01-01", "to": day(0)}))

# -- funding ---------------------------------------------------------------------------------
FUND = {"source_kind": "union_funds", "fiscal_year": TODAY.year, "amount": "5000.00"}
recipe("POST /v1/funds", "region_level", 201)(lambda w: _c(json={"name": f"资金{uuid.uuid4().hex[:4]}", **FUND}))
recipe("GET /v1/funds", "global")(const())


@recipe("GET /v1/funds/{fund_id}", "global")
async def _(w):
    return Call(path={"fund_id": (await w.get("fund", REGION))["id"]})


@recipe("POST /v1/funds/{fund_id}/top-ups", "region_level")
async def _(w):
    return Call(path={"fund_id": (await w.new("fund", REGION))["id"]}, json={"amount": "1.00"})


@recipe("POST /v1/funds/{fund_id}/close", "region_level")
async def _(w):
    return Call(path={"fund_id": (await w.new("fund", REGION))["id"]}, json={})


@recipe("POST /v1/grants", "body_ref", 201)  # names region 640104 and a payee there: 403 or 404
async def _(w):
    fund, b = await w.get("fund", REGION), await w.get("beneficiary")
    return Call(json={"fund_id": fund["id"], "beneficiary_kind": "branch", "beneficiary_id": b["id"],
                      "beneficiary_name": b["name"], "purpose": "矩阵测试", "region_code": OWN, "amount": "1.00"})


recipe("GET /v1/grants", "list")(lambda w: _list(w, "grant"))


@recipe("GET /v1/grants/{grant_id}", "by_id")
async def _(w):
    return Call(path={"grant_id": (await w.get("grant"))["id"]})


@recipe("POST /v1/grants/{grant_id}/revoke", "by_id")
async def _(w):
    return Call(path={"grant_id": (await w.new("grant"))["id"]}, json={})


@recipe("POST /v1/grants/{grant_id}/disbursements", "by_id", 201)
async def _(w):
    return Call(path={"grant_id": (await w.new("grant"))["id"]}, json={"amount": "1.00"})


@recipe("GET /v1/grants/{grant_id}/disbursements", "by_id")
async def _(w):
    return Call(path={"grant_id": (await w.get("disbursed_grant"))["id"]})


@recipe("PUT /v1/beneficiaries/{kind}/{beneficiary_id}", "names_region", 201)
async def _(w):
    return Call(path={"kind": "enterprise", "beneficiary_id": credit_code(OWN)},
                json={"name": "矩阵受益企业", "region_code": OWN})


@recipe("GET /v1/beneficiaries/{kind}/{beneficiary_id}", "by_id")
async def _(w):
    b = await w.get("beneficiary")
    return Call(path={"kind": b["kind"], "beneficiary_id": b["id"]})


recipe("GET /v1/subsidy-rules", "global")(const())
recipe("PUT /v1/subsidy-rules/{category}/{effective_from}", "region_level", 201)(
    lambda w: _c(path={"category": "new_form", "effective_from": f"{random.randint(2200, 9000)}-01-01"},
                 json={"rate": "2.00"}))


@recipe("DELETE /v1/subsidy-rules/{category}/{effective_from}", "region_level")
async def _(w):
    rule = await w.new("rule", REGION)
    return Call(path={"category": rule["category"], "effective_from": rule["effective_from"]})


recipe("GET /v1/subsidy-routes", "global")(const())


@recipe("PUT /v1/subsidy-routes/{category}", "region_level")
async def _(w):
    return Call(path={"category": "new_form"}, json={"fund_id": (await w.get("fund", REGION))["id"],
                                                     "year": random.randint(2060, 2100)})


recipe("GET /v1/subsidy-claims", "list")(lambda w: _list(w, "claim"))


@recipe("GET /v1/subsidy-claims/{claim_id}", "by_id")
async def _(w):
    return Call(path={"claim_id": (await w.get("claim"))["id"]})


@recipe("POST /v1/subsidy-claims/{claim_id}/retry", "by_id")
async def _(w):
    return Call(path={"claim_id": (await w.get("claim"))["id"]})


recipe("GET /v1/reports/funds", "global")(const())
recipe("GET /v1/reports/sources", "global")(const())
recipe("GET /v1/reports/beneficiaries", "list")(lambda w: _list(w, "beneficiary"))


@recipe("GET /v1/accounts/{account_id}/journal", "by_id")
async def _(w):
    await w.get("disbursed_grant")
    return Call(path={"account_id": str((await w.get("beneficiary"))["account_id"])})


recipe("GET /v1/ledger/check", "region_level")(const())  # the whole ledger: a region-wide view

# -- notifier --------------------------------------------------------------------------------


@recipe("POST /v1/channels", "names_region", 201)
async def _(w):
    return Call(json={"kind": "webhook", "name": "矩阵新通道", "owner": {"region_code": OWN},
                      "config": {"url": "http://127.0.0.1:9/new"}})


recipe("GET /v1/channels", "list")(lambda w: _list(w, "channel"))


def channel_route(key: str, state: str = "channel", body=None, fresh: bool = True, ok: int = 200):
    @recipe(key, "by_id", ok)
    async def _(w):
        return Call(path={"channel_id": (await (w.new if fresh else w.get)(state))["id"]}, json=body)


channel_route("GET /v1/channels/{channel_id}", fresh=False)
channel_route("PATCH /v1/channels/{channel_id}", body={"name": "改名通道"})
channel_route("DELETE /v1/channels/{channel_id}", ok=204)
channel_route("POST /v1/channels/{channel_id}/rotate-secret", body={})
channel_route("POST /v1/channels/{channel_id}/pause", body={})
channel_route("POST /v1/channels/{channel_id}/resume", state="paused_channel", body={})
# A test send waits (bounded) for the worker's attempt: 200 with the outcome, or 202 while it is pending.
channel_route("POST /v1/channels/{channel_id}/test", ok=200)
recipe("GET /v1/deliveries", "list")(lambda w: _list(w, "delivery"))


@recipe("GET /v1/deliveries/{delivery_id}", "by_id")
async def _(w):
    return Call(path={"delivery_id": (await w.get("delivery"))["id"]})


@recipe("POST /v1/deliveries/{delivery_id}/resend", "by_id", 202)
async def _(w):
    return Call(path={"delivery_id": (await w.get("delivery"))["id"]})


@recipe("POST /v1/deliveries/resend", "body_ref", 202)
async def _(w):
    return Call(json={"channel_id": (await w.get("delivery"))["channel_id"], "status": "dead"})


@recipe("GET /v1/branches/{branch_id}@notifier", "by_id")
async def _(w):
    return Call(path={"branch_id": (await w.get("notifier_branch"))["id"]})


recipe("GET /v1/templates/{event_type}", "global")(
    const(path={"event_type": "changai.membership.branch.established.v1"}))

# -- reform -----------------------------------------------------------------------------------
# The coordination office's ledger is the region's: its commands need reform:admin on a region-level
# token (a county or another city: 403); its lists and reports are read with a region-level token (403),
# one record by id outside that is 404. Pilots and city plans are places: lists cut to the scope.
# Liaison officers speak for their unit (the token's ``unit`` claim): a task or unit of another unit is
# 404; a token without a unit claim cannot report (403), except the office changing a liaison.
UNIT_ROUTE = {"other_city": {403}, "own_county": {403}, "region": {403}, "party": {200}, "other_party": {404}}
recipe("POST /v1/units", "region_level", 201)(
    lambda w: _c(json={"name": f"新成员单位{uuid.uuid4().hex[:6]}", "kind": "mass_organisation"}))
recipe("GET /v1/units", "region_level")(const())


@recipe("GET /v1/units/{unit_id}", "region_level_by_id")
async def _(w):
    return Call(path={"unit_id": (await w.get("unit"))["id"]})


@recipe("PUT /v1/units/{unit_id}/liaison", "party", expect={**UNIT_ROUTE, "region": {200}})
async def _(w):
    a, b = await w.get("unit", OWN), await w.get("unit", OTHER_COUNTY)
    return Call(path={"unit_id": a["id"]}, json={"liaison_name": "新联络员"}, party={"unit": a["id"]},
                other_party={"unit": b["id"]})


@recipe("POST /v1/years", "region_level", 201)
async def _(w):
    return Call(json={"year": w.fresh_year(), "unit_ids": [(await w.get("unit"))["id"]]})


recipe("GET /v1/years", "region_level")(const())


@recipe("POST /v1/years/{year}/units", "region_level")
async def _(w):
    year, unit = await w.new("year", REGION), await w.new("unit")
    return Call(path={"year": str(year["year"])}, json={"unit_ids": [unit["id"]]})


@recipe("POST /v1/years/{year}:close", "region_level")
async def _(w):
    return Call(path={"year": str((await w.new("year", REGION))["year"])})  # no task open in it


for _path in ("/v1/years/{year}/report", "/v1/years/{year}/report.xlsx"):
    @recipe(f"GET {_path}", "region_level")
    async def _(w):
        await w.get("task")
        return Call(path={"year": str((await w.get("year", REGION))["year"])})


@recipe("POST /v1/tasks", "region_level", 201)
async def _(w):
    year, a = await w.get("year", REGION), await w.get("unit", OWN)
    return Call(json=w.task_body(year["year"], a["id"]))


recipe("GET /v1/tasks", "region_level")(const())
for _path in ("/v1/tasks/{task_id}", "/v1/tasks/{task_id}/history"):
    @recipe(f"GET {_path}", "region_level_by_id")
    async def _(w):
        return Call(path={"task_id": (await w.get("task"))["id"]})


@recipe("POST /v1/tasks/{task_id}:assign", "region_level")
async def _(w):
    task, b = await w.new("task"), await w.get("unit", OTHER_COUNTY)
    return Call(path={"task_id": task["id"]}, json={"lead_unit_id": b["id"], "reason": "工作调整"})


for _verb, _body in (("report-progress", {"percent": 50, "text": "已推进一半"}),
                     ("report-completion", {"evidence": "已完成，附文件"})):
    @recipe(f"POST /v1/tasks/{{task_id}}:{_verb}", "party", expect=UNIT_ROUTE)
    async def _(w, body=_body):
        task, a, b = await w.new("task"), await w.get("unit", OWN), await w.get("unit", OTHER_COUNTY)
        return Call(path={"task_id": task["id"]}, json=body, party={"unit": a["id"]}, other_party={"unit": b["id"]})


@recipe("POST /v1/tasks/{task_id}:verify", "region_level")
async def _(w):
    return Call(path={"task_id": (await w.new("task_reported"))["id"]})


@recipe("POST /v1/tasks/{task_id}:send-back", "region_level")
async def _(w):
    return Call(path={"task_id": (await w.new("task_reported"))["id"]}, json={"reason": "证明材料不全"})


# The office names the issuing unit; a liaison registers its own unit's documents (another unit's: 403).
@recipe("POST /v1/documents", "party", 201, fresh=True,
        expect={"other_city": {403}, "own_county": {403}, "region": {201}, "party": {201}, "other_party": {403}})
async def _(w):
    a, b = await w.get("unit", OWN), await w.get("unit", OTHER_COUNTY)
    return Call(json={"title": "矩阵政策文件", "doc_number": f"宁矩阵发〔2021〕{random.randint(1, 9999)}号",
                      "issued_on": "2021-06-01", "unit_id": a["id"]},
                party={"unit": a["id"]}, other_party={"unit": b["id"]})


recipe("GET /v1/documents", "region_level")(const())


@recipe("POST /v1/pilots", "region_level", 201)
async def _(w):
    year = await w.get("year", REGION)
    return Call(json={"year": year["year"], "kind": "county", "mode": "comprehensive",
                      "name": f"新试点{uuid.uuid4().hex[:6]}", "region_code": OWN})


recipe("GET /v1/pilots", "list")(lambda w: _list(w, "pilot"))
recipe("PUT /v1/city-plans/{city_code}", "region_level", 201)(
    const(path={"city_code": "640300"}, json={"title": "吴忠市实施方案", "issued_on": "2021-07-01"}))


@recipe("GET /v1/city-plans", "list")
async def _(w):
    await w.get("city_plan", OWN), await w.get("city_plan", OTHER_COUNTY)
    return Call(hide='"city_code":"640100"', hide_other='"city_code":"640200"')


# -- intake ------------------------------------------------------------------------------------
# The source registry is the region's (intake:admin on a region-level token; one source by id outside it:
# 404). An event is emitted by a registered source's own client for its own source URI: a client that is
# not registered is 403, another source naming this one's URI is 403 (forged source); an event's answer is
# told to its own source only (anyone else: 404).
recipe("GET /v1/sources", "region_level")(const())


@recipe("POST /v1/sources", "region_level", 201)
async def _(w):
    tag = uuid.uuid4().hex[:8]
    return Call(json={"source": f"urn:changai:matrix-new:{tag}", "name": "新人事系统", "region_code": OWN,
                      "event_types": ["enterprise.hr.employee.hired.v1"], "client_id": f"matrix-new-{tag}"})


@recipe("GET /v1/sources/{source_id}", "region_level_by_id")
async def _(w):
    return Call(path={"source_id": (await w.get("source"))["id"]})


@recipe("PATCH /v1/sources/{source_id}", "region_level")
async def _(w):
    return Call(path={"source_id": (await w.new("source"))["id"]}, json={"name": "改名的人事系统"})


@recipe("POST /v1/events", "party", 202, fresh=True,
        expect={"other_city": {403}, "own_county": {403}, "region": {403}, "party": {202}, "other_party": {403}})
async def _(w):
    own, other = await w.get("source", OWN), await w.get("source", OTHER_COUNTY)
    return Call(content=w.cloudevent(own), content_type="application/cloudevents+json",
                party=w.source_party(own), other_party=w.source_party(other))


@recipe("GET /v1/events/{event_id}", "party",
        expect={"other_city": {404}, "own_county": {404}, "region": {404}, "party": {200}, "other_party": {404}})
async def _(w):
    emitted, other = await w.get("emitted"), await w.get("source", OTHER_COUNTY)
    return Call(path={"event_id": emitted["id"]}, query={"source": emitted["source"]["source"]},
                party=w.source_party(emitted["source"]), other_party=w.source_party(other))


# Routes whose path is the same in two APIs are told apart by "@api" (only where needed).
SHARED_PATHS = {"GET /v1/members/{member_id}": {"training": "@training"},
                "GET /v1/branches/{branch_id}": {"notifier": "@notifier"}}


def recipe_key(api: str, method: str, path: str) -> str:
    key = f"{method.upper()} {path}"
    return key + SHARED_PATHS.get(key, {}).get(api, "")


# --------------------------------------------------------------------------- the rule
def expected(principal: str, access: str, kind: str, ok: int, scope: str | None = None,
             stated: dict[str, set[int]] | None = None) -> set[int] | None:
    """The statuses the rule allows; None: the principal does not apply (not run)."""
    success = {ok}
    if stated and principal in stated:
        return stated[principal]
    if principal in ("party", "other_party"):
        return None  # only where a route states them (reform's liaison officers, intake's sources)
    if kind == "public":
        return None if principal == "region" else success
    if principal == "none":
        return {401}
    if principal == "no_scope":
        return {403}
    if principal == "read_only":  # every ...:read scope at 640000: a read needing another scope (audit) is refused
        return success if access == "read" and (scope or "").endswith(":read") else {403}
    if kind == "party":  # a party's route states every principal's answer; the rest is the rule above
        raise AssertionError(f"a party route must state {principal}")
    if principal == "other_city":
        return {"by_id": {404}, "names_region": {403}, "body_ref": {403, 404}, "list": success,
                "global": success, "region_level": {403}, "region_level_by_id": {404}}[kind]
    if principal == "own_county":
        return {"region_level": {403}, "region_level_by_id": {404}}.get(kind, success)
    if principal == "region":
        return success if kind in ("region_level", "region_level_by_id") else None
    raise AssertionError(principal)


def party_token(party: dict | None, scope: str | None) -> str | None:
    party = party or {}
    return mint_token(party.get("sub", "matrix-party"), [scope or "none"], party.get("region", REGION),
                      unit=party.get("unit"))


@dataclass
class Cell:
    status: int | None
    ok: bool
    note: str = ""


@pytest.fixture(scope="module")
async def matrix_apis(stack, make_database):
    apis = await start_apis(stack, make_database)
    async with httpx.AsyncClient(timeout=60) as http:
        await apis.load_openapi(http)
        yield apis, http


def operations(apis: Apis):
    for api, spec in apis.openapi.items():
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                if method in ("get", "post", "put", "patch", "delete"):
                    yield api, method.upper(), path, op


def all_scopes(apis: Apis) -> set[str]:
    found = {op.get("x-changai-scope") for *_, op in operations(apis)} - {None}
    return found | {"funding:admin"}


async def test_every_route_has_a_recipe(matrix_apis):
    apis, _ = matrix_apis
    missing = [f"{api}: {recipe_key(api, m, p)}" for api, m, p, _ in operations(apis)
               if recipe_key(api, m, p) not in RECIPES]
    public = {k for k, r in RECIPES.items() if r.kind == "public"}
    unscoped = [f"{api}: {m} {p}" for api, m, p, op in operations(apis)
                if "x-changai-scope" not in op and recipe_key(api, m, p) not in public]
    stale = sorted(set(RECIPES) - {recipe_key(api, m, p) for api, m, p, _ in operations(apis)})
    assert not missing, "routes without a matrix recipe (state who may call them):\n  " + "\n  ".join(missing)
    assert not unscoped, ("routes with no scope in the OpenAPI that are not listed as public:\n  "
                          + "\n  ".join(unscoped))
    assert not stale, "recipes of routes no API has any more:\n  " + "\n  ".join(stale)


async def test_authorisation_matrix(matrix_apis):
    apis, http = matrix_apis
    scopes = all_scopes(apis)
    world = World(apis, http, scopes)
    reads = sorted(s for s in scopes if s.endswith(":read"))
    results: dict[str, dict[str, Cell]] = {}
    setup_failures: list[str] = []

    async def run(api: str, method: str, path: str, op: dict) -> None:
        key = recipe_key(api, method, path)
        rec = RECIPES.get(key)
        if rec is None:
            return  # reported by test_every_route_has_a_recipe
        scope, access = op.get("x-changai-scope"), op.get("x-changai-access", "write")
        call = None
        row: dict[str, Cell] = {}
        for principal in PRINCIPALS:  # the refusals first: the success call may use the object up
            want = expected(principal, access, rec.kind, rec.ok, scope, rec.expect)
            if want is None:
                continue
            if call is None or rec.fresh:
                try:
                    call = await rec.make(world)
                except Exception as exc:  # noqa: BLE001 - reported per route, the rest of the matrix still runs
                    setup_failures.append(f"{api} {key}: {exc}")
                    return
            tokens = {
                "none": None,
                "no_scope": mint_token("matrix-no-scope", sorted(scopes - {scope}), REGION),
                "read_only": mint_token("matrix-read-only", reads, REGION),
                "other_city": mint_token("matrix-other-city", [scope or "none"], OTHER_CITY),
                "own_county": mint_token("matrix-own-county", [scope or "none"], OWN),
                "region": mint_token("matrix-region", [scope or "none"], REGION),
                "party": party_token(call.party, scope),
                "other_party": party_token(call.other_party, scope),
            }
            url = apis.urls[api] + path.format(**call.path)
            headers = {"Authorization": f"Bearer {tokens[principal]}"} if tokens[principal] else {}
            if call.content_type:
                headers["content-type"] = call.content_type
            resp = await http.request(method, url, headers=headers, params=call.query,
                                      json=call.json if call.content is None else None, content=call.content)
            good, note = resp.status_code in want, ""
            if good and resp.status_code < 300 and rec.check is not None:
                note = rec.check(principal, resp) or ""
                good = not note
            if good and resp.status_code < 300:
                if principal == "other_city" and call.hide and call.hide in resp.text:
                    good, note = False, "the other city's object is listed"
                if principal == "own_county" and call.hide_other and call.hide_other in resp.text:
                    good, note = False, "another city's object is listed"
            if not good and not note:
                note = f"want {'/'.join(map(str, sorted(want)))}: {resp.text[:160]}"
            row[principal] = Cell(resp.status_code, good, note)
        results[f"{api:<10} {method:<6} {path}"] = row

    ops = list(operations(apis))
    sem = asyncio.Semaphore(4)  # a few routes at a time: objects are made through the same APIs

    async def bounded(*args):
        async with sem:
            await run(*args)

    await asyncio.gather(*(bounded(api, m, p, op) for api, m, p, op in ops))

    # -- the table
    width = max(len(k) for k in results) if results else 20
    lines = [f"{'route':<{width}}  " + "  ".join(f"{p:>10}" for p in PRINCIPALS)]
    failures = []
    for key in sorted(results):
        row = results[key]
        cells = []
        for p in PRINCIPALS:
            cell = row.get(p)
            cells.append(f"{'-':>10}" if cell is None else f"{(str(cell.status) + ('' if cell.ok else ' X')):>10}")
            if cell is not None and not cell.ok:
                failures.append(f"{key} [{p}] {cell.status}: {cell.note}")
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    checked = sum(len(r) for r in results.values())
    summary = (f"authorisation matrix: {len(ops)} routes x {len(PRINCIPALS)} principals; {checked} cells checked "
               f"(a principal that does not apply is '-'), {len(failures)} wrong, "
               f"{len(setup_failures)} routes whose objects could not be made")
    print("\n" + "\n".join(lines) + "\n" + summary)
    for f in setup_failures:
        print("setup failed:", f)
    for f in failures:
        print("WRONG:", f)
    assert not failures and not setup_failures, summary + "\n" + "\n".join(setup_failures + failures)


# --------------------------------------------------------------------------- naming another city's object
# The matrix above varies the token; these vary the body: the own county's token, on its own object or
# route, naming an object of another city (石嘴山, 640202) in the body. Every one must be refused (403, or
# 404 for a record it may not see). (Issue 12: a branch's parent in another city was
# accepted; a session organised by another city's branch was accepted.)
async def _cross_city_cases(w: World) -> list[tuple[str, str, str, dict, str]]:
    """(api, method, path, json, scope) — each names a 640202 object from a 640104 caller."""
    own_branch, far_branch = await w.new("branch", OWN), await w.get("branch", OTHER_COUNTY)
    own_member, far_member = await w.new("member", OWN), await w.get("trained_member", OTHER_COUNTY)
    far_session = await w.get("session_completed", OTHER_COUNTY)
    programme = await w.get("programme", REGION)
    own_session, own_comp = await w.new("session", OWN), await w.new("competition", OWN)
    fund, far_payee = await w.get("fund", REGION), await w.get("beneficiary", OTHER_COUNTY)
    await w.get("session", OTHER_COUNTY)  # the far branch is known to training
    return [
        ("membership", "PATCH", f"/v1/branches/{own_branch['id']}", {"parent_id": far_branch["id"]},
         "membership:write"),
        ("membership", "POST", f"/v1/branches/{own_branch['id']}:merge", {"into_branch_id": far_branch["id"]},
         "membership:write"),
        ("membership", "POST", f"/v1/members/{own_member['id']}:transfer", {"to_branch_id": far_branch["id"]},
         "membership:write"),
        ("membership", "POST", "/v1/stations", {"name": "跨市驿站", "branch_id": far_branch["id"],
                                                "region_code": OWN}, "membership:write"),
        ("training", "POST", "/v1/sessions", {"programme_id": programme["id"], "organiser_kind": "branch",
                                              "organiser_id": far_branch["id"], "region_code": OWN,
                                              "starts_on": day(1), "ends_on": day(2), "capacity": 5},
         "training:write"),
        ("training", "POST", f"/v1/sessions/{own_session['id']}/enrolments", {"member_id": far_member["id"]},
         "training:write"),
        ("training", "POST", f"/v1/competitions/{own_comp['id']}/participants",
         {"branch_id": far_branch["id"], "headcount": 3}, "training:write"),
        ("training", "POST", "/v1/certificates", {"enrolment_id": far_session["enrolment"]["id"]}, "training:write"),
        ("funding", "POST", "/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "branch",
                                           "beneficiary_id": far_payee["id"], "beneficiary_name": far_payee["name"],
                                           "purpose": "跨市拨款", "amount": "1.00"}, "funding:write"),
        ("notifier", "POST", "/v1/channels", {"kind": "webhook", "name": "跨市通道",
                                              "owner": {"branch_id": far_branch["id"]},
                                              "config": {"url": "http://127.0.0.1:9/far"}}, "notifier:write"),
    ]


async def test_the_own_county_cannot_name_another_citys_object(matrix_apis):
    apis, http = matrix_apis
    world = World(apis, http, all_scopes(apis))
    await world.get("notifier_branch", OTHER_COUNTY)  # the notifier knows the far branch
    wrong = []
    for api, method, path, body, scope in await _cross_city_cases(world):
        token = mint_token("matrix-own-county", [scope], OWN)
        resp = await http.request(method, apis.urls[api] + path, json=body,
                                  headers={"Authorization": f"Bearer {token}"})
        route = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "{id}", path)
        line = f"{api:<10} {method:<6} {route:<44} body names a 640202 object: {resp.status_code}"
        print(line)
        if resp.status_code not in (403, 404):
            wrong.append(f"{line}: {resp.text[:200]}")
    assert not wrong, "writes naming another city's object were not refused:\n" + "\n".join(wrong)


# --------------------------------------------------------------------------- a reform member unit's channels
# The notifier's channel routes on a channel owned by reform member unit A (issue 17): the one owner rule
# (shared.auth.Principal.may_act_for). Its liaison (a token with A's ``unit`` claim) and the office (a
# region-level token without a unit) act on it; B's liaison, the own county and the other city are refused:
# 404 for the channel by id, 403 for a channel naming unit A; A's channel is not in their lists or logs.
UNIT_CHANNEL_ROUTES = (  # (method, path, body, the success statuses)
    ("GET", "/v1/channels/{channel_id}", None, {200}),
    ("PATCH", "/v1/channels/{channel_id}", {"name": "改名单位通道"}, {200}),
    ("POST", "/v1/channels/{channel_id}/rotate-secret", {}, {200}),
    ("POST", "/v1/channels/{channel_id}/pause", {}, {200}),
    ("POST", "/v1/channels/{channel_id}/resume", {}, {200}),
    ("POST", "/v1/channels/{channel_id}/test", None, {200, 202}),
    ("DELETE", "/v1/channels/{channel_id}", None, {204}),
)


async def test_a_liaison_acts_on_its_own_units_channels_only(matrix_apis):
    apis, http = matrix_apis
    world = World(apis, http, all_scopes(apis))
    a, b = await world.get("notifier_unit", OWN), await world.get("notifier_unit", OTHER_COUNTY)
    scopes = ["notifier:write", "notifier:read"]
    tokens = {
        "party": mint_token("matrix-liaison-a", scopes, REGION, unit=a["id"]),
        "region": mint_token("matrix-office", scopes, REGION),
        "other_party": mint_token("matrix-liaison-b", scopes, REGION, unit=b["id"]),
        "own_county": mint_token("matrix-own-county", scopes, OWN),
        "other_city": mint_token("matrix-other-city", scopes, OTHER_CITY),
    }
    allowed = ("party", "region")
    wrong: list[str] = []

    async def call(principal: str, method: str, path: str, body=None) -> httpx.Response:
        return await http.request(method, apis.urls["notifier"] + path, json=body,
                                  headers={"Authorization": f"Bearer {tokens[principal]}"})

    def judge(principal: str, what: str, resp: httpx.Response, want: set[int]) -> None:
        line = f"{what:<52} {principal:<12} {resp.status_code}"
        print(line)
        if resp.status_code not in want:
            wrong.append(f"{line}: want {sorted(want)}: {resp.text[:160]}")

    for method, path, body, ok in UNIT_CHANNEL_ROUTES:
        for principal in tokens:  # a fresh channel each: a success may change or disable it
            channel = await world.new("unit_channel", OWN)
            if path.endswith("/resume"):
                await world.call("notifier", "POST", f"/v1/channels/{channel['id']}/pause", 200, json={})
            resp = await call(principal, method, path.format(channel_id=channel["id"]), body)
            judge(principal, f"{method} {path}", resp, ok if principal in allowed else {404})

    create = {"kind": "webhook", "name": "矩阵单位通道", "owner": {"unit_id": a["id"]},
              "config": {"url": "http://127.0.0.1:9/unit-new"}}
    for principal in tokens:
        resp = await call(principal, "POST", "/v1/channels", create)
        judge(principal, "POST /v1/channels (owner: unit A)", resp, {201} if principal in allowed else {403})

    channel = await world.get("unit_channel", OWN)
    delivery = await world.call("notifier", "POST", f"/v1/channels/{channel['id']}/test", (200, 202))
    delivery_id = delivery.get("delivery_id") or delivery["id"]
    for principal in tokens:
        listed = await call(principal, "GET", f"/v1/channels?limit=200&unit_id={a['id']}")
        judge(principal, "GET /v1/channels?unit_id=A", listed, {200})
        if (channel["id"] in listed.text) != (principal in allowed):
            wrong.append(f"GET /v1/channels {principal}: A's channel {'missing' if principal in allowed else 'listed'}")
        log = await call(principal, "GET", f"/v1/deliveries?limit=200&channel_id={channel['id']}")
        judge(principal, "GET /v1/deliveries?channel_id=A's", log, {200})
        if (delivery_id in log.text) != (principal in allowed):
            wrong.append(f"GET /v1/deliveries {principal}: A's {'missing' if principal in allowed else 'listed'}")
        one = await call(principal, "GET", f"/v1/deliveries/{delivery_id}")
        judge(principal, "GET /v1/deliveries/{id} (A's)", one, {200} if principal in allowed else {404})
    # a liaison's token reaches no region's channel
    region_channel = await world.get("channel", OWN)
    resp = await call("party", "GET", f"/v1/channels/{region_channel['id']}")
    judge("party", "GET /v1/channels/{id} (a county's)", resp, {404})
    assert not wrong, "\n".join(wrong)
