//! The plan: a profile checked and resolved into per-node values. Every later step
//! (seed, image, cluster tools) reads only this. `resolve` writes nothing.
use crate::profile::{
    self, Connection, Datastore, DiskSpec, Mode, NetworkKind, Problems, Profile, Role,
};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Environment variable naming the folder that holds `<cluster>/` outputs (default `out`).
pub const OUT_ENV: &str = "CHOCOIMG_OUT";

#[derive(Debug, Clone)]
pub struct Plan {
    pub profile_path: PathBuf,
    pub profile_sha256: String,
    pub cluster: String,
    pub mode: Mode,
    pub k3s: K3sPin,
    pub ubuntu: UbuntuPin,
    pub network: Network,
    pub ssh: SshAccess,
    pub nodes: Vec<NodePlan>,
    /// `out/<cluster>`: secrets, images, manifests.
    pub out_dir: PathBuf,
    /// `out/cache`: content-addressed downloads shared by every cluster.
    pub cache_dir: PathBuf,
    /// The lock file beside the profile (`profiles/<cluster>.lock`).
    pub lock_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct K3sPin {
    pub version: String,
    pub server: profile::RoleSettings,
    pub agent: profile::RoleSettings,
    pub airgap: bool,
    pub release_base_url: String,
    pub install_script_url: String,
}

impl K3sPin {
    /// The version as a URL path segment: its `+` must be `%2B` in GitHub's paths.
    pub fn version_in_url(&self) -> String {
        self.version.replace('+', "%2B")
    }

