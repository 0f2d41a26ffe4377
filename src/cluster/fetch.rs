//! `fetch-kubeconfig`: what k3sup does, done right. Find the servers (mDNS, verified) or
//! take an address; check the CA each serves against the announced hash (and the one the
//! laptop recorded); read the admin kubeconfig over SSH with the server's host key
//! pinned from the secrets, from the first server that passes (in HA any server serves
//! it); check that kubeconfig's CA; record the cluster's CA; rename `default` to the
//! cluster and point it at that server; merge it into kubectl's kubeconfig keeping every
//! other entry (0600, backup, atomic write). Nothing is written until every check has
//! passed. The document itself is `kubeconfig`.
use crate::cluster::discover::{self, Browse, Choice, Verdict};
use crate::cluster::k3s_api::{get_cacerts, url_host, API_PORT};
use crate::cluster::kubeconfig::{
    adopt, another_clusters_entry, cluster_ca, current_context, destination, merge,
    same_certificates, K3S_KUBECONFIG,
};
use crate::errors::BadInput;
use crate::fsutil;
use crate::plan::{Plan, SshKeySource};
use crate::secrets::Secrets;
use anyhow::{anyhow, bail, Context, Result};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A server to read the kubeconfig from, and the CA hash it announced (none with
/// `--server`).
#[derive(Debug, Clone)]
pub struct Target {
    pub address: String,
    pub announced_ca: Option<String>,
    /// The instance that announced it (None with `--server`).
    pub instance: Option<String>,
}

/// The cluster's servers to try, in order, and what discovery noticed on the way.
#[derive(Debug, Clone)]
pub struct Located {
    pub targets: Vec<Target>,
    /// Several addresses for one server, a name taken by another responder.
    pub notes: Vec<String>,
    /// Servers with valid proofs but another CA than the recorded one: said, never used.
    pub warning: Option<String>,
}

/// Finds the servers: `server` when given, else the verified servers mDNS finds
/// (`discover::choose`; with a recorded CA, only servers serving it). `Err(heard)` when
/// nothing verified answered within `timeout` (`heard`: every announcement that did); an
/// error when verified servers with different CAs answered and none is recorded, or when
/// the announcements gave no address that holds their CA.
pub fn locate(
    plan: &Plan,
    secrets: &Secrets,
    server: Option<&str>,
    timeout: Duration,
) -> Result<std::result::Result<Located, Vec<discover::Server>>> {
    if let Some(server) = server {
        return Ok(Ok(Located {
            targets: vec![Target {
                address: address_of(server)?,
                announced_ca: None,
                instance: None,
            }],
            notes: Vec::new(),
            warning: None,
        }));
    }
    let recorded = crate::cluster_ca::load(plan)?;
    // Every server, to try the next when one fails: in HA the browse goes on until all
    // have answered (or the timeout passes, when one is down).
    let servers = discover::browse(
        &plan.cluster,
        discover::Keys::of(plan, secrets),
        Browse {
            timeout,
            stop_after_verified: Some(plan.server_names().len()),
        },
    )?;
    match discover::choose(&servers, &plan.server_names(), recorded.as_deref()) {
        Choice::Cluster {
            ca,
            members,
            notes,
            other_cas,
        } => Ok(Ok(Located {
            targets: members
                .into_iter()
                .map(|m| Target {
                    address: m.address.to_string(),
                    announced_ca: Some(ca.clone()),
                    instance: Some(m.instance),
                })
                .collect(),
            notes,
            warning: other_cas,
        })),
        Choice::Conflict(msg) => bail!("{msg}"),
        Choice::Nothing => {
            // Our own announcement, but no address it gives holds its CA: a check that
            // failed (exit 1), not "nothing found".
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
                "{} announced itself with a valid proof, but every address it gave is \
                 refused (something else may be answering there):\n  {}",
                servers_named(plan),
                refused.join("\n  ")
            )
        }
    }
}

/// `master1`, or `a server (master1, master2, master3)` in HA.
fn servers_named(plan: &Plan) -> String {
    match plan.server_names()[..] {
        [one] => one.to_string(),
        ref all => format!("a server ({})", all.join(", ")),
    }
}

