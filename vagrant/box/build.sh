#!/usr/bin/env bash
# Builds the Stockade Vagrant box (vagrant-libvirt: box.img qcow2 + metadata.json) from Debian's
# packages only, with mmdebstrap, and adds it to Vagrant as stockade/bookworm64.
#
#   bash vagrant/box/build.sh            build (or reuse the cached box) and add it to Vagrant
#   bash vagrant/box/build.sh --print    print the path of the cached .box (building it if needed)
#
# The box: Debian 12 with the cloud kernel, systemd-networkd, sshd, the `vagrant` user with
# Vagrant's well-known insecure key and passwordless sudo (as every public box has), and every
# package provisioning installs (vagrant/box/packages), so provisioning needs no network.
# It boots with GRUB from an MBR disk and logs to the serial console (ttyS0).
#
# Cached in $STOCKADE_VAGRANT_CACHE (default /var/cache/stockade-vagrant), outside the clone,
# under a key made of this script and the package list: it is rebuilt only when they change.
# Needs root (mmdebstrap's root mode).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vagrant/lib.sh
. "$here/../lib.sh"

BOX_NAME=stockade/bookworm64
SUITE=bookworm
DISK_GIB=4

print_only=false
case "${1:-}" in
  --print) print_only=true ;;
  "") ;;
  *) die "usage: build.sh [--print]" ;;
esac
[ "$(id -u)" -eq 0 ] || die "building the box needs root (mmdebstrap's root mode)"

