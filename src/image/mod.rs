//! The USB image: the Ubuntu ISO copied, its GRUB menu patched in place, and a CIDATA
//! partition appended (image.md).
//!
//! Three steps, so a command can do its own work between them:
//! 1. `plan`: every change to the ISO's own bytes (grub.cfg, its directory records,
//!    md5sum.txt, MBR, primary GPT, old backup GPT header) for every node, read-only;
//!    refuses an ISO that cannot be used and an existing output.
//! 2. `Planned::write_iso`: one pass over the ISO for all the images (pass.rs), into
//!    temporary files next to the outputs (copy-on-write clones where the filesystem
//!    can), checking the ISO's pin on the way. A refused ISO leaves nothing behind.
//! 3. `Unfinished::finish`: the CIDATA volume (seed, payload, identity) and the backup
//!    GPT after the ISO, the hash completed, the file synced and renamed into place.
pub mod cidata;
pub mod error;
pub mod gpt;
pub mod grub;
pub mod identity;
mod inspect;
pub mod iso9660;
pub mod manifest;
mod pass;
pub mod patch;
pub mod ubuntu;

#[cfg(test)]
mod fuzz_tests;

// The parts' shared vocabulary lives in leaves the parts import, never in this file,
// which imports the parts.
pub use error::ImageError;
pub use identity::Identity;
pub use patch::Patch;
pub use ubuntu::{iso_release, DISK_INFO, EXPECTED_RELEASE, GRUB_CFG, GRUB_EFI_CFG, MD5SUM_TXT};

pub use crate::progress::ProgressStyle;
pub use inspect::{inspect, Inspection};

use crate::artifacts::PayloadFile;
use crate::progress::Meter;
use crate::seed::SeedFile;
use anyhow::{Context, Result};
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Refuses to replace an existing image unless `force`: the one place that says so.
pub fn refuse_existing(output: &Path, force: bool) -> Result<(), ImageError> {
    if output.exists() && !force {
        return Err(ImageError::OutputExists(output.to_path_buf()));
    }
    Ok(())
}

/// One node's image as far as it is known before its seed: where it goes, what it says
/// about itself, the payload it carries.
pub struct Target<'a> {
    /// `out/<cluster>/<node>.img`.
    pub output: &'a Path,
    pub identity: &'a Identity,
    pub payload: &'a [PayloadFile],
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
    /// The entry that reinstalls over an installed node (never the default).
    pub reinstall_title: String,
    /// How many directory records of grub.cfg were updated.
    pub grub_records: usize,
    /// The ISO's bytes were cloned (reflink/clonefile: shared, copy-on-write extents),
    /// not copied.
    pub cloned: bool,
}

/// One image's changes to the ISO, planned before anything is written.
struct Changes {
    output: PathBuf,
    patches: Vec<Patch>,
    menu: grub::BootMenu,
    grub_records: usize,
    appended: gpt::Appended,
    /// CIDATA's files but the seed (payload, its SHA256SUMS, the identity).
    entries: Vec<cidata::Entry>,
}

/// The images of one build, planned: what `write_iso` writes.
pub struct Planned {
    iso: PathBuf,
    iso_len: u64,
    force: bool,
    images: Vec<Changes>,
}

