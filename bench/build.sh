#!/usr/bin/env bash
# The command users run, timed as a whole process: `chocoimg build --node master1
# --iso X --force` (release build) against `cp X copy.img && sync copy.img` and against
# an xorriso remaster of the same input (`xorriso -indev X -outdev Y -map grub.cfg ...
# -boot_image any replay`, then `sync Y`), in paired runs, on ext4 and on btrfs.
# Goals (issue 7): <= 1.15x cp+sync on ext4; <= 1.5 s for 2 GiB on btrfs; peak RSS
# <= 64 MiB; <= 20k system calls.
#
#   bench/build.sh [PAD_MIB]     (default 2000: a replica ISO of ~2 GiB)
#   RUNS=N (default 5)  FILESYSTEMS="ext4 btrfs" (default)
#
# Run as root: each filesystem is a loop-mounted file the script makes (in $TMPDIR)
# and removes. The input is the test replica (tests/fixtures/replica) padded with
# random bytes, copied onto each filesystem; K3s is a 64 MiB random stand-in served
# from 127.0.0.1 (a real K3s cannot be had here), so CIDATA holds 64 MiB of payload.
# The K3s files are fetched into out/cache once, before the timed runs, as on a
# user's second build; so is the ISO (from the same loopback server), for the
# "cached" runs: the same build without --iso, whose ISO is not hashed again. Every run starts with `sync` (no write-back left over) and a
# warm page cache for the input.
set -euo pipefail
cd "$(dirname "$0")/.."
pad=${1:-2000}
runs=${RUNS:-5}
filesystems=${FILESYSTEMS:-ext4 btrfs}
for t in /usr/bin/time /usr/bin/python3 openssl xorriso grub-mkimage mkfs.vfat mcopy strace \
  mkfs.ext4 mkfs.btrfs losetup; do
  command -v "$t" >/dev/null || { echo "$t missing; run scripts/install-test-deps.sh" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "run as root (loop mounts)" >&2; exit 1; }

cache=target/replica-cache
work=$(mktemp -d "${TMPDIR:-/tmp}/chocoimg-bench.XXXXXX")
mounts=()
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  for m in "${mounts[@]}"; do if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi; done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bin chocoimg -q
bin=$PWD/target/release/chocoimg

tests/fixtures/replica/fetch-kernel.sh "$cache/kernel"
iso=$cache/bench-pad$pad.iso
if [ ! -s "$iso" ]; then
  echo "building a ${pad} MiB replica (once)..." >&2
  head -c 1048576 /dev/urandom >"$work/initrd"
  tests/fixtures/replica/make-replica.sh --out "$iso.tmp" --kernel "$cache/kernel/vmlinuz" \
    --initrd "$work/initrd" --pad-mib "$pad"
  mv "$iso.tmp" "$iso"
fi
iso_sha=$(sha256sum "$iso" | cut -d' ' -f1)
size=$(stat -c %s "$iso")

# The K3s stand-in, on loopback only.
version=v1.28.15+k3s1
mkdir -p "$work/mirror/k3s/$version" "$work/mirror/install/$version"
ln -s "$PWD/$iso" "$work/mirror/ubuntu.iso"
head -c $((64 << 20)) /dev/urandom >"$work/mirror/k3s/$version/k3s"
(cd "$work/mirror/k3s/$version" && sha256sum k3s >sha256sum-amd64.txt)
printf '#!/bin/sh\necho stand-in\n' >"$work/mirror/install/$version/install.sh"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$work/mirror" "$port" \
  >/dev/null 2>&1 &
server=$!
base="http://127.0.0.1:$port"
sed -e "s|^  iso_url:.*|  iso_url: $base/ubuntu.iso|" \
  -e "s|^  iso_sha256:.*|  iso_sha256: $iso_sha|" \
  -e "s|^  version: v.*|  version: $version\n  release_base_url: $base/k3s\n  install_script_url: \"$base/install/{version}/install.sh\"|" \
  profiles/chocolandiadc-mvp.yaml >"$work/profile.yaml"
