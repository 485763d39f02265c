#!/usr/bin/env bash
# Provisions one Stockade VM from the files `stockade-lab vagrant-files` rendered (the lab's
# templates and the same code path as `stockade-lab up`), synced to /stockade.
#   provision.sh HOST ROLE VAGRANT_HOST_IP   (ROLE: client, service, monitor, stock, gateway)
# Each step says its name on failure ("provision: HOST: STEP failed"), for vagrant/test.sh.
set -euo pipefail

host=${1:?host}
role=${2:?role}
vagrant_host=${3:?the host address on the Vagrant network}
src=${STOCKADE_SRC:-/stockade}
step=start
trap 'echo "provision: $host: step \"$step\" failed" >&2' ERR
[ -d "$src/$host/root" ] || { echo "provision: $src/$host/root is missing (run stockade-lab vagrant-files)" >&2; exit 1; }

# Packages: the Stockade box carries every one (vagrant/box/packages), so nothing is fetched;
# a public box (STOCKADE_BOX=debian/bookworm64) installs the missing ones from its mirror.
step=packages
export DEBIAN_FRONTEND=noninteractive
packages=(iproute2 ethtool nftables procps)
case "$role" in
  service) packages+=(clamav-daemon) ;;
  monitor) packages+=(prometheus) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "provision: $host: installing ${missing[*]} (not in the box)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The daemons: from their Debian packages when vagrant-files was given them (`--debs`: the
# package brings the unit, the system user and /etc/stockade; installed without a config it
# stays stopped, and is started below once the rendered config is in place), else the binaries
# (the same build the lab runs). Then every rendered file at its place.
step=files
if [ -d "$src/$host/deb" ]; then
  for deb in "$src/$host"/deb/*.deb; do
    step="install $(basename "$deb")"
    dpkg -i "$deb"
  done
  step=files
  # stockade-lab (the demo's direct attempts on client VMs) is not packaged.
  install -m 0755 "$src/bin/stockade-lab" /usr/local/bin/
else
  install -m 0755 "$src"/bin/stockade* /usr/local/bin/
fi
cp -a "$src/$host/root/." /
mkdir -p /var/log/stockade
# The daemons' system users, from the packages' own sysusers.d entries (their state and runtime
# folders come from the units: StateDirectory, RuntimeDirectory).
step=users
systemd-sysusers
if [ -d /etc/stockade/pki ]; then
  chmod 0755 /etc/stockade/pki
  find /etc/stockade/pki -name '*.key' -exec chmod 0600 {} +
fi
# Each private key belongs to the one daemon user that loads it (0600).
own_key() {
  [ -f "/etc/stockade/pki/$2" ] && chown "$1:$1" "/etc/stockade/pki/$2"
  return 0
}
case "$role" in
  service) own_key stockade-service service.key; own_key stockade-service service-client.key ;;
  stock) own_key stockade-stock stock.key ;;
esac

# Interfaces: rename each NIC by its MAC now (the .link files keep the names across boots),
# then systemd-networkd gives them their addresses (none on the gateway's ports).
step=interfaces
while read -r mac name; do
  [ -n "$mac" ] || continue
  dev=$(ip -o link show | awk -v m="$mac" 'tolower($0) ~ "link/ether " m { sub(":$", "", $2); sub("@.*", "", $2); print $2; exit }')
  if [ -z "$dev" ]; then
    echo "provision: no NIC with MAC $mac for $name" >&2
    exit 1
  fi
  if [ "$dev" != "$name" ]; then
    ip link set dev "$dev" down
    ip link set dev "$dev" name "$name"
  fi
  ip link set dev "$name" up
  # Transmit checksum offload off (the .link file keeps it at boot): the gateway drops frames
  # whose L4 checksum a virtio NIC left for the host to fill in.
  ethtool -K "$name" tx off >/dev/null
done < "$src/$host/nics"
# Modules and sysctls, as at boot: modules-load.d first (br_netfilter for the gateway, whose
# unit may not load modules), then systemd-sysctl, which expands the globs of 90-stockade.conf
# (rp_filter on every NIC).
/lib/systemd/systemd-modules-load
/lib/systemd/systemd-sysctl
systemctl enable systemd-networkd
systemctl restart systemd-networkd

step="$role setup"
case "$role" in
  service)
    # Our clamd runs with the lab's config and signature database; Debian's own instance and
    # its updater are not used (freshclam needs the internet; add the official databases to
    # /var/lib/stockade/clamav-db on a connected host).
    systemctl disable --now clamav-daemon.service clamav-freshclam.service 2>/dev/null || true
    ;;
  stock)
    # The guard: on Vagrant's own NIC only SSH from the host passes (see guard.nft).
    sed -i "s/VAGRANT_HOST_IP/$vagrant_host/" /etc/stockade/guard.nft
    nft -c -f /etc/stockade/guard.nft
    ;;
  monitor)
    chgrp prometheus /etc/stockade/pki/monitor-client.key
    chmod 0640 /etc/stockade/pki/monitor-client.key
    ;;
esac

step=units
systemctl daemon-reload
while read -r unit; do
  [ -n "$unit" ] || continue
  step="start $unit"
  systemctl enable --quiet "$unit"
  if ! systemctl restart "$unit"; then
    journalctl -u "$unit" -n 20 --no-pager >&2 || true
    false
  fi
done < "$src/$host/units"
echo "provision: $host ($role) is ready"
