//! Bad profiles: every rule of the checks, each refused with exit 2, a message naming
//! the key, and nothing written.
use crate::support::workspace::Workspace;
use std::path::Path;

fn shipped_profile(file: &str) -> String {
    std::fs::read_to_string(crate::support::repo().join("profiles").join(file)).unwrap()
}

fn default_profile() -> String {
    shipped_profile("chocolandiadc-mvp.yaml")
}

pub(crate) fn ha_profile() -> String {
    shipped_profile("chocolandiadc-ha.yaml")
}

/// `profile` with one text replacement (which must apply).
fn replaced(profile: String, from: &str, to: &str) -> String {
    assert!(
        profile.contains(from),
        "the shipped profile no longer contains {from:?}; update the test"
    );
    profile.replacen(from, to, 1)
}

/// The default profile with one text replacement.
fn with(from: &str, to: &str) -> String {
    replaced(default_profile(), from, to)
}

/// The HA profile with one text replacement.
fn ha_with(from: &str, to: &str) -> String {
    replaced(ha_profile(), from, to)
}

const HA_MASTER3: &str =
    "  - hostname: master3\n    role: server\n    connection: ethernet\n    address: dhcp\n";

const NODO1_DHCP: &str = "  - hostname: nodo1\n    role: agent\n    connection: ethernet     # or wifi, with `wifi: {ssid: NAME, password_env: VAR}`\n    address: dhcp\n";

fn nodo1(extra: &str) -> String {
    with(
        NODO1_DHCP,
        &format!("  - hostname: nodo1\n    role: agent\n{extra}"),
    )
}

