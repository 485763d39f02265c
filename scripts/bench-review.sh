#!/usr/bin/env bash
# Review pipeline benchmark (issue 8, BENCHMARKS.md "Review desk"): per image, Stockade's
# review (clamd scan of the upload + decode + content disarm + operator preview + reduced image
# + clamd scan of the disarmed bytes) against the same work done by standard tools on the same
# files: `vips copy in.jpg out.jpg[strip]` (full decode and re-encode, metadata stripped) +
# `vipsthumbnail` + two `clamdscan --stream`. 1, 12 and 24 megapixel JPEGs; wall time and peak
# RSS (GNU time) per run, best of RUNS.
# Needs: clamd, clamdscan, libvips-tools, /usr/bin/time. Run from the workspace root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
cargo build --release -p stockade-service --example review_bench >/dev/null
bench=target/release/examples/review_bench
work=$(mktemp -d /tmp/stockade-bench-review.XXXXXX)
trap 'kill $(cat "$work/clamd.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/db"
printf 'Stockade.Test.Marker:0:*:%s\n' "$(printf 'STOCKADE-TEST-VIRUS-MARKER' | od -An -tx1 | tr -d ' \n')" >"$work/db/stockade.ndb"
cat >"$work/clamd.conf" <<CONF
LocalSocket $work/clamd.sock
PidFile $work/clamd.pid
Foreground no
DatabaseDirectory $work/db
StreamMaxLength 100M
MaxFileSize 100M
MaxScanSize 100M
Bytecode no
CONF
clamd -c "$work/clamd.conf"
for _ in $(seq 100); do [ -S "$work/clamd.sock" ] && break; sleep 0.1; done
printf 'LocalSocket %s\n' "$work/clamd.sock" >"$work/clamdscan.conf"

best() { sort -n | head -1; }
printf '%-6s | %-26s | %-26s | %s\n' "image" "stockade review: s, peak MiB" "vips+clamdscan: s, peak MiB" "ratio"
for mp in 1 12 24; do
  img="$work/photo-${mp}mp.jpg"
  "$bench" make "$img" "$mp"
  s_t=(); s_m=(); b_t=(); b_m=()
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %M' -o "$work/t" "$bench" run "$work/clamd.sock" "$img" >"$work/line"
    read -r t m <"$work/t"; s_t+=("$t"); s_m+=("$m")
    /usr/bin/time -f '%e %M' -o "$work/t" sh -c '
      clamdscan --config-file="$1/clamdscan.conf" --stream --no-summary "$2" >/dev/null &&
      vips copy "$2" "$1/out.jpg[strip]" &&
      vipsthumbnail "$1/out.jpg" -s 256 -o "$1/thumb.png" &&
      clamdscan --config-file="$1/clamdscan.conf" --stream --no-summary "$1/out.jpg" >/dev/null' _ "$work" "$img"
    read -r t m <"$work/t"; b_t+=("$t"); b_m+=("$m")
  done
  st=$(printf '%s\n' "${s_t[@]}" | best); sm=$(printf '%s\n' "${s_m[@]}" | sort -n | tail -1)
  bt=$(printf '%s\n' "${b_t[@]}" | best); bm=$(printf '%s\n' "${b_m[@]}" | sort -n | tail -1)
  printf '%-6s | %8s s, %6s MiB        | %8s s, %6s MiB        | %.2fx\n' "${mp} MP" "$st" "$((sm / 1024))" "$bt" "$((bm / 1024))" "$(echo "$st / $bt" | bc -l)"
  sed 's/^/         /' "$work/line"
done
