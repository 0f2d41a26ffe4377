//! The USB image, checked by tools nobody here wrote (xorriso, sgdisk, fsck.vfat, blkid,
//! mtools) and booted in QEMU under UEFI (OVMF) and BIOS (SeaBIOS). The Ubuntu ISO is
//! a replica (support::replica) because the real one cannot be had here.
use crate::support::installed::{self, Holds};
use crate::support::qemu;
use crate::support::replica::{self, Variant};
use crate::support::{chocoimg, require_tool};
use chocoimg::artifacts::PayloadFile;
use chocoimg::image::{self, BuildRequest, Built, Identity, ImageError, ProgressStyle};
use chocoimg::seed::SeedFile;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

const USER_DATA: &str =
    "#cloud-config\nautoinstall:\n  version: 1\n  # replica test seed for master1\n";

fn identity() -> Identity {
    Identity {
        cluster: "chocolandiadc-mvp".into(),
        node: "master1".into(),
        role: "server".into(),
        k3s_version: "v1.28.15+k3s1".into(),
        ubuntu_release: "22.04.5".into(),
        chocoimg_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn seed() -> Vec<SeedFile> {
    vec![
        SeedFile {
            name: "user-data".into(),
            contents: USER_DATA.as_bytes().to_vec(),
        },
        SeedFile {
            name: "meta-data".into(),
            contents: b"instance-id: master1\nlocal-hostname: master1\n".to_vec(),
        },
    ]
}

/// A small fake K3s payload (a real K3s cannot be had here): bytes with a pattern.
fn payload(dir: &Path) -> Vec<PayloadFile> {
    let k3s: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let install = b"#!/bin/sh\necho 'stand-in for get.k3s.io'\n".to_vec();
    let mut out = Vec::new();
    for (name, data) in [("k3s/k3s", k3s), ("k3s/install.sh", install)] {
        let path = dir.join(name.replace('/', "_"));
        std::fs::write(&path, &data).unwrap();
        out.push(PayloadFile {
            name: name.into(),
            source: path,
            sha256: chocoimg::fsutil::sha256_hex(&data),
        });
    }
    out
}

fn build(iso: &Path, dir: &Path) -> anyhow::Result<Built> {
    build_with(iso, dir, false)
}

/// `build`, with the cancel flag already set when `cancelled`.
fn build_with(iso: &Path, dir: &Path, cancelled: bool) -> anyhow::Result<Built> {
    let id = identity();
    let seed = seed();
    let payload = payload(dir);
    let cancel = AtomicBool::new(cancelled);
    image::build(&BuildRequest {
        iso,
        output: &dir.join("master1.img"),
        identity: &id,
        seed: &seed,
        payload: &payload,
        force: false,
        progress: ProgressStyle::Quiet,
        cancel: &cancel,
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The `ImageError` behind `err`; fails the test with the whole chain if there is none.
fn image_error(err: &anyhow::Error) -> &ImageError {
    err.downcast_ref::<ImageError>()
        .unwrap_or_else(|| panic!("not an ImageError: {err:#}"))
}

fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Extracts `path` from an ISO with xorriso, reading the tree `load` selects.
fn xorriso_extract(iso: &Path, load: &[&str], path: &str, to: &Path) -> Vec<u8> {
    // Extracting to "-" or /dev/stdout misbehaves (testing.md): use a file.
    let _ = std::fs::remove_file(to);
    let mut cmd = Command::new("xorriso");
    cmd.args(load)
        .arg("-indev")
        .arg(iso)
        .args(["-osirrox", "on", "-extract", path])
        .arg(to);
    run(&mut cmd);
    std::fs::read(to).unwrap()
}

/// Partition `number`'s bytes, copied out of the image to `to`.
fn partition_bytes(img: &Path, number: usize, to: &Path) -> (u64, u64) {
    let mut f = std::fs::File::open(img).unwrap();
    let p = image::gpt::Gpt::read(&mut f)
        .unwrap()
        .partitions()
        .into_iter()
        .find(|p| p.number == number)
        .unwrap();
    let start = p.first_lba * 512;
    let len = (p.last_lba + 1 - p.first_lba) * 512;
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
    (start, len)
}

/// grub.cfg as xorriso reads it from every tree of both descriptor sets (the image's
/// own and partition 1's, from `-partition_offset`): Rock Ridge, plain ISO 9660
/// (`-read_fs ecma119`) and, when present, Joliet (`-read_fs norock`). Asserts that they
/// all agree and returns them.
fn grub_menus_from_every_tree(img: &Path, joliet: bool, tmp: &Path) -> Vec<Vec<u8>> {
    let p1 = tmp.join("p1.iso");
    partition_bytes(img, 1, &p1);
    let mut views: Vec<(&[&str], &str)> = vec![
        (&[], "/boot/grub/grub.cfg"),
        (&["-read_fs", "ecma119"], "/BOOT/GRUB/GRUB.CFG"),
    ];
    if joliet {
        views.push((&["-read_fs", "norock"], "/boot/grub/grub.cfg"));
    }
    let mut menus = Vec::new();
    for (i, source) in [img, p1.as_path()].into_iter().enumerate() {
        for (j, (load, path)) in views.iter().enumerate() {
            let to = tmp.join(format!("grub-{i}-{j}.cfg"));
            let menu = xorriso_extract(source, load, path, &to);
            if let Some(first) = menus.first() {
                assert_eq!(&menu, first, "tree {load:?} of set {i} differs");
            }
            menus.push(menu);
        }
    }
    menus
}

/// The CIDATA volume (its bytes in `part`): fsck clean, blkid sees the label, and mtools
/// reads its user-data, which is returned.
fn check_cidata_volume(part: &Path) -> String {
    run(Command::new("fsck.vfat").arg("-n").arg(part));
    let id = run(Command::new("blkid").arg("-p").arg(part));
    assert!(
        id.contains("LABEL=\"CIDATA\"") && id.contains("TYPE=\"vfat\""),
        "{id}"
    );
    run(Command::new("mcopy")
        .arg("-i")
        .arg(part)
        .args(["::user-data", "-"]))
}

fn check_with_foreign_tools(variant: Variant) {
    for t in ["xorriso", "sgdisk", "fsck.vfat", "blkid", "mcopy", "md5sum"] {
        require_tool(t);
    }
    let iso = replica::replica(variant);
    let iso_sha = chocoimg::fsutil::sha256_file(&iso).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let built = build(&iso, tmp.path()).unwrap();
    let img = &built.image;
    assert_eq!(
        chocoimg::fsutil::sha256_file(&iso).unwrap(),
        iso_sha,
        "the source ISO must stay untouched"
    );
    let expected_records = if variant == Variant::Joliet { 4 } else { 2 };
    assert_eq!(built.grub_records, expected_records, "grub.cfg records");
    assert!(built.kernel_line.contains("autoinstall"));

    let menus = grub_menus_from_every_tree(img, variant == Variant::Joliet, tmp.path());
    let menu = String::from_utf8(menus[0].clone()).unwrap();
    assert!(menu.contains(&built.boot_title), "{menu}");
    assert!(
        menu.contains("linux\t/casper/vmlinuz autoinstall ---"),
        "{menu}"
    );
    // The reinstall guard: GRUB looks for the installed node's marker first.
    assert!(
        menu.contains("search --no-floppy --file --set=chocoimg_disk /etc/chocoimg/node.env"),
        "{menu}"
    );
    assert!(
        menu.contains("linux\t/casper/vmlinuz autoinstall chocoimg.reinstall ---"),
        "{menu}"
    );
    assert!(menu.contains("set timeout=10"));
    assert!(!menu.contains("set timeout=30"));
    assert!(menu.contains("Try or Install Ubuntu Server"));
    assert!(menu.contains("/casper/hwe-vmlinuz"));
    assert!(!menu.contains("console=ttyS0"));

    // md5sum.txt agrees with the new grub.cfg (md5sum -c on the extracted pair).
    let sums = xorriso_extract(img, &[], "/md5sum.txt", &tmp.path().join("md5sum.txt"));
    let line = String::from_utf8(sums)
        .unwrap()
        .lines()
        .find(|l| l.ends_with("  ./boot/grub/grub.cfg"))
        .unwrap()
        .to_string();
    let check = tmp.path().join("check");
    std::fs::create_dir_all(check.join("boot/grub")).unwrap();
    std::fs::write(check.join("boot/grub/grub.cfg"), &menus[0]).unwrap();
    std::fs::write(check.join("sums"), format!("{line}\n")).unwrap();
    run(Command::new("md5sum")
        .current_dir(&check)
        .args(["-c", "sums"]));

    // The partition tables: sgdisk finds no problem; CIDATA is 1 MiB aligned after the
    // ISO; the MBR keeps its boot code and bootable entry, only the 0xEE entry grew.
    let v = run(Command::new("sgdisk").arg("-v").arg(img));
    assert!(v.contains("No problems found"), "{v}");
    let p = run(Command::new("sgdisk").arg("-p").arg(img));
    assert!(p.contains("CIDATA"), "{p}");
    let iso_len = std::fs::metadata(&iso).unwrap().len();
    let part_path = tmp.path().join("cidata.img");
    let (start, _) = partition_bytes(img, built.cidata_partition, &part_path);
    assert_eq!(start % (1 << 20), 0);
    assert!(start >= iso_len);
    let (a, b) = (std::fs::read(&iso).unwrap(), std::fs::read(img).unwrap());
    assert_eq!(a[..446], b[..446], "MBR boot code changed");
    assert_eq!(a[462..478], b[462..478], "the bootable MBR entry changed");
    assert_eq!(b[446 + 4], 0xEE);
    let ee_len = u32::from_le_bytes(b[458..462].try_into().unwrap()) as u64;
    assert_eq!((ee_len + 1) * 512, b.len() as u64);
    assert_eq!(b.len() as u64, built.size);

    assert_eq!(check_cidata_volume(&part_path), USER_DATA);
    let k3s = tmp.path().join("k3s.out");
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&part_path)
        .arg("::k3s/k3s")
        .arg(&k3s));
    let sums = run(Command::new("mcopy")
        .arg("-i")
        .arg(&part_path)
        .args(["::k3s/SHA256SUMS", "-"]));
    let want = chocoimg::fsutil::sha256_file(&k3s).unwrap();
    assert!(sums.contains(&format!("{want}  k3s\n")), "{sums}");
    assert!(sums.contains("  install.sh\n"), "{sums}");

    // The .sha256 file checks with sha256sum.
    run(Command::new("sha256sum")
        .current_dir(tmp.path())
        .args(["-c", "master1.img.sha256"]));

    // inspect reads it all back.
    let out = chocoimg()
        .args(["inspect", "--json"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["cluster"], "chocolandiadc-mvp");
    assert_eq!(j["node"], "master1");
    assert_eq!(j["role"], "server");
    assert_eq!(j["k3s_version"], "v1.28.15+k3s1");
    assert_eq!(j["boot_title"], built.boot_title.as_str());
    assert!(j["iso_release"]
        .as_str()
        .unwrap()
        .starts_with("Ubuntu-Server 22.04.5"));
    assert!(j["kernel_line"].as_str().unwrap().contains("autoinstall"));
    assert_eq!(j["reinstall_title"], "Reinstall master1 - ERASES the disk");
    assert_eq!(
        j["reinstall_kernel_line"],
        "/casper/vmlinuz autoinstall chocoimg.reinstall ---"
    );
    assert_eq!(j["reinstall_title"], built.reinstall_title.as_str());
}

#[test]
fn image_with_joliet_reads_back_in_foreign_tools() {
    check_with_foreign_tools(Variant::Joliet);
}

#[test]
fn image_without_joliet_reads_back_in_foreign_tools() {
    check_with_foreign_tools(Variant::NoJoliet);
}

/// A payload over ~500 MB (K3s's airgap images) makes fatfs pick FAT32, whose root
/// and FSInfo differ: fsck.vfat and mtools must find that volume clean too.
#[test]
fn cidata_fat32_volume_is_clean() {
    use chocoimg::image::cidata::{self, Entry, Source};
    for t in ["fsck.vfat", "mcopy", "blkid"] {
        require_tool(t);
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cidata.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let size = 600u64 << 20;
    f.set_len(size).unwrap(); // sparse: only what fatfs writes takes space
    let entries = vec![
        Entry {
            name: "user-data".into(),
            source: Source::Bytes(USER_DATA.as_bytes().to_vec()),
        },
        Entry {
            name: "k3s/k3s".into(),
            source: Source::Bytes(vec![7u8; 100_000]),
        },
        Entry {
            name: "k3s/SHA256SUMS".into(),
            source: Source::Bytes(b"abc  k3s\n".to_vec()),
        },
    ];
    cidata::write(&f, 0, size, &entries, &mut |_| Ok(())).unwrap();
    let info = run(Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&path));
    assert!(info.contains("VERSION=FAT32"), "{info}");
    assert!(info.contains("LABEL=CIDATA"), "{info}");
    run(Command::new("fsck.vfat").arg("-n").arg(&path));
    let ud = run(Command::new("mcopy")
        .arg("-i")
        .arg(&path)
        .args(["::user-data", "-"]));
    assert_eq!(ud, USER_DATA);
    let sums = run(Command::new("mcopy")
        .arg("-i")
        .arg(&path)
        .args(["::k3s/SHA256SUMS", "-"]));
    assert_eq!(sums, "abc  k3s\n");
}

/// Leaves nothing but `keep` in `dir`.
fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    names.sort();
    assert!(names.is_empty(), "left behind: {names:?}");
}

const PAYLOAD_FILES: &[&str] = &["k3s_k3s", "k3s_install.sh"];

/// A library build from `iso` into `dir` that must be refused with an error
/// `is_expected` accepts, leaving nothing in `dir` but the payload and `also`; returns
/// the message.
fn refused(
    iso: &Path,
    dir: &Path,
    cancelled: bool,
    is_expected: fn(&ImageError) -> bool,
    also: &[&str],
) -> String {
    let err = build_with(iso, dir, cancelled).unwrap_err();
    let msg = format!("{err:#}");
    assert!(is_expected(image_error(&err)), "{msg}");
    let keep: Vec<&str> = PAYLOAD_FILES.iter().chain(also).copied().collect();
    assert_only(dir, &keep);
    msg
}

#[test]
fn image_refuses_a_non_ubuntu_iso() {
    let iso = replica::replica(Variant::NotUbuntu);
    let tmp = tempfile::tempdir().unwrap();
    let msg = refused(
        &iso,
        tmp.path(),
        false,
        |e| matches!(e, ImageError::NotUbuntu2204 { .. }),
        &[],
    );
    assert!(
        msg.contains("Debian GNU/Linux 12"),
        "says what it found: {msg}"
    );
    assert!(msg.contains("22.04"), "{msg}");
}

#[test]
fn image_refuses_a_grub_cfg_without_room() {
    let iso = replica::replica(Variant::FullGrub);
    let tmp = tempfile::tempdir().unwrap();
    refused(
        &iso,
        tmp.path(),
        false,
        |e| matches!(e, ImageError::GrubNoRoom { room: 2048, .. }),
        &[],
    );
}

/// Ubuntu's signed UEFI GRUB sources /boot/grub/x86_64-efi/grub.cfg when there is one;
/// an ISO whose file there does not go on to /boot/grub/grub.cfg would boot UEFI
/// machines into the untouched menu, so it is refused. Ubuntu's own (insmod lines, then
/// `source /boot/grub/grub.cfg`) passes that check and fails later, for want of a GPT.
#[test]
fn image_refuses_an_efi_menu_that_skips_grub_cfg() {
    require_tool("xorriso");
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join(".disk")).unwrap();
    std::fs::create_dir_all(tree.join("boot/grub/x86_64-efi")).unwrap();
    std::fs::write(
        tree.join(".disk/info"),
        "Ubuntu-Server 22.04.5 LTS \"Jammy Jellyfish\" - Release amd64 (20240911)",
    )
    .unwrap();
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        "menuentry \"Try or Install Ubuntu Server\" {\n\tlinux\t/casper/vmlinuz  ---\n\tinitrd\t/casper/initrd\n}\n",
    )
    .unwrap();
    let make_iso = |efi_cfg: &str, name: &str| {
        std::fs::write(tree.join("boot/grub/x86_64-efi/grub.cfg"), efi_cfg).unwrap();
        let iso = tmp.path().join(name);
        run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-r", "-J", "-o"])
            .arg(&iso)
            .arg(&tree));
        iso
    };
    let own = make_iso(
        "menuentry \"Something else\" {\n\tlinux /casper/vmlinuz\n\tinitrd /casper/initrd\n}\n",
        "own-menu.iso",
    );
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let msg = refused(
        &own,
        &out,
        false,
        |e| matches!(e, ImageError::EfiMenuElsewhere { .. }),
        &[],
    );
    assert!(msg.contains("x86_64-efi/grub.cfg"), "{msg}");

    let ubuntu = make_iso(
        "insmod part_acorn\ninsmod part_gpt\ninsmod part_msdos\nsource /boot/grub/grub.cfg\n",
        "ubuntu-like.iso",
    );
    let msg = refused(
        &ubuntu,
        &out,
        false,
        |e| matches!(e, ImageError::Layout { .. }),
        &[],
    );
    assert!(msg.contains("MBR"), "{msg}");
}

