//! Small file-system helpers every writer shares: atomic writes and private files.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically: a temporary file in the same folder, synced,
/// then renamed over the final name. `mode` is applied before any byte is written, so a
/// secret is never readable by others, not even for a moment.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(path);
    create_dirs(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".chocoimg-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    set_mode(tmp.path(), mode)?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    // The error must not own the temporary file: it may hold a secret, and an error
    // that reaches `main` is printed and the process exits without dropping it.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {}", path.display()))?;
    Ok(())
}

/// Creates `dir` and its missing parents, 0700 whatever the umask: every folder
/// chocoimg makes may come to hold a secret (seeds, keys, the secrets file).
pub fn create_dirs(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// `create_dirs`, and `dir` itself made 0700 even if it existed with a wider mode: the
/// folder of a secrets file, which others must not be able to swap out.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    create_dirs(dir)?;
    set_mode(dir, 0o700)
}

/// The folder holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Sets Unix permission bits; a no-op elsewhere.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk now,
/// without waiting. Left alone, a large file's dirty pages wait until the final
/// `fsync`, which then writes all of them while the process only waits; started as
/// each chunk is written, the disk works while the process goes on hashing. A hint: the
/// final `fsync` still makes everything durable, so an error here changes nothing.
/// On Linux, `POSIX_FADV_DONTNEED` starts write-back of the range's dirty pages; those
/// whose write-back has already finished leave the page cache (on a loop device, most):
/// only for ranges nothing reads back soon. The input ISO's pages stay cached instead.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Hex SHA-256 of a file, streamed (never loads the file into memory).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Why a small input file (the profile, a public key) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SmallFileError {
    #[error("{path} is not a regular file ({kind}); give the path of a file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is larger than {cap} bytes, far more than such a file holds; is it the right file?"
    )]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a small input file whole: only a regular file, at most `cap` bytes. A device
/// (`/dev/zero`) or a FIFO is refused at once: opened without blocking, checked, never
/// read.
pub fn read_small_file(path: &Path, cap: u64) -> Result<Vec<u8>, SmallFileError> {
    use std::io::Read;
    let io = |source| SmallFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    // Opening a FIFO for reading blocks until a writer comes, unless non-blocking.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let file = open.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(SmallFileError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(&meta),
        });
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(SmallFileError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(bytes)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a file"
    }
}

/// Folders a step created, removed again (deepest first, only while empty) unless the
/// step succeeded and calls `keep`: a refused input leaves no trace.
#[derive(Debug, Default)]
pub struct CreatedDirs {
    dirs: Vec<std::path::PathBuf>,
}

impl CreatedDirs {
    /// `create_dirs` (0700), remembering which folders did not exist.
    pub fn create(&mut self, dir: &Path) -> Result<()> {
        let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        create_dirs(dir)?;
        self.dirs
            .extend(missing.into_iter().rev().map(Path::to_path_buf));
        Ok(())
    }

    /// The step succeeded: the folders stay.
    pub fn keep(&mut self) {
        self.dirs.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
