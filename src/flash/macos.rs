//! Disks on macOS, from `diskutil list -plist external physical` and `diskutil info
//! -plist`. The parsing is plain Rust over the plist text (unit-tested on any system
//! with output in Apple's format); only running `diskutil` needs a Mac.
use super::disk::{run_tool, Described, Disk, Mount, Partition};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `diskutil list -plist`: the whole disks and their partitions.
#[derive(Debug, Deserialize)]
struct List {
    #[serde(rename = "AllDisksAndPartitions", default)]
    disks: Vec<ListedDisk>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedDisk {
    #[serde(rename = "DeviceIdentifier")]
    pub id: String,
    #[serde(rename = "MountPoint")]
    pub mount_point: Option<String>,
    #[serde(rename = "Partitions", default)]
    pub partitions: Vec<ListedPartition>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedPartition {
    #[serde(rename = "DeviceIdentifier")]
    pub id: String,
    #[serde(rename = "Size", default)]
    pub size: u64,
    #[serde(rename = "Content")]
    pub content: Option<String>,
    #[serde(rename = "VolumeName")]
    pub volume_name: Option<String>,
    #[serde(rename = "MountPoint")]
    pub mount_point: Option<String>,
}

/// `diskutil info -plist DEVICE`: the keys used here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Info {
    #[serde(rename = "DeviceIdentifier")]
    pub id: String,
    #[serde(rename = "DeviceNode", default)]
    pub node: String,
    #[serde(rename = "WholeDisk", default)]
    pub whole_disk: bool,
    #[serde(rename = "ParentWholeDisk")]
    pub parent_whole_disk: Option<String>,
    #[serde(rename = "MediaName")]
    pub media_name: Option<String>,
    #[serde(rename = "IORegistryEntryName")]
    pub io_registry_name: Option<String>,
    #[serde(rename = "BusProtocol")]
    pub bus_protocol: Option<String>,
    #[serde(rename = "Internal", default)]
    pub internal: bool,
    #[serde(rename = "Removable", default)]
    pub removable: bool,
    #[serde(rename = "RemovableMedia", default)]
    pub removable_media: bool,
    #[serde(rename = "VirtualOrPhysical")]
    pub virtual_or_physical: Option<String>,
    #[serde(rename = "Size", default)]
    pub size: u64,
    #[serde(rename = "TotalSize", default)]
    pub total_size: u64,
    #[serde(rename = "MountPoint")]
    pub mount_point: Option<String>,
    /// For an APFS volume: the partitions its container lives on.
    #[serde(rename = "APFSPhysicalStores", default)]
    pub apfs_physical_stores: Vec<PhysicalStore>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PhysicalStore {
    #[serde(rename = "APFSPhysicalStore")]
    pub id: String,
}

pub fn parse_list(xml: &[u8]) -> Result<Vec<ListedDisk>> {
    let list: List = plist::from_bytes(xml).context("reading `diskutil list -plist` output")?;
    Ok(list.disks)
}

pub fn parse_info(xml: &[u8]) -> Result<Info> {
    plist::from_bytes(xml).context("reading `diskutil info -plist` output")
}

/// "disk0" from "disk0s2" (or "disk3s1s1").
fn whole_disk_of(id: &str) -> &str {
    let digits = id
        .strip_prefix("disk")
        .map(|rest| rest.bytes().take_while(u8::is_ascii_digit).count())
        .unwrap_or(0);
    &id[..("disk".len() + digits).min(id.len())]
}

/// The physical whole disk under `/`, from `diskutil info -plist /`: the APFS
/// container's physical store (the volume's own parent is a synthesized disk).
pub fn root_disk(root: &Info) -> Option<String> {
    if let Some(store) = root.apfs_physical_stores.first() {
        return Some(whole_disk_of(&store.id).to_string());
    }
    root.parent_whole_disk.clone()
}

/// A [`Disk`] from what diskutil says about a whole disk and its partitions.
pub fn disk_from(info: &Info, listed: Option<&ListedDisk>, root: Option<&str>) -> Disk {
    let physical = info.virtual_or_physical.as_deref() != Some("Virtual");
    let usb = physical && info.bus_protocol.as_deref() == Some("USB");
    let removable = physical && !info.internal && (info.removable_media || info.removable);
    let mut partitions = Vec::new();
    let mut mounts = Vec::new();
    let mounted = |p: &Option<String>| p.as_deref().filter(|m| !m.is_empty()).map(String::from);
    if let Some(l) = listed {
        if let Some(m) = mounted(&l.mount_point) {
            mounts.push(Mount {
                source: format!("/dev/{}", l.id).into(),
                mount_point: m,
            });
        }
        for p in &l.partitions {
            let path = PathBuf::from(format!("/dev/{}", p.id));
            if let Some(m) = mounted(&p.mount_point) {
                mounts.push(Mount {
                    source: path.clone(),
                    mount_point: m,
                });
            }
            partitions.push(Partition {
                path,
                size: p.size,
                fs_type: p.content.clone(),
                label: p.volume_name.clone().filter(|v| !v.is_empty()),
            });
        }
    }
    let holds_root = root == Some(info.id.as_str()) || mounts.iter().any(|m| m.mount_point == "/");
    let node = if info.node.is_empty() {
        format!("/dev/{}", info.id)
    } else {
        info.node.clone()
    };
    Disk {
        path: node.into(),
        name: info.id.clone(),
        vendor: None,
        model: info
            .media_name
            .clone()
            .or_else(|| info.io_registry_name.clone()),
        // diskutil does not tell a USB stick's serial number.
        serial: None,
        size: info.total_size.max(info.size),
        removable,
        usb,
        holds_root,
        partitions,
        mounts,
    }
}

fn diskutil(args: &[&str]) -> Result<Vec<u8>> {
    run_tool(Command::new("diskutil").args(args))
}

fn root() -> Option<String> {
    diskutil(&["info", "-plist", "/"])
        .ok()
        .and_then(|x| parse_info(&x).ok())
        .and_then(|i| root_disk(&i))
}

/// The external physical disks (`diskutil list -plist external physical`).
pub fn list_disks() -> Result<Vec<Disk>> {
    let listed = parse_list(&diskutil(&["list", "-plist", "external", "physical"])?)?;
    let root = root();
    listed
        .iter()
        .map(|l| {
            let info = parse_info(&diskutil(&["info", "-plist", &l.id])?)?;
            Ok(disk_from(&info, Some(l), root.as_deref()))
        })
        .collect()
}

/// "disk4" from /dev/disk4 or /dev/rdisk4 (the raw node names the same disk).
fn disk_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_prefix("rdisk") {
        Some(rest) => format!("disk{rest}"),
        None => name,
    }
}

/// Describes a device node given as the target (`/dev/diskN` or `/dev/rdiskN`).
pub fn describe_device(path: &Path, meta: &std::fs::Metadata) -> Result<Described> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if !ft.is_block_device() && !ft.is_char_device() {
        return Ok(Described::Other);
    }
    let id = disk_id(path);
    let info = parse_info(&diskutil(&["info", "-plist", &id])?)?;
    if !info.whole_disk {
        return Ok(Described::Partition {
            whole: info
                .parent_whole_disk
                .map(|d| PathBuf::from(format!("/dev/{d}"))),
        });
    }
    let listed = parse_list(&diskutil(&["list", "-plist", &id])?)?;
    let mine = listed.iter().find(|l| l.id == id);
    let mut disk = disk_from(&info, mine, root().as_deref());
    disk.path = path.to_path_buf();
    Ok(Described::Disk(disk))
}

