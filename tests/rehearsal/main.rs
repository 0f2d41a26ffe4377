//! The rehearsal: master1 and nodo1 boot for real, twice, in QEMU guests on a private LAN.
//!
//! What a mini-PC does after Ubuntu's installer, run on a Debian bookworm base image
//! (`base-image.sh`, cached outside the clone): the seed's late-commands (as the installer
//! runs them), cloud-init's modules on the seed as `chocoimg render` writes it, netplan's
//! DHCP from busybox udhcpd (standing in for the Eero), systemd's unit ordering, Avahi
//! between two machines, and the join. K3s is a stand-in (`guest/k3s`, see its comment:
//! no real K3s can run here). Everything asserted comes from the guests' own reports on
//! their second serial port (`guest/rehearsal-report`).
//!
//! THE NETWORK RULE: the guests' only network is a bridge inside a network namespace this
//! test makes (10.99.4.0/24, no uplink, no user-mode networking); it is deleted at the end.
//!
//! Slow (minutes; TCG only, no KVM here), so a target of its own that `cargo test` skips:
//! `cargo test --locked --test rehearsal -- --nocapture` (CI runs it last, `.ci/run`).
//! `CHOCOIMG_REHEARSAL_KEEP=1` keeps the run's folder (serial logs, seeds, disks) and prints
//! where. `CHOCOIMG_REHEARSAL_MUTATION=join-broken|announce-unordered|stale-announce` breaks the seed on
//! purpose (the test of the test: the rehearsal must then fail).
#[path = "../support/mod.rs"]
mod support;

use chocoimg::bringup::Stage;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::ok;
use support::workspace::Workspace;

const SERVER: &str = "master1";
const AGENT: &str = "nodo1";
/// The LAN inside the namespace: the bridge's own address and udhcpd's pool.
const BRIDGE_ADDRESS: &str = "10.99.4.1";
const POOL: (&str, &str) = ("10.99.4.100", "10.99.4.150");
/// Upper bound for one boot of both guests to settle (they take 3-6 min here).
const BOOT_LIMIT: Duration = Duration::from_secs(20 * 60);

fn guest_dir() -> PathBuf {
    support::repo().join("tests/rehearsal/guest")
}

/// The cached base image's folder (rootfs.ext4, vmlinuz, initrd.img), built if missing.
fn base_image() -> PathBuf {
    let script = support::repo().join("tests/rehearsal/base-image.sh");
    let out = ok(Command::new("bash").arg(&script).stderr(Stdio::inherit()));
    PathBuf::from(out.trim())
}

/// The seed's pieces, taken apart as the installer takes them.
struct NodeSeed {
    /// The installed system's cloud-config (`autoinstall.user-data`).
    installed: Yaml,
    /// Netplan v2 (`autoinstall.network`).
    network: Yaml,
    late_commands: Vec<String>,
    meta_data: String,
}

fn load_seed(dir: &Path) -> NodeSeed {
    let text = std::fs::read_to_string(dir.join("user-data")).unwrap();
    let doc: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    let auto = &doc["autoinstall"];
    let late_commands = auto["late-commands"]
        .as_sequence()
        .expect("autoinstall.late-commands is a list")
        .iter()
        .map(|c| c.as_str().expect("a late-command is a string").to_string())
        .collect();
    NodeSeed {
        installed: auto["user-data"].clone(),
        network: auto["network"].clone(),
        late_commands,
        meta_data: std::fs::read_to_string(dir.join("meta-data")).unwrap(),
    }
}

/// Replaces `from` by `to` in the content of the written file `path`; panics when the
/// seed no longer has it (the mutation must be updated, not silently skipped).
fn mutate_file(seed: &mut NodeSeed, path: &str, from: &str, to: &str) {
    let files = seed.installed["write_files"].as_sequence_mut().unwrap();
    let file = files
        .iter_mut()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("mutation: the seed writes no {path}"));
    let content = file["content"].as_str().unwrap().to_string();
    assert!(
        content.contains(from),
        "mutation: {path} no longer contains {from:?}; update the mutation"
    );
    file["content"] = Yaml::from(content.replacen(from, to, 1));
    eprintln!("rehearsal: MUTATION applied to {path}: {from:?} -> {to:?}");
}

