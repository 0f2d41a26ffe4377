//! Issue 10: the laptop sees each node come up. The rendered stage.sh runs for real on
//! master1 and nodo1 (systemctl and `k3s kubectl` stood in: no systemd or K3s can run in
//! a namespace), Avahi publishes what it writes, and `chocoimg watch` runs as the real
//! binary in the laptop's namespace.
use crate::cluster::{add_nodo1, private_file, run_join, start_master, start_sshd, LIB};
use crate::support::k3s::{fake_systemctl, Cluster};
use crate::support::netns::{Host, Lan};
use crate::support::{chocoimg, ok, require_tool};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A node's stage.sh with its paths under the node's folder, systemctl and K3s stood in.
struct Node {
    host: Host,
    root: PathBuf,
    services: PathBuf,
    /// The systemctl stand-in's folder (`failed`, `active`, ...).
    state: PathBuf,
}

impl Node {
    fn new(host: Host, root: PathBuf, services: PathBuf, state: PathBuf) -> Node {
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(host.dir.join("units")).unwrap();
        // `k3s kubectl get node ... -o jsonpath=<Ready status>`: True once `ready` exists.
        let k3s = host.dir.join("k3s");
        std::fs::write(
            &k3s,
            format!(
                "#!/bin/sh\necho \"$*\" >> {d}/k3s.log\nif [ -e {d}/ready ]; then echo True; else echo False; fi\n",
                d = host.dir.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k3s, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node {
            host,
            root,
            services,
            state,
        }
    }

    /// Runs stage.sh with `args`; returns its log.
    fn stage(&self, lan: &Lan, args: &[&str]) -> String {
        let d = &self.host.dir;
        ok(lan
            .cmd(&self.host, "sh")
            .arg(self.root.join(LIB).join("stage.sh"))
            .args(args)
            .env(
                "CHOCOIMG_AGENT_TOKEN_FILE",
                self.root.join("etc/chocoimg/agent-token"),
            )
            .env("CHOCOIMG_AVAHI_SERVICES", &self.services)
            .env("CHOCOIMG_STATE_DIR", d.join("stage-state"))
            .env("CHOCOIMG_UNITS_DIR", d.join("units"))
            .env(
                "CHOCOIMG_K3S_CONFIG_DIR",
                self.root.join("etc/rancher/k3s/config.yaml.d"),
            )
            .env("CHOCOIMG_SYSTEMCTL", fake_systemctl(&self.state))
            .env("CHOCOIMG_K3S", d.join("k3s")))
    }

    /// What K3s's install script leaves: its unit.
    fn install_k3s(&self, unit: &str) {
        std::fs::write(self.host.dir.join("units").join(unit), "[Unit]\n").unwrap();
    }

    fn set_ready(&self) {
        std::fs::write(self.host.dir.join("ready"), "").unwrap();
    }

    fn announcement(&self) -> String {
        std::fs::read_to_string(self.services.join("chocoimg-node.service")).unwrap()
    }
}

/// `chocoimg watch --json` running in the laptop's namespace; its lines arrive on `lines`.
struct Watcher {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<Value>,
}

impl Watcher {
    fn start(lan: &Lan, laptop: &Host, c: &Cluster, args: &[&str]) -> Watcher {
        let mut child = lan
            .cmd(laptop, chocoimg().get_program())
            .arg("watch")
            .args(args)
            .envs(c.envs())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a JSON line matching `want`; returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            let left = limit.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("watch printed a non-JSON line {line:?}: {e}"));
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("watch never printed {what}; it printed:\n{:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let out =
                        std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
                            .wait_with_output()
                            .unwrap();
                    panic!(
                        "watch ended ({}) before {what}; it printed:\n{:#?}\n{}",
                        out.status,
                        self.seen,
                        String::from_utf8_lossy(&out.stderr)
                    )
                }
            }
        }
    }

    fn expect_stage(&mut self, node: &str, stage: &str) -> Value {
        self.expect(&format!("{node} {stage}"), |v| {
            v["event"] == "stage" && v["node"] == node && v["stage"] == stage
        })
    }

    /// Waits for the process to end; its exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String, Vec<Value>) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(
            self.lines
                .iter()
                .map(|l| serde_json::from_str::<Value>(&l).unwrap()),
        );
        (status.code(), err, seen)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes a stage announcement made by hand (instance `name`) from `dir`.
