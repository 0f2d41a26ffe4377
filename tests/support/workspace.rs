//! A throw-away place to run `chocoimg` as a user would: its own HOME (with the
//! operator's public key in ~/.ssh), its own output root, and a profile.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub profile: PathBuf,
}

impl Workspace {
    /// A workspace using the shipped default profile, unchanged.
    pub fn with_default_profile() -> Workspace {
        let text = std::fs::read_to_string(super::repo().join("profiles/chocolandiadc-mvp.yaml"))
            .expect("the default profile is in the repo");
        Workspace::with_profile(&text)
    }

    /// A workspace with `profile_text` as profiles/test.yaml.
    pub fn with_profile(profile_text: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let ssh = dir.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::copy(
            super::repo().join("tests/data/operator_id_ed25519.pub"),
            ssh.join("id_ed25519.pub"),
        )
        .unwrap();
        let profile = dir.path().join("profiles/test.yaml");
        std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
        std::fs::write(&profile, profile_text).unwrap();
        Workspace { dir, profile }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    pub fn out(&self) -> PathBuf {
        self.path().join("out")
    }

    /// `chocoimg -p <profile> ARGS` with this workspace's HOME and output root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = super::chocoimg();
        c.arg("-p").arg(&self.profile).args(args);
        c.env("HOME", self.home())
            .env("CHOCOIMG_OUT", self.out())
            .env_remove("CHOCOIMG_PROFILE")
            .env_remove("KUBECONFIG")
            .current_dir(self.path());
        c
    }

    /// Runs and returns the output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("chocoimg runs")
    }

    /// Runs and panics with both streams unless it succeeded.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "chocoimg {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// What `chocoimg render` writes as `node`'s user-data (into ./rendered).
    pub fn rendered_user_data(&self, node: &str) -> String {
        let dir = self.path().join("rendered");
        self.ok(&["render", "--node", node, "--out", dir.to_str().unwrap()]);
        std::fs::read_to_string(dir.join(node).join("user-data")).unwrap()
    }

    /// The rendered seed file of a node (after `render`).
    pub fn seed_file(&self, cluster: &str, node: &str, name: &str) -> PathBuf {
        self.out().join(cluster).join(node).join("seed").join(name)
    }

    /// Every file under the output root (to prove a failed command wrote nothing).
    pub fn files_in_out(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, acc: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, acc);
                } else {
                    acc.push(p);
                }
            }
        }
        let mut acc = Vec::new();
        walk(&self.out(), &mut acc);
        acc
    }
}
