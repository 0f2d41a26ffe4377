//! Bad profiles: every rule of the checks, each refused with exit 2, a message naming
//! the key, and nothing written.
use crate::support::workspace::Workspace;

fn default_profile() -> String {
    std::fs::read_to_string(crate::support::repo().join("profiles/chocolandiadc-mvp.yaml")).unwrap()
}

/// The default profile with one text replacement (which must apply).
fn with(from: &str, to: &str) -> String {
    let p = default_profile();
    assert!(
        p.contains(from),
        "the default profile no longer contains {from:?}; update the test"
    );
    p.replacen(from, to, 1)
}

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
        Case { rule: "ha not supported yet", profile: with("mode: single-server", "mode: ha"), expect: &["cluster.mode", "not supported yet"] },
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
