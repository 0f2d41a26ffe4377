//! `fetch-kubeconfig`: what k3sup does, done right. Find master1 (mDNS, verified) or take
//! an address; check the CA it serves against the announced hash; read the admin
//! kubeconfig over SSH with master1's host key pinned from the secrets; check that
//! kubeconfig's CA; rename `default` to the cluster and point it at master1; merge it
//! into kubectl's kubeconfig keeping every other entry (0600, backup, atomic write).
//! Nothing is written until every check has passed.
use crate::cluster::discover::{self, Browse, Verdict};
use crate::fsutil;
use crate::plan::{Plan, SshKeySource};
use crate::secrets::Secrets;
use anyhow::{anyhow, bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// K3s's API port.
pub const API_PORT: u16 = 6443;
/// The admin kubeconfig K3s writes on the server (root-only).
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// The kubeconfig files kubectl merges, in order: `$KUBECONFIG`'s entries, else
/// `~/.kube/config`.
pub fn chain() -> Result<Vec<PathBuf>> {
    if let Some(list) = std::env::var_os("KUBECONFIG") {
        let files: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let home = crate::plan::home_dir()
        .ok_or_else(|| anyhow!("HOME is not set; pass --output FILE or set KUBECONFIG"))?;
    Ok(vec![home.join(".kube").join("config")])
}

/// The file of `chain` kubectl would write context `name` to: the first that already
/// defines it (kubectl modifies a stanza where it is defined), else the first that exists,
/// else the last (kubectl's rules for `$KUBECONFIG` with several files).
pub fn destination(chain: &[PathBuf], name: &str) -> PathBuf {
    let defines = |p: &PathBuf| {
        read_kubeconfig(p).is_some_and(|doc| find_named(&doc, "contexts", name).is_some())
    };
    chain
        .iter()
        .find(|p| defines(p))
        .or_else(|| chain.iter().find(|p| p.exists()))
        .or(chain.last())
        .cloned()
        .unwrap_or_default()
}

/// Whether any file of `chain` sets a current context (the first one that does wins).
fn chain_has_current_context(chain: &[PathBuf]) -> bool {
    chain.iter().any(|p| {
        read_kubeconfig(p).is_some_and(|doc| {
            doc.get("current-context")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty())
        })
    })
}

/// A kubeconfig file's document, or None when it is missing or not YAML.
fn read_kubeconfig(path: &Path) -> Option<Value> {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Where master1 is, and the CA hash it announced (none with `--server`).
#[derive(Debug, Clone)]
pub struct Target {
    pub address: String,
    pub announced_ca: Option<String>,
    /// The instance that announced it (None with `--server`).
    pub instance: Option<String>,
    /// What discovery noticed on the way (several addresses, a name taken by another).
    pub notes: Vec<String>,
}

/// Finds master1: `server` when given, else the one verified server mDNS finds
/// (`discover::choose`). `Err(heard)` when nothing verified answered within `timeout`
/// (`heard`: every announcement that did); an error when verified servers with different
/// CAs answered.
pub fn locate(
    plan: &Plan,
    secrets: &Secrets,
    server: Option<&str>,
    timeout: Duration,
) -> Result<std::result::Result<Target, Vec<discover::Server>>> {
    if let Some(server) = server {
        return Ok(Ok(Target {
            address: address_of(server)?,
            announced_ca: None,
            instance: None,
            notes: Vec::new(),
        }));
    }
    let servers = discover::browse(
        &plan.cluster,
        &secrets.agent_token,
        Browse {
            timeout,
            stop_at_first_verified: true,
        },
    )?;
    match discover::choose(&servers, &plan.server().hostname) {
        discover::Choice::One {
            address,
            instance,
            ca,
            notes,
        } => Ok(Ok(Target {
            address: address.to_string(),
            announced_ca: Some(ca),
            instance: Some(instance),
            notes,
        })),
        discover::Choice::Conflict(msg) => bail!("{msg}"),
        discover::Choice::Nothing => {
            // master1's own announcement, but no address it gives holds its CA: a check
            // that failed (exit 1), not "nothing found".
            let refused: Vec<String> = servers
                .iter()
                .filter(|s| s.verdict == Verdict::Verified)
                .flat_map(|s| {
                    s.unproven
                        .iter()
                        .map(move |(a, why)| format!("{} at {a}: {why}", s.instance))
                })
                .collect();
            if refused.is_empty() {
                return Ok(Err(servers));
            }
            bail!(
                "{} announced itself with a valid proof, but refusing every address it gave                  (something else may be answering there):\n  {}",
                plan.server().hostname,
                refused.join("\n  ")
            )
        }
    }
}

/// `--server`'s address: an IP as given, a name resolved here (IPv4 first). The kubeconfig
/// gets the address: kubectl builds without cgo resolve no `.local` names on Linux.
fn address_of(server: &str) -> Result<String> {
    let literal = server.trim_start_matches('[').trim_end_matches(']');
    if literal.parse::<std::net::IpAddr>().is_ok() {
        return Ok(literal.to_string());
    }
    use std::net::ToSocketAddrs;
    let found: Vec<std::net::IpAddr> = (server, API_PORT)
        .to_socket_addrs()
        .map_err(|e| {
            crate::BadInput(format!(
                "--server {server}: cannot resolve it ({e}); pass master1's IP address"
            ))
        })?
        .map(|a| a.ip())
        .collect();
    found
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(found.first())
        .map(|ip| ip.to_string())
        .ok_or_else(|| {
            crate::BadInput(format!(
                "--server {server} has no address; pass master1's IP address"
            ))
            .into()
        })
}

/// What `fetch` should produce.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub ssh_port: u16,
    /// Name of the context, cluster and user (default: the cluster's name).
    pub name: String,
    /// The kubeconfig files kubectl merges (`chain()`, or just `--output`'s file); ours is
    /// merged into their `destination`.
    pub chain: Vec<PathBuf>,
    /// Switch current-context to ours (it is set anyway when no file of the chain has one).
    pub use_context: bool,
}

/// What `fetch` wrote.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub name: String,
    pub server_url: String,
    pub backup: Option<PathBuf>,
    pub current_context: bool,
}