/// `inspect` on something that is not an image refuses with exit 2 and says what to
/// pass: a missing path, and a plain Ubuntu ISO (no CIDATA).
#[test]
fn image_inspect_refuses_what_is_not_an_image() {
    let iso = replica::replica(Variant::Joliet);
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nodo1.img");
    for (path, expect) in [
        (
            &missing,
            "no such file; pass an image made by `chocoimg build`",
        ),
        (
            &iso,
            "is not a chocoimg image: no GPT partition named CIDATA",
        ),
    ] {
        let out = chocoimg().arg("inspect").arg(path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn image_is_not_overwritten_without_force() {
    let iso = replica::replica(Variant::Joliet);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("master1.img"), b"older image").unwrap();
    refused(
        &iso,
        tmp.path(),
        false,
        |e| matches!(e, ImageError::OutputExists(_)),
        &["master1.img"],
    );
    assert_eq!(
        std::fs::read(tmp.path().join("master1.img")).unwrap(),
        b"older image"
    );
}

#[test]
fn image_build_interrupted_leaves_nothing() {
    let iso = replica::replica(Variant::Joliet);
    let tmp = tempfile::tempdir().unwrap();
    refused(
        &iso,
        tmp.path(),
        true,
        |e| matches!(e, ImageError::Interrupted),
        &[],
    );
}

/// A disk that fills up while the ISO is written (the error comes from the pass's writer
/// thread): the build says so, rather than that a thread stopped, and leaves nothing
/// behind but the payload. An 8 MiB tmpfs, the replica ISO about 24 MiB.
#[test]
fn image_build_on_a_full_disk_says_so_and_leaves_nothing() {
    let iso = replica::replica(Variant::Joliet);
    let fs = crate::support::loopdev::LoopFs::new("tmpfs", 8);
    let dir = fs.mnt.join("out");
    std::fs::create_dir(&dir).unwrap();
    let err = build(&iso, &dir).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("writing the image (is the disk full?)"),
        "{msg}"
    );
    assert_only(&dir, PAYLOAD_FILES);
}

/// Removes CRs and ANSI escape sequences (OVMF and GRUB write both).
fn clean_log(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// How a test boots the stick: beside which second disk, and what it does at the
/// keyboard.
struct Boot<'a> {
    uefi: bool,
    /// The machine's internal disk (attached copy-on-write: never changed).
    disk: &'a Path,
    /// Keys typed once this text is on the screen.
    keys: Option<(&'a str, &'a [u8])>,
    /// Switch the machine off once this text is on the screen (else it must power off
    /// by itself, as the replica's initramfs does).
    stop_at: Option<&'a str>,
}

/// GRUB's menu keys over the serial terminal (VT100): down, then Enter.
const DOWN_ENTER: &[u8] = b"\x1b[B\r";

/// Boots `img` as a USB stick (TCG: no KVM here) and returns the cleaned screen text.
/// The screen is the serial port: OVMF mirrors its console there, and SeaBIOS does with
/// `etc/sercon-port` (so GRUB's menu and messages show under BIOS too); both read keys
/// from it. QEMU connects to a socket the test listens on.
fn boot(img: &Path, b: &Boot, dir: &Path) -> String {
    let mut attempt = boot_once(img, b, dir, 1);
    // GRUB started a kernel (our entry: the part under test) and the replica's kernel
    // then showed nothing, not even its /init's first line: seen about once in five
    // full runs under TCG, with the guest idle (a hang inside the stand-in kernel, whose
    // own messages go to no console). Boot once more and say so; a second hang fails.
    if attempt.hung {
        eprintln!(
            "the replica's kernel hung after GRUB started it (no output for {SILENCE:?}); \
             booting once more. First screen:\n{}",
            attempt.text
        );
        attempt = boot_once(img, b, dir, 2);
    }
    let Attempt {
        text,
        powered_off,
        stopped,
        typed,
        elapsed,
        qemu_said,
        ..
    } = attempt;
    match b.stop_at {
        Some(at) => assert!(
            stopped,
            "the screen never showed {at:?} ({elapsed:?}); it shows:\n{text}"
        ),
        None => assert!(
            powered_off,
            "qemu did not power off by itself (after {elapsed:?}): {qemu_said}; screen:\n{text}"
        ),
    }
    if let Some((when, _)) = b.keys {
        assert!(typed, "the screen never showed {when:?}:\n{text}");
    }
    text
}

/// How long a started kernel may show nothing before its boot counts as hung: far more
/// than the replica's kernel and /init take on two loaded cores (under a minute).
const SILENCE: std::time::Duration = std::time::Duration::from_secs(420);

/// One boot's outcome, before `boot` judges it.
struct Attempt {
    text: String,
    powered_off: bool,
    stopped: bool,
    typed: bool,
    /// A kernel was started and then nothing came for `SILENCE`.
    hung: bool,
    elapsed: std::time::Duration,
    qemu_said: String,
}

fn boot_once(img: &Path, b: &Boot, dir: &Path, n: u32) -> Attempt {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let name = format!("{}-{n}", if b.uefi { "uefi" } else { "bios" });
    let sock = dir.join(format!("{name}.serial"));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut cmd = qemu::machine(None);
    cmd.arg("-chardev")
        .arg(format!("socket,id=screen,path={}", sock.display()))
        .args(["-serial", "chardev:screen"]);
    qemu::usb_stick(&mut cmd, img, "bootindex=1");
    cmd.arg("-drive")
        .arg(format!("{},snapshot=on", qemu::raw_drive("disk", b.disk)))
        // In the boot order after the stick, as an installed machine's disk is: OVMF
        // connects only the devices QEMU's boot order names, so GRUB would not see it
        // otherwise (a firmware's "fast boot" can do the same: then the installer's
        // early-command is the guard that holds).
        .args(["-device", "ide-hd,drive=disk,bus=ide.0,bootindex=2"]);
    if b.uefi {
        let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
        let vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
        assert!(
            code.is_file() && vars.is_file(),
            "OVMF is not installed; run scripts/install-test-deps.sh"
        );
        let my_vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(vars, &my_vars).unwrap();
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                my_vars.display()
            ));
    } else {
        // SeaBIOS reads the port as a little-endian integer: COM1, 0x3f8.
        let port = dir.join("sercon-port");
        std::fs::write(&port, 0x3f8u16.to_le_bytes()).unwrap();
        cmd.arg("-fw_cfg")
            .arg(format!("name=etc/sercon-port,file={}", port.display()));
    }
    let stderr = dir.join(format!("{name}.qemu-stderr"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("running qemu");
    // A bound on a hung machine, not a timing check (a boot takes 15-60 s alone, minutes
    // when several share the two cores).
    let started = std::time::Instant::now();
    let give_up = started + std::time::Duration::from_secs(1200);
    let qemu_said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let mut screen = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!(
                        "qemu ended ({st}) before opening its serial port: {}",
                        qemu_said()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("accepting qemu's serial port: {e}"),
        }
    };
    screen.set_nonblocking(false).unwrap();
    screen
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
    let (mut typed, mut stopped, mut hung) = (false, false, false);
    let mut last_output = std::time::Instant::now();
    loop {
        match screen.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                last_output = std::time::Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        let text = clean_log(&raw);
        if let Some((when, keys)) = b.keys {
            if !typed && text.contains(when) {
                screen.write_all(keys).unwrap();
                typed = true;
            }
        }
        if b.stop_at.is_some_and(|at| text.contains(at)) {
            stopped = true;
            break;
        }
        if std::time::Instant::now() > give_up {
            break;
        }
        if last_output.elapsed() > SILENCE
            && text.contains("Booting `")
            && booted_cmdline(&text).is_none()
        {
            hung = true;
            break;
        }
    }
    // A machine that powers off closes the port just before QEMU exits: wait for it.
    while !stopped && !hung && std::time::Instant::now() < give_up {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let text = clean_log(&raw);
    std::fs::write(dir.join(format!("{name}.log")), &text).unwrap();
    Attempt {
        text,
        powered_off: status.success(),
        stopped,
        typed,
        hung,
        elapsed: started.elapsed(),
        qemu_said: format!("{status}, {}", qemu_said()),
    }
}

/// The kernel command line the replica's initramfs printed, if a kernel started.
fn booted_cmdline(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        l.split_once(replica::CMDLINE_MARK)
            .map(|(_, c)| c.trim().to_string())
    })
}

