"""Article-replay step of the metrics projection, appended to ``demo.STEPS`` (last).

* ``figures``: once the projection has caught up (its consumer lag is 0 in Prometheus), the
  reform figures the earlier steps produced, as Prometheus has them, which the Grafana
  dashboards (deploy/grafana/dashboards/) show: members and branches by city, training
  person-times, competitions, studios, funds by source, subsidies, notices.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CITY = {"640100": "银川市", "640200": "石嘴山市", "640300": "吴忠市", "640400": "固原市", "640500": "中卫市",
        "640000": "自治区本级"}
FIGURES = (
    ("会员 members", "sum by (city) (changai_union_members)", "city"),
    ("基层工会 branches", "sum by (city) (changai_union_branches)", "city"),
    ("培训人次 person-times 2021", 'sum by (city) (changai_training_person_times_total{year="2021"})', "city"),
    ("竞赛 competitions 2021", 'sum by (kind) (changai_competitions_announced_total{year="2021"})', "kind"),
    ("参赛职工 participants", "sum by (tier) (changai_competition_participants_total)", "tier"),
    ("工作室/基地 studios", "sum by (kind) (changai_studios)", "kind"),
    ("资金 funds (yuan)", 'sum by (source_kind) (changai_funds_amount_yuan{year="2021"})', "source_kind"),
    ("已拨付 disbursed (yuan)", 'sum by (source_kind) (changai_funds_disbursed_yuan{year="2021"})', "source_kind"),
    ("结余 remaining (yuan)", 'sum by (source_kind) (changai_funds_remaining_yuan{year="2021"})', "source_kind"),
    ("补贴 subsidies paid (yuan)", "sum(changai_subsidies_paid_yuan_total)", None),
    ("通知 notices", "sum by (outcome) (changai_notices_total)", "outcome"),
    ("改革任务 reform tasks completed", 'sum by (year) (changai_reform_tasks{status="completed"})', "year"),
    ("逾期任务 reform tasks overdue", "sum by (year) (changai_reform_tasks_overdue)", "year"),
    ("政策文件 policy documents", "sum(changai_reform_documents_total)", None),
    ("试点 pilots", "sum by (year) (changai_reform_pilots_total)", "year"),
    ("市级实施方案 city plans", "sum(changai_reform_city_plans)", None),
)


def _skip(demo, reason: str) -> Exception:
    return sys.modules[type(demo).__module__].Skip(reason)


async def _query(demo, promql: str) -> list[dict]:
    response = await demo.client.get(f"{demo.config.prometheus_url}/api/v1/query", params={"query": promql})
    return response.json()["data"]["result"]


async def step_figures(demo) -> None:
    if not demo.config.runs("projection"):
        raise _skip(demo, "the projection is not running")
    deadline = time.monotonic() + 45
    try:
        while True:  # caught up: no lag, and Prometheus has scraped since
            group = getattr(demo.config, "projection_group", "changai-projection")
            lag = await _query(demo, f'sum(changai_consumer_lag{{consumer="{group}"}})')
            if lag and float(lag[0]["value"][1]) == 0:
                break
            if time.monotonic() > deadline:
                demo.row("figures", "projection lag", f"{lag[0]['value'][1] if lag else 'no data'} after 45 s")
                break
            await asyncio.sleep(1)
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"Prometheus not reachable at {demo.config.prometheus_url} ({exc.__class__.__name__})")
    await asyncio.sleep(6)  # one more scrape (5 s) after catching up
    for title, promql, label in FIGURES:
        result = await _query(demo, promql)
        if not result:
            demo.row("figures", title, "no data yet")
            continue
        parts = []
        for series in sorted(result, key=lambda s: s["metric"].get(label or "", "")):
            value = float(series["value"][1])
            name = series["metric"].get(label, "") if label else ""
            name = CITY.get(name, name)
            parts.append(f"{name} {value:,.0f}".strip())
        demo.row("figures", title, ", ".join(parts)[:120])
        if hasattr(demo, "figures"):
            demo.figures[title] = ", ".join(parts)
    boards = sorted(p.name for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    demo.row("figures", "Grafana dashboards (deploy/grafana/dashboards)", ", ".join(boards))


STEPS = [("figures", step_figures)]
