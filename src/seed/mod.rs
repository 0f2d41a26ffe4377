//! A node's NoCloud seed (`user-data`, `meta-data`), rendered from `templates/` and the
//! plan. Server and agent differ by data, not by copied templates: every value goes
//! through the `yaml` filter (serialised, never pasted), so no value can break the YAML.
pub mod node;

use crate::plan::{Address, NodeConnection, NodePlan, Plan, SshKeySource};
use crate::profile::{Mode, Role};
use crate::secrets::Secrets;
use crate::templates;
use anyhow::{Context, Result};
use node::NodeFile;
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;

/// Where the late-commands mount the stick's CIDATA volume in the live installer.
pub const CIDATA_MOUNT: &str = "/run/cidata";
/// Where the K3s install script lands on the installed system.
pub const INSTALL_SCRIPT: &str = "/usr/local/lib/chocoimg/k3s-install.sh";
/// K3s's own configuration file (0600: the server's holds both tokens).
pub const K3S_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// Packages the installed system needs for discovery and the announce/join scripts.
pub const PACKAGES: &[&str] = &["avahi-daemon", "avahi-utils", "curl", "openssl"];

/// One file of a seed, named as it sits at the root of the CIDATA volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    pub name: String,
    pub contents: Vec<u8>,
}

/// Everything cloud-init reads off CIDATA for one node.
#[derive(Debug, Clone)]
pub struct Seed {
    pub node: String,
    pub files: Vec<SeedFile>,
}

