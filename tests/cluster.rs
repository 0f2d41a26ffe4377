//! Issue 4: the cluster assembles itself. Node scripts run for real against Avahi in
//! network namespaces; the laptop commands run as the real binary inside them.
use crate::support::k3s::{fake_systemctl, pki, standin, Cluster};
use crate::support::netns::{Host, Lan};
use crate::support::{chocoimg, ok, require_tool};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(crate) const LIB: &str = "usr/local/lib/chocoimg";

#[test]
fn rendered_node_scripts_pass_shellcheck() {
    require_tool("shellcheck");
    let mvp = Cluster::new("chocotest", "chocotest", None);
    // Issue 11: an HA cluster's servers (the init server and one that joins) too.
    let ha = Cluster::ha("chocotest", "chocotest");
    for (c, node) in [
        (&mvp, "master1"),
        (&mvp, "nodo1"),
        (&ha, "master1"),
        (&ha, "master2"),
        (&ha, "nodo1"),
    ] {
        let setup = c.node_setup(node);
        let scripts: Vec<_> = setup
            .files
            .iter()
            .filter(|f| f.path.ends_with(".sh"))
            .collect();
        assert!(scripts.len() >= 2, "{node}: {scripts:?}");
        for f in scripts {
            assert!(f.content.starts_with("#!/bin/sh\n"), "{}", f.path);
            let p = c
                .dir
                .path()
                .join(format!("{node}-{}", f.path.replace('/', "_")));
            std::fs::write(&p, &f.content).unwrap();
            ok(Command::new("shellcheck")
                .args(["-s", "sh", "-S", "style"])
                .arg(&p));
        }
    }
}

#[test]
fn node_files_keep_secrets_where_they_belong() {
    let c = Cluster::new("chocotest", "chocotest", None);
    for node in ["master1", "nodo1"] {
        let setup = c.node_setup(node);
        let token = setup.file("/etc/chocoimg/agent-token").unwrap();
        assert_eq!(token.permissions, "0600");
        assert_eq!(token.content.trim(), c.secrets.agent_token);
        for f in &setup.files {
            assert!(!f.content.contains(&c.secrets.server_token), "{}", f.path);
            if f.path != token.path {
                assert!(!f.content.contains(&c.secrets.agent_token), "{}", f.path);
            }
        }
        assert!(setup.first_boot.iter().any(|c| c.contains("--no-block")));
    }
    let master = c.node_setup("master1");
    let sudoers = master.file("/etc/sudoers.d/chocoimg-kubeconfig").unwrap();
    assert_eq!(sudoers.permissions, "0440");
    assert!(sudoers
        .content
        .contains("chocotest ALL=(root) NOPASSWD: /usr/bin/cat /etc/rancher/k3s/k3s.yaml\n"));
    assert!(c.node_setup("nodo1").file(&sudoers.path).is_none());
    // nodo1's K3s node password is fixed by the secrets, so a re-flashed nodo1 is still
    // the node master1 knows; master1 (whose datastore a reinstall replaces) needs none.
    let nodo1 = c.node_setup("nodo1");
    let password = nodo1.file("/etc/rancher/node/password").unwrap();
    assert_eq!(password.permissions, "0600");
    assert_eq!(
        password.content.trim(),
        chocoimg::proof::node_password(&c.secrets.server_token, "chocotest", "nodo1")
    );
    assert_eq!(
        password.content,
        c.node_setup("nodo1").file(&password.path).unwrap().content
    );
    assert!(master.file(&password.path).is_none());
}

#[test]
fn sudoers_dropin_passes_visudo() {
    require_tool("visudo");
    let c = Cluster::new("chocotest", "chocotest", None);
    let setup = c.node_setup("master1");
    let f = setup.file("/etc/sudoers.d/chocoimg-kubeconfig").unwrap();
    let p = c.dir.path().join("sudoers");
    std::fs::write(&p, &f.content).unwrap();
    ok(Command::new("visudo").arg("-cf").arg(&p));
}

/// The nodes' tmpfiles.d rule, run by the real systemd-tmpfiles as at boot: the last
/// boot's announcements are removed (K3s's on master1, the stage on both), and nothing
/// else, so Avahi cannot publish them as current before the scripts looked at this boot.
#[test]
fn last_boots_announcements_are_removed_at_boot_by_tmpfiles() {
    use chocoimg::seed::node::{BOOT_TMPFILES_PATH, SERVICE_FILE_PATH, STAGE_SERVICE_FILE_PATH};
    require_tool("systemd-tmpfiles");
    let c = Cluster::new("chocotest", "chocotest", None);
    for (node, removed) in [
        ("master1", vec![SERVICE_FILE_PATH, STAGE_SERVICE_FILE_PATH]),
        ("nodo1", vec![STAGE_SERVICE_FILE_PATH]),
    ] {
        let root = c.install_node_files(node, &c.dir.path().join(node));
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        let services = under("/etc/avahi/services");
        std::fs::create_dir_all(&services).unwrap();
        for p in [SERVICE_FILE_PATH, STAGE_SERVICE_FILE_PATH] {
            std::fs::write(under(p), "<service-group/>").unwrap();
        }
        std::fs::write(services.join("other.service"), "<service-group/>").unwrap();
        ok(Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.display()))
            .args(["--create", "--remove", "--boot"])
            .arg(under(BOOT_TMPFILES_PATH)));
        for p in [SERVICE_FILE_PATH, STAGE_SERVICE_FILE_PATH] {
            assert_eq!(under(p).exists(), !removed.contains(&p), "{node}: {p}");
        }
        assert!(services.join("other.service").exists(), "{node}");
    }
}

/// master1 on the LAN: Avahi configured by the rendered avahi-config.sh, the K3s
/// stand-in serving /cacerts on 6443, and the rendered announce.sh run for real.
pub(crate) struct Master {
    pub(crate) host: Host,
    pub(crate) root: PathBuf,
    pub(crate) services: PathBuf,
    pub(crate) cacerts: PathBuf,
    pub(crate) pki: crate::support::k3s::Pki,
    pub(crate) _k3s: crate::support::k3s::Standin,
}

