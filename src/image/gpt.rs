//! The hybrid ISO's partition tables: read the protective MBR and the primary GPT, and
//! plan one appended partition (new entry, both CRC32s, backup GPT at the new end, old
//! backup header zeroed, only the 0xEE MBR entry grown). Never sgdisk: it rewrites the
//! MBR and drops the bootable entry GRUB's BIOS path relies on.
use super::patch::Patch;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1 << 20;
/// EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 (Microsoft basic data) as stored on disk.
pub const BASIC_DATA: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("no protective MBR (no 0xEE entry): not a hybrid ISO with a GPT")]
    NoProtectiveMbr,
    #[error("no valid primary GPT: {0}")]
    BadGpt(String),
    #[error("the GPT has no free entry for the CIDATA partition")]
    NoFreeEntry,
    #[error("partition {index} ends at byte {end}, past the end of the ISO ({iso_len})")]
    PastEnd {
        index: usize,
        end: u64,
        iso_len: u64,
    },
    #[error("reading the partition tables: {0}")]
    Io(#[from] std::io::Error),
}

/// The MBR (LBA 0): the one reader of its four partition entries.
pub struct Mbr {
    sector: [u8; SECTOR as usize],
}

/// One of the MBR's four partition entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    /// 0 to 3.
    pub index: usize,
    /// The partition type (0 = unused, 0xEE = GPT protective).
    pub kind: u8,
    pub first_lba: u64,
}

impl Mbr {
    pub fn read(file: &mut File) -> std::io::Result<Mbr> {
        let mut sector = [0u8; SECTOR as usize];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut sector)?;
        Ok(Mbr { sector })
    }

    /// Ends with the 0x55AA boot signature.
    pub fn is_valid(&self) -> bool {
        self.sector[510..512] == [0x55, 0xAA]
    }

    /// Where entry `index` starts in the sector.
    pub fn entry_offset(index: usize) -> usize {
        446 + index * 16
    }

    pub fn entries(&self) -> impl Iterator<Item = MbrEntry> + '_ {
        (0..4).map(|index| {
            let e = &self.sector[Mbr::entry_offset(index)..Mbr::entry_offset(index) + 16];
            MbrEntry {
                index,
                kind: e[4],
                first_lba: u64::from(u32_at(e, 8)),
            }
        })
    }
}

/// The primary GPT as found on disk.
#[derive(Debug, Clone)]
pub struct Gpt {
    header: Vec<u8>,
    entries: Vec<u8>,
    entry_size: usize,
}

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as tools number them.
    pub number: usize,
    pub type_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Gpt {
    /// Reads and checks (signature, both CRC32s) the primary GPT at LBA 1.
    pub fn read(file: &mut File) -> Result<Gpt, GptError> {
        let mut header = vec![0u8; SECTOR as usize];
        file.seek(SeekFrom::Start(SECTOR))?;
        file.read_exact(&mut header)?;
        if &header[0..8] != b"EFI PART" {
            return Err(GptError::BadGpt(
                "no \"EFI PART\" signature at LBA 1".into(),
            ));
        }
        let header_size = u32_at(&header, 12) as usize;
        if !(92..=SECTOR as usize).contains(&header_size) {
            return Err(GptError::BadGpt(format!("header size {header_size}")));
        }
        header.truncate(header_size);
        if header_crc(&header) != u32_at(&header, 16) {
            return Err(GptError::BadGpt("header CRC32 mismatch".into()));
        }
        let count = u32_at(&header, 80) as usize;
        let entry_size = u32_at(&header, 84) as usize;
        // Checked: both come from the disk (a fuzzed header overflowed them).
        let table_len = count.checked_mul(entry_size).filter(|&n| n <= 1 << 20);
        let (true, false, Some(table_len)) = (entry_size >= 128, count == 0, table_len) else {
            return Err(GptError::BadGpt(format!(
                "{count} entries of {entry_size} bytes"
            )));
        };
        let table_at = u64_at(&header, 72)
            .checked_mul(SECTOR)
            .ok_or_else(|| GptError::BadGpt("partition entries beyond any disk".into()))?;
        let mut entries = vec![0u8; table_len];
        file.seek(SeekFrom::Start(table_at))?;
        file.read_exact(&mut entries)?;
        if crc32fast::hash(&entries) != u32_at(&header, 88) {
            return Err(GptError::BadGpt(
                "partition entry array CRC32 mismatch".into(),
            ));
        }
        Ok(Gpt {
            header,
            entries,
            entry_size,
        })
    }

    fn entry(&self, i: usize) -> &[u8] {
        &self.entries[i * self.entry_size..(i + 1) * self.entry_size]
    }

    /// The used entries.
    pub fn partitions(&self) -> Vec<Partition> {
        (0..self.entries.len() / self.entry_size)
            .filter_map(|i| {
                let e = self.entry(i);
                let type_guid: [u8; 16] = e[0..16].try_into().unwrap();
                if type_guid == [0; 16] {
                    return None;
                }
                let units: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect();
                Some(Partition {
                    number: i + 1,
                    type_guid,
                    first_lba: u64_at(e, 32),
                    last_lba: u64_at(e, 40),
                    name: String::from_utf16_lossy(&units),
                })
            })
            .collect()
    }
}

