//! The cluster's secrets: created once on the laptop, kept in `out/<cluster>/secrets.yaml`
//! (mode 0600), reused by every later build. They never reach git, logs or the terminal.
use crate::errors::BadInput;
use crate::fsutil;
use anyhow::{Context, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// master1's K3s `token`: full admin power; never leaves master1's image.
    pub server_token: String,
    /// master1's K3s `agent-token`: the only K3s secret an agent gets. Also the key of
    /// the mDNS announcement proof.
    pub agent_token: String,
    /// The admin user's console password (SSH is key-only).
    pub admin_password: String,
    /// SHA-512 crypt of `admin_password`, for autoinstall's `identity.password`.
    pub admin_password_hash: String,
    /// Per-node SSH host keys, so the laptop knows them before first contact.
    pub host_keys: BTreeMap<String, HostKey>,
    /// Wi-Fi passwords by SSID, added by hand when a node uses Wi-Fi.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wifi_passwords: BTreeMap<String, String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostKey {
    /// OpenSSH private key (PEM-like `-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private: String,
    /// `ssh-ed25519 AAAA... root@<node>`.
    pub public: String,
}

// Secrets must never be printed by accident, not even in a debug log.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { <hidden> }")
    }
}
impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostKey {{ public: {:?}, private: <hidden> }}",
            self.public
        )
    }
}

const HEADER: &str = "# chocoimg cluster secrets. Private: mode 0600, never commit, never share.\n# The USB images built from this file carry some of these values.\n";

/// The file's last line. A file without it was cut short (or written before it existed):
/// its missing host keys must never be silently made anew.
pub const END_MARKER: &str = "# end of chocoimg secrets: keep this line last";

/// More than any cluster's secrets file holds: a bigger one is the wrong file.
const MAX_BYTES: u64 = 1 << 20;

impl Secrets {
    fn generate(nodes: &[&str]) -> Result<Secrets> {
        let admin_password = random_hex(16);
        let mut s = Secrets {
            server_token: random_hex(32),
            agent_token: random_hex(32),
            admin_password_hash: sha512_crypt(&admin_password)?,
            admin_password,
            host_keys: BTreeMap::new(),
            wifi_passwords: BTreeMap::new(),
        };
        s.add_missing_host_keys(nodes)?;
        Ok(s)
    }

    /// Adds a host key for every node that has none yet; returns those nodes.
    fn add_missing_host_keys(&mut self, nodes: &[&str]) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for node in nodes {
            if !self.host_keys.contains_key(*node) {
                self.host_keys
                    .insert(node.to_string(), HostKey::generate(node)?);
                added.push(node.to_string());
            }
        }
        Ok(added)
    }

    pub fn host_key(&self, node: &str) -> Result<&HostKey> {
        self.host_keys
            .get(node)
            .with_context(|| format!("the secrets file has no SSH host key for {node}; run `chocoimg render --node {node}` to add it"))
    }

    /// Every secret value, for masking in snapshots and for "never leaked" checks.
    pub fn values(&self) -> Vec<&str> {
        let mut v = vec![
            self.server_token.as_str(),
            self.agent_token.as_str(),
            self.admin_password.as_str(),
        ];
        v.extend(self.host_keys.values().map(|k| k.private.as_str()));
        v.extend(self.wifi_passwords.values().map(String::as_str));
        v
    }

    /// Why these values cannot be the ones chocoimg wrote (a cut or mangled file), naming
    /// the field but never quoting it.
    fn damage(&self) -> Option<String> {
        let hex64 = |v: &str| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&self.server_token) {
            return Some("server_token is not 64 hex digits".into());
        }
        if !hex64(&self.agent_token) {
            return Some("agent_token is not 64 hex digits".into());
        }
        if !verify_password(&self.admin_password, &self.admin_password_hash) {
            return Some("admin_password_hash is not the hash of admin_password".into());
        }
        for (node, key) in &self.host_keys {
            let Ok(private) = ssh_key::PrivateKey::from_openssh(&key.private) else {
                return Some(format!(
                    "the private host key of {node} is not an OpenSSH key"
                ));
            };
            let matches = ssh_key::PublicKey::from_openssh(key.public.trim())
                .is_ok_and(|public| public.key_data() == private.public_key().key_data());
            if !matches {
                return Some(format!(
                    "the public host key of {node} is not the one of its private key"
                ));
            }
        }
        None
    }
}

