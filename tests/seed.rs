//! The spine: profile → plan → seeds, checked by the seeds' real consumers
//! (cloud-init's schema and a real cloud-init first boot, the installer's own schemas).
use crate::support::workspace::Workspace;
use crate::support::{repo, require_tool};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const CLUSTER: &str = "chocolandiadc-mvp";
const NODES: [&str; 2] = ["master1", "nodo1"];
const HA_CLUSTER: &str = "chocolandiadc-ha";
const HA_NODES: [&str; 4] = ["master1", "master2", "master3", "nodo1"];

fn rendered() -> Workspace {
    let ws = Workspace::with_default_profile();
    ws.ok(&["render", "--all"]);
    ws
}

/// The shipped HA profile, rendered (no CA recorded yet).
fn rendered_ha() -> Workspace {
    let profile = std::fs::read_to_string(repo().join("profiles/chocolandiadc-ha.yaml")).unwrap();
    let ws = Workspace::with_profile(&profile);
    ws.ok(&["render", "--all"]);
    ws
}

fn yaml_file(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn to_json(v: &serde_yaml_ng::Value) -> Json {
    serde_json::to_value(v).expect("YAML converts to JSON")
}

/// `cloud-init schema -c FILE` must accept the file.
fn assert_cloud_init_schema_ok(path: &Path) {
    require_tool("cloud-init");
    let out = Command::new("cloud-init")
        .args(["schema", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("Valid cloud-config"),
        "cloud-init schema rejected {}:\n{text}",
        path.display()
    );
}

/// `autoinstall` must pass each of the six installers' autoinstall schemas.
fn assert_installer_schemas_ok(node: &str, autoinstall: &Json) {
    let schema_dir = repo().join("tests/data/autoinstall-schemas");
    let mut schemas: Vec<_> = std::fs::read_dir(&schema_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    schemas.sort();
    assert_eq!(
        schemas.len(),
        6,
        "the six autoinstall schemas are in {}",
        schema_dir.display()
    );
    for schema_path in &schemas {
        let schema: Json =
            serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
        let validator = jsonschema::draft7::new(&schema).expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(autoinstall)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{node}: autoinstall fails {}:\n{}",
            schema_path.display(),
            errors.join("\n")
        );
    }
}

/// The top-level keys cloud-init's own schema knows (the `cloud-init schema` command does
/// not reject unknown ones, so this is checked separately).
fn cloud_init_known_keys() -> BTreeSet<String> {
    let script = r#"
import json
from cloudinit.config.schema import get_schema
s = get_schema()
keys = set(s.get("properties", {}))
for name, d in s.get("$defs", {}).items():
    if name.startswith("cc_") or name.startswith("base_config"):
        keys.update(d.get("properties", {}))
print(json.dumps(sorted(keys)))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .expect("/usr/bin/python3 runs");
    assert!(out.status.success(), "reading cloud-init's schema failed (is cloud-init installed? run scripts/install-test-deps.sh): {}", String::from_utf8_lossy(&out.stderr));
    let keys: BTreeSet<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        keys.contains("write_files") && keys.contains("runcmd"),
        "unexpected cloud-init schema: {keys:?}"
    );
    keys
}

#[test]
fn seeds_pass_cloud_init_and_every_installer_schema() {
    let ws = rendered();
    let known = cloud_init_known_keys();
    for node in NODES {
        assert_seed_passes(&ws, CLUSTER, node, &known);
    }
}

/// Issue 11: every seed of the HA profile (three servers that bootstrap by discovery,
/// one agent, on the VLAN) passes the same checks as the MVP's.
#[test]
fn ha_seeds_pass_cloud_init_and_every_installer_schema() {
    let ws = rendered_ha();
    let known = cloud_init_known_keys();
    for node in HA_NODES {
        assert_seed_passes(&ws, HA_CLUSTER, node, &known);
    }
}

/// `node`'s seed: cloud-init's schema, the six installer schemas, what an unattended
/// install needs, and an installed-system cloud-config with only keys cloud-init knows.
fn assert_seed_passes(ws: &Workspace, cluster: &str, node: &str, known: &BTreeSet<String>) {
    {
        let path = ws.seed_file(cluster, node, "user-data");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#cloud-config\n"),
            "{node}: user-data must start with #cloud-config"
        );
        let doc = yaml_file(&path);
        assert_cloud_init_schema_ok(&path);
        let top: Vec<_> = doc
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            top,
            ["autoinstall"],
            "{node}: the live installer's cloud-config holds only autoinstall"
        );

        let autoinstall = to_json(&doc["autoinstall"]);
        assert_installer_schemas_ok(node, &autoinstall);
        // What an unattended install cannot ask for must be there (the admin user comes
        // from `identity` or, as here, from the installed system's user-data).
        assert!(
            autoinstall.get("identity").is_some()
                || doc["autoinstall"]["user-data"]["users"].is_sequence(),
            "{node}: autoinstall names no admin user"
        );
        for key in [
            "ssh",
            "network",
            "storage",
            "late-commands",
            "user-data",
            "packages",
        ] {
            assert!(
                autoinstall.get(key).is_some(),
                "{node}: autoinstall lacks {key}"
            );
        }
        assert_eq!(autoinstall["shutdown"], "poweroff");
        assert_eq!(autoinstall["ssh"]["allow-pw"], false);

        // The installed system's own cloud-config: valid, and only keys cloud-init knows.
        let installed = &doc["autoinstall"]["user-data"];
        let installed_path = ws.path().join(format!("{node}-installed.yaml"));
        std::fs::write(
            &installed_path,
            format!(
                "#cloud-config\n{}",
                serde_yaml_ng::to_string(installed).unwrap()
            ),
        )
        .unwrap();
        assert_cloud_init_schema_ok(&installed_path);
        for key in installed.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            assert!(
                known.contains(key),
                "{node}: installed user-data has a key cloud-init does not know: {key}"
            );
        }

        let meta = yaml_file(&ws.seed_file(cluster, node, "meta-data"));
        assert_eq!(meta["local-hostname"].as_str(), Some(node));
        assert!(meta["instance-id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("chocoimg-{cluster}-{node}-")));
    }
}

