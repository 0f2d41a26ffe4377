//! Pinned artifacts: the Ubuntu ISO and the K3s release files, downloaded (resumable),
//! verified by SHA-256, cached by content under `out/cache/`, and recorded in the lock
//! file beside the profile.
//!
//! Trust comes from three places: the profile pins the ISO's SHA-256; the K3s release's
//! `sha256sum-amd64.txt` pins its binary and airgap images; the install script has no
//! published sum, so the lock file pins it (and re-pins everything else, so a re-tagged
//! release or a swapped mirror is refused, not silently used).
mod download;
pub mod lock;

pub use download::Cache;
pub use lock::{Lock, LockedFile, LockedIso, LockedK3s};

use crate::plan::{K3sPin, Plan};
use anyhow::{Context, Result};
use download::Source;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The K3s release's checksum list for amd64.
pub const K3S_SUMS: &str = "sha256sum-amd64.txt";
pub const K3S_BINARY: &str = "k3s";
pub const K3S_INSTALL_SCRIPT: &str = "install.sh";
pub const K3S_AIRGAP_IMAGES: &str = "k3s-airgap-images-amd64.tar.zst";
/// Folder on the CIDATA volume that holds the K3s payload.
pub const CIDATA_K3S_DIR: &str = "k3s";

/// A file to put on the CIDATA volume, next to the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Path on the CIDATA volume, `/`-separated, e.g. `k3s/k3s`.
    pub name: String,
    /// Where the verified bytes are on the laptop (usually in the cache).
    pub source: PathBuf,
    pub sha256: String,
}

/// How `fetch` gets its inputs.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// A local ISO to use instead of downloading (still checked against the pin).
    pub iso: Option<PathBuf>,
    /// Also fetch `k3s-airgap-images-amd64.tar.zst`.
    pub airgap: bool,
    /// Draw progress bars (a terminal); otherwise print plain lines.
    pub progress_bars: bool,
    /// Leave a local `--iso` unhashed: the caller hashes it on its own pass over the
    /// file (the image build does, while it copies it) and refuses it there.
    pub defer_iso_hash: bool,
}

/// Everything a build needs, verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The verified Ubuntu ISO (in the cache, or the `--iso` path).
    pub iso: PathBuf,
    pub iso_sha256: String,
    /// False for a local `--iso` whose hash is left to the caller (`defer_iso_hash`):
    /// it must be checked against `iso_sha256` before it is used.
    pub iso_verified: bool,
    /// The K3s files for the stick, named as they go on CIDATA (`k3s/k3s`,
    /// `k3s/install.sh`, optionally `k3s/k3s-airgap-images-amd64.tar.zst`).
    pub payload: Vec<PayloadFile>,
}

/// Whether a hash that differs from the lock file is refused (every build) or accepted
/// and recorded (a deliberate update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    #[default]
    Enforce,
    Update,
}

/// Downloads (or takes from the cache) and verifies every pinned artifact, enforcing and
/// updating the lock file beside the profile.
pub fn fetch(plan: &Plan, opts: &FetchOptions) -> Result<Fetched> {
    fetch_with(plan, opts, LockMode::Enforce)
}

/// The install script URL with `{version}` replaced by the pinned K3s version (`+` as
/// `%2B`, as in GitHub paths); a URL without `{version}` is used as written.
pub fn install_script_url(k3s: &K3sPin) -> String {
    k3s.install_script_url
        .replace("{version}", &k3s.version_in_url())
}

/// `fetch`, with the lock file either enforced or updated to what is fetched now.
pub fn fetch_with(plan: &Plan, opts: &FetchOptions, mode: LockMode) -> Result<Fetched> {
    let (fetched, lock) = fetch_unsaved(plan, opts, mode)?;
    lock.save()?;
    Ok(fetched)
}

