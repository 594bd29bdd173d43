"""Article-replay step of the event intake (事件接入), appended to ``demo.STEPS`` after ``figures``.

* ``intake``: two upstream systems emit events instead of calling the APIs. The federation registers them
  through the intake's admin API (``intake:admin``): the HR system of 宁夏枸杞产业集团 (its region the
  first demo branch's county, types ``employee.hired`` / ``employee.left``) and the learning platform of a
  city training centre (``attendance.recorded``). The HR system emits its 2021 hires as one CloudEvents
  batch (``application/cloudevents-batch+json``) naming the employer by credit code, plus one hire for a
  branch outside its county (refused by membership, as an API caller would be) and, in a second batch,
  two employees who left. Their answers (polled, as a ``reply: poll`` source does) name the members; a
  pre-job session for some of the new members is scheduled and enrolled through training's API, and the
  provider reports each trainee's attendance in binary mode (``ce-*`` headers). Then the figures as
  Prometheus has them: the intake's received / duplicates / applied / refused and lag per source and type,
  and the membership and training figures the events moved (when the projection runs).

A second run re-emits the same events (the same ids, uuid5 of what they are): each is answered
``duplicate`` and nothing changes; the registrations and the training writes replay their first answers.
The checks are on what this run did: the intake's counters grew by what was sent (counters restart at 0
with the service, so the step reads them before and after), the projection's by what was applied.

The events carry no ``time``: they replay 2021, and a 2021 ``time`` would make the lag the intake measures
(event time → outcome) five years, setting off its lag alert; without one the intake measures from receipt.
ID numbers are sent in clear over the binding, as the intake's contract has them (docs/intake.md: sealed by
the intake on arrival, never stored or forwarded in clear); the upstream client is the source's own, with
its own token, not the demo's operator client.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from datetime import date, timedelta

from demo_replay import key, seeded

INTAKE_URL = os.environ.get("CHANGAI_DEMO_INTAKE_URL", "http://127.0.0.1:8007")
HIRED, LEFT = "enterprise.hr.employee.hired.v1", "enterprise.hr.employee.left.v1"
ATTENDED = "training.provider.attendance.recorded.v1"
HR_SOURCE = "https://ehr.nxgoji.example/events"  # the HR system's CloudEvents source (never changes)
HR_CLIENT = "nxgoji-ehr"
PROVIDER_SOURCE = "https://learning.ycjineng.example/attendance"
PROVIDER_CLIENT = "ycjineng-lms"
PROVIDER_REGION = "640100"  # a city training centre: it may report for sessions anywhere in 银川市
BATCH = 500  # events a request (the intake's limit)
TRAINEES = 30  # new members in the pre-job session whose attendance the provider reports
LEAVERS = (7, 41)  # hires who left by the end of August
# Birthplaces of the hires (the first six digits of their ID numbers): workers from the neighbouring provinces,
# so their numbers never meet the Ningxia-born members the other steps draw.
BIRTHPLACES = ("620102", "620502", "620802", "622901", "621102", "610102", "610502", "150102")
SURNAMES = "马杨王李张刘丁田白海金何赵"
GIVEN = ("建军", "秀兰", "小红", "志刚", "桂英", "海龙", "雪梅", "永平", "晓燕", "文军", "丽萍", "德才")
OCCUPATIONS = ("枸杞制干工", "农产品食品检验员", "包装工", "叉车司机", "设备维修工")
PROGRAMME = {"name": "新员工岗前培训（枸杞加工）", "occupation": "农产品食品检验员", "target_level": 5,
             "provider_kind": "technical_school", "provider_name": "银川市职业技能公共实训中心",
             "subsidy_category": "pre_job"}
SESSION_DAY = "2021-09-06"


def _skip(demo, reason: str) -> Exception:
    return sys.modules[type(demo).__module__].Skip(reason)


def _url(demo) -> str:
    return getattr(demo.config, "intake_url", None) or INTAKE_URL


def _token(subject: str, scopes: list[str], region: str) -> dict[str, str]:
    from shared.auth import mint_token

    return {"Authorization": "Bearer " + mint_token(subject, scopes, region)}


def _id_number(rng) -> str:
    from shared.identifiers import id_check_char

    born = date(1975, 1, 1) + timedelta(days=rng.randrange(365 * 28))  # 18 to 46 when hired in 2021
    first17 = f"{rng.choice(BIRTHPLACES)}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return first17 + id_check_char(first17)


def hires(branch: dict, count: int) -> list[dict]:
    """``count`` hires of the branch's enterprise, March to August 2021, as structured CloudEvents (the same
    ids and data on every run: drawn from a seeded generator, in order)."""
    rng = seeded("intake-hires", branch["credit_code"])
    seen: set[str] = set()
    events = []
    while len(events) < count:
        number = _id_number(rng)
        if number in seen:
            continue
        seen.add(number)
        i = len(events)
        ref = f"NXGQ-2021-{i + 1:04d}"
        data = {"employee_ref": ref, "name": rng.choice(SURNAMES) + rng.choice(GIVEN), "id_number": number,
                "phone": f"1{rng.choice('3578')}{rng.randrange(10**9):09d}",
                "employer_credit_code": branch["credit_code"],
                "hired_on": (date(2021, 3, 8) + timedelta(days=175 * i // count)).isoformat(),
                "employment_form": "truck_driver" if i % 25 == 3 else "standard",
                "occupation": OCCUPATIONS[i % len(OCCUPATIONS)]}
        events.append(_event(key("intake-hire", branch["id"], i), HR_SOURCE, HIRED, data, subject=ref))
    return events


def _event(event_id: str, source: str, event_type: str, data: dict, subject: str | None = None) -> dict:
    event = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type,
             "datacontenttype": "application/json", "data": data}
    if subject:
        event["subject"] = subject
    return event


async def _register(demo, body: dict) -> dict | None:
    """The source, registered now or found (a re-run replays the registration; a key the intake no longer
    holds answers 409 naming the registered source)."""
    admin = _token("article-replay", ["intake:admin"], "640000")
    response = await demo.client.post(f"{_url(demo)}/v1/sources", json=body,
                                      headers={**admin, "Idempotency-Key": key("intake-source", body["client_id"])})
    if response.status_code == 201:
        source = response.json()
        again = response.headers.get("idempotent-replayed") == "true"
        how = "found (an earlier run registered it)" if again else "registered"
    elif response.status_code == 409 and response.json().get("source_id"):
        found = await demo.client.get(f"{_url(demo)}/v1/sources/{response.json()['source_id']}", headers=admin)
        source, how = found.json(), "found (already registered)"
    else:
        demo.failures += 1
        demo.row("intake", f"register {body['client_id']}", f"{response.status_code} {response.text[:90]}")
        return None
    if (source["source"], source["region_code"], sorted(source["event_types"])) != (
            body["source"], body["region_code"], sorted(body["event_types"])):
        demo.failures += 1
        how += ", but registered differently"
    short = ", ".join(t.split(".")[-2] for t in source["event_types"])
    demo.row("intake", f"source {source['name']}"[:46], f"{how}: {source['region_code']}, {short}")
    return source


async def _emit_batch(demo, http, auth: dict, events: list[dict], what: str, accepted: set[str]) -> Counter:
    """The events in requests of up to 500 (batch mode); each event's outcome counted, the ids accepted now
    (not duplicates) added to ``accepted``."""
    import orjson

    outcomes: Counter = Counter()
    problems: Counter = Counter()
    started = time.monotonic()
    for i in range(0, len(events), BATCH):
        response = await http.post(f"{_url(demo)}/v1/events", content=orjson.dumps(events[i:i + BATCH]),
                                   headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
        if response.status_code != 207:
            demo.failures += 1
            demo.row("intake", f"batch of {what}", f"{response.status_code} {response.text[:90]}")
            raise _skip(demo, f"the intake answered {response.status_code} to a batch")
        answer = response.json()
        for result in answer["results"]:
            outcomes[result["outcome"]] += 1
            demo.events[result["outcome"]] += 1
            if result["outcome"] == "accepted":
                accepted.add(result["id"])
            if result.get("problem"):
                problems[result["problem"]["type"].rsplit("/", 1)[-1]] += 1
        _count_write(demo, answer["accepted"] > 0)
    demo.row("intake", f"{len(events)} {what} (batch mode)",
             f"207: {outcomes['accepted']} accepted, {outcomes['duplicate']} duplicate, {outcomes['rejected']} refused"
             f"{' ' + str(dict(problems)) if problems else ''} in {time.monotonic() - started:.2f} s")
    return outcomes


def _count_write(demo, fresh: bool) -> None:
    """An upstream request in the demo's write count: done when it stored an event, replayed when every event in
    it was a duplicate (the intake dedupes on (source, id), not on an Idempotency-Key)."""
    demo.writes["fresh" if fresh else "replayed"] += 1
    if fresh:
        demo.fresh.append("POST /v1/events")


async def _emit_binary(demo, http, auth: dict, events: list[dict], accepted: set[str]) -> Counter:
    """One request an event, the data as the body and the attributes as ``ce-*`` headers (binary mode)."""
    import orjson

    gate = asyncio.Semaphore(8)
    outcomes: Counter = Counter()

    async def one(event: dict) -> None:
        headers = {f"ce-{k}": v for k, v in event.items() if k not in ("data", "datacontenttype")}
        async with gate:
            response = await http.post(f"{_url(demo)}/v1/events", content=orjson.dumps(event["data"]),
                                       headers={**auth, **headers, "Content-Type": "application/json"})
        outcome = response.json().get("outcome") if response.status_code in (200, 202) else "rejected"
        outcomes[outcome] += 1
        demo.events[outcome] += 1
        if outcome == "accepted":
            accepted.add(event["id"])
        _count_write(demo, outcome == "accepted")

    started = time.monotonic()
    await asyncio.gather(*(one(e) for e in events))
    demo.row("intake", f"{len(events)} attendance.recorded (binary mode)",
             f"{outcomes['accepted']} accepted (202), {outcomes['duplicate']} duplicate (200), "
             f"{outcomes['rejected']} refused in {time.monotonic() - started:.2f} s")
    return outcomes


async def _answers(demo, http, auth: dict, events: list[dict], timeout: float = 60) -> dict[str, dict]:
    """Each event's answer (``GET /v1/events/{id}?source=``, as a poll source asks), once decided (bounded)."""
    pending = {e["id"]: e for e in events}
    answers: dict[str, dict] = {}
    deadline = time.monotonic() + timeout

    async def one(event: dict) -> None:
        response = await http.get(f"{_url(demo)}/v1/events/{event['id']}", params={"source": event["source"]},
                                  headers=auth)
        if response.status_code == 200 and response.json()["status"] != "accepted":
            answers[event["id"]] = response.json()
            pending.pop(event["id"])

    gate = asyncio.Semaphore(16)

    async def gated(event: dict) -> None:
        async with gate:
            await one(event)

    while pending:
        # While the owning service is still applying, ask for the last event sent only (not for all of them
        # every round: that would take CPU from the service); once it is decided, ask for the others at once.
        last = list(pending.values())[-1]
        await one(last)
        if last["id"] not in pending:
            await asyncio.gather(*(gated(e) for e in list(pending.values())))
        if pending:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    return answers


