//! The nodes' bring-up stages, as the laptop sees them (`chocoimg watch`). Every
//! installed node publishes `_chocoimg-node._tcp` (see [`crate::bringup`]) whose TXT
//! record says which stage it is in and since when, with an HMAC proof keyed with the
//! agent token ([`proof::StageClaim`]). The laptop judges each announcement like master1's
//! (ours and proven, another cluster's, or forged), keeps one row per profile node, and
//! never lets an older stage replace a newer one (a replayed announcement).
use super::discover::Verdict;
use crate::bringup::{Stage, MAX_REASON, SERVICE_TYPE};
use crate::profile::Role;
use crate::proof;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// One stage announcement heard on the LAN, with our verdict. The claimed fields are
/// kept as announced (also when forged) so the user sees what was claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// The DNS-SD instance label (the announcing host's name; anyone can pick it).
    pub instance: String,
    /// IPv4 addresses of the announcing host, sorted.
    pub addresses: Vec<Ipv4Addr>,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub stage: Option<String>,
    /// When the node entered the stage (Unix seconds, the node's clock).
    pub since: Option<u64>,
    pub reason: Option<String>,
    pub verdict: Verdict,
}

/// Judges a stage TXT record: another cluster's, ours with a proof that checks, or
/// forged (a bad proof, or a record that is not well formed).
pub fn judge(txt: &BTreeMap<String, String>, cluster: &str, agent_token: &str) -> Verdict {
    let get = |k: &str| txt.get(k).map(String::as_str);
    if get("cluster") != Some(cluster) {
        return Verdict::ForeignCluster;
    }
    let well_formed = |node: &str, stage: &str, since: &str, reason: &str| {
        let failed = stage == Stage::Failed.as_str();
        crate::plan::is_rfc1123_label(node)
            && Stage::parse(stage).is_some()
            && !since.is_empty()
            && since.len() <= 12
            && since.bytes().all(|b| b.is_ascii_digit())
            && failed != reason.is_empty()
            && reason.len() <= MAX_REASON
            && !reason.contains('|')
    };
    let ok = match (
        get("txtvers"),
        get("node"),
        get("stage"),
        get("since"),
        get("proof"),
    ) {
        (Some("1"), Some(node), Some(stage), Some(since), Some(p)) => {
            let reason = get("reason").unwrap_or("");
            well_formed(node, stage, since, reason)
                && since.parse::<u64>().is_ok_and(|since| {
                    let claim = proof::StageClaim {
                        cluster,
                        node,
                        stage,
                        since,
                        reason,
                    };
                    claim.verify(agent_token, p)
                })
        }
        _ => false,
    };
    if ok {
        Verdict::Verified
    } else {
        Verdict::Forged
    }
}

impl Announcement {
    pub fn from_txt(
        instance: String,
        addresses: Vec<Ipv4Addr>,
        txt: &BTreeMap<String, String>,
        cluster: &str,
        agent_token: &str,
    ) -> Announcement {
        Announcement {
            verdict: judge(txt, cluster, agent_token),
            instance,
            addresses,
            cluster: txt.get("cluster").cloned(),
            node: txt.get("node").cloned(),
            stage: txt.get("stage").cloned(),
            since: txt.get("since").and_then(|s| s.parse().ok()),
            reason: txt.get("reason").cloned(),
        }
    }

    /// The stage as announced, with its reason: `joined`, `failed: K3s unit failed`.
    pub fn stage_text(&self) -> String {
        let stage = self.stage.as_deref().unwrap_or("?");
        match &self.reason {
            Some(r) if !r.is_empty() => format!("{stage}: {r}"),
            _ => stage.to_string(),
        }
    }
}

/// What a profile node was last heard to be (verified announcements only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub stage: Stage,
    pub since: u64,
    pub reason: Option<String>,
    pub addresses: Vec<Ipv4Addr>,
}

/// One row of `watch`: a node of the profile.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub node: String,
    pub role: Role,
    /// None until a verified announcement of this node was heard.
    pub seen: Option<Seen>,
}

impl Row {
    pub fn is_up(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|s| s.stage == Stage::up_for(self.role))
    }

    pub fn failed(&self) -> Option<&Seen> {
        self.seen.as_ref().filter(|s| s.stage == Stage::Failed)
    }
}

/// Why an announcement changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ignored {
    /// Claims our cluster, but its proof does not check.
    Forged,
    /// Another cluster's node.
    ForeignCluster,
    /// Proven, but older than what this node already announced: a replay.
    Replayed,
    /// Proven, but for a node that is not in the profile.
    UnknownNode,
}

