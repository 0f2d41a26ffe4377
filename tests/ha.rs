//! Issue 11: an HA cluster bootstraps itself without split brain. The rendered node
//! scripts (bootstrap.sh, announce.sh, join.sh) run for real, one network namespace per
//! node with Avahi in each, against the K3s HA stand-in (tests/support/k3s_ha_standin.py:
//! no real K3s can run here), which makes a new CA on cluster-init, refuses a join with
//! the wrong CA hash or while another server is a learner, and answers /readyz only once
//! a learner is promoted.
use crate::support::ha::{events, wait_announced, wait_events, Node};
use crate::support::k3s::{pki, standin, Cluster};
use crate::support::netns::Lan;
use std::path::Path;

const SERVERS: [&str; 3] = ["master1", "master2", "master3"];
const SERVER_SCRIPTS: [&str; 2] = ["bootstrap.sh", "announce.sh"];

fn count(events: &[(String, String)], node: &str, prefix: &str) -> usize {
    events
        .iter()
        .filter(|(n, e)| n == node && e.starts_with(prefix))
        .count()
}

fn inits(events: &[(String, String)]) -> usize {
    events
        .iter()
        .filter(|(_, e)| e.starts_with("cluster-init"))
        .count()
}

/// etcd's rule, read from the members' own record: a learner is added only while no
/// other server is a learner (a learner stays one until promoted).
fn assert_one_learner_at_a_time(events: &[(String, String)]) {
    let mut learners = std::collections::BTreeSet::new();
    for (_, e) in events {
        if let Some(name) = e.strip_prefix("added learner ") {
            assert!(
                learners.iter().all(|l| l == name),
                "{name} added while {learners:?} were learners: {events:?}"
            );
            learners.insert(name.to_string());
        } else if let Some(name) = e.strip_prefix("promoted ") {
            learners.remove(name);
        }
    }
}

/// Every server serves the same CA, and only one cluster-init happened.
fn assert_one_cluster(nodes: &[&Node], journal: &Path) {
    let ev = events(journal);
    assert_eq!(inits(&ev), 1, "{ev:?}");
    let cas: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.ca()).collect();
    assert_eq!(cas.len(), 1, "more than one CA: {cas:?}");
    assert!(cas.iter().all(|c| c.is_some()));
    assert_one_learner_at_a_time(&ev);
}

/// Until every server announces itself, and nodo1's agent is running.
fn wait_whole_cluster(servers: &[&Node], nodo1: &Node, journal: &Path) {
    for s in servers {
        wait_announced(s);
    }
    let mut all: Vec<&Node> = servers.to_vec();
    all.push(nodo1);
    wait_events(journal, &all, "nodo1's agent to run", |ev| {
        count(ev, "nodo1", "agent running") > 0
    });
}

/// (a) All four booted at once: master1 alone starts the cluster (after a browse window
/// in which nothing answered), master2 and master3 join it one after the other, and
/// nodo1 joins.
#[test]
fn four_booted_at_once_make_one_cluster() {
    let c = Cluster::ha("chocoha", "chocoha");
    let mut lan = Lan::new();
    let journal = lan.dir.path().join("journal");
    let mut servers: Vec<Node> = SERVERS
        .iter()
        .map(|n| Node::add(&c, &mut lan, n, None, &journal))
        .collect();
    let mut nodo1 = Node::add(&c, &mut lan, "nodo1", None, &journal);
    for s in &mut servers {
        s.start(&lan, &SERVER_SCRIPTS);
    }
    nodo1.start(&lan, &["join.sh"]);
    let refs: Vec<&Node> = servers.iter().collect();
    wait_whole_cluster(&refs, &nodo1, &journal);
    assert_one_cluster(&refs, &journal);
    if std::env::var_os("CHOCOIMG_TEST_SHOW").is_some() {
        eprintln!("{}", std::fs::read_to_string(&journal).unwrap());
        for s in &servers { eprintln!("{}", s.logs()); }
        eprintln!("{}", nodo1.logs());
    }
    let ev = events(&journal);
    assert_eq!(count(&ev, "master1", "cluster-init"), 1, "{ev:?}");
    for s in ["master2", "master3"] {
        assert_eq!(count(&ev, s, "joined "), 1, "{s}: {ev:?}");
    }
    // The agent pinned the cluster's CA.
    let dropin = std::fs::read_to_string(
        nodo1.under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml"),
    )
    .unwrap();
    assert!(
        dropin.contains(&format!("token: \"K10{}::node:", servers[0].ca().unwrap())),
        "{dropin}"
    );
}
