//! The files of an Ubuntu 22.04 live-server ISO that the build reads or changes.

/// The menu GRUB reads under BIOS and UEFI.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// Names the release; also what Ubuntu's UEFI GRUB searches for to find its root.
pub const DISK_INFO: &str = "/.disk/info";
pub const MD5SUM_TXT: &str = "/md5sum.txt";
/// Ubuntu's signed UEFI GRUB sources this one instead of GRUB_CFG when it exists
/// (grub2's debian/build-efi-images); on Ubuntu's ISOs it sources GRUB_CFG in turn.
pub const GRUB_EFI_CFG: &str = "/boot/grub/x86_64-efi/grub.cfg";
/// What `/.disk/info` starts with on every 22.04.x live-server ISO.
pub const EXPECTED_RELEASE: &str = "Ubuntu-Server 22.04";

/// The point release `/.disk/info` names: `22.04.1` in
/// `Ubuntu-Server 22.04.1 LTS "Jammy Jellyfish" - Release amd64 (20220809.1)`.
pub fn iso_release(disk_info: &str) -> &str {
    disk_info
        .strip_prefix("Ubuntu-Server ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
}