pub(crate) fn start_master(c: &Cluster, lan: &mut Lan) -> Master {
    let mut host = lan.add_host("master1");
    let root = c.install_node_files("master1", &host.dir.join("root"));
    let conf = host.dir.join("avahi-daemon.conf");
    ok(lan
        .cmd(&host, "sh")
        .arg(root.join(LIB).join("avahi-config.sh"))
        .env("CHOCOIMG_AVAHI_CONF", &conf));
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    for line in [
        "allow-interfaces=eth0\n",
        "use-ipv6=no\n",
        "publish-aaaa-on-ipv4=no\n",
        "publish-workstation=no\n",
    ] {
        assert!(conf_text.contains(line), "{line} missing in:\n{conf_text}");
    }
    let avahi = lan.start_avahi(&mut host, Some(&conf));
    // Stand-in for K3s (none can run here): serves /cacerts like K3s does.
    let pki = pki(
        &host.dir.join("pki"),
        "k3s-server-ca",
        &["IP:127.0.0.1", &format!("IP:{}", host.ip)],
    );
    let k3s = standin(
        lan.cmd(&host, "/usr/bin/python3"),
        &[
            "--bind".into(),
            "0.0.0.0".into(),
            "--port".into(),
            "6443".into(),
            "--cert".into(),
            pki.server_cert.display().to_string(),
            "--key".into(),
            pki.server_key.display().to_string(),
            "--cacerts".into(),
            pki.ca.display().to_string(),
        ],
    );
    let master = Master {
        services: avahi.services_dir,
        cacerts: pki.ca.clone(),
        pki,
        root,
        host,
        _k3s: k3s,
    };
    announce(lan, &master);
    master
}

pub(crate) fn announce(lan: &Lan, m: &Master) -> String {
    ok(lan
        .cmd(&m.host, "sh")
        .arg(m.root.join(LIB).join("announce.sh"))
        .env(
            "CHOCOIMG_AGENT_TOKEN_FILE",
            m.root.join("etc/chocoimg/agent-token"),
        )
        .env("CHOCOIMG_AVAHI_SERVICES", &m.services))
}

/// The K3s config drop-in join.sh wrote under `root`.
pub(crate) fn read_dropin(root: &Path) -> String {
    std::fs::read_to_string(root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml"))
        .unwrap()
}

/// The announcement of `name` in `discover --json`'s output.
pub(crate) fn instance<'a>(found: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["instance"] == name)
        .unwrap_or_else(|| panic!("{name} not in {found:#}"))
}

pub(crate) fn ca_of(path: &Path) -> String {
    chocoimg::proof::ca_hash(&std::fs::read(path).unwrap())
}

/// Publishes a hand-made `_k3s._tcp` announcement from `dir` (an Avahi services folder),
/// with `extra` TXT strings after the proof (an HA server's `sproof`).
pub(crate) fn publish_fake(
    dir: &Path,
    file: &str,
    name: &str,
    cluster: &str,
    ca: &str,
    proof: &str,
    extra: &[String],
) {
    let extra: String = extra
        .iter()
        .map(|t| format!("    <txt-record>{t}</txt-record>\n"))
        .collect();
    std::fs::write(
        dir.join(file),
        format!(
            r#"<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name>{name}</name>
  <service protocol="ipv4">
    <type>_k3s._tcp</type>
    <port>6443</port>
    <txt-record>txtvers=1</txt-record>
    <txt-record>cluster={cluster}</txt-record>
    <txt-record>role=server</txt-record>
    <txt-record>k3s=v1.28.15+k3s1</txt-record>
    <txt-record>ca={ca}</txt-record>
    <txt-record>proof={proof}</txt-record>
{extra}  </service>
</service-group>
"#
        ),
    )
    .unwrap();
}

/// A host announcing a forged master1 of our cluster and another cluster's server.
fn start_forger(c: &Cluster, lan: &mut Lan) -> Host {
    let mut host = lan.add_host("forger");
    let avahi = lan.start_avahi(&mut host, None);
    let ca = chocoimg::proof::ca_hash(b"an attacker's CA");
    let forged = chocoimg::proof::proof("not-the-agent-token", &c.plan.cluster, &ca);
    publish_fake(
        &avahi.services_dir,
        "forged.service",
        "master1-forged",
        &c.plan.cluster,
        &ca,
        &forged,
        &[],
    );
    let theirs = chocoimg::proof::proof("their-token", "othercluster", &ca);
    publish_fake(
        &avahi.services_dir,
        "foreign.service",
        "otherserver",
        "othercluster",
        &ca,
        &theirs,
        &[],
    );
    host
}

#[test]
fn discover_finds_master1_verified_and_flags_forged_and_foreign() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    let service = std::fs::read_to_string(m.services.join("chocoimg-k3s.service")).unwrap();
    let ca = ca_of(&m.cacerts);
    let proof = chocoimg::proof::proof(&c.secrets.agent_token, "chocotest", &ca);
    for txt in [
        "txtvers=1".to_string(),
        "cluster=chocotest".into(),
        "role=server".into(),
        "k3s=v1.28.15+k3s1".into(),
        format!("ca={ca}"),
        format!("proof={proof}"),
    ] {
        assert!(
            service.contains(&format!("<txt-record>{txt}</txt-record>")),
            "{txt} not in {service}"
        );
    }
    assert_eq!(service.matches("<txt-record>").count(), 6, "{service}");
    for secret in c.secrets.values() {
        assert!(!service.contains(secret));
    }
    // Re-running with nothing changed leaves the file alone (no re-announcement).
    assert!(announce(&lan, &m).contains("already announcing"));
    let _forger = start_forger(&c, &mut lan);
    let laptop = lan.add_host("laptop");

    let run = |args: &[&str]| {
        lan.cmd(&laptop, chocoimg().get_program())
            .args(args)
            .envs(c.envs())
            .output()
            .unwrap()
    };
    // A single-server cluster keeps no CA record: master1 makes a new CA at each install,
    // so an older cluster's record (here, another CA) must not stop the laptop finding it.
    let record = c.plan.out_dir.join(chocoimg::cluster_ca::FILE_NAME);
    std::fs::write(&record, format!("{}\n", "b".repeat(64))).unwrap();
    let out = run(&["discover", "--json", "--timeout", "4"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("recorded"));
    std::fs::remove_file(&record).unwrap();
    let out = run(&["discover", "--json", "--timeout", "4"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!record.exists(), "a single-server cluster recorded its CA");
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_instance = |i: &str| instance(&found, i).clone();
    let ours = by_instance("master1");
    assert_eq!(ours["verdict"], "verified", "{found:#}");
    assert_eq!(ours["addresses"], serde_json::json!(["10.99.0.1"]));
    assert_eq!(ours["ca"], ca.as_str());
    assert_eq!(ours["port"], 6443);
    assert_eq!(by_instance("master1-forged")["verdict"], "forged");
    assert_eq!(by_instance("otherserver")["verdict"], "foreign-cluster");
    assert_eq!(by_instance("otherserver")["cluster"], "othercluster");
    assert_eq!(found[0]["instance"], "master1", "verified first");

    let table = run(&["discover", "--timeout", "3"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("verified"), "{text}");
    assert!(text.contains("forged"), "{text}");
    assert!(text.contains("foreign cluster (othercluster)"), "{text}");

    // The second implementation sees the same announcement, with a proof that checks.
    let zc = ok(lan.cmd(&laptop, "/usr/bin/python3").args([
        crate::support::repo()
            .join("tests/support/zeroconf_browse.py")
            .display()
            .to_string(),
        laptop.ip.to_string(),
        "5".into(),
    ]));
    let zc: serde_json::Value = serde_json::from_str(&zc).unwrap();
    let m1 = zc
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "master1._k3s._tcp.local.")
        .unwrap_or_else(|| panic!("zeroconf did not see master1: {zc:#}"));
    assert_eq!(m1["addresses"], serde_json::json!(["10.99.0.1"]));
    assert_eq!(m1["txt"]["ca"], ca.as_str());
    assert!(chocoimg::proof::verify(
        &c.secrets.agent_token,
        "chocotest",
        m1["txt"]["ca"].as_str().unwrap(),
        m1["txt"]["proof"].as_str().unwrap()
    ));
}

#[test]
fn discover_says_what_was_tried_when_nothing_answers() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let laptop = lan.add_host("laptop");
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["discover", "--timeout", "1"])
        .envs(c.envs())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "_k3s._tcp.local.",
        "different LAN",
        "isolat",
        "Local Network",
        "still installing",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

