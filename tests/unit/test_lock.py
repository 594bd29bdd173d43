"""The lock files agree with pyproject.toml: every dependency is locked at a version its specifier
allows, with hashes, and the image's lock and the test lock agree on every package they share.

A dependency added to pyproject.toml without `make lock` fails here (make and the Dockerfile install
from the lock files only; docs/development.md)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", re.M)


def pins(name: str) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in PIN.findall((ROOT / name).read_text(encoding="utf-8"))}


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return [Requirement(r) for r in listed]


def unmet(reqs: list[Requirement], locked: dict[str, str]) -> list[str]:
    out = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            out.append(f"{req}: not locked")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{req}: locked at {version}")
    return out


def test_runtime_dependencies_are_locked_for_the_image():
    assert not unmet(requirements(), pins("requirements.lock")), "run `make lock` and commit the lock files"


def test_test_dependencies_are_locked_for_make_and_ci():
    assert not unmet(requirements("test"), pins("requirements-test.lock")), "run `make lock` and commit the lock files"


def test_both_locks_agree_on_shared_packages():
    runtime, test = pins("requirements.lock"), pins("requirements-test.lock")
    assert runtime.keys() <= test.keys(), sorted(runtime.keys() - test.keys())
    assert {n: v for n, v in runtime.items() if test[n] != v} == {}


def test_every_locked_package_has_hashes():
    for name in ("requirements.lock", "requirements-test.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text(encoding="utf-8"))
        missing = [b.split()[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b]
        assert not missing, f"{name}: no hash for {missing}"


def test_the_check_finds_an_unlocked_dependency():
    assert unmet([Requirement("fastapi>=0.115"), Requirement("not-a-locked-package>=1")], {"fastapi": "0.1"}) == [
        "fastapi>=0.115: locked at 0.1", "not-a-locked-package>=1: not locked"]