fn apply_mutation(seeds: &mut BTreeMap<&str, NodeSeed>) {
    let m = std::env::var("CHOCOIMG_REHEARSAL_MUTATION").unwrap_or_default();
    if m.is_empty() {
        return;
    }
    match m.as_str() {
        // A typo'd verdict: the join then ignores every announcement, verified or not.
        "join-broken" => mutate_file(
            seeds.get_mut(AGENT).unwrap(),
            "/usr/local/lib/chocoimg/join.sh",
            "\"$verdict\" != verified",
            "\"$verdict\" != verifed",
        ),
        // The announce unit no longer waits for K3s to be started (ready).
        "announce-unordered" => mutate_file(
            seeds.get_mut(SERVER).unwrap(),
            "/etc/systemd/system/chocoimg-announce.service",
            " k3s.service",
            "",
        ),
        // The last boot's announcements are no longer removed at boot.
        "stale-announce" => {
            let path = chocoimg::seed::node::BOOT_TMPFILES_PATH;
            let files = seeds.get_mut(SERVER).unwrap().installed["write_files"]
                .as_sequence_mut()
                .unwrap();
            let before = files.len();
            files.retain(|f| f["path"].as_str() != Some(path));
            assert_eq!(files.len() + 1, before, "mutation: the seed writes no {path}");
            eprintln!("rehearsal: MUTATION: {path} left out");
        }
        other => panic!(
            "CHOCOIMG_REHEARSAL_MUTATION={other}: not join-broken, announce-unordered or stale-announce"
        ),
    }
}

/// The K3s payload as the stick carries it (`k3s/`), with the stand-ins.
fn write_payload(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(guest_dir().join("k3s"), dir.join("k3s")).unwrap();
    std::fs::copy(guest_dir().join("k3s-install.sh"), dir.join("install.sh")).unwrap();
    let sums = ok(Command::new("sha256sum")
        .args(["k3s", "install.sh"])
        .current_dir(dir));
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

/// A small FAT volume labelled CIDATA: NoCloud's user-data (the installed system's
/// cloud-config), network-config, meta-data, the K3s payload, and the late-commands.
fn make_cidata(seed: &NodeSeed, payload: &Path, dir: &Path) -> PathBuf {
    let stage = dir.join("cidata");
    std::fs::create_dir_all(stage.join("rehearsal/late-commands")).unwrap();
    let installed = serde_yaml_ng::to_string(&seed.installed).unwrap();
    std::fs::write(
        stage.join("user-data"),
        format!("#cloud-config\n{installed}"),
    )
    .unwrap();
    std::fs::write(
        stage.join("network-config"),
        serde_yaml_ng::to_string(&seed.network).unwrap(),
    )
    .unwrap();
    std::fs::write(stage.join("meta-data"), &seed.meta_data).unwrap();
    for (i, c) in seed.late_commands.iter().enumerate() {
        std::fs::write(
            stage.join(format!("rehearsal/late-commands/{:02}", i + 1)),
            c,
        )
        .unwrap();
    }
    let img = dir.join("cidata.img");
    ok(Command::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(&img)
        .arg("32768"));
    let mut mcopy = Command::new("mcopy");
    mcopy.arg("-s").arg("-i").arg(&img);
    for name in ["user-data", "network-config", "meta-data", "rehearsal"] {
        mcopy.arg(stage.join(name));
    }
    mcopy.arg(payload).arg("::");
    ok(&mut mcopy);
    img
}

/// The base image plus the rehearsal's guest side (installer stand-in, reporter), written
/// into a copy with debugfs (no mount, no loop device).
fn make_rootfs(base: &Path, dir: &Path) -> PathBuf {
    let img = dir.join("rootfs.ext4");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(base.join("rootfs.ext4"))
        .arg(&img));
    let g = guest_dir();
    let units = "/etc/systemd/system";
    let cmds = format!(
        "write {g}/rehearsal-installer /usr/local/sbin/rehearsal-installer\n\
         write {g}/curtin /usr/local/sbin/curtin\n\
         write {g}/rehearsal-installer.service {units}/rehearsal-installer.service\n\
         symlink {units}/sysinit.target.wants/rehearsal-installer.service {units}/rehearsal-installer.service\n\
         write {g}/rehearsal-report /usr/local/sbin/rehearsal-report\n\
         write {g}/rehearsal-report.service {units}/rehearsal-report.service\n\
         symlink {units}/multi-user.target.wants/rehearsal-report.service {units}/rehearsal-report.service\n\
         symlink /target /\n",
        g = g.display()
    );
    let file = dir.join("debugfs.cmds");
    std::fs::write(&file, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&file)
        .arg(&img)
        .output()
        .unwrap();
    let errors: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .map(String::from)
        .collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "debugfs: {errors:?}"
    );
    img
}