/// nodo1 on the LAN: its rendered files under `root`, a `state` folder for the systemctl
/// stand-in, and Avahi when `avahi` (discovery needs it, a fixed address does not).
pub(crate) struct Nodo {
    pub(crate) host: Host,
    pub(crate) root: PathBuf,
    pub(crate) state: PathBuf,
}

pub(crate) fn add_nodo1(c: &Cluster, lan: &mut Lan, avahi: bool) -> Nodo {
    let mut host = lan.add_host("nodo1");
    let root = c.install_node_files("nodo1", &host.dir.join("root"));
    if avahi {
        lan.start_avahi(&mut host, None);
    }
    let state = host.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    Nodo { host, root, state }
}

pub(crate) fn run_join(lan: &Lan, nodo: &Host, root: &Path, state: &Path) -> std::process::Output {
    join_command(lan, nodo, root, state, 10, None)
        .output()
        .unwrap()
}

/// nodo1's rendered join.sh, with its paths under `root` and systemctl faked in `state`;
/// with `hosts`, in a private mount namespace whose /etc/hosts is that file.
pub(crate) fn join_command(
    lan: &Lan,
    nodo: &Host,
    root: &Path,
    state: &Path,
    tries: u32,
    hosts: Option<&Path>,
) -> Command {
    let join = root.join(LIB).join("join.sh");
    let mut cmd = match hosts {
        None => lan.cmd(nodo, "sh"),
        Some(h) => {
            let mut c = lan.cmd(nodo, "unshare");
            c.args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/hosts && exec sh "$1""#,
            ])
            .arg(h);
            c
        }
    };
    cmd.arg(join)
        .env(
            "CHOCOIMG_AGENT_TOKEN_FILE",
            root.join("etc/chocoimg/agent-token"),
        )
        .env(
            "CHOCOIMG_K3S_CONFIG_DIR",
            root.join("etc/rancher/k3s/config.yaml.d"),
        )
        .env("CHOCOIMG_SYSTEMCTL", fake_systemctl(state))
        .env("CHOCOIMG_TRIES", tries.to_string())
        .env("CHOCOIMG_PAUSE", "1");
    cmd
}

#[test]
fn join_writes_the_agent_config_ignores_forgeries_and_follows_master1() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let _forger = start_forger(&c, &mut lan);
    let mut m = start_master(&c, &mut lan);
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let dropin = root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml");
    let ca = ca_of(&m.cacerts);
    let expect = |addr: &str| {
        format!(
            "# Written by chocoimg-join: where this agent's server is, and its join token.\nserver: \"https://{addr}:6443\"\ntoken: \"K10{ca}::node:{}\"\n",
            c.secrets.agent_token
        )
    };

    let out = run_join(&lan, &nodo, &root, &state);
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        std::fs::read_to_string(&dropin).unwrap(),
        expect("10.99.0.2"),
        "{log}"
    );
    assert_eq!(
        chocoimg::proof::agent_join_token(&ca, &c.secrets.agent_token),
        format!("K10{ca}::node:{}", c.secrets.agent_token)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dropin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        log.contains("found master1 of cluster chocotest at 10.99.0.2"),
        "{log}"
    );
    assert!(log.contains("forged announcement"), "{log}");
    assert!(log.contains("another cluster (othercluster)"), "{log}");
    let calls = || std::fs::read_to_string(state.join("systemctl.log")).unwrap_or_default();
    assert_eq!(calls(), "restart --no-block k3s-agent\n");

    // Nothing changed: no restart.
    let out = run_join(&lan, &nodo, &root, &state);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("still at 10.99.0.2"));
    assert_eq!(
        calls(),
        "restart --no-block k3s-agent\nis-active --quiet k3s-agent\n"
    );

    // master1 gets a new DHCP address: the next run follows it and restarts the agent,
    // running (first move) or still starting, which systemd does not call active and an
    // agent whose server is gone never leaves (second move). Avahi needs a moment: retry.
    let follow = |m: &mut Master, n: u8| {
        lan.readdress(&mut m.host, n);
        let want = expect(&format!("10.99.0.{n}"));
        let mut followed = false;
        for _ in 0..5 {
            let out = run_join(&lan, &nodo, &root, &state);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            if std::fs::read_to_string(&dropin).unwrap() == want {
                followed = true;
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if !followed {
            let browse = lan
                .cmd(&nodo, "avahi-browse")
                .args(["-rptk", "_k3s._tcp"])
                .output()
                .unwrap();
            panic!(
                "join did not follow master1 to 10.99.0.{n}; nodo1's Avahi sees:\n{}\ndrop-in:\n{}\nmaster1's Avahi log:\n{}",
                String::from_utf8_lossy(&browse.stdout),
                std::fs::read_to_string(&dropin).unwrap(),
                std::fs::read_to_string(m.host.dir.join("avahi.log")).unwrap()
            );
        }
    };
    for (n, agent_active) in [(20, true), (30, false)] {
        if !agent_active {
            std::fs::remove_file(state.join("active")).unwrap();
            std::fs::write(state.join("starting"), "").unwrap();
        }
        let before = calls().len();
        follow(&mut m, n);
        let during = calls()[before..].to_string();
        assert!(
            during.ends_with("restart --no-block k3s-agent\n"),
            "{during}"
        );
        assert!(
            state.join("active").exists(),
            "k3s-agent left on the old address: {during}"
        );
    }
}

pub(crate) fn nodes_json(nodes: &[(&str, &str)]) -> String {
    let items: Vec<_> = nodes
        .iter()
        .map(|(name, ready)| {
            serde_json::json!({
                "metadata": {"name": name},
                "status": {"conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": ready}
                ]}
            })
        })
        .collect();
    serde_json::json!({"kind": "NodeList", "apiVersion": "v1", "items": items}).to_string()
}

