#!/usr/bin/env bash
# Applying and re-applying a 100k-prefix ruleset on both data planes (userspace, nftables), and
# the established connections a live reload loses.
#
#   gateway/bench/reapply.sh [RUNS]      (root; default 3 runs of each plane)
#
# Topology (all in namespaces prefixed sgwr<pid>-, removed on exit; nothing in the root one):
#   tx (198.51.100.101) ── a ┤ mid: stockade-gateway ├ b ── rx (198.51.100.50)
# The userspace plane reads the ports with packet sockets (default --io); the nftables plane
# (--dataplane nftables, bridge-nf-call-ip{,6}tables=1 set in mid) bridges them itself. Fresh
# namespaces for every (plane, run).
#
# Rules (gen_prefixes.py, fixed seed): a set `blocklist` of 100,000 pseudo-random IPv4 /16../32
# prefixes (disjoint, non-adjacent, never touching 198.51.100.0/24 or the other documentation
# networks) is the source of a DROP rule placed BEFORE the rule that admits the benchmark's TCP
# flow (tx -> rx:7000). The prefixes are data only; no traffic goes to them. Edits, applied in
# this order by renaming a complete file over the watched rules file:
#   1%       1,000 prefixes of the set replaced by fresh ones
#   50%      50,000 prefixes of the set replaced by fresh ones
#   control  the admitting rule removed (its connections must be revoked: shows loss is seen)
#
# Per (plane, run):
# * apply: "log" = nftables: took_ms of "nftables ruleset applied" (compile + nft apply);
#   userspace: time from launch to its "userspace plane forwarding" line (includes loading and
#   checking the file). "outside" = launch to the first TCP connect through the gateway (a new
#   connect every 10 ms from tx; static neighbours, so no ARP in the way).
# * re-apply, per edit: "log" = nftables: apply_ms/total_ms of "nftables ruleset re-applied"
#   (total adds the conntrack revocation pass); userspace: took_us of "rules reloaded" (parse,
#   check, compile, swap, revocation). "outside" = from the rename until a scrape of --metrics
#   shows stockade_gateway_rules_reloads_total{result="ok"} grown (scraped every POLL_MS; includes
#   the watcher's 250 ms debounce and the scrape that saw it). Caveat, nftables plane: a scrape
#   there runs `nft list counters` twice, which with a 100k-element set takes ~2 s, under the
#   plane's lock, so a scrape in flight delays the reload's apply (apply_ms includes the wait)
#   and the outside figure has ~2 s resolution. WATCH=0 leaves the metrics alone during reloads.
# * connections: CONNS (200) TCP connections tx -> rx:7000 opened before each edit, each sending a
#   16-byte request every PERIOD_MS (20) ms that rx echoes, kept up BEFORE_S (1) s before the
#   edit and AFTER_S (3) s after the reload was seen. Lost = error, reset, EOF or no reply within
#   2 s. Stall = the longest wait for a reply, on any connection, after the rename (the same
#   figure before it is the baseline, in the details). Control: lost should be CONNS and
#   stockade_gateway_flows_revoked_total should grow by at least CONNS.
# Output: a markdown table (every run, then the median per plane) and the details per run.
# Env: PLANES ("userspace nft"; also ring|batched|pnet = userspace with that --io), CONNS,
# PERIOD_MS, BEFORE_S, AFTER_S, POLL_MS, RELOAD_TIMEOUT (s, default 60), COUNT (100000),
# LOGDIR (keep the gateway logs and per-phase results there; kept in /tmp anyway on failure),
# WATCH=0 (no scraping during the reload: only the log figures, undisturbed; see the notes).
# Needs: iproute2, ethtool, nft, python3 (standard library), a release build (built if missing).
set -euo pipefail