/// The private LAN: a namespace holding a bridge, one tap per guest, and udhcpd.
struct Lan {
    ns: String,
    children: Vec<Child>,
}

impl Lan {
    fn new(dir: &Path, taps: &[&str]) -> Lan {
        let ns = format!("chr{}", std::process::id());
        let ip = |args: &[&str]| {
            ok(Command::new("ip").args(["-n", &ns]).args(args));
        };
        ok(Command::new("ip").args(["netns", "add", &ns]));
        let mut lan = Lan {
            ns: ns.clone(),
            children: Vec::new(),
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", &format!("{BRIDGE_ADDRESS}/24"), "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        for tap in taps {
            ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
            ip(&["link", "set", tap, "master", "br0"]);
            ip(&["link", "set", tap, "up"]);
        }
        // busybox udhcpd plays the Eero's DHCP: a pool, a router, a day's lease.
        let conf = dir.join("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "start {}\nend {}\ninterface br0\nlease_file {}\npidfile {}\n\
                 max_leases 51\noption subnet 255.255.255.0\noption router {BRIDGE_ADDRESS}\n\
                 option lease 86400\n",
                POOL.0,
                POOL.1,
                dir.join("udhcpd.leases").display(),
                dir.join("udhcpd.pid").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("udhcpd.leases"), "").unwrap();
        let child = lan
            .cmd("busybox")
            .arg("udhcpd")
            .arg("-f")
            .arg(&conf)
            .stdout(std::fs::File::create(dir.join("udhcpd.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting udhcpd");
        lan.children.push(child);
        lan
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// One node's machine: its disks and, while it runs, its QEMU.
struct Guest {
    name: &'static str,
    dir: PathBuf,
    tap: String,
    mac: String,
    overlay: PathBuf,
    cidata: PathBuf,
    qemu: Option<Child>,
}

impl Guest {
    fn report_path(&self, boot: u32) -> PathBuf {
        self.dir.join(format!("report-boot{boot}.log"))
    }

    fn start(&mut self, lan: &Lan, base: &Path, boot: u32) {
        let qmp = self.dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let mut c = lan.cmd("nice");
        c.args(["-n", "10", "qemu-system-x86_64", "-name", self.name])
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
            .args(["-nodefaults", "-display", "none", "-vga", "none"])
            .arg("-kernel")
            .arg(base.join("vmlinuz"))
            .arg("-initrd")
            .arg(base.join("initrd.img"))
            // Serial output costs much under TCG: a quiet console. On a loaded host the
            // kernel's early timer test fails ("IO-APIC + timer doesn't work":
            // no_timer_check) and udev takes minutes to name the CIDATA disk (systemd's
            // 90 s device timeout skipped the late-commands): waits made long. A panic
            // reboots and -no-reboot ends QEMU, which the harness sees.
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=false \
                 no_timer_check panic=-1 systemd.default_device_timeout_sec=900",
            ])
            .arg("-no-reboot")
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2",
                self.overlay.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw",
                self.cidata.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "tap,id=lan,ifname={},script=no,downscript=no",
                self.tap
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=lan,mac={}", self.mac))
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!(
                "file:{}",
                self.dir.join(format!("console-boot{boot}.log")).display()
            ))
            .arg("-serial")
            .arg(format!("file:{}", self.report_path(boot).display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("qemu-boot{boot}.log"))).unwrap());
        self.qemu = Some(c.spawn().expect("starting qemu-system-x86_64"));
    }

    /// ACPI power button (systemd shuts down cleanly), then waits for QEMU to exit; kills
    /// it after 180 s and says so.
    fn power_down(&mut self) -> Result<(), String> {
        let Some(mut child) = self.qemu.take() else {
            return Ok(());
        };
        let qmp = self.dir.join("qmp.sock");
        let sent = (|| -> std::io::Result<()> {
            let mut s = std::os::unix::net::UnixStream::connect(&qmp)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(
                b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"system_powerdown\"}\n",
            )?;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf)?;
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        })();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(180) {
            if child.try_wait().unwrap().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "{} did not power off within 180 s of the power button ({sent:?})",
            self.name
        ))
    }

    /// The end of this boot's console (kernel panics, cloud-init's errors).
    fn console_tail(&self, boot: u32) -> String {
        let text = std::fs::read(self.dir.join(format!("console-boot{boot}.log")))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(25);
        format!(
            "--- {} console (boot {boot}, last lines) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One report a guest wrote on its second serial port: sections by name.
#[derive(Debug, Default, Clone)]
struct Report {
    seq: u32,
    sections: BTreeMap<String, Vec<String>>,
}

impl Report {
    fn lines(&self, section: &str) -> &[String] {
        self.sections.get(section).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `key value...` lines of the state section.
    fn state(&self, key: &str) -> Option<String> {
        self.lines("state").iter().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
        })
    }

    /// The LAN address (from DHCP), without its prefix length.
    fn address(&self) -> Option<String> {
        let v = self.state("address")?;
        let cidr = v.split_whitespace().nth(1)?;
        Some(cidr.split('/').next()?.to_string())
    }

    /// `systemctl show` properties of a unit.
    fn unit(&self, unit: &str) -> BTreeMap<String, String> {
        let line = self
            .lines("units")
            .iter()
            .find(|l| l.contains(&format!("Id={unit} ")));
        line.map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
    }

    fn active(&self, unit: &str) -> bool {
        self.unit(unit).get("ActiveState").map(String::as_str) == Some("active")
    }

    fn journal(&self) -> Vec<Entry> {
        self.lines("journal")
            .iter()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .map(|j| Entry::from_json(&j))
            .collect()
    }

    /// The stage this node recorded last (stage.sh's state file: stage, since, reason).
    fn stage(&self) -> Option<Stage> {
        self.lines("stage")
            .first()
            .and_then(|s| Stage::parse(s.trim()))
    }

    /// The stages stage.sh logged, in order ("chocoimg-stage: stage NAME[: reason]").
    fn stage_log(&self) -> Vec<String> {
        self.journal()
            .iter()
            .filter_map(|e| e.message.strip_prefix("chocoimg-stage: stage "))
            .map(str::to_string)
            .collect()
    }

    /// `key value` lines of the K3s stand-in's section (`server-ca`, `server=`, `ca=`).
    fn standin(&self, key: &str) -> Option<String> {
        self.lines("k3s-standin").iter().find_map(|l| {
            l.strip_prefix(key)
                .map(|r| r.trim_start_matches([' ', '=']).to_string())
        })
    }
}

/// The last complete report in a serial log (a report still being written is skipped).
fn last_report(path: &Path) -> Option<Report> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut done = None;
    let mut current: Option<(Report, String)> = None;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("@@report ") {
            let seq = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            current = Some((
                Report {
                    seq,
                    ..Default::default()
                },
                String::new(),
            ));
        } else if line.starts_with("@@end ") {
            if let Some((r, _)) = current.take() {
                done = Some(r);
            }
        } else if let Some(name) = line.strip_prefix("@@section ") {
            if let Some((_, section)) = current.as_mut() {
                *section = name.to_string();
            }
        } else if let Some((r, section)) = current.as_mut() {
            r.sections
                .entry(section.clone())
                .or_default()
                .push(line.to_string());
        }
    }
    done
}

