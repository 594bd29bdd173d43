"""Issue 12 for membership: ID numbers that cannot be rebuilt, audited and rate-limited lookups, no leak
across cities, no parent in another city, CSV export that cannot run formulas, a charset refused."""
import csv
import io
import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from shared import migrate
from tests.integration.membership.membership_support import (
    auth,
    id_number,
    outbox_events,
    phone,
    running,
    unique_id_number,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
SHIZUISHAN = auth(region="640200", subject="shizuishan-clerk")


async def fetch(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_the_full_number_cannot_be_rebuilt_from_answers_or_clear_columns(membership):
    b = await membership.branch("640106")
    number = unique_id_number("640106")
    m = (await membership.member(b["id"], number=number))
    assert m["id_number_masked"] == "*" * 14 + number[-4:], "the last four only"
    assert number[:6] not in m["id_number_masked"] and number[6:14] not in str(m)
    assert "birth_date" not in m and m["birth_year"] == int(number[6:10])
    assert m["home_region_code"] == number[:4] + "00", "home region shown to the prefecture only"
    [row] = await fetch(membership.dsn, "SELECT * FROM members WHERE id = $1", uuid.UUID(m["id"]))
    assert "birth_date" not in set(row.keys())
    clear = " ".join(str(v) for k, v in row.items() if not isinstance(v, bytes))
    assert number[6:14] not in clear and number[:6] not in clear.replace(number[:4] + "00", "")
    # The recipe of issue 12 (and any variant on the clear columns) rebuilds nothing.
    rebuilt = await fetch(membership.dsn, "SELECT left(id_masked, 6) || birth_year::text || right(id_masked, 4) AS n, "
                                          "home_region_code || birth_year::text AS p FROM members")
    assert not any(number in (r["n"] or "") or number[:10] == (r["p"] or "") for r in rebuilt)


async def test_migration_rewrites_existing_rows(make_database, tmp_path, monkeypatch):
    # A database as it was before 0003 (migrations 0001-0002), with a member stored the old way.
    old = tmp_path / "membership"
    old.mkdir()
    for name in ("0001_branches.sql", "0002_members.sql"):
        shutil.copy(ROOT / "services/membership/migrations" / name, old / name)
    dsn = await make_database("membership_plain")  # shared migrations only
    monkeypatch.setattr(migrate, "migration_dirs", lambda service: [("membership", old)])
    await migrate.apply(dsn, "membership")
    monkeypatch.undo()
    number = id_number("640104")
    conn = await asyncpg.connect(dsn)
    try:
        bid, mid = uuid.uuid4(), uuid.uuid4()
        await conn.execute("INSERT INTO branches (id, name, credit_code, region_code, industry_section, kind, "
                           "founded_on) VALUES ($1, 'b', 'c', '640104', 'C', 'enterprise', '2020-01-01')", bid)
        await conn.execute(
            "INSERT INTO members (id, branch_id, name, id_hash, id_cipher, id_masked, birth_date, sex, "
            "home_region_code, employment_form, joined_on) VALUES ($1, $2, 'x', '\\x01', '\\x01', $3, '1990-03-07', "
            "'male', '640104', 'standard', '2021-01-01')", mid, bid, number[:6] + "********" + number[-4:])
        applied = await migrate.apply(conn, "membership")
        assert applied[0] == "membership/0003_unrebuildable_id_numbers.sql"  # then any later ones
        row = await conn.fetchrow("SELECT * FROM members WHERE id = $1", mid)
    finally:
        await conn.close()
    assert row["id_masked"] == "*" * 14 + number[-4:]
    assert (row["birth_year"], row["home_region_code"]) == (1990, "640100")
    assert "birth_date" not in set(row.keys())


async def test_lookup_is_audited_and_rate_limited(stack, make_database):
    async with running(stack, make_database, lookup_rate_per_minute=3) as membership:
        b = await membership.branch("640105")
        number = unique_id_number("640105")
        m = await membership.member(b["id"], number=number)
        c = membership.client
        looker = auth(["membership:read"], subject="clerk-a")
        answers = [await c.post("/v1/members:lookup", json={"id_number": n}, headers=looker)
                   for n in (number, unique_id_number(), number)]
        assert [a.status_code for a in answers] == [200, 404, 200]
        refused = await c.post("/v1/members:lookup", json={"id_number": number}, headers=looker)
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 and number not in refused.text
        other = await c.post("/v1/members:lookup", json={"id_number": number},
                             headers=auth(["membership:read"], subject="clerk-b"))
        assert other.status_code == 200, "the limit is per caller"
        assert (await c.get("/v1/lookups", headers=looker)).status_code == 403, "the audit needs membership:audit"
        audit = (await c.get("/v1/lookups", params={"subject": "clerk-a"},
                             headers=auth(["membership:audit"]))).json()
        got = [(a["by"], a["outcome"], a["member_id"]) for a in audit["items"]]
        assert got == [("clerk-a", "found", m["id"]), ("clerk-a", "not_found", None), ("clerk-a", "found", m["id"]),
                       ("clerk-a", "rate_limited", None)]
        assert all(a["trace_id"] and a["looked_up_at"] for a in audit["items"]) and "next_cursor" in audit
        assert number not in str(audit)


async def test_a_member_elsewhere_is_said_without_identifiers(membership):
    yinchuan, shizuishan = await membership.branch("640104"), await membership.branch("640202")
    number = unique_id_number("640104")
    await membership.member(yinchuan["id"], number=number)
    r = await membership.join(shizuishan["id"], number, headers=SHIZUISHAN)
    assert r.status_code == 409 and r.json()["type"].endswith("already-a-member-elsewhere")
    assert "member_id" not in r.json() and "branch_id" not in r.json() and yinchuan["id"] not in r.text
    in_scope = await membership.join(yinchuan["id"], number)
    assert in_scope.status_code == 409 and in_scope.json()["member_id"], "in scope the answer names the member"
    data = f"name,id_number\n王一,{number}\n".encode()
    r = await membership.client.post("/v1/members:import", content=data, params={"branch_id": shizuishan["id"]},
                                     headers={**SHIZUISHAN, "Content-Type": "text/csv"})
    assert r.status_code == 201 and r.json()["rows"]["already_members"] == 1
    report = (await membership.client.get(f"/v1/imports/{r.json()['id']}", headers=SHIZUISHAN)).json()
    [row] = report["report"]["items"]
    assert row["outcome"] == "already_member" and row["member_id"] is None and "elsewhere" in row["reason"]
    assert yinchuan["id"] not in str(report)


async def test_parent_in_another_city_is_refused(membership):
    child, foreign = await membership.branch("640202"), await membership.branch("640104")
    r = await membership.client.patch(f"/v1/branches/{child['id']}", json={"parent_id": foreign["id"]},
                                      headers=SHIZUISHAN)
    assert r.status_code == 403, r.text
    r = await membership.client.post("/v1/branches", headers=SHIZUISHAN, json={
        "name": "大武口区分会", "credit_code": __import__("tests.integration.membership.membership_support",
                                                         fromlist=["credit_code"]).credit_code("640202"),
        "region_code": "640202", "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01",
        "parent_id": foreign["id"]})
    assert r.status_code == 403, r.text
    r = await membership.client.post("/v1/branches", headers=auth(region="640100"), json={
        "name": "另一个工会", "credit_code": child["credit_code"], "region_code": "640104", "industry_section": "C",
        "kind": "enterprise", "founded_on": "2021-03-01"})
    assert r.status_code == 409 and "branch_id" not in r.json() and child["id"] not in r.text, "no id across cities"
    same_city = await membership.branch("640205")
    r = await membership.client.patch(f"/v1/branches/{child['id']}", json={"parent_id": same_city["id"]},
                                      headers=SHIZUISHAN)
    assert r.status_code == 200 and r.json()["parent_id"] == same_city["id"]


async def test_csv_export_neutralises_formulas(membership):
    b = await membership.branch("640423")
    names = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "正常"]  # (tab and CR: see the unit test)
    for name in names:
        await membership.member(b["id"], name=name)
    r = await membership.client.get("/v1/members:export", params={"branch_id": b["id"]}, headers=auth())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert sorted(row["name"] for row in rows) == sorted("'" + n if n[0] in "=+-@\t" else n for n in names)
    assert all(row["id_number_masked"].startswith("*" * 14) for row in rows)
    [stored] = await fetch(membership.dsn, "SELECT count(*) AS n FROM members WHERE name = ANY($1::text[])", names)
    assert stored["n"] == len(names), "stored as given"


async def test_unsupported_charset_is_refused_and_no_import_is_left_running(membership):
    b = await membership.branch("640502")
    body = f"name,id_number\nJosé,{unique_id_number()}\n".encode("latin-1")
    for content_type in ("text/csv; charset=latin-1", "text/csv; charset=klingon"):
        r = await membership.client.post("/v1/members:import", content=body, params={"branch_id": b["id"]},
                                         headers={**auth(), "Content-Type": content_type})
        assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json", r.text
    running_ = await fetch(membership.dsn, "SELECT id FROM imports WHERE status = 'running'")
    assert running_ == []


async def test_transfer_reason_is_scrubbed_before_the_event(membership):
    a, z = await membership.branch("640181"), await membership.branch("640122")
    m = await membership.member(a["id"])
    mobile = phone()
    r = await membership.client.post(f"/v1/members/{m['id']}:transfer", headers=auth(),
                                     json={"to_branch_id": z["id"], "reason": f"本人电话 {mobile} 换工作"})
    assert r.status_code == 200, r.text
    [event] = [e for e in await outbox_events(membership.dsn, "changai.membership.member.transferred.v1")
               if e.subject == m["id"]]
    assert mobile not in event.data["reason"] and "换工作" in event.data["reason"]
    history = (await membership.client.get(f"/v1/members/{m['id']}/transfers", headers=auth())).json()
    assert mobile not in str(history)
