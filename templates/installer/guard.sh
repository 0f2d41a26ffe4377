# chocoimg's reinstall guard, the installer's first early-command (before any disk is
# touched): a machine that already holds a chocoimg node is never erased, unless the
# stick's "{{ reinstall_title }}" entry put {{ reinstall_arg }} on the kernel
# command line. With arguments, only those block devices (and their partitions) are read.
if grep -qw -- {{ reinstall_arg }} /proc/cmdline; then
  echo "chocoimg: {{ reinstall_arg }} given at the boot menu: installing {{ node }} over what the disk holds"
  exit 0
fi
marker={{ marker }}
if ! devices=$(lsblk -rnpo NAME "$@"); then
  echo "chocoimg: cannot list the block devices, so not installing (nothing was erased)" >&2
  exit 1
fi
mnt=$(mktemp -d /tmp/chocoimg-guard.XXXXXX) || exit 1
found="" cluster="" node=""
for dev in $devices; do
  case "$(blkid -p -o value -s TYPE "$dev" 2>/dev/null)" in
    ext2 | ext3 | ext4) ;;
    *) continue ;;
  esac
  # noload: a look that never replays the journal, so it never writes to the disk.
  mount -o ro,noload "$dev" "$mnt" 2>/dev/null || continue
  if [ -f "$mnt$marker" ]; then
    found=$dev
    # Only the characters a cluster or node name has: the disk's bytes reach the console.
    cluster=$(sed -n 's/^chocoimg_cluster=//p' "$mnt$marker" | head -n 1 | tr -cd 'a-z0-9.-')
    node=$(sed -n 's/^chocoimg_node=//p' "$mnt$marker" | head -n 1 | tr -cd 'a-z0-9.-')
  fi
  umount "$mnt"
  [ -n "$found" ] && break
done
rmdir "$mnt"
if [ -n "$found" ]; then
  msg="chocoimg: STOPPED, nothing was erased. This machine already holds node ${node:-?} of cluster ${cluster:-?} (on $found).
To start that node: remove the stick and restart.
To reinstall {{ node }} here, ERASING that disk: restart from the stick and choose \"{{ reinstall_title }}\" in the boot menu."
  printf '%s\n' "$msg" >&2
  printf '\n%s\n\n' "$msg" >/dev/console 2>/dev/null
  exit 1
fi
echo "chocoimg: no chocoimg node on this machine: installing {{ node }}"