/// Reads the ISO and plans every change for every target, refusing what would be
/// refused later (not a 22.04 live-server ISO, no room in grub.cfg, an existing output
/// without `force`). Writes nothing.
pub fn plan(iso: &Path, targets: &[Target], force: bool) -> Result<Planned> {
    for t in targets {
        refuse_existing(t.output, force)?;
    }
    let layout = |e: Box<dyn std::error::Error + Send + Sync>| ImageError::Layout {
        iso: iso.to_path_buf(),
        source: e,
    };
    let mut file = File::open(iso).with_context(|| format!("opening {}", iso.display()))?;
    let iso_len = file.metadata()?.len();
    let releases: Vec<&str> = targets
        .iter()
        .map(|t| t.identity.ubuntu_release.as_str())
        .collect();
    let found = IsoFiles::read(&mut file, iso, &releases)?;
    let mut images = Vec::with_capacity(targets.len());
    for t in targets {
        let menu = grub::render(&String::from_utf8_lossy(&found.grub_cfg), t.identity)?;
        let mut reader = iso9660::Iso::open(&mut file).map_err(|e| layout(e.into()))?;
        let mut patches = match reader.plan_replace(GRUB_CFG, menu.text.as_bytes()) {
            Ok(p) => p,
            Err(iso9660::IsoError::NoRoom { needed, room, .. }) => {
                return Err(ImageError::GrubNoRoom {
                    iso: iso.to_path_buf(),
                    needed,
                    room,
                }
                .into())
            }
            Err(e) => return Err(layout(e.into()).into()),
        };
        let grub_records = (patches.len() - 1) / 2;
        if let Some(fixed) = found
            .md5sum
            .as_deref()
            .and_then(|list| fix_md5_line(list, GRUB_CFG, menu.text.as_bytes()))
        {
            patches.extend(
                reader
                    .plan_replace(MD5SUM_TXT, &fixed)
                    .map_err(|e| layout(e.into()))?,
            );
        }
        let entries = cidata_entries(t)?;
        let size = cidata::volume_size(&entries, cidata::SEED_ROOM);
        let guid = gpt::guid_from(&serde_json::to_vec(t.identity)?);
        let appended = gpt::plan_append(&mut file, iso_len, size, cidata::LABEL, guid)
            .map_err(|e| layout(e.into()))?;
        patches.extend(appended.head.iter().cloned());
        patches.sort_by_key(|p| p.at);
        for pair in patches.windows(2) {
            assert!(
                pair[0].at + pair[0].bytes.len() as u64 <= pair[1].at,
                "planned ISO patches overlap"
            );
        }
        images.push(Changes {
            output: t.output.to_path_buf(),
            patches,
            menu,
            grub_records,
            appended,
            entries,
        });
    }
    Ok(Planned {
        iso: iso.to_path_buf(),
        iso_len,
        force,
        images,
    })
}

/// The ISO's files the plan reads, checked: a 22.04 live-server ISO whose UEFI menu
/// hands over to the one patched.
struct IsoFiles {
    grub_cfg: Vec<u8>,
    md5sum: Option<Vec<u8>>,
}

impl IsoFiles {
    /// `releases`: what the profile says the ISO is (the disk-safety rule followed it),
    /// checked against the ISO's own `/.disk/info` before anything else is read.
    fn read(file: &mut File, iso_path: &Path, releases: &[&str]) -> Result<IsoFiles> {
        let layout = |e: Box<dyn std::error::Error + Send + Sync>| ImageError::Layout {
            iso: iso_path.to_path_buf(),
            source: e,
        };
        let mut iso = iso9660::Iso::open(file).map_err(|e| layout(e.into()))?;
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
        let found = iso_release(&info);
        if let Some(profile) = releases.iter().find(|r| **r != found) {
            return Err(ImageError::OtherRelease {
                iso: iso_path.to_path_buf(),
                found: found.to_string(),
                profile: profile.to_string(),
            }
            .into());
        }
        let grub_cfg = iso
            .read_file(GRUB_CFG, 1 << 20)
            .map_err(|e| layout(e.into()))?;
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
        let md5sum = match iso.read_file(MD5SUM_TXT, 4 << 20) {
            Ok(list) => Some(list),
            Err(iso9660::IsoError::NotFound { .. }) => None,
            Err(e) => return Err(layout(e.into()).into()),
        };
        Ok(IsoFiles { grub_cfg, md5sum })
    }
}

