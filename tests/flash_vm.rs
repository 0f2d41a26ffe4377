//! `chocoimg flash` against a real USB stick: QEMU's usb-storage on xHCI, seen by a
//! real Linux kernel (the image tests' Debian kernel) in a guest that also has a virtio
//! system disk (mounted) and a fixed SATA disk. The guest's initramfs carries the
//! chocoimg binary under test with its shared libraries and busybox; its /init runs
//! each case and prints markers on the serial port, which is what this test reads.
//! Every disk is a file of this test: nothing of this machine can be written.
use crate::support::require_tool;
use crate::support::{qemu, replica};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;
const IMAGE_LEN: usize = 6 * MIB + 512;

/// The guest's /init after the busybox preamble (support::replica::busybox_init).
const INIT: &str = r#"stick=""; fixed=""; i=0
while [ $i -lt 240 ]; do
  for d in /sys/block/sd*; do
    [ -e "$d/size" ] || continue
    case "$(readlink -f "$d")" in
      */usb*) stick=${d##*/} ;;
      *) fixed=${d##*/} ;;
    esac
  done
  [ -n "$stick" ] && [ -n "$fixed" ] && [ -e /dev/vda ] && [ -e "/dev/${stick}1" ] && break
  usleep 250000
  i=$((i + 1))
done
echo "FLASH-VM-DISKS stick=$stick fixed=$fixed"
mkdir -p /system /mnt/stick
mount -t vfat /dev/vda /system && echo "FLASH-VM-SYSTEM-MOUNTED"
step() {
  name=$1; shift
  echo "FLASH-STEP-BEGIN $name"
  "$@"
  echo "FLASH-STEP-END $name rc=$?"
}
img=/images/test.img
step list chocoimg flash --list
step list-json chocoimg flash --list --json
step system chocoimg flash $img /dev/vda --yes
step fixed chocoimg flash $img /dev/$fixed --yes
step partition chocoimg flash $img /dev/${stick}1 --yes
mount -t vfat /dev/${stick}1 /mnt/stick && echo "FLASH-VM-STICK-MOUNTED"
step mounted chocoimg flash $img /dev/$stick --yes
step unmount chocoimg flash $img /dev/$stick --yes --unmount
echo "FLASH-VM-STICK-SHA $(head -c IMAGE_LEN /dev/$stick | sha256sum)"
echo "FLASH-VM-DONE"
poweroff -f
"#;

/// The shared libraries `binary` loads, from `ldd` (absolute paths).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    require_tool("ldd");
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// chocoimg (debug info stripped: the VM has 512 MiB), its libraries, and the image
/// with its .sha256, as initramfs files.
fn guest_files(dir: &Path, image: &[u8]) -> Vec<(String, Vec<u8>)> {
    require_tool("strip");
    let bin = Path::new(env!("CARGO_BIN_EXE_chocoimg"));
    let stripped = dir.join("chocoimg");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(bin)
        .status()
        .unwrap();
    assert!(st.success(), "strip failed");
    let mut files = vec![(
        "usr/bin/chocoimg".to_string(),
        std::fs::read(&stripped).unwrap(),
    )];
    for lib in shared_libraries(bin) {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push((inside, std::fs::read(&lib).unwrap()));
    }
    let sha = chocoimg::fsutil::sha256_hex(image);
    files.push(("images/test.img".into(), image.to_vec()));
    files.push((
        "images/test.img.sha256".into(),
        format!("{sha}  test.img\n").into_bytes(),
    ));
    files
}

/// A FAT volume of `mib` MiB made by mkfs.vfat.
fn vfat(path: &Path, mib: usize, label: &str) -> Vec<u8> {
    require_tool("mkfs.vfat");
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfs.vfat")
        .args(["-n", label, "-C"])
        .arg(path)
        .arg((mib * 1024).to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.vfat failed");
    std::fs::read(path).unwrap()
}

/// A 64 MiB stick: an MBR with one FAT partition from 1 MiB (what a used stick holds).
fn stick(dir: &Path) -> PathBuf {
    require_tool("sfdisk");
    let path = dir.join("stick.img");
    std::fs::write(&path, vec![0u8; 64 * MIB]).unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut sf.stdin.take().unwrap(),
        b"label: dos\nstart=2048, size=65536, type=c\n",
    )
    .unwrap();
    assert!(sf.wait().unwrap().success());
    let fat = vfat(&dir.join("stick-part.img"), 32, "STICKDATA");
    let mut all = std::fs::read(&path).unwrap();
    all[MIB..MIB + fat.len()].copy_from_slice(&fat);
    std::fs::write(&path, all).unwrap();
    path
}

/// Runs the guest; returns its serial log, cleaned.
fn run_guest(dir: &Path, initrd: &Path, kernel: &Path, stick: &Path) -> String {
    let system = dir.join("system.img");
    vfat(&system, 16, "SYSTEM");
    let fixed = dir.join("fixed.img");
    std::fs::write(&fixed, vec![0u8; 32 * MIB]).unwrap();
    let log = dir.join("serial.log");
    let mut cmd = qemu::machine(Some(500));
    // No default devices (no NIC, no CD-ROM): the disks below are all it has.
    cmd.arg("-nodefaults")
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
        .arg("-drive")
        .arg(qemu::raw_drive("system", &system))
        .args(["-device", "virtio-blk-pci,drive=system,serial=SYSTEM0001"])
        .arg("-drive")
        .arg(qemu::raw_drive("fixed", &fixed))
        .args(["-device", "ide-hd,drive=fixed,bus=ide.2,serial=FIXED0001"]);
    qemu::usb_stick(&mut cmd, stick, "serial=CHOCOSTICK01");
    let status = cmd
        .stdin(std::process::Stdio::null())
        .status()
        .expect("running qemu");
    let text = clean(&std::fs::read(&log).unwrap_or_default());
    assert!(
        status.success(),
        "qemu did not power off by itself ({status}); serial log:\n{text}"
    );
    text
}

/// The serial log without CRs.
fn clean(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\r', "")
}

/// What one step printed, and its exit code.
fn step<'a>(log: &'a str, name: &str) -> (&'a str, i32) {
    let begin = format!("FLASH-STEP-BEGIN {name}\n");
    let at = log
        .find(&begin)
        .unwrap_or_else(|| panic!("step {name} never ran:\n{log}"))
        + begin.len();
    let end_mark = format!("FLASH-STEP-END {name} rc=");
    let end = at + log[at..].find(&end_mark).expect("end of step");
    let rc: i32 = log[end + end_mark.len()..]
        .split_whitespace()
        .next()
        .and_then(|r| r.parse().ok())
        .expect("exit code");
    (&log[at..end], rc)
}

