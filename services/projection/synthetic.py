"""Synthetic domain events: a small scenario touching every event type, and large backlogs.

Used by the tests, the benchmark and the demo to feed the projection without the
producing services (which publish the same types through their outboxes). Every
event is a real ``shared.events`` model, wrapped and encoded exactly as the outbox
relay does (``envelope`` + ``encode``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson

from services.projection.domain import DOMAIN_TOPICS
from shared.events import EventData, encode, envelope
from shared.events import funding as fe
from shared.events import membership as me
from shared.events import notifier as ne
from shared.events import reform as re_
from shared.events import training as te
from shared.regions import COUNTIES

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers

COUNTY_CODES = [c.code for c in COUNTIES]
CITY_OF = {c.code: c.parent for c in COUNTIES if c.parent is not None}  # every county has its city
FORMS = list(me.EmploymentForm)


@dataclass
class _Member:
    """A synthetic member as the scenario moves it (a transfer changes its branch and county)."""

    id: uuid.UUID
    branch: uuid.UUID
    county: str
    form: me.EmploymentForm


def _id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _county(rng: random.Random) -> tuple[str, str]:
    code = rng.choice(COUNTY_CODES)
    return code, CITY_OF[code]


def scenario(seed: int = 2021) -> list[EventData]:
    """A small replay of the article: every event type at least once, in a valid order per aggregate."""
    rng = random.Random(seed)
    ev: list[EventData] = []
    add = ev.append

    # -- branches
    branches = []
    for i, county in enumerate(["640104", "640104", "640202", "640302", "640402", "640502", "640122"]):
        b = _id(rng)
        branches.append((b, county))
        branch_kind = [me.BranchKind.enterprise, me.BranchKind.new_form, me.BranchKind.joint][i % 3]
        add(
            me.BranchEstablished(
                branch_id=b,
                name=f"合成工会{i}",
                credit_code="91640100MA76XXXX0X",
                region_code=county,
                city_code=CITY_OF[county],
                industry_section="C",
                kind=branch_kind,
                founded_on=date(2021 if i else 2020, 3, 1 + i),
            )
        )
    b6, _ = branches[6]
    add(
        me.BranchUpdated(
            branch_id=b6,
            name="合成工会6（更名）",
            region_code="640521",
            city_code="640500",
            industry_section="G",
            kind=me.BranchKind.industry,
            changed=["region_code", "kind"],
        )
    )
    add(
        me.BranchMerged(
            branch_id=branches[5][0],
            into_branch_id=branches[4][0],
            region_code="640502",
            city_code="640500",
            kind=me.BranchKind.joint,
            members_moved=0,
            merged_on=date(2021, 6, 1),
        )
    )
    add(
        me.BranchDissolved(
            branch_id=branches[3][0],
            region_code="640302",
            city_code="640300",
            kind=me.BranchKind.enterprise,
            dissolved_on=date(2021, 7, 1),
        )
    )

    # -- members
    members: list[_Member] = []
    for i in range(60):
        branch, county = branches[i % 5]
        member_id = _id(rng)
        form = FORMS[i % len(FORMS)]
        members.append(_Member(member_id, branch, county, form))
        add(
            me.MemberJoined(
                member_id=member_id,
                branch_id=branch,
                region_code=county,
                city_code=CITY_OF[county],
                employment_form=form,
                occupation="电工",
                skill_level=4,
                joined_on=date(2021 if i % 4 else 2020, 1 + i % 12, 1),
            )
        )
    for i in range(5):  # transfers to branch 0 (640104)
        m = members[10 + i]
        add(
            me.MemberTransferred(
                member_id=m.id,
                from_branch_id=m.branch,
                to_branch_id=branches[0][0],
                from_region_code=m.county,
                to_region_code="640104",
                from_city_code=CITY_OF[m.county],
                to_city_code="640100",
                employment_form=m.form,
                transferred_on=date(2021, 8, 1),
            )
        )
        m.branch, m.county = branches[0][0], "640104"
    for m in members[20:23]:
        add(
            me.MemberLeft(
                member_id=m.id,
                branch_id=m.branch,
                region_code=m.county,
                city_code=CITY_OF[m.county],
                employment_form=m.form,
                left_on=date(2021, 9, 1),
            )
        )
    for m in members[23:25]:
        add(
            me.MemberLapsed(
                member_id=m.id,
                branch_id=m.branch,
                region_code=m.county,
                city_code=CITY_OF[m.county],
                employment_form=m.form,
                lapsed_on=date(2021, 9, 2),
            )
        )
    for m in members[30:33]:
        add(
            me.MemberSkillLevelChanged(
                member_id=m.id,
                branch_id=m.branch,
                region_code=m.county,
                city_code=CITY_OF[m.county],
                from_level=4,
                to_level=3,
            )
        )
    stations = []
    for i, county in enumerate(["640104", "640105", "640202", "640402"]):
        s = _id(rng)
        stations.append((s, county))
        add(
            me.StationOpened(
                station_id=s,
                name=f"户外劳动者服务站{i}",
                branch_id=branches[0][0],
                region_code=county,
                city_code=CITY_OF[county],
                services=["饮水", "休息"],
                opened_on=date(2021, 5, 1),
            )
        )
    add(
        me.StationClosed(
            station_id=stations[3][0],
            branch_id=branches[0][0],
            region_code="640402",
            city_code="640400",
            closed_on=date(2021, 10, 1),
        )
    )

    # -- training
    programmes = []
    for cat, provider in (
        (te.SubsidyCategory.pre_job, te.ProviderKind.enterprise),
        (te.SubsidyCategory.skills_upgrade, te.ProviderKind.vocational_college),
    ):
        p = _id(rng)
        programmes.append((p, cat))
        add(
            te.ProgrammeRegistered(
                programme_id=p,
                name=f"{cat.value}项目",
                occupation="电工",
                target_level=4,
                provider_kind=provider,
                provider_name="宁夏职业技术学院",
                subsidy_category=cat,
            )
        )
    sessions = []
    for i, county in enumerate(["640104", "640202", "640302", "640402"]):
        p, cat = programmes[i % 2]
        s = _id(rng)
        sessions.append((s, p, cat, county))
        add(
            te.SessionScheduled(
                session_id=s,
                programme_id=p,
                number=i + 1,
                organiser_id=str(branches[0][0]),
                organiser_kind=te.OrganiserKind.branch,
                region_code=county,
                city_code=CITY_OF[county],
                subsidy_category=cat,
                starts_on=date(2021, 4, 1),
                ends_on=date(2021, 4, 30),
                capacity=50,
            )
        )
    for s, _programme, cat, county in sessions[:3]:
        add(
            te.SessionStarted(
                session_id=s,
                region_code=county,
                city_code=CITY_OF[county],
                subsidy_category=cat,
                started_on=date(2021, 4, 1),
            )
        )
    enrolled = members[:8]
    for i, m in enumerate(enrolled):
        s, p, cat, county = sessions[i % 2]
        e = _id(rng)
        add(
            te.EnrolmentEnrolled(
                enrolment_id=e,
                session_id=s,
                member_id=m.id,
                region_code=county,
                city_code=CITY_OF[county],
                subsidy_category=cat,
            )
        )
        if i == 7:
            add(te.EnrolmentWithdrawn(enrolment_id=e, session_id=s, member_id=m.id))
            continue
        add(te.EnrolmentAttended(enrolment_id=e, session_id=s, member_id=m.id))
        add(te.EnrolmentAssessed(enrolment_id=e, session_id=s, member_id=m.id, result="failed" if i == 6 else "passed"))
    for i, (s, p, cat, county) in enumerate(sessions[:2]):
        passed = [m.id for m in enrolled[i:6:2]]
        add(
            te.SessionCompleted(
                session_id=s,
                programme_id=p,
                programme_name="项目",
                number=i + 1,
                organiser_id=str(branches[0][0]),
                organiser_kind=te.OrganiserKind.branch,
                region_code=county,
                city_code=CITY_OF[county],
                subsidy_category=cat,
                person_times=40 + i,
                passed=38 + i,
                failed=2,
                eligible_member_ids=passed,
                eligible_persons=len(passed),
                completed_on=date(2021, 4, 30),
            )
        )
    s, p, cat, county = sessions[3]
    add(
        te.SessionCancelled(
            session_id=s,
            region_code=county,
            city_code=CITY_OF[county],
            subsidy_category=cat,
            reason="人数不足",
            cancelled_on=date(2021, 3, 30),
        )
    )
    for i, m in enumerate(members[:3]):
        add(
            te.CertificateIssued(
                certificate_id=_id(rng),
                serial=f"S2021{i:06d}",
                member_id=m.id,
                occupation="电工",
                level=3 + i % 2,
                issuer="宁夏职业技能鉴定中心",
                region_code=m.county,
                city_code=CITY_OF[m.county],
                issued_on=date(2021, 5, 10),
            )
        )
    comps = []
    for kind, tier, county in (
        (te.CompetitionKind.labour, te.Tier.region, "640000"),
        (te.CompetitionKind.skills, te.Tier.city, "640100"),
        (te.CompetitionKind.skills, te.Tier.enterprise, "640104"),
    ):
        c = _id(rng)
        city = None if county == "640000" else ("640100" if county.startswith("6401") else None)
        comps.append((c, kind, tier, county, city))
        add(
            te.CompetitionAnnounced(
                competition_id=c,
                name=f"{kind.value}竞赛",
                kind=kind,
                tier=tier,
                industry="葡萄酒",
                region_code=county,
                city_code=city,
                starts_on=date(2021, 6, 1),
                ends_on=date(2021, 6, 30),
            )
        )
    for j, (c, kind, tier, county, city) in enumerate(comps):
        add(
            te.CompetitionParticipantsRegistered(
                competition_id=c,
                kind=kind,
                tier=tier,
                region_code=county,
                city_code=city,
                member_ids=[members[j].id],
                headcount=1,
            )
        )
        add(
            te.CompetitionParticipantsRegistered(
                competition_id=c,
                kind=kind,
                tier=tier,
                region_code=county,
                city_code=city,
                branch_id=branches[0][0],
                headcount=100 * (j + 1),
            )
        )
    c, kind, tier, county, city = comps[0]
    add(
        te.CompetitionHeld(
            competition_id=c,
            kind=kind,
            tier=tier,
            region_code=county,
            city_code=city,
            participants=101,
            held_on=date(2021, 6, 20),
        )
    )
    add(
        te.CompetitionResultsPublished(
            competition_id=c,
            kind=kind,
            tier=tier,
            region_code=county,
            city_code=city,
            winners=[te.Winner(name="张三", rank=1, award="一等奖"), te.Winner(name="李四", rank=2, award="二等奖")],
            published_on=date(2021, 6, 30),
        )
    )
    studios = []
    for studio_kind, level, county in (
        (te.StudioKind.innovation_studio, te.StudioLevel.region, "640104"),
        (te.StudioKind.innovation_studio, te.StudioLevel.city, "640302"),
        (te.StudioKind.training_base, te.StudioLevel.region, "640202"),
        (te.StudioKind.skill_master_studio, te.StudioLevel.region, "640502"),
        (te.StudioKind.training_base, te.StudioLevel.national, "640181"),
    ):
        st = _id(rng)
        studios.append((st, studio_kind, level, county))
        add(
            te.StudioRecognised(
                studio_id=st,
                kind=studio_kind,
                name="工作室",
                host_enterprise="宁夏某企业",
                lead_worker="王师傅",
                level=level,
                industry="枸杞",
                region_code=county,
                city_code=CITY_OF[county],
                recognised_on=date(2021, 7, 1),
            )
        )
    st, studio_kind, level, county = studios[1]
    add(
        te.StudioEvaluated(
            studio_id=st,
            kind=studio_kind,
            level=te.StudioLevel.region,
            region_code=county,
            city_code=CITY_OF[county],
            rating="excellent",
            evaluated_on=date(2021, 12, 1),
        )
    )
    st, studio_kind, level, county = studios[2]
    add(
        te.StudioRevoked(
            studio_id=st,
            kind=studio_kind,
            level=level,
            region_code=county,
            city_code=CITY_OF[county],
            reason="考核不合格",
            revoked_on=date(2021, 12, 2),
        )
    )

    # -- funding (fen)
    central, regional = _id(rng), _id(rng)
    add(
        fe.FundOpened(
            fund_id=central,
            name="中央预算内产教融合",
            source_kind=fe.SourceKind.central_budget,
            fiscal_year=2021,
            amount_fen=280_000_000_00,
        )
    )
    add(
        fe.FundOpened(
            fund_id=regional,
            name="自治区预算内产教融合",
            source_kind=fe.SourceKind.regional_budget,
            fiscal_year=2021,
            amount_fen=40_000_000_00,
        )
    )
    add(
        fe.FundToppedUp(
            fund_id=regional,
            source_kind=fe.SourceKind.regional_budget,
            fiscal_year=2021,
            amount_fen=6_000_000_00,
            total_fen=46_000_000_00,
        )
    )
    grants = []
    for i in range(3):
        g = _id(rng)
        grants.append(g)
        add(
            fe.GrantApproved(
                grant_id=g,
                fund_id=central,
                source_kind=fe.SourceKind.central_budget,
                fiscal_year=2021,
                beneficiary_kind=fe.BeneficiaryKind.project,
                beneficiary_id=f"P{i}",
                beneficiary_name=f"产教融合项目{i}",
                purpose="产教融合",
                amount_fen=10_000_000_00,
            )
        )
        add(
            fe.FundsDisbursed(
                disbursement_id=_id(rng),
                grant_id=g,
                fund_id=central,
                source_kind=fe.SourceKind.central_budget,
                fiscal_year=2021,
                beneficiary_kind=fe.BeneficiaryKind.project,
                beneficiary_id=f"P{i}",
                amount_fen=4_000_000_00,
                grant_remaining_fen=6_000_000_00,
                paid_on=date(2021, 8, 1),
            )
        )
    add(
        fe.GrantRevoked(
            grant_id=grants[2],
            fund_id=central,
            source_kind=fe.SourceKind.central_budget,
            fiscal_year=2021,
            beneficiary_kind=fe.BeneficiaryKind.project,
            released_fen=6_000_000_00,
        )
    )
    sg = _id(rng)
    add(
        fe.GrantApproved(
            grant_id=sg,
            fund_id=regional,
            source_kind=fe.SourceKind.regional_budget,
            fiscal_year=2021,
            beneficiary_kind=fe.BeneficiaryKind.studio,
            beneficiary_id=str(studios[0][0]),
            beneficiary_name="创新工作室",
            purpose="工作室补助",
            region_code="640104",
            amount_fen=100_000_00,
        )
    )
    add(
        fe.FundClosed(
            fund_id=regional, source_kind=fe.SourceKind.regional_budget, fiscal_year=2021, unspent_fen=45_900_000_00
        )
    )
    skills = _id(rng)
    add(
        fe.FundOpened(
            fund_id=skills,
            name="职业技能提升行动专账",
            source_kind=fe.SourceKind.skills_account,
            fiscal_year=2021,
            amount_fen=1_000_000_00,
        )
    )
    for i, (s, _programme, cat, county) in enumerate(sessions[:2]):
        claim = _id(rng)
        persons = 40 + i
        add(
            fe.SubsidyClaimed(
                claim_id=claim,
                session_id=s,
                organiser_id=str(branches[0][0]),
                subsidy_category=cat,
                region_code=county,
                city_code=CITY_OF[county],
                persons=persons,
                rate_fen=800_00,
                amount_fen=persons * 800_00,
                completed_on=date(2021, 4, 30),
            )
        )
        if i == 0:
            add(
                fe.SubsidyPaid(
                    claim_id=claim,
                    session_id=s,
                    organiser_id=str(branches[0][0]),
                    subsidy_category=cat,
                    region_code=county,
                    city_code=CITY_OF[county],
                    fund_id=skills,
                    source_kind=fe.SourceKind.skills_account,
                    fiscal_year=2021,
                    disbursement_id=_id(rng),
                    persons=persons,
                    amount_fen=persons * 800_00,
                )
            )
        else:
            add(
                fe.SubsidyRejected(
                    claim_id=claim,
                    session_id=s,
                    organiser_id=str(branches[0][0]),
                    subsidy_category=cat,
                    region_code=county,
                    city_code=CITY_OF[county],
                    persons=persons,
                    amount_fen=persons * 800_00,
                    reason=fe.RejectionReason.fund_exhausted,
                    detail="专账余额不足",
                )
            )

    # -- notices
    channel = _id(rng)
    for i in range(6):
        channel_kind = [ne.ChannelKind.webhook, ne.ChannelKind.wecom, ne.ChannelKind.dingtalk][i % 3]
        add(
            ne.DeliverySucceeded(
                delivery_id=_id(rng),
                event_id=_id(rng),
                event_type="changai.membership.branch.established.v1",
                channel_id=channel,
                channel_kind=channel_kind,
                owner_region="640000",
                attempts=1 + i % 2,
                latency_ms=200 * (i + 1),
            )
        )
    add(
        ne.DeliveryFailed(
            delivery_id=_id(rng),
            event_id=_id(rng),
            event_type="changai.membership.member.joined.v1",
            channel_id=channel,
            channel_kind=ne.ChannelKind.email,
            owner_region="640100",
            attempts=5,
            last_error="550 mailbox unavailable",
        )
    )
    add(
        ne.ChannelPaused(
            channel_id=channel, channel_kind=ne.ChannelKind.email, owner_region="640100", reason="5 failures in a row"
        )
    )
    other = _id(rng)
    add(ne.ChannelPaused(channel_id=other, channel_kind=ne.ChannelKind.dingtalk, reason="signature rejected"))
    add(ne.ChannelResumed(channel_id=other, channel_kind=ne.ChannelKind.dingtalk))
    return ev


def reform_ledger() -> list[EventData]:
    """The reform service's events for the 改革任务台账 dashboard: in 2021 a task completed, one overdue and
    one silent; a document, a pilot and a city plan."""
    a, b = uuid.uuid4(), uuid.uuid4()
    tasks = [uuid.uuid4() for _ in range(3)]
    common = {"year": 2021, "region_code": "640000"}

    def assigned(i: int, unit: uuid.UUID, name: str) -> re_.TaskAssigned:
        return re_.TaskAssigned(
            task_id=tasks[i],
            number=i + 1,
            lead_unit_id=unit,
            lead_unit=name,
            title=f"任务{i + 1}",
            deadline=date(2021, 6, 30),
            **common,
        )

    return [
        assigned(0, a, "自治区人社厅"),
        assigned(1, b, "自治区教育厅"),
        assigned(2, b, "自治区教育厅"),
        re_.TaskCompletionReported(
            task_id=tasks[0], number=1, lead_unit_id=a, lead_unit="自治区人社厅", unit_id=a, evidence_links=1, **common
        ),
        re_.TaskCompleted(
            task_id=tasks[0],
            number=1,
            lead_unit_id=a,
            lead_unit="自治区人社厅",
            completed_on=date(2021, 6, 1),
            deadline=date(2021, 6, 30),
            on_time=True,
            **common,
        ),
        re_.TaskOverdue(
            task_id=tasks[1],
            number=2,
            lead_unit_id=b,
            lead_unit="自治区教育厅",
            title="任务2",
            deadline=date(2021, 6, 30),
            days_overdue=3,
            status=re_.TaskStatus.assigned,
            **common,
        ),
        re_.TaskProgressDue(
            task_id=tasks[2],
            number=3,
            lead_unit_id=b,
            lead_unit="自治区教育厅",
            title="任务3",
            deadline=date(2021, 6, 30),
            days_silent=30,
            **common,
        ),
        re_.DocumentIssued(
            document_id=uuid.uuid4(),
            unit_id=a,
            unit="自治区人社厅",
            title="实施细则",
            doc_number="宁人社发〔2021〕12号",
            issued_on=date(2021, 5, 1),
            **common,
        ),
        re_.PilotDesignated(
            pilot_id=uuid.uuid4(),
            kind=re_.PilotKind.county,
            mode=re_.PilotMode.comprehensive,
            name="吴忠市利通区",
            year=2021,
            region_code="640302",
        ),
        re_.CityPlanRecorded(
            plan_id=uuid.uuid4(),
            city_code="640100",
            title="银川市实施方案",
            issued_on=date(2020, 3, 31),
            region_code="640100",
        ),
    ]


def encode_all(events: Iterable[EventData], *, prefix: str = "", start: datetime | None = None) -> list[Record]:
    """(topic, key, value, headers) of each event, as the outbox relay would publish it."""
    t = start or datetime.now(UTC)
    out = []
    for i, data in enumerate(events):
        key, value, headers = encode(envelope(data, time=t + timedelta(milliseconds=i)))
        out.append((prefix + data.topic, key, value, headers))
    return out


async def produce(bootstrap: str, records: Iterable[Record], *, linger_ms: int = 20) -> int:
    """Publish records with an idempotent producer (acks=all); returns how many."""
    from shared.kafka import make_producer

    producer = make_producer(bootstrap, linger_ms=linger_ms, max_batch_size=1024 * 1024)
    await producer.start()
    n = 0
    try:
        futures = []
        for topic, key, value, headers in records:
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            n += 1
            if len(futures) >= 20000:
                for f in futures:
                    await f
                futures.clear()
        for f in futures:
            await f
    finally:
        await producer.stop()
    return n


# --------------------------------------------------------------------------- large backlogs


def backlog(n: int, *, prefix: str = "", seed: int = 7) -> Iterator[Record]:
    """`n` encoded events of a realistic mix (mostly members joining), fast to generate.

    The CloudEvents are built as dicts with the same fields and encoding the models
    give (one of each kind is checked against its model by the benchmark)."""
    rng = random.Random(seed)
    now = datetime(2021, 9, 1, tzinfo=UTC)
    ct = b"application/cloudevents+json; charset=utf-8"
    headers = [("content-type", ct)]
    kinds = (
        ["joined"] * 70
        + ["transferred"] * 5
        + ["left"] * 3
        + ["enrolled"] * 10
        + ["completed"] * 2
        + ["certificate"] * 3
        + ["delivered"] * 5
        + ["paid"] * 2
    )
    for i in range(n):
        kind = kinds[rng.randrange(len(kinds))]
        county = COUNTY_CODES[rng.randrange(len(COUNTY_CODES))]
        city = CITY_OF[county]
        subject = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "joined":
            etype, topic = "changai.membership.member.joined.v1", "membership.events"
            data: dict[str, object] = {
                "member_id": subject,
                "branch_id": subject,
                "region_code": county,
                "city_code": city,
                "employment_form": FORMS[i % 5].value,
                "occupation": None,
                "skill_level": 4,
                "birth_year": 1990,
                "sex": "male",
                "joined_on": f"{2020 + i % 2}-0{1 + i % 9}-01",
            }
        elif kind == "transferred":
            to = COUNTY_CODES[(i * 7) % len(COUNTY_CODES)]
            etype, topic = "changai.membership.member.transferred.v1", "membership.events"
            data = {
                "member_id": subject,
                "from_branch_id": subject,
                "to_branch_id": subject,
                "from_region_code": county,
                "to_region_code": to,
                "from_city_code": city,
                "to_city_code": CITY_OF[to],
                "employment_form": FORMS[i % 5].value,
                "reason": None,
                "transferred_on": "2021-05-01",
            }
        elif kind == "left":
            etype, topic = "changai.membership.member.left.v1", "membership.events"
            data = {
                "member_id": subject,
                "branch_id": subject,
                "region_code": county,
                "city_code": city,
                "employment_form": FORMS[i % 5].value,
                "left_on": "2021-06-01",
            }
        elif kind == "enrolled":
            etype, topic = "changai.training.enrolment.enrolled.v1", "training.events"
            data = {
                "enrolment_id": subject,
                "session_id": subject,
                "member_id": subject,
                "region_code": county,
                "city_code": city,
                "subsidy_category": "pre_job",
            }
        elif kind == "completed":
            etype, topic = "changai.training.session.completed.v1", "training.events"
            data = {
                "session_id": subject,
                "programme_id": subject,
                "programme_name": "电工",
                "number": 1,
                "organiser_id": "b1",
                "organiser_kind": "branch",
                "organiser_name": None,
                "region_code": county,
                "city_code": city,
                "subsidy_category": "skills_upgrade",
                "person_times": 40,
                "passed": 38,
                "failed": 2,
                "eligible_member_ids": [],
                "eligible_persons": 0,
                "completed_on": "2021-04-30",
            }
        elif kind == "certificate":
            etype, topic = "changai.training.certificate.issued.v1", "training.events"
            data = {
                "certificate_id": subject,
                "serial": f"S{i}",
                "member_id": subject,
                "enrolment_id": None,
                "programme_id": None,
                "occupation": "电工",
                "level": 1 + i % 5,
                "issuer": "中心",
                "region_code": county,
                "city_code": city,
                "issued_on": "2021-05-10",
            }
        elif kind == "delivered":
            etype, topic = "changai.notifier.delivery.succeeded.v1", "notifier.events"
            data = {
                "delivery_id": subject,
                "event_id": subject,
                "event_type": "changai.membership.member.joined.v1",
                "channel_id": subject,
                "channel_kind": "webhook",
                "owner_region": None,
                "attempts": 1,
                "latency_ms": 120 + i % 500,
            }
        else:
            etype, topic = "changai.funding.subsidy.paid.v1", "funding.events"
            data = {
                "claim_id": subject,
                "session_id": subject,
                "organiser_id": "b1",
                "subsidy_category": "pre_job",
                "region_code": county,
                "city_code": city,
                "fund_id": subject,
                "source_kind": "skills_account",
                "fiscal_year": 2021,
                "disbursement_id": subject,
                "persons": 40,
                "amount_fen": 3_200_000,
            }
        ce = {
            "specversion": "1.0",
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": "/changai/" + topic.split(".")[0],
            "type": etype,
            "subject": subject,
            "time": (now + timedelta(milliseconds=i)).isoformat(),
            "datacontenttype": "application/json",
            "dataschema": f"https://changai.example/schemas/{etype}.json",
            "partitionkey": subject,
            "data": data,
        }
        yield prefix + topic, subject.encode(), orjson.dumps(ce), headers


def projected_topics() -> list[str]:
    """Every topic the projection reads: the domain topics and every dead-letter topic."""
    from shared.topics import TOPICS

    return [*DOMAIN_TOPICS, *(t.name for t in TOPICS if t.name.endswith(".dlq"))]


async def create_topics(bootstrap: str, prefix: str) -> list[str]:
    """Copies of the projection's topics under `prefix` (same partitions and configs): an isolated run."""
    from dataclasses import replace

    from shared.topics import BY_NAME, ensure_topics

    topics = tuple(replace(BY_NAME[name], name=prefix + name) for name in projected_topics())
    return await ensure_topics(bootstrap, topics)


