//! The USB image: the Ubuntu ISO copied, its GRUB menu patched in place, and a CIDATA
//! partition appended (image.md).
//!
//! Every change to the ISO's own bytes (grub.cfg, its directory records, md5sum.txt,
//! MBR, primary GPT, old backup GPT header) is planned first, read-only, and then
//! applied while the ISO streams into a temporary file next to the output, hashed on
//! the way; one pass over 2 GB, memory flat. The CIDATA volume and the backup GPT go
//! after it; the temporary file is renamed into place only when all is done.
pub mod cidata;
pub mod gpt;
pub mod grub;
pub mod iso9660;
pub mod manifest;

use crate::artifacts::PayloadFile;
use crate::seed::SeedFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The menu GRUB reads under BIOS and UEFI.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// Names the release; also what Ubuntu's UEFI GRUB searches for to find its root.
pub const DISK_INFO: &str = "/.disk/info";
pub const MD5SUM_TXT: &str = "/md5sum.txt";
/// Ubuntu's signed UEFI GRUB sources this one instead of GRUB_CFG when it exists
/// (grub2's debian/build-efi-images); on Ubuntu's ISOs it sources GRUB_CFG in turn.
pub const GRUB_EFI_CFG: &str = "/boot/grub/x86_64-efi/grub.cfg";
/// What `/.disk/info` starts with on every 22.04.x live-server ISO.
pub const EXPECTED_RELEASE: &str = "Ubuntu-Server 22.04";

const CHUNK: usize = 1 << 20;

/// One in-place write, at an absolute byte offset of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// What an image says about itself: `/chocoimg.json` on CIDATA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub node: String,
    /// `server` or `agent`.
    pub role: String,
    pub k3s_version: String,
    pub ubuntu_release: String,
    pub chocoimg_version: String,
}

/// Why an ISO or an output cannot be used. A caller can match these; every message
/// names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{iso} is not an Ubuntu 22.04 live-server ISO: its /.disk/info says {found:?}; \
         use ubuntu-22.04.5-live-server-amd64.iso"
    )]
    NotUbuntu2204 { iso: PathBuf, found: String },
    #[error(
        "{iso}: the new /boot/grub/grub.cfg needs {needed} bytes but the ISO reserves only \
         {room} for it; this ISO cannot be patched in place (use the official 22.04.5 ISO)"
    )]
    GrubNoRoom {
        iso: PathBuf,
        needed: u64,
        room: u64,
    },
    #[error("the ISO's /boot/grub/grub.cfg is not what an Ubuntu ISO ships: {detail}")]
    GrubLayout { detail: String },
    #[error(
        "{iso}: UEFI GRUB reads /boot/grub/x86_64-efi/grub.cfg, which does not go on to \
         /boot/grub/grub.cfg, so the install entry would never show under UEFI; use the \
         official 22.04.5 ISO"
    )]
    EfiMenuElsewhere { iso: PathBuf },
    #[error("{iso} does not have the layout of an Ubuntu 22.04 ISO")]
    Layout {
        iso: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0} already exists; pass --force to replace it")]
    OutputExists(PathBuf),
    #[error("interrupted; nothing was written under the final name")]
    Interrupted,
}

impl ImageError {
    /// True when the user's input is at fault (a refused ISO, an existing output).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ImageError::Interrupted)
    }
}

/// How long work is shown: bars on a terminal, plain lines otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    Bars,
    Lines,
    Quiet,
}

impl ProgressStyle {
    /// Bars when stderr is a terminal, else lines.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            ProgressStyle::Bars
        } else {
            ProgressStyle::Lines
        }
    }
}

/// Everything `build` needs for one node's image.
pub struct BuildRequest<'a> {
    /// The verified ISO (left untouched).
    pub iso: &'a Path,
    /// `out/<cluster>/<node>.img`.
    pub output: &'a Path,
    pub identity: &'a Identity,
    pub seed: &'a [SeedFile],
    pub payload: &'a [PayloadFile],
    /// Replace an existing output.
    pub force: bool,
    pub progress: ProgressStyle,
    /// Set (e.g. by a Ctrl-C handler) to stop; the long loops check it.
    pub cancel: &'a AtomicBool,
}

