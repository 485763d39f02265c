#!/usr/bin/env bash
# mmdebstrap's customize hook for the Stockade box (vagrant/box/build.sh): turns the installed
# root filesystem at $1 into a Vagrant box. Runs on the build host.
set -euo pipefail
root=${1:?root}
in_root() { chroot "$root" "$@"; }

# The `vagrant` user, as on every public box: Vagrant's well-known insecure public key (taken
# from Debian's vagrant package; Vagrant replaces it with a fresh key at the first `vagrant up`)
# and passwordless sudo. No password login at all ('*').
insecure_key=$(find /usr/share/rubygems-integration/all/gems -path '*/vagrant-*/keys/vagrant.pub' 2>/dev/null | head -n 1)
[ -n "$insecure_key" ] || { echo "customize: Vagrant's insecure key is missing (install Debian's vagrant)" >&2; exit 1; }
in_root useradd --create-home --shell /bin/bash --user-group vagrant
in_root usermod --password '*' vagrant
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$insecure_key" "$root/home/vagrant/.ssh/authorized_keys"
chown -R --reference="$root/home/vagrant" "$root/home/vagrant/.ssh"
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"

# sshd: no host keys in the box (each VM makes its own at first start: Ed25519 and ECDSA only,
# since an RSA key takes half a minute under TCG emulation), no DNS lookups. ($$ is systemd's
# escape for the shell's $.)
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/stockade-hostkeys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'for t in ed25519 ecdsa; do [ -f /etc/ssh/ssh_host_$${t}_key ] || ssh-keygen -q -t $$t -N "" -f /etc/ssh/ssh_host_$${t}_key; done'
ExecStartPre=/usr/sbin/sshd -t
UNIT
printf 'UseDNS no\nPasswordAuthentication no\nHostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n' \
  >"$root/etc/ssh/sshd_config.d/stockade.conf"

# Network: systemd-networkd, DHCP (IPv4 only) on a NIC that provisioning has not named (only
# Vagrant's management NIC keeps its kernel name after provisioning; the rendered .network files
# of the data NICs sort first and win). Nothing waits for "online": the data NICs never get DHCP.
cat >"$root/etc/systemd/network/99-stockade-box-dhcp.network" <<'NET'
# The Stockade box: Vagrant's management NIC gets its address by DHCP.
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# Daemons that provisioning starts only where they belong (freshclam would try the internet).
for unit in clamav-daemon.service clamav-freshclam.service prometheus.service \
  apt-daily.timer apt-daily-upgrade.timer man-db.timer; do
  in_root systemctl disable "$unit" >/dev/null 2>&1 || true
done

echo stockade >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 stockade\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Every VM gets its own machine id (and so its own DHCP client id) at first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# What the box holds, read by vagrant/test.sh (e.g. libc6 against the binaries' GLIBC_ needs).
mkdir -p "$root/usr/share/stockade-box"
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
in_root dpkg-query -W -f '${Package} ${Version}\n' >"$root/usr/share/stockade-box/manifest"
# Offline box: no package lists or archives (provisioning installs nothing from a box that
# carries every package; see vagrant/provision.sh).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
find "$root/var/cache/apt/archives" -name '*.deb' -delete
