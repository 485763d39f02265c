#!/usr/bin/env bash
# Forwarding rate of both data planes (userspace, nftables) vs. a plain kernel bridge between the
# same namespaces.
#
#   gateway/bench/forward.sh [RUNS] [SECONDS]      (root; defaults 5 runs of 8 s)
#
# Topology (all in namespaces prefixed sgwb<pid>-, removed on exit):
#   tx (198.51.100.101) ── a ┤ mid: bridge br0 | stockade-gateway ├ b ── rx (198.51.100.50)
# * Baseline: br0 over a and b with bridge-nf-call-ip{,6}tables=0 (set in mid and reported)
#   and no ruleset.
# * Gateway: the release binary (userspace plane with each --io: batched, ring, pnet; then
#   --dataplane nftables, which bridges a and b itself and needs bridge-nf-call-ip{,6}tables=1,
#   set for that run and reported) bridging a (outside) and b (inside) under a rules file that
#   admits the flow (UDP 198.51.100.101 -> 198.51.100.50:9). PLANES="batched ring pnet nft hand"
#   selects which gateway runs happen (default: all; `hand` is the hand-written nft ruleset
#   described below, for scale).
# * One 64-byte UDP flow from trafgen (netsniff-ng) pinned to CPU 0; the receiver drops it at
#   prerouting (nftables; tc ingress drop if nft is missing) so no ICMP errors come back.
# * Figure: rx packets of the receiver's port over SECONDS, median of RUNS runs.
# * Each gateway run happens once per rules size in PREFIXES (default "0 100000"): 0 is the
#   benchmark rules alone; N adds a blocklist of N IPv4 prefixes (disjoint /24s, never
#   198.51.100.0/24; only data, no traffic goes there) dropped by a rule placed before the
#   accept rules, the shape of a real blocklist.
# Needs: iproute2, ethtool, trafgen, nft (or tc), python3, a release build (built here if
# missing).
set -euo pipefail

RUNS=${1:-5}
SECS=${2:-8}
TCP_RUNS=${TCP_RUNS:-3}
PLANES=${PLANES:-batched ring pnet nft hand}
PREFIXES=${PREFIXES:-0 100000}
# PROFILE=DIR: record a system-wide `perf record -g` of 4 s during the first UDP run of every
# plane into DIR/perf-<plane>-<prefixes>.data (that run's figure then includes perf's cost).
PROFILE=${PROFILE:-}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${STOCKADE_GATEWAY_BIN:-$ROOT/target/release/stockade-gateway}
P="sgwb$$-"
WORK=$(mktemp -d)
GW_PID=""

MAC_TX=02:00:c6:33:64:65
MAC_RX=02:00:c6:33:64:32

cleanup() {
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    # Processes this script started inside its namespaces (the iperf3 server), by pid.
    for n in tx mid rx; do ip netns pids "${P}$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    for n in tx mid rx; do ip netns del "${P}$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts the profile of one plane in the background (see PROFILE).
profile() {
    [ -n "$PROFILE" ] || return 0
    mkdir -p "$PROFILE"
    (sleep 3; perf record -q -a -g -o "$PROFILE/perf-$1.data" -- sleep 4 >/dev/null 2>&1) &
}
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release -p stockade-gateway) >&2
fi

