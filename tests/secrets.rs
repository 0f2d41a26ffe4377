//! The cluster's secrets file, handled by careless hands: created once even by racing
//! processes, a damaged file refused (never "repaired"), private folders whatever the
//! umask, and messages that say what is wrong with the file.
use crate::support::workspace::Workspace;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLUSTER: &str = "chocolandiadc-mvp";

fn secrets_path(ws: &Workspace) -> PathBuf {
    ws.out().join(CLUSTER).join("secrets.yaml")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Issue 8, item 1: two `render --all` started together on a cluster with no secrets
/// yet both succeed, and both wrote seeds of the one identity left in secrets.yaml.
#[test]
fn racing_renders_of_a_new_cluster_make_one_identity() {
    for round in 0..15 {
        let ws = Workspace::with_default_profile();
        let dirs = [ws.path().join("seeds-a"), ws.path().join("seeds-b")];
        let children: Vec<_> = dirs
            .iter()
            .map(|d| {
                ws.cmd(&["render", "--all", "--out", d.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", text(&out));
        }
        let s = yaml(&secrets_path(&ws));
        for dir in &dirs {
            let master1 = std::fs::read_to_string(dir.join("master1/user-data")).unwrap();
            let nodo1 = std::fs::read_to_string(dir.join("nodo1/user-data")).unwrap();
            let server_token = s["server_token"].as_str().unwrap();
            let agent_token = s["agent_token"].as_str().unwrap();
            assert!(
                master1.contains(server_token) && nodo1.contains(agent_token),
                "round {round}: {} holds tokens that are not those of secrets.yaml",
                dir.display()
            );
            for (node, seed) in [("master1", &master1), ("nodo1", &nodo1)] {
                let public = s["host_keys"][node]["public"].as_str().unwrap();
                assert!(
                    seed.contains(public),
                    "round {round}: {}'s seed in {} has another host key than secrets.yaml",
                    node,
                    dir.display()
                );
            }
        }
    }
}

/// Issue 8, item 2: a secrets file cut short is refused (exit 2, the file named, not
/// rewritten); only a node new in the profile gets a new host key, and the output says so.
#[test]
fn a_damaged_secrets_file_is_refused_and_never_repaired() {
    let ws = Workspace::with_default_profile();
    ws.ok(&["render", "--all"]);
    let path = secrets_path(&ws);
    let whole = std::fs::read_to_string(&path).unwrap();
    let s = yaml(&path);
    let master1_public = s["host_keys"]["master1"]["public"].as_str().unwrap();

    let cut_after_first_host_key = whole.find("\n  nodo1:").expect("nodo1's host key") + 1;
    let in_public_line = whole.find(master1_public).unwrap() + "ssh-ed25519 AAAAC".len();
    for (what, cut) in [
        ("after master1's host key", cut_after_first_host_key),
        ("inside master1's public key", in_public_line),
        (
            "before the end marker",
            whole.trim_end().rfind('\n').unwrap() + 1,
        ),
    ] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let out = ws.run(&["render", "--all"]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        assert!(
            text(&out).contains(path.to_str().unwrap()),
            "{what}: the file is named: {}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            &whole[..cut],
            "{what}: the damaged file is left as it was"
        );
        for secret in [s["server_token"].as_str().unwrap(), master1_public] {
            assert!(!text(&out).contains(secret), "{what}: no secret printed");
        }
    }

    // A file with its end marker whose public key is cut: refused too (the marker
    // proves the file complete, not right).
    let marked = whole.replacen(master1_public, &master1_public[..20], 1);
    std::fs::write(&path, &marked).unwrap();
    let out = ws.run(&["render", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("master1"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), marked);

    std::fs::write(&path, &whole).unwrap();
    ws.ok(&["render", "--all"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);

    // A node new in the profile: its key is added, said so; nothing else changes.
    let profile =
        std::fs::read_to_string(&ws.profile).unwrap() + "  - hostname: nodo2\n    role: agent\n";
    std::fs::write(&ws.profile, profile).unwrap();
    let out = ws.ok(&["render", "--all"]);
    assert!(
        text(&out).contains("nodo2") && text(&out).contains("new SSH host key"),
        "{}",
        text(&out)
    );
    let after = yaml(&path);
    for key in ["server_token", "agent_token", "admin_password_hash"] {
        assert_eq!(after[key], s[key], "{key} kept");
    }
    for node in ["master1", "nodo1"] {
        assert_eq!(
            after["host_keys"][node], s["host_keys"][node],
            "{node} kept"
        );
    }
    assert!(after["host_keys"]["nodo2"]["public"].is_string());
    let out = ws.ok(&["render", "--all"]);
    assert!(!text(&out).contains("new SSH host key"), "{}", text(&out));
}

/// A file written before the end marker existed is not silently trusted: the message
/// gives the one command that marks it, once its owner has checked it is complete.
#[test]
fn a_secrets_file_without_end_marker_is_migrated_explicitly() {
    let ws = Workspace::with_default_profile();
    ws.ok(&["render", "--all"]);
    let path = secrets_path(&ws);
    let whole = std::fs::read_to_string(&path).unwrap();
    let body = whole[..whole.trim_end().rfind('\n').unwrap() + 1].to_string();
    std::fs::write(&path, &body).unwrap();
    let out = ws.run(&["render", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("end marker"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        body,
        "not rewritten"
    );
    let fix = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("$ "))
        .unwrap_or_else(|| panic!("the message gives a command to run: {msg}"));
    let st = Command::new("sh").arg("-c").arg(fix).status().unwrap();
    assert!(st.success(), "{fix}");
    ws.ok(&["render", "--all"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
}

/// Runs `cmd` under umask `mask` (a shell sets it, then execs the command).
fn under_umask(cmd: &Command, mask: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {mask} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        sh.current_dir(d);
    }
    sh
}

/// Issue 8, item 3: folders that hold secrets are 0700 whatever the umask.
#[test]
fn folders_holding_secrets_are_private_under_any_umask() {
    let ws = Workspace::with_default_profile();
    let out = under_umask(&ws.cmd(&["render", "--all"]), "000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cluster = ws.out().join(CLUSTER);
    for dir in [
        ws.out(),
        cluster.clone(),
        cluster.join("master1"),
        cluster.join("master1/seed"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&secrets_path(&ws)), 0o600);
    assert_eq!(mode(&cluster.join("master1/seed/user-data")), 0o600);

    // The cluster's folder left open by an older run is closed again before secrets go
    // in it. (An output root that exists is the user's and keeps its mode.)
    use std::os::unix::fs::PermissionsExt;
    for dir in [ws.out(), cluster.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    ws.ok(&["render", "--all"]);
    assert_eq!(mode(&cluster), 0o700);
}

fn wifi_profile() -> String {
    let p = std::fs::read_to_string(crate::support::repo().join("profiles/chocolandiadc-mvp.yaml"))
        .unwrap();
    let nodo1 = "  - hostname: nodo1\n    role: agent\n    connection: ethernet ";
    assert!(p.contains(nodo1), "update the test");
    p.replacen(
        nodo1,
        "  - hostname: nodo1\n    role: agent\n    wifi: {ssid: casa}\n    connection: wifi ",
        1,
    )
}

/// Issue 8, item 5: a Wi-Fi password read from a secrets file that cannot be used says
/// what is wrong with the file, not "no password".
#[test]
fn a_wifi_password_from_a_bad_secrets_file_names_the_problem() {
    let ws = Workspace::with_default_profile();
    ws.ok(&["render", "--all"]);
    let path = secrets_path(&ws);
    let whole = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&ws.profile, wifi_profile()).unwrap();

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ws.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("nodes[1].wifi") && text(&out).contains("chmod 600"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let out = ws.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("nodes[1].wifi") && !text(&out).contains("no password for"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(path.to_str().unwrap()),
        "{}",
        text(&out)
    );
}

/// Issue 8, item 5: the laptop's cluster tools never use a Wi-Fi password, so an unset
/// password variable does not stop them.
#[test]
fn cluster_tools_do_not_need_the_wifi_password() {
    let ws = Workspace::with_profile(&wifi_profile().replacen(
        "wifi: {ssid: casa}",
        "wifi: {ssid: casa, password_env: CHOCOIMG_TEST_UNSET_WIFI}",
        1,
    ));
    // No secrets yet: each command stops at that, before any network (none is touched).
    for cmd in [
        &["discover"][..],
        &["fetch-kubeconfig"][..],
        &["status", "--kubeconfig", "/nonexistent/kubeconfig"][..],
    ] {
        let out = ws
            .cmd(cmd)
            .env_remove("CHOCOIMG_TEST_UNSET_WIFI")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", text(&out));
        assert!(
            !text(&out).contains("CHOCOIMG_TEST_UNSET_WIFI"),
            "{cmd:?}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("secrets.yaml does not exist")
                || text(&out).contains("no kubeconfig at"),
            "{cmd:?}: {}",
            text(&out)
        );
    }
    // Commands that write seeds still need it.
    let out = ws.run(&["render", "--all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("CHOCOIMG_TEST_UNSET_WIFI"),
        "{}",
        text(&out)
    );
}
