"""Ningxia's administrative divisions (GB/T 2260): the region, 5 cities, 22 county-level units.

Reference data shared by every service: tokens are scoped to a region code, and a
caller scoped to a city may act on that city's counties, not on another city.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

REGION_ROOT = "640000"


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    level: str  # region | city | county
    parent: str | None

    @property
    def city(self) -> str | None:
        """The city code this region belongs to (itself for a city, None for the region)."""
        if self.level == "city":
            return self.code
        if self.level == "county":
            return self.parent
        return None


_CITIES = {
    "640100": (
        "银川市",
        {
            "640104": "兴庆区",
            "640105": "西夏区",
            "640106": "金凤区",
            "640121": "永宁县",
            "640122": "贺兰县",
            "640181": "灵武市",
        },
    ),
    "640200": ("石嘴山市", {"640202": "大武口区", "640205": "惠农区", "640221": "平罗县"}),
    "640300": (
        "吴忠市",
        {"640302": "利通区", "640303": "红寺堡区", "640323": "盐池县", "640324": "同心县", "640381": "青铜峡市"},
    ),
    "640400": (
        "固原市",
        {"640402": "原州区", "640422": "西吉县", "640423": "隆德县", "640424": "泾源县", "640425": "彭阳县"},
    ),
    "640500": ("中卫市", {"640502": "沙坡头区", "640521": "中宁县", "640522": "海原县"}),
}

REGIONS: dict[str, Region] = {REGION_ROOT: Region(REGION_ROOT, "宁夏回族自治区", "region", None)}
for _city, (_name, _counties) in _CITIES.items():
    REGIONS[_city] = Region(_city, _name, "city", REGION_ROOT)
    for _code, _cname in _counties.items():
        REGIONS[_code] = Region(_code, _cname, "county", _city)

CITIES = [r for r in REGIONS.values() if r.level == "city"]
COUNTIES = [r for r in REGIONS.values() if r.level == "county"]


def get(code: str) -> Region | None:
    return REGIONS.get(code)


def ancestors(code: str) -> list[str]:
    """The code itself and every region above it, nearest first."""
    chain = []
    region = REGIONS.get(code)
    while region:
        chain.append(region.code)
        region = REGIONS.get(region.parent) if region.parent else None
    return chain


def contains(scope: str, code: str) -> bool:
    """True when ``code`` is ``scope`` or lies under it."""
    return scope in ancestors(code)


def descendants(code: str) -> list[str]:
    """The code itself and every region under it."""
    return [c for c in REGIONS if contains(code, c)]


def city_of(code: str) -> str | None:
    region = REGIONS.get(code)
    return region.city if region else None


def _known(code: str) -> str:
    if code not in REGIONS:
        raise ValueError("not a Ningxia region code (GB/T 2260)")
    return code


# The one type of a region code in every request model: six digits, and one of Ningxia's.
RegionCode = Annotated[str, Field(pattern=r"^\d{6}$", examples=["640104"]), AfterValidator(_known)]
