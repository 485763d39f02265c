#!/usr/bin/env bash
# The README's first command: the patent's topology (Fig. 1 / Fig. 12) on this machine in network
# namespaces, with the real gateway, and the whole story run through it. Needs root.
# Leaves the lab running (Prometheus included) and says how to reach it; `stockade-lab down` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATAPLANE=${1:-userspace}

need=()
command -v clamd >/dev/null || need+=(clamav-daemon clamav)
command -v prometheus >/dev/null || need+=(prometheus)
command -v ip >/dev/null || need+=(iproute2)
command -v ethtool >/dev/null || need+=(ethtool)
command -v nft >/dev/null || need+=(nftables)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --workspace --bins --quiet
LAB=target/debug/stockade-lab
if $LAB status >/dev/null 2>&1; then
  echo "a lab is already up; using it (stop it with: $LAB down)"
else
  $LAB up --dataplane "$DATAPLANE"
fi
$LAB demo
$LAB status
echo
echo "The lab stays up: '$LAB exec client1 -- stockade list', '$LAB logs gateway', '$LAB status'."
echo "Stop it with: $LAB down"
