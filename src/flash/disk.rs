//! A disk as the system describes it (what `linux` and `macos` find, what the checks
//! and the writer read), and running the system tools that describe it.
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

/// One whole disk, as the system describes it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Disk {
    /// The device to open, e.g. /dev/sdb or /dev/disk4.
    pub path: PathBuf,
    /// The kernel's name, e.g. sdb or disk4: what the user types to confirm.
    pub name: String,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Bytes.
    pub size: u64,
    /// The medium can be removed (a stick, a card).
    pub removable: bool,
    /// Attached through USB.
    pub usb: bool,
    /// Holds this computer's `/`.
    pub holds_root: bool,
    pub partitions: Vec<Partition>,
    /// What is mounted (or used as swap) from the disk itself or any of its partitions.
    pub mounts: Vec<Mount>,
}

/// A partition of a [`Disk`]: what flashing would erase.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Partition {
    pub path: PathBuf,
    pub size: u64,
    pub fs_type: Option<String>,
    pub label: Option<String>,
}

/// Something in use on a disk: a mounted filesystem (or swap).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// The partition (or disk, or device-mapper volume on it) that is mounted.
    pub source: PathBuf,
    /// Where it is mounted, or `[swap]`.
    pub mount_point: String,
}

impl Disk {
    /// A stick or card: removable or attached through USB.
    pub fn is_candidate(&self) -> bool {
        self.removable || self.usb
    }

    /// "SanDisk Ultra" from vendor and model, whichever are known.
    pub fn description(&self) -> String {
        let words: Vec<&str> = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect();
        if words.is_empty() {
            "(unknown model)".to_string()
        } else {
            words.join(" ")
        }
    }

    /// One line for the list: device, size, model, serial, bus, what is mounted.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{:<12} {:>9}  {}",
            self.path.display(),
            human_size(self.size),
            self.description()
        );
        if let Some(s) = &self.serial {
            line.push_str(&format!("  serial {s}"));
        }
        let bus = match (self.usb, self.removable) {
            (true, true) => "USB, removable",
            (true, false) => "USB",
            (false, true) => "removable",
            (false, false) => "fixed",
        };
        line.push_str(&format!("  ({bus})"));
        for m in &self.mounts {
            line.push_str(&format!(
                "\n{:<12} {} mounted on {}",
                "",
                m.source.display(),
                m.mount_point
            ));
        }
        line
    }

    /// The lines that say what flashing erases.
    pub fn what_is_lost(&self) -> Vec<String> {
        if self.partitions.is_empty() {
            return vec![format!(
                "everything on {} (no partitions found)",
                self.path.display()
            )];
        }
        self.partitions
            .iter()
            .map(|p| {
                let mut line = format!("{}  {}", p.path.display(), human_size(p.size));
                if let Some(t) = &p.fs_type {
                    line.push_str(&format!("  {t}"));
                }
                if let Some(l) = &p.label {
                    line.push_str(&format!("  \"{l}\""));
                }
                for m in self.mounts.iter().filter(|m| m.source == p.path) {
                    line.push_str(&format!("  mounted on {}", m.mount_point));
                }
                line
            })
            .collect()
    }
}

/// "30.75 GB": decimal units, as stick makers print them.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{bytes} B")
    }
}

/// What a path given as the target is.
#[derive(Debug, Clone)]
pub enum Described {
    Disk(Disk),
    Partition { whole: Option<PathBuf> },
    RegularFile { size: u64 },
    Missing,
    Other,
}

/// Runs a system tool, naming it in the error when it fails.
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
