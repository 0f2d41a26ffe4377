//! Issue 11: an HA cluster bootstraps itself without split brain. The rendered node
//! scripts (bootstrap.sh, announce.sh, join.sh) run for real, one network namespace per
//! node with Avahi in each, against the K3s HA stand-in (tests/support/k3s_ha_standin.py:
//! no real K3s can run here), which makes a new CA on cluster-init, refuses a join with
//! the wrong CA hash or while another server is a learner, and answers /readyz only once
//! a learner is promoted.
use crate::support::ha::{events, wait_announced, wait_events, Node};
use crate::support::k3s::{pki, standin, Cluster};
use crate::support::netns::Lan;
use std::path::{Path, PathBuf};

const SERVERS: [&str; 3] = ["master1", "master2", "master3"];
const SERVER_SCRIPTS: [&str; 2] = ["bootstrap.sh", "announce.sh"];

/// The HA profile's cluster and an empty LAN, with the stand-ins' journal.
fn ha_lan() -> (Cluster, Lan, PathBuf) {
    let lan = Lan::new();
    let journal = lan.dir.path().join("journal");
    (Cluster::ha("chocoha", "chocoha"), lan, journal)
}

/// The servers `names` on `lan`, not started; seeds without a recorded CA.
fn add_servers(c: &Cluster, lan: &mut Lan, names: &[&str], journal: &Path) -> Vec<Node> {
    names
        .iter()
        .map(|n| Node::add(c, lan, n, None, journal))
        .collect()
}

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
    let (c, mut lan, journal) = ha_lan();
    let mut servers = add_servers(&c, &mut lan, &SERVERS, &journal);
    let mut nodo1 = Node::add(&c, &mut lan, "nodo1", None, &journal);
    for s in &mut servers {
        s.start(&lan, &SERVER_SCRIPTS);
    }
    nodo1.start(&lan, &["join.sh"]);
    let refs: Vec<&Node> = servers.iter().collect();
    wait_whole_cluster(&refs, &nodo1, &journal);
    assert_one_cluster(&refs, &journal);
    let ev = events(&journal);
    assert_eq!(count(&ev, "master1", "cluster-init"), 1, "{ev:?}");
    for s in ["master2", "master3"] {
        assert_eq!(count(&ev, s, "joined "), 1, "{s}: {ev:?}");
    }
    assert!(
        nodo1
            .logs()
            .contains("found the server of cluster chocoha at 10.99.0."),
        "{}",
        nodo1.logs()
    );
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

/// How often `node`'s bootstrap has said it waits for a member.
fn waits(node: &Node) -> usize {
    std::fs::read_to_string(node.host.dir.join("timers.log"))
        .unwrap_or_default()
        .matches("chocoimg-bootstrap: waiting for a verified server")
        .count()
}

/// The stage stage.sh announces for `node` now (its state under the node's folder).
fn stage_of(lan: &Lan, node: &Node) -> String {
    let units = node.host.dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(units.join("k3s.service"), "").unwrap();
    let mut c = node.script(lan, "stage.sh");
    c.env("CHOCOIMG_STATE_DIR", node.host.dir.join("stage"))
        .env("CHOCOIMG_UNITS_DIR", &units)
        .env("CHOCOIMG_K3S", "/bin/false");
    crate::support::ok(&mut c);
    let state = std::fs::read_to_string(node.host.dir.join("stage/stage")).unwrap();
    state.lines().next().unwrap().to_string()
}