setup() {
    for n in tx mid rx; do
        ip netns add "${P}$n"
        ip -n "${P}$n" link set lo up
        ip netns exec "${P}$n" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 \
            net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    ip -n "${P}tx" link add name eth0 type veth peer name a netns "${P}mid"
    ip -n "${P}mid" link add name b type veth peer name eth0 netns "${P}rx"
    ip -n "${P}tx" link set eth0 address $MAC_TX
    ip -n "${P}rx" link set eth0 address $MAC_RX
    for n in tx rx; do
        ip netns exec "${P}$n" ethtool -K eth0 tx off tso off gso off gro off >/dev/null
        ip -n "${P}$n" link set eth0 up
    done
    ip -n "${P}tx" addr add 198.51.100.101/24 dev eth0
    ip -n "${P}rx" addr add 198.51.100.50/24 dev eth0
    for i in a b; do
        ip netns exec "${P}mid" ethtool -K $i gro off gso off tso off >/dev/null
        ip -n "${P}mid" link set dev $i up
    done
    # The receiver drops the flow at prerouting: the packet is counted on arrival, nothing answers.
    if command -v nft >/dev/null; then
        ip netns exec "${P}rx" nft -f - <<'NFT'
table inet sink {
    chain pre { type filter hook prerouting priority raw; policy accept; udp dport 9 drop; }
}
NFT
        SINK="nft prerouting drop"
    else
        ip netns exec "${P}rx" tc qdisc add dev eth0 ingress
        ip netns exec "${P}rx" tc filter add dev eth0 ingress protocol ip matchall action drop
        SINK="tc ingress drop (nft missing)"
    fi
    cat > "$WORK/flow.cfg" <<CFG
{ eth(da=$MAC_RX, sa=$MAC_TX), ipv4(saddr=198.51.100.101, daddr=198.51.100.50, ttl=64), udp(sp=40000, dp=9), fill(0x41, 18) }
CFG
    cat > "$WORK/rules-0.yaml" <<'YAML'
settings:
  inside_sources: [stock]
sets:
  client: [198.51.100.101]
  stock: [198.51.100.50]
pins:
  198.51.100.101: "02:00:c6:33:64:65"
rules:
  - name: bench_flow
    direction: inbound
    protocol: udp
    src: [client]
    dst: [stock]
    dst_ports: [9]
    action: accept
    comment: benchmark flow only (the real policy never admits a client inbound)
  - name: bench_tcp
    direction: inbound
    protocol: tcp
    src: [client]
    dst: [stock]
    dst_ports: [5201]
    action: accept
    comment: iperf3 benchmark only
YAML
    for n in $PREFIXES; do
        [ "$n" = 0 ] && continue
        python3 - "$n" "$WORK/rules-0.yaml" "$WORK/rules-$n.yaml" <<'PY'
import ipaddress, sys
n, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# Disjoint, non-adjacent /24s from 11.0.0.0 on (every other /24), so each is one interval.
nets = ", ".join(f"{ipaddress.IPv4Address(0x0B000000 + i * 512)}/24" for i in range(n))
text = open(src).read()
text = text.replace("  stock: [198.51.100.50]\n", f"  stock: [198.51.100.50]\n  blocked: [{nets}]\n")
text = text.replace("rules:\n", "rules:\n  - name: blocklist\n    direction: inbound\n    protocol: any\n"
                    "    src: [blocked]\n    dst: [stock]\n    action: drop\n", 1)
open(dst, "w").write(text)
PY
    done
}

rx_packets() { ip netns exec "${P}rx" cat /sys/class/net/eth0/statistics/rx_packets; }

# One run: trafgen floods for SECS+2 s; we count the receiver's rx over the middle SECS s.
one_run() {
    timeout -s TERM $((SECS + 2)) ip netns exec "${P}tx" taskset -c 0 trafgen --dev eth0 \
        --conf "$WORK/flow.cfg" --cpus 1 --no-sock-mem >/dev/null 2>&1 &
    local tg=$!
    sleep 1
    local r0; r0=$(rx_packets)
    sleep "$SECS"
    local r1; r1=$(rx_packets)
    wait $tg || true
    echo $(( (r1 - r0) / SECS ))
}

# TCP throughput: iperf3 for SECS s, the receiver's figure in Mbit/s.
tcp_run() {
    ip netns exec "${P}tx" iperf3 -c 198.51.100.50 -t "$SECS" -f m 2>/dev/null |
        awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print int($(i - 1)) }'
}

measure_tcp() {
    local label=$1 out=()
    for i in $(seq "$TCP_RUNS"); do out+=("$(tcp_run)"); done
    local med; med=$(printf '%s\n' "${out[@]}" | median)
    echo "$label TCP: runs ${out[*]} Mbit/s; median $med Mbit/s" >&2
    echo "$med"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

measure() {
    local label=$1 out=()
    for i in $(seq "$RUNS"); do out+=("$(one_run)"); done
    local med; med=$(printf '%s\n' "${out[@]}" | median)
    echo "$label: runs ${out[*]} pps; median $med pps" >&2
    echo "$med"
}

setup
ip netns exec "${P}rx" iperf3 -s -D >/dev/null 2>&1
sleep 0.5

# Baseline: plain kernel bridge.
ip -n "${P}mid" link add name br0 type bridge
ip netns exec "${P}mid" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 2>/dev/null || true
NF4=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo absent)
NF6=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-ip6tables 2>/dev/null || echo absent)
ip -n "${P}mid" link set dev a master br0
ip -n "${P}mid" link set dev b master br0
ip -n "${P}mid" link set br0 up
sleep 1
BRIDGE=$(measure "kernel bridge")
BRIDGE_TCP=$(measure_tcp "kernel bridge")
ip -n "${P}mid" link del dev br0

