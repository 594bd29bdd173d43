"""The native (no-Docker) local runtime: Kafka, PostgreSQL, Prometheus and the services.

Used two ways:

* CLI, from the repo root (the Makefile does this with the venv's python)::

      python deploy/local/stack.py up       # infrastructure only; reuses what already runs
      python deploy/local/stack.py status   # table of components, pids, addresses
      python deploy/local/stack.py run      # up + every service + demo receiver + demo; Ctrl-C stops
      python deploy/local/stack.py down     # stops everything the runner started

  State (data, configs, logs, pid files) lives in ``.run/`` at the repo root.

* Library, from the tests (``deploy/local`` on ``sys.path``, then ``import stack``)::

      kafka = await start_kafka(state_dir, port, controller_port)   # .bootstrap .restart() .stop()
      pg = await start_postgres(state_dir, port, fast=True)           # .dsn(db) .create_database() .stop()
      prom = await start_prometheus(state_dir, port, scrape_interval="1s")  # .set_targets() .query()
      svc = await start_service(name, argv, env, log_path, health_url)      # .stop() .kill()

Every process runs in its own process group and writes one log file. Importing this
module needs only the standard library; aiokafka, asyncpg and httpx are imported
where they are used.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import fcntl
import glob
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # so `shared.*` imports work when run as a script
    sys.path.insert(0, str(ROOT))

STATE_DIR = ROOT / ".run"
CACHE_DIR = Path(os.environ.get("CHANGAI_CACHE") or Path.home() / ".cache" / "changai")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

# deploy/versions.yaml names it (the Kafka Strimzi runs too); tests/deploy/test_deploy_versions.py checks.
KAFKA_VERSION = "4.3.1"
KAFKA_POM = HERE / "kafka" / "pom.xml"
KAFKA_HEAP = ["-Xmx768m", "-Xms256m"]

# Fixed ports of the runner (`up` / `run`); the tests pick free ports instead.
KAFKA_PORT, KAFKA_CONTROLLER_PORT = 19092, 19093
# The tests' broker also has a SASL/SCRAM listener with this user (local only: public, protects nothing).
SASL_USER, SASL_PASSWORD = "changai-test", "changai-test-scram-password"
POSTGRES_PORT = 15432
PROMETHEUS_PORT = 19090
RECEIVER_PORT = 8009

SERVICE_DATABASES = ("membership", "training", "funding", "notifier", "reform", "intake")

# Local-only webhook secret shared by the skeleton notifier and the demo receiver:
# "whsec_" + base64 of the 32 bytes b"changai-local-webhook-secret-32b" (also shared.settings'
# default). Public, so it protects nothing: local development only.
LOCAL_WEBHOOK_SECRET = "whsec_Y2hhbmdhaS1sb2NhbC13ZWJob29rLXNlY3JldC0zMmI="


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]  # run with the venv's python
    http_port: int
    database: str | None

    @property
    def module_file(self) -> Path | None:
        """The file `python -m <module>` would run, or None when it does not exist yet."""
        module = self.argv[self.argv.index("-m") + 1]
        base = ROOT.joinpath(*module.split("."))
        for candidate in (base / "__main__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None


# The one list of services the runner starts. Each exposes /livez and /metrics on http_port.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("membership", ("-m", "services.membership", "api"), 8001, "membership"),
    ServiceSpec("training", ("-m", "services.training", "api"), 8002, "training"),
    ServiceSpec("funding", ("-m", "services.funding", "api"), 8003, "funding"),
    ServiceSpec("reform", ("-m", "services.reform", "api"), 8006, "reform"),
    ServiceSpec("intake", ("-m", "services.intake", "api"), 8007, "intake"),
    ServiceSpec("notifier-api", ("-m", "services.notifier", "api"), 8004, "notifier"),
    ServiceSpec("notifier-worker", ("-m", "services.notifier", "worker"), 8014, "notifier"),
    ServiceSpec("projection", ("-m", "services.projection", "worker"), 8005, None),
)


class StackError(RuntimeError):
    """A component could not be installed, started or reached; the message says why."""


def say(msg: str) -> None:
    print(msg, flush=True)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port the kernel hands out (bind to 0) is also the
    source port of the next outgoing connection, so between this check and the server's own bind another
    process's client could take it (seen: PostgreSQL "Address already in use" with many suites at once)."""
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randint(max(1024, floor - 12000), floor - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range below is crowded: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    | {line}" for line in text[-lines:])


def service_env(name: str, *, bootstrap: str, http_port: int, data_dir: Path | str,
                database_url: str | None = None, receiver_url: str | None = None,
                **extra: str) -> dict[str, str]:
    """The environment every service gets (on top of the caller's)."""
    receiver = receiver_url or f"http://127.0.0.1:{RECEIVER_PORT}"
    env = {
        "CHANGAI_SERVICE": name,
        "CHANGAI_KAFKA_BOOTSTRAP": bootstrap,
        "CHANGAI_HTTP_PORT": str(http_port),
        "CHANGAI_DATA_DIR": str(data_dir),
        # The skeleton notifier's only channel: the federation (640000) -> the demo receiver.
        "CHANGAI_NOTIFIER_WEBHOOKS": json.dumps({"640000": f"{receiver}/hooks/changai"}),
        "CHANGAI_NOTIFIER_WEBHOOK_SECRET": LOCAL_WEBHOOK_SECRET,
        "CHANGAI_OUTBOUND_ALLOW_PRIVATE": "1",  # the receiver is on loopback
        # Supervision scans every 5 s locally (60 s by default), so the demo's overdue task is told promptly.
        "CHANGAI_REFORM_SUPERVISION_INTERVAL_S": "5",
        "PYTHONUNBUFFERED": "1",
    }
    if database_url:
        env["CHANGAI_DATABASE_URL"] = database_url
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------- prerequisites

_apt_updated = False


def _apt_install(*packages: str) -> None:
    global _apt_updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"missing {' '.join(packages)}: install it (Debian: sudo apt-get install -y {' '.join(packages)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"installing {' '.join(packages)} from Debian packages ...")
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if not path:
        _apt_install(package)
        path = shutil.which(program)
    if not path:
        raise StackError(f"{program} not found even after installing {package}")
    return path


def postgres_bindir() -> Path:
    """Directory of the PostgreSQL server programs (newest version installed)."""
    if os.environ.get("CHANGAI_PG_BIN"):
        return Path(os.environ["CHANGAI_PG_BIN"])

    def find() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                       key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
        if found:
            return Path(found[-1]).parent
        exe = shutil.which("postgres")
        return Path(exe).parent if exe and (Path(exe).parent / "initdb").exists() else None

    bindir = find()
    if bindir is None:
        if os.geteuid() != 0:
            raise StackError("PostgreSQL server not found: install it (Debian: sudo apt-get install -y postgresql) "
                             "or set CHANGAI_PG_BIN to its bin directory")
        _apt_install("postgresql")
        bindir = find()
    if bindir is None:
        raise StackError("PostgreSQL server programs not found after installing postgresql")
    return bindir


def remove_state_dir(path: Path | str) -> None:
    """Delete a state dir, and the folders its symlinks lead to (PostgreSQL's, when placed in /tmp)."""
    path = Path(path)
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_symlink():
            shutil.rmtree(child.resolve(), ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- processes

def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


class Proc:
    """A process in its own process group: one we spawned, or one found through its pid file."""

    stop_signal = signal.SIGTERM  # what asks the program to shut down cleanly

    def __init__(self, name: str, pid: int, log_path: Path, popen: subprocess.Popen | None = None,
                 pidfile: Path | None = None, address: str = ""):
        self.name, self.pid, self.log_path = name, pid, Path(log_path)
        self.popen, self.pidfile, self.address = popen, pidfile, address

    # -- spawning and pid files
    @classmethod
    def spawn(cls, name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
              cwd: Path | None = None, user: str | None = None, pidfile: Path | None = None,
              address: str = "", detached: bool = False, stop_signal: int = signal.SIGTERM) -> "Proc":
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT), start_new_session=True,
                user=user, group=pwd.getpwnam(user).pw_gid if user else None, extra_groups=[] if user else None,
            )
        proc = cls(name, popen.pid, log_path, popen, pidfile, address)
        proc.stop_signal = signal.Signals(stop_signal)
        if pidfile:
            proc.write_pidfile()
        if not detached:
            _OWNED.add(proc)
        return proc

    def write_pidfile(self) -> None:
        assert self.pidfile
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps({
            "name": self.name, "pid": self.pid, "start_time": _proc_start_time(self.pid),
            "address": self.address, "log": str(self.log_path), "stop_signal": int(self.stop_signal),
        }))

    @classmethod
    def from_pidfile(cls, pidfile: Path) -> "Proc | None":
        """The process a pid file names, if it is still that process; else None (and the file goes)."""
        try:
            info = json.loads(pidfile.read_text())
        except (OSError, ValueError):
            return None
        if info.get("start_time") and _proc_start_time(info["pid"]) == info["start_time"]:
            proc = cls(info["name"], info["pid"], Path(info["log"]), None, pidfile, info.get("address", ""))
            proc.stop_signal = signal.Signals(info.get("stop_signal", signal.SIGTERM))
            return proc
        pidfile.unlink(missing_ok=True)
        return None

    # -- state
    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else (None if self.alive() else -1)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")  # a zombie has exited

    async def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _signal(self, sig: int, group: bool = True) -> None:
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    # -- stopping
    async def stop(self, grace: float = 10.0) -> None:
        """The stop signal (SIGTERM) to the process, then SIGKILL to its whole group after `grace` seconds."""
        if self.alive():
            self._signal(self.stop_signal, group=False)
            if not await self.wait_exit(grace):
                say(f"{self.name}: still running {grace:.0f} s after {self.stop_signal.name}; killing it")
        self._signal(signal.SIGKILL)  # leftovers in the group, if any
        await self.wait_exit(5)
        self._forget()

    def kill(self) -> None:
        """SIGKILL to the whole process group, at once (fault tests)."""
        self._signal(signal.SIGKILL)
        if self.popen:
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._forget()

    def _forget(self) -> None:
        _OWNED.discard(self)
        if self.pidfile:
            self.pidfile.unlink(missing_ok=True)

    def fail(self, what: str, lines: int = 30) -> StackError:
        state = "exited with code %s" % self.returncode if not self.alive() else "still running"
        return StackError(f"{self.name} {what} ({state}); last lines of {_rel(self.log_path)}:\n"
                          f"{tail(self.log_path, lines)}")