def _tally(answers: dict[str, dict], events: list[dict]) -> tuple[Counter, Counter]:
    """(status counts, refusal types) of the answers, an undecided event as ``undecided``."""
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    for event in events:
        answer = answers.get(event["id"])
        statuses[answer["status"] if answer else "undecided"] += 1
        if answer and answer["problem"]:
            reasons[f"{answer['problem']['status']} {answer['problem']['type'].rsplit('/', 1)[-1]}"] += 1
    return statuses, reasons


def _show_answers(demo, what: str, statuses: Counter, reasons: Counter, expected: Counter, seconds: float) -> None:
    ok = statuses == expected
    if not ok:
        demo.failures += 1
    refused = f" ({', '.join(f'{n} {r}' for r, n in reasons.items())})" if reasons else ""
    demo.row("intake", f"answers: {what}",
             f"{statuses['applied']} applied, {statuses['rejected']} rejected{refused}"
             + (f", {statuses['undecided']} undecided" if statuses["undecided"] else "")
             + ("" if ok else f"  EXPECTED {dict(expected)}") + f" ({seconds:.1f} s)")
    demo.figures[f"intake answers {what}"] = f"{statuses['applied']} applied, {statuses['rejected']} rejected{refused}"


# -- Prometheus -------------------------------------------------------------------------------
FAMILIES = ("changai_intake_events_received_total", "changai_intake_duplicates_total",
            "changai_intake_applied_total", "changai_intake_rejected_total")