struct Case {
    rule: &'static str,
    profile: String,
    /// Text the error must contain (the key path, and what to do).
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case { rule: "unknown key", profile: with("  datastore: sqlite", "  datastore: sqlite\n  colour: blue"), expect: &["cluster.colour", "unknown key"] },
        Case { rule: "unknown node key (every one reported)", profile: nodo1("    adress: dhcp\n    hostnme: x\n"), expect: &["nodes[1].adress", "nodes[1].hostnme"] },
        Case { rule: "hostname RFC 1123", profile: with("hostname: master1", "hostname: Master_1"), expect: &["nodes[0].hostname", "RFC 1123"] },
        Case { rule: "MAC format", profile: nodo1("    mac: aa:bb:cc:dd:ee\n"), expect: &["nodes[1].mac", "aa:bb:cc:dd:ee:ff"] },
        Case { rule: "duplicate hostname", profile: with("hostname: nodo1", "hostname: master1"), expect: &["nodes[1].hostname", "already used"] },
        Case { rule: "duplicate MAC", profile: with(NODO1_DHCP, "  - hostname: nodo1\n    role: agent\n    mac: aa:bb:cc:dd:ee:01\n").replacen("    role: server\n", "    role: server\n    mac: AA:BB:CC:DD:EE:01\n", 1), expect: &["nodes[1].mac", "already the MAC"] },
        Case { rule: "duplicate static IP", profile: nodo1("    mac: aa:bb:cc:dd:ee:02\n    address: 192.168.4.10/24\n").replacen("    role: server\n", "    role: server\n    mac: aa:bb:cc:dd:ee:01\n", 1).replacen("address: dhcp            #", "address: 192.168.4.10/24 #", 1), expect: &["nodes[1].address", "already the address"] },
        Case { rule: "static IP outside the subnet", profile: nodo1("    mac: aa:bb:cc:dd:ee:02\n    address: 10.0.0.5/24\n"), expect: &["nodes[1].address", "not inside network.subnet"] },
        Case { rule: "static IP is the gateway", profile: nodo1("    mac: aa:bb:cc:dd:ee:02\n    address: 192.168.4.1/24\n"), expect: &["nodes[1].address", "gateway"] },
        Case { rule: "static IP needs a MAC", profile: nodo1("    address: 192.168.4.20/24\n"), expect: &["nodes[1].mac", "static address needs"] },
        Case { rule: "no server", profile: with("role: server", "role: agent"), expect: &["nodes", "exactly one node with `role: server`, found 0"] },
        Case { rule: "two servers", profile: with("role: agent", "role: server"), expect: &["nodes", "found 2"] },
        // Issue 11: `ha` is checked (not refused as a whole any more).
        Case { rule: "ha with sqlite (MVP profile)", profile: with("mode: single-server", "mode: ha"), expect: &["cluster.datastore", "needs `datastore: etcd`"] },
        Case { rule: "ha with sqlite", profile: ha_with("datastore: etcd", "datastore: sqlite"), expect: &["cluster.datastore", "needs `datastore: etcd`"] },
        Case { rule: "etcd without ha", profile: with("datastore: sqlite", "datastore: etcd"), expect: &["cluster.datastore", "single-server cluster uses `sqlite`"] },
        Case { rule: "ha with 2 servers", profile: ha_with(HA_MASTER3, ""), expect: &["nodes", "odd number of servers", "found 2", "quorum"] },
        Case { rule: "ha with 4 servers", profile: ha_with(HA_MASTER3, &format!("{HA_MASTER3}{}", HA_MASTER3.replace("master3", "master4"))), expect: &["nodes", "odd number of servers", "found 4", "quorum"] },
        Case { rule: "ha: duplicate hostname", profile: ha_with("hostname: master3", "hostname: master2"), expect: &["nodes[2].hostname", "already used"] },
        Case { rule: "VLAN id 0", profile: ha_with("vlan: {id: 20}", "vlan: {id: 0}"), expect: &["network.vlan.id", "1 to 4094"] },
        Case { rule: "VLAN id 4095", profile: ha_with("vlan: {id: 20}", "vlan: {id: 4095}"), expect: &["network.vlan.id", "1 to 4094"] },
        Case { rule: "VLAN id huge", profile: ha_with("vlan: {id: 20}", "vlan: {id: 70000}"), expect: &["network.vlan.id", "1 to 4094"] },
        Case { rule: "VLAN without its id", profile: ha_with("  vlan: {id: 20}", "  # no vlan"), expect: &["network.vlan", "`vlan: {id: 20}`"] },
        Case { rule: "VLAN without its subnet", profile: ha_with("  subnet: 10.100.20.0/24\n", ""), expect: &["network.subnet", "own subnet"] },
        Case { rule: "VLAN id on the flat LAN", profile: with("  subnet: 192.168.4.0/24", "  vlan: {id: 20}\n  subnet: 192.168.4.0/24"), expect: &["network.vlan", "only used with `kind: vlan`"] },
        Case { rule: "unknown network kind", profile: with("kind: eero-flat", "kind: mesh"), expect: &["network.kind", "unknown variant"] },
        Case { rule: "static address outside the VLAN subnet", profile: ha_with("hostname: nodo1\n    role: agent\n    connection: ethernet\n    address: dhcp", "hostname: nodo1\n    role: agent\n    connection: ethernet\n    mac: aa:bb:cc:dd:ee:04\n    address: 192.168.4.20/24"), expect: &["nodes[3].address", "not inside network.subnet 10.100.20.0/24"] },
        Case { rule: "Wi-Fi on a VLAN", profile: ha_with("hostname: nodo1\n    role: agent\n    connection: ethernet", "hostname: nodo1\n    role: agent\n    connection: wifi\n    wifi: {ssid: casa, password_env: CHOCOIMG_TEST_WIFI_HA}"), expect: &["nodes[3].connection", "wired NIC"] },
        Case { rule: "K3s version format", profile: with("version: v1.28.15+k3s1", "version: 1.28"), expect: &["k3s.version", "vX.Y.Z+k3sN"] },
        Case { rule: "one K3s version for all nodes", profile: nodo1("    k3s_version: v1.29.1+k3s1\n"), expect: &["nodes[1].k3s_version", "one K3s version"] },
        Case { rule: "Wi-Fi needs an SSID", profile: nodo1("    connection: wifi\n"), expect: &["nodes[1].wifi", "ssid"] },
        Case { rule: "Wi-Fi password source resolves", profile: nodo1("    connection: wifi\n    wifi: {ssid: casa, password_env: CHOCOIMG_TEST_UNSET_WIFI}\n"), expect: &["nodes[1].wifi.password_env", "CHOCOIMG_TEST_UNSET_WIFI is not set"] },
        Case { rule: "SSH public key parses", profile: with("  # public_key: ~/.ssh/id_ed25519.pub", "  public_key: ~/not-a-key.pub"), expect: &["ssh.public_key", "not an OpenSSH public key"] },
        Case { rule: "SSH public key exists", profile: with("  # public_key: ~/.ssh/id_ed25519.pub", "  public_key: ~/.ssh/missing.pub"), expect: &["ssh.public_key", "cannot read"] },
        Case { rule: "older installer needs a named disk", profile: with("release: 22.04.5", "release: 22.04.3"), expect: &["nodes[0].disk", "can pick the USB stick"] },
        Case { rule: "wrong type", profile: with("role: agent", "role: worker"), expect: &["nodes[1].role", "unknown variant"] },
        Case { rule: "ISO pin format", profile: with("iso_sha256: 9bc6", "iso_sha256: zz9bc6"), expect: &["ubuntu.iso_sha256", "64-hex-digit"] },
        Case { rule: "labels the kubelet refuses", profile: with("      role: worker", "      node-role.kubernetes.io/worker: \"true\""), expect: &["k3s.agent.node_labels.node-role.kubernetes.io/worker", "K3s would fail to start"] },
        // Issue 8, item 7: the whole Kubernetes label syntax, key and value.
        Case { rule: "label key: prefix with '='", profile: with("      role: worker", "      a=b/zone: x"), expect: &["k3s.agent.node_labels.a=b/zone", "prefix"] },
        Case { rule: "label key: prefix not a DNS subdomain", profile: with("      role: worker", "      Bad_Prefix!/zone: x"), expect: &["k3s.agent.node_labels.Bad_Prefix!/zone", "DNS subdomain"] },
        Case { rule: "label key: two slashes", profile: with("      role: worker", "      a/b/c: x"), expect: &["k3s.agent.node_labels.a/b/c", "one '/'"] },
        Case { rule: "label key: empty prefix", profile: with("      role: worker", "      /zone: x"), expect: &["k3s.agent.node_labels./zone", "prefix"] },
        Case { rule: "label key: prefix too long", profile: with("      role: worker", &format!("      {}.example.com/zone: x", "a".repeat(250))), expect: &["k3s.agent.node_labels.aaa", "253"] },
        Case { rule: "label value: starts with '-'", profile: with("      role: worker", "      role: \"-a\""), expect: &["k3s.agent.node_labels.role", "value"] },
        Case { rule: "label value: ends with '-'", profile: with("      role: worker", "      role: a-"), expect: &["k3s.agent.node_labels.role", "value"] },
        Case { rule: "node label value: too long", profile: nodo1(&format!("    labels: {{zone: {}}}\n", "a".repeat(64))), expect: &["nodes[1].labels.zone", "63"] },
        // Issue 8, item 8: the release, the URL and the ISO pin agree.
        Case { rule: "ISO URL of another release", profile: with("  release: 22.04.5\n", "").replacen("releases.ubuntu.com/22.04.5/ubuntu-22.04.5-", "releases.ubuntu.com/22.04.1/ubuntu-22.04.1-", 1), expect: &["ubuntu.iso_url", "22.04.1", "ubuntu.release"] },
        Case { rule: "ISO pin of another release", profile: with("release: 22.04.5", "release: 22.04.4").replacen("/22.04.5/ubuntu-22.04.5-", "/22.04.4/ubuntu-22.04.4-", 1), expect: &["ubuntu.iso_sha256", "22.04.5"] },
        // Issue 8, item 5: a key where a file name goes.
        Case { rule: "SSH public key given inline", profile: with("  # public_key: ~/.ssh/id_ed25519.pub", "  public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake me@laptop"), expect: &["ssh.public_key", "give the path of a .pub file"] },
        Case { rule: "chocoimg-owned K3s keys", profile: with("    config: {}", "    config: {token: mine}"), expect: &["k3s.server.config.token", "set by chocoimg"] },
    ]
}