pub(crate) fn kubeconfig_for(pki: &crate::support::k3s::Pki, name: &str, server: &str) -> String {
    let k3s: serde_yaml_ng::Value = serde_yaml_ng::from_str(&pki.k3s_kubeconfig()).unwrap();
    let ours = chocoimg::cluster::kubeconfig::adopt(&k3s, name, server).unwrap();
    serde_yaml_ng::to_string(&ours).unwrap()
}

/// The K3s API stand-in (none can run here) on loopback, client certificates required,
/// serving `nodes`; and a kubeconfig for it. Returns the stand-in, the kubeconfig and
/// the API's URL.
fn status_api(
    c: &Cluster,
    pki: &crate::support::k3s::Pki,
    nodes: &Path,
) -> (crate::support::k3s::Standin, PathBuf, String) {
    let path = |p: &Path| p.display().to_string();
    let api = standin(
        Command::new("/usr/bin/python3"),
        &[
            "--cert".into(),
            path(&pki.server_cert),
            "--key".into(),
            path(&pki.server_key),
            "--cacerts".into(),
            path(&pki.ca),
            "--client-ca".into(),
            path(&pki.ca),
            "--nodes".into(),
            path(nodes),
        ],
    );
    let kc = c.dir.path().join("kubeconfig");
    let server = format!("https://127.0.0.1:{}", api.port);
    std::fs::write(&kc, kubeconfig_for(pki, "chocotest", &server)).unwrap();
    (api, kc, server)
}

/// `chocoimg status --kubeconfig KC [--json]`: exit code, stdout, stderr.
pub(crate) fn run_status(c: &Cluster, kc: &Path, json: bool) -> (Option<i32>, String, String) {
    let mut cmd = c.chocoimg();
    cmd.arg("status").arg("--kubeconfig").arg(kc);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_reports_the_seeds_states_with_exit_codes() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let pki = pki(
        &c.dir.path().join("pki"),
        "k3s-server-ca",
        &["IP:127.0.0.1"],
    );
    let nodes = c.dir.path().join("nodes.json");
    std::fs::write(
        &nodes,
        nodes_json(&[("master1", "True"), ("nodo1", "False")]),
    )
    .unwrap();
    let (api, kc, server) = status_api(&c, &pki, &nodes);
    let status = |json: bool| run_status(&c, &kc, json);
    let (code, out, err) = status(true);
    assert_eq!(code, Some(3), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "degraded");
    assert_eq!(v["nodes"][0]["name"], "master1");
    assert_eq!(v["nodes"][0]["state"], "Ready");
    assert_eq!(v["nodes"][1]["state"], "NotReady");
    let (code, out, _) = status(false);
    assert_eq!(code, Some(3));
    assert!(out.starts_with("cluster chocotest: degraded"), "{out}");
    assert!(out.contains("nodo1    NotReady"), "{out}");

    std::fs::write(
        &nodes,
        nodes_json(&[("master1", "True"), ("nodo1", "True")]),
    )
    .unwrap();
    let (code, out, err) = status(false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("cluster chocotest: ready"), "{out}");

    std::fs::write(
        &nodes,
        nodes_json(&[("master1", "True"), ("nodo1", "Unknown")]),
    )
    .unwrap();
    let (code, out, _) = status(true);
    assert_eq!(code, Some(3));
    assert!(out.contains("\"Unknown\""), "{out}");

    // nodo1 not joined yet: the profile expects it, the API does not know it.
    std::fs::write(&nodes, nodes_json(&[("master1", "True")])).unwrap();
    let (code, out, _) = status(true);
    assert_eq!(code, Some(3), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"][1]["name"], "nodo1");
    assert_eq!(v["nodes"][1]["registered"], false);

    // A client certificate the API does not accept: unavailable.
    let other = pki_other(&c);
    let foreign_client = crate::support::k3s::Pki {
        ca: pki.ca.clone(),
        server_cert: pki.server_cert.clone(),
        server_key: pki.server_key.clone(),
        client_cert: other.client_cert.clone(),
        client_key: other.client_key.clone(),
    };
    std::fs::write(&kc, kubeconfig_for(&foreign_client, "chocotest", &server)).unwrap();
    let (code, out, _) = status(true);
    assert_eq!(code, Some(4), "{out}");
    // And a server whose CA is not the kubeconfig's: unavailable too (TLS refuses it).
    std::fs::write(&kc, kubeconfig_for(&other, "chocotest", &server)).unwrap();
    let (code, out, _) = status(true);
    assert_eq!(code, Some(4), "{out}");

    // No API at all: unavailable, and says so.
    std::fs::write(&kc, kubeconfig_for(&pki, "chocotest", &server)).unwrap();
    drop(api);
    let (code, out, err) = status(false);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(out.starts_with("cluster chocotest: unavailable"), "{out}");
    assert!(err.contains("did not answer"), "{err}");
}

/// Issue 11: with three servers (`mode: ha`), `status` shows the control plane against
/// the etcd quorum of 2: 3/3 ready (exit 0), 2/3 degraded (exit 3), 1/3 unavailable
/// (exit 4) even though the stand-in API still answers.
#[test]
fn status_reports_the_control_plane_quorum_of_three_servers() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let ha = format!(
        "cluster:\n  name: chocotest\n  mode: ha\n  datastore: etcd\nssh:\n  user: chocotest\n  public_key: {}.pub\nnodes:\n  - hostname: master1\n    role: server\n  - hostname: master2\n    role: server\n  - hostname: master3\n    role: server\n  - hostname: nodo1\n    role: agent\n",
        c.ssh_key.display()
    );
    std::fs::write(&c.profile, ha).unwrap();
    let pki = pki(
        &c.dir.path().join("pki"),
        "k3s-server-ca",
        &["IP:127.0.0.1"],
    );
    let nodes = c.dir.path().join("nodes.json");
    let set = |m2: &str, m3: &str| {
        std::fs::write(
            &nodes,
            nodes_json(&[
                ("master1", "True"),
                ("master2", m2),
                ("master3", m3),
                ("nodo1", "True"),
            ]),
        )
        .unwrap()
    };
    set("True", "True");
    let (api, kc, _server) = status_api(&c, &pki, &nodes);
    let status = |json: bool| run_status(&c, &kc, json);
    let (code, out, err) = status(false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("cluster chocotest: ready"), "{out}");
    assert!(
        out.contains("control plane: 3/3 servers Ready (quorum 2)"),
        "{out}"
    );

    set("True", "False");
    let (code, out, err) = status(false);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.starts_with("cluster chocotest: degraded"), "{out}");
    assert!(
        out.contains("control plane: 2/3 servers Ready (quorum 2)"),
        "{out}"
    );
    let (code, out, _) = status(true);
    assert_eq!(code, Some(3));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["control_plane"]["ready"], 2);
    assert_eq!(v["control_plane"]["quorum"], 2);

    set("Unknown", "False");
    let (code, out, err) = status(false);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(out.starts_with("cluster chocotest: unavailable"), "{out}");
    assert!(
        out.contains("control plane: 1/3 servers Ready (quorum 2)"),
        "{out}"
    );
    assert!(err.contains("only 1 of 3 servers are Ready"), "{err}");
    let (code, out, _) = status(true);
    assert_eq!(code, Some(4));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "unavailable");
    assert_eq!(v["control_plane"]["ready"], 1);
    drop(api);
}