    /// The release folder URL.
    pub fn release_url(&self, file: &str) -> String {
        format!(
            "{}/{}/{}",
            self.release_base_url.trim_end_matches('/'),
            self.version_in_url(),
            file
        )
    }
}

#[derive(Debug, Clone)]
pub struct UbuntuPin {
    pub release: String,
    pub iso_url: String,
    pub iso_sha256: String,
}

impl UbuntuPin {
    /// From 22.04.4 on, subiquity never picks the boot stick for `size: largest`
    /// (image.md); older installers can, so they need an explicit disk.
    pub fn installer_skips_boot_disk(&self) -> bool {
        release_at_least(&self.release, (22, 4, 4))
    }
}

#[derive(Debug, Clone)]
pub struct Network {
    pub kind: NetworkKind,
    /// `kind: vlan`: the VLAN id (1-4094) tagged on each node's wired NIC.
    pub vlan: Option<u16>,
    pub prefix_len: u8,
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct SshAccess {
    pub user: String,
    pub key: SshKeySource,
}

#[derive(Debug, Clone)]
pub enum SshKeySource {
    /// The operator's own public key, already parsed and checked.
    File { path: PathBuf, public_key: String },
    /// No key on the laptop: a dedicated pair for this cluster, created on first build.
    Generated { private_path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct NodePlan {
    pub hostname: String,
    pub role: Role,
    pub mac: Option<String>,
    pub connection: NodeConnection,
    pub address: Address,
    pub disk: DiskSpec,
    /// Node labels: the role's labels plus the node's own (node wins).
    pub labels: BTreeMap<String, String>,
    /// Agents: a fixed `https://ADDRESS:6443` that skips discovery.
    pub server_address: Option<String>,
}

#[derive(Clone)]
pub enum NodeConnection {
    Ethernet,
    /// The password is resolved here (env or secrets) and never printed. None only in a
    /// plan loaded for `Purpose::NoSeeds`.
    Wifi {
        ssid: String,
        password: Option<String>,
    },
}

impl std::fmt::Debug for NodeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeConnection::Ethernet => f.write_str("Ethernet"),
            NodeConnection::Wifi { ssid, .. } => {
                write!(f, "Wifi {{ ssid: {ssid:?}, password: <hidden> }}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Dhcp,
    Static { ip: Ipv4Addr, prefix_len: u8 },
}

impl Plan {
    pub fn node(&self, hostname: &str) -> anyhow::Result<&NodePlan> {
        self.nodes
            .iter()
            .find(|n| n.hostname == hostname)
            .ok_or_else(|| {
                let names: Vec<_> = self.nodes.iter().map(|n| n.hostname.as_str()).collect();
                crate::errors::BadInput(format!(
                    "no node named {hostname:?} in {}; the profile has: {}",
                    self.profile_path.display(),
                    names.join(", ")
                ))
                .into()
            })
    }

    /// The server: the only one, or in `ha` the profile's first (the designated init
    /// server: the only one that may start the cluster).
    pub fn server(&self) -> &NodePlan {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Server)
            .expect("a checked plan has at least one server")
    }

    /// The servers' hostnames, in profile order (the first is the designated init server).
    pub fn server_names(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Server)
            .map(|n| n.hostname.as_str())
            .collect()
    }

    pub fn secrets_path(&self) -> PathBuf {
        self.out_dir.join("secrets.yaml")
    }

    /// `out/<cluster>/<node>.img`: what `build` writes and `flash` reads.
    pub fn image_path(&self, node: &NodePlan) -> PathBuf {
        self.out_dir.join(format!("{}.img", node.hostname))
    }
}

/// What `validate` says of an `ha` profile: how its servers start.
pub const HA_NOTE: &str = "cluster.mode: ha: the servers decide at first boot by mDNS discovery: each joins a verified member; only the first server, and only when no member answers and the laptop has recorded no CA for the cluster, starts it. Flash them in any order";

/// The default output root: `$CHOCOIMG_OUT`, else `out` in the current folder.
pub fn default_out_root() -> PathBuf {
    std::env::var_os(OUT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("out"))
}

/// What a command line adds to the profile; resolved into the plan with it, so the
/// plan a command checks is the one it uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// `build --airgap`: carry K3s's image tarball even when the profile does not.
    pub airgap: bool,
}

/// Loads, checks and resolves a profile. Reads the SSH key and (for Wi-Fi passwords)
/// the secrets file, writes nothing.
pub fn load(profile_path: &Path, out_root: &Path) -> Result<Plan, Problems> {
    load_with(profile_path, out_root, Overrides::default(), Purpose::Seeds)
}

/// What a plan is loaded for. Seeds need every Wi-Fi password; the commands that render
/// none (discover, status, fetch-kubeconfig, watch, flash) never use one, so they do not
/// ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Seeds,
    NoSeeds,
}

/// `load`, with what the command line adds, for `purpose`.
pub fn load_with(
    profile_path: &Path,
    out_root: &Path,
    overrides: Overrides,
    purpose: Purpose,
) -> Result<Plan, Problems> {
    let fail = |line: Option<usize>, message: String| {
        let mut p = Problems::new(profile_path);
        p.items.push(profile::Problem {
            key: "(file)".into(),
            line,
            message,
        });
        p
    };
    let text = crate::fsutil::read_small_file(profile_path, PROFILE_MAX_BYTES).map_err(|e| {
        fail(
            None,
            format!("{e}; pass the profile with -p/--profile or set CHOCOIMG_PROFILE"),
        )
    })?;
    let utf8 = std::str::from_utf8(&text).map_err(|e| {
        let line = 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        fail(
            Some(line),
            "this line is not UTF-8 text; save the profile as UTF-8".into(),
        )
    })?;
    let mut profile = profile::parse(profile_path, utf8)?;
    profile.k3s.airgap |= overrides.airgap;
    let sha = crate::fsutil::sha256_hex(&text);
    resolve(&profile, profile_path, &sha, out_root, purpose)
}

/// A profile is a page of YAML; anything near this size is the wrong file.
const PROFILE_MAX_BYTES: u64 = 1 << 20;
/// An OpenSSH public key line (RSA 16384 is under 3 kB).
const PUBLIC_KEY_MAX_BYTES: u64 = 16 << 10;

/// Phase one: check everything, report every problem together, resolve the rest.
/// One section of the profile per step, in the profile's order.
pub fn resolve(
    profile: &Profile,
    profile_path: &Path,
    profile_sha256: &str,
    out_root: &Path,
    purpose: Purpose,
) -> Result<Plan, Problems> {
    let mut problems = Problems::new(profile_path);
    let p = &mut problems;
    let (cluster, mode) = check_cluster(p, &profile.cluster);
    let k3s = check_k3s(p, &profile.k3s);
    let ubuntu = check_ubuntu(p, &profile.ubuntu);
    let network = check_network(p, &profile.network);
    let ssh = check_ssh(p, profile, &out_root.join(&cluster));
    check_node_count(p, profile);
    let secrets_path = out_root.join(&cluster).join("secrets.yaml");
    let mut seen = Seen::default();
    let nodes = profile
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let ctx = NodeContext {
                index: i,
                profile,
                network: network.as_ref(),
                secrets_path: &secrets_path,
                purpose,
            };
            resolve_node(p, &ctx, &mut seen, n)
        })
        .collect();

    problems.into_result()?;
    Ok(Plan {
        profile_path: profile_path.to_path_buf(),
        profile_sha256: profile_sha256.to_string(),
        out_dir: out_root.join(&cluster),
        cache_dir: out_root.join("cache"),
        lock_path: profile_path.with_extension("lock"),
        cluster,
        mode,
        k3s,
        ubuntu,
        network: network.expect("no problems means the network parsed"),
        ssh: ssh.expect("no problems means the SSH key resolved"),
        nodes,
    })
}

