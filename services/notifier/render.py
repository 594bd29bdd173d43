"""Templates: one Jinja2 template per event type and locale, laid out per channel kind.

A template (``templates/<locale>/<event type>.j2``) sets ``title`` and ``facts`` (label,
value pairs) and renders the one-line summary, for example::

    {%- set title = "培训结业" -%}
    {%- set facts = [("参训人次", d.person_times)] -%}
    {{ org(d.organiser_id, d.organiser_name) }}：{{ d.programme_name }}第{{ d.number }}期已结业。

Layouts turn that into what each channel takes: plain text, WeCom markdown (4,096 bytes),
DingTalk markdown (title + text, with the robot's keyword), e-mail (subject, text, HTML).
Every registered event type must have a template in every locale: :meth:`Renderer.check`
renders a sample of each at start-up and refuses to start otherwise.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

from services.notifier.domain import LOCALES, SHANGHAI, TEST_TYPE, truncate_utf8, utf8_len
from shared import regions

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Byte limits of the robots (NOTICES.md): WeCom text 2,048, markdown 4,096.
LIMITS = {
    ("wecom", "text"): 2048,
    ("wecom", "markdown"): 4096,
    ("dingtalk", "text"): 4096,
    ("dingtalk", "markdown"): 4096,
}
CUT = {"zh-CN": "…（内容过长，已截断）", "en": "… (truncated)"}
SUMMARY_HEAD = {
    "zh-CN": "【通知汇总】以下 {n} 条通知因发送频率限制合并发送：",
    "en": "[Digest] {n} notices sent together because of the robot's rate limit:",
}

LABELS: dict[str, dict[str, dict[str, str]]] = {
    "zh-CN": {
        "branch_kind": {
            "enterprise": "企业工会",
            "joint": "联合工会",
            "industry": "行业工会",
            "new_form": "新就业形态工会",
        },
        "employment_form": {
            "standard": "标准劳动关系",
            "courier": "快递员",
            "ride_hailing": "网约车司机",
            "truck_driver": "货车司机",
            "food_delivery": "外卖骑手",
        },
        "subsidy_category": {
            "pre_job": "岗前培训",
            "skills_upgrade": "技能提升培训",
            "new_form": "新就业形态劳动者培训",
        },
        "provider_kind": {"vocational_college": "职业院校", "technical_school": "技工院校", "enterprise": "企业"},
        "organiser_kind": {"branch": "基层工会", "enterprise": "企业"},
        "competition_kind": {"labour": "劳动竞赛", "skills": "职业技能大赛"},
        "tier": {"region": "自治区级", "city": "市级", "county": "县级", "enterprise": "企业级"},
        "studio_kind": {
            "innovation_studio": "劳模和工匠人才创新工作室",
            "training_base": "高技能人才培训基地",
            "skill_master_studio": "技能大师工作室",
        },
        "studio_level": {"national": "国家级", "region": "自治区级", "city": "市级"},
        "source_kind": {
            "central_budget": "中央预算内资金",
            "regional_budget": "自治区预算内资金",
            "special_fund": "专项资金",
            "union_funds": "工会经费",
            "skills_account": "职业技能提升行动专账",
        },
        "beneficiary_kind": {
            "project": "项目",
            "studio": "工作室",
            "training_base": "培训基地",
            "branch": "基层工会",
            "enterprise": "企业",
        },
        "rejection_reason": {
            "fund_exhausted": "资金已用完",
            "no_rule": "无适用补贴标准",
            "no_fund": "无可用资金",
            "organiser_unknown": "组织单位不明",
            "nothing_eligible": "无符合条件人员",
        },
        "result": {"passed": "合格", "failed": "不合格"},
        "rating": {"excellent": "优秀", "good": "良好", "pass": "合格", "fail": "不合格"},
        "channel_kind": {
            "webhook": "Webhook",
            "wecom": "企业微信群机器人",
            "dingtalk": "钉钉群机器人",
            "email": "电子邮件",
        },
        "skill_level": {
            "1": "高级技师（一级）",
            "2": "技师（二级）",
            "3": "高级工（三级）",
            "4": "中级工（四级）",
            "5": "初级工（五级）",
        },
    },
    "en": {
        "branch_kind": {
            "enterprise": "enterprise union",
            "joint": "joint union",
            "industry": "industry union",
            "new_form": "new-form workers' union",
        },
        "employment_form": {
            "standard": "standard employment",
            "courier": "courier",
            "ride_hailing": "ride-hailing driver",
            "truck_driver": "truck driver",
            "food_delivery": "food-delivery rider",
        },
        "subsidy_category": {
            "pre_job": "pre-job training",
            "skills_upgrade": "skills upgrading",
            "new_form": "training for new-form workers",
        },
        "provider_kind": {
            "vocational_college": "vocational college",
            "technical_school": "technical school",
            "enterprise": "enterprise",
        },
        "organiser_kind": {"branch": "union branch", "enterprise": "enterprise"},
        "competition_kind": {"labour": "labour competition", "skills": "vocational skills competition"},
        "tier": {"region": "regional", "city": "city", "county": "county", "enterprise": "enterprise"},
        "studio_kind": {
            "innovation_studio": "model-worker and craftsman innovation studio",
            "training_base": "high-skill training base",
            "skill_master_studio": "skill-master studio",
        },
        "studio_level": {"national": "national", "region": "regional", "city": "city"},
        "source_kind": {
            "central_budget": "central budget",
            "regional_budget": "regional budget",
            "special_fund": "special fund",
            "union_funds": "union funds",
            "skills_account": "skills-upgrading account",
        },
        "beneficiary_kind": {
            "project": "project",
            "studio": "studio",
            "training_base": "training base",
            "branch": "union branch",
            "enterprise": "enterprise",
        },
        "rejection_reason": {
            "fund_exhausted": "fund exhausted",
            "no_rule": "no subsidy rule applies",
            "no_fund": "no fund available",
            "organiser_unknown": "organiser unknown",
            "nothing_eligible": "no one eligible",
        },
        "result": {"passed": "passed", "failed": "failed"},
        "rating": {"excellent": "excellent", "good": "good", "pass": "pass", "fail": "fail"},
        "channel_kind": {
            "webhook": "webhook",
            "wecom": "WeCom group robot",
            "dingtalk": "DingTalk group robot",
            "email": "e-mail",
        },
        "skill_level": {
            "1": "senior technician (level 1)",
            "2": "technician (level 2)",
            "3": "senior worker (level 3)",
            "4": "intermediate worker (level 4)",
            "5": "junior worker (level 5)",
        },
    },
}
REGION_EN = {
    "640000": "Ningxia",
    "640100": "Yinchuan",
    "640104": "Xingqing",
    "640105": "Xixia",
    "640106": "Jinfeng",
    "640121": "Yongning",
    "640122": "Helan",
    "640181": "Lingwu",
    "640200": "Shizuishan",
    "640202": "Dawukou",
    "640205": "Huinong",
    "640221": "Pingluo",
    "640300": "Wuzhong",
    "640302": "Litong",
    "640303": "Hongsibao",
    "640323": "Yanchi",
    "640324": "Tongxin",
    "640381": "Qingtongxia",
    "640400": "Guyuan",
    "640402": "Yuanzhou",
    "640422": "Xiji",
    "640423": "Longde",
    "640424": "Jingyuan",
    "640425": "Pengyang",
    "640500": "Zhongwei",
    "640502": "Shapotou",
    "640521": "Zhongning",
    "640522": "Haiyuan",
}


class TemplateCheckError(RuntimeError):
    """Templates missing or failing for registered event types: the service must not start."""


@dataclass
class Notice:
    """A rendered notice, before it is laid out for a channel."""

    event_type: str
    locale: str
    title: str
    summary: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    note: str | None = None  # e.g. "standing in for a paused channel"


@dataclass
class Names:
    """Words for ids: branch names from the read model, channel names from the channel table."""

    branches: dict[uuid.UUID, str] = field(default_factory=dict)
    channels: dict[uuid.UUID, str] = field(default_factory=dict)


# Every character that means something in WeCom's or DingTalk's markdown (emphasis, links and
# images, headings, code, quotes, tables, strike-through, tags and WeCom's <@userid> mentions),
# replaced by its full-width form: shown the same to a reader, meaningless to the renderer.
# Backslash escapes are not used: neither vendor documents them for its markdown subset.
_MD_CHARS = {
    "\\": "＼",
    "*": "＊",
    "_": "＿",
    "[": "［",
    "]": "］",
    "#": "＃",
    "!": "！",
    "`": "＇",
    "<": "＜",
    ">": "＞",
    "~": "～",
    "|": "｜",
}
_MD_UNSAFE = re.compile("[" + re.escape("".join(_MD_CHARS)) + "]")
_TAGS = {"<": "＜", ">": "＞"}
# A line that starts like a list item, an ordered item or a setext underline.
_LINE_START = re.compile(r"^(\s*)([-+=]|\d+\.(?=\s))")
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*):(//)")


def one_line(text: str) -> str:
    """Any run of whitespace (newlines, U+2028, tabs…) as one space: a value cannot start a line
    of its own (``\n\n# HEAD``) nor forge a line of the notice."""
    return " ".join(str(text).split())


def _no_links(text: str) -> str:
    """``http://evil`` as ``http：//evil``: readable, but no client turns it into a link."""
    return _SCHEME.sub(lambda m: f"{m.group(1)}：{m.group(2)}", text)


def _md(text: str, *, line_start: bool = False) -> str:
    """Text inside robot markdown: one line, no markup, no links (NOTICES.md: values are data);
    ``line_start``: the text begins a line, where ``- ``, ``+ ``, ``1. `` would make a list."""
    text = _MD_UNSAFE.sub(lambda m: _MD_CHARS[m.group()], _no_links(one_line(text)))
    if not line_start:
        return text
    return _LINE_START.sub(
        lambda m: m.group(1) + {"-": "－", "+": "＋", "=": "＝"}.get(m.group(2), m.group(2).replace(".", "．")), text
    )


def _plain(text: str, kind: str) -> str:
    """Text inside a plain-text robot message: one line; WeCom's text also reads ``<@userid>``."""
    text = _no_links(one_line(text))
    return re.sub("[<>]", lambda m: _TAGS[m.group()], text) if kind == "wecom" else text


class Renderer:
    def __init__(self, directory: Path = TEMPLATES):
        self.directory = directory
        self.env = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        self.html = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html", "j2"], default=True),
        )
        self._templates: dict[tuple[str, str], Any] = {}

    # -- start-up check ---------------------------------------------------------
    def check(self, event_types: Iterable[str] | None = None) -> int:
        """Render a sample of every event type in every locale and channel layout; raise listing
        every problem. Returns the number of renderings checked."""
        from services.notifier.samples import sample
        from shared.events import REGISTRY

        types = sorted(event_types if event_types is not None else REGISTRY)
        problems: list[str] = []
        checked = 0
        for event_type in [*types, TEST_TYPE]:
            for locale in LOCALES:
                try:
                    data = sample(event_type)
                    notice = self.notice(event_type, data, locale, Names(), event_time=datetime(2024, 5, 1))
                    for kind, fmt in (
                        ("wecom", "text"),
                        ("wecom", "markdown"),
                        ("dingtalk", "markdown"),
                        ("dingtalk", "text"),
                        ("email", None),
                    ):
                        self.layout(notice, kind, fmt or "markdown", keyword="产改")
                        checked += 1
                except TemplateNotFound as exc:
                    problems.append(f"{locale}/{event_type}: no template ({exc.name})")
                except Exception as exc:  # noqa: BLE001 - every failure is reported at once
                    problems.append(f"{locale}/{event_type}: {type(exc).__name__}: {exc}")
        if problems:
            raise TemplateCheckError("notice templates incomplete:\n  " + "\n  ".join(problems))
        return checked

    # -- rendering ------------------------------------------------------------------
    def _template(self, locale: str, event_type: str):
        key = (locale, event_type)
        if key not in self._templates:
            self._templates[key] = self.env.get_template(f"{locale}/{event_type}.j2")
        return self._templates[key]

    def context(self, locale: str, names: Names) -> dict[str, Any]:
        labels = LABELS[locale]
        zh = locale == "zh-CN"

        def branch(branch_id: Any) -> str:
            try:
                bid = uuid.UUID(str(branch_id))
            except ValueError:
                return str(branch_id)
            name = names.branches.get(bid)
            return name or (f"工会（编号 {str(bid)[:8]}）" if zh else f"union branch {str(bid)[:8]}")

        def org(organiser_id: Any, name: str | None = None) -> str:
            if name:
                return name
            return branch(organiser_id)

        def region(code: Any) -> str:
            if not code:
                return "—"
            r = regions.get(str(code))
            if r is None:
                return str(code)
            if zh:
                parent = regions.get(r.parent) if r.level == "county" and r.parent else None
                return f"{parent.name}{r.name}" if parent else r.name
            name = REGION_EN.get(r.code, r.code)
            if r.level == "county" and r.parent:
                return f"{name}, {REGION_EN.get(r.parent, r.parent)}"
            return name

        def yuan(fen: Any) -> str:
            fen = int(fen)
            sign = "-" if fen < 0 else ""
            whole, cents = divmod(abs(fen), 100)
            text = f"{sign}{whole:,}.{cents:02d}"
            return f"{text} 元" if zh else f"CNY {text}"

        def day(value: Any) -> str:
            if value is None:
                return "—"
            if isinstance(value, str):
                value = date.fromisoformat(value[:10])
            if isinstance(value, datetime):
                value = value.astimezone(SHANGHAI).date() if value.tzinfo else value.date()
            return f"{value.year}年{value.month}月{value.day}日" if zh else value.strftime("%-d %b %Y")

        def label(group: str, value: Any) -> str:
            if value is None:
                return "—"
            key = str(getattr(value, "value", value))
            return labels.get(group, {}).get(key, key)

        def channel(channel_id: Any) -> str:
            try:
                return names.channels.get(uuid.UUID(str(channel_id))) or str(channel_id)[:8]
            except ValueError:
                return str(channel_id)

        def count(n: Any, unit_zh: str = "", unit_en: str = "") -> str:
            return f"{n}{unit_zh}" if zh else (f"{n} {unit_en}".strip() if unit_en else str(n))

        return {
            "branch": branch,
            "org": org,
            "region": region,
            "yuan": yuan,
            "day": day,
            "label": label,
            "channel": channel,
            "count": count,
            "locale": locale,
        }

    def notice(
        self,
        event_type: str,
        data: Any,
        locale: str,
        names: Names,
        *,
        event_time: datetime | None = None,
        note: str | None = None,
    ) -> Notice:
        locale = locale if locale in LOCALES else "zh-CN"
        template = self._template(locale, event_type)
        ctx = self.context(locale, names)
        ctx.update(d=data, event_time=event_time)
        module = template.make_module(ctx)
        title = str(module.title).strip()
        facts = [(str(k), "—" if v is None or v == "" else str(v)) for k, v in getattr(module, "facts", [])]
        summary = " ".join(str(module).split())
        return Notice(event_type, locale, title, summary, facts, note)

    # -- layouts per channel kind ----------------------------------------------------
    def text(self, n: Notice, kind: str = "plain") -> str:
        """Plain text, one line per part: a value cannot add lines of its own."""
        sep = "：" if n.locale == "zh-CN" else ": "
        title, summary = _plain(n.title, kind), _plain(n.summary, kind)
        head = f"【{title}】{summary}" if n.locale == "zh-CN" else f"[{title}] {summary}"
        lines = [head, *(f"{_plain(k, kind)}{sep}{_plain(v, kind)}" for k, v in n.facts)]
        if n.note:
            lines.append(_plain(n.note, kind))
        return "\n".join(lines)

    def markdown(self, n: Notice, kind: str) -> str:
        sep = "：" if n.locale == "zh-CN" else ": "
        title = f"【{n.title}】" if n.locale == "zh-CN" else n.title
        if kind == "wecom":
            lines = [
                f"**{_md(title)}**",
                _md(n.summary, line_start=True),
                *(f'> {_md(k)}{sep}<font color="comment">{_md(v)}</font>' for k, v in n.facts),
            ]
            if n.note:
                lines.append(f'<font color="warning">{_md(n.note)}</font>')
            return "\n".join(lines)
        parts = [
            f"#### {_md(title)}",
            _md(n.summary, line_start=True),
            "\n".join(f"- {_md(k)}{sep}{_md(v)}" for k, v in n.facts),
        ]
        if n.note:
            parts.append(f"**{_md(n.note)}**")
        return "\n\n".join(p for p in parts if p)

    def layout(self, n: Notice, kind: str, fmt: str = "markdown", *, keyword: str | None = None) -> dict:
        """The stored form of a notice for a channel: what the deliverer sends (robots: the
        message body; e-mail: subject, text, HTML)."""
        if kind == "email":
            # A header is one line (a newline in it would forge headers); HTML is escaped by
            # Jinja's autoescape, and links are defused in every part.
            subject = _no_links(one_line((f"【{n.title}】" if n.locale == "zh-CN" else f"[{n.title}] ") + n.summary))
            if len(subject) > 120:
                subject = subject[:119] + "…"
            safe = Notice(
                n.event_type,
                n.locale,
                _no_links(one_line(n.title)),
                _no_links(one_line(n.summary)),
                [(_no_links(one_line(k)), _no_links(one_line(v))) for k, v in n.facts],
                _no_links(one_line(n.note)) if n.note else None,
            )
            html = self.html.get_template("layouts/email.html.j2").render(n=safe)
            return {"subject": subject, "text": self.text(n), "html": html}
        fmt = "text" if fmt == "text" else "markdown"
        content = self.text(n, kind) if fmt == "text" else self.markdown(n, kind)
        title, summary = _plain(n.title, kind), _plain(n.summary, kind)
        head = f"【{title}】{summary}" if n.locale == "zh-CN" else f"[{title}] {summary}"
        return robot_body(kind, fmt, head, content, n.locale, keyword=keyword)

    def digest(
        self,
        kind: str,
        fmt: str,
        locale: str,
        bodies: list[dict],
        *,
        keyword: str | None = None,
        limit: int | None = None,
    ) -> tuple[dict, int]:
        """Several robot notices as one message (a burst beyond the budget): as many whole
        notices as fit in the byte limit, never one cut in half. Returns (body, how many)."""
        limit = limit or LIMITS[(kind, fmt)]
        head = SUMMARY_HEAD.get(locale, SUMMARY_HEAD["zh-CN"])
        sep = "\n\n---\n\n" if fmt == "markdown" else "\n\n"
        reserve = utf8_len(keyword_suffix(keyword, fmt)) if keyword else 0
        taken: list[str] = []
        for body in bodies:
            content = robot_content(body, strip_keyword=keyword)
            candidate = head.format(n=len(taken) + 1) + sep + sep.join([*taken, content])
            if taken and utf8_len(candidate) + reserve > limit:
                break
            taken.append(content)
        title = head.format(n=len(taken)).split("：")[0].split(":")[0]
        text = head.format(n=len(taken)) + sep + sep.join(taken)
        return robot_body(kind, fmt, title, text, locale, keyword=keyword, limit=limit), len(taken)


