"""The one region rule in training, and inputs that must be 4xx, on the real PostgreSQL and Kafka.

A token scoped to 石嘴山市 (640200) may not act for 银川市 (640100): a write naming a Yinchuan
organiser, branch or member is 403; a read, or a write addressed by the id of a Yinchuan record,
is 404 (it never tells that the record exists); lists are cut to the token's scope.
"""
import uuid

import httpx
import pytest

from shared.auth import mint_token
from training_support import key, programme, seed_members, session

pytestmark = pytest.mark.integration

SHIZUISHAN = {"Authorization": "Bearer " + mint_token("szs", ["training:write", "training:read"], "640200")}


def kind(resp: httpx.Response) -> str:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    return resp.json()["type"].rsplit("/", 1)[-1]


def szs() -> dict:
    return {**SHIZUISHAN, **key()}


async def test_a_city_cannot_act_for_another_city(stack, training):
    app, client, _ = training
    yinchuan, ym = await seed_members(stack, app, 3, region="640104")
    shizuishan, sm = await seed_members(stack, app, 1, region="640202")
    prog = await programme(client, "pre_job")

    # -- issue 12 item 4: the organiser branch's own region decides, not the body's region_code
    body = {"programme_id": prog["id"], "organiser_kind": "branch", "organiser_id": str(yinchuan.branch_id),
            "starts_on": "2021-04-01", "ends_on": "2021-04-20", "capacity": 5}
    for extra in ({"region_code": "640202"}, {}):
        hole = await client.post("/v1/sessions", json={**body, **extra}, headers=szs())
        assert (hole.status_code, kind(hole)) == (403, "out-of-scope"), hole.text
    assert await app.state.db.fetchval("SELECT count(*) FROM sessions WHERE organiser_id = $1",
                                       str(yinchuan.branch_id)) == 0
    # its own branch, held in its own county: fine; in a Yinchuan county: 403
    own = await client.post("/v1/sessions", headers=szs(), json={
        **body, "organiser_id": str(shizuishan.branch_id), "region_code": "640205"})
    assert own.status_code == 201 and own.json()["region_code"] == "640205", own.text
    away = await client.post("/v1/sessions", headers=szs(), json={
        **body, "organiser_id": str(shizuishan.branch_id), "region_code": "640104"})
    assert (away.status_code, kind(away)) == (403, "out-of-scope")

    # -- Yinchuan records made by the region-level token
    s = await session(client, prog["id"], yinchuan.branch_id, capacity=5)
    sid = s["id"]
    enrolled = await client.post(f"/v1/sessions/{sid}/enrolments/bulk", headers=key(),
                                 json={"member_ids": [str(x) for x in ym]})
    eids = [r["enrolment_id"] for r in enrolled.json()["results"]]
    await client.post(f"/v1/sessions/{sid}/start", headers=key(), json={"started_on": "2021-04-01"})
    await client.post(f"/v1/sessions/{sid}/attendance", headers=key(), json={"member_ids": [str(x) for x in ym]})
    await client.post(f"/v1/enrolments/{eids[0]}/result", headers=key(), json={"result": "passed"})
    comp = (await client.post("/v1/competitions", headers=key(), json={
        "name": "银川市枸杞加工技能大赛", "kind": "skills", "tier": "city", "industry": "goji", "region_code": "640100",
        "starts_on": "2021-06-01", "ends_on": "2021-06-15"})).json()
    studio = (await client.post("/v1/studios", headers=key(), json={
        "kind": "innovation_studio", "name": "兴庆区劳模创新工作室", "host_enterprise": "宁夏某电子有限公司",
        "lead_worker": "杨春燕", "level": "city", "industry": "电子信息", "region_code": "640104",
        "recognised_on": "2021-05-01"})).json()

    # -- writes addressed by the id of a Yinchuan record: 404, nothing changes
    writes = [
        (f"/v1/sessions/{sid}/start", {}),
        (f"/v1/sessions/{sid}/enrolments", {"member_id": str(sm[0])}),
        (f"/v1/sessions/{sid}/enrolments/bulk", {"member_ids": [str(sm[0])]}),
        (f"/v1/sessions/{sid}/attendance", {"member_ids": [str(ym[1])]}),
        (f"/v1/sessions/{sid}/results", {"results": [{"member_id": str(ym[1]), "result": "passed"}]}),
        (f"/v1/sessions/{sid}/complete", {"completed_on": "2021-04-20"}),
        (f"/v1/sessions/{sid}/cancel", {"reason": "x"}),
        (f"/v1/sessions/{sid}/certificates", {}),
        (f"/v1/enrolments/{eids[1]}/attendance", None),
        (f"/v1/enrolments/{eids[1]}/result", {"result": "failed"}),
        (f"/v1/enrolments/{eids[1]}/withdrawal", {"reason": "x"}),
        ("/v1/certificates", {"enrolment_id": eids[0]}),
        (f"/v1/competitions/{comp['id']}/participants", {"member_ids": [str(sm[0])]}),
        (f"/v1/competitions/{comp['id']}/held", {"held_on": "2021-06-15"}),
        (f"/v1/competitions/{comp['id']}/results", {"published_on": "2021-06-20",
                                                    "winners": [{"name": "张三", "rank": 1, "award": "一等奖"}]}),
        (f"/v1/studios/{studio['id']}/evaluations", {"rating": "good", "evaluated_on": "2021-08-01"}),
        (f"/v1/studios/{studio['id']}/revocation", {"reason": "领衔人调离", "revoked_on": "2021-09-01"}),
    ]
    for path, payload in writes:
        resp = await client.post(path, headers=szs(), **({"json": payload} if payload is not None else {}))
        assert (resp.status_code, kind(resp)) == (404, "not-found"), (path, resp.text)
    after = await client.get(f"/v1/sessions/{sid}")
    assert (after.json()["status"], after.json()["enrolled"]) == ("in_progress", 3)
    assert await app.state.db.fetchval("SELECT count(*) FROM certificates") == 0

    # -- reads of Yinchuan records: 404 (never 403)
    reads = [f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/enrolments", f"/v1/enrolments/{eids[0]}",
             f"/v1/competitions/{comp['id']}", f"/v1/competitions/{comp['id']}/participants",
             f"/v1/competitions/{comp['id']}/headcounts",
             f"/v1/studios/{studio['id']}", f"/v1/members/{ym[0]}", f"/v1/programmes/{uuid.uuid4()}"]
    for path in reads:
        resp = await client.get(path, headers=SHIZUISHAN)
        assert (resp.status_code, kind(resp)) == (404, "not-found"), (path, resp.text)

    # -- lists are cut to the scope; a filter naming another city is 403
    for path in ("/v1/sessions", "/v1/enrolments", "/v1/competitions", "/v1/studios", "/v1/certificates"):
        page = await client.get(path, headers=SHIZUISHAN, params={"limit": 200})
        assert page.status_code == 200, (path, page.text)
        ids = {x["id"] for x in page.json()["items"]}
        assert not ids & {sid, *eids, comp["id"], studio["id"]}, path
    assert [x["id"] for x in (await client.get("/v1/sessions", headers=SHIZUISHAN)).json()["items"]] == \
        [own.json()["id"]]
    named = await client.get("/v1/sessions", headers=SHIZUISHAN, params={"region_code": "640104"})
    assert (named.status_code, kind(named)) == (403, "out-of-scope")
    by_member = await client.get("/v1/enrolments", headers=SHIZUISHAN, params={"member_id": str(ym[0])})
    assert by_member.json()["items"] == []

    # -- a competition or studio of its own naming a Yinchuan branch or member: 403
    own_comp = (await client.post("/v1/competitions", headers=szs(), json={
        "name": "石嘴山市新材料技能大赛", "kind": "skills", "tier": "city", "industry": "new_materials",
        "region_code": "640200", "starts_on": "2021-06-01", "ends_on": "2021-06-15"})).json()
    reported = await client.post(f"/v1/competitions/{own_comp['id']}/participants", headers=szs(),
                                 json={"branch_id": str(yinchuan.branch_id), "headcount": 50})
    assert (reported.status_code, kind(reported)) == (403, "out-of-scope")
    led = await client.post("/v1/studios", headers=szs(), json={
        "kind": "skill_master_studio", "name": "大武口技能大师工作室", "host_enterprise": "石嘴山某材料有限公司",
        "lead_worker": "马建国", "lead_member_id": str(ym[0]), "level": "city", "industry": "新型材料",
        "region_code": "640202", "recognised_on": "2021-05-01"})
    assert (led.status_code, kind(led)) == (403, "out-of-scope")
    yc_comp = await client.post("/v1/competitions", headers=szs(), json={
        "name": "x大赛", "kind": "skills", "tier": "city", "industry": "goji", "region_code": "640100",
        "starts_on": "2021-06-01", "ends_on": "2021-06-15"})
    assert (yc_comp.status_code, kind(yc_comp)) == (403, "out-of-scope")


