"""The notifier's rules without I/O: routing, outcomes, budgets, quiet hours, signing, secrets."""
from __future__ import annotations

import base64
import hashlib
import hmac
import random
import urllib.parse
import uuid
from datetime import datetime, timezone

import pytest

from services.notifier import domain, vault
from services.notifier.domain import Channel, ChannelIndex, SlidingWindow
from services.notifier.samples import sample


def channel(owner_kind="branch", owner=None, scope="own", types=("*",), status="active", kind="wecom") -> Channel:
    branch = owner if owner_kind == "branch" else None
    region = owner if owner_kind == "federation" else "640104"
    return Channel(id=uuid.uuid4(), kind=kind, name="c", owner_kind=owner_kind,
                   owner_branch_id=branch, owner_region=region, scope=scope, event_types=list(types), status=status)


# -- routing ------------------------------------------------------------------------------
def test_subscription_patterns():
    assert domain.subscribed(["*"], "changai.training.session.completed.v1")
    assert domain.subscribed(["changai.training.*"], "changai.training.session.completed.v1")
    assert not domain.subscribed(["changai.training.*"], "changai.funding.subsidy.paid.v1")
    assert domain.subscribed(["changai.funding.subsidy.paid.v1"], "changai.funding.subsidy.paid.v1")
    assert not domain.subscribed([], "changai.funding.subsidy.paid.v1")
    known = ["changai.training.session.completed.v1"]
    assert domain.valid_pattern("changai.training.*", known) and not domain.valid_pattern("changai.nope.*", known)


def test_concern_finds_the_branches_and_regions_of_an_event():
    t = sample("changai.membership.member.transferred.v1").model_copy(
        update={"from_branch_id": uuid.uuid4(), "to_branch_id": uuid.uuid4()})
    c = domain.concern(t.event_type, t)
    assert c.branches == {t.from_branch_id, t.to_branch_id} and c.regions == {"640104", "640105"}
    enrolled = sample("changai.training.enrolment.enrolled.v1")
    c = domain.concern(enrolled.event_type, enrolled)
    assert c.members == {enrolled.member_id} and c.sessions == {enrolled.session_id} and not c.branches
    fund = sample("changai.funding.fund.opened.v1")  # funding events carry their region (issue 15, item 3)
    assert domain.concern(fund.event_type, fund).regions == {fund.region_code}
    no_region = fund.model_copy(update={"region_code": None})  # an event from before: the region's business
    assert domain.concern(no_region.event_type, no_region).regions == {"640000"}
    completed = sample("changai.training.session.completed.v1")
    assert uuid.UUID(completed.organiser_id) in domain.concern(completed.event_type, completed).branches
    enterprise = completed.model_copy(update={"organiser_kind": "enterprise"})
    assert not domain.concern(enterprise.event_type, enterprise).branches


def test_targets_branch_channels_and_federations_above():
    branch, other, parent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    own = channel("branch", branch)
    not_subscribed = channel("branch", branch, types=["changai.funding.*"])
    someone_else = channel("branch", other)
    parent_subtree = channel("branch", parent, scope="subtree")
    parent_own = channel("branch", parent, scope="own")
    city = channel("federation", "640100", scope="subtree")
    city_own = channel("federation", "640100", scope="own")
    county_own = channel("federation", "640104", scope="own")
    other_city = channel("federation", "640200", scope="subtree")
    region = channel("federation", "640000", scope="subtree", types=["changai.funding.*"])
    index = ChannelIndex([own, not_subscribed, someone_else, parent_subtree, parent_own, city, city_own, county_own,
                          other_city, region])
    c = domain.Concern(branches={branch}, regions={"640104"})
    got = {t.channel.id for t in domain.targets(index, "changai.membership.member.joined.v1", c, {branch: [parent]})}
    assert got == {own.id, parent_subtree.id, city.id, county_own.id}