/// Reads the K3s config.yaml that a seed writes, straight from its write_files.
fn k3s_config_of(ws: &Workspace, node: &str) -> serde_yaml_ng::Value {
    let doc = yaml_file(&ws.seed_file(CLUSTER, node, "user-data"));
    let files = doc["autoinstall"]["user-data"]["write_files"]
        .as_sequence()
        .unwrap()
        .clone();
    let f = files
        .iter()
        .find(|f| f["path"] == "/etc/rancher/k3s/config.yaml")
        .expect("config.yaml is written");
    assert_eq!(f["permissions"], "0600");
    serde_yaml_ng::from_str(f["content"].as_str().unwrap()).unwrap()
}

fn secrets_of(ws: &Workspace) -> serde_yaml_ng::Value {
    yaml_file(&ws.out().join(CLUSTER).join("secrets.yaml"))
}

#[test]
fn k3s_config_holds_the_right_keys_per_role() {
    let ws = rendered();
    let secrets = secrets_of(&ws);
    let server = k3s_config_of(&ws, "master1");
    assert_eq!(server["token"], secrets["server_token"]);
    assert_eq!(server["agent-token"], secrets["agent_token"]);
    let sans: Vec<_> = server["tls-san"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sans, ["master1", "master1.local"]);
    let disable: Vec<_> = server["disable"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(disable, ["traefik", "servicelb"]);
    assert!(
        server.get("cluster-init").is_none(),
        "SQLite: no cluster-init"
    );

    let agent = k3s_config_of(&ws, "nodo1");
    assert!(
        agent.get("token").is_none() && agent.get("agent-token").is_none(),
        "an agent never gets the server token"
    );
    assert!(
        agent.get("server").is_none(),
        "the join service finds the server"
    );
    assert_eq!(agent["node-label"][0], "role=worker");
    let agent_seed = std::fs::read_to_string(ws.seed_file(CLUSTER, "nodo1", "user-data")).unwrap();
    assert!(
        !agent_seed.contains(secrets["server_token"].as_str().unwrap()),
        "the server token must never reach nodo1's stick"
    );
}

/// The installed system's first boot, run by the real cloud-init in a sandbox.
#[test]
fn first_boot_in_real_cloud_init_writes_config_user_and_host_key() {
    require_tool("cloud-init");
    require_tool("unshare");
    assert!(
        nix_is_root(),
        "this test runs cloud-init in namespaces and needs root (CI runs as root)"
    );
    let ws = rendered();
    let secrets = secrets_of(&ws);
    let operator_key =
        std::fs::read_to_string(repo().join("tests/data/operator_id_ed25519.pub")).unwrap();
    for node in NODES {
        let doc = yaml_file(&ws.seed_file(CLUSTER, node, "user-data"));
        let mut installed = doc["autoinstall"]["user-data"].clone();
        // Debian lacks en_US.UTF-8; the locale is the installer's business anyway.
        installed
            .as_mapping_mut()
            .unwrap()
            .insert("locale".into(), "C.UTF-8".into());
        let user_data = ws.path().join(format!("{node}-first-boot.yaml"));
        std::fs::write(
            &user_data,
            format!(
                "#cloud-config\n{}",
                serde_yaml_ng::to_string(&installed).unwrap()
            ),
        )
        .unwrap();
        // The installed system's meta-data is the installer's: an instance-id only (no
        // local-hostname; subiquity's _cloud_init_files), so the hostname must come from
        // the user-data.
        let meta_data = ws.path().join(format!("{node}-first-boot-meta-data"));
        std::fs::write(&meta_data, "instance-id: installed-system\n").unwrap();
        let result = ws.path().join(format!("{node}-result"));
        let out = Command::new(repo().join("tests/fixtures/cloud-init-sandbox.sh"))
            .arg(&user_data)
            .arg(&meta_data)
            .arg(&result)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(result.join("cloud-init.out")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{node}: sandbox failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );

        // K3s config: written, 0600, root-owned.
        let listing = std::fs::read_to_string(result.join("files.txt")).unwrap();
        assert!(
            listing
                .lines()
                .any(|l| l == "600 root etc/rancher/k3s/config.yaml"),
            "{node}: config.yaml must be 0600 root:\n{listing}\n{log}"
        );
        let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(result.join("etc/rancher/k3s/config.yaml")).unwrap(),
        )
        .unwrap();
        match node {
            "master1" => {
                assert_eq!(cfg["token"], secrets["server_token"]);
                assert_eq!(cfg["agent-token"], secrets["agent_token"]);
                assert!(cfg.get("tls-san").is_some() && cfg.get("disable").is_some());
            }
            _ => {
                assert!(cfg.get("token").is_none() && cfg.get("agent-token").is_none());
                assert!(
                    listing
                        .lines()
                        .any(|l| l == "600 root etc/rancher/node/password"),
                    "{node}: K3s's node password must be 0600 root:\n{listing}"
                );
            }
        }
        assert_eq!(
            std::fs::read_to_string(result.join("hostname"))
                .unwrap()
                .trim(),
            node,
            "{node}: the installed system is named by its user-data:\n{log}"
        );
        // The admin user, with the operator's key.
        let passwd = std::fs::read_to_string(result.join("passwd")).unwrap();
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with("ubuntu:") && l.ends_with(":/bin/bash")),
            "{node}: user ubuntu not created:\n{log}"
        );
        let group = std::fs::read_to_string(result.join("group")).unwrap();
        assert!(group.lines().any(|l| l.starts_with("sudo:")
            && l.split(':')
                .nth(3)
                .unwrap_or("")
                .split(',')
                .any(|u| u == "ubuntu")));
        let keys =
            std::fs::read_to_string(result.join("home/ubuntu/.ssh/authorized_keys")).unwrap();
        assert!(
            keys.contains(operator_key.trim()),
            "{node}: the operator's key is not authorised"
        );
        // The pinned host key, and no other.
        let host_pub =
            std::fs::read_to_string(result.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
        let want = secrets["host_keys"][node]["public"].as_str().unwrap();
        assert_eq!(
            host_pub.split_whitespace().take(2).collect::<Vec<_>>(),
            want.split_whitespace().take(2).collect::<Vec<_>>()
        );
        assert!(
            !result.join("etc/ssh/ssh_host_rsa_key").exists(),
            "{node}: only the pinned host key may exist"
        );
        // K3s installed from the stick's binary, by role (install.sh is a stand-in here).
        let env = std::fs::read_to_string(result.join("k3s-install.env"))
            .unwrap_or_else(|_| panic!("{node}: the K3s install step did not run:\n{log}"));
        assert!(
            env.contains("INSTALL_K3S_SKIP_DOWNLOAD=true")
                && env.contains("INSTALL_K3S_VERSION=v1.28.15+k3s1")
        );
        let exec = if node == "master1" {
            "INSTALL_K3S_EXEC=server"
        } else {
            "INSTALL_K3S_EXEC=agent"
        };
        assert!(env.contains(exec), "{node}: {env}");
        assert_eq!(
            env.contains("INSTALL_K3S_SKIP_START=true"),
            node == "nodo1",
            "only the agent waits for the join"
        );
        // First boot announced the node's stage, proven, past K3s's install (no systemd
        // or K3s here: the server is still starting, the agent waits for master1).
        let announcement =
            std::fs::read_to_string(result.join("etc/avahi/services/chocoimg-node.service"))
                .unwrap_or_else(|_| panic!("{node}: no stage announced:\n{log}"));
        let strings: Vec<&str> = announcement
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("<txt-record>")?
                    .strip_suffix("</txt-record>")
            })
            .collect();
        let txt: std::collections::BTreeMap<&str, &str> =
            strings.iter().filter_map(|kv| kv.split_once('=')).collect();
        let want = if node == "master1" {
            "starting-k3s"
        } else {
            "waiting-for-server"
        };
        assert_eq!(txt["stage"], want, "{node}: {announcement}\n{log}");
        assert_eq!(txt["node"], node);
        assert_eq!(
            chocoimg::cluster::watch::judge(
                &strings,
                CLUSTER,
                secrets["agent_token"].as_str().unwrap()
            )
            .0,
            chocoimg::cluster::txt::Verdict::Verified,
            "{node}: {announcement}"
        );
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Replaces every secret and every random value by a name, for stable snapshots.
fn masked(ws: &Workspace, text: &str) -> String {
    masked_in(ws, CLUSTER, &NODES, text)
}

