//! Finds K3s servers announced over mDNS (`_k3s._tcp.local.`, IPv4) and judges each
//! announcement: its TXT by the shared rule (`txt`), then each address it gives by what
//! it serves. An address is used only once it serves the announced CA at `/cacerts` AND
//! completes TLS on 6443 with that CA as the only root: anyone on the LAN can copy an
//! announcement and `/cacerts`, only master1 holds the CA's key.
use super::k3s_api::{prove_address, Unproven};
use super::mdns::{self, Announcement, Heard, Name, Querier};
pub use super::txt::{self, Verdict};
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
            (Verdict::Verified, Some(_)) => "verified".into(),
            (Verdict::Verified, None) if self.addresses.is_empty() => {
                "ours, valid proof, no IPv4 address".into()
            }
            (Verdict::Verified, None) => "valid proof, but no address holds its CA".into(),
            (v, _) => v.label().into(),
        }
    }
}

/// How long to browse, and whether to stop at the first round with a usable server.
#[derive(Debug, Clone, Copy)]
pub struct Browse {
    pub timeout: Duration,
    pub stop_at_first_verified: bool,
}

/// Browses the LAN for `_k3s._tcp` over IPv4 and returns every announcement heard, one
/// per responder and TXT, judged and its addresses proven; usable ones first.
pub fn browse(cluster: &str, agent_token: &str, opts: Browse) -> Result<Vec<Server>> {
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
        if opts.stop_at_first_verified || done {
            let servers = judge_all(
                &heard.announcements(&service),
                cluster,
                agent_token,
                &mut proofs,
            );
            if done || servers.iter().any(|s| s.usable_address().is_some()) {
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
    agent_token: &str,
    proofs: &mut AddressProofs,
) -> Vec<Server> {
    let mut servers: Vec<Server> = heard
        .iter()
        .map(|a| {
            to_server(
                a,
                txt::judge(a.txt.as_deref().unwrap_or(&[]), cluster, agent_token),
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

/// Which verified server to use, decided from everything heard: never a silent pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// One CA: its lowest proven address; `notes` says what else was heard and why this.
    One {
        address: Ipv4Addr,
        instance: String,
        ca: String,
        notes: Vec<String>,
    },
    /// Verified servers with different CAs: the user chooses (`--server`).
    Conflict(String),
    /// Nothing usable.
    Nothing,
}

/// Picks the server from `servers`: one CA only, the lowest of its proven addresses,
/// saying so when there were several or when another responder claimed its name.
pub fn choose(servers: &[Server], server_name: &str) -> Choice {
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
    let describe = |addrs: &BTreeMap<Ipv4Addr, BTreeSet<&str>>| {
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
    };
    let (ca, addrs) = match by_ca.len() {
        0 => return Choice::Nothing,
        1 => by_ca.into_iter().next().unwrap(),
        _ => {
            let mut msg = String::from(
                "servers with valid proofs but different CAs answered (a reinstalled master1 \
                 beside a stale one, or two clusters built from one secrets file); not \
                 choosing between them:",
            );
            for (ca, addrs) in &by_ca {
                msg.push_str(&format!("\n  CA sha256 {ca}: {}", describe(addrs)));
            }
            msg.push_str("\nChoose one with --server ADDRESS.");
            return Choice::Conflict(msg);
        }
    };
    let (&address, names) = addrs.iter().next().unwrap();
    let instance = names
        .iter()
        .next()
        .copied()
        .unwrap_or(server_name)
        .to_string();
    let mut notes = Vec::new();
    if addrs.len() > 1 {
        notes.push(format!(
            "{server_name} answers with the same CA at {}; using {address}",
            describe(&addrs)
        ));
    }
    if instance != server_name {
        notes.push(format!(
            "the verified server announces itself as {instance:?}, not {server_name:?}: \
             another responder took the name"
        ));
    }
    let claims: BTreeSet<String> = servers
        .iter()
        .filter(|s| s.usable_address().is_none() && s.instance == server_name)
        .map(|s| format!("{} ({})", s.responder, s.status()))
        .collect();
    if !claims.is_empty() {
        notes.push(format!(
            "name conflict: {} also claim{} the name {server_name:?} without holding its CA; ignored",
            claims.iter().cloned().collect::<Vec<_>>().join(", "),
            if claims.len() == 1 { "s" } else { "" }
        ));
    }
    Choice::One {
        address,
        instance,
        ca: ca.to_string(),
        notes,
    }
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
         - master1 is still installing (the install and K3s's first start take 10-20 minutes) or is off;\n\
         - the secrets in out/<cluster>/secrets.yaml are not the ones master1's image was built with.\n\
         If you know master1's address, `chocoimg fetch-kubeconfig --server ADDRESS` skips discovery.",
    );
    s
}
