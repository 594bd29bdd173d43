"""Branches and regions over HTTP, on the real PostgreSQL and Kafka."""
import uuid

import pytest

from tests.integration.membership.membership_support import KafkaTail, auth, credit_code, outbox_events

pytestmark = pytest.mark.integration


async def test_regions_reference_data(membership):
    c = membership.client
    body = (await c.get("/v1/regions")).json()
    assert len(body["items"]) == 1 + 5 + 22
    counties = (await c.get("/v1/regions", params={"level": "county", "parent": "640100"})).json()["items"]
    assert [r["code"] for r in counties] == ["640104", "640105", "640106", "640121", "640122", "640181"]
    one = (await c.get("/v1/regions/640500")).json()
    assert one["name"] == "中卫市" and len(one["children"]) == 3
    assert (await c.get("/v1/regions/640199")).status_code == 404


async def test_establish_refusals(membership):
    c = membership.client
    good = {"name": "平罗县新就业形态工会", "credit_code": credit_code("640221"), "region_code": "640221",
            "industry_section": "G", "kind": "new_form", "founded_on": "2021-05-01"}
    r = await c.post("/v1/branches", json=good)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    r = await c.post("/v1/branches", json=good, headers=auth(["membership:read"]))
    assert r.status_code == 403 and r.json()["type"].endswith("insufficient-scope")
    r = await c.post("/v1/branches", json=good, headers=auth(region="640100"))  # Yinchuan may not act in Shizuishan
    assert r.status_code == 403 and r.json()["type"].endswith("out-of-scope")
    bad = {**good, "credit_code": good["credit_code"][:-1] + ("0" if good["credit_code"][-1] != "0" else "1")}
    r = await c.post("/v1/branches", json=bad, headers=auth())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "credit_code"
    r = await c.post("/v1/branches", json={**good, "region_code": "650102"}, headers=auth())
    assert r.status_code == 422
    r = await c.post("/v1/branches", json={**good, "parent_id": str(uuid.uuid4())}, headers=auth())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "parent_id"
    assert (await c.post("/v1/branches", json=good, headers=auth(region="640200"))).status_code == 201
    r = await c.post("/v1/branches", json={**good, "name": "另一个名称"}, headers=auth())
    assert r.status_code == 409 and r.json()["branch_id"]


async def test_get_list_filters_and_pagination(membership):
    made = [await membership.branch("640502", industry_section="D", kind="joint", founded_on=f"2021-0{m}-01")
            for m in range(1, 6)]
    other = await membership.branch("640104", industry_section="D")
    c = membership.client
    r = await c.get(f"/v1/branches/{made[0]['id']}", headers=auth(region="640500"))
    assert r.status_code == 200 and r.json()["member_count"] == 0 and r.json()["city_code"] == "640500"
    assert (await c.get(f"/v1/branches/{made[0]['id']}", headers=auth(region="640100"))).status_code == 404
    seen, cursor = [], None
    while True:
        params = {"region": "640500", "industry_section": "D", "kind": "joint", "limit": 2,
                  "founded_from": "2021-02-01", **({"cursor": cursor} if cursor else {})}
        page = (await c.get("/v1/branches", params=params, headers=auth())).json()
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [b["id"] for b in made[1:]]
    everything = (await c.get("/v1/branches", params={"limit": 200}, headers=auth(region="640500"))).json()["items"]
    assert other["id"] not in {b["id"] for b in everything}, "a Zhongwei caller sees no Yinchuan branch"
    r = await c.get("/v1/branches", params={"region": "640100"}, headers=auth(region="640500"))
    assert r.status_code == 403
    assert (await c.get("/v1/branches", params={"cursor": "!!"}, headers=auth())).status_code == 400


async def test_update_emits_changed_fields(membership):
    b = await membership.branch("640122")
    parent = await membership.branch("640122")
    c = membership.client
    r = await c.patch(f"/v1/branches/{b['id']}", json={"name": "金凤区快递行业联合工会", "kind": "joint",
                                                     "parent_id": parent["id"]}, headers=auth())
    assert r.status_code == 200 and r.json()["kind"] == "joint" and r.json()["parent_id"] == parent["id"]
    r = await c.patch(f"/v1/branches/{parent['id']}", json={"parent_id": b["id"]}, headers=auth())
    assert r.status_code == 422, "a cycle of parents is refused"
    r = await c.patch(f"/v1/branches/{b['id']}", json={"region_code": "640202"}, headers=auth(region="640100"))
    assert r.status_code == 403
    r = await c.patch(f"/v1/branches/{b['id']}", json={"credit_code": credit_code()}, headers=auth())
    assert r.status_code == 422
    updates = [e for e in await outbox_events(membership.dsn, "changai.membership.branch.updated.v1")
               if e.subject == b["id"]]
    assert [sorted(e.data["changed"]) for e in updates] == [["kind", "name", "parent_id"]]