/// The lock file as `fetch_unsaved` found it should be, not yet written.
#[derive(Debug)]
pub struct PendingLock {
    path: PathBuf,
    /// `None` when the lock on disk already says this.
    new: Option<Lock>,
    /// Lock changes to report once it is saved.
    notes: Vec<String>,
}

impl PendingLock {
    /// Writes the lock file (if it changed) and reports what changed.
    pub fn save(self) -> Result<()> {
        if let Some(lock) = &self.new {
            lock.save(&self.path)?;
        }
        for note in &self.notes {
            eprintln!("{note}");
        }
        Ok(())
    }
}

/// `fetch_with` without writing the lock file: a caller that still has checks to make
/// (e.g. `build`, on the ISO's layout) saves it only once they pass.
pub fn fetch_unsaved(
    plan: &Plan,
    opts: &FetchOptions,
    mode: LockMode,
) -> Result<(Fetched, PendingLock)> {
    let old = Lock::load(&plan.lock_path)?;
    let mut run = Fetch {
        plan,
        opts,
        mode,
        cache: Cache::new(&plan.cache_dir),
        notes: Vec::new(),
        sums: None,
    };

    // Phase one: the lock against the profile, and a local --iso, before any download.
    let ub = &plan.ubuntu;
    match &old.ubuntu {
        Some(l) if l.release == ub.release && l.sha256 != ub.iso_sha256 => {
            run.lock_mismatch(LockRefusal {
                label: format!("Ubuntu {} ISO", ub.release),
                what: format!(
                    "the profile's ubuntu.iso_sha256 is now {} while ubuntu.release is still {}",
                    ub.iso_sha256, ub.release
                ),
                old: l.sha256.clone(),
                new: ub.iso_sha256.clone(),
                entry: "the `ubuntu:` entry".into(),
            })?
        }
        Some(l) if l.release != ub.release => run.notes.push(format!(
            "lock: Ubuntu release {} -> {}, recording the new ISO",
            l.release, ub.release
        )),
        _ => {}
    }
    let local_iso = match &opts.iso {
        Some(path) => Some(check_local_iso(plan, path, !opts.defer_iso_hash)?),
        None => None,
    };

    // Phase two: the K3s files (small), then the ISO (large).
    let k3s = &plan.k3s;
    let same_version = old.k3s.as_ref().filter(|k| k.version == k3s.version);
    if let (Some(prev), None) = (&old.k3s, same_version) {
        run.notes.push(format!(
            "lock: K3s version {} -> {}, recording the new release's files",
            prev.version, k3s.version
        ));
    }
    // Files not fetched this time (airgap off) keep their pins for the next time.
    let mut locked_files = same_version.map(|k| k.files.clone()).unwrap_or_default();
    let mut names = vec![K3S_BINARY, K3S_INSTALL_SCRIPT];
    if opts.airgap || k3s.airgap {
        names.push(K3S_AIRGAP_IMAGES);
    }
    let mut payload = Vec::new();
    for name in names {
        let prev = same_version.and_then(|k| k.files.get(name));
        let (file, locked) = run.k3s_file(name, prev)?;
        locked_files.insert(name.to_string(), locked);
        payload.push(file);
    }

    let iso = match local_iso {
        Some(path) => path,
        None => {
            let label = format!("Ubuntu {} ISO", ub.release);
            let src = Source {
                url: &ub.iso_url,
                label: &label,
                hint: "ubuntu.iso_url (and ubuntu.release)",
                url_key: "ubuntu.iso_url",
            };
            obtain(
                &run.cache,
                &src,
                &ub.iso_sha256,
                "the profile's ubuntu.iso_sha256",
                opts.progress_bars,
            )?
        }
    };

    let new = Lock {
        format: lock::LOCK_FORMAT,
        ubuntu: Some(LockedIso {
            release: ub.release.clone(),
            url: ub.iso_url.clone(),
            sha256: ub.iso_sha256.clone(),
        }),
        k3s: Some(LockedK3s {
            version: k3s.version.clone(),
            files: locked_files,
        }),
    };
    let changed = new != old;
    if changed {
        run.notes.push(if old == Lock::default() {
            format!(
                "lock: recorded the artifacts in {} (commit it beside the profile)",
                plan.lock_path.display()
            )
        } else {
            format!("lock: updated {}", plan.lock_path.display())
        });
    }
    let fetched = Fetched {
        iso,
        iso_sha256: ub.iso_sha256.clone(),
        iso_verified: opts.iso.is_none() || !opts.defer_iso_hash,
        payload,
    };
    let pending = PendingLock {
        path: plan.lock_path.clone(),
        new: changed.then_some(new),
        notes: run.notes,
    };
    Ok((fetched, pending))
}

