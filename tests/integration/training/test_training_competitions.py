"""Competitions with named and reported participants, studios and training bases, and the
person-times summary, on the real PostgreSQL and Kafka."""
import uuid

import pytest

from shared.auth import mint_token
from training_support import key, of, programme, seed_members, session, tail

pytestmark = pytest.mark.integration


def kind(resp) -> str:
    return resp.json()["type"].rsplit("/", 1)[-1]


async def all_pages(client, path: str, *, limit: int) -> list[dict]:
    """Every page of a list, following next_cursor to the end."""
    pages, cursor = [], None
    while True:
        resp = await client.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages


async def test_competition_with_named_and_reported_participants(stack, training):
    app, client, _ = training
    branch_a, m = await seed_members(stack, app, 5, region="640104")
    branch_b, _ = await seed_members(stack, app, 0, region="640302")

    wrong_tier = await client.post("/v1/competitions", headers=key(), json={
        "name": "银川市葡萄酒技能大赛", "kind": "skills", "tier": "city", "industry": "wine", "region_code": "640104",
        "starts_on": "2021-06-01", "ends_on": "2021-06-15"})
    assert (wrong_tier.status_code, kind(wrong_tier)) == (422, "validation-error")
    assert "city" in wrong_tier.json()["detail"]

    async with tail(stack.bootstrap) as t:
        resp = await client.post("/v1/competitions", headers=key(), json={
            "name": "宁夏葡萄酒产业职业技能大赛", "kind": "skills", "tier": "region", "industry": "葡萄酒",
            "region_code": "640000", "starts_on": "2021-06-01", "ends_on": "2021-06-15"})
        assert resp.status_code == 201, resp.text
        c = resp.json()
        cid = c["id"]
        assert (c["industry"], c["key_industry"], c["industry_name"], c["status"]) == ("wine", True, "葡萄酒", "announced")

        named = await client.post(f"/v1/competitions/{cid}/participants", headers=key(),
                                  json={"member_ids": [str(x) for x in m[:3]]})
        assert named.status_code == 200 and named.json()["named_added"] == 3, named.text
        reported = await client.post(f"/v1/competitions/{cid}/participants", headers=key(),
                                     json={"branch_id": str(branch_b.branch_id), "headcount": 120})
        assert reported.json()["competition"]["participants"] == {"named": 3, "reported": 120, "total": 123}
        mixed = await client.post(f"/v1/competitions/{cid}/participants", headers=key(), json={
            "member_ids": [str(m[2]), str(m[3])], "branch_id": str(branch_a.branch_id), "headcount": 40})
        assert (mixed.json()["named_added"], mixed.json()["reported_added"], mixed.json()["already_registered"]) == \
            (1, 40, [str(m[2])])

        stranger = await client.post(f"/v1/competitions/{cid}/participants", headers=key(),
                                     json={"member_ids": [str(m[4]), str(uuid.uuid4())]})
        assert (stranger.status_code, kind(stranger)) == (422, "not-a-member")
        no_branch = await client.post(f"/v1/competitions/{cid}/participants", headers=key(),
                                      json={"branch_id": str(uuid.uuid4()), "headcount": 5})
        assert (no_branch.status_code, kind(no_branch)) == (422, "unknown-branch")
        half = await client.post(f"/v1/competitions/{cid}/participants", headers=key(), json={"headcount": 5})
        assert (half.status_code, kind(half)) == (422, "validation-error")

        # Both lists page like every list: limit, an opaque cursor, {"items", "next_cursor"}.
        named_pages = await all_pages(client, f"/v1/competitions/{cid}/participants", limit=3)
        assert [len(p["items"]) for p in named_pages] == [3, 1]
        listed = [p for page in named_pages for p in page["items"]]
        assert [p["member_id"] for p in listed] == sorted(str(x) for x in m[:4])  # by member id, each once
        assert {p["branch_id"] for p in listed} == {str(branch_a.branch_id)}
        headcount_pages = await all_pages(client, f"/v1/competitions/{cid}/headcounts", limit=1)
        assert [len(p["items"]) for p in headcount_pages] == [1, 1]
        reported_by = {p["branch_id"]: (p["headcount"], p["reports"]) for page in headcount_pages for p in page["items"]}
        assert reported_by == {str(branch_a.branch_id): (40, 1), str(branch_b.branch_id): (120, 1)}
        assert (await client.get(f"/v1/competitions/{cid}")).json()["participants"] == {
            "named": 4, "reported": 160, "total": 164}
        for path in ("participants", "headcounts"):
            bad = await client.get(f"/v1/competitions/{cid}/{path}", params={"cursor": "not-a-cursor"})
            assert (bad.status_code, kind(bad)) == (400, "bad-cursor"), path
        missing = await client.get(f"/v1/competitions/{uuid.uuid4()}/headcounts")
        assert (missing.status_code, kind(missing)) == (404, "not-found")

        early = await client.post(f"/v1/competitions/{cid}/results", headers=key(), json={
            "winners": [{"name": "张三", "rank": 1, "award": "一等奖"}], "published_on": "2021-06-20"})
        assert (early.status_code, kind(early)) == (409, "invalid-transition")
        held = await client.post(f"/v1/competitions/{cid}/held", headers=key(), json={"held_on": "2021-06-15"})
        assert held.status_code == 200 and held.json()["status"] == "held"
        late = await client.post(f"/v1/competitions/{cid}/participants", headers=key(), json={"member_ids": [str(m[4])]})
        assert (late.status_code, kind(late)) == (409, "invalid-transition")

        outsider = await client.post(f"/v1/competitions/{cid}/results", headers=key(), json={
            "winners": [{"member_id": str(m[4]), "name": "李四", "rank": 1, "award": "一等奖"}],
            "published_on": "2021-06-20"})
        assert (outsider.status_code, kind(outsider)) == (422, "not-a-participant")
        results = await client.post(f"/v1/competitions/{cid}/results", headers=key(), json={"published_on": "2021-06-20",
            "winners": [{"member_id": str(m[3]), "name": "马建国", "rank": 2, "award": "二等奖"},
                        {"member_id": str(m[0]), "name": "杨春燕", "rank": 1, "award": "一等奖"},
                        {"name": "企业选手（报送）", "rank": 3, "award": "三等奖"}]})
        assert results.status_code == 200 and results.json()["status"] == "results_published", results.text
        again = await client.post(f"/v1/competitions/{cid}/held", headers=key(), json={"held_on": "2021-06-15"})
        assert (again.status_code, kind(again)) == (409, "invalid-transition")

        events = await t.until(lambda es: of(es, "competition.results_published.v1", competition_id=cid))

    mine = [e for e in events if e.subject == cid]
    assert [e.type.split(".")[-2] for e in mine] == ["announced", "participants_registered", "participants_registered",
                                                     "participants_registered", "held", "results_published"]
    announced, first, second, third, held_e, published = (e.data for e in mine)
    assert (announced["kind"], announced["tier"], announced["industry"], announced["region_code"],
            announced["city_code"]) == ("skills", "region", "wine", "640000", None)
    assert (first["member_ids"], first["branch_id"], first["headcount"]) == ([str(x) for x in m[:3]], None, 3)
    assert (second["member_ids"], second["branch_id"], second["headcount"]) == ([], str(branch_b.branch_id), 120)
    assert (third["member_ids"], third["branch_id"], third["headcount"]) == ([str(m[3])], str(branch_a.branch_id), 41)
    assert (held_e["participants"], held_e["held_on"]) == (164, "2021-06-15")
    assert published["winners"] == [
        {"member_id": str(m[0]), "name": "杨春燕", "rank": 1, "award": "一等奖"},
        {"member_id": str(m[3]), "name": "马建国", "rank": 2, "award": "二等奖"},
        {"member_id": None, "name": "企业选手（报送）", "rank": 3, "award": "三等奖"}]

    labour = await client.post("/v1/competitions", headers=key(), json={
        "name": "5G网络建设劳动竞赛", "kind": "labour", "tier": "enterprise", "industry": "5G网络建设",
        "region_code": "640106", "starts_on": "2021-03-01", "ends_on": "2021-10-31"})
    assert (labour.json()["key_industry"], labour.json()["industry"]) == (False, "5G网络建设")
    found = (await client.get("/v1/competitions", params={"kind": "skills", "industry": "wine", "year": 2021})).json()
    assert [x["id"] for x in found["items"]] == [cid]
    by_city = (await client.get("/v1/competitions", params={"region_code": "640100"})).json()["items"]
    assert [x["id"] for x in by_city] == [labour.json()["id"]]


