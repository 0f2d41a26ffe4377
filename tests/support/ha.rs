//! An HA cluster's nodes on a private LAN (`netns::Lan`), each with its own Avahi, its
//! rendered node files under a root folder, and a systemctl stand-in whose `k3s` and
//! `k3s-agent` units run the K3s HA stand-in (`k3s_ha_standin.py`: no real K3s can run
//! here) under a restart loop, as systemd's Restart=always does. The node's timers are
//! modelled by loops that run its scripts again every second. Every stand-in writes
//! its events to one journal the test reads.
use super::k3s::Cluster;
use super::netns::{wait_for, Host, Lan};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const LIB: &str = "usr/local/lib/chocoimg";
/// The stand-in promotes a learner after this many seconds.
const PROMOTE_AFTER: &str = "2";
/// The bootstrap's browse window in the tests, in seconds.
pub const WINDOW: &str = "3";

/// One node: its host, rendered root, systemctl state and Avahi services folder.
pub struct Node {
    pub host: Host,
    pub root: PathBuf,
    pub state: PathBuf,
    pub services: PathBuf,
    /// Process groups of the node's timer loops.
    loops: Vec<u32>,
}

/// The shared journal of the cluster's stand-ins: (node, event) per line.
pub fn events(journal: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let _time = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Waits (bounded) until `cond` holds on the journal's events; panics with the journal
/// and the nodes' logs.
pub fn wait_events(
    journal: &Path,
    nodes: &[&Node],
    what: &str,
    mut cond: impl FnMut(&[(String, String)]) -> bool,
) {
    let limit = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if cond(&events(journal)) {
            return;
        }
        if std::time::Instant::now() > limit {
            let logs: String = nodes.iter().map(|n| n.logs()).collect();
            panic!(
                "timed out waiting for {what}; journal:\n{}\n{logs}",
                std::fs::read_to_string(journal).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Node {
    /// A node named `name` on `lan`: Avahi, its rendered files (the seed carrying the
    /// recorded CA `ca`, if any) and its systemctl stand-in.
    pub fn add(c: &Cluster, lan: &mut Lan, name: &str, ca: Option<&str>, journal: &Path) -> Node {
        Node::add_as(c, lan, name, name, ca, journal)
    }

    /// `add`, for a host named `host` that gets the files of `c`'s node `node` (a rogue
    /// with a node's seed under its own name).
    pub fn add_as(
        c: &Cluster,
        lan: &mut Lan,
        host: &str,
        node: &str,
        ca: Option<&str>,
        journal: &Path,
    ) -> Node {
        // The stand-in makes its certificates with openssl.
        super::require_tool("openssl");
        let mut host = lan.add_host(host);
        let avahi = lan.start_avahi(&mut host, None);
        let root = host.dir.join("root");
        c.install_node_files_with_ca(node, &root, ca);
        let state = host.dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let node = Node {
            host,
            root,
            state,
            services: avahi.services_dir,
            loops: Vec::new(),
        };
        node.write_systemctl(journal);
        node
    }

    pub fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn systemctl(&self) -> PathBuf {
        self.state.join("systemctl")
    }

    /// The systemctl stand-in: `start`/`restart` run the K3s stand-in for the unit in a
    /// restart loop of its own process group (pid file `<unit>.pid`), `stop` kills it.
    fn write_systemctl(&self, journal: &Path) {
        let k3s = |role: &str| {
            format!(
                "/usr/bin/python3 {script} --role {role} --name {name} --address {ip} --config {config} --config-dir {dir} --data-dir {data} --journal {journal} --promote-after {PROMOTE_AFTER}",
                script = super::repo().join("tests/support/k3s_ha_standin.py").display(),
                name = self.host.name,
                ip = self.host.ip,
                config = self.under("/etc/rancher/k3s/config.yaml").display(),
                dir = self.under("/etc/rancher/k3s/config.yaml.d").display(),
                data = self.under("/var/lib/rancher/k3s").display(),
                journal = journal.display(),
            )
        };
        let d = self.state.display();
        let script = format!(
            r#"#!/bin/sh
echo "$*" >>{d}/systemctl.log
for unit; do :; done
unit=${{unit%.service}}
case $unit in
k3s) cmd="{server}" ;;
k3s-agent) cmd="{agent}" ;;
*) exit 0 ;;
esac
running() {{ [ -f {d}/$unit.pid ] && kill -0 "$(cat {d}/$unit.pid)" 2>/dev/null; }}
stop() {{
    if running; then kill -KILL -- "-$(cat {d}/$unit.pid)"; fi
    rm -f {d}/$unit.pid
}}
launch() {{
    setsid sh -c "n=0; while :; do $cmd; n=\$((n + 1)); echo \$n >{d}/$unit.nrestarts; sleep 1; done" </dev/null >>{d}/$unit.log 2>&1 &
    echo $! >{d}/$unit.pid
}}
case $1 in
is-active) running ;;
start) running || launch ;;
restart) stop; launch ;;
stop) stop ;;
show) case $* in
    *ActiveState*) if running; then echo active; else echo inactive; fi ;;
    *) cat {d}/$unit.nrestarts 2>/dev/null || echo 0 ;;
    esac ;;