/// The user-data the replica's initramfs read off CIDATA.
fn user_data_read(log: &str) -> &str {
    let begin = log
        .find(replica::USER_DATA_BEGIN)
        .unwrap_or_else(|| panic!("no user-data read off CIDATA:\n{log}"));
    let rest = &log[begin + replica::USER_DATA_BEGIN.len()..];
    let end = rest.find(replica::USER_DATA_END).expect("end marker");
    rest[..end].trim()
}

/// A freshly unboxed machine (a blank internal disk): the stick installs unattended.
fn check_boot(uefi: bool) {
    // The image `chocoimg build` makes, carrying the seed `chocoimg render` makes.
    let (ws, img) = cli_built_image(Variant::Joliet);
    let user_data = ws.rendered_user_data("master1");
    let disk = ws.path().join("blank.img");
    installed::write_disk(&disk, &Holds::Blank);
    let boot_setup = Boot {
        uefi,
        disk: &disk,
        keys: None,
        stop_at: None,
    };
    let log = boot(&img, &boot_setup, ws.path());
    let cmdline = booted_cmdline(&log)
        .unwrap_or_else(|| panic!("the initramfs never printed its command line:\n{log}"));
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    assert!(words.contains(&"autoinstall"), "{cmdline}\n{log}");
    assert!(
        !words.contains(&chocoimg::guard::REINSTALL_ARG),
        "{cmdline}"
    );
    assert!(!cmdline.contains("console=ttyS0"), "{cmdline}");
    assert_eq!(user_data_read(&log), user_data.trim(), "{log}");
    assert!(log.contains(replica::DONE_MARK));
}

