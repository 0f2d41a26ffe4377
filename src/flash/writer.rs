//! Writing an image to a stick, then proving it is there.
//!
//! Order matters for a stick that is pulled or interrupted half-way: the first and the
//! last MiB of the stick are zeroed first (no partition table, primary or backup, and
//! no boot sector left from before), the image is written from its second MiB on, and
//! its first MiB only once the rest is on the stick. Until then the stick cannot boot
//! half an installer. After `fsync`, the stick is read back (bypassing the page cache)
//! and its SHA-256 compared with `<image>.sha256`; a stick that fails is zeroed again.
//! With a `.sha256`, the image is not hashed while it is written: the read-back check
//! covers a damaged image too (its file is hashed only then, to say which side is at
//! fault), and the write costs no more CPU than `dd` (the laptop may be busy). Without
//! one, the image is hashed as it is read, and the read-back must match that.
use crate::progress::{Meter, ProgressStyle};
use anyhow::{Context, Result};
use sha2::Digest;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What is written last (and zeroed first).
pub const HEAD: u64 = 1 << 20;
/// One write or read: large, so a USB stick sees long requests.
const CHUNK: usize = 4 << 20;
/// Direct I/O wants buffers, offsets and lengths on the device's block size; 4096
/// covers every logical block size in use.
const ALIGN: usize = 4096;

/// Where the image goes.
pub struct WriteRequest<'a> {
    pub image: &'a super::Image,
    /// The node to open (on macOS the raw `/dev/rdiskN`).
    pub target: &'a Path,
    /// A disk: opened exclusively, written directly, its last MiB zeroed too.
    /// A file (`--to-file`): created if missing.
    pub device_size: Option<u64>,
    pub progress: ProgressStyle,
    /// Set (by Ctrl-C) to stop between chunks.
    pub cancel: &'a AtomicBool,
}

/// A written and verified stick.
#[derive(Debug, Clone)]
pub struct Written {
    pub sha256: String,
    /// How the hash was known: from `<image>.sha256`, or from reading the image.
    pub against_sha256_file: bool,
    pub write_time: Duration,
    pub verify_time: Duration,
}

/// Why a write stopped. Every variant leaves the stick unable to boot.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "interrupted: {0} holds part of the image and cannot boot (its first MiB is zeroed); \
         run `chocoimg flash` again to finish it"
    )]
    Interrupted(PathBuf),
    #[error(
        "the image {image} does not match its .sha256 (expected {expected}, read {actual}): \
         it changed or is damaged; {target} was left unbootable (first MiB zeroed). Rebuild \
         the image (`chocoimg build --force`) and flash again"
    )]
    ImageChanged {
        image: PathBuf,
        target: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "verification failed: {target} reads back as {actual}, not {expected}; the stick \
         may be failing or fake (smaller than it claims). It was left unbootable (first MiB \
         zeroed); try another stick"
    )]
    VerifyFailed {
        target: PathBuf,
        expected: String,
        actual: String,
    },
}

/// A buffer whose start is aligned for direct I/O (no unsafe: the slice is cut from an
/// over-allocated Vec, whose heap block never moves).
struct Aligned {
    raw: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, at }
    }
    fn buf(&mut self) -> &mut [u8] {
        let len = self.raw.len() - ALIGN;
        &mut self.raw[self.at..self.at + len]
    }
}

/// The opened target.
struct Opened {
    file: File,
    /// What lengths and offsets must be a multiple of: 1 through the page cache; for
    /// direct I/O the device's block size (4096 when its size allows, else 512).
    granule: usize,
}

impl Opened {
    fn new(file: File, direct: bool, device_size: Option<u64>) -> Opened {
        let granule = match device_size {
            _ if !direct => 1,
            Some(size) if size % ALIGN as u64 == 0 => ALIGN,
            _ => 512,
        };
        Opened { file, granule }
    }

    fn round_up(&self, n: usize) -> usize {
        n.div_ceil(self.granule) * self.granule
    }
}

/// Opens a disk exclusively (Linux `O_EXCL`: refused while mounted or opened so by
/// another program) and, where the system has it, with direct I/O.
fn open_target(req: &WriteRequest) -> Result<Opened> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).custom_flags(flags);
        if req.device_size.is_none() {
            o.create(true);
        }
        o.open(req.target)
    };
    if req.device_size.is_none() {
        let file = open(0).with_context(|| format!("opening {}", req.target.display()))?;
        return Ok(Opened::new(file, false, None));
    }
    let excl = if cfg!(target_os = "linux") {
        libc::O_EXCL
    } else {
        0
    };
    let first = open(excl | direct_flag());
    let (result, direct) = match first {
        // Some drivers refuse direct I/O: fall back to the page cache (and fsync).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct_flag() != 0 => {
            (open(excl), false)
        }
        other => (other, direct_flag() != 0),
    };
    match result {
        Ok(file) => Ok(Opened::new(file, direct, req.device_size)),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(super::Refused {
            target: req.target.to_path_buf(),
            reasons: vec![super::Refusal::Busy],
        }
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(super::Refused {
            target: req.target.to_path_buf(),
            reasons: vec![super::Refusal::NoPermission],
        }
        .into()),
        Err(e) => Err(e).with_context(|| format!("opening {} for writing", req.target.display())),
    }
}

