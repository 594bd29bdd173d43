"""Rosters in bulk (CSV and NDJSON, streamed) on the real PostgreSQL and Kafka: every row's outcome,
completion with the same events as the single commands, a repeat that changes nothing, the
Idempotency-Key, the region rule, and refusals of the upload itself."""

import uuid

import pytest

from shared.auth import mint_token
from training_support import of, programme, seed_members, session, tail

pytestmark = pytest.mark.integration

CSV = {"Content-Type": "text/csv; charset=utf-8"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def kind(problem: dict) -> str:
    return problem["type"].rsplit("/", 1)[-1]


async def test_rosters_of_many_sessions_recorded_completed_and_repeatable(stack, training):
    app, client, _ = training
    branch, m = await seed_members(stack, app, 6, region="640104")
    prog = await programme(client, "pre_job", name="名册批量培训")
    s1 = (await session(client, prog["id"], branch.branch_id, capacity=5))["id"]
    s2 = (await session(client, prog["id"], branch.branch_id, capacity=3))["id"]
    stranger = uuid.uuid4()
    lines = [
        "session_id,member_id,result",
        f"{s1},{m[0]},passed",
        f"{s1},{m[1]},failed",
        f"{s1},{m[2]},absent",
        f"{s1},{m[3]},passed",
        f"{s1},{m[3]},passed",  # line 6: the same member twice
        f"{s1},{stranger},passed",  # line 7: not a member
        "not,a,row",  # line 8
        f"{s2},{m[4]},passed",
        f"{s2},{m[5]},attended",
    ]
    body = ("\n".join(lines) + "\n").encode()

    async with tail(stack.bootstrap) as t:
        resp = await client.post(
            "/v1/rosters", params={"complete": "true", "completed_on": "2021-04-20"}, content=body, headers=CSV
        )
        assert resp.status_code == 200, resp.text
        report = resp.json()
        events = await t.until(lambda es: of(es, "session.completed.v1", session_id=s1))
    assert (report["rows"], report["recorded"], report["unchanged"], report["refused"]) == (9, 6, 0, 3)
    assert [(r["line"], kind(r["problem"])) for r in report["refused_rows"]] == [
        (6, "duplicate-item"),
        (7, "not-a-member"),
        (8, "validation-error"),
    ]
    outcomes = {o["session_id"]: o for o in report["session_outcomes"]}
    assert outcomes[s1]["completed"] is True and outcomes[s1]["refused"] == 2
    # s2 cannot complete: m5 attended without a result; its roster is kept all the same
    assert outcomes[s2]["completed"] is False and kind(outcomes[s2]["problem"]) == "results-pending"
    [done] = of(events, "session.completed.v1", session_id=s1)
    assert (done.data["person_times"], done.data["passed"], done.data["failed"], done.data["eligible_persons"]) == (
        3,
        2,
        1,
        2,
    )
    assert done.data["region_code"] == "640104" and done.data["completed_on"] == "2021-04-20"
    mine = [e for e in events if e.data.get("session_id") == s1]
    assert len(of(mine, "enrolment.enrolled.v1")) == 4 and len(of(mine, "enrolment.attended.v1")) == 3
    assert len(of(mine, "enrolment.assessed.v1")) == 3
    assert [e.data["reason"] for e in of(mine, "enrolment.withdrawn.v1")] == ["absent"]
    assert {e.data["region_code"] for e in mine} == {"640104"}
    # one upload, one batch id on every event it caused: the notifier tells it as digests (issue 15)
    # (the sessions' own session.scheduled may still be in the relay's hands when the tail starts: not the upload's)
    uploaded = [
        e for e in events if e.data.get("session_id") in (s1, s2) and not e.type.endswith("session.scheduled.v1")
    ]
    unmarked = sorted({e.type for e in uploaded if e.data.get("batch_id") is None})
    assert not unmarked, f"events of the upload without its batch id: {unmarked}"
    assert len({e.data["batch_id"] for e in uploaded}) == 1
    s2_view = (await client.get(f"/v1/sessions/{s2}")).json()
    assert (s2_view["status"], s2_view["enrolled"]) == ("in_progress", 2)

    # the same roster again: nothing changes, no event is written
    outbox = await app.state.db.fetchval("SELECT count(*) FROM outbox")
    again = (
        await client.post(
            "/v1/rosters", params={"complete": "true", "completed_on": "2021-04-20"}, content=body, headers=CSV
        )
    ).json()
    assert (again["recorded"], again["unchanged"], again["refused"]) == (0, 6, 3), again
    assert await app.state.db.fetchval("SELECT count(*) FROM outbox") == outbox

    # one session's roster as NDJSON, with an Idempotency-Key: a repeat replays the first report
    s3 = (await session(client, prog["id"], branch.branch_id, capacity=2))["id"]
    nd = b"".join(f'{{"member_id": "{x}", "result": "passed"}}\n'.encode() for x in m[:2])
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await client.post(
        f"/v1/sessions/{s3}/roster", params={"complete": "true"}, content=nd, headers={**NDJSON, **key}
    )
    assert first.status_code == 200 and first.json()["sessions_completed"] == 1, first.text
    replay = await client.post(
        f"/v1/sessions/{s3}/roster", params={"complete": "true"}, content=nd, headers={**NDJSON, **key}
    )
    assert replay.headers.get("idempotent-replayed") == "true" and replay.json() == first.json()
    other = await client.post(
        f"/v1/sessions/{s3}/roster", params={"complete": "true"}, content=nd[:-2] + b"x\n", headers={**NDJSON, **key}
    )
    assert other.status_code == 422 and kind(other.json()) == "idempotency-key-reused"

    # a city's token cannot record another city's roster: every row refused as not found
    szs = {"Authorization": "Bearer " + mint_token("szs", ["training:write", "training:read"], "640200")}
    s4 = (await session(client, prog["id"], branch.branch_id, capacity=2))["id"]
    out = (
        await client.post(
            "/v1/rosters", content=f"session_id,member_id,result\n{s4},{m[0]},passed\n".encode(), headers={**CSV, **szs}
        )
    ).json()
    assert [kind(r["problem"]) for r in out["refused_rows"]] == ["not-found"]
    one = await client.post(
        f"/v1/sessions/{s4}/roster", content=f"member_id,result\n{m[0]},passed\n".encode(), headers={**CSV, **szs}
    )
    assert one.status_code == 404 and kind(one.json()) == "not-found"
    assert (await client.get(f"/v1/sessions/{s4}")).json()["enrolled"] == 0

    # the upload itself refused
    wrong = await client.post("/v1/rosters", content=b"a;b", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415
    latin = await client.post("/v1/rosters", content=body, headers={"Content-Type": "text/csv; charset=latin-1"})
    assert latin.status_code == 415
    header = await client.post("/v1/rosters", content=b"member,outcome\n", headers=CSV)
    assert header.status_code == 422
    nul = await client.post(
        "/v1/rosters", content=f"session_id,member_id,result\n{s4},{m[0]}\x00,passed\n".encode(), headers=CSV
    )
    assert 400 <= nul.status_code < 500
    cr = await client.post(
        "/v1/rosters", content=f"session_id,member_id,result\n{s4},{m[0]}\rx,passed\n".encode(), headers=CSV
    )
    assert cr.status_code == 200 and [kind(r["problem"]) for r in cr.json()["refused_rows"]] == ["validation-error"]


async def test_roster_in_parts_then_moved_on_and_completed(stack, training):
    """One session's rows in two parts of one upload (the second part sees what the first did), capacity
    held across them, then a second upload that moves the same enrolments on and completes the session:
    the existing enrolments are updated (absent → withdrawn), the figures and events are the single
    commands', and that upload again changes nothing."""
    app, client, _ = training
    branch, m = await seed_members(stack, app, 4, region="640104")
    prog = await programme(client, "pre_job", name="名册分段培训")
    s = (await session(client, prog["id"], branch.branch_id, capacity=3))["id"]
    t = (await session(client, prog["id"], branch.branch_id, capacity=1))["id"]
    first = [
        "session_id,member_id,result",
        f"{s},{m[0]},enrolled",
        f"{s},{m[1]},enrolled",
        f"{t},{m[0]},passed",
        f"{s},{m[2]},attended",  # line 5: the session's second part
        f"{s},{m[1]},attended",  # enrolled in the first part: moves on
        f"{s},{m[3]},attended",  # line 7: the fourth member of a session of 3
    ]
    report = (await client.post("/v1/rosters", content=("\n".join(first) + "\n").encode(), headers=CSV)).json()
    assert (report["rows"], report["recorded"], report["unchanged"], report["refused"]) == (6, 5, 0, 1), report
    assert [(r["line"], kind(r["problem"])) for r in report["refused_rows"]] == [(7, "session-full")]
    view = (await client.get(f"/v1/sessions/{s}")).json()
    assert (view["status"], view["enrolled"]) == ("in_progress", 3)
    enrolments = await app.state.db.fetch("SELECT member_id, status FROM enrolments WHERE session_id = $1", uuid.UUID(s))
    states = {r["member_id"]: r["status"] for r in enrolments}
    assert states == {m[0]: "enrolled", m[1]: "attended", m[2]: "attended"}

    second = f"session_id,member_id,result\n{s},{m[0]},absent\n{s},{m[1]},passed\n{s},{m[2]},failed\n".encode()
    async with tail(stack.bootstrap) as tl:
        done = (await client.post("/v1/rosters", params={"complete": "true"}, content=second, headers=CSV)).json()
        events = await tl.until(lambda es: of(es, "session.completed.v1", session_id=s))
    assert (done["recorded"], done["unchanged"], done["refused"], done["sessions_completed"]) == (2, 1, 0, 1), done
    [completed] = of(events, "session.completed.v1", session_id=s)
    assert (completed.data["person_times"], completed.data["passed"], completed.data["failed"]) == (2, 1, 1)
    assert completed.data["eligible_member_ids"] == [str(m[1])]
    assert [e.data["member_id"] for e in of(events, "enrolment.withdrawn.v1", session_id=s)] == [str(m[0])]
    assert sorted(e.data["result"] for e in of(events, "enrolment.assessed.v1", session_id=s)) == ["failed", "passed"]
    rows = await app.state.db.fetch(
        "SELECT member_id, status, closed, withdraw_reason, withdrawn_at IS NOT NULL AS w, assessed_at IS NOT NULL AS a"
        " FROM enrolments WHERE session_id = $1",
        uuid.UUID(s),
    )
    assert {r["member_id"]: tuple(r)[1:] for r in rows} == {
        m[0]: ("withdrawn", True, "absent", True, False),
        m[1]: ("passed", True, None, False, True),
        m[2]: ("failed", True, None, False, True),
    }
    view = (await client.get(f"/v1/sessions/{s}")).json()
    assert (view["status"], view["enrolled"], view["results"]["person_times"]) == ("completed", 2, 2)

    outbox = await app.state.db.fetchval("SELECT count(*) FROM outbox")
    again = (await client.post("/v1/rosters", params={"complete": "true"}, content=second, headers=CSV)).json()
    assert (again["recorded"], again["unchanged"], again["refused"]) == (0, 3, 0), again
    assert await app.state.db.fetchval("SELECT count(*) FROM outbox") == outbox
