#!/usr/bin/env bash
# Flash speed: `chocoimg flash` against `dd bs=4M conv=fsync` to the same target, and
# its read-back against a plain direct read of the device.
# Goal (issue 9): writing within 1.1x dd; verification read at device speed.
#
#   bench/flash.sh [IMAGE_MIB]     (default 1024; 256 is plenty for TARGET=slow)
#
# The target (TARGET=...):
# - loop (default): a loop device this script makes over a file in a temporary folder
#   (the only block device a benchmark here may write). It is as fast as the host's page
#   cache, so it says little about a stick.
# - slow: the same loop device, capped at a USB stick's bandwidth: WRITE_MBPS (default
#   40) and READ_MBPS (default 100), in MB/s. The cap is the kernel's block throttle on
#   the loop device's request queue, below the page cache, so it holds for every
#   writer: dd's buffered write-back (from dd's fsync or the kernel's flusher) and
#   chocoimg's direct I/O alike. cgroup v1 (blkio): a rule for this device on the root
#   group. cgroup v2 (io): a cgroup this script makes, with io.max for this device, that
#   the script moves itself into (write-back is charged to the cgroup that dirtied the
#   pages). The script checks that the cap holds (a direct read no faster than it)
#   and removes the rule, the cgroup and the loop device at the end.
# - file: a plain file (`--to-file`).
# The image is random bytes with its .sha256. Runs are paired (dd, then chocoimg, RUNS
# times, default 5) so both sides see the same load on a shared machine; medians and
# spreads are printed. The image is read from a warm page cache by both sides; `sync`
# comes before every timed run.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
runs=${RUNS:-5}
kind=${TARGET:-loop}
wmbps=${WRITE_MBPS:-40}
rmbps=${READ_MBPS:-100}
case "$kind" in loop | slow | file) ;; *) echo "TARGET is loop, slow or file, not $kind" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (loop devices)" >&2; exit 1; }
for t in /usr/bin/time dd losetup sha256sum; do
  command -v "$t" >/dev/null || { echo "$t missing; run scripts/install-test-deps.sh" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/var/tmp}/chocoimg-flash-bench.XXXXXX")
dev=""
devnum=""    # MAJ:MIN of the loop device while a throttle rule is on it
v1=/sys/fs/cgroup/blkio
cg=""        # the cgroup v2 this script made
cg_home=""   # where this script's process was before it moved into $cg
cleanup() {
  if [ -n "$devnum" ] && [ -z "$cg" ]; then
    # The rule belongs to the queue, which outlives the detach: remove it first.
    echo "$devnum 0" >"$v1/blkio.throttle.write_bps_device" || true
    echo "$devnum 0" >"$v1/blkio.throttle.read_bps_device" || true
  fi
  if [ -n "$cg" ]; then
    echo $$ >"$cg_home/cgroup.procs" || true
    rmdir "$cg" || true
  fi
  if [ -n "$dev" ]; then losetup -d "$dev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Caps the loop device $1 at $wmbps/$rmbps MB/s (see the header).
throttle() {
  devnum=$(cat "/sys/block/${1#/dev/}/dev")
  local wb=$((wmbps * 1000000)) rb=$((rmbps * 1000000))
  if [ -w "$v1/blkio.throttle.write_bps_device" ]; then
    echo "$devnum $wb" >"$v1/blkio.throttle.write_bps_device"
    echo "$devnum $rb" >"$v1/blkio.throttle.read_bps_device"
  elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    cg_home=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
    echo "+io +memory" >/sys/fs/cgroup/cgroup.subtree_control
    cg=$(mktemp -d /sys/fs/cgroup/chocoimg-flash-bench.XXXXXX)
    echo "$devnum rbps=$rb wbps=$wb" >"$cg/io.max"
    echo $$ >"$cg/cgroup.procs"
  else
    echo "no block throttle here (neither cgroup v1 blkio nor v2 io): TARGET=slow cannot run" >&2
    exit 1
  fi
}

cargo build --release -q
bin=target/release/chocoimg

head -c $((mib << 20)) /dev/urandom >"$work/node.img"
(cd "$work" && sha256sum node.img >node.img.sha256) # also warms the page cache
truncate -s $(((mib + 64) << 20)) "$work/stick.raw"
if [ "$kind" = file ]; then
  target=$work/stick.raw
  flags=(--to-file)
else
  dev=$(losetup --find --show "$work/stick.raw")
  case "$dev" in /dev/loop*) ;; *) echo "losetup gave $dev" >&2; exit 1 ;; esac
  target=$dev
  flags=(--allow-fixed-disk)
  if [ "$kind" = slow ]; then
    throttle "$dev"
    # The cap must hold, or the figures say nothing about a stick: 64 MiB read
    # directly may not beat it by more than the throttle's first-slice allowance.
    t0=$(date +%s.%N)
    dd if="$dev" of=/dev/null bs=4M count=16 iflag=direct status=none
    awk -v s="$t0" -v e="$(date +%s.%N)" -v r="$rmbps" 'BEGIN {
      rate = 64 * 1048576 / (e - s) / 1e6
      if (rate > 1.25 * r) { printf "the read cap did not hold (%.0f MB/s > %s)\n", rate, r > "/dev/stderr"; exit 1 }
    }'
  fi
