"""The projection's state and rules: events in, figures out. No I/O here.

Two kinds of records, both kept in Faust tables with changelogs (``main.py``):

* ``counters``: one record per (source topic, partition, metric family), key
  ``"<topic>|<partition>|<family>"``, value ``{"o": offset, "v": {labels: number}}``.
  ``o`` is the offset of the last event of that partition applied to the record;
  an event whose offset is not above it was applied already (a redelivery after a
  restart) and changes nothing. The record and its watermark are one changelog
  write, so they can never disagree.
* ``aggregates``: one record per aggregate id (the Kafka record key, so the table
  is co-partitioned with the topics) for what needs a state machine: branches,
  sessions, competitions, studios, notifier channels. It holds the state after the
  event and ``o`` (same rule).

Scrapes never walk the tables: ``totals`` (sum of the counters over partitions) and
``index`` (aggregate counts by state) are maintained on every change and rebuilt
from the tables after recovery.

Offsets catch a record read twice; they cannot catch the same event *published* twice (an
outbox relay that dies between Kafka's ack and marking its row sent publishes it again, same
CloudEvents id, same key, so same partition, at a later offset). ``RecentIds`` keeps, per source
partition, the ids of the last ``window`` records and their offsets: an id already seen at an
earlier offset is skipped (counted as ``skipped{reason="duplicate"}``). The window is not stored
in the tables (a changelog write of thousands of ids per batch would cost more than the batch):
it is read back from the source topic itself, the ``window`` records before each partition's
resume mark, when the reader starts (``main.SourceReader``). So it survives restarts and
rebalances, and a rebuild (a replay from offset 0) builds it as it goes. A duplicate published
more than ``window`` records after its original in the same partition would be counted again;
a relay re-sends only its unmarked rows right after the failure, far inside the window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, MutableMapping
from datetime import datetime
from typing import Any

from services.projection.families import EXPORTED, FAMILIES, LATENCY_BUCKETS_MS, MAX_KIND
from shared.events import CloudEvent, EventData
from shared.events import funding as fe
from shared.events import membership as me
from shared.events import notifier as ne
from shared.events import reform as re_
from shared.events import training as te
from shared.regions import CITIES, REGION_ROOT, REGIONS

SEP = "\x1f"  # joins label values into a record's dict key
DONE = "@done"  # family id of a partition's resume mark
DOMAIN_TOPICS = ("membership.events", "training.events", "funding.events", "notifier.events", "reform.events")
KNOWN_TOPICS = frozenset(DOMAIN_TOPICS)
CITY_CODES = frozenset(c.code for c in CITIES)
UNKNOWN = "unknown"

Labels = tuple[str, ...]
DEDUPE_WINDOW = 10_000  # ids remembered per source partition (CHANGAI_PROJECTION_DEDUPE_WINDOW)


class RecentIds:
    """The event ids of the last ``window`` records of one partition, with the offset each was first seen at."""

    __slots__ = ("ids", "window")

    def __init__(self, window: int):
        self.window = window
        self.ids: dict[str, int] = {}  # insertion order = offset order: the oldest is first

    def duplicate(self, event_id: str, offset: int) -> bool:
        """True when ``event_id`` was seen at an earlier offset (the same offset: the same record, re-read)."""
        first = self.ids.get(event_id)
        if first is None:
            self.ids[event_id] = offset
            if len(self.ids) > self.window:
                del self.ids[next(iter(self.ids))]
            return False
        return first < offset


Contribution = tuple[str, Labels, float]  # (family id, label values, delta)


def place(region_code: str | None, city_code: str | None = None) -> tuple[str, str]:
    """(region, city) labels: known GB/T 2260 codes only, so the label sets stay bounded.

    The region-level code 640000 (自治区本级) is its own "city"."""
    region = region_code if region_code in REGIONS else UNKNOWN
    if city_code in CITY_CODES:
        return region, city_code
    if region == REGION_ROOT:
        return region, REGION_ROOT
    r = REGIONS.get(region)
    return region, (r.city if r and r.city else UNKNOWN)


def base_topic(topic: str, prefix: str = "") -> str:
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


class Projection:
    """State of the projection over the two tables (any MutableMapping: Faust stores or dicts)."""

    def __init__(
        self,
        counters: MutableMapping[str, dict],
        aggregates: MutableMapping[str, dict],
        dedupe_window: int = DEDUPE_WINDOW,
    ):
        self.counters = counters
        self.aggregates = aggregates
        self.dedupe_window = dedupe_window
        self.recent: dict[tuple[str, int], RecentIds] = {}  # (topic, partition) -> ids seen lately
        self.totals: dict[str, dict[str, float]] = defaultdict(dict)
        self.index: dict[str, dict[str, int]] = defaultdict(dict)
        self.progress: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset seen
        self.dirty: dict[str, set[str]] = {"counters": set(), "aggregates": set(), "done": set()}
        self.versions: dict[str, int] = defaultdict(int)  # bumped on every change of a family
        self._labels_cache: dict[str, Labels] = {}

    # -- applying events -----------------------------------------------------------
    def apply(
        self, topic: str, partition: int, offset: int, key: str | None, event: CloudEvent, data: EventData
    ) -> bool:
        """Apply one parsed event; False when it had been applied already (redelivery, or a duplicate)."""
        if self.seen(topic, partition, offset, event.id):
            self.skip(topic, partition, offset, "duplicate")  # counted as skipped, applied to nothing else
            return False
        handler = HANDLERS.get(type(data))
        out: list[Contribution] = [("events", (topic, event.type), 1), ("last_event", (topic,), event.time.timestamp())]
        if handler is not None:
            handler(Ctx(self, topic, partition, offset, key, event, out), data)
        return self._commit(topic, partition, offset, out)

    def seen(self, topic: str, partition: int, offset: int, event_id: str) -> bool:
        """Remember ``event_id`` at ``offset``; True when it was published before, at an earlier offset."""
        recent = self.recent.get((topic, partition))
        if recent is None:
            recent = self.recent[(topic, partition)] = RecentIds(self.dedupe_window)
        return recent.duplicate(event_id, offset)

    def skip(self, topic: str, partition: int, offset: int, reason: str) -> bool:
        """A record not applied (unknown type, invalid): counted, and the partition moves on."""
        out: list[Contribution] = [("skipped", (topic, reason), 1)]
        return self._commit(topic, partition, offset, out)

    def apply_dead_letter(
        self, dlq_topic: str, partition: int, offset: int, source_topic: str, consumer: str, timestamp: float
    ) -> bool:
        out: list[Contribution] = [("dlq", (source_topic, consumer), 1), ("dlq_last", (source_topic,), timestamp)]
        return self._commit(dlq_topic, partition, offset, out)

    def applied(self, topic: str, partition: int, offset: int, fid: str) -> bool:
        """True when the record of `fid` for this partition has applied `offset` already."""
        rec = self.counters.get(f"{topic}|{partition}|{fid}")
        return rec is not None and rec["o"] >= offset

    # -- where to resume -----------------------------------------------------------
    def mark_done(self, topic: str, partition: int, offset: int) -> None:
        """Everything of the partition up to `offset` is applied; written after the batch's records."""
        key = f"{topic}|{partition}|{DONE}"
        self.counters[key] = {"o": offset, "v": {}}
        self.dirty["done"].add(key)

    def resume_offset(self, topic: str, partition: int) -> int:
        """The next offset to read: after the last one whose batch was completely written."""
        rec = self.counters.get(f"{topic}|{partition}|{DONE}")
        return rec["o"] + 1 if rec else 0

    def _commit(self, topic: str, partition: int, offset: int, out: list[Contribution]) -> bool:
        store = self.counters
        dirty = self.dirty["counters"]
        prefix = f"{topic}|{partition}|"
        applied = False
        touched: dict[str, dict] = {}
        for fid, labels, delta in out:
            rk = prefix + fid
            rec = touched.get(rk)
            if rec is None:
                rec = store.get(rk)
                if rec is None:
                    rec = {"o": -1, "v": {}}
                    store[rk] = rec
                if rec["o"] >= offset:
                    touched[rk] = _ALREADY
                    continue
                touched[rk] = rec
            elif rec is _ALREADY:
                continue
            lk = SEP.join(labels)
            values = rec["v"]
            totals = self.totals[fid]
            self.versions[fid] += 1
            if fid in MAX_KIND:
                if delta > values.get(lk, float("-inf")):
                    values[lk] = delta
                if delta > totals.get(lk, float("-inf")):
                    totals[lk] = delta
            else:
                values[lk] = values.get(lk, 0) + delta
                totals[lk] = totals.get(lk, 0) + delta
            applied = True
        for rk, rec in touched.items():
            if rec is not _ALREADY:
                rec["o"] = offset
                dirty.add(rk)
        if offset > self.progress.get((topic, partition), -1):
            self.progress[(topic, partition)] = offset
        return applied

    # -- aggregates ----------------------------------------------------------------
    def aggregate(self, key: str | None) -> dict | None:
        return self.aggregates.get(key) if key is not None else None

    def set_aggregate(self, key: str, partition: int, offset: int, record: dict) -> bool:
        old = self.aggregates.get(key)
        if old is not None and old.get("p") == partition and old["o"] >= offset:
            return False  # applied already
        record = {**record, "o": offset, "p": partition}
        self._index(old, -1)
        self._index(record, +1)
        self.aggregates[key] = record
        self.dirty["aggregates"].add(key)
        return True

    def _index(self, record: dict | None, sign: int) -> None:
        if record is None:
            return
        for fid, labels in aggregate_contributions(record):
            lk = SEP.join(labels)
            counts = self.index[fid]
            self.versions[fid] += 1
            counts[lk] = counts.get(lk, 0) + sign
            if counts[lk] == 0:
                del counts[lk]

    # -- recovery ------------------------------------------------------------------
    def rebuild(self, assigned: Callable[[str, int], bool] | None = None) -> None:
        """Recompute totals, index and progress from the tables (after recovery/rebalance)."""
        self.totals = defaultdict(dict)
        self.index = defaultdict(dict)
        self.progress = {}
        self.recent = {}  # read back from the topics by the reader that starts next
        for fid in FAMILIES:
            self.versions[fid] += 1
        for store in (self.counters,):
            for rk, rec in list(store.items()):
                if not rec:
                    continue
                topic, partition_s, fid = rk.rsplit("|", 2)
                partition = int(partition_s)
                if assigned is not None and not assigned(topic, partition):
                    continue
                family = FAMILIES.get(fid)
                if family is None:  # a resume mark, or a family a newer build wrote
                    if fid == DONE and rec["o"] > self.progress.get((topic, partition), -1):
                        self.progress[(topic, partition)] = rec["o"]
                    continue
                totals = self.totals[fid]
                if family.kind == "max":
                    for lk, v in rec["v"].items():
                        if v > totals.get(lk, float("-inf")):
                            totals[lk] = v
                else:
                    for lk, v in rec["v"].items():
                        totals[lk] = totals.get(lk, 0) + v
                if rec["o"] > self.progress.get((topic, partition), -1):
                    self.progress[(topic, partition)] = rec["o"]
        for _key, rec in list(self.aggregates.items()):
            if rec:
                self._index(rec, +1)

    # -- reading -------------------------------------------------------------------
    def labels_of(self, lk: str) -> Labels:
        labels = self._labels_cache.get(lk)
        if labels is None:
            labels = self._labels_cache[lk] = tuple(lk.split(SEP)) if lk else ()
        return labels

    def raw_values(self, fid: str) -> Iterable[tuple[str, float]]:
        """(label key, value) of a family, in exported units (yuan for money)."""
        family = FAMILIES[fid]
        if family.kind == "aggregate":
            return self.index.get(fid, {}).items()
        if family.kind == "derived":
            return self._derived(fid)
        totals = self.totals.get(fid, {})
        scale = family.scale
        if scale == 1:
            return totals.items()
        return ((lk, v * scale) for lk, v in totals.items())

    def version(self, fid: str) -> int:
        """Changes whenever the family's values may have changed."""
        if fid == "fund_remaining":
            v = self.versions
            return v["fund_amount"] + v["fund_allocated"] + v["fund_returned"]
        if fid == "notice_latency":
            return self.versions[fid] + self.versions["notice_latency_sum"]
        return self.versions[fid]

    def values(self, fid: str) -> Iterable[tuple[Labels, float]]:
        """(labels, value) of a family, in exported units."""
        for lk, value in self.raw_values(fid):
            yield self.labels_of(lk), value

    def _derived(self, fid: str) -> Iterable[tuple[str, float]]:
        if fid == "fund_remaining":
            amount = self.totals.get("fund_amount", {})
            allocated = self.totals.get("fund_allocated", {})
            returned = self.totals.get("fund_returned", {})
            scale = FAMILIES[fid].scale
            for lk in sorted(set(amount) | set(allocated) | set(returned)):
                yield lk, (amount.get(lk, 0) - allocated.get(lk, 0) - returned.get(lk, 0)) * scale

    def histogram(self, fid: str) -> Iterable[tuple[Labels, list[tuple[str, float]], float]]:
        """(labels, cumulative buckets, sum in seconds) of a histogram family."""
        counts: dict[Labels, list[int]] = {}
        for lk, n in self.totals.get(fid, {}).items():
            *label_values, bucket = self.labels_of(lk)
            counts.setdefault(tuple(label_values), [0] * (len(LATENCY_BUCKETS_MS) + 1))[int(bucket)] += int(n)
        sums = self.totals.get(fid + "_sum", {})
        for labels, per_bucket in sorted(counts.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for bound, n in zip([*LATENCY_BUCKETS_MS, None], per_bucket, strict=True):  # one count per bucket
                running += n
                cumulative.append(("+Inf" if bound is None else _le(bound), running))
            yield labels, cumulative, sums.get(SEP.join(labels), 0) / 1000

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        """Every family's series (tests and the rebuild check compare these)."""
        out: dict[str, dict[Labels, float]] = {}
        for family in EXPORTED:
            fid = family.fid
            if family.kind == "histogram":
                out[family.name] = {(*labels, le): v for labels, buckets, _ in self.histogram(fid) for le, v in buckets}
            else:
                out[family.name] = dict(self.values(fid))
        return out

    def take_dirty(self, table: str) -> list[tuple[str, dict]]:
        """The records changed since the last call, to be written to the changelog."""
        keys = self.dirty[table]
        store = self.aggregates if table == "aggregates" else self.counters
        out = [(k, store[k]) for k in keys if k in store]
        keys.clear()
        return out


_ALREADY: dict = {"o": -1, "v": {}}  # marker: record saw this offset already


def _le(bound_ms: int) -> str:
    seconds = bound_ms / 1000
    return f"{seconds:g}" if seconds != int(seconds) else f"{seconds:.1f}"


# --------------------------------------------------------------------------------- aggregates


def aggregate_contributions(record: dict) -> list[tuple[str, Labels]]:
    kind = record.get("t")
    if kind == "branch":
        if record["status"] == "active":
            return [("branches", (record["region"], record["city"], record["kind"]))]
    elif kind == "session":
        return [("sessions", (record["region"], record["city"], record["category"], record["status"]))]
    elif kind == "competition":
        return [
            (
                "competitions",
                (record["kind"], record["tier"], record["region"], record["city"], record["year"], record["status"]),
            )
        ]
    elif kind == "studio":
        if record["status"] == "active":
            return [("studios", (record["kind"], record["level"], record["region"], record["city"]))]
    elif kind == "channel":
        if record["paused"]:
            return [("channels_paused", (record["channel"],))]
    elif kind == "reform_task":
        out: list[tuple[str, Labels]] = [("reform_tasks", (record["year"], record["status"], record["unit"]))]
        if record["overdue"]:
            out.append(("reform_tasks_overdue", (record["year"], record["unit"])))
        return out
    elif kind == "city_plan":
        return [("reform_city_plans", (record["city"],))]
    return []


# --------------------------------------------------------------------------------- handlers


class Ctx:
    """What a handler sees: the projection, where the event came from, and its output list."""

    __slots__ = ("event", "key", "offset", "out", "partition", "proj", "topic")

    def __init__(
        self,
        proj: Projection,
        topic: str,
        partition: int,
        offset: int,
        key: str | None,
        event: CloudEvent,
        out: list[Contribution],
    ):
        self.proj, self.topic, self.partition, self.offset = proj, topic, partition, offset
        self.key, self.event, self.out = key, event, out

    def add(self, fid: str, labels: Labels, delta: float = 1) -> None:
        self.out.append((fid, labels, delta))

    def event_year(self) -> str:
        return str(self.event.time.year)

    def aggregate(self) -> dict | None:
        return self.proj.aggregate(self.key)

    def set_aggregate(self, record: dict) -> None:
        if self.key is not None:
            self.proj.set_aggregate(self.key, self.partition, self.offset, record)


HANDLERS: dict[type, Callable[[Ctx, Any], None]] = {}


def on(cls: type):
    def register(fn):
        HANDLERS[cls] = fn
        return fn

    return register


def _year(d) -> str:
    return str(d.year)


# -- membership ----------------------------------------------------------------------


@on(me.BranchEstablished)
def _branch_established(c: Ctx, d: me.BranchEstablished) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("branches_established", (region, city, d.kind.value, _year(d.founded_on)))
    c.set_aggregate({"t": "branch", "region": region, "city": city, "kind": d.kind.value, "status": "active"})


@on(me.BranchUpdated)
def _branch_updated(c: Ctx, d: me.BranchUpdated) -> None:
    region, city = place(d.region_code, d.city_code)
    current = c.aggregate()
    status = current["status"] if current else "active"
    c.set_aggregate({"t": "branch", "region": region, "city": city, "kind": d.kind.value, "status": status})


@on(me.BranchMerged)
def _branch_merged(c: Ctx, d: me.BranchMerged) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("branches_closed", (region, city, d.kind.value, "merged"))
    c.set_aggregate({"t": "branch", "region": region, "city": city, "kind": d.kind.value, "status": "merged"})


@on(me.BranchDissolved)
def _branch_dissolved(c: Ctx, d: me.BranchDissolved) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("branches_closed", (region, city, d.kind.value, "dissolved"))
    c.set_aggregate({"t": "branch", "region": region, "city": city, "kind": d.kind.value, "status": "dissolved"})


@on(me.MemberJoined)
def _member_joined(c: Ctx, d: me.MemberJoined) -> None:
    region, city = place(d.region_code, d.city_code)
    form = d.employment_form.value
    c.add("members", (region, city, form), 1)
    c.add("members_joined", (region, city, form, _year(d.joined_on)))


@on(me.MemberTransferred)
def _member_transferred(c: Ctx, d: me.MemberTransferred) -> None:
    src_region, src_city = place(d.from_region_code, d.from_city_code)
    dst_region, dst_city = place(d.to_region_code, d.to_city_code)
    form, year = d.employment_form.value, _year(d.transferred_on)
    c.add("members", (src_region, src_city, form), -1)
    c.add("members", (dst_region, dst_city, form), 1)
    c.add("member_transfers", (src_region, src_city, "out", year))
    c.add("member_transfers", (dst_region, dst_city, "in", year))


@on(me.MemberLeft)
def _member_left(c: Ctx, d: me.MemberLeft) -> None:
    region, city = place(d.region_code, d.city_code)
    form = d.employment_form.value
    c.add("members", (region, city, form), -1)
    c.add("members_left", (region, city, form, _year(d.left_on)))


@on(me.MemberLapsed)
def _member_lapsed(c: Ctx, d: me.MemberLapsed) -> None:
    region, city = place(d.region_code, d.city_code)
    form = d.employment_form.value
    c.add("members", (region, city, form), -1)
    c.add("members_lapsed", (region, city, form, _year(d.lapsed_on)))


@on(me.MemberSkillLevelChanged)
def _skill_changed(c: Ctx, d: me.MemberSkillLevelChanged) -> None:
    c.add("skill_changes", (*place(d.region_code, d.city_code), str(d.to_level)))


@on(me.StationOpened)
def _station_opened(c: Ctx, d: me.StationOpened) -> None:
    where = place(d.region_code, d.city_code)
    c.add("stations", where, 1)
    c.add("stations_opened", (*where, _year(d.opened_on)))


@on(me.StationClosed)
def _station_closed(c: Ctx, d: me.StationClosed) -> None:
    c.add("stations", place(d.region_code, d.city_code), -1)


# -- training ------------------------------------------------------------------------


@on(te.ProgrammeRegistered)
def _programme(c: Ctx, d: te.ProgrammeRegistered) -> None:
    c.add("programmes", (d.subsidy_category.value, d.provider_kind.value))


def _session_record(d, status: str) -> dict:
    region, city = place(d.region_code, d.city_code)
    return {"t": "session", "region": region, "city": city, "category": d.subsidy_category.value, "status": status}


@on(te.SessionScheduled)
def _session_scheduled(c: Ctx, d: te.SessionScheduled) -> None:
    c.set_aggregate(_session_record(d, "scheduled"))


@on(te.SessionStarted)
def _session_started(c: Ctx, d: te.SessionStarted) -> None:
    c.set_aggregate(_session_record(d, "in_progress"))


@on(te.SessionCompleted)
def _session_completed(c: Ctx, d: te.SessionCompleted) -> None:
    region, city = place(d.region_code, d.city_code)
    labels = (region, city, d.subsidy_category.value, _year(d.completed_on))
    c.add("sessions_completed", labels)
    c.add("person_times", labels, d.person_times)
    c.add("persons_passed", labels, d.passed)
    c.add("eligible_persons", labels, d.eligible_persons)
    c.set_aggregate(_session_record(d, "completed"))


@on(te.SessionCancelled)
def _session_cancelled(c: Ctx, d: te.SessionCancelled) -> None:
    c.set_aggregate(_session_record(d, "cancelled"))


@on(te.EnrolmentEnrolled)
def _enrolled(c: Ctx, d: te.EnrolmentEnrolled) -> None:
    c.add("enrolments", (*place(d.region_code, d.city_code), d.subsidy_category.value))


@on(te.EnrolmentAttended)
def _attended(c: Ctx, d) -> None:
    c.add("enrolment_outcomes", ("attended",))


@on(te.EnrolmentAssessed)
def _assessed(c: Ctx, d: te.EnrolmentAssessed) -> None:
    c.add("enrolment_outcomes", (d.result,))


@on(te.EnrolmentWithdrawn)
def _withdrawn(c: Ctx, d) -> None:
    c.add("enrolment_outcomes", ("withdrawn",))


@on(te.CertificateIssued)
def _certificate(c: Ctx, d: te.CertificateIssued) -> None:
    c.add("certificates", (*place(d.region_code, d.city_code), str(d.level), _year(d.issued_on)))


@on(te.CompetitionAnnounced)
def _competition_announced(c: Ctx, d: te.CompetitionAnnounced) -> None:
    region, city = place(d.region_code, d.city_code)
    year = _year(d.starts_on)
    c.add("competitions_announced", (d.kind.value, d.tier.value, region, city, year))
    c.set_aggregate(
        {
            "t": "competition",
            "kind": d.kind.value,
            "tier": d.tier.value,
            "region": region,
            "city": city,
            "year": year,
            "status": "announced",
        }
    )


def _competition_year(c: Ctx) -> str:
    current = c.aggregate()
    return current["year"] if current and current.get("t") == "competition" else c.event_year()


@on(te.CompetitionParticipantsRegistered)
def _participants(c: Ctx, d: te.CompetitionParticipantsRegistered) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("participants", (d.kind.value, d.tier.value, region, city, _competition_year(c)), d.headcount)


def _competition_status(c: Ctx, d, status: str) -> None:
    region, city = place(d.region_code, d.city_code)
    c.set_aggregate(
        {
            "t": "competition",
            "kind": d.kind.value,
            "tier": d.tier.value,
            "region": region,
            "city": city,
            "year": _competition_year(c),
            "status": status,
        }
    )


@on(te.CompetitionHeld)
def _competition_held(c: Ctx, d: te.CompetitionHeld) -> None:
    _competition_status(c, d, "held")


@on(te.CompetitionResultsPublished)
def _competition_results(c: Ctx, d: te.CompetitionResultsPublished) -> None:
    c.add("winners", (d.kind.value, d.tier.value, _competition_year(c)), len(d.winners))
    _competition_status(c, d, "results_published")


def _studio_record(d, status: str) -> dict:
    region, city = place(d.region_code, d.city_code)
    return {
        "t": "studio",
        "kind": d.kind.value,
        "level": d.level.value,
        "region": region,
        "city": city,
        "status": status,
    }


@on(te.StudioRecognised)
def _studio_recognised(c: Ctx, d: te.StudioRecognised) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("studios_recognised", (d.kind.value, d.level.value, region, city, _year(d.recognised_on)))
    c.set_aggregate(_studio_record(d, "active"))


@on(te.StudioEvaluated)
def _studio_evaluated(c: Ctx, d: te.StudioEvaluated) -> None:
    c.add("studio_evaluations", (d.kind.value, d.rating))
    current = c.aggregate()
    c.set_aggregate(_studio_record(d, current["status"] if current else "active"))


@on(te.StudioRevoked)
def _studio_revoked(c: Ctx, d: te.StudioRevoked) -> None:
    c.set_aggregate(_studio_record(d, "revoked"))


# -- funding -------------------------------------------------------------------------


@on(fe.FundOpened)
def _fund_opened(c: Ctx, d: fe.FundOpened) -> None:
    labels = (d.source_kind.value, str(d.fiscal_year))
    c.add("fund_amount", labels, d.amount_fen)
    c.add("funds", (*labels, "open"), 1)


@on(fe.FundToppedUp)
def _fund_topped_up(c: Ctx, d: fe.FundToppedUp) -> None:
    c.add("fund_amount", (d.source_kind.value, str(d.fiscal_year)), d.amount_fen)


@on(fe.FundClosed)
def _fund_closed(c: Ctx, d: fe.FundClosed) -> None:
    labels = (d.source_kind.value, str(d.fiscal_year))
    c.add("fund_returned", labels, d.unspent_fen)
    c.add("funds", (*labels, "open"), -1)
    c.add("funds", (*labels, "closed"), 1)


@on(fe.GrantApproved)
def _grant_approved(c: Ctx, d: fe.GrantApproved) -> None:
    labels = (d.source_kind.value, str(d.fiscal_year), d.beneficiary_kind.value)
    c.add("fund_allocated", labels[:2], d.amount_fen)
    c.add("grants", labels)
    c.add("grants_yuan", labels, d.amount_fen)


@on(fe.GrantRevoked)
def _grant_revoked(c: Ctx, d: fe.GrantRevoked) -> None:
    labels = (d.source_kind.value, str(d.fiscal_year), d.beneficiary_kind.value)
    c.add("fund_allocated", labels[:2], -d.released_fen)
    c.add("grants_revoked", labels)
    c.add("grants_released_yuan", labels, d.released_fen)


@on(fe.FundsDisbursed)
def _disbursed(c: Ctx, d: fe.FundsDisbursed) -> None:
    labels = (d.source_kind.value, str(d.fiscal_year), d.beneficiary_kind.value)
    c.add("fund_disbursed", labels[:2], d.amount_fen)
    c.add("disbursements", labels)
    c.add("disbursements_yuan", labels, d.amount_fen)


@on(fe.SubsidyClaimed)
def _subsidy_claimed(c: Ctx, d: fe.SubsidyClaimed) -> None:
    c.add("subsidies_claimed", (*place(d.region_code, d.city_code), d.subsidy_category.value))


@on(fe.SubsidyPaid)
def _subsidy_paid(c: Ctx, d: fe.SubsidyPaid) -> None:
    region, city = place(d.region_code, d.city_code)
    year = str(d.fiscal_year)
    labels = (region, city, d.subsidy_category.value, d.source_kind.value, year)
    c.add("subsidies_paid", labels)
    c.add("subsidies_paid_yuan", labels, d.amount_fen)
    c.add("subsidies_paid_persons", (region, city, d.subsidy_category.value, year), d.persons)


@on(fe.SubsidyRejected)
def _subsidy_rejected(c: Ctx, d: fe.SubsidyRejected) -> None:
    region, city = place(d.region_code, d.city_code)
    c.add("subsidies_rejected", (region, city, d.subsidy_category.value, d.reason.value))
    c.add("subsidies_rejected_yuan", (d.subsidy_category.value, d.reason.value), d.amount_fen)


# -- notifier ------------------------------------------------------------------------


def _bucket(latency_ms: int) -> str:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return str(i)
    return str(len(LATENCY_BUCKETS_MS))


@on(ne.DeliverySucceeded)
def _delivered(c: Ctx, d: ne.DeliverySucceeded) -> None:
    channel = d.channel_kind.value
    c.add("notices", (channel, "delivered"))
    c.add("notice_attempts", (channel, "delivered"), d.attempts)
    c.add("notice_latency", (channel, _bucket(d.latency_ms)))
    c.add("notice_latency_sum", (channel,), d.latency_ms)


@on(ne.DeliveryFailed)
def _failed(c: Ctx, d: ne.DeliveryFailed) -> None:
    channel = d.channel_kind.value
    c.add("notices", (channel, "failed"))
    c.add("notice_attempts", (channel, "failed"), d.attempts)


@on(ne.ChannelPaused)
def _paused(c: Ctx, d: ne.ChannelPaused) -> None:
    c.add("channel_pauses", (d.channel_kind.value,))
    c.set_aggregate({"t": "channel", "channel": d.channel_kind.value, "paused": True})


@on(ne.ChannelResumed)
def _resumed(c: Ctx, d: ne.ChannelResumed) -> None:
    c.set_aggregate({"t": "channel", "channel": d.channel_kind.value, "paused": False})


# -- reform coordination ---------------------------------------------------------------


def _task_record(c: Ctx, d, **changes: Any) -> None:
    """The task's record: year, status, lead unit and whether it is overdue now (keyed by task id)."""
    current = c.aggregate() or {
        "t": "reform_task",
        "year": str(d.year),
        "status": "assigned",
        "unit": d.lead_unit,
        "overdue": False,
    }
    c.set_aggregate({**current, "unit": d.lead_unit, **changes})


@on(re_.TaskAssigned)
def _task_assigned(c: Ctx, d: re_.TaskAssigned) -> None:
    # a re-assignment with a later deadline ends the overdue state until supervision says otherwise
    _task_record(c, d, overdue=False)


@on(re_.TaskProgressReported)
def _task_progress(c: Ctx, d: re_.TaskProgressReported) -> None:
    _task_record(c, d, status="in_progress")


@on(re_.TaskCompletionReported)
def _task_completion_reported(c: Ctx, d: re_.TaskCompletionReported) -> None:
    _task_record(c, d, status="completion_reported")


@on(re_.TaskSentBack)
def _task_sent_back(c: Ctx, d: re_.TaskSentBack) -> None:
    _task_record(c, d, status="in_progress")


@on(re_.TaskCompleted)
def _task_completed(c: Ctx, d: re_.TaskCompleted) -> None:
    c.add("reform_tasks_completed", (str(d.year), d.lead_unit, "true" if d.on_time else "false"))
    _task_record(c, d, status="completed", overdue=False)


@on(re_.TaskOverdue)
def _task_overdue(c: Ctx, d: re_.TaskOverdue) -> None:
    c.add("reform_reminders", ("overdue",))
    _task_record(c, d, overdue=True)


@on(re_.TaskProgressDue)
def _task_progress_due(c: Ctx, d: re_.TaskProgressDue) -> None:
    c.add("reform_reminders", ("progress_due",))


@on(re_.DocumentIssued)
def _document_issued(c: Ctx, d: re_.DocumentIssued) -> None:
    c.add("reform_documents", (str(d.year), d.unit))


@on(re_.PilotDesignated)
def _pilot_designated(c: Ctx, d: re_.PilotDesignated) -> None:
    c.add("reform_pilots", (str(d.year), d.kind.value, d.mode.value))


@on(re_.CityPlanRecorded)
def _city_plan(c: Ctx, d: re_.CityPlanRecorded) -> None:
    c.set_aggregate({"t": "city_plan", "city": d.city_code})


def event_time(event: CloudEvent) -> float:
    t: datetime = event.time
    return t.timestamp()