/// `diskutil unmountDisk`: every volume of the disk.
pub fn unmount(disk: &Disk) -> Result<()> {
    diskutil(&["unmountDisk", &disk.name])
        .with_context(|| format!("unmounting {}", disk.path.display()))?;
    eprintln!("unmounted every volume of {}", disk.path.display());
    Ok(())
}

/// The raw node to write (`/dev/rdiskN`: unbuffered, many times faster than /dev/diskN).
pub fn raw_node(disk: &Disk) -> PathBuf {
    PathBuf::from(format!("/dev/r{}", disk_id(&disk.path)))
}

/// `diskutil eject`, once the stick is written and verified.
pub fn eject(disk: &Disk) -> Result<()> {
    diskutil(&["eject", &disk.name])
        .with_context(|| format!("ejecting {}", disk.path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured-format samples in Apple's plist layout (`man diskutil`: -plist emits the
    // same keys as the text output's fields).
    const LIST_EXTERNAL: &str = include_str!("testdata/diskutil-list-external-physical.plist");
    const INFO_STICK: &str = include_str!("testdata/diskutil-info-usb-stick.plist");
    const INFO_INTERNAL: &str = include_str!("testdata/diskutil-info-internal-apfs.plist");
    const INFO_ROOT: &str = include_str!("testdata/diskutil-info-root.plist");
    const INFO_IMAGE: &str = include_str!("testdata/diskutil-info-disk-image.plist");
    const INFO_PARTITION: &str = include_str!("testdata/diskutil-info-partition.plist");

    #[test]
    fn the_usb_stick_is_a_candidate_with_its_mounted_volume() {
        let listed = parse_list(LIST_EXTERNAL.as_bytes()).unwrap();
        assert_eq!(listed.len(), 1);
        let info = parse_info(INFO_STICK.as_bytes()).unwrap();
        let root = root_disk(&parse_info(INFO_ROOT.as_bytes()).unwrap());
        let d = disk_from(&info, listed.first(), root.as_deref());
        assert_eq!(d.path, PathBuf::from("/dev/disk4"));
        assert_eq!(d.name, "disk4");
        assert!(d.usb && d.removable && d.is_candidate() && !d.holds_root);
        assert_eq!(d.size, 31_457_280_000);
        assert_eq!(d.description(), "SanDisk Ultra");
        assert_eq!(
            d.mounts,
            vec![Mount {
                source: "/dev/disk4s1".into(),
                mount_point: "/Volumes/MYFILES".into()
            }]
        );
        assert_eq!(d.partitions[0].label.as_deref(), Some("MYFILES"));
        assert_eq!(raw_node(&d), PathBuf::from("/dev/rdisk4"));
    }

    #[test]
    fn the_internal_apfs_disk_holds_root_and_is_fixed() {
        let root = root_disk(&parse_info(INFO_ROOT.as_bytes()).unwrap());
        assert_eq!(root.as_deref(), Some("disk0"));
        let info = parse_info(INFO_INTERNAL.as_bytes()).unwrap();
        let d = disk_from(&info, None, root.as_deref());
        assert!(d.holds_root && !d.usb && !d.removable && !d.is_candidate());
        assert_eq!(d.model.as_deref(), Some("APPLE SSD AP0512Q"));
        let r = super::super::refusals(
            &Described::Disk(d),
            1_000_000,
            super::super::Allowances {
                fixed_disk: true,
                large: true,
                unmount: true,
                to_file: true,
            },
        );
        assert_eq!(r, vec![super::super::Refusal::HoldsRoot]);
    }

    #[test]
    fn a_disk_image_is_not_a_stick() {
        let info = parse_info(INFO_IMAGE.as_bytes()).unwrap();
        assert!(info.removable_media, "diskutil calls disk images removable");
        let d = disk_from(&info, None, Some("disk0"));
        assert!(!d.usb && !d.removable && !d.is_candidate() && !d.holds_root);
    }

    #[test]
    fn a_partition_names_its_whole_disk() {
        let info = parse_info(INFO_PARTITION.as_bytes()).unwrap();
        assert!(!info.whole_disk);
        assert_eq!(info.parent_whole_disk.as_deref(), Some("disk4"));
    }

    #[test]
    fn raw_and_block_nodes_name_one_disk() {
        assert_eq!(disk_id(Path::new("/dev/rdisk4")), "disk4");
        assert_eq!(disk_id(Path::new("/dev/disk4")), "disk4");
        assert_eq!(whole_disk_of("disk0s2"), "disk0");
        assert_eq!(whole_disk_of("disk3s1s1"), "disk3");
    }
}