/// One journal entry: when (monotonic µs since boot), which unit, what.
#[derive(Debug, Clone)]
struct Entry {
    usec: u64,
    /// The unit a systemd message is about (UNIT=), else the unit that logged it.
    unit: String,
    from_manager: bool,
    job_type: String,
    job_result: String,
    message: String,
}

impl Entry {
    fn from_json(j: &Json) -> Entry {
        let s = |k: &str| j.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        let message = match j.get("MESSAGE") {
            Some(Json::String(m)) => m.clone(),
            Some(Json::Array(bytes)) => String::from_utf8_lossy(
                &bytes
                    .iter()
                    .filter_map(|b| b.as_u64().map(|b| b as u8))
                    .collect::<Vec<_>>(),
            )
            .into_owned(),
            _ => String::new(),
        };
        let manager_unit = s("UNIT");
        Entry {
            usec: s("__MONOTONIC_TIMESTAMP").parse().unwrap_or(0),
            from_manager: !manager_unit.is_empty(),
            unit: if manager_unit.is_empty() {
                s("_SYSTEMD_UNIT")
            } else {
                manager_unit
            },
            job_type: s("JOB_TYPE"),
            job_result: s("JOB_RESULT"),
            message,
        }
    }
}

/// When systemd finished the first start job of `unit` with `result` (µs since boot).
fn job_finished(journal: &[Entry], unit: &str, result: Option<&str>) -> Option<u64> {
    journal
        .iter()
        .find(|e| {
            e.from_manager
                && e.unit == unit
                && e.job_type == "start"
                && !e.job_result.is_empty()
                && result.is_none_or(|r| e.job_result == r)
        })
        .map(|e| e.usec)
}