_OWNED: set[Proc] = set()


def _kill_owned_at_exit() -> None:
    """Last resort: never leave a broker or a database behind when a test session dies."""
    for proc in list(_OWNED):
        proc._signal(proc.stop_signal, group=False)
    deadline = time.monotonic() + 10
    while any(p.alive() for p in _OWNED) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in list(_OWNED):
        proc._signal(signal.SIGKILL)


atexit.register(_kill_owned_at_exit)


async def _wait_until(check, proc: Proc, what: str, timeout: float, interval: float = 0.1,
                      tail_lines: int = 30) -> None:
    """Poll the async `check()` until it returns true; fail early, with the log tail, if `proc` dies."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if not proc.alive():
            raise proc.fail(f"exited before {what}", tail_lines)
        try:
            if await check():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last_error = exc
        if time.monotonic() > deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            raise proc.fail(f"not {what} after {timeout:.0f} s{detail}", tail_lines)
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- Kafka

def assemble_kafka() -> tuple[Path, float | None]:
    """The Kafka jars (`<home>/libs`), assembled from Maven Central on first use and cached.

    Returns (home, seconds the assembly took, or None when the cache was already complete)."""
    home = CACHE_DIR / f"kafka-{KAFKA_VERSION}"
    marker = home / ".complete"
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:16]
    if marker.exists() and marker.read_text().strip() == pom_hash:
        return home, None
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".kafka-{KAFKA_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be assembling right now
        if marker.exists() and marker.read_text().strip() == pom_hash:
            return home, None
        _require("java", "openjdk-17-jre-headless")
        mvn = _require("mvn", "maven")
        staging = home.parent / f".kafka-{KAFKA_VERSION}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        say(f"assembling Kafka {KAFKA_VERSION} from Maven Central into {home} (first run only) ...")
        started = time.monotonic()
        result = subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'libs'}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"assembling Kafka with Maven failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        slf4j = sorted(p.name for p in (staging / "libs").glob("slf4j-api-*.jar"))
        if not slf4j or any(not n.startswith("slf4j-api-2.") for n in slf4j):
            raise StackError(f"Kafka classpath needs slf4j-api 2.x for log4j-slf4j2-impl, found {slf4j}")
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        marker.write_text(pom_hash + "\n")
        seconds = time.monotonic() - started
        say(f"Kafka {KAFKA_VERSION} assembled in {seconds:.1f} s ({len(list((home / 'libs').glob('*.jar')))} jars)")
    return home, seconds


class Kafka:
    """A single-node KRaft Kafka (broker and controller in one JVM)."""

    def __init__(self, state_dir: Path | str, port: int, controller_port: int, *,
                 pidfile: Path | None = None, detached: bool = False, sasl_port: int | None = None):
        self.dir = Path(state_dir) / "kafka"
        self.port, self.controller_port = port, controller_port
        self.bootstrap = f"127.0.0.1:{port}"
        # A second listener with SASL/SCRAM-SHA-512 (user SASL_USER), to test the clients' authentication.
        self.sasl_port = sasl_port
        self.sasl_bootstrap = f"127.0.0.1:{sasl_port}" if sasl_port else None
        self.log_path = self.dir / "kafka.log"
        self.pidfile, self.detached = pidfile, detached
        self.proc: Proc | None = None
        self.start_seconds: float | None = None  # spawn -> answering metadata, last start
        self.assembly_seconds: float | None = None  # set when this handle assembled the jars (first run)
        self.topics_at_start: list[str] = []  # right after the first start (before any client made its own)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_config(self, home: Path) -> None:
        data = self.dir / "data"
        sasl_listener = sasl_advertised = sasl_config = ""
        if self.sasl_port:
            sasl_listener = sasl_advertised = f",SASL://127.0.0.1:{self.sasl_port}"
            sasl_config = ("sasl.enabled.mechanisms=SCRAM-SHA-512\n"
                           "listener.name.sasl.scram-sha-512.sasl.jaas.config="
                           "org.apache.kafka.common.security.scram.ScramLoginModule required;\n")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "server.properties").write_text(f"""\
