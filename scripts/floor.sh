#!/usr/bin/env bash
# Phase 2 against its write floor, on two redis-servers started by hand.
# Seeds the same generated legacy keyspace into both, then in one run times
#   A: keyshift migrate grid-positions --force   (then keyshift verify)
#   B: redis-cli --pipe < end_state.resp          (the same end state, no reads, no checks)
# and prints the ratio A/B. Usage: scripts/floor.sh [USERS] [SEED]
set -euo pipefail
users=${1:-100000}
seed=${2:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {
  local port=$1
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no \
    >"$work/redis-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server on $port did not start" >&2; exit 4
}

cd "$root"
cargo build --release -q -p keyshift-harness --bin keyshift --example migration_floor
./target/release/examples/migration_floor "$users" "$seed" "$work"
pa=$(free_port); start "$pa"
pb=$(free_port); start "$pb"
redis-cli -p "$pa" --pipe <"$work/seed.resp" >/dev/null
redis-cli -p "$pb" --pipe <"$work/seed.resp" >/dev/null
echo "keys: A $(redis-cli -p "$pa" dbsize), B $(redis-cli -p "$pb" dbsize)"

now() { date +%s.%N; }
t0=$(now)
set +e
./target/release/keyshift migrate grid-positions --redis "redis://127.0.0.1:$pa" --force >"$work/migrate.txt"
code=$?
set -e
t1=$(now)
redis-cli -p "$pb" --pipe <"$work/end_state.resp" >"$work/pipe.txt"
t2=$(now)
grep -E '^total' "$work/migrate.txt" || true
echo "migrate exit $code (3 = quarantined keys reported, as seeded)"
tail -1 "$work/pipe.txt"
./target/release/keyshift verify grid-positions --redis "redis://127.0.0.1:$pa"
python3 - "$t0" "$t1" "$t2" <<'PY'
import sys
t0, t1, t2 = map(float, sys.argv[1:])
a, b = t1 - t0, t2 - t1
print(f"migrate {a:.2f} s, redis-cli --pipe floor {b:.2f} s, ratio {a/b:.2f}")
PY