fn pki_other(c: &Cluster) -> crate::support::k3s::Pki {
    pki(
        &c.dir.path().join("pki-other"),
        "someone-else",
        &["IP:127.0.0.1"],
    )
}

/// OpenSSH's sshd on master1, in a private mount namespace whose /etc is an overlay (the
/// host's /etc is never touched): the profile's admin user exists there, K3s's
/// kubeconfig is bind-mounted from `k3s_yaml` (root-only), and the rendered sudoers
/// drop-in is installed, so the real sudo decides. `host_key` is the sshd's host key.
pub(crate) fn start_sshd(
    c: &Cluster,
    lan: &Lan,
    host: &Host,
    port: u16,
    host_key: &str,
    k3s_yaml: &Path,
) -> PathBuf {
    require_tool("sshd");
    require_tool("sudo");
    require_tool("useradd");
    let dir = host.dir.join(format!("sshd-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("host_key");
    std::fs::write(&key, host_key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let auth = dir.join("authorized_keys");
    std::fs::copy(c.ssh_key.with_extension("pub"), &auth).unwrap();
    let sudoers = dir.join("sudoers");
    let setup = c.node_setup("master1");
    std::fs::write(
        &sudoers,
        &setup
            .file("/etc/sudoers.d/chocoimg-kubeconfig")
            .unwrap()
            .content,
    )
    .unwrap();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 0.0.0.0\nHostKey {}\nPidFile {}/sshd.pid\n\
             AuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin no\n",
            key.display(),
            dir.display(),
            auth.display()
        ),
    )
    .unwrap();
    // sshd's compiled-in privilege separation folder (empty; testing.md).
    std::fs::create_dir_all("/run/sshd").unwrap();
    ok(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&cfg));
    let user = &c.plan.ssh.user;
    let script = format!(
        "set -e; mkdir -p /run/sshd; ovl={d}/ovl; mkdir -p $ovl; mount -t tmpfs tmpfs $ovl; \
         mkdir $ovl/upper $ovl/work; \
         mount -t overlay overlay -o lowerdir=/etc,upperdir=$ovl/upper,workdir=$ovl/work /etc; \
         id {user} >/dev/null 2>&1 || useradd -M -d /nonexistent -s /bin/sh {user}; \
         usermod -p '*' {user}; \
         mkdir -p /etc/rancher/k3s; touch /etc/rancher/k3s/k3s.yaml; \
         mount --bind {k3s} /etc/rancher/k3s/k3s.yaml; \
         install -m 0440 {sudoers} /etc/sudoers.d/chocoimg-kubeconfig; \
         exec /usr/sbin/sshd -D -e -f {cfg}",
        d = dir.display(),
        k3s = k3s_yaml.display(),
        sudoers = sudoers.display(),
        cfg = cfg.display(),
    );
    let log = dir.join("sshd.log");
    let mut cmd = lan.cmd(host, "unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    lan.spawn(cmd);
    crate::support::netns::wait_for(
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .map(|s| s.contains("Server listening"))
                .unwrap_or(false)
        },
        &format!("sshd on port {port} (log {})", log.display()),
    );
    log
}

