//! A replica of the Ubuntu 22.04 live-server ISO, built here because the real 2 GB ISO
//! cannot be had on this machine (stand-in, see testing.md): same layout, made by
//! xorriso with Canonical's flags (tests/fixtures/replica/make-replica.sh), a Debian
//! kernel standing in for casper's, and a busybox initramfs (built below with the
//! `cpio` and `flate2` crates) whose /init prints /proc/cmdline and the user-data it
//! reads off LABEL=CIDATA, then powers off. Cached under target/replica-cache/.
use super::{repo, require_tool};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serialises replica builds across the test threads.
static BUILDING: Mutex<()> = Mutex::new(());

/// What the booted initramfs prints around what it found.
pub const CMDLINE_MARK: &str = "REPLICA-CMDLINE: ";
pub const USER_DATA_BEGIN: &str = "REPLICA-USER-DATA-BEGIN";
pub const USER_DATA_END: &str = "REPLICA-USER-DATA-END";
pub const DONE_MARK: &str = "REPLICA-DONE";

/// The start of every busybox /init of the tests: busybox's tools on PATH, the kernel's
/// filesystems, all output to the serial port, the kernel's own messages quiet, and the
/// modules `write_initramfs_with` packs loaded in modules.load's order (a file, so
/// bench/flash.sh's guest starts the same way).
const INIT_PREAMBLE: &str = include_str!("../fixtures/replica/init-preamble.sh");

/// A busybox /init: the preamble, then `body`.
pub fn busybox_init(body: &str) -> String {
    format!("{INIT_PREAMBLE}{body}")
}

/// The replica's /init after the preamble: print the command line, read CIDATA's
/// user-data, power off.
const REPLICA_INIT: &str = r#"echo ""
echo "REPLICA-CMDLINE: $(cat /proc/cmdline)"
dev=""
i=0
while [ $i -lt 120 ]; do
  dev=$(findfs LABEL=CIDATA 2>/dev/null) && break
  usleep 500000
  i=$((i + 1))
done
echo "REPLICA-CIDATA: ${dev:-none}"
if [ -n "$dev" ] && mount -t vfat -o ro "$dev" /mnt; then
  echo "REPLICA-USER-DATA-BEGIN"
  cat /mnt/user-data
  echo ""
  echo "REPLICA-USER-DATA-END"
fi
echo "REPLICA-DONE"
poweroff -f
"#;

static INIT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| busybox_init(REPLICA_INIT));

/// Which replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Rock Ridge and Joliet (what 22.04 most likely is).
    Joliet,
    /// Rock Ridge only.
    NoJoliet,
    /// grub.cfg already fills its 2048-byte block: no room to patch.
    FullGrub,
    /// /.disk/info names Debian.
    NotUbuntu,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Joliet => "joliet",
            Variant::NoJoliet => "no-joliet",
            Variant::FullGrub => "full-grub",
            Variant::NotUbuntu => "not-ubuntu",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Joliet => &[],
            Variant::NoJoliet => &["--no-joliet"],
            Variant::FullGrub => &["--full-grub"],
            Variant::NotUbuntu => &["--not-ubuntu"],
        }
    }
}

