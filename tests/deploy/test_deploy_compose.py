"""docker-compose.yml: valid against the Compose Specification (pinned, vendored), every
variable it uses set in .env.example, health checks and start order consistent, every bind
mount present in the repository. Docker cannot run here: this is a static check."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

import deploy_support as ds

# Bind-mount sources that other parts of the project generate (checked in test_deploy_dashboards).
GENERATED_INPUTS = {"deploy/grafana/dashboards", "deploy/prometheus"}
ONE_SHOT = {"topics"}


@pytest.fixture(scope="module")
def compose_validator():
    schema = json.loads((ds.VENDOR / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_deploy_compose_validates_against_the_specification(compose_validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(ds.compose())]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("breakage", ["condition", "typo", "type"])
def test_deploy_compose_schema_rejects_a_broken_file(compose_validator, breakage):
    broken = ds.compose()
    if breakage == "condition":
        broken["services"]["membership"]["depends_on"]["kafka"]["condition"] = "service_ready"
    elif breakage == "typo":
        broken["services"]["projection"]["helthcheck"] = {}
    else:
        broken["services"]["membership"]["ports"] = 8001
    assert list(compose_validator.iter_errors(broken))


def test_deploy_compose_variables_are_in_env_example():
    used: set[str] = set()
    env = ds.read_env_file(ds.ENV_EXAMPLE)
    ds.interpolate(ds.compose_raw(), env, used)  # raises KeyError for a required variable that is missing
    assert used <= set(env), f"set these in .env.example: {sorted(used - set(env))}"
    with pytest.raises(KeyError):  # and the file refuses to start without them
        ds.interpolate(ds.compose_raw(), {})


def test_deploy_compose_health_and_start_order():
    services = ds.compose()["services"]
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") in ("no", "on-failure"), f"{name}: a one-shot job must not restart forever"
        else:
            health = svc.get("healthcheck") or {}
            assert health.get("test") and not health.get("disable"), f"{name}: no health check"
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert how["condition"] == wanted, f"{name} -> {dep}: {how['condition']}"


def test_deploy_compose_volumes_and_mounts():
    config = ds.compose()
    declared = set(config.get("volumes") or {})
    used = set()
    for name, svc in config["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                path = (ds.ROOT / source).resolve()
                rel = str(path.relative_to(ds.ROOT))
                if rel not in GENERATED_INPUTS:
                    assert path.exists(), f"{name}: bind mount {source} does not exist"
            else:
                used.add(source)
                assert source in declared, f"{name}: volume {source} is not declared"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_deploy_compose_postgres_init_script_is_valid_bash():
    script = ds.ROOT / "deploy" / "compose" / "postgres" / "init-databases.sh"
    assert os.access(script, os.X_OK), "the postgres entrypoint runs *.sh that are executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_deploy_compose_healthcheck_commands_run(tmp_path):
    """The Python health checks are real programs: run each against a server that answers
    200 on one path and 503 on the other."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/livez" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = str(server.server_address[1])
        services = ds.compose()["services"]
        results = {}
        for name in ("membership", "projection"):
            test = services[name]["healthcheck"]["test"]
            assert test[0] == "CMD" and test[1] == "python"
            argv = [sys.executable, *test[2:]]
            results[name] = subprocess.run(argv, env={**os.environ, "CHANGAI_HTTP_PORT": port},
                                           capture_output=True, timeout=30).returncode
        assert results["projection"] == 0, "/livez answered 200: the worker is healthy"
        assert results["membership"] != 0, "/readyz answered 503: the API is not healthy"
    finally:
        server.shutdown()