RUNS=${1:-3}
PLANES=${PLANES:-userspace nft}
CONNS=${CONNS:-200}
PERIOD_MS=${PERIOD_MS:-20}
BEFORE_S=${BEFORE_S:-1}
AFTER_S=${AFTER_S:-3}
POLL_MS=${POLL_MS:-20}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-60}
COUNT=${COUNT:-100000}
WATCH=${WATCH:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${STOCKADE_GATEWAY_BIN:-$ROOT/target/release/stockade-gateway}
FLOWS=$HERE/flows.py
P="sgwr$$-"
WORK=$(mktemp -d)
GW_PID=""
BG_PIDS=()

TX_IP=198.51.100.101
RX_IP=198.51.100.50
MAC_TX=02:00:c6:33:64:65
MAC_RX=02:00:c6:33:64:32
PORT=7000
URL=http://127.0.0.1:9108/metrics

case "$RUNS" in '' | *[!0-9]* | 0) echo "usage: $0 [RUNS]" >&2; exit 2 ;; esac

log() { echo "[reapply $(date +%T)] $*" >&2; }

stop_gateway() {
    [ -n "$GW_PID" ] || return 0
    kill "$GW_PID" 2>/dev/null || true
    local i
    for i in $(seq "${STOP_WAIT:-300}"); do
        kill -0 "$GW_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$GW_PID" 2>/dev/null; then
        log "gateway $GW_PID did not stop within $((${STOP_WAIT:-300} / 10)) s; killing it"
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
}

kill_bg() {
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    BG_PIDS=()
}

teardown() {
    stop_gateway
    kill_bg
    local n
    # Anything still running in this script's own namespaces, by pid.
    for n in tx mid rx; do ip netns pids "${P}$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    for n in tx mid rx; do ip netns del "${P}$n" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    teardown
    # The gateway logs and per-phase results survive a failure (or always, with LOGDIR set).
    if [ -n "${LOGDIR:-}" ] || [ "$rc" != 0 ]; then
        local keep=${LOGDIR:-/tmp/sgwr$$-logs}
        mkdir -p "$keep"
        (cd "$WORK" && find . -path ./gen -prune -o -path ./stage -prune -o -path ./rules -prune \
            -o -type f -print0 | xargs -0r cp --parents -t "$keep") 2>/dev/null || true
        echo "logs kept in $keep" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for t in ip ethtool nft python3 timeout; do
    command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && flock /tmp/stockade-cargo.lock cargo build --release -p stockade-gateway) >&2
fi
# Run a private copy: a rebuild by someone else during the run must not change the binary.
BIN_INFO="$BIN (built $(date -r "$BIN" '+%F %T'), sha256 $(sha256sum "$BIN" | cut -c1-12)); HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?), uncommitted files under gateway/src: $(git -C "$ROOT" status --porcelain -- gateway/src 2>/dev/null | wc -l)"
cp "$BIN" "$WORK/stockade-gateway"
BIN=$WORK/stockade-gateway

# ---------------------------------------------------------------------------------------------
# helpers

now() { date +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 + 0.5 }'; }
# Epoch seconds of a log line's RFC 3339 timestamp.
line_epoch() { date -d "$(awk '{ print $1 }' <<<"$1")" +%s.%N; }
# The value of key=value in a log line.
field() { sed -n -e "s/.* $2=\"\\([^\"]*\\)\".*/\\1/p;t" -e "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<"$1"; }
# The last line of the gateway log containing $1 (without colour codes).
last_line() { sed 's/\x1b\[[0-9;]*m//g' "$GW_LOG" | grep -F "$1" | tail -n 1 || true; }
count_lines() { sed 's/\x1b\[[0-9;]*m//g' "$GW_LOG" | grep -cF "$1" || true; }
jget() {
    python3 - "$1" "$2" <<'PY'
import json, sys
try:
    v = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    v = None
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else (json.dumps(v) if isinstance(v, dict) else v))
PY
}
# Waits up to $2 s for file $1; gives up early when pid $3 (optional) has exited.
wait_file() {
    local end=$((SECONDS + $2))
    while [ ! -s "$1" ]; do
        [ "$SECONDS" -lt "$end" ] || return 1
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then sleep 0.1; [ -s "$1" ]; return; fi
        sleep 0.05
    done
}
# Waits up to $3 s until the gateway log has more than $2 lines containing $1.
wait_log() {
    local end=$((SECONDS + $3))
    while [ "$(count_lines "$1")" -le "$2" ]; do
        [ "$SECONDS" -lt "$end" ] || return 1
        kill -0 "$GW_PID" 2>/dev/null || return 1
        sleep 0.05
    done
}
setup() {
    local n i
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
    ip -n "${P}tx" addr add $TX_IP/24 dev eth0
    ip -n "${P}rx" addr add $RX_IP/24 dev eth0
    # Static neighbours: the connect probe measures the plane, not ARP's retry timers.
    ip -n "${P}tx" neigh replace $RX_IP lladdr $MAC_RX dev eth0 nud permanent
    ip -n "${P}rx" neigh replace $TX_IP lladdr $MAC_TX dev eth0 nud permanent
    for i in a b; do
        ip netns exec "${P}mid" ethtool -K $i gro off gso off tso off >/dev/null
        ip -n "${P}mid" link set dev $i up
    done
}

