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
