"""Session fixtures: the real Kafka, PostgreSQL and Prometheus, started by the tests themselves.

* ``stack``: Kafka + PostgreSQL (durability off, for speed) + Prometheus (1 s scrape) on free
  loopback ports, under ``.run/test-<pid>/``, started together the first time a test asks
  and stopped at the end of the session. Attributes: ``.kafka`` (the broker handle:
  ``.bootstrap``, ``.restart()``), ``.bootstrap``, ``.pg``, ``.prometheus``; methods
  ``free_port()``, ``service_env(name, ...)``, ``await start_service(...)``.
* ``make_database``: ``dsn = await make_database("membership")`` gives a new, uniquely named
  database with that service's migrations applied (starts only PostgreSQL).

Nothing starts unless a test asks, so ``pytest tests/unit`` starts no server.
With ``CHANGAI_TEST_REUSE=1`` and the runner's stack up (``make up``), the tests use it
instead of starting their own (databases they create there are dropped at the end).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import stack as local_stack  # noqa: E402  (standard library only at import)


class Servers:
    """Each server is started at most once per session, when first needed."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.state_dir = local_stack.STATE_DIR / f"test-{os.getpid()}"
        self.runner = self._runner_to_reuse()
        self.kafka: local_stack.Kafka | None = None
        self.pg: local_stack.Postgres | None = None
        self.prometheus: local_stack.Prometheus | None = None
        self.services: list[local_stack.Service] = []
        self.databases_created: list[str] = []
        self.summary: list[str] = []
        self._locks = {name: asyncio.Lock() for name in ("kafka", "pg", "prometheus")}
        self._failed: dict[str, BaseException] = {}

    @staticmethod
    def _runner_to_reuse() -> local_stack.Runner | None:
        if os.environ.get("CHANGAI_TEST_REUSE") != "1":
            return None
        runner = local_stack.Runner()
        if all(c.proc and c.proc.alive() for c in (runner.kafka, runner.pg, runner.prometheus)):
            return runner
        return None

    def report(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():  # show it now, not only when a test fails
            if getattr(reporter._tw, "width_of_current_line", 0):  # after a row of dots
                reporter._tw.line()
            reporter.write_line(line)

    async def _once(self, name: str, start):
        async with self._locks[name]:
            if name in self._failed:
                raise self._failed[name]
            if getattr(self, name) is None:
                try:
                    setattr(self, name, await start())
                except BaseException as exc:
                    self._failed[name] = exc
                    raise
            return getattr(self, name)

    async def get_kafka(self) -> local_stack.Kafka:
        async def start():
            if self.runner:
                self.report(f"test servers: reusing the runner's Kafka at {self.runner.kafka.bootstrap}")
                await self.runner.kafka.ensure_topics()
                return self.runner.kafka
            kafka = await local_stack.start_kafka(self.state_dir, local_stack.free_port(), local_stack.free_port(),
                                                  sasl_port=local_stack.free_port())
            if kafka.assembly_seconds:
                self.summary.append(f"Kafka assembly from Maven Central {kafka.assembly_seconds:.1f} s")
                self.report(f"test servers: Kafka {local_stack.KAFKA_VERSION} assembled from Maven Central in "
                            f"{kafka.assembly_seconds:.1f} s (cached in {local_stack.CACHE_DIR})")
            self.summary.append(f"Kafka broker start {kafka.start_seconds:.1f} s")
            self.report(f"test servers: Kafka {kafka.bootstrap} up in {kafka.start_seconds:.1f} s "
                        f"(broker start; topics created)")
            return kafka
        return await self._once("kafka", start)

    async def get_pg(self) -> local_stack.Postgres:
        async def start():
            if self.runner:
                self.report(f"test servers: reusing the runner's PostgreSQL at {self.runner.pg.address}")
                return self.runner.pg
            for attempt in range(3):  # another suite on this machine may bind the chosen port first
                try:
                    pg = await local_stack.start_postgres(self.state_dir, local_stack.free_port(), fast=True)
                    break
                except local_stack.StackError as exc:
                    if "Address already in use" not in str(exc) or attempt == 2:
                        raise
            self.summary.append(f"PostgreSQL initdb+start {pg.start_seconds:.1f} s")
            self.report(f"test servers: PostgreSQL {pg.address} up in {pg.start_seconds:.1f} s (initdb + start)")
            return pg
        return await self._once("pg", start)

    async def get_prometheus(self) -> local_stack.Prometheus:
        async def start():
            if self.runner:
                self.report(f"test servers: reusing the runner's Prometheus at {self.runner.prometheus.url}")
                return self.runner.prometheus
            prom = await local_stack.start_prometheus(self.state_dir, local_stack.free_port(), scrape_interval="1s")
            self.summary.append(f"Prometheus start {prom.start_seconds:.1f} s")
            self.report(f"test servers: Prometheus {prom.url} up in {prom.start_seconds:.1f} s")
            return prom
        return await self._once("prometheus", start)

    async def stop(self, keep_state: bool) -> None:
        for svc in reversed(self.services):
            await svc.stop(grace=5)
        if self.runner:
            if self.pg and self.databases_created:
                import asyncpg

                conn = await asyncpg.connect(self.pg.dsn())
                try:
                    for name in self.databases_created:
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()
            return
        for component in (self.prometheus, self.pg, self.kafka):
            if component:
                await component.stop()
        if keep_state:
            self.summary.append(f"state and logs kept in {local_stack._rel(self.state_dir)} until the next session")
        else:
            local_stack.remove_state_dir(self.state_dir)


@dataclass
class TestStack:
    """What the ``stack`` fixture gives a test."""

    kafka: local_stack.Kafka
    pg: local_stack.Postgres
    prometheus: local_stack.Prometheus
    state_dir: Path
    reused: bool  # the runner's servers (CHANGAI_TEST_REUSE=1), not ones started for this session
    _servers: Servers = field(repr=False)

    __test__ = False  # not a test class, despite the name

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @staticmethod
    def free_port() -> int:
        return local_stack.free_port()

    def service_env(self, name: str, *, http_port: int | None = None, database_url: str | None = None,
                    receiver_url: str | None = None, **extra: str) -> dict[str, str]:
        """The runner's environment for service `name`, pointed at the test servers.

        `http_port` defaults to a free port (read it back from CHANGAI_HTTP_PORT); `extra`
        are more variables, by their full names (CHANGAI_...)."""
        return local_stack.service_env(
            name, bootstrap=self.kafka.bootstrap, http_port=http_port or local_stack.free_port(),
            data_dir=self.state_dir / "data" / f"{name}-{uuid.uuid4().hex[:8]}", database_url=database_url,
            receiver_url=receiver_url, **extra)

    async def start_service(self, name: str, args: list[str], env: dict[str, str],
                            health_path: str | None = "/livez", timeout: float = 60) -> local_stack.Service:
        """Run `python <args>` (the venv's python) as a process; stopped at the end of the session.

        Waits for http://127.0.0.1:$CHANGAI_HTTP_PORT<health_path> to answer 200 unless health_path is None."""
        log = self.state_dir / "logs" / f"{name}-{uuid.uuid4().hex[:6]}.log"
        health = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}{health_path}" if health_path else None
        svc = await local_stack.start_service(name, [local_stack.PYTHON, *args], env, log, health, timeout=timeout)
        self._servers.services.append(svc)
        return svc