# ---------------------------------------------------------------------------------------------
# rules files

log "generating $COUNT prefixes (gen_prefixes.py, fixed seed)"
mkdir -p "$WORK/gen"
python3 "$HERE/gen_prefixes.py" "$WORK/gen" --count "$COUNT" --client $TX_IP \
    --client-mac $MAC_TX --stock $RX_IP --port $PORT >"$WORK/gen/stats.json"
for f in base edit1 edit50 control; do
    rc=0
    "$BIN" check "$WORK/gen/$f.yaml" >"$WORK/check-$f.txt" 2>&1 || rc=$?
    if [ "$rc" -ge 2 ]; then cat "$WORK/check-$f.txt" >&2; exit 1; fi
done
mkdir -p "$WORK/rules" "$WORK/stage"

# ---------------------------------------------------------------------------------------------
# one (plane, run)

declare -A R
FAILED=0

# One edit while CONNS connections run: $1 plane label, $2 run, $3 phase name, $4 file.
phase() {
    local key="$1,$2,$3" file=$4 d="$WORK/$1-$2-$3"
    mkdir -p "$d"
    timeout $((RELOAD_TIMEOUT + 120)) ip netns exec "${P}tx" python3 "$FLOWS" client --host $RX_IP \
        --port $PORT --conns "$CONNS" --period "$(awk -v p="$PERIOD_MS" 'BEGIN { print p / 1000 }')" \
        --lost-after 2 --ready "$d/ready" --stop "$d/stop" --mark "$d/mark" \
        --max-seconds $((RELOAD_TIMEOUT + 60)) >"$d/client.json" 2>"$d/client.err" &
    local cpid=$!
    BG_PIDS+=("$cpid")
    if ! wait_file "$d/ready" 30 "$cpid"; then
        log "$key: client setup failed: $(cat "$d/client.json" "$d/client.err" 2>/dev/null | tail -n 3)"
        R[$key,lost]="setup-failed"
        FAILED=1
        touch "$d/stop"
        wait "$cpid" 2>/dev/null || true
        return 0
    fi
    local wpid=""
    if [ "$WATCH" = 1 ]; then
        timeout $((RELOAD_TIMEOUT + 30)) ip netns exec "${P}mid" python3 "$FLOWS" watch --url $URL \
            --ready "$d/watch-ready" --every "$(awk -v p="$POLL_MS" 'BEGIN { print p / 1000 }')" \
            --timeout "$RELOAD_TIMEOUT" >"$d/watch.json" 2>"$d/watch.err" &
        wpid=$!
        BG_PIDS+=("$wpid")
        wait_file "$d/watch-ready" 20 "$wpid" || { log "$key: metrics watcher did not start"; FAILED=1; }
    else
        ip netns exec "${P}mid" python3 "$FLOWS" metrics --url $URL >"$d/before.json" 2>/dev/null || true
    fi
    local reloaded_before reapplied_before
    reloaded_before=$(count_lines "rules reloaded")
    reapplied_before=$(count_lines "nftables ruleset re-applied")
    cp "$WORK/gen/$file.yaml" "$WORK/stage/rules.yaml"
    sleep "$BEFORE_S"

    local t_rename
    t_rename=$(now)
    echo "$t_rename" >"$d/mark"
    mv "$WORK/stage/rules.yaml" "$WORK/rules/rules.yaml"

    local seen result
    if [ "$WATCH" = 1 ]; then
        wait "$wpid" || true
        seen=$(jget "$d/watch.json" seen)
        result=$(jget "$d/watch.json" result)
        R[$key,revoked_before]=$(jget "$d/watch.json" before.revoked)
        R[$key,scrapes]="$(jget "$d/watch.json" scrapes) scrapes, longest $(jget "$d/watch.json" longest_scrape_ms) ms"
    else
        # No scraping while the reload runs: wait for its log line instead (no outside figure).
        if wait_log "rules reloaded" "$reloaded_before" "$RELOAD_TIMEOUT"; then
            result=ok seen="" R[$key,out]="-"
        else
            result=timeout seen=""
        fi
        R[$key,revoked_before]=$(jget "$d/before.json" revoked)
    fi
    if [ "$WATCH" = 0 ] && [ "$result" = ok ]; then
        :
    elif [ "$result" = ok ] && [ -n "$seen" ]; then
        R[$key,out]=$(ms_between "$t_rename" "$seen")
    else
        if [ "$result" = timeout ]; then R[$key,out]=">$((RELOAD_TIMEOUT * 1000))"; else R[$key,out]="${result:-none}"; fi
        log "$key: reload not seen as ok within ${RELOAD_TIMEOUT} s: $(cat "$d/watch.json" "$d/watch.err" 2>/dev/null | tail -n 3)"
        FAILED=1
        STUCK=1
    fi
    sleep "$AFTER_S"
    touch "$d/stop"
    wait "$cpid" || true
    R[$key,lost]=$(jget "$d/client.json" lost)
    R[$key,reasons]=$(jget "$d/client.json" lost_reasons)
    R[$key,first_loss]=$(jget "$d/client.json" first_loss_ms_after_mark)
    R[$key,stall]=$(jget "$d/client.json" stall_after_ms)
    R[$key,stall_at]=$(jget "$d/client.json" stall_after_at_ms)
    R[$key,stall_base]=$(jget "$d/client.json" stall_before_ms)
    R[$key,replies_after]=$(jget "$d/client.json" replies_after_mark)
    [ -n "${R[$key,lost]}" ] || { log "$key: no client summary: $(tail -n 3 "$d/client.err")"; R[$key,lost]="?"; FAILED=1; }
    if [ "$STUCK" = 1 ]; then
        # The reload still holds the plane: no scrape would answer, no log line will come.
        R[$key,revoked]="?" R[$key,took]="-" R[$key,debounce]="-" R[$key,apply]="-" R[$key,total]="-"
        log "$key: reload unfinished after ${RELOAD_TIMEOUT} s; lost ${R[$key,lost]}/$CONNS ${R[$key,reasons]}, stall ${R[$key,stall]} ms (baseline ${R[$key,stall_base]})"
        return 0
    fi
    ip netns exec "${P}mid" python3 "$FLOWS" metrics --url $URL >"$d/metrics.json" 2>/dev/null || true
    local rv_after
    rv_after=$(jget "$d/metrics.json" revoked)
    if [ -n "$rv_after" ] && [ -n "${R[$key,revoked_before]}" ]; then
        R[$key,revoked]=$((rv_after - R[$key,revoked_before]))
    else
        R[$key,revoked]="?"
    fi

    # The log lines of this reload.
    local line
    if wait_log "rules reloaded" "$reloaded_before" 10; then
        line=$(last_line "rules reloaded")
        R[$key,took]=$(awk -v u="$(field "$line" took_us)" 'BEGIN { printf "%d", u / 1000 + 0.5 }')
        R[$key,debounce]=$(ms_between "$t_rename" "$(line_epoch "$line")")
    else
        R[$key,took]="-"
        R[$key,debounce]="-"
    fi
    R[$key,apply]="-"
    R[$key,total]="-"
    if [ "$1" = nft ] && wait_log "nftables ruleset re-applied" "$reapplied_before" 2; then
        line=$(last_line "nftables ruleset re-applied")
        R[$key,apply]=$(field "$line" apply_ms)
        R[$key,revia]=$(field "$line" via)
        R[$key,total]=$(field "$line" total_ms)
    fi
    log "$key: outside ${R[$key,out]} ms, log took ${R[$key,took]} ms (nft apply ${R[$key,apply]} total ${R[$key,total]}), lost ${R[$key,lost]}/$CONNS ${R[$key,reasons]}, stall ${R[$key,stall]} ms (baseline ${R[$key,stall_base]}), revoked +${R[$key,revoked]}"
}