# Generated by deploy/local/stack.py: single-node KRaft, local development only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller_port}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}{sasl_listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}{sasl_advertised}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL:SASL_PLAINTEXT
{sasl_config}controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
# Every topic is declared in shared/topics.py and created at start-up.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.cleaner.dedupe.buffer.size=33554432
""")
        (self.dir / "log4j2.properties").write_text(f"""\
# Generated by deploy/local/stack.py: everything to one file in the state dir.
status = warn
name = changai-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {self.log_path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
# The full config dump for every topic and client: server.properties beside this file says it.
logger.configdump.name = org.apache.kafka.common.config.AbstractConfig
logger.configdump.level = WARN
""")

    def _java(self, home: Path, main: str, *args: str) -> list[str]:
        return [_require("java", "openjdk-17-jre-headless"), *KAFKA_HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile=file:{self.dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.dir}", "-cp", str(home / "libs" / "*"), main, *args]

    def _format_once(self, home: Path) -> None:
        if (self.dir / "data" / "meta.properties").exists():
            return
        # What `StorageTool random-uuid` prints (base64url of 16 random bytes, not starting with "-"),
        # made here to save a JVM start.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = ["--add-scram", f"SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"] if self.sasl_port else []
        result = subprocess.run(self._java(home, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                                           "-c", str(self.dir / "server.properties"), *scram),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    async def _answers(self) -> bool:
        if not port_open(self.port):
            return False
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        finally:
            await admin.close()

    async def start(self, *, create_topics: bool = True, timeout: float = 120) -> "Kafka":
        if self.proc and self.proc.alive():
            return self
        home, assembled = await asyncio.to_thread(assemble_kafka)
        self.assembly_seconds = assembled or self.assembly_seconds
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise StackError(f"Kafka: port {port} is already in use by another process")
        self._write_config(home)
        await asyncio.to_thread(self._format_once, home)
        started = time.monotonic()
        self.proc = Proc.spawn("kafka", self._java(home, "kafka.Kafka", str(self.dir / "server.properties")),
                               self.log_path, pidfile=self.pidfile, address=self.bootstrap, detached=self.detached)
        await _wait_until(self._answers, self.proc, "answering on " + self.bootstrap, timeout, interval=0.25)
        self.start_seconds = time.monotonic() - started
        if create_topics:
            await self.ensure_topics()
        return self

    async def ensure_topics(self, timeout: float = 60) -> list[str]:
        """Create the declared topics (shared.topics) and check that they all exist."""
        from aiokafka.admin import AIOKafkaAdminClient
        from shared.topics import TOPICS, ensure_topics

        wanted = {t.name for t in TOPICS}
        deadline = time.monotonic() + timeout
        while True:
            try:
                await ensure_topics(self.bootstrap)
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                await admin.start()
                try:
                    existing = await admin.list_topics()
                finally:
                    await admin.close()
                if wanted <= set(existing):
                    if not self.topics_at_start:  # the broker's topics right after its first start
                        self.topics_at_start = sorted(existing)
                    return sorted(existing)
                problem = f"missing after create: {sorted(wanted - set(existing))}"
            except Exception as exc:  # noqa: BLE001 - the controller may still be settling
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise StackError(f"Kafka topics could not be created: {problem}")
            await asyncio.sleep(0.5)

    async def stop(self, grace: float = 30) -> None:
        if self.proc:
            await self.proc.stop(grace)
            self.proc = None

    async def restart(self, timeout: float = 120) -> "Kafka":
        """Stop the broker and start it again on the same ports and data (fault tests)."""
        await self.stop()
        return await self.start(create_topics=False, timeout=timeout)


async def start_kafka(state_dir: Path | str, port: int = KAFKA_PORT, controller_port: int = KAFKA_CONTROLLER_PORT,
                      *, pidfile: Path | None = None, detached: bool = False, sasl_port: int | None = None) -> Kafka:
    """Assemble (first time), format (first time), start and wait for the broker; create the topics."""
    return await Kafka(state_dir, port, controller_port, pidfile=pidfile, detached=detached,
                       sasl_port=sasl_port).start()


# --------------------------------------------------------------------------- PostgreSQL

class Postgres:
    """A PostgreSQL server on 127.0.0.1 with its data, socket and log in the state dir."""

    def __init__(self, state_dir: Path | str, port: int, *, fast: bool = False,
                 pidfile: Path | None = None, detached: bool = False):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "postgres"
        self.data = self.dir / "data"
        self.port, self.fast = port, fast
        self.log_path = self.dir / "postgres.log"
        self.pidfile, self.detached = pidfile, detached
        self.proc: Proc | None = None
        self.start_seconds: float | None = None  # initdb (first time) + start, last start
        # postgres refuses to run as root: then it runs as the `postgres` OS user.
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def _run_as(self, argv: list[str]) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        if self.user:
            kwargs = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}
        return subprocess.run(argv, capture_output=True, text=True, cwd="/", **kwargs)

    def _place(self) -> None:
        """Where the server's files go: `<state>/postgres`, unless the postgres OS user cannot reach
        the state dir (a repo under a private home folder): then a folder in /tmp, linked from there."""
        link = self.state_dir / "postgres"
        if link.is_symlink() or link.is_dir() or not self.user:
            real = link.resolve()
        elif self._run_as(["test", "-x", str(self.state_dir)]).returncode == 0:
            real = link
        else:
            key = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
            real = Path("/tmp") / f"changai-postgres-{key}"
            real.mkdir(mode=0o755, exist_ok=True)
            link.symlink_to(real)
        self.dir, self.data, self.log_path = real, real / "data", real / "postgres.log"

    def _initdb_once(self, bindir: Path) -> None:
        if self.user:
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                raise StackError("the `postgres` OS user does not exist: install PostgreSQL from Debian's packages")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._place()
        if (self.data / "PG_VERSION").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.dir, self.user, self.user)
        args = [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--no-locale", "--no-instructions"]
        if self.fast:
            args.append("--nosync")
        result = self._run_as(args)
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")
        # LOCAL DEVELOPMENT ONLY: anyone on this machine may connect as anyone, without a password.
        (self.data / "pg_hba.conf").write_text(
            "# Generated by deploy/local/stack.py. LOCAL DEVELOPMENT ONLY: trust on loopback, no passwords.\n"
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'changai.conf'\n")

    def _write_config(self) -> None:
        sock = self.dir / "sock"
        sock.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Generated by deploy/local/stack.py at every start.",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{sock}'",
            "max_connections = 200",
            "logging_collector = off",
        ]
        if self.fast:
            # The test server only: no fsync (a lost machine is not a test case), but commits stay synchronous:
            # with synchronous_commit off an immediate stop (the fault table's PostgreSQL fault) drops commits
            # the client was already told of, and a test of "nothing lost" then fails for the server's setting.
            lines += ["fsync = off", "full_page_writes = off"]
        (self.data / "changai.conf").write_text("\n".join(lines) + "\n")
        if self.user:
            for path in (sock, self.data / "changai.conf", self.data / "pg_hba.conf", self.data / "postgresql.conf"):
                shutil.chown(path, self.user, self.user)

    async def _answers(self) -> bool:
        import asyncpg

        if not port_open(self.port):
            return False
        conn = await asyncpg.connect(self.dsn(), timeout=2)
        await conn.close()
        return True

    async def start(self, timeout: float = 60) -> "Postgres":
        if self.proc and self.proc.alive():
            return self
        bindir = await asyncio.to_thread(postgres_bindir)
        if port_open(self.port):
            raise StackError(f"PostgreSQL: port {self.port} is already in use by another process")
        started = time.monotonic()
        await asyncio.to_thread(self._initdb_once, bindir)
        self._write_config()
        self.proc = Proc.spawn("postgres", [str(bindir / "postgres"), "-D", str(self.data)], self.log_path,
                               user=self.user, cwd=Path("/"), pidfile=self.pidfile, address=self.address,
                               detached=self.detached,
                               stop_signal=signal.SIGINT)  # "fast" shutdown: disconnect clients, clean checkpoint
        await _wait_until(self._answers, self.proc, "accepting connections on " + self.address, timeout)
        self.start_seconds = time.monotonic() - started
        return self

    async def database_exists(self, name: str) -> bool:
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()

    async def create_database(self, name: str, service: str | None = None) -> str:
        """Create a new, empty database and apply `service`'s migrations (shared + its own); return its DSN."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        if service:
            await self.migrate(name, service)
        return self.dsn(name)

    async def migrate(self, name: str, service: str) -> list[str]:
        """Apply what is missing of `service`'s migrations to database `name` (shared.migrate)."""
        from shared import migrate

        return await migrate.apply(self.dsn(name), service)

    async def ensure_service_databases(self, services: Iterable[str] = SERVICE_DATABASES) -> list[tuple[str, str]]:
        """One database per service, migrated; a service whose folder does not exist yet is only created.

        Returns (database, what happened) rows."""
        rows = []
        for service in services:
            created = not await self.database_exists(service)
            if created:
                await self.create_database(service)
            if (ROOT / "services" / service).is_dir():
                applied = await self.migrate(service, service)
                note = f"{len(applied)} migration(s) applied"
            else:
                note = f"services/{service}/ not there yet: not migrated"
            rows.append((service, ("created, " if created else "") + note))
        return rows

    async def stop(self, grace: float = 30) -> None:
        if self.proc:
            await self.proc.stop(grace)
            self.proc = None


async def start_postgres(state_dir: Path | str, port: int = POSTGRES_PORT, fast: bool = False, *,
                         pidfile: Path | None = None, detached: bool = False) -> Postgres:
    """initdb (first time) and start PostgreSQL; `fast` turns durability off (test server only)."""
    return await Postgres(state_dir, port, fast=fast, pidfile=pidfile, detached=detached).start()


# --------------------------------------------------------------------------- Prometheus

class Prometheus:
    """Our own Prometheus process; scrape targets come from a JSON file (file_sd) we rewrite."""

    def __init__(self, state_dir: Path | str, port: int, scrape_interval: str = "5s", *,
                 pidfile: Path | None = None, detached: bool = False):
        self.dir = Path(state_dir) / "prometheus"
        self.port, self.scrape_interval = port, scrape_interval
        self.url = f"http://127.0.0.1:{port}"
        self.targets_file = self.dir / "targets.json"
        self.log_path = self.dir / "prometheus.log"
        self.pidfile, self.detached = pidfile, detached
        self.proc: Proc | None = None
        self.start_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.targets_file.write_text("[]\n")
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            # Alerting/recording rules, when deploy/prometheus/ has any (a glob matching none is fine).
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "*.rules.yml")],
            "scrape_configs": [{
                "job_name": "changai",  # each target group in targets.json sets its own `job` label
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
            }],
        }
        path = self.dir / "prometheus.yml"
        path.write_text("# Generated by deploy/local/stack.py.\n" + json.dumps(config, indent=2) + "\n")
        return path  # JSON is YAML

    def targets(self) -> dict[str, list[str]]:
        try:
            groups = json.loads(self.targets_file.read_text())
        except (OSError, ValueError):
            return {}
        return {g["labels"]["job"]: list(g["targets"]) for g in groups}

    def set_targets(self, targets: dict[str, list[str]]) -> None:
        """Set the scrape targets of the given jobs (an empty list removes a job); other jobs stay.

        Prometheus reads the file again within a second: no restart."""
        merged = {**self.targets(), **targets}
        groups = [{"targets": addrs, "labels": {"job": job}} for job, addrs in sorted(merged.items()) if addrs]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the `result` list of the API's answer."""
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = response.json()
        if body.get("status") != "success":
            raise StackError(f"Prometheus query {promql!r} failed: {body.get('error', response.text)}")
        return body["data"]["result"]

    async def wait_for(self, promql: str, timeout: float = 60, interval: float = 0.5) -> list[dict[str, Any]]:
        """Poll `promql` until it returns a non-empty result; return it (StackError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise StackError(f"Prometheus: no result for {promql!r} after {timeout:.0f} s")
            await asyncio.sleep(interval)

    async def _answers(self) -> bool:
        import httpx

        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"{self.url}/-/ready")).status_code == 200

    async def start(self, timeout: float = 60) -> "Prometheus":
        if self.proc and self.proc.alive():
            return self
        exe = await asyncio.to_thread(_require, "prometheus", "prometheus")
        if port_open(self.port):
            raise StackError(f"Prometheus: port {self.port} is already in use by another process")
        config = self._write_config()
        started = time.monotonic()
        self.proc = Proc.spawn("prometheus", [
            exe, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=7d",
        ], self.log_path, cwd=self.dir, pidfile=self.pidfile, address=self.url, detached=self.detached)
        await _wait_until(self._answers, self.proc, "ready at " + self.url, timeout)
        self.start_seconds = time.monotonic() - started
        return self

    async def stop(self, grace: float = 15) -> None:
        if self.proc:
            await self.proc.stop(grace)
            self.proc = None


async def start_prometheus(state_dir: Path | str, port: int = PROMETHEUS_PORT, scrape_interval: str = "5s", *,
                           pidfile: Path | None = None, detached: bool = False) -> Prometheus:
    return await Prometheus(state_dir, port, scrape_interval, pidfile=pidfile, detached=detached).start()


# --------------------------------------------------------------------------- services

class Service(Proc):
    """A service (or any helper) process; `.stop()` = SIGTERM then SIGKILL, `.kill()` = SIGKILL now."""

    health_url: str | None = None
    start_seconds: float | None = None

    async def wait_healthy(self, timeout: float = 60) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=2) as client:
            async def healthy() -> bool:
                return (await client.get(self.health_url)).status_code == 200

            await _wait_until(healthy, self, f"healthy at {self.health_url}", timeout, tail_lines=12)


async def start_service(name: str, argv: list[str], env: dict[str, str], log_path: Path | str,
                        health_url: str | None = None, *, timeout: float = 60, cwd: Path | None = None,
                        pidfile: Path | None = None, detached: bool = False, address: str = "") -> Service:
    """Start `argv` (full command line) with `env` on top of ours; wait for `health_url` to answer 200."""
    started = time.monotonic()
    if env.get("CHANGAI_DATA_DIR"):
        Path(env["CHANGAI_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    svc = Service.spawn(name, list(argv), Path(log_path), env=env, cwd=cwd, pidfile=pidfile,
                        address=address or health_url or "", detached=detached)
    svc.health_url = health_url
    if health_url:
        try:
            await svc.wait_healthy(timeout)
        except BaseException:
            await svc.stop(grace=5)
            raise
    svc.start_seconds = time.monotonic() - started
    return svc


# --------------------------------------------------------------------------- the runner (CLI)

def width(text: str) -> int:
    """Columns `text` takes in a terminal: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - width(text))


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple("" if c is None else str(c) for c in r) for r in rows]
    widths = [max(width(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rel(path: Path | str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


class Runner:
    """The developer's stack in .run/ on fixed ports; survives the CLI through pid files."""

    def __init__(self, state_dir: Path = STATE_DIR):
        self.state = state_dir
        self.kafka = Kafka(state_dir, KAFKA_PORT, KAFKA_CONTROLLER_PORT, pidfile=state_dir / "kafka.pid", detached=True)
        self.pg = Postgres(state_dir, POSTGRES_PORT, pidfile=state_dir / "postgres.pid", detached=True)
        self.prometheus = Prometheus(state_dir, PROMETHEUS_PORT, "5s", pidfile=state_dir / "prometheus.pid",
                                     detached=True)
        self.started: list[Any] = []  # what this invocation started, in start order
        for component in (self.kafka, self.pg, self.prometheus):
            component.proc = Proc.from_pidfile(component.pidfile)

    def pidfile(self, name: str) -> Path:
        return self.state / f"svc-{name}.pid"

    async def up(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        rows = []

        async def bring(component, start, label: str, address: str):
            if component.proc and component.proc.alive():
                rows.append((label, component.pid, address, "already running", _rel(component.log_path)))
                return
            await start()
            self.started.append(component)
            rows.append((label, component.pid, address, f"started in {component.start_seconds:.1f} s",
                         _rel(component.log_path)))

        async def kafka():
            await bring(self.kafka, self.kafka.start, "kafka", self.kafka.bootstrap)
            if self.kafka not in self.started:
                await self.kafka.ensure_topics()

        async def postgres():
            await bring(self.pg, self.pg.start, "postgres", self.pg.address)
            for db, note in await self.pg.ensure_service_databases():
                rows.append((f"  db {db}", "", self.pg.dsn(db), note, ""))

        await asyncio.gather(kafka(), postgres(),
                             bring(self.prometheus, self.prometheus.start, "prometheus", self.prometheus.url))
        order = ["kafka", "postgres", *(f"  db {db}" for db in SERVICE_DATABASES), "prometheus"]
        rows.sort(key=lambda r: order.index(r[0]))
        say(_table(rows, ("component", "pid", "address", "state", "log")))

    def services(self) -> list[Proc]:
        procs = []
        for pidfile in sorted(self.state.glob("svc-*.pid")):
            proc = Proc.from_pidfile(pidfile)
            if proc:
                procs.append(proc)
        return procs

    async def down(self) -> None:
        rows = []
        for proc in self.services():
            await proc.stop(grace=10)
            rows.append((proc.name, proc.pid, "stopped"))
        if self.prometheus.targets_file.exists():
            self.prometheus.set_targets({spec.name: [] for spec in SERVICES})
        for label, component in (("prometheus", self.prometheus), ("postgres", self.pg), ("kafka", self.kafka)):
            if component.proc and component.proc.alive():
                pid = component.pid
                await component.stop()
                rows.append((label, pid, "stopped"))
        say(_table(rows, ("component", "pid", "state")) if rows else "nothing was running")

    def status(self) -> None:
        rows = []
        for label, component, address in (("kafka", self.kafka, self.kafka.bootstrap),
                                          ("postgres", self.pg, self.pg.address),
                                          ("prometheus", self.prometheus, self.prometheus.url)):
            up = component.proc is not None and component.proc.alive()
            rows.append((label, component.pid if up else "", address, "running" if up else "stopped",
                         _rel(component.log_path)))
        running = {p.name: p for p in self.services()}
        wanted = [("receiver", RECEIVER_PORT, True)] + [(s.name, s.http_port, s.module_file is not None)
                                                        for s in SERVICES]
        for name, port, built in wanted:
            proc = running.get(name)
            state = "running" if proc else ("stopped" if built else "not built yet")
            rows.append((name, proc.pid if proc else "", f"http://127.0.0.1:{port}", state,
                         _rel(self.state / "logs" / f"{name}.log")))
        say(_table(rows, ("component", "pid", "address", "state", "log")))

    async def start_services(self) -> list[tuple[Any, ...]]:
        rows = []
        logs = self.state / "logs"
        receiver_url = f"http://127.0.0.1:{RECEIVER_PORT}"
        existing = {p.name: p for p in self.services()}

        async def one(name: str, argv: list[str], env: dict[str, str], port: int) -> Proc | None:
            if name in existing:
                rows.append((name, existing[name].pid, existing[name].address, "already running",
                             _rel(existing[name].log_path)))
                return existing[name]
            if port_open(port):
                rows.append((name, "", f"127.0.0.1:{port}", "port in use by another process: not started", ""))
                return None
            log = logs / f"{name}.log"
            try:
                svc = await start_service(name, argv, env, log, f"http://127.0.0.1:{port}/livez",
                                          pidfile=self.pidfile(name), detached=True, address=f"http://127.0.0.1:{port}")
            except StackError as exc:
                say(str(exc))
                rows.append((name, "", f"127.0.0.1:{port}", "FAILED to start (see log)", _rel(log)))
                return None
            self.started.append(svc)
            rows.append((name, svc.pid, svc.address, f"started in {svc.start_seconds:.1f} s", _rel(log)))
            return svc

        await one("receiver", [PYTHON, str(HERE / "receiver.py"), "--port", str(RECEIVER_PORT)],
                  {"CHANGAI_NOTIFIER_WEBHOOK_SECRET": LOCAL_WEBHOOK_SECRET, "PYTHONUNBUFFERED": "1"}, RECEIVER_PORT)

        async def service(spec: ServiceSpec) -> None:
            if spec.module_file is None:
                rows.append((spec.name, "", f"127.0.0.1:{spec.http_port}",
                             f"not built yet ({' '.join(spec.argv[1:2])} missing): skipped", ""))
                return
            env = service_env(spec.name, bootstrap=self.kafka.bootstrap, http_port=spec.http_port,
                              data_dir=self.state / "data" / spec.name, receiver_url=receiver_url,
                              database_url=self.pg.dsn(spec.database) if spec.database else None)
            svc = await one(spec.name, [PYTHON, *spec.argv], env, spec.http_port)
            if svc:
                self.prometheus.set_targets({spec.name: [f"127.0.0.1:{spec.http_port}"]})

        await asyncio.gather(*(service(s) for s in SERVICES))
        order = ["receiver"] + [s.name for s in SERVICES]
        rows.sort(key=lambda r: order.index(r[0]))
        return rows

    async def stop_started(self) -> None:
        stopped = [c.name for c in self.started if isinstance(c, Proc)]
        for component in reversed(self.started):
            await component.stop()
        self.started.clear()
        if self.prometheus.targets_file.exists():  # no stale targets for services that are gone
            self.prometheus.set_targets({name: [] for name in stopped})

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.up()
            rows = await self.start_services()
            rows += [("kafka", self.kafka.pid, self.kafka.bootstrap, "", _rel(self.kafka.log_path)),
                     ("postgres", self.pg.pid, self.pg.address, "", _rel(self.pg.log_path)),
                     ("prometheus", self.prometheus.pid, self.prometheus.url, "", _rel(self.prometheus.log_path))]
            say("")
            say(_table(rows, ("component", "pid", "listens on", "state", "log")))
            say("")
            import demo

            running = {p.name for p in self.services()}
            demo_task = asyncio.create_task(demo.run(demo.DemoConfig(prometheus_url=self.prometheus.url,
                                                                     running=running)))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({demo_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if demo_task.done() and demo_task.exception():
                say(f"demo failed: {demo_task.exception()!r}")
            if not stop.is_set():
                say("\nthe platform keeps running; Ctrl-C stops what this command started")
                await stop.wait()
            demo_task.cancel()
        finally:
            say("\nstopping ...")
            await self.stop_started()
            say("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description="Changai's native local runtime (state in .run/)")
    parser.add_argument("command", choices=["up", "down", "status", "run"])
    args = parser.parse_args(argv)
    runner = Runner()
    try:
        if args.command == "status":
            runner.status()
        elif args.command == "up":
            asyncio.run(runner.up())
        elif args.command == "down":
            asyncio.run(runner.down())
        else:
            asyncio.run(runner.run())
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("stack", sys.modules["__main__"])  # `import stack` (demo.py) gets this module
    sys.exit(main())