/// When systemd began the first start job of `unit` ("Starting ...").
fn job_began(journal: &[Entry], unit: &str) -> Option<u64> {
    journal
        .iter()
        .find(|e| {
            e.from_manager && e.unit == unit && e.job_type == "start" && e.job_result.is_empty()
        })
        .map(|e| e.usec)
}

fn count_failed(journal: &[Entry], unit: &str) -> usize {
    journal
        .iter()
        .filter(|e| e.from_manager && e.unit == unit && e.job_result == "failed")
        .count()
}

/// Both guests' latest reports, and whether this boot reached what the rehearsal waits
/// for (announced, joined), or can no longer get there.
enum Progress {
    Waiting,
    Ready,
    Failed(String),
}

fn progress(n: u32, server: &Option<Report>, agent: &Option<Report>) -> Progress {
    for (name, r) in [(SERVER, server), (AGENT, agent)] {
        let Some(r) = r else { continue };
        // The installer runs once, on the first boot (its unit stays active after).
        if n == 1 && !r.active("rehearsal-installer.service") {
            return Progress::Failed(format!("{name}: the late-commands did not run or failed"));
        }
        if r.stage() == Some(Stage::Failed) {
            let why = r.lines("stage").get(2).cloned().unwrap_or_default();
            return Progress::Failed(format!("{name} reports stage failed: {why}"));
        }
    }
    if let Some(a) = agent {
        // The boot run and the timer's run both failed: the join is broken, not slow.
        if count_failed(&a.journal(), "chocoimg-join.service") >= 2 {
            return Progress::Failed("chocoimg-join failed twice on nodo1".into());
        }
    }
    let server_ready = server.as_ref().is_some_and(|s| {
        s.stage() == Some(Stage::K3sRunning)
            && s.active("k3s.service")
            && !s.lines("service-file").is_empty()
            && s.unit("chocoimg-announce.service")
                .get("Result")
                .map(String::as_str)
                == Some("success")
    });
    let agent_ready = agent.as_ref().is_some_and(|a| {
        a.stage() == Some(Stage::Joined)
            && a.active("k3s-agent.service")
            && a.standin("server=").is_some()
    });
    if server_ready && agent_ready {
        Progress::Ready
    } else {
        Progress::Waiting
    }
}

fn show(name: &str, report: &Option<Report>) -> String {
    match report {
        None => format!("{name}: no complete report"),
        Some(r) => {
            let mut s = format!("--- {name} (report {}) ---\n", r.seq);
            for (section, lines) in &r.sections {
                if section == "journal" {
                    s.push_str("@@ journal:\n");
                    for e in r.journal() {
                        s.push_str(&format!(
                            "{:>10.3} {} {}{}\n",
                            e.usec as f64 / 1e6,
                            e.unit,
                            if e.job_result.is_empty() {
                                String::new()
                            } else {
                                format!("[{}] ", e.job_result)
                            },
                            e.message
                        ));
                    }
                } else {
                    s.push_str(&format!("@@ {section}:\n{}\n", lines.join("\n")));
                }
            }
            s
        }
    }
}

/// Boots both guests, waits until master1 announces and nodo1 joined (or it cannot
/// happen), powers them off, and returns their last reports.
fn boot(guests: &mut [Guest], lan: &Lan, base: &Path, n: u32) -> (Report, Report) {
    let start = Instant::now();
    for g in guests.iter_mut() {
        g.start(lan, base, n);
    }
    eprintln!("rehearsal: boot {n}: both guests started");
    let outcome = 'wait: loop {
        std::thread::sleep(Duration::from_secs(5));
        let server = last_report(&guests[0].report_path(n));
        let agent = last_report(&guests[1].report_path(n));
        for g in guests.iter_mut() {
            if let Some(status) = g.qemu.as_mut().unwrap().try_wait().unwrap() {
                let why = format!("{}'s QEMU exited ({status})", g.name);
                break 'wait Err((why, server, agent));
            }
        }
        match progress(n, &server, &agent) {
            Progress::Ready => break Ok((server.unwrap(), agent.unwrap())),
            Progress::Failed(why) => break Err((why, server, agent)),
            Progress::Waiting if start.elapsed() > BOOT_LIMIT => {
                break Err((
                    format!("not announced and joined within {} s", BOOT_LIMIT.as_secs()),
                    server,
                    agent,
                ))
            }
            Progress::Waiting => {}
        }
    };
    eprintln!(
        "rehearsal: boot {n}: {} after {} s; powering off",
        if outcome.is_ok() { "settled" } else { "FAILED" },
        start.elapsed().as_secs()
    );
    let off: Vec<String> = guests
        .iter_mut()
        .filter_map(|g| g.power_down().err())
        .collect();
    match outcome {
        Ok(reports) if off.is_empty() => reports,
        Ok((server, agent)) => {
            let why = format!("boot {n}: {}", off.join("; "));
            break_with(guests, n, &Some(server), &Some(agent), &why)
        }
        Err((why, server, agent)) => {
            break_with(guests, n, &server, &agent, &format!("boot {n}: {why}"))
        }
    }
}