/// (b) master2 and master3 booted before master1: they wait (they may not start a
/// cluster, and say so), and join once master1 has started it.
#[test]
fn servers_booted_before_the_first_wait_for_it() {
    let (c, mut lan, journal) = ha_lan();
    let mut servers = add_servers(&c, &mut lan, &SERVERS, &journal);
    for s in &mut servers[1..] {
        s.start(&lan, &SERVER_SCRIPTS);
    }
    for s in &servers[1..] {
        crate::support::netns::wait_for(
            std::time::Duration::from_secs(120),
            || waits(s) >= 2,
            &format!("{} to wait twice", s.host.name),
        );
    }
    assert!(events(&journal).is_empty(), "{:?}", events(&journal));
    for s in &servers[1..] {
        assert!(
            !s.state.join("systemctl.log").exists(),
            "{}: K3s was touched:\n{}",
            s.host.name,
            s.logs()
        );
        assert!(!s
            .under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml")
            .exists());
        assert!(
            s.logs()
                .contains("only the first server may start the cluster"),
            "{}",
            s.logs()
        );
        assert_eq!(stage_of(&lan, s), "waiting-for-server");
    }

    servers[0].start(&lan, &SERVER_SCRIPTS);
    let refs: Vec<&Node> = servers.iter().collect();
    for s in &refs {
        wait_announced(s);
    }
    assert_one_cluster(&refs, &journal);
    let ev = events(&journal);
    assert_eq!(count(&ev, "master1", "cluster-init"), 1, "{ev:?}");
    for s in ["master2", "master3"] {
        assert_eq!(count(&ev, s, "joined 10.99.0.1 "), 1, "{s}: {ev:?}");
    }
    assert_eq!(
        stage_of(&lan, &servers[1]),
        "joining",
        "not Ready to stage.sh's kubectl"
    );
}