/// Where the appended partition goes and every write that puts it in the tables.
#[derive(Debug, Clone)]
pub struct Appended {
    pub number: usize,
    /// Byte offset of the partition (1 MiB aligned, after the ISO's last byte).
    pub start: u64,
    pub size: u64,
    /// The image's length once the backup GPT sits at its end.
    pub image_len: u64,
    /// Writes inside the original ISO's bytes (MBR, primary GPT, old backup header).
    pub head: Vec<Patch>,
    /// Writes past the ISO's end (backup entries and header).
    pub tail: Vec<Patch>,
}

/// Plans a partition of `size` bytes (a multiple of 1 MiB) named `name`, with the
/// unique GUID `guid`, after the `iso_len` bytes of the ISO. Reads the tables from
/// `file`; writes nothing.
pub fn plan_append(
    file: &mut File,
    iso_len: u64,
    size: u64,
    name: &str,
    guid: [u8; 16],
) -> Result<Appended, GptError> {
    assert!(
        size.is_multiple_of(ALIGN) && size > 0,
        "partition size must be whole MiB"
    );
    let mbr = Mbr::read(file)?;
    let protective = mbr
        .entries()
        .find(|e| e.kind == 0xEE)
        .ok_or(GptError::NoProtectiveMbr)?;
    let gpt = Gpt::read(file)?;
    let iso_sectors = iso_len / SECTOR;
    for p in gpt.partitions() {
        if p.last_lba >= iso_sectors {
            return Err(GptError::PastEnd {
                index: p.number,
                end: (p.last_lba + 1) * SECTOR,
                iso_len,
            });
        }
    }
    let count = gpt.entries.len() / gpt.entry_size;
    let free = (0..count)
        .find(|i| gpt.entry(*i)[0..16] == [0; 16])
        .ok_or(GptError::NoFreeEntry)?;

    let start = iso_len.div_ceil(ALIGN) * ALIGN;
    let first_lba = start / SECTOR;
    let last_lba = first_lba + size / SECTOR - 1;
    let entry_sectors = (gpt.entries.len() as u64).div_ceil(SECTOR);
    let backup_entries_lba = last_lba + 1;
    let backup_header_lba = backup_entries_lba + entry_sectors;
    let image_len = (backup_header_lba + 1) * SECTOR;

    let mut entries = gpt.entries.clone();
    let e = &mut entries[free * gpt.entry_size..(free + 1) * gpt.entry_size];
    e.fill(0);
    e[0..16].copy_from_slice(&BASIC_DATA);
    e[16..32].copy_from_slice(&guid);
    e[32..40].copy_from_slice(&first_lba.to_le_bytes());
    e[40..48].copy_from_slice(&last_lba.to_le_bytes());
    for (i, unit) in name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);

    let old_backup_lba = u64_at(&gpt.header, 32);
    let primary_entries_lba = u64_at(&gpt.header, 72);
    let mut primary = gpt.header.clone();
    put_u64(&mut primary, 32, backup_header_lba);
    put_u64(&mut primary, 48, backup_entries_lba - 1);
    put_u32(&mut primary, 88, entries_crc);
    seal(&mut primary);
    let mut backup = primary.clone();
    put_u64(&mut backup, 24, backup_header_lba);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries_lba);
    seal(&mut backup);

    let total_sectors = image_len / SECTOR;
    let entry_at = Mbr::entry_offset(protective.index);
    let mbr_size = (total_sectors - protective.first_lba).min(u64::from(u32::MAX)) as u32;
    let mut mbr_entry = mbr.sector[entry_at..entry_at + 16].to_vec();
    mbr_entry[5..8].copy_from_slice(&chs(total_sectors - 1));
    mbr_entry[12..16].copy_from_slice(&mbr_size.to_le_bytes());

    let mut head = vec![
        Patch {
            at: entry_at as u64,
            bytes: mbr_entry,
        },
        Patch {
            at: SECTOR,
            bytes: primary,
        },
        Patch {
            at: primary_entries_lba * SECTOR,
            bytes: entries.clone(),
        },
    ];
    if old_backup_lba > 1 && (old_backup_lba + 1) * SECTOR <= iso_len {
        head.push(Patch {
            at: old_backup_lba * SECTOR,
            bytes: vec![0; SECTOR as usize],
        });
    }
    let tail = vec![
        Patch {
            at: backup_entries_lba * SECTOR,
            bytes: entries,
        },
        Patch {
            at: backup_header_lba * SECTOR,
            bytes: backup,
        },
    ];
    Ok(Appended {
        number: free + 1,
        start,
        size,
        image_len,
        head,
        tail,
    })
}