/// `cluster:`: its name, and the mode with the datastore it needs.
fn check_cluster(p: &mut Problems, c: &profile::ClusterSpec) -> (String, Mode) {
    let cluster = c.name.clone();
    if !is_rfc1123_label(&cluster) {
        p.push("cluster.name", format!("{cluster:?} is not a valid name; use lowercase letters, digits and '-', at most 63, e.g. chocolandiadc-mvp"));
    }
    match (c.mode, c.datastore) {
        (Mode::SingleServer, Datastore::Sqlite) | (Mode::Ha, Datastore::Etcd) => {}
        (Mode::SingleServer, Datastore::Etcd) => p.push("cluster.datastore", "a single-server cluster uses `sqlite`; `etcd` comes with `mode: ha` (three or more servers)"),
        (Mode::Ha, Datastore::Sqlite) => p.push("cluster.datastore", "`mode: ha` needs `datastore: etcd`: servers share the cluster's state through embedded etcd, which sqlite cannot do"),
    }
    (cluster, c.mode)
}

/// `k3s:`: the version and each role's labels and config keys.
fn check_k3s(p: &mut Problems, k3s: &profile::K3sSpec) -> K3sPin {
    let version = &k3s.version;
    if !is_k3s_version(version) {
        p.push(
            "k3s.version",
            format!(
                "{version:?} is not a K3s release; write it as vX.Y.Z+k3sN, e.g. v1.28.15+k3s1"
            ),
        );
    }
    for (role, settings) in [("server", &k3s.server), ("agent", &k3s.agent)] {
        check_labels(p, &format!("k3s.{role}.node_labels"), &settings.node_labels);
        for key in settings.config.keys() {
            if let Some(owned) = OWNED_K3S_KEYS.iter().find(|k| **k == key.as_str()) {
                p.push(format!("k3s.{role}.config.{key}"), format!("`{owned}` is set by chocoimg itself (from the secrets, the discovery or the profile's own keys); remove it here"));
            }
        }
    }
    K3sPin {
        version: version.clone(),
        server: k3s.server.clone(),
        agent: k3s.agent.clone(),
        airgap: k3s.airgap,
        release_base_url: k3s.release_base_url.clone(),
        install_script_url: k3s.install_script_url.clone(),
    }
}

/// `ubuntu:`: a 22.04 point release and its ISO's SHA-256.
fn check_ubuntu(p: &mut Problems, ub: &profile::UbuntuSpec) -> UbuntuPin {
    if !release_at_least(&ub.release, (22, 4, 0)) || !ub.release.starts_with("22.04") {
        p.push(
            "ubuntu.release",
            format!(
                "{:?} is not an Ubuntu 22.04 point release; use e.g. 22.04.5",
                ub.release
            ),
        );
    }
    if ub.iso_sha256.len() != 64 || !ub.iso_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        p.push(
            "ubuntu.iso_sha256",
            "must be the 64-hex-digit SHA-256 from the release's SHA256SUMS file",
        );
    }
    check_release_agrees(p, ub);
    UbuntuPin {
        release: ub.release.clone(),
        iso_url: ub.iso_url.clone(),
        iso_sha256: ub.iso_sha256.to_ascii_lowercase(),
    }
}

