//! Pinned artifacts: download, resume, verify, cache, lock file. The release servers
//! (GitHub, releases.ubuntu.com) cannot be reached here, so a local HTTP server
//! (support::http::TestServer on 127.0.0.1) stands in for them, with made-up bytes in
//! place of the real ISO and K3s files.
use crate::support::http::{k3s_release, sha256sums, TestServer};
use chocoimg::artifacts::{self, FetchOptions, Fetched, LockMode};
use sha2::Digest;
use std::path::{Path, PathBuf};

const VERSION: &str = "v1.28.15+k3s1";
const ISO_PATH: &str = "/ubuntu/22.04.5/ubuntu-22.04.5-live-server-amd64.iso";

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Deterministic filler bytes, different per seed.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    srv: TestServer,
    iso: Vec<u8>,
    k3s: Vec<u8>,
    script: Vec<u8>,
    airgap: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let iso = bytes(3 << 20, 1);
        let k3s = bytes(1 << 20, 2);
        let airgap = bytes(300 << 10, 3);
        let script = b"#!/bin/sh\necho install k3s\n".to_vec();
        let mut files = k3s_release(
            VERSION,
            &[
                ("k3s", &k3s[..]),
                ("k3s-airgap-images-amd64.tar.zst", &airgap[..]),
            ],
        );
        files.push((ISO_PATH.to_string(), iso.clone()));
        files.push((format!("/install/{VERSION}/install.sh"), script.clone()));
        let fx = Fixture {
            dir: tempfile::tempdir().unwrap(),
            srv: TestServer::start(files),
            iso,
            k3s,
            script,
            airgap,
        };
        let iso_sha = sha(&fx.iso);
        fx.write_profile(VERSION, &iso_sha);
        fx
    }

    fn profile_path(&self) -> PathBuf {
        self.dir.path().join("profiles").join("test.yaml")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.path().join("profiles").join("test.lock")
    }

    fn write_profile(&self, version: &str, iso_sha256: &str) {
        let key_path = self.dir.path().join("id_ed25519.pub");
        if !key_path.exists() {
            let key =
                ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
                    .unwrap();
            std::fs::write(&key_path, key.public_key().to_openssh().unwrap()).unwrap();
        }
        let url = self.srv.url();
        let profile = format!(
            r#"cluster:
  name: artifacts-test
k3s:
  version: {version}
  release_base_url: {url}/k3s
  install_script_url: "{url}/install/{{version}}/install.sh"
ubuntu:
  release: 22.04.5
  iso_url: {url}{ISO_PATH}
  iso_sha256: {iso_sha256}
ssh:
  user: ubuntu
  public_key: {key}
nodes:
  - hostname: master1
    role: server
  - hostname: nodo1
    role: agent
"#,
            key = key_path.display()
        );
        std::fs::create_dir_all(self.profile_path().parent().unwrap()).unwrap();
        std::fs::write(self.profile_path(), profile).unwrap();
    }

    /// A plan whose outputs (and cache) live under `<tmp>/<out>`.
    fn plan(&self, out: &str) -> chocoimg::plan::Plan {
        chocoimg::plan::load(&self.profile_path(), &self.dir.path().join(out))
            .unwrap_or_else(|p| panic!("test profile does not load: {p}"))
    }

    fn fetch(&self, out: &str, opts: &FetchOptions) -> anyhow::Result<Fetched> {
        artifacts::fetch(&self.plan(out), opts)
    }

    fn cache(&self, out: &str) -> PathBuf {
        self.dir.path().join(out).join("cache")
    }
}