impl Seed {
    pub fn file(&self, name: &str) -> Option<&SeedFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// The SSH public key every node trusts for the admin user.
pub fn admin_public_key(plan: &Plan) -> Result<String> {
    match &plan.ssh.key {
        SshKeySource::File { public_key, .. } => Ok(public_key.clone()),
        SshKeySource::Generated { private_path } => {
            let pub_path = private_path.with_extension("pub");
            let text = std::fs::read_to_string(&pub_path).with_context(|| {
                format!(
                    "reading the cluster's generated SSH key {}; run `chocoimg render --all` to create it",
                    pub_path.display()
                )
            })?;
            Ok(text.trim().to_string())
        }
    }
}

/// Renders `node`'s seed. Pure: same plan, secrets and recorded CA, same bytes.
/// `cluster_ca`: the cluster's CA hash the laptop recorded (`crate::cluster_ca`); an HA
/// server's seed carries it, so the server joins only a member serving it and never
/// starts a cluster of its own.
pub fn render(
    plan: &Plan,
    secrets: &Secrets,
    node: &NodePlan,
    cluster_ca: Option<&str>,
) -> Result<Seed> {
    let discovery = node::setup(plan, secrets, node, cluster_ca)
        .with_context(|| format!("preparing discovery for {}", node.hostname))?;
    let public_key = admin_public_key(plan)?;
    let host_key = secrets.host_key(&node.hostname)?;

    let mut write_files = vec![NodeFile {
        path: K3S_CONFIG.into(),
        permissions: "0600".into(),
        content: k3s_config(plan, secrets, node)?,
    }];
    write_files.extend(discovery.files);

    let installed = InstalledConfig {
        // Without `identity`, subiquity names the installed system nothing (no
        // /etc/hostname of its own) and creates no user: both come from here, once, and
        // this first boot can be tested with cloud-init alone.
        hostname: node.hostname.clone(),
        manage_etc_hosts: "localhost".into(),
        users: vec![AdminUser {
            name: plan.ssh.user.clone(),
            groups: vec!["adm".into(), "sudo".into()],
            shell: "/bin/bash".into(),
            lock_passwd: false,
            passwd: secrets.admin_password_hash.clone(),
            ssh_authorized_keys: vec![public_key.clone()],
        }],
        ssh_pwauth: false,
        ssh_deletekeys: true,
        ssh_genkeytypes: vec!["ed25519".into()],
        ssh_keys: BTreeMap::from([
            ("ed25519_private".to_string(), host_key.private.clone()),
            ("ed25519_public".to_string(), host_key.public.clone()),
        ]),
        write_files: write_files
            .into_iter()
            .map(|f| WriteFile {
                path: f.path,
                permissions: f.permissions,
                owner: "root:root".into(),
                content: f.content,
            })
            .collect(),
        runcmd: first_boot(plan, node, discovery.before_k3s, discovery.first_boot),
    };

    let ctx = minijinja::context! {
        chocoimg_version => env!("CARGO_PKG_VERSION"),
        cluster => plan.cluster,
        hostname => node.hostname,
        role => node.role.to_string(),
        disk_description => disk_description(node),
        keyboard => Keyboard { layout: "us".into() },
        refresh_installer => BTreeMap::from([("update", false)]),
        // No authorized-keys here: without `identity`, subiquity would give them to root.
        ssh => Ssh { install_server: true, allow_pw: false },
        network => network(plan, node)?,
        storage => storage(node),
        packages => packages(node),
        early_commands => vec![crate::guard::early_command(&node.hostname)?],
        late_commands => late_commands(plan, node),
        installed => installed,
    };
    let user_data = templates::render("user-data.yaml", ctx)?;
    let instance_id = format!(
        "chocoimg-{}-{}-{}",
        plan.cluster,
        node.hostname,
        &crate::fsutil::sha256_hex(user_data.as_bytes())[..16]
    );
    let meta_data = templates::render(
        "meta-data.yaml",
        minijinja::context! { instance_id, hostname => node.hostname },
    )?;

    Ok(Seed {
        node: node.hostname.clone(),
        files: vec![
            SeedFile {
                name: "user-data".into(),
                contents: user_data.into_bytes(),
            },
            SeedFile {
                name: "meta-data".into(),
                contents: meta_data.into_bytes(),
            },
        ],
    })
}

/// K3s's config.yaml for the node's role. The agent's holds no token and no server:
/// the join service adds them once it has found and verified master1. An HA server's
/// holds what every server shares but neither `cluster-init` nor `server`: its bootstrap
/// service decides those by discovery (a drop-in).
pub fn k3s_config(plan: &Plan, secrets: &Secrets, node: &NodePlan) -> Result<String> {
    let mut cfg = Mapping::new();
    let settings = match node.role {
        Role::Server => &plan.k3s.server,
        Role::Agent => &plan.k3s.agent,
    };
    if node.role == Role::Server {
        cfg.insert("token".into(), secrets.server_token.clone().into());
        cfg.insert("agent-token".into(), secrets.agent_token.clone().into());
        let sans = vec![
            Value::from(node.hostname.clone()),
            Value::from(format!("{}.local", node.hostname)),
        ];
        cfg.insert("tls-san".into(), Value::Sequence(sans));
        cfg.insert("write-kubeconfig-mode".into(), "0600".into());
        if !settings.disable.is_empty() {
            let disable = settings.disable.iter().cloned().map(Value::from).collect();
            cfg.insert("disable".into(), Value::Sequence(disable));
        }
    }
    if !node.labels.is_empty() {
        let labels = node
            .labels
            .iter()
            .map(|(k, v)| Value::from(format!("{k}={v}")))
            .collect();
        cfg.insert("node-label".into(), Value::Sequence(labels));
    }
    for (k, v) in &settings.config {
        cfg.insert(k.clone().into(), v.clone());
    }
    let body = serde_yaml_ng::to_string(&cfg).context("encoding K3s config.yaml")?;
    Ok(format!(
        "# Written by chocoimg for {} ({}). Secrets inside: keep 0600.\n{body}",
        node.hostname, node.role
    ))
}

/// First-boot commands: discovery's first steps, K3s's install from the pre-placed
/// binary, then discovery's other steps.
fn first_boot(
    plan: &Plan,
    node: &NodePlan,
    before_k3s: Vec<String>,
    discovery: Vec<String>,
) -> Vec<Value> {
    let mut install = vec![
        "env".to_string(),
        "INSTALL_K3S_SKIP_DOWNLOAD=true".into(),
        format!("INSTALL_K3S_VERSION={}", plan.k3s.version),
    ];
    match node.role {
        // An HA server starts once its bootstrap service has decided how (join or init).
        Role::Server if plan.mode == Mode::Ha => {
            install.push("INSTALL_K3S_EXEC=server".into());
            install.push("INSTALL_K3S_SKIP_START=true".into());
        }
        Role::Server => install.push("INSTALL_K3S_EXEC=server".into()),
        // The agent may start only after the join service has written server and token.
        Role::Agent => {
            install.push("INSTALL_K3S_EXEC=agent".into());
            install.push("INSTALL_K3S_SKIP_START=true".into());
        }
    }
    install.extend(["sh".into(), INSTALL_SCRIPT.into()]);
    let mut cmds: Vec<Value> = before_k3s.into_iter().map(Value::from).collect();
    cmds.push(Value::Sequence(
        install.into_iter().map(Value::from).collect(),
    ));
    cmds.extend(discovery.into_iter().map(Value::from));
    cmds
}

fn late_commands(plan: &Plan, node: &NodePlan) -> Vec<String> {
    let m = CIDATA_MOUNT;
    let mut cmds = vec![
        format!("mkdir -p {m}"),
        format!("mount -o ro /dev/disk/by-label/CIDATA {m}"),
        format!("cd {m}/k3s && sha256sum --check --strict SHA256SUMS"),
        format!("install -D -m 0755 {m}/k3s/k3s /target/usr/local/bin/k3s"),
        format!("install -D -m 0644 {m}/k3s/install.sh /target{INSTALL_SCRIPT}"),
    ];
    if plan.k3s.airgap {
        let images = "k3s-airgap-images-amd64.tar.zst";
        cmds.push(format!(
            "install -D -m 0644 {m}/k3s/{images} /target/var/lib/rancher/k3s/agent/images/{images}"
        ));
    }
    cmds.push(format!("umount {m}"));
    cmds.extend(crate::guard::late_commands(
        &plan.cluster,
        &node.hostname,
        &node.role.to_string(),
    ));
    cmds
}

fn packages(node: &NodePlan) -> Vec<String> {
    let mut p: Vec<String> = PACKAGES.iter().map(|s| s.to_string()).collect();
    if matches!(node.connection, NodeConnection::Wifi { .. }) {
        p.push("wpasupplicant".into());
    }
    p
}

/// Netplan v2: the pinned NIC when the profile gives a MAC, else every wired NIC (en*).
/// The node's netplan (autoinstall `network:`): its NIC with DHCP or the static address
/// or, on a `vlan` network, the NIC untagged and unaddressed with the VLAN on it
/// (netplan `vlans:`) holding the address.
fn network(plan: &Plan, node: &NodePlan) -> Result<Value> {
    let mut iface = Mapping::new();
    let mut matcher = Mapping::new();
    match (&node.mac, &node.connection) {
        (Some(mac), _) => matcher.insert("macaddress".into(), mac.clone().into()),
        (None, NodeConnection::Ethernet) => matcher.insert("name".into(), "en*".into()),
        (None, NodeConnection::Wifi { .. }) => matcher.insert("name".into(), "wl*".into()),
    };
    iface.insert("match".into(), Value::Mapping(matcher));
    let (section, name) = match &node.connection {
        NodeConnection::Ethernet => ("ethernets", "lan"),
        NodeConnection::Wifi { ssid, password } => {
            let password = password.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "internal: {}'s Wi-Fi password was not resolved",
                    node.hostname
                )
            })?;
            let mut ap = Mapping::new();
            ap.insert("password".into(), password.into());
            let mut aps = Mapping::new();
            aps.insert(ssid.clone().into(), Value::Mapping(ap));
            iface.insert("access-points".into(), Value::Mapping(aps));
            ("wifis", "wlan")
        }
    };
    let mut net = Mapping::new();
    net.insert("version".into(), 2.into());
    match plan.network.vlan {
        None => address_config(plan, node, &mut iface),
        Some(id) => {
            // The plan allows a VLAN only on a wired NIC.
            iface.insert("dhcp4".into(), false.into());
            let mut vlan = Mapping::new();
            vlan.insert("id".into(), id.into());
            vlan.insert("link".into(), name.into());
            address_config(plan, node, &mut vlan);
            let mut vlans = Mapping::new();
            vlans.insert(format!("vlan{id}").into(), Value::Mapping(vlan));
            net.insert("vlans".into(), Value::Mapping(vlans));
        }
    }
    let mut ifaces = Mapping::new();
    ifaces.insert(name.into(), Value::Mapping(iface));
    net.insert(section.into(), Value::Mapping(ifaces));
    Ok(Value::Mapping(net))
}

