//! Drives `image::build` alone (no profile, no downloads) for bench/build.sh:
//!   image_build ISO OUTPUT PAYLOAD
//! PAYLOAD goes on CIDATA as k3s/k3s; the seed is a fixed stand-in.
use chocoimg::artifacts::PayloadFile;
use chocoimg::image::{self, BuildRequest, Identity, ProgressStyle};
use chocoimg::seed::SeedFile;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [iso, output, payload] = args.as_slice() else {
        anyhow::bail!("usage: image_build ISO OUTPUT PAYLOAD");
    };
    let identity = Identity {
        cluster: "bench".into(),
        node: "master1".into(),
        role: "server".into(),
        k3s_version: "v1.28.15+k3s1".into(),
        ubuntu_release: "22.04.5".into(),
        chocoimg_version: env!("CARGO_PKG_VERSION").into(),
    };
    let seed = vec![
        SeedFile {
            name: "user-data".into(),
            contents: b"#cloud-config\nautoinstall:\n  version: 1\n".to_vec(),
        },
        SeedFile {
            name: "meta-data".into(),
            contents: b"instance-id: master1\n".to_vec(),
        },
    ];
    let payload = vec![PayloadFile {
        name: "k3s/k3s".into(),
        source: payload.clone(),
        sha256: chocoimg::fsutil::sha256_file(payload)?,
    }];
    let cancel = AtomicBool::new(false);
    let built = image::build(&BuildRequest {
        iso,
        output,
        identity: &identity,
        seed: &seed,
        payload: &payload,
        force: true,
        progress: ProgressStyle::Quiet,
        cancel: &cancel,
    })?;
    println!("{}  {}", built.sha256, built.image.display());
    Ok(())
}