impl HostKey {
    fn generate(node: &str) -> Result<HostKey> {
        let (private, public) =
            ed25519_pair(&format!("root@{node}")).context("making an SSH host key")?;
        Ok(HostKey { private, public })
    }
}

/// A new ed25519 key pair in OpenSSH encoding: (private key, `ssh-ed25519 AAAA... comment`).
fn ed25519_pair(comment: &str) -> Result<(String, String)> {
    let mut key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .context("generating an ed25519 key")?;
    key.set_comment(comment);
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .context("encoding the private key")?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the public key")?;
    Ok((private, public))
}

/// The cluster's secrets, and what `load_or_create` had to do to have them.
#[derive(Debug)]
pub struct Loaded {
    pub secrets: Secrets,
    /// The file did not exist: a new cluster identity.
    pub created: bool,
    /// Nodes new in the profile, given a new host key.
    pub new_host_keys: Vec<String>,
}

/// Loads the cluster's secrets, creating the file on first use and adding host keys for
/// nodes new to the profile. Existing values are never changed, and a file that is not
/// complete and valid is refused, never rewritten. Exclusive: two processes starting
/// together make one identity, and the second reads the first's (a lock on the folder).
pub fn load_or_create(path: &Path, nodes: &[&str]) -> Result<Loaded> {
    let dir = fsutil::parent_dir(path);
    fsutil::create_private_dir(dir)?;
    let folder = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    folder
        .lock()
        .with_context(|| format!("locking {}", dir.display()))?;
    if path.exists() {
        let mut secrets = load(path)?;
        let new_host_keys = secrets.add_missing_host_keys(nodes)?;
        if !new_host_keys.is_empty() {
            save(path, &secrets)?;
        }
        return Ok(Loaded {
            secrets,
            created: false,
            new_host_keys,
        });
    }
    let secrets = Secrets::generate(nodes)?;
    save(path, &secrets)?;
    Ok(Loaded {
        secrets,
        created: true,
        new_host_keys: Vec::new(),
    })
}

/// Loads an existing secrets file; refuses one that others can read, one cut short (no
/// end marker) and one whose values are not what chocoimg writes. Bad input (exit 2):
/// the file must be restored by hand; it is never rewritten in that state.
pub fn load(path: &Path) -> Result<Secrets> {
    check_private(path)?;
    let bad = |why: String| -> anyhow::Error {
        BadInput(format!(
            "{} {why}; restore it from a backup, or move it away to start a new cluster \
             identity (nodes built from it then need new images). chocoimg leaves it as it is.",
            path.display()
        ))
        .into()
    };
    let bytes = fsutil::read_small_file(path, MAX_BYTES).map_err(|e| BadInput(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text".into()))?;
    let body = match text.strip_suffix(&format!("{END_MARKER}\n")) {
        Some(body) => body,
        None if text.contains(END_MARKER) => {
            return Err(bad(format!(
                "has text after its end marker line ({END_MARKER:?}), which must stay last; \
                 move what was added (e.g. wifi_passwords) above it"
            )))
        }
        None => return Err(unmarked(path, &text)),
    };
    // Parse errors must not quote the file: it is full of secrets.
    let secrets: Secrets = serde_yaml_ng::from_str(body).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}", l.line()))
            .unwrap_or_default();
        bad(format!("is not a valid secrets file{at}"))
    })?;
    if let Some(why) = secrets.damage() {
        return Err(bad(format!("is damaged: {why}")));
    }
    Ok(secrets)
}

/// A file without the end marker: cut short, or written before the marker existed. Only
/// its owner can tell; the message says how to check and the one line that marks it.
fn unmarked(path: &Path, text: &str) -> anyhow::Error {
    let nodes: Vec<String> = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("host_keys")?.as_mapping().map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default();
    let quoted = path.display().to_string().replace('\'', "'\\''");
    BadInput(format!(
        "{} has no end marker, so it may have been cut short (or an older chocoimg wrote \
         it); chocoimg will not use or rewrite it. It holds host keys for: {}. If those are \
         all the nodes you have built images for and the file ends with a complete \
         `public:` line, mark it as checked:\n  $ echo '{END_MARKER}' >> '{quoted}'\nelse \
         restore it from a backup.",
        path.display(),
        if nodes.is_empty() {
            "no node".to_string()
        } else {
            nodes.join(", ")
        },
    ))
    .into()
}