#[cfg(target_os = "linux")]
fn direct_flag() -> i32 {
    libc::O_DIRECT
}

#[cfg(not(target_os = "linux"))]
fn direct_flag() -> i32 {
    // macOS writes the raw node (/dev/rdiskN), which the page cache does not touch.
    0
}

/// Only checks that the disk can be opened exclusively right now (nothing written), so
/// a busy disk is refused before the user is asked to confirm.
pub fn probe_exclusive(target: &Path) -> Result<()> {
    let cancel = AtomicBool::new(false);
    let image = super::Image {
        path: PathBuf::new(),
        size: 0,
        expected_sha256: None,
    };
    let req = WriteRequest {
        image: &image,
        target,
        device_size: Some(0),
        progress: ProgressStyle::Quiet,
        cancel: &cancel,
    };
    open_target(&req).map(drop)
}

/// [`probe_exclusive`] right after an unmount: the kernel may let go of an unmounted
/// filesystem's device a moment after `umount` returns (and a desktop's automounter
/// may glance at it), so a busy answer is retried for up to five seconds.
pub fn wait_exclusive(target: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match probe_exclusive(target) {
            Err(e) if e.downcast_ref::<super::Refused>().is_some() && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Writes the first `len` bytes of `buf` at `offset`. Direct I/O writes whole blocks:
/// a last partial block is completed with what the device already holds there, so
/// nothing past the image changes.
fn write_at(out: &Opened, buf: &mut Aligned, len: usize, offset: u64) -> std::io::Result<()> {
    let n = out.round_up(len);
    if n > len {
        let start = n - out.granule;
        let mut block = Aligned::new(out.granule);
        read_full(&out.file, block.buf(), offset + start as u64)?;
        let keep = len - start;
        buf.buf()[len..n].copy_from_slice(&block.buf()[keep..]);
    }
    out.file.write_all_at(&buf.buf()[..n], offset)
}

/// Phase two: zero, write, sync, verify. The target has passed every check.
pub fn write(req: &WriteRequest) -> Result<Written> {
    let out = open_target(req)?;
    let target = req.target.to_path_buf();
    let size = req.image.size;
    let head_len = size.min(HEAD) as usize;
    let started = Instant::now();

    // 1. Nothing bootable left from before: zero the first and the last MiB.
    let mut zeros = Aligned::new(HEAD as usize);
    write_at(&out, &mut zeros, HEAD as usize, 0)
        .with_context(|| format!("writing {}", target.display()))?;
    if let Some(dev) = req.device_size.filter(|d| *d >= 2 * HEAD) {
        let g = out.granule.max(512) as u64;
        let last = (dev - HEAD) / g * g;
        write_at(&out, &mut zeros, HEAD as usize, last)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    out.file
        .sync_data()
        .with_context(|| format!("syncing {}", target.display()))?;

    // 2. The image from its second MiB on, read (and hashed, without a .sha256) in a
    //    second thread.
    let meter = Meter::new(&format!("writing {}", target.display()), size, req.progress);
    let image_path = req.image.path.clone();
    let (full_tx, full_rx) = mpsc::sync_channel::<(Aligned, usize, u64)>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Aligned>();
    for _ in 0..3 {
        empty_tx.send(Aligned::new(CHUNK)).expect("receiver alive");
    }
    let mut head_copy = Aligned::new(HEAD as usize);
    let hash_source = req.image.expected_sha256.is_none();
    let reader = std::thread::spawn(move || -> Result<(Option<String>, Aligned)> {
        let img =
            File::open(&image_path).with_context(|| format!("opening {}", image_path.display()))?;
        let mut hasher = hash_source.then(sha2::Sha256::new);
        read_full(&img, &mut head_copy.buf()[..head_len], 0)
            .with_context(|| format!("reading {}", image_path.display()))?;
        if let Some(h) = hasher.as_mut() {
            h.update(&head_copy.buf()[..head_len]);
        }
        let mut offset = head_len as u64;
        while offset < size {
            let Ok(mut buf) = empty_rx.recv() else {
                break; // the writer stopped
            };
            let len = (size - offset).min(CHUNK as u64) as usize;
            read_full(&img, &mut buf.buf()[..len], offset)
                .with_context(|| format!("reading {}", image_path.display()))?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf.buf()[..len]);
            }
            if full_tx.send((buf, len, offset)).is_err() {
                break;
            }
            offset += len as u64;
        }
        Ok((hasher.map(|h| hex::encode(h.finalize())), head_copy))
    });
    let mut failure = None;
    let mut pause_at = test_hook("CHOCOIMG_TEST_PAUSE_AFTER");
    for (mut buf, len, offset) in full_rx.iter() {
        if req.cancel.load(Ordering::SeqCst) {
            failure = Some(WriteError::Interrupted(target.clone()).into());
            break;
        }
        if let Err(e) = write_at(&out, &mut buf, len, offset) {
            failure = Some(anyhow::Error::from(e).context(format!("writing {}", target.display())));
            break;
        }
        meter.inc(len as u64);
        let _ = empty_tx.send(buf);
        if pause_at.is_some_and(|at| offset + len as u64 >= at) {
            pause_at = None;
            test_hook_pause();
        }
    }
    drop(full_rx);
    drop(empty_tx);
    let read = reader.join().expect("image reader panicked");
    if let Some(err) = failure {
        meter.finish();
        let _ = out.file.sync_data();
        return Err(err);
    }
    let (image_sha, mut head) = read?;
    let (expected, against_file) = match (&req.image.expected_sha256, image_sha) {
        (Some(e), _) => (e.clone(), true),
        (None, Some(read)) => (read, false),
        (None, None) => unreachable!("hashed when there is no .sha256"),
    };
    out.file
        .sync_data()
        .with_context(|| format!("syncing {}", target.display()))?;
    if req.cancel.load(Ordering::SeqCst) {
        meter.finish();
        return Err(WriteError::Interrupted(target).into());
    }

    // 3. The first MiB last: from here on the stick boots.
    write_at(&out, &mut head, head_len, 0)
        .with_context(|| format!("writing {}", target.display()))?;
    meter.inc(head_len as u64);
    out.file
        .sync_all()
        .with_context(|| format!("syncing {}", target.display()))?;
    meter.finish();
    let write_time = started.elapsed();

    // 4. Read it back.
    let started = Instant::now();
    let actual = read_back(&out, size, req)?;
    let verify_time = started.elapsed();
    if actual != expected {
        // A stick that does not hold the image must not boot as an installer.
        let _ = write_at(&out, &mut zeros, HEAD as usize, 0);
        let _ = out.file.sync_all();
        // Which side is at fault: the image (changed since its .sha256) or the stick.
        let image_now = crate::fsutil::sha256_file(&req.image.path)?;
        if image_now != expected {
            return Err(WriteError::ImageChanged {
                image: req.image.path.clone(),
                target,
                expected,
                actual: image_now,
            }
            .into());
        }
        return Err(WriteError::VerifyFailed {
            target,
            expected,
            actual,
        }
        .into());
    }
    Ok(Written {
        sha256: actual,
        against_sha256_file: against_file,
        write_time,
        verify_time,
    })
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_full(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    f.read_exact_at(buf, offset)
}

/// The SHA-256 of the target's first `size` bytes, read in large direct reads while a
/// second thread hashes (so the read runs at the device's speed).
fn read_back(out: &Opened, size: u64, req: &WriteRequest) -> Result<String> {
    let meter = Meter::new(
        &format!("verifying {}", req.target.display()),
        size,
        req.progress,
    );
    let (full_tx, full_rx) = mpsc::sync_channel::<(Aligned, usize)>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Aligned>();
    for _ in 0..3 {
        empty_tx.send(Aligned::new(CHUNK)).expect("receiver alive");
    }
    let hasher = std::thread::spawn(move || {
        let mut h = sha2::Sha256::new();
        for (mut buf, len) in full_rx.iter() {
            h.update(&buf.buf()[..len]);
            let _ = empty_tx.send(buf);
        }
        hex::encode(h.finalize())
    });
    let corrupt_at = test_hook("CHOCOIMG_TEST_CORRUPT_READBACK");
    let mut offset = 0u64;
    let mut failure = None;
    while offset < size {
        if req.cancel.load(Ordering::SeqCst) {
            failure = Some(anyhow::anyhow!(
                "interrupted while verifying: {} holds the whole image but it was not checked; \
                 run `chocoimg flash` again to be sure",
                req.target.display()
            ));
            break;
        }
        let Ok(mut buf) = empty_rx.recv() else { break };
        let len = (size - offset).min(CHUNK as u64) as usize;
        let n = out.round_up(len);
        if let Err(e) = read_full(&out.file, &mut buf.buf()[..n], offset) {
            failure = Some(
                anyhow::Error::from(e).context(format!("reading back {}", req.target.display())),
            );
            break;
        }
        if let Some(at) = corrupt_at.filter(|at| (offset..offset + len as u64).contains(at)) {
            buf.buf()[(at - offset) as usize] ^= 0xff;
        }
        meter.inc(len as u64);
        if full_tx.send((buf, len)).is_err() {
            break;
        }
        offset += len as u64;
    }
    drop(full_tx);
    let sha = hasher.join().expect("hasher panicked");
    meter.finish();
    match failure {
        Some(e) => Err(e),
        None => Ok(sha),
    }
}

/// Test builds only (release builds ignore them), the hooks the integration tests use:
/// - `CHOCOIMG_TEST_PAUSE_AFTER=BYTES` holds the write once BYTES are on the target
///   until a line arrives on stdin, so a test can press Ctrl-C mid-write without racing;
/// - `CHOCOIMG_TEST_CORRUPT_READBACK=OFFSET` flips the byte read back at OFFSET: a stick
///   that returns other bytes than it was given (no device-mapper on the test machine).
fn test_hook(name: &str) -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    } else {
        None
    }
}

