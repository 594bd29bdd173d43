"""``member.lookup`` without I/O: what it carries (the keyed hash only), what training's read model does with it,
and that the notifier tells no channel of it (a backfill publishes one per member of the region)."""
from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from services.membership import domain as membership_domain
from services.notifier import domain as notifier_domain
from services.notifier.domain import Channel, ChannelIndex
from services.training import consumers as training_consumers
from services.training import store as training_store
from shared.events.membership import MemberLookup

HASH = bytes(range(32))


def test_it_carries_the_keyed_hash_and_nothing_a_number_fits_in():
    fact = membership_domain.member_lookup(uuid.uuid4(), "640104", HASH)
    assert (fact.id_hash, fact.subject()) == (HASH.hex(), str(fact.member_id))  # keyed by the member
    assert set(MemberLookup.model_fields) == {"member_id", "region_code", "id_hash"}
    for not_a_hash in ("640104199003071234", "64010419900307123X", HASH.hex().upper(), HASH.hex()[:-2]):
        with pytest.raises(ValidationError):
            MemberLookup(member_id=fact.member_id, region_code="640104", id_hash=not_a_hash)


def test_training_sets_the_hash_only_when_it_differs():
    fact = membership_domain.member_lookup(uuid.uuid4(), "640104", HASH)
    assert fact.event_type in training_consumers.EVENT_TYPES
    statement = training_store.membership_statement(fact)
    assert statement is not None
    sql, args = statement
    assert sql.startswith("UPDATE members SET id_hash = $2") and "id_hash IS DISTINCT FROM $2" in sql
    assert args == (fact.member_id, HASH)


def test_the_notifier_tells_no_channel_of_it():
    branch = uuid.uuid4()
    everything = [
        Channel(id=uuid.uuid4(), kind="wecom", name="c", owner_kind="federation", owner_branch_id=None,
                owner_region="640000", scope="subtree", event_types=["*"], status="active"),
        Channel(id=uuid.uuid4(), kind="wecom", name="c", owner_kind="branch", owner_branch_id=branch,
                owner_region="640104", scope="own", event_types=["changai.membership.*"], status="active"),
    ]
    c = notifier_domain.Concern(branches={branch}, regions={"640104"})
    index = ChannelIndex(everything)
    assert len(notifier_domain.targets(index, "changai.membership.member.joined.v1", c)) == 2  # they do listen
    assert notifier_domain.targets(index, MemberLookup.event_type, c) == []