/// Finds the partition named `name` (e.g. CIDATA) on an image.
pub fn find_partition(file: &mut File, name: &str) -> Result<Option<Partition>, GptError> {
    Ok(Gpt::read(file)?
        .partitions()
        .into_iter()
        .find(|p| p.name == name))
}

/// CHS of `lba` in the geometry xorriso uses for hybrid ISOs (64 heads, 32 sectors),
/// or the "not representable" value.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (64u64, 32u64);
    let cyl = lba / (heads * sectors);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / sectors) % heads;
    let sector = lba % sectors + 1;
    [
        head as u8,
        (sector as u8) | (((cyl >> 8) as u8) << 6),
        (cyl & 0xFF) as u8,
    ]
}

/// A GUID (version 4 layout, on-disk byte order) drawn from the SHA-256 of `seed`
/// rather than at random: the same node's image gets the same partition GUID, so the
/// same inputs make the same image.
pub fn guid_from(seed: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(seed);
    let mut g: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    g
}

fn header_crc(header: &[u8]) -> u32 {
    let mut h = header.to_vec();
    h[16..20].fill(0);
    crc32fast::hash(&h)
}

fn seal(header: &mut [u8]) {
    let crc = header_crc(header);
    put_u32(header, 16, crc);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_xorriso_geometry() {
        // xorriso wrote 26 20 15 for the last sector (44255) of a replica.
        assert_eq!(chs(44255), [0x26, 0x20, 0x15]);
        assert_eq!(chs(4_000_000), [0xFE, 0xFF, 0xFF]);
    }

    #[test]
    fn guid_is_version_4() {
        let g = guid_from(b"master1");
        assert_ne!(g, guid_from(b"nodo1"));
        assert_eq!(g[7] >> 4, 4);
        assert_eq!(g[8] >> 6, 0b10);
    }
}
