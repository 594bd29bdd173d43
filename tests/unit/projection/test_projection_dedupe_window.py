"""An event published twice (same CloudEvents id, later offset) is counted once; a record re-read is not a duplicate."""
from __future__ import annotations

import random
import uuid
from datetime import date

from services.projection.domain import Projection, RecentIds
from shared.events import decode, encode, envelope, parse_data
from shared.events import membership as me
from shared.identifiers import uscc_check_char


def branch_event() -> me.BranchEstablished:
    first = "91640104" + "".join(random.choice("0123456789ABCDEFGH") for _ in range(9))
    return me.BranchEstablished(branch_id=uuid.uuid4(), name="去重测试工会", credit_code=first + uscc_check_char(first),
                                region_code="640104", city_code="640100",
                                industry_section="C", kind=me.BranchKind.enterprise, founded_on=date(2021, 3, 1))


def established(proj: Projection) -> float:
    return sum(proj.snapshot()["changai_union_branches_established_total"].values())


def skipped(proj: Projection, reason: str) -> float:
    return sum(v for labels, v in proj.snapshot()["changai_projection_events_skipped_total"].items()
               if labels[-1] == reason)


def apply_record(proj: Projection, value: bytes, offset: int, key: bytes, partition: int = 0) -> bool:
    ce = decode(value)
    return proj.apply("membership.events", partition, offset, key.decode(), ce, parse_data(ce))


def test_the_same_event_published_twice_is_counted_once():
    proj = Projection({}, {})
    key, value, _ = encode(envelope(branch_event()))
    assert apply_record(proj, value, 10, key)
    assert not apply_record(proj, value, 17, key)  # the relay published it again, later in the partition
    assert established(proj) == 1 and skipped(proj, "duplicate") == 1
    assert sum(proj.snapshot()["changai_union_branches"].values()) == 1


def test_a_record_read_again_is_not_a_duplicate_and_changes_nothing():
    proj = Projection({}, {})
    key, value, _ = encode(envelope(branch_event()))
    assert apply_record(proj, value, 3, key)
    assert not apply_record(proj, value, 3, key)  # re-read after a failed batch: the offset watermark decides
    assert established(proj) == 1 and skipped(proj, "duplicate") == 0


def test_other_events_and_other_partitions_are_not_duplicates():
    proj = Projection({}, {})
    one, two = branch_event(), branch_event()
    k1, v1, _ = encode(envelope(one))
    k2, v2, _ = encode(envelope(two))
    assert apply_record(proj, v1, 0, k1) and apply_record(proj, v2, 1, k2)
    assert established(proj) == 2


def test_the_window_is_bounded_and_forgets_the_oldest():
    recent = RecentIds(window=3)
    for offset, event_id in enumerate("abcd"):
        assert not recent.duplicate(event_id, offset)
    assert list(recent.ids) == ["b", "c", "d"]
    assert recent.duplicate("d", 9) and not recent.duplicate("a", 10)  # "a" fell out of the window


def test_a_rebuild_of_the_state_forgets_the_window_the_reader_reads_back():
    proj = Projection({}, {})
    key, value, _ = encode(envelope(branch_event()))
    apply_record(proj, value, 0, key)
    proj.rebuild()
    assert proj.recent == {}
    # what the reader does at start: the records before the resume mark, for their ids only
    proj.seen("membership.events", 0, 0, decode(value).id)
    assert not apply_record(proj, value, 5, key)
    assert established(proj) == 1