/// DHCP, or the static address with the network's gateway and DNS, on `iface`.
fn address_config(plan: &Plan, node: &NodePlan, iface: &mut Mapping) {
    match &node.address {
        Address::Dhcp => {
            iface.insert("dhcp4".into(), true.into());
        }
        Address::Static { ip, prefix_len } => {
            iface.insert("dhcp4".into(), false.into());
            iface.insert(
                "addresses".into(),
                vec![format!("{ip}/{prefix_len}")].into(),
            );
            let mut route = Mapping::new();
            route.insert("to".into(), "default".into());
            route.insert("via".into(), plan.network.gateway.to_string().into());
            iface.insert(
                "routes".into(),
                Value::Sequence(vec![Value::Mapping(route)]),
            );
            let dns: Vec<String> = plan.network.dns.iter().map(|d| d.to_string()).collect();
            let mut ns = Mapping::new();
            ns.insert("addresses".into(), dns.into());
            iface.insert("nameservers".into(), Value::Mapping(ns));
        }
    }
}

/// The whole target disk, chosen by the profile's match or, without one, the largest
/// disk (which 22.04.4+ installers never take to be the boot stick; older releases are
/// refused by the plan).
fn storage(node: &NodePlan) -> Value {
    let mut matcher = Mapping::new();
    let d = &node.disk;
    if let Some(v) = &d.serial {
        matcher.insert("serial".into(), v.clone().into());
    } else if let Some(v) = &d.model {
        matcher.insert("model".into(), v.clone().into());
    } else if let Some(v) = &d.path {
        matcher.insert("path".into(), v.clone().into());
    } else {
        matcher.insert("size".into(), "largest".into());
    }
    let mut layout = Mapping::new();
    layout.insert("name".into(), "direct".into());
    layout.insert("match".into(), Value::Mapping(matcher));
    let mut storage = Mapping::new();
    storage.insert("layout".into(), Value::Mapping(layout));
    Value::Mapping(storage)
}

