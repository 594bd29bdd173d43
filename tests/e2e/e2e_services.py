"""Every API as users reach it: a process under uvicorn on a free port, real Kafka and PostgreSQL.

Used by the authorisation matrix and the fuzzer (``tests/e2e/test_authz_matrix.py``,
``tests/e2e/test_fuzz_openapi.py``). Each call starts its own processes with their own databases
and consumer groups (so two modules of one session never share a group and split its partitions);
the ``stack`` fixture stops them at the end of the session.
"""
from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "notifier"))

from notifier_harness import start_at_end

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "local"))

import stack as local_stack

# Every API the runner starts (the one list, deploy/local/stack.py): API name (the package under
# services/, as the matrix says it) -> (the runner's service name, its database).
APIS = {spec.argv[1].split(".")[1]: (spec.name, spec.database) for spec in local_stack.SERVICES
        if spec.argv[-1] == "api"}


@dataclass
class Apis:
    urls: dict[str, str]                     # api name -> http://127.0.0.1:<port>
    dsns: dict[str, str]                     # database name -> DSN
    openapi: dict[str, dict] = field(default_factory=dict)  # api name -> the live /openapi.json

    async def load_openapi(self, http: httpx.AsyncClient) -> None:
        for name, url in self.urls.items():
            resp = await http.get(f"{url}/openapi.json")
            resp.raise_for_status()
            self.openapi[name] = resp.json()


async def start_apis(stack, make_database, *, notifier_worker: bool = True, log_level: str = "WARNING") -> Apis:
    """Start every API (and the notifier worker, which fills the notifier's branch read model).

    Training and funding consume with per-call group ids; the notifier worker starts at the end of
    its topics (it does not replay the shared topics' history to its channels)."""
    run = uuid.uuid4().hex[:8]
    dsns = {db: await make_database(db) for db in sorted({db for _, db in APIS.values()})}
    common = {"CHANGAI_LOG_LEVEL": log_level, "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2"}
    extra = {
        "training": {"CHANGAI_MEMBERS_GROUP": f"training-members-{run}"},
        "funding": {"CHANGAI_FUNDING_SUBSIDY_GROUP": f"funding.subsidy-{run}"},
        "notifier-api": {"CHANGAI_NOTIFIER_APP_ID": f"notifier-{run}", "CHANGAI_NOTIFIER_WEBHOOKS": "{}"},
        "membership": {"CHANGAI_COMMANDS_GROUP_ID": f"membership-commands-{run}"},
        "intake": {"CHANGAI_INTAKE_OUTCOMES_GROUP_ID": f"intake-outcomes-{run}",
                   "CHANGAI_INTAKE_KAFKA_GROUP_ID": f"intake-hr-{run}"},
    }
    envs, starts = {}, []
    for api, (service, db) in APIS.items():
        env = stack.service_env(service, database_url=dsns[db], **common, **extra.get(service, {}))
        envs[api] = env
        starts.append(stack.start_service(service, ["-m", f"services.{api}", "api"], env, timeout=120))
    if notifier_worker:
        app_id = f"notifier-{run}"
        await start_at_end(stack.bootstrap, f"changai-{app_id}")
        w_env = stack.service_env("notifier-worker", database_url=dsns["notifier"], **common,
                                  CHANGAI_NOTIFIER_APP_ID=app_id, CHANGAI_NOTIFIER_WEBHOOKS="{}")
        starts.append(stack.start_service("notifier-worker", ["-m", "services.notifier", "worker"], w_env,
                                          health_path="/readyz", timeout=120))
    await asyncio.gather(*starts)
    return Apis({api: f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}" for api, env in envs.items()}, dsns)


async def until(check, timeout: float = 60.0, interval: float = 0.2):
    """Wait (bounded) until ``await check()`` is truthy; returns it."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result