/// One `fetch` in progress: what it needs across files.
struct Fetch<'a> {
    plan: &'a Plan,
    opts: &'a FetchOptions,
    mode: LockMode,
    cache: Cache,
    /// Lock changes to report at the end.
    notes: Vec<String>,
    /// The release's checksum list, fetched once when first needed.
    sums: Option<BTreeMap<String, String>>,
}

const RELEASE_HINT: &str = "k3s.version / the mirror (k3s.release_base_url)";
const RELEASE_KEY: &str = "k3s.release_base_url";

impl Fetch<'_> {
    /// Refused when enforcing; recorded (and reported) when updating the lock.
    fn lock_mismatch(&mut self, refusal: LockRefusal) -> Result<()> {
        match self.mode {
            LockMode::Enforce => Err(refusal.into_error(&self.plan.lock_path)),
            LockMode::Update => {
                self.notes.push(format!(
                    "lock: accepted a changed {}: {} -> {}",
                    refusal.label, refusal.old, refusal.new
                ));
                Ok(())
            }
        }
    }

    /// The SHA-256 the release's `sha256sum-amd64.txt` lists for `name`.
    fn published_sha256(&mut self, name: &str) -> Result<String> {
        let k3s = &self.plan.k3s;
        let sums_url = k3s.release_url(K3S_SUMS);
        if self.sums.is_none() {
            let text = download::fetch_text(&Source {
                url: &sums_url,
                label: &format!("K3s {} checksum list", k3s.version),
                hint: RELEASE_HINT,
                url_key: RELEASE_KEY,
            })?;
            self.sums = Some(parse_sha256sums(&text));
        }
        let listed = self.sums.as_ref().and_then(|s| s.get(name)).cloned();
        listed.ok_or_else(|| {
            crate::errors::BadInput(format!(
                "{sums_url} lists no `{name}`; check {RELEASE_HINT}"
            ))
            .into()
        })
    }

    /// One K3s file, verified, and its new lock entry. `prev` is the lock's entry for the
    /// same K3s version.
    fn k3s_file(
        &mut self,
        name: &str,
        prev: Option<&LockedFile>,
    ) -> Result<(PayloadFile, LockedFile)> {
        let k3s = &self.plan.k3s;
        let published = name != K3S_INSTALL_SCRIPT;
        let (url, label, hint, url_key) = match name {
            K3S_INSTALL_SCRIPT => (
                install_script_url(k3s),
                format!("K3s {} install script", k3s.version),
                "k3s.install_script_url",
                "k3s.install_script_url",
            ),
            K3S_BINARY => (
                k3s.release_url(name),
                format!("K3s {} binary", k3s.version),
                RELEASE_HINT,
                RELEASE_KEY,
            ),
            _ => (
                k3s.release_url(name),
                format!("K3s {} airgap images", k3s.version),
                RELEASE_HINT,
                RELEASE_KEY,
            ),
        };
        let src = Source {
            url: &url,
            label: &label,
            hint,
            url_key,
        };
        // A release file keeps its hash on any mirror; the script is pinned by its URL
        // (a different URL is a different script).
        let locked = prev.filter(|l| published || l.url == url);
        if let (Some(p), None) = (prev, locked) {
            self.notes.push(format!(
                "lock: {label} URL {} -> {url}, recording the new script's hash",
                p.url
            ));
        }
        let entry = format!("the `{name}` entry under `k3s.files`");

        let cached = match locked {
            Some(l) => self.cache.get(&l.sha256)?.map(|p| (p, l.sha256.clone())),
            None => None,
        };
        let (source, sha256) = match cached {
            Some(hit) => {
                eprintln!("using the cached {label} (SHA-256 checked)");
                hit
            }
            None if published => {
                let listed = self.published_sha256(name)?;
                if let Some(l) = locked.filter(|l| l.sha256 != listed) {
                    self.lock_mismatch(LockRefusal {
                        label: label.clone(),
                        what: format!(
                            "the release's {K3S_SUMS} ({}) now lists {listed} for `{name}`, for the same version {}",
                            k3s.release_url(K3S_SUMS),
                            k3s.version
                        ),
                        old: l.sha256.clone(),
                        new: listed.clone(),
                        entry,
                    })?;
                }
                let from = k3s.release_url(K3S_SUMS);
                let path = obtain(&self.cache, &src, &listed, &from, self.opts.progress_bars)?;
                (path, listed)
            }
            None => {
                // No published sum: the lock is the only pin.
                let got = download::download(&self.cache, &src, self.opts.progress_bars)?;
                if let Some(l) = locked.filter(|l| l.sha256 != got.sha256) {
                    let refusal = LockRefusal {
                        label: label.clone(),
                        what: format!("{url} now serves different bytes, at the same URL"),
                        old: l.sha256.clone(),
                        new: got.sha256.clone(),
                        entry,
                    };
                    if self.mode == LockMode::Enforce {
                        download::remove_if_exists(&got.partial)?;
                    }
                    self.lock_mismatch(refusal)?;
                }
                let path = self.cache.insert(&got.partial, &got.sha256)?;
                (path, got.sha256)
            }
        };
        Ok((
            PayloadFile {
                name: format!("{CIDATA_K3S_DIR}/{name}"),
                source,
                sha256: sha256.clone(),
            },
            LockedFile { url, sha256 },
        ))
    }
}

