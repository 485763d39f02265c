# shellcheck shell=bash disable=SC2154,SC2034
# (SC2034: variables fail() and cleanup read. work, keep, stop_after, took, lab, here: set by vagrant/test.sh, which sources this file)
# The whole topology as VMs (issue 14). Sourced by vagrant/test.sh after its shared steps
# (packages, box, libvirt, accel, networks); uses its helpers (run, fail, log, mark) and sets
# `vm` and `step` so that a failure names the VM and the step. Steps:
#   boot       vagrant up --no-provision: every VM, one per core at a time under TCG
#   glibc      no binary needs a newer glibc than the box's
#   provision  vagrant provision, as many at once, one log each
#   targets    the monitor VM's Prometheus sees every target up
#   story      stockade-lab vm-demo: the lab demo's story, its clients on the client VMs
#   bypass     from every client and service VM, on every NIC: TCP, UDP, ICMP to every
#              address of the stock VMs get no answer; payload forged into a client's own push
#              connection reaches no NIC of the stock VM
#   reboot     a stock VM rebooted comes back with its guard loaded before its daemon starts,
#              and the attempts get no answer again
#   gateway-reboot  while the gateway VM reboots, none of client 1's knocks at a stock VM
#              crosses; once it is back, service 1 reaches the stock API again
#   destroy    vagrant destroy, and nothing left behind

# shellcheck source=vagrant/vms.sh
. "$here/vms.sh"
# --stop-after: leave the VMs up after this step (the cleanup trap keeps them).
stop_here() {
  [ "$stop_after" = "$1" ] || return 0
  mark total
  log "stopped after step $1 (--stop-after) in ${took[total]} s; the VMs stay up"
  exit 0
}