async def _query(demo, promql: str) -> list[dict]:
    response = await demo.client.get(f"{demo.config.prometheus_url}/api/v1/query", params={"query": promql})
    return response.json()["data"]["result"]


async def _intake_counters(demo) -> dict[tuple[str, str, str], float]:
    """(family, source, type) -> value for the demo's two sources, as Prometheus last scraped them."""
    job = getattr(demo.config, "intake_job", "intake")
    out: dict[tuple[str, str, str], float] = {}
    for family in FAMILIES:
        for series in await _query(demo, f'sum by (source, type) ({family}{{job="{job}"}})'):
            labels = series["metric"]
            if labels.get("source") in (HR_SOURCE, PROVIDER_SOURCE):
                out[(family, labels["source"], labels["type"])] = float(series["value"][1])
    return out


PROJECTION = (  # (row, PromQL given the selector): the figures the intake's events move
    ("changai_union_members", "sum(changai_union_members{{{sel}}})"),
    ("attended (enrolment outcomes)", "sum(changai_training_enrolment_outcomes_total{{{sel}}})"),
)


def _selector(demo, **match: str) -> str:
    job = getattr(demo.config, "projection_job", None)  # tests: their own projection's series only
    return ",".join([*([f'job="{job}"'] if job else []), *(f'{k}="{v}"' for k, v in match.items())])


