"""Bulk import: mixed good and bad rows reported row by row, idempotent, CSV (UTF-8/GB18030) and NDJSON."""
import asyncio
import base64
import hashlib
import uuid

import orjson
import pytest

from tests.integration.membership.membership_support import (
    auth,
    id_number,
    outbox_events,
    phone,
    running,
    unique_id_number,
)

pytestmark = pytest.mark.integration
JOINED = "changai.membership.member.joined.v1"


async def upload(membership, data: bytes, content_type="text/csv", chunk=97, params=None, headers=None):
    async def body():
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]
    return await membership.client.post("/v1/members:import", content=body(), params=params or {},
                                        headers={**auth(), "Content-Type": content_type, **(headers or {})})


async def report(membership, import_id, **params):
    return (await membership.client.get(f"/v1/imports/{import_id}", params={"limit": 1000, **params},
                                        headers=auth())).json()


async def test_mixed_rows_reported_and_second_upload_changes_nothing(membership):
    b = await membership.branch("640205")
    other_city = await membership.branch("640104")
    existing_number = unique_id_number("640205")
    existing = await membership.member(b["id"], number=existing_number)
    good = [unique_id_number("640205") for _ in range(4)]
    bad_check = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    rows = [
        f"王一,{good[0]},{phone()},courier,快递员,5,,2021-03-02",                   # 1 accepted
        f"王二,{bad_check},,,,,,",                                                  # 2 check digit
        f"王三,{good[1]},12345,,,,,",                                               # 3 phone
        f",{good[2]},,,,,,",                                                        # 4 name missing
        f"王五,{existing_number},,,,,,",                                            # 5 already a member
        f"王六,{good[3]},{phone()},外卖骑手,,初级工,,2021年4月5日",                   # 6 accepted
        f"王七,{good[3]},,,,,,",                                                    # 7 same person as row 6
        f"王八,{unique_id_number()},,,,,{other_city['id']},",                       # 8 branch out of scope
        f"王九,{unique_id_number()},,,,,{uuid.uuid4()},",                           # 9 no such branch
        f"\"王,十\",{unique_id_number('640205')},,ride_hailing,司机,9,,,\"备注\n第二行\"",  # 10 skill level
        f"王十一,{id_number('640205', born=__import__('datetime').date(2012, 1, 1))},,,,,,",  # 11 too young
    ]
    csv = ("姓名,身份证号,手机号,就业形态,工种,技能等级,branch_id,入会日期,备注\n" + "\n".join(rows) + "\n").encode("gb18030")
    r = await upload(membership, csv, params={"branch_id": b["id"]}, headers=auth(region="640200"))
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["status"] == "completed" and summary["encoding"] == "gb18030"
    assert summary["rows"] == {"total": 11, "accepted": 2, "rejected": 7, "already_members": 2}
    assert summary["ignored_columns"] == ["备注"]
    detail = await report(membership, summary["id"])
    by_row = {i["row"]: i for i in detail["report"]["items"]}
    assert sorted(by_row) == list(range(1, 12))
    expect = {1: ("accepted", None), 2: ("rejected", "id_number"), 3: ("rejected", "phone"), 4: ("rejected", "name"),
              5: ("already_member", "id_number"), 6: ("accepted", None), 7: ("already_member", "id_number"),
              8: ("rejected", "branch_id"), 9: ("rejected", "branch_id"), 10: ("rejected", "skill_level"),
              11: ("rejected", "id_number")}
    assert {row: (i["outcome"], i.get("field")) for row, i in by_row.items()} == expect
    assert by_row[5]["member_id"] == existing["id"]
    assert by_row[7]["member_id"] == by_row[6]["member_id"] and "row 6" in by_row[7]["reason"]
    assert "check digit" in by_row[2]["reason"] and "at least 16" in by_row[11]["reason"]
    text = orjson.dumps(detail).decode()
    assert not any(n in text for n in good + [bad_check, existing_number])
    rejected_only = await report(membership, summary["id"], outcome="rejected", limit=3)
    assert [i["row"] for i in rejected_only["report"]["items"]] == [2, 3, 4] and rejected_only["report"]["next_cursor"]
    accepted = [by_row[1]["member_id"], by_row[6]["member_id"]]
    m6 = (await membership.client.get(f"/v1/members/{accepted[1]}", headers=auth())).json()
    assert (m6["employment_form"], m6["skill_level"], m6["joined_on"]) == ("food_delivery", 5, "2021-04-05")
    events = [e for e in await outbox_events(membership.dsn, JOINED) if e.subject in accepted]
    assert sorted(e.subject for e in events) == sorted(accepted)
    assert all(e.data["branch_id"] == b["id"] and e.data["city_code"] == "640200" for e in events)
    assert all(e.data["import_id"] == summary["id"] for e in events), "the notifier tells an import as one digest"

    again = await upload(membership, csv, chunk=4096, params={"branch_id": b["id"]}, headers=auth(region="640200"))
    assert again.status_code == 201
    assert again.json()["rows"] == {"total": 11, "accepted": 0, "rejected": 7, "already_members": 4}
    assert again.json()["duplicate_of"] == summary["id"] and again.json()["sha256"] == summary["sha256"]
    events_after = [e for e in await outbox_events(membership.dsn, JOINED) if e.subject in accepted]
    assert len(events_after) == 2, "the second upload emitted nothing"
    listed = (await membership.client.get("/v1/imports", headers=auth(region="640200"))).json()["items"]
    assert [i["id"] for i in listed[:2]] == [again.json()["id"], summary["id"]]
    assert (await membership.client.get(f"/v1/imports/{summary['id']}",
                                        headers=auth(region="640500", subject="someone-else"))).status_code == 404