/// `masked` for the nodes of `cluster`.
fn masked_in(ws: &Workspace, cluster: &str, nodes: &[&str], text: &str) -> String {
    let s = yaml_file(&ws.out().join(cluster).join("secrets.yaml"));
    let mut out = text.to_string();
    let mut pairs: Vec<(String, String)> = vec![
        (
            s["server_token"].as_str().unwrap().into(),
            "<server_token>".into(),
        ),
        (
            s["agent_token"].as_str().unwrap().into(),
            "<agent_token>".into(),
        ),
        (
            s["admin_password_hash"].as_str().unwrap().into(),
            "<admin_password_hash>".into(),
        ),
    ];
    for &node in nodes {
        let password =
            chocoimg::proof::node_password(s["server_token"].as_str().unwrap(), cluster, node);
        pairs.push((password, format!("<{node}_node_password>")));
        let k = &s["host_keys"][node];
        let public = k["public"].as_str().unwrap();
        pairs.push((
            public.split_whitespace().nth(1).unwrap().into(),
            format!("<{node}_host_public_key>"),
        ));
        for (i, line) in k["private"].as_str().unwrap().lines().enumerate() {
            if !line.starts_with("-----") {
                pairs.push((line.into(), format!("<{node}_host_private_key_line_{i}>")));
            }
        }
    }
    for (secret, name) in pairs {
        out = out.replace(&secret, &name);
    }
    // instance-id hashes the (secret-bearing) user-data.
    out.lines()
        .map(|l| {
            if l.starts_with("instance-id:") {
                l.rsplit_once('-').unwrap().0.to_string() + "-<hash>"
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn seeds_snapshot() {
    let ws = rendered();
    for node in NODES {
        for file in ["user-data", "meta-data"] {
            let text = std::fs::read_to_string(ws.seed_file(CLUSTER, node, file)).unwrap();
            insta::assert_snapshot!(format!("{node}-{file}"), masked(&ws, &text));
        }
    }
}

/// Issue 11 (new snapshots): an HA server that may start the cluster (master1, no CA
/// recorded) and one that only joins (master2).
#[test]
fn ha_seeds_snapshot() {
    let ws = rendered_ha();
    for node in ["master1", "master2"] {
        let text = std::fs::read_to_string(ws.seed_file(HA_CLUSTER, node, "user-data")).unwrap();
        insta::assert_snapshot!(
            format!("ha-{node}-user-data"),
            masked_in(&ws, HA_CLUSTER, &HA_NODES, &text)
        );
    }
}

/// Issue 11: once the laptop has recorded the cluster's CA, every HA server's seed carries
/// it (public, 0644) and the agent's does not; a damaged record is refused, exit 2, naming
/// the file, and no seed is written.
#[test]
fn ha_server_seeds_carry_the_recorded_ca() {
    let ws = rendered_ha();
    let ca = "ab".repeat(32);
    let record = ws.out().join(HA_CLUSTER).join("cluster-ca.sha256");
    std::fs::write(&record, format!("{ca}\n")).unwrap();
    let out = ws.ok(&["render", "--all"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no CA recorded"),
        "{out:?}"
    );
    for node in HA_NODES {
        let doc = yaml_file(&ws.seed_file(HA_CLUSTER, node, "user-data"));
        let files = doc["autoinstall"]["user-data"]["write_files"]
            .as_sequence()
            .unwrap()
            .clone();
        let carried = files
            .iter()
            .find(|f| f["path"] == "/etc/chocoimg/cluster-ca");
        if node == "nodo1" {
            assert!(carried.is_none(), "{node}");
        } else {
            let f = carried.unwrap_or_else(|| panic!("{node} lacks the recorded CA"));
            assert_eq!(f["content"].as_str(), Some(format!("{ca}\n").as_str()));
            assert_eq!(f["permissions"], "0644");
            let config = files
                .iter()
                .find(|f| f["path"] == "/etc/rancher/k3s/config.yaml")
                .unwrap();
            let config: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(config["content"].as_str().unwrap()).unwrap();
            assert!(
                config.get("cluster-init").is_none() && config.get("server").is_none(),
                "{node}: the bootstrap decides these: {config:?}"
            );
        }
    }
    std::fs::write(&record, "not a hash\n").unwrap();
    let seed = ws.seed_file(HA_CLUSTER, "master1", "user-data");
    let before = std::fs::read(&seed).unwrap();
    let out = ws.run(&["render", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster-ca.sha256"));
    assert_eq!(std::fs::read(&seed).unwrap(), before);
}

#[test]
fn rendering_twice_is_byte_identical_and_secrets_stay_private() {
    let ws = Workspace::with_default_profile();
    let first = ws.ok(&["render", "--all"]);
    let read = |node, name| std::fs::read(ws.seed_file(CLUSTER, node, name)).unwrap();
    let before: Vec<_> = NODES
        .iter()
        .flat_map(|n| [read(*n, "user-data"), read(*n, "meta-data")])
        .collect();
    let second = ws.ok(&["render", "--all"]);
    let after: Vec<_> = NODES
        .iter()
        .flat_map(|n| [read(*n, "user-data"), read(*n, "meta-data")])
        .collect();
    assert!(
        before == after,
        "a second render must give the same bytes (secrets are reused)"
    );

    use std::os::unix::fs::PermissionsExt;
    let secrets_path = ws.out().join(CLUSTER).join("secrets.yaml");
    assert_eq!(
        std::fs::metadata(&secrets_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for node in NODES {
        let mode = std::fs::metadata(ws.seed_file(CLUSTER, node, "user-data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "user-data carries secrets");
    }
    // No secret on the terminal, and secrets.yaml is not copied into any seed.
    let s = secrets_of(&ws);
    let logs = [first, second]
        .iter()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        })
        .collect::<String>();
    for key in [
        "server_token",
        "agent_token",
        "admin_password",
        "admin_password_hash",
    ] {
        let v = s[key].as_str().unwrap();
        assert!(!logs.contains(v), "{key} was printed");
    }
    let admin_password = s["admin_password"].as_str().unwrap();
    for node in NODES {
        let seed = String::from_utf8(read(node, "user-data")).unwrap();
        assert!(
            !seed.contains(admin_password),
            "only the password's hash goes on the stick"
        );
    }
    // validate writes nothing at all.
    let fresh = Workspace::with_default_profile();
    fresh.ok(&["validate"]);
    assert!(
        fresh.files_in_out().is_empty(),
        "validate wrote {:?}",
        fresh.files_in_out()
    );
}

#[test]
fn render_one_node_into_a_chosen_folder() {
    let ws = Workspace::with_default_profile();
    let dest = ws.path().join("seeds");
    ws.ok(&["render", "--node", "nodo1", "--out", dest.to_str().unwrap()]);
    assert!(dest.join("nodo1/user-data").is_file() && dest.join("nodo1/meta-data").is_file());
    assert!(!dest.join("master1").exists());
    let out = ws.run(&["render", "--node", "nodo9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nodo9") && err.contains("master1, nodo1"),
        "{err}"
    );
}

#[test]
fn without_an_ssh_key_the_cluster_gets_its_own_pair_and_says_so() {
    let ws = Workspace::with_default_profile();
    std::fs::remove_file(ws.home().join(".ssh/id_ed25519.pub")).unwrap();
    let out = ws.ok(&["render", "--node", "master1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let private = ws.out().join(CLUSTER).join("ssh/id_ed25519");
    assert!(
        err.contains("created one for this cluster") && err.contains(private.to_str().unwrap()),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let seed = std::fs::read_to_string(ws.seed_file(CLUSTER, "master1", "user-data")).unwrap();
    assert!(
        seed.contains(public.trim()),
        "the generated key is the one the nodes trust"
    );
    // ssh-keygen (OpenSSH itself) reads the pair.
    crate::support::require_tool("ssh-keygen");
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&private)
        .output()
        .unwrap();
    assert!(derived.status.success());
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout)
            .split_whitespace()
            .nth(1),
        public.split_whitespace().nth(1)
    );
    // A second render keeps the pair.
    ws.ok(&["render", "--node", "master1"]);
    assert_eq!(
        std::fs::read_to_string(private.with_extension("pub")).unwrap(),
        public
    );
}

/// The `users` list of the cloud-config subiquity writes into the installed system, as
/// its `_cloud_init_config` builds it (subiquity/models/subiquity.py, tags 22.07.2 and
/// 24.08.1): the user from `identity` (with `ssh.authorized-keys`) when there is one,
/// then `merge_cloud_init_config` appends the lists of the seed's `user-data`. (The real
/// installer cannot run here; its rule is copied, not guessed.)
fn installed_users(autoinstall: &serde_yaml_ng::Value) -> Vec<serde_yaml_ng::Value> {
    let mut users = Vec::new();
    if let Some(identity) = autoinstall.get("identity") {
        let mut user = serde_yaml_ng::Mapping::new();
        user.insert("name".into(), identity["username"].clone());
        user.insert("passwd".into(), identity["password"].clone());
        users.push(serde_yaml_ng::Value::Mapping(user));
    }
    if let Some(list) = autoinstall["user-data"]["users"].as_sequence() {
        users.extend(list.iter().cloned());
    }
    users
}

/// Issue 8, item 6: the installed system's cloud-config names the admin user once (it
/// had one entry from `identity` and one from `user-data`), and the keys that subiquity
/// would turn into root's authorized_keys when there is no identity are not given.
#[test]
fn the_installed_system_gets_the_admin_user_once() {
    let ws = rendered();
    let secrets = secrets_of(&ws);
    for node in NODES {
        let doc = yaml_file(&ws.seed_file(CLUSTER, node, "user-data"));
        let autoinstall = &doc["autoinstall"];
        let admins: Vec<_> = installed_users(autoinstall)
            .into_iter()
            .filter(|u| u["name"] == "ubuntu")
            .collect();
        assert_eq!(admins.len(), 1, "{node}: {admins:?}");
        assert_eq!(admins[0]["passwd"], secrets["admin_password_hash"]);
        if autoinstall.get("identity").is_none() {
            assert!(
                autoinstall["ssh"].get("authorized-keys").is_none(),
                "{node}: without identity, subiquity gives ssh.authorized-keys to root"
            );
            assert_eq!(autoinstall["user-data"]["hostname"], node);
        }
    }
}

/// Issue 11: on a `vlan` network the node's NIC carries the VLAN (netplan `vlans:`),
/// DHCP or static inside the VLAN's subnet, and Debian's netplan.io accepts the seed's
/// netplan: `netplan generate` in a temporary root writes systemd-networkd files with the
/// VLAN on the NIC; the seeds pass cloud-init's and every installer's schema. A
/// single-server profile, since `ha` seeds are not rendered yet.
#[test]
fn vlan_netplan_is_accepted_by_netplan_generate() {
    require_tool("netplan");
    let profile = std::fs::read_to_string(repo().join("profiles/chocolandiadc-mvp.yaml"))
        .unwrap()
        .replacen(
            "  kind: eero-flat            # one flat LAN, no VLANs, DHCP from the Eero\n  subnet: 192.168.4.0/24\n  gateway: 192.168.4.1\n  dns: [192.168.4.1]",
            "  kind: vlan\n  vlan: {id: 20}\n  subnet: 10.100.20.0/24\n  gateway: 10.100.20.1\n  dns: [10.100.20.1]",
            1,
        )
        .replacen(
            "    address: dhcp            # or a static",
            "    mac: aa:bb:cc:dd:ee:01\n    address: 10.100.20.11/24 # or a static",
            1,
        );
    assert!(profile.contains("vlan: {id: 20}") && profile.contains("10.100.20.11/24"));
    let ws = Workspace::with_profile(&profile);
    ws.ok(&["render", "--all"]);
    for (node, static_address) in [("master1", true), ("nodo1", false)] {
        let user_data = ws.seed_file(CLUSTER, node, "user-data");
        assert_cloud_init_schema_ok(&user_data);
        let doc = yaml_file(&user_data);
        assert_installer_schemas_ok(node, &to_json(&doc["autoinstall"]));
        let network = doc["autoinstall"]["network"].clone();
        assert_eq!(network["vlans"]["vlan20"]["id"], 20, "{node}: {network:?}");
        assert_eq!(network["vlans"]["vlan20"]["link"], "lan", "{node}");
        assert_eq!(network["ethernets"]["lan"]["dhcp4"], false, "{node}");

        let root = ws.path().join(format!("{node}-netplan-root"));
        std::fs::create_dir_all(root.join("etc/netplan")).unwrap();
        let mut doc = serde_yaml_ng::Mapping::new();
        doc.insert("network".into(), network);
        let file = root.join("etc/netplan/50-chocoimg.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        // netplan refuses world-readable files holding secrets only with a warning; keep
        // it quiet and like the installer's.
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let out = Command::new("netplan")
            .arg("generate")
            .arg("--root-dir")
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: netplan generate refused the seed's netplan:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let networkd = root.join("run/systemd/network");
        let read = |name: &str| {
            std::fs::read_to_string(networkd.join(name)).unwrap_or_else(|e| {
                let listing: Vec<_> = std::fs::read_dir(&networkd)
                    .map(|d| d.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                panic!("{node}: {name}: {e}; netplan wrote {listing:?}")
            })
        };
        let netdev = read("10-netplan-vlan20.netdev");
        assert!(
            netdev.contains("Kind=vlan") && netdev.contains("Id=20"),
            "{node}: {netdev}"
        );
        let lan = read("10-netplan-lan.network");
        assert!(lan.contains("VLAN=vlan20"), "{node}: {lan}");
        let vlan = read("10-netplan-vlan20.network");
        if static_address {
            assert!(
                vlan.contains("Address=10.100.20.11/24") && vlan.contains("Gateway=10.100.20.1"),
                "{node}: {vlan}"
            );
        } else {
            assert!(vlan.contains("DHCP=ipv4"), "{node}: {vlan}");
        }
    }
}
