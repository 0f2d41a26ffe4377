//! Finds K3s servers announced over mDNS (`_k3s._tcp.local.`, IPv4) and judges each
//! announcement: its TXT by the shared rule (`txt`), then each address it gives by what
//! it serves. An address is used only once it serves the announced CA at `/cacerts` AND
//! completes TLS on 6443 with that CA as the only root: anyone on the LAN can copy an
//! announcement and `/cacerts`, only master1 holds the CA's key.
use super::k3s_api::{prove_address, Unproven};
use super::mdns::{self, Announcement, Heard, Name, Querier};
pub use super::txt::{self, Keys, Verdict};
use anyhow::Result;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The DNS-SD service type master1 publishes.
pub const SERVICE_TYPE: &str = "_k3s._tcp.local.";

/// One announcement as one responder sent it, with our verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// The instance's full DNS-SD name, e.g. `master1._k3s._tcp.local.`.
    pub name: String,
    /// The instance label (the node's hostname, or the name its responder moved to).
    pub instance: String,
    /// The address the answer came from.
    pub responder: String,
    /// The SRV target, e.g. `master1.local.`.
    pub host: String,
    /// IPv4 addresses as announced, sorted; may be empty (an answer with only IPv6).
    pub addresses: Vec<Ipv4Addr>,
    /// IPv6 addresses as announced (never used: the nodes announce IPv4).
    pub ipv6: Vec<Ipv6Addr>,
    pub port: u16,
    pub cluster: Option<String>,
    pub k3s: Option<String>,
    /// Hex SHA-256 of the server's `/cacerts`, as announced.
    pub ca: Option<String>,
    /// The TXT's verdict: verified (our proof), foreign-cluster, forged, malformed.
    pub verdict: Verdict,
    /// Why the TXT is not verified.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// Verified only: the addresses that proved they hold the announced CA's key.
    pub proven: Vec<Ipv4Addr>,
    /// Verified only: the addresses that did not, and why.
    pub unproven: BTreeMap<Ipv4Addr, String>,
    /// Milliseconds from the start of browsing to this answer.
    pub elapsed_ms: u64,
    /// Whether `ca` is the cluster's CA this laptop recorded (`cluster_ca`); None when
    /// nothing is recorded yet or the announcement is not verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_recorded: Option<bool>,
}

impl Server {
    /// The address to use: a verified announcement's first proven address.
    pub fn usable_address(&self) -> Option<Ipv4Addr> {
        (self.verdict == Verdict::Verified)
            .then(|| self.proven.first().copied())
            .flatten()
    }

    /// What the table's STATUS column says.
    pub fn status(&self) -> String {
        match (&self.verdict, self.usable_address()) {
            (Verdict::ForeignCluster, _) => format!(
                "foreign cluster ({})",
                self.cluster.as_deref().unwrap_or("unnamed")
            ),
            (Verdict::Verified, Some(_)) if self.ca_recorded == Some(false) => {
                "verified, but NOT the recorded CA (split brain or stale reinstall)".into()
            }
            (Verdict::Verified, Some(_)) => "verified".into(),
            (Verdict::Verified, None) if self.addresses.is_empty() => {
                "ours, valid proof, no IPv4 address".into()
            }
            (Verdict::Verified, None) => "valid proof, but no address holds its CA".into(),
            // Forged claims our cluster: why matters (a lost stick's agent token in HA).
            (Verdict::Forged, _) => format!("forged: {}", self.why),
            (v, _) => v.label().into(),
        }
    }
}

/// Marks each verified announcement whose CA is (or is not) the recorded one.
pub fn mark_recorded(servers: &mut [Server], recorded: Option<&str>) {
    for s in servers.iter_mut() {
        s.ca_recorded = match (recorded, &s.verdict) {
            (Some(r), Verdict::Verified) => Some(s.ca.as_deref() == Some(r)),
            _ => None,
        };
    }
}

/// How long to browse, and whether to stop early.
#[derive(Debug, Clone, Copy)]
pub struct Browse {
    pub timeout: Duration,
    /// Stop at the end of the first round in which this many servers (by name) proved an
    /// address: 1 for the first one; every server of an HA cluster for `fetch`, which
    /// may have to try each. None: browse for the whole timeout.
    pub stop_after_verified: Option<usize>,
}

