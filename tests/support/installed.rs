//! Disks as a machine holds them after an install, built in a file with sgdisk,
//! mkfs.ext4 and mkfs.vfat (no mount needed), for the reinstall guard's tests: the
//! layout subiquity's `direct` layout makes (the seeds ask for it; 22.04's default
//! without a `storage:` section would be LVM): GPT, then under UEFI a 538 MiB ESP
//! (FAT32) and an ext4 root, under BIOS a 1 MiB bios_grub partition and an ext4 root
//! (subiquity 24.08.1, `guided_direct`; design/bringup.md). The marker comes from the
//! late-commands the seed really carries, run against the root's tree.
use super::require_tool;
use super::run_ok as run;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1024 * 1024;
/// subiquity's smallest ESP (disks under ~22.6 GiB).
const ESP_MIB: u64 = 538;
const ROOT_MIB: u64 = 256;

/// What the disk holds.
pub enum Holds<'a> {
    /// A chocoimg node: the late-commands of its user-data (they write the marker).
    Node {
        late_commands: &'a [String],
        uefi: bool,
    },
    /// Another Linux installed the same way (same layout, no marker).
    OtherOs { uefi: bool },
    /// Nothing: an unboxed machine's disk.
    Blank,
}

/// Writes the disk image `path` (sparse).
pub fn write_disk(path: &Path, holds: &Holds) {
    for tool in ["sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "grub-editenv"] {
        require_tool(tool);
    }
    let uefi = match holds {
        Holds::Blank => {
            let f = std::fs::File::create(path).unwrap();
            f.set_len((ESP_MIB + ROOT_MIB + 2) * MIB).unwrap();
            return;
        }
        Holds::Node { uefi, .. } | Holds::OtherOs { uefi } => *uefi,
    };
    let first_mib = if uefi { ESP_MIB } else { 1 };
    let total = (1 + first_mib + ROOT_MIB + 1) * MIB;
    std::fs::File::create(path).unwrap().set_len(total).unwrap();
    let first_type = if uefi { "ef00" } else { "ef02" };
    run(Command::new("sgdisk")
        .args([
            "-n",
            &format!("1:1MiB:+{first_mib}MiB"),
            "-t",
            &format!("1:{first_type}"),
        ])
        .args(["-n", "2:0:0", "-t", "2:8300"])
        .arg(path));
    let root_start = (1 + first_mib) * MIB;
    let root_len = total - root_start - MIB; // the backup GPT sits in the last MiB
    if uefi {
        run(Command::new("mkfs.vfat")
            .args(["-F", "32", "--offset", &(MIB / 512).to_string()])
            .arg(path)
            .arg((ESP_MIB * 1024).to_string()));
        let cfg = path.with_extension("esp-grub.cfg");
        std::fs::write(
            &cfg,
            "search.fs_uuid 0000 root\nconfigfile ($root)/boot/grub/grub.cfg\n",
        )
        .unwrap();
        let esp = format!("{}@@{}", path.display(), MIB);
        run(Command::new("mmd").args(["-i", &esp, "::EFI", "::EFI/ubuntu"]));
        run(Command::new("mcopy")
            .args(["-i", &esp])
            .arg(&cfg)
            .arg("::EFI/ubuntu/grub.cfg"));
        std::fs::remove_file(cfg).unwrap();
    }
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "# the installed system's menu\n",
    )
    .unwrap();
    match holds {
        Holds::Node { late_commands, .. } => {
            std::fs::write(
                root.join("etc/os-release"),
                "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\nID=ubuntu\nVERSION_ID=\"22.04\"\n",
            )
            .unwrap();
            run_marker_commands(late_commands, root);
        }
        _ => std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
        )
        .unwrap(),
    }
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .args(["-E", &format!("offset={root_start}")])
        .arg(path)
        .arg(format!("{}k", root_len / 1024)));
}

/// Runs the late-commands that touch /target (the marker's), against `root` instead:
/// `mkdir -p /target/...` directly, `curtin in-target --target=/target -- CMD` as CMD
/// with its absolute paths under `root` (curtin cannot run here; it is a chroot).
fn run_marker_commands(late_commands: &[String], root: &Path) {
    let target = root.display().to_string();
    let mut ran = 0;
    for cmd in late_commands {
        let local = if let Some(rest) = cmd.strip_prefix("curtin in-target --target=/target -- ") {
            rest.split_whitespace()
                .map(|w| {
                    if w.starts_with('/') {
                        format!("{target}{w}")
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else if cmd.starts_with("mkdir -p /target/") {
            cmd.replace("/target/", &format!("{target}/"))
        } else {
            continue;
        };
        run(Command::new("sh").args(["-c", &local]));
        ran += 1;
    }
    assert!(
        ran > 0,
        "no late-command writes to /target: {late_commands:?}"
    );
    let marker = root.join(chocoimg::guard::MARKER.trim_start_matches('/'));
    assert!(marker.is_file(), "no marker written");
}

/// The late-commands of a rendered user-data.
pub fn late_commands(user_data: &str) -> Vec<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(user_data).unwrap();
    v["autoinstall"]["late-commands"]
        .as_sequence()
        .expect("late-commands")
        .iter()
        .map(|c| c.as_str().expect("a string command").to_string())
        .collect()
}

/// The early-commands of a rendered user-data (each a `sh -c` script).
pub fn early_commands(user_data: &str) -> Vec<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(user_data).unwrap();
    v["autoinstall"]["early-commands"]
        .as_sequence()
        .expect("early-commands")
        .iter()
        .map(|c| c.as_str().expect("a string command").to_string())
        .collect()
}
