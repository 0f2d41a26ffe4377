//! Disks on Linux: /sys/block (size, removable, the device path through a USB bus,
//! partitions, holders), /proc/self/mountinfo and /proc/swaps (what is in use), and
//! udev's database when there is one (filesystem type and label).
use super::disk::{run_tool, Described, Disk, Mount, Partition};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the system's tables are read from: the real ones, or a copy in a unit test.
#[derive(Debug, Clone)]
pub struct System {
    /// /sys
    pub sys: PathBuf,
    /// /dev, where device nodes are named.
    pub dev: PathBuf,
    /// /run/udev/data
    pub udev: PathBuf,
    pub mountinfo: String,
    pub swaps: String,
}

impl System {
    /// This machine's tables, read now.
    pub fn read() -> Result<System> {
        let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
        Ok(System {
            sys: "/sys".into(),
            dev: "/dev".into(),
            udev: "/run/udev/data".into(),
            mountinfo: read("/proc/self/mountinfo")?,
            swaps: std::fs::read_to_string("/proc/swaps").unwrap_or_default(),
        })
    }

    /// Every whole disk in /sys/block, virtual ones (loop, ram, zram, device-mapper)
    /// and optical drives left out.
    pub fn disks(&self) -> Result<Vec<Disk>> {
        let block = self.sys.join("block");
        let mut names: Vec<String> = std::fs::read_dir(&block)
            .with_context(|| format!("reading {}", block.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let real = std::fs::canonicalize(block.join(&name)).unwrap_or_default();
            let virt = real.components().any(|c| c.as_os_str() == "virtual");
            if virt || name.starts_with("sr") {
                continue;
            }
            out.push(self.disk(&name)?);
        }
        Ok(out)
    }

    /// The whole disk /sys/block/`name`.
    pub fn disk(&self, name: &str) -> Result<Disk> {
        let dir = self.sys.join("block").join(name);
        let real =
            std::fs::canonicalize(&dir).with_context(|| format!("reading {}", dir.display()))?;
        let sectors: u64 = attr(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut partitions = Vec::new();
        let mut devices = vec![(dir.clone(), self.dev.join(name))];
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .filter(|e| e.path().join("partition").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort_by_key(|p| (p.len(), p.clone()));
        for part in entries {
            let pdir = dir.join(&part);
            let path = self.dev.join(&part);
            let udev = self.udev_props(&pdir);
            partitions.push(Partition {
                path: path.clone(),
                size: attr(&pdir.join("size"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 512,
                fs_type: udev.get("ID_FS_TYPE").cloned(),
                label: udev.get("ID_FS_LABEL").cloned(),
            });
            devices.push((pdir, path));
        }
        // Device-mapper, RAID and the like built on the disk: their mounts count too.
        let mut i = 0;
        while i < devices.len() {
            let holders = devices[i].0.join("holders");
            if let Ok(rd) = std::fs::read_dir(&holders) {
                for h in rd.flatten() {
                    let hname = h.file_name().to_string_lossy().into_owned();
                    let hdir = self.sys.join("block").join(&hname);
                    if !devices.iter().any(|(d, _)| d == &hdir) {
                        devices.push((hdir, self.dev.join(&hname)));
                    }
                }
            }
            i += 1;
        }
        let mounts = self.mounts_of(&devices);
        let holds_root = mounts.iter().any(|m| m.mount_point == "/");
        Ok(Disk {
            path: self.dev.join(name),
            name: name.to_string(),
            vendor: attr(&dir.join("device/vendor")),
            model: attr(&dir.join("device/model")),
            serial: serial(&dir, &real),
            size: sectors * 512,
            removable: attr(&dir.join("removable")).as_deref() == Some("1"),
            usb: through_usb(&real),
            holds_root,
            partitions,
            mounts,
        })
    }

    /// What is mounted from, or swapped to, any of `devices` (sysfs dir, device node).
    fn mounts_of(&self, devices: &[(PathBuf, PathBuf)]) -> Vec<Mount> {
        let by_number: HashMap<String, &PathBuf> = devices
            .iter()
            .filter_map(|(dir, node)| attr(&dir.join("dev")).map(|n| (n, node)))
            .collect();
        let mut out = Vec::new();
        for line in self.mountinfo.lines() {
            let Some(m) = MountLine::parse(line) else {
                continue;
            };
            // By device number, or by source for filesystems (btrfs) that report an
            // anonymous number.
            let node = by_number.get(m.number).copied().or_else(|| {
                devices
                    .iter()
                    .find(|(_, node)| Path::new(&m.source) == node.as_path())
                    .map(|(_, node)| node)
            });
            if let Some(node) = node {
                out.push(Mount {
                    source: node.clone(),
                    mount_point: m.mount_point,
                });
            }
        }
        for line in self.swaps.lines().skip(1) {
            let Some(file) = line.split_whitespace().next() else {
                continue;
            };
            if let Some((_, node)) = devices.iter().find(|(_, n)| Path::new(file) == n) {
                out.push(Mount {
                    source: node.clone(),
                    mount_point: "[swap]".into(),
                });
            }
        }
        out
    }

    /// udev's properties of a block device (empty without udev, as in an initramfs).
    fn udev_props(&self, sysdir: &Path) -> HashMap<String, String> {
        let Some(number) = attr(&sysdir.join("dev")) else {
            return HashMap::new();
        };
        let text =
            std::fs::read_to_string(self.udev.join(format!("b{number}"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("E:"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Describes a block device given as the target.
    pub fn describe_device(&self, path: &Path, meta: &std::fs::Metadata) -> Result<Described> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if !meta.file_type().is_block_device() {
            return Ok(Described::Other);
        }
        let (major, minor) = split_dev(meta.rdev());
        let dir = self.sys.join(format!("dev/block/{major}:{minor}"));
        let real = std::fs::canonicalize(&dir)
            .with_context(|| format!("finding {} in {}", path.display(), dir.display()))?;
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if real.join("partition").is_file() {
            let whole = real
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| self.dev.join(n));
            return Ok(Described::Partition { whole });
        }
        let mut disk = self.disk(&name)?;
        // Keep the path the user gave (a /dev/disk/by-id link stays readable).
        disk.path = path.to_path_buf();
        Ok(Described::Disk(disk))
    }
}

/// One line of /proc/self/mountinfo, the fields used here.
struct MountLine<'a> {
    number: &'a str,
    mount_point: String,
    source: String,
}

impl<'a> MountLine<'a> {
    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
    fn parse(line: &'a str) -> Option<MountLine<'a>> {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        Some(MountLine {
            number: fields.get(2)?,
            mount_point: unescape(fields.get(4)?),
            source: unescape(fields.get(dash + 2)?),
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// glibc's major/minor split of a dev_t.
fn split_dev(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// A sysfs attribute, trimmed; None when absent or empty.
fn attr(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Whether the device's path in /sys/devices runs through a USB bus (`.../usb2/2-1/...`).
fn through_usb(real: &Path) -> bool {
    real.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.strip_prefix("usb")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The serial number: the USB device's iSerial (the nearest ancestor with `serial` and
/// `idVendor`), else the block device's own `serial` (virtio, NVMe).
fn serial(dir: &Path, real: &Path) -> Option<String> {
    let mut p = real.parent();
    while let Some(d) = p {
        if d.join("idVendor").is_file() {
            if let Some(s) = attr(&d.join("serial")) {
                return Some(s);
            }
        }
        p = d.parent();
    }
    attr(&dir.join("serial")).or_else(|| attr(&dir.join("device/serial")))
}

pub fn list_disks() -> Result<Vec<Disk>> {
    System::read()?.disks()
}

pub fn describe_device(path: &Path, meta: &std::fs::Metadata) -> Result<Described> {
    System::read()?.describe_device(path, meta)
}

/// `umount` every mount from the disk, the deepest mount point first.
pub fn unmount(disk: &Disk) -> Result<()> {
    let mut points: Vec<&str> = disk
        .mounts
        .iter()
        .map(|m| m.mount_point.as_str())
        .filter(|p| *p != "[swap]")
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        run_tool(std::process::Command::new("umount").arg(p))
            .with_context(|| format!("unmounting {p} from {}", disk.path.display()))?;
        eprintln!("unmounted {p}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A /sys copy: a USB stick (sdb, one partition), a SATA disk (sda) holding /,
    /// and a loop device.
    fn fake() -> (tempfile::TempDir, System) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        let usbdev = "sys/devices/pci0000:00/0000:00:04.0/usb2/2-1";
        w(&format!("{usbdev}/idVendor"), "0781\n");
        w(&format!("{usbdev}/serial"), "4C530001\n");
        let sdb = format!("{usbdev}/2-1:1.0/host2/target2:0:0/2:0:0:0/block/sdb");
        w(&format!("{sdb}/size"), "60062500\n");
        w(&format!("{sdb}/removable"), "1\n");
        w(&format!("{sdb}/dev"), "8:16\n");
        w(&format!("{sdb}/device/vendor"), "SanDisk \n");
        w(&format!("{sdb}/device/model"), "Ultra           \n");
        w(&format!("{sdb}/sdb1/partition"), "1\n");
        w(&format!("{sdb}/sdb1/size"), "60060000\n");
        w(&format!("{sdb}/sdb1/dev"), "8:17\n");
        std::fs::create_dir_all(root.join(format!("{sdb}/holders"))).unwrap();
        let sda = "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda";
        w(&format!("{sda}/size"), "1000215216\n");
        w(&format!("{sda}/removable"), "0\n");
        w(&format!("{sda}/dev"), "8:0\n");
        w(&format!("{sda}/device/model"), "Samsung SSD\n");
        w(&format!("{sda}/sda2/partition"), "2\n");
        w(&format!("{sda}/sda2/size"), "1000000000\n");
        w(&format!("{sda}/sda2/dev"), "8:2\n");
        // / is on dm-0, built on sda2.
        w(&format!("{sda}/sda2/holders/dm-0"), "");
        let dm = "sys/devices/virtual/block/dm-0";
        w(&format!("{dm}/dev"), "254:0\n");
        let lo = "sys/devices/virtual/block/loop0";
        w(&format!("{lo}/size"), "2048\n");
        w(&format!("{lo}/dev"), "7:0\n");
        std::fs::create_dir_all(root.join("sys/block")).unwrap();
        for (n, p) in [("sdb", &*sdb), ("sda", sda), ("dm-0", dm), ("loop0", lo)] {
            symlink(root.join(p), root.join("sys/block").join(n)).unwrap();
        }
        w(
            "udev/b8:17",
            "S:disk/by-label/MY\\x20FILES\nE:ID_FS_TYPE=vfat\nE:ID_FS_LABEL=MY FILES\n",
        );
        let sys = System {
            sys: root.join("sys"),
            dev: "/dev".into(),
            udev: root.join("udev"),
            mountinfo: "\
27 1 254:0 / / rw,relatime - ext4 /dev/mapper/root rw
90 27 8:17 / /media/u/MY\\040FILES rw,nosuid - vfat /dev/sdb1 rw
22 27 0:21 / /proc rw,relatime - proc proc rw
"
            .into(),
            swaps: "Filename Type Size Used Priority\n".into(),
        };
        (t, sys)
    }

    #[test]
    fn finds_the_stick_and_what_is_mounted_from_it() {
        let (_t, sys) = fake();
        let disks = sys.disks().unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "sdb"], "virtual disks are left out");
        let sdb = &disks[1];
        assert!(sdb.usb && sdb.removable && sdb.is_candidate());
        assert_eq!(sdb.size, 60062500 * 512);
        assert_eq!(sdb.description(), "SanDisk Ultra");
        assert_eq!(sdb.serial.as_deref(), Some("4C530001"));
        assert!(!sdb.holds_root);
        assert_eq!(
            sdb.mounts,
            vec![Mount {
                source: "/dev/sdb1".into(),
                mount_point: "/media/u/MY FILES".into()
            }]
        );
        assert_eq!(sdb.partitions[0].label.as_deref(), Some("MY FILES"));
        assert_eq!(sdb.partitions[0].fs_type.as_deref(), Some("vfat"));
        let lost = sdb.what_is_lost().join("\n");
        assert!(lost.contains("/dev/sdb1") && lost.contains("mounted on /media/u/MY FILES"));
    }

    #[test]
    fn the_disk_under_root_through_device_mapper_holds_root() {
        let (_t, sys) = fake();
        let sda = sys.disk("sda").unwrap();
        assert!(sda.holds_root, "{sda:?}");
        assert!(!sda.usb && !sda.removable && !sda.is_candidate());
    }

    #[test]
    fn swap_counts_as_in_use() {
        let (_t, mut sys) = fake();
        sys.swaps.push_str("/dev/sdb1 partition 1024 0 -2\n");
        sys.mountinfo.clear();
        let sdb = sys.disk("sdb").unwrap();
        assert_eq!(sdb.mounts[0].mount_point, "[swap]");
    }

    #[test]
    fn usb_is_a_bus_component_not_a_name() {
        assert!(through_usb(Path::new(
            "/sys/devices/pci0/0000:00:04.0/usb2/2-1/x"
        )));
        assert!(!through_usb(Path::new("/sys/devices/pci0/usbfoo/x")));
        assert!(!through_usb(Path::new("/sys/devices/virtual/block/loop0")));
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        assert_eq!(split_dev(0x0811), (8, 17));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
