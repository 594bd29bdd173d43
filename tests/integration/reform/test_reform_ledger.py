"""The task ledger through the API, on the real PostgreSQL: who may do what, the task's life, the rules."""

import io
import uuid

import asyncpg
from openpyxl import load_workbook

from reform_support import CITY, OFFICE, key, liaison, post, unit

PROBLEM = "application/problem+json"


async def _year_with_units(client, year: int, n: int = 3) -> tuple[int, list[dict]]:
    units = [await unit(client) for _ in range(n)]
    await post(client, "/v1/years", {"year": year, "unit_ids": [u["id"] for u in units]})
    return year, units


async def _all_pages(client, path: str, field: str) -> list:
    """A field of every item of a list, one item a page (so the cursor is followed), in the order served."""
    seen, cursor = [], None
    while True:
        resp = await client.get(path, params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) <= 1
        seen += [item[field] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def _task(year: int, number: int, lead: dict, co: list[dict] = (), deadline: str = "2099-06-30") -> dict:
    return {
        "year": year,
        "number": number,
        "title": f"任务{number}",
        "content": "推进产业工人队伍建设改革",
        "measures": "细化措施",
        "source_clause": "实施方案第三条",
        "lead_unit_id": lead["id"],
        "co_unit_ids": [c["id"] for c in co],
        "deadline": deadline,
    }


async def test_a_task_from_assignment_to_verified_completion_with_history(reform):
    _, client, dsn = reform
    year, (lead, co, other) = await _year_with_units(client, 2091)
    task = await post(client, "/v1/tasks", _task(year, 17, lead, [co]))
    assert task["label"] == "2091-17" and task["status"] == "assigned"
    years = await _all_pages(client, "/v1/years", "year")
    assert year in years and years == sorted(set(years))
    tid = task["id"]

    # the co-operating unit reports progress; the lead reports completion; another unit sees nothing
    after = await post(
        client,
        f"/v1/tasks/{tid}:report-progress",
        {"percent": 40, "text": "已联系 13912345678 完成调研", "links": ["https://example.org/a.pdf"]},
        liaison(co["id"]),
        status=200,
    )
    assert after["status"] == "in_progress" and after["percent"] == 40
    resp = await client.post(
        f"/v1/tasks/{tid}:report-completion", json={"evidence": "已完成"}, headers={**key(), **liaison(co["id"])}
    )
    assert resp.status_code == 403 and resp.headers["content-type"].startswith(PROBLEM), resp.text
    assert resp.json()["type"].endswith("/not-lead-unit")
    for path in (f"/v1/tasks/{tid}", f"/v1/tasks/{tid}/history"):
        assert (await client.get(path, headers=liaison(other["id"]))).status_code == 404
        assert (await client.get(path, headers=CITY)).status_code == 404
    resp = await client.post(
        f"/v1/tasks/{tid}:report-progress", json={"percent": 10, "text": "x"}, headers={**key(), **liaison(other["id"])}
    )
    assert resp.status_code == 404

    done = await post(
        client,
        f"/v1/tasks/{tid}:report-completion",
        {"evidence": "印发实施细则", "links": ["https://example.org/doc.pdf"]},
        liaison(lead["id"]),
        status=200,
    )
    assert done["status"] == "completion_reported" and done["percent"] == 100
    # a liaison cannot act as the office
    resp = await client.post(f"/v1/tasks/{tid}:verify", headers={**key(), **liaison(lead["id"])})
    assert resp.status_code == 403
    back = await post(client, f"/v1/tasks/{tid}:send-back", {"reason": "佐证材料不全"}, status=200)
    assert back["status"] == "in_progress"
    await post(client, f"/v1/tasks/{tid}:report-completion", {"evidence": "补充材料"}, liaison(lead["id"]), status=200)
    verified = await post(client, f"/v1/tasks/{tid}:verify", status=200)
    assert verified["status"] == "completed" and verified["completed_on"]

    history = (await client.get(f"/v1/tasks/{tid}/history")).json()
    assert [h["action"] for h in history["items"]] == [
        "assigned",
        "progress_reported",
        "completion_reported",
        "sent_back",
        "completion_reported",
        "completed",
    ]
    # free text is scrubbed before it is kept or published; the liaison's phone is stored encrypted only
    assert "13912345678" not in str(history)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        types = [
            r["event_type"] for r in await pool.fetch("SELECT event_type FROM outbox WHERE key = $1 ORDER BY seq", tid)
        ]
        values = b"".join(r["value"] for r in await pool.fetch("SELECT value FROM outbox"))
        phones = await pool.fetchval("SELECT count(*) FROM units WHERE liaison_phone::text LIKE '%13912345678%'")
    assert types == [
        "changai.reform.task.assigned.v1",
        "changai.reform.task.progress_reported.v1",
        "changai.reform.task.completion_reported.v1",
        "changai.reform.task.sent_back.v1",
        "changai.reform.task.completion_reported.v1",
        "changai.reform.task.completed.v1",
    ]
    assert b"13912345678" not in values and phones == 0
    assert (await client.get(f"/v1/units/{lead['id']}")).json()["liaison_phone_masked"] == "139****5678"


async def test_reassignment_keeps_history_and_lead_must_be_a_member_unit_of_the_year(reform):
    _, client, _ = reform
    year, (a, b, c) = await _year_with_units(client, 2092)
    outsider = await unit(client)
    resp = await client.post("/v1/tasks", json=_task(year, 1, outsider), headers=key())
    assert resp.status_code == 422 and resp.json()["type"].endswith("/not-a-member-unit")
    task = await post(client, "/v1/tasks", _task(year, 1, a, [b]))
    moved = await post(
        client,
        f"/v1/tasks/{task['id']}:assign",
        {"lead_unit_id": c["id"], "deadline": "2099-09-30", "reason": "职能调整"},
        status=200,
    )
    assert moved["lead_unit_id"] == c["id"] and moved["deadline"] == "2099-09-30"
    history = (await client.get(f"/v1/tasks/{task['id']}/history")).json()["items"]
    assert history[-1]["action"] == "reassigned"
    assert history[-1]["detail"]["previous_lead_unit_id"] == a["id"]
    assert history[-1]["detail"]["previous_deadline"] == "2099-06-30"
    # the former lead no longer sees it; the new lead does
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=liaison(a["id"]))).status_code == 404
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=liaison(c["id"]))).status_code == 200
    # a duplicate number in the year is a conflict naming the existing task
    resp = await client.post("/v1/tasks", json=_task(year, 1, a), headers=key())
    assert resp.status_code == 409 and resp.json()["task_id"] == task["id"]