/// target/replica-cache (shared by every test of this checkout).
pub fn cache_dir() -> PathBuf {
    let d = repo().join("target").join("replica-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script(name: &str) -> PathBuf {
    repo().join("tests/fixtures/replica").join(name)
}

/// Debian's kernel and the modules the initramfs loads (fetched once with apt).
pub fn kernel() -> PathBuf {
    require_tool("apt-get");
    require_tool("dpkg-deb");
    require_tool("depmod");
    require_tool("modprobe");
    let dir = cache_dir().join("kernel");
    let st = Command::new(script("fetch-kernel.sh"))
        .arg(&dir)
        .status()
        .expect("running fetch-kernel.sh");
    assert!(st.success(), "fetch-kernel.sh failed");
    dir
}

/// Writes the busybox initramfs (gzip'd newc cpio) for `kernel_dir`'s modules.
pub fn write_initramfs(kernel_dir: &Path, out: &Path) {
    write_initramfs_with(kernel_dir, out, &INIT, &[]);
}

/// A busybox initramfs with `init` as /init, `kernel_dir`'s modules, and `extra` files
/// (path inside, contents; made executable, their folders made too).
pub fn write_initramfs_with(
    kernel_dir: &Path,
    out: &Path,
    init: &str,
    extra: &[(String, Vec<u8>)],
) {
    use cpio::newc::{Builder, ModeFileType};
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "busybox-static is not installed; run scripts/install-test-deps.sh"
    );
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut w = gz;
    let mut ino = 1u32;
    let mut dir = |w: flate2::write::GzEncoder<std::fs::File>, name: &str| {
        ino += 1;
        Builder::new(name)
            .ino(ino)
            .mode(0o755)
            .set_mode_file_type(ModeFileType::Directory)
            .nlink(2)
            .write(w, 0)
            .finish()
            .unwrap()
    };
    let mut dirs: Vec<String> = [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "mnt", "modules",
    ]
    .map(String::from)
    .to_vec();
    for (path, _) in extra {
        let mut p = Path::new(path).parent();
        let mut up = Vec::new();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            up.push(d.to_string_lossy().into_owned());
            p = d.parent();
        }
        for d in up.into_iter().rev() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for d in &dirs {
        w = dir(w, d);
    }
    let mut ino = 100u32;
    let mut file = |w: flate2::write::GzEncoder<std::fs::File>, name: &str, data: &[u8], mode| {
        ino += 1;
        let mut f = Builder::new(name)
            .ino(ino)
            .mode(mode)
            .set_mode_file_type(ModeFileType::Regular)
            .nlink(1)
            .write(w, data.len() as u32);
        f.write_all(data).unwrap();
        f.finish().unwrap()
    };
    w = file(w, "init", init.as_bytes(), 0o755);
    for (path, data) in extra {
        w = file(w, path, data, 0o755);
    }
    let bb = std::fs::read(busybox).unwrap();
    assert!(
        !has_interpreter(&bb),
        "/bin/busybox is dynamically linked; install busybox-static (scripts/install-test-deps.sh)"
    );
    w = file(w, "bin/busybox", &bb, 0o755);
    let order = std::fs::read_to_string(kernel_dir.join("modules.load")).unwrap();
    w = file(w, "modules.load", order.as_bytes(), 0o644);
    for m in order.lines().filter(|l| !l.is_empty()) {
        let data = std::fs::read(kernel_dir.join("modules").join(m)).unwrap();
        w = file(w, &format!("modules/{m}"), &data, 0o644);
    }
    let w = Builder::new("dev/console")
        .ino(99)
        .mode(0o600)
        .set_mode_file_type(ModeFileType::Char)
        .rdev_major(5)
        .rdev_minor(1)
        .nlink(1)
        .write(w, 0)
        .finish()
        .unwrap();
    let w = cpio::newc::trailer(w).unwrap();
    w.finish().unwrap();
}

/// Whether an ELF64 binary asks for a dynamic loader (a PT_INTERP program header).
pub fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

/// The replica ISO of `variant`, built once per checkout (the cache key covers the
/// scripts and the initramfs).
pub fn replica(variant: Variant) -> PathBuf {
    replica_padded(variant, 0)
}

/// A replica with an extra file of `pad_mib` MiB (for the benchmark).
pub fn replica_padded(variant: Variant, pad_mib: u32) -> PathBuf {
    for tool in [
        "xorriso",
        "grub-mkimage",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "md5sum",
    ] {
        require_tool(tool);
    }
    assert!(
        Path::new("/usr/lib/grub/i386-pc/boot_hybrid.img").is_file()
            && Path::new("/usr/lib/grub/x86_64-efi").is_dir(),
        "grub-pc-bin and grub-efi-amd64-bin are not installed; run scripts/install-test-deps.sh"
    );
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let kdir = kernel();
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(script("make-replica.sh")).unwrap());
        h.update(INIT.as_bytes());
        h.update(std::fs::read(kdir.join("modules.load")).unwrap());
        h.update(std::fs::read(kdir.join("kernel-version")).unwrap());
        hex::encode(h.finalize())[..12].to_string()
    };
    let pad = if pad_mib > 0 {
        format!("-pad{pad_mib}")
    } else {
        String::new()
    };
    let iso = cache_dir().join(format!("{}{pad}-{key}.iso", variant.name()));
    if iso.is_file() {
        return iso;
    }
    let initrd = cache_dir().join(format!("initrd-{key}.gz"));
    if !initrd.is_file() {
        let tmp = cache_dir().join(format!(".initrd-{key}.tmp"));
        write_initramfs(&kdir, &tmp);
        std::fs::rename(&tmp, &initrd).unwrap();
    }
    let tmp = cache_dir().join(format!(".{}{pad}-{key}.tmp", variant.name()));
    let mut cmd = Command::new(script("make-replica.sh"));
    cmd.arg("--out")
        .arg(&tmp)
        .arg("--kernel")
        .arg(kdir.join("vmlinuz"))
        .arg("--initrd")
        .arg(&initrd)
        .args(variant.flags());
    if pad_mib > 0 {
        cmd.args(["--pad-mib", &pad_mib.to_string()]);
    }
    let st = cmd.status().expect("running make-replica.sh");
    assert!(st.success(), "make-replica.sh failed for {variant:?}");
    std::fs::rename(&tmp, &iso).unwrap();
    // Drop this variant's replicas made by older scripts.
    let prefix = format!("{}{pad}-", variant.name());
    for e in std::fs::read_dir(cache_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old_key = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".iso"))
            .is_some_and(|k| k.len() == 12 && k.bytes().all(|b| b.is_ascii_hexdigit()));
        if old_key && e.path() != iso {
            let _ = std::fs::remove_file(e.path());
        }
    }
    iso
}
