//! Property tests over untrusted bytes (issue 8 item 15): `inspect` reads whatever stick
//! it is given and `build` parses an ISO before its hash is known to be right. The MBR,
//! GPT, ISO 9660 and CIDATA (FAT) readers get bytes shaped just enough to pass their
//! first checks (signatures, CRCs) and random everywhere else: each must end in an
//! error, never a panic, and allocate only what its own caps allow.
//! `cargo test --lib fuzz_` runs a short bounded pass (64 cases each);
//! `PROPTEST_CASES=200000 cargo test --release --lib fuzz_` a long one.
use super::{cidata, gpt, iso9660};
use proptest::prelude::*;
use std::io::{Seek, SeekFrom, Write};

fn file_with(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

/// An MBR with the boot signature and four random entries.
fn mbr(entries: &[u8; 64]) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[446..510].copy_from_slice(entries);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// A GPT header at LBA 1 with the given fields, its CRC right when `good_crc`.
fn gpt_header(fields: &GptFields, entries: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[12..16].copy_from_slice(&fields.header_size.to_le_bytes());
    h[72..80].copy_from_slice(&fields.entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&fields.count.to_le_bytes());
    h[84..88].copy_from_slice(&fields.entry_size.to_le_bytes());
    h[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
    let size = (fields.header_size as usize).clamp(92, 512);
    if fields.good_crc {
        let crc = crc32fast::hash(&h[..size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    h
}

#[derive(Debug, Clone)]
struct GptFields {
    header_size: u32,
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    good_crc: bool,
}

fn gpt_fields() -> impl Strategy<Value = GptFields> {
    (
        prop_oneof![Just(92u32), 0u32..600, any::<u32>()],
        prop_oneof![Just(2u64), 0u64..8, any::<u64>()],
        prop_oneof![1u32..8, Just(128), any::<u32>()],
        prop_oneof![Just(128u32), 0u32..1024, any::<u32>()],
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(header_size, entries_lba, count, entry_size, good_crc)| GptFields {
                header_size,
                entries_lba,
                count,
                entry_size,
                good_crc,
            },
        )
}

/// A CIDATA volume as `build` writes it, and its bytes.
static VOLUME: std::sync::LazyLock<(std::fs::File, Vec<u8>)> = std::sync::LazyLock::new(|| {
    let f = tempfile::tempfile().unwrap();
    let entries = vec![
        cidata::Entry {
            name: "user-data".into(),
            source: cidata::Source::Bytes(b"#cloud-config\n".to_vec()),
        },
        cidata::Entry {
            name: cidata::IDENTITY_FILE.into(),
            source: cidata::Source::Bytes(b"{}".to_vec()),
        },
    ];
    let size = cidata::volume_size(&entries, 0);
    f.set_len(size).unwrap();
    cidata::write(&f, 0, size, &entries, &mut |_| Ok(())).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut bytes).unwrap();
    (f, bytes)
});

proptest! {
    #![proptest_config(crate::fuzz::config())]

    #[test]
    fn fuzz_mbr_and_gpt_readers_never_panic(
        entries_mbr in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
            prop::array::uniform32(any::<u8>()).prop_map(move |b| {
                let mut e = [0u8; 64];
                e[..32].copy_from_slice(&a);
                e[32..].copy_from_slice(&b);
                e
            })
        }),
        fields in gpt_fields(),
        table in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let header = gpt_header(&fields, &table);
        let mut image = mbr(&entries_mbr);
        image.extend_from_slice(&header);
        image.extend_from_slice(&table);
        let mut f = file_with(&image);
        let m = gpt::Mbr::read(&mut f).unwrap();
        let _ = (m.is_valid(), m.entries().count());
        if let Ok(g) = gpt::Gpt::read(&mut f) {
            let _ = g.partitions();
        }
        let _ = gpt::find_partition(&mut f, cidata::LABEL);
    }

    #[test]
    fn fuzz_iso9660_reader_never_panics(
        kind in prop_oneof![Just(1u8), Just(2), Just(255), any::<u8>()],
        escapes in prop_oneof![Just(b"%/E".to_vec()), prop::collection::vec(any::<u8>(), 3)],
        root in prop::collection::vec(any::<u8>(), 34),
        root_extent in prop_oneof![18u32..24, any::<u32>()],
        root_size in prop_oneof![Just(2048u32), 0u32..8192, any::<u32>()],
        dirs in prop::collection::vec(any::<u8>(), 0..(8 * 2048)),
        second_terminator in any::<bool>(),
        mbr_entries in prop::collection::vec(any::<u8>(), 64),
    ) {
        // Blocks 0-15 system area (an MBR in it), 16 a descriptor, 17 the terminator,
        // 18.. directory blocks with random records.
        let mut image = vec![0u8; 18 * 2048];
        let mut e = [0u8; 64];
        e.copy_from_slice(&mbr_entries);
        image[..512].copy_from_slice(&mbr(&e));
        let d = 16 * 2048;
        image[d] = kind;
        image[d + 1..d + 6].copy_from_slice(b"CD001");
        image[d + 88..d + 91].copy_from_slice(&escapes);
        let mut rec = root;
        rec[0] = 34;
        rec[2..6].copy_from_slice(&root_extent.to_le_bytes());
        rec[6..10].copy_from_slice(&root_extent.to_be_bytes());
        rec[10..14].copy_from_slice(&root_size.to_le_bytes());
        rec[14..18].copy_from_slice(&root_size.to_be_bytes());
        rec[25] = 2;
        image[d + 156..d + 190].copy_from_slice(&rec);
        if second_terminator {
            image[17 * 2048] = 255;
            image[17 * 2048 + 1..17 * 2048 + 6].copy_from_slice(b"CD001");
        }
        image.extend_from_slice(&dirs);
        let mut f = file_with(&image);
        if let Ok(mut iso) = iso9660::Iso::open(&mut f) {
            let _ = iso.read_file("/boot/grub/grub.cfg", 1 << 20);
            let _ = iso.read_file("/.disk/info", 4096);
            let _ = iso.records("/md5sum.txt");
        }
    }

    #[test]
    fn fuzz_cidata_reader_survives_damage(
        damage in prop::collection::vec((0usize..(96 * 1024), any::<u8>()), 1..64),
    ) {
        // One pristine volume for every case: each case damages it, reads, then puts
        // the bytes it changed back.
        let (f, pristine) = &*VOLUME;
        let size = pristine.len() as u64;
        let mut w = f;
        for &(at, byte) in &damage {
            w.seek(SeekFrom::Start(at as u64)).unwrap();
            w.write_all(&[byte]).unwrap();
        }
        let _ = cidata::read_file(f, 0, size, cidata::IDENTITY_FILE, 1 << 16);
        let _ = cidata::read_file(f, 0, size, "user-data", 1 << 16);
        for (at, _) in damage {
            w.seek(SeekFrom::Start(at as u64)).unwrap();
            w.write_all(&pristine[at..at + 1]).unwrap();
        }
    }

    #[test]
    fn fuzz_inspect_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..70_000)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stick.img");
        std::fs::write(&path, &bytes).unwrap();
        let _ = super::inspect(&path);
    }
}
