"""Grafana dashboards as code, built with Grafana's own typed builders (``grafana-foundation-sdk``, a
test/development dependency pinned in pyproject.toml; the services never import this module at run time).

    python -m services.projection dashboards          # writes deploy/grafana/dashboards/*.json
    python -m services.projection dashboards --check  # exit 1 if the committed JSON differs

Three dashboards, provisioned by docker-compose and Kubernetes from deploy/grafana/:

* ``reform-overview.json`` "产改进展 Reform overview": the event-countable figures of
  the source article (docs/domain.md), by city, Chinese titles with English subtitles;
* ``pipeline-health.json`` "管道健康 Pipeline health": RED metrics per service, consumer
  lag, outbox backlog, dead letters, notice delivery success, the projection itself, the event
  intake (received, applied, lag, refused by reason, duplicates, per source and type), and in
  Kubernetes the Kafka brokers (partitions at risk, bytes in, consumer-group lag);
* ``reform-ledger.json`` "改革任务台账 Reform task ledger": the coordinating office's tasks by
  status and unit, completion rate, overdue now, documents, pilots, city plans.

Every panel's query is plain PromQL over the raw metrics (no recording rule needed),
with two Grafana variables: ``$year`` (default 2021, the article's "this year") and
``$__rate_interval``. The end-to-end test runs every query against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from shared.regions import CITIES, REGION_ROOT, REGIONS

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
YEAR_DEFAULT = "2021"
# Series that exist only in Kubernetes, where Strimzi runs the brokers' JMX exporter and the Kafka Exporter
# (deploy/k8s/base/kafka/): neither Compose nor the local stack has them, so the panels reading them are
# checked against the manifests (tests/deploy/test_deploy_platform.py), not against a local Prometheus.
KUBERNETES_ONLY_PREFIXES = ("kafka_",)


def kubernetes_only(expr: str) -> bool:
    """Whether a query reads only series that exist only in Kubernetes (KUBERNETES_ONLY_PREFIXES)."""
    # Drop selectors, groupings, ranges and strings; what is left are metric names, functions and operators.
    bare = re.sub(r'\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)|"[^"]*"|\[[^\]]*\]', " ", expr)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", bare)) - PROMQL_WORDS
    return bool(names) and all(n.startswith(KUBERNETES_ONLY_PREFIXES) for n in names)


PROMQL_WORDS = {"sum", "rate", "increase", "max", "min", "avg", "count", "or", "and", "unless", "on", "ignoring"}

CITY_NAMES = {
    c.code: f"{c.name} {en}"
    for c, en in zip(CITIES, ("Yinchuan", "Shizuishan", "Wuzhong", "Guyuan", "Zhongwei"), strict=True)
}
CITY_NAMES[REGION_ROOT] = "自治区本级 Region level"
CITY_NAMES["unknown"] = "未知 Unknown"
NAMES = {
    "employment_form": {
        "standard": "标准劳动关系 Standard",
        "courier": "快递员 Couriers",
        "ride_hailing": "网约车司机 Ride-hailing",
        "truck_driver": "货车司机 Truck drivers",
        "food_delivery": "外卖骑手 Food delivery",
    },
    "kind": {
        "enterprise": "企业工会 Enterprise",
        "joint": "联合工会 Joint",
        "industry": "行业工会 Industry",
        "new_form": "新就业形态工会 New-form workers",
        "labour": "劳动竞赛 Labour",
        "skills": "职业技能大赛 Skills",
        "innovation_studio": "创新工作室 Innovation studios",
        "training_base": "培训基地 Training bases",
        "skill_master_studio": "技能大师工作室 Skill-master studios",
    },
    "tier": {"region": "区 Region", "city": "市 City", "county": "县(区) County", "enterprise": "企业 Enterprise"},
    "category": {
        "pre_job": "岗前培训/以工代训 Pre-job",
        "skills_upgrade": "技能提升 Skills upgrade",
        "new_form": "新就业形态 New-form workers",
    },
    "source_kind": {
        "central_budget": "中央预算内 Central budget",
        "regional_budget": "自治区预算内 Regional budget",
        "special_fund": "专项资金 Special fund",
        "union_funds": "工会经费 Union funds",
        "skills_account": "技能提升专账 Skills account",
    },
    "level": {
        "1": "高级技师 Level 1",
        "2": "技师 Level 2",
        "3": "高级工 Level 3",
        "4": "中级工 Level 4",
        "5": "初级工 Level 5",
        "national": "国家级 National",
        "region": "自治区级 Regional",
        "city": "市级 City",
    },
    "status": {
        "assigned": "已分工 Assigned",
        "in_progress": "推进中 In progress",
        "completion_reported": "已报送完成 Reported",
        "completed": "已完成 Completed",
    },
    "stage": {"overdue": "逾期督办 Overdue", "progress_due": "进展提醒 Progress due"},
    "channel": {"webhook": "Webhook", "wecom": "企业微信 WeCom", "dingtalk": "钉钉 DingTalk", "email": "邮件 E-mail"},
}


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str  # Chinese title · English subtitle
    description: str  # English: what it shows, and the article's figure where there is one
    kind: str  # stat | bargauge | timeseries | table
    targets: list[Target]
    w: int = 6
    h: int = 5
    unit: str = "short"
    by: str | None = None  # the label the series are split by (for display names)
    decimals: int | None = None
    # stat panels: how the value is coloured and what is written (Grafana's BigValueColorMode/TextMode)
    color_mode: str = "value"
    text_mode: str = "auto"


# The JSON is built with Grafana's own typed builders (grafana-foundation-sdk, pinned to the schema of
# Grafana 11.6 in pyproject.toml): a misspelt option or a wrong type is an error here, not a panel that
# silently ignores it. Positions are ours (rows of 24 columns), so the layout stays as designed.
def _datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])


def _display_names(builder: Any, by: str | None) -> Any:
    names = (
        CITY_NAMES
        if by == "city"
        else {code: f"{r.name}" for code, r in REGIONS.items()}
        if by == "region"
        else NAMES.get(by or "", {})
    )
    for code, name in names.items():
        builder = builder.override_by_name(code, [dm.DynamicConfigValue(id_val="displayName", value=name)])
    return builder


def _query(panel: Panel, t: Target, i: int) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .datasource(_datasource())
        .expr(t.expr)
        .ref_id(chr(ord("A") + i))
        .legend_format(t.legend or ("{{" + panel.by + "}}" if panel.by else "__auto"))
    )
    if panel.kind in ("stat", "bargauge", "table") or t.instant:
        query = query.instant()  # and range: false
    return query


def _last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _panel_builder(panel: Panel) -> Any:
    builder: Any
    if panel.kind == "stat":
        builder = (
            stat.Panel()
            .reduce_options(_last_value())
            .color_mode(cm.BigValueColorMode(panel.color_mode))
            .graph_mode(cm.BigValueGraphMode.NONE)
            .text_mode(cm.BigValueTextMode(panel.text_mode))
            .justify_mode(cm.BigValueJustifyMode.AUTO)
            .orientation(cm.VizOrientation.AUTO)
            .color_scheme(dashboard_b.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color("blue"))
        )
    elif panel.kind == "bargauge":
        builder = (
            bargauge.Panel()
            .reduce_options(_last_value())
            .orientation(cm.VizOrientation.HORIZONTAL)
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .show_unfilled(True)
            .value_mode(cm.BarGaugeValueMode.COLOR)
            .name_placement(cm.BarGaugeNamePlacement.LEFT)
            .sizing(cm.BarGaugeSizing.AUTO)
            .min(0)
        )
    elif panel.kind == "table":
        builder = table.Panel().show_header(True).cell_height(cm.TableCellHeight.SM)
    elif panel.kind == "timeseries":
        builder = (
            timeseries.Panel()
            .legend(
                common.VizLegendOptions()
                .display_mode(cm.LegendDisplayMode.TABLE)
                .placement(cm.LegendPlacement.RIGHT)
                .show_legend(True)
                .calcs(["lastNotNull"])
            )
            .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
            .draw_style(cm.GraphDrawStyle.LINE)
            .line_width(1)
            .fill_opacity(10)
            .show_points(cm.VisibilityMode.NEVER)
        )
    else:
        raise ValueError(f"{panel.title}: unknown panel kind {panel.kind!r}")
    if panel.kind != "stat":
        builder = builder.color_scheme(dashboard_b.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
    builder = builder.title(panel.title).description(panel.description).datasource(_datasource()).unit(panel.unit)
    if panel.decimals is not None:
        builder = builder.decimals(panel.decimals)
    builder = builder.targets([_query(panel, t, i) for i, t in enumerate(panel.targets)])
    return _display_names(builder, panel.by)


def _row_builder(title: str) -> dashboard_b.Row:
    return dashboard_b.Row(title)


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: list[tuple[str, list[Panel]]],
    tags: list[str],
    year_variable: bool,
) -> dict:
    board = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(tags)
        .editable()
        .timezone("Asia/Shanghai")
        .refresh("30s")
        .time("now-6h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard_b.DatasourceVariable("datasource")
            .label("数据源 Data source")
            .type("prometheus")
            .current(dm.VariableOption(text="Prometheus", value="prometheus"))
        )
    )
    if year_variable:
        years = [str(y) for y in range(2020, 2031)]
        board = board.with_variable(
            dashboard_b.CustomVariable("year")
            .label("年度 Year")
            .values(",".join(years))
            .current(dm.VariableOption(text=YEAR_DEFAULT, value=YEAR_DEFAULT))
        )
    # Our own layout: each section a row, its panels left to right, wrapping at 24 columns.
    pid, y = 1, 0
    for section_title, section in sections:
        board = board.with_row(_row_builder(section_title).id(pid).grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        pid, y, x, line_h = pid + 1, y + 1, 0, 0
        for panel in section:
            if x + panel.w > 24:
                x, y, line_h = 0, y + line_h, 0
            board = board.with_panel(_panel_builder(panel).id(pid).grid_pos(dm.GridPos(h=panel.h, w=panel.w, x=x, y=y)))
            pid, x, line_h = pid + 1, x + panel.w, max(line_h, panel.h)
        y += line_h
    return json.loads(JSONEncoder(sort_keys=False).encode(board.build()))


# --------------------------------------------------------------------------------- the two dashboards


def reform_overview() -> dict:
    Y = '{year="$year"}'
    membership = [
        Panel(
            "工会会员 · Union members",
            "Members now active (joined − left − lapsed). Article: ~450,000 "
            "industrial-worker union members in the region.",
            "stat",
            [Target("sum(changai_union_members)")],
            w=4,
        ),
        Panel(
            "新入会会员 · New members ($year)",
            "Members who joined in the year. Article: 65,585 new members in 2021 so far.",
            "stat",
            [Target(f"sum(changai_union_members_joined_total{Y})")],
            w=4,
        ),
        Panel(
            "新建工会组织 · New union branches ($year)",
            "Branches established (founded) in the year. Article: 658 new union organisations in 2021 so far.",
            "stat",
            [Target(f"sum(changai_union_branches_established_total{Y})")],
            w=4,
        ),
        Panel(
            "基层工会 · Union branches",
            "Branches now active (established, not merged or dissolved).",
            "stat",
            [Target("sum(changai_union_branches)")],
            w=4,
        ),
        Panel(
            "户外劳动者服务站点 · Service stations",
            "Outdoor-worker service stations now open. Article: 100 being built.",
            "stat",
            [Target("sum(changai_service_stations)")],
            w=4,
        ),
        Panel(
            "转会 · Member transfers ($year)",
            "Members who moved between branches in the year.",
            "stat",
            [Target('sum(changai_union_member_transfers_total{direction="in",year="$year"})')],
            w=4,
        ),
        Panel(
            "会员（按城市）· Members by city",
            "Active members in each of the five cities.",
            "bargauge",
            [Target("sum by (city) (changai_union_members)")],
            w=8,
            h=8,
            by="city",
        ),
        Panel(
            "会员（按就业形态）· Members by employment form",
            "New-form workers served: couriers, ride-hailing and truck drivers, food delivery.",
            "bargauge",
            [Target("sum by (employment_form) (changai_union_members)")],
            w=8,
            h=8,
            by="employment_form",
        ),
        Panel(
            "基层工会（按城市）· Union branches by city",
            "Active branches in each city.",
            "bargauge",
            [Target("sum by (city) (changai_union_branches)")],
            w=8,
            h=8,
            by="city",
        ),
        Panel(
            "入会、转会、退会 · Joined, transferred, left ($year)",
            "Movements of members in the year, by city.",
            "bargauge",
            [
                Target(f"sum by (city) (changai_union_members_joined_total{Y})", "入会 joined {{city}}"),
                Target(
                    'sum by (city) (changai_union_member_transfers_total{direction="in",year="$year"})',
                    "转入 transferred in {{city}}",
                ),
                Target(f"sum by (city) (changai_union_members_left_total{Y})", "退会 left {{city}}"),
            ],
            w=12,
            h=9,
        ),
        Panel(
            "基层工会（按类型）· Branches by kind",
            "Enterprise, joint, industry-wide and new-form-worker unions.",
            "bargauge",
            [Target("sum by (kind) (changai_union_branches)")],
            w=6,
            h=9,
            by="kind",
        ),
        Panel(
            "服务站点（按城市）· Service stations by city",
            "Stations now open, by city.",
            "bargauge",
            [Target("sum by (city) (changai_service_stations)")],
            w=6,
            h=9,
            by="city",
        ),
    ]
    training = [
        Panel(
            "补贴性职业技能培训 · Subsidised training person-times ($year)",
            "Person-times (人次) of completed sessions. Article: 134,000 person-times Jan–Aug 2021.",
            "stat",
            [Target(f"sum(changai_training_person_times_total{Y})")],
            w=6,
        ),
        Panel(
            "结业培训班 · Sessions completed ($year)",
            "Training sessions completed in the year.",
            "stat",
            [Target(f"sum(changai_training_sessions_completed_total{Y})")],
            w=6,
        ),
        Panel(
            "劳动竞赛 · Labour competitions ($year)",
            "Demonstration labour competitions. Article: 7 in 2021.",
            "stat",
            [Target('sum(changai_competitions_announced_total{kind="labour",year="$year"})')],
            w=6,
        ),
        Panel(
            "职业技能大赛 · Skills competitions ($year)",
            "Vocational skills competitions. Article: 12 in 2021.",
            "stat",
            [Target('sum(changai_competitions_announced_total{kind="skills",year="$year"})')],
            w=6,
        ),
        Panel(
            "培训人次（按城市）· Person-times by city ($year)",
            "Subsidised training person-times by city.",
            "bargauge",
            [Target(f"sum by (city) (changai_training_person_times_total{Y})")],
            w=8,
            h=8,
            by="city",
        ),
        Panel(
            "培训人次（按补贴类别）· Person-times by subsidy category ($year)",
            "Pre-job (以工代训), skills upgrade, new-form workers.",
            "bargauge",
            [Target(f"sum by (category) (changai_training_person_times_total{Y})")],
            w=8,
            h=8,
            by="category",
        ),
        Panel(
            "职业技能等级证书 · Certificates by level ($year)",
            "Vocational skill level certificates issued.",
            "bargauge",
            [Target(f"sum by (level) (changai_training_certificates_issued_total{Y})")],
            w=8,
            h=8,
            by="level",
        ),
        Panel(
            "参赛职工 · Competition participants ($year)",
            "Workers taking part, all four tiers. Article: ~500,000.",
            "stat",
            [Target(f"sum(changai_competition_participants_total{Y})")],
            w=6,
            h=8,
        ),
        Panel(
            "参赛职工（按层级）· Participants by tier ($year)",
            "Region, city, county and enterprise rounds.",
            "bargauge",
            [Target(f"sum by (tier) (changai_competition_participants_total{Y})")],
            w=6,
            h=8,
            by="tier",
        ),
        Panel(
            "创新工作室 · Innovation studios",
            "Model-worker and craftsman innovation studios now recognised. "
            "Article: 600 in total after 2021, 10–15 new in 2021.",
            "stat",
            [Target('sum(changai_studios{kind="innovation_studio"})')],
            w=6,
            h=8,
        ),
        Panel(
            "培训基地和技能大师工作室 · Training bases and skill-master studios",
            "High-skill training bases and skill-master studios now recognised. Article: 10 built in 2021.",
            "bargauge",
            [Target('sum by (kind) (changai_studios{kind=~"training_base|skill_master_studio"})')],
            w=6,
            h=8,
            by="kind",
        ),
    ]
    funding = [
        Panel(
            "资金总额 · Funds (yuan, $year)",
            "Money put into funds of the fiscal year. Article: 280 million "
            "central and 46 million regional budget for industry–education integration in 2021.",
            "bargauge",
            [Target(f"sum by (source_kind) (changai_funds_amount_yuan{Y})")],
            w=6,
            h=8,
            unit="currencyCNY",
            by="source_kind",
        ),
        Panel(
            "已安排 · Allocated (yuan, $year)",
            "Money granted to beneficiaries, less revoked remainders.",
            "bargauge",
            [Target(f"sum by (source_kind) (changai_funds_allocated_yuan{Y})")],
            w=6,
            h=8,
            unit="currencyCNY",
            by="source_kind",
        ),
        Panel(
            "已拨付 · Disbursed (yuan, $year)",
            "Money paid out under grants.",
            "bargauge",
            [Target(f"sum by (source_kind) (changai_funds_disbursed_yuan{Y})")],
            w=6,
            h=8,
            unit="currencyCNY",
            by="source_kind",
        ),
        Panel(
            "结余 · Remaining (yuan, $year)",
            "Money of funds not yet granted.",
            "bargauge",
            [Target(f"sum by (source_kind) (changai_funds_remaining_yuan{Y})")],
            w=6,
            h=8,
            unit="currencyCNY",
            by="source_kind",
        ),
        Panel(
            "产教融合项目 · Projects funded ($year)",
            "Grants to projects. Article: 12 industry–education integration projects.",
            "stat",
            [Target('sum(changai_grants_approved_total{beneficiary_kind="project",year="$year"})')],
            w=6,
        ),
        Panel(
            "培训补贴已发放 · Training subsidies paid (yuan, $year)",
            "Subsidies paid for completed sessions (pre-job standard raised from 300 to 800 yuan per person).",
            "stat",
            [Target(f"sum(changai_subsidies_paid_yuan_total{Y})")],
            w=6,
            unit="currencyCNY",
        ),
        Panel(
            "补贴人数 · Persons subsidised ($year)",
            "Persons whose training subsidy was paid.",
            "stat",
            [Target(f"sum(changai_subsidies_paid_persons_total{Y})")],
            w=6,
        ),
        Panel(
            "补贴申请被拒 · Subsidy claims rejected",
            "Claims rejected, by reason (e.g. fund exhausted).",
            "bargauge",
            [Target("sum by (reason) (changai_subsidies_rejected_total)")],
            w=6,
            by="reason",
        ),
    ]
    notices = [
        Panel(
            "通知送达 · Notices delivered",
            "Notices delivered to branches' channels, by channel.",
            "bargauge",
            [Target('sum by (channel) (changai_notices_total{outcome="delivered"})')],
            w=8,
            h=6,
            by="channel",
        ),
        Panel(
            "通知失败 · Notices failed",
            "Notices whose last attempt failed (dead letters), by channel.",
            "bargauge",
            [Target('sum by (channel) (changai_notices_total{outcome="failed"})')],
            w=8,
            h=6,
            by="channel",
        ),
        Panel(
            "送达率 · Delivery success",
            "Delivered ÷ (delivered + failed), by channel.",
            "bargauge",
            [
                Target(
                    'sum by (channel) (changai_notices_total{outcome="delivered"}) / '
                    "sum by (channel) (changai_notices_total)"
                )
            ],
            w=8,
            h=6,
            unit="percentunit",
            by="channel",
            decimals=1,
        ),
    ]
    return dashboard(
        "changai-reform-overview",
        "产改进展 Reform overview",
        "The industrial-workforce reform in Ningxia, in the figures of the source article, from the event log.",
        [
            ("会员与组织 · Membership and branches", membership),
            ("培训、竞赛、创新 · Training, competitions, innovation", training),
            ("资金 · Funding", funding),
            ("通知 · Notices", notices),
        ],
        ["changai", "reform"],
        year_variable=True,
    )


def pipeline_health() -> dict:
    R = "[$__rate_interval]"
    red = [
        Panel(
            "请求速率 · Request rate",
            "HTTP requests per second, by service (R of RED).",
            "timeseries",
            [Target(f"sum by (service) (rate(changai_http_requests_total{R}))", "{{service}}")],
            w=8,
            h=8,
            unit="reqps",
        ),
        Panel(
            "错误率 · Error ratio",
            "Share of requests answered 5xx, by service (E of RED).",
            "timeseries",
            [
                Target(
                    f'(sum by (service) (rate(changai_http_requests_total{{status=~"5.."}}{R})) or '
                    f"sum by (service) (rate(changai_http_requests_total{R})) * 0) / "
                    f"sum by (service) (rate(changai_http_requests_total{R}))",
                    "{{service}}",
                )
            ],
            w=8,
            h=8,
            unit="percentunit",
        ),
        Panel(
            "延迟 p95 · Latency p95",
            "95th percentile of request duration, by service (D of RED).",
            "timeseries",
            [
                Target(
                    "histogram_quantile(0.95, sum by (service, le) "
                    f"(rate(changai_http_request_duration_seconds_bucket{R})))",
                    "{{service}}",
                )
            ],
            w=8,
            h=8,
            unit="s",
        ),
        Panel(
            "路由 · Busiest routes",
            "Requests per second by service and route template.",
            "table",
            [Target(f"topk(15, sum by (service, route, status) (rate(changai_http_requests_total{R})))", instant=True)],
            w=12,
            h=8,
            unit="reqps",
        ),
        Panel(
            "服务在线 · Targets up",
            "1 when Prometheus can scrape the target.",
            "stat",
            [Target("up", "{{job}} {{instance}}")],
            w=12,
            h=8,
            color_mode="background",
            text_mode="value_and_name",
        ),
    ]
    events = [
        Panel(
            "消费延迟 · Consumer lag",
            "Records behind the end of each topic, by consumer.",
            "timeseries",
            [Target("sum by (consumer, topic) (changai_consumer_lag)", "{{consumer}} {{topic}}")],
            w=8,
            h=8,
        ),
        # Every relay replica (and both notifier processes) counts the whole table: max, not sum.
        Panel(
            "发件箱积压 · Outbox backlog",
            "Outbox rows not yet published to Kafka, by service.",
            "timeseries",
            [Target("max by (service) (changai_outbox_backlog)", "{{service}}")],
            w=8,
            h=8,
        ),
        Panel(
            "发件箱最久未发 · Oldest unpublished outbox row",
            "Age of the oldest unpublished row, by service.",
            "timeseries",
            [Target("max by (service) (changai_outbox_oldest_unpublished_age_seconds)", "{{service}}")],
            w=8,
            h=8,
            unit="s",
        ),
        Panel(
            "事件发布 · Events published",
            "Outbox rows published per second, by service.",
            "timeseries",
            [Target(f"sum by (service) (rate(changai_outbox_published_total{R}))", "{{service}}")],
            w=8,
            h=8,
            unit="ops",
        ),
        Panel(
            "投影事件 · Events projected",
            "Events applied by the projection per second, by topic.",
            "timeseries",
            [Target(f"sum by (topic) (rate(changai_projection_events_total{R}))", "{{topic}}")],
            w=8,
            h=8,
            unit="ops",
        ),
        Panel(
            "最新事件距今 · Time since the last event",
            "Now minus the time of the newest event, by topic.",
            "bargauge",
            [Target("time() - max by (topic) (changai_projection_last_event_timestamp_seconds)", "{{topic}}")],
            w=8,
            h=8,
            unit="s",
        ),
    ]
    dead = [
        Panel(
            "死信 · Dead letters",
            "Records in the dead-letter topics (<topic>.dlq), by source topic and consumer.",
            "bargauge",
            [Target("sum by (topic, consumer) (changai_dlq_records_total)", "{{topic}} ← {{consumer}}")],
            w=8,
            h=8,
        ),
        Panel(
            "死信（服务自报）· Dead-lettered by services",
            "Records each service parked, by topic.",
            "bargauge",
            [Target("sum by (job, topic) (changai_dead_letters_total)", "{{job}} {{topic}}")],
            w=8,
            h=8,
        ),
        Panel(
            "通知送达率 · Notice delivery success",
            "Delivered ÷ finished notices, by channel.",
            "bargauge",
            [
                Target(
                    'sum by (channel) (changai_notices_total{outcome="delivered"}) / '
                    "sum by (channel) (changai_notices_total)",
                    "{{channel}}",
                )
            ],
            w=8,
            h=8,
            unit="percentunit",
            by="channel",
            decimals=1,
        ),
        Panel(
            "通知延迟 p95 · Notice latency p95",
            "From the domain event to the receiver's acknowledgement.",
            "bargauge",
            [
                Target(
                    "histogram_quantile(0.95, sum by (channel, le) (changai_notice_delivery_latency_seconds_bucket))",
                    "{{channel}}",
                )
            ],
            w=8,
            h=8,
            unit="s",
            by="channel",
        ),
        Panel(
            "投影抓取耗时 · Projection scrape time",
            "Time the projection took to render its last /metrics.",
            "stat",
            [Target("max(changai_projection_scrape_duration_seconds)")],
            w=8,
            h=8,
            unit="s",
        ),
        Panel(
            "Faust 再均衡与恢复 · Faust rebalances and recovery",
            "Faust's own sensors: rebalances so far, and changelog records read per second while tables recover.",
            "timeseries",
            [
                Target("sum(changai_faust_total_rebalances)", "rebalances"),
                Target(f"sum(rate(changai_faust_messages_received_total{R}))", "changelog records/s"),
            ],
            w=8,
            h=8,
        ),
    ]
    # The event intake's own figures (its /metrics, per registered source and upstream type).
    intake = [
        Panel(
            "接入事件 · Intake: events received",
            "Upstream events received per second, by source and type (HTTP and the Kafka intake topics).",
            "timeseries",
            [
                Target(
                    f"sum by (source, type) (rate(changai_intake_events_received_total{R}))",
                    "{{source}} {{type}}",
                )
            ],
            w=8,
            h=8,
            unit="ops",
        ),
        Panel(
            "接入已办结 · Intake: applied",
            "Events the owning service applied per second, by source and type.",
            "timeseries",
            [Target(f"sum by (source, type) (rate(changai_intake_applied_total{R}))", "{{source}} {{type}}")],
            w=8,
            h=8,
            unit="ops",
        ),
        Panel(
            "接入延迟 p95 · Intake: lag p95",
            "From the event's time to its outcome (applied or refused by the owning service), by source and type.",
            "timeseries",
            [
                Target(
                    f"histogram_quantile(0.95, sum by (source, type, le) (rate(changai_intake_lag_seconds_bucket{R})))",
                    "{{source}} {{type}}",
                )
            ],
            w=8,
            h=8,
            unit="s",
        ),
        Panel(
            "接入拒收 · Intake: refused, by reason",
            "Events refused so far, by source, type and reason (the intake's checks and the owning service's).",
            "table",
            [Target("sum by (source, type, reason) (changai_intake_rejected_total)", instant=True)],
            w=8,
            h=8,
        ),
        Panel(
            "接入重复 · Intake: duplicates",
            "Redeliveries of events already accepted (each changes nothing), by source and type.",
            "bargauge",
            [Target("sum by (source, type) (changai_intake_duplicates_total)", "{{source}} {{type}}")],
            w=8,
            h=8,
        ),
        Panel(
            "接入拒收率 · Intake: refused share",
            "Refused ÷ received over the last hour, by source (the alert fires above 10% over 15 minutes).",
            "bargauge",
            [
                Target(
                    "sum by (source) (increase(changai_intake_rejected_total[1h])) / "
                    "sum by (source) (increase(changai_intake_events_received_total[1h]))",
                    "{{source}}",
                )
            ],
            w=8,
            h=8,
            unit="percentunit",
            decimals=1,
        ),
    ]
    # Kafka itself, from what Strimzi runs in Kubernetes (the brokers' JMX exporter and the Kafka Exporter,
    # deploy/k8s/base/kafka/): empty in Compose and the local stack (KUBERNETES_ONLY_PREFIXES).
    kafka = [
        Panel(
            "Kafka 分区风险 · Kafka: partitions at risk",
            "Partitions under-replicated, below min.insync.replicas (acks=all writes to them fail) or without a "
            "leader (neither read nor written), from the brokers' JMX metrics. Kubernetes only.",
            "timeseries",
            [
                Target("sum(kafka_server_replicamanager_underreplicatedpartitions)", "under-replicated"),
                Target("sum(kafka_server_replicamanager_underminisrpartitioncount)", "under min ISR"),
                Target("sum(kafka_controller_kafkacontroller_offlinepartitionscount)", "offline"),
            ],
            w=8,
            h=8,
        ),
        Panel(
            "Kafka 写入 · Kafka: bytes in by topic",
            "Bytes written to the brokers per second, by topic (the volumes' growth). Kubernetes only.",
            "timeseries",
            [Target(f"sum by (topic) (rate(kafka_server_brokertopicmetrics_bytesin_total{R}))", "{{topic}}")],
            w=8,
            h=8,
            unit="Bps",
        ),
        Panel(
            "Kafka 消费组积压 · Kafka: consumer-group lag",
            "Records not yet read, by consumer group, as the brokers see it (Kafka Exporter): also for a group "
            "whose processes are down, which then report nothing themselves. Kubernetes only.",
            "timeseries",
            [Target("sum by (consumergroup) (kafka_consumergroup_lag)", "{{consumergroup}}")],
            w=8,
            h=8,
        ),
    ]
    return dashboard(
        "changai-pipeline-health",
        "管道健康 Pipeline health",
        "Is the pipe healthy: services' RED metrics, outboxes, consumers, dead letters, notices, the projection, "
        "the event intake, the Kafka brokers (Kubernetes).",
        [
            ("服务 · Services (RED)", red),
            ("事件流 · Event flow", events),
            ("死信与通知 · Dead letters and notices", dead),
            ("事件接入 · Event intake", intake),
            ("Kafka（Kubernetes）· Kafka brokers", kafka),
        ],
        ["changai", "operations"],
        year_variable=False,
    )


def reform_ledger() -> dict:
    """改革任务台账: the coordinating office's ledger, from the reform service's events."""
    Y = '{year="$year"}'
    tasks = [
        Panel(
            "改革任务 · Reform tasks ($year)",
            "Tasks in the year's ledger. Article: 59 tasks in 2020, 64 in 2021.",
            "stat",
            [Target(f"sum(changai_reform_tasks{Y})")],
            w=4,
        ),
        Panel(
            "已完成 · Completed ($year)",
            "Tasks the office verified completed. Article: all 59 (2020) and all 64 (2021).",
            "stat",
            [Target('sum(changai_reform_tasks{year="$year",status="completed"})')],
            w=4,
        ),
        Panel(
            "完成率 · Completion rate ($year)",
            "Completed tasks over all tasks of the year.",
            "stat",
            [Target(f'sum(changai_reform_tasks{{year="$year",status="completed"}}) / sum(changai_reform_tasks{Y})')],
            w=4,
            unit="percentunit",
            decimals=1,
        ),
        Panel(
            "逾期未完成 · Overdue now",
            "Tasks past their deadline (Asia/Shanghai) and not completed: "
            "supervision (督办) has reminded their lead units.",
            "stat",
            [Target("sum(changai_reform_tasks_overdue) or vector(0)")],
            w=4,
        ),
        Panel(
            "政策文件 · Policy documents ($year)",
            "Documents member units issued. Article: 60+.",
            "stat",
            [Target(f"sum(changai_reform_documents_total{Y})")],
            w=4,
        ),
        Panel(
            "市级实施方案 · City plans",
            "Cities whose implementation plan is recorded. Article: all 5.",
            "stat",
            [Target("sum(changai_reform_city_plans)")],
            w=4,
        ),
        Panel(
            "任务（按状态）· Tasks by status ($year)",
            "Assigned, in progress, completion reported, completed.",
            "bargauge",
            [Target(f"sum by (status) (changai_reform_tasks{Y})")],
            w=8,
            h=8,
            by="status",
        ),
        Panel(
            "完成率（按成员单位）· Completion rate by member unit ($year)",
            "Each lead unit's completed tasks over its tasks.",
            "bargauge",
            [
                Target(
                    f'sum by (unit) (changai_reform_tasks{{year="$year",status="completed"}}) '
                    f"/ sum by (unit) (changai_reform_tasks{Y})"
                )
            ],
            w=8,
            h=8,
            by="unit",
            unit="percentunit",
        ),
        Panel(
            "逾期任务（按成员单位）· Overdue by member unit",
            "Overdue tasks now, by lead unit.",
            "bargauge",
            [Target("sum by (unit) (changai_reform_tasks_overdue)")],
            w=8,
            h=8,
            by="unit",
        ),
    ]
    documents = [
        Panel(
            "政策文件（按成员单位）· Documents by member unit ($year)",
            "Policy documents issued, by unit.",
            "bargauge",
            [Target(f"sum by (unit) (changai_reform_documents_total{Y})")],
            w=12,
            h=9,
            by="unit",
        ),
        Panel(
            "试点（按类别）· Pilots by kind ($year)",
            "Article: 2 areas/units in 2020; in 2021 1 city, 2 "
            "industries, 3 counties/districts, 7 enterprises/institutions.",
            "bargauge",
            [Target(f"sum by (kind) (changai_reform_pilots_total{Y})", "{{kind}}")],
            w=6,
            h=9,
        ),
        Panel(
            "督办提醒 · Supervision reminders",
            "Overdue notices and progress reminders told so far.",
            "bargauge",
            [Target("sum by (stage) (changai_reform_reminders_total)")],
            w=6,
            h=9,
            by="stage",
        ),
    ]
    return dashboard(
        "changai-reform-ledger",
        "改革任务台账 Reform task ledger",
        "The coordinating office's task ledger: tasks by status and member unit, completion, overdue, documents, "
        "pilots and city plans.",
        [("任务台账 · Task ledger", tasks), ("文件与试点 · Documents and pilots", documents)],
        ["changai", "reform"],
        year_variable=True,
    )


DASHBOARDS = {
    "reform-overview.json": reform_overview,
    "pipeline-health.json": pipeline_health,
    "reform-ledger.json": reform_ledger,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def queries(dashboard_json: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(p["title"], t["expr"]) for p in dashboard_json["panels"] for t in p.get("targets", [])]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.projection dashboards")
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is not what the code gives")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = OUT / name, render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)} ({len(json.loads(text)['panels'])} panels)")
    if stale:
        print(f"stale: {', '.join(stale)}: run python -m services.projection dashboards")
        return 1
    return 0