/// `nodes:` as a whole: the servers the mode needs.
fn check_node_count(p: &mut Problems, profile: &Profile) {
    let servers = profile
        .nodes
        .iter()
        .filter(|n| n.role == Role::Server)
        .count();
    match profile.cluster.mode {
        Mode::SingleServer if servers != 1 => {
            p.push("nodes", format!("a single-server cluster needs exactly one node with `role: server`, found {servers}"));
        }
        // etcd keeps writing only while a majority (quorum) answers: 3 servers survive one
        // loss, 4 also only one (quorum 3), 2 none (quorum 2).
        Mode::Ha if servers < 3 || servers % 2 == 0 => {
            let quorum = servers / 2 + 1;
            p.push("nodes", format!("`mode: ha` needs an odd number of servers, at least 3, found {servers}: etcd stays writable only while a quorum (a majority) of servers is up, and {servers} servers need {quorum} of them, so they survive {} down; use 3 servers (survive one) or 5 (survive two)", servers - quorum.min(servers)));
        }
        _ => {}
    }
    if profile.nodes.is_empty() {
        p.push(
            "nodes",
            "list at least the server node, e.g. `- hostname: master1\n    role: server`",
        );
    }
}

/// What each node must not share with an earlier one, by the index that has it.
#[derive(Default)]
struct Seen {
    hosts: HashMap<String, usize>,
    macs: HashMap<String, usize>,
    ips: HashMap<Ipv4Addr, usize>,
}

/// What a node's checks read besides the node itself.
struct NodeContext<'a> {
    index: usize,
    profile: &'a Profile,
    network: Option<&'a Network>,
    secrets_path: &'a Path,
    purpose: Purpose,
}

impl NodeContext<'_> {
    /// `nodes[i].<k>`, the key a problem names.
    fn key(&self, k: &str) -> String {
        format!("nodes[{}].{k}", self.index)
    }
}

/// `nodes[i]`: checked and resolved, in the order of its keys.
fn resolve_node(
    p: &mut Problems,
    ctx: &NodeContext,
    seen: &mut Seen,
    n: &profile::NodeSpec,
) -> NodePlan {
    let i = ctx.index;
    if !is_rfc1123_label(&n.hostname) {
        p.push(ctx.key("hostname"), format!("{:?} is not a valid hostname (RFC 1123): lowercase letters, digits and '-', 1-63 characters, not starting or ending with '-'", n.hostname));
    }
    if let Some(j) = seen.hosts.insert(n.hostname.clone(), i) {
        p.push(
            ctx.key("hostname"),
            format!(
                "{:?} is already used by nodes[{j}]; every node needs its own hostname",
                n.hostname
            ),
        );
    }
    let mac = n.mac.as_ref().map(|m| m.to_ascii_lowercase());
    if let Some(m) = &mac {
        if !is_mac(m) {
            p.push(ctx.key("mac"), format!("{m:?} is not a MAC address; write six hex pairs with ':', e.g. aa:bb:cc:dd:ee:ff"));
        } else if let Some(j) = seen.macs.insert(m.clone(), i) {
            p.push(
                ctx.key("mac"),
                format!("{m} is already the MAC of nodes[{j}]; each NIC has its own"),
            );
        }
    }
    let address = node_address(p, ctx, seen, &n.address, mac.is_some());
    let connection = node_connection(p, ctx, n);
    let disk = node_disk(p, ctx, n);
    let version = &ctx.profile.k3s.version;
    if let Some(v) = &n.k3s_version {
        if v != version {
            p.push(ctx.key("k3s_version"), format!("{v} differs from k3s.version {version}; all nodes run one K3s version (an agent must never be newer than its server): remove it or make them equal"));
        }
    }
    let mut labels = match n.role {
        Role::Server => ctx.profile.k3s.server.node_labels.clone(),
        Role::Agent => ctx.profile.k3s.agent.node_labels.clone(),
    };
    check_labels(p, &ctx.key("labels"), &n.labels);
    labels.extend(n.labels.clone());
    let server_address = node_server_address(p, ctx, n);
    NodePlan {
        hostname: n.hostname.clone(),
        role: n.role,
        mac,
        connection,
        address,
        disk,
        labels,
        server_address,
    }
}

