# Changai: the two commands are `make run` (the platform + the article-replay demo) and
# `make test` (the tests, which start their own Kafka, PostgreSQL and Prometheus).
# Both set up everything on a fresh machine: the venv, Kafka from Maven Central (cached in
# $${CHANGAI_CACHE:-~/.cache/changai}), PostgreSQL and Prometheus from Debian's packages.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# The venv is (re)installed when pyproject.toml's content changes, not its timestamp.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: venv run test up down status bench

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	PYTHONWARNINGS=ignore $(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: venv  ## infrastructure + every service + demo receiver + demo; Ctrl-C stops
	$(VPY) deploy/local/stack.py run

test: venv  ## pytest against real servers the fixtures start
	$(VPY) -m pytest -q $(PYTEST_ARGS)

up: venv  ## infrastructure only (Kafka, PostgreSQL, Prometheus), reused when already up
	$(VPY) deploy/local/stack.py up

down: venv  ## stop everything the runner started
	$(VPY) deploy/local/stack.py down

status: venv
	$(VPY) deploy/local/stack.py status

bench: venv
	@if [ -d bench ]; then $(VPY) -m bench; else echo "no benchmarks yet (bench/ does not exist)"; fi
