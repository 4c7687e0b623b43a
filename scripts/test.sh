#!/usr/bin/env bash
# The test suite: set up, then every test of the workspace on real
# disposable Redis servers; the Phase 2 rules run once more on the docker
# backend, with rollback, whenever an engine answers (always in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets
if [ "${KEYSHIFT_REQUIRE_DOCKER:-}" = "1" ] || docker info >/dev/null 2>&1; then
  KEYSHIFT_TEST_BACKEND=docker cargo test -p keyshift-harness --test grid_positions --test rollback
fi