impl Ignored {
    pub fn label(self) -> &'static str {
        match self {
            Ignored::Forged => "forged",
            Ignored::ForeignCluster => "foreign cluster",
            Ignored::Replayed => "replayed (older than what the node announced since)",
            Ignored::UnknownNode => "not a node of this profile",
        }
    }
}

/// What one announcement did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Row `index` changed (stage, time or address).
    Row(usize),
    /// Nothing changed, and why.
    Ignored(Ignored),
}

/// The table `watch` keeps: one row per profile node.
#[derive(Debug, Clone)]
pub struct Table {
    pub rows: Vec<Row>,
    /// The last announcement per instance, to pass over repeats of the same one.
    last: HashMap<String, Announcement>,
}

impl Table {
    pub fn new(nodes: impl IntoIterator<Item = (String, Role)>) -> Table {
        Table {
            rows: nodes
                .into_iter()
                .map(|(node, role)| Row {
                    node,
                    role,
                    seen: None,
                })
                .collect(),
            last: HashMap::new(),
        }
    }

    /// Applies an announcement; None when it repeats the last one of its instance.
    pub fn apply(&mut self, a: &Announcement) -> Option<Change> {
        if self.last.get(&a.instance) == Some(a) {
            return None;
        }
        self.last.insert(a.instance.clone(), a.clone());
        match a.verdict {
            // A TXT the shared rule cannot read is as unusable as a forged one.
            Verdict::Forged | Verdict::Malformed => return Some(Change::Ignored(Ignored::Forged)),
            Verdict::ForeignCluster => return Some(Change::Ignored(Ignored::ForeignCluster)),
            Verdict::Verified => {}
        }
        // Verified: every field is there and well formed.
        let (Some(node), Some(stage), Some(since)) = (
            a.node.as_deref(),
            a.stage.as_deref().and_then(Stage::parse),
            a.since,
        ) else {
            return Some(Change::Ignored(Ignored::Forged));
        };
        let Some(index) = self.rows.iter().position(|r| r.node == node) else {
            return Some(Change::Ignored(Ignored::UnknownNode));
        };
        let seen = Seen {
            stage,
            since,
            reason: a.reason.clone().filter(|r| !r.is_empty()),
            addresses: a.addresses.clone(),
        };
        let row = &mut self.rows[index];
        if let Some(old) = &row.seen {
            // Newer wins; within the same second, the later stage (a node can pass
            // two stages in one second). An older proven one is a replay.
            if (seen.since, seen.stage) < (old.since, old.stage) {
                return Some(Change::Ignored(Ignored::Replayed));
            }
            if *old == seen {
                return None;
            }
        }
        row.seen = Some(seen);
        Some(Change::Row(index))
    }

    pub fn all_up(&self) -> bool {
        self.rows.iter().all(Row::is_up)
    }

    pub fn first_failed(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.failed().is_some())
    }
}