fn break_with(
    guests: &[Guest],
    n: u32,
    server: &Option<Report>,
    agent: &Option<Report>,
    why: &str,
) -> ! {
    panic!(
        "rehearsal: {why}\n{}\n{}\n{}\n{}",
        show(SERVER, server),
        show(AGENT, agent),
        guests[0].console_tail(n),
        guests[1].console_tail(n)
    )
}

/// avahi-browse -p's resolved IPv4 line for `name` in `section` (`browse`: _k3s._tcp,
/// `browse-stages`: _chocoimg-node._tcp), seen from `report`: (address, TXT map).
fn browsed(
    report: &Report,
    section: &str,
    name: &str,
) -> Option<(String, BTreeMap<String, String>)> {
    report.lines(section).iter().find_map(|l| {
        let f: Vec<&str> = l.splitn(10, ';').collect();
        if f.len() < 10 || f[0] != "=" || f[2] != "IPv4" || f[3] != name {
            return None;
        }
        let txt = f[9]
            .split('"')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some((f[7].to_string(), txt))
    })
}

struct Cluster {
    name: String,
    k3s_version: String,
    agent_token: String,
}

/// What the first boot must have done on both machines.
fn check_first_boot(cluster: &Cluster, server: &Report, agent: &Report) {
    let all = format!(
        "{}\n{}",
        show(SERVER, &Some(server.clone())),
        show(AGENT, &Some(agent.clone()))
    );
    for (name, r) in [(SERVER, server), (AGENT, agent)] {
        assert_eq!(
            r.unit("rehearsal-installer.service")
                .get("Result")
                .map(String::as_str),
            Some("success"),
            "{name}: the late-commands\n{all}"
        );
        assert_eq!(
            r.state("hostname").as_deref(),
            Some(name),
            "{name}: cloud-init's hostname\n{all}"
        );
        assert_eq!(
            r.state("cloud-init").as_deref(),
            Some("done"),
            "{name}: cloud-init status\n{all}"
        );
        let addr = r.address().unwrap_or_default();
        assert!(
            addr.starts_with("10.99.4.1") && addr != BRIDGE_ADDRESS,
            "{name}: no address from udhcpd's pool ({addr:?})\n{all}"
        );
    }
    let server_addr = server.address().unwrap();
    let ca = server
        .standin("server-ca")
        .unwrap_or_else(|| panic!("master1 has no K3s CA\n{all}"));

    // master1's TXT record, as nodo1 received it over mDNS.
    let (browsed_addr, txt) = browsed(agent, "browse", SERVER)
        .unwrap_or_else(|| panic!("nodo1 does not see master1's _k3s._tcp\n{all}"));
    assert_eq!(browsed_addr, server_addr, "announced address\n{all}");
    let want = |k: &str| txt.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(want("cluster"), cluster.name, "TXT cluster\n{all}");
    assert_eq!(want("role"), "server", "TXT role\n{all}");
    assert_eq!(want("k3s"), cluster.k3s_version, "TXT k3s\n{all}");
    assert_eq!(
        want("ca"),
        ca,
        "TXT ca is the SHA-256 of what /cacerts serves\n{all}"
    );
    assert_eq!(
        want("proof"),
        chocoimg::proof::proof(&cluster.agent_token, &cluster.name, &ca),
        "TXT proof (HMAC keyed with the agent token)\n{all}"
    );

    // nodo1's agent points at master1's DHCP address and pins master1's CA.
    let dropin = agent.lines("join-dropin").join("\n");
    assert!(
        dropin.contains(&format!("server: \"https://{server_addr}:6443\"")),
        "nodo1's join drop-in does not point at master1's DHCP address {server_addr}:\n{dropin}\n{all}"
    );
    assert!(
        dropin.contains(&format!("token: \"K10{ca}::")),
        "nodo1's token does not pin master1's CA {ca}:\n{dropin}\n{all}"
    );
    assert_eq!(
        agent.standin("server=").as_deref(),
        Some(format!("https://{server_addr}:6443").as_str()),
        "the agent joined another server\n{all}"
    );
    assert_eq!(
        agent.standin("ca=").as_deref(),
        Some(ca.as_str()),
        "CA hash the agent verified\n{all}"
    );
    assert!(
        agent.active("k3s-agent.service"),
        "k3s-agent not active\n{all}"
    );
    check_stages(cluster, server, agent, &all);
}

