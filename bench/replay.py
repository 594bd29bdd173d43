"""The article replay at the report's own scale (issue 18: ``make run``'s demo at ``CHANGAI_DEMO_SCALE=full``, every
figure read back from Prometheus, in under 120 s on this machine).

What ``make run`` does, on servers of the benchmark's own (so the developer's ``.run/`` state is never touched and
every run starts fresh): Kafka, PostgreSQL at full durability and Prometheus on free ports, a database per
service, every service of ``deploy/local/stack.py``'s list as its own process, the demo receiver, Prometheus
scraping them all; then ``deploy/local/demo.py``'s steps (``demo.replay``) with the scale given, timed from the
first step to the last, with their per-step times as the demo prints them. The time is capped
(``CHANGAI_BENCH_REPLAY_MAX_S``, default 600 s): a replay cut there is reported as failed at the cap.

    python -m bench replay                                     (full scale)
    CHANGAI_BENCH_REPLAY_SCALE=small python -m bench replay    (the default scale of make run)
    CHANGAI_BENCH_REPLAY_SCALE=tiny python -m bench replay     (a few records: checks the wiring)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from bench.common import aim, aims_table, load_avg, local_stack, servers

MAX_S = float(os.environ.get("CHANGAI_BENCH_REPLAY_MAX_S", "600"))
SCALE = os.environ.get("CHANGAI_BENCH_REPLAY_SCALE", "full")


def scale(name: str):
    from demo_replay import SCALES, Scale  # deploy/local is on sys.path (bench.common)

    if name == "tiny":  # as tests/e2e/test_demo_replay.py: every step runs, on a few records
        return Scale("tiny", orgs_2021=6, members_2021=20, stations=2)
    if name not in SCALES:
        raise SystemExit(f"CHANGAI_BENCH_REPLAY_SCALE={name!r}: say tiny or one of {', '.join(SCALES)}")
    return SCALES[name]


async def main() -> None:
    # Never the runner's servers: the replay writes ~450,000 members into what it runs on.
    os.environ["CHANGAI_BENCH_OWN"] = "1"
    chosen = scale(SCALE)
    async with servers(with_prometheus=True) as s:
        receiver_env = s.env("receiver", CHANGAI_NOTIFIER_WEBHOOK_SECRET=local_stack.LOCAL_WEBHOOK_SECRET)
        receiver = f"http://127.0.0.1:{receiver_env['CHANGAI_HTTP_PORT']}"
        started = time.monotonic()
        databases = {db: await s.database(db) for db in {spec.database for spec in local_stack.SERVICES} if db}
        envs = {
            spec.name: s.env(
                spec.name, receiver_url=receiver, database_url=databases[spec.database] if spec.database else None
            )
            for spec in local_stack.SERVICES
            if spec.module_file is not None
        }
        await s.start(
            "receiver", ["deploy/local/receiver.py", "--port", receiver_env["CHANGAI_HTTP_PORT"]], receiver_env
        )
        specs = {spec.name: spec for spec in local_stack.SERVICES}
        await asyncio.gather(*(s.start(name, list(specs[name].argv), env, timeout=180) for name, env in envs.items()))
        s.prometheus.set_targets({name: [f"127.0.0.1:{env['CHANGAI_HTTP_PORT']}"] for name, env in envs.items()})
        print(
            f"{len(envs)} services, the receiver and Prometheus up in {time.monotonic() - started:.1f} s "
            f"(load {load_avg()}); the replay at scale {chosen.name!r}, capped at {MAX_S:.0f} s",
            flush=True,
        )

        def url(name: str) -> str:
            return f"http://127.0.0.1:{envs[name]['CHANGAI_HTTP_PORT']}" if name in envs else "http://127.0.0.1:1"

        # The step modules read their service's address at import (CHANGAI_DEMO_<SERVICE>_URL) or from the config.
        for name in ("training", "funding", "notifier", "reform", "intake"):
            os.environ[f"CHANGAI_DEMO_{name.upper()}_URL"] = url("notifier-api" if name == "notifier" else name)
        import demo  # deploy/local/demo.py

        urls = {
            "training_url": url("training"),
            "funding_url": url("funding"),
            "notifier_url": url("notifier-api"),
            "reform_url": url("reform"),
            "intake_url": url("intake"),
        }
        known = {f.name for f in dataclasses.fields(demo.DemoConfig)}
        config = demo.DemoConfig(
            membership_url=url("membership"),
            receiver_url=receiver,
            prometheus_url=s.prometheus.url,
            running=set(envs),
            scale=chosen,
            **{k: v for k, v in urls.items() if k in known},
        )
        load0 = load_avg()
        t0 = time.monotonic()
        failures: int | None = None
        try:
            failures = (await asyncio.wait_for(demo.replay(config), MAX_S)).failures
        except TimeoutError:
            print(f"the replay did not finish in {MAX_S:.0f} s: cut there", flush=True)
        seconds = time.monotonic() - t0
    done = failures is not None
    print(
        aims_table(
            [
                aim(
                    f"article replay (make run's demo) at scale {chosen.name!r}, through the public APIs",
                    seconds,
                    None,
                    None,
                    None,
                    "< 120 s, 0 failed checks",
                    done and failures == 0 and seconds < 120,
                    f"{load0}–{load_avg()}",
                    " s",
                    figure=(f"{seconds:,.1f} s, {failures} failed checks" if done else f"> {MAX_S:,.0f} s (cut)"),
                    sized=chosen.name == "full",
                )
            ]
        )
    )
