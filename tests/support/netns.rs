//! A private LAN made of network namespaces, for every test that sends multicast (THE
//! NETWORK RULE: mDNS never touches this machine's own interfaces). One namespace holds
//! a bridge; each host namespace gets `eth0` on it, an address 10.99.0.N/24, a default
//! route out of `eth0`, and optionally its own D-Bus and Avahi (in a private mount and
//! UTS namespace, so each has its own hostname, services folder and pid file).
//! Dropping the `Lan` kills every process it started and deletes every namespace.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Lan {
    id: String,
    bridge_ns: String,
    hosts: Vec<String>,
    children: Mutex<Vec<Child>>,
    pub dir: tempfile::TempDir,
}

/// One machine on the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// `DBUS_SYSTEM_BUS_ADDRESS` of the host's private bus, once started.
    pub bus: Option<String>,
}

/// A running avahi-daemon on a host.
#[derive(Debug, Clone)]
pub struct Avahi {
    /// Bind-mounted over /etc/avahi/services inside the daemon's mount namespace.
    pub services_dir: PathBuf,
    pub log: PathBuf,
}

use super::run_ok as run;

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

impl Lan {
    pub fn new() -> Lan {
        for tool in [
            "ip",
            "unshare",
            "dbus-daemon",
            "avahi-daemon",
            "avahi-browse",
        ] {
            super::require_tool(tool);
        }
        let id = format!(
            "chc{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let bridge_ns = format!("{id}-br");
        let lan = Lan {
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
            children: Mutex::new(Vec::new()),
            dir: tempfile::Builder::new().prefix(&id).tempdir().unwrap(),
            id,
        };
        ip(&["netns", "add", &bridge_ns]);
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);
        ip(&["-n", &bridge_ns, "link", "set", "lo", "up"]);
        lan
    }

    /// Adds a host named `name` (also its hostname inside Avahi's namespace).
    pub fn add_host(&mut self, name: &str) -> Host {
        let n = self.hosts.len() + 1;
        let ns = format!("{}-{n}", self.id);
        let ip_addr = Ipv4Addr::new(10, 99, 0, n as u8);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let peer = format!("p{n}");
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.bridge_ns,
        ]);
        ip(&["-n", &self.bridge_ns, "link", "set", &peer, "master", "br0"]);
        ip(&["-n", &self.bridge_ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Host {
            ns,
            name: name.to_string(),
            ip: ip_addr,
            dir,
            bus: None,
        }
    }

    /// Moves a host to a new address (a DHCP lease that changed).
    pub fn readdress(&self, host: &mut Host, n: u8) {
        let new = Ipv4Addr::new(10, 99, 0, n);
        // Old one first: deleting a primary address also deletes its secondaries.
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "del",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{new}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host.ns, "route", "replace", "default", "dev", "eth0"]);
        host.ip = new;
    }

    /// A command run inside the host's network namespace, with its bus if any.
    pub fn cmd(&self, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        if let Some(bus) = &host.bus {
            c.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
        }
        c
    }

    /// Starts `cmd` and kills it when the LAN is dropped.
    pub fn spawn(&self, mut cmd: Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Starts a private system bus for the host (Avahi and its tools need one).
    pub fn start_dbus(&self, host: &mut Host) {
        let socket = host.dir.join("bus");
        let conf = host.dir.join("dbus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut c = self.cmd(host, "dbus-daemon");
        c.arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.spawn(c);
        wait_for(Duration::from_secs(10), || socket.exists(), "dbus socket");
        host.bus = Some(format!("unix:path={}", socket.display()));
    }

    /// Starts avahi-daemon on the host with `conf` (default: IPv4 on eth0 only), after
    /// its bus. Returns once Avahi reports its startup complete.
    pub fn start_avahi(&self, host: &mut Host, conf: Option<&Path>) -> Avahi {
        if host.bus.is_none() {
            self.start_dbus(host);
        }
        let services_dir = host.dir.join("avahi-services");
        let run_dir = host.dir.join("avahi-run");
        std::fs::create_dir_all(&services_dir).unwrap();
        std::fs::create_dir_all(&run_dir).unwrap();
        let conf = match conf {
            Some(c) => c.to_path_buf(),
            None => {
                let c = host.dir.join("avahi-daemon.conf");
                std::fs::write(
                    &c,
                    "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\n\
                     [wide-area]\nenable-wide-area=no\n\
                     [publish]\npublish-workstation=no\npublish-aaaa-on-ipv4=no\n",
                )
                .unwrap();
                c
            }
        };
        let log = host.dir.join("avahi.log");
        let script = format!(
            "set -e; hostname {name}; mkdir -p /run/avahi-daemon; \
             mount --bind {svc} /etc/avahi/services; mount --bind {run} /run/avahi-daemon; \
             exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f {conf}",
            name = host.name,
            svc = services_dir.display(),
            run = run_dir.display(),
            conf = conf.display(),
        );
        let mut c = self.cmd(host, "unshare");
        c.args(["--mount", "--uts", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        self.spawn(c);
        wait_for(
            Duration::from_secs(15),
            || {
                std::fs::read_to_string(&log)
                    .map(|s| s.contains("Server startup complete"))
                    .unwrap_or(false)
            },
            &format!("avahi-daemon on {} (log {})", host.name, log.display()),
        );
        Avahi { services_dir, log }
    }
}

/// Polls `cond` every 20 ms until it holds; panics after `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap();
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.bridge_ns)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
