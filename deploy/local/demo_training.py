"""Article-replay steps of the training service (职业技能培训、竞赛、创新), added to ``demo.STEPS``.

* ``training``: workers join the demo's branches through membership; training learns them from
  ``membership.events``; one session (培训班) per branch: bulk enrolment (a non-member refused),
  start, attendance, results, completion (→ ``session.completed``, which funding pays from),
  certificates, and one certificate verified publicly by its serial.
* ``contests``: the 7 labour and 12 skills competitions of 2021 across the four tiers, with the
  branches' reported headcounts adding up to the report's 500,000 participants, the demo's members
  named in one, held, results with winners.
* ``studios``: the 2021 intake — 12 new innovation studios, 10 high-skill training bases and
  skill-master studios — recognised, one evaluated.
* ``summary``: the summary endpoint for Jan–Aug 2021, by city and subsidy category.
* ``rosters`` (``CHANGAI_DEMO_SCALE=full`` only, after funding's set-up so that the saga pays at once):
  the report's 134,000 subsidised person-times in 5,000 sessions of the 2021 branches, recorded and
  completed through the bulk roster path (``POST /v1/rosters``), the members those of the 2021 import.

Every write's Idempotency-Key and body come from what it is (``demo_replay``): a re-run creates nothing.
"""
from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from datetime import date, timedelta
from typing import Any

from demo_replay import NS, key, seeded

TRAINING_URL = os.environ.get("CHANGAI_DEMO_TRAINING_URL", "http://127.0.0.1:8002")
STATE: dict[str, Any] = {}

SURNAMES = "马杨王李张刘丁田白海金"
GIVEN = ("建国", "春燕", "学军", "玉兰", "志强", "海燕", "文博", "小龙", "红梅", "国庆", "丽娜", "振华")
# One programme per demo branch (docs/domain.md: the key industries): (name, occupation, level, provider kind, provider, category)
PROGRAMMES = (
    ("枸杞精深加工以工代训", "农产品食品检验员", 4, "enterprise", "宁夏枸杞产业集团有限公司", "pre_job"),
    ("新型材料化工操作技能提升", "化工总控工", 3, "technical_school", "石嘴山工贸职业技术学院", "skills_upgrade"),
    ("滩羊屠宰加工岗前培训", "畜禽屠宰加工工", 5, "vocational_college", "吴忠职业技术学院", "pre_job"),
)
LABOUR = ("5G网络建设", "银川河东机场三期扩建", "宁东能源化工基地", "黄河流域生态保护", "乌玛高速公路",
          "葡萄酒庄园建设", "清洁能源光伏电站")
SKILLS = (("葡萄酒", "酿酒师"), ("枸杞", "枸杞制干工"), ("奶产业", "乳品检验员"), ("肉牛和滩羊", "家畜繁殖员"),
          ("电子信息", "电子产品装配工"), ("新型材料", "化工总控工"), ("绿色食品", "食品检验员"), ("清洁能源", "光伏运维工"),
          ("文化旅游", "导游"), ("电子信息", "网络与信息安全管理员"), ("新型材料", "焊工"), ("清洁能源", "电工"))
TIERS = ("region", "city", "county", "enterprise")
PARTICIPANTS = 500_000  # "about 500,000 workers took part" (docs/domain.md)


def _skip(demo, reason: str) -> Exception:
    """demo.py's Skip, whether demo.py runs as a script (__main__) or was imported as `demo`."""
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return getattr(demo.config, "training_url", None) or TRAINING_URL


def id_number(region_code: str, rng: random.Random) -> str:
    """A valid resident ID number (GB 11643) for someone born 1970–2000 in ``region_code`` (demo data)."""
    from shared.identifiers import id_check_char
    first17 = (f"{region_code}{rng.randint(1970, 2000)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
               f"{rng.randint(0, 999):03d}")
    return first17 + id_check_char(first17)


async def _call(demo, step: str, method: str, url: str, headers: dict, body: dict | None = None,
                want: int | tuple = (200, 201), idem: str | None = None) -> dict:
    response = await demo.client.request(method, url, json=body,
                                         headers={**headers, **({"Idempotency-Key": idem} if idem else {})})
    wanted = want if isinstance(want, tuple) else (want,)
    if response.status_code not in wanted:
        demo.failures += 1
        demo.row(step, f"{method} {url.split('/v1', 1)[-1]}"[:46], f"{response.status_code} {response.text[:100]}")
        raise _skip(demo, f"{url} answered {response.status_code}")
    return response.json()


