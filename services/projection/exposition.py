"""The figures as Prometheus metrics: a prometheus-client collector, and a cached text rendering of it.

``FiguresCollector`` is the reference: a prometheus-client collector that reads the
projection's state at scrape time (registered in its own ``FIGURES`` registry).
``/metrics`` serves ``generate_latest`` of the process registry (process, Faust and
platform metrics) followed by ``Renderer.render()``, which writes the same families
in the same text format but keeps each series' line and only formats again the
series whose value changed: a scrape with thousands of series costs a few
milliseconds instead of tens. A unit test holds the two renderings equal.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from services.projection.domain import SEP, Projection
from services.projection.families import EXPORTED, Family


class FiguresCollector:
    """Reads the projection's state at scrape time."""

    def __init__(self, projection: Projection | None = None) -> None:
        self.projection = projection

    def describe(self):
        return []  # no auto-describe: collect() needs the live state

    def collect(self):
        proj = self.projection
        if proj is None:
            return
        for family in EXPORTED:
            if family.kind == "histogram":
                histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
                for labels, buckets, total in proj.histogram(family.fid):
                    histogram.add_metric(list(labels), buckets, total)
                yield histogram
            elif family.prometheus_type == "counter":
                counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
                for labels, value in proj.values(family.fid):
                    counter.add_metric(labels, value)
                yield counter
            else:
                gauge = GaugeMetricFamily(family.name, family.help, labels=family.labels)
                for labels, value in proj.values(family.fid):
                    gauge.add_metric(labels, value)
                yield gauge


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class Renderer:
    """Prometheus text format (0.0.4) of the figures, with per-series line caching."""

    def __init__(self, projection: Projection | None = None) -> None:
        self.projection = projection
        self._headers = {f.fid: self._header(f) for f in EXPORTED}
        self._lines: dict[str, dict[str, tuple[float, bytes]]] = {f.fid: {} for f in EXPORTED}
        self._families: dict[str, tuple] = {}  # fid -> (version, rendered family, projection)

    @staticmethod
    def _header(family: Family) -> bytes:
        return (f"# HELP {family.name} {_help(family.help)}\n# TYPE {family.name} {family.prometheus_type}\n").encode()

    def _prefix(self, family: Family, labels: tuple[str, ...], name: str | None = None, extra: str = "") -> str:
        # not strict: pairs names and values as prometheus-client's add_metric does (the renderings stay equal)
        pairs = sorted(f'{n}="{_escape(v)}"' for n, v in zip(family.labels, labels, strict=False))
        if extra:
            pairs.append(extra)  # `le` goes last, as prometheus-client writes it
        return f"{name or family.name}{{{','.join(pairs)}}} " if pairs else f"{name or family.name} "

    def render(self) -> bytes:
        proj = self.projection
        if proj is None:
            return b""
        if self._families and next(iter(self._families.values()))[2] is not proj:
            self._families.clear()  # another projection (a new app in the same process)
            for lines in self._lines.values():
                lines.clear()
        parts: list[bytes] = []
        for family in EXPORTED:
            fid = family.fid
            version = proj.version(fid)
            cached = self._families.get(fid)
            if cached is None or cached[0] != version:
                cached = self._families[fid] = (version, self._family(proj, family), proj)
            parts.append(cached[1])
        return b"".join(parts)

    def _family(self, proj: Projection, family: Family) -> bytes:
        fid = family.fid
        out: list[bytes] = [self._headers[fid]]
        add = out.append
        if family.kind == "histogram":
            for labels, buckets, total in proj.histogram(fid):
                for le, count in buckets:
                    add(
                        (
                            self._prefix(family, labels, family.name + "_bucket", f'le="{le}"')
                            + floatToGoString(count)
                            + "\n"
                        ).encode()
                    )
                add(
                    (
                        self._prefix(family, labels, family.name + "_count") + floatToGoString(buckets[-1][1]) + "\n"
                    ).encode()
                )
                add((self._prefix(family, labels, family.name + "_sum") + floatToGoString(total) + "\n").encode())
            return b"".join(out)
        cache = self._lines[fid]
        for lk, value in proj.raw_values(fid):
            hit = cache.get(lk)
            if hit is None or hit[0] != value:
                labels = tuple(lk.split(SEP)) if lk else ()
                hit = cache[lk] = (value, (self._prefix(family, labels) + floatToGoString(value) + "\n").encode())
            add(hit[1])
        return b"".join(out)


def figures_registry(collector: FiguresCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