async def test_merge_moves_members_and_emits_their_transfers(membership, stack):
    source = await membership.branch("640302")
    into = await membership.branch("640381")
    members = [await membership.member(source["id"]) for _ in range(3)]
    left = await membership.member(source["id"])
    c = membership.client
    assert (await c.post(f"/v1/members/{left['id']}:leave", json={}, headers=auth())).status_code == 200
    station = (await c.post("/v1/stations", json={"name": "利通区户外劳动者驿站", "branch_id": source["id"],
                                                  "region_code": "640302", "services": ["饮水", "休息"]},
                            headers=auth())).json()
    async with KafkaTail(stack.kafka.bootstrap) as tail:
        r = await c.post(f"/v1/branches/{source['id']}:merge", json={"into_branch_id": into["id"]}, headers=auth())
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "merged" and r.json()["members_moved"] == 3
        ids = {m["id"] for m in members} | {source["id"], station["id"]}
        kinds = {"changai.membership.member.transferred.v1", "changai.membership.branch.merged.v1",
                 "changai.membership.station.transferred.v1"}  # the joins before may still be on their way too
        events = await tail.read(lambda es: sum(k in ids and e.type in kinds for k, e in es) >= 5)
    mine = [e for k, e in events if k in ids]
    transfers = [e for e in mine if e.type == "changai.membership.member.transferred.v1"]
    assert sorted(e.subject for e in transfers) == sorted(m["id"] for m in members)
    assert all(e.data["reason"] == "merge" and e.data["to_branch_id"] == into["id"]
               and e.data["from_region_code"] == "640302" and e.data["to_region_code"] == "640381"
               and e.data["to_city_code"] == "640300" for e in transfers)
    [merged] = [e for e in mine if e.type == "changai.membership.branch.merged.v1"]
    assert merged.data["members_moved"] == 3 and merged.data["into_branch_id"] == into["id"]
    [moved_station] = [e for e in mine if e.type == "changai.membership.station.transferred.v1"]
    assert moved_station.data["to_branch_id"] == into["id"]
    for m in members:
        assert (await c.get(f"/v1/members/{m['id']}", headers=auth())).json()["branch_id"] == into["id"]
        history = (await c.get(f"/v1/members/{m['id']}/transfers", headers=auth())).json()["items"]
        assert [(t["from_branch_id"], t["to_branch_id"], t["reason"]) for t in history] == [
            (source["id"], into["id"], "merge")]
    assert (await c.get(f"/v1/members/{left['id']}", headers=auth())).json()["branch_id"] == source["id"]
    assert (await c.get(f"/v1/branches/{into['id']}", headers=auth())).json()["member_count"] == 3
    # A merged branch takes no more members and cannot be merged again.
    assert (await membership.join(source["id"])).status_code == 409
    r = await c.post(f"/v1/branches/{source['id']}:merge", json={"into_branch_id": into["id"]}, headers=auth())
    assert r.status_code == 409
    r = await c.post(f"/v1/branches/{into['id']}:merge", json={"into_branch_id": into["id"]}, headers=auth())
    assert r.status_code == 409
    r = await c.post(f"/v1/branches/{into['id']}:merge", json={"into_branch_id": str(uuid.uuid4())}, headers=auth())
    assert r.status_code == 422


async def test_dissolve_only_when_empty_or_with_a_target(membership):
    empty = await membership.branch("640422")
    busy = await membership.branch("640422")
    target = await membership.branch("640423")
    member = await membership.member(busy["id"])
    c = membership.client
    r = await c.post(f"/v1/branches/{busy['id']}:dissolve", json={}, headers=auth())
    assert r.status_code == 409 and r.json()["members"] == 1
    r = await c.post(f"/v1/branches/{empty['id']}:dissolve", json={}, headers=auth(region="640100"))
    assert r.status_code == 404
    r = await c.post(f"/v1/branches/{empty['id']}:dissolve", json={}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "dissolved"
    r = await c.post(f"/v1/branches/{busy['id']}:dissolve", json={"transfer_to": target["id"]},
                     headers={**auth(), "Idempotency-Key": "dissolve-1"})
    assert r.status_code == 200 and r.json()["members_moved"] == 1 and r.json()["transferred_to"] == target["id"]
    again = await c.post(f"/v1/branches/{busy['id']}:dissolve", json={"transfer_to": target["id"]},
                         headers={**auth(), "Idempotency-Key": "dissolve-1"})
    assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
    assert (await c.get(f"/v1/members/{member['id']}", headers=auth())).json()["branch_id"] == target["id"]
    dissolved = [e for e in await outbox_events(membership.dsn, "changai.membership.branch.dissolved.v1")
                 if e.subject in (empty["id"], busy["id"])]
    assert {e.subject: e.data["members_moved"] for e in dissolved} == {empty["id"]: 0, busy["id"]: 1}


async def test_branches_are_never_deleted(membership):
    import asyncpg

    b = await membership.branch("640202")
    conn = await asyncpg.connect(membership.dsn)
    try:
        with pytest.raises(asyncpg.RaiseError, match="never deleted"):
            await conn.execute("DELETE FROM branches WHERE id = $1", uuid.UUID(b["id"]))
    finally:
        await conn.close()