def test_a_paused_owner_is_reached_through_its_other_channels_or_the_federation_above():
    branch = uuid.uuid4()
    paused = channel("branch", branch, types=["changai.training.*"], status="paused")
    spare = channel("branch", branch, types=["changai.funding.*"])
    index = ChannelIndex([paused, spare])
    c = domain.Concern(branches={branch}, regions={"640104"})
    got = domain.targets(index, "changai.training.session.completed.v1", c, {}, {branch: "640104"})
    assert {(t.channel.id, t.fallback_for) for t in got} == {(paused.id, None), (spare.id, paused.id)}
    # No other channel of its own: the nearest federation above with an active channel.
    city = channel("federation", "640100", scope="own", types=["changai.funding.*"])
    index = ChannelIndex([paused, city])
    got = domain.targets(index, "changai.training.session.completed.v1", c, {}, {branch: "640104"})
    assert {(t.channel.id, t.fallback_for) for t in got} == {(paused.id, None), (city.id, paused.id)}
    # Where the paused notice itself goes.
    got = domain.paused_notice_targets(ChannelIndex([paused, spare]), paused)
    assert [t.channel.id for t in got] == [spare.id]


def test_delivery_outcomes_are_never_routed():
    index = ChannelIndex([channel("federation", "640000", scope="subtree")])
    c = domain.Concern(regions={"640000"})
    assert domain.targets(index, "changai.notifier.delivery.failed.v1", c) == []
    assert domain.targets(index, "changai.notifier.channel.paused.v1", c)


# -- outcomes --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,errcode,result,pause", [
    ("wecom", 0, "delivered", False), ("wecom", 45009, "throttled", False), ("wecom", 93000, "permanent", True),
    ("wecom", 40008, "permanent", False), ("wecom", 40058, "permanent", False), ("wecom", -1, "retry", False),
    ("dingtalk", 0, "delivered", False), ("dingtalk", 130101, "throttled", False), ("dingtalk", 410100, "throttled", False),
    ("dingtalk", 310000, "permanent", True), ("dingtalk", 300001, "permanent", True), ("dingtalk", 400013, "permanent", True),
    ("dingtalk", 300005, "retry", False), ("dingtalk", 400402, "permanent", False), ("dingtalk", 1, "retry", False),
    ("dingtalk", 460101, "permanent", False), ("dingtalk", 400403, "permanent", False),
    ("dingtalk", None, "retry", False),
])
def test_robots_are_judged_by_errcode(kind, errcode, result, pause):
    o = domain.classify_robot(kind, errcode, "msg", wecom_throttle_s=60, dingtalk_blocked_s=600)
    assert (o.result, o.pause) == (result, pause)
    if errcode == 130101:
        assert o.retry_after_s == 600  # DingTalk blocks for 10 minutes: not sooner


def test_webhook_answers():
    assert domain.classify_http(204).delivered
    gone = domain.classify_http(410)
    assert gone.result == "permanent" and gone.pause
    busy = domain.classify_http(503, "120")
    assert busy.result == "retry" and busy.retry_after_s == 120
    assert domain.classify_http(400).result == "retry"


def test_retry_schedule_grows_and_ends():
    schedule = (10, 60, 600)
    rng = random.Random(1)
    delays = [domain.retry_delay(schedule, n, jitter=0.1, rng=rng) for n in (1, 2, 3)]
    assert 9 <= delays[0] <= 11 and 54 <= delays[1] <= 66 and 540 <= delays[2] <= 660
    assert domain.retry_delay(schedule, 4) is None
    assert domain.retry_delay(schedule, 1, jitter=0, retry_after_s=120) == 120


