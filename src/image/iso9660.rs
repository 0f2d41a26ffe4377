//! Just enough ISO 9660 to change one small file in place: every volume descriptor set
//! (the image's own and the one `-partition_offset` writes inside partition 1), every
//! tree (primary with Rock Ridge names, Joliet), every directory record of a path.
//! Everything is read through a file handle; the ISO is never loaded into memory.
use super::patch::Patch;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// ISO 9660 logical block size.
pub const BLOCK: u64 = 2048;
/// The volume descriptors start at block 16 of a volume.
const DESCRIPTORS_AT: u64 = 16 * BLOCK;
/// A directory larger than this is not a live-server ISO's.
const MAX_DIR_BYTES: u32 = 4 << 20;

/// What can go wrong reading or patching the ISO. `NoRoom` is the one a caller turns
/// into "this ISO cannot be patched".
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("not an ISO 9660 image (no volume descriptor at byte 32768)")]
    NotIso,
    #[error("{path} is not in the ISO")]
    NotFound { path: String },
    #[error(
        "{path} would need {needed} bytes, but its extent owns only {room} \
         (the ISO's blocks cannot grow in place)"
    )]
    NoRoom {
        path: String,
        needed: u64,
        room: u64,
    },
    #[error("the directory records of {path} disagree: {detail}")]
    Inconsistent { path: String, detail: String },
    #[error("{path} is {size} bytes, more than the {limit} this reader takes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("malformed ISO 9660 structure: {0}")]
    Malformed(String),
    #[error("reading or writing the ISO: {0}")]
    Io(#[from] std::io::Error),
}

/// Which tree a directory record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// The primary volume descriptor's tree (names from Rock Ridge when present).
    Primary,
    /// A Joliet supplementary descriptor's tree (UCS-2 names).
    Joliet,
    /// Another supplementary (or enhanced) descriptor's tree.
    Supplementary,
}

/// One descriptor set: the bytes where its volume starts (0 for the image's own set,
/// partition 1's start for the set `-partition_offset` adds) and its trees.
#[derive(Debug, Clone)]
pub struct VolumeSet {
    pub base: u64,
    pub trees: Vec<(Tree, DirRecord)>,
}

/// One directory record, located absolutely in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRecord {
    /// Byte offset of the record itself (its size fields are at +10 and +14).
    pub record_at: u64,
    /// Byte offset of the data extent.
    pub extent_at: u64,
    pub size: u32,
    pub is_dir: bool,
    /// Which descriptor set (0 = first found) and tree it was found in.
    pub set: usize,
    pub tree: Tree,
}

/// An ISO opened for reading (and, with `patch_file`, in-place writing).
pub struct Iso<'f> {
    file: &'f mut File,
    pub sets: Vec<VolumeSet>,
}

impl<'f> Iso<'f> {
    /// Finds every descriptor set: the image's own at block 16, and one at block 16 of
    /// each partition (MBR or GPT) that starts on a 2048-byte boundary.
    pub fn open(file: &'f mut File) -> Result<Self, IsoError> {
        let mut bases = vec![0u64];
        for start in partition_starts(file)? {
            if start % BLOCK == 0 && !bases.contains(&start) {
                bases.push(start);
            }
        }
        // Seek, not metadata: a USB stick's block device reports length 0.
        let len = file.seek(SeekFrom::End(0))?;
        let mut sets = Vec::new();
        for base in bases {
            if base + DESCRIPTORS_AT + BLOCK > len {
                continue;
            }
            if let Some(trees) = read_descriptors(file, base, sets.len())? {
                sets.push(VolumeSet { base, trees });
            }
        }
        if sets.first().map(|s| s.base) != Some(0) {
            return Err(IsoError::NotIso);
        }
        Ok(Iso { file, sets })
    }

