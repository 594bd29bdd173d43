"""Training rules without I/O: enrolment decisions, completion, competitions, studios, input validation."""
import re
import uuid
from datetime import date

import pytest
from pydantic import ValidationError

from services.training import domain
from shared.errors import DomainError, status_of

SESSION_ID, PROGRAMME_ID = uuid.uuid4(), uuid.uuid4()


def session(**over) -> dict:
    return {"id": SESSION_ID, "programme_id": PROGRAMME_ID, "number": 3, "organiser_id": "91350100M000100Y43",
            "organiser_kind": "enterprise", "organiser_name": "宁夏某企业", "region_code": "640302",
            "city_code": "640300", "subsidy_category": "pre_job", "starts_on": date(2021, 4, 1),
            "started_on": date(2021, 4, 1), "capacity": 3, "enrolled": 0, "status": "scheduled", **over}


PROGRAMME = {"id": PROGRAMME_ID, "name": "岗前培训", "occupation": "电工", "target_level": 4,
             "provider_name": "宁夏技师学院"}


def member(status="active") -> dict:
    return {"status": status, "ended_on": date(2021, 3, 1) if status != "active" else None, "branch_id": uuid.uuid4()}


def kinds(outcomes) -> list[str]:
    return [o.problem.kind if o.problem else "ok" for o in outcomes]


def test_enrolment_decisions_in_request_order():
    a, b, c, d, left, stranger = (uuid.uuid4() for _ in range(6))
    members = {a: member(), b: member(), c: member(), d: member(), left: member("left")}
    outcomes = domain.decide_enrolments(session(enrolled=1), [a, stranger, left, a, b, c, d], members, already={c})
    assert kinds(outcomes) == ["ok", "not-a-member", "member-not-active", "duplicate-item", "ok", "already-enrolled",
                               "session-full"]
    assert [status_of(o.problem) for o in outcomes if o.problem] == [422, 409, 409, 409, 409]
    assert all(o.enrolment_id for o in outcomes if o.problem is None)
    events = domain.enrolled_events(session(), outcomes)
    assert [e.member_id for e in events] == [a, b]
    assert {(e.region_code, e.city_code, e.subsidy_category.value) for e in events} == {("640302", "640300", "pre_job")}


@pytest.mark.parametrize("status, kind", [("completed", "session-completed"), ("cancelled", "session-cancelled")])
def test_closed_sessions_take_no_enrolments(status, kind):
    with pytest.raises(DomainError) as err:
        domain.decide_enrolments(session(status=status), [uuid.uuid4()], {}, set())
    assert (status_of(err.value), err.value.kind) == (409, kind)


def enrolment(status, member_id=None) -> dict:
    return {"id": uuid.uuid4(), "member_id": member_id or uuid.uuid4(), "status": status}


def test_completion_counts_person_times_and_eligible_active_members():
    passed_active, passed_left = enrolment("passed"), enrolment("passed")
    rows = [passed_active, passed_left, enrolment("failed"), enrolment("enrolled"), enrolment("withdrawn")]
    done = domain.complete_session(session(status="in_progress"), PROGRAMME, rows, {passed_active["member_id"]},
                                   date(2021, 4, 20))
    e = done.event
    assert (e.person_times, e.passed, e.failed, e.eligible_persons) == (3, 2, 1, 1)
    assert e.eligible_member_ids == [passed_active["member_id"]]
    assert (e.number, e.programme_name, e.organiser_kind.value, e.completed_on) == (3, "岗前培训", "enterprise",
                                                                                      date(2021, 4, 20))
    assert [(w.member_id, w.reason) for w in done.absent] == [(rows[3]["member_id"], "absent")]


def test_completion_needs_every_attendee_assessed_and_a_started_session():
    with pytest.raises(DomainError) as err:
        domain.complete_session(session(status="in_progress"), PROGRAMME, [enrolment("attended"), enrolment("passed")],
                                set(), date(2021, 4, 20))
    assert (err.value.kind, err.value.extra["pending"]) == ("results-pending", 1)
    with pytest.raises(DomainError) as err:
        domain.complete_session(session(status="scheduled"), PROGRAMME, [], set(), date(2021, 4, 20))
    assert err.value.kind == "session-not-started"
    with pytest.raises(DomainError) as err:
        domain.complete_session(session(status="in_progress"), PROGRAMME, [], set(), date(2021, 3, 20))
    assert status_of(err.value) == 422


