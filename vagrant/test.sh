#!/usr/bin/env bash
# Stockade as Vagrant VMs, booted for real (vagrant-libvirt, under KVM or TCG emulation).
#
#   bash vagrant/test.sh [--dataplane userspace|nftables] [--keep] [--bin-dir DIR] [--debs DIR]
#   bash vagrant/test.sh --smoke [--vm stock1] [--bin-dir DIR] [--debs DIR]
#
# --debs DIR provisions the daemons from the Debian packages in DIR (packaging/test.sh leaves
# them in target/debian, built from target/release: pass --bin-dir target/release with it), so
# the VMs run the packages' own units, users and paths; without it the binaries are copied in.
#
# Without --smoke: every VM of topology.json (issue 14). They boot and are provisioned; the
# monitor VM's Prometheus sees every target up; the no-bypass attempts run from every client and
# service VM on every NIC (TCP, UDP, ICMP to every address of the stock VMs; payload forged into
# a client's own push connection, held open, out of every NIC, with tcpdump on every NIC of the
# stock VM and `ss -tin` as evidence); a stock VM is rebooted and comes back with its guard
# before its daemon, and the attempts run again. --keep leaves the VMs up (vagrant/README.md);
# --stop-after STEP (boot, provision, targets, story, bypass) stops there and leaves them up.
#
# --smoke brings up one VM of the topology from the box of vagrant/box/build.sh, provisions it,
# checks that its daemon answers on its address (a metrics scrape over mutual TLS), then
# destroys it and checks that no domain, network or volume is left. Steps:
#   packages  install libvirt, qemu, vagrant and vagrant-libvirt from Debian's packages
#   box       build the box (cached in /var/cache/stockade-vagrant) and add it to Vagrant
#   accel     KVM when a test boot shows it works, TCG emulation otherwise
#   libvirt   start libvirt's daemons when they are not running (stopped again at the end)
#   networks  stockade-lab renders the VMs' files and chooses documentation /28s for the
#             host-joined networks, checked against this machine's routes before anything exists
#   boot      vagrant up --no-provision
#   glibc     no binary needs a GLIBC_ version newer than the box's libc6
#   provision vagrant provision (vagrant/provision.sh)
#   check     the daemon answers; the stock VM's guard is loaded
#   destroy   vagrant destroy, and nothing left behind
# A failure names the VM, the step and prints the last lines of its console or provision log,
# then destroys what was made. Ctrl-C cleans up the same way. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=vagrant/lib.sh
. "$here/lib.sh"

mode=full
vm=${STOCKADE_SMOKE_VM:-stock1}
bin_dir=""
debs=""
dataplane=""
keep=false
stop_after=""
usage="usage: test.sh [--dataplane userspace|nftables] [--keep | --stop-after STEP] [--bin-dir DIR] [--debs DIR] | test.sh --smoke [--vm NAME] [--bin-dir DIR] [--debs DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) mode=smoke ;;
    --vm) vm=${2:?--vm NAME}; shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir DIR}; shift ;;
    --debs) debs=$(cd "${2:?--debs DIR}" && pwd); shift ;;
    --dataplane) dataplane=${2:?--dataplane userspace|nftables}; shift ;;
    --keep) keep=true ;;
    --stop-after) stop_after=${2:?--stop-after STEP}; keep=true; shift ;;
    *) die "$usage" ;;
  esac
  shift
done
case "$dataplane" in "" | userspace | nftables) ;; *) die "--dataplane: userspace or nftables, not $dataplane" ;; esac
[ "$(id -u)" -eq 0 ] || die "test.sh needs root (libvirt's system instance, the box build)"

# One run at a time on this machine: the networks have fixed names.
exec 9>/run/stockade-vagrant.lock
flock -n 9 || die "another vagrant/test.sh is running (lock /run/stockade-vagrant.lock)"