async def test_studios_recognised_evaluated_revoked_and_paginated(stack, training):
    app, client, _ = training
    _, m = await seed_members(stack, app, 1, region="640106")
    body = {"kind": "innovation_studio", "name": "杨春燕劳模创新工作室", "host_enterprise": "宁夏电子信息产业有限公司",
            "lead_worker": "杨春燕", "lead_member_id": str(m[0]), "level": "region", "industry": "电子信息",
            "region_code": "640106", "recognised_on": "2021-05-01"}
    unknown = await client.post("/v1/studios", headers=key(), json={**body, "lead_member_id": str(uuid.uuid4())})
    assert (unknown.status_code, kind(unknown)) == (422, "not-a-member")
    shizuishan = {"Authorization": "Bearer " + mint_token("szs", ["training:write", "training:read"], "640200")}
    out = await client.post("/v1/studios", json=body, headers={**shizuishan, **key()})
    assert (out.status_code, kind(out)) == (403, "out-of-scope")

    async with tail(stack.bootstrap) as t:
        studio = await client.post("/v1/studios", headers=key(), json=body)
        assert studio.status_code == 201, studio.text
        sid = studio.json()["id"]
        assert (studio.json()["industry"], studio.json()["key_industry"]) == ("electronic_information", True)
        too_early = await client.post(f"/v1/studios/{sid}/evaluations", headers=key(),
                                      json={"rating": "good", "evaluated_on": "2021-04-01"})
        assert (too_early.status_code, kind(too_early)) == (422, "validation-error")
        ev = await client.post(f"/v1/studios/{sid}/evaluations", headers=key(),
                               json={"rating": "excellent", "evaluated_on": "2021-08-01", "notes": "年度考核"})
        assert ev.json()["last_rating"] == "excellent"
        revoked = await client.post(f"/v1/studios/{sid}/revocation", headers=key(),
                                    json={"reason": "领衔人调离", "revoked_on": "2021-09-01"})
        assert revoked.json()["status"] == "revoked"
        for path, payload in (("evaluations", {"rating": "good", "evaluated_on": "2021-09-02"}),
                              ("revocation", {"reason": "again", "revoked_on": "2021-09-02"})):
            resp = await client.post(f"/v1/studios/{sid}/{path}", headers=key(), json=payload)
            assert (resp.status_code, kind(resp)) == (409, "studio-revoked")
        events = await t.until(lambda es: of(es, "studio.revoked.v1", studio_id=sid))
    mine = [e for e in events if e.subject == sid]
    assert [e.type for e in mine] == ["changai.training.studio.recognised.v1", "changai.training.studio.evaluated.v1",
                                      "changai.training.studio.revoked.v1"]
    assert mine[0].data["lead_member_id"] == str(m[0]) and mine[0].data["city_code"] == "640100"
    assert (mine[1].data["rating"], mine[2].data["reason"]) == ("excellent", "领衔人调离")
    detail = (await client.get(f"/v1/studios/{sid}")).json()
    assert detail["evaluations"] == [{"rating": "excellent", "evaluated_on": "2021-08-01", "notes": "年度考核"}]

    for i, k in enumerate(("training_base", "skill_master_studio", "training_base")):
        r = await client.post("/v1/studios", headers=key(), json={
            **body, "kind": k, "name": f"高技能人才培训基地{i}", "lead_member_id": None, "level": "national",
            "industry": "clean_energy", "region_code": "640521"})
        assert r.status_code == 201
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/studios", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 4 and pages == 4 and seen[0] == sid
    bases = (await client.get("/v1/studios", params={"kind": "training_base", "status": "recognised"})).json()["items"]
    assert len(bases) == 2
    bad = await client.get("/v1/studios", params={"cursor": "not-a-cursor"})
    assert (bad.status_code, kind(bad)) == (400, "bad-cursor")