/// `nodes[i].address`: `dhcp`, or a free static address of the subnet on a pinned NIC.
fn node_address(
    p: &mut Problems,
    ctx: &NodeContext,
    seen: &mut Seen,
    address: &str,
    has_mac: bool,
) -> Address {
    if address == "dhcp" {
        return Address::Dhcp;
    }
    let Some((ip, prefix_len)) = parse_cidr(address) else {
        p.push(ctx.key("address"), format!("{address:?} is neither `dhcp` nor an IPv4 address in CIDR form like 192.168.4.10/24"));
        return Address::Dhcp;
    };
    if let Some(net) = ctx.network {
        if !in_subnet(ip, net.subnet, net.prefix_len) || prefix_len != net.prefix_len {
            p.push(ctx.key("address"), format!("{address} is not inside network.subnet {}/{}; use an address of that subnet with /{}", net.subnet, net.prefix_len, net.prefix_len));
        } else if ip == net.gateway {
            p.push(
                ctx.key("address"),
                format!(
                    "{ip} is the gateway (the Eero); pick a free address outside its DHCP range"
                ),
            );
        }
    }
    if let Some(j) = seen.ips.insert(ip, ctx.index) {
        p.push(
            ctx.key("address"),
            format!("{ip} is already the address of nodes[{j}]"),
        );
    }
    if !has_mac {
        p.push(ctx.key("mac"), "a static address needs the NIC's MAC, so it lands on exactly one interface; add `mac:` or use `address: dhcp`");
    }
    Address::Static { ip, prefix_len }
}

/// `nodes[i].connection` and `wifi`: Ethernet, or Wi-Fi with its password resolved.
fn node_connection(p: &mut Problems, ctx: &NodeContext, n: &profile::NodeSpec) -> NodeConnection {
    match (n.connection, &n.wifi) {
        (Connection::Ethernet, None) => NodeConnection::Ethernet,
        (Connection::Ethernet, Some(_)) => {
            p.push(
                ctx.key("wifi"),
                "only used with `connection: wifi`; remove it or set the connection",
            );
            NodeConnection::Ethernet
        }
        (Connection::Wifi, None) => {
            p.push(
                ctx.key("wifi"),
                "`connection: wifi` needs `wifi: {ssid: NAME, password_env: VAR}`",
            );
            NodeConnection::Ethernet
        }
        (Connection::Wifi, Some(_)) if ctx.profile.network.kind == NetworkKind::Vlan => {
            p.push(ctx.key("connection"), "`network.kind: vlan` tags the VLAN on a wired NIC; use `connection: ethernet` for this node");
            NodeConnection::Ethernet
        }
        (Connection::Wifi, Some(w)) => {
            if w.ssid.is_empty() || w.ssid.len() > 32 {
                p.push(ctx.key("wifi.ssid"), "an SSID has 1 to 32 characters");
            }
            let password = match ctx.purpose {
                Purpose::Seeds => match wifi_password(w, ctx.secrets_path) {
                    Ok(password) => Some(password),
                    Err(why) => {
                        p.push(ctx.key("wifi.password_env"), why);
                        None
                    }
                },
                Purpose::NoSeeds => None,
            };
            NodeConnection::Wifi {
                ssid: w.ssid.clone(),
                password,
            }
        }
    }
}

/// `nodes[i].disk`: at most one way to name it; none only where the installer skips the
/// boot stick by itself.
fn node_disk(p: &mut Problems, ctx: &NodeContext, n: &profile::NodeSpec) -> DiskSpec {
    let disk = n.disk.clone().unwrap_or_default();
    let set = [&disk.serial, &disk.model, &disk.path]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        p.push(
            ctx.key("disk"),
            "name the disk by one of serial, model or path, not several",
        );
    }
    if n.disk.is_some() && set == 0 {
        p.push(
            ctx.key("disk"),
            "give one of serial, model or path, or leave `disk` out to erase the largest disk",
        );
    }
    let release = &ctx.profile.ubuntu.release;
    if set == 0 && !release_at_least(release, (22, 4, 4)) {
        p.push(ctx.key("disk"), format!("the {release} installer can pick the USB stick itself as the largest disk; name the target disk (serial, model or path) or use 22.04.5"));
    }
    disk
}

/// `nodes[i].server_address`: agents only, an IPv4 address or a host name.
fn node_server_address(
    p: &mut Problems,
    ctx: &NodeContext,
    n: &profile::NodeSpec,
) -> Option<String> {
    match (&n.server_address, n.role) {
        (Some(_), Role::Server) => {
            p.push(
                ctx.key("server_address"),
                "only agents take a fixed server address; remove it from the server",
            );
            None
        }
        (Some(a), Role::Agent) => {
            if a.parse::<Ipv4Addr>().is_err() && !is_dns_name(a) {
                p.push(ctx.key("server_address"), format!("{a:?} is not an IPv4 address or host name, e.g. 192.168.4.10 or master1.local"));
            }
            Some(a.clone())
        }
        (None, _) => None,
    }
}

