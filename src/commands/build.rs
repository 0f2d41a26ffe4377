//! `chocoimg build`: phase one checks and gathers everything (plan, secrets, seeds,
//! verified artifacts); phase two writes one image per node, then its manifest.
use crate::artifacts::{self, FetchOptions, LockMode};
use crate::cli::{BuildArgs, Global};
use crate::image::{self, manifest::Manifest, BuildRequest, Identity, ImageError, ProgressStyle};
use crate::{seed, BadInput};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Set by Ctrl-C; the image writer checks it between chunks.
static CANCEL: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<()> = OnceLock::new();

pub fn run(global: &Global, args: &BuildArgs) -> Result<i32> {
    let mut plan = super::load_plan(global)?;
    // The seed's late-commands install the image tarball only when the plan says so.
    plan.k3s.airgap |= args.airgap;
    let plan = plan;
    let nodes = super::render::select_nodes(&plan, &args.nodes)?;
    for n in &nodes {
        let out = plan.image_path(n);
        if out.exists() && !args.force {
            return Err(BadInput(format!(
                "{} already exists; pass --force to replace it",
                out.display()
            ))
            .into());
        }
    }
    let progress = ProgressStyle::for_stderr();
    let lock_mode = if args.update_lock {
        LockMode::Update
    } else {
        LockMode::Enforce
    };
    let (fetched, lock) = artifacts::fetch_unsaved(
        &plan,
        &FetchOptions {
            iso: args.iso.clone(),
            airgap: plan.k3s.airgap,
            progress_bars: progress == ProgressStyle::Bars,
        },
        lock_mode,
    )?;
    let identities: Vec<Identity> = nodes
        .iter()
        .map(|node| Identity {
            cluster: plan.cluster.clone(),
            node: node.hostname.clone(),
            role: node.role.to_string(),
            k3s_version: plan.k3s.version.clone(),
            ubuntu_release: plan.ubuntu.release.clone(),
            chocoimg_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .collect();
    for id in &identities {
        image::check_iso(&fetched.iso, id).map_err(as_bad_input)?;
    }
    // Secrets only once the inputs are known good: a refused ISO creates nothing.
    let secrets = super::render::prepare_secrets(&plan)?;
    let seeds = nodes
        .iter()
        .map(|n| seed::render(&plan, &secrets, n))
        .collect::<Result<Vec<_>>>()?;
    let outputs: Vec<PathBuf> = nodes.iter().map(|n| plan.image_path(n)).collect();
    let request = |i: usize| BuildRequest {
        iso: &fetched.iso,
        output: &outputs[i],
        identity: &identities[i],
        seed: &seeds[i].files,
        payload: &fetched.payload,
        force: args.force,
        progress,
        cancel: &CANCEL,
    };
    // Every node's image is planned (and the ISO refused, if it must be) before any
    // is written.
    for i in 0..nodes.len() {
        image::check(&request(i)).map_err(as_bad_input)?;
    }
    // Only artifacts that make an image are recorded beside the profile.
    lock.save()?;

    HANDLER.get_or_init(|| {
        // Only one handler per process can be set; without it Ctrl-C kills at once and
        // a `.part` file may stay behind, but never anything under the final name.
        let _ = ctrlc::set_handler(|| CANCEL.store(true, Ordering::SeqCst));
    });
    for (i, node) in nodes.iter().enumerate() {
        let built = image::build(&request(i)).map_err(as_bad_input)?;
        let manifest = Manifest::new(&plan, node, &seeds[i], &fetched, &built);
        let manifest_path = plan
            .out_dir
            .join(format!("{}.manifest.json", node.hostname));
        let mut json = serde_json::to_vec_pretty(&manifest)?;
        json.push(b'\n');
        crate::fsutil::write_atomic(&manifest_path, &json, 0o644)
            .with_context(|| format!("writing {}", manifest_path.display()))?;
        print_flashing(&built, &manifest_path);
    }
    println!(
        "\nWARNING: each image carries this cluster's secrets (K3s tokens, the node's SSH \
         host key, the admin password hash). Keep the images and sticks private and wipe \
         a stick once its node is installed. A machine that boots the stick again is \
         reinstalled."
    );
    Ok(0)
}

/// A refused ISO or an existing output is the user's to fix: exit 2.
fn as_bad_input(err: anyhow::Error) -> anyhow::Error {
    match err.downcast_ref::<ImageError>() {
        Some(e) if e.is_bad_input() => BadInput(format!("{err:#}")).into(),
        _ => err,
    }
}

fn print_flashing(built: &image::Built, manifest: &std::path::Path) {
    let img = built.image.display();
    println!("{img}");
    println!(
        "  size    {:.2} GB ({} bytes)",
        built.size as f64 / 1e9,
        built.size
    );
    println!(
        "  sha256  {}  ({})",
        built.sha256,
        built.sha256_file.display()
    );
    println!("  record  {}", manifest.display());
    println!("  boots   \"{}\"", built.boot_title);
    println!("  flash it to a USB stick (everything on the stick is erased):");
    println!("    Linux    sudo dd if={img} of=/dev/sdX bs=4M conv=fsync status=progress");
    println!("    macOS    sudo dd if={img} of=/dev/rdiskN bs=4m");
    println!("    Windows  balenaEtcher, or Rufus in DD image mode");
}
