#!/usr/bin/env bash
# The README's test command: build every binary once, then run every test suite.
# Needs root (the gateway tests create network namespaces) and the packages .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --workspace --bins --tests --locked
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Each end-to-end test starts its own daemons; two at a time suit a 2-core machine. Every suite
# runs even after a failure, so one run shows every problem.
if [ "${CI:-}" = true ]; then
  # In CI a test that cannot run fails (each checks CI=true): there is nothing to count.
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2
else
  # Elsewhere a test that cannot run (not root, a tool missing) passes saying SKIPPED; the
  # passing tests' output is shown so that those lines can be counted in the summary.
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  rc=0
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2 --show-output 2>&1 | tee "$log" || rc=$?
  skipped=$(grep -o 'SKIPPED.*' "$log" | sort -u || true)
  if [ -n "$skipped" ]; then
    printf '\n%s test(s) did not run here (they fail under CI=true):\n%s\n' "$(wc -l <<<"$skipped")" "$skipped"
  else
    printf '\nno test was skipped\n'
  fi
  exit "$rc"
fi