def test_attendance_and_results_follow_the_enrolment_lifecycle():
    a, b, c = enrolment("enrolled"), enrolment("attended"), enrolment("passed")
    live = {e["member_id"]: e for e in (a, b, c)}
    s = session(status="in_progress")
    outcomes, events = domain.decide_attendance(s, [a["member_id"], b["member_id"], a["member_id"], uuid.uuid4()], live)
    assert kinds(outcomes) == ["ok", "invalid-transition", "duplicate-item", "not-enrolled"]
    assert [e.enrolment_id for e in events] == [a["id"]]
    outcomes, events = domain.decide_results(s, [(b["member_id"], "failed"), (c["member_id"], "passed")], live)
    assert kinds(outcomes) == ["ok", "invalid-transition"] and events[0].result == "failed"
    with pytest.raises(DomainError):
        domain.decide_attendance(session(status="scheduled"), [a["member_id"]], live)
    assert domain.withdraw(s, b, "病假").reason == "病假"
    with pytest.raises(DomainError) as err:
        domain.withdraw(s, c, None)
    assert err.value.kind == "invalid-transition"


def test_cancel_withdraws_live_enrolments():
    rows = [enrolment("enrolled"), enrolment("attended")]
    event, withdrawn = domain.cancel_session(session(status="in_progress"), rows, "停电", date(2021, 4, 5))
    assert event.reason == "停电" and [w.reason for w in withdrawn] == ["session cancelled"] * 2
    with pytest.raises(DomainError):
        domain.cancel_session(session(status="completed"), [], None, date(2021, 4, 5))


def test_certificate_only_for_passed_with_a_random_serial():
    s = session(status="completed")
    cert = domain.issue_certificate(enrolment("passed"), s, PROGRAMME, None, date(2021, 5, 1))
    assert (cert.occupation, cert.level, cert.issuer, cert.region_code) == ("电工", 4, "宁夏技师学院", "640302")
    assert re.fullmatch(r"NX2021-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", cert.serial)
    assert len({domain.new_serial(2021) for _ in range(2000)}) == 2000
    with pytest.raises(DomainError) as err:
        domain.issue_certificate(enrolment("failed"), s, PROGRAMME, None, date(2021, 5, 1))
    assert err.value.kind == "enrolment-not-passed"


def test_session_input_rules():
    base = {"programme_id": str(uuid.uuid4()), "starts_on": "2021-04-01", "ends_on": "2021-04-20", "capacity": 30}
    ok = domain.SessionIn(**base, organiser_kind="enterprise", organiser_id="91350100m000100y43",
                          organiser_name="某企业", region_code="640104")
    assert ok.organiser_id == "91350100M000100Y43"
    for bad in ({"organiser_kind": "enterprise", "organiser_id": "91350100M000100Y43", "region_code": "640104"},
                {"organiser_kind": "enterprise", "organiser_id": "91350100M000100Y44", "organiser_name": "x",
                 "region_code": "640104"},
                {"organiser_kind": "branch", "organiser_id": "not-a-uuid"},
                {"organiser_kind": "branch", "organiser_id": str(uuid.uuid4()), "region_code": "110101"},
                {"organiser_kind": "branch", "organiser_id": str(uuid.uuid4()), "ends_on": "2021-03-01"}):
        with pytest.raises(ValidationError):
            domain.SessionIn(**{**base, **bad})
    with pytest.raises(DomainError) as err:
        domain.resolve_organiser(domain.SessionIn(**base, organiser_kind="branch", organiser_id=str(uuid.uuid4())),
                                 {"status": "dissolved", "name": "x", "region_code": "640104"})
    assert err.value.kind == "organiser-inactive"


@pytest.mark.parametrize("tier, region, ok", [
    ("region", "640000", True), ("region", "640100", False), ("city", "640100", True), ("city", "640104", False),
    ("county", "640104", True), ("county", "640100", False), ("enterprise", "640104", True),
    ("enterprise", "640100", True), ("enterprise", "640000", False)])
