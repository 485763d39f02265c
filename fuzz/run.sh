#!/usr/bin/env bash
# Fuzzes each target (all, or those named) for SECONDS with cargo-fuzz on the stable toolchain,
# growing fuzz/corpus/<target>; prints one line per target for the log in fuzz/README.md.
#   bash fuzz/run.sh 600 [target...]        JOBS=2 runs two targets at a time
# Needs `cargo install cargo-fuzz` (0.13); RUSTC_BOOTSTRAP=1 lets stable rustc take the
# sanitizer flags cargo-fuzz passes. Crashes land in fuzz/libfuzzer/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: run.sh SECONDS [target...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(find libfuzzer/fuzz_targets -name "*.rs" -printf "%f\n" | sed "s/\.rs$//" | sort)
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir libfuzzer -O >/dev/null
mkdir -p libfuzzer/logs
one() {
  local t=$1 log=libfuzzer/logs/$1.log
  # -timeout: an input that takes over 10 s is a finding; -rss_limit_mb: so is 2 GiB.
  if cargo fuzz run --fuzz-dir libfuzzer -O "$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=clean
  else
    result="FOUND (see $log, libfuzzer/artifacts/$t/)"
  fi
  local last execs
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || true)
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  printf '%s\t%s s\t%s execs\t%s\t%s\n' "$t" "$secs" "$execs" "$last" "$result"
}
running=0
for t in "${targets[@]}"; do
  one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "${JOBS:-1}" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
