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
    File {
        path: PathBuf,
        len: u64,
    },
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

/// Room kept on CIDATA for the seed, which is rendered only once the ISO has passed its
/// checks (the seed needs the cluster's secrets; a refused ISO must not create them),
/// while the volume's size is fixed before (it is in the partition tables). A seed is
/// tens of KiB.
pub const SEED_ROOM: u64 = 1 << 20;

/// A volume size (whole MiB) that holds `entries` and `reserved` more bytes with room
/// to spare: every file rounded up to a 64 KiB cluster, the FATs and directories, plus
/// 1/16 and 4 MiB slack.
pub fn volume_size(entries: &[Entry], reserved: u64) -> u64 {
    const CLUSTER: u64 = 64 << 10;
    const MIB: u64 = 1 << 20;
    let data: u64 = reserved
        + entries
            .iter()
            .map(|e| e.len().div_ceil(CLUSTER) * CLUSTER + CLUSTER)
            .sum::<u64>();
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
        let n = room(self.len, self.pos, buf.len());
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
        let n = room(self.len, self.pos, buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(past_the_end());
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

/// How many of `want` bytes fit between `pos` and the end of a window of `len` bytes
/// (`Window` and `Cached`).
fn room(len: u64, pos: u64, want: usize) -> usize {
    (want as u64).min(len.saturating_sub(pos)) as usize
}

/// What a write that does not fit in the window gets (`Window` and `Cached`).
fn past_the_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        "write past the end of the CIDATA partition",
    )
}

/// A seek inside a window of `len` bytes whose position is `pos` (both disks below).
fn seek_within(len: u64, pos: &mut u64, to: SeekFrom) -> io::Result<u64> {
    let new = match to {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    match new {
        Some(n) => {
            *pos = n;
            Ok(n)
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek before the start of the CIDATA partition",
        )),
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        seek_within(self.len, &mut self.pos, to)
    }
}

/// The volume as it is being written: 1 MiB blocks held in memory and written out
/// whole, so that fatfs, which works a sector at a time, costs a few large writes instead
/// of a system call per sector. At most `KEEP` blocks stay in memory (the least recently
/// used is written out first), so memory stays flat whatever the payload's size. The
/// region starts out zero (the image file was just grown over it), so a block that was
/// never written out needs no read.
struct Cached<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    pos: u64,
    blocks: Vec<CachedBlock>,
    /// Blocks written out at least once: their bytes are in the file now.
    written: std::collections::HashSet<u64>,
    clock: u64,
}

struct CachedBlock {
    index: u64,
    data: Vec<u8>,
    dirty: bool,
    used: u64,
}

const CACHE_BLOCK: u64 = 1 << 20;
const KEEP: usize = 8;

impl<'f> Cached<'f> {
    fn new(file: &'f File, start: u64, len: u64) -> Self {
        assert!(
            len.is_multiple_of(CACHE_BLOCK),
            "CIDATA is sized in whole MiB"
        );
        Cached {
            file,
            start,
            len,
            pos: 0,
            blocks: Vec::new(),
            written: Default::default(),
            clock: 0,
        }
    }

    /// The cached block `index`, loaded (or zero) on first use.
    fn block(&mut self, index: u64) -> io::Result<&mut CachedBlock> {
        self.clock += 1;
        let found = self.blocks.iter().position(|b| b.index == index);
        let at = match found {
            Some(at) => at,
            None => {
                if self.blocks.len() >= KEEP {
                    let lru = (0..self.blocks.len())
                        .min_by_key(|i| self.blocks[*i].used)
                        .expect("the cache is not empty");
                    let old = self.blocks.swap_remove(lru);
                    self.write_out(&old)?;
                }
                let mut data = vec![0u8; CACHE_BLOCK as usize];
                if self.written.contains(&index) {
                    let mut f = self.file;
                    f.seek(SeekFrom::Start(self.start + index * CACHE_BLOCK))?;
                    f.read_exact(&mut data)?;
                }
                self.blocks.push(CachedBlock {
                    index,
                    data,
                    dirty: false,
                    used: 0,
                });
                self.blocks.len() - 1
            }
        };
        let b = &mut self.blocks[at];
        b.used = self.clock;
        Ok(b)
    }