def keyword_suffix(keyword: str | None, fmt: str) -> str:
    return f"\n\n{keyword}" if keyword else ""


def robot_body(
    kind: str, fmt: str, title: str, content: str, locale: str, *, keyword: str | None = None, limit: int | None = None
) -> dict:
    """The JSON body a robot takes, cut to its byte limit on a character boundary and marked as
    cut; DingTalk's keyword added when the text lacks it (kept even when cut)."""
    limit = limit or LIMITS[(kind, fmt)]
    if kind == "dingtalk" and keyword:
        # Cut first, then make sure the keyword is there: a keyword inside the text may be cut off
        # (DingTalk then refuses the message with 310000), so room for it is always kept.
        suffix = keyword_suffix(keyword, fmt)
        content, _ = truncate_utf8(content, limit - utf8_len(suffix), CUT.get(locale, CUT["zh-CN"]))
        if keyword not in content:
            content += suffix
    else:
        content, _ = truncate_utf8(content, limit, CUT.get(locale, CUT["zh-CN"]))
    if fmt == "text":
        return {"msgtype": "text", "text": {"content": content}}
    if kind == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": content}}
    return {"msgtype": "markdown", "markdown": {"title": title[:64], "text": content}}


def robot_content(body: dict, *, strip_keyword: str | None = None) -> str:
    inner = body.get("markdown") or body.get("text") or {}
    content = inner.get("content") or inner.get("text") or ""
    if strip_keyword:
        content = content.removesuffix(keyword_suffix(strip_keyword, ""))
    return content
