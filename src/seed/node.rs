//! The node side of discovery, rendered into each node's seed: Avahi's configuration,
//! master1's announce service, nodo1's join service and timer.
//!
//! Every node: `avahi-config.sh` runs before each avahi-daemon start and limits mDNS to
//! the LAN interface over IPv4. master1: `announce.sh` (service + timer) publishes
//! `_k3s._tcp` with the proof once K3s answers; a sudoers drop-in lets the admin user
//! read the admin kubeconfig for `fetch-kubeconfig`. nodo1: `join.sh` (service + timer)
//! finds master1, writes the agent's server and token, and starts k3s-agent. Every node:
//! `stage.sh` (first boot's steps, then a timer) announces its bring-up stage
//! (`crate::bringup`) for `chocoimg watch`.
//!
//! `mode: ha` servers: K3s is installed but not started; `bootstrap.sh` (service + timer)
//! decides by discovery whether the server joins a verified member or, the designated
//! init server only, starts the cluster, writes that into a K3s drop-in and starts K3s.
//! Each server announces once it is a voting etcd member, carries the cluster's CA hash
//! when the laptop has recorded it, and has a fixed K3s node password.
use crate::bringup::{Stage, MAX_REASON};
use crate::plan::{NodePlan, Plan};
use crate::profile::{Mode, Role};
use crate::secrets::Secrets;
use crate::templates;
use anyhow::Result;

/// Where the node scripts live on the installed system.
pub const LIB_DIR: &str = "/usr/local/lib/chocoimg";
/// The agent token, readable by root only (the proof's key; nodo1's join secret).
pub const AGENT_TOKEN_PATH: &str = "/etc/chocoimg/agent-token";
/// The K3s config drop-in the join writes (K3s reads `config.yaml.d/*.yaml` after
/// `config.yaml`).
pub const JOIN_DROPIN_PATH: &str = "/etc/rancher/k3s/config.yaml.d/50-chocoimg-join.yaml";
/// The K3s config drop-in an HA server's bootstrap writes (join a member, or cluster-init).
pub const BOOTSTRAP_DROPIN_PATH: &str = "/etc/rancher/k3s/config.yaml.d/50-chocoimg-bootstrap.yaml";
/// The WAL folder of a server's embedded etcd: K3s takes etcd as initialized once it
/// exists (k3s pkg/etcd `IsInitialized`) and then ignores cluster-init and server, so the
/// bootstrap has nothing to decide. Not `db/etcd` itself: K3s writes `db/etcd/name` at
/// every start, a join that etcd refused included.
pub const ETCD_WAL_DIR: &str = "/var/lib/rancher/k3s/server/db/etcd/member/wal";
/// The cluster's CA hash as the laptop recorded it (`crate::cluster_ca`), on HA servers
/// built after the laptop saw the cluster: they join only a member serving it and never
/// start a cluster. Public (the hash is announced over mDNS anyway).
pub const CLUSTER_CA_PATH: &str = "/etc/chocoimg/cluster-ca";
/// K3s's node password (K3s reads it when present, else makes one).
pub const NODE_PASSWORD_PATH: &str = "/etc/rancher/node/password";
/// Where master1's announcement is written (Avahi reloads it on change).
pub const SERVICE_FILE_PATH: &str = "/etc/avahi/services/chocoimg-k3s.service";
/// Where every node's stage announcement is written.
pub const STAGE_SERVICE_FILE_PATH: &str = "/etc/avahi/services/chocoimg-node.service";
/// The tmpfiles.d rule that removes the announcements (K3s's on master1, the stage on
/// every node) at boot, before Avahi starts: the last boot's must not be published as
/// current before the scripts have looked at this boot.
pub const BOOT_TMPFILES_PATH: &str = "/etc/tmpfiles.d/chocoimg-announcements.conf";

/// A file the installed system gets on first boot (cloud-init `write_files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    /// Octal permissions as cloud-init takes them, e.g. "0644".
    pub permissions: String,
    pub content: String,
}

/// What discovery adds to a node's first boot.
#[derive(Debug, Clone, Default)]
pub struct NodeSetup {
    pub files: Vec<NodeFile>,
    /// Shell commands run once on first boot, before K3s is installed (in order).
    pub before_k3s: Vec<String>,
    /// Shell commands run once on first boot, after K3s is installed (in order).
    pub first_boot: Vec<String>,
}

