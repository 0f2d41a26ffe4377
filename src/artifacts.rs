//! Pinned artifacts: the Ubuntu ISO and the K3s release files, downloaded (resumable),
//! verified by SHA-256, cached by content under `out/cache/`, and recorded in the lock
//! file beside the profile.
use std::path::PathBuf;

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
}

/// Everything a build needs, verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The verified Ubuntu ISO (in the cache, or the `--iso` path).
    pub iso: PathBuf,
    pub iso_sha256: String,
    /// The K3s files for the stick, named as they go on CIDATA (`k3s/k3s`,
    /// `k3s/install.sh`, optionally `k3s/k3s-airgap-images-amd64.tar.zst`).
    pub payload: Vec<PayloadFile>,
}

/// Downloads (or takes from the cache) and verifies every pinned artifact, enforcing and
/// updating the lock file beside the profile.
pub fn fetch(plan: &crate::plan::Plan, opts: &FetchOptions) -> anyhow::Result<Fetched> {
    let _ = (plan, opts);
    anyhow::bail!("artifact fetching is not written yet")
}