/// The servers whose SSH host key `target` may show: the one that announced it, else
/// (`--server`, a renamed announcement) any server of the profile.
fn pinned_nodes<'p>(plan: &'p Plan, target: &Target) -> Vec<&'p str> {
    let servers = plan.server_names();
    match &target.instance {
        Some(i) if servers.contains(&i.as_str()) => {
            servers.into_iter().filter(|s| s == i).collect()
        }
        _ => servers,
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
            crate::errors::BadInput(format!(
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
            crate::errors::BadInput(format!(
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
    /// Replace entries named `name` that reach another cluster (refused otherwise).
    pub overwrite_context: bool,
}

/// What `fetch` wrote.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub name: String,
    pub server_url: String,
    pub backup: Option<PathBuf>,
    /// What was replaced under our name with `overwrite_context` (another cluster's).
    pub replaced: Option<String>,
    /// kubectl's current context after the write (the first file of the chain that sets
    /// one), if any.
    pub current_context: Option<String>,
    /// The server the kubeconfig came from.
    pub from: Target,
    /// Servers tried before it, and why each was not used.
    pub skipped: Vec<String>,
    /// The CA hash of the cluster, and whether this fetch recorded it first.
    pub ca: String,
    pub recorded: crate::cluster_ca::Recorded,
}

/// A kubeconfig read from a server and checked against the CA it serves.
struct Verified {
    k3s: Value,
    ca: String,
}

/// Fetches, checks and merges the admin kubeconfig from the first of `targets` that
/// passes every check (in HA any server serves it). Records the cluster's CA. Writes
/// nothing unless every check passed.
pub fn fetch(
    plan: &Plan,
    secrets: &Secrets,
    targets: &[Target],
    opts: &FetchOptions,
) -> Result<Fetched> {
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    let mut found = None;
    for target in targets {
        match read_verified(plan, secrets, target, opts.ssh_port) {
            Ok(v) => {
                found = Some((target, v));
                break;
            }
            // The user's to fix, and the same at every server: no point trying the next.
            Err(e) if crate::errors::exit_code_for(&e) == crate::errors::EXIT_BAD_INPUT => {
                return Err(e)
            }
            Err(e) => failed.push((describe_target(plan, target), e)),
        }
    }
    let Some((target, verified)) = found else {
        if failed.len() == 1 {
            return Err(failed.pop().unwrap().1);
        }
        let why: Vec<String> = failed.iter().map(|(t, e)| format!("{t}: {e:#}")).collect();
        bail!(
            "no server gave a kubeconfig that passes every check:\n  {}",
            why.join("\n  ")
        );
    };
    let skipped = failed.iter().map(|(t, e)| format!("{t}: {e:#}")).collect();
    let server_url = format!("https://{}:{API_PORT}", url_host(&target.address));
    let ours = adopt(&verified.k3s, &opts.name, &server_url)?;

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
    let replaced = existing
        .as_ref()
        .and_then(|doc| another_clusters_entry(doc, &ours, &opts.name));
    if let (Some(what), false) = (&replaced, opts.overwrite_context) {
        return Err(BadInput(format!(
            "{} already has {what}, which is not this cluster; chocoimg will not replace it \
             silently. Pass --overwrite-context to replace it with this cluster's, or \
             --context NAME to write this cluster's under another name",
            path.display()
        ))
        .into());
    }
    // The SSH host key (pinned from the secrets) vouches for this CA: the cluster's.
    let recorded = crate::cluster_ca::record(plan, &verified.ca)?;
    let set_current = opts.use_context || current_context(&opts.chain).is_none();
    let merged = merge(existing.clone(), &ours, &opts.name, set_current)?;
    let backup = match existing {
        Some(_) => Some(backup(&path)?),
        None => None,
    };
    let body = serde_yaml_ng::to_string(&merged).context("encoding the kubeconfig")?;
    if let Err(e) = fsutil::write_atomic(&path, body.as_bytes(), 0o600) {
        // Nothing changed: the backup would only be a copy of the file as it still is.
        if let Some(b) = &backup {
            let _ = std::fs::remove_file(b);
        }
        return Err(e);
    }
    Ok(Fetched {
        current_context: current_context(&opts.chain),
        path,
        name: opts.name.clone(),
        server_url,
        backup,
        replaced,
        from: target.clone(),
        skipped,
        ca: verified.ca,
        recorded,
    })
}

/// `master2 at 10.0.0.2`, or the address alone for `--server` in HA.
pub fn describe_target(plan: &Plan, target: &Target) -> String {
    match (&target.instance, &plan.server_names()[..]) {
        (Some(i), _) => format!("{i} at {}", target.address),
        (None, [one]) => format!("{one} at {}", target.address),
        (None, _) => format!("the server at {}", target.address),
    }
}

/// Phase one at one server: its `/cacerts` is the announced CA (and the recorded one),
/// its SSH host key is pinned, its kubeconfig names that CA.
fn read_verified(plan: &Plan, secrets: &Secrets, target: &Target, port: u16) -> Result<Verified> {
    let pinned = pinned_nodes(plan, target);
    let who = match &pinned[..] {
        [one] => one.to_string(),
        _ => format!("the server at {}", target.address),
    };
    let cacerts = get_cacerts(&target.address)?;
    let ca = crate::proof::ca_hash(&cacerts);
    if let Some(announced) = &target.announced_ca {
        if !announced.eq_ignore_ascii_case(&ca) {
            bail!(
                "the CA that {} serves (sha256 {ca}) is not the one {} announced ({announced}); \
                 refusing: something else may be answering at that address",
                target.address,
                target.instance.as_deref().unwrap_or(&who)
            );
        }
    }
    crate::cluster_ca::check(plan, &ca)?;
    let text = read_over_ssh(plan, secrets, &pinned, &target.address, port)?;
    let k3s: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{K3S_KUBECONFIG} from {who} is not YAML"))?;
    let kube_ca = cluster_ca(&k3s, "default")
        .with_context(|| format!("reading the CA of {K3S_KUBECONFIG} from {who}"))?;
    if !same_certificates(&kube_ca, &cacerts) {
        bail!(
            "the kubeconfig from {who} names a CA that is not the one its API serves at \
             /cacerts (sha256 {ca}); refusing to write it"
        );
    }
    Ok(Verified { k3s, ca })
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
                None => Err(crate::errors::BadInput(format!(
                    "ssh.public_key {} does not end in .pub, so its private key cannot be found; name the .pub file",
                    path.display()
                ))
                .into()),
            }
        }
    }
}