async def test_ndjson_with_bom_and_content_digest_shortcut(membership):
    b = await membership.branch("640521")
    numbers = [unique_id_number("640521") for _ in range(30)]
    lines = [orjson.dumps({"name": f"赵{i}", "id_number": n, "skill_level": 3, "branch_id": b["id"],
                           "employment_form": "truck_driver"}) for i, n in enumerate(numbers)]
    lines.insert(5, b"[1, 2]")
    lines.insert(7, b'{"name": 42, "id_number": "x"}')
    lines.insert(9, b"not json")
    data = b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n\n"
    digest = {"Content-Digest": "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"}
    r = await upload(membership, data, content_type="application/x-ndjson", chunk=50, headers=digest)
    assert r.status_code == 201 and r.json()["rows"] == {"total": 33, "accepted": 30, "rejected": 3,
                                                           "already_members": 0}
    bad = {i["row"]: i for i in (await report(membership, r.json()["id"], outcome="rejected"))["report"]["items"]}
    assert bad[6]["field"] == "<row>" and bad[8]["field"] == "name" and bad[10]["field"] == "<row>"
    # 3 rejected rows: the digest shortcut does not apply (they may be fixed by now), the import runs again
    again = await upload(membership, data, content_type="application/x-ndjson", headers=digest)
    assert again.status_code == 201 and again.json()["rows"]["already_members"] == 30

    clean = b"\n".join(lines[:5]) + b"\n"
    clean_digest = {"Content-Digest": "sha-256=:" + base64.b64encode(hashlib.sha256(clean).digest()).decode() + ":"}
    first = await upload(membership, clean, content_type="application/x-ndjson")
    assert first.status_code == 201 and first.json()["rows"]["already_members"] == 5
    before = len((await membership.client.get("/v1/imports", headers=auth())).json()["items"])
    short = await upload(membership, clean, content_type="application/x-ndjson", headers=clean_digest)
    assert short.status_code == 200, "a file already imported without rejections is not read again"
    assert short.json()["id"] == first.json()["id"]
    assert short.headers["content-location"] == f"/v1/imports/{first.json()['id']}"
    assert len((await membership.client.get("/v1/imports", headers=auth())).json()["items"]) == before


async def test_import_refusals(membership):
    b = await membership.branch("640522")
    r = await upload(membership, b"name,phone\n\xe5\xbc\xa0,13912345678\n", params={"branch_id": b["id"]})
    assert r.status_code == 422 and "id_number" in r.json()["detail"] and r.json()["import"]["status"] == "failed"
    assert (await upload(membership, b"x", content_type="application/pdf")).status_code == 415
    r = await upload(membership, b"", params={"branch_id": b["id"]})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = await upload(membership, "name,id_number\n张三,1\n".encode("utf-16"), params={"branch_id": b["id"]})
    assert r.status_code == 422 and "UTF-16" in r.json()["detail"]
    r = await upload(membership, b"name,id_number\n", params={"branch_id": str(uuid.uuid4())})
    assert r.status_code == 422
    r = await upload(membership, b"name,id_number\n", params={"branch_id": b["id"]}, headers=auth(region="640100"))
    assert r.status_code == 403
    r = await upload(membership, b"name,id_number\n", headers=auth(["membership:read"]))
    assert r.status_code == 403
    r = await upload(membership, f"name,id_number\n张三,{unique_id_number()}\n".encode())
    assert r.status_code == 201 and r.json()["rows"]["rejected"] == 1, "no branch: the row says so"
    assert r.json()["bytes_expected"] is None and r.json()["progress"] == 1.0  # streamed without a length
    body = f"name,id_number\n张三,{unique_id_number()}\n".encode()
    r = await membership.client.post("/v1/members:import", content=body, params={"branch_id": b["id"]},
                                     headers={**auth(), "Content-Type": "text/csv"})
    assert r.json()["bytes_expected"] == r.json()["bytes"] == len(body) and r.json()["progress"] == 1.0
    assert (await membership.client.get(f"/v1/imports/{uuid.uuid4()}", headers=auth())).status_code == 404


async def test_concurrent_uploads_of_one_file_make_each_member_once(stack, make_database):
    async with running(stack, make_database, import_batch_rows=40) as membership:  # many batches, interleaved
        await _concurrent_uploads(membership)


async def _concurrent_uploads(membership):
    b = await membership.branch("640424")
    numbers = [unique_id_number("640424") for _ in range(300)]
    data = ("name,id_number\n" + "".join(f"孙{i},{n}\n" for i, n in enumerate(numbers))).encode()
    first, second = await asyncio.gather(*(upload(membership, data, chunk=1000, params={"branch_id": b["id"]})
                                           for _ in range(2)))
    rows = [first.json()["rows"], second.json()["rows"]]
    assert sum(r["accepted"] for r in rows) == 300 and sum(r["already_members"] for r in rows) == 300
    events = [e for e in await outbox_events(membership.dsn, JOINED) if e.data["branch_id"] == b["id"]]
    assert len(events) == 300 and len({e.subject for e in events}) == 300