fn publish_stage(dir: &Path, file: &str, name: &str, txt: &[(&str, String)]) {
    let records: String = txt
        .iter()
        .map(|(k, v)| format!("    <txt-record>{k}={v}</txt-record>\n"))
        .collect();
    std::fs::write(
        dir.join(file),
        format!(
            "<?xml version=\"1.0\" standalone='no'?>\n<!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n<service-group>\n  <name>{name}</name>\n  <service protocol=\"ipv4\">\n    <type>_chocoimg-node._tcp</type>\n    <port>0</port>\n{records}  </service>\n</service-group>\n"
        ),
    )
    .unwrap();
}

/// The TXT records of an announcement file stage.sh wrote.
fn txt_of(announcement: &str) -> Vec<(&'static str, String)> {
    [
        "txtvers", "cluster", "node", "stage", "since", "reason", "proof",
    ]
    .into_iter()
    .filter_map(|k| {
        let open = format!("<txt-record>{k}=");
        let start = announcement.find(&open)? + open.len();
        let end = start + announcement[start..].find("</txt-record>")?;
        Some((k, announcement[start..end].to_string()))
    })
    .collect()
}

#[test]
fn watch_sees_each_node_come_up_ignores_forgeries_and_stops_at_a_failure() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let laptop = lan.add_host("laptop");

    // Nothing on the LAN yet: --timeout ends it with 4, naming who it waited for.
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["watch", "--timeout", "1"])
        .envs(c.envs())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("master1 (not seen yet), nodo1 (not seen yet)"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("watching the bring-up of cluster chocotest: master1, nodo1"),
        "plain lines without a terminal: {text}"
    );

    // On a terminal: the table, one row per node.
    require_tool("script");
    let tty = lan
        .cmd(&laptop, "script")
        .args([
            "-qec",
            &format!(
                "{} watch --timeout 1",
                chocoimg().get_program().to_string_lossy()
            ),
            "/dev/null",
        ])
        .envs(c.envs())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(4), "{screen}");
    for row in [
        "NODE     ROLE    STAGE",
        "master1  server  not seen yet",
        "nodo1    agent   not seen yet",
    ] {
        assert!(screen.contains(row), "{row:?} not in {screen}");
    }

    let mut watch = Watcher::start(&lan, &laptop, &c, &["--json", "--timeout", "600"]);

    // master1: first boot, K3s's install, K3s starting, then Ready.
    let m = start_master(&c, &mut lan);
    let master = Node::new(
        m.host.clone(),
        m.root.clone(),
        m.services.clone(),
        m.host.dir.join("systemctl"),
    );
    assert!(master
        .stage(&lan, &["first-boot"])
        .contains("stage first-boot"));
    let first = watch.expect_stage("master1", "first-boot");
    assert_eq!(first["addresses"], serde_json::json!(["10.99.0.2"]));
    assert_eq!(first["verdict"], "verified");
    assert_eq!(first["role"], "server");
    let first_boot = master.announcement();
    for secret in c.secrets.values() {
        assert!(!first_boot.contains(secret), "a secret in {first_boot}");
    }
    master.stage(&lan, &["installing-k3s"]);
    master.install_k3s("k3s.service");
    assert!(master
        .stage(&lan, &["installed"])
        .contains("stage starting-k3s"));
    master.set_ready();
    assert!(master.stage(&lan, &[]).contains("stage k3s-running"));
    // Nothing changed: the announcement file is left alone (no re-announcement).
    let running = master.announcement();
    assert!(!master.stage(&lan, &[]).contains("stage "));
    assert_eq!(master.announcement(), running);
    watch.expect_stage("master1", "k3s-running");
    let master_stages: Vec<String> = watch
        .seen
        .iter()
        .filter(|v| v["event"] == "stage" && v["node"] == "master1")
        .map(|v| v["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(master_stages.first().unwrap(), "first-boot");
    assert_eq!(master_stages.last().unwrap(), "k3s-running");

    // A forger: master1 failed, with a proof made without the agent token; and master1's
    // own first-boot announcement replayed. Both shown as such, neither changes a row.
    let mut forger = lan.add_host("forger");
    let avahi = lan.start_avahi(&mut forger, None);
    let since = "4000000000".to_string();
    let forged_proof = chocoimg::proof::StageClaim {
        cluster: "chocotest",
        node: "master1",
        stage: "failed",
        since: 4_000_000_000,
        reason: "disk on fire",
    }
    .proof("not-the-agent-token");
    publish_stage(
        &avahi.services_dir,
        "forged.service",
        "master1-forged",
        &[
            ("txtvers", "1".into()),
            ("cluster", "chocotest".into()),
            ("node", "master1".into()),
            ("stage", "failed".into()),
            ("since", since),
            ("reason", "disk on fire".into()),
            ("proof", forged_proof),
        ],
    );
    let forged = watch.expect("the forged announcement", |v| v["event"] == "ignored");
    assert_eq!(forged["why"], "forged", "{forged:#}");
    assert_eq!(forged["node"], "master1");
    assert_eq!(forged["stage"], "failed");
    assert_eq!(forged["instance"], "master1-forged");
    publish_stage(
        &avahi.services_dir,
        "replay.service",
        "master1-replayed",
        &txt_of(&first_boot),
    );
    let replayed = watch.expect("the replayed announcement", |v| {
        v["event"] == "ignored" && v["instance"] == "master1-replayed"
    });
    assert_eq!(replayed["why"], "replayed", "{replayed:#}");
    assert_eq!(replayed["verdict"], "verified");

    // nodo1: waits for master1, joins it (the rendered join.sh, for real), then Ready.
    let nodo = add_nodo1(&c, &mut lan, true);
    let agent = Node::new(
        nodo.host.clone(),
        nodo.root.clone(),
        nodo.host.dir.join("avahi-services"),
        nodo.state.clone(),
    );
    agent.stage(&lan, &["first-boot"]);
    agent.stage(&lan, &["installing-k3s"]);
    agent.install_k3s("k3s-agent.service");
    assert!(agent
        .stage(&lan, &["installed"])
        .contains("stage waiting-for-server"));
    let waiting = watch.expect_stage("nodo1", "waiting-for-server");
    assert_eq!(waiting["role"], "agent");
    let join = run_join(&lan, &nodo.host, &nodo.root, &nodo.state);
    assert!(
        join.status.success(),
        "{}",
        String::from_utf8_lossy(&join.stdout)
    );
    assert!(agent.stage(&lan, &[]).contains("stage joining"));
    agent.set_ready();
    assert!(agent.stage(&lan, &[]).contains("stage joined"));
    // The agent asks with its kubelet's credentials (it has no admin kubeconfig).
    let asked = std::fs::read_to_string(agent.host.dir.join("k3s.log")).unwrap();
    assert!(
        asked.contains("--kubeconfig=/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
            && asked.contains("get node nodo1"),
        "{asked}"
    );
    watch.expect_stage("nodo1", "joined");
    let (code, err, seen) = watch.finish();
    assert_eq!(code, Some(0), "{err}\n{seen:#?}");
    assert!(err.contains("run `chocoimg fetch-kubeconfig`"), "{err}");
    let end = seen.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["result"], "up");
    // The forged failure never reached master1's row.
    assert!(
        !seen
            .iter()
            .any(|v| v["event"] == "stage" && v["stage"] == "failed"),
        "{seen:#?}"
    );
    // Every stage line of a node is newer than the one before (the replay never counted).
    for node in ["master1", "nodo1"] {
        let times: Vec<u64> = seen
            .iter()
            .filter(|v| v["event"] == "stage" && v["node"] == node)
            .map(|v| v["since"].as_u64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{node}: {times:?}");
    }

    // With --fetch-kubeconfig, once all are up it fetches master1's kubeconfig as
    // `fetch-kubeconfig` does (real sshd and sudo on master1).
    require_tool("ssh");
    let k3s_yaml = m.host.dir.join("k3s.yaml");
    private_file(&k3s_yaml, &m.pki.k3s_kubeconfig());
    start_sshd(
        &c,
        &lan,
        &m.host,
        22,
        &c.secrets.host_keys["master1"].private,
        &k3s_yaml,
    );
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["watch", "--timeout", "60", "--fetch-kubeconfig"])
        .envs(c.envs())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("wrote context chocotest"), "{text}");
    let kube = std::fs::read_to_string(c.home.join(".kube/config")).unwrap();
    assert!(kube.contains("server: https://10.99.0.2:6443"), "{kube}");

    // master1's K3s unit fails: the next watch stops at once with 1, naming it and why.
    std::fs::write(master.state.join("failed"), "").unwrap();
    assert!(master
        .stage(&lan, &[])
        .contains("stage failed: K3s unit k3s.service failed"));
    let watch = Watcher::start(&lan, &laptop, &c, &["--json", "--timeout", "600"]);
    let (code, err, seen) = watch.finish();
    assert_eq!(code, Some(1), "{err}\n{seen:#?}");
    assert!(
        err.contains("master1 failed: K3s unit k3s.service failed"),
        "{err}"
    );
    let end = seen.last().unwrap();
    assert_eq!(end["result"], "failed", "{seen:#?}");
    assert_eq!(end["node"], "master1");
}