/// The disk-safety rule and the image's record follow `ubuntu.release`, so it must be the
/// release of the ISO the URL and the pin name (`build` checks the ISO's own
/// `/.disk/info` too): a 22.04.1 ISO must never pass as 22.04.5.
fn check_release_agrees(p: &mut Problems, ub: &profile::UbuntuSpec) {
    if let Some(named) = release_in_iso_url(&ub.iso_url) {
        if named != ub.release {
            p.push("ubuntu.iso_url", format!("names the {named} ISO but ubuntu.release is {} (the default when it is not given); set `release: {named}` to build from it, or use the {} ISO's URL", ub.release, ub.release));
        }
    }
    if ub
        .iso_sha256
        .eq_ignore_ascii_case(profile::DEFAULT_ISO_SHA256)
        && ub.release != profile::DEFAULT_UBUNTU_RELEASE
    {
        p.push("ubuntu.iso_sha256", format!("is the SHA-256 of the {} ISO, not of {}; copy the pin from the {} release's SHA256SUMS", profile::DEFAULT_UBUNTU_RELEASE, ub.release, ub.release));
    }
}

/// `22.04.1` from `.../ubuntu-22.04.1-live-server-amd64.iso` (Ubuntu's file names).
pub fn release_in_iso_url(url: &str) -> Option<String> {
    let file = url.rsplit('/').next()?;
    let rest = file.strip_prefix("ubuntu-")?;
    let (release, _) = rest.split_once('-')?;
    (release.split('.').count() >= 2 && release.split('.').all(|n| n.parse::<u32>().is_ok()))
        .then(|| release.to_string())
}

/// config.yaml keys chocoimg writes itself; a profile setting them would fight it.
const OWNED_K3S_KEYS: &[&str] = &[
    "token",
    "agent-token",
    "server",
    "token-file",
    "cluster-init",
    "tls-san",
    "node-label",
    "write-kubeconfig-mode",
    "disable",
];

/// `network:`: the Eero's flat LAN (its defaults), or a cluster VLAN with its own
/// id, subnet, gateway and DNS.
fn check_network(p: &mut Problems, n: &profile::NetworkSpec) -> Option<Network> {
    let vlan = match (n.kind, &n.vlan) {
        (NetworkKind::EeroFlat, None) => None,
        (NetworkKind::EeroFlat, Some(_)) => {
            p.push(
                "network.vlan",
                "only used with `kind: vlan`; remove it or set `network.kind: vlan`",
            );
            None
        }
        (NetworkKind::Vlan, None) => {
            p.push(
                "network.vlan",
                "`kind: vlan` needs the VLAN's id, e.g. `vlan: {id: 20}`",
            );
            None
        }
        (NetworkKind::Vlan, Some(v)) => match u16::try_from(v.id) {
            Ok(id) if (1..=4094).contains(&id) => Some(id),
            _ => {
                p.push("network.vlan.id", format!("{} is not a VLAN id; 802.1Q ids are 1 to 4094 (0 and 4095 are reserved), e.g. 20", v.id));
                None
            }
        },
    };
    let (subnet_text, gateway_text) = match n.kind {
        NetworkKind::EeroFlat => (
            n.subnet
                .clone()
                .unwrap_or_else(|| profile::EERO_SUBNET.into()),
            n.gateway
                .clone()
                .unwrap_or_else(|| profile::EERO_GATEWAY.into()),
        ),
        NetworkKind::Vlan => {
            // The Eero's defaults would be wrong on a VLAN: its subnet is its own.
            for (key, value) in [
                ("network.subnet", &n.subnet),
                ("network.gateway", &n.gateway),
            ] {
                if value.is_none() {
                    p.push(key, "`kind: vlan` needs the VLAN's own subnet and gateway, e.g. `subnet: 10.100.20.0/24` and `gateway: 10.100.20.1`");
                }
            }
            (n.subnet.clone()?, n.gateway.clone()?)
        }
    };
    let Some((subnet, prefix_len)) = parse_cidr(&subnet_text) else {
        p.push(
            "network.subnet",
            format!("{subnet_text:?} is not an IPv4 network in CIDR form like 192.168.4.0/24"),
        );
        return None;
    };
    let gateway = match gateway_text.parse::<Ipv4Addr>() {
        Ok(g) if in_subnet(g, subnet, prefix_len) => g,
        Ok(g) => {
            p.push(
                "network.gateway",
                format!("{g} is outside network.subnet {subnet_text}"),
            );
            return None;
        }
        Err(_) => {
            p.push(
                "network.gateway",
                format!("{gateway_text:?} is not an IPv4 address like 192.168.4.1"),
            );
            return None;
        }
    };
    let mut dns = Vec::new();
    let dns_text = n.dns.clone().unwrap_or_else(|| vec![gateway.to_string()]);
    for (i, d) in dns_text.iter().enumerate() {
        match d.parse() {
            Ok(a) => dns.push(a),
            Err(_) => p.push(
                format!("network.dns[{i}]"),
                format!("{d:?} is not an IPv4 address"),
            ),
        }
    }
    if n.kind == NetworkKind::Vlan && vlan.is_none() {
        return None;
    }
    Some(Network {
        kind: n.kind,
        vlan,
        prefix_len,
        subnet: Ipv4Addr::from(u32::from(subnet) & netmask(prefix_len)),
        gateway,
        dns,
    })
}