/// The file with `expected` hash: from the cache, or downloaded and checked. A wrong
/// download is deleted, so nothing bad stays behind.
fn obtain(
    cache: &Cache,
    src: &Source,
    expected: &str,
    expected_from: &str,
    progress_bars: bool,
) -> Result<PathBuf> {
    if let Some(hit) = cache.get(expected)? {
        eprintln!("using the cached {} (SHA-256 checked)", src.label);
        return Ok(hit);
    }
    let mut got = download::download(cache, src, progress_bars)?;
    if got.sha256 != expected && got.resumed {
        // The file may have changed between the two parts: one clean try from the start.
        eprintln!(
            "{} does not match after resuming; downloading it again from the start",
            src.label
        );
        download::remove_if_exists(&got.partial)?;
        got = download::download(cache, src, progress_bars)?;
    }
    if got.sha256 != expected {
        download::remove_if_exists(&got.partial)?;
        return Err(crate::errors::BadInput(format!(
            "refusing {} from {}: its SHA-256 is {}, but {} says {}; nothing was kept. \
             A wrong mirror or a damaged download: check {}, then build again",
            src.label, src.url, got.sha256, expected_from, expected, src.hint
        ))
        .into());
    }
    cache.insert(&got.partial, &got.sha256)
}

/// `--iso PATH` checked against the profile's pin: for a caller that deferred the hash
/// (`defer_iso_hash`) and must still refuse a wrong ISO before anything else.
pub fn verify_local_iso(plan: &Plan, path: &Path) -> Result<PathBuf> {
    check_local_iso(plan, path, true)
}