export STOCKADE_VM_PREFIX=stockade-test-
export VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_COLOR=1
export LIBVIRT_DEFAULT_URI=qemu:///system
export VAGRANT_CWD="$here"
export STOCKADE_CONSOLE_DIR=/var/log/stockade-vagrant
work=$(mktemp -d /tmp/stockade-vagrant.XXXXXX)
export STOCKADE_GENERATED="$work/generated"
export VAGRANT_DOTFILE_PATH="$work/dotvagrant"
started_daemons=()
step=packages
t0=$SECONDS
declare -A took

log() { say "vagrant: $*"; }
mark() {
  local from=${2:-$t0}
  took[$1]=$((SECONDS - from))
}

# Everything a run may have made: domains and volumes with our prefix, the topology's
# networks (and their dnsmasq), the box's base volume. Called at the start too, for what a
# killed run (kill -9, a power cut) left behind.
remove_ours() {
  local d n v
  for d in $(virsh -q list --all --name 2>/dev/null); do
    case "$d" in "$STOCKADE_VM_PREFIX"*)
      virsh -q destroy "$d" >/dev/null 2>&1 || true
      virsh -q undefine --nvram --remove-all-storage "$d" >/dev/null 2>&1 ||
        virsh -q undefine "$d" >/dev/null 2>&1 || true ;;
    esac
  done
  for n in $(virsh -q net-list --all --name 2>/dev/null); do
    case "$n" in stockade-*)
      virsh -q net-destroy "$n" >/dev/null 2>&1 || true
      virsh -q net-undefine "$n" >/dev/null 2>&1 || true ;;
    esac
  done
  if virsh -q pool-info default >/dev/null 2>&1; then
    virsh -q pool-refresh default >/dev/null 2>&1 || true
    for v in $(virsh -q vol-list default 2>/dev/null | awk '{print $1}'); do
      case "$v" in "$STOCKADE_VM_PREFIX"* | stockade-VAGRANTSLASH-*)
        virsh -q vol-delete --pool default "$v" >/dev/null 2>&1 || true ;;
      esac
    done
  fi
}

# ... then the daemons this run started.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -eq 0 ] && $keep; then
    say "vagrant: --keep: the VMs stay up; files and ssh config in $work (STOCKADE_GENERATED=$STOCKADE_GENERATED VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH STOCKADE_VM_PREFIX=$STOCKADE_VM_PREFIX)"
    exit 0
  fi
  if command -v virsh >/dev/null && virsh -q version >/dev/null 2>&1; then
    if [ -f "$STOCKADE_GENERATED/topology.json" ]; then
      timeout 300 vagrant destroy -f >/dev/null 2>&1 || true
    fi
    remove_ours
  fi
  local entry name pid
  for entry in "${started_daemons[@]}"; do
    name=${entry%%:*}
    pid=${entry#*:}
    if [ "$name" = systemd ]; then
      systemctl stop "$pid" || true
      continue
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$work"
  exit "$rc"
}
# Long commands run as background children, so that a signal to this script alone (kill,
# timeout) is handled at once: the child is stopped, then everything is cleaned up.
child=""
run() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  return "$rc"
}
# The original stderr: a trap runs inside the redirections of the command it interrupts
# (`run vagrant up >up.log 2>&1`), and its words must reach the user, not that log.
exec 8>&2
interrupted() {
  say "vagrant: interrupted; cleaning up" 2>&8
  if [ -n "$child" ]; then
    # shellcheck disable=SC2086 # one pid or several (the parallel provisioning)
    kill -TERM $child 2>/dev/null || true
    # shellcheck disable=SC2086
    wait $child 2>/dev/null || true
  fi
  exit 130
}
trap cleanup EXIT
trap interrupted INT TERM