mkdir -p "$work/home/.ssh"
cp tests/data/operator_id_ed25519.pub "$work/home/.ssh/id_ed25519.pub"
for _ in $(seq 50); do curl -sf "$base/k3s/$version/sha256sum-amd64.txt" >/dev/null && break; sleep 0.1; done

# Runs "$@" under /usr/bin/time after a sync; prints "seconds max_rss_kib cpu_seconds".
measure() {
  sync
  /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" ||
    { cat "$work/stderr" >&2; return 1; }
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The command a user runs, in the filesystem mounted at $1.
build() {
  env HOME="$work/home" CHOCOIMG_OUT="$1/out" "$bin" -p "$work/profile.yaml" \
    build --node master1 --iso "$1/input.iso" --force
}

# The remaster gets a menu of the same size as the one chocoimg writes.
xorriso -osirrox on -indev "$iso" -extract /boot/grub/grub.cfg "$work/grub.cfg" 2>/dev/null
chmod u+w "$work/grub.cfg"
printf '# remastered\n' >>"$work/grub.cfg"

declare -A res
for fs in $filesystems; do
  img=$work/$fs.img
  mnt=$work/mnt-$fs
  # Room for, at once: the input copy, out/cache's ISO (the "cached" runs), the image
  # being replaced (--force renames over it only at the end), the new one, the copy's
  # and the remaster's outputs.
  truncate -s $((size * 6 + (2 << 30))) "$img"
  case $fs in
    ext4) mkfs.ext4 -q -F "$img" ;;
    btrfs) mkfs.btrfs -q -f "$img" ;;
    xfs) mkfs.xfs -q -f "$img" ;;
    *) echo "unknown filesystem $fs" >&2; exit 2 ;;
  esac
  mkdir -p "$mnt"
  mount -o loop "$img" "$mnt"
  mounts+=("$mnt")
  cp --reflink=never "$iso" "$mnt/input.iso"
  sync
  cat "$mnt/input.iso" "$work/mirror/k3s/$version/k3s" >/dev/null # warm, alike for every run
  # Secrets, K3s into the cache, lock: what a second build finds.
  build "$mnt" >/dev/null 2>"$work/warm.log" ||
    { echo "the first build on $fs failed:" >&2; cat "$work/warm.log" >&2; exit 1; }
  # The ISO downloaded into the cache too (and recorded as verified), for the runs
  # without --iso.
  env HOME="$work/home" CHOCOIMG_OUT="$mnt/out" "$bin" -p "$work/profile.yaml" \
    build --node master1 --force >/dev/null 2>"$work/warm.log" ||
    { echo "the build that downloads the ISO on $fs failed:" >&2; cat "$work/warm.log" >&2; exit 1; }

  : >"$work/cp" ; : >"$work/build" ; : >"$work/xo" ; : >"$work/rss" ; : >"$work/ratio" ; : >"$work/xratio"
  : >"$work/cpu" ; : >"$work/cpcpu" ; : >"$work/cached" ; : >"$work/cratio" ; : >"$work/hash"
  for _ in $(seq "$runs"); do
    # shellcheck disable=SC2016 # expanded by the inner sh
    read -r c _ ccpu < <(measure sh -c 'cp "$1" "$2" && sync "$2"' sh "$mnt/input.iso" "$mnt/copy.img")
    rm -f "$mnt/copy.img"
    read -r b rss bcpu < <(measure env HOME="$work/home" CHOCOIMG_OUT="$mnt/out" "$bin" \
      -p "$work/profile.yaml" build --node master1 --iso "$mnt/input.iso" --force)
    read -r k _ _ < <(measure env HOME="$work/home" CHOCOIMG_OUT="$mnt/out" "$bin" \
      -p "$work/profile.yaml" build --node master1 --force)
    echo "$k" >>"$work/cached"
    # One SHA-256 pass over the input alone (OpenSSL, SHA-NI where the CPU has it): a
    # --iso build does two (the pin, the image's .sha256), a cached build one.
    read -r h _ _ < <(measure openssl dgst -sha256 "$mnt/input.iso")
    echo "$h" >>"$work/hash"
    awk -v a="$k" -v b="$c" 'BEGIN {printf "%.3f\n", a/b}' >>"$work/cratio"
    # shellcheck disable=SC2016 # expanded by the inner sh
    read -r x _ < <(measure sh -c 'xorriso -indev "$1" -outdev "$2" -map "$3" /boot/grub/grub.cfg \
      -boot_image any replay -commit -end && sync "$2"' sh \
      "$mnt/input.iso" "$mnt/remaster.iso" "$work/grub.cfg")
    rm -f "$mnt/remaster.iso"
    echo "$ccpu" >>"$work/cpcpu"; echo "$bcpu" >>"$work/cpu"
    echo "$c" >>"$work/cp"; echo "$b" >>"$work/build"; echo "$x" >>"$work/xo"; echo "$rss" >>"$work/rss"
    awk -v a="$b" -v b="$c" 'BEGIN {printf "%.3f\n", a/b}' >>"$work/ratio"
    awk -v a="$b" -v b="$x" 'BEGIN {printf "%.3f\n", a/b}' >>"$work/xratio"
  done
  sync
  # System calls of chocoimg alone (every thread).
  HOME=$work/home CHOCOIMG_OUT=$mnt/out strace -c -f -o "$work/strace" "$bin" \
    -p "$work/profile.yaml" build --node master1 --iso "$mnt/input.iso" --force >/dev/null 2>&1
  calls=$(awk '$NF == "total" {print $(NF-2)}' "$work/strace")
  shared=$(filefrag -v "$mnt/out/chocolandiadc-mvp/master1.img" 2>/dev/null | grep -c shared || true)
  res[$fs]="$(median <"$work/cp") $(median <"$work/build") $(median <"$work/xo") $(median <"$work/ratio") $(median <"$work/xratio") $(sort -n "$work/rss" | tail -n1) $calls $shared $(sort -n "$work/build" | head -n1) $(sort -n "$work/build" | tail -n1) $(median <"$work/cpcpu") $(median <"$work/cpu") $(median <"$work/cached") $(median <"$work/cratio") $(median <"$work/hash")"
  umount "$mnt"
  rm -f "$img"