def full_label_set(seed: int = 11) -> list[EventData]:
    """Events that give every metric family every label combination it can have (for scrape timing)."""
    rng = random.Random(seed)
    ev: list[EventData] = []
    add = ev.append
    years = (2020, 2021)
    for county in COUNTY_CODES:
        city = CITY_OF[county]
        for year in years:
            for form in FORMS:
                for cls, field in (
                    (me.MemberJoined, "joined_on"),
                    (me.MemberLeft, "left_on"),
                    (me.MemberLapsed, "lapsed_on"),
                ):
                    extra = {"occupation": None} if cls is me.MemberJoined else {}
                    add(
                        cls(
                            member_id=_id(rng),
                            branch_id=_id(rng),
                            region_code=county,
                            city_code=city,
                            employment_form=form,
                            **{field: date(year, 6, 1)},
                            **extra,
                        )
                    )
            for branch_kind in me.BranchKind:
                add(
                    me.BranchEstablished(
                        branch_id=_id(rng),
                        name="工会",
                        credit_code="x",
                        region_code=county,
                        city_code=city,
                        industry_section="C",
                        kind=branch_kind,
                        founded_on=date(year, 1, 1),
                    )
                )
            other = COUNTY_CODES[(COUNTY_CODES.index(county) + 1) % len(COUNTY_CODES)]
            add(
                me.MemberTransferred(
                    member_id=_id(rng),
                    from_branch_id=_id(rng),
                    to_branch_id=_id(rng),
                    from_region_code=county,
                    to_region_code=other,
                    from_city_code=city,
                    to_city_code=CITY_OF[other],
                    employment_form=FORMS[0],
                    transferred_on=date(year, 7, 1),
                )
            )
            add(
                me.StationOpened(
                    station_id=_id(rng),
                    name="站",
                    branch_id=_id(rng),
                    region_code=county,
                    city_code=city,
                    opened_on=date(year, 5, 1),
                )
            )
            for level in range(1, 6):
                add(
                    te.CertificateIssued(
                        certificate_id=_id(rng),
                        serial="S",
                        member_id=_id(rng),
                        occupation="电工",
                        level=level,
                        issuer="中心",
                        region_code=county,
                        city_code=city,
                        issued_on=date(year, 5, 1),
                    )
                )
                add(
                    me.MemberSkillLevelChanged(
                        member_id=_id(rng), branch_id=_id(rng), region_code=county, city_code=city, to_level=level
                    )
                )
            for cat in te.SubsidyCategory:
                for status in ("scheduled", "started", "completed", "cancelled"):
                    s = _id(rng)
                    common = dict(session_id=s, region_code=county, city_code=city, subsidy_category=cat)
                    if status == "scheduled":
                        add(
                            te.SessionScheduled(
                                **common,
                                programme_id=_id(rng),
                                number=1,
                                organiser_id="o",
                                organiser_kind=te.OrganiserKind.branch,
                                starts_on=date(year, 1, 1),
                                ends_on=date(year, 2, 1),
                                capacity=10,
                            )
                        )
                    elif status == "started":
                        add(te.SessionStarted(**common, started_on=date(year, 1, 1)))
                    elif status == "completed":
                        add(
                            te.SessionCompleted(
                                **common,
                                programme_id=_id(rng),
                                programme_name="p",
                                number=1,
                                organiser_id="o",
                                organiser_kind=te.OrganiserKind.branch,
                                person_times=10,
                                passed=9,
                                failed=1,
                                eligible_member_ids=[],
                                eligible_persons=0,
                                completed_on=date(year, 2, 1),
                            )
                        )
                    else:
                        add(te.SessionCancelled(**common, cancelled_on=date(year, 1, 1)))
                add(
                    te.EnrolmentEnrolled(
                        enrolment_id=_id(rng),
                        session_id=_id(rng),
                        member_id=_id(rng),
                        region_code=county,
                        city_code=city,
                        subsidy_category=cat,
                    )
                )
                for source in fe.SourceKind:
                    add(
                        fe.SubsidyPaid(
                            claim_id=_id(rng),
                            session_id=_id(rng),
                            organiser_id="o",
                            subsidy_category=cat,
                            region_code=county,
                            city_code=city,
                            fund_id=_id(rng),
                            source_kind=source,
                            fiscal_year=year,
                            disbursement_id=_id(rng),
                            persons=10,
                            amount_fen=8000_00,
                        )
                    )
                if year == 2021:
                    add(
                        fe.SubsidyClaimed(
                            claim_id=_id(rng),
                            session_id=_id(rng),
                            organiser_id="o",
                            subsidy_category=cat,
                            region_code=county,
                            city_code=city,
                            persons=1,
                            rate_fen=800_00,
                            amount_fen=800_00,
                            completed_on=date(year, 2, 1),
                        )
                    )
                    for reason in fe.RejectionReason:
                        add(
                            fe.SubsidyRejected(
                                claim_id=_id(rng),
                                session_id=_id(rng),
                                organiser_id="o",
                                subsidy_category=cat,
                                region_code=county,
                                city_code=city,
                                persons=1,
                                amount_fen=800_00,
                                reason=reason,
                                detail="-",
                            )
                        )
            for kind in te.CompetitionKind:
                for tier in te.Tier:
                    c = _id(rng)
                    common = dict(competition_id=c, kind=kind, tier=tier, region_code=county, city_code=city)
                    add(
                        te.CompetitionAnnounced(
                            **common, name="赛", industry="枸杞", starts_on=date(year, 3, 1), ends_on=date(year, 4, 1)
                        )
                    )
                    add(te.CompetitionParticipantsRegistered(**common, headcount=50))
                    add(te.CompetitionHeld(**common, participants=50, held_on=date(year, 3, 10)))
                    add(
                        te.CompetitionResultsPublished(
                            **common,
                            winners=[te.Winner(name="甲", rank=1, award="一等奖")],
                            published_on=date(year, 4, 1),
                        )
                    )
            for studio_kind in te.StudioKind:
                for studio_level in te.StudioLevel:
                    add(
                        te.StudioRecognised(
                            studio_id=_id(rng),
                            kind=studio_kind,
                            name="室",
                            host_enterprise="企",
                            lead_worker="王",
                            level=studio_level,
                            industry="枸杞",
                            region_code=county,
                            city_code=city,
                            recognised_on=date(year, 7, 1),
                        )
                    )
    for year in years:
        for source in fe.SourceKind:
            fund = _id(rng)
            add(fe.FundOpened(fund_id=fund, name="f", source_kind=source, fiscal_year=year, amount_fen=10**9))
            for bk in fe.BeneficiaryKind:
                g = _id(rng)
                base = dict(grant_id=g, fund_id=fund, source_kind=source, fiscal_year=year, beneficiary_kind=bk)
                add(fe.GrantApproved(**base, beneficiary_id="b", beneficiary_name="b", purpose="p", amount_fen=10**6))
                add(
                    fe.FundsDisbursed(
                        **base,
                        disbursement_id=_id(rng),
                        beneficiary_id="b",
                        amount_fen=10**5,
                        grant_remaining_fen=9 * 10**5,
                        paid_on=date(year, 8, 1),
                    )
                )
                add(fe.GrantRevoked(**base, released_fen=9 * 10**5))
            add(fe.FundClosed(fund_id=fund, source_kind=source, fiscal_year=year, unspent_fen=10**8))
    for channel in ne.ChannelKind:
        for latency in (50, 200, 400, 800, 2000, 4000, 8000, 20000, 50000, 200000, 900000):
            add(
                ne.DeliverySucceeded(
                    delivery_id=_id(rng),
                    event_id=_id(rng),
                    event_type="t",
                    channel_id=_id(rng),
                    channel_kind=channel,
                    attempts=1,
                    latency_ms=latency,
                )
            )
        add(
            ne.DeliveryFailed(
                delivery_id=_id(rng),
                event_id=_id(rng),
                event_type="t",
                channel_id=_id(rng),
                channel_kind=channel,
                attempts=5,
                last_error="x",
            )
        )
        add(ne.ChannelPaused(channel_id=_id(rng), channel_kind=channel, reason="x"))
    return ev
