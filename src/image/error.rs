//! Why an image cannot be built from an ISO, or written where asked.
use std::path::PathBuf;

/// Why an ISO or an output cannot be used. A caller can match these; every message
/// names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{iso} is not an Ubuntu 22.04 live-server ISO: its /.disk/info says {found:?}; \
         use ubuntu-22.04.5-live-server-amd64.iso"
    )]
    NotUbuntu2204 { iso: PathBuf, found: String },
    #[error(
        "{iso} is the Ubuntu {found} ISO (its /.disk/info), but the profile's ubuntu.release \
         is {profile}: the disk-safety rule and the image's record follow the release, so \
         they must agree; set `ubuntu.release: {found}` with that ISO's iso_url and \
         iso_sha256, or use the {profile} ISO"
    )]
    OtherRelease {
        iso: PathBuf,
        found: String,
        profile: String,
    },
    #[error(
        "{iso}: the new /boot/grub/grub.cfg needs {needed} bytes but the ISO reserves only \
         {room} for it; this ISO cannot be patched in place (use the official 22.04.5 ISO)"
    )]
    GrubNoRoom {
        iso: PathBuf,
        needed: u64,
        room: u64,
    },
    #[error("the ISO's /boot/grub/grub.cfg is not what an Ubuntu ISO ships: {detail}")]
    GrubLayout { detail: String },
    #[error(
        "{iso}: UEFI GRUB reads /boot/grub/x86_64-efi/grub.cfg, which does not go on to \
         /boot/grub/grub.cfg, so the install entry would never show under UEFI; use the \
         official 22.04.5 ISO"
    )]
    EfiMenuElsewhere { iso: PathBuf },
    #[error("{iso} does not have the layout of an Ubuntu 22.04 ISO")]
    Layout {
        iso: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{iso} is not the pinned ISO: its SHA-256 is {found}, the profile pins {expected} \
         (ubuntu.iso_sha256)"
    )]
    IsoMismatch {
        iso: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{0} already exists; pass --force to replace it")]
    OutputExists(PathBuf),
    #[error("interrupted; nothing was written under the final name")]
    Interrupted,
}

impl ImageError {
    /// True when the user's input is at fault (a refused ISO, an existing output).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ImageError::Interrupted)
    }
}