/// The stages `chocoimg watch` shows (issue 10): each node went through its first boot's
/// stages to up, and nodo1 sees both nodes' stage announcements over mDNS, proofs valid.
fn check_stages(cluster: &Cluster, server: &Report, agent: &Report, all: &str) {
    for (name, r, up) in [
        (SERVER, server, Stage::K3sRunning),
        (AGENT, agent, Stage::Joined),
    ] {
        let log = r.stage_log();
        assert!(
            log.starts_with(&[
                Stage::FirstBoot.as_str().into(),
                Stage::InstallingK3s.as_str().into()
            ]) && log.last().map(String::as_str) == Some(up.as_str())
                && !log.iter().any(|s| s.starts_with(Stage::Failed.as_str())),
            "{name}: stages {log:?}, not first-boot, installing-k3s, ..., {}\n{all}",
            up.as_str()
        );
    }
    for (name, wanted) in [
        (SERVER, &[Stage::K3sRunning][..]),
        (AGENT, &[Stage::Joining, Stage::Joined][..]),
    ] {
        let (_, txt) = browsed(agent, "browse-stages", name).unwrap_or_else(|| {
            panic!("nodo1 does not see {name}'s _chocoimg-node._tcp announcement\n{all}")
        });
        let get = |k: &str| txt.get(k).map(String::as_str).unwrap_or("");
        assert!(
            wanted.iter().any(|st| st.as_str() == get("stage")),
            "{name} announces stage {:?}, not one of {wanted:?}\n{all}",
            get("stage")
        );
        let claim = chocoimg::proof::StageClaim {
            cluster: &cluster.name,
            node: name,
            stage: get("stage"),
            since: get("since").parse().unwrap_or(0),
            reason: get("reason"),
        };
        assert!(
            get("node") == name && claim.verify(&cluster.agent_token, get("proof")),
            "{name}'s stage announcement does not check: {txt:?}\n{all}"
        );
    }
}

/// What the second boot must show: the units' real ordering, nothing stale announced.
fn check_second_boot(server: &Report, agent: &Report) {
    let all = format!(
        "{}\n{}",
        show(SERVER, &Some(server.clone())),
        show(AGENT, &Some(agent.clone()))
    );
    let sj = server.journal();
    let k3s_ready = job_finished(&sj, "k3s.service", Some("done"))
        .unwrap_or_else(|| panic!("master1: k3s.service never became ready on boot 2\n{all}"));
    let announce_began = job_began(&sj, "chocoimg-announce.service")
        .unwrap_or_else(|| panic!("master1: chocoimg-announce never ran on boot 2\n{all}"));
    assert!(
        announce_began > k3s_ready,
        "master1: chocoimg-announce started ({announce_began} µs) before K3s was ready ({k3s_ready} µs)\n{all}"
    );
    // Avahi publishes a service file as it loads it: nothing of ours may be published
    // before K3s answers again (a file left from the last boot would be).
    let published: Vec<&Entry> = sj
        .iter()
        .filter(|e| {
            e.unit == "avahi-daemon.service"
                && e.message.contains("chocoimg-k3s.service")
                && e.message.contains("successfully established")
        })
        .collect();
    assert!(
        !published.is_empty(),
        "master1: Avahi never published the announcement on boot 2\n{all}"
    );
    for e in &published {
        assert!(
            e.usec > k3s_ready,
            "master1: Avahi published {:?} at {} µs, before K3s was ready ({k3s_ready} µs): the previous boot's announcement\n{all}",
            e.message,
            e.usec
        );
    }

    // Nor the last boot's stages: each published only once stage.sh has run in this boot.
    for (name, journal) in [(SERVER, &sj), (AGENT, &agent.journal())] {
        let stage_ran = job_began(journal, "chocoimg-stage.service")
            .unwrap_or_else(|| panic!("{name}: chocoimg-stage never ran on boot 2\n{all}"));
        for e in journal.iter().filter(|e| {
            e.unit == "avahi-daemon.service"
                && e.message.contains("chocoimg-node.service")
                && e.message.contains("successfully established")
        }) {
            assert!(
                e.usec > stage_ran,
                "{name}: Avahi published the stage at {} µs, before stage.sh ran in this boot ({stage_ran} µs): the previous boot's stage\n{all}",
                e.usec
            );
        }
    }

    let aj = agent.journal();
    let join_done = job_finished(&aj, "chocoimg-join.service", None)
        .unwrap_or_else(|| panic!("nodo1: chocoimg-join never finished on boot 2\n{all}"));
    let agent_began = job_began(&aj, "k3s-agent.service")
        .unwrap_or_else(|| panic!("nodo1: k3s-agent never started on boot 2\n{all}"));
    assert!(
        join_done < agent_began,
        "nodo1: k3s-agent started ({agent_began} µs) before the join finished ({join_done} µs)\n{all}"
    );
    assert!(
        job_finished(&aj, "chocoimg-join.service", Some("done")).is_some(),
        "nodo1: the join never succeeded on boot 2\n{all}"
    );
    assert!(
        agent.active("k3s-agent.service"),
        "nodo1: k3s-agent not active on boot 2\n{all}"
    );
}