pub(crate) fn private_file(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn fetch_kubeconfig_merges_a_verified_kubeconfig_and_refuses_impostors() {
    require_tool("ssh");
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let mut m = start_master(&c, &mut lan);
    let k3s_yaml = m.host.dir.join("k3s.yaml");
    private_file(&k3s_yaml, &m.pki.k3s_kubeconfig());
    let sshd_log = start_sshd(
        &c,
        &lan,
        &m.host,
        22,
        &c.secrets.host_keys["master1"].private,
        &k3s_yaml,
    );
    let laptop = lan.add_host("laptop");
    let kube = c.home.join(".kube/config");
    std::fs::create_dir_all(kube.parent().unwrap()).unwrap();
    let existing = "apiVersion: v1\nkind: Config\ncurrent-context: work\nclusters:\n- name: work\n  cluster:\n    server: https://work.example:6443\nusers:\n- name: work\n  user:\n    token: abc\ncontexts:\n- name: work\n  context:\n    cluster: work\n    user: work\n";
    private_file(&kube, existing);
    let fetch_with = |args: &[&str], kubeconfig_env: &str| {
        let out = lan
            .cmd(&laptop, chocoimg().get_program())
            .arg("fetch-kubeconfig")
            .args(args)
            .envs(c.envs())
            .env("KUBECONFIG", kubeconfig_env)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let fetch = |args: &[&str]| fetch_with(args, "");
    let read = |p: &Path| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let named = |doc: &serde_yaml_ng::Value, list: &str, name: &str| {
        doc[list]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };

    // Discovered over mDNS, proof and CA checked, merged next to "work".
    let (code, log) = fetch(&["--timeout", "5"]);
    assert_eq!(
        code,
        Some(0),
        "{log}\nsshd: {}",
        std::fs::read_to_string(&sshd_log).unwrap()
    );
    let doc = read(&kube);
    assert_eq!(doc["current-context"], "work", "{log}");
    assert_eq!(named(&doc, "contexts", "work").len(), 1);
    assert_eq!(named(&doc, "users", "work")[0]["user"]["token"], "abc");
    let ours = named(&doc, "clusters", "chocotest");
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["cluster"]["server"], "https://10.99.0.1:6443");
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            ours[0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(ca, std::fs::read(&m.cacerts).unwrap());
    assert_eq!(
        named(&doc, "contexts", "chocotest")[0]["context"]["user"],
        "chocotest"
    );
    assert!(!std::fs::read_to_string(&kube).unwrap().contains("default"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kube).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The contents of every backup of the kubeconfig.
    let backups = || -> Vec<String> {
        std::fs::read_dir(kube.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("config.chocoimg-backup-")
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    };
    assert_eq!(backups(), [existing]);

    // $KUBECONFIG with several files, kubectl's rules: ours is refreshed in the file that
    // defines it, no file is created ahead of it (which would silently switch the context),
    // and every backup is kept.
    let front = c.home.join("front.yaml");
    let chain = format!("{}:{}", front.display(), kube.display());
    let (code, log) = fetch_with(&["--server", "10.99.0.1"], &chain);
    assert_eq!(code, Some(0), "{log}");
    assert!(!front.exists(), "{log}");
    assert!(log.contains("current context unchanged"), "{log}");
    let doc = read(&kube);
    assert_eq!(doc["current-context"], "work");
    assert_eq!(named(&doc, "clusters", "chocotest").len(), 1);
    let backups = backups();
    assert_eq!(backups.len(), 2, "one backup per write");
    assert!(
        backups.iter().any(|b| b == existing),
        "the first backup is kept"
    );
    let merged = std::fs::read(&kube).unwrap();

    // Another machine's host key: refused, nothing written.
    let impostor_key = c.dir.path().join("impostor");
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&impostor_key));
    start_sshd(
        &c,
        &lan,
        &m.host,
        2222,
        &std::fs::read_to_string(&impostor_key).unwrap(),
        &k3s_yaml,
    );
    let standalone = c.dir.path().join("standalone.yaml");
    let (code, log) = fetch(&[
        "--server",
        "10.99.0.1",
        "--ssh-port",
        "2222",
        "--output",
        standalone.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not master1's"), "{log}");
    assert!(!standalone.exists());

    // The right host, but a kubeconfig whose CA is not the one the API serves: refused.
    let other = pki(
        &c.dir.path().join("pki-other"),
        "other-ca",
        &["IP:127.0.0.1"],
    );
    private_file(&k3s_yaml, &other.k3s_kubeconfig());
    let (code, log) = fetch(&["--server", "10.99.0.1"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("not the one its API serves"), "{log}");
    assert_eq!(std::fs::read(&kube).unwrap(), merged, "nothing written");
    private_file(&k3s_yaml, &m.pki.k3s_kubeconfig());

    // --output writes a standalone file (the pinned host, the fixed address).
    let (code, log) = fetch(&[
        "--server",
        "10.99.0.1",
        "--output",
        standalone.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{log}");
    let alone = read(&standalone);
    assert_eq!(alone["current-context"], "chocotest");
    assert_eq!(alone["clusters"].as_sequence().unwrap().len(), 1);
    assert_eq!(
        std::fs::metadata(&standalone).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // master1 moves: re-running refreshes the address; --use-context switches to it.
    lan.readdress(&mut m.host, 20);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, log) = fetch(&["--timeout", "5", "--use-context"]);
    assert_eq!(code, Some(0), "{log}");
    let doc = read(&kube);
    let ours = named(&doc, "clusters", "chocotest");
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["cluster"]["server"], "https://10.99.0.20:6443");
    assert_eq!(doc["current-context"], "chocotest");
    assert_eq!(named(&doc, "contexts", "work").len(), 1);
    let merged = std::fs::read(&kube).unwrap();

    // What /cacerts serves is no longer what master1 announced: refused, nothing written.
    std::fs::copy(&other.ca, &m.cacerts).unwrap();
    let (code, log) = fetch(&["--timeout", "5"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not the one master1 announced"), "{log}");
    assert_eq!(std::fs::read(&kube).unwrap(), merged, "nothing written");
}

#[test]
fn join_with_a_fixed_server_address_skips_discovery() {
    let c = Cluster::new("chocotest", "chocotest", Some("10.99.0.1"));
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    assert_eq!(m.host.ip.to_string(), "10.99.0.1");
    // nodo1 runs no Avahi at all: discovery would fail, the fixed address does not need it.
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, false);
    let out = run_join(&lan, &nodo, &root, &state);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("fixed server address 10.99.0.1"), "{log}");
    let dropin =
        std::fs::read_to_string(root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml"))
            .unwrap();
    let ca = ca_of(&m.cacerts);
    assert!(
        dropin.contains("server: \"https://10.99.0.1:6443\"\n"),
        "{dropin}"
    );
    assert!(
        dropin.contains(&format!(
            "token: \"K10{ca}::node:{}\"\n",
            c.secrets.agent_token
        )),
        "{dropin}"
    );

    // Someone else answers at that address later (another CA): trusted on first use only,
    // so the agent token is not handed to them.
    let other = pki(
        &c.dir.path().join("pki-other"),
        "other-ca",
        &["IP:10.99.0.1"],
    );
    std::fs::copy(&other.ca, &m.cacerts).unwrap();
    let out = run_join(&lan, &nodo, &root, &state);
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("trusted on first use; refusing"), "{log}");
    let after =
        std::fs::read_to_string(root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml"))
            .unwrap();
    assert_eq!(after, dropin, "the drop-in keeps the first CA");
}

/// K3s is a static binary that resolves names without nss-mdns, so `server_address:
/// master1.local` must reach K3s as an address. Here /etc/hosts names master1 (on the node
/// nss-mdns does): either way join.sh asks the system's resolver, as curl does.
#[test]
fn join_with_a_fixed_server_name_gives_k3s_its_address() {
    let c = Cluster::new("chocotest", "chocotest", Some("master1.local"));
    let mut lan = Lan::new();
    let m = start_master(&c, &mut lan);
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, false);
    let hosts = nodo.dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{} master1.local\n", m.host.ip),
    )
    .unwrap();
    let out = join_command(&lan, &nodo, &root, &state, 3, Some(&hosts))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("master1.local is 10.99.0.1"), "{log}");
    let dropin =
        std::fs::read_to_string(root.join("etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml"))
            .unwrap();
    assert!(
        dropin.contains("server: \"https://10.99.0.1:6443\"\n"),
        "{dropin}"
    );
}

#[test]
fn forged_and_foreign_announcements_are_never_used() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let _forger = start_forger(&c, &mut lan);
    let Nodo {
        host: nodo,
        root,
        state,
    } = add_nodo1(&c, &mut lan, true);
    let out = join_command(&lan, &nodo, &root, &state, 2, None)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("forged announcement"), "{log}");
    assert!(log.contains("no verified _k3s._tcp announcement"), "{log}");
    assert!(!root.join("etc/rancher/k3s/config.yaml.d").exists());
    assert!(
        !state.join("systemctl.log").exists(),
        "k3s-agent was touched"
    );

    // The laptop: discover lists them, fetch-kubeconfig uses neither.
    let laptop = lan.add_host("laptop");
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["discover", "--json", "--timeout", "3"])
        .envs(c.envs())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2, "{found:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 other announcements heard"));
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["fetch-kubeconfig", "--timeout", "3"])
        .envs(c.envs())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 other announcements heard"));
    assert!(!c.home.join(".kube").exists());
}