fi

# Runs "$@" under /usr/bin/time; prints wall seconds.
measure() {
  sync # no write-back left over from the previous run
  /usr/bin/time -f '%e' -o "$work/time" "$@" >"$work/out" 2>"$work/err"
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%s %s\n", a[1], a[NR]}'; }

: >"$work/pairs"; : >"$work/vpairs"; : >"$work/dd"; : >"$work/ddread"; : >"$work/ddsha"; : >"$work/flash"; : >"$work/fwrite"; : >"$work/fread"
iflag=()
[ "$kind" != file ] && iflag=(iflag=direct)
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
  # The pair's own ratios: both ran back to back, under about the same load.
  awk -v a="$w" -v b="$(tail -n1 "$work/dd")" 'BEGIN {print a / b}' >>"$work/pairs"
  awk -v a="$r" -v b="$(tail -n1 "$work/ddread")" 'BEGIN {print a / b}' >>"$work/vpairs"
  echo "run $i: dd $(tail -n1 "$work/dd")s, read $(tail -n1 "$work/ddread")s, flash $(tail -n1 "$work/flash")s (write $w s, verify $r s)" >&2
done

row() { printf '| %-52s | %7s s | %s |\n' "$1" "$(median <"$2")" "$(spread "$2")"; }
what="target: $kind"
[ "$kind" = slow ] && what="$what (capped at $wmbps MB/s write, $rmbps MB/s read)"
echo "$what, image: $mib MiB, runs: $runs, $(date -u +%F), $(nproc) cores"
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
read -r lo hi < <(spread "$work/vpairs")
printf 'verify / direct read, median of the paired ratios: %.2fx (min %.2f, max %.2f)\n' \
  "$(median <"$work/vpairs")" "$lo" "$hi"
awk -v a="$(median <"$work/fread")" -v b="$(median <"$work/ddsha")" \
  'BEGIN {printf "verify / direct read piped to sha256sum: %.2fx\n", a / b}'
awk -v f="$(median <"$work/flash")" -v d="$(median <"$work/dd")" -v r="$(median <"$work/ddread")" \
  'BEGIN {printf "whole process / (dd + direct read), medians: %.2fx\n", f / (d + r)}'
if [ "$kind" = slow ]; then
  awk -v w="$(median <"$work/fwrite")" -v r="$(median <"$work/fread")" -v m="$mib" \
    -v cw="$wmbps" -v cr="$rmbps" 'BEGIN {
      printf "chocoimg write %.1f MB/s of the %s MB/s cap; verify %.1f MB/s of %s\n",
        m * 1048576 / w / 1e6, cw, m * 1048576 / r / 1e6, cr }'
fi