# Stops the run: which VM, which step, the last lines that explain it.
fail() {
  say "vagrant: FAILED: VM $vm, step $step: $*"
  local console="$STOCKADE_CONSOLE_DIR/${STOCKADE_VM_PREFIX}$vm.console.log"
  case "$step" in
    boot | accel)
      if [ -s "$console" ]; then
        say "--- last lines of $vm's serial console ($console)"
        tail -n 25 "$console" | tr -d '\r' | sed 's/\x1b\[[0-9;]*m//g' >&2
      fi
      # The last lines of vagrant up, without a Ruby backtrace's frames (the error is above them).
      [ -f "$work/up.log" ] && { say "--- last lines of vagrant up"; grep -v -e Progress -e '^/usr/' -e '^	from /' "$work/up.log" | tail -n 12 >&2; }
      ;;
    provision)
      local plog=${provision_log:-$work/provision.log}
      [ -f "$plog" ] && { say "--- last lines of the provision log ($vm)"; tail -n 25 "$plog" >&2; }
      ;;
  esac
  exit 1
}

# No binary may need a GLIBC_ version newer than the box's libc6, read from booted VM $1.
check_glibc() {
  local libc libc_upstream b need newest
  libc=$(ssh -F "$work/ssh.cfg" -o LogLevel=ERROR "$1" "dpkg-query -W -f '\${Version}' libc6") ||
    fail "cannot read libc6's version"
  libc_upstream=${libc%%-*}
  # The binaries copied in, and those inside the VMs' packages (with --debs).
  local bins=("$STOCKADE_GENERATED"/bin/*) deb
  rm -rf "$work/debx"
  for deb in "$STOCKADE_GENERATED"/*/deb/*.deb; do
    [ -e "$deb" ] || continue
    mkdir -p "$work/debx/$(basename "$deb" .deb)"
    dpkg-deb -x "$deb" "$work/debx/$(basename "$deb" .deb)"
    bins+=("$work/debx/$(basename "$deb" .deb)"/usr/bin/*)
  done
  for b in "${bins[@]}"; do
    need=$(readelf -V --wide "$b" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    newest=$(printf '%s\n%s\n' "$need" "$libc_upstream" | sort -V | tail -n 1)
    [ "$newest" = "$libc_upstream" ] ||
      fail "$(basename "$b") needs GLIBC_$need, the box's libc6 is $libc: build the binaries in a chroot of the box"
  done
  log "binaries need at most GLIBC_$need-era symbols; the box has libc6 $libc"
}

# vagrant destroy (of the VMs named, or all), then nothing of ours may be left.
destroy_checked() {
  local left
  run vagrant destroy -f "$@" >"$work/destroy.log" 2>&1 || fail "vagrant destroy failed"
  left=$(
    virsh -q list --all --name | grep "^$STOCKADE_VM_PREFIX" || true
    virsh -q net-list --all --name | grep '^stockade-' || true
    virsh -q vol-list default 2>/dev/null | awk '{print $1}' | grep "^$STOCKADE_VM_PREFIX" || true
  )
  [ -z "$left" ] || fail "left behind after vagrant destroy: $left"
}

# --- packages
need_packages libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 vagrant \
  vagrant-libvirt rsync dnsmasq-base openssh-client binutils curl
mark packages

# --- box
step=box
s=$SECONDS
box=${STOCKADE_BOX:-stockade/bookworm64}
if [ "$box" = stockade/bookworm64 ]; then
  run bash "$here/box/build.sh" || fail "the box could not be built"
fi
boxes=${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${box//\//-VAGRANTSLASH-}
box_img=$(find "$boxes" -path '*/libvirt/box.img' 2>/dev/null | head -n 1)
[ -f "$box_img" ] || fail "the box's image is not under $boxes"
mark box "$s"

# --- accel: a short boot of the box under KVM; the kernel must print within 20 s. Before
# libvirt starts: a libvirtd that was running while the KVM test hung kept re-probing QEMU (a
# capabilities probe every 5 s, with 8 domains not started after 10 minutes); started after
# it, libvirtd probes once and starts all 8 in 2 minutes.
step=accel
s=$SECONDS
if [ -n "${STOCKADE_LIBVIRT_DRIVER:-}" ]; then
  log "driver $STOCKADE_LIBVIRT_DRIVER (from STOCKADE_LIBVIRT_DRIVER)"
elif [ -c /dev/kvm ]; then
  : >"$work/kvm.log"
  qemu-system-x86_64 -accel kvm -m 256 -smp 1 -display none -monitor none -nic none \
    -serial "file:$work/kvm.log" -drive "file=$box_img,if=virtio,snapshot=on,readonly=off" \
    >"$work/kvm.err" 2>&1 &
  qpid=$!
  for _ in $(seq 40); do
    grep -q "Linux version" "$work/kvm.log" && break
    kill -0 "$qpid" 2>/dev/null || break
    sleep 0.5
  done
  if grep -q "Linux version" "$work/kvm.log"; then
    STOCKADE_LIBVIRT_DRIVER=kvm
    log "KVM boots the box's kernel: the VMs run under KVM"
  else
    STOCKADE_LIBVIRT_DRIVER=qemu
    log "KVM does not boot a guest here (no kernel output in 20 s): the VMs run under TCG emulation (libvirt.driver = \"qemu\")"
  fi
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
else
  STOCKADE_LIBVIRT_DRIVER=qemu
  log "no /dev/kvm: the VMs run under TCG emulation (libvirt.driver = \"qemu\")"
fi
export STOCKADE_LIBVIRT_DRIVER
mark accel "$s"

# --- libvirt
step=libvirt
s=$SECONDS
if ! virsh -q version >/dev/null 2>&1; then
  if [ "$(ps -p 1 -o comm=)" = systemd ]; then
    systemctl start libvirtd.service || fail "systemctl start libvirtd failed"
    started_daemons+=(systemd:libvirtd.service)
  else
    # No systemd as PID 1: start the daemons by hand, stop exactly these by pid at the end.
    mkdir -p /run/libvirt
    if ! pidof virtlogd >/dev/null; then
      virtlogd -d -p "$work/virtlogd.pid" || fail "virtlogd did not start"
      started_daemons+=("virtlogd:$(cat "$work/virtlogd.pid")")
    fi
    libvirtd -d -p "$work/libvirtd.pid" || fail "libvirtd did not start"
    for _ in $(seq 100); do [ -s "$work/libvirtd.pid" ] && break; sleep 0.1; done
    started_daemons+=("libvirtd:$(cat "$work/libvirtd.pid")")
  fi
  for _ in $(seq 100); do virsh -q version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -q version >/dev/null 2>&1 || fail "libvirtd does not answer on qemu:///system"
  log "started ${started_daemons[*]%%:*} (stopped again at the end)"
fi
remove_ours
mkdir -p "$STOCKADE_CONSOLE_DIR"
rm -f "$STOCKADE_CONSOLE_DIR/$STOCKADE_VM_PREFIX"*
mark libvirt "$s"

# --- networks and files
step=networks
s=$SECONDS
if [ -z "$bin_dir" ]; then
  (cd "$repo" && cargo build --workspace --bins --locked -q) || fail "cargo build failed"
  bin_dir="$repo/target/debug"
fi
lab="$bin_dir/stockade-lab"
[ -x "$lab" ] || fail "$lab is missing (build the workspace, or pass --bin-dir)"
"$lab" vagrant-files "$STOCKADE_GENERATED" --bin-dir "$bin_dir" ${debs:+--debs "$debs"} ${dataplane:+--dataplane "$dataplane"} >"$work/files.log" 2>&1 ||
  fail "$(tail -n 1 "$work/files.log")"
"$lab" vagrant-check "$STOCKADE_GENERATED/topology.json" 2>&1 | sed 's/^/vagrant: /' >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "the networks collide with this machine's"
# The host joins Vagrant's networks and the management link: it must route nothing between
# them (libvirt also rejects forwarding to and from isolated networks).
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 0 ] ||
  fail "this machine forwards IPv4 (net.ipv4.ip_forward=1): it would route between the VMs' networks around the gateway"
mark networks "$s"
if [ "$mode" = full ]; then
  # shellcheck source=vagrant/full.sh
  . "$here/full.sh"
fi

# --- boot
step=boot
s=$SECONDS
log "booting $vm ($STOCKADE_LIBVIRT_DRIVER)"
run vagrant up "$vm" --no-provision >"$work/up.log" 2>&1 ||
  fail "vagrant up failed"
mark boot "$s"
vagrant ssh-config "$vm" >"$work/ssh.cfg" 2>/dev/null || fail "no ssh config"
on_vm() { ssh -F "$work/ssh.cfg" -o LogLevel=ERROR "$vm" "$@"; }

# --- glibc: read the box's libc6 from the booted VM, compare with every binary's needs.
step=glibc
check_glibc "$vm"

# --- provision
step=provision
s=$SECONDS
# Bounded: a provisioning session that stops making progress (a lost SSH connection) must not
# hang the run.
run timeout "${STOCKADE_PROVISION_TIMEOUT:-900}" vagrant provision "$vm" >"$work/provision.log" 2>&1 || fail "vagrant provision failed or took more than ${STOCKADE_PROVISION_TIMEOUT:-900} s"
mark provision "$s"

# --- check: the daemon answers on its address; the guard is in place.
step=check
role=$(python3 -c 'import json,sys; print(next(v["role"] for v in json.load(open(sys.argv[1]))["vms"] if v["name"]==sys.argv[2]))' \
  "$STOCKADE_GENERATED/topology.json" "$vm")
case "$role" in
  stock)
    addr=$(awk '/^metrics_listen:/ {print $2}' "$STOCKADE_GENERATED/$vm/root/etc/stockade/stock.yaml")
    on_vm "sudo nft list table inet stockade_guard" >/dev/null || fail "the guard is not loaded"
    # The monitoring host's client certificate, for this check only (the stock VM holds none).
    on_vm "umask 077; cat > /tmp/monitor.pem" <"$STOCKADE_GENERATED/pki/monitor-client.pem"
    on_vm "umask 077; cat > /tmp/monitor.key" <"$STOCKADE_GENERATED/pki/monitor-client.key"
    ok=false
    for _ in $(seq 30); do
      if on_vm "curl -sS --max-time 5 --cacert /etc/stockade/pki/ca.pem --cert /tmp/monitor.pem --key /tmp/monitor.key https://$addr/metrics" >"$work/metrics" 2>"$work/curl.err" &&
        grep -q '^stockade_' "$work/metrics"; then
        ok=true
        break
      fi
      sleep 2
    done
    on_vm "rm -f /tmp/monitor.pem /tmp/monitor.key"
    $ok || fail "stockade-stock does not answer on https://$addr/metrics: $(tail -n 1 "$work/curl.err")"
    log "$vm: stockade-stock answers on https://$addr/metrics ($(grep -c '^stockade_' "$work/metrics") samples)"
    ;;
  service)
    # The review's virus check reaches the lab's clamd through its socket group (the service
    # runs as its own user): clamd_up is 1.
    addr=$(awk '/^metrics_listen:/ {print $2}' "$STOCKADE_GENERATED/$vm/root/etc/stockade/service.yaml")
    ok=false
    for _ in $(seq 30); do
      if on_vm "curl -sS --max-time 5 http://$addr/metrics" >"$work/metrics" 2>"$work/curl.err" &&
        grep -q '^stockade_service_clamd_up 1' "$work/metrics"; then
        ok=true
        break
      fi
      sleep 2
    done
    $ok || fail "stockade-service does not answer on http://$addr/metrics with clamd up: $(tail -n 1 "$work/curl.err")"
    log "$vm: stockade-service answers on http://$addr/metrics, clamd up"
    ;;
  gateway)
    addr=$(awk -F= '/^METRICS=/ {print $2}' "$STOCKADE_GENERATED/$vm/root/etc/stockade/gateway.env")
    if ! on_vm "curl -sS --max-time 5 http://$addr/metrics" >"$work/metrics" 2>"$work/curl.err" ||
      ! grep -q '^stockade_gateway_' "$work/metrics"; then
      fail "stockade-gateway does not answer on http://$addr/metrics: $(tail -n 1 "$work/curl.err")"
    fi
    log "$vm: stockade-gateway answers on http://$addr/metrics"
    ;;
  *) fail "--smoke knows how to check a stock, service or gateway VM (role $role)" ;;
