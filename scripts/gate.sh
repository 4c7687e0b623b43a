#!/usr/bin/env bash
# The main job: set up, build, and run `keyshift gate` on a disposable Redis.
# Extra arguments go to the gate, e.g. scripts/gate.sh --backend process --users 10000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p keyshift-harness --bin keyshift
exec ./target/release/keyshift gate "$@"