/// Fetches, checks and merges master1's admin kubeconfig. Writes nothing unless every
/// check passed.
pub fn fetch(
    plan: &Plan,
    secrets: &Secrets,
    target: &Target,
    opts: &FetchOptions,
) -> Result<Fetched> {
    let server = plan.server();
    let cacerts = get_cacerts(&target.address)?;
    let ca = crate::proof::ca_hash(&cacerts);
    if let Some(announced) = &target.announced_ca {
        if !announced.eq_ignore_ascii_case(&ca) {
            bail!(
                "the CA that {} serves (sha256 {ca}) is not the one {} announced ({announced}); \
                 refusing: something else may be answering at that address",
                target.address,
                server.hostname
            );
        }
    }
    let text = read_over_ssh(
        plan,
        secrets,
        &server.hostname,
        &target.address,
        opts.ssh_port,
    )?;
    let k3s: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{K3S_KUBECONFIG} from {} is not YAML", server.hostname))?;
    let kube_ca = cluster_ca(&k3s, "default").with_context(|| {
        format!(
            "reading the CA of {K3S_KUBECONFIG} from {}",
            server.hostname
        )
    })?;
    if !same_certificates(&kube_ca, &cacerts) {
        bail!(
            "the kubeconfig from {} names a CA that is not the one its API serves at \
             /cacerts (sha256 {ca}); refusing to write it",
            server.hostname
        );
    }
    let server_url = format!("https://{}:{API_PORT}", url_host(&target.address));
    let ours = adopt(&k3s, &opts.name, &server_url)?;

    // Phase two: every check passed.
    let path = resolve_symlink(&destination(&opts.chain, &opts.name));
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().is_empty() => None,
        Ok(t) => Some(serde_yaml_ng::from_str::<Value>(&t).with_context(|| {
            format!(
                "{} is not a kubeconfig (not YAML); fix or move it, or pass --output FILE",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let set_current = opts.use_context || !chain_has_current_context(&opts.chain);
    let merged = merge(existing.clone(), &ours, &opts.name, set_current)?;
    let backup = match existing {
        Some(_) => Some(backup(&path)?),
        None => None,
    };
    let body = serde_yaml_ng::to_string(&merged).context("encoding the kubeconfig")?;
    fsutil::write_atomic(&path, body.as_bytes(), 0o600)?;
    Ok(Fetched {
        path,
        name: opts.name.clone(),
        server_url,
        backup,
        current_context: set_current,
    })
}

pub(crate) fn url_host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// GET `/cacerts` without trusting anything yet: its hash is what we check.
pub(crate) fn get_cacerts(address: &str) -> Result<Vec<u8>> {
    let url = format!("https://{}:{API_PORT}/cacerts", url_host(address));
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTPS client")?;
    let resp = client
        .get(&url)
        .send()
        .with_context(|| format!("fetching {url} (is K3s running on that machine?)"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(resp
        .bytes()
        .with_context(|| format!("reading {url}"))?
        .to_vec())
}

/// The operator's private key: the profile's public key path without `.pub`, or the
/// key pair generated for the cluster.
pub fn private_key(plan: &Plan) -> Result<PathBuf> {
    match &plan.ssh.key {
        SshKeySource::Generated { private_path } => Ok(private_path.clone()),
        SshKeySource::File { path, .. } => {
            let s = path.to_string_lossy();
            match s.strip_suffix(".pub") {
                Some(p) => Ok(PathBuf::from(p)),
                None => Err(crate::BadInput(format!(
                    "ssh.public_key {} does not end in .pub, so its private key cannot be found; name the .pub file",
                    path.display()
                ))
                .into()),
            }
        }
    }
}

/// Runs `sudo -n cat k3s.yaml` on the server over SSH, host key pinned.
fn read_over_ssh(
    plan: &Plan,
    secrets: &Secrets,
    node: &str,
    address: &str,
    port: u16,
) -> Result<String> {
    let key = private_key(plan)?;
    if !key.exists() {
        return Err(crate::BadInput(format!(
            "the SSH private key {} does not exist; it is the key whose .pub went into the images",
            key.display()
        ))
        .into());
    }
    let host_key = secrets.host_key(node)?;
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let known_hosts = dir.path().join("known_hosts");
    fsutil::write_atomic(
        &known_hosts,
        format!("{node} {}\n", host_key.public.trim()).as_bytes(),
        0o600,
    )?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        // The pin is by node name, whatever address DHCP gave it.
        .arg("-o")
        .arg(format!("HostKeyAlias={node}"))
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"])
        .args(["-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(&key)
        .arg("-p")
        .arg(port.to_string())
        .arg("-l")
        .arg(&plan.ssh.user)
        .arg("--")
        .arg(address)
        .arg(format!("sudo -n cat {K3S_KUBECONFIG}"));
    let out = cmd
        .output()
        .context("running ssh (is the OpenSSH client installed?)")?;
    if out.status.success() {
        return String::from_utf8(out.stdout)
            .map_err(|_| anyhow!("{K3S_KUBECONFIG} on {node} is not UTF-8 text"));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    if err.contains("Host key verification failed") || err.contains("IDENTIFICATION HAS CHANGED") {
        bail!(
            "the SSH host key at {address} is not {node}'s (pinned in {}); refusing: \
             another machine may be at that address",
            plan.secrets_path().display()
        );
    }
    if err.contains("sudo") {
        bail!(
            "{node} would not let {} read {K3S_KUBECONFIG} without a password ({err}); the \
             image installs /etc/sudoers.d/chocoimg-kubeconfig for that: was {node} built by \
             this chocoimg?",
            plan.ssh.user
        );
    }
    bail!(
        "ssh {}@{address} -p {port} failed ({}): {err}",
        plan.ssh.user,
        out.status
    )
}

pub(crate) fn named_list<'a>(doc: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(list)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// The entry of `list` (clusters, users, contexts) named `name`.
pub(crate) fn find_named<'a>(doc: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    named_list(doc, list).find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

fn decode_data(v: Option<&Value>, what: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no {what}"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| anyhow!("{what} is not base64: {e}"))
}

/// The PEM bytes of cluster `name`'s `certificate-authority-data`.
pub fn cluster_ca(doc: &Value, name: &str) -> Result<Vec<u8>> {
    let cluster =
        find_named(doc, "clusters", name).ok_or_else(|| anyhow!("no cluster named {name:?}"))?;
    decode_data(
        cluster
            .get("cluster")
            .and_then(|c| c.get("certificate-authority-data")),
        "certificate-authority-data",
    )
}

/// True when both PEM texts hold the same certificates (by DER, order ignored).
pub fn same_certificates(a: &[u8], b: &[u8]) -> bool {
    fn ders(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
        use rustls_pki_types::pem::{self, SectionKind};
        let mut cursor = std::io::Cursor::new(pem);
        let mut out = Vec::new();
        loop {
            match pem::from_buf(&mut cursor) {
                Ok(Some((SectionKind::Certificate, der))) => out.push(der),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        out.sort();
        (!out.is_empty()).then_some(out)
    }
    matches!((ders(a), ders(b)), (Some(x), Some(y)) if x == y)
}

/// K3s's kubeconfig with `default` renamed to `name` and the server set to `server_url`:
/// exactly one cluster, user and context, all named `name`.
pub fn adopt(k3s: &Value, name: &str, server_url: &str) -> Result<Value> {
    let mut cluster = find_named(k3s, "clusters", "default")
        .and_then(|c| c.get("cluster"))
        .cloned()
        .ok_or_else(|| anyhow!("{K3S_KUBECONFIG} has no cluster named default"))?;
    cluster
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("the cluster entry is not a mapping"))?
        .insert("server".into(), server_url.into());
    let user = find_named(k3s, "users", "default")
        .and_then(|u| u.get("user"))
        .cloned()
        .ok_or_else(|| anyhow!("{K3S_KUBECONFIG} has no user named default"))?;
    let entry = |key: &str, body: Value| {
        let mut m = Mapping::new();
        m.insert("name".into(), name.into());
        m.insert(key.into(), body);
        Value::Mapping(m)
    };
    let mut ctx = Mapping::new();
    ctx.insert("cluster".into(), name.into());
    ctx.insert("user".into(), name.into());
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "Config".into());
    doc.insert(
        "clusters".into(),
        Value::Sequence(vec![entry("cluster", cluster)]),
    );
    doc.insert("users".into(), Value::Sequence(vec![entry("user", user)]));
    doc.insert(
        "contexts".into(),
        Value::Sequence(vec![entry("context", Value::Mapping(ctx))]),
    );
    doc.insert("current-context".into(), name.into());
    doc.insert("preferences".into(), Value::Mapping(Mapping::new()));
    Ok(Value::Mapping(doc))
}

/// Merges `ours` (from `adopt`) into `existing`: every other entry kept as it was, ours
/// replaced in place or appended; current-context set only when `set_current`.
pub fn merge(
    existing: Option<Value>,
    ours: &Value,
    name: &str,
    set_current: bool,
) -> Result<Value> {
    let mut doc = match existing {
        None => {
            let mut m = Mapping::new();
            m.insert("apiVersion".into(), "v1".into());
            m.insert("kind".into(), "Config".into());
            m.insert("preferences".into(), Value::Mapping(Mapping::new()));
            m
        }
        Some(Value::Mapping(m)) => m,
        Some(Value::Null) => Mapping::new(),
        Some(_) => bail!("the existing kubeconfig is not a mapping; fix or move it"),
    };
    for list in ["clusters", "users", "contexts"] {
        let mine = find_named(ours, list, name)
            .cloned()
            .ok_or_else(|| anyhow!("internal: no {list} entry {name}"))?;
        let entries = doc
            .entry(list.into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if entries.is_null() {
            *entries = Value::Sequence(Vec::new());
        }
        let seq = entries
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("`{list}` in the existing kubeconfig is not a list"))?;
        match seq
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(slot) => *slot = mine,
            None => seq.push(mine),
        }
    }
    if set_current {
        doc.insert("current-context".into(), name.into());
    }
    Ok(Value::Mapping(doc))
}

fn resolve_symlink(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Copies `path` to `path.chocoimg-backup-<UTC time>[-N]` (0600) and returns the copy.
/// Never replaces an earlier backup, even one made in the same second.
fn backup(path: &Path) -> Result<PathBuf> {
    let t = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for n in 1u32.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".chocoimg-backup-{stamp}"));
        if n > 1 {
            name.push(format!("-{n}"));
        }
        let to = PathBuf::from(name);
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut file = match open.open(&to) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", to.display())),
        };
        use std::io::Write;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", to.display()))?;
        return Ok(to);
    }
    unreachable!("some backup name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k3s_yaml() -> Value {
        serde_yaml_ng::from_str(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n",
        )
        .unwrap()
    }

    #[test]
    fn adopt_renames_and_points_at_master1() {
        let ours = adopt(&k3s_yaml(), "c1", "https://10.0.0.5:6443").unwrap();
        let s = serde_yaml_ng::to_string(&ours).unwrap();
        assert!(!s.contains("default"), "{s}");
        assert!(!s.contains("127.0.0.1"), "{s}");
        assert_eq!(cluster_ca(&ours, "c1").unwrap(), b"CA");
        assert_eq!(
            find_named(&ours, "clusters", "c1").unwrap()["cluster"]["server"],
            "https://10.0.0.5:6443"
        );
    }

    #[test]
    fn merge_keeps_others_and_replaces_ours() {
        let existing: Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: work\nclusters:\n- name: work\n  cluster: {server: https://work:6443}\n- name: c1\n  cluster: {server: https://old:6443}\nusers:\n- name: work\n  user: {token: t}\ncontexts:\n- name: work\n  context: {cluster: work, user: work}\nextensions: []\n",
        )
        .unwrap();
        let ours = adopt(&k3s_yaml(), "c1", "https://10.0.0.5:6443").unwrap();
        let merged = merge(Some(existing.clone()), &ours, "c1", false).unwrap();
        assert_eq!(merged["current-context"], "work");
        assert_eq!(merged["clusters"].as_sequence().unwrap().len(), 2);
        assert_eq!(merged["clusters"][0], existing["clusters"][0]);
        assert_eq!(
            merged["clusters"][1]["cluster"]["server"],
            "https://10.0.0.5:6443"
        );
        assert_eq!(merged["users"].as_sequence().unwrap().len(), 2);
        assert_eq!(merged["contexts"][1]["name"], "c1");
        assert!(merged.get("extensions").is_some());
        let switched = merge(Some(existing), &ours, "c1", true).unwrap();
        assert_eq!(switched["current-context"], "c1");
    }

    #[test]
    fn server_names_become_addresses() {
        assert_eq!(address_of("10.0.0.5").unwrap(), "10.0.0.5");
        assert_eq!(address_of("[fe80::1]").unwrap(), "fe80::1");
        // From /etc/hosts: no query leaves this machine.
        assert_eq!(address_of("localhost").unwrap(), "127.0.0.1");
    }

    #[test]
    fn backups_never_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let kube = dir.path().join("config");
        std::fs::write(&kube, "first").unwrap();
        let a = backup(&kube).unwrap();
        std::fs::write(&kube, "second").unwrap();
        let b = backup(&kube).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "second");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&b).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// kubectl's rules for `$KUBECONFIG` with several files.
    #[test]
    fn destination_follows_kubectl_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let ctx = |name: &str, current: &str| {
            format!("apiVersion: v1\nkind: Config\ncurrent-context: {current}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: {name}}}\n")
        };
        std::fs::write(p("work"), ctx("work", "work")).unwrap();
        std::fs::write(p("ours"), ctx("c1", "")).unwrap();
        // Created in the first file that exists, never in a missing one ahead of it.
        let chain = vec![p("missing"), p("work")];
        assert_eq!(destination(&chain, "c1"), p("work"));
        assert!(chain_has_current_context(&chain));
        // Modified where it is defined.
        let chain = vec![p("work"), p("ours")];
        assert_eq!(destination(&chain, "c1"), p("ours"));
        // No file at all: the last one.
        let chain = vec![p("missing"), p("missing2")];
        assert_eq!(destination(&chain, "c1"), p("missing2"));
        assert!(!chain_has_current_context(&chain));
        assert!(!chain_has_current_context(&[p("ours")]));
    }

    #[test]
    fn certificates_compare_by_der() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        let other = "-----BEGIN CERTIFICATE-----\nAAED\n-----END CERTIFICATE-----\n";
        assert!(same_certificates(pem.as_bytes(), pem.trim_end().as_bytes()));
        assert!(!same_certificates(pem.as_bytes(), other.as_bytes()));
        assert!(!same_certificates(b"", b""));
    }
}
