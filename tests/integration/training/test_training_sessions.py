"""Sessions and enrolments on the real PostgreSQL and Kafka: the whole lifecycle, every refusal,
the completion event field by field, and capacity under concurrent enrolments."""

import asyncio
import uuid
from collections import Counter
from datetime import date

import httpx
import pytest

from shared.events.membership import MemberLeft
from training_support import (
    CREDIT_CODE,
    key,
    of,
    produce,
    programme,
    seed_members,
    session,
    tail,
    wait_for,
)

pytestmark = pytest.mark.integration


def problem_type(resp: httpx.Response) -> str:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    return resp.json()["type"].rsplit("/", 1)[-1]


async def leave(stack, app, branch, member_id) -> None:
    await produce(
        stack.bootstrap,
        MemberLeft(
            member_id=member_id,
            branch_id=branch.branch_id,
            region_code=branch.region_code,
            city_code=branch.city_code,
            employment_form="standard",
            left_on=date(2021, 4, 10),
        ),
    )
    await wait_for(lambda: app.state.db.fetchval("SELECT status = 'left' FROM members WHERE id = $1", member_id))


async def test_session_lifecycle_refusals_and_completion_event(stack, training):
    app, client, _ = training
    branch, m = await seed_members(stack, app, 7)
    stranger = uuid.uuid4()
    prog = await programme(client, "pre_job")
    s = await session(client, prog["id"], branch.branch_id, capacity=4)
    sid = s["id"]
    assert (s["status"], s["number"], s["capacity"], s["places_left"]) == ("scheduled", 1, 4, 4)
    assert s["organiser"] == {"id": str(branch.branch_id), "kind": "branch", "name": branch.name}
    assert (s["region_code"], s["city_code"], s["subsidy_category"]) == ("640104", "640100", "pre_job")

    # -- enrolment and its refusals
    first = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[0])}, headers=key())
    assert first.status_code == 201 and first.json()["status"] == "enrolled", first.text
    again = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[0])}, headers=key())
    assert (again.status_code, problem_type(again)) == (409, "already-enrolled")
    nobody = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(stranger)}, headers=key())
    assert (nobody.status_code, problem_type(nobody)) == (422, "not-a-member")
    await leave(stack, app, branch, m[6])
    gone = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[6])}, headers=key())
    assert (gone.status_code, problem_type(gone)) == (409, "member-not-active")
    assert gone.json()["member_status"] == "left"

    bulk_key = key()
    body = {"member_ids": [str(m[1]), str(m[2]), str(m[1]), str(m[3]), str(m[4]), str(stranger)]}
    bulk = await client.post(f"/v1/sessions/{sid}/enrolments/bulk", json=body, headers=bulk_key)
    assert bulk.status_code == 200, bulk.text
    outcome = [(r["outcome"], r.get("problem", {}).get("type", "").rsplit("/", 1)[-1]) for r in bulk.json()["results"]]
    assert outcome == [
        ("enrolled", ""),
        ("enrolled", ""),
        ("refused", "duplicate-item"),
        ("enrolled", ""),
        ("refused", "session-full"),
        ("refused", "not-a-member"),
    ]
    assert (bulk.json()["enrolled"], bulk.json()["refused"], bulk.json()["places_left"]) == (3, 3, 0)
    replay = await client.post(f"/v1/sessions/{sid}/enrolments/bulk", json=body, headers=bulk_key)
    assert replay.json() == bulk.json() and replay.headers["idempotent-replayed"] == "true"
    full = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[4])}, headers=key())
    assert (full.status_code, problem_type(full)) == (409, "session-full")

    m3_enrolment = bulk.json()["results"][3]["enrolment_id"]
    out = await client.post(f"/v1/enrolments/{m3_enrolment}/withdrawal", json={"reason": "shift change"}, headers=key())
    assert out.status_code == 200 and out.json()["status"] == "withdrawn", out.text
    m4 = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[4])}, headers=key())
    assert m4.status_code == 201, "a withdrawal frees its place"

    # -- attendance and results need a started session
    early = await client.post(f"/v1/sessions/{sid}/attendance", json={"member_ids": [str(m[0])]}, headers=key())
    assert (early.status_code, problem_type(early)) == (409, "session-not-started")
    started = await client.post(f"/v1/sessions/{sid}/start", json={"started_on": "2021-04-01"}, headers=key())
    assert started.status_code == 200 and started.json()["status"] == "in_progress", started.text
    twice = await client.post(f"/v1/sessions/{sid}/start", json={"started_on": "2021-04-01"}, headers=key())
    assert (twice.status_code, problem_type(twice)) == (409, "session-in-progress")

    att = await client.post(
        f"/v1/sessions/{sid}/attendance",
        json={"member_ids": [str(m[0]), str(m[1]), str(m[4]), str(m[3])]},
        headers=key(),
    )
    assert [r["outcome"] for r in att.json()["results"]] == ["attended", "attended", "attended", "refused"]
    assert att.json()["results"][3]["problem"]["type"].endswith("/not-enrolled")  # m3 withdrew
    pending = await client.post(f"/v1/sessions/{sid}/complete", json={"completed_on": "2021-04-20"}, headers=key())
    assert (pending.status_code, problem_type(pending)) == (409, "results-pending")
    assert pending.json()["pending"] == 3

    res = await client.post(
        f"/v1/sessions/{sid}/results",
        headers=key(),
        json={
            "results": [
                {"member_id": str(m[0]), "result": "passed"},
                {"member_id": str(m[1]), "result": "failed"},
                {"member_id": str(m[4]), "result": "passed"},
                {"member_id": str(m[2]), "result": "passed"},
            ]
        },
    )
    assert [r["outcome"] for r in res.json()["results"]] == ["passed", "failed", "passed", "refused"]
    assert res.json()["results"][3]["problem"]["type"].endswith("/invalid-transition")  # m2 never attended

    await leave(stack, app, branch, m[4])  # passed, then left the union before completion: not eligible

    # -- completion: the event funding pays from
    async with tail(stack.bootstrap) as t:
        done = await client.post(f"/v1/sessions/{sid}/complete", json={"completed_on": "2021-04-20"}, headers=key())
        assert done.status_code == 200, done.text
        events = await t.until(
            lambda es: (
                of(es, "session.completed.v1", session_id=sid) and of(es, "enrolment.withdrawn.v1", session_id=sid)
            )
        )
    view = done.json()
    assert view["status"] == "completed" and view["completed_on"] == "2021-04-20"
    assert view["results"] == {
        "person_times": 3,
        "passed": 2,
        "failed": 1,
        "eligible_persons": 1,
        "absent": 1,
        "eligible_member_ids": [str(m[0])],
    }

    [completed] = of(events, "session.completed.v1", session_id=sid)
    assert completed.type == "changai.training.session.completed.v1"
    assert completed.source == "/changai/training"
    assert completed.subject == completed.partitionkey == sid
    assert completed.dataschema == "https://changai.example/schemas/changai.training.session.completed.v1.json"
    d = completed.data
    assert d["session_id"] == sid
    assert d["programme_id"] == prog["id"]
    assert d["programme_name"] == "枸杞加工岗前培训"
    assert d["number"] == 1
    assert d["organiser_id"] == str(branch.branch_id)
    assert d["organiser_kind"] == "branch"
    assert d["organiser_name"] == branch.name
    assert d["region_code"] == "640104"
    assert d["city_code"] == "640100"
    assert d["subsidy_category"] == "pre_job"
    assert d["person_times"] == 3
    assert d["passed"] == 2
    assert d["failed"] == 1
    assert d["eligible_member_ids"] == [str(m[0])]
    assert d["eligible_persons"] == 1
    assert d["completed_on"] == "2021-04-20"
    assert set(d) == {
        "session_id",
        "programme_id",
        "programme_name",
        "number",
        "organiser_id",
        "organiser_kind",
        "organiser_name",
        "region_code",
        "city_code",
        "subsidy_category",
        "person_times",
        "passed",
        "failed",
        "eligible_member_ids",
        "eligible_persons",
        "completed_on",
        "batch_id",
    }
    assert d["batch_id"] is None  # a session completed by its own call, not by a roster upload
    [absent] = of(events, "enrolment.withdrawn.v1", session_id=sid)
    assert (absent.data["member_id"], absent.data["reason"]) == (str(m[2]), "absent")

    # -- nothing changes after completion
    enrolments = (await client.get(f"/v1/sessions/{sid}/enrolments")).json()["items"]
    by_member = {e["member_id"]: e for e in enrolments if e["status"] != "withdrawn" or e["member_id"] == str(m[2])}
    assert {k: (v["status"], v["closed"]) for k, v in by_member.items()} == {
        str(m[0]): ("passed", True),
        str(m[1]): ("failed", True),
        str(m[2]): ("withdrawn", True),
        str(m[4]): ("passed", True),
    }
    late = await client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(m[5])}, headers=key())
    assert (late.status_code, problem_type(late)) == (409, "session-completed")
    late_bulk = await client.post(
        f"/v1/sessions/{sid}/enrolments/bulk", json={"member_ids": [str(m[5])]}, headers=key()
    )
    assert (late_bulk.status_code, problem_type(late_bulk)) == (409, "session-completed")
    for path, payload in (
        (f"/v1/sessions/{sid}/attendance", {"member_ids": [str(m[0])]}),
        (f"/v1/sessions/{sid}/complete", {}),
        (f"/v1/sessions/{sid}/cancel", {}),
        (f"/v1/enrolments/{first.json()['id']}/withdrawal", {}),
    ):
        resp = await client.post(path, json=payload, headers=key())
        assert (resp.status_code, problem_type(resp)) == (409, "session-completed"), path

    # -- certificates for passed enrolments; public verification without personal data
    failed_id = bulk.json()["results"][0]["enrolment_id"]  # m1 failed
    no_cert = await client.post("/v1/certificates", json={"enrolment_id": failed_id}, headers=key())
    assert (no_cert.status_code, problem_type(no_cert)) == (409, "enrolment-not-passed")
    async with tail(stack.bootstrap) as t:
        cert = await client.post(
            "/v1/certificates", json={"enrolment_id": first.json()["id"], "issued_on": "2021-04-25"}, headers=key()
        )
        assert cert.status_code == 201, cert.text
        serial = cert.json()["serial"]
        [issued] = of(
            await t.until(lambda es: of(es, "certificate.issued.v1", serial=serial)),
            "certificate.issued.v1",
            serial=serial,
        )
    assert issued.data["member_id"] == str(m[0]) and issued.data["level"] == 4
    assert issued.data["occupation"] == "枸杞加工工" and issued.data["issuer"] == "宁夏工业职业技术学院"
    dup = await client.post("/v1/certificates", json={"enrolment_id": first.json()["id"]}, headers=key())
    assert (dup.status_code, problem_type(dup)) == (409, "certificate-exists")
    async with httpx.AsyncClient(transport=client._transport, base_url="http://training") as anonymous:
        shown = await anonymous.get(f"/v1/certificates/{serial.lower()}")
        assert shown.status_code == 200, shown.text
        assert shown.json() == {
            "serial": serial,
            "valid": True,
            "occupation": "枸杞加工工",
            "level": 4,
            "level_name": "中级工",
            "programme_name": "枸杞加工岗前培训",
            "issuer": "宁夏工业职业技术学院",
            "issued_on": "2021-04-25",
            "region_code": "640104",
            "region_name": "兴庆区",
        }
        assert str(m[0]) not in shown.text
        missing = await anonymous.get("/v1/certificates/NX2021-AAAA-BBBB-CCCC")
        assert missing.status_code == 404
        assert (await anonymous.get("/v1/certificates")).status_code == 401
    session_certs = await client.post(
        f"/v1/sessions/{sid}/certificates", json={"issued_on": "2021-04-25"}, headers=key()
    )
    assert (session_certs.json()["issued"], session_certs.json()["already_issued"]) == (1, 1)  # m4's; m0 had one


