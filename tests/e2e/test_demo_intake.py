"""The article replay's intake step with the projection behind it: the figures read back from Prometheus
include the upstream events.

Membership, training and the intake run as processes, and the projection worker; Prometheus scrapes the
intake and the projection. The demo's ``token``, ``branches`` and ``intake`` steps run twice: the first
time the step's own checks hold only if the intake's counters grew by what the HR system and the training
provider sent, and the projection's members in the county by the hires applied less the leavers and its
attendance by the reports applied; the second time every event is a duplicate and every figure the step
read (answers, applied counters, the projection's members and attendance) is the same. (The replay test,
test_demo_replay.py, runs the step without the projection.)
"""

from __future__ import annotations

import asyncio
import uuid

import demo as article  # deploy/local is on sys.path (tests/conftest.py)
import pytest
from demo_intake import step_intake
from demo_replay import Scale

pytestmark = pytest.mark.e2e

# 60 hires: more than the 30 trainees and the leavers (hires 7 and 41) the step takes from them.
SCALE = Scale("test", intake_hires=60)
STEPS = [("token", article.step_token), ("branches", article.step_branches), ("intake", step_intake)]


async def test_the_intake_steps_events_reach_the_projections_figures(stack, make_database):
    run = uuid.uuid4().hex[:8]
    common = {"CHANGAI_LOG_LEVEL": "WARNING", "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2"}
    envs = {
        "membership": stack.service_env(
            "membership",
            database_url=await make_database("membership"),
            CHANGAI_COMMANDS_GROUP_ID=f"membership-commands-{run}",
            **common,
        ),
        "training": stack.service_env(
            "training",
            database_url=await make_database("training"),
            CHANGAI_MEMBERS_GROUP=f"training-members-{run}",
            CHANGAI_COMMANDS_GROUP_ID=f"training-commands-{run}",
            **common,
        ),
        "intake": stack.service_env(
            "intake",
            database_url=await make_database("intake"),
            CHANGAI_INTAKE_OUTCOMES_GROUP_ID=f"intake-outcomes-{run}",
            CHANGAI_INTAKE_CONSUME_KAFKA="false",
            **common,
        ),
    }
    app_id = f"demo-projection-{run}"
    p_env = stack.service_env("projection", CHANGAI_PROJECTION_APP_ID=app_id, CHANGAI_LOG_LEVEL="WARNING")
    await asyncio.gather(
        *(stack.start_service(name, ["-m", f"services.{name}", "api"], env, timeout=120) for name, env in envs.items()),
        stack.start_service("projection", ["-m", "services.projection", "worker"], p_env, timeout=120),
    )
    jobs = {"intake": f"intake-demo-{run}", "projection": f"projection-demo-{run}"}
    stack.prometheus.set_targets(
        {
            jobs["intake"]: [f"127.0.0.1:{envs['intake']['CHANGAI_HTTP_PORT']}"],
            jobs["projection"]: [f"127.0.0.1:{p_env['CHANGAI_HTTP_PORT']}"],
        }
    )
    urls = {name: f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}" for name, env in envs.items()}
    config = article.DemoConfig(
        membership_url=urls["membership"],
        training_url=urls["training"],
        intake_url=urls["intake"],
        intake_job=jobs["intake"],
        prometheus_url=stack.prometheus.url,
        projection_group=app_id,
        projection_job=jobs["projection"],
        running={"membership", "training", "intake", "projection"},
        scale=SCALE,
    )
    try:
        first = await article.replay(config, STEPS)
        second = await article.replay(config, STEPS)
    finally:
        stack.prometheus.set_targets({job: [] for job in jobs.values()})
    sent = SCALE.intake_hires + 1 + 2 + 30  # hires and the stray one, 2 leavers, 30 attendance reports
    assert first.failures == 0  # the step's checks: the answers, the counters' and the projection's growth
    assert first.events == {"accepted": sent}, first.events
    intake = {k: v for k, v in first.figures.items() if k.startswith("intake")}
    # the projection's two figures were read (the step did not skip them), beside the answers and counters
    assert "intake changai_union_members region=640104" in intake, intake
    assert "intake attended (enrolment outcomes)" in intake, intake
    assert second.failures == 0
    assert second.events == {"duplicate": sent}, second.events
    assert {k: v for k, v in second.figures.items() if k.startswith("intake")} == intake
