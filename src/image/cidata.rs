//! The CIDATA volume: a FAT filesystem written straight into the image file at the
//! partition's offset, holding the NoCloud seed, the node's payload and the image's
//! identity. Payload files are streamed, never held in memory.
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// The filesystem label cloud-init's NoCloud looks for.
pub const LABEL: &str = "CIDATA";
/// The image's identity file at the volume's root, read by `inspect`.
pub const IDENTITY_FILE: &str = "chocoimg.json";

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A file on the laptop, streamed; its length as checked when planned.
    File { path: PathBuf, len: u64 },
}

/// One file on the volume, `/`-separated name relative to its root.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub source: Source,
}

impl Entry {
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Bytes(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A volume size (whole MiB) that holds `entries` with room to spare: every file
/// rounded up to a 64 KiB cluster, the FATs and directories, plus 1/16 and 4 MiB slack.
pub fn volume_size(entries: &[Entry]) -> u64 {
    const CLUSTER: u64 = 64 << 10;
    const MIB: u64 = 1 << 20;
    let data: u64 = entries
        .iter()
        .map(|e| e.len().div_ceil(CLUSTER) * CLUSTER + CLUSTER)
        .sum();
    let total = data + data / 16 + 4 * MIB;
    total.div_ceil(MIB).max(8) * MIB
}

/// A window of `len` bytes at `start` in `file`, as a disk for `fatfs`.
pub struct Window<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'f> Window<'f> {
    pub fn new(file: &'f File, start: u64, len: u64) -> Self {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let mut f = self.file;
        f.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = f.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the CIDATA partition",
            ));
        }
        let mut f = self.file;
        f.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = f.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the CIDATA partition",
            )),
        }
    }
}

/// Formats `size` bytes at `start` of `file` as FAT labelled CIDATA and writes
/// `entries` into it. `on_bytes` hears how many payload bytes were written since its
/// last call; an error from it (e.g. the build was interrupted) stops the writing.
pub fn write(
    file: &File,
    start: u64,
    size: u64,
    entries: &[Entry],
    on_bytes: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(
        Window::new(file, start, size),
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(rand::random())
            .bytes_per_sector(512)
            .total_sectors((size / 512) as u32),
    )?;
    let fs = fatfs::FileSystem::new(Window::new(file, start, size), fatfs::FsOptions::new())?;
    {
        let root = fs.root_dir();
        let mut buf = vec![0u8; 1 << 20];
        for e in entries {
            let parts: Vec<&str> = e.name.split('/').filter(|p| !p.is_empty()).collect();
            let mut dir = root.clone();
            for d in &parts[..parts.len().saturating_sub(1)] {
                dir = dir.create_dir(d)?;
            }
            let leaf = parts.last().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "empty file name for CIDATA")
            })?;
            let mut out = dir.create_file(leaf)?;
            out.truncate()?;
            match &e.source {
                Source::Bytes(b) => out.write_all(b)?,
                Source::File { path, len } => {
                    let mut input = File::open(path).map_err(|err| {
                        io::Error::new(err.kind(), format!("opening {}: {err}", path.display()))
                    })?;
                    let mut copied = 0u64;
                    loop {
                        let n = input.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n])?;
                        copied += n as u64;
                        on_bytes(n as u64)?;
                    }
                    if copied != *len {
                        return Err(io::Error::other(format!(
                            "{} changed while it was copied ({} bytes, expected {len})",
                            path.display(),
                            copied
                        )));
                    }
                }
            }
            out.flush()?;
        }
    }
    fs.unmount()?;
    Ok(())
}

/// Reads one file (at most `limit` bytes) off the CIDATA volume at `start` of `file`.
pub fn read_file(
    file: &File,
    start: u64,
    size: u64,
    name: &str,
    limit: u64,
) -> io::Result<Vec<u8>> {
    let fs = fatfs::FileSystem::new(Window::new(file, start, size), fatfs::FsOptions::new())?;
    let mut f = fs.root_dir().open_file(name)?;
    let mut out = Vec::new();
    (&mut f).take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "{name} on CIDATA is larger than {limit} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_window() {
        let tmp = tempfile::tempfile().unwrap();
        let entries = vec![
            Entry {
                name: "user-data".into(),
                source: Source::Bytes(b"#cloud-config\n".to_vec()),
            },
            Entry {
                name: "k3s/SHA256SUMS".into(),
                source: Source::Bytes(b"abc  k3s\n".to_vec()),
            },
        ];
        let size = volume_size(&entries);
        assert_eq!(size % (1 << 20), 0);
        tmp.set_len(4096 + size + 4096).unwrap();
        write(&tmp, 4096, size, &entries, &mut |_| Ok(())).unwrap();
        let back = read_file(&tmp, 4096, size, "k3s/SHA256SUMS", 100).unwrap();
        assert_eq!(back, b"abc  k3s\n");
        let fs = fatfs::FileSystem::new(Window::new(&tmp, 4096, size), fatfs::FsOptions::new())
            .unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
    }
}