/// (c) master1 re-flashed (its disk wiped) while master2 and master3 run: it joins them,
/// and no second CA appears anywhere. The member list lives on in the others.
#[test]
fn a_reflashed_first_server_rejoins_and_never_starts_a_second_cluster() {
    let (c, mut lan, journal) = ha_lan();
    let mut servers = add_servers(&c, &mut lan, &SERVERS, &journal);
    for s in &mut servers {
        s.start(&lan, &SERVER_SCRIPTS);
    }
    for s in &servers {
        wait_announced(s);
    }
    let ca = servers[0].ca().unwrap();

    servers[0].reflash(&c, None, &journal);
    assert!(servers[0].ca().is_none() && !servers[0].announces());
    servers[0].start(&lan, &SERVER_SCRIPTS);
    let refs: Vec<&Node> = servers.iter().collect();
    wait_events(&journal, &refs, "master1 to rejoin", |ev| {
        count(ev, "master1", "joined ") == 1
    });
    wait_announced(&servers[0]);
    assert_one_cluster(&refs, &journal);
    assert_eq!(servers[0].ca().as_deref(), Some(ca.as_str()));
    let ev = events(&journal);
    assert!(
        ev.iter()
            .any(|(n, e)| n == "master1" && e.starts_with("joined 10.99.0.2 ")),
        "master1 joins the lowest member address: {ev:?}"
    );
    // The member list outlived master1's disk: every server holds all three, voting
    // (replicated asynchronously: wait for it).
    let list_of = |s: &Node| -> serde_json::Value {
        let path = s.under("/var/lib/rancher/k3s/server/db/etcd/member/members.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    for s in &servers {
        crate::support::netns::wait_for(
            std::time::Duration::from_secs(30),
            || {
                let list = list_of(s);
                let members = list["members"].as_object().unwrap();
                members.keys().eq(SERVERS.iter()) && members.values().all(|m| m["learner"] == false)
            },
            &format!("{}'s member list to hold all three, voting", s.host.name),
        );
    }
}

/// (d) A forged announcement (a proof made without the agent token) and a replayed one
/// (a valid proof and the real CA's /cacerts, from a host without the CA's key) are never
/// joined, though both sit at a lower address than master1; nor do they keep master1
/// from starting the cluster (they are not members).
#[test]
fn forged_and_replayed_server_announcements_are_never_joined() {
    let (c, mut lan, journal) = ha_lan();
    let mut forger = lan.add_host("forger");
    let avahi = lan.start_avahi(&mut forger, None);
    let real = pki(&forger.dir.join("real"), "k3s-server-ca", &["IP:127.0.0.1"]);
    let own = pki(
        &forger.dir.join("own"),
        "k3s-server-ca",
        &[&format!("IP:{}", forger.ip)],
    );
    let real_ca = crate::cluster::ca_of(&real.ca);
    // A replay copies the whole announcement, its server proof too.
    crate::cluster::publish_fake(
        &avahi.services_dir,
        "replayed.service",
        "master1-replayed",
        &c.plan.cluster,
        &real_ca,
        &chocoimg::proof::proof(&c.secrets.agent_token, &c.plan.cluster, &real_ca),
        &[format!(
            "sproof={}",
            chocoimg::proof::server_proof(&c.secrets.server_token, &c.plan.cluster, &real_ca)
        )],
    );
    let own_ca = crate::cluster::ca_of(&own.ca);
    crate::cluster::publish_fake(
        &avahi.services_dir,
        "forged.service",
        "master1-forged",
        &c.plan.cluster,
        &own_ca,
        &chocoimg::proof::proof("not-the-agent-token", &c.plan.cluster, &own_ca),
        &[],
    );
    let _tls = standin(
        lan.cmd(&forger, "/usr/bin/python3"),
        &[
            "--bind".into(),
            "0.0.0.0".into(),
            "--port".into(),
            "6443".into(),
            "--cert".into(),
            own.server_cert.display().to_string(),
            "--key".into(),
            own.server_key.display().to_string(),
            "--cacerts".into(),
            real.ca.display().to_string(),
        ],
    );
    let mut servers = add_servers(&c, &mut lan, &SERVERS[..2], &journal);
    for s in &mut servers {
        s.start(&lan, &SERVER_SCRIPTS);
    }
    let refs: Vec<&Node> = servers.iter().collect();
    for s in &refs {
        wait_announced(s);
    }
    assert_one_cluster(&refs, &journal);
    let master1 = servers[0].host.ip.to_string();
    let dropin = std::fs::read_to_string(
        servers[1].under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml"),
    )
    .unwrap();
    assert!(
        dropin.contains(&format!("server: \"https://{master1}:6443\"")),
        "{dropin}"
    );
    let logs = servers[1].logs();
    assert!(logs.contains("forged announcement"), "{logs}");
    assert!(logs.contains("its TLS does not chain"), "{logs}");
    for s in &servers {
        let logs = s.logs();
        assert!(
            !logs.contains(&format!("member of cluster chocoha at {} ", forger.ip)),
            "{logs}"
        );
    }
}

/// (e) A seed carrying the cluster's CA as the laptop recorded it: with no member up,
/// master1 waits and says for what, and never starts a cluster, whatever the window.
#[test]
fn with_a_recorded_ca_the_first_server_never_starts_a_cluster() {
    let (c, mut lan, journal) = ha_lan();
    let recorded = chocoimg::proof::ca_hash(b"the cluster's CA the laptop saw");
    let master1 = Node::add(&c, &mut lan, "master1", Some(&recorded), &journal);
    assert_eq!(
        std::fs::read_to_string(master1.under("/etc/chocoimg/cluster-ca")).unwrap(),
        format!("{recorded}\n")
    );
    for _ in 0..2 {
        let out = master1.script(&lan, "bootstrap.sh").output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(
            log.contains(&format!("serving the recorded CA {recorded}"))
                && log.contains("never starts a new cluster"),
            "{log}"
        );
    }
    assert!(!master1.state.join("systemctl.log").exists());
    assert!(!master1
        .under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml")
        .exists());
    assert!(events(&journal).is_empty());
}

/// The HA nodes' files: the server token in none of them (a joining server reads it from
/// K3s's own root-only config.yaml), the agent token only in its root-only file, a fixed
/// K3s node password on every node (a re-flashed server is let back in under its name),
/// and no CA record unless the laptop had one.
#[test]
fn ha_node_files_keep_secrets_where_they_belong() {
    let c = Cluster::ha("chocoha", "chocoha");
    for node in ["master1", "master2", "master3", "nodo1"] {
        let setup = c.node_setup(node);
        for f in &setup.files {
            assert!(!f.content.contains(&c.secrets.server_token), "{}", f.path);
            if f.path != "/etc/chocoimg/agent-token" {
                assert!(!f.content.contains(&c.secrets.agent_token), "{}", f.path);
            }
        }
        let password = setup.file("/etc/rancher/node/password").unwrap();
        assert_eq!(password.permissions, "0600");
        assert_eq!(
            password.content.trim(),
            chocoimg::proof::node_password(&c.secrets.server_token, "chocoha", node)
        );
        assert!(setup.file("/etc/chocoimg/cluster-ca").is_none(), "{node}");
        let bootstrap = setup.file("/usr/local/lib/chocoimg/bootstrap.sh");
        assert_eq!(bootstrap.is_some(), node != "nodo1", "{node}");
        if let Some(b) = bootstrap {
            // Only the profile's first server may start the cluster.
            let init = if node == "master1" { "'yes'" } else { "''" };
            assert!(
                b.content.contains(&format!("\nINIT_SERVER={init}\n")),
                "{node}"
            );
        }
    }
}

/// A script's whole log: what it decided (stdout) and why it ignored answers (stderr).
fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Starts `node`'s K3s stand-in with `dropin` as its bootstrap drop-in, as if its
/// bootstrap had decided so, and its announce timer.
pub(crate) fn start_with(lan: &Lan, node: &mut Node, dropin: &str) {
    let path = node.under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, dropin).unwrap();
    crate::support::ok(
        lan.cmd(&node.host, node.systemctl())
            .args(["start", "--no-block", "k3s"]),
    );
    node.start(lan, &["announce.sh"]);
}