#[test]
fn flash_vm_lists_refuses_and_writes_a_real_usb_stick() {
    let t = tempfile::tempdir().unwrap();
    let kdir = replica::kernel();
    let image: Vec<u8> = (0..IMAGE_LEN)
        .map(|i| (i % 253) as u8 ^ (i >> 20) as u8)
        .collect();
    let initrd = t.path().join("initrd.gz");
    let init = replica::busybox_init(&INIT.replace("IMAGE_LEN", &IMAGE_LEN.to_string()));
    replica::write_initramfs_with(&kdir, &initrd, &init, &guest_files(t.path(), &image));
    let stick = stick(t.path());
    let log = run_guest(t.path(), &initrd, &kdir.join("vmlinuz"), &stick);
    println!("{log}");
    assert!(log.contains("FLASH-VM-DONE"), "{log}");
    let disks = log
        .lines()
        .find_map(|l| l.strip_prefix("FLASH-VM-DISKS "))
        .unwrap_or_else(|| panic!("{log}"));
    let name = |key: &str| {
        disks
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| panic!("no {key} disk seen: {disks}\n{log}"))
            .to_string()
    };
    let (stick_dev, fixed_dev) = (
        format!("/dev/{}", name("stick=")),
        format!("/dev/{}", name("fixed=")),
    );
    assert!(log.contains("FLASH-VM-SYSTEM-MOUNTED"), "{log}");

    // --list shows the stick, and only the stick.
    let (list, rc) = step(&log, "list");
    assert_eq!(rc, 0, "{log}");
    assert!(
        list.contains(&stick_dev) && list.contains("CHOCOSTICK01"),
        "{list}"
    );
    assert!(list.contains("USB"), "{list}");
    assert!(
        !list.contains("/dev/vda") && !list.contains(&fixed_dev),
        "{list}"
    );
    let (json, rc) = step(&log, "list-json");
    assert_eq!(rc, 0, "{log}");
    let json: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let sticks = json.as_array().unwrap();
    assert_eq!(sticks.len(), 1, "{json}");
    assert_eq!(sticks[0]["path"], stick_dev.as_str());
    assert_eq!(sticks[0]["usb"], true);
    assert_eq!(sticks[0]["serial"], "CHOCOSTICK01");

    // The fixed disks are refused, each for its reasons.
    let (out, rc) = step(&log, "system");
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("on /system") && out.contains("--unmount"),
        "{out}"
    );
    assert!(
        out.contains("neither removable nor attached through USB"),
        "{out}"
    );
    let (out, rc) = step(&log, "fixed");
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("--allow-fixed-disk") && !out.contains("in use"),
        "{out}"
    );

    // A partition of the stick: the whole stick is named instead.
    let (out, rc) = step(&log, "partition");
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains(&format!("give {stick_dev} instead")), "{out}");

    // Mounted: refused until --unmount.
    assert!(log.contains("FLASH-VM-STICK-MOUNTED"), "{log}");
    let (out, rc) = step(&log, "mounted");
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("/mnt/stick") && out.contains("--unmount"),
        "{out}"
    );
    assert!(out.contains("nothing was written"), "{out}");
    let (out, rc) = step(&log, "unmount");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("unmounted /mnt/stick"), "{out}");
    assert!(
        out.contains("CHOCOSTICK01"),
        "the confirmation shows the serial: {out}"
    );
    assert!(
        out.contains("verified:") && out.contains("test.img.sha256"),
        "{out}"
    );

    // The stick holds the image: as the guest reads it, and as the file behind it.
    let sha = chocoimg::fsutil::sha256_hex(&image);
    assert!(log.contains(&format!("FLASH-VM-STICK-SHA {sha}")), "{log}");
    let on_stick = std::fs::read(&stick).unwrap();
    assert!(
        on_stick[..IMAGE_LEN] == image[..],
        "the stick file lacks the image"
    );
    assert!(on_stick[on_stick.len() - MIB..].iter().all(|b| *b == 0));
}