    /// Every directory record of `path` (e.g. `/boot/grub/grub.cfg`), across every
    /// tree of every set; `Inconsistent` if some tree lacks it.
    pub fn records(&mut self, path: &str) -> Result<Vec<DirRecord>, IsoError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let roots: Vec<(Tree, DirRecord)> =
            self.sets.iter().flat_map(|s| s.trees.clone()).collect();
        for (tree, root) in roots {
            let set = root.set;
            let base = self.sets[set].base;
            let mut current = root;
            let mut ok = true;
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                match find_child(self.file, base, tree, &current, part)? {
                    Some(rec) if last || rec.is_dir => current = rec,
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && !parts.is_empty() {
                found.push(current);
            } else {
                missing.push(format!("the {tree:?} tree of descriptor set {set}"));
            }
        }
        if found.is_empty() {
            return Err(IsoError::NotFound {
                path: path.to_string(),
            });
        }
        // Readers differ in the tree they use (GRUB, the kernel's isofs): a record this
        // reader could not find would keep the old size and cut the new file short.
        if !missing.is_empty() {
            return Err(IsoError::Inconsistent {
                path: path.into(),
                detail: format!("it is missing from {}", missing.join(", ")),
            });
        }
        Ok(found)
    }

    /// The one extent every record of `path` points at: (offset, size, records).
    fn extent(&mut self, path: &str) -> Result<(u64, u32, Vec<DirRecord>), IsoError> {
        let recs = self.records(path)?;
        let first = recs[0].clone();
        if first.is_dir {
            return Err(IsoError::Inconsistent {
                path: path.into(),
                detail: "it is a directory".into(),
            });
        }
        for r in &recs[1..] {
            if r.extent_at != first.extent_at || r.size != first.size {
                return Err(IsoError::Inconsistent {
                    path: path.into(),
                    detail: format!(
                        "one record points at byte {} ({} bytes), another at byte {} ({} bytes)",
                        first.extent_at, first.size, r.extent_at, r.size
                    ),
                });
            }
        }
        Ok((first.extent_at, first.size, recs))
    }

