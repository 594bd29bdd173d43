"""The advancement meeting's report (推进会) as a workbook, in Chinese: one sheet each for the summary,
the units, the task list, overdue tasks, documents and pilots. openpyxl writes it; nothing is read back."""

from __future__ import annotations

import io
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font

STATUS = {"assigned": "已分工", "in_progress": "推进中", "completion_reported": "已报送完成", "completed": "已完成"}
PILOT_KIND = {"city": "市", "industry": "产业", "county": "县（区）", "enterprise": "企事业单位"}
PILOT_MODE = {"comprehensive": "全面试点", "project": "项目试点"}
BOLD = Font(bold=True)


def _sheet(wb: Workbook, title: str, header: list[str], rows: list[list[Any]], widths: list[int]) -> None:
    ws = wb.create_sheet(title)
    ws.append(header)
    for cell in ws[1]:
        cell.font = BOLD
        cell.alignment = Alignment(horizontal="center")
    for row in rows:
        # A value starting with = + - @ would run as a formula in a spreadsheet: store it as text.
        ws.append([f"'{v}" if isinstance(v, str) and v[:1] in "=+-@\t\r" else v for v in row])
    for i, width in enumerate(widths):
        ws.column_dimensions[chr(ord("A") + i)].width = width
    ws.freeze_panes = "A2"


def workbook(report: dict[str, Any]) -> bytes:
    wb = Workbook()
    wb.remove(wb.active)
    year = report["year"]
    _sheet(
        wb,
        "总体情况",
        ["项目", "数值"],
        [
            ["年度", year],
            ["台账状态", "已关账" if report["status"] == "closed" else "进行中"],
            ["任务总数", report["tasks"]],
            ["已完成", report["completed"]],
            ["完成率", f"{report['completion_rate'] * 100:.1f}%"],
            ["逾期未完成", len(report["overdue"])],
            ["出台政策文件", len(report["documents"])],
            ["试点", len(report["pilots"])],
            *[[f"状态：{STATUS.get(k, k)}", v] for k, v in report["by_status"].items()],
        ],
        [24, 16],
    )
    _sheet(
        wb,
        "成员单位",
        ["成员单位", "牵头任务", "已完成", "完成率"],
        [[u["unit"], u["tasks"], u["completed"], f"{u['completion_rate'] * 100:.1f}%"] for u in report["by_unit"]],
        [36, 12, 12, 12],
    )
    _sheet(
        wb,
        "任务台账",
        ["编号", "任务", "牵头单位", "完成时限", "状态", "进度"],
        [
            [
                t["number"],
                t["title"],
                t["lead_unit"],
                t["deadline"],
                STATUS.get(t["status"], t["status"]),
                f"{t['percent']}%",
            ]
            for t in report["task_list"]
        ],
        [10, 48, 30, 14, 14, 8],
    )
    _sheet(
        wb,
        "逾期任务",
        ["编号", "任务", "牵头单位", "完成时限", "逾期天数", "状态"],
        [
            [
                t["number"],
                t["title"],
                t["lead_unit"],
                t["deadline"],
                t["days_overdue"],
                STATUS.get(t["status"], t["status"]),
            ]
            for t in report["overdue"]
        ],
        [10, 48, 30, 14, 10, 14],
    )
    _sheet(
        wb,
        "政策文件",
        ["成员单位", "文号", "标题", "印发日期"],
        [[d["unit"], d["doc_number"], d["title"], d["issued_on"]] for d in report["documents"]],
        [30, 24, 48, 14],
    )
    _sheet(
        wb,
        "试点",
        ["类别", "方式", "名称", "地区代码"],
        [
            [PILOT_KIND.get(p["kind"], p["kind"]), PILOT_MODE.get(p["mode"], p["mode"]), p["name"], p["region_code"]]
            for p in report["pilots"]
        ],
        [14, 12, 40, 12],
    )
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
