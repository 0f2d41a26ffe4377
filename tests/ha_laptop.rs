//! Issue 11, the laptop's side of an HA cluster: `discover` lists every server and
//! records the cluster's CA; servers serving another CA are reported as a split brain;
//! `fetch-kubeconfig` reads the kubeconfig from any verified server. Three servers, each
//! in its own network namespace with Avahi, the rendered announce.sh, the K3s TLS
//! stand-in (no real K3s can run here) and a real sshd.
use crate::cluster::{
    announce, ca_of, instance, kubeconfig_for, nodes_json, private_file, start_master, start_sshd,
    Master,
};
use crate::hostile_lan::{laptop_run, own_ca, second_server, server_with_api, text};
use crate::support::k3s::{pki, Cluster, Pki};
use crate::support::netns::Lan;
use crate::support::require_tool;
use std::path::Path;
use std::time::Duration;

/// The HA profile (master1-3, nodo1) written over `c`'s, and the secrets given host keys
/// for master2 and master3 (tokens unchanged, so the node files rendered from `c`'s plan
/// announce for this cluster).
pub(crate) fn make_ha(c: &mut Cluster) {
    std::fs::write(
        &c.profile,
        format!(
            "cluster:\n  name: {}\n  mode: ha\n  datastore: etcd\nssh:\n  user: {}\n  public_key: {}.pub\nnodes:\n  - hostname: master1\n    role: server\n  - hostname: master2\n    role: server\n  - hostname: master3\n    role: server\n  - hostname: nodo1\n    role: agent\n",
            c.plan.cluster,
            c.plan.ssh.user,
            c.ssh_key.display()
        ),
    )
    .unwrap();
    c.secrets = chocoimg::secrets::load_or_create(
        &c.plan.secrets_path(),
        &["master1", "master2", "master3", "nodo1"],
    )
    .unwrap()
    .secrets;
}

fn same_pki(p: &Pki) -> Pki {
    Pki {
        ca: p.ca.clone(),
        server_cert: p.server_cert.clone(),
        server_key: p.server_key.clone(),
        client_cert: p.client_cert.clone(),
        client_key: p.client_key.clone(),
    }
}