fn check_ssh(p: &mut Problems, profile: &Profile, cluster_out: &Path) -> Option<SshAccess> {
    let user = &profile.ssh.user;
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !user_ok {
        p.push("ssh.user", format!("{user:?} is not a valid Linux user name; use lowercase letters, digits, '_' or '-', e.g. cbenitez"));
    }
    if ["root", "daemon", "bin", "sys", "nobody"].contains(&user.as_str()) {
        p.push(
            "ssh.user",
            format!("{user:?} is a system account; name the admin user, e.g. cbenitez"),
        );
    }
    // The key's file: the profile's, else the first of ~/.ssh's that exists; none: a
    // key is generated.
    let file = match &profile.ssh.public_key {
        Some(path) if is_inline_key(path) => {
            p.push("ssh.public_key", "holds a key itself; give the path of a .pub file instead, e.g. `public_key: ~/.ssh/id_ed25519.pub`");
            return None;
        }
        Some(path) => Some(expand_home(path)),
        None => home_dir().and_then(|home| {
            ["id_ed25519.pub", "id_rsa.pub"]
                .iter()
                .map(|f| home.join(".ssh").join(f))
                .find(|f| f.exists())
        }),
    };
    let key = match file {
        Some(path) => match read_public_key(&path) {
            Ok(public_key) => SshKeySource::File { path, public_key },
            Err(why) => {
                p.push("ssh.public_key", why);
                return None;
            }
        },
        None => SshKeySource::Generated {
            private_path: cluster_out.join("ssh").join("id_ed25519"),
        },
    };
    Some(SshAccess {
        user: user.clone(),
        key,
    })
}

fn read_public_key(path: &Path) -> Result<String, String> {
    let bytes = crate::fsutil::read_small_file(path, PUBLIC_KEY_MAX_BYTES).map_err(|e| {
        format!("{e}; point it at your public key (a .pub file) or leave it out to use ~/.ssh/id_ed25519.pub")
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "{} is not text; give the .pub file, e.g. made by `ssh-keygen -t ed25519`",
            path.display()
        )
    })?;
    let line = text.trim();
    match ssh_key::PublicKey::from_openssh(line) {
        Ok(_) => Ok(line.to_string()),
        Err(e) => Err(format!("{} is not an OpenSSH public key ({e}); give the .pub file, e.g. made by `ssh-keygen -t ed25519`", path.display())),
    }
}

/// Whether the profile's `ssh.public_key` holds a key itself rather than a file name.
fn is_inline_key(value: &Path) -> bool {
    let s = value.to_string_lossy();
    let mut words = s.split_whitespace();
    let algorithm = words.next().unwrap_or("");
    (algorithm.starts_with("ssh-")
        || algorithm.starts_with("ecdsa-")
        || algorithm.starts_with("sk-"))
        && words.next().is_some_and(|b| b.starts_with("AAAA"))
}

fn wifi_password(w: &profile::WifiSpec, secrets_path: &Path) -> Result<String, String> {
    if let Some(var) = &w.password_env {
        return match std::env::var(var) {
            Ok(v) if (8..=63).contains(&v.len()) => Ok(v),
            Ok(_) => Err(format!("the password in ${var} must have 8 to 63 characters (WPA2)")),
            Err(_) => Err(format!("environment variable {var} is not set; export it with the Wi-Fi password before building")),
        };
    }
    match crate::secrets::wifi_password(secrets_path, &w.ssid).map_err(|e| format!("{e:#}"))? {
        Some(pw) => Ok(pw),
        None => Err(format!("no password for SSID {:?}: set `password_env: VAR` and export VAR, or add it under `wifi_passwords:` in {}", w.ssid, secrets_path.display())),
    }
}

