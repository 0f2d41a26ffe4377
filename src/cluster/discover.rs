//! Finds K3s servers announced over mDNS (`_k3s._tcp.local.`, IPv4) and judges each
//! announcement with the cluster's agent token: ours and proven, another cluster's, or
//! forged. Only verified answers are ever used.
use crate::proof;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The DNS-SD service type master1 publishes.
pub const SERVICE_TYPE: &str = "_k3s._tcp.local.";

/// What an announcement is worth to us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Verdict {
    /// Our cluster, and the proof checks with our agent token.
    Verified,
    /// Another cluster's server (named by its `cluster=`); never used.
    ForeignCluster,
    /// Claims our cluster but the proof does not check (or the TXT is malformed).
    Forged,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::ForeignCluster => "foreign cluster",
            Verdict::Forged => "forged",
        }
    }
}

/// One announcement as seen on the LAN, with our verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// The instance's full DNS-SD name, e.g. `master1._k3s._tcp.local.`.
    pub name: String,
    /// The instance label (the node's hostname).
    pub instance: String,
    /// The SRV target, e.g. `master1.local.`.
    pub host: String,
    /// IPv4 addresses only, sorted; may be empty (an answer with only IPv6).
    pub addresses: Vec<Ipv4Addr>,
    pub port: u16,
    pub cluster: Option<String>,
    pub k3s: Option<String>,
    /// Hex SHA-256 of the server's `/cacerts`, as announced.
    pub ca: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Milliseconds from the start of browsing to this answer.
    pub elapsed_ms: u64,
}

impl Server {
    /// The address to use: verified and with IPv4.
    pub fn usable_address(&self) -> Option<Ipv4Addr> {
        (self.verdict == Verdict::Verified)
            .then(|| self.addresses.first().copied())
            .flatten()
    }
}

/// Judges a TXT record (key → value) against our cluster and agent token.
pub fn judge(txt: &BTreeMap<String, String>, cluster: &str, agent_token: &str) -> Verdict {
    let get = |k: &str| txt.get(k).map(String::as_str);
    if get("cluster") != Some(cluster) {
        return Verdict::ForeignCluster;
    }
    let ok = get("txtvers") == Some("1")
        && get("role") == Some("server")
        && matches!(get("ca"), Some(ca) if ca.len() == 64 && ca.bytes().all(|b| b.is_ascii_hexdigit()))
        && matches!(
            (get("ca"), get("proof")),
            (Some(ca), Some(p)) if proof::verify(agent_token, cluster, ca, p)
        );
    if ok {
        Verdict::Verified
    } else {
        Verdict::Forged
    }
}

/// How long to browse, and whether to stop at the first verified server with IPv4.
#[derive(Debug, Clone, Copy)]
pub struct Browse {
    pub timeout: Duration,
    pub stop_at_first_verified: bool,
}

/// Browses the LAN for `_k3s._tcp` over IPv4 and returns every server heard, judged,
/// deduplicated by full name (the latest answer wins), verified ones first.
pub fn browse(cluster: &str, agent_token: &str, opts: Browse) -> Result<Vec<Server>> {
    let start = Instant::now();
    let daemon = mdns_sd::ServiceDaemon::new().context("starting the mDNS browser")?;
    // IPv4 on the LAN only: the nodes announce A records only, IPv6 link-local answers
    // are no use to a K3s agent or to kubectl, and no node lives on loopback.
    daemon
        .disable_interface(vec![mdns_sd::IfKind::IPv6, mdns_sd::IfKind::LoopbackV4])
        .context("limiting mDNS to IPv4")?;
    let events = daemon.browse(SERVICE_TYPE).context("browsing _k3s._tcp")?;
    let deadline = start + opts.timeout;
    let mut found: BTreeMap<String, Server> = BTreeMap::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let event = match events.recv_timeout(deadline - now) {
            Ok(e) => e,
            Err(_) => break,
        };
        let mdns_sd::ServiceEvent::ServiceResolved(svc) = event else {
            continue;
        };
        let server = to_server(&svc, cluster, agent_token, start.elapsed());
        let done = opts.stop_at_first_verified && server.usable_address().is_some();
        found.insert(server.name.clone(), server);
        if done {
            break;
        }
    }
    // Best effort: the process may end right after; nothing to clean up on the LAN.
    let _ = daemon.shutdown();
    let mut servers: Vec<Server> = found.into_values().collect();
    servers.sort_by_key(|s| (s.verdict != Verdict::Verified, s.elapsed_ms));
    Ok(servers)
}

