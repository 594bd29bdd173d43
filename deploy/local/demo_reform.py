"""Article-replay step of the reform coordination service (改革协调), appended to ``demo.STEPS``.

* ``reform``: the coordinating office's work as the report tells it (docs/domain.md): the 22 member
  units of the coordination group, each with a liaison officer; the 2020 ledger of 59 tasks, all
  completed, verified and the year closed; the 2021 ledger of 64 tasks, all reported complete by
  their lead units and verified; 62 policy documents; the 5 cities' implementation plans; the 2020
  pilots (2) and the 2021 pilots (1 city, 2 industries, 3 counties/districts, 7 enterprises and
  institutions). One task of a 2022 ledger is left past its deadline on purpose: supervision tells
  it, and its notice arrives at the demo receiver.

Every write carries an Idempotency-Key derived from what it is, so running the demo again on the same
state replays the first answers and leaves every figure as it was.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

REFORM_URL = os.environ.get("CHANGAI_DEMO_REFORM_URL", "http://127.0.0.1:8006")
NS = uuid.UUID("0b5e9a36-4a1c-4e43-9d0e-7265666f726d")

# The coordination group's member units (成员单位): names as such groups list them; kinds per the design.
UNITS = (
    ("自治区党委组织部", "party"),
    ("自治区党委宣传部", "party"),
    ("自治区党委统战部", "party"),
    ("自治区人大常委会社会建设委员会", "congress"),
    ("自治区发展和改革委员会", "government"),
    ("自治区教育厅", "government"),
    ("自治区科学技术厅", "government"),
    ("自治区工业和信息化厅", "government"),
    ("自治区财政厅", "government"),
    ("自治区人力资源和社会保障厅", "government"),
    ("自治区住房和城乡建设厅", "government"),
    ("自治区交通运输厅", "government"),
    ("自治区农业农村厅", "government"),
    ("自治区商务厅", "government"),
    ("自治区卫生健康委员会", "government"),
    ("自治区国有资产监督管理委员会", "government"),
    ("自治区市场监督管理厅", "government"),
    ("自治区统计局", "government"),
    ("自治区总工会", "mass_organisation"),
    ("共青团宁夏回族自治区委员会", "mass_organisation"),
    ("自治区妇女联合会", "mass_organisation"),
    ("自治区科学技术协会", "mass_organisation"),
)
ABBREVIATIONS = (
    "宁组发",
    "宁宣发",
    "宁统发",
    "宁人大社发",
    "宁发改发",
    "宁教发",
    "宁科发",
    "宁工信发",
    "宁财发",
    "宁人社发",
    "宁建发",
    "宁交发",
    "宁农发",
    "宁商发",
    "宁卫健发",
    "宁国资发",
    "宁市监发",
    "宁统字",
    "宁工发",
    "宁团发",
    "宁妇发",
    "宁科协发",
)
CITY_PLANS = (
    ("640100", "银川市"),
    ("640200", "石嘴山市"),
    ("640300", "吴忠市"),
    ("640400", "固原市"),
    ("640500", "中卫市"),
)
PILOTS = (
    (2020, "county", "comprehensive", "银川市金凤区", "640106"),
    (2020, "enterprise", "comprehensive", "宁夏共享集团股份有限公司", "640106"),
    (2021, "city", "comprehensive", "石嘴山市", "640200"),
    (2021, "industry", "project", "枸杞产业", "640000"),
    (2021, "industry", "project", "葡萄酒产业", "640000"),
    (2021, "county", "comprehensive", "吴忠市利通区", "640302"),
    (2021, "county", "project", "中卫市沙坡头区", "640502"),
    (2021, "county", "project", "固原市原州区", "640402"),
    *(
        (2021, "enterprise", "project", name, region)
        for name, region in (
            ("宁夏宝丰能源集团股份有限公司", "640104"),
            ("国家能源集团宁夏煤业有限责任公司", "640106"),
            ("宁夏共享装备股份有限公司", "640106"),
            ("中色（宁夏）东方集团有限公司", "640202"),
            ("宁夏职业技术学院", "640105"),
            ("宁夏工商职业技术学院", "640105"),
            ("宁夏红寺堡酒庄", "640303"),
        )
    ),
)
LEDGERS = ((2020, 59), (2021, 64))
DOCUMENTS = 62  # "60多个"
OVERDUE_YEAR = 2022
STATE: dict[str, Any] = {}


def _skip(demo, reason: str) -> Exception:
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return getattr(demo.config, "reform_url", None) or REFORM_URL


def _key(*parts: Any) -> str:
    return str(uuid.uuid5(NS, "/".join(str(p) for p in parts)))


async def _call(
    demo, headers: dict, method: str, path: str, body: dict | None, key: str, ok: tuple[int, ...] = (200, 201)
) -> dict:
    response = await demo.client.request(
        method, f"{_url(demo)}{path}", json=body, headers={**headers, "Idempotency-Key": key}
    )
    if response.status_code not in ok:
        demo.failures += 1
        demo.row("reform", f"{method} {path}"[:46], f"{response.status_code} {response.text[:100]}")
        raise _skip(demo, f"{path} answered {response.status_code}")
    return response.json()


async def _each(items, fn, width: int = 8) -> list:
    """``fn(item)`` for every item, ``width`` at a time (the service is one process; order is free)."""
    out: list = []
    for i in range(0, len(items), width):
        out += await asyncio.gather(*(fn(item) for item in items[i : i + width]))
    return out


async def step_reform(demo) -> None:
    runs = getattr(demo.config, "runs", None)
    if runs is not None and not runs("reform"):
        raise _skip(demo, "reform is not running")
    from shared.auth import mint_token

    office = {
        "Authorization": "Bearer "
        + mint_token("reform-office", ["reform:admin", "reform:read", "reform:report"], "640000")
    }
    try:
        await demo.client.get(f"{_url(demo)}/livez")
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"reform not reachable at {_url(demo)} ({exc.__class__.__name__})") from None
    started = time.monotonic()

    async def register(unit: tuple[str, str]) -> dict:
        name, kind = unit
        return await _call(
            demo,
            office,
            "POST",
            "/v1/units",
            {"name": name, "kind": kind, "liaison_name": "联络员", "liaison_phone": "13900000000"},
            _key("unit", name),
        )

    units = await _each(UNITS, register)
    liaisons = {
        u["id"]: {
            "Authorization": "Bearer "
            + mint_token(f"liaison-{i}", ["reform:read", "reform:report"], "640000", unit=u["id"])
        }
        for i, u in enumerate(units)
    }
    demo.row("reform", "协调小组成员单位 member units", f"{len(units)} registered, each with a liaison officer")

    for year, count in LEDGERS:
        await _call(demo, office, "POST", "/v1/years", {"year": year}, _key("year", year))

        async def task(number: int, year: int = year) -> dict:
            lead = units[(number - 1) % len(units)]
            co = units[number % len(units)]
            return await _call(
                demo,
                office,
                "POST",
                "/v1/tasks",
                {
                    "year": year,
                    "number": number,
                    "title": f"{year}年改革任务第{number}项",
                    "lead_unit_id": lead["id"],
                    "co_unit_ids": [co["id"]],
                    "deadline": f"{year}-12-31",
                    "content": "推进产业工人队伍建设改革",
                    "source_clause": "《新时期宁夏产业工人队伍建设改革实施方案》",
                },
                _key("task", year, number),
            )

        tasks = await _each(list(range(1, count + 1)), task)

        async def complete(t: dict, year: int = year) -> None:
            if t["status"] == "completed":
                return
            await _call(
                demo,
                liaisons[t["lead_unit_id"]],
                "POST",
                f"/v1/tasks/{t['id']}:report-completion",
                {"evidence": "已按期完成，佐证材料见附件"},
                _key("complete", t["id"]),
                ok=(200, 409),
            )
            await _call(demo, office, "POST", f"/v1/tasks/{t['id']}:verify", {}, _key("verify", t["id"]), ok=(200, 409))

        await _each(tasks, complete)
        demo.row("reform", f"{year} 任务台账 task ledger", f"{count} tasks assigned, reported complete and verified")

    closed = await _call(demo, office, "POST", "/v1/years/2020:close", {}, _key("close", 2020), ok=(200, 409))
    demo.row("reform", "2020 关账 year closed", f"status {closed.get('status', 'closed')}")

    async def document(i: int) -> dict:
        unit = units[i % len(units)]
        year = 2020 if i < 25 else 2021
        return await _call(
            demo,
            liaisons[unit["id"]],
            "POST",
            "/v1/documents",
            {
                "title": f"关于推进产业工人队伍建设改革的实施细则（{i + 1}）",
                "doc_number": f"{ABBREVIATIONS[i % len(ABBREVIATIONS)]}〔{year}〕{i + 1}号",
                "issued_on": f"{year}-06-{(i % 28) + 1:02d}",
            },
            _key("document", i),
        )

    docs = await _each(list(range(DOCUMENTS)), document)
    demo.row("reform", "政策文件 policy documents", f"{len(docs)} issued by {len({d['unit_id'] for d in docs})} units")

    for code, name in CITY_PLANS:
        await _call(
            demo,
            office,
            "PUT",
            f"/v1/city-plans/{code}",
            {"title": f"{name}产业工人队伍建设改革实施方案", "issued_on": "2020-03-31"},
            _key("plan", code),
        )
    demo.row("reform", "市级实施方案 city plans", f"{len(CITY_PLANS)} of 5 cities")
    for year, kind, mode, name, region in PILOTS:
        await _call(
            demo,
            office,
            "POST",
            "/v1/pilots",
            {"year": year, "kind": kind, "mode": mode, "name": name, "region_code": region},
            _key("pilot", year, name),
        )
    demo.row("reform", "试点 pilots", "2020: 2; 2021: 1 city, 2 industries, 3 counties, 7 enterprises")

    # One task left past its deadline on purpose: supervision (督办) tells it; the notice reaches the receiver.
    await _call(
        demo,
        office,
        "POST",
        "/v1/years",
        {"year": OVERDUE_YEAR, "unit_ids": [units[9]["id"]]},
        _key("year", OVERDUE_YEAR),
    )
    late = await _call(
        demo,
        office,
        "POST",
        "/v1/tasks",
        {
            "year": OVERDUE_YEAR,
            "number": 1,
            "title": "技能人才评价改革（督办示例）",
            "lead_unit_id": units[9]["id"],
            "deadline": f"{OVERDUE_YEAR}-06-30",
        },
        _key("task", OVERDUE_YEAR, 1),
    )
    STATE["overdue_task"] = late["id"]
    runs = getattr(demo.config, "runs", None)
    if runs is None or runs("notifier-worker"):
        # The receiver keeps its last 500 notices: watch from now on, or the ledgers' notices may push it out.
        STATE["overdue_watch"] = asyncio.create_task(_watch_overdue(demo, late["id"]))
    demo.row("reform", "逾期任务 overdue on purpose", f"{OVERDUE_YEAR}-1, deadline {OVERDUE_YEAR}-06-30")
    report = (await demo.client.get(f"{_url(demo)}/v1/years/2021/report", headers=office)).json()
    demo.row(
        "reform",
        "2021 推进会报告 meeting report",
        f"{report['completed']}/{report['tasks']} completed ({report['completion_rate']:.0%}); "
        f"{len(report['pilots'])} pilots; xlsx at /v1/years/2021/report.xlsx",
    )
    demo.row("reform", "time", f"{time.monotonic() - started:.1f} s")


async def _watch_overdue(demo, task_id: str, seconds: float = 900) -> list[dict]:
    """The receiver's notices of the overdue task (once it has one, and a moment more for a duplicate)."""
    seen: dict[tuple, dict] = {}
    deadline, settle = time.monotonic() + seconds, None
    while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
        try:
            notices = await demo.received()
        except Exception:  # noqa: BLE001 - the receiver may be away a moment; the deadline bounds the watch
            notices = []
        for n in notices:
            if n.get("type") == "changai.reform.task.overdue.v1" and n.get("subject") == task_id:
                seen[(n.get("received_at"), n.get("path"))] = n
        if seen and settle is None:
            settle = time.monotonic() + 2
        await asyncio.sleep(0.5)
    return list(seen.values())