async def step_training(demo) -> None:
    runs = getattr(demo.config, "runs", None)
    if runs is not None and not runs("training"):
        raise _skip(demo, "training is not running")
    if not demo.branches:
        raise _skip(demo, "no branch created")
    from shared.auth import mint_token
    base = _url(demo)
    try:
        await demo.client.get(f"{base}/livez")
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"training not reachable at {base} ({exc.__class__.__name__})") from None
    started = time.monotonic()
    auth = {"Authorization": "Bearer " + mint_token("article-replay", ["training:write", "training:read"], "640000")}
    member_auth = {"Authorization": "Bearer " + mint_token("article-replay", ["membership:write", "membership:read"],
                                                           "640000")}
    STATE["auth"] = auth
    rng = seeded("training-members")

    # Workers join the demo's branches (membership); training learns them from membership.events.
    members: dict[str, list[str]] = {}
    for b, branch in enumerate(demo.branches):
        members[branch["id"]] = []
        for i in range(4):
            body = {"branch_id": branch["id"], "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
                    "id_number": id_number(branch["region_code"], rng), "occupation": PROGRAMMES[b % 3][1],
                    "skill_level": 5, "joined_on": "2021-03-15"}
            resp = await demo.client.post(f"{demo.config.membership_url}/v1/members", json=body,
                                          headers={**member_auth, "Idempotency-Key": key("training-member", b, i)})
            if resp.status_code != 201:
                raise _skip(demo, f"membership did not take members ({resp.status_code} {resp.text[:80]})")
            members[branch["id"]].append(resp.json()["id"])
    everyone = [m for ms in members.values() for m in ms]
    demo.row("training", f"{len(everyone)} workers joined {len(demo.branches)} branches", "via membership")
    # The read model follows membership.events in order: the 65,585 imported members come first.
    deadline = time.monotonic() + 180
    pending = set(everyone)
    while pending and time.monotonic() < deadline:
        for m in list(pending):
            if (await demo.client.get(f"{base}/v1/members/{m}", headers=auth)).status_code == 200:
                pending.discard(m)
        if pending:
            await asyncio.sleep(0.5)
    if pending:
        demo.failures += 1
        demo.row("training", "member read model", f"{len(pending)} member(s) not known after 180 s")
        raise _skip(demo, "membership events did not reach training")
    demo.row("training", "member read model (from membership.events)", f"knows all {len(everyone)}")
    STATE["members"] = everyone

    sessions = []
    for b, branch in enumerate(demo.branches):
        name, occupation, level, provider_kind, provider, category = PROGRAMMES[b % 3]
        programme = await _call(demo, "training", "POST", f"{base}/v1/programmes", auth, {
            "name": name, "occupation": occupation, "target_level": level, "provider_kind": provider_kind,
            "provider_name": provider, "subsidy_category": category}, idem=key("programme", name))
        s = await _call(demo, "training", "POST", f"{base}/v1/sessions", auth, {
            "programme_id": programme["id"], "organiser_kind": "branch", "organiser_id": branch["id"],
            "starts_on": "2021-07-05", "ends_on": "2021-07-16", "capacity": 5}, idem=key("session", branch["id"]))
        sid, mine = s["id"], members[branch["id"]]
        stranger = str(uuid.uuid5(NS, f"not a member/{sid}"))  # refused: nobody has this id
        bulk = await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/enrolments/bulk", auth,
                           {"member_ids": mine + [stranger]}, idem=key("enrol", sid))
        refused = [r["problem"]["type"].rsplit("/", 1)[-1] for r in bulk["results"] if r["outcome"] == "refused"]
        await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/start", auth, {"started_on": "2021-07-05"},
                    idem=key("start", sid))
        await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/attendance", auth, {"member_ids": mine},
                    idem=key("attendance", sid))
        await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/results", auth, {"results": [
            {"member_id": m, "result": "failed" if i == 3 else "passed"} for i, m in enumerate(mine)]},
            idem=key("results", sid))
        done = await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/complete", auth,
                           {"completed_on": "2021-07-16"}, idem=key("complete", sid))
        certs = await _call(demo, "training", "POST", f"{base}/v1/sessions/{sid}/certificates", auth,
                            {"issued_on": "2021-07-20"}, idem=key("certificates", sid))
        r = done["results"]
        demo.row("training", f"{name[:14]} 第{s['number']}期 ({category})",
                 f"enrolled {bulk['enrolled']}, refused {refused}; completed: {r['person_times']} person-times, "
                 f"{r['eligible_persons']} subsidy-eligible, {certs['issued']} certificates")
        sessions.append((sid, certs["certificates"]))
    STATE["sessions"] = [s for s, _ in sessions]

    serial = sessions[0][1][0]["serial"] if sessions and sessions[0][1] else None
    if serial:
        public = await demo.client.get(f"{base}/v1/certificates/{serial}")  # no token: anyone holding the serial
        shown = public.json()
        demo.row("training", f"verify {serial} (public)",
                 f"{public.status_code}: {shown.get('occupation')} {shown.get('level_name')}, {shown.get('issuer')}")
    demo.row("training", "done", f"in {time.monotonic() - started:.1f} s")


