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
# - vm: a USB stick in a QEMU guest (TCG; ACCEL=kvm where KVM works): QEMU's
#   usb-storage on xHCI, seen by the flash VM test's Debian kernel through its
#   usb-storage driver, over a file of this script, capped by QEMU's own throttle
#   (throttling.bps-write/-read) at WRITE_MBPS/READ_MBPS. The guest (its initramfs
#   carries chocoimg, GNU dd and sha256sum with their libraries, and the image) runs
#   the same pairs and prints them on its serial port. Its RAM holds the image twice
#   while the initramfs unpacks: keep IMAGE_MIB small (256).
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
case "$kind" in loop | slow | vm | file) ;; *) echo "TARGET is loop, slow, vm or file, not $kind" >&2; exit 2 ;; esac
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
trap "exit 130" INT TERM # so that cleanup runs: a throttle rule left on loopN would slow its next user

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
elif [ "$kind" = vm ]; then
  target="a QEMU usb-storage stick"
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

# TARGET=vm: the guest's /init. It finds the USB disk, then runs the pairs; each run
# prints "BENCH-RUN dd read ddsha flash write verify" (seconds, from /proc/uptime).
guest_init() {
  # The tests' start: busybox, /dev /proc /sys, output to the serial port, the modules.
  cat tests/fixtures/replica/init-preamble.sh
  cat <<GUEST
stick=""; i=0
while [ -z "\$stick" ] && [ \$i -lt 240 ]; do
  for d in /sys/block/sd*; do
    case "\$(readlink -f "\$d")" in */usb*) [ -e "\$d/size" ] && stick=\${d##*/} ;; esac
  done
  [ -n "\$stick" ] || usleep 250000
  i=\$((i + 1))
done
[ -n "\$stick" ] || { echo "BENCH-FAIL no USB disk appeared"; poweroff -f; }
dev=/dev/\$stick; img=/images/node.img; n=$((mib / 4))
now() { cut -d' ' -f1 /proc/uptime; }
timed() {
  sync; a=\$(now); "\$@" >/tmp/out 2>&1; rc=\$?; b=\$(now)
  awk -v a=\$a -v b=\$b 'BEGIN { printf "%.2f", b - a }'; return \$rc
}
for i in \$(seq $runs); do
  d=\$(timed /opt/gnu/dd if=\$img of=\$dev bs=4M conv=fsync,notrunc status=none) || { echo "BENCH-FAIL dd"; cat /tmp/out; break; }
  r=\$(timed /opt/gnu/dd if=\$dev of=/dev/null bs=4M count=\$n iflag=direct status=none)
  s=\$(timed sh -c "/opt/gnu/dd if=\$dev bs=4M count=\$n iflag=direct status=none | /opt/gnu/sha256sum")
  f=\$(timed chocoimg flash \$img \$dev --yes) && grep -q '^verified' /tmp/out || { echo "BENCH-FAIL flash"; cat /tmp/out; break; }
  ph=\$(grep 'written in' /tmp/out)
  echo "BENCH-RUN \$d \$r \$s \$f \$ph"
done
echo "BENCH-DONE"
poweroff -f
GUEST
}

