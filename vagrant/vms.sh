# shellcheck shell=bash disable=SC2154,SC2034
# (work, STOCKADE_GENERATED: set by vagrant/test.sh; SC2034: vms is read by full.sh)
# The VMs of a rendered topology.json and how to reach them, for vagrant/full.sh and
# vagrant/bypass.sh: `on VM CMD` runs CMD over SSH with the config `vagrant ssh-config` wrote.
topo="$STOCKADE_GENERATED/topology.json"
# shellcheck disable=SC2207
vms=($(python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(open(sys.argv[1]))["vms"]))' "$topo"))
role_of() {
  python3 -c 'import json,sys; print(next(v["role"] for v in json.load(open(sys.argv[1]))["vms"] if v["name"]==sys.argv[2]))' "$topo" "$1"
}
# A VM's address on a network of topology.json (the management link: the monitor's).
address_of() {
  python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))
vm = next(v for v in t["vms"] if v["name"] == sys.argv[2])
print(next(n["address"].split("/")[0] for n in vm["nics"] if n["network"] == sys.argv[3]))' "$topo" "$1" "$2"
}
on() {
  local h=$1
  shift
  ssh -F "$work/ssh.cfg" -o LogLevel=ERROR -o ConnectTimeout=30 "$h" "$@"
}
vms_with() {
  python3 -c 'import json,sys; print("\n".join(v["name"] for v in json.load(open(sys.argv[1]))["vms"] if v["role"]==sys.argv[2]))' "$topo" "$1"
}