/// Two clusters of this cluster's name (a split brain: master1 and master3 each started
/// one): without a recorded CA master2 refuses to pick either and says why; with the
/// recorded CA it joins the server serving it, not the lower address. And K3s itself
/// refuses a join token pinning another CA than the member serves.
#[test]
fn two_clusters_are_never_joined_blindly_and_a_recorded_ca_picks_its_own() {
    let (c, mut lan, journal) = ha_lan();
    let mut servers = add_servers(&c, &mut lan, &SERVERS, &journal);
    for i in [0, 2] {
        start_with(&lan, &mut servers[i], "cluster-init: true\n");
        wait_announced(&servers[i]);
    }
    let (ca1, ca3) = (servers[0].ca().unwrap(), servers[2].ca().unwrap());
    assert_ne!(ca1, ca3);
    let dropin = servers[1].under("/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml");

    let out = servers[1].script(&lan, "bootstrap.sh").output().unwrap();
    let log = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("valid proofs but different CAs") && log.contains("not starting a cluster"),
        "{log}"
    );
    assert!(!dropin.exists() && !servers[1].state.join("systemctl.log").exists());

    servers[1].reflash(&c, Some(&ca3), &journal);
    let out = servers[1].script(&lan, "bootstrap.sh").output().unwrap();
    let log = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "servers of cluster chocoha at {} serve another CA than the one the laptop recorded",
            servers[0].host.ip
        )),
        "{log}"
    );
    let master3 = servers[2].host.ip;
    assert!(
        std::fs::read_to_string(&dropin).unwrap().contains(&format!(
            "server: \"https://{master3}:6443\"\ntoken: \"K10{ca3}::server:"
        )),
        "{log}"
    );
    wait_events(&journal, &[&servers[1]], "master2 to join master3", |ev| {
        count(ev, "master2", &format!("joined {master3} ")) == 1
    });
    assert_eq!(servers[1].ca(), Some(ca3.clone()));

    // A join token that pins master1's CA, sent to master3: K3s refuses it.
    servers[1].reflash(&c, None, &journal);
    start_with(
        &lan,
        &mut servers[1],
        &format!(
            "server: \"https://{master3}:6443\"\ntoken: \"K10{ca1}::server:{}\"\n",
            c.secrets.server_token
        ),
    );
    wait_events(
        &journal,
        &[&servers[1]],
        "the wrong CA to be refused",
        |ev| count(ev, "master2", "failed: token CA hash does not match") > 0,
    );
    assert_eq!(count(&events(&journal), "master2", "joined "), 1);
    assert_eq!(servers[1].ca(), None);
}