async def _projection(demo, county: str) -> dict[str, float]:
    out = {}
    for (name, promql), match in zip(PROJECTION, ({"region": county}, {"outcome": "attended"}), strict=True):
        result = await _query(demo, promql.format(sel=_selector(demo, **match)))
        out[name] = float(result[0]["value"][1]) if result else 0.0
    return out


async def _caught_up(demo) -> bool:
    """The projection's lag is 0 (bounded): the figures before this step's events are all in."""
    group = getattr(demo.config, "projection_group", "changai-projection")

    async def no_lag() -> bool:
        lag = await _query(demo, f'sum(changai_consumer_lag{{consumer="{group}"}})')
        return bool(lag) and float(lag[0]["value"][1]) == 0

    return await _until(no_lag, 60, interval=1)


async def _until(check, timeout: float, interval: float = 0.5):
    """``await check()`` until it is truthy or ``timeout`` passed; its last value."""
    deadline = time.monotonic() + timeout
    while not (result := await check()) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
    return result


def _by_kind(events: list[dict], accepted: set[str], answers: dict[str, dict]) -> dict[str, Counter]:
    """What this run did per (source, type): ``sent``, and of the events it stored (not duplicates) those
    ``applied`` and those ``rejected`` by the owning service."""
    out: dict[str, Counter] = {"sent": Counter(), "applied": Counter(), "rejected": Counter()}
    for e in events:
        kind = (e["source"], e["type"])
        out["sent"][kind] += 1
        if e["id"] in accepted:
            status = answers.get(e["id"], {}).get("status")
            if status in ("applied", "rejected"):
                out[status][kind] += 1
    return out