# Fresh namespaces and a gateway started on base.yaml, then one edit: $1 plane, $2 run, $3 phase,
# $4 edited file.
one_phase() {
    local plane=$1 run=$2 key="$1,$2,$3"
    local args=()
    setup
    case "$plane" in
    nft)
        ip netns exec "${P}mid" sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
        args=(--dataplane nftables)
        ;;
    userspace) ;;
    *) args=(--io "$plane") ;;
    esac
    timeout 36000 ip netns exec "${P}rx" python3 "$FLOWS" server --port $PORT 2>"$WORK/server.err" &
    BG_PIDS+=("$!")
    local end=$((SECONDS + 10))
    until ip netns exec "${P}rx" ss -Hltn "sport = :$PORT" | grep -q .; do
        [ "$SECONDS" -lt "$end" ] || { log "echo server did not start: $(cat "$WORK/server.err")"; exit 1; }
        sleep 0.05
    done
    cp "$WORK/gen/base.yaml" "$WORK/rules/rules.yaml"
    GW_LOG="$WORK/gw-$plane-$run-$3.log"

    # The probe runs first (a new connect every 10 ms); then the gateway is launched.
    timeout 100 ip netns exec "${P}tx" python3 "$FLOWS" probe --host $RX_IP --port $PORT \
        --timeout 90 >"$WORK/probe" 2>/dev/null &
    local ppid=$!
    BG_PIDS+=("$ppid")
    sleep 0.5
    local t0
    t0=$(now)
    NO_COLOR=1 ip netns exec "${P}mid" "$BIN" run --rules "$WORK/rules/rules.yaml" --outside a \
        --inside b "${args[@]}" --metrics 127.0.0.1:9108 --ctl "$WORK/ctl.sock" 2>"$GW_LOG" &
    GW_PID=$!
    wait "$ppid" || true
    local fwd
    fwd=$(cat "$WORK/probe")
    if [ -z "$fwd" ] || ! kill -0 "$GW_PID" 2>/dev/null; then
        log "$key: nothing crossed the gateway within 90 s"
        tail -n 20 "$GW_LOG" >&2
        exit 1
    fi
    R[$key,start_out]=$(ms_between "$t0" "$fwd")
    local what=userspace
    [ "$plane" != nft ] || what=nftables
    wait_log "$what plane forwarding" 0 30 || { log "$key: no forwarding log line"; tail -n 20 "$GW_LOG" >&2; exit 1; }
    if [ "$plane" = nft ]; then
        local line
        line=$(last_line "nftables ruleset applied")
        R[$key,start_log]=$(field "$line" took_ms)
        R[$key,elements]=$(field "$line" set_elements)
        R[$key,via]=$(field "$line" via)
    else
        R[$key,start_log]=$(ms_between "$t0" "$(line_epoch "$(last_line "userspace plane forwarding")")")
    fi
    # Metrics up before the edit.
    end=$((SECONDS + 30))
    local s0
    s0=$(now)
    until ip netns exec "${P}mid" python3 "$FLOWS" metrics --url $URL >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || { log "$key: metrics endpoint not answering"; exit 1; }
        sleep 0.2
        s0=$(now)
    done
    # One scrape of the idle gateway, timed (python's start-up included).
    R[$key,scrape_ms]=$(ms_between "$s0" "$(now)")
    log "$key: applied: log ${R[$key,start_log]} ms, outside ${R[$key,start_out]} ms"

    STUCK=0
    phase "$plane" "$run" "$3" "$4"
    R[$key,load]=$(cut -d' ' -f1-3 /proc/loadavg)
    R[$key,reload_errors]=$(count_lines "rules reload refused")
    if [ "${R[$key,reload_errors]}" != 0 ]; then
        log "$key: refused reloads in the log:"; grep -F "rules reload refused" "$GW_LOG" | tail -n 3 >&2
    fi
    # A reload still running holds the plane's lock, so the gateway cannot stop cleanly.
    STOP_WAIT=300
    [ "$STUCK" = 0 ] || STOP_WAIT=50
    teardown
    STOP_WAIT=300
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "planes: $PLANES; runs: $RUNS; $CONNS connections every $PERIOD_MS ms"
for run in $(seq "$RUNS"); do
    for plane in $PLANES; do
        log "== $plane, run $run"
        one_phase "$plane" "$run" 1pct edit1
        one_phase "$plane" "$run" 50pct edit50
        one_phase "$plane" "$run" control control
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# report