# -- budget ------------------------------------------------------------------------------------
def test_sliding_window_never_allows_more_than_the_limit_in_any_window():
    now = [0.0]
    w = SlidingWindow(20, 60, clock=lambda: now[0])
    sent = []
    for _ in range(100):
        wait = w.wait_time()
        now[0] += wait
        w.record()
        sent.append(now[0])
        now[0] += 0.01
    for i in range(len(sent) - 20):
        assert sent[i + 20] - sent[i] >= 60 - 1e-9
    w2 = SlidingWindow(20, 60, clock=lambda: 1000.0)
    w2.preload([1.0] * 20)
    assert w2.wait_time() == pytest.approx(59.0)
    assert SlidingWindow(0, 60).wait_time() == 0


# -- quiet hours -------------------------------------------------------------------------------
def sh(y, mo, d, h, mi=0):
    return datetime(y, mo, d, h, mi, tzinfo=domain.SHANGHAI)


def test_quiet_nights_in_shanghai_time():
    quiet = {"start": "22:00", "end": "08:00"}
    assert domain.quiet_until(sh(2024, 5, 6, 21, 59), quiet) is None
    assert domain.quiet_until(sh(2024, 5, 6, 23, 0), quiet) == sh(2024, 5, 7, 8)
    assert domain.quiet_until(sh(2024, 5, 7, 7, 0), quiet) == sh(2024, 5, 7, 8)
    # 15:00 UTC is 23:00 in Shanghai.
    assert domain.quiet_until(datetime(2024, 5, 6, 15, 0, tzinfo=timezone.utc), quiet) == sh(2024, 5, 7, 8)
    assert domain.quiet_until(sh(2024, 5, 6, 23, 0), None) is None


def test_rest_days_follow_chinas_calendar():
    quiet = {"start": "22:00", "end": "08:00", "rest_days": True}
    # National Day 2024: 1–7 October off; Saturday 12 October is a 调休 working day.
    assert domain.quiet_until(sh(2024, 10, 3, 10), quiet) == sh(2024, 10, 8, 8)
    assert domain.quiet_until(sh(2024, 10, 12, 10), quiet) is None
    assert domain.quiet_until(sh(2024, 10, 11, 23), quiet) == sh(2024, 10, 12, 8)
    # An ordinary weekend: Saturday night waits for Monday morning.
    assert domain.quiet_until(sh(2024, 5, 18, 23), quiet) == sh(2024, 5, 20, 8)
    with pytest.raises(ValueError):
        domain.validate_quiet_hours({"start": "25"})


# -- text, signing, secrets ----------------------------------------------------------------------
def test_truncation_counts_bytes_and_keeps_characters_whole():
    text, cut = domain.truncate_utf8("工会" * 10, 20, "…")
    assert cut and len(text.encode()) <= 20 and text.endswith("…")
    assert text == "工会工会工…"  # 5 × 3 bytes + 3 bytes of the marker = 18; a sixth character would not fit
    assert domain.truncate_utf8("短", 20, "…") == ("短", False)


def test_dingtalk_signature_as_dingtalk_specifies():
    secret, ts = "SEC0123456789abcdef", 1700000000000
    expected = base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest())
    assert urllib.parse.unquote_plus(domain.dingtalk_sign(secret, ts)) == expected.decode()
    assert "%" in domain.dingtalk_sign(secret, ts) or "+" not in domain.dingtalk_sign(secret, ts)


def test_secrets_are_sealed_and_bound_to_their_channel():
    key = b"k" * 32
    a, b = uuid.uuid4(), uuid.uuid4()
    blob = vault.seal(key, a, {"key": "robot-key-123"})
    assert b"robot-key-123" not in blob
    assert vault.open_(key, a, blob) == {"key": "robot-key-123"}
    with pytest.raises(Exception):
        vault.open_(key, b, blob)
    with pytest.raises(Exception):
        vault.open_(b"x" * 32, a, blob)
    secret = vault.new_webhook_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32


def test_masks_hide_secrets():
    assert domain.mask("abcdefghijkl") == "…ijkl"
    assert domain.mask_email("zhang.san@example.com") == "z***@example.com"
    assert domain.mask_url("https://hooks.example.com:8443/p/secret-token?x=1") == "https://hooks.example.com:8443/…"
