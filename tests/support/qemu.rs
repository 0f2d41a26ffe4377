//! The QEMU machine the VM tests boot (flash_vm.rs, image.rs): a q35 PC under TCG (no
//! KVM on this machine) with 512 MiB, no screen and no monitor, that does not reboot (a
//! guest that restarts ends QEMU, so a panic cannot loop), run at low priority (the
//! cores are shared). Each test adds its disks, firmware and serial port.
use super::require_tool;
use std::path::Path;
use std::process::Command;

/// `nice -n 10 qemu-system-x86_64` with the machine's arguments; with `bound`, QEMU
/// runs under `timeout` (seconds), for a caller that only waits for it to exit.
pub fn machine(bound: Option<u32>) -> Command {
    require_tool("nice");
    require_tool("qemu-system-x86_64");
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"]);
    if let Some(secs) = bound {
        require_tool("timeout");
        cmd.args(["timeout", "--kill-after=10", &secs.to_string()]);
    }
    cmd.arg("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "512",
            "-no-reboot",
        ])
        .args(["-display", "none", "-monitor", "none"]);
    cmd
}

/// A `-drive` value: `file` as a raw disk with no device of its own yet (a `-device`
/// names it by `id`).
pub fn raw_drive(id: &str, file: &Path) -> String {
    format!("if=none,id={id},file={},format=raw", file.display())
}

/// `file` as a USB stick on an xHCI controller; `props` adds usb-storage properties
/// (a serial, a boot index).
pub fn usb_stick(cmd: &mut Command, file: &Path, props: &str) {
    cmd.arg("-drive")
        .arg(raw_drive("stick", file))
        .args(["-device", "qemu-xhci,id=xhci"])
        .arg("-device")
        .arg(format!("usb-storage,bus=xhci.0,drive=stick,{props}"));
}
