//! Issue 8, items 9-12: someone on the LAN who does not wish the cluster well. The laptop
//! (the real binary) and nodo1 (the rendered join.sh and announcement.py, with Avahi) judge
//! the same bytes the same way; two verified servers are never picked silently; a rogue
//! that takes master1's name cannot hide it; an IPv6-only master1 is named as such. The
//! rogues are python-zeroconf responders (publishing any TXT bytes, without probing) and
//! K3s TLS stand-ins (no real K3s can run here) in namespaces the tests make.
use crate::cluster::{
    add_nodo1, announce, ca_of, join_command, read_dropin, start_master, Master, Nodo, LIB,
};
use crate::support::k3s::{pki, standin, Cluster, Pki, Standin};
use crate::support::netns::{wait_for, Host, Lan};
use crate::support::txt_cases::{cases, Case};
use crate::support::{chocoimg, repo, require_tool};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub(crate) fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The laptop's `chocoimg` run inside the `laptop` namespace.
pub(crate) fn laptop_run(c: &Cluster, lan: &Lan, laptop: &Host, args: &[&str]) -> Output {
    lan.cmd(laptop, chocoimg().get_program())
        .args(args)
        .envs(c.envs())
        .output()
        .unwrap()
}

fn discover_json(
    c: &Cluster,
    lan: &Lan,
    laptop: &Host,
    timeout: &str,
) -> (Output, Vec<serde_json::Value>) {
    let out = laptop_run(
        c,
        lan,
        laptop,
        &["discover", "--json", "--timeout", timeout],
    );
    let found: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("discover --json: {e}\n{}", text(&out)));
    (out, found.as_array().unwrap().clone())
}

/// A service python-zeroconf publishes: `txt` byte for byte.
fn service(name: &str, host: &str, txt: &[Vec<u8>], addresses: &[String]) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "host": host,
        "txt_hex": txt.iter().map(hex::encode).collect::<Vec<_>>(),
        "addresses": addresses,
    })
}

/// Starts tests/support/zeroconf_publish.py on `host` with `services`; returns once they
/// are published. `no_probe`: answer for names without probing (a rogue).
fn publish(lan: &Lan, host: &Host, services: &[serde_json::Value], no_probe: bool) {
    require_tool("python3");
    let file = host.dir.join(format!("services-{}.json", rand_suffix()));
    std::fs::write(&file, serde_json::to_string(services).unwrap()).unwrap();
    let log = file.with_extension("log");
    let mut cmd = lan.cmd(host, "/usr/bin/python3");
    cmd.arg(repo().join("tests/support/zeroconf_publish.py"))
        .arg(host.ip.to_string())
        .arg(&file)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit());
    if no_probe {
        cmd.arg("--no-probe");
    }
    lan.spawn(cmd);
    wait_for(
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|s| s.contains("published")),
        "python-zeroconf publishing",
    );
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The K3s TLS stand-in on `host`:6443 serving `cacerts` at /cacerts, with `cert`/`key`.
/// `extra`: more stand-in arguments (`--client-ca`, `--nodes` for an API).
fn k3s_on(
    lan: &Lan,
    host: &Host,
    cert: &Path,
    key: &Path,
    cacerts: &Path,
    extra: &[String],
) -> Standin {
    let p = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = vec![
        "--bind".into(),
        "0.0.0.0".into(),
        "--port".into(),
        "6443".into(),
        "--cert".into(),
        p(cert),
        "--key".into(),
        p(key),
        "--cacerts".into(),
        p(cacerts),
    ];
    args.extend_from_slice(extra);
    standin(lan.cmd(host, "/usr/bin/python3"), &args)
}

