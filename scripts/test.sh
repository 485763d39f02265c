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
cargo test --workspace --locked --no-fail-fast -- --test-threads 2