/// Browses `_chocoimg-node._tcp` over IPv4 and hands every judged announcement to
/// `heard` until it returns false or `deadline` passes. Returns whether `heard` stopped it.
pub fn browse(
    cluster: &str,
    agent_token: &str,
    deadline: Option<Instant>,
    mut heard: impl FnMut(Announcement) -> Result<bool>,
) -> Result<bool> {
    let daemon = mdns_sd::ServiceDaemon::new().context("starting the mDNS browser")?;
    // IPv4 on the LAN only, as discover: the nodes announce A records only.
    daemon
        .disable_interface(vec![mdns_sd::IfKind::IPv6, mdns_sd::IfKind::LoopbackV4])
        .context("limiting mDNS to IPv4")?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .context("browsing _chocoimg-node._tcp")?;
    let stopped = loop {
        // Without a deadline, wake now and then anyway (the channel may close).
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(w) if !w.is_zero() => w,
                _ => break false,
            },
            None => Duration::from_secs(3600),
        };
        let event = match events.recv_timeout(wait) {
            Ok(e) => e,
            Err(_) if deadline.is_none() => continue,
            Err(_) => break false,
        };
        let mdns_sd::ServiceEvent::ServiceResolved(svc) = event else {
            continue;
        };
        let name = svc.get_fullname().to_string();
        let instance = name
            .strip_suffix(&format!(".{SERVICE_TYPE}"))
            .unwrap_or(&name)
            .to_string();
        let mut addresses: Vec<Ipv4Addr> = svc.get_addresses_v4().into_iter().collect();
        addresses.sort();
        let txt: BTreeMap<String, String> = svc
            .get_properties()
            .iter()
            .map(|p| (p.key().to_string(), p.val_str().to_string()))
            .collect();
        let a = Announcement::from_txt(instance, addresses, &txt, cluster, agent_token);
        if !heard(a)? {
            break true;
        }
    };
    // Best effort: the process may end right after; nothing to clean up on the LAN.
    let _ = daemon.shutdown();
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn txt(
        node: &str,
        stage: &str,
        since: u64,
        reason: &str,
        token: &str,
    ) -> BTreeMap<String, String> {
        let mut t: BTreeMap<String, String> = [
            ("txtvers", "1".to_string()),
            ("cluster", "c1".into()),
            ("node", node.into()),
            ("stage", stage.into()),
            ("since", since.to_string()),
            (
                "proof",
                proof::StageClaim {
                    cluster: "c1",
                    node,
                    stage,
                    since,
                    reason,
                }
                .proof(token),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if !reason.is_empty() {
            t.insert("reason".into(), reason.into());
        }
        t
    }

    fn heard(node: &str, stage: &str, since: u64, reason: &str, token: &str) -> Announcement {
        Announcement::from_txt(
            node.into(),
            vec![Ipv4Addr::new(10, 0, 0, 1)],
            &txt(node, stage, since, reason, token),
            "c1",
            "tok",
        )
    }

    #[test]
    fn judges_stage_announcements() {
        let ok = txt("nodo1", "joined", NOW, "", "tok");
        assert_eq!(judge(&ok, "c1", "tok"), Verdict::Verified);
        assert_eq!(judge(&ok, "c2", "tok"), Verdict::ForeignCluster);
        assert_eq!(judge(&ok, "c1", "other"), Verdict::Forged);
        let failed = txt("nodo1", "failed", NOW, "K3s agent unit failed", "tok");
        assert_eq!(judge(&failed, "c1", "tok"), Verdict::Verified);
        // A failed stage without a reason, or a reason on another stage: malformed.
        assert_eq!(
            judge(&txt("nodo1", "failed", NOW, "", "tok"), "c1", "tok"),
            Verdict::Forged
        );
        assert_eq!(
            judge(&txt("nodo1", "joined", NOW, "why", "tok"), "c1", "tok"),
            Verdict::Forged
        );
        // A proven stage nobody defined, a time that is no number: malformed.
        assert_eq!(
            judge(&txt("nodo1", "dancing", NOW, "", "tok"), "c1", "tok"),
            Verdict::Forged
        );
        let mut t = ok.clone();
        t.insert("since".into(), "+1800000000".into());
        assert_eq!(judge(&t, "c1", "tok"), Verdict::Forged);
        // The proof binds the time and the node.
        let mut t = ok.clone();
        t.insert("since".into(), (NOW + 1).to_string());
        assert_eq!(judge(&t, "c1", "tok"), Verdict::Forged);
        let mut t = ok;
        t.insert("node".into(), "master1".into());
        assert_eq!(judge(&t, "c1", "tok"), Verdict::Forged);
    }

    #[test]
    fn table_keeps_newer_stages_and_ignores_forged_and_replayed() {
        let mut t = Table::new([
            ("master1".to_string(), Role::Server),
            ("nodo1".to_string(), Role::Agent),
        ]);
        let first = heard("master1", "first-boot", NOW, "", "tok");
        assert_eq!(t.apply(&first), Some(Change::Row(0)));
        assert_eq!(t.apply(&first), None, "a repeat changes nothing");
        // Same second, a later stage: taken.
        let installing = heard("master1", "installing-k3s", NOW, "", "tok");
        assert_eq!(t.apply(&installing), Some(Change::Row(0)));
        let forged = heard("master1", "failed", NOW + 5, "x", "not-the-token");
        assert_eq!(t.apply(&forged), Some(Change::Ignored(Ignored::Forged)));
        assert!(t.first_failed().is_none());
        // The first announcement again: proven, but older. A replay.
        let mut replay = first.clone();
        replay.instance = "elsewhere".into();
        assert_eq!(t.apply(&replay), Some(Change::Ignored(Ignored::Replayed)));
        assert_eq!(t.rows[0].seen.as_ref().unwrap().stage, Stage::InstallingK3s);
        assert!(!t.all_up());
        t.apply(&heard("master1", "k3s-running", NOW + 60, "", "tok"));
        t.apply(&heard("nodo1", "joined", NOW + 90, "", "tok"));
        assert!(t.all_up());
        assert_eq!(
            t.apply(&heard("nodo2", "joined", NOW, "", "tok")),
            Some(Change::Ignored(Ignored::UnknownNode))
        );
        t.apply(&heard(
            "nodo1",
            "failed",
            NOW + 95,
            "K3s agent unit failed",
            "tok",
        ));
        assert_eq!(t.first_failed().unwrap().node, "nodo1");
        assert!(!t.all_up());
    }
}
