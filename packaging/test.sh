#!/usr/bin/env bash
# The Debian packages (issue 15): build them with cargo-deb, check them with lintian, and
# install, reconfigure, remove and purge each daemon's package in a Debian chroot.
#
#   bash packaging/test.sh [--no-build]
#
# --no-build packages the release binaries already in target/release. The chroot (Debian 12,
# minbase + systemd, from Debian's mirror with mmdebstrap) is cached as a tarball in
# /var/cache/stockade-packaging. Needs root (the chroot). Every failure is one line naming the
# package and the step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
build=true
[ "${1:-}" = --no-build ] && build=false
out="$repo/target/debian"
cache=${STOCKADE_PACKAGING_CACHE:-/var/cache/stockade-packaging}
packages=(stockade-gateway stockade-service stockade-stock stockade-client)
fail() { printf 'packaging: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (the chroot)"
command -v cargo-deb >/dev/null || fail "cargo-deb is not installed (cargo install cargo-deb --locked)"
command -v lintian >/dev/null || fail "lintian is not installed (apt-get install lintian)"
command -v mmdebstrap >/dev/null || fail "mmdebstrap is not installed (apt-get install mmdebstrap)"

# --- build
if $build; then
  args=()
  for p in "${packages[@]}"; do args+=(-p "$p"); done
  cargo build --release --locked "${args[@]}" --bins
fi
rm -rf "$out"
mkdir -p "$out"
for p in "${packages[@]}"; do
  cargo deb --no-build --strip --locked -p "$p" --output "$out" >/dev/null || fail "$p: cargo deb failed"
done
mapfile -t debs < <(find "$out" -name '*.deb' | sort)
[ ${#debs[@]} -eq ${#packages[@]} ] || fail "expected ${#packages[@]} .deb files in $out, found ${#debs[@]}"

# --- lintian: no errors (warnings are printed)
for d in "${debs[@]}"; do
  lintian --fail-on error --tag-display-limit 0 "$d" || fail "$(basename "$d"): lintian reports errors"
done
echo "packaging: lintian: no errors in ${#debs[@]} packages"

# --- the chroot
include=systemd,init-system-helpers,iproute2,ethtool,nftables,passwd
key=$(printf '%s' "bookworm minbase $include" | sha256sum | cut -c1-16)
tarball="$cache/chroot-$key.tar"
if [ ! -f "$tarball" ]; then
  mkdir -p "$cache"
  mmdebstrap --quiet --format=tar --variant=minbase --include="$include" bookworm "$tarball.part" ||
    fail "mmdebstrap could not build the chroot"
  mv "$tarball.part" "$tarball"
fi
root=$(mktemp -d /tmp/stockade-packaging.XXXXXX)
trap 'rm -rf "$root"' EXIT
tar -C "$root" -xf "$tarball"
mkdir -p "$root/debs"
cp "${debs[@]}" "$root/debs/"
in_root() { chroot "$root" "$@"; }
deb_of() { basename "$(printf '%s\n' "${debs[@]}" | grep "/$1_")"; }

check_daemon() {
  local pkg=$1 user=$2 msg f
  local configs=("${@:3}")
  local deb
  deb=$(deb_of "$pkg")
  # Installed without its config: stopped (not even enabled), one line saying what to write.
  msg=$(in_root dpkg -i "/debs/$deb" 2>&1) || fail "$pkg: dpkg -i failed: $msg"
  grep -q "^$pkg: not started: write ${configs[*]}" <<<"$msg" ||
    fail "$pkg: dpkg -i without a config printed no 'not started: write' line: $msg"
  [ "$(grep -c 'not started' <<<"$msg")" -eq 1 ] || fail "$pkg: more than one line: $msg"
  in_root getent passwd "$user" >/dev/null || fail "$pkg: no user $user after install"
  [ ! -e "$root/etc/systemd/system/multi-user.target.wants/$pkg.service" ] ||
    fail "$pkg: enabled without a config"
  [ "$(stat -c %a "$root/etc/stockade")" = 755 ] || fail "$pkg: /etc/stockade is not 0755"
  # With its config: enabled (started at boot; systemd does not run in a chroot).
  for f in "${configs[@]}"; do
    cp "$root/usr/share/$pkg/$(basename "$f")" "$root$f"
  done
  msg=$(in_root dpkg -i "/debs/$deb" 2>&1) || fail "$pkg: dpkg -i with a config failed: $msg"
  ! grep -q 'not started' <<<"$msg" || fail "$pkg: still 'not started' with its config: $msg"
  [ -L "$root/etc/systemd/system/multi-user.target.wants/$pkg.service" ] ||
    fail "$pkg: not enabled once its config is there"
  # remove: the daemon goes, its config and user stay.
  in_root apt-get remove -y -qq "$pkg" >/dev/null 2>&1 || fail "$pkg: apt-get remove failed"
  [ ! -e "$root/usr/bin/$pkg" ] || fail "$pkg: binary left after remove"
  for f in "${configs[@]}"; do
    [ -f "$root$f" ] || fail "$pkg: remove deleted $f"
  done
  in_root getent passwd "$user" >/dev/null || fail "$pkg: remove deleted the user $user"
  # purge: the config and the user go.
  in_root apt-get purge -y -qq "$pkg" >/dev/null 2>&1 || fail "$pkg: apt-get purge failed"
  for f in "${configs[@]}"; do
    [ ! -e "$root$f" ] || fail "$pkg: purge left $f"
  done
  ! in_root getent passwd "$user" >/dev/null || fail "$pkg: purge left the user $user"
  [ ! -e "$root/etc/systemd/system/multi-user.target.wants/$pkg.service" ] ||
    fail "$pkg: purge left the unit enabled"
  echo "packaging: $pkg: install without config (stopped, told what to write), with config (enabled), remove (config and user kept), purge (both gone)"
}
check_daemon stockade-service stockade-service /etc/stockade/service.yaml
check_daemon stockade-stock stockade-stock /etc/stockade/stock.yaml
check_daemon stockade-gateway stockade-gateway /etc/stockade/gateway.env /etc/stockade/rules.yaml
msg=$(in_root dpkg -i "/debs/$(deb_of stockade)" 2>&1) || fail "stockade: dpkg -i failed: $msg"
in_root stockade --version >/dev/null || fail "stockade: the client does not run in the chroot"
for f in /usr/share/man/man1/stockade.1.gz /usr/share/bash-completion/completions/stockade \
  /usr/share/zsh/vendor-completions/_stockade /usr/share/fish/vendor_completions.d/stockade.fish; do
  [ -s "$root$f" ] || fail "stockade: $f is not installed"
done
echo "packaging: stockade: runs, with its manual page and bash, zsh and fish completions"
echo "packaging: PASSED (${#debs[@]} packages)"
