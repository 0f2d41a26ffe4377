//! Fixtures for the cluster tests: a profile with its secrets and SSH key in a temp dir,
//! certificates made with the `openssl` CLI, and the K3s TLS stand-in (a real K3s cannot
//! run here; the stand-in serves /cacerts and a client-certificate-guarded API).
use chocoimg::plan::Plan;
use chocoimg::secrets::Secrets;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub profile: PathBuf,
    pub out_root: PathBuf,
    pub home: PathBuf,
    pub plan: Plan,
    pub secrets: Secrets,
    /// The operator's private key (its .pub is in the profile).
    pub ssh_key: PathBuf,
}

impl Cluster {
    /// A two-node profile named `name`; `server_address` pins nodo1's server.
    pub fn new(name: &str, user: &str, server_address: Option<&str>) -> Cluster {
        let fixed = server_address
            .map(|a| format!("    server_address: {a}\n"))
            .unwrap_or_default();
        Cluster::with_nodes(
            name,
            user,
            "",
            &format!("  - hostname: master1\n    role: server\n  - hostname: nodo1\n    role: agent\n{fixed}"),
        )
    }

    /// An HA profile named `name`: master1-3 (embedded etcd) and nodo1.
    pub fn ha(name: &str, user: &str) -> Cluster {
        Cluster::with_nodes(
            name,
            user,
            "  mode: ha\n  datastore: etcd\n",
            "  - hostname: master1\n    role: server\n  - hostname: master2\n    role: server\n  - hostname: master3\n    role: server\n  - hostname: nodo1\n    role: agent\n",
        )
    }

    /// A profile named `name` with `cluster_extra` under `cluster:` and `nodes` (YAML list
    /// items) under `nodes:`.
    fn with_nodes(name: &str, user: &str, cluster_extra: &str, nodes: &str) -> Cluster {
        super::require_tool("ssh-keygen");
        let dir = tempfile::tempdir().unwrap();
        let ssh_key = dir.path().join("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator", "-f"])
            .arg(&ssh_key)
            .status()
            .unwrap();
        assert!(st.success());
        let profile = dir.path().join("profile.yaml");
        std::fs::write(
            &profile,
            format!(
                "cluster:\n  name: {name}\n{cluster_extra}ssh:\n  user: {user}\n  public_key: {}.pub\nnodes:\n{nodes}",
                ssh_key.display()
            ),
        )
        .unwrap();
        let out_root = dir.path().join("out");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let plan = chocoimg::plan::load(&profile, &out_root).expect("test profile is valid");
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.hostname.as_str()).collect();
        let secrets = chocoimg::secrets::load_or_create(&plan.secrets_path(), &names)
            .unwrap()
            .secrets;
        Cluster {
            dir,
            profile,
            out_root,
            home,
            plan,
            secrets,
            ssh_key,
        }
    }

    /// The env a child `chocoimg` gets: this profile, outputs and HOME in the temp dir.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CHOCOIMG_PROFILE", self.profile.display().to_string()),
            ("CHOCOIMG_OUT", self.out_root.display().to_string()),
            ("HOME", self.home.display().to_string()),
            ("KUBECONFIG", String::new()),
        ]
    }

    pub fn chocoimg(&self) -> Command {
        let mut c = super::chocoimg();
        c.envs(self.envs());
        c
    }

    /// Renders `node`'s discovery files into `root` (paths kept below it) and returns
    /// the setup.
    pub fn node_setup(&self, node: &str) -> chocoimg::seed::node::NodeSetup {
        self.node_setup_with_ca(node, None)
    }

    /// `node_setup`, for a seed built after the laptop recorded the cluster's CA `ca`.
    pub fn node_setup_with_ca(
        &self,
        node: &str,
        ca: Option<&str>,
    ) -> chocoimg::seed::node::NodeSetup {
        chocoimg::seed::node::setup(&self.plan, &self.secrets, self.plan.node(node).unwrap(), ca)
            .unwrap()
    }

    /// Writes `node`'s files under `root` and returns `root`.
    pub fn install_node_files(&self, node: &str, root: &Path) -> PathBuf {
        self.install_node_files_with_ca(node, root, None)
    }

    /// `install_node_files` for a seed carrying the recorded CA `ca`, with K3s's own
    /// config.yaml too.
    pub fn install_node_files_with_ca(&self, node: &str, root: &Path, ca: Option<&str>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let config = chocoimg::seed::node::NodeFile {
            path: chocoimg::seed::K3S_CONFIG.into(),
            permissions: "0600".into(),
            content: chocoimg::seed::k3s_config(
                &self.plan,
                &self.secrets,
                self.plan.node(node).unwrap(),
            )
            .unwrap(),
        };
        let files = self.node_setup_with_ca(node, ca).files;
        for f in files.into_iter().chain(std::iter::once(config)) {
            let p = root.join(f.path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &f.content).unwrap();
            let mode = u32::from_str_radix(&f.permissions, 8).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        root.to_path_buf()
    }
}