fn save(path: &Path, secrets: &Secrets) -> Result<()> {
    let body = serde_yaml_ng::to_string(secrets).context("encoding the secrets")?;
    fsutil::write_atomic(
        path,
        format!("{HEADER}{body}{END_MARKER}\n").as_bytes(),
        0o600,
    )
}

/// A Wi-Fi password from the secrets file: None when the file or the SSID's entry does
/// not exist; an error saying what is wrong with a file that cannot be used.
/// Read-only: used while checking a profile.
pub fn wifi_password(path: &Path, ssid: &str) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(load(path)?.wifi_passwords.get(ssid).cloned())
}

fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(BadInput(format!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}` and rotate the secrets if others may have read it",
                path.display(),
                mode & 0o777,
                path.display()
            ))
            .into());
        }
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// SHA-512 crypt, `$6$<16-character salt>$<hash>`: the form `mkpasswd -m sha-512` and
/// `openssl passwd -6` print. sha-crypt 0.6 spells out the default `rounds=5000$`; it is
/// dropped (crypt(3) reads its absence as 5000) so new hashes look like the old ones.
fn sha512_crypt(password: &str) -> Result<String> {
    use sha_crypt::PasswordHasher;
    let mut salt = [0u8; 12]; // 16 characters of crypt's base64
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let hash = sha_crypt::ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?
        .to_string();
    let default_rounds = format!("$6$rounds={}$", sha_crypt::Params::RECOMMENDED_ROUNDS);
    Ok(match hash.strip_prefix(&default_rounds) {
        Some(rest) => format!("$6${rest}"),
        None => hash,
    })
}

/// Whether `password` matches a SHA-512 crypt `hash` (either spelling of the rounds).
fn verify_password(password: &str, hash: &str) -> bool {
    use sha_crypt::PasswordVerifier;
    sha_crypt::ShaCrypt::SHA512
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Creates an SSH key pair at `private_path` (and `.pub` beside it) unless both exist;
/// returns whether it did. For the cluster's own admin key when the laptop had none.
pub fn ensure_key_pair(private_path: &Path, comment: &str) -> Result<bool> {
    let pub_path = private_path.with_extension("pub");
    if private_path.exists() && pub_path.exists() {
        return Ok(false);
    }
    let (private, public) = ed25519_pair(comment).context("making the cluster's SSH key")?;
    fsutil::write_atomic(private_path, private.as_bytes(), 0o600)?;
    fsutil::write_atomic(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/secrets.yaml");
        let a = load_or_create(&path, &["master1"]).unwrap();
        assert!(a.created);
        let a = a.secrets;
        let b = load_or_create(&path, &["master1", "nodo1"]).unwrap();
        assert!(!b.created);
        assert_eq!(b.new_host_keys, ["nodo1"]);
        let b = b.secrets;
        assert_eq!(a.server_token, b.server_token);
        assert_eq!(a.host_keys["master1"], b.host_keys["master1"]);
        assert!(b.host_keys.contains_key("nodo1"));
        assert!(verify_password(&a.admin_password, &a.admin_password_hash));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{a:?}").contains(&a.server_token));
    }

    /// Hashes made before sha-crypt 0.6 (and by `openssl passwd -6`) still verify, and new
    /// ones keep their shape: `$6$`, a 16-character salt, `$`, 86 characters.
    #[test]
    fn password_hashes_keep_their_format() {
        let openssl = "$6$0123456789abcdef$.O.Ky7ljl0jLttFJO/5NjXN.XJQMRnCU.mDwNnqVK.LsmTqI6dybDsrPf1Ei4Sq.522kr0kvLHSQyylxJmU9./";
        assert!(verify_password("hunter2-chocoimg", openssl));
        assert!(!verify_password("hunter3-chocoimg", openssl));
        let new = sha512_crypt("hunter2-chocoimg").unwrap();
        let fields: Vec<&str> = new.split('$').collect();
        assert_eq!(fields[..2], ["", "6"], "{new}");
        assert_eq!(
            (fields.len(), fields[2].len(), fields[3].len()),
            (4, 16, 86),
            "{new}"
        );
        assert!(verify_password("hunter2-chocoimg", &new));
    }
}
