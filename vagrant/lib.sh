# shellcheck shell=bash
# Shared by vagrant/box/build.sh and vagrant/test.sh (sourced, not run).
# Every failure is one sentence on stderr, never a stack of Ruby errors.

STOCKADE_VAGRANT_CACHE=${STOCKADE_VAGRANT_CACHE:-/var/cache/stockade-vagrant}

say() { printf '%s\n' "$*" >&2; }
die() { say "vagrant: $*"; exit 1; }

# Installs Debian packages that are missing (by package name; dpkg -s decides). This machine's
# image may carry qemu-utils from bookworm-backports, which breaks bookworm's
# qemu-system-common: qemu-utils is then taken from bookworm, so qemu and libvirt match.
need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "these Debian packages are missing and installing them needs root: ${missing[*]}"
  say "vagrant: installing ${missing[*]}"
  local extra=()
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] &&
    dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    extra+=(--allow-downgrades qemu-utils/bookworm)
  fi
  local log
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${extra[@]}" "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    rm -f "$log"
    die "apt-get could not install ${missing[*]} (last lines above)"
  fi
  rm -f "$log"
}