impl NodeSetup {
    pub fn file(&self, path: &str) -> Option<&NodeFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// nodo1's reading of avahi-browse's answers: the TXT rule of `cluster::txt`, in Python
/// (on every Ubuntu node), so the agent token reaches the HMAC through the environment.
/// Not a template: join.sh runs it from its own folder.
pub const ANNOUNCEMENT_PY: &str = include_str!("../../templates/node/announcement.py");

/// Renders one node template with `ctx`.
pub fn render(name: &str, ctx: minijinja::Value) -> Result<String> {
    templates::render(&format!("node/{name}"), ctx)
}

/// The discovery pieces for `node`, by role. `cluster_ca`: the CA hash the laptop
/// recorded for the cluster (used by `mode: ha` servers only).
pub fn setup(
    plan: &Plan,
    secrets: &Secrets,
    node: &NodePlan,
    cluster_ca: Option<&str>,
) -> Result<NodeSetup> {
    let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
    let ha_server = plan.mode == Mode::Ha && node.role == Role::Server;
    // The designated init server: the profile's first server, and only that one.
    let init_server = ha_server && plan.server().hostname == node.hostname;
    let ctx = minijinja::context! {
        cluster => plan.cluster,
        node => node.hostname,
        role => node.role.to_string(),
        stages => stages,
        max_reason => MAX_REASON,
        k3s_version => plan.k3s.version,
        server_address => node.server_address.clone().unwrap_or_default(),
        user => plan.ssh.user,
        lib_dir => LIB_DIR,
        join_dropin => JOIN_DROPIN_PATH,
        service_file => SERVICE_FILE_PATH,
        stage_service_file => STAGE_SERVICE_FILE_PATH,
        ha => plan.mode == Mode::Ha,
        ha_server => ha_server,
        // What an agent's join calls the server it finds: in `ha` any of them.
        server_word => if plan.mode == Mode::Ha { "the server" } else { "master1" },
        init_server => if init_server { "yes" } else { "" },
        cluster_ca_path => CLUSTER_CA_PATH,
        etcd_wal_dir => ETCD_WAL_DIR,
        bootstrap_dropin => BOOTSTRAP_DROPIN_PATH,
    };
    let file = |path: String, permissions: &str, template: &str| -> Result<NodeFile> {
        Ok(NodeFile {
            path,
            permissions: permissions.into(),
            content: render(template, ctx.clone())?,
        })
    };
    let mut files = vec![
        NodeFile {
            path: AGENT_TOKEN_PATH.into(),
            permissions: "0600".into(),
            content: format!("{}\n", secrets.agent_token),
        },
        file(
            format!("{LIB_DIR}/avahi-config.sh"),
            "0755",
            "avahi-config.sh",
        )?,
        file(
            "/etc/systemd/system/avahi-daemon.service.d/chocoimg.conf".into(),
            "0644",
            "avahi-daemon-dropin.conf",
        )?,
        file(format!("{LIB_DIR}/stage.sh"), "0755", "stage.sh")?,
        file(
            "/etc/systemd/system/chocoimg-stage.service".into(),
            "0644",
            "chocoimg-stage.service",
        )?,
        file(
            "/etc/systemd/system/chocoimg-stage.timer".into(),
            "0644",
            "chocoimg-stage.timer",
        )?,
        file(BOOT_TMPFILES_PATH.into(), "0644", "chocoimg-boot.tmpfiles")?,
    ];
    // K3s refuses a node whose password differs from the one it registered under that
    // name: a fixed one lets a re-flashed node back in. An agent always; an HA server too
    // (a re-flashed server rejoins the others' datastore). A single server's datastore is
    // replaced by its reinstall, so it needs none.
    if node.role == Role::Agent || ha_server {
        files.push(NodeFile {
            path: NODE_PASSWORD_PATH.into(),
            permissions: "0600".into(),
            content: format!(
                "{}\n",
                crate::proof::node_password(&secrets.server_token, &plan.cluster, &node.hostname)
            ),
        });
    }
    // nodo1's join and an HA server's bootstrap read announcements with this.
    let judge = NodeFile {
        path: format!("{LIB_DIR}/announcement.py"),
        permissions: "0755".into(),
        content: ANNOUNCEMENT_PY.into(),
    };
    let units: &[&str] = match node.role {
        Role::Server if ha_server => {
            if let Some(ca) = cluster_ca {
                files.push(NodeFile {
                    path: CLUSTER_CA_PATH.into(),
                    permissions: "0644".into(),
                    content: format!("{ca}\n"),
                });
            }
            files.push(file(
                format!("{LIB_DIR}/bootstrap.sh"),
                "0755",
                "bootstrap.sh",
            )?);
            files.push(judge);
            files.push(file(
                "/etc/systemd/system/chocoimg-bootstrap.service".into(),
                "0644",
                "chocoimg-bootstrap.service",
            )?);
            files.push(file(
                "/etc/systemd/system/chocoimg-bootstrap.timer".into(),
                "0644",
                "chocoimg-bootstrap.timer",
            )?);
            files.push(file(
                "/etc/systemd/system/k3s.service.d/chocoimg-bootstrap.conf".into(),
                "0644",
                "k3s-server-dropin.conf",
            )?);
            files.extend(server_files(&file)?);
            &[
                "chocoimg-bootstrap.service",
                "chocoimg-bootstrap.timer",
                "chocoimg-announce.service",
                "chocoimg-announce.timer",
                "chocoimg-stage.timer",
            ]
        }
        Role::Server => {
            files.extend(server_files(&file)?);
            &[
                "chocoimg-announce.service",
                "chocoimg-announce.timer",
                "chocoimg-stage.timer",
            ]
        }
        Role::Agent => {
            files.push(file(format!("{LIB_DIR}/join.sh"), "0755", "join.sh")?);
            // Not a template: join.sh runs it from its own folder.
            files.push(judge);
            files.push(file(
                "/etc/systemd/system/chocoimg-join.service".into(),
                "0644",
                "chocoimg-join.service",
            )?);
            files.push(file(
                "/etc/systemd/system/chocoimg-join.timer".into(),
                "0644",
                "chocoimg-join.timer",
            )?);
            files.push(file(
                "/etc/systemd/system/k3s-agent.service.d/chocoimg-join.conf".into(),
                "0644",
                "k3s-agent-dropin.conf",
            )?);
            &[
                "chocoimg-join.service",
                "chocoimg-join.timer",
                "chocoimg-stage.timer",
            ]
        }
    };
    let units = units.join(" ");
    let stage = |arg: &str| format!("{LIB_DIR}/stage.sh {arg}");
    let before_k3s = vec![
        "systemctl daemon-reload".to_string(),
        // Avahi came up before cloud-init wrote its drop-in: restart it with our config,
        // before the first stage is announced.
        "systemctl restart avahi-daemon.service".to_string(),
        stage(Stage::FirstBoot.as_str()),
        stage(Stage::InstallingK3s.as_str()),
    ];
    let first_boot = vec![
        // The install's outcome: starting, waiting for master1, or failed.
        stage("installed"),
        format!("systemctl enable {units}"),
        // Not blocking cloud-init: the services wait (bounded) for K3s or for master1.
        format!("systemctl start --no-block {units}"),
    ];
    Ok(NodeSetup {
        files,
        before_k3s,
        first_boot,
    })
}

/// Every server's announce service and timer, and the sudoers drop-in for
/// `fetch-kubeconfig`.
fn server_files(file: &dyn Fn(String, &str, &str) -> Result<NodeFile>) -> Result<Vec<NodeFile>> {
    Ok(vec![
        file(format!("{LIB_DIR}/announce.sh"), "0755", "announce.sh")?,
        file(
            "/etc/systemd/system/chocoimg-announce.service".into(),
            "0644",
            "chocoimg-announce.service",
        )?,
        file(
            "/etc/systemd/system/chocoimg-announce.timer".into(),
            "0644",
            "chocoimg-announce.timer",
        )?,
        file(
            "/etc/sudoers.d/chocoimg-kubeconfig".into(),
            "0440",
            "sudoers",
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA hash and a token with quotes and spaces, as the proof tests use them.
    fn proof_inputs() -> (String, &'static str) {
        let ca = crate::proof::ca_hash(b"-----BEGIN CERTIFICATE-----\nstand-in\n");
        (ca, "0123abcd'x y")
    }

    /// Runs `script` (after lib.sh) with sh, its arguments `args`; its stdout.
    fn run_with_lib(script: &str, args: &[&str]) -> String {
        let lib = render("lib.sh", minijinja::context! {}).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("PROG=test\n{lib}\n{script}"), "sh"])
            .args(args)
            .output()
            .expect("running sh");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The shell formula the node scripts run and proof.rs agree (runs it for real).
    #[test]
    fn shell_proof_matches_proof_rs() {
        let (ca, token) = proof_inputs();
        let stdout = run_with_lib(
            "chocoimg_proof \"$1\" \"$2\" \"$3\"\nis_sha256 \"$2\" && echo ok\n",
            &["chocolandiadc-mvp", &ca, token],
        );
        let mut lines = stdout.lines();
        assert_eq!(
            lines.next().unwrap(),
            crate::proof::proof(token, "chocolandiadc-mvp", &ca)
        );
        assert_eq!(lines.next(), Some("ok"));
    }

    /// An HA server's server proof (ha-server.sh) is src/proof.rs's, and never the agent
    /// proof over the same claim.
    #[test]
    fn shell_server_proof_matches_proof_rs() {
        let (ca, token) = proof_inputs();
        let ha = render("ha-server.sh", minijinja::context! {}).unwrap();
        let stdout = run_with_lib(
            &format!(
                "CHOCOIMG_K3S_CONFIG=/dev/null\n{ha}\nchocoimg_server_proof \"$1\" \"$2\" \"$3\"\n"
            ),
            &["chocolandiadc-ha", &ca, token],
        );
        let want = crate::proof::server_proof(token, "chocolandiadc-ha", &ca);
        assert_eq!(stdout.trim_end(), want);
        assert_ne!(want, crate::proof::proof(token, "chocolandiadc-ha", &ca));
    }
}
