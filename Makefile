# Changai: the two commands are `make run` (the platform + the article-replay demo) and
# `make test` (the tests, which start their own Kafka, PostgreSQL and Prometheus).
# Both set up everything on a fresh machine: the venv, Kafka from Maven Central (cached in
# $${CHANGAI_CACHE:-~/.cache/changai}), PostgreSQL and Prometheus from Debian's packages.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Exact versions and hashes: requirements.lock (what the image runs) and requirements-test.lock (the same
# plus the test and development tools, what make and CI install). `make lock` regenerates both from
# pyproject.toml (docs/development.md).
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
# The venv is (re)installed when the lock's or pyproject.toml's content changes, not their timestamps.
VENV_STAMP := $(VENV)/.installed-$(shell cat $(TEST_LOCK) pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
# e.g. make lock LOCK_ARGS=--upgrade-package=fastapi (by default the versions already locked are kept)
LOCK_ARGS ?=
UV_COMPILE := $(VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --generate-hashes -q $(LOCK_ARGS)
CHECKED := shared services

.PHONY: venv run test test-stress up down status bench check format lock

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	PYTHONWARNINGS=ignore $(VPY) -m pip install -q --disable-pip-version-check -r $(TEST_LOCK)
	PYTHONWARNINGS=ignore $(VPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

run: venv  ## infrastructure + every service + demo receiver + demo; Ctrl-C stops
	$(VPY) deploy/local/stack.py run

# The checks run first: CI runs `make test`, so a lint, format or type finding fails the build.
test: venv check  ## make check, then pytest against real servers the fixtures start
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# The suite while both cores are kept busy by two spinning processes (as on a shared CI machine): a test
# that only passes on a quiet machine fails here. STRESS_RUNS=3 runs it three times in a row.
STRESS_RUNS ?= 1
test-stress: venv  ## the whole suite under load: two busy loops beside it, STRESS_RUNS times in a row
	@set -e; for n in $$(seq 1 $(STRESS_RUNS)); do \
	  $(VPY) -c 'while True: pass' & b1=$$!; $(VPY) -c 'while True: pass' & b2=$$!; \
	  trap "kill $$b1 $$b2 2>/dev/null || true" EXIT; \
	  echo "test-stress run $$n of $(STRESS_RUNS), two busy loops: pids $$b1 $$b2"; \
	  start=$$(date +%s); rc=0; $(VPY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	  kill $$b1 $$b2 2>/dev/null; wait $$b1 $$b2 2>/dev/null || true; \
	  echo "test-stress run $$n: exit $$rc in $$(( $$(date +%s) - start )) s"; \
	  [ $$rc -eq 0 ] || exit $$rc; \
	done

up: venv  ## infrastructure only (Kafka, PostgreSQL, Prometheus), reused when already up
	$(VPY) deploy/local/stack.py up

down: venv  ## stop everything the runner started
	$(VPY) deploy/local/stack.py down

status: venv
	$(VPY) deploy/local/stack.py status

check: venv  ## lint, format and type checks (configured in pyproject.toml); all three run, any failure fails
	@rc=0; \
	$(VENV)/bin/ruff check $(CHECKED) || rc=1; \
	$(VENV)/bin/ruff format --check $(CHECKED) || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	exit $$rc

format: venv  ## rewrite shared/ and services/: ruff's safe fixes, then the formatter (commit what it changes)
	$(VENV)/bin/ruff check --fix --exit-zero $(CHECKED)
	$(VENV)/bin/ruff format $(CHECKED)

lock: venv  ## regenerate the lock files from pyproject.toml (then commit them)
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra test -c $(LOCK) -o $(TEST_LOCK)

bench: venv
	@if [ -d bench ]; then $(VPY) -m bench; else echo "no benchmarks yet (bench/ does not exist)"; fi
