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
#   admits the flow (UDP 198.51.100.101 -> 198.51.100.50:9). PLANES="batched ring pnet nft"
#   selects which gateway runs happen (default: all).
# * One 64-byte UDP flow from trafgen (netsniff-ng) pinned to CPU 0; the receiver drops it at
#   prerouting (nftables; tc ingress drop if nft is missing) so no ICMP errors come back.
# * Figure: rx packets of the receiver's port over SECONDS, median of RUNS runs.
# Needs: iproute2, ethtool, trafgen, nft (or tc), a release build (built here if missing).
set -euo pipefail

RUNS=${1:-5}
SECS=${2:-8}
TCP_RUNS=${TCP_RUNS:-3}
PLANES=${PLANES:-batched ring pnet nft}
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
    cat > "$WORK/rules.yaml" <<'YAML'
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

# The gateway: the userspace plane with each frame I/O, then the nftables plane.
declare -A GW GWTCP
NFT_NF4="-" NFT_NF6="-"
for IO in $PLANES; do
    rm -f "$WORK/ctl.sock"
    if [ "$IO" = nft ]; then
        # The kernel plane refuses to start without br_netfilter's hooks (see nft/mod.rs).
        ip netns exec "${P}mid" sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
        NFT_NF4=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-iptables)
        NFT_NF6=$(ip netns exec "${P}mid" cat /proc/sys/net/bridge/bridge-nf-call-ip6tables)
        PLANE_ARGS=(--dataplane nftables)
        LABEL="nftables"
    else
        PLANE_ARGS=(--io "$IO")
        LABEL="userspace ($IO)"
    fi
    ip netns exec "${P}mid" "$BIN" run --rules "$WORK/rules.yaml" --outside a --inside b "${PLANE_ARGS[@]}" \
        --metrics 127.0.0.1:9108 --ctl "$WORK/ctl.sock" 2>"$WORK/gw-$IO.log" &
    GW_PID=$!
    for _ in $(seq 50); do [ -S "$WORK/ctl.sock" ] && break; sleep 0.1; done
    sleep 1
    kill -0 "$GW_PID" || { cat "$WORK/gw-$IO.log" >&2; exit 1; }
    GW[$IO]=$(measure "stockade-gateway $LABEL")
    GWTCP[$IO]=$(measure_tcp "stockade-gateway $LABEL")
    METRICS=$(ip netns exec "${P}mid" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9108; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
        grep -E '^stockade_gateway_(drops_total\{reason="(no_rule|checksum|invalid_state|malformed|kernel_other)"|decision_seconds_(sum|count))' || true)
    echo "$IO: $(echo "$METRICS" | tr '\n' ' ')" >&2
    kill "$GW_PID"; wait "$GW_PID" || true; GW_PID=""
done

echo
echo "64-byte UDP, one flow, trafgen on CPU 0, rx over ${SECS} s, median of ${RUNS}; receiver: $SINK"
echo "bridge-nf-call-iptables=$NF4 bridge-nf-call-ip6tables=$NF6 (baseline bridge and userspace runs, in the bridge's namespace)"
echo "bridge-nf-call-iptables=$NFT_NF4 bridge-nf-call-ip6tables=$NFT_NF6 (nftables plane run)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kernel bridge:                       $BRIDGE pps"
for IO in $PLANES; do
    awk -v io="$IO" -v g="${GW[$IO]}" -v b="$BRIDGE" \
        'BEGIN { printf "stockade-gateway (%-7s):          %d pps = %.2fx of the bridge\n", io, g, (b > 0 ? g / b : 0) }'
done
echo "TCP (iperf3, ${SECS} s, median of ${TCP_RUNS}): kernel bridge ${BRIDGE_TCP} Mbit/s"
for IO in $PLANES; do
    awk -v io="$IO" -v g="${GWTCP[$IO]}" -v b="$BRIDGE_TCP" \
        'BEGIN { printf "TCP stockade-gateway (%-7s):      %d Mbit/s = %.2fx of the bridge\n", io, g, (b > 0 ? g / b : 0) }'
done