/// Plain lines; `TRY_BARS=1` (in a terminal, with --nocapture) shows the progress bars.
fn plain() -> FetchOptions {
    FetchOptions {
        progress_bars: std::env::var_os("TRY_BARS").is_some(),
        ..FetchOptions::default()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn err_text(r: anyhow::Result<Fetched>) -> (String, i32) {
    let err = r.expect_err("fetch should have been refused");
    // Shown with --nocapture, to read the messages users get.
    eprintln!("{err:#}");
    (format!("{err:#}"), chocoimg::errors::exit_code_for(&err))
}

#[test]
fn good_files_are_fetched_verified_cached_and_locked() {
    let fx = Fixture::new();
    let got = fx.fetch("out", &plain()).unwrap();

    assert_eq!(got.iso_sha256, sha(&fx.iso));
    assert_eq!(std::fs::read(&got.iso).unwrap(), fx.iso);
    assert!(got.iso.starts_with(fx.cache("out").join("sha256")));
    let names: Vec<_> = got.payload.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["k3s/k3s", "k3s/install.sh"]);
    for (file, want) in got.payload.iter().zip([&fx.k3s, &fx.script]) {
        assert_eq!(&std::fs::read(&file.source).unwrap(), want, "{}", file.name);
        assert_eq!(file.sha256, sha(want));
    }
    // The install script URL had `{version}` filled in (with `+` as %2B on the wire).
    assert!(fx
        .srv
        .requests()
        .iter()
        .any(|r| r.path == format!("/install/{VERSION}/install.sh")));

    let lock = std::fs::read_to_string(fx.lock_path()).unwrap();
    assert!(lock.starts_with("# chocoimg lock file"), "{lock}");
    let parsed = artifacts::Lock::load(&fx.lock_path()).unwrap();
    let k3s = parsed.k3s.unwrap();
    assert_eq!(k3s.version, VERSION);
    assert_eq!(k3s.files["k3s"].sha256, sha(&fx.k3s));
    assert_eq!(
        k3s.files["k3s"].url,
        format!("{}/k3s/v1.28.15%2Bk3s1/k3s", fx.srv.url())
    );
    assert_eq!(k3s.files["install.sh"].sha256, sha(&fx.script));
    assert_eq!(parsed.ubuntu.unwrap().sha256, sha(&fx.iso));

    // Second fetch: everything is in the cache and pinned by the lock: no request at all.
    fx.srv.clear_requests();
    let again = fx.fetch("out", &plain()).unwrap();
    assert_eq!(
        fx.srv.requests(),
        vec![],
        "a cached fetch must not download"
    );
    assert_eq!(again.iso, got.iso);
    assert_eq!(again.payload, got.payload);
    assert!(files_in(&fx.cache("out").join("partial")).is_empty());
}

#[test]
fn airgap_adds_the_image_tarball() {
    let fx = Fixture::new();
    let opts = FetchOptions {
        airgap: true,
        ..plain()
    };
    let got = fx.fetch("out", &opts).unwrap();
    let airgap = got
        .payload
        .iter()
        .find(|p| p.name == "k3s/k3s-airgap-images-amd64.tar.zst")
        .expect("the airgap tarball is in the payload");
    assert_eq!(airgap.sha256, sha(&fx.airgap));
    let lock = artifacts::Lock::load(&fx.lock_path()).unwrap();
    assert!(lock
        .k3s
        .unwrap()
        .files
        .contains_key("k3s-airgap-images-amd64.tar.zst"));
}

#[test]
fn a_wrong_iso_checksum_is_refused_and_nothing_is_cached() {
    let fx = Fixture::new();
    let pinned = sha(b"some other ISO");
    fx.write_profile(VERSION, &pinned);
    let (msg, code) = err_text(fx.fetch("out", &plain()));
    assert_eq!(code, chocoimg::errors::EXIT_BAD_INPUT, "{msg}");
    assert!(msg.contains("refusing Ubuntu 22.04.5 ISO"), "{msg}");
    assert!(
        msg.contains(&pinned) && msg.contains(&sha(&fx.iso)),
        "{msg}"
    );
    assert!(msg.contains("ubuntu.iso_url"), "{msg}");
    assert!(!fx.cache("out").join("sha256").join(sha(&fx.iso)).exists());
    assert!(files_in(&fx.cache("out").join("partial")).is_empty());
    assert!(
        !fx.lock_path().exists(),
        "a failed fetch must not write the lock"
    );
}

#[test]
fn a_k3s_binary_that_does_not_match_the_release_sums_is_refused() {
    let fx = Fixture::new();
    // The release's list says one thing, the server sends other bytes.
    let listed = bytes(1 << 20, 9);
    fx.srv.put(
        &format!("/k3s/{VERSION}/sha256sum-amd64.txt"),
        sha256sums(&[("k3s", &listed[..])]),
    );
    let (msg, _) = err_text(fx.fetch("out", &plain()));
    assert!(msg.contains("refusing K3s v1.28.15+k3s1 binary"), "{msg}");
    assert!(
        msg.contains(&sha(&listed)) && msg.contains(&sha(&fx.k3s)),
        "{msg}"
    );
    assert!(files_in(&fx.cache("out").join("sha256")).is_empty());
    assert!(files_in(&fx.cache("out").join("partial")).is_empty());
}

#[test]
fn a_transfer_cut_halfway_resumes_with_a_range_request() {
    let fx = Fixture::new();
    let half = fx.iso.len() / 2;
    fx.srv.cut_once(ISO_PATH, half);
    let got = fx.fetch("out", &plain()).unwrap();
    assert_eq!(crate_sha_file(&got.iso), sha(&fx.iso));

    assert_eq!(
        fx.srv.ranges(ISO_PATH),
        [None, Some(format!("bytes={half}-"))],
        "the second request must resume where the first stopped"
    );
}

#[test]
fn a_resume_survives_a_redirect() {
    // GitHub answers release downloads with a redirect to its storage host.
    let fx = Fixture::new();
    let stored = "/storage/k3s-blob";
    fx.srv.put(stored, fx.k3s.clone());
    fx.srv.redirect(&format!("/k3s/{VERSION}/k3s"), stored);
    fx.srv.cut_once(stored, 1000);
    let got = fx.fetch("out", &plain()).unwrap();
    assert_eq!(got.payload[0].sha256, sha(&fx.k3s));
    assert_eq!(
        fx.srv.ranges(stored),
        [None, Some("bytes=1000-".to_string())]
    );
}

#[test]
fn a_resume_onto_stale_bytes_starts_over_once() {
    let fx = Fixture::new();
    let plan = fx.plan("out");
    // An earlier run left bytes of some other file under the same URL.
    let part = artifacts::Cache::new(&plan.cache_dir).partial_path(&plan.ubuntu.iso_url);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, bytes(5000, 99)).unwrap();
    let got = artifacts::fetch(&plan, &plain()).unwrap();
    assert_eq!(crate_sha_file(&got.iso), sha(&fx.iso));
    assert_eq!(
        fx.srv.ranges(ISO_PATH),
        [Some("bytes=5000-".to_string()), None]
    );
}