    /// Reads a small file (at most `limit` bytes).
    pub fn read_file(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, IsoError> {
        let (at, size, _) = self.extent(path)?;
        if u64::from(size) > limit {
            return Err(IsoError::TooLarge {
                path: path.into(),
                size: size.into(),
                limit,
            });
        }
        let mut buf = vec![0u8; size as usize];
        self.file.seek(SeekFrom::Start(at))?;
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// The writes that replace `path`'s contents with `contents`: the new bytes and
    /// zeros up to the end of the blocks the extent owns, and the new size (LE at +10,
    /// BE at +14) in every record. Nothing is written; `NoRoom` if it does not fit.
    pub fn plan_replace(&mut self, path: &str, contents: &[u8]) -> Result<Vec<Patch>, IsoError> {
        let (at, size, recs) = self.extent(path)?;
        let room = u64::from(size).div_ceil(BLOCK) * BLOCK;
        let needed = contents.len() as u64;
        if needed > room {
            return Err(IsoError::NoRoom {
                path: path.into(),
                needed,
                room,
            });
        }
        let mut data = contents.to_vec();
        data.resize(room as usize, 0);
        let mut patches = vec![Patch { at, bytes: data }];
        let new = needed as u32;
        for r in recs {
            patches.push(Patch {
                at: r.record_at + 10,
                bytes: new.to_le_bytes().to_vec(),
            });
            patches.push(Patch {
                at: r.record_at + 14,
                bytes: new.to_be_bytes().to_vec(),
            });
        }
        Ok(patches)
    }

    /// Replaces `path`'s contents in place (see `plan_replace`). Returns how many
    /// directory records were updated.
    pub fn patch_file(&mut self, path: &str, contents: &[u8]) -> Result<usize, IsoError> {
        let patches = self.plan_replace(path, contents)?;
        for p in &patches {
            self.file.seek(SeekFrom::Start(p.at))?;
            self.file.write_all(&p.bytes)?;
        }
        Ok((patches.len() - 1) / 2)
    }
}

/// Partition starts in bytes, from the MBR and, when there is one, the primary GPT.
fn partition_starts(file: &mut File) -> Result<Vec<u64>, IsoError> {
    let mut starts = Vec::new();
    let mbr = match super::gpt::Mbr::read(file) {
        Ok(mbr) if mbr.is_valid() => mbr,
        _ => return Ok(starts),
    };
    for e in mbr.entries() {
        if e.kind != 0 && e.kind != 0xEE && e.first_lba != 0 {
            starts.push(e.first_lba * 512);
        }
    }
    if let Ok(gpt) = super::gpt::Gpt::read(file) {
        for p in gpt.partitions() {
            starts.push(p.first_lba * 512);
        }
    }
    Ok(starts)
}

/// Reads the descriptor set of the volume starting at `base`; `None` if there is none.
fn read_descriptors(
    file: &mut File,
    base: u64,
    set: usize,
) -> Result<Option<Vec<(Tree, DirRecord)>>, IsoError> {
    let mut trees = Vec::new();
    let mut block = [0u8; BLOCK as usize];
    for n in 0..64u64 {
        file.seek(SeekFrom::Start(base + DESCRIPTORS_AT + n * BLOCK))?;
        if file.read_exact(&mut block).is_err() || &block[1..6] != b"CD001" {
            if n == 0 {
                return Ok(None);
            }
            return Err(IsoError::Malformed(format!(
                "volume descriptor set at byte {base} ends without a terminator"
            )));
        }
        let tree = match block[0] {
            255 => return Ok(Some(trees)),
            1 => Tree::Primary,
            2 if is_joliet(&block[88..120]) => Tree::Joliet,
            2 => Tree::Supplementary,
            _ => continue,
        };
        let root = parse_record(&block[156..190], base, set, tree).ok_or_else(|| {
            IsoError::Malformed(format!("bad root directory record at byte {base}"))
        })?;
        trees.push((tree, root));
    }
    Err(IsoError::Malformed(format!(
        "more than 64 volume descriptors at byte {base}"
    )))
}

fn is_joliet(escapes: &[u8]) -> bool {
    escapes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'/' && matches!(w[2], b'@' | b'C' | b'E'))
}

/// Decodes the fixed part of a directory record. `record_at` is filled by the caller.
fn parse_record(rec: &[u8], base: u64, set: usize, tree: Tree) -> Option<DirRecord> {
    if rec.len() < 34 || (rec[0] as usize) < 34 {
        return None;
    }
    let lba = u32::from_le_bytes(rec[2..6].try_into().ok()?);
    let size = u32::from_le_bytes(rec[10..14].try_into().ok()?);
    Some(DirRecord {
        record_at: 0,
        extent_at: base + u64::from(lba) * BLOCK,
        size,
        is_dir: rec[25] & 0x02 != 0,
        set,
        tree,
    })
}

/// Looks up `name` in directory `dir`.
fn find_child(
    file: &mut File,
    base: u64,
    tree: Tree,
    dir: &DirRecord,
    name: &str,
) -> Result<Option<DirRecord>, IsoError> {
    if dir.size > MAX_DIR_BYTES {
        return Err(IsoError::Malformed(format!(
            "a directory of {} bytes at byte {}",
            dir.size, dir.extent_at
        )));
    }
    let mut buf = vec![0u8; dir.size as usize];
    file.seek(SeekFrom::Start(dir.extent_at))?;
    file.read_exact(&mut buf)?;
    let mut pos = 0usize;
    while pos < buf.len() {
        let len = buf[pos] as usize;
        if len == 0 {
            // Records never cross a block boundary: the rest of this block is padding.
            pos = (pos / BLOCK as usize + 1) * BLOCK as usize;
            continue;
        }
        if len < 34 || pos + len > buf.len() {
            return Err(IsoError::Malformed(format!(
                "bad directory record at byte {}",
                dir.extent_at + pos as u64
            )));
        }
        let rec = &buf[pos..pos + len];
        let name_len = rec[32] as usize;
        if 33 + name_len <= len && !(name_len == 1 && rec[33] <= 1) {
            let raw = &rec[33..33 + name_len];
            let system_use = rec.get(33 + name_len + (1 - name_len % 2)..).unwrap_or(&[]);
            let rock_ridge = match tree {
                Tree::Joliet => None,
                _ => rock_ridge_name(file, base, system_use)?,
            };
            if record_name_matches(tree, raw, rock_ridge.as_deref(), name) {
                if rec[25] & 0x80 != 0 {
                    return Err(IsoError::Malformed(format!(
                        "{name} is a multi-extent file; this ISO is not a live-server ISO"
                    )));
                }
                let mut r = parse_record(rec, base, dir.set, tree).expect("checked length");
                r.record_at = dir.extent_at + pos as u64;
                return Ok(Some(r));
            }
        }
        pos += len;
    }
    Ok(None)
}

/// Does a record's name equal `want`? Joliet names are UCS-2; primary records use the
/// Rock Ridge NM name when there is one, else the ISO 9660 name without `;1`.
fn record_name_matches(tree: Tree, raw: &[u8], rock_ridge: Option<&str>, want: &str) -> bool {
    match tree {
        Tree::Joliet => {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            strip_version(&String::from_utf16_lossy(&units)) == want
        }
        Tree::Primary | Tree::Supplementary => {
            if let Some(nm) = rock_ridge {
                return nm == want;
            }
            let plain = String::from_utf8_lossy(raw);
            strip_version(&plain).eq_ignore_ascii_case(want)
        }
    }
}

fn strip_version(name: &str) -> &str {
    let name = name.split(';').next().unwrap_or(name);
    name.strip_suffix('.').unwrap_or(name)
}

/// The Rock Ridge alternate name (NM entries) in a record's system use area and the
/// continuation areas (CE) it chains to, which hold what did not fit in the record.
fn rock_ridge_name(file: &mut File, base: u64, su: &[u8]) -> Result<Option<String>, IsoError> {
    let mut name = Vec::new();
    let mut seen = false;
    let mut area = su.to_vec();
    for _ in 0..16 {
        let (next, done) = read_nm(&area, &mut name, &mut seen);
        match next {
            Some((block, offset, len)) if !done && len <= BLOCK => {
                area = vec![0u8; len as usize];
                file.seek(SeekFrom::Start(base + block * BLOCK + offset))?;
                file.read_exact(&mut area)?;
            }
            _ => return Ok(seen.then(|| String::from_utf8_lossy(&name).into_owned())),
        }
    }
    Err(IsoError::Malformed(
        "a Rock Ridge entry chains more than 16 continuation areas".into(),
    ))
}

/// Adds one area's NM entries to `name`; returns the CE entry's (block, offset,
/// length) if there is one, and whether an ST entry ended the entries.
fn read_nm(mut su: &[u8], name: &mut Vec<u8>, seen: &mut bool) -> (Option<(u64, u64, u64)>, bool) {
    let le = |b: &[u8]| u64::from(u32::from_le_bytes(b[..4].try_into().unwrap()));
    let mut next = None;
    while su.len() >= 4 {
        let len = su[2] as usize;
        if len < 4 || len > su.len() {
            break;
        }
        match &su[0..2] {
            b"NM" if len >= 5 => {
                *seen = true;
                name.extend_from_slice(&su[5..len]);
            }
            b"CE" if len >= 28 => next = Some((le(&su[4..]), le(&su[12..]), le(&su[20..]))),
            b"ST" => return (next, true),
            _ => {}
        }
        su = &su[len..];
    }
    (next, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_version_or_trailing_dot() {
        assert_eq!(strip_version("GRUB.CFG;1"), "GRUB.CFG");
        assert_eq!(strip_version("INFO.;1"), "INFO");
        assert_eq!(strip_version("boot"), "boot");
    }

    #[test]
    fn rock_ridge_nm_is_read_across_entries() {
        let mut su = b"PX\x0c\x01\0\0\0\0\0\0\0\0".to_vec();
        su.extend_from_slice(b"NM\x09\x01\x01grub");
        su.extend_from_slice(b"NM\x09\x01\x00.cfg");
        let (mut name, mut seen) = (Vec::new(), false);
        assert_eq!(read_nm(&su, &mut name, &mut seen), (None, false));
        assert_eq!((name.as_slice(), seen), (&b"grub.cfg"[..], true));
        let (mut name, mut seen) = (Vec::new(), false);
        read_nm(b"PX\x04\x01", &mut name, &mut seen);
        assert!(!seen);
    }

    #[test]
    fn joliet_escape_sequences() {
        assert!(is_joliet(b"%/E\0\0\0"));
        assert!(!is_joliet(&[0u8; 32]));
    }
}
