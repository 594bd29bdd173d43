"""Article-replay steps of the membership service (工会会员与组织), added to ``demo.STEPS``.

* ``members``: new-form workers (a courier, a ride-hailing driver, a truck driver, a food-delivery
  rider) join the first demo branch; ID numbers and phones come back masked; the same person
  again is refused with the existing member's id.
* ``orgs``: the 658 union organisations founded in 2021 (docs/domain.md), across the 22 counties, with
  new-form-worker branches among them (the three of the ``branches`` step count).
* ``import``: the 65,585 members who joined in 2021, as one CSV streamed to ``POST /v1/members:import``;
  the same file again with its Content-Digest (nothing to do); a small file with bad rows and its
  per-row report.
* ``stations``: the 100 outdoor-worker service stations (户外劳动者服务站点), listed by city.
* ``moves``: a transfer (转会) with its history, and a branch merged into another, its members moving.
* ``reveal``: the full ID number needs its own permission, and the reveal is in the audit.
* ``earlier`` (``CHANGAI_DEMO_SCALE=full`` only, after the training rosters): the members who joined
  before 2021, in branches founded before 2021, one more bulk import, ~450,000 members in all.

Every write's Idempotency-Key and body come from what it is (``demo_replay``): a re-run creates nothing,
and the import files are the same bytes, so their rows come back "already a member".
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import sys
import time
from datetime import date, timedelta
from typing import Any

from demo_replay import key, seeded

ORGS_2021 = 658  # the report's figures; the demo's scale (demo_replay.Scale) says how many it replays
MEMBERS_2021 = 65_585
STATIONS = 100
STATE: dict[str, Any] = {}
FORMS = (("courier", "快递员"), ("ride_hailing", "网约车司机"), ("truck_driver", "货车司机"), ("food_delivery", "外卖骑手"))
SURNAMES = "马杨王李张刘丁田白海金何周吴郑孙"
GIVEN = ("建国", "春燕", "学军", "玉兰", "志强", "海燕", "文博", "小龙", "红梅", "国庆", "丽娜", "振华", "伟", "芳", "强")
INDUSTRIES = ("A", "C", "C", "C", "D", "E", "F", "G", "G", "H", "I", "R")


def _skip(demo, reason: str) -> Exception:
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return demo.config.membership_url


def _auth(scopes=("membership:write", "membership:read"), subject="article-replay") -> dict:
    from shared.auth import mint_token
    return {"Authorization": "Bearer " + mint_token(subject, list(scopes), "640000")}


def _id_number(county: str, rng: random.Random, seq_floor: int = 0) -> str:
    from shared.identifiers import id_check_char
    born = date(1966, 1, 1) + timedelta(days=rng.randrange(365 * 36))
    first17 = f"{county}{born:%Y%m%d}{rng.randrange(seq_floor, 1000):03d}"
    return first17 + id_check_char(first17)


def _phone(rng: random.Random) -> str:
    return f"1{rng.choice('3578')}{rng.randrange(10**9):09d}"


def _credit_code(region: str, rng: random.Random) -> str:
    from shared.identifiers import uscc_check_char
    first17 = "91" + region + "".join(rng.choice("0123456789ABCDEFGH") for _ in range(9))
    return first17 + uscc_check_char(first17)


async def _post(demo, step: str, path: str, body: dict, idem: str, want=(200, 201), headers=None) -> dict:
    response = await demo.client.post(f"{_url(demo)}{path}", json=body,
                                      headers={**(headers or _auth()), "Idempotency-Key": idem})
    if response.status_code not in want:
        demo.failures += 1
        demo.row(step, f"POST {path}"[:46], f"{response.status_code} {response.text[:100]}")
        raise _skip(demo, f"{path} answered {response.status_code}")
    return response.json()


async def step_members(demo) -> None:
    if not demo.branches:
        raise _skip(demo, "no branch created")
    rng = seeded("members")
    branch = demo.branches[0]
    joined, numbers = [], []
    for form, label in FORMS:
        numbers.append(_id_number(branch["region_code"], rng))
        m = await _post(demo, "members", "/v1/members", {
            "branch_id": branch["id"], "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
            "id_number": numbers[-1], "phone": _phone(rng), "employment_form": form,
            "occupation": label, "skill_level": 5, "joined_on": "2021-04-01"}, key("member", form))
        joined.append(m)
        demo.row("members", f"{label} joined {branch['region_code']}",
                 f"201 {m['id_number_masked']} {m['phone_masked']}")
    STATE["members"] = joined
    # The same person (same ID number) once more: one person is one member.
    again = await demo.client.post(f"{_url(demo)}/v1/members", headers=_auth(), json={
        "branch_id": demo.branches[-1]["id"], "name": "重复入会", "id_number": numbers[0]})
    same = again.status_code == 409 and again.json().get("member_id") == joined[0]["id"]
    if not same:
        demo.failures += 1
    demo.row("members", "same ID number again, another branch",
             f"{again.status_code} already a member {again.json().get('member_id', '?')[:8]}…" if same
             else f"{again.status_code} {again.text[:80]}")


async def step_orgs(demo) -> None:
    if not demo.branches:
        raise _skip(demo, "no branch created")
    from shared import regions
    scale = demo.config.scale
    counties = [r.code for r in regions.COUNTIES]
    todo = scale.orgs_2021 - len(demo.branches)
    started = time.monotonic()
    gate = asyncio.Semaphore(8)

    def body(i: int) -> dict:  # from a generator of its own: the same body whatever order the writes go in
        rng = seeded("org", i)
        county = counties[i % len(counties)]
        kind = "new_form" if i % 9 == 0 else ("joint" if i % 7 == 0 else "enterprise")
        name = (f"{regions.get(county).name}新就业形态工会联合会{i}" if kind == "new_form"
                else f"{regions.get(county).name}第{i}家企业工会")
        return {"name": name, "credit_code": _credit_code(county, rng), "region_code": county,
                "industry_section": rng.choice(INDUSTRIES), "kind": kind,
                "founded_on": (date(2021, 1, 4) + timedelta(days=rng.randrange(230))).isoformat()}

    async def one(i: int) -> dict:
        async with gate:
            return await _post(demo, "orgs", "/v1/branches", body(i), key("org", i))

    made = list(await asyncio.gather(*(one(i) for i in range(todo))))  # in order: the import picks from it
    STATE["orgs"] = made
    by_city: dict[str, int] = {}
    for b in made + demo.branches:
        by_city[b["city_code"]] = by_city.get(b["city_code"], 0) + 1
    demo.row("orgs", f"{len(made) + len(demo.branches)} branches founded in 2021 (report: {ORGS_2021:,})",
             f"{time.monotonic() - started:.1f} s over HTTP")
    demo.row("orgs", "by city", ", ".join(f"{regions.get(c).name} {n}" for c, n in sorted(by_city.items())))
    new_form = sum(1 for b in made if b["kind"] == "new_form")
    demo.row("orgs", "new-form-worker branches (新就业形态)", str(new_form))
    if scale.earlier_branches:  # full scale: the branches the 2021 ones join (founded 1995-2020)
        started = time.monotonic()

        def earlier(i: int) -> dict:
            rng = seeded("earlier-branch", i)
            county = counties[i % len(counties)]
            return {"name": f"{regions.get(county).name}第{i}家老企业工会", "credit_code": _credit_code(county, rng),
                    "region_code": county, "industry_section": rng.choice(INDUSTRIES), "kind": "enterprise",
                    "founded_on": (date(1995, 1, 2) + timedelta(days=rng.randrange(9490))).isoformat()}

        async def old(i: int) -> dict:
            async with gate:
                return await _post(demo, "orgs", "/v1/branches", earlier(i), key("earlier-branch", i))

        STATE["earlier"] = list(await asyncio.gather(*(old(i) for i in range(scale.earlier_branches))))
        demo.row("orgs", f"{scale.earlier_branches} branches founded before 2021", f"{time.monotonic() - started:.1f} s")


async def _stream(data: bytes, chunk: int = 256 * 1024):
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def _import_file(branches: list[dict], count: int, rng: random.Random, first: date, days: int) -> bytes:
    """``count`` members joining ``branches`` between ``first`` and ``first + days``, as a GB18030 CSV. Drawn
    from ``rng`` (seeded) in order: the same bytes on every run, so a re-run's rows are "already a member"."""
    lines = ["姓名,身份证号,手机号,就业形态,工种,技能等级,branch_id,入会日期"]
    forms = ["standard"] * 6 + [f for f, _ in FORMS]
    seen: set[str] = set()
    while len(lines) <= count:
        b = branches[rng.randrange(len(branches))]
        number = _id_number(b["region_code"], rng)
        if number in seen:
            continue
        seen.add(number)
        skill = rng.choice(("", "", "", "5", "4", "3", "2", "1"))
        joined = first + timedelta(days=rng.randrange(days))
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        try:  # a member is at least 16 on the day of joining
            sixteen = born.replace(year=born.year + 16)
        except ValueError:  # born on 29 February
            sixteen = date(born.year + 16, 3, 1)
        joined = max(joined, date.fromisoformat(b["founded_on"]), sixteen)
        lines.append(f"{rng.choice(SURNAMES)}{rng.choice(GIVEN)},{number},{_phone(rng)},{rng.choice(forms)},,"
                     f"{skill},{b['id']},{joined.isoformat()}")
    return ("\n".join(lines) + "\n").encode("gb18030")  # as Excel exports it in China