/// nodo1's Avahi answers, as avahi-browse prints them, judged by the rendered
/// announcement.py: name → (verdict, address, why).
fn node_verdicts(
    c: &Cluster,
    lan: &Lan,
    nodo: &Nodo,
) -> BTreeMap<String, (String, String, String)> {
    let browse = lan
        .cmd(&nodo.host, "avahi-browse")
        .args(["-rptk", "_k3s._tcp"])
        .output()
        .unwrap();
    let mut judge = lan.cmd(&nodo.host, "/usr/bin/python3");
    judge
        .arg(nodo.root.join(LIB).join("announcement.py"))
        .arg(&c.plan.cluster)
        .env("CHOCOIMG_HMAC_KEY", &c.secrets.agent_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = judge.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&browse.stdout)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "announcement.py: {}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[3].to_string(),
                (f[0].to_string(), f[1].to_string(), f[4].to_string()),
            )
        })
        .collect()
}

/// join.sh pointed k3s-agent at `address`.
fn assert_joined_at(root: &Path, address: &str) {
    let dropin = read_dropin(root);
    let want = format!("server: \"https://{address}:6443\"\n");
    assert!(dropin.contains(&want), "{dropin}");
}

/// master1's TXT strings, as announce.sh writes them, for the CA hash `ca`.
fn master1_txt(c: &Cluster, ca: &str) -> Vec<Vec<u8>> {
    let proof = chocoimg::proof::proof(&c.secrets.agent_token, &c.plan.cluster, ca);
    [
        "txtvers=1".to_string(),
        format!("cluster={}", c.plan.cluster),
        "role=server".into(),
        "k3s=v1.28.15+k3s1".into(),
        format!("ca={ca}"),
        format!("proof={proof}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// The laptop's judge, with no network: every case of the shared table.
#[test]
fn txt_case_table_drives_the_laptops_judge() {
    let ca = chocoimg::proof::ca_hash(b"the test CA");
    let all = cases("chocotest", "agent-token", &ca);
    assert!(all.len() >= 25, "{}", all.len());
    for case in all {
        let judged = chocoimg::cluster::txt::judge(
            &case.txt,
            "chocotest",
            chocoimg::cluster::txt::Keys::agent("agent-token"),
        );
        assert_eq!(
            serde_json::to_value(&judged.verdict).unwrap(),
            case.verdict.as_str(),
            "case {}: {judged:?}",
            case.name
        );
    }
}

/// Issue 8 item 9: every case of the table, published byte for byte by python-zeroconf,
/// gets the table's verdict from the laptop (`discover --json`) and from nodo1 (what its
/// real Avahi hands avahi-browse, read by the rendered announcement.py).
#[test]
fn laptop_and_nodo1_judge_every_txt_case_alike() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let host = lan.add_host("cases");
    let p = pki(
        &host.dir.join("pki"),
        "k3s-server-ca",
        &[&format!("IP:{}", host.ip)],
    );
    let _k3s = k3s_on(&lan, &host, &p.server_cert, &p.server_key, &p.ca, &[]);
    let all: Vec<Case> = cases(&c.plan.cluster, &c.secrets.agent_token, &ca_of(&p.ca));
    let services: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, case)| {
            service(
                &format!("case-{i:02}"),
                "cases.local.",
                &case.txt,
                &[host.ip.to_string()],
            )
        })
        .collect();
    publish(&lan, &host, &services, false);
    let nodo = add_nodo1(&c, &mut lan, true);
    let laptop = lan.add_host("laptop");

    let (out, found) = discover_json(&c, &lan, &laptop, "4");
    let laptop_says: BTreeMap<String, String> = found
        .iter()
        .map(|s| {
            (
                s["instance"].as_str().unwrap().to_string(),
                s["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let node_says = node_verdicts(&c, &lan, &nodo);
    let mut wrong = Vec::new();
    for (i, case) in all.iter().enumerate() {
        let name = format!("case-{i:02}");
        let laptop = laptop_says.get(&name).map(String::as_str);
        let node = node_says.get(&name).map(|v| v.0.as_str());
        if laptop != Some(&case.verdict) || node != Some(&case.verdict) {
            wrong.push(format!(
                "{name} {}: table {}, laptop {laptop:?}, nodo1 {node:?}",
                case.name, case.verdict
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nlaptop: {}",
        wrong.join("\n"),
        text(&out)
    );
}

/// Issue 8 item 9, end to end: the two announcements the issue found (`CLUSTER=evil`
/// then `cluster=<ours>`; a `k3s=` value smuggling `"ca=<proven>` before `ca=<other>`),
/// from a host that serves the proven CA: nodo1 joined them before; now neither side
/// takes them, and the agent token reaches python through the environment only.
#[test]
fn join_refuses_the_issue_8_txt_records() {
    require_tool("strace");
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let host = lan.add_host("smuggler");
    let p = pki(
        &host.dir.join("pki"),
        "k3s-server-ca",
        &[&format!("IP:{}", host.ip)],
    );
    let _k3s = k3s_on(&lan, &host, &p.server_cert, &p.server_key, &p.ca, &[]);
    let all = cases(&c.plan.cluster, &c.secrets.agent_token, &ca_of(&p.ca));
    let services: Vec<_> = all
        .iter()
        .filter(|case| case.name.starts_with("issue-8-"))
        .map(|case| {
            service(
                &case.name,
                "smuggler.local.",
                &case.txt,
                &[host.ip.to_string()],
            )
        })
        .collect();
    assert_eq!(services.len(), 2);
    publish(&lan, &host, &services, false);
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let trace = nodo.dir.join("execve.log");
    let join = join_command(&lan, &nodo, &root, &state, 2, None);
    // strace records every program run with its arguments: the token must be on none.
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=execve", "-s", "65536", "-o"])
        .arg(&trace)
        .arg(join.get_program())
        .args(join.get_args())
        .envs(join.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    let out = traced.output().unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("malformed announcement (the key 'cluster' appears more than once)"),
        "{log}"
    );
    assert!(log.contains("forged announcement"), "{log}");
    assert!(
        !root.join("etc/rancher/k3s/config.yaml.d").exists(),
        "{log}"
    );
    let execs = std::fs::read_to_string(&trace).unwrap();
    assert!(
        execs.contains("announcement.py"),
        "the judge did not run: {execs}"
    );
    assert!(
        !execs.contains(&c.secrets.agent_token),
        "the agent token is on a command line"
    );

    let laptop = lan.add_host("laptop");
    let (out, found) = discover_json(&c, &lan, &laptop, "3");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let verdicts: BTreeMap<&str, &str> = found
        .iter()
        .map(|s| {
            (
                s["instance"].as_str().unwrap(),
                s["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        BTreeMap::from([
            ("issue-8-cluster-twice-other-case-first", "malformed"),
            ("issue-8-k3s-value-smuggles-a-proven-ca", "forged")
        ])
    );
}

/// A second server of our cluster on its own host: Avahi and the rendered announce.sh as
/// on master1, named `name`, its K3s stand-in serving `cacerts` with `cert`/`key`.
pub(crate) fn second_server(
    c: &Cluster,
    lan: &mut Lan,
    name: &str,
    cert_for: impl FnOnce(&Host) -> (Pki, std::path::PathBuf, std::path::PathBuf),
) -> Master {
    server_with_api(c, lan, name, cert_for, &[])
}

/// A CA of `host`'s own, named `cn`, and its server certificate for the host's address:
/// `second_server`'s `cert_for` for a server of another CA.
pub(crate) fn own_ca(host: &Host, cn: &str) -> (Pki, std::path::PathBuf, std::path::PathBuf) {
    let p = pki(&host.dir.join("pki"), cn, &[&format!("IP:{}", host.ip)]);
    let (cert, key) = (p.server_cert.clone(), p.server_key.clone());
    (p, cert, key)
}

/// `second_server` whose stand-in also takes `api_args` (`--client-ca`, `--nodes`).
pub(crate) fn server_with_api(
    c: &Cluster,
    lan: &mut Lan,
    name: &str,
    cert_for: impl FnOnce(&Host) -> (Pki, std::path::PathBuf, std::path::PathBuf),
    api_args: &[String],
) -> Master {
    let mut host = lan.add_host(name);
    let root = c.install_node_files("master1", &host.dir.join("root"));
    let avahi = lan.start_avahi(&mut host, None);
    let (pki, cert, key) = cert_for(&host);
    let k3s = k3s_on(lan, &host, &cert, &key, &pki.ca, api_args);
    let m = Master {
        services: avahi.services_dir,
        cacerts: pki.ca.clone(),
        pki,
        root,
        host,
        _k3s: k3s,
    };
    announce(lan, &m);
    m
}

/// Issue 8 item 10, one CA at two addresses (master1 on two links, or an old answer
/// still cached): both prove the CA; the laptop and nodo1 each take the lowest address
/// and say so.
#[test]
fn same_ca_at_two_addresses_is_picked_and_said() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    let m_pki = crate::support::k3s::Pki {
        ca: m.pki.ca.clone(),
        server_cert: m.pki.server_cert.clone(),
        server_key: m.pki.server_key.clone(),
        client_cert: m.pki.client_cert.clone(),
        client_key: m.pki.client_key.clone(),
    };
    let _twin = second_server(&c, &mut lan, "master1-wifi", |h| {
        let (cert, key) = m_pki.another_server_cert(&h.dir.join("pki"), &h.ip.to_string());
        (m_pki, cert, key)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let laptop = lan.add_host("laptop");
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "4"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("master1 answers with the same CA at 10.99.0.1 (master1), 10.99.0.2 (master1-wifi); using 10.99.0.1"), "{log}");

    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let out = join_command(&lan, &nodo, &root, &state, 5, None)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("master1 answers at 10.99.0.1 10.99.0.2 with the same CA; using 10.99.0.1"),
        "{log}"
    );
    assert_joined_at(&root, "10.99.0.1");
}

/// Issue 8 item 10, two CAs with valid proofs (a reinstalled master1 beside the old one):
/// the laptop lists both and refuses to guess (exit 1; `--server` chooses); nodo1 on a
/// first join waits and logs the conflict; a nodo1 that already joined keeps its CA.
#[test]
fn two_verified_servers_with_different_cas_are_never_guessed() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    let new = second_server(&c, &mut lan, "master1-new", |h| {
        own_ca(h, "k3s-server-ca-reinstalled")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (old_ca, new_ca) = (ca_of(&m.cacerts), ca_of(&new.cacerts));
    let laptop = lan.add_host("laptop");
    for args in [
        &["discover", "--timeout", "4"][..],
        &["discover", "--first", "--timeout", "4"],
        &["fetch-kubeconfig", "--timeout", "4"],
    ] {
        let out = laptop_run(&c, &lan, &laptop, args);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {log}");
        assert!(log.contains("different CAs"), "{args:?}: {log}");
        assert!(
            log.contains(&format!("CA sha256 {old_ca}: 10.99.0.1 (master1)")),
            "{log}"
        );
        assert!(
            log.contains(&format!("CA sha256 {new_ca}: 10.99.0.2 (master1-new)")),
            "{log}"
        );
        assert!(log.contains("--server ADDRESS"), "{log}");
    }
    assert!(!laptop.dir.join("home/.kube").exists());

    // nodo1's first join: waits, logs the conflict, joins neither.
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let dropin = root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml");
    let out = join_command(&lan, &nodo, &root, &state, 2, None)
        .output()
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("valid proofs but different CAs answer"),
        "{log}"
    );
    assert!(log.contains(&format!("10.99.0.1 {old_ca}")), "{log}");
    assert!(!dropin.exists(), "{log}");

    // A nodo1 that joined the old master1 keeps its CA and says why.
    std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    std::fs::write(
        &dropin,
        format!(
            "server: \"https://10.99.0.1:6443\"\ntoken: \"K10{old_ca}::node:{}\"\n",
            c.secrets.agent_token
        ),
    )
    .unwrap();
    let out = join_command(&lan, &nodo, &root, &state, 2, None)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("with another CA answers at 10.99.0.2; keeping the CA this node joined"),
        "{log}"
    );
    assert!(std::fs::read_to_string(&dropin)
        .unwrap()
        .contains(&format!("K10{old_ca}::")));
}

/// Issue 8 item 11: a rogue takes the name master1 without probing (python-zeroconf as a
/// second responder: the instance name, the host name master1.local, and master1's own
/// TXT copied, valid proof and all) and copies /cacerts, but holds no CA key. master1
/// stays discoverable within the timeout at its own address, the rogue's is never used,
/// and the conflict is reported, on the laptop and on nodo1.
#[test]
fn a_rogue_claiming_master1s_name_cannot_hide_or_replace_it() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    let ca = ca_of(&m.cacerts);
    let rogue = lan.add_host("rogue");
    // /cacerts copied; its TLS certificate is its own.
    let fake = pki(
        &rogue.dir.join("pki"),
        "k3s-server-ca",
        &[&format!("IP:{}", rogue.ip)],
    );
    let _k3s = k3s_on(
        &lan,
        &rogue,
        &fake.server_cert,
        &fake.server_key,
        &m.cacerts,
        &[],
    );
    let copied = master1_txt(&c, &ca);
    publish(
        &lan,
        &rogue,
        &[service(
            "master1",
            "master1.local.",
            &copied,
            &[rogue.ip.to_string()],
        )],
        true,
    );
    let laptop = lan.add_host("laptop");
    let (out, found) = discover_json(&c, &lan, &laptop, "4");
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let usable: Vec<&serde_json::Value> = found
        .iter()
        .filter(|s| !s["proven"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(usable.len(), 1, "{found:#?}");
    assert_eq!(usable[0]["proven"], serde_json::json!(["10.99.0.1"]));
    let rogue_ip = rogue.ip.to_string();
    let from_rogue: Vec<&serde_json::Value> = found
        .iter()
        .filter(|s| s["responder"] == rogue_ip.as_str())
        .collect();
    assert!(
        !from_rogue.is_empty(),
        "the rogue was not heard: {found:#?}"
    );
    for r in from_rogue {
        assert_eq!(r["proven"], serde_json::json!([]), "{r:#}");
        assert!(
            r["unproven"][&rogue_ip]
                .as_str()
                .unwrap()
                .contains("does not chain"),
            "{r:#}"
        );
    }
    assert!(log.contains(&format!("name conflict: {rogue_ip}")), "{log}");
    let out = laptop_run(
        &c,
        &lan,
        &laptop,
        &["discover", "--first", "--json", "--timeout", "4"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let out = join_command(&lan, &nodo, &root, &state, 5, None)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "at {rogue_ip}: its proof checks, but its TLS does not chain to the announced CA"
        )),
        "{log}"
    );
    assert_joined_at(&root, "10.99.0.1");
}

/// Issue 8 item 12: master1 heard with a valid proof but only an IPv6 address (an
/// answer can carry only AAAA even to an IPv4 browser): the laptop says exactly that.
#[test]
fn an_ipv6_only_master1_is_named_as_ours_without_ipv4() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let host = lan.add_host("master1");
    let ca = chocoimg::proof::ca_hash(b"master1's CA");
    let txt = master1_txt(&c, &ca);
    publish(
        &lan,
        &host,
        &[service(
            "master1",
            "master1.local.",
            &txt,
            &["fd00:99::1".into()],
        )],
        false,
    );
    let laptop = lan.add_host("laptop");
    let out = laptop_run(&c, &lan, &laptop, &["discover", "--timeout", "3"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(log.contains("master1 is ours, with a valid proof, but announced no IPv4 address (only IPv6: fd00:99::1)"), "{log}");
    assert!(!log.contains("none ours with a valid proof"), "{log}");
}