fn to_server(
    svc: &mdns_sd::ResolvedService,
    cluster: &str,
    agent_token: &str,
    elapsed: Duration,
) -> Server {
    let txt: BTreeMap<String, String> = svc
        .get_properties()
        .iter()
        .map(|p| (p.key().to_string(), p.val_str().to_string()))
        .collect();
    let mut addresses: Vec<Ipv4Addr> = svc.get_addresses_v4().into_iter().collect();
    addresses.sort();
    let name = svc.get_fullname().to_string();
    let instance = name
        .strip_suffix(&format!(".{SERVICE_TYPE}"))
        .unwrap_or(&name)
        .to_string();
    Server {
        verdict: judge(&txt, cluster, agent_token),
        instance,
        host: svc.get_hostname().to_string(),
        addresses,
        port: svc.get_port(),
        cluster: txt.get("cluster").cloned(),
        k3s: txt.get("k3s").cloned(),
        ca: txt.get("ca").cloned(),
        name,
        elapsed_ms: elapsed.as_millis() as u64,
    }
}

/// What to tell the user when no verified server answered.
pub fn nothing_found_hint(cluster: &str, timeout: Duration, heard: usize) -> String {
    let mut s = format!(
        "no verified K3s server of cluster {cluster} answered: browsed {SERVICE_TYPE} over IPv4 \
         on every interface of this machine for {:.1} s",
        timeout.as_secs_f64()
    );
    if heard > 0 {
        s.push_str(&format!(
            " ({heard} other announcement{} heard, none ours with a valid proof)",
            if heard == 1 { "" } else { "s" }
        ));
    }
    s.push_str(
        ".\nLikely causes:\n\
         - this computer is on a different LAN or Wi-Fi network than the nodes (guest network, VPN);\n\
         - the Wi-Fi isolates clients from each other (client/AP isolation), which blocks mDNS;\n\
         - macOS: the terminal lacks Local Network permission (System Settings > Privacy & Security > Local Network: allow your terminal app, then retry);\n\
         - master1 is still installing (the install and K3s's first start take 10-20 minutes) or is off;\n\
         - the secrets in out/<cluster>/secrets.yaml are not the ones master1's image was built with.\n\
         If you know master1's address, `chocoimg fetch-kubeconfig --server ADDRESS` skips discovery.",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn judges_ours_foreign_and_forged() {
        let ca = proof::ca_hash(b"ca");
        let good = proof::proof("tok", "c1", &ca);
        let base = |proof: &str, cluster: &str| {
            txt(&[
                ("txtvers", "1"),
                ("cluster", cluster),
                ("role", "server"),
                ("k3s", "v1.28.15+k3s1"),
                ("ca", &ca),
                ("proof", proof),
            ])
        };
        assert_eq!(judge(&base(&good, "c1"), "c1", "tok"), Verdict::Verified);
        assert_eq!(judge(&base(&good, "c1"), "c1", "other"), Verdict::Forged);
        assert_eq!(judge(&base("00", "c1"), "c1", "tok"), Verdict::Forged);
        assert_eq!(
            judge(&base(&good, "c2"), "c1", "tok"),
            Verdict::ForeignCluster
        );
        let mut no_role = base(&good, "c1");
        no_role.remove("role");
        assert_eq!(judge(&no_role, "c1", "tok"), Verdict::Forged);
        assert_eq!(judge(&txt(&[]), "c1", "tok"), Verdict::ForeignCluster);
    }
}
