#!/usr/bin/env bash
# The rehearsal's base image: a Debian bookworm system with what a node's first boot needs
# here (systemd, cloud-init, netplan, Avahi, python3, curl, openssl), as an ext4 disk
# image plus the kernel and initrd to boot it. Ubuntu's live installer and a real K3s
# cannot run here; this stands in for the installed Ubuntu (same cloud-init, netplan and
# systemd path). See README, "Tests".
#
# Cached outside the clone, keyed by this script's content (packages, mirror, settings):
# change either and the next run rebuilds; a new machine builds it once.
#   scripts/rehearsal/base-image.sh          prints the cached folder (building it if missing)
# Cache root: $CHOCOIMG_REHEARSAL_CACHE, else $XDG_CACHE_HOME/chocoimg-rehearsal, else
# /var/cache/chocoimg-rehearsal. Needs root (debootstrap).
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# systemd-sysv: minbase has no /sbin/init. python3-cffi-backend: debootstrap misses the
# virtual python3-cffi-backend-api-* cloud-init needs. locales: cloud-init's locale module.
# grub-common: grub-editenv, which the late-commands run in the target (as Ubuntu has it).
PACKAGES=systemd,systemd-sysv,udev,dbus,cloud-init,netplan.io,avahi-daemon,avahi-utils,python3,python3-cffi-backend,openssh-server,curl,openssl,ca-certificates,iproute2,locales,sudo,procps,grub-common,linux-image-amd64
IMAGE_SIZE=3G

here=$(cd "$(dirname "$0")" && pwd)
key=$(sha256sum "$here/base-image.sh" | cut -c1-16)
root=${CHOCOIMG_REHEARSAL_CACHE:-${XDG_CACHE_HOME:-/var/cache}/chocoimg-rehearsal}
out="$root/base-$key"

if [ -f "$out/done" ]; then
    echo "$out"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "base-image.sh: needs root (debootstrap)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap missing: apt-get install debootstrap (scripts/install-test-deps.sh)" >&2; exit 2; }

mkdir -p "$root"
# One builder at a time; a second caller waits and reuses the result.
exec 9>"$root/.lock"
flock 9
if [ -f "$out/done" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$root/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
tree="$work/tree"
started=$(date +%s)
echo "base-image.sh: debootstrap $SUITE into $tree (a few minutes)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tree" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; echo "base-image.sh: debootstrap failed (log above)" >&2; exit 1; }

# Settings every guest shares.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$tree/etc/locale.gen"
chroot "$tree" locale-gen >/dev/null
# Each guest makes its own machine-id at first boot (its DHCP client id comes from it).
: >"$tree/etc/machine-id"
rm -f "$tree/var/lib/dbus/machine-id" "$tree/etc/hostname"
# The host's resolver has no business in the guests.
rm -f "$tree/etc/resolv.conf"
printf '127.0.0.1 localhost\n' >"$tree/etc/hosts"
# Host keys come from the seed (cloud-init) or first boot, never shared by every guest.
rm -f "$tree"/etc/ssh/ssh_host_*
cat >"$tree/etc/cloud/cloud.cfg.d/90-rehearsal.cfg" <<'CFG'
# chocoimg rehearsal: the seed comes from the CIDATA disk, as from the installer's stick.
datasource_list: [NoCloud, None]
# cloud-init 22.4's networkd renderer ignores `match: name:`; netplan is Ubuntu's path.
system_info:
  network:
    renderers: [netplan]
CFG
printf '/dev/vda / ext4 defaults 0 1\n' >"$tree/etc/fstab"
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*

cp -L "$tree/vmlinuz" "$work/vmlinuz"
cp -L "$tree/initrd.img" "$work/initrd.img"
# Straight from the tree: no loop device, no mount.
mkfs.ext4 -q -L rehearsal-root -d "$tree" "$work/rootfs.ext4" "$IMAGE_SIZE" >/dev/null
rm -rf "$tree"
mkdir -p "$out.tmp"
mv "$work/vmlinuz" "$work/initrd.img" "$work/rootfs.ext4" "$out.tmp/"
echo "built $(date -u +%FT%TZ) in $(($(date +%s) - started)) s" >"$out.tmp/done"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "base-image.sh: built $out in $(($(date +%s) - started)) s" >&2
echo "$out"