esac
# The packaged units run for real under systemd: each daemon as its unit's user, with the
# unit's seccomp filter (Seccomp: 2) and NoNewPrivileges.
while read -r unit; do
  case "$unit" in stockade-service.service | stockade-stock.service | stockade-gateway.service) ;; *) continue ;; esac
  # The unit as systemd has it (the package's, or the one provisioning rendered).
  want=$(on_vm "systemctl cat $unit" | awk -F= '/^User=/ {print $2}')
  got=$(on_vm "pid=\$(systemctl show -p MainPID --value $unit); ps -o user= -p \$pid; grep -E '^(Seccomp|NoNewPrivs):' /proc/\$pid/status | tr -d '\t' | tr '\n' ' '")
  [[ "$got" == "$want"*"NoNewPrivs:1"*"Seccomp:2"* ]] ||
    fail "$unit does not run as its unit says (user $want, NoNewPrivs, seccomp): $got"
  log "$vm: $unit runs as $want with NoNewPrivileges and its seccomp filter"
done <"$STOCKADE_GENERATED/$vm/units"
# A unit whose ExecStartPre= check fails does not start, and the journal says why (the file and
# line of the bad key); restored, it starts again.
while read -r unit; do
  case "$unit" in stockade-service.service | stockade-stock.service | stockade-gateway.service) ;; *) continue ;; esac
  file=$(on_vm "systemctl cat $unit" | awk '/^ExecStartPre=/ {print $NF}')
  # shellcheck disable=SC2016 # the unit's own literal ${RULES}, read from gateway.env
  if [ "$file" = '${RULES}' ]; then
    file=$(awk -F= '/^RULES=/ {print $2}' "$STOCKADE_GENERATED/$vm/root/etc/stockade/gateway.env")
  fi
  [ -n "$file" ] || fail "$unit: no file in its ExecStartPre= check"
  on_vm "sudo cp -p $file $file.smoke && echo 'no_such_key: 1' | sudo tee -a $file >/dev/null" ||
    fail "$unit: could not break $file"
  since=$(on_vm "date '+%Y-%m-%d %H:%M:%S'")
  if on_vm "sudo systemctl restart $unit" 2>/dev/null; then
    fail "$unit started with a bad $file"
  fi
  journal=$(on_vm "sudo journalctl -u $unit --since '$since' --no-pager -o cat")
  if ! grep -q "no_such_key" <<<"$journal" || ! grep -q "$file" <<<"$journal"; then
    fail "$unit: the journal does not name the bad key and $file: $(tail -n 3 <<<"$journal")"
  fi
  on_vm "sudo mv $file.smoke $file && sudo systemctl restart $unit && systemctl is-active --quiet $unit" ||
    fail "$unit does not start again with its file restored"
  log "$vm: $unit refused to start with a bad $file, said why in the journal, started once restored"
done <"$STOCKADE_GENERATED/$vm/units"
mem=$(on_vm "free -m | awk '/^Mem:/ {print \$3}'")
dom="${STOCKADE_VM_PREFIX}$vm"
qpid=$(pgrep -f "guest=$dom," | head -n 1 || true)
rss=$([ -n "$qpid" ] && ps -o rss= -p "$qpid" | awk '{printf "%d", $1/1024}' || echo "?")

# --- destroy, and nothing left behind
step=destroy
s=$SECONDS
destroy_checked "$vm"
mark destroy "$s"
mark total
log "smoke: PASSED ($vm under $STOCKADE_LIBVIRT_DRIVER): box ${took[box]} s, libvirt ${took[libvirt]} s, accel test ${took[accel]} s, files ${took[networks]} s, boot ${took[boot]} s, provision ${took[provision]} s, destroy ${took[destroy]} s, total ${took[total]} s; VM memory used ${mem} MiB, qemu RSS ${rss} MiB"
