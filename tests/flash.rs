//! `chocoimg flash` on this machine: only loop devices and files the test made are ever
//! given as targets (THE rule for block devices), and `flash --list` is only run in
//! ways that write nothing. The real USB stick is in `flash_vm` (a QEMU guest).
use crate::support::loopdev::LoopDevice;
use crate::support::{chocoimg, require_tool};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MIB: usize = 1 << 20;

/// An image of `len` bytes (no two MiBs alike) with its `.sha256` beside it.
fn image(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let path = dir.join("test.img");
    let mut data = Vec::with_capacity(len);
    let mut x: u32 = 0x1234_5678;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(&path, &data).unwrap();
    let sha = chocoimg::fsutil::sha256_hex(&data);
    std::fs::write(dir.join("test.img.sha256"), format!("{sha}  test.img\n")).unwrap();
    (path, data)
}

/// `chocoimg flash ARGS` with no terminal (stdin closed), like CI and scripts.
fn flash(args: &[&str]) -> Output {
    chocoimg()
        .arg("flash")
        .args(args)
        .stdin(Stdio::null())
        .env_remove("CHOCOIMG_TEST_CORRUPT_READBACK")
        .env_remove("CHOCOIMG_TEST_PAUSE_AFTER")
        .output()
        .expect("chocoimg runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Refused: exit 2, every `expect` in the message, the target untouched.
fn assert_refused(out: &Output, expect: &[&str], before: &[u8], after: &[u8]) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was written") || err.contains("no terminal"),
        "{}",
        text(out)
    );
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in:\n{}", text(out));
    }
    assert!(before == after, "a refused flash changed the target");
}

#[test]
fn flash_writes_a_loop_device_and_verifies_it() {
    let t = tempfile::tempdir().unwrap();
    let (img, data) = image(t.path(), 5 * MIB + 4096 + 512);
    let lo = LoopDevice::new(t.path(), "disk", 32 * MIB);
    let before = lo.contents();
    // A loop device is neither removable nor USB: refused like an internal disk.
    let out = flash(&[s(&img), s(&lo.dev), "--yes"]);
    assert_refused(
        &out,
        &["--allow-fixed-disk", "neither removable nor"],
        &before,
        &lo.contents(),
    );

    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verified"), "{}", text(&out));
    assert!(stdout.contains("test.img.sha256"), "{}", text(&out));
    // Confirmation text still shows what was lost, even with --yes.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(s(&lo.dev)) && stderr.contains("will be lost"),
        "{}",
        text(&out)
    );
    let after = lo.contents();
    assert!(
        after[..data.len()] == data[..],
        "the image is not on the device"
    );
    // The rest of the device is as it was, but for its last MiB (zeroed: no backup GPT
    // from before may survive).
    let end = after.len() - MIB;
    assert!(after[data.len()..end].iter().all(|b| *b == 0xaa));
    assert!(after[end..].iter().all(|b| *b == 0));
}

#[test]
fn flash_refuses_a_device_smaller_than_the_image() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), 6 * MIB);
    let lo = LoopDevice::new(t.path(), "small", 4 * MIB);
    let before = lo.contents();
    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert_refused(
        &out,
        &["but the image needs", "use a stick of at least"],
        &before,
        &lo.contents(),
    );
}

/// A partition of a loop device (its table read by the kernel or added by partx): the
/// whole disk is named instead, and neither the partition nor the disk is written.
/// (`flash_vm` checks the same on a USB stick.)
#[test]
fn flash_refuses_a_partition_and_names_the_whole_disk() {
    require_tool("sfdisk");
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), MIB);
    let backing = t.path().join("parted");
    std::fs::write(&backing, vec![0xaa; 16 * MIB]).unwrap();
    let mut sf = Command::new("sfdisk")
        .args(["-q", s(&backing)])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,12M,c\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    let lo = LoopDevice::attach(&backing, true);
    let part = lo.partition(1);
    assert!(part.exists(), "{} has no partition node", lo.dev.display());
    let before = lo.contents();
    let out = flash(&[s(&img), s(&part), "--yes", "--allow-fixed-disk"]);
    assert_refused(
        &out,
        &[
            "it is a partition",
            &format!("give {} instead", lo.dev.display()),
        ],
        &before,
        &lo.contents(),
    );
}

