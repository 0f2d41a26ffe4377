#!/usr/bin/env bash
# Image build time and memory against a plain copy of the same ~2 GiB input.
# Goal (image.md): time <= 1.2x the copy, peak RSS <= 64 MiB.
#
#   bench/build.sh [PAD_MIB]     (default 2000: a replica ISO of ~2 GiB)
#
# The input is the test replica (tests/fixtures/replica) padded with random bytes; the
# payload is 64 MiB of random bytes standing in for the K3s binary. Runs each side
# RUNS times (default 3) with a warm page cache and prints medians. `image_build`
# fsyncs its output before renaming it (a crash must not leave a half image), so the
# copy is timed both bare and followed by `sync FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
pad=${1:-2000}
runs=${RUNS:-3}
for t in /usr/bin/time xorriso grub-mkimage mkfs.vfat mcopy; do
  command -v "$t" >/dev/null || { echo "$t missing; run scripts/install-test-deps.sh" >&2; exit 1; }
done
cache=target/replica-cache
work=$(mktemp -d "${TMPDIR:-/tmp}/chocoimg-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release --example image_build -q
bin=target/release/examples/image_build

tests/fixtures/replica/fetch-kernel.sh "$cache/kernel"
iso=$cache/bench-pad$pad.iso
if [ ! -s "$iso" ]; then
  echo "building a ${pad} MiB replica (once)..." >&2
  head -c 1048576 /dev/urandom >"$work/initrd"
  tests/fixtures/replica/make-replica.sh --out "$iso.tmp" --kernel "$cache/kernel/vmlinuz" \
    --initrd "$work/initrd" --pad-mib "$pad"
  mv "$iso.tmp" "$iso"
fi
head -c $((64 << 20)) /dev/urandom >"$work/k3s"
cat "$iso" "$work/k3s" >/dev/null # warm the page cache for every run alike

# Runs "$@" under /usr/bin/time; prints "seconds max_rss_kib".
measure() {
  sync # no write-back left over from the previous run
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -n "$1" | awk '{a[NR]=$1} END {printf "(min %s, max %s)", a[1], a[NR]}'; }

: >"$work/cp" ; : >"$work/cpsync" ; : >"$work/img" ; : >"$work/rss" ; : >"$work/sha"
hash_py='import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)'
for _ in $(seq "$runs"); do
  # The floor: one SHA-256 pass over the input (OpenSSL, SHA-NI where the CPU has it).
  read -r s _ < <(measure /usr/bin/python3 -c "$hash_py" "$iso"); echo "$s" >>"$work/sha"
  read -r s _ < <(measure cp "$iso" "$work/copy.img"); echo "$s" >>"$work/cp"; rm -f "$work/copy.img"
  # shellcheck disable=SC2016 # expanded by the inner sh
  read -r s _ < <(measure sh -c 'cp "$1" "$2" && sync "$2"' sh "$iso" "$work/copy.img")
  echo "$s" >>"$work/cpsync"; rm -f "$work/copy.img"
  read -r s rss < <(measure "$bin" "$iso" "$work/node.img" "$work/k3s")
  echo "$s" >>"$work/img"; echo "$rss" >>"$work/rss"; rm -f "$work/node.img" "$work/node.img.sha256"
done
sha_s=$(median <"$work/sha"); cp_s=$(median <"$work/cp"); cps_s=$(median <"$work/cpsync"); img_s=$(median <"$work/img")
rss=$(sort -n "$work/rss" | tail -n1)
size=$(stat -c %s "$iso")
echo "input:            $iso ($((size >> 20)) MiB) + 64 MiB payload, $runs runs, medians"
echo "cp:               ${cp_s} s $(spread "$work/cp")"
echo "cp + sync:        ${cps_s} s $(spread "$work/cpsync")"
echo "sha-256 alone:    ${sha_s} s $(spread "$work/sha") (OpenSSL, one pass over the input)"
echo "image build:      ${img_s} s $(spread "$work/img") (copy + patch + CIDATA + SHA-256 + fsync)"
awk -v a="$img_s" -v b="$cp_s" -v c="$cps_s" \
  'BEGIN {printf "ratio:            %.2fx cp, %.2fx cp+sync (goal <= 1.2x)\n", a/b, a/c}'
echo "peak RSS:         $((rss / 1024)) MiB (goal <= 64 MiB)"