async def test_a_closed_year_refuses_changes_and_closes_only_when_all_tasks_are_completed(reform):
    _, client, _ = reform
    year, (a, _b, _c) = await _year_with_units(client, 2093)
    task = await post(client, "/v1/tasks", _task(year, 1, a))
    resp = await client.post(f"/v1/years/{year}:close", headers=key())
    assert resp.status_code == 409 and resp.json()["open_tasks"] == 1
    await post(client, f"/v1/tasks/{task['id']}:report-completion", {"evidence": "完成"}, liaison(a["id"]), status=200)
    await post(client, f"/v1/tasks/{task['id']}:verify", status=200)
    closed = await post(client, f"/v1/years/{year}:close", status=200)
    assert closed["status"] == "closed" and closed["completed"] == closed["tasks"] == 1
    for method, path, body in (
        ("post", "/v1/tasks", _task(year, 2, a)),
        ("post", f"/v1/tasks/{task['id']}:assign", {"lead_unit_id": a["id"], "reason": "x"}),
        ("post", f"/v1/years/{year}/units", {"unit_ids": [a["id"]]}),
    ):
        resp = await client.request(method, path, json=body, headers=key())
        assert resp.status_code == 409 and resp.json()["type"].endswith("/year-closed"), (path, resp.text)


async def test_documents_unique_per_issuing_unit_and_liaisons_register_their_own(reform):
    _, client, _ = reform
    year, (a, b, _c) = await _year_with_units(client, 2094)
    task = await post(client, "/v1/tasks", _task(year, 1, a))
    body = {
        "title": "关于提高技能人才待遇的意见",
        "doc_number": "宁人社发〔2094〕12号",
        "issued_on": "2094-05-01",
        "task_ids": [task["id"]],
    }
    doc = await post(client, "/v1/documents", body, liaison(a["id"]))
    assert doc["unit_id"] == a["id"]
    resp = await client.post("/v1/documents", json=body, headers={**key(), **liaison(a["id"])})
    assert resp.status_code == 409
    await post(client, "/v1/documents", body, liaison(b["id"]))  # another unit may use the same number
    resp = await client.post(
        "/v1/documents",
        json={**body, "unit_id": b["id"], "doc_number": "宁人社发〔2094〕13号"},
        headers={**key(), **liaison(a["id"])},
    )
    assert resp.status_code == 403
    resp = await client.post(
        "/v1/documents", json={**body, "doc_number": "not a number"}, headers={**key(), **liaison(a["id"])}
    )
    assert resp.status_code == 422
    mine = (await client.get("/v1/documents", headers=liaison(a["id"]))).json()["items"]
    assert {d["unit_id"] for d in mine} == {a["id"]}