/// stage.sh on its own: a failed K3s install is reported; an agent that finds no master1
/// for the set time reports it, and the failure stays (with its first time) until the
/// join happens.
#[test]
fn an_agent_without_a_server_reports_failed_after_the_wait() {
    let c = Cluster::new("chocotest", "chocotest", None);
    let mut lan = Lan::new();
    let nodo = add_nodo1(&c, &mut lan, false);
    let services = nodo.host.dir.join("services");
    let agent = Node::new(
        nodo.host.clone(),
        nodo.root.clone(),
        services,
        nodo.state.clone(),
    );
    // K3s's install script left no unit: the install failed.
    agent.stage(&lan, &["installing-k3s"]);
    assert!(agent
        .stage(&lan, &["installed"])
        .contains("stage failed: K3s install failed: no k3s-agent.service"));
    agent.install_k3s("k3s-agent.service");
    assert!(agent
        .stage(&lan, &["installed"])
        .contains("waiting-for-server"));
    // Zero minutes: the next look is already past the wait.
    let run = |minutes: &str| {
        ok(lan
            .cmd(&agent.host, "sh")
            .arg(agent.root.join(LIB).join("stage.sh"))
            .env(
                "CHOCOIMG_AGENT_TOKEN_FILE",
                agent.root.join("etc/chocoimg/agent-token"),
            )
            .env("CHOCOIMG_AVAHI_SERVICES", &agent.services)
            .env("CHOCOIMG_STATE_DIR", agent.host.dir.join("stage-state"))
            .env("CHOCOIMG_UNITS_DIR", agent.host.dir.join("units"))
            .env(
                "CHOCOIMG_K3S_CONFIG_DIR",
                agent.root.join("etc/rancher/k3s/config.yaml.d"),
            )
            .env("CHOCOIMG_SYSTEMCTL", fake_systemctl(&agent.state))
            .env("CHOCOIMG_K3S", agent.host.dir.join("k3s"))
            .env("CHOCOIMG_NO_SERVER_MINUTES", minutes))
    };
    assert!(run("0").contains("stage failed: no verified master1 found for 0 minutes"));
    let failed = agent.announcement();
    let txt = txt_of(&failed);
    let get = |k: &str| {
        txt.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("stage").as_deref(), Some("failed"));
    assert_eq!(
        get("reason").as_deref(),
        Some("no verified master1 found for 0 minutes")
    );
    // The laptop's judge takes what the node wrote.
    let strings: Vec<String> = txt.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        chocoimg::cluster::watch::judge(&strings, "chocotest", &c.secrets.agent_token).0,
        chocoimg::cluster::txt::Verdict::Verified
    );
    assert!(!run("0").contains("stage "), "the failure stays as it was");
    assert_eq!(agent.announcement(), failed);
    // A stage nobody defined is refused, nothing announced.
    let out = lan
        .cmd(&agent.host, "sh")
        .arg(agent.root.join(LIB).join("stage.sh"))
        .arg("dancing")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown stage dancing"));
    assert_eq!(agent.announcement(), failed);
}