#[test]
fn a_server_without_range_support_gets_a_fresh_start() {
    let fx = Fixture::new();
    fx.srv.ignore_range(true);
    fx.srv.cut_once(ISO_PATH, 1000);
    let got = fx.fetch("out", &plain()).unwrap();
    assert_eq!(crate_sha_file(&got.iso), sha(&fx.iso));
    let ranged = fx.srv.ranges(ISO_PATH).iter().flatten().count();
    assert_eq!(
        ranged, 1,
        "it asked for a range and got the whole file (200)"
    );
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_resumed() {
    let fx = Fixture::new();
    let plan = fx.plan("out");
    // What an interrupted earlier run leaves behind.
    let cache = artifacts::Cache::new(&plan.cache_dir);
    let part = cache.partial_path(&plan.ubuntu.iso_url);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &fx.iso[..12345]).unwrap();
    let got = artifacts::fetch(&plan, &plain()).unwrap();
    assert_eq!(crate_sha_file(&got.iso), sha(&fx.iso));
    assert_eq!(fx.srv.ranges(ISO_PATH), [Some("bytes=12345-".to_string())]);
    assert!(!part.exists());
}

#[test]
fn a_missing_file_names_the_url_and_the_fix() {
    let fx = Fixture::new();
    fx.srv.remove(&format!("/k3s/{VERSION}/k3s"));
    let (msg, code) = err_text(fx.fetch("out", &plain()));
    assert_eq!(code, chocoimg::errors::EXIT_BAD_INPUT, "{msg}");
    let url = format!("{}/k3s/v1.28.15%2Bk3s1/k3s", fx.srv.url());
    assert!(msg.contains(&format!("no such file at {url}")), "{msg}");
    assert!(msg.contains("check k3s.version"), "{msg}");
}