/// `m` announces itself as an HA server does: the rendered announce.sh, then its TXT
/// gets the server proof (`sproof`, keyed with the server token) the HA announce.sh adds.
/// A stand-in for the HA announce.sh only because that one waits for K3s's /readyz with
/// the admin certificate, which the K3s TLS stand-in here does not serve; the real HA
/// announce.sh is run by the tests that use `support::ha` (below, and tests/ha.rs).
fn announce_ha(c: &Cluster, lan: &Lan, m: &Master) {
    announce(lan, m);
    let path = m.services.join("chocoimg-k3s.service");
    let xml = std::fs::read_to_string(&path).unwrap();
    let sproof =
        chocoimg::proof::server_proof(&c.secrets.server_token, &c.plan.cluster, &ca_of(&m.cacerts));
    let xml = xml.replace(
        "  </service>",
        &format!("    <txt-record>sproof={sproof}</txt-record>\n  </service>"),
    );
    // As lib.sh's replace_service_file: Avahi tells a change by its mtime in seconds.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, xml).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime.max(std::time::SystemTime::now()) + Duration::from_secs(1))
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// master1 of `c`, announcing itself as an HA server.
fn start_ha_master(c: &Cluster, lan: &mut Lan) -> Master {
    let m = start_master(c, lan);
    announce_ha(c, lan, &m);
    m
}

/// A server named `name` serving master1's CA (its own TLS certificate from it).
fn member(c: &Cluster, lan: &mut Lan, m1: &Master, name: &str) -> Master {
    let p = same_pki(&m1.pki);
    let m = second_server(c, lan, name, |h| {
        let (cert, key) = p.another_server_cert(&h.dir.join("pki"), &h.ip.to_string());
        (p, cert, key)
    });
    announce_ha(c, lan, &m);
    m
}

/// A server named `name` of this cluster (valid proofs) serving a CA of its own, `cn`.
fn own_ca_server(c: &Cluster, lan: &mut Lan, name: &str, cn: &str) -> Master {
    let m = second_server(c, lan, name, |h| own_ca(h, cn));
    announce_ha(c, lan, &m);
    m
}

fn record_path(c: &Cluster) -> std::path::PathBuf {
    c.plan.out_dir.join("cluster-ca.sha256")
}

#[test]
fn discover_lists_every_server_records_the_ca_and_reports_a_split_brain() {
    let mut c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m1 = start_ha_master(&c, &mut lan);
    let _m2 = member(&c, &mut lan, &m1, "master2");
    let _m3 = member(&c, &mut lan, &m1, "master3");
    make_ha(&mut c);
    let ca = ca_of(&m1.cacerts);
    std::thread::sleep(Duration::from_millis(1500));
    let laptop = lan.add_host("laptop");
    let record = record_path(&c);

    // First sight: all three listed, verified; the CA recorded once, 0600.
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--json", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, ip) in [
        ("master1", "10.99.0.1"),
        ("master2", "10.99.0.2"),
        ("master3", "10.99.0.3"),
    ] {
        let s = found
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instance"] == name)
            .unwrap_or_else(|| panic!("{name} not in {found:#}"));
        assert_eq!(s["verdict"], "verified", "{s:#}");
        assert_eq!(s["proven"], serde_json::json!([ip]), "{s:#}");
        assert_eq!(s["ca"], ca.as_str());
    }
    assert!(
        log.contains("3 of 3 servers verified with the cluster's CA: master1 (10.99.0.1), master2 (10.99.0.2), master3 (10.99.0.3)"),
        "{log}"
    );
    assert!(!log.contains("another responder took the name"), "{log}");
    assert!(!log.contains("answers with the same CA"), "{log}");
    assert_eq!(log.matches("recorded the cluster's CA").count(), 1, "{log}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), format!("{ca}\n"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Seen again: nothing new to say, the recorded CA marked in the table.
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(!log.contains("recorded the cluster's CA"), "{log}");
    assert_eq!(
        log.matches(&format!("{} (recorded)", &ca[..12])).count(),
        3,
        "{log}"
    );

    // A server of the cluster (valid proof) serving another CA: a split brain, said
    // loudly, listed with its CA, exit 1; the record stays.
    let stale = own_ca_server(&c, &mut lan, "master3-stale", "k3s-server-ca-second");
    let other = ca_of(&stale.cacerts);
    std::thread::sleep(Duration::from_millis(1500));
    for json in [false, true] {
        let args: &[&str] = if json {
            &["discover", "--json", "--timeout", "4"]
        } else {
            &["discover", "--timeout", "4"]
        };
        let out = laptop_run(&c, &lan, &laptop, args);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(
            log.contains("serve ANOTHER CA than the recorded one"),
            "{log}"
        );
        assert!(log.contains("split brain"), "{log}");
        assert!(
            log.contains(&format!("CA sha256 {other}: 10.99.0.5 (master3-stale)")),
            "{log}"
        );
        if json {
            let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let by = |n: &str| {
                found
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["instance"] == n)
                    .unwrap()
                    .clone()
            };
            assert_eq!(by("master3-stale")["ca_recorded"], false, "{found:#}");
            assert_eq!(by("master2")["ca_recorded"], true, "{found:#}");
        } else {
            assert!(log.contains("NOT the recorded CA"), "{log}");
        }
    }
    assert_eq!(std::fs::read_to_string(&record).unwrap(), format!("{ca}\n"));

    // Only the other CA answers while this one is recorded: another cluster, refused
    // (exit 2) with the way out; the record is never replaced.
    std::fs::write(&record, format!("{}\n", "a".repeat(64))).unwrap();
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "two CAs, none recorded: {log}");
    assert!(log.contains("None is the recorded CA"), "{log}");
    drop(stale);
    drop(_m2);
    drop(_m3);
    drop(m1);
    let solo = own_ca_server(&c, &mut lan, "rebuilt", "k3s-server-ca-third");
    std::thread::sleep(Duration::from_millis(1500));
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains(&ca_of(&solo.cacerts)), "{log}");
    assert!(log.contains("--new-cluster"), "{log}");
    assert!(log.contains("second cluster"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!("{}\n", "a".repeat(64))
    );
}