/// A finished image.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: PathBuf,
    pub sha256: String,
    /// `<image>.sha256`, in `sha256sum` format.
    pub sha256_file: PathBuf,
    pub size: u64,
    /// GPT partition number of CIDATA.
    pub cidata_partition: usize,
    pub boot_title: String,
    pub kernel_line: String,
    /// How many directory records of grub.cfg were updated.
    pub grub_records: usize,
}

/// The changes planned on the ISO, before anything is written.
struct Plan {
    iso_len: u64,
    patches: Vec<Patch>,
    menu: grub::BootMenu,
    grub_records: usize,
    appended: gpt::Appended,
    entries: Vec<cidata::Entry>,
}

/// Phase one of `build` alone: reads the ISO and plans every change, refusing what
/// `build` would refuse (not a 22.04 live-server ISO, no room in grub.cfg, an existing
/// output without `force`). Writes nothing.
pub fn check(req: &BuildRequest) -> Result<()> {
    if req.output.exists() && !req.force {
        return Err(ImageError::OutputExists(req.output.to_path_buf()).into());
    }
    plan(req).map(|_| ())
}

/// The ISO alone, before any seed or secret exists: refuses what `build` would refuse
/// about it (not a 22.04 live-server ISO, its menus, its partition tables). Writes nothing.
pub fn check_iso(iso: &Path, identity: &Identity) -> Result<()> {
    plan_iso(iso, identity, Vec::new()).map(|_| ())
}

/// Builds `req.output` from the ISO, the seed and the payload. Writes nothing under
/// the final names unless everything succeeded.
pub fn build(req: &BuildRequest) -> Result<Built> {
    if req.output.exists() && !req.force {
        return Err(ImageError::OutputExists(req.output.to_path_buf()).into());
    }
    let plan = plan(req)?;
    let dir = crate::fsutil::parent_dir(req.output);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = req
        .output
        .file_name()
        .context("the output path has no file name")?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;

    let total = plan.iso_len + plan.entries.iter().map(|e| e.len()).sum::<u64>();
    let meter = Meter::new(&format!("building {file_name}"), total, req.progress);
    let sha256 = write_image(req, &plan, tmp.path(), tmp.as_file(), &meter)?;
    meter.finish();

    if req.cancel.load(Ordering::SeqCst) {
        return Err(ImageError::Interrupted.into());
    }
    let sha256_file = PathBuf::from(format!("{}.sha256", req.output.display()));
    if req.force {
        tmp.persist(req.output)
            .with_context(|| format!("renaming into place {}", req.output.display()))?;
    } else {
        tmp.persist_noclobber(req.output)
            .map_err(|e| match e.error.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    anyhow::Error::new(ImageError::OutputExists(req.output.to_path_buf()))
                }
                _ => anyhow::Error::new(e.error)
                    .context(format!("renaming into place {}", req.output.display())),
            })?;
    }
    let line = format!("{sha256}  {file_name}\n");
    if let Err(e) = crate::fsutil::write_atomic(&sha256_file, line.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(req.output);
        return Err(e);
    }
    Ok(Built {
        image: req.output.to_path_buf(),
        sha256,
        sha256_file,
        size: plan.appended.image_len,
        cidata_partition: plan.appended.number,
        boot_title: plan.menu.title,
        kernel_line: plan.menu.kernel_line,
        grub_records: plan.grub_records,
    })
}

/// Phase one: reads the ISO and plans every change; refuses an ISO that is not a
/// 22.04 live-server or whose grub.cfg has no room. Writes nothing.
fn plan(req: &BuildRequest) -> Result<Plan> {
    plan_iso(req.iso, req.identity, cidata_entries(req)?)
}

