//! The lock file beside the profile (`profiles/<cluster>.lock`), like Cargo.lock: the exact
//! bytes (SHA-256) every build of this profile uses. The ISO is pinned by the profile
//! itself; the K3s files are pinned by their release's checksum list, and the install
//! script, which has none, only by this file.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped only when an older chocoimg could not read the file any more.
pub const LOCK_FORMAT: u32 = 1;

const HEADER: &str = "\
# chocoimg lock file: the exact artifacts (by SHA-256) that builds of this profile use.
# Written by `chocoimg build`; commit it beside the profile, like Cargo.lock.
# A build refuses an artifact whose hash changed behind an unchanged version or URL.
# To accept such a change deliberately, delete that entry (or this whole file) and build
# again; then review the diff before committing it.
";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubuntu: Option<LockedIso>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<LockedK3s>,
}

impl Default for Lock {
    fn default() -> Self {
        Lock {
            format: LOCK_FORMAT,
            ubuntu: None,
            k3s: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedIso {
    pub release: String,
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedK3s {
    pub version: String,
    /// By release file name: `k3s`, `install.sh`, `k3s-airgap-images-amd64.tar.zst`.
    pub files: BTreeMap<String, LockedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub url: String,
    pub sha256: String,
}

impl Lock {
    /// Reads the lock file; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<Lock> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let lock: Lock = serde_yaml_ng::from_str(&text).map_err(|e| {
            crate::errors::BadInput(format!(
                "{} is not a chocoimg lock file: {e}; restore it from git, or delete it to record the artifacts afresh",
                path.display()
            ))
        })?;
        if lock.format != LOCK_FORMAT {
            return Err(crate::errors::BadInput(format!(
                "{} has lock format {}, this chocoimg reads format {LOCK_FORMAT}; use a matching chocoimg or delete the file to record the artifacts afresh",
                path.display(),
                lock.format
            ))
            .into());
        }
        Ok(lock)
    }

    /// The file's text: the header comment, then the YAML.
    pub fn to_text(&self) -> Result<String> {
        let yaml = serde_yaml_ng::to_string(self).context("serialising the lock file")?;
        Ok(format!("{HEADER}{yaml}"))
    }

    /// Writes the lock atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, self.to_text()?.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        let mut files = BTreeMap::new();
        files.insert(
            "k3s".to_string(),
            LockedFile {
                url: "https://example.invalid/v1%2Bk3s1/k3s".into(),
                sha256: "ab".repeat(32),
            },
        );
        Lock {
            format: LOCK_FORMAT,
            ubuntu: Some(LockedIso {
                release: "22.04.5".into(),
                url: "https://example.invalid/u.iso".into(),
                sha256: "cd".repeat(32),
            }),
            k3s: Some(LockedK3s {
                version: "v1.28.15+k3s1".into(),
                files,
            }),
        }
    }

    #[test]
    fn round_trips_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        sample().save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // The format, as people read it in a diff.
        let yaml: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let (ab, cd) = ("ab".repeat(32), "cd".repeat(32));
        assert_eq!(
            yaml,
            format!(
                "format: 1
ubuntu:
  release: 22.04.5
  url: https://example.invalid/u.iso
  sha256: {cd}
k3s:
  version: v1.28.15+k3s1
  files:
    k3s:
      url: https://example.invalid/v1%2Bk3s1/k3s
      sha256: {ab}
"
            )
        );
        assert!(text.starts_with("# chocoimg lock file"), "{text}");
        assert_eq!(Lock::load(&path).unwrap(), sample());
    }

    #[test]
    fn missing_file_is_empty_and_garbage_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        assert_eq!(Lock::load(&path).unwrap(), Lock::default());
        std::fs::write(&path, "format: 1\nsurprise: true\n").unwrap();
        let err = Lock::load(&path).unwrap_err();
        assert_eq!(
            crate::errors::exit_code_for(&err),
            crate::errors::EXIT_BAD_INPUT
        );
        assert!(format!("{err:#}").contains("delete it"), "{err:#}");
    }
}