def _remove_stale_test_dirs() -> None:
    """State dirs of test sessions that died without cleaning up."""
    for path in local_stack.STATE_DIR.glob("test-*"):
        pid = path.name.removeprefix("test-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            local_stack.remove_state_dir(path)


@pytest.fixture(scope="session")
async def _test_servers(request: pytest.FixtureRequest):
    _remove_stale_test_dirs()
    servers = request.config._changai_servers = Servers(request.config)  # read by pytest_terminal_summary
    yield servers
    await servers.stop(keep_state=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
async def stack(_test_servers: Servers) -> TestStack:
    kafka, pg, prometheus = await asyncio.gather(
        _test_servers.get_kafka(), _test_servers.get_pg(), _test_servers.get_prometheus())
    return TestStack(kafka, pg, prometheus, _test_servers.state_dir, _test_servers.runner is not None, _test_servers)


@pytest.fixture(scope="module", autouse=True)
async def _module_services(request: pytest.FixtureRequest):
    """Service processes a module started (``stack.start_service``) are stopped when the module ends.

    Left running to the end of the session, they kept consuming their topics and CPU beside every later
    module (e2e modules start all six APIs and a notifier worker each): later tests timed out on a loaded
    machine, and a consumer of another module's group took records meant for the module under test."""
    servers: Servers | None = getattr(request.config, "_changai_servers", None)
    before = len(servers.services) if servers else 0
    yield
    servers = getattr(request.config, "_changai_servers", None)
    if servers is not None:
        started = servers.services[before:]
        del servers.services[before:]
        for svc in reversed(started):
            await svc.stop(grace=5)


@pytest.fixture(scope="session")
async def make_database(_test_servers: Servers):
    """``dsn = await make_database("membership")``: a fresh database with the service's migrations."""
    pg = await _test_servers.get_pg()

    async def make(service: str) -> str:
        name = f"test_{service}_{uuid.uuid4().hex[:10]}"
        dsn = await pg.create_database(name, service)
        _test_servers.databases_created.append(name)
        return dsn

    return make


class ShutdownHangs(logging.Handler):
    """Collects the services' "shutdown step did not finish" reports (shared.http.stop_within), which
    would otherwise only be in the captured log of a passing test, for the summary."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(("shutdown step did not finish", "database pool did not close")):
            tasks = "\n    ".join(getattr(record, "waiting_tasks", []))
            self.seen.append(f"{record.getMessage()} [{getattr(record, 'step', 'pool')}]\n    {tasks}")


SHUTDOWN_HANGS = ShutdownHangs()


def pytest_configure(config: pytest.Config) -> None:
    for name in ("shared.http",):
        logging.getLogger(name).addHandler(SHUTDOWN_HANGS)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    servers = getattr(config, "_changai_servers", None)
    if servers and servers.summary:
        terminalreporter.write_line("test servers: " + ", ".join(servers.summary))
    for hang in SHUTDOWN_HANGS.seen:
        terminalreporter.write_line("shutdown hang: " + hang)
