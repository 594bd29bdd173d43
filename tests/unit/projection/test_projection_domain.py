"""The projection's rules, without Kafka: figures from events, idempotence, rebuild from the tables."""
from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, date, datetime

from services.projection.domain import SEP, Projection, place
from services.projection.synthetic import encode_all, full_label_set, scenario
from shared.events import decode, parse_data
from shared.events import membership as me
from shared.events import training as te

T0 = datetime(2021, 9, 1, 8, 0, tzinfo=UTC)
UUID_LIKE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def feed(proj: Projection, events, offsets=None, partitions: int = 6):
    """Apply events as the reader would: (topic, partition by key hash, next offset)."""
    offsets = {} if offsets is None else offsets
    for topic, key, value, _ in encode_all(events, start=T0):
        partition = hash(key) % partitions
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        ce = decode(value)
        proj.apply(topic, partition, offset, key.decode(), ce, parse_data(ce))
    return offsets


def by(snapshot_family: dict, index: int) -> Counter:
    out: Counter = Counter()
    for labels, value in snapshot_family.items():
        out[labels[index]] += value
    return out


def test_members_by_city_follow_joins_transfers_and_departures():
    events = scenario()
    proj = Projection({}, {})
    feed(proj, events)
    expected: Counter = Counter()
    for e in events:  # counted here straight from the events sent
        if isinstance(e, me.MemberJoined):
            expected[e.city_code] += 1
        elif isinstance(e, me.MemberTransferred):
            expected[e.from_city_code] -= 1
            expected[e.to_city_code] += 1
        elif isinstance(e, (me.MemberLeft, me.MemberLapsed)):
            expected[e.city_code] -= 1
    got = by(proj.snapshot()["changai_union_members"], 1)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    joined_2021 = sum(1 for e in events if isinstance(e, me.MemberJoined) and e.joined_on.year == 2021)
    assert sum(v for labels, v in proj.snapshot()["changai_union_members_joined_total"].items()
               if labels[3] == "2021") == joined_2021


def test_branches_gauge_follows_updates_merges_and_dissolutions():
    events = scenario()
    proj = Projection({}, {})
    feed(proj, events)
    state = {}
    for e in events:
        if isinstance(e, (me.BranchEstablished, me.BranchUpdated)):
            state[e.branch_id] = e.region_code
        elif isinstance(e, (me.BranchMerged, me.BranchDissolved)):
            state.pop(e.branch_id)
    got = by(proj.snapshot()["changai_union_branches"], 0)
    assert dict(got) == dict(Counter(state.values()))


def test_redelivery_changes_nothing():
    events = scenario()
    proj = Projection({}, {})
    offsets = feed(proj, events)
    before = proj.snapshot()
    # every record again, with the same offsets (a restart re-reading from an older position)
    replay: dict = {}
    for topic, key, value, _ in encode_all(events, start=T0):
        partition = hash(key) % 6
        offset = replay[(topic, partition)] = replay.get((topic, partition), -1) + 1
        ce = decode(value)
        assert proj.apply(topic, partition, offset, key.decode(), ce, parse_data(ce)) is False
    assert proj.snapshot() == before
    assert replay == offsets


def test_rebuild_from_the_tables_gives_the_same_figures():
    counters, aggregates = {}, {}
    proj = Projection(counters, aggregates)
    feed(proj, scenario() + full_label_set())
    restarted = Projection(counters, aggregates)
    restarted.rebuild()
    assert restarted.snapshot() == proj.snapshot()
    assert restarted.progress == proj.progress


def test_a_partially_written_batch_is_completed_not_doubled():
    """Records written at different offsets (a crash between two changelog writes) converge on replay."""
    events = scenario()
    full = Projection({}, {})
    feed(full, events)
    counters, aggregates = {}, {}
    proj = Projection(counters, aggregates)
    records = encode_all(events, start=T0)
    cut = len(records) // 2
    offsets: dict = {}
    for topic, key, value, _ in records[:cut]:
        partition = hash(key) % 6
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        ce = decode(value)
        proj.apply(topic, partition, offset, key.decode(), ce, parse_data(ce))
    # "crash": half of the dirty records were durable; the rest roll back to nothing
    rng = random.Random(1)
    for key in list(counters):
        if rng.random() < 0.5:
            del counters[key]
    survivor = Projection(counters, aggregates)
    survivor.rebuild()
    feed(survivor, events)  # everything re-read from offset 0
    assert survivor.snapshot()["changai_union_members"] == full.snapshot()["changai_union_members"]
    assert survivor.snapshot() == full.snapshot()


def test_money_is_exported_in_yuan_and_remaining_adds_up():
    proj = Projection({}, {})
    feed(proj, scenario())
    snap = proj.snapshot()
    amount = snap["changai_funds_amount_yuan"][("central_budget", "2021")]
    allocated = snap["changai_funds_allocated_yuan"][("central_budget", "2021")]
    assert amount == 280_000_000  # opened with 280,000,000.00 yuan = 28,000,000,000 fen
    assert allocated == 24_000_000  # 3 grants of 10,000,000 less 6,000,000 released
    assert snap["changai_funds_remaining_yuan"][("central_budget", "2021")] == amount - allocated
    assert snap["changai_funds_remaining_yuan"][("regional_budget", "2021")] == 0  # closed, unspent returned


def test_labels_stay_bounded():
    assert place("649999", None) == ("unknown", "unknown")
    assert place("640000", None) == ("640000", "640000")
    assert place("640104", None) == ("640104", "640100")
    proj = Projection({}, {})
    feed(proj, full_label_set())
    for name, series in proj.snapshot().items():
        for labels in series:
            assert all(SEP not in v for v in labels)
            assert not any(UUID_LIKE.search(v) for v in labels), (name, labels)  # codes and enums, never ids


def test_competition_participants_take_the_year_of_the_competition():
    proj = Projection({}, {})
    cid = "9b2f2a7e-2b0a-4a35-9a53-3f3f0e4b2a11"
    common = dict(competition_id=cid, kind=te.CompetitionKind.skills, tier=te.Tier.county, region_code="640302",
                  city_code="640300")
    feed(proj, [te.CompetitionAnnounced(**common, name="葡萄酒职业技能大赛", industry="葡萄酒",
                                        starts_on=date(2021, 9, 1), ends_on=date(2021, 9, 3)),
                te.CompetitionParticipantsRegistered(**common, headcount=120),
                te.CompetitionParticipantsRegistered(**common, headcount=30)])
    assert proj.snapshot()["changai_competition_participants_total"] == {
        ("skills", "county", "640302", "640300", "2021"): 150}


def test_reform_ledger_families_follow_the_tasks_life():
    from services.projection.synthetic import reform_ledger

    proj = Projection({}, {})
    feed(proj, reform_ledger())
    snap = proj.snapshot()
    assert snap["changai_reform_tasks"] == {("2021", "completed", "自治区人社厅"): 1,
                                            ("2021", "assigned", "自治区教育厅"): 2}
    assert snap["changai_reform_tasks_overdue"] == {("2021", "自治区教育厅"): 1}
    assert snap["changai_reform_tasks_completed_total"] == {("2021", "自治区人社厅", "true"): 1}
    assert snap["changai_reform_reminders_total"] == {("overdue",): 1, ("progress_due",): 1}
    assert snap["changai_reform_documents_total"] == {("2021", "自治区人社厅"): 1}
    assert snap["changai_reform_pilots_total"] == {("2021", "county", "comprehensive"): 1}
    assert snap["changai_reform_city_plans"] == {("640100",): 1}