async def _show_counters(demo, before: dict, events: list[dict], accepted: set[str], answers: dict,
                         refused: Counter, duplicates: Counter) -> None:
    """The intake's counters as Prometheus has them, once they show this run (bounded): received grew by what
    was sent, duplicates by the redeliveries, applied and rejected by the outcomes of what was accepted."""
    did = _by_kind(events, accepted, answers)
    expected = {}
    for kind, n in did["sent"].items():
        expected[("changai_intake_events_received_total", *kind)] = n
        expected[("changai_intake_duplicates_total", *kind)] = duplicates[kind]
        expected[("changai_intake_applied_total", *kind)] = did["applied"][kind]
        expected[("changai_intake_rejected_total", *kind)] = did["rejected"][kind] + refused[kind]
    seen: dict = {}

    async def shown() -> bool:
        seen.clear()
        seen.update(await _intake_counters(demo))
        return all(seen.get(k, 0.0) - before.get(k, 0.0) == n for k, n in expected.items())

    began = time.monotonic()
    ok = await _until(shown, 30)
    if not ok:
        demo.failures += 1
    job = getattr(demo.config, "intake_job", "intake")
    for source, event_type in did["sent"]:
        value = {f: seen.get((f, source, event_type), 0.0) for f in FAMILIES}
        grew = {f: value[f] - before.get((f, source, event_type), 0.0) for f in FAMILIES}
        lag = await _query(demo, f'histogram_quantile(0.95, sum by (le) (changai_intake_lag_seconds_bucket'
                                 f'{{job="{job}", source="{source}", type="{event_type}"}}))')
        p95 = f", lag p95 {float(lag[0]['value'][1]):.1f} s" if lag and lag[0]["value"][1] != "NaN" else ""
        r, d, a, x = FAMILIES
        demo.row("intake", f"Prometheus: {event_type.split('.', 2)[-1]}",
                 f"received {value[r]:.0f} (+{grew[r]:.0f}), duplicates {value[d]:.0f} (+{grew[d]:.0f}), "
                 f"applied {value[a]:.0f} (+{grew[a]:.0f}), rejected {value[x]:.0f} (+{grew[x]:.0f}){p95}")
        demo.figures[f"intake applied {event_type}"] = f"{value[a]:.0f}"  # per intake process: a restart resets it
    if not ok:
        demo.row("intake", "Prometheus: the intake's counters",
                 f"did not show this run after {time.monotonic() - began:.0f} s (wanted the growth "
                 f"{ {k[0].split('_')[2]: v for k, v in expected.items() if v} })"[:120])


async def _show_projection(demo, county: str, before: dict[str, float], events: list[dict], accepted: set[str],
                           answers: dict) -> None:
    """The figures the events moved, as the projection exports them: members in the county grew by the hires
    applied less the leavers, attendance by the reports applied (this run's; a re-run moves nothing)."""
    did = _by_kind(events, accepted, answers)["applied"]
    want = {"changai_union_members": did[(HR_SOURCE, HIRED)] - did[(HR_SOURCE, LEFT)],
            "attended (enrolment outcomes)": did[(PROVIDER_SOURCE, ATTENDED)]}
    now: dict[str, float] = {}

    async def moved() -> bool:
        now.update(await _projection(demo, county))
        return all(now[k] - before[k] == n for k, n in want.items())

    ok = await _until(moved, 30)
    if not ok:
        demo.failures += 1
    for (name, _), label in zip(PROJECTION, (f"会员 members {county}", "培训签到 attended (enrolments)"), strict=True):
        where = f" region={county}" if name == "changai_union_members" else ""
        demo.row("intake", f"Prometheus: {label}",
                 f"{now[name]:,.0f} (+{now[name] - before[name]:,.0f} this run"
                 + ("" if ok else f", EXPECTED +{want[name]}") + ")")
        demo.figures[f"intake {name}{where}"] = f"{now[name]:,.0f}"


