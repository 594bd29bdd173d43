"""Members over HTTP: join, concurrent joins, transfer, leave, lapse, rejoin, lookup, reveal, stations."""
import asyncio

import asyncpg
import pytest

from tests.integration.membership.membership_support import auth, id_number, outbox_events, phone, unique_id_number

pytestmark = pytest.mark.integration
JOINED = "changai.membership.member.joined.v1"


async def test_join_masks_and_emits_no_personal_data(membership):
    b = await membership.branch("640122")
    number, mobile = unique_id_number("640122", male=False), phone()
    r = await membership.join(b["id"], number, phone=mobile, employment_form="ride_hailing", occupation="网约车司机",
                              skill_level=4, joined_on="2021-06-01")
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["id_number_masked"] == "*" * 14 + number[-4:]
    assert m["phone_masked"] == mobile[:3] + "****" + mobile[-4:]
    assert number not in r.text and mobile not in r.text
    assert (m["sex"], m["home_region_code"], m["region_code"], m["city_code"]) == ("female", "640100", "640122", "640100")
    assert (m["skill_level"], m["skill_level_name"], m["status"]) == (4, "中级工", "active")
    [event] = [e for e in await outbox_events(membership.dsn, JOINED) if e.subject == m["id"]]
    assert event.data["branch_id"] == b["id"] and event.data["region_code"] == "640122"
    assert event.data["birth_year"] == int(number[6:10]) and event.data["employment_form"] == "ride_hailing"
    conn = await asyncpg.connect(membership.dsn)
    try:
        raw = await conn.fetchrow("SELECT * FROM members WHERE id = $1", __import__("uuid").UUID(m["id"]))
        values = await conn.fetch("SELECT value FROM outbox")
    finally:
        await conn.close()
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in raw.values())
    assert number.encode() not in stored and mobile.encode() not in stored, "stored encrypted, never in clear"
    assert not any(number.encode() in v["value"] or mobile.encode() in v["value"] for v in values)


async def test_join_refusals(membership):
    b = await membership.branch("640121")
    c = membership.client
    base = {"branch_id": b["id"], "name": "李四", "id_number": unique_id_number()}
    for body, field in [
        ({**base, "id_number": base["id_number"][:-1] + ("0" if base["id_number"][-1] != "0" else "1")}, "id_number"),
        ({**base, "id_number": id_number("990101")}, "id_number"),
        ({**base, "phone": "12345678901"}, "phone"),
        ({**base, "skill_level": 6}, "skill_level"),
        ({**base, "employment_form": "astronaut"}, "employment_form"),
        ({**base, "joined_on": "2030-01-01"}, "joined_on"),
        ({**base, "branch_id": "7b1c0b9e-1111-4444-8888-000000000000"}, "branch_id"),
    ]:
        r = await c.post("/v1/members", json=body, headers=auth())
        assert r.status_code == 422, (field, r.text)
        assert field in r.text and body["id_number"] not in r.text
    r = await c.post("/v1/members", json={**base, "id_number": id_number(born=__import__("datetime").date(2015, 1, 1))},
                     headers=auth())
    assert r.status_code == 422 and "at least 16" in r.text
    r = await c.post("/v1/members", json={**base, "joined_on": "2020-01-01"}, headers=auth())
    assert r.status_code == 422 and "founded" in r.text
    r = await c.post("/v1/members", json=base, headers=auth(region="640200"))
    assert r.status_code == 403
    r = await c.post("/v1/members", json=base, headers=auth(["membership:read"]))
    assert r.status_code == 403


async def test_concurrent_joins_of_one_person_make_one_member(membership):
    b1, b2 = await membership.branch("640181"), await membership.branch("640122")
    number = unique_id_number("640181")
    answers = await asyncio.gather(*(membership.join((b1, b2)[i % 2]["id"], number) for i in range(12)))
    created = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 409]
    assert len(created) == 1 and len(refused) == 11, [a.status_code for a in answers]
    member_id = created[0].json()["id"]
    assert {a.json()["member_id"] for a in refused} == {member_id}
    assert all(a.json()["type"].endswith("already-a-member") for a in refused)
    events = [e for e in await outbox_events(membership.dsn, JOINED) if e.subject == member_id]
    assert len(events) == 1