    fn write_out(&mut self, b: &CachedBlock) -> io::Result<()> {
        if b.dirty {
            let mut f = self.file;
            f.seek(SeekFrom::Start(self.start + b.index * CACHE_BLOCK))?;
            f.write_all(&b.data)?;
            self.written.insert(b.index);
        }
        Ok(())
    }

    /// Writes out every block still held, in order.
    fn flush_all(&mut self) -> io::Result<()> {
        let mut blocks = std::mem::take(&mut self.blocks);
        blocks.sort_by_key(|b| b.index);
        for b in &blocks {
            self.write_out(b)?;
        }
        Ok(())
    }
}

impl Read for Cached<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (index, off) = (self.pos / CACHE_BLOCK, (self.pos % CACHE_BLOCK) as usize);
        let n = room(self.len, self.pos, buf.len()).min(CACHE_BLOCK as usize - off);
        if n == 0 {
            return Ok(0);
        }
        let b = self.block(index)?;
        buf[..n].copy_from_slice(&b.data[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cached<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (index, off) = (self.pos / CACHE_BLOCK, (self.pos % CACHE_BLOCK) as usize);
        let n = room(self.len, self.pos, buf.len()).min(CACHE_BLOCK as usize - off);
        if n == 0 && !buf.is_empty() {
            return Err(past_the_end());
        }
        let b = self.block(index)?;
        b.data[off..off + n].copy_from_slice(&buf[..n]);
        b.dirty = true;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cached<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        seek_within(self.len, &mut self.pos, to)
    }
}

/// FAT timestamps: the FAT epoch (1980-01-01 00:00), always. The same inputs then make
/// the same image, byte for byte; the build's time is in its manifest.
#[derive(Debug)]
struct FatEpoch;

impl fatfs::TimeProvider for FatEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FAT_EPOCH: FatEpoch = FatEpoch;

/// Formats `size` bytes at `start` of `file` (zero: the image was just grown over it)
/// as FAT labelled CIDATA and writes `entries` into it. `on_bytes` hears how many
/// payload bytes were written since its last call; an error from it (e.g. the build was
/// interrupted) stops the writing.
pub fn write(
    file: &File,
    start: u64,
    size: u64,
    entries: &[Entry],
    on_bytes: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut disk = Cached::new(file, start, size);
    // The serial number follows from what the volume holds: same inputs, same image.
    let volume_id = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for e in entries {
            h.update(e.name.as_bytes());
            match &e.source {
                Source::Bytes(b) => h.update(b),
                Source::File { len, .. } => h.update(len.to_le_bytes()),
            }
        }
        u32::from_le_bytes(h.finalize()[..4].try_into().expect("4 bytes"))
    };
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(volume_id)
            .bytes_per_sector(512)
            .total_sectors((size / 512) as u32),
    )?;
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new().time_provider(&FAT_EPOCH))?;
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
    // FAT32 keeps a free-cluster count in FSInfo; fatfs leaves it "unknown" after
    // formatting unless counted once (fsck.vfat reports it).
    fs.stats()?;
    fs.unmount()?;
    let mut dirs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.name.rsplit_once('/').map(|(d, _)| d))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    for d in dirs {
        fix_dot_entries(&mut disk, d)?;
    }
    disk.flush_all()
}