/// A machine that holds an installed node: the stick's default stops with a message
/// naming it, no kernel starts; the reinstall entry, chosen at the keyboard, installs.
fn check_guard(uefi: bool) {
    let (ws, img) = cli_built_image(Variant::Joliet);
    let user_data = ws.rendered_user_data("master1");
    // UEFI: nodo1 of this cluster; BIOS: a node of another chocoimg cluster.
    let late = if uefi {
        installed::late_commands(&ws.rendered_user_data("nodo1"))
    } else {
        chocoimg::guard::late_commands("homelab", "worker7", "agent")
    };
    let (node, cluster) = if uefi {
        ("nodo1", CLUSTER)
    } else {
        ("worker7", "homelab")
    };
    let disk = ws.path().join("installed.img");
    installed::write_disk(
        &disk,
        &Holds::Node {
            late_commands: &late,
            uefi,
        },
    );
    // The message's last line: the whole message is on the screen by then.
    let reinstall = chocoimg::guard::reinstall_title("master1");
    let last_line = format!("'{reinstall}'.");
    let log = boot(
        &img,
        &Boot {
            uefi,
            disk: &disk,
            keys: None,
            stop_at: Some(&last_line),
        },
        ws.path(),
    );
    assert_eq!(booted_cmdline(&log), None, "a kernel started:\n{log}");
    let message = format!("chocoimg: this machine holds node {node} of cluster {cluster}");
    assert!(log.contains(&message), "{log}");
    assert!(log.contains("Nothing was erased"), "{log}");

    // At the keyboard: the second entry, "Reinstall master1 - ERASES the disk".
    let log = boot(
        &img,
        &Boot {
            uefi,
            disk: &disk,
            keys: Some((&reinstall, DOWN_ENTER)),
            stop_at: None,
        },
        ws.path(),
    );
    assert!(
        log.contains(&format!(
            "Stop: this machine holds node {node} of cluster {cluster}"
        )),
        "{log}"
    );
    let cmdline = booted_cmdline(&log)
        .unwrap_or_else(|| panic!("the reinstall entry started no kernel:\n{log}"));
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    assert!(words.contains(&"autoinstall"), "{cmdline}");
    assert!(words.contains(&chocoimg::guard::REINSTALL_ARG), "{cmdline}");
    assert_eq!(user_data_read(&log), user_data.trim(), "{log}");
}