/// Browses the LAN for `_k3s._tcp` over IPv4 and returns every announcement heard, one
/// per responder and TXT, judged and its addresses proven; usable ones first.
pub fn browse(cluster: &str, keys: Keys, opts: Browse) -> Result<Vec<Server>> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let querier = Querier::new()?;
    let service = Name::parse(SERVICE_TYPE);
    let mut heard = Heard::default();
    let mut proofs = AddressProofs::default();
    // Queries at 0, 1, 2, 4, 8 s...: one lost packet costs a second, not the browse.
    let mut pause = Duration::from_secs(1);
    let mut servers = loop {
        mdns::ask_for_instances(&querier, &service);
        querier.ask_missing(&heard.announcements(&service));
        let round_end = (Instant::now() + pause).min(deadline);
        querier.listen(&mut heard, round_end);
        pause = (pause * 2).min(Duration::from_secs(4));
        let done = Instant::now() >= deadline;
        if opts.stop_after_verified.is_some() || done {
            let servers = judge_all(&heard.announcements(&service), cluster, keys, &mut proofs);
            let verified: BTreeSet<&str> = servers
                .iter()
                .filter(|s| s.usable_address().is_some())
                .map(|s| s.instance.as_str())
                .collect();
            let enough = opts
                .stop_after_verified
                .is_some_and(|n| !verified.is_empty() && verified.len() >= n);
            if done || enough {
                break servers;
            }
        }
    };
    servers.sort_by_key(|s| (s.usable_address().is_none(), s.elapsed_ms));
    Ok(servers)
}

/// Judges every announcement, proving the addresses of verified ones (each address and
/// CA once, in parallel: a silent rogue address costs one timeout, not one each).
fn judge_all(
    heard: &[Announcement],
    cluster: &str,
    keys: Keys,
    proofs: &mut AddressProofs,
) -> Vec<Server> {
    let mut servers: Vec<Server> = heard
        .iter()
        .map(|a| {
            to_server(
                a,
                txt::judge(a.txt.as_deref().unwrap_or(&[]), cluster, keys),
            )
        })
        .collect();
    let wanted: BTreeSet<(Ipv4Addr, String)> = servers
        .iter()
        .filter(|s| s.verdict == Verdict::Verified)
        .flat_map(|s| {
            let ca = s.ca.clone().unwrap_or_default();
            s.addresses.iter().map(move |a| (*a, ca.clone()))
        })
        .collect();
    proofs.prove(wanted);
    for s in servers
        .iter_mut()
        .filter(|s| s.verdict == Verdict::Verified)
    {
        let ca = s.ca.clone().unwrap_or_default();
        for a in &s.addresses {
            match &proofs.done[&(*a, ca.clone())] {
                Ok(()) => s.proven.push(*a),
                Err(why) => {
                    s.unproven.insert(*a, why.describe(&s.instance, &ca));
                }
            }
        }
    }
    servers
}

fn to_server(a: &Announcement, judged: txt::Judged) -> Server {
    Server {
        name: a.instance.display(),
        instance: a.label(),
        responder: a.responder.to_string(),
        host: a.host.as_ref().map(Name::display).unwrap_or_default(),
        addresses: a.ipv4.clone(),
        ipv6: a.ipv6.clone(),
        port: a.port.unwrap_or(0),
        cluster: judged.cluster,
        k3s: judged.k3s,
        ca: judged.ca,
        verdict: judged.verdict,
        why: judged.why,
        proven: Vec::new(),
        unproven: BTreeMap::new(),
        elapsed_ms: a.elapsed.as_millis() as u64,
        ca_recorded: None,
    }
}

/// The outcome of proving each (address, CA) pair, kept across rounds.
#[derive(Default)]
struct AddressProofs {
    done: BTreeMap<(Ipv4Addr, String), Result<(), Unproven>>,
}

impl AddressProofs {
    fn prove(&mut self, wanted: BTreeSet<(Ipv4Addr, String)>) {
        let todo: Vec<_> = wanted
            .into_iter()
            .filter(|k| !matches!(self.done.get(k), Some(Ok(()))))
            .collect();
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .iter()
                .map(|(a, ca)| scope.spawn(move || prove_address(&a.to_string(), ca)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Unproven::NoAnswer("the check failed".into())))
                })
                .collect()
        });
        for (k, r) in todo.into_iter().zip(results) {
            self.done.insert(k, r);
        }
    }
}

/// One server of the cluster to use: the instance that announced it and its lowest
/// proven address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance: String,
    pub address: Ipv4Addr,
}

/// Which verified servers to use, decided from everything heard: never a silent pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The servers holding the cluster's CA, in the order to try them (the profile's
    /// servers in profile order, then any other name); `notes` says what else was heard.
    Cluster {
        ca: String,
        members: Vec<Member>,
        notes: Vec<String>,
        /// Servers with valid proofs but another CA than the recorded one (split brain,
        /// a stale reinstall): said loudly, never used.
        other_cas: Option<String>,
    },
    /// Verified servers with different CAs and none of them recorded: the user chooses
    /// (`--server`).
    Conflict(String),
    /// Nothing usable.
    Nothing,
}