/// Whether any credential whose secret is `secret` reached `host`'s K3s stand-in.
fn received(journal: &Path, host: &str, secret: &str) -> bool {
    let hash = format!("sha256:{}", chocoimg::proof::ca_hash(secret.as_bytes()));
    events(journal)
        .iter()
        .any(|(n, e)| n == host && e.starts_with("received ") && e.ends_with(&hash))
}

/// The agent token is on every stick: whoever holds it (a lost nodo1 stick) can make a CA
/// of their own, announce it with a valid agent proof and serve TLS with it. A fresh
/// server (no recorded CA) must not join that, or it hands over the server token (full
/// admin power): servers join only a member whose server proof checks with the server
/// token. The rogue runs chocoimg's own scripts (a server seed with the real agent token
/// and a server token of its own) and a K3s stand-in that logs what credentials reach it.
#[test]
fn a_holder_of_the_agent_token_never_gets_the_server_token() {
    let (c, mut lan, journal) = ha_lan();
    let mut rogue_cluster = Cluster::ha("chocoha", "chocoha");
    rogue_cluster.secrets.agent_token = c.secrets.agent_token.clone();
    assert_ne!(rogue_cluster.secrets.server_token, c.secrets.server_token);
    // Added first: the lowest address, the one a fresh server would pick.
    let mut rogue = Node::add_as(&rogue_cluster, &mut lan, "rogue", "master1", None, &journal);
    start_with(&lan, &mut rogue, "cluster-init: true\n");
    wait_announced(&rogue);
    let rogue_ca = rogue.ca().unwrap();
    let announced = std::fs::read_to_string(rogue.services.join("chocoimg-k3s.service")).unwrap();
    assert!(
        announced.contains(&format!(
            "proof={}",
            chocoimg::proof::proof(&c.secrets.agent_token, "chocoha", &rogue_ca)
        )),
        "the rogue's agent proof is valid: {announced}"
    );

    let mut servers = add_servers(&c, &mut lan, &SERVERS, &journal);
    servers[1].start(&lan, &SERVER_SCRIPTS);
    let rogue_ip = rogue.host.ip.to_string();
    let ignored = format!("at {rogue_ip}: forged announcement (its server proof does not check");
    // master2 either ignores the rogue (and waits) or hands it the server token.
    wait_events(
        &journal,
        &[&servers[1], &rogue],
        "master2 to ignore the rogue, or the rogue to receive the server token",
        |_| {
            received(&journal, "rogue", &c.secrets.server_token)
                || (waits(&servers[1]) >= 2 && servers[1].logs().contains(&ignored))
        },
    );
    assert!(
        !received(&journal, "rogue", &c.secrets.server_token),
        "the server token reached the rogue:\n{}",
        servers[1].logs()
    );
    assert!(
        servers[1].logs().contains(&ignored),
        "{}",
        servers[1].logs()
    );
    assert!(!servers[1].state.join("systemctl.log").exists());

    // The genuine first server starts the cluster (the rogue is no member) and master2
    // joins it, not the rogue at the lower address.
    servers[0].start(&lan, &SERVER_SCRIPTS);
    let genuine: Vec<&Node> = servers[..2].iter().collect();
    for s in &genuine {
        wait_announced(s);
    }
    let ev = events(&journal);
    assert_eq!(count(&ev, "master1", "cluster-init"), 1, "{ev:?}");
    let master1 = servers[0].host.ip;
    assert_eq!(
        count(&ev, "master2", &format!("joined {master1} ")),
        1,
        "{ev:?}"
    );
    assert_eq!(servers[1].ca(), servers[0].ca());
    assert_ne!(servers[0].ca(), Some(rogue_ca));
    assert!(!received(&journal, "rogue", &c.secrets.server_token));
    // The genuine servers' tokens did reach each other: the log would show it.
    assert!(
        received(&journal, "master1", &c.secrets.server_token),
        "{ev:?}"
    );
}