v() { local x=${R[$1]:-}; echo "${x:--}"; }
relog() { # the re-apply "log" cell of $1=plane,run,phase
    if [ "${1%%,*}" = nft ]; then echo "$(v "$1,apply")/$(v "$1,total")"; else v "$1,took"; fi
}
# Median of stdin's values; ">N" (a wait that timed out at N) counts as longer than any number.
median() {
    local vals bound
    vals=$(awk '$1 ~ /^>?-?[0-9]+(\.[0-9]+)?$/')
    bound=$(sed -n 's/^>//p' <<<"$vals" | sort -g | head -n 1)
    # shellcheck disable=SC2001 # per line, anchored
    sed 's/^>.*/1e18/' <<<"$vals" | sort -g | awk -v bound="$bound" '
        NF { a[++n] = $1 } END { if (!n) { print "-"; exit }
            m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            if (m >= 1e17) print ">" bound; else printf "%d\n", m + 0.5 }'
}
# The median over runs (and over the three gateway starts of a run for start_*) of R[...].
med() { # $1 plane, $2 field (phase,field or start_*), $3 run (optional: only that run)
    local r ph runs
    runs=${3:-$(seq "$RUNS")}
    for r in $runs; do
        case "$2" in
        start_*) for ph in 1pct 50pct control; do v "$1,$r,$ph,$2"; done ;;
        *) v "$1,$r,$2" ;;
        esac
    done | median
}
row() { # $1 plane, $2 run number or "median"
    local p=$1 r=$2 runs="" relog1 relog50
    [ "$r" = median ] || runs=$r
    if [ "$p" = nft ]; then
        relog1="$(med nft 1pct,apply "$runs")/$(med nft 1pct,total "$runs")"
        relog50="$(med nft 50pct,apply "$runs")/$(med nft 50pct,total "$runs")"
    else
        relog1=$(med "$p" 1pct,took "$runs")
        relog50=$(med "$p" 50pct,took "$runs")
    fi
    printf '| %s | %s | %s / %s | %s / %s | %s/%s | %s | %s / %s | %s/%s | %s | %s/%s, +%s |\n' \
        "$p" "$r" "$(med "$p" start_log "$runs")" "$(med "$p" start_out "$runs")" \
        "$relog1" "$(med "$p" 1pct,out "$runs")" "$(med "$p" 1pct,lost "$runs")" "$CONNS" "$(med "$p" 1pct,stall "$runs")" \
        "$relog50" "$(med "$p" 50pct,out "$runs")" "$(med "$p" 50pct,lost "$runs")" "$CONNS" "$(med "$p" 50pct,stall "$runs")" \
        "$(med "$p" control,lost "$runs")" "$CONNS" "$(med "$p" control,revoked "$runs")"
}