/// Picks the servers from `servers`: one CA only (the recorded one, `recorded`, when
/// several answer). With one server in the profile, the lowest of its CA's proven
/// addresses, saying so when there were several or when another responder claimed its
/// name; with several (`mode: ha`), each server at its lowest proven address.
pub fn choose(servers: &[Server], server_names: &[&str], recorded: Option<&str>) -> Choice {
    let mut by_ca: BTreeMap<&str, BTreeMap<Ipv4Addr, BTreeSet<&str>>> = BTreeMap::new();
    for s in servers {
        if s.usable_address().is_some() {
            let ca = s.ca.as_deref().unwrap_or_default();
            for a in &s.proven {
                by_ca
                    .entry(ca)
                    .or_default()
                    .entry(*a)
                    .or_default()
                    .insert(&s.instance);
            }
        }
    }
    let list_cas = |by_ca: &BTreeMap<&str, BTreeMap<Ipv4Addr, BTreeSet<&str>>>| {
        by_ca
            .iter()
            .map(|(ca, addrs)| {
                let mark = if Some(*ca) == recorded {
                    " (recorded)"
                } else {
                    ""
                };
                format!("\n  CA sha256 {ca}{mark}: {}", describe(addrs))
            })
            .collect::<String>()
    };
    let mut other_cas = None;
    let (ca, addrs) = match (by_ca.len(), recorded) {
        (0, _) => return Choice::Nothing,
        (1, _) => by_ca.into_iter().next().unwrap(),
        (_, Some(r)) if by_ca.contains_key(r) => {
            let mut msg = format!(
                "servers of this cluster (valid proofs) serve ANOTHER CA than the recorded one \
                 ({r}): a split brain (a server that started a cluster of its own) or a stale \
                 reinstall. They are not used; wipe and re-flash them so they join the \
                 recorded cluster:"
            );
            let others: BTreeMap<_, _> = by_ca.iter().filter(|(ca, _)| **ca != r).collect();
            for (ca, addrs) in others {
                msg.push_str(&format!("\n  CA sha256 {ca}: {}", describe(addrs)));
            }
            other_cas = Some(msg);
            by_ca.remove_entry(r).unwrap()
        }
        _ => {
            let mut msg = String::from(
                "servers with valid proofs but different CAs answered (a reinstalled server \
                 beside a stale one, two servers that each started a cluster, or two clusters \
                 built from one secrets file); not choosing between them:",
            );
            msg.push_str(&list_cas(&by_ca));
            if let Some(r) = recorded {
                msg.push_str(&format!("\nNone is the recorded CA ({r})."));
            }
            msg.push_str("\nChoose one with --server ADDRESS.");
            return Choice::Conflict(msg);
        }
    };
    let mut notes = Vec::new();
    let members = match server_names {
        [server_name] => vec![single_member(&addrs, server_name, &mut notes)],
        _ => ha_members(&addrs, server_names, &mut notes),
    };
    // Announcements taking a server's name without holding the CA.
    let claimers: Vec<&Server> = servers
        .iter()
        .filter(|s| s.usable_address().is_none() && server_names.contains(&s.instance.as_str()))
        .collect();
    let claims: BTreeSet<String> = claimers
        .iter()
        .map(|s| format!("{} ({})", s.responder, s.status()))
        .collect();
    if !claims.is_empty() {
        let names: BTreeSet<String> = claimers
            .iter()
            .map(|s| format!("{:?}", s.instance))
            .collect();
        let names: Vec<String> = names.into_iter().collect();
        notes.push(format!(
            "name conflict: {} also claim{} the name {} without holding its CA; ignored",
            claims.iter().cloned().collect::<Vec<_>>().join(", "),
            if claims.len() == 1 { "s" } else { "" },
            names.join(", ")
        ));
    }
    Choice::Cluster {
        ca: ca.to_string(),
        members,
        notes,
        other_cas,
    }
}

