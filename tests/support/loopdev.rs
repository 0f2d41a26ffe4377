//! Loop devices made by a test over a file it made: the only block devices of this
//! machine a test may write (testing.md). Detached when dropped, even after a failure.
use super::require_tool;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopDevice {
    /// /dev/loopN
    pub dev: PathBuf,
    /// The file behind it, in the test's temp dir.
    pub backing: PathBuf,
}

impl LoopDevice {
    /// A loop device over `backing` (which must exist); `partitions` asks the kernel to
    /// scan its partition table (/dev/loopNpM).
    pub fn attach(backing: &Path, partitions: bool) -> LoopDevice {
        require_tool("losetup");
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partitions {
            cmd.arg("--partscan");
        }
        let out = cmd.arg(backing).output().expect("running losetup");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        // The one thing a flash test must never get wrong: the device is a loop device
        // this test just made over its own file.
        assert!(
            dev.to_string_lossy().starts_with("/dev/loop"),
            "losetup returned {dev:?}"
        );
        let back = std::fs::read_to_string(format!(
            "/sys/block/{}/loop/backing_file",
            dev.file_name().unwrap().to_string_lossy()
        ))
        .unwrap();
        assert_eq!(
            Path::new(back.trim()),
            std::fs::canonicalize(backing).unwrap()
        );
        let lo = LoopDevice {
            dev,
            backing: backing.to_path_buf(),
        };
        // Without udev the kernel's own scan may not add the partitions: partx does.
        if partitions && !lo.partition(1).exists() {
            require_tool("partx");
            let _ = Command::new("partx").arg("-a").arg(&lo.dev).output();
        }
        lo
    }

    /// A new file of `size` bytes filled with 0xAA, and a loop device over it.
    pub fn new(dir: &Path, name: &str, size: usize) -> LoopDevice {
        let backing = dir.join(name);
        std::fs::write(&backing, vec![0xaa; size]).unwrap();
        LoopDevice::attach(&backing, false)
    }

    /// The device's partition `n` (/dev/loopNpM), once udev-less devtmpfs made it.
    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// What the device holds, read through its backing file.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.backing).unwrap()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Partitions partx added go with it (a no-op when there are none).
        let _ = Command::new("partx")
            .arg("-d")
            .arg(&self.dev)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A filesystem of `kind` mounted under a temp dir the test made: on a loop device over
/// a sparse file (ext4, btrfs, xfs), or a tmpfs. Unmounted, its device detached and
/// its files removed when dropped, even after a failure.
pub struct LoopFs {
    pub mnt: PathBuf,
    dev: Option<LoopDevice>,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    pub fn new(kind: &str, mib: u64) -> LoopFs {
        require_tool("mount");
        require_tool("umount");
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut mount = Command::new("mount");
        let dev = if kind == "tmpfs" {
            mount.args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]);
            None
        } else {
            let mkfs = format!("mkfs.{kind}");
            require_tool(&mkfs);
            let backing = dir.path().join(format!("{kind}.img"));
            std::fs::File::create(&backing)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            let dev = LoopDevice::attach(&backing, false);
            let force = if kind == "ext4" { "-F" } else { "-f" };
            let out = Command::new(&mkfs)
                .args(["-q", force])
                .arg(&dev.dev)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mkfs} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            mount.arg(&dev.dev);
            Some(dev)
        };
        let out = mount.arg(&mnt).output().unwrap();
        assert!(
            out.status.success(),
            "mounting {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopFs {
            mnt,
            dev,
            _dir: dir,
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // The device detaches (LoopDevice's own drop) once nothing is mounted on it.
        self.dev.take();
    }
}