#[test]
fn flash_writes_a_regular_file_only_with_to_file() {
    let t = tempfile::tempdir().unwrap();
    let (img, data) = image(t.path(), 3 * MIB + 100);
    let file = t.path().join("vm-disk.raw");
    std::fs::write(&file, vec![0xaa; 8 * MIB]).unwrap();
    let before = std::fs::read(&file).unwrap();
    let out = flash(&[s(&img), s(&file), "--yes"]);
    assert_refused(
        &out,
        &["regular file", "--to-file"],
        &before,
        &std::fs::read(&file).unwrap(),
    );

    let out = flash(&[s(&img), s(&file), "--yes", "--to-file"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    let after = std::fs::read(&file).unwrap();
    assert!(after[..data.len()] == data[..]);
    assert!(after[data.len()..].iter().all(|b| *b == 0xaa));

    // A new file is made.
    let new = t.path().join("new.raw");
    let out = flash(&[s(&img), s(&new), "--yes", "--to-file"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(&new).unwrap() == data);

    // Never over the image it reads.
    let out = flash(&[s(&img), s(&img), "--yes", "--to-file"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the image itself"));
    assert!(std::fs::read(&img).unwrap() == data);

    // Neither a disk nor a file.
    let out = flash(&[s(&img), "/dev/null", "--yes", "--to-file"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a block device"));
}

/// A process that holds `dev` open with O_EXCL (as a mount or a disk tool would) until
/// it is killed.
struct ExclusiveHolder(std::process::Child);

impl ExclusiveHolder {
    fn hold(dev: &Path) -> ExclusiveHolder {
        require_tool("python3");
        let mut child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY|os.O_EXCL); \
                 print('held', flush=True); time.sleep(600)",
            ])
            .arg(dev)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "held");
        ExclusiveHolder(child)
    }
}

impl Drop for ExclusiveHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flash_refuses_a_busy_device() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), MIB);
    let lo = LoopDevice::new(t.path(), "busy", 8 * MIB);
    let before = lo.contents();
    let holder = ExclusiveHolder::hold(&lo.dev);
    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert_refused(
        &out,
        &["another program has it open"],
        &before,
        &lo.contents(),
    );
    drop(holder);
    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Mounts `dev` (ext4, made here) on a folder of `dir`; unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(dev: &Path, dir: &Path) -> Mounted {
        require_tool("mkfs.ext4");
        require_tool("mount");
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "MYFILES"])
            .arg(dev)
            .status()
            .unwrap();
        assert!(st.success());
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount").arg(dev).arg(&mnt).status().unwrap();
        assert!(st.success(), "mounting {}", dev.display());
        Mounted(mnt)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn flash_refuses_a_mounted_device_until_unmount() {
    let t = tempfile::tempdir().unwrap();
    let (img, data) = image(t.path(), 2 * MIB);
    let lo = LoopDevice::new(t.path(), "mounted", 32 * MIB);
    let m = Mounted::new(&lo.dev, t.path());
    let before = lo.contents();
    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert_refused(
        &out,
        &["in use", s(&m.0), "--unmount"],
        &before,
        &lo.contents(),
    );

    let out = flash(&[
        s(&img),
        s(&lo.dev),
        "--yes",
        "--allow-fixed-disk",
        "--unmount",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unmounted"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(s(&m.0)), "still mounted");
    assert!(lo.contents()[..data.len()] == data[..]);
}

#[test]
fn flash_verification_catches_a_corrupted_read_back() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), 6 * MIB);
    let lo = LoopDevice::new(t.path(), "liar", 16 * MIB);
    // The debug build's read-back hook flips one byte read back at 5 MiB + 3: a stick
    // that returns other bytes than it was given (no device-mapper on this kernel).
    let out = chocoimg()
        .args(["flash", s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"])
        .env("CHOCOIMG_TEST_CORRUPT_READBACK", (5 * MIB + 3).to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verification failed"), "{}", text(&out));
    assert!(
        err.contains("left unbootable (first MiB zeroed)"),
        "{}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("verified"));
    // The stick cannot boot what failed verification.
    assert!(lo.contents()[..MIB].iter().all(|b| *b == 0));
}

#[test]
fn flash_refuses_an_image_that_does_not_match_its_sha256() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), 3 * MIB);
    std::fs::write(
        t.path().join("test.img.sha256"),
        format!("{}  test.img\n", "0".repeat(64)),
    )
    .unwrap();
    let lo = LoopDevice::new(t.path(), "disk", 8 * MIB);
    let out = flash(&[s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its .sha256"));
    assert!(
        lo.contents()[..MIB].iter().all(|b| *b == 0),
        "a damaged image must not boot"
    );
}

#[test]
fn flash_without_yes_and_without_a_terminal_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), MIB);
    let lo = LoopDevice::new(t.path(), "disk", 8 * MIB);
    let before = lo.contents();
    let out = flash(&[s(&img), s(&lo.dev), "--allow-fixed-disk"]);
    assert_refused(
        &out,
        &["no terminal to confirm on", "--yes", "will be lost"],
        &before,
        &lo.contents(),
    );
}

#[test]
fn flash_without_a_device_and_without_a_terminal_prints_the_list() {
    let t = tempfile::tempdir().unwrap();
    let (img, _) = image(t.path(), MIB);
    // No DEVICE: nothing can be written; the sticks of this machine (if any) are only
    // listed.
    let out = flash(&[s(&img), "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no DEVICE given and no terminal"));
}