/// `10.0.0.1 (master1), 10.0.0.2 (master1-wifi)`.
fn describe(addrs: &BTreeMap<Ipv4Addr, BTreeSet<&str>>) -> String {
    addrs
        .iter()
        .map(|(a, names)| {
            format!(
                "{a} ({})",
                names.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one server of a single-server cluster: the lowest address holding its CA,
/// whatever name announced it.
fn single_member(
    addrs: &BTreeMap<Ipv4Addr, BTreeSet<&str>>,
    server_name: &str,
    notes: &mut Vec<String>,
) -> Member {
    let (&address, names) = addrs.iter().next().expect("a CA has a proven address");
    let instance = names
        .iter()
        .next()
        .copied()
        .unwrap_or(server_name)
        .to_string();
    if addrs.len() > 1 {
        notes.push(format!(
            "{server_name} answers with the same CA at {}; using {address}",
            describe(addrs)
        ));
    }
    if instance != server_name {
        notes.push(format!(
            "the verified server announces itself as {instance:?}, not {server_name:?}: \
             another responder took the name"
        ));
    }
    Member { instance, address }
}

/// Every server of an HA cluster holding the CA, one per announced name at its lowest
/// address: the profile's servers in profile order, then other names (a name Avahi
/// changed after a conflict), said.
fn ha_members(
    addrs: &BTreeMap<Ipv4Addr, BTreeSet<&str>>,
    server_names: &[&str],
    notes: &mut Vec<String>,
) -> Vec<Member> {
    let mut by_name: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for (a, names) in addrs {
        for n in names {
            by_name.entry(n).or_default().push(*a);
        }
    }
    let rank = |n: &str| {
        server_names
            .iter()
            .position(|s| *s == n)
            .unwrap_or(server_names.len())
    };
    let mut names: Vec<&str> = by_name.keys().copied().collect();
    names.sort_by_key(|n| (rank(n), *n));
    names
        .into_iter()
        .map(|name| {
            let at = &by_name[name];
            if at.len() > 1 {
                let all: Vec<String> = at.iter().map(Ipv4Addr::to_string).collect();
                notes.push(format!(
                    "{name} answers with the same CA at {}; using {}",
                    all.join(", "),
                    at[0]
                ));
            }
            if rank(name) == server_names.len() {
                notes.push(format!(
                    "{name:?} holds the cluster's CA but is not a server of the profile ({}): \
                     a server whose announcement was renamed after a name conflict?",
                    server_names.join(", ")
                ));
            }
            Member {
                instance: name.to_string(),
                address: at[0],
            }
        })
        .collect()
}

/// What to tell the user when no verified server answered.
pub fn nothing_found_hint(cluster: &str, timeout: Duration, heard: &[Server]) -> String {
    let mut s = format!(
        "no verified K3s server of cluster {cluster} answered: browsed {SERVICE_TYPE} over IPv4 \
         on every interface of this machine for {:.1} s",
        timeout.as_secs_f64()
    );
    let ours: Vec<&Server> = heard
        .iter()
        .filter(|s| s.verdict == Verdict::Verified)
        .collect();
    let others = heard.len() - ours.len();
    if others > 0 {
        s.push_str(&format!(
            " ({others} other announcement{} heard, none of cluster {cluster} with a valid proof)",
            if others == 1 { "" } else { "s" }
        ));
    }
    for f in heard.iter().filter(|s| s.verdict == Verdict::Forged) {
        s.push_str(&format!(
            ".\n{} (from {}) claims cluster {cluster} but is forged: {}",
            f.instance, f.responder, f.why
        ));
    }
    for o in &ours {
        if o.addresses.is_empty() {
            let v6: Vec<String> = o.ipv6.iter().map(|a| a.to_string()).collect();
            s.push_str(&format!(
                ".\n{} is ours, with a valid proof, but announced no IPv4 address{}: K3s agents \
                 and kubectl here need one. Is its Avahi limited to IPv6, or its IPv4 lease lost?",
                o.instance,
                if v6.is_empty() {
                    String::new()
                } else {
                    format!(" (only IPv6: {})", v6.join(", "))
                }
            ));
        } else {
            let why: Vec<String> = o
                .unproven
                .iter()
                .map(|(a, w)| format!("{a}: {w}"))
                .collect();
            s.push_str(&format!(
                ".\n{} (from {}) has a valid proof, but no address it gives holds its CA ({})",
                o.instance,
                o.responder,
                why.join("; ")
            ));
        }
    }
    s.push_str(
        ".\nLikely causes:\n\
         - this computer is on a different LAN or Wi-Fi network than the nodes (guest network, VPN);\n\
         - the Wi-Fi isolates clients from each other (client/AP isolation), which blocks mDNS;\n\
         - macOS: the terminal lacks Local Network permission (System Settings > Privacy & Security > Local Network: allow your terminal app, then retry);\n\
         - the server (in `mode: ha` every server) is still installing (the install and K3s's first start take 10-20 minutes) or is off;\n\
         - the secrets in out/<cluster>/secrets.yaml are not the ones the servers' images were built with.\n\
         If you know a server's address, `chocoimg fetch-kubeconfig --server ADDRESS` skips discovery.",
    );
    s
}
