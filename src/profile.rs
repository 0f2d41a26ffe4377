//! The cluster profile: the YAML model of the seed's entities (Cluster, its nodes, the
//! K3s pin, the Ubuntu ISO, the Eero network, SSH access), and its checks.
//!
//! Parsing is phase one of two: `load` reads the file and reports every problem it can
//! find at once; `plan::resolve` turns a clean profile into the checked plan.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The Eero mesh LAN's defaults for `network.kind: eero-flat`.
pub const EERO_SUBNET: &str = "192.168.4.0/24";
pub const EERO_GATEWAY: &str = "192.168.4.1";

/// The profile a fresh checkout ships with, used when no other is named.
pub const DEFAULT_PROFILE: &str = "profiles/chocolandiadc-mvp.yaml";

pub const DEFAULT_K3S_VERSION: &str = "v1.28.15+k3s1";
pub const DEFAULT_UBUNTU_RELEASE: &str = "22.04.5";
pub const DEFAULT_ISO_URL: &str =
    "https://releases.ubuntu.com/22.04.5/ubuntu-22.04.5-live-server-amd64.iso";
pub const DEFAULT_ISO_SHA256: &str =
    "9bc6028870aef3f74f4e16b900008179e78b130e6b0b9a140635434a46aa98b0";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Profile {
    pub cluster: ClusterSpec,
    #[serde(default)]
    pub k3s: K3sSpec,
    #[serde(default)]
    pub ubuntu: UbuntuSpec,
    #[serde(default)]
    pub network: NetworkSpec,
    pub ssh: SshSpec,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClusterSpec {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub datastore: Datastore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    SingleServer,
    /// An odd number (>= 3) of servers with embedded etcd (the seed's feature 001). Checked
    /// by the plan; images are not built until the split-brain-safe bootstrap exists.
    Ha,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datastore {
    #[default]
    Sqlite,
    Etcd,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct K3sSpec {
    #[serde(default = "default_k3s_version")]
    pub version: String,
    #[serde(default)]
    pub server: RoleSettings,
    #[serde(default)]
    pub agent: RoleSettings,
    /// Also carry `k3s-airgap-images-amd64.tar.zst`, so K3s starts without pulling images.
    #[serde(default)]
    pub airgap: bool,
    /// Where release files come from: `<base>/<version>/k3s`. For mirrors and tests.
    #[serde(default = "default_k3s_release_base")]
    pub release_base_url: String,
    #[serde(default = "default_install_script_url")]
    pub install_script_url: String,
}

impl Default for K3sSpec {
    fn default() -> Self {
        K3sSpec {
            version: default_k3s_version(),
            server: RoleSettings::default(),
            agent: RoleSettings::default(),
            airgap: false,
            release_base_url: default_k3s_release_base(),
            install_script_url: default_install_script_url(),
        }
    }
}

/// K3s settings shared by every node of one role.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RoleSettings {
    /// Packaged components to disable (`disable:` in config.yaml), e.g. traefik.
    #[serde(default)]
    pub disable: Vec<String>,
    /// `key=value` labels for every node of this role.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Extra keys copied verbatim into K3s's config.yaml (any K3s CLI flag, without `--`).
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UbuntuSpec {
    #[serde(default = "default_release")]
    pub release: String,
    #[serde(default = "default_iso_url")]
    pub iso_url: String,
    #[serde(default = "default_iso_sha256")]
    pub iso_sha256: String,
}

impl Default for UbuntuSpec {
    fn default() -> Self {
        UbuntuSpec {
            release: default_release(),
            iso_url: default_iso_url(),
            iso_sha256: default_iso_sha256(),
        }
    }
}

/// The network the nodes live on. `subnet`, `gateway` and `dns` default to the Eero's
/// for `eero-flat`; a `vlan` network names its own (at least subnet and gateway).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetworkSpec {
    #[serde(default)]
    pub kind: NetworkKind,
    /// `kind: vlan` only: the cluster VLAN, tagged on each node's wired NIC.
    #[serde(default)]
    pub vlan: Option<VlanSpec>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Default: the gateway.
    #[serde(default)]
    pub dns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkKind {
    /// One flat LAN, DHCP from the Eero mesh (the MVP).
    #[default]
    EeroFlat,
    /// A tagged 802.1Q VLAN on the node's wired NIC (the HA cluster's network).
    Vlan,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VlanSpec {
    /// The 802.1Q VLAN id, 1-4094. Wide here so an out-of-range id is refused by the
    /// plan with its reason, not by the parser.
    pub id: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SshSpec {
    /// The admin user created on every node (SSH key-only; console password in secrets).
    pub user: String,
    /// Public key file; default `~/.ssh/id_ed25519.pub`, then `~/.ssh/id_rsa.pub`, then a
    /// key pair generated for the cluster under `out/<cluster>/`.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeSpec {
    pub hostname: String,
    pub role: Role,
    /// NIC MAC address; when given the installed system configures exactly that NIC.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub connection: Connection,
    #[serde(default)]
    pub wifi: Option<WifiSpec>,
    /// `dhcp` (default) or a static address in CIDR form, e.g. `192.168.4.10/24`.
    #[serde(default = "default_address")]
    pub address: String,
    /// Which disk to erase. Absent: the largest disk that is not the USB stick.
    #[serde(default)]
    pub disk: Option<DiskSpec>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Agents only: a fixed server address that skips mDNS discovery.
    #[serde(default)]
    pub server_address: Option<String>,
    /// The seed records a version per node; when given it must equal `k3s.version`.
    #[serde(default)]
    pub k3s_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Server,
    Agent,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Agent => "agent",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    #[default]
    Ethernet,
    Wifi,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WifiSpec {
    pub ssid: String,
    /// Environment variable holding the password; without it, `wifi_passwords.<ssid>` in
    /// the cluster's secrets file. The password itself never goes in the profile.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// Installer disk match keys (subiquity globs). One of them picks the disk to erase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct DiskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn default_k3s_version() -> String {
    DEFAULT_K3S_VERSION.into()
}
fn default_k3s_release_base() -> String {
    "https://github.com/k3s-io/k3s/releases/download".into()
}
fn default_install_script_url() -> String {
    "https://raw.githubusercontent.com/k3s-io/k3s/{version}/install.sh".into()
}
fn default_release() -> String {
    DEFAULT_UBUNTU_RELEASE.into()
}
fn default_iso_url() -> String {
    DEFAULT_ISO_URL.into()
}
fn default_iso_sha256() -> String {
    DEFAULT_ISO_SHA256.into()
}
fn default_address() -> String {
    "dhcp".into()
}

/// One thing wrong with a profile: where (key path, line when known) and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one profile, reported together.
#[derive(Debug, Clone)]
pub struct Problems {
    pub file: PathBuf,
    pub items: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        write!(
            f,
            "{}: {n} problem{} in the profile",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.items {
            write!(f, "\n  - {}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    pub fn new(file: &Path) -> Self {
        Problems {
            file: file.to_path_buf(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.items.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `Ok(())` when nothing was found, else all of them as one error.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.items.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Parses profile text; `path` only names the source in messages. Unknown keys are all
/// collected (not just the first) so one run shows everything to fix; type errors carry
/// the parser's line. (`plan::load` reads the file.)
pub fn parse(path: &Path, text: &str) -> Result<Profile, Problems> {
    let mut problems = Problems::new(path);
    let mut unknown = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let parsed: Result<Profile, _> =
        serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
    for path in unknown {
        let key = bracket_indices(&path);
        let line = find_key_line(text, &key);
        problems.items.push(Problem {
            message: "unknown key; remove it or check its spelling (see the profile reference in README.md)".into(),
            key,
            line,
        });
    }
    match parsed {
        Ok(profile) => problems.into_result().map(|()| profile),
        Err(err) => {
            let line = err.location().map(|l| l.line());
            let message = err.to_string();
            problems.items.push(Problem {
                key: key_from_serde_message(&message),
                line,
                message: format!(
                    "{message}; fix the value to match the profile reference in README.md"
                ),
            });
            Err(problems)
        }
    }
}

/// `nodes.1.adress` (serde_ignored's form) → `nodes[1].adress` (the messages' form).
fn bracket_indices(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The line of a key path's last key, when that key occurs on exactly one line (a guess
/// between several would mislead more than no line at all).
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?;
    let mut hits = text.lines().enumerate().filter(|(_, l)| {
        let t = l.trim_start().trim_start_matches("- ");
        t.strip_prefix(last)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    });
    match (hits.next(), hits.next()) {
        (Some((i, _)), None) => Some(i + 1),
        _ => None,
    }
}

/// serde_yaml_ng prefixes type errors with the key path (`nodes[0].role: unknown variant`).
fn key_from_serde_message(message: &str) -> String {
    match message.split_once(": ") {
        Some((key, _)) if !key.contains(' ') => key.to_string(),
        _ => "(document)".into(),
    }
}