async def _import(demo, step: str, data: bytes, what: str, count: int) -> dict:
    started = time.monotonic()
    response = await demo.client.post(f"{_url(demo)}/v1/members:import", content=_stream(data), timeout=900,
                                      headers={**_auth(), "Content-Type": "text/csv"})
    if response.status_code != 201:
        demo.failures += 1
        demo.row(step, "POST /v1/members:import", f"{response.status_code} {response.text[:100]}")
        raise _skip(demo, "import failed")
    report = response.json()
    rows = report["rows"]
    demo.row(step, f"{what}, GB18030 CSV ({len(data) / 2**20:.1f} MiB)",
             f"{rows['accepted']:,} accepted, {rows['already_members']:,} already members, "
             f"{rows['rejected']} rejected in {time.monotonic() - started:.1f} s")
    if rows["accepted"] + rows["already_members"] != count:
        demo.failures += 1
    return report


async def step_import(demo) -> None:
    orgs = STATE.get("orgs") or []
    if len(orgs) < 2:
        raise _skip(demo, "no branches from the orgs step")
    count = demo.config.scale.members_2021
    # Not into orgs[-1]: the moves step merges it away, and a re-run's rows would name a merged branch.
    data = _import_file(orgs[:-1], count, seeded("import-2021", count), date(2021, 1, 4), 230)
    report = await _import(demo, "import", data, f"{count:,} members of 2021", count)
    STATE["import_2021"] = report["id"]
    rng = seeded("import-mistakes")
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    started = time.monotonic()
    again = await demo.client.post(f"{_url(demo)}/v1/members:import", content=_stream(data), timeout=300,
                                   headers={**_auth(), "Content-Type": "text/csv", "Content-Digest": digest})
    demo.row("import", "the same file again (Content-Digest)",
             f"{again.status_code} = import {again.json().get('id', '?')[:8]}…, nothing changed "
             f"({time.monotonic() - started:.2f} s)")
    # A small upload with mistakes: each row is answered (again on a re-run: the good row is then a member).
    county = orgs[0]["region_code"]
    good = _id_number(county, rng)
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    small = (f"name,id_number,phone,employment_form\n王小五,{good},{_phone(rng)},courier\n"
             f"李小六,{bad},,courier\n赵小七,{_id_number(county, rng)},12345,courier\n"
             f"马小八,{good},,astronaut\n").encode()
    mixed = await demo.client.post(f"{_url(demo)}/v1/members:import", content=small,
                                   params={"branch_id": orgs[0]["id"]}, headers={**_auth(), "Content-Type": "text/csv"})
    detail = (await demo.client.get(f"{_url(demo)}/v1/imports/{mixed.json()['id']}", headers=_auth())).json()
    for item in detail["report"]["items"]:
        why = f"{item['field']}: {item['reason']}" if item["outcome"] != "accepted" else item["member_id"][:8] + "…"
        demo.row("import", f"row {item['row']}: {item['outcome']}", why[:70])