#[test]
fn image_stops_under_uefi_on_a_machine_that_holds_a_node_and_reinstalls_when_chosen() {
    check_guard(true);
}

#[test]
fn image_stops_under_bios_on_a_machine_that_holds_a_node_and_reinstalls_when_chosen() {
    check_guard(false);
}

/// `chocoimg build --node master1` on a replica, with K3s from a loopback mirror.
fn cli_built_image(variant: Variant) -> (crate::support::workspace::Workspace, PathBuf) {
    let iso = replica::replica(variant);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    ws.ok(&["build", "--node", "master1", "--iso", iso.to_str().unwrap()]);
    let img = ws.out().join(CLUSTER).join("master1.img");
    (ws, img)
}

#[test]
fn image_boots_under_uefi_and_reads_cidata() {
    check_boot(true);
}

#[test]
fn image_boots_under_bios_and_reads_cidata() {
    check_boot(false);
}

// ---- The whole `chocoimg build` command ----

const K3S_VERSION: &str = "v1.28.15+k3s1";
const CLUSTER: &str = "chocolandiadc-mvp";

/// A K3s release mirror on 127.0.0.1 (stand-in for GitHub: no real K3s can be had here)
/// with made-up bytes for the binary and the install script.
struct Mirror {
    srv: crate::support::http::TestServer,
    k3s: Vec<u8>,
    script: Vec<u8>,
    airgap: Vec<u8>,
}