#[test]
fn an_unreachable_server_says_so() {
    let fx = Fixture::new();
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(fx.profile_path()).unwrap();
    let text = text.replace(&fx.srv.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(fx.profile_path(), text).unwrap();
    let (msg, _) = err_text(fx.fetch("out", &plain()));
    assert!(msg.contains("cannot connect to"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

#[test]
fn a_changed_install_script_behind_the_same_url_is_refused_by_the_lock() {
    let fx = Fixture::new();
    fx.fetch("out", &plain()).unwrap();
    let lock_before = std::fs::read_to_string(fx.lock_path()).unwrap();

    let changed = b"#!/bin/sh\necho something else\n".to_vec();
    fx.srv
        .put(&format!("/install/{VERSION}/install.sh"), changed.clone());
    // A fresh cache, as on another laptop: the script must be downloaded again.
    let (msg, code) = err_text(fx.fetch("out2", &plain()));
    assert_eq!(code, chocoimg::errors::EXIT_BAD_INPUT, "{msg}");
    assert!(
        msg.contains("refusing the K3s v1.28.15+k3s1 install script"),
        "{msg}"
    );
    assert!(
        msg.contains(&sha(&fx.script)) && msg.contains(&sha(&changed)),
        "{msg}"
    );
    assert!(msg.contains("delete the `install.sh` entry"), "{msg}");
    assert!(msg.contains(&fx.lock_path().display().to_string()), "{msg}");
    assert_eq!(
        std::fs::read_to_string(fx.lock_path()).unwrap(),
        lock_before
    );
    assert!(!fx.cache("out2").join("sha256").join(sha(&changed)).exists());

    // Accepting it deliberately records the new hash.
    artifacts::fetch_with(&fx.plan("out2"), &plain(), LockMode::Update).unwrap();
    let lock = artifacts::Lock::load(&fx.lock_path()).unwrap();
    assert_eq!(lock.k3s.unwrap().files["install.sh"].sha256, sha(&changed));
}

#[test]
fn a_retagged_k3s_release_is_refused_by_the_lock() {
    let fx = Fixture::new();
    fx.fetch("out", &plain()).unwrap();

    // Same version, new bytes and a matching new checksum list: only the lock notices.
    let retagged = bytes(1 << 20, 7);
    for (path, body) in k3s_release(VERSION, &[("k3s", &retagged[..])]) {
        fx.srv.put(&path, body);
    }
    let (msg, _) = err_text(fx.fetch("out2", &plain()));
    assert!(
        msg.contains("refusing the K3s v1.28.15+k3s1 binary"),
        "{msg}"
    );
    assert!(
        msg.contains(&sha(&fx.k3s)) && msg.contains(&sha(&retagged)),
        "{msg}"
    );
    assert!(
        msg.contains("delete the `k3s` entry under `k3s.files`"),
        "{msg}"
    );

    // Deleting the entry accepts the change.
    let mut lock = artifacts::Lock::load(&fx.lock_path()).unwrap();
    lock.k3s.as_mut().unwrap().files.remove("k3s");
    lock.save(&fx.lock_path()).unwrap();
    let got = fx.fetch("out2", &plain()).unwrap();
    assert_eq!(got.payload[0].sha256, sha(&retagged));
}

#[test]
fn a_new_k3s_version_updates_the_lock() {
    let fx = Fixture::new();
    fx.fetch("out", &plain()).unwrap();
    let next = "v1.28.16+k3s1";
    let binary = bytes(1 << 20, 11);
    for (path, body) in k3s_release(next, &[("k3s", &binary[..])]) {
        fx.srv.put(&path, body);
    }
    fx.srv.put(
        &format!("/install/{next}/install.sh"),
        b"#!/bin/sh\n# next\n".to_vec(),
    );
    fx.write_profile(next, &sha(&fx.iso));
    let got = fx.fetch("out", &plain()).unwrap();
    assert_eq!(got.payload[0].sha256, sha(&binary));
    let lock = artifacts::Lock::load(&fx.lock_path()).unwrap();
    let k3s = lock.k3s.unwrap();
    assert_eq!(k3s.version, next);
    assert_eq!(k3s.files["k3s"].sha256, sha(&binary));
}

#[test]
fn a_changed_iso_pin_behind_the_same_release_is_refused_by_the_lock() {
    let fx = Fixture::new();
    fx.fetch("out", &plain()).unwrap();
    let other = bytes(3 << 20, 5);
    fx.srv.put(ISO_PATH, other.clone());
    fx.write_profile(VERSION, &sha(&other));
    fx.srv.clear_requests();
    let (msg, _) = err_text(fx.fetch("out", &plain()));
    assert!(msg.contains("ubuntu.iso_sha256 is now"), "{msg}");
    assert!(msg.contains("delete the `ubuntu:` entry"), "{msg}");
    assert_eq!(
        fx.srv.ranges(ISO_PATH),
        [] as [Option<String>; 0],
        "refused before downloading"
    );
}

#[test]
fn a_local_iso_is_checked_and_used_in_place() {
    let fx = Fixture::new();
    let wrong = fx.dir.path().join("wrong.iso");
    std::fs::write(&wrong, bytes(1 << 20, 4)).unwrap();
    let opts = FetchOptions {
        iso: Some(wrong.clone()),
        ..plain()
    };
    let (msg, code) = err_text(fx.fetch("out", &opts));
    assert_eq!(code, chocoimg::errors::EXIT_BAD_INPUT, "{msg}");
    assert!(
        msg.contains("is not the pinned Ubuntu 22.04.5 ISO"),
        "{msg}"
    );
    assert!(msg.contains(&sha(&std::fs::read(&wrong).unwrap())), "{msg}");
    assert!(msg.contains(&sha(&fx.iso)), "{msg}");
    assert!(
        msg.contains(&format!("{}{ISO_PATH}", fx.srv.url())),
        "{msg}"
    );
    assert!(fx.srv.requests().is_empty(), "refused before any download");

    let right = fx.dir.path().join("right.iso");
    std::fs::write(&right, &fx.iso).unwrap();
    let opts = FetchOptions {
        iso: Some(right.clone()),
        ..plain()
    };
    let got = fx.fetch("out", &opts).unwrap();
    assert_eq!(got.iso, right);
    assert!(fx.srv.requests().iter().all(|r| r.path != ISO_PATH));
}

fn crate_sha_file(path: &Path) -> String {
    chocoimg::fsutil::sha256_file(path).unwrap()
}