async def test_enterprise_session_cancelled_with_its_enrolments(stack, training):
    app, client, _ = training
    branch, m = await seed_members(stack, app, 3, region="640202")
    prog = await programme(client, "skills_upgrade", name="新型材料技能提升", occupation="化工操作工", target_level=3)
    no_name = await client.post(
        "/v1/sessions",
        headers=key(),
        json={
            "programme_id": prog["id"],
            "organiser_kind": "enterprise",
            "organiser_id": CREDIT_CODE,
            "region_code": "640202",
            "starts_on": "2021-05-01",
            "ends_on": "2021-05-10",
            "capacity": 5,
        },
    )
    assert (no_name.status_code, problem_type(no_name)) == (422, "validation-error")
    bad_code = await client.post(
        "/v1/sessions",
        headers=key(),
        json={
            "programme_id": prog["id"],
            "organiser_kind": "enterprise",
            "organiser_id": "91350100M000100Y44",
            "organiser_name": "x",
            "region_code": "640202",
            "starts_on": "2021-05-01",
            "ends_on": "2021-05-10",
            "capacity": 5,
        },
    )
    assert (bad_code.status_code, problem_type(bad_code)) == (422, "validation-error")
    unknown_branch = await client.post(
        "/v1/sessions",
        headers=key(),
        json={
            "programme_id": prog["id"],
            "organiser_kind": "branch",
            "organiser_id": str(uuid.uuid4()),
            "starts_on": "2021-05-01",
            "ends_on": "2021-05-10",
            "capacity": 5,
        },
    )
    assert (unknown_branch.status_code, problem_type(unknown_branch)) == (422, "unknown-organiser")
    s = await session(
        client,
        prog["id"],
        CREDIT_CODE,
        capacity=5,
        organiser_kind="enterprise",
        organiser_name="石嘴山新型材料股份有限公司",
        region_code="640202",
    )
    assert s["organiser"] == {"id": CREDIT_CODE, "kind": "enterprise", "name": "石嘴山新型材料股份有限公司"}
    second = await session(
        client,
        prog["id"],
        CREDIT_CODE,
        capacity=5,
        organiser_kind="enterprise",
        organiser_name="石嘴山新型材料股份有限公司",
        region_code="640202",
    )
    assert second["number"] == 2
    enrolled = await client.post(
        f"/v1/sessions/{s['id']}/enrolments/bulk", json={"member_ids": [str(i) for i in m]}, headers=key()
    )
    assert enrolled.json()["enrolled"] == 3

    async with tail(stack.bootstrap) as t:
        cancel = await client.post(
            f"/v1/sessions/{s['id']}/cancel",
            json={"reason": "trainer unavailable", "cancelled_on": "2021-04-28"},
            headers=key(),
        )
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
        events = await t.until(
            lambda es: (
                of(es, "session.cancelled.v1", session_id=s["id"])
                and len(of(es, "enrolment.withdrawn.v1", session_id=s["id"])) == 3
            )
        )
    [cancelled] = of(events, "session.cancelled.v1", session_id=s["id"])
    assert cancelled.data == {
        "session_id": s["id"],
        "region_code": "640202",
        "city_code": "640200",
        "subsidy_category": "skills_upgrade",
        "reason": "trainer unavailable",
        "cancelled_on": "2021-04-28",
    }
    assert {e.data["reason"] for e in of(events, "enrolment.withdrawn.v1", session_id=s["id"])} == {"session cancelled"}
    late = await client.post(f"/v1/sessions/{s['id']}/enrolments", json={"member_id": str(m[0])}, headers=key())
    assert (late.status_code, problem_type(late)) == (409, "session-cancelled")
    start = await client.post(f"/v1/sessions/{s['id']}/start", json={}, headers=key())
    assert (start.status_code, problem_type(start)) == (409, "session-cancelled")

    # out of the caller's region: a Yinchuan-scoped token cannot touch a Shizuishan session, nor learn it exists
    from shared.auth import mint_token

    yinchuan = {"Authorization": "Bearer " + mint_token("yinchuan", ["training:write", "training:read"], "640100")}
    other = await client.post(f"/v1/sessions/{second['id']}/start", json={}, headers={**yinchuan, **key()})
    assert (other.status_code, problem_type(other)) == (404, "not-found")
    hidden = await client.get(f"/v1/sessions/{second['id']}", headers=yinchuan)
    assert hidden.status_code == 404
    reader = {"Authorization": "Bearer " + mint_token("reader", ["training:read"], "640000")}
    no_scope = await client.post(f"/v1/sessions/{second['id']}/start", json={}, headers={**reader, **key()})
    assert (no_scope.status_code, problem_type(no_scope)) == (403, "insufficient-scope")