async def step_stations(demo) -> None:
    orgs = STATE.get("orgs") or []
    if not orgs:
        raise _skip(demo, "no branches from the orgs step")
    from shared import regions
    new_form = [b for b in orgs if b["kind"] == "new_form"] or orgs
    services = ["饮水", "休息", "充电", "加热", "如厕", "医药箱", "法律咨询"]
    gate = asyncio.Semaphore(8)
    stations = demo.config.scale.stations

    async def one(i: int) -> None:
        b = new_form[i % len(new_form)]
        rng = seeded("station", i)
        body = {"name": f"{regions.get(b['region_code']).name}户外劳动者服务站{i + 1}号", "branch_id": b["id"],
                "region_code": b["region_code"], "services": rng.sample(services, 4),
                "opened_on": (date(2021, 5, 1) + timedelta(days=rng.randrange(120))).isoformat()}
        async with gate:
            await _post(demo, "stations", "/v1/stations", body, key("station", i))

    await asyncio.gather(*(one(i) for i in range(stations)))
    counts = []
    for city in regions.CITIES:
        total, cursor = 0, None
        while True:
            page = (await demo.client.get(f"{_url(demo)}/v1/stations", headers=_auth(), params={
                "region": city.code, "status": "open", "limit": 200, **({"cursor": cursor} if cursor else {})})).json()
            total += len(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        counts.append(f"{city.name} {total}")
    demo.row("stations", f"{stations} outdoor-worker stations opened", "; ".join(counts)[:90])


async def step_moves(demo) -> None:
    members = STATE.get("members") or []
    orgs = STATE.get("orgs") or []
    if not members or len(orgs) < 2:
        raise _skip(demo, "no members or branches from earlier steps")
    target = orgs[0]
    moved = await _post(demo, "moves", f"/v1/members/{members[1]['id']}:transfer",
                        {"to_branch_id": target["id"], "reason": "跳槽到新单位"}, key("transfer", members[1]["id"]))
    history = (await demo.client.get(f"{_url(demo)}/v1/members/{moved['id']}/transfers", headers=_auth())).json()
    demo.row("moves", f"transfer {moved['id'][:8]}… → {target['region_code']}",
             f"200; history: {len(history['items'])} transfer(s)")
    source, into = orgs[-1], orgs[-2]
    rng = seeded("merge-members")
    for i in range(3):
        await _post(demo, "moves", "/v1/members", {
            "branch_id": source["id"], "name": f"合并演示{i}", "employment_form": "courier",
            "id_number": _id_number(source["region_code"], rng)}, key("merge-member", i))
    merged = await _post(demo, "moves", f"/v1/branches/{source['id']}:merge", {"into_branch_id": into["id"]},
                         key("merge", source["id"]))
    count = (await demo.client.get(f"{_url(demo)}/v1/branches/{into['id']}", headers=_auth())).json()["member_count"]
    demo.row("moves", f"merge {source['name'][:14]} → {into['name'][:14]}",
             f"{merged['status']}, {merged['members_moved']} members moved (now {count})")


async def step_reveal(demo) -> None:
    members = STATE.get("members") or []
    if not members:
        raise _skip(demo, "no members")
    m = members[2]
    refused = await demo.client.post(f"{_url(demo)}/v1/members/{m['id']}:reveal", json={"reason": "核对身份"},
                                     headers=_auth())
    demo.row("reveal", "without membership:reveal", f"{refused.status_code} {refused.json().get('title', '')}"[:60])
    # A reveal is audited every time (no Idempotency-Key replays it: a stored answer would keep the clear number),
    # so a re-run reveals only if the audit trail does not already hold the demo's reveal.
    reason = "法律援助：核对身份"
    audit = (await demo.client.get(f"{_url(demo)}/v1/members/{m['id']}/reveals",
                                   headers=_auth(["membership:audit"]))).json()["items"]
    if any(a["by"] == "legal-aid-officer" and a["reason"] == reason for a in audit):
        demo.row("reveal", "with membership:reveal", "revealed in an earlier run: not again (the audit has it)")
        demo.row("reveal", "audit trail", "; ".join(f"{a['by']}: {a['reason']}" for a in audit)[:80])
        return
    shown = await _post(demo, "reveal", f"/v1/members/{m['id']}:reveal", {"reason": reason},
                        key("reveal", m["id"]), headers=_auth(["membership:reveal"], subject="legal-aid-officer"))
    demo.row("reveal", "with membership:reveal (a reason is required)",
             f"200, audit {shown['audit_id'][:8]}… (number not shown here)")
    audit = (await demo.client.get(f"{_url(demo)}/v1/members/{m['id']}/reveals",
                                   headers=_auth(["membership:audit"]))).json()["items"]
    demo.row("reveal", "audit trail", "; ".join(f"{a['by']}: {a['reason']}" for a in audit)[:80])


async def step_earlier(demo) -> None:
    """Full scale: the members who joined before 2021 (~450,000 in all with 2021's), in the earlier branches."""
    scale = demo.config.scale
    earlier = STATE.get("earlier") or []
    if not scale.earlier_members:
        raise _skip(demo, f"scale {scale.name!r} has no earlier members (CHANGAI_DEMO_SCALE=full has)")
    if not earlier:
        raise _skip(demo, "no earlier branches from the orgs step")
    started = time.monotonic()
    data = _import_file(earlier, scale.earlier_members, seeded("import-earlier", scale.earlier_members),
                        date(2000, 1, 3), 7660)
    demo.row("earlier", "file generated (seeded: the same bytes every run)", f"{time.monotonic() - started:.1f} s")
    await _import(demo, "earlier", data, f"{scale.earlier_members:,} members who joined before 2021",
                  scale.earlier_members)


STEPS = [
    ("members", step_members),
    ("orgs", step_orgs),
    ("import", step_import),
    ("stations", step_stations),
    ("moves", step_moves),
    ("reveal", step_reveal),
]
LATE_STEPS = [("earlier", step_earlier)]  # full scale: after the training rosters (whose members are of 2021)