/// `--iso PATH`: used in place when it is the pinned ISO; hashed here unless `hash` is
/// false (the caller hashes it on its own pass and refuses it with `wrong_local_iso`).
fn check_local_iso(plan: &Plan, path: &Path, hash: bool) -> Result<PathBuf> {
    let ub = &plan.ubuntu;
    if !path.is_file() {
        return Err(crate::errors::BadInput(format!(
            "--iso {}: no such file; pass the downloaded ISO, or drop --iso to let chocoimg download {}",
            path.display(),
            ub.iso_url
        ))
        .into());
    }
    if hash {
        eprintln!("checking {} (SHA-256)", path.display());
        let sha = crate::fsutil::sha256_file(path)
            .with_context(|| format!("hashing --iso {}", path.display()))?;
        if sha != ub.iso_sha256 {
            return Err(wrong_local_iso(plan, path, &sha));
        }
    }
    Ok(path.to_path_buf())
}

/// The refusal of an `--iso` whose SHA-256 is `found`, not the profile's pin.
pub fn wrong_local_iso(plan: &Plan, path: &Path, found: &str) -> anyhow::Error {
    let ub = &plan.ubuntu;
    crate::errors::BadInput(format!(
        "--iso {} is not the pinned Ubuntu {} ISO: its SHA-256 is {found}, the profile pins {} (ubuntu.iso_sha256). \
         The right one is at {}; or drop --iso to let chocoimg download it",
        path.display(),
        ub.release,
        ub.iso_sha256,
        ub.iso_url
    ))
    .into()
}

/// A hash that differs from the lock file's record.
struct LockRefusal {
    label: String,
    /// What changed, in a sentence.
    what: String,
    old: String,
    new: String,
    /// Which lock entry to delete to accept it.
    entry: String,
}

impl LockRefusal {
    fn into_error(self, lock_path: &Path) -> anyhow::Error {
        let lock = lock_path.display();
        crate::errors::BadInput(format!(
            "refusing the {label}: {what}.\n  \
             locked: {old} (in {lock})\n  \
             now:    {new}\n\
             Pinned artifacts must not change behind an unchanged version or URL. If you \
             trust this change, accept it deliberately: delete {entry} in {lock} (or the \
             whole file), build again, and review the lock file's diff before committing it.",
            label = self.label,
            what = self.what,
            old = self.old,
            new = self.new,
            entry = self.entry,
        ))
        .into()
    }
}

/// `<hex>  <name>` lines (`sha256sum` output; a `*` before the name means binary mode).
pub fn parse_sha256sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (hex, name) = line.trim().split_once(char::is_whitespace)?;
            let name = name.trim_start().trim_start_matches('*');
            let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| (name.to_string(), hex.to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_lines_parse() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = format!("{a}  k3s\n{b} *k3s-airgap-images-amd64.tar.zst\nnot a line\n\n");
        let sums = parse_sha256sums(&text);
        assert_eq!(sums.get("k3s"), Some(&a));
        assert_eq!(
            sums.get("k3s-airgap-images-amd64.tar.zst"),
            Some(&"b".repeat(64))
        );
        assert_eq!(sums.len(), 2);
    }

    #[test]
    fn install_script_url_takes_the_version() {
        let mut pin = K3sPin {
            version: "v1.28.15+k3s1".into(),
            server: Default::default(),
            agent: Default::default(),
            airgap: false,
            release_base_url: "https://github.com/k3s-io/k3s/releases/download".into(),
            install_script_url: "https://raw.githubusercontent.com/k3s-io/k3s/{version}/install.sh"
                .into(),
        };
        assert_eq!(
            install_script_url(&pin),
            "https://raw.githubusercontent.com/k3s-io/k3s/v1.28.15%2Bk3s1/install.sh"
        );
        pin.install_script_url = "https://get.k3s.io".into();
        assert_eq!(install_script_url(&pin), "https://get.k3s.io");
    }
}