def test_competition_tier_matches_its_region(tier, region, ok):
    body = {"name": "职业技能大赛", "kind": "skills", "tier": tier, "industry": "wine", "region_code": region,
            "starts_on": "2021-06-01", "ends_on": "2021-06-02"}
    if ok:
        domain.CompetitionIn(**body)
    else:
        with pytest.raises(ValidationError):
            domain.CompetitionIn(**body)


def test_nine_key_industries_by_code_chinese_or_english():
    assert len(domain.KEY_INDUSTRIES) == 9
    assert domain.normalise_industry("枸杞") == ("goji", True)
    assert domain.normalise_industry("Beef cattle and Tan sheep") == ("beef_cattle_tan_sheep", True)
    assert domain.normalise_industry(" clean_energy ") == ("clean_energy", True)
    assert domain.normalise_industry("5G网络建设") == ("5G网络建设", False)


def competition(**over) -> dict:
    return {"id": uuid.uuid4(), "kind": "labour", "tier": "enterprise", "region_code": "640104", "city_code": "640100",
            "status": "announced", "named": 0, "reported": 0, "starts_on": date(2021, 3, 1),
            "held_on": date(2021, 6, 1), **over}


def test_participants_named_and_reported():
    a, b = uuid.uuid4(), uuid.uuid4()
    branch = {"status": "active"}
    cmd = domain.ParticipantsIn(member_ids=[a, b, a], branch_id=uuid.uuid4(), headcount=50)
    new, again, event = domain.register_participants(competition(), cmd, {a: member(), b: member()}, {b}, branch)
    assert (new, again, event.member_ids, event.headcount) == ([a], [b], [a], 51)
    _, _, nothing = domain.register_participants(competition(), domain.ParticipantsIn(member_ids=[b]),
                                                 {b: member()}, {b}, None)
    assert nothing is None
    with pytest.raises(DomainError) as err:
        domain.register_participants(competition(), domain.ParticipantsIn(member_ids=[a]), {a: member("lapsed")},
                                     set(), None)
    assert err.value.kind == "not-a-member"
    with pytest.raises(ValidationError):
        domain.ParticipantsIn(headcount=5)
    with pytest.raises(ValidationError):
        domain.ParticipantsIn()
    held = domain.hold_competition(competition(named=3, reported=51), date(2021, 6, 1))
    assert held.participants == 54
    with pytest.raises(DomainError):
        domain.register_participants(competition(status="held"), cmd, {}, set(), branch)


def test_results_need_a_held_competition_and_registered_named_winners():
    a = uuid.uuid4()
    cmd = domain.CompetitionResultsIn(published_on=date(2021, 6, 2), winners=[
        {"name": "乙", "rank": 2, "award": "二等奖"}, {"member_id": str(a), "name": "甲", "rank": 1, "award": "一等奖"}])
    event = domain.publish_results(competition(status="held"), cmd, {a})
    assert [w.rank for w in event.winners] == [1, 2]
    with pytest.raises(DomainError) as err:
        domain.publish_results(competition(status="held"), cmd, set())
    assert err.value.kind == "not-a-participant"
    with pytest.raises(DomainError) as err:
        domain.publish_results(competition(status="announced"), cmd, {a})
    assert err.value.kind == "invalid-transition"


def test_studio_lifecycle():
    cmd = domain.StudioIn(kind="skill_master_studio", name="技能大师工作室", host_enterprise="宁夏某集团",
                          lead_worker="王师傅", level="city", industry="新型材料", region_code="640202",
                          recognised_on=date(2021, 3, 1))
    rec = domain.recognise_studio(cmd, None)
    assert (rec.industry, rec.city_code) == ("new_materials", "640200")
    studio = {"id": rec.studio_id, "kind": "skill_master_studio", "level": "city", "region_code": "640202",
              "city_code": "640200", "status": "recognised", "recognised_on": date(2021, 3, 1), "revoked_on": None}
    assert domain.evaluate_studio(studio, domain.EvaluationIn(rating="pass", evaluated_on=date(2021, 9, 1))).rating == "pass"
    assert domain.revoke_studio(studio, domain.RevokeIn(reason="考核不合格", revoked_on=date(2021, 9, 2))).reason == "考核不合格"
    revoked = {**studio, "status": "revoked", "revoked_on": date(2021, 9, 2)}
    with pytest.raises(DomainError) as err:
        domain.evaluate_studio(revoked, domain.EvaluationIn(rating="good", evaluated_on=date(2021, 9, 3)))
    assert err.value.kind == "studio-revoked"
    with pytest.raises(DomainError):
        domain.recognise_studio(cmd.model_copy(update={"lead_member_id": uuid.uuid4()}), None)
    with pytest.raises(ValidationError):
        domain.StudioIn(**{**cmd.model_dump(), "region_code": "640000"})
    with pytest.raises(ValidationError):
        domain.EvaluationIn(rating="good", evaluated_on=date(2999, 1, 1))