/// A CA, a server certificate for `sans`, and a client certificate, made with openssl.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A P-256 key in `dir/name`, SEC1 PEM (like K3s's client-key-data).
fn ec_key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    super::require_tool("openssl");
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn pki(dir: &Path, cn: &str, sans: &[&str]) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    // SEC1 EC keys, like K3s's client-key-data.
    for key in ["ca.key", "server.key", "client.key"] {
        ec_key(dir, key);
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "30",
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            "ca.crt",
        ],
    );
    let san = sans.join(",");
    std::fs::write(
        dir.join("ext.cnf"),
        format!("[s]\nsubjectAltName={san}\n[c]\nextendedKeyUsage=clientAuth\n"),
    )
    .unwrap();
    // A key's certificate, signed by the CA, with the extensions of section `ext`.
    let issue = |name: &str, subject: &str, ext: &str| {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            dir,
            &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "ext.cnf",
                "-extensions",
                ext,
                "-out",
                &crt,
            ],
        );
    };
    issue("server", "/CN=k3s", "s");
    issue("client", "/O=system:masters/CN=system:admin", "c");
    Pki {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

impl Pki {
    /// Another server certificate (and key) from this CA, for `ip`, in `dir`.
    pub fn another_server_cert(&self, dir: &Path, ip: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = self.ca.with_file_name("ca.key");
        std::fs::write(
            dir.join("ext.cnf"),
            format!("[s]\nsubjectAltName=IP:{ip}\n"),
        )
        .unwrap();
        let (ca, ca_key) = (self.ca.display().to_string(), ca_key.display().to_string());
        ec_key(dir, "server.key");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-subj",
                "/CN=k3s",
                "-key",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                "server.csr",
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "s",
                "-out",
                "server.crt",
            ],
        );
        (dir.join("server.crt"), dir.join("server.key"))
    }

    /// A K3s-style admin kubeconfig (`default` names, 127.0.0.1) for this PKI.
    pub fn k3s_kubeconfig(&self) -> String {
        use base64::Engine;
        let b64 =
            |p: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&self.ca),
            b64(&self.client_cert),
            b64(&self.client_key)
        )
    }
}

/// The K3s TLS stand-in, killed on drop.
pub struct Standin {
    child: Child,
    pub port: u16,
}

/// Starts the stand-in from `cmd` (python3 or `ip netns exec NS python3`); `args` are
/// the script's arguments.
pub fn standin(mut cmd: Command, args: &[String]) -> Standin {
    let script = super::repo().join("tests/support/k3s_standin.py");
    cmd.arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("starting the K3s stand-in");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("stand-in did not start: {line:?}"));
    Standin { child, port }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `systemctl` stand-in for the node scripts (no systemd in a namespace): records each
/// call in `systemctl.log` and answers `is-active` from the file `active` (present =
/// active), `show` from them (ActiveState: `failed` present = failed) and `nrestarts`.
/// With the file `starting`, k3s-agent is stuck starting (as K3s is while its server is
/// unreachable): `start` changes nothing, `restart` gets it running.
pub fn fake_systemctl(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> {d}/systemctl.log\ncase $1 in\nis-active) [ -e {d}/active ] ;;\nshow) case $* in *ActiveState*) if [ -e {d}/failed ]; then echo failed; elif [ -e {d}/active ]; then echo active; else echo inactive; fi ;; *) cat {d}/nrestarts 2>/dev/null || echo 0 ;; esac ;;\nstart) [ -e {d}/starting ] || touch {d}/active ;;\nrestart) rm -f {d}/starting; touch {d}/active ;;\nesac\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