async def step_competitions(demo) -> None:
    auth = STATE.get("auth")
    if not auth:
        raise _skip(demo, "training step did not run")
    base = _url(demo)
    started = time.monotonic()
    branch_ids = [b["id"] for b in demo.branches]
    entries = [("labour", f"{name}劳动竞赛", "5G网络建设" if i == 0 else name, None) for i, name in enumerate(LABOUR)]
    entries += [("skills", f"宁夏{industry}产业职业技能大赛（{occupation}）", industry, occupation)
                for industry, occupation in SKILLS]
    share, left = divmod(PARTICIPANTS - len(STATE.get("members", [])), len(entries))
    totals = {"labour": [0, 0], "skills": [0, 0]}
    first_skills = None
    for i, (kind, name, industry, _) in enumerate(entries):
        tier = TIERS[i % 4]
        region = {"region": "640000", "city": "640100", "county": "640104", "enterprise": "640202"}[tier]
        c = await _call(demo, "contests", "POST", f"{base}/v1/competitions", auth, {
            "name": name, "kind": kind, "tier": tier, "industry": industry, "region_code": region,
            "starts_on": "2021-04-01", "ends_on": "2021-08-31"}, idem=key("competition", name))
        headcount = share + (left if i == 0 else 0)
        if kind == "skills" and first_skills is None and STATE.get("members"):
            first_skills = c["id"]
            await _call(demo, "contests", "POST", f"{base}/v1/competitions/{c['id']}/participants", auth,
                        {"member_ids": STATE["members"]}, idem=key("participants", c["id"]))
        per_branch = [headcount // len(branch_ids)] * len(branch_ids)
        per_branch[0] += headcount - sum(per_branch)
        for branch_id, n in zip(branch_ids, per_branch):
            await _call(demo, "contests", "POST", f"{base}/v1/competitions/{c['id']}/participants", auth,
                        {"branch_id": branch_id, "headcount": n}, idem=key("headcount", c["id"], branch_id))
        held = await _call(demo, "contests", "POST", f"{base}/v1/competitions/{c['id']}/held", auth,
                           {"held_on": "2021-08-31"}, idem=key("held", c["id"]))
        totals[kind][0] += 1
        totals[kind][1] += held["participants"]["total"]
    for kind, label in (("labour", "labour competitions (劳动竞赛)"), ("skills", "skills competitions (职业技能大赛)")):
        demo.row("contests", f"{totals[kind][0]} {label}", f"held, {totals[kind][1]:,} participants")
    demo.row("contests", "all tiers: region, city, county, enterprise",
             f"{totals['labour'][1] + totals['skills'][1]:,} participants in total")
    if first_skills:
        m = STATE["members"]
        published = await _call(demo, "contests", "POST", f"{base}/v1/competitions/{first_skills}/results", auth, {
            "published_on": "2021-09-01", "winners": [
                {"member_id": m[0], "name": "一等奖获得者", "rank": 1, "award": "一等奖"},
                {"member_id": m[1], "name": "二等奖获得者", "rank": 2, "award": "二等奖"},
                {"name": "企业报送选手", "rank": 3, "award": "三等奖"}]}, idem=key("contest-results", first_skills))
        demo.row("contests", published["name"][:46], f"results published, {len(published['winners'])} winners")
    demo.row("contests", "done", f"in {time.monotonic() - started:.1f} s")


async def step_studios(demo) -> None:
    auth = STATE.get("auth")
    if not auth:
        raise _skip(demo, "training step did not run")
    base = _url(demo)
    started = time.monotonic()
    industries = [i for i, _ in SKILLS]
    counties = ("640104", "640105", "640106", "640202", "640302", "640402", "640502", "640181", "640221", "640381",
                "640122", "640521")
    made = {"innovation_studio": 0, "training_base": 0, "skill_master_studio": 0}
    first = None
    for i in range(12):
        s = await _call(demo, "studios", "POST", f"{base}/v1/studios", auth, {
            "kind": "innovation_studio", "name": f"劳模和工匠人才创新工作室 2021-{i + 1:02d}",
            "host_enterprise": f"宁夏{industries[i]}企业{i + 1}", "lead_worker": f"{SURNAMES[i % 11]}师傅",
            "level": "region", "industry": industries[i], "region_code": counties[i], "recognised_on": "2021-05-01"},
            idem=key("studio", "innovation_studio", i))
        made["innovation_studio"] += 1
        first = first or s["id"]
    for i in range(10):
        kind = "training_base" if i < 5 else "skill_master_studio"
        await _call(demo, "studios", "POST", f"{base}/v1/studios", auth, {
            "kind": kind, "name": ("高技能人才培训基地" if i < 5 else "技能大师工作室") + f" 2021-{i + 1:02d}",
            "host_enterprise": f"宁夏{industries[i]}集团", "lead_worker": f"{SURNAMES[i]}大师", "level": "region",
            "industry": industries[i], "region_code": counties[i], "recognised_on": "2021-06-01"},
            idem=key("studio", kind, i))
        made[kind] += 1
    for kind, n in made.items():
        demo.row("studios", f"{kind}", f"{n} recognised in 2021")
    ev = await _call(demo, "studios", "POST", f"{base}/v1/studios/{first}/evaluations", auth,
                     {"rating": "excellent", "evaluated_on": "2021-09-01", "notes": "年度考核"},
                     idem=key("evaluation", first, "2021-09-01"))
    demo.row("studios", ev["name"][:46], f"evaluated: {ev['last_rating']}")
    demo.row("studios", "done", f"in {time.monotonic() - started:.1f} s")


async def step_person_times(demo) -> None:
    auth = STATE.get("auth")
    if not auth:
        raise _skip(demo, "training step did not run")
    summary = await _call(demo, "summary", "GET",
                          f"{_url(demo)}/v1/summary/person-times?from=2021-01-01&to=2021-08-31", auth)
    for row in summary["rows"]:
        demo.row("summary", f"{row['region_name']} {row['subsidy_category']}",
                 f"{row['person_times']} person-times, {row['persons']} persons, {row['sessions']} sessions")
    total = summary["total"]
    demo.row("summary", "Jan–Aug 2021, all regions",
             f"{total['person_times']} person-times, {total['persons']} persons ({total['sessions']} sessions)")


FULL_PROGRAMMES = (  # the full scale's sessions: 1 in 6 pre-job (paid 800 yuan a trainee), the rest not subsidised here
    ("以工代训·岗前培训 2021", "农产品食品检验员", 5, "enterprise", "宁夏枸杞产业集团有限公司", "pre_job"),
    ("职业技能提升行动·技能提升 2021", "电工", 4, "technical_school", "宁夏工业职业学院", "skills_upgrade"),
    ("新就业形态劳动者技能培训 2021", "快递员", 5, "vocational_college", "宁夏职业技术学院", "new_form"),
)


async def _member_ids(demo, import_id: str) -> list[str]:
    """The members of the 2021 import, in its row order (accepted the first time, already members on a re-run)."""
    from demo_membership import _auth as membership_auth

    ids: list[str] = []
    cursor = None
    while True:
        params: dict = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = (await demo.client.get(f"{demo.config.membership_url}/v1/imports/{import_id}", params=params,
                                      headers=membership_auth())).json()["report"]
        ids += [item["member_id"] for item in page["items"] if item["member_id"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids


async def step_rosters(demo) -> None:
    """Full scale: 134,000 person-times in 5,000 sessions through ``POST /v1/rosters`` (complete=true)."""
    import demo_funding
    from demo_membership import STATE as MEMBERSHIP

    scale = demo.config.scale
    if not scale.sessions:
        raise _skip(demo, f"scale {scale.name!r} records its sessions one call at a time (CHANGAI_DEMO_SCALE=full "
                          "records 134,000 person-times in 5,000 sessions)")
    auth = STATE.get("auth")
    organisers = (MEMBERSHIP.get("orgs") or [])[:-1]  # not the branch the moves step merged away
    if not auth or not organisers or not MEMBERSHIP.get("import_2021"):
        raise _skip(demo, "the training step, the 2021 branches or the 2021 import did not run")
    base = _url(demo)
    started = time.monotonic()
    # The saga pays pre-job sessions of registered payees: the organisers are registered first.
    payees = demo_funding.STATE.get("headers")
    if payees:
        gate = asyncio.Semaphore(16)

        async def payee(b: dict) -> None:
            async with gate:
                await demo_funding._post(demo, payees, f"/v1/beneficiaries/branch/{b['id']}",
                                         {"name": b["name"], "region_code": b["region_code"]}, method="PUT",
                                         idem=key("payee", b["id"]))

        await asyncio.gather(*(payee(b) for b in organisers))
        demo.row("rosters", f"{len(organisers)} organiser branches", "registered as payees (funding)")
    programmes = [(await _call(demo, "rosters", "POST", f"{base}/v1/programmes", auth, {
        "name": name, "occupation": occupation, "target_level": level, "provider_kind": kind,
        "provider_name": provider, "subsidy_category": category}, idem=key("programme", name)))["id"]
        for name, occupation, level, kind, provider, category in FULL_PROGRAMMES]
    members = await _member_ids(demo, MEMBERSHIP["import_2021"])
    if not members:
        raise _skip(demo, "no members in the 2021 import")
    # Training learns members from membership.events: wait (bounded) until it knows a spread sample of them.
    sample = members[:: max(1, len(members) // 200)] + members[-20:]
    deadline = time.monotonic() + 300
    while sample and time.monotonic() < deadline:
        sample = [m for m in sample if (await demo.client.get(f"{base}/v1/members/{m}", headers=auth)).status_code != 200]
        if sample:
            await asyncio.sleep(1)
    demo.row("rosters", f"{len(members):,} members of 2021 known to training",
             f"{time.monotonic() - started:.1f} s" + (f"; {len(sample)} of a sample NOT known" if sample else ""))

    per, extra = divmod(scale.person_times, scale.sessions)
    sizes = [per + (1 if i < extra else 0) for i in range(scale.sessions)]
    gate = asyncio.Semaphore(16)

    async def schedule(i: int) -> str:
        rng = seeded("full-session", i)
        starts = date(2021, 1, 4) + timedelta(days=rng.randrange(220))
        body = {"programme_id": programmes[0 if i % 6 == 0 else (1 if i % 6 < 5 else 2)], "organiser_kind": "branch",
                "organiser_id": organisers[i % len(organisers)]["id"], "starts_on": starts.isoformat(),
                "ends_on": (starts + timedelta(days=5)).isoformat(), "capacity": sizes[i]}
        async with gate:
            return (await _call(demo, "rosters", "POST", f"{base}/v1/sessions", auth, body,
                                idem=key("full-session", i)))["id"]

    began = time.monotonic()
    sessions = list(await asyncio.gather(*(schedule(i) for i in range(scale.sessions))))
    demo.row("rosters", f"{len(sessions):,} sessions scheduled (one call each)", f"{time.monotonic() - began:.1f} s")

    parts = 4  # uploads in parallel, each a quarter of the sessions
    bodies = [["session_id,member_id,result"] for _ in range(parts)]
    row = 0
    for i, sid in enumerate(sessions):
        for _ in range(sizes[i]):
            result = "failed" if row % 20 == 19 else "passed"
            bodies[i * parts // len(sessions)].append(f"{sid},{members[row % len(members)]},{result}")
            row += 1

    async def upload(n: int) -> dict:
        data = ("\n".join(bodies[n]) + "\n").encode()
        response = await demo.client.post(f"{base}/v1/rosters", content=data, timeout=1800,
                                          params={"complete": "true"},
                                          headers={**auth, "Content-Type": "text/csv", "Idempotency-Key":
                                                   key("roster", scale.sessions, scale.person_times, n)})
        if response.status_code != 200:
            demo.failures += 1
            demo.row("rosters", f"upload {n + 1} of {parts}", f"{response.status_code} {response.text[:100]}")
            return {}
        return response.json()

    began = time.monotonic()
    reports = await asyncio.gather(*(upload(n) for n in range(parts)))
    total = {k: sum(r.get(k, 0) for r in reports) for k in ("rows", "recorded", "unchanged", "refused",
                                                            "sessions", "sessions_completed")}
    if total["refused"]:
        demo.failures += 1
    demo.row("rosters", f"{parts} roster uploads, {total['rows']:,} rows, {total['sessions']:,} sessions",
             f"{total['recorded']:,} recorded, {total['unchanged']:,} unchanged, {total['refused']} refused, "
             f"{total['sessions_completed']:,} completed in {time.monotonic() - began:.1f} s")
    demo.row("rosters", "done", f"in {time.monotonic() - started:.1f} s")


STEPS = [("training", step_training), ("contests", step_competitions), ("studios", step_studios),
         ("summary", step_person_times)]
ROSTER_STEPS = [("rosters", step_rosters)]  # full scale, after funding's set-up (demo.py)
