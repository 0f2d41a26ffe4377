//! `chocoimg inspect`: what an image (or a stick) says about itself.
use super::identity::Identity;
use super::ubuntu::{DISK_INFO, GRUB_CFG};
use super::{cidata, gpt, grub, iso9660};
use anyhow::Result;
use serde::Serialize;
use std::fs::File;
use std::path::Path;

/// What an image holds, as `chocoimg inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    #[serde(flatten)]
    pub identity: Identity,
    /// `/.disk/info` of the ISO inside.
    pub iso_release: String,
    /// The first entry that boots a kernel (on a machine that holds a chocoimg node,
    /// an entry that stops comes before it).
    pub boot_title: String,
    pub kernel_line: String,
    /// The entry that reinstalls over an installed node (none on images from before the
    /// reinstall guard).
    pub reinstall_title: Option<String>,
    pub reinstall_kernel_line: Option<String>,
    pub cidata_partition: usize,
}

/// Reads an image (or a stick's device): identity from CIDATA, menu from the ISO.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let not_ours = |what: String| {
        crate::errors::BadInput(format!(
            "{} is not a chocoimg image: {what}",
            path.display()
        ))
    };
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => crate::errors::BadInput(format!(
            "{}: no such file; pass an image made by `chocoimg build` \
             (out/<cluster>/<node>.img) or a stick's device (e.g. /dev/sdb)",
            path.display()
        ))
        .into(),
        std::io::ErrorKind::PermissionDenied => crate::errors::BadInput(format!(
            "{}: permission denied; a stick's device is readable by root only \
             (sudo chocoimg inspect {})",
            path.display(),
            path.display()
        ))
        .into(),
        _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
    })?;
    let part = gpt::find_partition(&mut file, cidata::LABEL)
        .map_err(|e| not_ours(e.to_string()))?
        .ok_or_else(|| not_ours("no GPT partition named CIDATA".into()))?;
    let start = part.first_lba * gpt::SECTOR;
    let size = (part.last_lba + 1 - part.first_lba) * gpt::SECTOR;
    let json = cidata::read_file(&file, start, size, cidata::IDENTITY_FILE, 1 << 16)
        .map_err(|e| not_ours(format!("reading /{} on CIDATA: {e}", cidata::IDENTITY_FILE)))?;
    let identity: Identity = serde_json::from_slice(&json)
        .map_err(|e| not_ours(format!("/{} on CIDATA: {e}", cidata::IDENTITY_FILE)))?;
    let mut iso = iso9660::Iso::open(&mut file).map_err(|e| not_ours(e.to_string()))?;
    let info = iso
        .read_file(DISK_INFO, 4096)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let cfg = iso
        .read_file(GRUB_CFG, 1 << 20)
        .map_err(|e| not_ours(e.to_string()))?;
    let cfg = String::from_utf8_lossy(&cfg);
    let entry =
        grub::first_entry(&cfg).ok_or_else(|| not_ours("its grub.cfg has no boot entry".into()))?;
    let reinstall = grub::reinstall_entry(&cfg);
    Ok(Inspection {
        identity,
        iso_release: info,
        boot_title: entry.title,
        kernel_line: entry.linux,
        reinstall_title: reinstall.as_ref().map(|e| e.title.clone()),
        reinstall_kernel_line: reinstall.map(|e| e.linux),
        cidata_partition: part.number,
    })
}