/// fatfs 0.3 writes a long-name entry before a new directory's `.` and `..`, which
/// fsck.vfat rejects ("Expected a valid '.' entry in this slot"). Puts `.` and `..`
/// in the first two slots, as FAT wants, and marks the two long-name entries deleted.
/// Only for folders at the root with a plain 8.3 name (`k3s`). Also sets `..` to 0.
fn fix_dot_entries<D: Read + Write + Seek>(disk: &mut D, dir: &str) -> io::Result<()> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let upper = dir.to_ascii_uppercase();
    if dir.contains('/') || upper.is_empty() || upper.len() > 8 || upper.contains('.') {
        return Err(bad(format!(
            "CIDATA folder {dir:?}: only one level of plain folder names (at most 8 characters)"
        )));
    }
    let mut short = [b' '; 11];
    short[..upper.len()].copy_from_slice(upper.as_bytes());

    let mut bpb = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut bpb)?;
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([bpb[at], bpb[at + 1]]));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(bpb[at..at + 4].try_into().unwrap()));
    let sector = u16_at(11);
    let per_cluster = u64::from(bpb[13]);
    let reserved = u16_at(14);
    let fats = u64::from(bpb[16]);
    let root_entries = u16_at(17);
    let fat_sectors = if u16_at(22) != 0 {
        u16_at(22)
    } else {
        u32_at(36)
    };
    let root_sectors = (root_entries * 32).div_ceil(sector);
    let data = reserved + fats * fat_sectors + root_sectors;
    let cluster_at = |c: u64| (data + (c - 2) * per_cluster) * sector;
    let (root_at, root_len) = if root_entries != 0 {
        (
            (reserved + fats * fat_sectors) * sector,
            root_sectors * sector,
        )
    } else {
        (cluster_at(u32_at(44)), per_cluster * sector)
    };
    let mut root = vec![0u8; root_len as usize];
    disk.seek(SeekFrom::Start(root_at))?;
    disk.read_exact(&mut root)?;
    let entry = root
        .chunks_exact(32)
        .find(|e| e[0..11] == short && e[11] & 0x10 != 0)
        .ok_or_else(|| bad(format!("folder {dir} not found on CIDATA")))?;
    let cluster = u64::from(u16::from_le_bytes([entry[20], entry[21]])) << 16
        | u64::from(u16::from_le_bytes([entry[26], entry[27]]));
    let at = cluster_at(cluster);
    let mut head = [0u8; 128];
    disk.seek(SeekFrom::Start(at))?;
    disk.read_exact(&mut head)?;
    let (lfn_dot, dot, lfn_dotdot, dotdot) =
        (&head[0..32], &head[32..64], &head[64..96], &head[96..128]);
    if lfn_dot[11] != 0x0F || &dot[0..11] != b".          " {
        // Already well-formed (a fatfs that no longer does this).
        return Ok(());
    }
    if lfn_dotdot[11] != 0x0F || &dotdot[0..11] != b"..         " {
        return Err(bad(format!("unexpected layout of folder {dir} on CIDATA")));
    }
    let mut fixed = [0u8; 128];
    fixed[0..32].copy_from_slice(dot);
    fixed[32..64].copy_from_slice(dotdot);
    // `..` of a folder at the root names cluster 0 (fatfs writes FAT32's root cluster).
    fixed[32 + 20..32 + 22].fill(0);
    fixed[32 + 26..32 + 28].fill(0);
    fixed[64..96].copy_from_slice(lfn_dot);
    fixed[96..128].copy_from_slice(lfn_dotdot);
    fixed[64] = 0xE5;
    fixed[96] = 0xE5;
    disk.seek(SeekFrom::Start(at))?;
    disk.write_all(&fixed)
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
        let size = volume_size(&entries, 0);
        assert_eq!(size % (1 << 20), 0);
        tmp.set_len(4096 + size + 4096).unwrap();
        write(&tmp, 4096, size, &entries, &mut |_| Ok(())).unwrap();
        let back = read_file(&tmp, 4096, size, "k3s/SHA256SUMS", 100).unwrap();
        assert_eq!(back, b"abc  k3s\n");
        let fs =
            fatfs::FileSystem::new(Window::new(&tmp, 4096, size), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
    }
}