async def step_overdue_notice(demo) -> None:
    """After the other steps (the notifier has the import's digests and the ledger's notices to send first):
    the overdue task's notice at the demo receiver, once, with a valid signature."""
    task_id = STATE.get("overdue_task")
    if task_id is None:
        raise _skip(demo, "no overdue task (the reform step did not run)")
    runs = getattr(demo.config, "runs", None)
    if runs is not None and not runs("notifier-worker"):
        raise _skip(demo, "notifier-worker is not running")
    if _key("task", OVERDUE_YEAR, 1) in getattr(demo, "replayed_keys", ()):
        if STATE.get("overdue_watch"):
            STATE["overdue_watch"].cancel()  # no new notice comes: the task was told when it was created
        # An earlier run created the task and it was told then, once; the receiver (restarted since) has not
        # kept that notice, the notifier's delivery log has.
        told = await sys.modules[type(demo).__module__].told_before(demo, "changai.reform.task.overdue.v1")
        demo.row(
            "督办", "overdue notice (task of an earlier run)", f"told then: {'yes (delivery log)' if told else 'NO'}"
        )
        if not told:
            demo.failures += 1
        return
    watch = STATE.get("overdue_watch")
    if watch is None:
        raise _skip(demo, "the overdue task was not watched for")
    try:
        hits = await asyncio.wait_for(asyncio.shield(watch), max(demo.config.notice_timeout_s, 180))
    except TimeoutError:
        hits = []
    finally:
        watch.cancel()
    if hits:
        verified = all(n["verified"] for n in hits)
        demo.row(
            "督办", "overdue notice at the receiver", f"{len(hits)} notice, verified {'yes' if verified else 'NO'}"
        )
        if len(hits) != 1 or not verified:
            demo.failures += 1
        return
    demo.failures += 1
    demo.row("督办", "overdue notice at the receiver", "not received in time")


STEPS = [("reform", step_reform)]
LATE_STEPS = [("督办", step_overdue_notice)]  # after the figures: see step_overdue_notice
