//! The cluster's CA as the laptop has seen it: the SHA-256 of what a verified server's
//! `/cacerts` served, kept beside the secrets in `out/<cluster>/cluster-ca.sha256`.
//!
//! Why: a server's browse window cannot tell "no cluster yet" from "the other servers
//! are off". Once the laptop has seen the cluster's CA (`discover`, `fetch-kubeconfig`),
//! every later build of a server carries it, never `cluster-init`s, and joins only a
//! member serving it: a re-flash can never start a second cluster. The record changes
//! only by `chocoimg build --new-cluster`, never silently.
//!
//! Only `mode: ha` keeps one. A single-server master1 starts a new cluster, with a new
//! CA, at every install by design, and no build reads the record: keeping one would make
//! the laptop refuse the cluster after each wipe and rebuild.
use crate::cluster::txt::is_sha256_hex;
use crate::errors::BadInput;
use crate::fsutil;
use crate::plan::Plan;
use crate::profile::Mode;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The record's file name inside `out/<cluster>/`.
pub const FILE_NAME: &str = "cluster-ca.sha256";

/// Far more than one line of 64 hex digits: a bigger file is the wrong file.
const MAX_BYTES: u64 = 4096;

/// What `record` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// There was no record: this CA is now the cluster's.
    New,
    /// The record already named this CA.
    Unchanged,
    /// A single-server cluster: no record is kept (see the module's comment).
    NotKept,
}

/// Whether this cluster keeps a CA record: only `mode: ha` does.
pub fn kept(plan: &Plan) -> bool {
    plan.mode == Mode::Ha
}

/// `out/<cluster>/cluster-ca.sha256`.
pub fn path(plan: &Plan) -> PathBuf {
    plan.out_dir.join(FILE_NAME)
}

/// The recorded CA hash, or None when the laptop has not seen the cluster yet (or the
/// cluster keeps no record).
pub fn load(plan: &Plan) -> Result<Option<String>> {
    if !kept(plan) {
        return Ok(None);
    }
    load_at(&path(plan))
}

/// Records `ca` (hex SHA-256 of `/cacerts`) as the cluster's CA. A different CA than the
/// recorded one is refused (bad input), never overwritten. Never creates the folder: it
/// holds the secrets the CA was verified with, so it exists unless it was removed.
pub fn record(plan: &Plan, ca: &str) -> Result<Recorded> {
    if !kept(plan) {
        return Ok(Recorded::NotKept);
    }
    record_at(&path(plan), ca)
}

/// Refuses `ca` (bad input, the record kept) when another CA is recorded: a server
/// serving it is not of the recorded cluster. Checked before anything is written.
pub fn check(plan: &Plan, ca: &str) -> Result<()> {
    let path = path(plan);
    match load(plan)? {
        Some(recorded) if recorded != ca => Err(BadInput(other_ca(&path, &recorded, ca)).into()),
        _ => Ok(()),
    }
}

/// What to tell the user once, when `record` made a new record.
pub fn recorded_note(plan: &Plan, ca: &str) -> String {
    format!(
        "recorded the cluster's CA (sha256 {ca}) in {}: later builds of servers join it, \
         never start a new cluster (after wiping every server, `chocoimg build \
         --new-cluster` forgets it)",
        path(plan).display()
    )
}

/// Removes the record (before a new cluster's first build); true when there was one.
pub fn forget(plan: &Plan) -> Result<bool> {
    forget_at(&path(plan))
}