# How many VMs boot or provision at once: under TCG a guest needs a whole core, and eight
# guests on two cores time out their own units (sshd's start, observed: 1 min 30 s, failed,
# and kernel tasks blocked for 120 s). One per core; KVM guests need little CPU.
batch=${STOCKADE_BATCH:-$(nproc)}
[ "$STOCKADE_LIBVIRT_DRIVER" = kvm ] && batch=${STOCKADE_BATCH:-${#vms[@]}}

# --- boot: in batches (vagrant-libvirt boots the VMs of one `vagrant up` in parallel).
step=boot
vm=all
s=$SECONDS
log "booting ${#vms[@]} VMs under $STOCKADE_LIBVIRT_DRIVER, $batch at a time: ${vms[*]}"
for ((i = 0; i < ${#vms[@]}; i += batch)); do
  these=("${vms[@]:i:batch}")
  if ! run vagrant up --no-provision "${these[@]}" >>"$work/up.log" 2>&1; then
    # The VM Vagrant names in its error ("... on the 'stock2' machine"), else the first one
    # not running.
    vm=$(grep -o "on the '[^']*' machine" "$work/up.log" | head -n 1 | cut -d"'" -f2 || true)
    [ -n "$vm" ] || vm=$(vagrant status --machine-readable "${these[@]}" 2>/dev/null | awk -F, '$3 == "state" && $4 != "running" { print $2; exit }')
    vm=${vm:-${these[0]}}
    fail "vagrant up failed"
  fi
  log "up: ${these[*]} ($((SECONDS - s)) s)"
done
mark boot "$s"
stop_here boot
vagrant ssh-config >"$work/ssh.cfg" 2>/dev/null || fail "no ssh config"

# --- glibc
step=glibc
vm=${vms[0]}
check_glibc "$vm"

# --- provision: in batches, one log each; the first failure is named with its log.
step=provision
s=$SECONDS
failed=""
for ((i = 0; i < ${#vms[@]}; i += batch)); do
  these=("${vms[@]:i:batch}")
  pids=()
  for v in "${these[@]}"; do
    timeout "${STOCKADE_PROVISION_TIMEOUT:-1200}" vagrant provision "$v" >"$work/provision-$v.log" 2>&1 &
    pids+=("$!")
  done
  child="${pids[*]}"
  for j in "${!these[@]}"; do
    wait "${pids[$j]}" || failed="$failed ${these[$j]}"
  done
  child=""
  [ -z "$failed" ] || break
done
if [ -n "$failed" ]; then
  vm=${failed# }
  vm=${vm%% *}
  provision_log="$work/provision-$vm.log"
  fail "vagrant provision failed (also:${failed})"
fi
mark provision "$s"
stop_here provision
log "every VM is provisioned (boot ${took[boot]} s, provision ${took[provision]} s)"

# --- targets: the monitor's Prometheus, from this machine over the management link.
step=targets
vm=monitor
s=$SECONDS
prom="http://$(address_of monitor stockade-mgmt):9090"
up=""
for _ in $(seq 90); do
  if curl -sS --max-time 5 "$prom/api/v1/targets" >"$work/targets.json" 2>/dev/null &&
    up=$(python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["data"]["activeTargets"]
down = [x["scrapeUrl"] + " " + x["health"] + " " + x.get("lastError", "") for x in t if x["health"] != "up"]
print("%d targets, %d down%s" % (len(t), len(down), (": " + "; ".join(down)) if down else ""))
sys.exit(1 if down or not t else 0)' "$work/targets.json"); then
    break
  fi
  up=""
  sleep 2
done
[ -n "$up" ] || fail "not every target is up: $(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["data"]["activeTargets"]; print("; ".join(x["scrapeUrl"]+" "+x["health"]+" "+x.get("lastError","") for x in t))' "$work/targets.json" 2>/dev/null)"
mark targets "$s"
log "Prometheus on the monitor VM: $up (after ${took[targets]} s)"
mem_report=""
for v in "${vms[@]}"; do
  used=$(on "$v" "free -m | awk '/^Mem:/ {print \$3}'" 2>/dev/null || echo "?")
  qpid=$(pgrep -f "guest=${STOCKADE_VM_PREFIX}$v," | head -n 1 || true)
  rss=$([ -n "$qpid" ] && ps -o rss= -p "$qpid" | awk '{printf "%d", $1/1024}' || echo "?")
  mem_report="$mem_report $v ${used}/${rss}"
done
log "memory per VM (used in the guest / qemu RSS, MiB):$mem_report"
stop_here targets

# --- story
step=story
vm=client1
s=$SECONDS
if ! "$lab" vm-demo --topology "$topo" --ssh-config "$work/ssh.cfg" >"$work/story.log" 2>&1; then
  say "--- last lines of the story"
  tail -n 30 "$work/story.log" >&2
  fail "the story failed"
fi
mark story "$s"
stop_here story
log "the story ran across the VMs in ${took[story]} s ($work/story.log)"

# --- bypass
# shellcheck source=vagrant/bypass.sh
. "$here/bypass.sh"
step=bypass
s=$SECONDS
bypass_attempts
forge_into_push
mark bypass "$s"
stop_here bypass

# --- reboot a stock VM: its guard is loaded before its daemon starts; the attempts again.
step=reboot
vm=stock1
s=$SECONDS
reboot_stock
mark reboot "$s"

# --- the gateway VM rebooted: nothing crosses until its rules are loaded.
step=gateway-reboot
vm=gateway
s=$SECONDS
reboot_gateway
mark gateway_reboot "$s"
log "gateway VM rebooted (${took[gateway_reboot]} s): client 1's knocks at stock1 during it: $(tail -n 1 "$work/knock.log"); packets on stock1's data NIC: 0; service 1 reaches stock1's API again"

# --- destroy, and nothing left behind
if $keep; then
  mark total
  log "PASSED (every VM, $STOCKADE_LIBVIRT_DRIVER, ${dataplane:-default} plane): boot ${took[boot]} s, provision ${took[provision]} s, targets ${took[targets]} s, story ${took[story]} s, bypass ${took[bypass]} s, stock reboot ${took[reboot]} s, gateway reboot ${took[gateway_reboot]} s, total ${took[total]} s; --keep: not destroyed"
  exit 0
fi
step=destroy
vm=all
s=$SECONDS
destroy_checked
mark destroy "$s"
mark total
log "PASSED (every VM, $STOCKADE_LIBVIRT_DRIVER, ${dataplane:-default} plane): boot ${took[boot]} s, provision ${took[provision]} s, targets ${took[targets]} s, story ${took[story]} s, bypass ${took[bypass]} s, stock reboot ${took[reboot]} s, gateway reboot ${took[gateway_reboot]} s, destroy ${took[destroy]} s, total ${took[total]} s"
exit 0
