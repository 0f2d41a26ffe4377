#!/usr/bin/env bash
# Flash speed: `chocoimg flash` against `dd bs=4M conv=fsync` to the same target, and
# its read-back against a plain direct read of the device.
# Goal (issue 9): writing within 1.1x dd; verification read at device speed.
#
#   bench/flash.sh [IMAGE_MIB]     (default 1024)
#
# The target is a loop device this script makes over a file in a temporary folder (the
# only block device a benchmark here may write), or with TARGET=file a plain file
# (`--to-file`). The image is random bytes with its .sha256. Runs are paired (dd, then
# chocoimg, RUNS times, default 5) so both sides see the same load on a shared
# machine; medians and spreads are printed. The image is read from a warm page cache by
# both sides; `sync` comes before every timed run.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
runs=${RUNS:-5}
kind=${TARGET:-loop}
[ "$(id -u)" -eq 0 ] || { echo "run as root (loop devices)" >&2; exit 1; }
for t in /usr/bin/time dd losetup sha256sum; do
  command -v "$t" >/dev/null || { echo "$t missing; run scripts/install-test-deps.sh" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/var/tmp}/chocoimg-flash-bench.XXXXXX")
dev=""
cleanup() {
  if [ -n "$dev" ]; then losetup -d "$dev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q
bin=target/release/chocoimg

head -c $((mib << 20)) /dev/urandom >"$work/node.img"
(cd "$work" && sha256sum node.img >node.img.sha256) # also warms the page cache
truncate -s $(((mib + 64) << 20)) "$work/stick.raw"
if [ "$kind" = loop ]; then
  dev=$(losetup --find --show "$work/stick.raw")
  case "$dev" in /dev/loop*) ;; *) echo "losetup gave $dev" >&2; exit 1 ;; esac
  target=$dev
  flags=(--allow-fixed-disk)
else
  target=$work/stick.raw
  flags=(--to-file)
fi

# Runs "$@" under /usr/bin/time; prints wall seconds.
measure() {
  sync # no write-back left over from the previous run
  /usr/bin/time -f '%e' -o "$work/time" "$@" >"$work/out" 2>"$work/err"
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%s %s\n", a[1], a[NR]}'; }

: >"$work/pairs"; : >"$work/dd"; : >"$work/ddread"; : >"$work/ddsha"; : >"$work/flash"; : >"$work/fwrite"; : >"$work/fread"
iflag=()
[ "$kind" = loop ] && iflag=(iflag=direct)
for i in $(seq "$runs"); do
  measure dd if="$work/node.img" of="$target" bs=4M conv=fsync,notrunc status=none >>"$work/dd"
  measure dd if="$target" of=/dev/null bs=4M count=$((mib / 4)) "${iflag[@]}" status=none >>"$work/ddread"
  # shellcheck disable=SC2016 # expanded by the inner sh
  measure bash -c 'dd if="$1" bs=4M count="$2" "${@:3}" status=none | sha256sum' bash "$target" $((mib / 4)) "${iflag[@]}" >>"$work/ddsha"
  measure "$bin" flash "$work/node.img" "$target" --yes "${flags[@]}" >>"$work/flash"
  grep -q '^verified' "$work/out" || { cat "$work/out" "$work/err" >&2; exit 1; }
  # "  written in 3.1 s (...), read back in 1.2 s (...)"
  sed -n 's/.*written in \([0-9.]*\) s.*read back in \([0-9.]*\) s.*/\1 \2/p' "$work/out" >"$work/phases"
  read -r w r <"$work/phases"
  echo "$w" >>"$work/fwrite"; echo "$r" >>"$work/fread"
  # The pair's own ratio: both ran back to back, under about the same load.
  awk -v a="$w" -v b="$(tail -n1 "$work/dd")" 'BEGIN {print a / b}' >>"$work/pairs"
  echo "run $i: dd $(tail -n1 "$work/dd")s, read $(tail -n1 "$work/ddread")s, flash $(tail -n1 "$work/flash")s (write $w s, verify $r s)" >&2
done

row() { printf '| %-52s | %7s s | %s |\n' "$1" "$(median <"$2")" "$(spread "$2")"; }
echo "target: $kind, image: $mib MiB, runs: $runs, $(date -u +%F), $(nproc) cores"
echo "| what                                                 |  median  | min max |"
echo "|------------------------------------------------------|---------:|---------|"
row "dd if=IMG of=TARGET bs=4M conv=fsync" "$work/dd"
row "chocoimg flash: write phase (zero, write, fsync)" "$work/fwrite"
row "dd if=TARGET of=/dev/null bs=4M ${iflag[*]}" "$work/ddread"
row "same, piped to sha256sum (read + hash)" "$work/ddsha"
row "chocoimg flash: verify phase (read back + SHA-256)" "$work/fread"
row "chocoimg flash: whole process" "$work/flash"
awk -v a="$(median <"$work/fwrite")" -v b="$(median <"$work/dd")" \
  'BEGIN {printf "write / dd, medians: %.2fx (goal <= 1.10)\n", a / b}'
read -r lo hi < <(spread "$work/pairs")
printf 'write / dd, median of the paired ratios: %.2fx (min %.2f, max %.2f)\n' \
  "$(median <"$work/pairs")" "$lo" "$hi"
awk -v a="$(median <"$work/fread")" -v b="$(median <"$work/ddread")" \
  'BEGIN {printf "verify / direct read: %.2fx\n", a / b}'
awk -v a="$(median <"$work/fread")" -v b="$(median <"$work/ddsha")" \
  'BEGIN {printf "verify / direct read piped to sha256sum: %.2fx\n", a / b}'