fn load_at(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fsutil::read_small_file(path, MAX_BYTES).map_err(|e| BadInput(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let ca = text.trim();
    if !is_sha256_hex(ca) || ca.lines().count() != 1 {
        return Err(BadInput(format!(
            "{} is not a CA record (one line: the 64 lower-case hex digits of the SHA-256 of \
             the cluster's /cacerts); chocoimg leaves it as it is. Move it away and run \
             `chocoimg discover` while a server of the cluster is up to record it again, or, \
             for a new cluster after wiping every server, `chocoimg build --new-cluster`.",
            path.display()
        ))
        .into());
    }
    Ok(Some(ca.to_string()))
}

fn record_at(path: &Path, ca: &str) -> Result<Recorded> {
    anyhow::ensure!(
        is_sha256_hex(ca),
        "a CA hash must be 64 lower-case hex digits, not {ca:?}"
    );
    let dir = fsutil::parent_dir(path);
    anyhow::ensure!(
        dir.is_dir(),
        "{} does not exist, so the cluster's CA cannot be recorded beside its secrets",
        dir.display()
    );
    // Two commands recording at once must not both see "no record" with different CAs.
    let folder = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    folder
        .lock()
        .with_context(|| format!("locking {}", dir.display()))?;
    match load_at(path)? {
        Some(recorded) if recorded == ca => Ok(Recorded::Unchanged),
        Some(recorded) => Err(BadInput(other_ca(path, &recorded, ca)).into()),
        None => {
            fsutil::write_atomic(path, format!("{ca}\n").as_bytes(), 0o600)?;
            Ok(Recorded::New)
        }
    }
}

/// Why a server with a valid proof but another CA is not the cluster's, and the way out.
fn other_ca(path: &Path, recorded: &str, ca: &str) -> String {
    format!(
        "a server of this cluster (valid proof) serves CA sha256 {ca}, but this laptop \
         recorded the cluster's CA as {recorded} ({}). Another CA means a second cluster \
         (a server that started its own), or a cluster reinstalled from scratch; an impostor \
         cannot produce the proof. chocoimg keeps the record. If every server was wiped on \
         purpose and this is the new cluster, run `chocoimg build --new-cluster` (it forgets \
         the record) and re-flash every server; otherwise wipe and re-flash the server that \
         serves the other CA so it joins the recorded cluster.",
        path.display()
    )
}

fn forget_at(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{exit_code_for, EXIT_BAD_INPUT};
    use std::os::unix::fs::PermissionsExt;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn private_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c");
        fsutil::create_private_dir(&out).unwrap();
        let file = out.join(FILE_NAME);
        (dir, file)
    }

    #[test]
    fn recorded_once_private_and_reread() {
        let (_d, file) = private_dir();
        assert_eq!(load_at(&file).unwrap(), None);
        assert_eq!(record_at(&file, A).unwrap(), Recorded::New);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{A}\n"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_at(&file).unwrap().as_deref(), Some(A));
        assert_eq!(record_at(&file, A).unwrap(), Recorded::Unchanged);
        // No temporary file left beside it.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn another_ca_is_refused_and_the_record_kept() {
        let (_d, file) = private_dir();
        record_at(&file, A).unwrap();
        let err = record_at(&file, B).unwrap_err();
        assert_eq!(exit_code_for(&err), EXIT_BAD_INPUT);
        let msg = err.to_string();
        for part in [
            A,
            B,
            "--new-cluster",
            "second cluster",
            "reinstalled",
            FILE_NAME,
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        assert_eq!(load_at(&file).unwrap().as_deref(), Some(A));
    }

    #[test]
    fn forget_removes_and_then_a_new_ca_records() {
        let (_d, file) = private_dir();
        assert!(!forget_at(&file).unwrap());
        record_at(&file, A).unwrap();
        assert!(forget_at(&file).unwrap());
        assert_eq!(load_at(&file).unwrap(), None);
        assert_eq!(record_at(&file, B).unwrap(), Recorded::New);
    }

    #[test]
    fn malformed_records_are_bad_input_naming_the_file_and_kept() {
        let (_d, file) = private_dir();
        for bad in [
            String::new(),
            "xyz\n".into(),
            A.to_uppercase(),
            format!("{A}\n{B}\n"),
            A[1..].to_string(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let err = load_at(&file).unwrap_err();
            assert_eq!(exit_code_for(&err), EXIT_BAD_INPUT, "{bad:?}");
            assert!(err.to_string().contains(&file.display().to_string()));
            assert!(err.to_string().contains("chocoimg discover"));
            // Neither overwritten by a record.
            assert!(record_at(&file, A).is_err());
            assert_eq!(std::fs::read_to_string(&file).unwrap(), bad);
        }
        // A record without its final newline (edited by hand) still reads.
        std::fs::write(&file, A).unwrap();
        assert_eq!(load_at(&file).unwrap().as_deref(), Some(A));
    }

    #[test]
    fn never_creates_the_secrets_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gone").join(FILE_NAME);
        assert!(record_at(&file, A).is_err());
        assert!(!file.parent().unwrap().exists());
        assert!(record_at(&dir.path().join(FILE_NAME), "not-hex").is_err());
    }
}