async def test_transfer_leave_lapse_rejoin(membership):
    a, z = await membership.branch("640104"), await membership.branch("640502")
    number = unique_id_number()
    m = (await membership.join(a["id"], number, joined_on="2021-04-01")).json()
    c = membership.client
    r = await c.post(f"/v1/members/{m['id']}:transfer", json={"to_branch_id": z["id"], "reason": "换工作"},
                     headers=auth(region="640100"))
    assert r.status_code == 403, "a Yinchuan caller may not move a member into Zhongwei"
    r = await c.post(f"/v1/members/{m['id']}:transfer", json={"to_branch_id": a["id"]}, headers=auth())
    assert r.status_code == 409
    r = await c.post(f"/v1/members/{m['id']}:transfer", json={"to_branch_id": z["id"], "reason": "换工作"},
                     headers=auth())
    assert r.status_code == 200 and r.json()["branch_id"] == z["id"] and r.json()["city_code"] == "640500"
    history = (await c.get(f"/v1/members/{m['id']}/transfers", headers=auth())).json()["items"]
    assert [(t["from_branch_id"], t["to_branch_id"], t["reason"]) for t in history] == [(a["id"], z["id"], "换工作")]
    assert (await c.get(f"/v1/members/{m['id']}", headers=auth(region="640100"))).status_code == 404
    r = await c.post(f"/v1/members/{m['id']}:leave", json={"on": "2021-09-01"}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "left" and r.json()["ended_on"] == "2021-09-01"
    assert (await c.post(f"/v1/members/{m['id']}:lapse", headers=auth())).status_code == 409
    assert (await c.post(f"/v1/members/{m['id']}:transfer", json={"to_branch_id": a["id"]},
                         headers=auth())).status_code == 409
    again = await membership.join(a["id"], number)
    assert again.status_code == 201 and again.json()["id"] == m["id"], "one person stays one member"
    assert again.json()["status"] == "active" and again.json()["branch_id"] == a["id"]
    r = await c.post(f"/v1/members/{m['id']}:lapse", json={}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "lapsed"
    kinds = [e.type.split(".")[3] for e in await outbox_events(membership.dsn) if e.subject == m["id"]]
    assert kinds == ["joined", "transferred", "left", "joined", "lapsed"]


async def test_list_lookup_and_idempotent_join(membership):
    b = await membership.branch("640324")
    number = unique_id_number("640324")
    c = membership.client
    headers = {**auth(), "Idempotency-Key": "join-once"}
    body = {"branch_id": b["id"], "name": "马五", "id_number": number, "employment_form": "truck_driver"}
    first = await c.post("/v1/members", json=body, headers=headers)
    repeat = await c.post("/v1/members", json=body, headers=headers)
    assert first.status_code == repeat.status_code == 201 and repeat.json() == first.json()
    assert repeat.headers.get("idempotent-replayed") == "true"
    assert (await c.post("/v1/members", json={**body, "name": "马六"}, headers=headers)).status_code == 422
    conn = await asyncpg.connect(membership.dsn)
    try:
        stored = await conn.fetch("SELECT request_hash, body::text AS body FROM idempotency_keys")
    finally:
        await conn.close()
    assert not any(number in r["body"] for r in stored)
    others = [await membership.member(b["id"], employment_form="courier") for _ in range(3)]
    page = (await c.get("/v1/members", params={"branch_id": b["id"], "employment_form": "courier", "limit": 2},
                        headers=auth())).json()
    rest = (await c.get("/v1/members", params={"branch_id": b["id"], "employment_form": "courier",
                                                "cursor": page["next_cursor"]}, headers=auth())).json()
    assert [m["id"] for m in page["items"] + rest["items"]] == [m["id"] for m in others]
    assert rest["next_cursor"] is None
    by_region = (await c.get("/v1/members", params={"region": "640300", "status": "active", "limit": 200},
                             headers=auth(region="640300"))).json()["items"]
    assert {m["id"] for m in others} | {first.json()["id"]} <= {m["id"] for m in by_region}
    found = await c.post("/v1/members:lookup", json={"id_number": number.lower()}, headers=auth(["membership:read"]))
    assert found.status_code == 200 and found.json()["id"] == first.json()["id"]
    assert (await c.post("/v1/members:lookup", json={"id_number": number},
                         headers=auth(["membership:read"], region="640100"))).status_code == 404
    assert (await c.post("/v1/members:lookup", json={"id_number": unique_id_number()},
                         headers=auth(["membership:read"]))).status_code == 404


async def test_reveal_needs_its_scope_and_is_audited(membership):
    b = await membership.branch("640425")
    number, mobile = unique_id_number("640425"), phone()
    m = (await membership.join(b["id"], number, phone=mobile)).json()
    c = membership.client
    why = {"reason": "法律援助需要核对身份"}
    assert (await c.post(f"/v1/members/{m['id']}:reveal", json=why, headers=auth())).status_code == 403
    reveal = auth(["membership:reveal"], subject="legal-aid-officer")
    assert (await c.post(f"/v1/members/{m['id']}:reveal", json={"reason": "x"}, headers=reveal)).status_code == 422
    assert (await c.post(f"/v1/members/{m['id']}:reveal", json=why,
                         headers=auth(["membership:reveal"], region="640100"))).status_code == 404
    r = await c.post(f"/v1/members/{m['id']}:reveal", json=why, headers=reveal)
    assert r.status_code == 200 and r.json()["id_number"] == number and r.json()["phone"] == mobile
    assert r.headers["cache-control"] == "no-store"
    assert (await c.get(f"/v1/members/{m['id']}/reveals", headers=reveal)).status_code == 403
    audit = (await c.get(f"/v1/members/{m['id']}/reveals", headers=auth(["membership:audit"]))).json()["items"]
    assert [(a["by"], a["reason"], a["fields"]) for a in audit] == [("legal-aid-officer", why["reason"],
                                                                     ["id_number", "phone"])]


async def test_stations_open_close_list(membership):
    b = await membership.branch("640303")
    c = membership.client
    body = {"name": "红寺堡区户外劳动者服务站", "branch_id": b["id"], "region_code": "640303",
            "services": ["饮水", "休息", "充电", "饮水"], "opened_on": "2021-07-01"}
    assert (await c.post("/v1/stations", json={**body, "region_code": "640300"}, headers=auth())).status_code == 422
    assert (await c.post("/v1/stations", json=body, headers=auth(region="640100"))).status_code == 403
    r = await c.post("/v1/stations", json=body, headers=auth())
    assert r.status_code == 201 and r.json()["services"] == ["饮水", "休息", "充电"]
    station = r.json()
    listed = (await c.get("/v1/stations", params={"region": "640300", "status": "open"}, headers=auth())).json()
    assert station["id"] in {s["id"] for s in listed["items"]}
    assert (await c.get(f"/v1/stations/{station['id']}", headers=auth(region="640100"))).status_code == 404
    r = await c.post(f"/v1/stations/{station['id']}:close", json={"closed_on": "2021-12-01"}, headers=auth())
    assert r.status_code == 200 and r.json()["status"] == "closed"
    assert (await c.post(f"/v1/stations/{station['id']}:close", headers=auth())).status_code == 409
    kinds = [e.type for e in await outbox_events(membership.dsn) if e.subject == station["id"]]
    assert kinds == ["changai.membership.station.opened.v1", "changai.membership.station.closed.v1"]
