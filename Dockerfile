# syntax=docker/dockerfile:1
# One image for every Changai process; each service is started by its command, e.g.
#   docker run changai python -m services.membership api
#   docker run changai python -m services.projection worker
# (docker-compose.yml and deploy/k8s/ set the command of each service.)
#
# Stages: `deps` installs the Python dependencies at the exact versions and hashes of
# requirements.lock (a layer cached until the lock changes; docs/development.md), `runtime`
# copies them and the source. Every dependency is installed from a binary wheel
# (--only-binary), so no compiler is needed in either stage.

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
RUN python -m venv /opt/venv
COPY requirements.lock ./
# Only the dependencies (the runtime lock, no test tools), not the project: the source
# changes far more often than the dependencies, and this layer stays cached. The image runs
# the source from /app (WORKDIR), so the project itself needs no install.
RUN /opt/venv/bin/pip install --only-binary=:all: --require-hashes -r requirements.lock

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHANGAI_HTTP_HOST=0.0.0.0 \
    CHANGAI_HTTP_PORT=8000 \
    CHANGAI_DATA_DIR=/var/lib/changai
RUN groupadd --system --gid "${UID}" changai \
    && useradd --system --uid "${UID}" --gid changai --home-dir /app --no-create-home --shell /usr/sbin/nologin changai \
    && mkdir -p /var/lib/changai \
    && chown changai:changai /var/lib/changai
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY shared/ shared/
COPY services/ services/
COPY deploy/local/receiver.py deploy/local/receiver.py
COPY pyproject.toml ./
# Byte-code compiled now, so a read-only root file system costs nothing at start.
RUN python -m compileall -q shared services
USER ${UID}:${UID}
# Liveness of whichever process runs: every one serves /livez on CHANGAI_HTTP_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('CHANGAI_HTTP_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "services.membership", "api"]