/// `plan` for CIDATA holding `entries`.
fn plan_iso(iso_path: &Path, identity: &Identity, entries: Vec<cidata::Entry>) -> Result<Plan> {
    let layout = |e: Box<dyn std::error::Error + Send + Sync>| ImageError::Layout {
        iso: iso_path.to_path_buf(),
        source: e,
    };
    let mut file =
        File::open(iso_path).with_context(|| format!("opening {}", iso_path.display()))?;
    let iso_len = file.metadata()?.len();
    let mut iso = iso9660::Iso::open(&mut file).map_err(|e| layout(e.into()))?;

    let info = match iso.read_file(DISK_INFO, 4096) {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(iso9660::IsoError::NotFound { .. }) => "(no /.disk/info)".to_string(),
        Err(e) => return Err(layout(e.into()).into()),
    };
    if !info.starts_with(EXPECTED_RELEASE) || !info.contains("LTS") {
        return Err(ImageError::NotUbuntu2204 {
            iso: iso_path.to_path_buf(),
            found: info.lines().next().unwrap_or("").to_string(),
        }
        .into());
    }

    let original = iso
        .read_file(GRUB_CFG, 1 << 20)
        .map_err(|e| layout(e.into()))?;
    let menu = grub::render(&String::from_utf8_lossy(&original), identity)?;
    let mut patches = match iso.plan_replace(GRUB_CFG, menu.text.as_bytes()) {
        Ok(p) => p,
        Err(iso9660::IsoError::NoRoom { needed, room, .. }) => {
            return Err(ImageError::GrubNoRoom {
                iso: iso_path.to_path_buf(),
                needed,
                room,
            }
            .into())
        }
        Err(e) => return Err(layout(e.into()).into()),
    };
    let grub_records = (patches.len() - 1) / 2;
    match iso.read_file(GRUB_EFI_CFG, 1 << 20) {
        Ok(cfg) if !grub::goes_on_to_main_menu(&String::from_utf8_lossy(&cfg)) => {
            return Err(ImageError::EfiMenuElsewhere {
                iso: iso_path.to_path_buf(),
            }
            .into())
        }
        Ok(_) | Err(iso9660::IsoError::NotFound { .. }) => {}
        Err(e) => return Err(layout(e.into()).into()),
    }

    match iso.read_file(MD5SUM_TXT, 4 << 20) {
        Ok(list) => {
            if let Some(fixed) = fix_md5_line(&list, GRUB_CFG, menu.text.as_bytes()) {
                patches.extend(
                    iso.plan_replace(MD5SUM_TXT, &fixed)
                        .map_err(|e| layout(e.into()))?,
                );
            }
        }
        Err(iso9660::IsoError::NotFound { .. }) => {}
        Err(e) => return Err(layout(e.into()).into()),
    }

    let size = cidata::volume_size(&entries);
    let appended =
        gpt::plan_append(&mut file, iso_len, size, cidata::LABEL).map_err(|e| layout(e.into()))?;
    patches.extend(appended.head.iter().cloned());
    patches.sort_by_key(|p| p.at);
    for pair in patches.windows(2) {
        assert!(
            pair[0].at + pair[0].bytes.len() as u64 <= pair[1].at,
            "planned ISO patches overlap"
        );
    }
    Ok(Plan {
        iso_len,
        patches,
        menu,
        grub_records,
        appended,
        entries,
    })
}