# The gateway: the userspace plane with each frame I/O, then the nftables plane; and, for scale,
# a hand-written nft ruleset of the same policy on a plain bridge ("hand": conntrack via
# br_netfilter, `ct state established,related accept`, the blocklist as one interval set, then
# the two accept rules; no anti-spoofing, no counters, no limit).
declare -A GW GWTCP
NFT_NF4="-" NFT_NF6="-"
hand_ruleset() {
    local n=$1
    python3 - "$n" <<'PY'
import ipaddress, sys
n = int(sys.argv[1])
nets = ", ".join(f"{ipaddress.IPv4Address(0x0B000000 + i * 512)}/24" for i in range(n)) or "192.0.2.255"
print("table inet hand {\n  set blocked { type ipv4_addr; flags interval; elements = { %s } }" % nets)
print("  chain forward_filter { type filter hook forward priority 0; policy drop;")
print("    ct state established,related accept")
print("    ip saddr @blocked drop")
print("    ip saddr 198.51.100.101 ip daddr 198.51.100.50 udp dport 9 accept")
print("    ip saddr 198.51.100.101 ip daddr 198.51.100.50 tcp dport 5201 accept")
print("  }\n}")
PY
}
for N in $PREFIXES; do
  for IO in $PLANES; do
    rm -f "$WORK/ctl.sock"
    if [ "$IO" = nft ] || [ "$IO" = hand ]; then
        # The kernel plane refuses to start without br_netfilter's hooks (see nft/mod.rs).
        ip netns exec "${P}mid" sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
        NFT_NF4=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-iptables)
        NFT_NF6=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-ip6tables)
    fi
    if [ "$IO" = hand ]; then
        hand_ruleset "$N" | ip netns exec "${P}mid" nft -f -
        ip -n "${P}mid" link add name br0 type bridge
        ip -n "${P}mid" link set dev a master br0
        ip -n "${P}mid" link set dev b master br0
        ip -n "${P}mid" link set br0 up
        sleep 1
        profile "$IO-$N"
        GW[$IO/$N]=$(measure "hand-written nft ruleset, $N prefixes")
        GWTCP[$IO/$N]=$(measure_tcp "hand-written nft ruleset, $N prefixes")
        ip -n "${P}mid" link del dev br0
        ip netns exec "${P}mid" nft delete table inet hand
        continue
    fi
    if [ "$IO" = nft ]; then
        PLANE_ARGS=(--dataplane nftables)
        LABEL="nftables"
    else
        PLANE_ARGS=(--io "$IO")
        LABEL="userspace ($IO)"
    fi
    ip netns exec "${P}mid" "$BIN" run --rules "$WORK/rules-$N.yaml" --outside a --inside b "${PLANE_ARGS[@]}" \
        --metrics 127.0.0.1:9108 --ctl "$WORK/ctl.sock" 2>"$WORK/gw-$IO-$N.log" &
    GW_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/ctl.sock" ] && break; sleep 0.1; done
    sleep 1
    kill -0 "$GW_PID" || { cat "$WORK/gw-$IO-$N.log" >&2; exit 1; }
    profile "$IO-$N"
    GW[$IO/$N]=$(measure "stockade-gateway $LABEL, $N prefixes")
    GWTCP[$IO/$N]=$(measure_tcp "stockade-gateway $LABEL, $N prefixes")
    METRICS=$(ip netns exec "${P}mid" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9108; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
        grep -E '^stockade_gateway_(drops_total\{reason="(no_rule|checksum|invalid_state|malformed|kernel_other)"|decision_seconds_(sum|count))' || true)
    echo "$IO/$N: $(echo "$METRICS" | tr '\n' ' ')" >&2
    kill "$GW_PID"; wait "$GW_PID" || true; GW_PID=""
  done
done

echo
echo "64-byte UDP, one flow, trafgen on CPU 0, rx over ${SECS} s, median of ${RUNS}; receiver: $SINK"
echo "bridge-nf-call-iptables=$NF4 bridge-nf-call-ip6tables=$NF6 (baseline bridge and userspace runs, in the bridge's namespace)"
echo "bridge-nf-call-iptables=$NFT_NF4 bridge-nf-call-ip6tables=$NFT_NF6 (nftables plane and hand-written runs)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kernel bridge: $BRIDGE pps; TCP (iperf3, ${SECS} s, median of ${TCP_RUNS}) ${BRIDGE_TCP} Mbit/s"
printf '%-10s %9s %12s %8s %12s %8s\n' plane prefixes "UDP pps" "vs br" "TCP Mbit/s" "vs br"
for N in $PREFIXES; do
    for IO in $PLANES; do
        awk -v io="$IO" -v n="$N" -v g="${GW[$IO/$N]}" -v b="$BRIDGE" -v t="${GWTCP[$IO/$N]}" -v bt="$BRIDGE_TCP" \
            'BEGIN { printf "%-10s %9d %12d %7.2fx %12d %7.2fx\n", io, n, g, (b > 0 ? g / b : 0), t, (bt > 0 ? t / bt : 0) }'
    done
done