esac
"#,
            server = k3s("server"),
            agent = k3s("agent"),
        );
        let path = self.systemctl();
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The environment every node script gets: its paths under `root`.
    pub fn script(&self, lan: &Lan, name: &str) -> Command {
        let mut c = lan.cmd(&self.host, "sh");
        c.arg(self.root.join(LIB).join(name))
            .env(
                "CHOCOIMG_AGENT_TOKEN_FILE",
                self.under("/etc/chocoimg/agent-token"),
            )
            .env(
                "CHOCOIMG_CLUSTER_CA_FILE",
                self.under("/etc/chocoimg/cluster-ca"),
            )
            .env(
                "CHOCOIMG_K3S_CONFIG",
                self.under("/etc/rancher/k3s/config.yaml"),
            )
            .env(
                "CHOCOIMG_K3S_CONFIG_DIR",
                self.under("/etc/rancher/k3s/config.yaml.d"),
            )
            .env(
                "CHOCOIMG_ETCD_WAL_DIR",
                self.under("/var/lib/rancher/k3s/server/db/etcd/member/wal"),
            )
            .env(
                "CHOCOIMG_K3S_TLS_DIR",
                self.under("/var/lib/rancher/k3s/server/tls"),
            )
            .env("CHOCOIMG_AVAHI_SERVICES", &self.services)
            .env("CHOCOIMG_SYSTEMCTL", self.systemctl())
            .env("CHOCOIMG_BROWSE_WINDOW", WINDOW)
            .env("CHOCOIMG_PAUSE", "1")
            .env("CHOCOIMG_TRIES", "3")
            .env("CHOCOIMG_WAIT_SECONDS", "1");
        c
    }

    /// Starts the node's timers: `scripts` run one after the other, then again a second
    /// later, until the node is stopped; their output goes to `timers.log`.
    pub fn start(&mut self, lan: &Lan, scripts: &[&str]) {
        for name in scripts {
            let c = self.script(lan, name);
            // `sh SCRIPT` becomes a loop over it: `sh -c 'while ...' SCRIPT`.
            let args: Vec<_> = c.get_args().map(|a| a.to_os_string()).collect();
            let script = args.last().unwrap().clone();
            let mut looped = Command::new("ip");
            looped
                .args(&args[..args.len() - 2])
                .args(["sh", "-c", r#"while :; do sh "$0"; sleep 1; done"#])
                .arg(script)
                .envs(
                    c.get_envs()
                        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string()))),
                )
                .stdin(Stdio::null())
                .stdout(self.log_file())
                .stderr(self.log_file())
                .process_group(0);
            let pid = lan.spawn(looped);
            self.loops.push(pid);
        }
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.host.dir.join("timers.log"))
            .unwrap()
    }

    /// The node's timers' output and its K3s stand-in's.
    pub fn logs(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {} timers:\n{}--- {} k3s:\n{}{}",
            self.host.name,
            read(self.host.dir.join("timers.log")),
            self.host.name,
            read(self.state.join("k3s.log")),
            read(self.state.join("k3s-agent.log")),
        )
    }

    /// Stops the timers and K3s (the machine is off).
    pub fn stop(&mut self) {
        for pid in self.loops.drain(..) {
            kill_group(pid);
        }
        for unit in ["k3s", "k3s-agent"] {
            if let Ok(pid) = std::fs::read_to_string(self.state.join(format!("{unit}.pid"))) {
                kill_group(pid.trim().parse().unwrap());
                let _ = std::fs::remove_file(self.state.join(format!("{unit}.pid")));
            }
        }
    }

    /// The node re-flashed: stopped, every file and state gone, the seed's files again.
    pub fn reflash(&mut self, c: &Cluster, ca: Option<&str>, journal: &Path) {
        self.stop();
        std::fs::remove_dir_all(&self.root).unwrap();
        for entry in std::fs::read_dir(&self.services).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        std::fs::remove_dir_all(&self.state).unwrap();
        std::fs::create_dir_all(&self.state).unwrap();
        c.install_node_files_with_ca(&self.host.name, &self.root, ca);
        self.write_systemctl(journal);
    }

    /// The CA this node's K3s serves, if it has one.
    pub fn ca(&self) -> Option<String> {
        std::fs::read(self.under("/var/lib/rancher/k3s/server/tls/server-ca.crt"))
            .ok()
            .map(|b| chocoimg::proof::ca_hash(&b))
    }

    /// Whether the node's Avahi publishes its K3s announcement.
    pub fn announces(&self) -> bool {
        self.services.join("chocoimg-k3s.service").exists()
    }
}

fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `node` announces itself (a voting member).
pub fn wait_announced(node: &Node) {
    wait_for(
        Duration::from_secs(120),
        || node.announces(),
        &format!("{} to announce itself:\n{}", node.host.name, node.logs()),
    );
}
