//! Flashing an image onto a USB stick, safely: find the sticks, refuse every disk that
//! must not be written (checked all at once, before anything is written), write with
//! the first MiB last, then read the stick back and compare its SHA-256.
//!
//! Finding disks is per system: `linux` reads /sys/block and /proc/self/mountinfo,
//! `macos` parses `diskutil -plist`. Both describe a disk as a [`Disk`]; the checks and
//! the writer do not care where it came from.
pub mod disk;
pub mod linux;
pub mod macos;
pub mod writer;

// What linux.rs and macos.rs find lives in a leaf they import, not in this file, which
// imports them.
pub use disk::{human_size, Described, Disk, Mount, Partition};

use anyhow::{Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Disks larger than this are refused without `--allow-large`: a USB stick rarely is
/// that big, an external backup drive often is.
pub const LARGE_DISK: u64 = 256_000_000_000;

/// What the user allowed on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    /// Unmount what is mounted from the disk before writing.
    pub unmount: bool,
    /// Write a disk that is neither removable nor USB.
    pub fixed_disk: bool,
    /// Write a disk over [`LARGE_DISK`].
    pub large: bool,
    /// Accept a regular file as the target.
    pub to_file: bool,
}

/// Why a target is refused. Each says the reason and the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    HoldsRoot,
    Mounted(Vec<Mount>),
    Fixed,
    TooLarge {
        size: u64,
    },
    TooSmall {
        size: u64,
        image: u64,
    },
    Partition {
        whole: Option<PathBuf>,
    },
    NotBlockDevice {
        regular_file: bool,
    },
    Busy,
    /// `--to-file` given the image itself.
    IsTheImage,
    /// Opening it for writing was not permitted.
    NoPermission,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => write!(
                f,
                "it does not exist; `chocoimg flash --list` shows the sticks plugged in"
            ),
            Refusal::HoldsRoot => write!(
                f,
                "it holds this computer's system (/); pick the USB stick from `chocoimg flash --list`"
            ),
            Refusal::Mounted(mounts) => {
                let list: Vec<String> = mounts
                    .iter()
                    .map(|m| format!("{} on {}", m.source.display(), m.mount_point))
                    .collect();
                write!(
                    f,
                    "it is in use ({}); pass --unmount to unmount it first (or eject it in \
                     your file manager and plug it in again)",
                    list.join(", ")
                )
            }
            Refusal::Fixed => write!(
                f,
                "it is neither removable nor attached through USB (an internal disk?); pick \
                 the stick from `chocoimg flash --list`, or pass --allow-fixed-disk if you \
                 really mean this disk"
            ),
            Refusal::TooLarge { size } => write!(
                f,
                "it holds {} (over {}: a backup drive rather than a USB stick?); pass \
                 --allow-large if you really mean this disk",
                human_size(*size),
                human_size(LARGE_DISK)
            ),
            Refusal::TooSmall { size, image } => write!(
                f,
                "it holds {} but the image needs {}; use a stick of at least {}",
                human_size(*size),
                human_size(*image),
                human_size(*image)
            ),
            Refusal::Partition { whole } => match whole {
                Some(w) => write!(
                    f,
                    "it is a partition, and the image must go on the whole disk: give {} instead",
                    w.display()
                ),
                None => write!(f, "it is a partition; give the whole disk instead"),
            },
            Refusal::NotBlockDevice { regular_file: true } => write!(
                f,
                "it is a regular file, not a disk; pass --to-file to write the image into a \
                 file (for VMs and tests), or give the stick's device (`chocoimg flash --list`)"
            ),
            Refusal::NotBlockDevice {
                regular_file: false,
            } => write!(
                f,
                "it is not a disk (not a block device); give the stick's device \
                 (`chocoimg flash --list`)"
            ),
            Refusal::NoPermission => write!(
                f,
                "this user may not write it; writing a whole disk needs root: run the same \
                 command with sudo"
            ),
            Refusal::IsTheImage => write!(
                f,
                "it is the image itself; give another file (or the stick's device)"
            ),
            Refusal::Busy => write!(
                f,
                "another program has it open (a mount, a disk utility, a VM); close it and \
                 try again"
            ),
        }
    }
}

/// Every reason a target was refused, to be shown at once (exit 2, nothing written).
#[derive(Debug, thiserror::Error)]
pub struct Refused {
    pub target: PathBuf,
    pub reasons: Vec<Refusal>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to flash {} (nothing was written):",
            self.target.display()
        )?;
        for r in &self.reasons {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

/// The image to write, and the SHA-256 its read-back must have.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub size: u64,
    /// From `<image>.sha256` when it exists; else the hash of the image as it is read.
    pub expected_sha256: Option<String>,
}