async def test_nul_bytes_and_huge_integers_are_4xx_and_write_nothing(stack, training):
    app, client, _ = training
    branch, m = await seed_members(stack, app, 1, region="640302")
    prog = await programme(client, "pre_job", name="NUL测试项目")
    base = {"name": "枸杞加工岗前培训", "occupation": "枸杞加工工", "target_level": 4, "provider_kind": "technical_school",
            "provider_name": "宁夏工业职业技术学院", "subsidy_category": "pre_job"}
    programmes_before = await app.state.db.fetchval("SELECT count(*) FROM programmes")
    for field in ("name", "occupation", "provider_name"):
        resp = await client.post("/v1/programmes", headers=key(), json={**base, field: "枸杞\u0000加工"})
        assert 400 <= resp.status_code < 500, (field, resp.status_code, resp.text)
    assert await app.state.db.fetchval("SELECT count(*) FROM programmes") == programmes_before

    enterprise = {"programme_id": prog["id"], "organiser_kind": "enterprise", "organiser_id": "91350100M000100Y43",
                  "organiser_name": "吴忠某企业\u0000", "region_code": "640302", "starts_on": "2021-05-01",
                  "ends_on": "2021-05-10", "capacity": 5}
    resp = await client.post("/v1/sessions", headers=key(), json=enterprise)
    assert 400 <= resp.status_code < 500, resp.text
    resp = await client.post("/v1/sessions", headers=key(), json={**enterprise, "organiser_name": "吴忠某企业",
                                                                   "organiser_id": "91350100M000100Y43\u0000"})
    assert 400 <= resp.status_code < 500, resp.text
    s = await session(client, prog["id"], branch.branch_id, capacity=2)
    for path, payload in ((f"/v1/sessions/{s['id']}/cancel", {"reason": "停\u0000课"}),
                          ("/v1/studios", {"kind": "innovation_studio", "name": "工作室\u0000", "host_enterprise": "某企业",
                                           "lead_worker": "某人", "level": "city", "industry": "goji",
                                           "region_code": "640302", "recognised_on": "2021-05-01"})):
        resp = await client.post(path, headers=key(), json=payload)
        assert 400 <= resp.status_code < 500, (path, resp.text)
    assert (await client.get(f"/v1/sessions/{s['id']}")).json()["status"] == "scheduled"

    for path, params in (("/v1/programmes", {"occupation": "a\u0000b"}), ("/v1/sessions", {"organiser_id": "\u0000"}),
                         ("/v1/competitions", {"industry": "goji\u0000"}), ("/v1/studios", {"industry": "\u0000"}),
                         ("/v1/programmes", {"cursor": "\u0000"}),
                         ("/v1/sessions", {"limit": "99999999999999999999"}),
                         ("/v1/competitions", {"year": "99999999999999999999"})):
        resp = await client.get(path, params=params)
        assert 400 <= resp.status_code < 500, (path, params, resp.status_code, resp.text)
    for serial in ("NX2021-%00", "%00", "NX2021-AAAA-BBBB-CCC%00"):
        resp = await client.get(f"/v1/certificates/{serial}")
        assert 400 <= resp.status_code < 500, (serial, resp.status_code, resp.text)

    comp = (await client.post("/v1/competitions", headers=key(), json={
        "name": "吴忠市滩羊技能大赛", "kind": "skills", "tier": "city", "industry": "beef_cattle_tan_sheep",
        "region_code": "640300", "starts_on": "2021-06-01", "ends_on": "2021-06-15"})).json()
    await client.post(f"/v1/competitions/{comp['id']}/held", headers=key(), json={"held_on": "2021-06-15"})
    for rank in (2**64, 99999999999999999999, 2**31):
        resp = await client.post(f"/v1/competitions/{comp['id']}/results", headers=key(), json={
            "published_on": "2021-06-20", "winners": [{"name": "张三", "rank": rank, "award": "一等奖"}]})
        assert (resp.status_code, kind(resp)) == (422, "validation-error"), (rank, resp.text)
    assert (await client.get(f"/v1/competitions/{comp['id']}")).json()["status"] == "held"
    huge = await client.post(f"/v1/competitions/{comp['id']}/results", headers=key(), json={
        "published_on": "2021-06-20", "winners": [{"name": "张\u0000三", "rank": 1, "award": "一等奖"}]})
    assert 400 <= huge.status_code < 500, huge.text