async def _run(client, prog, branch, region, members, results, started, completed, **over):
    s = await session(client, prog["id"], branch.branch_id, capacity=len(members) + 2, region_code=region,
                      starts_on=started, ends_on=completed, **over)
    sid = s["id"]
    assert (await client.post(f"/v1/sessions/{sid}/enrolments/bulk", headers=key(),
                              json={"member_ids": [str(x) for x in members]})).json()["enrolled"] == len(members)
    await client.post(f"/v1/sessions/{sid}/start", headers=key(), json={"started_on": started})
    await client.post(f"/v1/sessions/{sid}/attendance", headers=key(), json={"member_ids": [str(x) for x in members]})
    await client.post(f"/v1/sessions/{sid}/results", headers=key(), json={
        "results": [{"member_id": str(x), "result": r} for x, r in zip(members, results)]})
    done = await client.post(f"/v1/sessions/{sid}/complete", headers=key(), json={"completed_on": completed})
    assert done.status_code == 200, done.text
    return done.json()


async def test_person_times_summary_by_region_and_category(stack, make_database):
    from training_support import running_training
    async with running_training(stack, await make_database("training")) as (app, client):
        yinchuan, a = await seed_members(stack, app, 4, region="640104")
        wuzhong, b = await seed_members(stack, app, 3, region="640302")
        pre = await programme(client, "pre_job")
        up = await programme(client, "skills_upgrade", name="滩羊养殖技能提升", occupation="家畜饲养员")
        await _run(client, pre, yinchuan, "640104", a[:3], ["passed", "passed", "failed"], "2021-03-01", "2021-03-10")
        # a[0] trains twice: 2 person-times, 1 person
        await _run(client, up, yinchuan, "640105", [a[0], a[3]], ["passed", "passed"], "2021-05-01", "2021-05-10")
        await _run(client, up, wuzhong, "640302", b, ["passed", "failed", "passed"], "2021-07-01", "2021-07-20")
        await _run(client, pre, wuzhong, "640302", b[:1], ["passed"], "2021-09-01", "2021-09-10")  # outside the period

        summary = (await client.get("/v1/summary/person-times", params={"from": "2021-01-01", "to": "2021-08-31"})).json()
        assert summary["total"] == {"sessions": 3, "person_times": 8, "persons": 7}
        assert {(r["region_code"], r["subsidy_category"]): (r["sessions"], r["person_times"], r["persons"])
                for r in summary["rows"]} == {("640100", "pre_job"): (1, 3, 3), ("640100", "skills_upgrade"): (1, 2, 2),
                                              ("640300", "skills_upgrade"): (1, 3, 3)}
        assert {r["region_code"]: (r["person_times"], r["persons"], r["region_name"]) for r in summary["by_region"]} == {
            "640100": (5, 4, "银川市"), "640300": (3, 3, "吴忠市")}
        assert {r["subsidy_category"]: (r["person_times"], r["persons"]) for r in summary["by_category"]} == {
            "pre_job": (3, 3), "skills_upgrade": (5, 5)}

        counties = (await client.get("/v1/summary/person-times", params={
            "from": "2021-01-01", "to": "2021-12-31", "by": "county", "region_code": "640100"})).json()
        assert {r["region_code"]: r["person_times"] for r in counties["by_region"]} == {"640104": 3, "640105": 2}
        assert counties["total"] == {"sessions": 2, "person_times": 5, "persons": 4}
        wuzhong_only = {"Authorization": "Bearer " + mint_token("wz", ["training:read"], "640300")}
        scoped = (await client.get("/v1/summary/person-times", headers=wuzhong_only,
                                   params={"from": "2021-01-01", "to": "2021-12-31"})).json()
        assert scoped["total"] == {"sessions": 2, "person_times": 4, "persons": 3}
        backwards = await client.get("/v1/summary/person-times", params={"from": "2021-08-31", "to": "2021-01-01"})
        assert backwards.status_code == 422
