//! The nodes' bring-up stages, as the laptop sees them (`chocoimg watch`). Every
//! installed node publishes `_chocoimg-node._tcp` (see [`crate::bringup`]) whose TXT
//! record says which stage it is in and since when, with an HMAC proof keyed with the
//! agent token ([`proof::StageClaim`]). The laptop judges each announcement like master1's
//! (ours and proven, another cluster's, or forged), keeps one row per profile node, and
//! never lets an older stage replace a newer one (a replayed announcement).
use super::mdns;
use super::txt::{self, Txt, Verdict};
use crate::bringup::{Stage, MAX_REASON, SERVICE_TYPE};
use crate::profile::Role;
use crate::proof;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The keys of a stage announcement (read by the shared TXT rule, [`txt::Txt`]).
pub const STAGE_KEYS: &[&str] = &[
    "txtvers", "cluster", "node", "stage", "since", "reason", "proof",
];

/// One stage announcement heard on the LAN (one responder's, one TXT), with our verdict.
/// The claimed fields are kept as announced (also when forged) so the user sees what
/// was claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// The DNS-SD instance label (the announcing host's name; anyone can pick it).
    pub instance: String,
    /// The address the answer came from.
    pub responder: String,
    /// IPv4 addresses of the announcing host, sorted.
    pub addresses: Vec<Ipv4Addr>,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub stage: Option<String>,
    /// When the node entered the stage (Unix seconds, the node's clock).
    pub since: Option<u64>,
    pub reason: Option<String>,
    pub verdict: Verdict,
    /// Why it is not verified (empty when it is).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// Judges a stage announcement's TXT strings by the shared rule (a key we use twice, or