packages=()
while read -r p; do
  p=${p%%#*}
  p=${p//[[:space:]]/}
  [ -n "$p" ] && packages+=("$p")
done <"$here/packages"

key=$(cat "$here/build.sh" "$here/customize.sh" "$here/packages" | sha256sum | cut -c1-16)
box_dir="$STOCKADE_VAGRANT_CACHE/box-$key"
box_file="$box_dir/stockade.box"

# The box as Vagrant knows it carries the key (file stockade-key inside the .box), so a box
# built from other inputs is replaced, together with its base volume in libvirt's pool.
add_box() {
  local boxes=${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${BOX_NAME//\//-VAGRANTSLASH-}
  # `vagrant box` reads the Vagrantfile of its working directory too, and the project's one
  # refuses to load before its generated files exist (they come after the box): run these
  # where there is no Vagrantfile at all.
  local VAGRANT_CWD
  VAGRANT_CWD=$(mktemp -d)
  export VAGRANT_CWD
  if [ "$(cat "$boxes"/0/libvirt/stockade-key 2>/dev/null)" = "$key" ]; then
    say "vagrant: box $BOX_NAME is current ($key)"
    return 0
  fi
  if [ -d "$boxes" ]; then
    vagrant box remove --force --all "$BOX_NAME" >/dev/null 2>&1 || true
  fi
  if command -v virsh >/dev/null && virsh -q pool-info default >/dev/null 2>&1; then
    local vol
    for vol in $(virsh -q vol-list default 2>/dev/null | awk '{print $1}'); do
      case "$vol" in "${BOX_NAME//\//-VAGRANTSLASH-}"_vagrant_box_image_*) virsh -q vol-delete --pool default "$vol" >/dev/null ;; esac
    done
  fi
  local err
  err=$(vagrant box add --name "$BOX_NAME" "$box_file" 2>&1 >/dev/null) ||
    die "vagrant box add $box_file failed: $(tail -n 1 <<<"$err")"
  rmdir "$VAGRANT_CWD"
  say "vagrant: added box $BOX_NAME ($key)"
}

build() {
  need_packages mmdebstrap qemu-utils grub-pc-bin grub2-common fdisk e2fsprogs
  mkdir -p "$STOCKADE_VAGRANT_CACHE"
  # global: the EXIT trap needs it after build() returns
  work=$(mktemp -d "$STOCKADE_VAGRANT_CACHE/build.XXXXXX")
  # Whatever happens, no half-built box is left.
  cleanup() { rm -rf "$work"; }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  local started=$SECONDS
  say "vagrant: building box $key from Debian $SUITE (${#packages[@]} packages) in $work"
  # The chroot uses this machine's apt sources (the only mirror it can reach).
  local sources="$work/sources" f
  : >"$sources"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    if [ -f "$f" ]; then grep -h '^deb ' "$f" >>"$sources" || true; fi
  done
  if [ ! -s "$sources" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && { cat "$f"; echo; } >>"$sources"
    done
  fi
  [ -s "$sources" ] || die "this machine has no apt sources to build the box from"
  local include
  include=$(
    IFS=,
    echo "${packages[*]}"
  )
  # shellcheck disable=SC2016 # the hooks are expanded by mmdebstrap's shell, with $1 the root
  mmdebstrap --mode=root --variant=apt --include="$include" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="bash $here/customize.sh \"\$1\"" \
    "$SUITE" "$work/root" "$sources" >"$work/mmdebstrap.log" 2>&1 || {
    tail -n 15 "$work/mmdebstrap.log" >&2
    die "mmdebstrap failed (last lines above)"
  }
  say "vagrant: root filesystem ready after $((SECONDS - started)) s ($(du -sh "$work/root" | cut -f1))"

  # An MBR disk with one ext4 partition and GRUB in the gap before it, made without mounting
  # anything or scanning partitions (this machine's kernel has no partition support): the file
  # system is written from the directory by mke2fs at the partition's offset, and GRUB's boot
  # sector and core image are laid at sectors 0 and 1 (what grub-bios-setup does, for a disk
  # that is a plain file; grub-mkimage already fills in the core image's sector count).
  local uuid kernel initrd raw="$work/disk.raw"
  uuid=$(cat /proc/sys/kernel/random/uuid)
  kernel=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)
  initrd=$(find "$work/root/boot" -maxdepth 1 -name 'initrd.img-*' -printf '%f\n' | sort -V | tail -n 1)
  if [ -z "$kernel" ] || [ -z "$initrd" ]; then
    die "the box's root has no kernel or initrd in /boot"
  fi
  printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" >"$work/root/etc/fstab"
  mkdir -p "$work/root/boot/grub"
  # Serial console first, so a failed boot can be read from the console log; no wait in GRUB.
  cat >"$work/root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
linux /boot/$kernel root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=1
initrd /boot/$initrd
boot
EOF
  truncate -s "${DISK_GIB}G" "$raw"
  echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
  mkfs.ext4 -q -F -L stockade-root -U "$uuid" -E offset=$((2048 * 512)) -d "$work/root" \
    "$raw" $((DISK_GIB * 1024 - 1))M || die "mkfs.ext4 could not write the box's file system"
  # shellcheck disable=SC2016 # $root is GRUB's variable
  printf 'search --no-floppy --fs-uuid --set=root %s\nconfigfile ($root)/boot/grub/grub.cfg\n' \
    "$uuid" >"$work/early.cfg"
  grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub \
    biosdisk part_msdos ext2 search search_fs_uuid configfile normal linux serial terminal ||
    die "grub-mkimage failed"
  [ "$(stat -c %s "$work/core.img")" -lt $(((2048 - 1) * 512)) ] ||
    die "GRUB's core image does not fit before the partition"
  dd if=/usr/lib/grub/i386-pc/boot.img of="$raw" bs=440 count=1 conv=notrunc status=none
  dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none
  cp "$work/root/usr/share/stockade-box/manifest" "$work/manifest"
  rm -rf "$work/root"

  local out="$work/box"
  mkdir -p "$out"
  qemu-img convert -c -O qcow2 "$raw" "$out/box.img"
  rm -f "$raw"
  printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$DISK_GIB" >"$out/metadata.json"
  printf '%s\n' "$key" >"$out/stockade-key"
  cp "$here/packages" "$out/packages"
  cp "$work/manifest" "$out/manifest"
  # The Vagrantfile inside the box: what every VM of it needs, whatever Vagrantfile uses it.
  cat >"$out/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
  end
end
EOF
  tar -C "$out" -cf "$out/stockade.box" metadata.json box.img Vagrantfile stockade-key packages manifest
  rm -rf "$box_dir"
  mkdir -p "$box_dir"
  mv "$out/stockade.box" "$box_dir/stockade.box.tmp"
  sync -f "$box_dir/stockade.box.tmp"
  mv "$box_dir/stockade.box.tmp" "$box_file"
  say "vagrant: built box $key in $((SECONDS - started)) s: $box_file ($(du -h "$box_file" | cut -f1))"
  # Older boxes are only cache: keep the current one.
  find "$STOCKADE_VAGRANT_CACHE" -maxdepth 1 -name 'box-*' ! -name "box-$key" -exec rm -rf {} +
}

if [ -f "$box_file" ]; then
  say "vagrant: box $key is cached: $box_file"
else
  build
fi
if $print_only; then
  echo "$box_file"
else
  need_packages vagrant vagrant-libvirt
  add_box
fi
