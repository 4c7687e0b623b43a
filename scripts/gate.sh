#!/usr/bin/env bash
# The main job: set up, build, and run `keyshift gate` on a disposable Redis,
# then the kill matrix (every mutant engine through the same gate pipeline),
# merged into the gate's report. Extra arguments go to the gate, e.g.
#   scripts/gate.sh --backend process --users 10000
# Exit: the gate's code (DESIGN §6) when it is not 0, else 1 if a mutant
# survived or the control failed, else 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p keyshift-harness --bin keyshift
cargo build --release -q -p keyshift-mutants --bin keyshift-mutants

# The matrix runs on the gate's backend and writes into its report directory.
backend=auto
report_dir=reports
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --backend) backend="${args[i + 1]:-auto}" ;;
    --backend=*) backend="${args[i]#*=}" ;;
    --report-dir) report_dir="${args[i + 1]:-reports}" ;;
    --report-dir=*) report_dir="${args[i]#*=}" ;;
  esac
done

gate_rc=0
./target/release/keyshift gate "$@" || gate_rc=$?
# 0, 1 and 3 wrote a report; anything else (usage, Redis unreachable) did not.
case "$gate_rc" in 0 | 1 | 3) ;; *) exit "$gate_rc" ;; esac
matrix_rc=0
./target/release/keyshift-mutants --backend "$backend" --report-dir "$report_dir" || matrix_rc=$?
if [ "$gate_rc" -ne 0 ]; then exit "$gate_rc"; fi
exit "$matrix_rc"