#[test]
fn flash_list_on_this_machine_shows_no_fixed_disk() {
    // Reads /sys and /proc only. This machine's disks are virtio (fixed): whatever is
    // listed must be removable or USB, and the system disk never is.
    let out = flash(&["--list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in list.as_array().unwrap() {
        assert!(d["removable"] == true || d["usb"] == true, "{d}");
        assert_eq!(d["holds_root"], false, "{d}");
    }
    let out = flash(&["--list"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn flash_ctrl_c_mid_write_leaves_a_stick_that_cannot_boot() {
    let t = tempfile::tempdir().unwrap();
    let (img, data) = image(t.path(), 24 * MIB);
    let lo = LoopDevice::new(t.path(), "disk", 32 * MIB);
    // The debug build's pause hook holds the writer after 9 MiB until a line arrives on
    // stdin: Ctrl-C (SIGINT) lands mid-write without racing it.
    let mut child = chocoimg()
        .args(["flash", s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"])
        .env("CHOCOIMG_TEST_PAUSE_AFTER", (9 * MIB).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "chocoimg ended before the pause:\n{seen}");
        seen.push_str(&line);
        if line.contains("test hook: paused mid-write") {
            break;
        }
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(
        seen.contains("cannot boot (its first MiB is zeroed)"),
        "{seen}"
    );
    let after = lo.contents();
    assert!(after[..MIB].iter().all(|b| *b == 0), "first MiB not zeroed");
    assert!(
        after[MIB..9 * MIB] == data[MIB..9 * MIB],
        "the part before the pause is written"
    );
    assert!(after[after.len() - MIB..].iter().all(|b| *b == 0));
}

#[test]
fn flash_node_takes_the_image_build_wrote() {
    let ws = crate::support::workspace::Workspace::with_default_profile();
    let target = ws.path().join("stick.raw");
    let flash_node =
        |node: &str| ws.run(&["flash", "--node", node, s(&target), "--to-file", "--yes"]);
    // No image yet: say how to make one.
    let out = flash_node("master1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chocoimg build --node master1"));
    assert!(!target.exists());
    // Unknown node.
    let out = flash_node("nodo9");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Stand-in for what `build` writes (its own tests cover the image itself).
    let dir = ws.out().join("chocolandiadc-mvp");
    std::fs::create_dir_all(&dir).unwrap();
    let (img, data) = image(&dir, 2 * MIB);
    std::fs::rename(&img, dir.join("master1.img")).unwrap();
    std::fs::rename(dir.join("test.img.sha256"), dir.join("master1.img.sha256")).unwrap();
    let out = flash_node("master1");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verified") && stdout.contains("master1.img.sha256"),
        "{stdout}"
    );
    assert!(std::fs::read(&target).unwrap() == data);
}

#[test]
fn flash_help_teaches() {
    let out = chocoimg().args(["flash", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--list",
        "--unmount",
        "--allow-fixed-disk",
        "--allow-large",
        "--to-file",
        "--yes",
        "first MiB",
        ".sha256",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

/// `chocoimg flash ARGS` on a terminal (util-linux `script` gives it a pty), with
/// `typed` as what the user types.
fn flash_on_a_terminal(args: &[&str], typed: &str) -> Output {
    require_tool("script");
    let mut cmd = vec![env!("CARGO_BIN_EXE_chocoimg").to_string(), "flash".into()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let mut child = Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            &cmd.join(" "),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn flash_on_a_terminal_asks_for_the_device_name() {
    let t = tempfile::tempdir().unwrap();
    let (img, data) = image(t.path(), 2 * MIB);
    let lo = LoopDevice::new(t.path(), "disk", 8 * MIB);
    let name = lo.dev.file_name().unwrap().to_str().unwrap().to_string();
    let before = lo.contents();
    let args = [s(&img), s(&lo.dev), "--allow-fixed-disk"];
    // Anything but the device's name stops it.
    let out = flash_on_a_terminal(&args, "sdb\n");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        shown.contains(&format!("Type {name} to erase it")),
        "{shown}"
    );
    assert!(
        shown.contains("will be lost") && shown.contains("serial"),
        "{shown}"
    );
    assert!(shown.contains("nothing was written"), "{shown}");
    assert!(before == lo.contents());
    // Its name goes on.
    let out = flash_on_a_terminal(&args, &format!("{name}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    assert!(lo.contents()[..data.len()] == data[..]);
}

#[test]
fn flash_as_a_user_who_may_not_write_the_disk_says_sudo() {
    require_tool("setpriv");
    let t = tempfile::tempdir().unwrap();
    // The image is readable by everyone; the loop device, as every disk, only by root.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (img, _) = image(t.path(), MIB);
    for f in ["test.img", "test.img.sha256"] {
        std::fs::set_permissions(t.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let lo = LoopDevice::new(t.path(), "disk", 8 * MIB);
    let before = lo.contents();
    // A copy of the binary the user can run wherever the checkout lives.
    let bin = t.path().join("chocoimg");
    std::fs::copy(env!("CARGO_BIN_EXE_chocoimg"), &bin).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["flash", s(&img), s(&lo.dev), "--yes", "--allow-fixed-disk"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_refused(&out, &["needs root", "sudo"], &before, &lo.contents());
}