#[test]
fn every_bad_profile_is_refused_with_the_key_named_and_nothing_written() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let ws = Workspace::with_profile(&case.profile);
        std::fs::write(ws.home().join("not-a-key.pub"), "hello\n").unwrap();
        for cmd in [&["validate"][..], &["render", "--all"][..]] {
            let out = ws.run(cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{}: `{cmd:?}` must exit 2, got {:?}\n{err}",
                case.rule,
                out.status
            );
            assert!(
                err.contains(ws.profile.to_str().unwrap()),
                "{}: the message must name the file:\n{err}",
                case.rule
            );
            for want in case.expect {
                assert!(
                    err.contains(want),
                    "{}: the message must contain {want:?}:\n{err}",
                    case.rule
                );
            }
            assert!(
                ws.files_in_out().is_empty(),
                "{}: a refused profile wrote {:?}",
                case.rule,
                ws.files_in_out()
            );
        }
    }
}

#[test]
fn all_problems_are_reported_together() {
    let p = with("hostname: master1", "hostname: -bad").replacen(
        "version: v1.28.15+k3s1",
        "version: nope",
        1,
    );
    let ws = Workspace::with_profile(&p);
    let out = ws.run(&["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("2 problems")
            && err.contains("nodes[0].hostname")
            && err.contains("k3s.version"),
        "{err}"
    );
}

#[test]
fn a_missing_profile_says_how_to_name_one() {
    let ws = Workspace::with_default_profile();
    let out = ws
        .cmd(&["validate"])
        .arg("-p")
        .arg("/nonexistent/p.yaml")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/p.yaml") && err.contains("--profile"),
        "{err}"
    );
}

#[test]
fn the_profile_comes_from_the_flag_then_the_environment_then_the_default() {
    let ws = Workspace::with_default_profile();
    let other = with("name: chocolandiadc-mvp", "name: envcluster");
    let env_profile = ws.path().join("env.yaml");
    std::fs::write(&env_profile, other).unwrap();
    let mut c = crate::support::chocoimg();
    c.arg("validate")
        .env("HOME", ws.home())
        .env("CHOCOIMG_OUT", ws.out())
        .env("CHOCOIMG_PROFILE", &env_profile);
    let out = c.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("envcluster"));
    let out = crate::support::chocoimg()
        .arg("validate")
        .env("HOME", ws.home())
        .env_remove("CHOCOIMG_PROFILE")
        .current_dir(crate::support::repo())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chocolandiadc-mvp is valid"),
        "{:?}",
        out
    );
}

