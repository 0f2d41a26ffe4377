//! The reinstall guard's installer half: the early-command of the rendered seed, run for
//! real (as subiquity runs it, `sh -c`) against loop devices holding installed disks and
//! disks that only resemble one. Its GRUB half boots in QEMU (tests/image.rs).
use crate::support::installed::{self, Holds};
use crate::support::loopdev::LoopDevice;
use crate::support::require_tool;
use crate::support::workspace::Workspace;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The early-command of `node`'s rendered seed.
fn guard_script(ws: &Workspace, node: &str) -> String {
    let early = installed::early_commands(&ws.rendered_user_data(node));
    assert_eq!(early.len(), 1, "{early:?}");
    early[0].clone()
}

fn late_commands(ws: &Workspace, node: &str) -> Vec<String> {
    installed::late_commands(&ws.rendered_user_data(node))
}

struct GuardRun {
    out: Output,
    console: String,
}

/// Runs `script` as subiquity does (`sh -c`), limited to `devices`, in a private mount
/// namespace whose /proc/cmdline says `cmdline` and whose /dev/console is a file.
fn run_guard(dir: &Path, script: &str, cmdline: &str, devices: &[&Path]) -> GuardRun {
    require_tool("unshare");
    let cmdline_file = dir.join("cmdline");
    std::fs::write(&cmdline_file, format!("{cmdline}\n")).unwrap();
    let console = dir.join("console");
    std::fs::write(&console, "").unwrap();
    let wrap = r#"mount --bind "$1" /proc/cmdline && mount --bind "$2" /dev/console &&
script=$3 && shift 3 && exec sh -c "$script" sh "$@""#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            wrap,
            "sh",
        ])
        .arg(&cmdline_file)
        .arg(&console)
        .arg(script)
        .args(devices)
        .output()
        .unwrap();
    GuardRun {
        out,
        console: std::fs::read_to_string(&console).unwrap(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// sha256sum, not the library's hasher: the test build is unoptimised and disks are big.
fn sha(path: &Path) -> String {
    require_tool("sha256sum");
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The disks, written once per test in its own folder.
struct Disks {
    dir: PathBuf,
}

impl Disks {
    fn write(&self, name: &str, holds: Holds) -> PathBuf {
        let path = self.dir.join(format!("{name}.img"));
        installed::write_disk(&path, &holds);
        path
    }
}

const BOOT: &str = "BOOT_IMAGE=/casper/vmlinuz autoinstall ---";

#[test]
fn guard_stops_for_an_installed_node_and_names_it_under_uefi_and_bios_layouts() {
    let ws = Workspace::with_default_profile();
    let script = guard_script(&ws, "master1");
    let disks = Disks {
        dir: ws.path().to_path_buf(),
    };
    for uefi in [true, false] {
        let late = late_commands(&ws, "nodo1");
        let img = disks.write(
            "nodo1",
            Holds::Node {
                late_commands: &late,
                uefi,
            },
        );
        let before = sha(&img);
        let disk = LoopDevice::attach(&img, true);
        let run = run_guard(ws.path(), &script, BOOT, &[&disk.dev]);
        let said = text(&run.out);
        assert_eq!(run.out.status.code(), Some(1), "uefi={uefi}: {said}");
        let root = disk.partition(2).display().to_string();
        let expect = format!("already holds node nodo1 of cluster chocolandiadc-mvp (on {root})");
        assert!(said.contains(&expect), "uefi={uefi}: {said}");
        assert!(said.contains("nothing was erased"), "{said}");
        assert!(
            said.contains("\"Reinstall master1 - ERASES the disk\""),
            "{said}"
        );
        // The installer's screen (the console) gets it too.
        assert!(run.console.contains(&expect), "console: {}", run.console);
        drop(disk);
        assert_eq!(sha(&img), before, "the guard wrote to the disk");
    }
}

#[test]
fn guard_lets_the_reinstall_entry_through() {
    let ws = Workspace::with_default_profile();
    let script = guard_script(&ws, "master1");
    let disks = Disks {
        dir: ws.path().to_path_buf(),
    };
    let late = late_commands(&ws, "master1");
    let img = disks.write(
        "master1",
        Holds::Node {
            late_commands: &late,
            uefi: true,
        },
    );
    let disk = LoopDevice::attach(&img, true);
    let cmdline = "BOOT_IMAGE=/casper/vmlinuz autoinstall chocoimg.reinstall ---";
    let run = run_guard(ws.path(), &script, cmdline, &[&disk.dev]);
    assert_eq!(run.out.status.code(), Some(0), "{}", text(&run.out));
    assert!(
        text(&run.out).contains("installing master1"),
        "{}",
        text(&run.out)
    );
    // A word that only resembles the argument is not it.
    let run = run_guard(
        ws.path(),
        &script,
        "BOOT_IMAGE=/casper/vmlinuz autoinstall xchocoimg.reinstall ---",
        &[&disk.dev],
    );
    assert_eq!(run.out.status.code(), Some(1), "{}", text(&run.out));
}

#[test]
fn guard_installs_on_disks_that_only_resemble_a_node_and_stops_for_another_cluster() {
    let ws = Workspace::with_default_profile();
    let script = guard_script(&ws, "master1");
    let disks = Disks {
        dir: ws.path().to_path_buf(),
    };
    let other_os = disks.write("other-os", Holds::OtherOs { uefi: true });
    let other_bios = disks.write("other-bios", Holds::OtherOs { uefi: false });
    let blank = disks.write("blank", Holds::Blank);
    let other_os = LoopDevice::attach(&other_os, true);
    let other_bios = LoopDevice::attach(&other_bios, true);
    let blank = LoopDevice::attach(&blank, true);
    let plain = [
        other_os.dev.as_path(),
        other_bios.dev.as_path(),
        blank.dev.as_path(),
    ];
    let run = run_guard(ws.path(), &script, BOOT, &plain);
    assert_eq!(run.out.status.code(), Some(0), "{}", text(&run.out));
    assert!(
        text(&run.out).contains("no chocoimg node on this machine: installing master1"),
        "{}",
        text(&run.out)
    );
    assert!(run.console.is_empty(), "{}", run.console);

    // A node of another chocoimg cluster, beside them: still a node, named as such.
    let late = chocoimg::guard::late_commands("homelab", "worker7", "agent");
    let foreign = disks.write(
        "foreign",
        Holds::Node {
            late_commands: &late,
            uefi: false,
        },
    );
    let foreign = LoopDevice::attach(&foreign, true);
    let mut all = plain.to_vec();
    all.push(&foreign.dev);
    let run = run_guard(ws.path(), &script, BOOT, &all);
    let said = text(&run.out);
    assert_eq!(run.out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "node worker7 of cluster homelab (on {})",
            foreign.partition(2).display()
        )),
        "{said}"
    );
}

#[test]
fn guard_script_passes_shellcheck() {
    require_tool("shellcheck");
    let ws = Workspace::with_default_profile();
    let path = ws.path().join("guard.sh");
    std::fs::write(&path, guard_script(&ws, "master1")).unwrap();
    let out = Command::new("shellcheck")
        .args(["-s", "sh", "-S", "style"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