/// a value that is not UTF-8: malformed), then: another cluster's, ours with a proof
/// that checks, or forged (a bad proof, or fields that are not well formed).
pub fn judge<S: AsRef<[u8]>>(strings: &[S], cluster: &str, agent_token: &str) -> (Verdict, String) {
    let txt = match Txt::parse(strings, STAGE_KEYS) {
        Ok(t) => t,
        Err(e) => return (Verdict::Malformed, e.to_string()),
    };
    if txt.get("cluster") != Some(cluster) {
        return (
            Verdict::ForeignCluster,
            "it announces another cluster".into(),
        );
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
    let fields = (
        txt.get("txtvers"),
        txt.get("node"),
        txt.get("stage"),
        txt.get("since"),
        txt.get("proof"),
    );
    let (Some("1"), Some(node), Some(stage), Some(since), Some(p)) = fields else {
        return (
            Verdict::Forged,
            "not a txtvers=1 stage announcement with node, stage, since and proof".into(),
        );
    };
    let reason = txt.get("reason").unwrap_or("");
    if !well_formed(node, stage, since, reason) {
        return (Verdict::Forged, "its fields are not well formed".into());
    }
    let claim = proof::StageClaim {
        cluster,
        node,
        stage,
        since: since.parse().unwrap_or(u64::MAX),
        reason,
    };
    if txt::is_sha256_hex(p) && claim.verify(agent_token, p) {
        (Verdict::Verified, String::new())
    } else {
        (
            Verdict::Forged,
            "its proof does not check with this cluster's agent token".into(),
        )
    }
}

impl Announcement {
    /// Judges one responder's announcement (TXT strings as sent).
    pub fn judge<S: AsRef<[u8]>>(
        instance: String,
        responder: String,
        addresses: Vec<Ipv4Addr>,
        strings: &[S],
        cluster: &str,
        agent_token: &str,
    ) -> Announcement {
        let (verdict, why) = judge(strings, cluster, agent_token);
        // What it claims, for the user; nothing of a malformed one.
        let txt = Txt::parse(strings, STAGE_KEYS).unwrap_or_default();
        let get = |k: &str| txt.get(k).map(str::to_string);
        Announcement {
            verdict,
            why,
            instance,
            responder,
            addresses,
            cluster: get("cluster"),
            node: get("node"),
            stage: get("stage"),
            since: txt.get("since").and_then(|s| s.parse().ok()),
            reason: get("reason"),
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
    /// Not readable by the shared TXT rule (a key twice, a value that is not UTF-8).
    Malformed,
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
            Ignored::Malformed => "malformed",
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
    /// Every announcement applied, to pass over repeats (each round hears them again).
    heard: HashSet<String>,
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
            heard: HashSet::new(),
        }
    }

    /// Applies an announcement; None when it was heard before.
    pub fn apply(&mut self, a: &Announcement) -> Option<Change> {
        if !self.heard.insert(format!("{a:?}")) {
            return None;
        }
        match a.verdict {
            Verdict::Forged => return Some(Change::Ignored(Ignored::Forged)),
            Verdict::Malformed => return Some(Change::Ignored(Ignored::Malformed)),
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

    /// With several servers (`mode: ha`): the servers that are up, in the order they got
    /// there (the time each announced entering its up stage; the profile's order within
    /// one second). Empty with one server: there is no order to tell.
    pub fn join_order(&self) -> Vec<&Row> {
        let servers = self.rows.iter().filter(|r| r.role == Role::Server).count();
        if servers < 2 {
            return Vec::new();
        }
        let mut up: Vec<(usize, &Row)> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.role == Role::Server && r.is_up())
            .collect();
        up.sort_by_key(|(i, r)| (r.seen.as_ref().map(|s| s.since), *i));
        up.into_iter().map(|(_, r)| r).collect()
    }
}

/// How long one round of questions listens: the table is at most this stale.
const ROUND: Duration = Duration::from_millis(1500);

/// Browses `_chocoimg-node._tcp` over IPv4 with one-shot queries, in rounds (each round
/// hears every node afresh, so a changed TXT replaces the old one), and hands every
/// judged announcement to `heard` until it returns false or `deadline` passes. Returns
/// whether `heard` stopped it.
pub fn browse(
    cluster: &str,
    agent_token: &str,
    deadline: Option<Instant>,
    mut heard: impl FnMut(Announcement) -> Result<bool>,
) -> Result<bool> {
    let querier = mdns::Querier::new()?;
    let service = mdns::Name::parse(SERVICE_TYPE);
    loop {
        let mut round = mdns::Heard::default();
        mdns::ask_for_instances(&querier, &service);
        let mut end = Instant::now() + ROUND;
        if let Some(d) = deadline {
            end = end.min(d);
        }
        // Half the round for the instances, the rest for what their answers lacked.
        let half = Instant::now() + ROUND / 2;
        querier.listen(&mut round, half.min(end));
        querier.ask_missing(&round.announcements(&service));
        querier.listen(&mut round, end);
        for a in round.announcements(&service) {
            // Not yet a TXT: the next round asks for it.
            let Some(txt) = &a.txt else { continue };
            let judged = Announcement::judge(
                a.label(),
                a.responder.to_string(),
                a.ipv4.clone(),
                txt,
                cluster,
                agent_token,
            );
            if !heard(judged)? {
                return Ok(true);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// The TXT strings stage.sh writes, proof made with `token`.
    fn txt(node: &str, stage: &str, since: u64, reason: &str, token: &str) -> Vec<String> {
        let claim = proof::StageClaim {
            cluster: "c1",
            node,
            stage,
            since,
            reason,
        };
        let mut t = vec![
            "txtvers=1".to_string(),
            "cluster=c1".into(),
            format!("node={node}"),
            format!("stage={stage}"),
            format!("since={since}"),
        ];
        if !reason.is_empty() {
            t.push(format!("reason={reason}"));
        }
        t.push(format!("proof={}", claim.proof(token)));
        t
    }

    /// `t` with key `k` set to `v` (in place).
    fn with(t: &[String], k: &str, v: &str) -> Vec<String> {
        t.iter()
            .map(|s| match s.split_once('=') {
                Some((key, _)) if key == k => format!("{k}={v}"),
                _ => s.clone(),
            })
            .collect()
    }

    fn verdict(t: &[String], cluster: &str, token: &str) -> Verdict {
        judge(t, cluster, token).0
    }

    fn heard(node: &str, stage: &str, since: u64, reason: &str, token: &str) -> Announcement {
        Announcement::judge(
            node.into(),
            "10.0.0.1".into(),
            vec![Ipv4Addr::new(10, 0, 0, 1)],
            &txt(node, stage, since, reason, token),
            "c1",
            "tok",
        )
    }

    #[test]
    fn judges_stage_announcements() {
        let ok = txt("nodo1", "joined", NOW, "", "tok");
        assert_eq!(verdict(&ok, "c1", "tok"), Verdict::Verified);
        assert_eq!(verdict(&ok, "c2", "tok"), Verdict::ForeignCluster);
        assert_eq!(verdict(&ok, "c1", "other"), Verdict::Forged);
        let failed = txt("nodo1", "failed", NOW, "K3s agent unit failed", "tok");
        assert_eq!(verdict(&failed, "c1", "tok"), Verdict::Verified);
        // A failed stage without a reason, or a reason on another stage: not well formed.
        for bad in [
            txt("nodo1", "failed", NOW, "", "tok"),
            txt("nodo1", "joined", NOW, "why", "tok"),
            // A proven stage nobody defined, a time that is no number.
            txt("nodo1", "dancing", NOW, "", "tok"),
            with(&ok, "since", "+1800000000"),
            // The proof binds the time and the node.
            with(&ok, "since", &(NOW + 1).to_string()),
            with(&ok, "node", "master1"),
        ] {
            assert_eq!(verdict(&bad, "c1", "tok"), Verdict::Forged, "{bad:?}");
        }
        // The shared rule: a key we use twice, in any case, is malformed, whatever the
        // copies say (two readers must never pick different ones).
        let mut twice = ok.clone();
        twice.push("Stage=failed".into());
        assert_eq!(verdict(&twice, "c1", "tok"), Verdict::Malformed);
        let mut twice = ok;
        twice.push("stage=joined".into());
        assert_eq!(verdict(&twice, "c1", "tok"), Verdict::Malformed);
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
        assert!(t.join_order().is_empty(), "one server: no order to tell");
    }

    #[test]
    fn join_order_is_the_order_servers_came_up() {
        let names = ["master1", "master2", "master3"];
        let mut t = Table::new(
            names
                .iter()
                .map(|n| (n.to_string(), Role::Server))
                .chain([("nodo1".to_string(), Role::Agent)]),
        );
        let order =
            |t: &Table| -> Vec<String> { t.join_order().iter().map(|r| r.node.clone()).collect() };
        assert!(order(&t).is_empty());
        // Heard out of order; the times decide. A server not yet up is not listed.
        t.apply(&heard("master3", "k3s-running", NOW + 20, "", "tok"));
        t.apply(&heard("master2", "joining", NOW + 5, "", "tok"));
        t.apply(&heard("master1", "k3s-running", NOW, "", "tok"));
        assert_eq!(order(&t), ["master1", "master3"]);
        t.apply(&heard("master2", "k3s-running", NOW + 10, "", "tok"));
        t.apply(&heard("nodo1", "joined", NOW + 1, "", "tok"));
        assert_eq!(order(&t), ["master1", "master2", "master3"]);
        // A server that fails drops out of the order.
        t.apply(&heard(
            "master2",
            "failed",
            NOW + 30,
            "K3s unit failed",
            "tok",
        ));
        assert_eq!(order(&t), ["master1", "master3"]);
    }
}