#[test]
fn wifi_password_from_the_environment_reaches_only_the_seed() {
    let p = nodo1(
        "    connection: wifi\n    wifi: {ssid: \"casa: 5G\", password_env: CHOCOIMG_TEST_WIFI}\n",
    );
    let ws = Workspace::with_profile(&p);
    let out = ws
        .cmd(&["render", "--node", "nodo1"])
        .env("CHOCOIMG_TEST_WIFI", "s3cret: 'pw' #x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains("s3cret"));
    let seed: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(ws.seed_file("chocolandiadc-mvp", "nodo1", "user-data")).unwrap(),
    )
    .unwrap();
    let ap = &seed["autoinstall"]["network"]["wifis"]["wlan"]["access-points"]["casa: 5G"];
    assert_eq!(
        ap["password"], "s3cret: 'pw' #x",
        "YAML-special characters survive serialisation"
    );
}

/// Runs `cmd`, killing it if it has not finished within a minute (a guard against a
/// test that would otherwise hang: a correct chocoimg answers at once).
fn output_or_kill(cmd: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    panic!(
        "chocoimg did not finish within a minute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 8, item 4: only regular files of a sane size are read as the profile or the
/// SSH public key: /dev/zero and a FIFO are refused at once, naming the file.
#[test]
fn only_regular_files_are_read_as_profile_or_key() {
    let ws = Workspace::with_default_profile();
    let fifo = ws.path().join("fifo.yaml");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let big = ws.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    for profile in [Path::new("/dev/zero"), fifo.as_path(), big.as_path()] {
        let out = output_or_kill(ws.cmd(&["validate"]).arg("-p").arg(profile));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", profile.display());
        assert!(
            err.contains(profile.to_str().unwrap()),
            "{}: {err}",
            profile.display()
        );
        assert!(
            err.contains("not a regular file") || err.contains("larger than"),
            "{}: {err}",
            profile.display()
        );
    }
    for key in [Path::new("/dev/zero"), fifo.as_path()] {
        let p = with(
            "  # public_key: ~/.ssh/id_ed25519.pub",
            &format!("  public_key: {}", key.display()),
        );
        std::fs::write(&ws.profile, p).unwrap();
        let out = output_or_kill(&mut ws.cmd(&["validate"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", key.display());
        assert!(
            err.contains("ssh.public_key") && err.contains("not a regular file"),
            "{}: {err}",
            key.display()
        );
    }
}

/// Issue 8, item 4: bytes that are not UTF-8 are refused with their line, never
/// replaced by U+FFFD and accepted.
#[test]
fn a_profile_that_is_not_utf8_is_refused_naming_the_line() {
    let mut bytes = default_profile().into_bytes();
    // In a comment, where a replacement character would go unnoticed.
    let at = String::from_utf8_lossy(&bytes)
        .find("  # public_key:")
        .unwrap();
    bytes.splice(at + 4..at + 4, [0xff, 0xfe]);
    let line = 1 + bytes[..at].iter().filter(|b| **b == b'\n').count();
    let ws = Workspace::with_default_profile();
    std::fs::write(&ws.profile, &bytes).unwrap();
    let out = ws.run(&["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:{line}", ws.profile.display())) && err.contains("UTF-8"),
        "line {line}: {err}"
    );
}

/// Issue 11: the HA profile validates, with a note on how its servers start, and renders:
/// without a CA recorded by the laptop, `render` says once (not per server) that master1
/// may start a new cluster and that `chocoimg discover` comes first for an existing one.
#[test]
fn the_ha_profile_validates_and_renders_with_a_note_on_the_first_server() {
    let ws = Workspace::with_profile(&ha_profile());
    let out = ws.run(&["validate"]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains("chocolandiadc-ha is valid")
            && stdout.contains("master3 (server)")
            && stdout.contains("nodo1 (agent)"),
        "{stdout}"
    );
    assert!(err.contains("only the first server"), "{err}");
    assert!(
        ws.files_in_out().is_empty(),
        "validate wrote {:?}",
        ws.files_in_out()
    );

    let out = ws.ok(&["render", "--all"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("note: no CA recorded").count(), 1, "{err}");
    assert!(
        err.contains("master1 may start a new cluster")
            && err.contains("`chocoimg discover` first"),
        "{err}"
    );
    // An agent alone: nothing about starting a cluster.
    let out = ws.ok(&["render", "--node", "nodo1"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no CA recorded"),
        "{out:?}"
    );
}