fn disk_description(node: &NodePlan) -> String {
    let d = &node.disk;
    match (&d.serial, &d.model, &d.path) {
        (Some(s), _, _) => format!("the disk with serial {s}"),
        (_, Some(m), _) => format!("the disk of model {m}"),
        (_, _, Some(p)) => format!("the disk at {p}"),
        _ => "the largest disk that is not this stick".into(),
    }
}

#[derive(Serialize)]
struct Keyboard {
    layout: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Ssh {
    install_server: bool,
    allow_pw: bool,
}

/// The cloud-config the installed system runs on its first boot.
#[derive(Serialize)]
struct InstalledConfig {
    /// /etc/hostname, on first boot.
    hostname: String,
    /// `localhost`: cloud-init adds the `127.0.1.1 <hostname>` line to /etc/hosts (what
    /// subiquity writes when it names the system).
    manage_etc_hosts: String,
    users: Vec<AdminUser>,
    ssh_pwauth: bool,
    ssh_deletekeys: bool,
    /// Only ed25519, which `ssh_keys` provides: the pinned key is the only host key.
    ssh_genkeytypes: Vec<String>,
    ssh_keys: BTreeMap<String, String>,
    write_files: Vec<WriteFile>,
    runcmd: Vec<Value>,
}

#[derive(Serialize)]
struct AdminUser {
    name: String,
    groups: Vec<String>,
    shell: String,
    lock_passwd: bool,
    passwd: String,
    ssh_authorized_keys: Vec<String>,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    permissions: String,
    owner: String,
    content: String,
}
