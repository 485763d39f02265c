#!/usr/bin/env bash
# The whole patent story on loopback, without namespaces or the gateway (the README's first
# command, scripts/demo.sh, runs it through the real gateway in the lab).
# Starts clamd (with a signature database written here), two stock servers, the service, and
# runs two clients through upload → review (Fig. 5) → push download → key sharing → refusals.
# Everything lives in one state directory and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clamd >/dev/null; then
  echo "installing clamav-daemon (Debian) for the virus check (91)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clamav-daemon clamav
fi
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"
STATE="${STOCKADE_DEMO_DIR:-$(mktemp -d /tmp/stockade-demo.XXXXXX)}"
mkdir -p "$STATE"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_for() { for _ in $(seq 200); do eval "$1" && return 0; sleep 0.1; done; echo "timed out: $1"; exit 1; }

say "state directory: $STATE"
"$BIN/stockade-service" pki "$STATE/pki" --service-name 127.0.0.1 --service-name localhost --stock-name 127.0.0.1 >/dev/null

# clamd with a test signature (freshclam cannot download here).
mkdir -p "$STATE/clamav-db"
printf 'Stockade.Test.Marker:0:*:%s\n' "$(printf 'STOCKADE-TEST-VIRUS-MARKER' | od -An -tx1 | tr -d ' \n')" > "$STATE/clamav-db/stockade.ndb"
cat > "$STATE/clamd.conf" <<CONF
LocalSocket $STATE/clamd.sock
Foreground yes
DatabaseDirectory $STATE/clamav-db
LogFile $STATE/clamd.log
StreamMaxLength 100M
MaxFileSize 100M
MaxScanSize 100M
AlertExceedsMax yes
Bytecode no
CONF
clamd -c "$STATE/clamd.conf" >/dev/null 2>&1 & pids+=($!)
wait_for "[ -S '$STATE/clamd.sock' ]"

for i in 1 2; do
  cat > "$STATE/stock-$i.yaml" <<CONF
name: stock-$i
listen: 127.0.0.1:$((17442 + i))
metrics_listen: 127.0.0.1:$((19442 + i))
data_dir: stock-$i-data
tls: {cert: pki/stock.pem, key: pki/stock.key, service_client_ca: pki/service-client-ca.pem, monitor_ca: pki/monitor-ca.pem}
CONF
  "$BIN/stockade-stock" run --config "$STATE/stock-$i.yaml" 2>"$STATE/stock-$i.log" & pids+=($!)
done
cat > "$STATE/service.yaml" <<CONF
name: service-1
listen: 127.0.0.1:18443
metrics_listen: 127.0.0.1:19101
admin_socket: admin.sock
data_dir: service-data
tls: {cert: pki/service.pem, key: pki/service.key, stock_ca: pki/ca.pem, client_cert: pki/service-client.pem, client_key: pki/service-client.key}
stock_servers:
  - {name: stock-1, url: "https://127.0.0.1:17443"}
  - {name: stock-2, url: "https://127.0.0.1:17444"}
clamd: {address: $STATE/clamd.sock}
review: {auto_approve_ethics: false}
CONF
"$BIN/stockade-service" run --config "$STATE/service.yaml" 2>"$STATE/service.log" & pids+=($!)
wait_for "[ -S '$STATE/admin.sock' ]"

client() { local who=$1; shift; STOCKADE_HOME="$STATE/$who" STOCKADE_SERVICE=https://127.0.0.1:18443 STOCKADE_CA="$STATE/pki/ca.pem" \
  STOCKADE_BIND=$([ "$who" = client1 ] && echo 127.0.0.101 || echo 127.0.0.220) STOCKADE_PASSPHRASE="demo passphrase of $who" RUST_LOG=warn \
  "$BIN/stockade" "$@"; }
mkdir -p "$STATE/client1" "$STATE/client2"
python3 - "$STATE/photo.png" <<'PY'
import struct, sys, zlib
w, h = 64, 48
rows = []
for y in range(h):
    row = bytearray([0])
    for x in range(w):
        row += bytes((x * 4 % 256, y * 5 % 256, 128))
    rows.append(bytes(row))
raw = b"".join(rows)
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY

say "client 1 and client 2 make keys and register them (61, 71)"
client client1 keygen --bits 2048; client client1 register
client client2 keygen --bits 2048; client client2 register

say "client 1 uploads photo.png (62, 63); it waits in quarantine (74)"
set +e; out=$(client client1 upload "$STATE/photo.png" --wait 3); set -e
echo "$out"
id=$(echo "$out" | awk '/^upload /{print $2; exit}')

say "the operator reviews it (Fig. 5: 91 virus, 92 integrity, 93 ethics)"
"$BIN/stockade-service" review --socket "$STATE/admin.sock" show "$id"
"$BIN/stockade-service" review --socket "$STATE/admin.sock" approve "$id" --operator demo

say "client 1 learns the result: stored, server password issued (78-82, 66)"
client client1 status "$id"

say "client 1 downloads it: the stock server pushes it straight to 127.0.0.101:7137 (121-137)"
client client1 download photo.png --out "$STATE/client1/photo-back.png"
cmp "$STATE/photo.png" "$STATE/client1/photo-back.png" && echo "identical to the original"

say "client 1 shares the account key with client 2, peer to peer, by PAKE (Fig. 10/11)"
client client1 password show > "$STATE/client2/server-password"
echo "a client password agreed in person" > "$STATE/client1/client-password"
cp "$STATE/client1/client-password" "$STATE/client2/client-password"
client client1 share serve --client-password-file "$STATE/client1/client-password" --listen 127.0.0.101:7138 & share_pid=$!
wait_for "(exec 3<>/dev/tcp/127.0.0.101/7138) 2>/dev/null"
client client2 share request --from 127.0.0.101:7138 --client-password-file "$STATE/client2/client-password" --server-password-file "$STATE/client2/server-password"
wait $share_pid
client client2 download photo.png --out "$STATE/client2/photo.png"

say "a bad upload is refused with its reason (76, 77, 64, 65)"
{ cat "$STATE/photo.png"; printf 'STOCKADE-TEST-VIRUS-MARKER'; } > "$STATE/infected.png"
client client1 upload "$STATE/infected.png" --wait 30 || echo "(exit code $?)"

say "service metrics (stockade_service_*)"
curl -s http://127.0.0.1:19101/metrics | grep -E '^stockade_service_(uploads_total|review_decisions_total|clamd_up)' || true
say "done; logs and state are in $STATE"