fn mirror() -> Mirror {
    use crate::support::http::{k3s_release, TestServer};
    let k3s: Vec<u8> = (0..512_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let airgap: Vec<u8> = (0..700_000u32).map(|i| (i * 17 % 241) as u8).collect();
    let script = b"#!/bin/sh\necho 'stand-in for the K3s install script'\n".to_vec();
    let mut files = k3s_release(
        K3S_VERSION,
        &[
            ("k3s", &k3s[..]),
            ("k3s-airgap-images-amd64.tar.zst", &airgap[..]),
        ],
    );
    files.push((format!("/install/{K3S_VERSION}/install.sh"), script.clone()));
    Mirror {
        srv: TestServer::start(files),
        k3s,
        script,
        airgap,
    }
}

/// The shipped default profile with K3s fetched from `k3s_base` and, when given, the
/// ISO pin replaced. The ISO URL is never fetched (`--iso`); it points at a closed
/// loopback port anyway, so nothing here can reach the internet.
fn profile_text(k3s_base: &str, iso_sha256: Option<&str>) -> String {
    let text =
        std::fs::read_to_string(crate::support::repo().join("profiles/chocolandiadc-mvp.yaml"))
            .unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("iso_url:") {
            out.push_str("  iso_url: http://127.0.0.1:9/ubuntu-22.04.5-live-server-amd64.iso\n");
        } else if t.starts_with("iso_sha256:") && iso_sha256.is_some() {
            out.push_str(&format!("  iso_sha256: {}\n", iso_sha256.unwrap()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
        if t.starts_with("version: v") {
            out.push_str(&format!("  release_base_url: {k3s_base}/k3s\n"));
            out.push_str(&format!(
                "  install_script_url: \"{k3s_base}/install/{{version}}/install.sh\"\n"
            ));
        }
    }
    out
}

fn sha_of(path: &Path) -> String {
    chocoimg::fsutil::sha256_file(path).unwrap()
}

/// Image outputs under the workspace's out/ (none after a refusal).
fn image_outputs(ws: &crate::support::workspace::Workspace) -> Vec<PathBuf> {
    ws.files_in_out()
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.contains(".img") || n.ends_with(".part") || n.ends_with(".manifest.json")
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn image_cli_build_end_to_end_on_the_replica() {
    for t in ["mcopy", "sha256sum"] {
        require_tool(t);
    }
    let iso = replica::replica(Variant::Joliet);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    let iso_arg = iso.to_str().unwrap();
    let out = ws.ok(&["build", "--node", "master1", "--iso", iso_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let dir = ws.out().join(CLUSTER);
    let img = dir.join("master1.img");
    assert!(img.is_file(), "{stdout}");
    assert!(!dir.join("nodo1.img").exists(), "only the selected node");
    for word in [
        "chocoimg flash --node master1",
        "dd if=",
        "Rufus",
        "Etcher",
        "secrets",
        "master1.img.sha256",
    ] {
        assert!(stdout.contains(word), "{word:?} missing from:\n{stdout}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the image holds secrets");
    run(Command::new("sha256sum")
        .current_dir(&dir)
        .args(["-c", "master1.img.sha256"]));
    let img_sha = sha_of(&img);
    assert!(stdout.contains(&img_sha));

    // The manifest records every input.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("master1.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image"]["sha256"], img_sha.as_str());
    assert_eq!(manifest["iso"]["sha256"], sha_of(&iso).as_str());
    assert_eq!(manifest["profile"]["sha256"], sha_of(&ws.profile).as_str());
    assert_eq!(manifest["k3s_version"], K3S_VERSION);
    assert_eq!(manifest["chocoimg_version"], env!("CARGO_PKG_VERSION"));
    assert!(manifest["built_at"].as_str().unwrap().ends_with('Z'));
    let payload = manifest["payload"].as_array().unwrap();
    let k3s_sha = chocoimg::fsutil::sha256_hex(&m.k3s);
    let script_sha = chocoimg::fsutil::sha256_hex(&m.script);
    assert!(payload
        .iter()
        .any(|p| p["name"] == "k3s/k3s" && p["sha256"] == k3s_sha.as_str()));
    assert!(payload
        .iter()
        .any(|p| p["name"] == "k3s/install.sh" && p["sha256"] == script_sha.as_str()));
    let seed_names: Vec<&str> = manifest["seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(seed_names.contains(&"user-data") && seed_names.contains(&"meta-data"));

    // CIDATA holds the node's seed (same bytes `render` writes) and a K3s folder that
    // passes `sha256sum -c`, as the installer's late-commands run it.
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("cidata.img");
    let mut f = std::fs::File::open(&img).unwrap();
    let p = image::gpt::find_partition(&mut f, "CIDATA")
        .unwrap()
        .unwrap();
    drop(f);
    let (start, _) = partition_bytes(&img, p.number, &part);
    assert_eq!(start % (1 << 20), 0);
    let rendered = tmp.path().join("rendered");
    ws.ok(&[
        "render",
        "--node",
        "master1",
        "--out",
        rendered.to_str().unwrap(),
    ]);
    for name in ["user-data", "meta-data"] {
        let on_stick = tmp.path().join(format!("stick-{name}"));
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&part)
            .arg(format!("::{name}"))
            .arg(&on_stick));
        assert_eq!(
            std::fs::read(&on_stick).unwrap(),
            std::fs::read(rendered.join("master1").join(name)).unwrap(),
            "{name} on CIDATA differs from `chocoimg render`"
        );
    }
    let k3s_dir = tmp.path().join("k3s");
    run(Command::new("mcopy")
        .arg("-s")
        .arg("-i")
        .arg(&part)
        .arg("::k3s")
        .arg(tmp.path()));
    assert_eq!(std::fs::read(k3s_dir.join("k3s")).unwrap(), m.k3s);
    run(Command::new("sha256sum")
        .current_dir(&k3s_dir)
        .args(["-c", "SHA256SUMS"]));

    // inspect, text and JSON.
    let inspected = ws.ok(&["inspect", img.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspected.stdout).into_owned();
    assert!(
        text.contains("reinstall: \"Reinstall master1 - ERASES the disk\""),
        "{text}"
    );

    // No secret reaches the terminal, from build or inspect.
    let secrets = chocoimg::secrets::load(&dir.join("secrets.yaml")).unwrap();
    let printed = [&out, &inspected]
        .iter()
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
        .collect::<String>();
    for secret in [
        &secrets.server_token,
        &secrets.agent_token,
        &secrets.admin_password,
        &secrets.admin_password_hash,
    ] {
        assert!(!printed.contains(secret.as_str()), "a secret was printed");
    }
    for word in [
        CLUSTER,
        "master1",
        "server",
        K3S_VERSION,
        "ERASES",
        "autoinstall",
    ] {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }

    // A second build refuses to overwrite; --force replaces.
    let again = ws.run(&["build", "--node", "master1", "--iso", iso_arg]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(sha_of(&img), img_sha, "untouched");
    ws.ok(&["build", "--node", "master1", "--iso", iso_arg, "--force"]);
    run(Command::new("sha256sum")
        .current_dir(&dir)
        .args(["-c", "master1.img.sha256"]));
}

#[test]
fn image_cli_refuses_an_iso_with_another_hash() {
    // The default profile's pin is the real 22.04.5 ISO; the replica is not it.
    let iso = replica::replica(Variant::Joliet);
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        "http://127.0.0.1:9",
        None,
    ));
    let out = ws.run(&["build", "--node", "master1", "--iso", iso.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SHA-256") && err.contains(chocoimg::profile::DEFAULT_ISO_SHA256),
        "{err}"
    );
    // Refused before anything is written: no image, and no secrets or keys either.
    assert!(ws.files_in_out().is_empty(), "{:?}", ws.files_in_out());
}

fn cli_refusal(variant: Variant, expect: &[&str]) {
    let iso = replica::replica(variant);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    let out = ws.run(&["build", "--all", "--iso", iso.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for word in expect {
        assert!(err.contains(word), "{word:?} missing from:\n{err}");
    }
    assert!(image_outputs(&ws).is_empty(), "{:?}", image_outputs(&ws));
    // A refused ISO is not recorded: pinning the right one next must not meet a lock.
    let lock = ws.profile.with_extension("lock");
    assert!(!lock.exists(), "{} was written", lock.display());
    // Nor does it create the cluster's secrets (only the verified downloads are kept).
    let cluster_dir = ws.out().join(CLUSTER);
    assert!(!cluster_dir.exists(), "{:?}", ws.files_in_out());
}

#[test]
fn image_cli_refuses_a_non_ubuntu_iso() {
    cli_refusal(
        Variant::NotUbuntu,
        &["not an Ubuntu 22.04 live-server ISO", "Debian GNU/Linux 12"],
    );
}

#[test]
fn image_cli_refuses_a_grub_cfg_without_room() {
    cli_refusal(
        Variant::FullGrub,
        &["grub.cfg", "2048", "cannot be patched"],
    );
}

#[test]
fn image_cli_build_all_with_airgap() {
    require_tool("mcopy");
    require_tool("sha256sum");
    let iso = replica::replica(Variant::NoJoliet);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    // No key in ~/.ssh: the build makes the cluster's own pair first.
    std::fs::remove_file(ws.home().join(".ssh/id_ed25519.pub")).unwrap();
    ws.ok(&["build", "--all", "--airgap", "--iso", iso.to_str().unwrap()]);
    let cluster_key = std::fs::read_to_string(ws.out().join(CLUSTER).join("ssh/id_ed25519.pub"))
        .expect("build created the cluster's SSH key");
    let dir = ws.out().join(CLUSTER);
    for (node, role) in [("master1", "server"), ("nodo1", "agent")] {
        let img = dir.join(format!("{node}.img"));
        let out = ws.ok(&["inspect", "--json", img.to_str().unwrap()]);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["node"], node);
        assert_eq!(j["role"], role);
        assert!(j["boot_title"].as_str().unwrap().contains(node));
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("cidata.img");
        let mut f = std::fs::File::open(&img).unwrap();
        let p = image::gpt::find_partition(&mut f, "CIDATA")
            .unwrap()
            .unwrap();
        partition_bytes(&img, p.number, &part);
        run(Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(&part)
            .arg("::k3s")
            .arg(tmp.path()));
        let k3s_dir = tmp.path().join("k3s");
        assert_eq!(
            std::fs::read(k3s_dir.join("k3s-airgap-images-amd64.tar.zst")).unwrap(),
            m.airgap
        );
        let sums = run(Command::new("sha256sum")
            .current_dir(&k3s_dir)
            .args(["-c", "SHA256SUMS"]));
        assert!(
            sums.contains("k3s-airgap-images-amd64.tar.zst: OK"),
            "{sums}"
        );
        // --airgap reaches the seed too: the installer copies the tarball where K3s
        // looks for images, and the nodes trust the cluster's generated key.
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&part)
            .arg("::user-data")
            .arg(tmp.path().join("user-data")));
        let user_data = std::fs::read_to_string(tmp.path().join("user-data")).unwrap();
        assert!(
            user_data.contains(
                "/target/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"
            ),
            "{node}: the seed does not install the airgap images"
        );
        assert!(user_data.contains(cluster_key.trim()));
        assert!(dir.join(format!("{node}.manifest.json")).is_file());
    }
}

#[test]
fn image_replica_support_tells_static_from_dynamic_binaries() {
    assert!(replica::has_interpreter(&std::fs::read("/bin/ls").unwrap()));
    assert!(!replica::has_interpreter(
        &std::fs::read("/bin/busybox").expect("busybox-static: run scripts/install-test-deps.sh")
    ));
}

/// Ctrl-C during the image phase: the command stops, says so, and leaves no image and
/// no temporary file. The replica is padded (256 MiB) so the build lasts long enough
/// to be interrupted once it has announced itself.
#[test]
fn image_cli_ctrl_c_leaves_nothing() {
    use std::io::BufRead;
    require_tool("kill");
    let iso = replica::replica_padded(Variant::Joliet, 256);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    let mut child = ws
        .cmd(&["build", "--node", "master1", "--iso", iso.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("the build ended before it started writing:\n{seen}");
        }
        seen.push_str(&line);
        if line.starts_with("building master1.img") {
            break;
        }
    }
    run(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .current_dir(ws.path()));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(image_outputs(&ws).is_empty(), "{:?}", image_outputs(&ws));
}

/// The ISO 9660 layer alone: a file patched in place reads back in xorriso from the
/// image's own tree; content longer than the blocks the file owns is a typed error
/// and changes nothing.
#[test]
fn image_iso9660_patch_in_place() {
    use chocoimg::image::iso9660::{Iso, IsoError};
    require_tool("xorriso");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy.iso");
    std::fs::copy(replica::replica(Variant::Joliet), &copy).unwrap();
    let mut f = open_rw(&copy);
    let mut iso = Iso::open(&mut f).unwrap();
    assert_eq!(iso.sets.len(), 2, "the image's own set and partition 1's");
    let info = iso.read_file("/.disk/info", 4096).unwrap();
    assert!(info.starts_with(b"Ubuntu-Server 22.04.5"));
    assert_eq!(iso.records("/md5sum.txt").unwrap().len(), 4);
    let before = chocoimg::fsutil::sha256_file(&copy).unwrap();
    let mut iso = Iso::open(&mut f).unwrap();
    match iso.patch_file("/boot/grub/grub.cfg", &[b'#'; 2049]) {
        Err(IsoError::NoRoom { needed, room, .. }) => assert_eq!((needed, room), (2049, 2048)),
        other => panic!("expected NoRoom, got {other:?}"),
    }
    assert!(matches!(
        iso.read_file("/no/such/file", 10),
        Err(IsoError::NotFound { .. })
    ));
    drop(f);
    assert_eq!(chocoimg::fsutil::sha256_file(&copy).unwrap(), before);
    let mut f = open_rw(&copy);
    let updated = Iso::open(&mut f)
        .unwrap()
        .patch_file("/boot/grub/grub.cfg", b"set timeout=1\n")
        .unwrap();
    assert_eq!(updated, 4);
    drop(f);
    for (load, path) in [
        (&[][..], "/boot/grub/grub.cfg"),
        (&["-read_fs", "norock"][..], "/boot/grub/grub.cfg"),
        (&["-read_fs", "ecma119"][..], "/BOOT/GRUB/GRUB.CFG"),
    ] {
        let got = xorriso_extract(&copy, load, path, &tmp.path().join("got.cfg"));
        assert_eq!(got, b"set timeout=1\n", "{load:?}");
    }
}

/// A file in some trees but not in others (here hidden from Joliet) is refused, not
/// patched in the trees that have it: a record this reader missed would keep the old
/// size, and whoever reads that tree would get the new menu cut short.
#[test]
fn image_iso9660_refuses_a_file_missing_from_a_tree() {
    use chocoimg::image::iso9660::{Iso, IsoError};
    require_tool("xorriso");
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
    std::fs::write(tree.join("boot/grub/grub.cfg"), "set timeout=30\n").unwrap();
    let iso = tmp.path().join("hidden.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-r", "-J", "-hide-joliet"])
        .arg(tree.join("boot/grub/grub.cfg"))
        .arg("-o")
        .arg(&iso)
        .arg(&tree));
    let before = chocoimg::fsutil::sha256_file(&iso).unwrap();
    let mut f = open_rw(&iso);
    let mut iso_fs = Iso::open(&mut f).unwrap();
    match iso_fs.patch_file("/boot/grub/grub.cfg", b"set timeout=1\n") {
        Err(IsoError::Inconsistent { detail, .. }) => {
            assert!(detail.contains("Joliet"), "{detail}")
        }
        other => panic!("expected Inconsistent, got {other:?}"),
    }
    drop(f);
    assert_eq!(chocoimg::fsutil::sha256_file(&iso).unwrap(), before);
}

/// A Rock Ridge name too long for its directory record continues in a CE area; the
/// reader follows it (xorriso puts a 204-character name there).
#[test]
fn image_iso9660_reads_rock_ridge_names_in_continuation_areas() {
    use chocoimg::image::iso9660::Iso;
    require_tool("xorriso");
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let name = format!("{}.cfg", "n".repeat(200));
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d").join(&name), "hello\n").unwrap();
    let iso = tmp.path().join("long.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-r", "-o"])
        .arg(&iso)
        .arg(&tree));
    let mut f = std::fs::File::open(&iso).unwrap();
    let got = Iso::open(&mut f)
        .unwrap()
        .read_file(&format!("/d/{name}"), 100)
        .unwrap();
    assert_eq!(got, b"hello\n");
}

/// The appended partition on GPTs unlike the ISO's (248 entries): sgdisk's 128 and a
/// 12-entry table (3 sectors), each with its backup at the end of a 4 MiB disk. The
/// result must satisfy `sgdisk -v`, keep partition 1, and end with the new backup GPT.
#[test]
fn image_gpt_append_to_tables_of_other_sizes() {
    use chocoimg::image::gpt::{self, Gpt};
    use std::io::{Seek, SeekFrom, Write};
    require_tool("sgdisk");
    for entries in ["128", "9"] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        run(Command::new("sgdisk")
            .args(["-o", "-S", entries, "-n", "1:2048:+1M", "-c", "1:ISO"])
            .arg(&disk));
        let mut f = open_rw(&disk);
        let a =
            gpt::plan_append(&mut f, 4 << 20, 1 << 20, "CIDATA", gpt::guid_from(b"test")).unwrap();
        assert_eq!((a.number, a.start), (2, 4 << 20), "{entries} entries");
        for p in &a.head {
            f.seek(SeekFrom::Start(p.at)).unwrap();
            f.write_all(&p.bytes).unwrap();
        }
        f.set_len(a.image_len).unwrap();
        for p in &a.tail {
            f.seek(SeekFrom::Start(p.at)).unwrap();
            f.write_all(&p.bytes).unwrap();
        }
        drop(f);
        let v = run(Command::new("sgdisk").arg("-v").arg(&disk));
        assert!(v.contains("No problems found"), "{entries} entries: {v}");
        let parts = Gpt::read(&mut std::fs::File::open(&disk).unwrap())
            .unwrap()
            .partitions();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ISO", "CIDATA"], "{entries} entries");
        assert_eq!(parts[1].first_lba * 512, 4 << 20);
        assert_eq!((parts[1].last_lba + 1) * 512, 5 << 20);
        // The backup entries follow CIDATA at once: it ends at the last usable sector.
        let p = run(Command::new("sgdisk").arg("-p").arg(&disk));
        let want = format!("last usable sector is {}\n", parts[1].last_lba);
        assert!(p.contains(&want), "{entries} entries: {p}");
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(&bytes[bytes.len() - 512..][..8], b"EFI PART");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), a.image_len);
    }
}