echo
echo "Re-applying a 100k-prefix ruleset live: $COUNT IPv4 prefixes (/16../32, seed-fixed, disjoint) in set"
echo "\`blocklist\`, the source of a DROP rule placed before the accept rule of the measured flow"
echo "(tx 198.51.100.101 -> rx 198.51.100.50:$PORT). Edits in order: 1% of the set replaced, 50% replaced,"
echo "control (accept rule removed). $CONNS TCP connections, one 16-byte echo every $PERIOD_MS ms each,"
echo "running ${BEFORE_S} s before each edit and ${AFTER_S} s after the reload was seen; lost = error/reset/EOF/no reply in 2 s."
echo "planes: $PLANES (userspace = default --io); runs: $RUNS"
echo "binary: $BIN_INFO (copied at the start and run from the copy)"
echo "kernel $(uname -r); $(nft --version); $(python3 --version); $(nproc) CPUs"
echo "load average: at start $LOAD_START; at the end $LOAD_END"
echo
echo "| plane | run | apply ms (log / outside) | re-apply 1% ms (log / outside) | 1%: lost | 1%: stall ms | re-apply 50% ms (log / outside) | 50%: lost | 50%: stall ms | control: lost, revoked |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for plane in $PLANES; do
    for run in $(seq "$RUNS"); do row "$plane" "$run"; done