/// Runs `sudo -n cat k3s.yaml` on the server over SSH, its host key pinned: the key of
/// one of `nodes` (in HA, `--server` may reach any server).
fn read_over_ssh(
    plan: &Plan,
    secrets: &Secrets,
    nodes: &[&str],
    address: &str,
    port: u16,
) -> Result<String> {
    let key = private_key(plan)?;
    if !key.exists() {
        return Err(crate::errors::BadInput(format!(
            "the SSH private key {} does not exist; it is the key whose .pub went into the images",
            key.display()
        ))
        .into());
    }
    let (node, key_of) = match nodes {
        [one] => (one.to_string(), format!("{one}'s")),
        all => (
            "the server".to_string(),
            format!("the key of any server ({})", all.join(", ")),
        ),
    };
    // One alias for every pinned key: ssh accepts the host if any line's key matches.
    let alias = match nodes {
        [one] => one.to_string(),
        _ => "chocoimg-server".to_string(),
    };
    let mut lines = String::new();
    for n in nodes {
        lines.push_str(&format!("{alias} {}\n", secrets.host_key(n)?.public.trim()));
    }
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let known_hosts = dir.path().join("known_hosts");
    fsutil::write_atomic(&known_hosts, lines.as_bytes(), 0o600)?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        // The pin is by node name, whatever address DHCP gave it.
        .arg("-o")
        .arg(format!("HostKeyAlias={alias}"))
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
            "the SSH host key at {address} is not {key_of} (pinned in {}); refusing: \
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
}
