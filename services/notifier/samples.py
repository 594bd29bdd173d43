"""A valid sample of every registered event type, built from its model (template checks, previews).

Values come from the field's name and type; a new event type with a field these rules
cannot fill fails the template check loudly rather than silently skipping the type.
"""

from __future__ import annotations

import enum
import types
import typing
import uuid
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel

from services.notifier.domain import TEST_TYPE

NS = uuid.UUID("6c1d2a8e-4c57-4a52-9f0e-6e6f74696365")

BY_NAME: dict[str, Any] = {
    "region_code": "640104",
    "id_hash": "5e" * 32,  # member.joined's lookup hash (hex), never shown in a notice
    "from_region_code": "640104",
    "to_region_code": "640105",
    "owner_region": "640100",
    "city_code": "640100",
    "from_city_code": "640100",
    "to_city_code": "640100",
    "industry_section": "C",
    "result": "passed",
    "rating": "excellent",
    "sex": "female",
    "credit_code": "91640100MA76H5BT9B",
    "serial": "NX-2024-000123",
    "name": "宁夏枸杞产业集团有限公司工会委员会",
    "programme_name": "枸杞栽培技术提升",
    "provider_name": "宁夏职业技术学院",
    "organiser_name": "宁夏枸杞产业集团有限公司工会委员会",
    "beneficiary_name": "宁夏枸杞产业集团有限公司工会委员会",
    "host_enterprise": "宁夏共享集团",
    "lead_worker": "王师傅",
    "occupation": "农艺工",
    "issuer": "宁夏职业技能鉴定中心",
    "industry": "制造业",
    "purpose": "职工技能培训",
    "reason": "会员调动",
    "detail": "本年度资金已全部安排",
    "last_error": "HTTP 503",
    "event_type": "changai.training.session.completed.v1",
    "by_region": {"640104": 1200, "640105": 340, "640202": 45},
    "batch_kind": "membership.import",
    "count": 1585,
    "branches": 12,
    "report_url": "https://changai.example.cn/v1/imports/0190a1b2",
    "organiser_id": str(uuid.uuid5(NS, "branch")),
    "beneficiary_id": str(uuid.uuid5(NS, "branch")),
    "fiscal_year": 2024,
    "birth_year": 1990,
    "number": 3,
    "capacity": 40,
    "person_times": 36,
    "passed": 34,
    "failed": 2,
    "eligible_persons": 30,
    "persons": 30,
    "participants": 120,
    "headcount": 12,
    "members_moved": 25,
    "attempts": 6,
    "latency_ms": 42,
    "skill_level": 3,
    "from_level": 4,
    "to_level": 3,
    "level": 3,
    "target_level": 3,
    "changed": ["name"],
    "services": ["饮水", "休息", "充电"],
    "kind": None,  # by type (an enum)
    # reform ledger
    "year": 2021,
    "year_id": "2021",
    "percent": 60,
    "doc_number": "宁人社发〔2021〕12号",
    "title": "完善产业工人技能评价体系",
    "days_overdue": 3,
    "days_silent": 30,
    "units": 22,
    "tasks": 64,
    "completed": 64,
    "documents": 60,
    "pilots": 13,
    "evidence_links": 2,
    "note": "已完成调研",
    "on_time": True,
    "lead_unit": "自治区人力资源和社会保障厅",
    "unit": "自治区人力资源和社会保障厅",
}
AMOUNTS = {
    "amount_fen": 8_000_000,
    "total_fen": 50_000_000,
    "unspent_fen": 1_250_000,
    "released_fen": 300_000,
    "grant_remaining_fen": 2_000_000,
    "rate_fen": 80_000,
}


def _value(name: str, annotation: Any, model: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _value(name, args[0], model)
    if name in AMOUNTS:
        return AMOUNTS[name]
    if BY_NAME.get(name) is not None and not (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return BY_NAME[name]
    if origin in (list, tuple, set):
        (item,) = typing.get_args(annotation) or (str,)
        return [_value(name.removesuffix("s"), item, model)]
    if annotation is uuid.UUID:
        return str(uuid.uuid5(NS, "branch" if "branch" in name or name == "transferred_to" else f"{model}.{name}"))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation)).value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {f: _value(f, info.annotation, annotation.__name__) for f, info in annotation.model_fields.items()}
    if annotation is date:
        return "2024-05-01"
    if annotation is datetime:
        return datetime(2024, 5, 1, tzinfo=UTC).isoformat()
    if annotation is int:
        return 1 if name == "rank" else 12
    if annotation is str:
        return {"award": "一等奖"}.get(name, "示例")
    if annotation is bool:
        return False
    raise TypeError(f"cannot make a sample {name}: {annotation!r} of {model}")


def sample(event_type: str):
    """A valid instance of ``event_type``'s data (a dict for the test notice)."""
    if event_type == TEST_TYPE:
        return {"channel_name": "示例渠道", "requested_by": "operator"}
    from shared.events import REGISTRY

    cls = REGISTRY[event_type]
    values = {name: _value(name, info.annotation, cls.__name__) for name, info in cls.model_fields.items()}
    return cls.model_validate(values)