fn check_labels(p: &mut Problems, key: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Some(why) = crate::labels::problem(k, v) {
            p.push(format!("{key}.{k}"), why);
        } else if kubelet_refuses(k) {
            p.push(format!("{key}.{k}"), format!("`{k}` is in the kubernetes.io/k8s.io namespace, which a node may not label itself with: K3s would fail to start on it (the kubelet refuses unknown --node-labels there). Use a label of your own, e.g. `role: worker`, and after the node joined run `kubectl label node NODE {k}=` if you want it"));
        }
    }
}

/// Whether the kubelet refuses `key` as one of its own `--node-labels`: it must not be in
/// the kubernetes.io or k8s.io namespaces unless kubelet allows it (k8s.io/kubelet
/// well_known_labels.go: these labels, and the kubelet.kubernetes.io and
/// node.kubernetes.io namespaces).
fn kubelet_refuses(key: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let Some((namespace, _)) = key.split_once('/') else {
        return false;
    };
    let within = |domain: &str| namespace == domain || namespace.ends_with(&format!(".{domain}"));
    let reserved = within("kubernetes.io") || within("k8s.io");
    let allowed =
        ALLOWED.contains(&key) || within("kubelet.kubernetes.io") || within("node.kubernetes.io");
    reserved && !allowed
}

pub fn is_rfc1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    s.split('.').all(is_rfc1123_label)
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<_> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `vX.Y.Z+k3sN`.
pub fn is_k3s_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((semver, build)) = rest.split_once("+k3s") else {
        return false;
    };
    let nums: Vec<_> = semver.split('.').collect();
    nums.len() == 3
        && nums
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && !build.is_empty()
        && build.bytes().all(|b| b.is_ascii_digit())
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

/// The netmask of a `/len` prefix, as a number (`/0` is 0: no shift by 32).
fn netmask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = netmask(len);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// "22.04.5" >= (22, 4, 4); "22.04" counts as 22.04.0.
fn release_at_least(release: &str, min: (u32, u32, u32)) -> bool {
    let mut it = release.split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next().flatten();
    let minor = it.next().flatten();
    let point = it.next().unwrap_or(Some(0));
    match (major, minor, point) {
        (Some(a), Some(b), Some(c)) => (a, b, c) >= min,
        _ => false,
    }
}

pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// `~/x` → `$HOME/x`; other paths unchanged.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names() {
        assert!(is_k3s_version("v1.28.15+k3s1"));
        assert!(!is_k3s_version("1.28.15+k3s1"));
        assert!(!is_k3s_version("v1.28+k3s1"));
        assert!(!is_k3s_version("v1.28.15-k3s1"));
        assert!(is_rfc1123_label("master1"));
        assert!(!is_rfc1123_label("Master1"));
        assert!(!is_rfc1123_label("-a"));
        assert!(release_at_least("22.04.5", (22, 4, 4)));
        assert!(!release_at_least("22.04.3", (22, 4, 4)));
        assert!(!release_at_least("22.04", (22, 4, 4)));
        assert_eq!(
            release_in_iso_url(
                "https://releases.ubuntu.com/22.04.1/ubuntu-22.04.1-live-server-amd64.iso"
            )
            .as_deref(),
            Some("22.04.1")
        );
        assert_eq!(release_in_iso_url("http://mirror/x/jammy.iso"), None);
    }

    #[test]
    fn labels_the_kubelet_refuses() {
        assert!(kubelet_refuses("node-role.kubernetes.io/worker"));
        assert!(kubelet_refuses("kubernetes.io/role"));
        assert!(kubelet_refuses("app.k8s.io/name"));
        assert!(!kubelet_refuses("role"));
        assert!(!kubelet_refuses("example.com/role"));
        assert!(!kubelet_refuses("topology.kubernetes.io/zone"));
        assert!(!kubelet_refuses(
            "node.kubernetes.io/exclude-from-external-load-balancers"
        ));
        assert!(!kubelet_refuses("kubelet.kubernetes.io/x"));
    }
}