/// The files on CIDATA: seed at the root, payload under its names, a SHA256SUMS per
/// payload folder, and the identity.
fn cidata_entries(req: &BuildRequest) -> Result<Vec<cidata::Entry>> {
    let mut entries: Vec<cidata::Entry> = req
        .seed
        .iter()
        .map(|f| cidata::Entry {
            name: f.name.clone(),
            source: cidata::Source::Bytes(f.contents.clone()),
        })
        .collect();
    let mut sums: std::collections::BTreeMap<String, String> = Default::default();
    for p in req.payload {
        let len = std::fs::metadata(&p.source)
            .with_context(|| format!("reading {}", p.source.display()))?
            .len();
        entries.push(cidata::Entry {
            name: p.name.clone(),
            source: cidata::Source::File {
                path: p.source.clone(),
                len,
            },
        });
        let (dir, base) = match p.name.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), p.name.as_str()),
        };
        sums.entry(dir)
            .or_default()
            .push_str(&format!("{}  {base}\n", p.sha256));
    }
    for (dir, text) in sums {
        entries.push(cidata::Entry {
            name: format!("{dir}SHA256SUMS"),
            source: cidata::Source::Bytes(text.into_bytes()),
        });
    }
    let mut identity = serde_json::to_vec_pretty(req.identity)?;
    identity.push(b'\n');
    entries.push(cidata::Entry {
        name: cidata::IDENTITY_FILE.into(),
        source: cidata::Source::Bytes(identity),
    });
    Ok(entries)
}