/// Issue 11: with three servers, `watch` shows the order they came up in, from the times
/// they announced `k3s-running`, whatever order the announcements are heard in. Each
/// node announces from its own host and Avahi, as on the LAN (the laptop's one-shot
/// queries get 512-byte answers: one responder with many services loses records).
#[test]
fn watch_shows_the_servers_join_order() {
    let mut c = Cluster::new("chocotest", "chocotest", None);
    crate::ha_laptop::make_ha(&mut c);
    let mut lan = Lan::new();
    let laptop = lan.add_host("laptop");
    let mut services = std::collections::BTreeMap::new();
    for node in ["master1", "master2", "master3", "nodo1"] {
        let mut host = lan.add_host(node);
        let avahi = lan.start_avahi(&mut host, None);
        services.insert(node, (host, avahi.services_dir));
    }
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 300;
    // A stage announcement as stage.sh makes it (proof keyed with the agent token),
    // written aside and moved into place: Avahi must never read half a file.
    let announce = |node: &str, stage: &str, since: u64| {
        let proof = chocoimg::proof::StageClaim {
            cluster: "chocotest",
            node,
            stage,
            since,
            reason: "",
        }
        .proof(&c.secrets.agent_token);
        let (host, dir) = &services[node];
        let staging = host.dir.join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        publish_stage(
            &staging,
            "chocoimg-node.service",
            node,
            &[
                ("txtvers", "1".into()),
                ("cluster", "chocotest".into()),
                ("node", node.into()),
                ("stage", stage.into()),
                ("since", since.to_string()),
                ("proof", proof),
            ],
        );
        // Avahi reloads a file only when its mtime (seconds) moved on, as
        // replace_service_file makes sure on a node.
        let aside = staging.join("chocoimg-node.service");
        std::fs::File::options()
            .write(true)
            .open(&aside)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
            .unwrap();
        std::fs::rename(&aside, dir.join("chocoimg-node.service")).unwrap();
    };
    announce("master3", "k3s-running", t0 + 40);
    announce("master2", "joining", t0 + 10);
    announce("master1", "k3s-running", t0);
    announce("nodo1", "joined", t0 + 50);
    let mut watch = Watcher::start(&lan, &laptop, &c, &["--json", "--timeout", "120"]);
    let order = |v: &Value| -> Vec<String> {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node"].as_str().unwrap().to_string())
            .collect()
    };
    let two = watch.expect("master1 and master3 up", |v| {
        v["event"] == "join-order" && v["servers"].as_array().unwrap().len() == 2
    });
    assert_eq!(order(&two), ["master1", "master3"]);
    assert_eq!(two["servers"][0]["since"], t0);
    announce("master2", "k3s-running", t0 + 20);
    let three = watch.expect("all three servers up", |v| {
        v["event"] == "join-order" && v["servers"].as_array().unwrap().len() == 3
    });
    assert_eq!(order(&three), ["master1", "master2", "master3"]);
    let (code, err, seen) = watch.finish();
    assert_eq!(code, Some(0), "{err}\n{seen:#?}");
    let end = seen.last().unwrap();
    assert_eq!(end["result"], "up");
    assert_eq!(
        end["join_order"],
        serde_json::json!(["master1", "master2", "master3"])
    );
    assert!(
        err.contains("servers up, in join order: master1 ("),
        "{err}"
    );

    // Plain lines (no terminal): the order as a line of its own.
    let out = lan
        .cmd(&laptop, chocoimg().get_program())
        .args(["watch", "--timeout", "60"])
        .envs(c.envs())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .rfind(|l| l.starts_with("servers up, in join order: "))
        .unwrap_or_else(|| panic!("no join order in:\n{text}"));
    let (a, b, c3) = (
        line.find("master1 (").unwrap(),
        line.find("master2 (").unwrap(),
        line.find("master3 (").unwrap(),
    );
    assert!(a < b && b < c3, "{line}");
    assert!(line.ends_with("(3 of 3)"), "{line}");
}