async def test_pilots_and_city_plans_are_cut_to_the_callers_region(reform):
    _, client, _ = reform
    pilot = {
        "year": 2021,
        "kind": "county",
        "mode": "comprehensive",
        "name": f"平罗县{uuid.uuid4().hex[:4]}",
        "region_code": "640221",
    }
    await post(client, "/v1/pilots", pilot)
    await post(
        client,
        "/v1/pilots",
        {**pilot, "kind": "city", "region_code": "640100", "name": f"银川市{uuid.uuid4().hex[:4]}"},
    )
    resp = await client.post("/v1/pilots", json={**pilot, "kind": "city", "region_code": "640221"}, headers=key())
    assert resp.status_code == 422
    shown = (await client.get("/v1/pilots?year=2021", headers=CITY)).json()["items"]
    assert shown and {p["region_code"][:4] for p in shown} == {"6402"}
    assert (await client.get("/v1/pilots?region=640100", headers=CITY)).status_code == 403
    resp = await client.put(
        "/v1/city-plans/640200", json={"title": "石嘴山市实施方案", "issued_on": "2020-09-01"}, headers=key()
    )
    assert resp.status_code in (200, 201), resp.text
    await client.put(
        "/v1/city-plans/640100", json={"title": "银川市实施方案", "issued_on": "2020-08-01"}, headers=key()
    )
    assert [p["city_code"] for p in (await client.get("/v1/city-plans", headers=CITY)).json()["items"]] == ["640200"]
    # The office sees every city's plan, a page at a time like every list, by city code.
    plans = await _all_pages(client, "/v1/city-plans", "city_code")
    assert {"640100", "640200"} <= set(plans) and plans == sorted(set(plans))
    bad = await client.get("/v1/city-plans", params={"cursor": "_w"})  # not UTF-8 once decoded
    assert bad.status_code == 400 and bad.headers["content-type"].startswith(PROBLEM)
    # the office's writes need the office: a city token with every scope is refused
    city_admin = {"Authorization": CITY["Authorization"]}
    resp = await client.post("/v1/pilots", json=pilot, headers={**key(), **city_admin})
    assert resp.status_code == 403


async def test_the_meetings_report_as_json_and_as_a_workbook(reform):
    _, client, _ = reform
    year, (a, b, _c) = await _year_with_units(client, 2025)
    t1 = await post(client, "/v1/tasks", _task(year, 1, a))
    await post(client, "/v1/tasks", _task(year, 2, b, deadline="2025-01-31"))
    await post(client, f"/v1/tasks/{t1['id']}:report-completion", {"evidence": "完成"}, liaison(a["id"]), status=200)
    await post(client, f"/v1/tasks/{t1['id']}:verify", status=200)
    await post(
        client,
        "/v1/documents",
        {"title": '=HYPERLINK("http://evil")', "doc_number": "宁总工发〔2025〕1号", "issued_on": "2025-03-01"},
        liaison(a["id"]),
    )
    report = (await client.get(f"/v1/years/{year}/report")).json()
    assert report["tasks"] == 2 and report["completed"] == 1 and report["completion_rate"] == 0.5
    assert report["by_status"] == {"assigned": 1, "completed": 1}
    assert [o["number"] for o in report["overdue"]] == [f"{year}-2"]
    assert len(report["documents"]) == 1
    resp = await client.get(f"/v1/years/{year}/report.xlsx")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/vnd.openxmlformats")
    wb = load_workbook(io.BytesIO(resp.content))
    assert wb.sheetnames == ["总体情况", "成员单位", "任务台账", "逾期任务", "政策文件", "试点"]
    assert wb["任务台账"].max_row == 3 and wb["逾期任务"]["A2"].value == f"{year}-2"
    assert wb["政策文件"]["C2"].value.startswith("'=")  # a formula-looking title is text, not a formula
    assert (await client.get(f"/v1/years/{year}/report", headers=CITY)).status_code == 403


async def test_bad_input_is_a_problem_and_writes_nothing(reform):
    _, client, dsn = reform
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        before = await pool.fetchval("SELECT count(*) FROM outbox")
        for path, body in (
            ("/v1/units", {"name": "x", "kind": "nope"}),
            ("/v1/units", {"name": "x", "kind": "party", "liaison_phone": "12"}),
            ("/v1/years", {"year": 1999}),
            (
                "/v1/tasks",
                {"year": 2096, "number": 0, "title": "x", "lead_unit_id": str(uuid.uuid4()), "deadline": "2096-01-01"},
            ),
            (
                "/v1/tasks",
                {"year": 2096, "number": 1, "title": "x", "lead_unit_id": str(uuid.uuid4()), "deadline": "2096-01-01"},
            ),
            ("/v1/pilots", {"year": 2021, "kind": "city", "mode": "x", "name": "y", "region_code": "999999"}),
        ):
            resp = await client.post(path, json=body, headers=key())
            assert 400 <= resp.status_code < 500 and resp.headers["content-type"].startswith(PROBLEM), (path, resp.text)
        for path in ("/v1/tasks/not-a-uuid", "/v1/tasks?cursor=%%%", "/v1/years/99999/report"):
            resp = await client.get(path)
            assert 400 <= resp.status_code < 500, (path, resp.text)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == before


async def test_a_repeated_request_with_the_same_key_answers_the_first_answer(reform):
    _, client, _ = reform
    headers = {**OFFICE, "Idempotency-Key": uuid.uuid4().hex}
    body = {"name": f"单位{uuid.uuid4().hex[:6]}", "kind": "mass_organisation"}
    first = await client.post("/v1/units", json=body, headers=headers)
    again = await client.post("/v1/units", json=body, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert again.headers.get("idempotent-replayed") == "true"