done
for plane in $PLANES; do row "$plane" median; done
echo
echo "apply log: nft = took_ms of \"nftables ruleset applied\"; userspace = launch -> \"userspace plane forwarding\" line."
echo "apply outside: launch -> first TCP connect through the gateway (new connect every 10 ms)."
echo "re-apply log: nft = apply_ms/total_ms of \"nftables ruleset re-applied\"; userspace = took_us of \"rules reloaded\"."
echo "re-apply outside: rename of the edited file -> stockade_gateway_rules_reloads_total{result=\"ok\"} grown"
echo "  (scraped every ${POLL_MS} ms, back to back when a scrape takes longer; includes the reloader's 250 ms debounce"
echo "  and the duration of the scrape that saw it; the scrape times are in the details)."
echo "stall: longest wait for a reply on any connection from the rename to the end of the phase."
echo "control: connections lost, and growth of stockade_gateway_flows_revoked_total over that phase."
echo
echo "Details per run (each edit on a gateway freshly started on the base file, in fresh namespaces):"
for plane in $PLANES; do
    for run in $(seq "$RUNS"); do
        for ph in 1pct 50pct control; do
            k="$plane,$run,$ph"
            echo "- $plane run $run, $ph: start: apply log $(v "$k,start_log") ms, outside $(v "$k,start_out") ms$([ "$plane" = nft ] && echo ", set elements $(v "$k,elements")$([ -n "${R[$k,via]:-}" ] && echo ", via ${R[$k,via]}")"); re-apply: \"rules reloaded\" took $(v "$k,took") ms, logged $(v "$k,debounce") ms after the rename$([ "$plane" = nft ] && echo ", nft apply_ms $(v "$k,apply") total_ms $(v "$k,total")$([ -n "${R[$k,revia]:-}" ] && echo " via ${R[$k,revia]}")"), outside $(v "$k,out") ms; lost $(v "$k,lost")/$CONNS $(v "$k,reasons"), first loss $(v "$k,first_loss") ms after the rename; stall $(v "$k,stall") ms (its request sent $(v "$k,stall_at") ms after the rename; before the rename $(v "$k,stall_base") ms); replies after the rename $(v "$k,replies_after"); flows revoked +$(v "$k,revoked"); metrics: idle scrape $(v "$k,scrape_ms") ms, during the wait $(v "$k,scrapes"); refused reloads $(v "$k,reload_errors"); load $(v "$k,load")"
        done
    done
done
echo "prefix lengths (base set): $(jget "$WORK/gen/stats.json" lengths_base)"
if [ "$FAILED" != 0 ]; then
    echo "SOME MEASUREMENTS FAILED (see the log above and the cells marked timeout/?)." >&2
    exit 1
fi