#[test]
fn avahi_config_without_a_default_route_still_keeps_k3s_interfaces_out() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let host = lan.add_host("nodo1");
    ok(Command::new("ip").args(["-n", &host.ns, "route", "del", "default"]));
    let root = c.install_node_files("nodo1", &host.dir.join("root"));
    let conf = host.dir.join("avahi-daemon.conf");
    let out = ok(lan
        .cmd(&host, "sh")
        .arg(root.join(LIB).join("avahi-config.sh"))
        .env("CHOCOIMG_AVAHI_CONF", &conf)
        .env("CHOCOIMG_WAIT_SECONDS", "1"));
    assert!(out.contains("no default route within 1s"), "{out}");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains("\nallow-interfaces="), "{text}");
    assert!(text.contains("deny-interfaces=cni0,flannel.1"), "{text}");
    assert!(text.contains("use-ipv6=no"), "{text}");
}

/// The unit K3s's install.sh writes for `INSTALL_K3S_EXEC=server|agent` (its
/// create_systemd_service_file, trimmed to what systemd orders by): a stand-in, as no
/// K3s install can run here.
fn k3s_unit(exec: &str) -> String {
    format!(
        "[Unit]\nDescription=Lightweight Kubernetes\nWants=network-online.target\n\
         After=network-online.target\n\n[Install]\nWantedBy=multi-user.target\n\n\
         [Service]\nType=notify\nKillMode=process\nDelegate=yes\nTimeoutStartSec=0\n\
         Restart=always\nRestartSec=5s\nExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStart=/usr/local/bin/k3s {exec}\n"
    )
}