#[test]
fn image_cli_lock_refuses_a_changed_artifact_until_update_lock() {
    let iso = replica::replica(Variant::NoJoliet);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    let iso_arg = iso.to_str().unwrap();
    ws.ok(&["build", "--node", "nodo1", "--iso", iso_arg]);
    let lock = ws.profile.with_extension("lock");
    let first_lock = std::fs::read_to_string(&lock).expect("the first build writes the lock");

    // Upstream swaps the install script behind the same URL; a fresh cache must fetch it.
    m.srv.put(
        &format!("/install/{K3S_VERSION}/install.sh"),
        b"#!/bin/sh\necho changed\n".to_vec(),
    );
    std::fs::remove_dir_all(ws.out().join("cache")).unwrap();
    let out = ws.run(&["build", "--node", "nodo1", "--force", "--iso", iso_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("lock"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        first_lock,
        "a refusal changes nothing"
    );

    ws.ok(&[
        "build",
        "--node",
        "nodo1",
        "--force",
        "--update-lock",
        "--iso",
        iso_arg,
    ]);
    let new_lock = std::fs::read_to_string(&lock).unwrap();
    assert_ne!(new_lock, first_lock);
    assert!(new_lock.contains(&chocoimg::fsutil::sha256_hex(b"#!/bin/sh\necho changed\n")));
}

/// The checks by tools nobody here wrote, on the image `chocoimg build` itself wrote.
#[test]
fn image_cli_build_output_agrees_with_foreign_tools() {
    for t in ["xorriso", "sgdisk", "fsck.vfat", "blkid", "mcopy"] {
        require_tool(t);
    }
    let (ws, img) = cli_built_image(Variant::Joliet);
    let tmp = tempfile::tempdir().unwrap();
    let menus = grub_menus_from_every_tree(&img, true, tmp.path());
    let menu = String::from_utf8(menus[0].clone()).unwrap();
    assert!(
        menu.contains("autoinstall") && menu.contains("ERASES"),
        "{menu}"
    );
    let v = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(v.contains("No problems found"), "{v}");
    let mut f = std::fs::File::open(&img).unwrap();
    let p = image::gpt::find_partition(&mut f, "CIDATA")
        .unwrap()
        .unwrap();
    let part = tmp.path().join("cidata.img");
    partition_bytes(&img, p.number, &part);
    assert_eq!(check_cidata_volume(&part), ws.rendered_user_data("master1"));
}

/// The same node, built by the CLI on ext4, tmpfs and loop-mounted btrfs and XFS, is
/// the same image byte for byte. Where the filesystem has copy-on-write (btrfs, XFS)
/// the ISO's bytes are cloned, not copied: filefrag (FIEMAP) reports the image's
/// extents shared with the input; on ext4 and tmpfs none are.
#[test]
fn image_cli_builds_the_same_image_on_ext4_tmpfs_btrfs_and_xfs() {
    use crate::support::loopdev::LoopFs;
    require_tool("filefrag");
    let iso = replica::replica(Variant::Joliet);
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    // One set of secrets for every build (they live under the output root).
    ws.ok(&["render", "--node", "master1"]);
    let secrets = ws.out().join(CLUSTER).join("secrets.yaml");
    let mut images = Vec::new();
    for (kind, cow) in [
        ("ext4", false),
        ("tmpfs", false),
        ("btrfs", true),
        ("xfs", true),
    ] {
        let fs = LoopFs::new(kind, 512);
        let out = fs.mnt.join("out");
        let cluster_dir = out.join(CLUSTER);
        std::fs::create_dir_all(&cluster_dir).unwrap();
        std::fs::copy(&secrets, cluster_dir.join("secrets.yaml")).unwrap();
        let input = fs.mnt.join("input.iso");
        std::fs::copy(&iso, &input).unwrap();
        let built = ws
            .cmd(&[
                "build",
                "--node",
                "master1",
                "--iso",
                input.to_str().unwrap(),
            ])
            .env("CHOCOIMG_OUT", &out)
            .output()
            .unwrap();
        assert!(built.status.success(), "{kind}: {}", stderr(&built));
        let img = cluster_dir.join("master1.img");
        // tmpfs has no extents to share (and no FIEMAP): nothing to read there.
        if kind != "tmpfs" {
            let extents = run(Command::new("filefrag").arg("-v").arg(&img));
            let shared = extents.lines().filter(|l| l.contains("shared")).count();
            if cow {
                assert!(
                    shared > 0,
                    "{kind}: no extent shared with the ISO:\n{extents}"
                );
            } else {
                assert_eq!(shared, 0, "{kind}:\n{extents}");
            }
        }
        images.push((kind, sha_of(&img)));
    }
    let (first, sha) = &images[0];
    for (kind, other) in &images[1..] {
        assert_eq!(
            other, sha,
            "the image built on {kind} differs from {first}'s"
        );
    }
}

/// Issue 8, item 8: the disk-safety rule follows the release, so `build` takes the
/// release from the ISO itself: a 22.04.1 ISO (its /.disk/info) under a profile that says
/// 22.04.5 is refused, whatever its hash pin says. (A tree with only /.disk/info: the
/// release is checked before anything else of the ISO.)
#[test]
fn image_cli_refuses_an_iso_of_another_release_than_the_profile() {
    require_tool("xorriso");
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join(".disk")).unwrap();
    std::fs::write(
        tree.join(".disk/info"),
        "Ubuntu-Server 22.04.1 LTS \"Jammy Jellyfish\" - Release amd64 (20220809.1)",
    )
    .unwrap();
    let iso = tmp.path().join("ubuntu-22.04.1-live-server-amd64.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-r", "-J", "-o"])
        .arg(&iso)
        .arg(&tree));
    let m = mirror();
    let ws = crate::support::workspace::Workspace::with_profile(&profile_text(
        &m.srv.url(),
        Some(&sha_of(&iso)),
    ));
    let out = ws.run(&["build", "--node", "master1", "--iso", iso.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "22.04.1",
        "ubuntu.release",
        "22.04.5",
        iso.to_str().unwrap(),
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    assert!(image_outputs(&ws).is_empty(), "{:?}", image_outputs(&ws));
    assert!(!ws.out().join(CLUSTER).exists(), "{:?}", ws.files_in_out());
}
