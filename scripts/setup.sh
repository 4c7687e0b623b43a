#!/usr/bin/env bash
# Everything keyshift needs on a fresh Debian machine, installed only when
# missing: redis-server and redis-cli (the process backend, and the binary
# the docker backend's local image is built from). Docker itself is
# optional: without an engine, `--backend auto` uses the process backend,
# unless KEYSHIFT_REQUIRE_DOCKER=1 (CI), which makes a missing engine fatal.
set -euo pipefail

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing redis-server and redis-tools" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# The Debian package may start a system Redis on 6379; keyshift never uses
# it (every server it tests on is its own, on a free port).

# The example engines under examples/engines/ (run by `keyshift gate
# --engine`) are Python 3 with redis-py. `python3` may not be Debian's
# (a pyenv CPython, say), in which case the Debian package does not make
# `import redis` work for it: pip is the fallback for that interpreter.
if command -v python3 >/dev/null && ! python3 -c 'import redis' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing redis-py for python3 (the example engines)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-redis >/dev/null || true
  if ! python3 -c 'import redis' 2>/dev/null; then
    python3 -m pip install --quiet redis
  fi
fi

if [ "${KEYSHIFT_REQUIRE_DOCKER:-}" = "1" ] && ! docker info >/dev/null 2>&1; then
  echo "setup: KEYSHIFT_REQUIRE_DOCKER=1 but no Docker engine answers (docker info failed)" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
