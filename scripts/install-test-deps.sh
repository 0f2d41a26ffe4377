#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the test suite drives for real (Avahi, sshd,
# cloud-init, xorriso, gdisk, dosfstools, mtools, QEMU, OVMF, GRUB, busybox, shellcheck,
# kubectl, man-db and the three shells `chocoimg completions` is tested with; debootstrap,
# qemu-img and debugfs for the rehearsal's guests; netplan.io, whose `netplan generate`
# checks the seeds' VLAN netplan)
# and the python zeroconf module used as a second mDNS implementation (python3-yaml: the
# K3s HA stand-in reads K3s config files).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(avahi-daemon avahi-utils dbus iproute2 openssh-server openssh-client
  qemu-system-x86 ovmf grub-efi-amd64-bin grub-pc-bin grub-common mtools dosfstools xorriso
  busybox-static cpio gdisk fdisk kmod cloud-init shellcheck util-linux
  python3-zeroconf python3-jsonschema python3-yaml openssl ca-certificates zstd sudo time curl passwd
  systemd strace btrfs-progs xfsprogs e2fsprogs man-db groff-base zsh fish debootstrap
  qemu-utils binutils bsdutils netplan.io)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
# Always refresh the lists: the image tests `apt-get download` Debian's current kernel,
# which stale lists would name at a version the mirror no longer has.
$sudo apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Real kubectl reads the kubeconfig fetch-kubeconfig merges. A machine that has one keeps
# it; Debian's is in kubernetes-client.
if ! command -v kubectl >/dev/null; then
  $sudo apt-get install -y -qq --no-install-recommends kubernetes-client
fi