async def test_concurrent_enrolments_never_exceed_capacity(stack, training):
    app, client, _ = training
    branch, m = await seed_members(stack, app, 40)
    prog = await programme(client, "new_form", name="快递员安全培训", occupation="快递员")
    s = await session(client, prog["id"], branch.branch_id, capacity=15)
    sid = s["id"]

    singles = [
        client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(mid)}, headers=key()) for mid in m[:30]
    ]
    bulks = [
        client.post(f"/v1/sessions/{sid}/enrolments/bulk", json={"member_ids": [str(x) for x in part]}, headers=key())
        for part in (m[20:35], m[25:40])
    ]
    responses = await asyncio.gather(*singles, *bulks)

    winners = Counter()
    for resp in responses[:30]:
        if resp.status_code == 201:
            winners[resp.json()["member_id"]] += 1
        else:
            assert (resp.status_code, problem_type(resp)) in {(409, "session-full"), (409, "already-enrolled")}, (
                resp.text
            )
    for resp in responses[30:]:
        assert resp.status_code == 200, resp.text
        for r in resp.json()["results"]:
            if r["outcome"] == "enrolled":
                winners[r["member_id"]] += 1
            else:
                assert r["problem"]["type"].rsplit("/", 1)[-1] in {"session-full", "already-enrolled"}
    assert sum(winners.values()) == 15, "capacity exceeded or places left empty under contention"
    assert max(winners.values()) == 1, "a member got two places"
    pool = app.state.db
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM enrolments WHERE session_id = $1 AND status <> 'withdrawn'", uuid.UUID(sid)
        )
        == 15
    )
    assert await pool.fetchval("SELECT enrolled FROM sessions WHERE id = $1", uuid.UUID(sid)) == 15
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'changai.training.enrolment.enrolled.v1' "
            "AND convert_from(value, 'UTF8') LIKE '%' || $1 || '%'",
            sid,
        )
        == 15
    )

    # Withdrawals and enrolments racing: the places freed are taken, never more.
    taken = [uuid.UUID(x) for x in winners]
    enrolments = {
        e["member_id"]: e["id"]
        for e in (await client.get(f"/v1/sessions/{sid}/enrolments", params={"limit": 100})).json()["items"]
    }
    outsiders = [x for x in m if x not in set(taken)]
    responses = await asyncio.gather(
        *(client.post(f"/v1/enrolments/{enrolments[str(x)]}/withdrawal", json={}, headers=key()) for x in taken[:5]),
        *(
            client.post(f"/v1/sessions/{sid}/enrolments", json={"member_id": str(x)}, headers=key())
            for x in outsiders[:12]
        ),
    )
    assert all(r.status_code == 200 for r in responses[:5])
    new = sum(r.status_code == 201 for r in responses[5:])
    assert 0 <= new <= 5
    live = await pool.fetchval(
        "SELECT count(*) FROM enrolments WHERE session_id = $1 AND status <> 'withdrawn'", uuid.UUID(sid)
    )
    assert live == 10 + new == await pool.fetchval("SELECT enrolled FROM sessions WHERE id = $1", uuid.UUID(sid))
    # Anything still free can be taken afterwards, up to exactly the capacity.
    rest = await client.post(
        f"/v1/sessions/{sid}/enrolments/bulk", json={"member_ids": [str(x) for x in outsiders[12:]]}, headers=key()
    )
    assert rest.json()["enrolled"] == 15 - live and rest.json()["places_left"] == 0