def test_free_text_refuses_nul_and_rank_is_bounded():
    good = {"name": "枸杞加工岗前培训", "occupation": "枸杞加工工", "target_level": 4, "provider_kind": "technical_school",
            "provider_name": "宁夏工业职业技术学院", "subsidy_category": "pre_job"}
    assert domain.ProgrammeIn(**good).name == good["name"]
    for field in ("name", "occupation", "provider_name"):
        with pytest.raises(ValidationError):
            domain.ProgrammeIn(**{**good, field: "枸杞\x00加工"})
    assert domain.WinnerIn(name="张三", rank=domain.RANK_MAX, award="一等奖").rank == domain.RANK_MAX
    for rank in (domain.RANK_MAX + 1, 2**64):
        with pytest.raises(ValidationError):
            domain.WinnerIn(name="张三", rank=rank, award="一等奖")
    serial = domain.new_serial(2021)
    assert domain.SERIAL.fullmatch(serial) and not domain.SERIAL.fullmatch(serial[:-1] + "\x00")


def test_every_training_event_about_a_place_carries_its_region():
    """Issue 15: a federation's channel is routed by region, so every event that concerns a place
    (a session, its enrolments, a certificate, a competition, a studio) names it."""
    from shared.events import REGISTRY
    placeless = {"changai.training.programme.registered.v1"}  # a programme is not held anywhere; its sessions are
    # the intake's answers: addressed to an upstream source (its region scope), not about a place
    placeless |= {"changai.training.command.applied.v1", "changai.training.command.rejected.v1"}
    training = {name: cls for name, cls in REGISTRY.items() if name.startswith("changai.training.")}
    assert len(training) == 19
    for name, cls in training.items():
        if name not in placeless:
            assert {"region_code", "city_code"} <= set(cls.model_fields), name


def test_enrolment_events_carry_the_sessions_region():
    a, b = uuid.uuid4(), uuid.uuid4()
    s = session(status="in_progress")
    live = {a: {"id": uuid.uuid4(), "member_id": a, "status": "enrolled"},
            b: {"id": uuid.uuid4(), "member_id": b, "status": "attended"}}
    _, attended = domain.decide_attendance(s, [a], live)
    _, assessed = domain.decide_results(s, [(b, "passed")], live)
    withdrawn = domain.withdraw(s, live[a], "moved away")
    _, cancelled = domain.cancel_session(s, list(live.values()), None, date(2021, 4, 5))
    for e in [*attended, *assessed, withdrawn, *cancelled]:
        assert (e.region_code, e.city_code, e.subsidy_category.value) == ("640302", "640300", "pre_job"), e


def test_every_route_declares_its_answer_and_lives_in_a_resource_router():
    """Issue 14: the OpenAPI that clients are generated from has a schema for every answer."""
    from services.training.main import build_app
    app = build_app()
    spec = app.openapi()
    routes = [(m, p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]
    assert len(routes) == 41
    for method, path, op in routes:
        ok = [code for code in op["responses"] if code.startswith("2")]
        assert ok and all(op["responses"][c]["content"]["application/json"]["schema"] for c in ok), (method, path)
    import importlib
    parts = [importlib.import_module(f"services.training.api.{m}") for m in
             ("reference", "programmes", "sessions", "enrolments", "rosters", "certificates", "competitions",
              "studios")]
    assert sum(len(p.router.routes) for p in parts) == len(routes)