impl Image {
    /// Opens `path` and reads `<path>.sha256` (sha256sum format) when present.
    pub fn open(path: &Path) -> Result<Image> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading the image {}", path.display()))?;
        if !meta.is_file() {
            return Err(crate::errors::BadInput(format!(
                "{} is not an image file; give the .img that `chocoimg build` wrote",
                path.display()
            ))
            .into());
        }
        let sums = PathBuf::from(format!("{}.sha256", path.display()));
        let expected_sha256 = match std::fs::read_to_string(&sums) {
            Ok(text) => Some(parse_sha256_line(&text).ok_or_else(|| {
                crate::errors::BadInput(format!(
                    "{} is not a sha256sum line; rebuild the image (`chocoimg build --force`) \
                     or delete it to verify against the image as read",
                    sums.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", sums.display())),
        };
        Ok(Image {
            path: path.to_path_buf(),
            size: meta.len(),
            expected_sha256,
        })
    }
}

/// The hash of a `sha256sum` line: "<64 hex>  <name>".
fn parse_sha256_line(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    (first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| first.to_ascii_lowercase())
}

/// What the target path turned out to be.
#[derive(Debug, Clone)]
pub enum Target {
    /// A whole disk (a stick, hopefully).
    Disk(Disk),
    /// A regular file, written only with `--to-file`.
    File { path: PathBuf, size: u64 },
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::Disk(d) => &d.path,
            Target::File { path, .. } => path,
        }
    }
}

/// Whole disks that look like sticks (removable or USB), for `--list`.
pub fn list_sticks() -> Result<Vec<Disk>> {
    Ok(list_disks()?
        .into_iter()
        .filter(Disk::is_candidate)
        .collect())
}

/// Every whole disk this system reports.
pub fn list_disks() -> Result<Vec<Disk>> {
    if cfg!(target_os = "macos") {
        macos::list_disks()
    } else {
        linux::list_disks()
    }
}

/// Describes `path`: a whole disk, a partition, a file, or nothing.
pub fn describe(path: &Path) -> Result<Described> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Described::Missing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.is_file() {
        return Ok(Described::RegularFile { size: meta.len() });
    }
    if cfg!(target_os = "macos") {
        macos::describe_device(path, &meta)
    } else {
        linux::describe_device(path, &meta)
    }
}

/// Phase one: every check on the target, all at once. Returns the target to write, or
/// every reason it is refused. Writes nothing.
pub fn check(path: &Path, image: &Image, allow: Allowances) -> Result<Target> {
    let described = describe(path)?;
    let mut reasons = refusals(&described, image.size, allow);
    if matches!(described, Described::RegularFile { .. }) && same_file(path, &image.path) {
        reasons = vec![Refusal::IsTheImage];
    }
    if !reasons.is_empty() {
        return Err(Refused {
            target: path.to_path_buf(),
            reasons,
        }
        .into());
    }
    Ok(match described {
        Described::Disk(d) => Target::Disk(d),
        Described::RegularFile { size } => Target::File {
            path: path.to_path_buf(),
            size,
        },
        // A missing path with --to-file: a new file.
        _ => Target::File {
            path: path.to_path_buf(),
            size: 0,
        },
    })
}

/// Whether two paths name one file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The rules, over what was found (no system calls: unit-tested).
pub fn refusals(target: &Described, image_size: u64, allow: Allowances) -> Vec<Refusal> {
    let mut out = Vec::new();
    match target {
        Described::Missing if allow.to_file => {}
        Described::Missing => out.push(Refusal::Missing),
        Described::Other => out.push(Refusal::NotBlockDevice {
            regular_file: false,
        }),
        Described::RegularFile { .. } if allow.to_file => {}
        Described::RegularFile { .. } => out.push(Refusal::NotBlockDevice { regular_file: true }),
        Described::Partition { whole } => out.push(Refusal::Partition {
            whole: whole.clone(),
        }),
        Described::Disk(d) => {
            if d.holds_root {
                out.push(Refusal::HoldsRoot);
            } else if !d.mounts.is_empty() && !allow.unmount {
                out.push(Refusal::Mounted(d.mounts.clone()));
            }
            if !d.is_candidate() && !allow.fixed_disk {
                out.push(Refusal::Fixed);
            }
            if d.size < image_size {
                out.push(Refusal::TooSmall {
                    size: d.size,
                    image: image_size,
                });
            }
            if d.size > LARGE_DISK && !allow.large {
                out.push(Refusal::TooLarge { size: d.size });
            }
        }
    }
    out
}

/// Unmounts everything mounted from `disk` (Linux `umount`, macOS `diskutil
/// unmountDisk`), then checks that nothing is left.
pub fn unmount(disk: &Disk) -> Result<Disk> {
    if cfg!(target_os = "macos") {
        macos::unmount(disk)?;
    } else {
        linux::unmount(disk)?;
    }
    let after = match describe(&disk.path)? {
        Described::Disk(d) => d,
        _ => anyhow::bail!("{} changed while unmounting it", disk.path.display()),
    };
    if !after.mounts.is_empty() {
        return Err(Refused {
            target: disk.path.clone(),
            reasons: vec![Refusal::Mounted(after.mounts)],
        }
        .into());
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stick() -> Disk {
        Disk {
            path: "/dev/sdb".into(),
            name: "sdb".into(),
            size: 32_000_000_000,
            removable: true,
            usb: true,
            ..Disk::default()
        }
    }

    const IMG: u64 = 2_000_000_000;

    #[test]
    fn a_plain_stick_passes() {
        assert!(refusals(&Described::Disk(stick()), IMG, Allowances::default()).is_empty());
    }

    #[test]
    fn every_reason_is_reported_at_once() {
        let d = Disk {
            removable: false,
            usb: false,
            size: 1_000_000_000,
            mounts: vec![Mount {
                source: "/dev/sdb1".into(),
                mount_point: "/media/x".into(),
            }],
            ..stick()
        };
        let r = refusals(&Described::Disk(d), IMG, Allowances::default());
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(matches!(r[0], Refusal::Mounted(_)));
        assert_eq!(r[1], Refusal::Fixed);
        assert!(matches!(r[2], Refusal::TooSmall { .. }));
    }

    #[test]
    fn allowances_lift_their_refusal_only() {
        let d = Disk {
            removable: false,
            usb: false,
            size: 1_000_000_000_000,
            mounts: vec![Mount {
                source: "/dev/sdb1".into(),
                mount_point: "/media/x".into(),
            }],
            ..stick()
        };
        let all = Allowances {
            unmount: true,
            fixed_disk: true,
            large: true,
            to_file: false,
        };
        assert!(refusals(&Described::Disk(d.clone()), IMG, all).is_empty());
        let r = refusals(
            &Described::Disk(d),
            IMG,
            Allowances {
                large: false,
                ..all
            },
        );
        assert_eq!(
            r,
            vec![Refusal::TooLarge {
                size: 1_000_000_000_000
            }]
        );
    }

    #[test]
    fn the_system_disk_is_refused_even_with_unmount_and_fixed_allowed() {
        let d = Disk {
            holds_root: true,
            ..stick()
        };
        let all = Allowances {
            unmount: true,
            fixed_disk: true,
            large: true,
            to_file: true,
        };
        assert_eq!(
            refusals(&Described::Disk(d), IMG, all),
            vec![Refusal::HoldsRoot]
        );
    }

    #[test]
    fn files_only_with_to_file() {
        let f = Described::RegularFile { size: 0 };
        assert_eq!(
            refusals(&f, IMG, Allowances::default()),
            vec![Refusal::NotBlockDevice { regular_file: true }]
        );
        let to_file = Allowances {
            to_file: true,
            ..Allowances::default()
        };
        assert!(refusals(&f, IMG, to_file).is_empty());
        assert!(refusals(&Described::Missing, IMG, to_file).is_empty());
        assert_eq!(
            refusals(&Described::Missing, IMG, Allowances::default()),
            vec![Refusal::Missing]
        );
        assert_eq!(
            refusals(&Described::Other, IMG, to_file),
            vec![Refusal::NotBlockDevice {
                regular_file: false
            }]
        );
    }

    #[test]
    fn refusals_name_the_way_out() {
        let text = |r: Refusal| r.to_string();
        assert!(text(Refusal::Mounted(vec![])).contains("--unmount"));
        assert!(text(Refusal::Fixed).contains("--allow-fixed-disk"));
        assert!(text(Refusal::TooLarge { size: 1 }).contains("--allow-large"));
        assert!(text(Refusal::NotBlockDevice { regular_file: true }).contains("--to-file"));
        assert!(text(Refusal::Partition {
            whole: Some("/dev/sdb".into())
        })
        .contains("/dev/sdb instead"));
    }

    #[test]
    fn sha256_lines() {
        let h = "a".repeat(64);
        assert_eq!(parse_sha256_line(&format!("{h}  x.img\n")), Some(h.clone()));
        assert_eq!(parse_sha256_line(&h.to_uppercase()), Some(h));
        assert_eq!(parse_sha256_line("nothing"), None);
        assert_eq!(parse_sha256_line(""), None);
    }
}