done

echo "input: replica ISO of $((size >> 20)) MiB + 64 MiB K3s stand-in, $runs paired runs, medians"
printf '%-6s %9s %9s %9s %11s %11s %9s %9s %8s %14s %9s %9s %9s %11s %9s\n' fs "cp+sync" build \
  xorriso "build/cp" "build/xo" "RSS MiB" syscalls shared "build min-max" "cp CPU" \
  "build CPU" cached "cached/cp" "sha256"
for fs in $filesystems; do
  read -r c b x r xr rss calls shared bmin bmax ccpu bcpu k kr h <<<"${res[$fs]}"
  printf '%-6s %8ss %8ss %8ss %10sx %10sx %9s %9s %8s %6s-%ss %8ss %8ss %8ss %10sx %8ss\n' "$fs" \
    "$c" "$b" "$x" "$r" "$xr" "$((rss / 1024))" "$calls" "$shared" "$bmin" "$bmax" "$ccpu" \
    "$bcpu" "$k" "$kr" "$h"
done
echo "(build/cp and build/xo: medians of the per-pair ratios; shared: extents filefrag"
echo " reports shared with another file, i.e. cloned from the input; CPU: user+sys"
echo " seconds, less sensitive than wall time to what else runs on the machine; cached:"
echo " the same build without --iso, the ISO in out/cache already verified: not hashed again;"
echo " sha256: one SHA-256 pass over the input alone, openssl dgst: the floor of one hash)"