# TARGET=vm: builds the guest, runs it, and files its runs like the host's.
vm_runs() {
  for t in qemu-system-x86_64 cpio strip ldd timeout /bin/busybox; do
    command -v "$t" >/dev/null || { echo "$t missing; run scripts/install-test-deps.sh" >&2; exit 1; }
  done
  local kdir=target/replica-cache/kernel root=$work/root
  tests/fixtures/replica/fetch-kernel.sh "$kdir"
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules,images,opt/gnu,usr/bin}
  cp /bin/busybox "$root/bin/busybox"
  strip -o "$root/usr/bin/chocoimg" "$bin"
  cp /usr/bin/dd /usr/bin/sha256sum "$root/opt/gnu/"
  ldd "$bin" /usr/bin/dd /usr/bin/sha256sum | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u |
    while read -r lib; do mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; done
  cp "$kdir/modules.load" "$root/"
  cp "$kdir"/modules/*.ko "$root/modules/"
  mv "$work/node.img" "$work/node.img.sha256" "$root/images/"
  guest_init >"$root/init"
  chmod 755 "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd"
  rm -rf "$root"
  local accel=${ACCEL:-tcg}
  echo "guest: $accel, $((mib * 2 + 512)) MiB" >&2
  timeout --kill-after=10 $((runs * 300 + 120)) qemu-system-x86_64 \
    -accel "$accel" -machine q35 -m $((mib * 2 + 512)) -smp 2 -nodefaults \
    -no-reboot -display none -monitor none -serial "file:$work/serial.log" \
    -kernel "$kdir/vmlinuz" -initrd "$work/initrd" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1" \
    -drive "if=none,id=stick,file=$work/stick.raw,format=raw,throttling.bps-write=$((wmbps * 1000000)),throttling.bps-read=$((rmbps * 1000000))" \
    -device qemu-xhci,id=xhci -device usb-storage,bus=xhci.0,drive=stick,serial=CHOCOBENCH01 \
    </dev/null
  tr -d '\r' <"$work/serial.log" >"$work/serial"
  if ! grep -q '^BENCH-DONE' "$work/serial" || grep -q '^BENCH-FAIL' "$work/serial"; then
    cat "$work/serial" >&2
    exit 1
  fi
  local i=0 d r s f w v
  while read -r _ d r s f ph; do
    i=$((i + 1))
    read -r w v < <(echo "$ph" | phases)
    echo "$d" >>"$work/dd"; echo "$r" >>"$work/ddread"; echo "$s" >>"$work/ddsha"
    echo "$f" >>"$work/flash"; echo "$w" >>"$work/fwrite"; echo "$v" >>"$work/fread"
    awk -v a="$w" -v b="$d" 'BEGIN {print a / b}' >>"$work/pairs"
    awk -v a="$v" -v b="$r" 'BEGIN {print a / b}' >>"$work/vpairs"
    echo "run $i: dd ${d}s, read ${r}s, flash ${f}s (write $w s, verify $v s)" >&2
  done < <(grep '^BENCH-RUN ' "$work/serial")
}

# Runs "$@" under /usr/bin/time; prints wall seconds.
measure() {
  sync # no write-back left over from the previous run
  /usr/bin/time -f '%e' -o "$work/time" "$@" >"$work/out" 2>"$work/err"
  cat "$work/time"
}
# chocoimg's "  written in 3.1 s (86.6 MB/s), read back in 1.2 s (223.7 MB/s)" as the two
# phases' seconds, from the rates: they carry four digits where the seconds carry two.
phases() {
  sed -n 's/.*written in [0-9.]* s (\([0-9.]*\) MB\/s).*read back in [0-9.]* s (\([0-9.]*\) MB\/s).*/\1 \2/p' |
    awk -v b=$((mib << 20)) '{printf "%.3f %.3f\n", b / ($1 * 1e6), b / ($2 * 1e6)}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%s %s\n", a[1], a[NR]}'; }

: >"$work/pairs"; : >"$work/vpairs"; : >"$work/dd"; : >"$work/ddread"; : >"$work/ddsha"; : >"$work/flash"; : >"$work/fwrite"; : >"$work/fread"
iflag=()
[ "$kind" != file ] && iflag=(iflag=direct)
if [ "$kind" = vm ]; then
  vm_runs
else
  for i in $(seq "$runs"); do
    measure dd if="$work/node.img" of="$target" bs=4M conv=fsync,notrunc status=none >>"$work/dd"
    measure dd if="$target" of=/dev/null bs=4M count=$((mib / 4)) "${iflag[@]}" status=none >>"$work/ddread"
    # shellcheck disable=SC2016 # expanded by the inner sh
    measure bash -c 'dd if="$1" bs=4M count="$2" "${@:3}" status=none | sha256sum' bash "$target" $((mib / 4)) "${iflag[@]}" >>"$work/ddsha"
    measure "$bin" flash "$work/node.img" "$target" --yes "${flags[@]}" >>"$work/flash"
    grep -q '^verified' "$work/out" || { cat "$work/out" "$work/err" >&2; exit 1; }
    read -r w r < <(phases <"$work/out")
    echo "$w" >>"$work/fwrite"; echo "$r" >>"$work/fread"
    # The pair's own ratios: both ran back to back, under about the same load.
    awk -v a="$w" -v b="$(tail -n1 "$work/dd")" 'BEGIN {print a / b}' >>"$work/pairs"
    awk -v a="$r" -v b="$(tail -n1 "$work/ddread")" 'BEGIN {print a / b}' >>"$work/vpairs"
    echo "run $i: dd $(tail -n1 "$work/dd")s, read $(tail -n1 "$work/ddread")s, flash $(tail -n1 "$work/flash")s (write $w s, verify $r s)" >&2
  done
fi

row() { printf '| %-52s | %7s s | %s |\n' "$1" "$(median <"$2")" "$(spread "$2")"; }
what="target: $kind"
case "$kind" in slow | vm) what="$what (capped at $wmbps MB/s write, $rmbps MB/s read)" ;; esac
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
if [ "$kind" != loop ] && [ "$kind" != file ]; then
  awk -v w="$(median <"$work/fwrite")" -v r="$(median <"$work/fread")" -v m="$mib" \
    -v cw="$wmbps" -v cr="$rmbps" 'BEGIN {
      printf "chocoimg write %.1f MB/s of the %s MB/s cap; verify %.1f MB/s of %s\n",
        m * 1048576 / w / 1e6, cw, m * 1048576 / r / 1e6, cr }'
fi