#[test]
fn fetch_kubeconfig_reads_from_any_verified_server() {
    require_tool("ssh");
    let mut c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m1 = start_ha_master(&c, &mut lan);
    let _m2 = member(&c, &mut lan, &m1, "master2");
    let m3 = member(&c, &mut lan, &m1, "master3");
    make_ha(&mut c);
    let ca = ca_of(&m1.cacerts);
    // Only master3 serves the kubeconfig: master1 and master2 run no sshd (SSH down).
    let k3s_yaml = m3.host.dir.join("k3s.yaml");
    private_file(&k3s_yaml, &m1.pki.k3s_kubeconfig());
    start_sshd(
        &c,
        &lan,
        &m3.host,
        22,
        &c.secrets.host_keys["master3"].private,
        &k3s_yaml,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let laptop = lan.add_host("laptop");
    let kube = c.dir.path().join("kubeconfig");
    let server_of = |p: &Path| -> String {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        doc["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fetch = |extra: &[&str]| {
        let mut args = vec!["fetch-kubeconfig", "--output", kube.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = laptop_run(&c, &lan, &laptop, &args);
        (out.status.code(), text(&out))
    };

    // Discovered: every server, tried in profile order until one serves it; the URL
    // names master3, which announces itself only once the fetch has begun: the browse
    // goes on until every server answered (it would stop at master1 and master2 else).
    let announcement = m3.services.join("chocoimg-k3s.service");
    std::fs::remove_file(&announcement).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (code, log) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            announce_ha(&c, &lan, &m3);
        });
        fetch(&["--timeout", "10"])
    });
    assert!(announcement.exists());
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("not used: master1 at 10.99.0.1"), "{log}");
    assert!(log.contains("not used: master2 at 10.99.0.2"), "{log}");
    assert!(log.contains("master3 at 10.99.0.3 (announced"), "{log}");
    assert_eq!(server_of(&kube), "https://10.99.0.3:6443");
    assert!(log.contains("recorded the cluster's CA"), "{log}");
    assert_eq!(
        std::fs::read_to_string(record_path(&c)).unwrap(),
        format!("{ca}\n")
    );

    // --server in HA: any server's pinned host key is accepted; the URL names it.
    std::fs::remove_file(&kube).unwrap();
    let (code, log) = fetch(&["--server", "10.99.0.3"]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(server_of(&kube), "https://10.99.0.3:6443");
    assert!(
        log.contains("the server at 10.99.0.3 (given with --server)"),
        "{log}"
    );
    assert!(!log.contains("recorded the cluster's CA"), "{log}");

    // A machine with no server's host key at a server's address: refused, named.
    let impostor_key = c.dir.path().join("impostor");
    crate::support::ok(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&impostor_key),
    );
    start_sshd(
        &c,
        &lan,
        &m3.host,
        2222,
        &std::fs::read_to_string(&impostor_key).unwrap(),
        &m3.host.dir.join("k3s.yaml"),
    );
    let before = std::fs::read(&kube).unwrap();
    let (code, log) = fetch(&["--server", "10.99.0.3", "--ssh-port", "2222"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("is not the key of any server (master1, master2, master3)"),
        "{log}"
    );
    assert_eq!(std::fs::read(&kube).unwrap(), before, "nothing written");

    // Another CA recorded (the cluster was wiped and rebuilt, or a second one): refused
    // before anything is written, the way out named.
    std::fs::write(record_path(&c), format!("{}\n", "b".repeat(64))).unwrap();
    let (code, log) = fetch(&["--timeout", "5"]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--new-cluster"), "{log}");
    assert_eq!(std::fs::read(&kube).unwrap(), before, "nothing written");
    let (code, log) = fetch(&["--server", "10.99.0.2"]);
    assert_eq!(code, Some(2), "{log}");
    assert_eq!(std::fs::read(&kube).unwrap(), before, "nothing written");
}

/// `--new-cluster` forgets the recorded CA so the servers built now may start a cluster:
/// without it an HA server's seed carries the record (/etc/chocoimg/cluster-ca); with it
/// the seed carries none and the record is gone, said once. A build refused before its
/// second phase (a missing --iso) keeps the record: nothing half-done.
#[test]
fn new_cluster_forgets_the_recorded_ca_and_only_then() {
    let ws = crate::support::workspace::Workspace::with_profile(&crate::profile::ha_profile());
    ws.ok(&["render", "--node", "nodo1"]);
    let record = ws.out().join("chocolandiadc-ha").join("cluster-ca.sha256");
    let ca = "c".repeat(64);
    std::fs::write(&record, format!("{ca}\n")).unwrap();
    let dir = ws.path().join("seeds");
    let render = |extra: &[&str]| {
        let mut args = vec![
            "render",
            "--node",
            "master1",
            "--out",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = ws.ok(&args);
        let user_data = std::fs::read_to_string(dir.join("master1/user-data")).unwrap();
        (String::from_utf8_lossy(&out.stderr).into_owned(), user_data)
    };
    let (err, user_data) = render(&[]);
    assert!(user_data.contains("/etc/chocoimg/cluster-ca"), "{err}");
    assert!(user_data.contains(&ca), "the seed carries the recorded CA");
    assert!(!err.contains("no CA recorded"), "{err}");
    assert!(record.exists());

    let out = ws.run(&[
        "build",
        "--node",
        "master1",
        "--new-cluster",
        "--iso",
        "/nonexistent/ubuntu.iso",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), format!("{ca}\n"));

    let (err, user_data) = render(&["--new-cluster"]);
    assert!(
        !user_data.contains(&ca),
        "a new cluster's seed carries no CA"
    );
    assert!(!record.exists());
    assert_eq!(err.matches("forgot the recorded CA").count(), 1, "{err}");
    assert!(err.contains("wiped and re-flashed"), "{err}");
    // Nothing left to forget: nothing said.
    let (err, _) = render(&["--new-cluster"]);
    assert!(!err.contains("forgot"), "{err}");

    for cmd in ["build", "render"] {
        let help = ws.ok(&[cmd, "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("--new-cluster"), "{help}");
        assert!(help.contains("Only after wiping every server"), "{help}");
    }
}

/// master1-3 of `c` running the real node scripts (bootstrap, announce) on `lan`, once
/// each announces itself.
fn bootstrapped_servers(
    c: &Cluster,
    lan: &mut Lan,
    journal: &Path,
) -> Vec<crate::support::ha::Node> {
    use crate::support::ha::{wait_announced, Node};
    let mut servers: Vec<Node> = ["master1", "master2", "master3"]
        .iter()
        .map(|n| Node::add(c, lan, n, None, journal))
        .collect();
    for s in &mut servers {
        s.start(lan, &["bootstrap.sh", "announce.sh"]);
    }
    for s in &servers {
        wait_announced(s);
    }
    servers
}

/// `discover --json` from `laptop`: exit 0, each of `servers` verified at its address
/// with the CA `ca`. Returns the JSON and the output.
fn discover_verifies(
    c: &Cluster,
    lan: &Lan,
    laptop: &crate::support::netns::Host,
    servers: &[crate::support::ha::Node],
    ca: &str,
) -> (serde_json::Value, String) {
    let out = laptop_run(c, lan, laptop, &["discover", "--json", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in servers {
        let a = instance(&found, &s.host.name);
        assert_eq!(a["verdict"], "verified", "{a:#}");
        assert_eq!(a["proven"], serde_json::json!([s.host.ip.to_string()]));
        assert_eq!(a["ca"], ca);
    }
    (found, log)
}

/// The loop closed on the real node scripts: three servers bootstrap themselves (the K3s
/// HA stand-in: no real K3s can run here); `discover` lists all three, verified, and
/// records the CA they serve; master1 re-flashed from a seed carrying that record while
/// master2 and master3 are off waits for a member serving it and never starts a cluster.
#[test]
fn discover_records_a_bootstrapped_clusters_ca_and_a_reflash_carries_it() {
    use crate::support::ha::events;
    let c = Cluster::ha("chocoha", "chocoha");
    let mut lan = Lan::new();
    let journal = lan.dir.path().join("journal");
    let mut servers = bootstrapped_servers(&c, &mut lan, &journal);
    let ca = servers[0].ca().unwrap();
    let laptop = lan.add_host("laptop");
    let (_, log) = discover_verifies(&c, &lan, &laptop, &servers, &ca);
    assert!(log.contains("3 of 3 servers verified"), "{log}");
    let recorded = chocoimg::cluster_ca::load(&c.plan).unwrap();
    assert_eq!(recorded.as_deref(), Some(ca.as_str()));

    servers[1].stop();
    servers[2].stop();
    servers[0].reflash(&c, recorded.as_deref(), &journal);
    let out = servers[0].script(&lan, "bootstrap.sh").output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("serving the recorded CA {ca}"))
            && log.contains("never starts a new cluster"),
        "{log}"
    );
    let inits = events(&journal)
        .iter()
        .filter(|(_, e)| e.starts_with("cluster-init"))
        .count();
    assert_eq!(inits, 1);
}

/// The agent token is on every stick: a holder of it alone (a lost nodo1 stick) can run
/// chocoimg's own server scripts with a CA of its own and announce it with a valid agent
/// proof, but not the server proof. The laptop, which has the server token, never counts
/// it as a server of the cluster and never records its CA (every later server build
/// would wait for that CA forever). The rogue has the lowest address; the real node
/// scripts and the K3s HA stand-in run every server (no real K3s can run here).
#[test]
fn a_holder_of_the_agent_token_is_never_a_server_nor_recorded() {
    use crate::ha::start_with;
    use crate::support::ha::{wait_announced, Node};
    let c = Cluster::ha("chocoha", "chocoha");
    let mut lan = Lan::new();
    let journal = lan.dir.path().join("journal");
    let mut rogue_cluster = Cluster::ha("chocoha", "chocoha");
    rogue_cluster.secrets.agent_token = c.secrets.agent_token.clone();
    let mut rogue = Node::add_as(&rogue_cluster, &mut lan, "rogue", "master1", None, &journal);
    start_with(&lan, &mut rogue, "cluster-init: true\n");
    wait_announced(&rogue);
    let rogue_ca = rogue.ca().unwrap();
    let laptop = lan.add_host("laptop");
    let record = record_path(&c);

    // The rogue alone: nothing found (exit 4), the reason named, nothing recorded.
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "3"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(
        log.contains("no verified K3s server of cluster chocoha"),
        "{log}"
    );
    assert!(
        log.contains("rogue (from 10.99.0.1) claims cluster chocoha but is forged: its server proof does not check"),
        "{log}"
    );
    assert!(log.contains("agent token only"), "{log}");
    assert!(!record.exists(), "{log}");

    // The three genuine servers bootstrap beside it: listed, verified, their CA recorded;
    // the rogue listed as forged, with the reason.
    let servers = bootstrapped_servers(&c, &mut lan, &journal);
    let ca = servers[0].ca().unwrap();
    assert_ne!(ca, rogue_ca);
    let (found, log) = discover_verifies(&c, &lan, &laptop, &servers, &ca);
    let r = instance(&found, "rogue");
    assert_eq!(r["verdict"], "forged", "{r:#}");
    assert_eq!(r["ca"], rogue_ca.as_str(), "{r:#}");
    assert!(
        r["why"].as_str().unwrap().contains("agent token only"),
        "{r:#}"
    );
    assert_eq!(r["proven"], serde_json::json!([]), "{r:#}");
    let members: Vec<String> = servers
        .iter()
        .map(|s| format!("{} ({})", s.host.name, s.host.ip))
        .collect();
    assert!(
        log.contains(&format!(
            "3 of 3 servers verified with the cluster's CA: {}",
            members.join(", ")
        )),
        "{log}"
    );
    assert!(!log.contains("split brain"), "{log}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), format!("{ca}\n"));
    // The table says why too.
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("forged: its server proof does not check"),
        "{log}"
    );
}

/// `status` when the server the kubeconfig names is the one that died: the other
/// servers (found over mDNS, verified) are asked with the kubeconfig's client certificate
/// and CA, and the cluster is 2/3, degraded (exit 3), not unavailable. A fourth server of
/// the cluster (valid proof) serving another CA, whose API would answer "all Ready", is
/// never used: its TLS does not chain to the kubeconfig's CA. Three servers and the
/// stranger, each in its own namespace with Avahi, the rendered announce.sh and the K3s
/// API stand-in (no real K3s can run here).
#[test]
fn status_asks_another_server_when_the_kubeconfigs_is_down() {
    // The single-server plan's announce.sh with the HA server proof added (`announce_ha`:
    // the HA one waits for etcd membership, which the API stand-in does not model); the
    // profile made HA before `status` runs.
    let mut c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let ca_pki = pki(
        &c.dir.path().join("pki"),
        "k3s-server-ca",
        &["IP:127.0.0.1"],
    );
    let path = |p: &Path| p.display().to_string();
    let nodes = c.dir.path().join("nodes.json");
    let set = |m1: &str| {
        let all = [
            ("master1", m1),
            ("master2", "True"),
            ("master3", "True"),
            ("nodo1", "True"),
        ];
        std::fs::write(&nodes, nodes_json(&all)).unwrap()
    };
    set("True");
    let api = |nodes: &Path| {
        vec![
            "--client-ca".to_string(),
            path(&ca_pki.ca),
            "--nodes".into(),
            path(nodes),
        ]
    };
    let mut servers: Vec<Master> = ["master1", "master2", "master3"]
        .iter()
        .map(|name| {
            let p = same_pki(&ca_pki);
            let m = server_with_api(
                &c,
                &mut lan,
                name,
                |h| {
                    let (cert, key) = p.another_server_cert(&h.dir.join("pki"), &h.ip.to_string());
                    (p, cert, key)
                },
                &api(&nodes),
            );
            announce_ha(&c, &lan, &m);
            m
        })
        .collect();
    // A server with a valid proof but its own CA (a stale reinstall): it trusts our
    // client certificate and says every node is Ready, so only our TLS check refuses it.
    let all_ready = c.dir.path().join("all-ready.json");
    std::fs::write(
        &all_ready,
        nodes_json(&[
            ("master1", "True"),
            ("master2", "True"),
            ("master3", "True"),
            ("nodo1", "True"),
        ]),
    )
    .unwrap();
    let _stranger = server_with_api(
        &c,
        &mut lan,
        "master2-stale",
        |h| own_ca(h, "k3s-server-ca-other"),
        &api(&all_ready),
    );
    announce_ha(&c, &lan, &_stranger);
    make_ha(&mut c);
    std::thread::sleep(Duration::from_millis(1500));
    let laptop = lan.add_host("laptop");
    let kc = c.dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        kubeconfig_for(&ca_pki, "chocotest", "https://10.99.0.1:6443"),
    )
    .unwrap();
    let status = |json: bool| {
        let mut args = vec!["status", "--kubeconfig", kc.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = laptop_run(&c, &lan, &laptop, &args);
        (out.status.code(), text(&out), out.stdout)
    };

    // The kubeconfig's server answers: asked alone, as in a single-server cluster.
    let (code, log, _) = status(false);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("control plane: 3/3 servers Ready (quorum 2)"),
        "{log}"
    );
    assert!(!log.contains("asked"), "{log}");

    // master1's K3s dies (its machine still announces): master2 answers for the cluster.
    drop(servers.remove(0));
    set("False");
    let (code, log, _) = status(false);
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.starts_with("cluster chocotest: degraded (API https://10.99.0.2:6443)"),
        "{log}"
    );
    assert!(
        log.contains("control plane: 2/3 servers Ready (quorum 2)"),
        "{log}"
    );
    assert!(
        log.contains(
            "asked master2 at https://10.99.0.2:6443: master1 at https://10.99.0.1:6443 did not answer"
        ),
        "{log}"
    );
    assert!(!log.contains("master2-stale"), "{log}");
    assert!(
        log.contains("`chocoimg fetch-kubeconfig` points it at one that does"),
        "{log}"
    );
    let (code, _, stdout) = status(true);
    assert_eq!(code, Some(3));
    let v: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(v["state"], "degraded");
    assert_eq!(v["answered_by"], "master2");
    assert_eq!(v["server"], "https://10.99.0.2:6443");
    assert_eq!(v["control_plane"]["ready"], 2);

    // master2 and master3 die too: only the stranger answers, and it is refused; the
    // cluster is unavailable, every server asked named.
    servers.clear();
    let (code, log, _) = status(false);
    assert_eq!(code, Some(4), "{log}");
    assert!(
        log.starts_with("cluster chocotest: unavailable (API https://10.99.0.1:6443)"),
        "{log}"
    );
    assert!(log.contains("no server of the cluster answered"), "{log}");
    assert!(
        log.contains("master2-stale at https://10.99.0.4:6443"),
        "{log}"
    );
    // The dead servers, still announcing, are named too.
    for silent in [
        "master2 at https://10.99.0.2:6443: announced over mDNS, not asked",
        "master3 at https://10.99.0.3:6443: announced over mDNS, not asked",
    ] {
        assert!(log.contains(silent), "{log}");
    }
    assert!(
        log.contains("certificate"),
        "refused for its certificate: {log}"
    );
    assert!(!log.contains("asked master2-stale"), "{log}");
}