/// Phase two. The kernel copies the ISO (copy_file_range or reflink, through
/// `std::fs::copy`) while another thread reads it too, applies the planned patches to
/// its chunks and hashes them: the image's SHA-256 costs no second pass. Then the
/// patches go into the copy, CIDATA and the backup GPT after it; the hash goes on over
/// those bytes (read back) while the file is synced. Returns the hex SHA-256.
fn write_image(
    req: &BuildRequest,
    plan: &Plan,
    out_path: &Path,
    out: &File,
    meter: &Meter,
) -> Result<String> {
    use sha2::Digest;
    let iso_name = req.iso.display();
    let out_name = req.output.display();
    let head_hash = |h: &mut sha2::Sha256| -> Result<()> {
        let mut src = File::open(req.iso).with_context(|| format!("opening {iso_name}"))?;
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < plan.iso_len {
            if req.cancel.load(Ordering::SeqCst) {
                return Err(ImageError::Interrupted.into());
            }
            let n = CHUNK.min((plan.iso_len - at) as usize);
            src.read_exact(&mut buf[..n])
                .with_context(|| format!("reading {iso_name}"))?;
            apply(&plan.patches, at, &mut buf[..n]);
            h.update(&buf[..n]);
            meter.inc(n as u64);
            at += n as u64;
        }
        Ok(())
    };
    let mut hasher = sha2::Sha256::new();
    std::thread::scope(|s| -> Result<()> {
        let hashing = s.spawn(|| head_hash(&mut hasher));
        let copied = std::fs::copy(req.iso, out_path)
            .with_context(|| format!("copying {iso_name} to {}", out_path.display()))
            // Start writing the copy back while the hashing catches up.
            .and_then(|n| {
                out.sync_data()
                    .with_context(|| format!("writing {}", out_path.display()))?;
                Ok(n)
            });
        let hashed = hashing.join().expect("the hashing thread does not panic");
        let copied = copied?;
        hashed?;
        if copied != plan.iso_len {
            anyhow::bail!("{iso_name} changed while it was copied");
        }
        Ok(())
    })?;
    // std::fs::copy gave the copy the ISO's mode; the image will hold secrets.
    crate::fsutil::set_mode(out_path, 0o600)?;

    let mut dst = out;
    for p in &plan.patches {
        dst.seek(SeekFrom::Start(p.at))?;
        dst.write_all(&p.bytes)
            .with_context(|| format!("writing {out_name}"))?;
    }
    let a = &plan.appended;
    out.set_len(a.image_len)
        .with_context(|| format!("growing {out_name}"))?;
    cidata::write(out, a.start, a.size, &plan.entries, &mut |n| {
        meter.inc(n);
        if req.cancel.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(ImageError::Interrupted));
        }
        Ok(())
    })
    .map_err(|e| match e.into_inner() {
        Some(inner) if inner.is::<ImageError>() => {
            anyhow::Error::new(*inner.downcast::<ImageError>().expect("checked"))
        }
        Some(inner) => anyhow::anyhow!(inner).context(format!("writing CIDATA in {out_name}")),
        None => anyhow::anyhow!("writing CIDATA in {out_name}"),
    })?;
    for p in &a.tail {
        dst.seek(SeekFrom::Start(p.at))?;
        dst.write_all(&p.bytes)
            .with_context(|| format!("writing the backup GPT in {out_name}"))?;
    }

    // Hash what follows the ISO (padding, CIDATA, backup GPT) while the file syncs.
    std::thread::scope(|s| -> Result<()> {
        let syncing = s.spawn(|| out.sync_all());
        let mut reader = File::open(out_path).with_context(|| format!("opening {out_name}"))?;
        reader.seek(SeekFrom::Start(plan.iso_len))?;
        let mut buf = vec![0u8; CHUNK];
        let mut left = a.image_len - plan.iso_len;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            reader
                .read_exact(&mut buf[..n])
                .with_context(|| format!("reading back {out_name}"))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        syncing
            .join()
            .expect("the sync thread does not panic")
            .with_context(|| format!("writing {out_name}"))?;
        Ok(())
    })?;
    if req.cancel.load(Ordering::SeqCst) {
        return Err(ImageError::Interrupted.into());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies the parts of `patches` that fall inside the chunk at `at`.
fn apply(patches: &[Patch], at: u64, buf: &mut [u8]) {
    let end = at + buf.len() as u64;
    for p in patches {
        let p_end = p.at + p.bytes.len() as u64;
        if p_end <= at || p.at >= end {
            continue;
        }
        let from = p.at.max(at);
        let to = p_end.min(end);
        buf[(from - at) as usize..(to - at) as usize]
            .copy_from_slice(&p.bytes[(from - p.at) as usize..(to - p.at) as usize]);
    }
}

/// md5sum.txt with the line for `path` carrying the MD5 of `contents` (same length:
/// the hex is fixed width; every other byte kept as it was, UTF-8 or not). `None`
/// when the list has no such line.
pub fn fix_md5_line(list: &[u8], path: &str, contents: &[u8]) -> Option<Vec<u8>> {
    use md5::Digest;
    let want = format!("  .{path}");
    let mut found = false;
    let mut out = Vec::with_capacity(list.len());
    for line in list.split_inclusive(|b| *b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.len() == 32 + want.len() && body.ends_with(want.as_bytes()) {
            found = true;
            out.extend_from_slice(hex::encode(md5::Md5::digest(contents)).as_bytes());
            out.extend_from_slice(&line[32..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    found.then_some(out)
}

/// What an image holds, as `chocoimg inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    #[serde(flatten)]
    pub identity: Identity,
    /// `/.disk/info` of the ISO inside.
    pub iso_release: String,
    pub boot_title: String,
    pub kernel_line: String,
    pub cidata_partition: usize,
}

/// Reads an image (or a stick's device): identity from CIDATA, menu from the ISO.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let not_ours = |what: String| {
        crate::BadInput(format!(
            "{} is not a chocoimg image: {what}",
            path.display()
        ))
    };
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => crate::BadInput(format!(
            "{}: no such file; pass an image made by `chocoimg build` \
             (out/<cluster>/<node>.img) or a stick's device (e.g. /dev/sdb)",
            path.display()
        ))
        .into(),
        std::io::ErrorKind::PermissionDenied => crate::BadInput(format!(
            "{}: permission denied; a stick's device is readable by root only \
             (sudo chocoimg inspect {})",
            path.display(),
            path.display()
        ))
        .into(),
        _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
    })?;
    let part = gpt::find_partition(&mut file, cidata::LABEL)
        .map_err(|e| not_ours(e.to_string()))?
        .ok_or_else(|| not_ours("no GPT partition named CIDATA".into()))?;
    let start = part.first_lba * gpt::SECTOR;
    let size = (part.last_lba + 1 - part.first_lba) * gpt::SECTOR;
    let json = cidata::read_file(&file, start, size, cidata::IDENTITY_FILE, 1 << 16)
        .map_err(|e| not_ours(format!("reading /{} on CIDATA: {e}", cidata::IDENTITY_FILE)))?;
    let identity: Identity = serde_json::from_slice(&json)
        .map_err(|e| not_ours(format!("/{} on CIDATA: {e}", cidata::IDENTITY_FILE)))?;
    let mut iso = iso9660::Iso::open(&mut file).map_err(|e| not_ours(e.to_string()))?;
    let info = iso
        .read_file(DISK_INFO, 4096)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let cfg = iso
        .read_file(GRUB_CFG, 1 << 20)
        .map_err(|e| not_ours(e.to_string()))?;
    let entry = grub::first_entry(&String::from_utf8_lossy(&cfg))
        .ok_or_else(|| not_ours("its grub.cfg has no boot entry".into()))?;
    Ok(Inspection {
        identity,
        iso_release: info,
        boot_title: entry.title,
        kernel_line: entry.linux,
        cidata_partition: part.number,
    })
}