#[test]
fn two_nodes_boot_announce_and_join_twice() {
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "mkfs.ext4",
        "debugfs",
        "mkfs.vfat",
        "mcopy",
        "busybox",
        "ip",
        "sha256sum",
    ] {
        support::require_tool(tool);
    }
    let started = Instant::now();
    let base = base_image();
    eprintln!(
        "rehearsal: base image {} ({} s)",
        base.display(),
        started.elapsed().as_secs()
    );

    let dir = tempfile::Builder::new()
        .prefix("chocoimg-rehearsal-")
        .tempdir()
        .unwrap();
    // Kept on request, failed or not: serial logs, seeds (secrets of a throw-away cluster).
    let (work, _cleanup) = if std::env::var_os("CHOCOIMG_REHEARSAL_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("rehearsal: keeping {}", kept.display());
        (kept, None)
    } else {
        (dir.path().to_path_buf(), Some(dir))
    };
    let ws = Workspace::with_default_profile();
    let seeds_dir = work.join("seeds");
    ws.ok(&["render", "--all", "--out", seeds_dir.to_str().unwrap()]);
    let plan = chocoimg::plan::load(&ws.profile, &ws.out()).expect("the default profile loads");
    let secrets = chocoimg::secrets::load(&plan.secrets_path()).expect("render made the secrets");
    let cluster = Cluster {
        name: plan.cluster.clone(),
        k3s_version: plan.k3s.version.clone(),
        agent_token: secrets.agent_token.clone(),
    };

    let mut seeds = BTreeMap::new();
    for node in [SERVER, AGENT] {
        seeds.insert(node, load_seed(&seeds_dir.join(node)));
    }
    apply_mutation(&mut seeds);
    let payload = work.join("payload/k3s");
    write_payload(&payload);
    let rootfs = make_rootfs(&base, &work);

    let mut guests = Vec::new();
    for (i, node) in [SERVER, AGENT].into_iter().enumerate() {
        let gdir = work.join(node);
        std::fs::create_dir_all(&gdir).unwrap();
        let cidata = make_cidata(&seeds[node], &payload, &gdir);
        let overlay = gdir.join("disk.qcow2");
        ok(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&rootfs)
            .arg(&overlay));
        guests.push(Guest {
            name: node,
            dir: gdir,
            tap: format!("tap{i}"),
            mac: format!("52:54:00:4c:00:{:02x}", i + 1),
            overlay,
            cidata,
            qemu: None,
        });
    }
    let lan = Lan::new(&work, &["tap0", "tap1"]);
    eprintln!(
        "rehearsal: seeds, disks and LAN ready in {}",
        work.display()
    );

    let (s1, a1) = boot(&mut guests, &lan, &base, 1);
    check_first_boot(&cluster, &s1, &a1);
    eprintln!("rehearsal: boot 1 checked: announced, TXT and proof right, nodo1 joined master1");
    let (s2, a2) = boot(&mut guests, &lan, &base, 2);
    check_second_boot(&s2, &a2);
    eprintln!(
        "rehearsal: boot 2 checked: K3s ready before the announcement, join before k3s-agent ({} s in all)",
        started.elapsed().as_secs()
    );
}