fn test_hook_pause() {
    eprintln!("test hook: paused mid-write");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, len: usize, with_sums: Option<&str>) -> super::super::Image {
        let path = dir.join("x.img");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        super::super::Image {
            path,
            size: len as u64,
            expected_sha256: with_sums
                .map(String::from)
                .or_else(|| Some(crate::fsutil::sha256_hex(&data))),
        }
    }

    fn req<'a>(
        img: &'a super::super::Image,
        target: &'a Path,
        cancel: &'a AtomicBool,
    ) -> WriteRequest<'a> {
        WriteRequest {
            image: img,
            target,
            device_size: None,
            progress: ProgressStyle::Quiet,
            cancel,
        }
    }

    #[test]
    fn writes_a_file_and_verifies_it() {
        let t = tempfile::tempdir().unwrap();
        // Not a multiple of the chunk, the head or the block size.
        let img = image(t.path(), CHUNK * 2 + 12345, None);
        let target = t.path().join("stick");
        std::fs::write(&target, vec![0xaa; CHUNK * 3]).unwrap();
        let cancel = AtomicBool::new(false);
        let w = write(&req(&img, &target, &cancel)).unwrap();
        assert_eq!(Some(w.sha256.clone()), img.expected_sha256);
        let got = std::fs::read(&target).unwrap();
        assert_eq!(
            got[..img.size as usize],
            std::fs::read(&img.path).unwrap()[..]
        );
        assert!(got[img.size as usize..].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn a_small_image_is_all_head() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), 1000, None);
        let target = t.path().join("new-file");
        let cancel = AtomicBool::new(false);
        write(&req(&img, &target, &cancel)).unwrap();
        let got = std::fs::read(&target).unwrap();
        assert_eq!(got[..1000], std::fs::read(&img.path).unwrap()[..]);
    }

    #[test]
    fn an_image_that_differs_from_its_sha256_leaves_the_head_zeroed() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), CHUNK + HEAD as usize, Some(&"0".repeat(64)));
        let target = t.path().join("stick");
        std::fs::write(&target, vec![0xaa; CHUNK * 2]).unwrap();
        let cancel = AtomicBool::new(false);
        let err = write(&req(&img, &target, &cancel)).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(WriteError::ImageChanged { .. })),
            "{err:#}"
        );
        let got = std::fs::read(&target).unwrap();
        assert!(got[..HEAD as usize].iter().all(|b| *b == 0));
        // The rest was written: only the head is held back.
        assert_eq!(
            got[HEAD as usize..img.size as usize],
            std::fs::read(&img.path).unwrap()[HEAD as usize..]
        );
    }

    #[test]
    fn cancelled_before_the_end_leaves_the_head_zeroed() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), CHUNK * 3, None);
        let target = t.path().join("stick");
        std::fs::write(&target, vec![0xaa; CHUNK * 3]).unwrap();
        let cancel = AtomicBool::new(true);
        let err = write(&req(&img, &target, &cancel)).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(WriteError::Interrupted(_))),
            "{err:#}"
        );
        assert!(err.to_string().contains("cannot boot"));
        let got = std::fs::read(&target).unwrap();
        assert!(got[..HEAD as usize].iter().all(|b| *b == 0));
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, CHUNK] {
            let mut a = Aligned::new(len);
            assert_eq!(a.buf().as_ptr() as usize % ALIGN, 0);
            assert_eq!(a.buf().len(), len);
        }
    }
}