/// systemd itself loads every rendered unit and drop-in (offline, `--root`), finds each
/// ExecStart, and builds the boot transaction with the units a node has: systemd's own,
/// avahi-daemon, networkd's wait-online and cloud-init's (Debian's order like Ubuntu's:
/// cloud-final after multi-user.target, cloud-init before network-online.target). No
/// error and no ordering cycle, so first boot cannot deadlock on them.
#[test]
fn node_units_load_in_systemd_without_ordering_cycles() {
    require_tool("systemd-analyze");
    require_tool("systemctl");
    require_tool("avahi-daemon");
    require_tool("cloud-init");
    let mvp = Cluster::new("chocotest", "chocotest", None);
    // Issue 11: an HA server's bootstrap units and its k3s.service drop-in too.
    let ha = Cluster::ha("chocotest", "chocotest");
    let units: [(&Cluster, &str, &str, &[&str]); 3] = [
        (
            &mvp,
            "master1",
            "k3s",
            &[
                "chocoimg-announce.service",
                "chocoimg-announce.timer",
                "chocoimg-stage.service",
                "chocoimg-stage.timer",
            ],
        ),
        (
            &ha,
            "master2",
            "k3s",
            &[
                "chocoimg-bootstrap.service",
                "chocoimg-bootstrap.timer",
                "chocoimg-announce.service",
                "chocoimg-announce.timer",
                "chocoimg-stage.service",
                "chocoimg-stage.timer",
            ],
        ),
        (
            &mvp,
            "nodo1",
            "k3s-agent",
            &[
                "chocoimg-join.service",
                "chocoimg-join.timer",
                "chocoimg-stage.service",
                "chocoimg-stage.timer",
            ],
        ),
    ];
    for (c, node, k3s, ours) in units {
        let root = c.install_node_files(node, &c.dir.path().join(format!("{node}-root")));
        // systemd's own units, as on the node.
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        ok(Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system", "-t"])
            .arg(root.join("usr/lib/systemd")));
        for dir in ["usr/local/bin", "usr/sbin"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        ok(Command::new("cp")
            .arg("/usr/sbin/avahi-daemon")
            .arg(root.join("usr/sbin/avahi-daemon")));
        std::fs::write(root.join("usr/local/bin/k3s"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("usr/local/bin/k3s"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let k3s_service = format!("{k3s}.service");
        let exec = if k3s == "k3s" { "server" } else { "agent" };
        std::fs::write(
            root.join("etc/systemd/system").join(&k3s_service),
            k3s_unit(exec),
        )
        .unwrap();
        let mut enable = Command::new("systemctl");
        enable
            .arg(format!("--root={}", root.display()))
            .arg("enable");
        enable.args(ours).arg(&k3s_service).args([
            "avahi-daemon.service",
            "systemd-networkd.service",
            "systemd-networkd-wait-online.service",
            "cloud-init-local.service",
            "cloud-init.service",
            "cloud-config.service",
            "cloud-final.service",
        ]);
        ok(&mut enable);
        // What cloud-init's generator does at every boot of a node with a datasource.
        std::os::unix::fs::symlink(
            "/usr/lib/systemd/system/cloud-init.target",
            root.join("etc/systemd/system/multi-user.target.wants/cloud-init.target"),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("multi-user.target")
            .args(ours)
            .args([k3s_service.as_str(), "avahi-daemon.service"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{node}: systemd-analyze verify: {err}"
        );
    }
}

/// The agent token never reaches a command line, which every local process (and any pod
/// with hostPID) can read: strace records every program the node scripts' proof runs, with
/// its arguments, while the token comes from its root-only file as on the node.
#[test]
fn the_proof_keeps_the_agent_token_off_every_command_line() {
    require_tool("strace");
    let c = Cluster::new("chocotest", "chocotest", None);
    let lib = chocoimg::seed::node::render("lib.sh", minijinja::context! {}).unwrap();
    let token_file = c.dir.path().join("agent-token");
    std::fs::write(&token_file, format!("{}\n", c.secrets.agent_token)).unwrap();
    let ca = chocoimg::proof::ca_hash(b"ca");
    let script = format!(
        "PROG=test\n{lib}\nchocoimg_proof chocotest {ca} \"$(cat {})\"\n",
        token_file.display()
    );
    let trace = c.dir.path().join("execve.log");
    let out = ok(Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve", "-s", "65536", "-o"])
        .arg(&trace)
        .args(["sh", "-c", &script]));
    assert_eq!(
        out.trim(),
        chocoimg::proof::proof(&c.secrets.agent_token, "chocotest", &ca)
    );
    let execs = std::fs::read_to_string(&trace).unwrap();
    assert!(execs.contains("execve("), "strace saw nothing: {execs}");
    assert!(
        !execs.contains(&c.secrets.agent_token),
        "the agent token is on a command line:\n{execs}"
    );
}

/// master1 on the LAN with sshd serving K3s's kubeconfig, and a laptop beside it.
fn master_with_sshd(c: &Cluster, lan: &mut Lan) -> (Master, Host) {
    require_tool("ssh");
    let m = start_master(c, lan);
    let k3s_yaml = m.host.dir.join("k3s.yaml");
    private_file(&k3s_yaml, &m.pki.k3s_kubeconfig());
    start_sshd(
        c,
        lan,
        &m.host,
        22,
        &c.secrets.host_keys["master1"].private,
        &k3s_yaml,
    );
    let laptop = lan.add_host("laptop");
    (m, laptop)
}

/// Real kubectl on `kubeconfig`; its stdout.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    require_tool("kubectl");
    ok(Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env_remove("HOME")
        .args(args))
}

/// Names in `dir` that start with `.chocoimg-` (temporary files; backups are
/// `config.chocoimg-backup-*`).
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".chocoimg-"))
        .collect()
}

/// Issue 8, item 13: a context named like ours that reaches another cluster (and is
/// current) is not replaced without --overwrite-context, and every line about the current
/// context says what real kubectl then does.
#[test]
fn fetch_kubeconfig_never_silently_replaces_another_clusters_context() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let (_m, laptop) = master_with_sshd(&c, &mut lan);
    let kube = c.home.join(".kube/config");
    std::fs::create_dir_all(kube.parent().unwrap()).unwrap();
    // Another cluster under our name, current, written by kubectl itself.
    for args in [
        &[
            "config",
            "set-cluster",
            "chocotest",
            "--server=https://elsewhere.example:6443",
        ][..],
        &["config", "set-credentials", "chocotest", "--token=theirs"][..],
        &[
            "config",
            "set-context",
            "chocotest",
            "--cluster=chocotest",
            "--user=chocotest",
        ][..],
        &["config", "use-context", "chocotest"][..],
    ] {
        kubectl(&kube, args);
    }
    let before = std::fs::read(&kube).unwrap();
    let fetch = |args: &[&str]| {
        let out = lan
            .cmd(&laptop, chocoimg().get_program())
            .args(["fetch-kubeconfig", "--server", "10.99.0.1"])
            .args(args)
            .envs(c.envs())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (code, log) = fetch(&[]);
    assert_eq!(code, Some(2), "{log}");
    for want in [
        "chocotest",
        "elsewhere.example",
        "--overwrite-context",
        "--context",
    ] {
        assert!(log.contains(want), "{want:?} missing: {log}");
    }
    assert_eq!(std::fs::read(&kube).unwrap(), before, "nothing written");
    assert!(temp_files(kube.parent().unwrap()).is_empty());
    let server = |kube: &Path| {
        kubectl(
            kube,
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
        )
    };
    assert_eq!(server(&kube), "https://elsewhere.example:6443");

    // Asked for: replaced, said so, and the current context is now this cluster.
    let (code, log) = fetch(&["--overwrite-context"]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("replaced"), "{log}");
    assert_eq!(
        kubectl(&kube, &["config", "current-context"]).trim(),
        "chocotest"
    );
    assert_eq!(server(&kube), "https://10.99.0.1:6443");
    assert!(
        log.contains("current context: chocotest") && !log.contains("unchanged"),
        "{log}"
    );

    // Our own context again: refreshed without the flag.
    let (code, log) = fetch(&[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("current context: chocotest"), "{log}");

    // Another context current: left so, and said so with its name.
    kubectl(
        &kube,
        &[
            "config",
            "set-cluster",
            "work",
            "--server=https://work.example:6443",
        ],
    );
    kubectl(&kube, &["config", "set-context", "work", "--cluster=work"]);
    kubectl(&kube, &["config", "use-context", "work"]);
    let (code, log) = fetch(&[]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        kubectl(&kube, &["config", "current-context"]).trim(),
        "work"
    );
    assert!(log.contains("current context unchanged: work"), "{log}");
    assert_eq!(server(&kube), "https://work.example:6443");
    assert_eq!(
        kubectl(
            &kube,
            &[
                "config",
                "view",
                "--context",
                "chocotest",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}"
            ]
        ),
        "https://10.99.0.1:6443"
    );
}

/// Issue 8, item 14: a kubeconfig (or its folder) that cannot be written: exit 1, the
/// error printed once, the file untouched and no temporary file (it would hold the
/// admin's client key) left behind. Root ignores mode bits, so a read-only bind mount in
/// a private mount namespace makes it read-only.
#[test]
fn fetch_kubeconfig_into_a_read_only_kubeconfig_fails_cleanly() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let (_m, laptop) = master_with_sshd(&c, &mut lan);
    let kube = c.home.join(".kube/config");
    let dir = kube.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let existing = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n";
    private_file(&kube, existing);
    for read_only in [&kube, &dir] {
        let out = lan
            .cmd(&laptop, "unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\" && \
                 exec \"$@\" fetch-kubeconfig --server 10.99.0.1",
            )
            .arg(read_only)
            .arg(chocoimg().get_program())
            .envs(c.envs())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", read_only.display());
        assert_eq!(
            err.matches("os error").count(),
            1,
            "{}: the error once: {err}",
            read_only.display()
        );
        assert!(err.contains(kube.to_str().unwrap()), "{err}");
        assert_eq!(std::fs::read_to_string(&kube).unwrap(), existing);
        assert_eq!(
            temp_files(&dir),
            Vec::<String>::new(),
            "{}: {err}",
            read_only.display()
        );
    }
}