/// The files on CIDATA but the seed: payload under its names, a SHA256SUMS per payload
/// folder, and the identity.
fn cidata_entries(t: &Target) -> Result<Vec<cidata::Entry>> {
    let mut entries = Vec::new();
    let mut sums: std::collections::BTreeMap<String, String> = Default::default();
    for p in t.payload {
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
    let mut identity = serde_json::to_vec_pretty(t.identity)?;
    identity.push(b'\n');
    entries.push(cidata::Entry {
        name: cidata::IDENTITY_FILE.into(),
        source: cidata::Source::Bytes(identity),
    });
    Ok(entries)
}

/// An image whose ISO part is written: the CIDATA volume is what is left.
pub struct Unfinished {
    changes: Changes,
    iso_len: u64,
    force: bool,
    tmp: tempfile::NamedTempFile,
    cloned: bool,
    hasher: sha2::Sha256,
}

impl Planned {
    /// The one pass over the ISO: every image's ISO part, into a temporary file next to
    /// its output. With `pin`, the ISO's SHA-256 is checked on the way and a mismatch
    /// leaves nothing behind, not even the folders this made.
    pub fn write_iso(
        self,
        pin: Option<&str>,
        progress: ProgressStyle,
        cancel: &AtomicBool,
    ) -> Result<Vec<Unfinished>> {
        let mut made_dirs = crate::fsutil::CreatedDirs::default();
        let mut tmps = Vec::with_capacity(self.images.len());
        let src =
            File::open(&self.iso).with_context(|| format!("opening {}", self.iso.display()))?;
        for c in &self.images {
            let dir = crate::fsutil::parent_dir(&c.output);
            made_dirs.create(dir)?;
            tmps.push(temporary_image(&c.output, &src)?);
        }
        let names: Vec<String> = self.images.iter().map(|c| file_name(&c.output)).collect();
        let meter = Meter::new(
            &format!("building {}", names.join(", ")),
            self.iso_len,
            progress,
        );
        let outputs: Vec<pass::Output> = self
            .images
            .iter()
            .zip(&tmps)
            .map(|(c, (tmp, cloned))| pass::Output {
                file: tmp.as_file(),
                cloned: *cloned,
                patches: &c.patches,
            })
            .collect();
        let copied = pass::copy(
            &self.iso,
            self.iso_len,
            pin.is_some(),
            &outputs,
            &|n| meter.inc(n),
            cancel,
        )?;
        drop(outputs);
        if let (Some(expected), Some(found)) = (pin, &copied.iso_sha256) {
            if found != expected {
                return Err(ImageError::IsoMismatch {
                    iso: self.iso.clone(),
                    found: found.clone(),
                    expected: expected.to_string(),
                }
                .into());
            }
        }
        meter.finish();
        made_dirs.keep();
        Ok(self
            .images
            .into_iter()
            .zip(tmps)
            .zip(copied.heads)
            .map(|((changes, (tmp, cloned)), hasher)| Unfinished {
                changes,
                iso_len: self.iso_len,
                force: self.force,
                tmp,
                cloned,
                hasher,
            })
            .collect())
    }
}

/// A temporary file next to `output`: a copy-on-write clone of the ISO where the
/// filesystem makes one (btrfs, XFS, APFS), else empty. Mode 0600 either way: the
/// image will hold secrets.
fn temporary_image(output: &Path, iso: &File) -> Result<(tempfile::NamedTempFile, bool)> {
    let dir = crate::fsutil::parent_dir(output);
    let prefix = format!(".{}.", file_name(output));
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".part");
    let cloned = builder.make_in(dir, |path| {
        reflink_copy::reflink_file_to_path(iso, path)?;
        crate::fsutil::set_mode(path, 0o600).map_err(std::io::Error::other)?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
    });
    match cloned {
        Ok(tmp) => Ok((tmp, true)),
        // No copy-on-write here (ext4, tmpfs, another filesystem than the ISO's): the
        // pass writes every byte.
        Err(_) => {
            let tmp = builder
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            Ok((tmp, false))
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Unfinished {
    /// The output this becomes.
    pub fn output(&self) -> &Path {
        &self.changes.output
    }

    /// Writes CIDATA (with `seed` at its root) and the backup GPT, completes the hash,
    /// syncs, and renames the image into place with its `.sha256` beside it.
    pub fn finish(
        self,
        seed: &[SeedFile],
        progress: ProgressStyle,
        cancel: &AtomicBool,
    ) -> Result<Built> {
        let Unfinished {
            changes: c,
            iso_len,
            force,
            tmp,
            cloned,
            mut hasher,
        } = self;
        let out_name = c.output.display();
        let a = &c.appended;
        let mut entries: Vec<cidata::Entry> = seed
            .iter()
            .map(|f| cidata::Entry {
                name: f.name.clone(),
                source: cidata::Source::Bytes(f.contents.clone()),
            })
            .collect();
        entries.extend(c.entries.iter().cloned());
        let needed = cidata::volume_size(&entries, 0);
        if needed > a.size {
            anyhow::bail!(
                "the seed of {out_name} needs {needed} bytes on CIDATA, more than the {} planned",
                a.size
            );
        }
        let out = tmp.as_file();
        out.set_len(a.image_len)
            .with_context(|| format!("growing {out_name}"))?;
        let payload: u64 = c.entries.iter().map(|e| e.len()).sum();
        let meter = Meter::new(
            &format!("writing CIDATA of {}", file_name(&c.output)),
            payload,
            progress,
        );
        cidata::write(out, a.start, a.size, &entries, &mut |n| {
            meter.inc(n);
            if cancel.load(Ordering::SeqCst) {
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
        let mut dst = out;
        for p in &a.tail {
            dst.seek(SeekFrom::Start(p.at))?;
            dst.write_all(&p.bytes)
                .with_context(|| format!("writing the backup GPT in {out_name}"))?;
        }
        meter.finish();

        // Hash what follows the ISO (padding, CIDATA, backup GPT) while the file syncs.
        std::thread::scope(|s| -> Result<()> {
            let syncing = s.spawn(|| out.sync_all());
            let mut reader =
                File::open(tmp.path()).with_context(|| format!("opening {out_name}"))?;
            reader.seek(SeekFrom::Start(iso_len))?;
            let mut buf = vec![0u8; 4 << 20];
            let mut left = a.image_len - iso_len;
            while left > 0 {
                let n = buf.len().min(left as usize);
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
        if cancel.load(Ordering::SeqCst) {
            return Err(ImageError::Interrupted.into());
        }
        let sha256 = hex::encode(hasher.finalize());
        if force {
            tmp.persist(&c.output)
                .with_context(|| format!("renaming into place {out_name}"))?;
        } else {
            tmp.persist_noclobber(&c.output)
                .map_err(|e| match e.error.kind() {
                    std::io::ErrorKind::AlreadyExists => {
                        anyhow::Error::new(ImageError::OutputExists(c.output.clone()))
                    }
                    _ => anyhow::Error::new(e.error)
                        .context(format!("renaming into place {out_name}")),
                })?;
        }
        let sha256_file = PathBuf::from(format!("{}.sha256", c.output.display()));
        let line = format!("{sha256}  {}\n", file_name(&c.output));
        if let Err(e) = crate::fsutil::write_atomic(&sha256_file, line.as_bytes(), 0o644) {
            let _ = std::fs::remove_file(&c.output);
            return Err(e);
        }
        Ok(Built {
            image: c.output.clone(),
            sha256,
            sha256_file,
            size: a.image_len,
            cidata_partition: a.number,
            boot_title: c.menu.title,
            kernel_line: c.menu.kernel_line,
            reinstall_title: c.menu.reinstall_title,
            grub_records: c.grub_records,
            cloned,
        })
    }
}

/// Builds `req.output` from the ISO, the seed and the payload: `plan`, `write_iso` and
/// `finish` for one image whose seed is known up front. Writes nothing under the final
/// names unless everything succeeded.
pub fn build(req: &BuildRequest) -> Result<Built> {
    let target = Target {
        output: req.output,
        identity: req.identity,
        payload: req.payload,
    };
    let planned = plan(req.iso, &[target], req.force)?;
    let mut images = planned.write_iso(None, req.progress, req.cancel)?;
    let image = images.pop().expect("one target, one image");
    image.finish(req.seed, req.progress, req.cancel)
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

#[cfg(test)]
mod tests {
    use super::*;

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