# -- the step ---------------------------------------------------------------------------------
async def step_intake(demo) -> None:
    runs = getattr(demo.config, "runs", None)
    for service in ("intake", "membership", "training"):
        if runs is not None and not runs(service):
            raise _skip(demo, f"{service} is not running")
    if len(demo.branches) < 2:
        raise _skip(demo, "no demo branches")
    import httpx
    from demo_training import _url as training_url

    base = _url(demo)
    try:
        await demo.client.get(f"{base}/livez")
    except Exception as exc:  # noqa: BLE001
        raise _skip(demo, f"intake not reachable at {base} ({exc.__class__.__name__})") from None
    started = time.monotonic()
    branch, elsewhere = demo.branches[0], demo.branches[1]
    county = branch["region_code"]
    hr = await _register(demo, {"source": HR_SOURCE, "name": "宁夏枸杞产业集团 人力资源系统", "region_code": county,
                                "event_types": [HIRED, LEFT], "client_id": HR_CLIENT, "reply": "poll"})
    provider = await _register(demo, {"source": PROVIDER_SOURCE, "name": "银川市职业技能公共实训中心 学习平台",
                                      "region_code": PROVIDER_REGION, "event_types": [ATTENDED],
                                      "client_id": PROVIDER_CLIENT, "reply": "poll"})
    if hr is None or provider is None:
        raise _skip(demo, "the sources are not registered")
    try:
        counters_before: dict | None = await _intake_counters(demo)
    except Exception:  # noqa: BLE001  (no Prometheus: the answers are still checked)
        counters_before = None
    # The projection's figures before (after the figures step its lag is 0 already).
    projection = counters_before is not None and (runs is None or runs("projection"))
    if projection and not await _caught_up(demo):
        projection = False
        demo.row("intake", "the projection's figures", "not checked: its lag is not 0 after 60 s")
    figures_before = await _projection(demo, county) if projection else {}

    hr_auth = _token(HR_CLIENT, ["intake:emit"], county)
    provider_auth = _token(PROVIDER_CLIENT, ["intake:emit"], PROVIDER_REGION)
    accepted: set[str] = set()  # the event ids this run's requests stored (not duplicates)
    refused: Counter = Counter()  # (source, type) -> refused by the intake itself (none is expected)
    duplicates: Counter = Counter()  # (source, type) -> answered duplicate
    async with httpx.AsyncClient(timeout=60) as http:  # the upstream systems' own client, not the operator's
        # The HR system: its 2021 hires, and one for a branch in another county (not its to report).
        hired = hires(branch, demo.config.scale.intake_hires)
        stray = dict(hired[0]["data"], employee_ref="NXGQ-2021-X001", employer_credit_code=elsewhere["credit_code"],
                     branch_id=elsewhere["id"], id_number=_id_number(seeded("intake-stray")))
        hired.append(_event(key("intake-hire", branch["id"], "elsewhere"), HR_SOURCE, HIRED, stray))
        outcomes = await _emit_batch(demo, http, hr_auth, hired, f"employee.hired (1 for {elsewhere['region_code']})",
                                     accepted)
        refused[(HR_SOURCE, HIRED)], duplicates[(HR_SOURCE, HIRED)] = outcomes["rejected"], outcomes["duplicate"]
        leavers = [hired[i] for i in LEAVERS if i < len(hired) - 1]
        left = [_event(key("intake-left", e["id"]), HR_SOURCE, LEFT, {
            "id_number": e["data"]["id_number"], "left_on": "2021-08-31", "reason": "劳动合同期满"}) for e in leavers]
        outcomes = await _emit_batch(demo, http, hr_auth, left, "employee.left", accepted)
        refused[(HR_SOURCE, LEFT)], duplicates[(HR_SOURCE, LEFT)] = outcomes["rejected"], outcomes["duplicate"]

        began = time.monotonic()
        answers = await _answers(demo, http, hr_auth, hired + left)
        statuses, reasons = _tally(answers, hired)
        _show_answers(demo, "employee.hired", statuses, reasons,
                      Counter(applied=len(hired) - 1, rejected=1), time.monotonic() - began)
        statuses, reasons = _tally(answers, left)
        _show_answers(demo, "employee.left", statuses, reasons, Counter(applied=len(left)), 0)

        # Training: a pre-job session of the enterprise's branch for new members (training's API), whose
        # attendance the provider's learning platform reports as events.
        gone = {e["data"]["id_number"] for e in leavers}
        new = [(e, answers[e["id"]]["member_id"]) for e in hired[:-1]
               if e["id"] in answers and answers[e["id"]]["member_id"] and e["data"]["id_number"] not in gone]
        trainees = new[:TRAINEES]
        if not trainees:
            raise _skip(demo, "no hire became a member")
        t_base = training_url(demo)
        t_auth = _token("article-replay", ["training:write", "training:read"], "640000")
        waited = time.monotonic()
        known: set[str] = set()

        async def all_known() -> bool:  # training learns members from membership.events
            for _, member_id in trainees:
                if member_id not in known and (await demo.client.get(f"{t_base}/v1/members/{member_id}",
                                                                     headers=t_auth)).status_code == 200:
                    known.add(member_id)
            return len(known) == len(trainees)

        if not await _until(all_known, 60):
            demo.failures += 1
            demo.row("intake", "training's member read model", f"{len(trainees) - len(known)} not known after 60 s")
            raise _skip(demo, "training does not know the new members")
        programme = await _training(demo, f"{t_base}/v1/programmes", t_auth, PROGRAMME,
                                    key("programme", PROGRAMME["name"]))
        session = await _training(demo, f"{t_base}/v1/sessions", t_auth, {
            "programme_id": programme["id"], "organiser_kind": "branch", "organiser_id": branch["id"],
            "starts_on": SESSION_DAY, "ends_on": "2021-09-10", "capacity": TRAINEES},
            key("intake-session", branch["id"]))
        enrolled = await _training(demo, f"{t_base}/v1/sessions/{session['id']}/enrolments/bulk", t_auth,
                                   {"member_ids": [m for _, m in trainees]}, key("enrol", session["id"]))
        demo.row("intake", f"{PROGRAMME['name'][:13]} 第{session['number']}期 ({county})",
                 f"{enrolled['enrolled']} new members enrolled (training API; its read model "
                 f"knew them in {time.monotonic() - waited:.1f} s)")
        attendance = [_event(key("intake-attendance", session["id"], i), PROVIDER_SOURCE, ATTENDED, {
            "session_id": session["id"], "learner_ref": f"YCSX-{i + 1:05d}", "id_number": e["data"]["id_number"],
            "attended_on": SESSION_DAY, "minutes": 480}) for i, (e, _) in enumerate(trainees)]
        outcomes = await _emit_binary(demo, http, provider_auth, attendance, accepted)
        refused[(PROVIDER_SOURCE, ATTENDED)] = outcomes["rejected"]
        duplicates[(PROVIDER_SOURCE, ATTENDED)] = outcomes["duplicate"]
        began = time.monotonic()
        attended = await _answers(demo, http, provider_auth, attendance)
        statuses, reasons = _tally(attended, attendance)
        _show_answers(demo, "attendance.recorded", statuses, reasons, Counter(applied=len(attendance)),
                      time.monotonic() - began)
    answers.update(attended)
    everything = hired + left + attendance
    if sum(refused.values()):  # the intake refused none of these at receipt: the stray is membership's to refuse
        demo.failures += 1
    if counters_before is not None:
        await _show_counters(demo, counters_before, everything, accepted, answers, refused, duplicates)
    if projection:
        await _show_projection(demo, county, figures_before, everything, accepted, answers)
    demo.row("intake", "done", f"in {time.monotonic() - started:.1f} s")


async def _training(demo, url: str, auth: dict, body: dict, idem: str) -> dict:
    """A keyed write to training's API (through the demo's client: counted, replayed on a re-run)."""
    response = await demo.client.post(url, json=body, headers={**auth, "Idempotency-Key": idem})
    if response.status_code not in (200, 201):
        demo.failures += 1
        demo.row("intake", f"POST {url.split('/v1', 1)[-1]}"[:46], f"{response.status_code} {response.text[:90]}")
        raise _skip(demo, f"training answered {response.status_code}")
    return response.json()


STEPS = [("intake", step_intake)]