/// Progress of one long job: an indicatif bar, or a line every 10%.
/// Shows how far a long job is: a bar on a terminal, a line every 10% otherwise.
pub struct Meter {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    style: ProgressStyle,
}

impl Meter {
    pub fn new(label: &str, total: u64, style: ProgressStyle) -> Meter {
        let bar = (style == ProgressStyle::Bars).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        });
        if style == ProgressStyle::Lines {
            eprintln!("{label}: {} MiB", total >> 20);
        }
        Meter {
            bar,
            label: label.to_string(),
            total: total.max(1),
            done: Default::default(),
            style,
        }
    }

    pub fn inc(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if self.style == ProgressStyle::Lines {
            let (a, b) = (before * 10 / self.total, (before + n) * 10 / self.total);
            if b > a && b < 10 {
                eprintln!("{}: {}%", self.label, b * 10);
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if self.style == ProgressStyle::Lines {
            eprintln!("{}: done", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_apply_across_chunk_edges() {
        let patches = vec![Patch {
            at: 6,
            bytes: vec![1, 2, 3, 4],
        }];
        let mut a = vec![0u8; 8];
        apply(&patches, 0, &mut a);
        assert_eq!(a, [0, 0, 0, 0, 0, 0, 1, 2]);
        let mut b = vec![0u8; 8];
        apply(&patches, 8, &mut b);
        assert_eq!(b, [3, 4, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn md5_line_is_fixed_in_place() {
        let list = b"0123456789abcdef0123456789abcdef  ./boot/grub/grub.cfg\n\
                     ffffffffffffffffffffffffffffffff  ./casper/vmlinuz\n";
        let fixed = fix_md5_line(list, GRUB_CFG, b"").unwrap();
        assert_eq!(fixed.len(), list.len());
        let text = String::from_utf8(fixed).unwrap();
        assert!(text.starts_with("d41d8cd98f00b204e9800998ecf8427e  ./boot/grub/grub.cfg\n"));
        assert!(text.ends_with("ffffffffffffffffffffffffffffffff  ./casper/vmlinuz\n"));
        assert!(fix_md5_line(b"x  ./other\n", GRUB_CFG, b"").is_none());
    }

    #[test]
    fn md5_list_keeps_bytes_that_are_not_utf8() {
        let mut list = b"ffffffffffffffffffffffffffffffff  ./pool/caf\xe9.deb\n".to_vec();
        list.extend_from_slice(b"0123456789abcdef0123456789abcdef  ./boot/grub/grub.cfg\n");
        let fixed = fix_md5_line(&list, GRUB_CFG, b"").unwrap();
        assert_eq!(fixed.len(), list.len());
        assert_eq!(fixed[..50], list[..50]);
    }
}
