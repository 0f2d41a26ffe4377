//! `chocoimg build`: phase one checks and gathers everything (plan, secrets, seeds,
//! verified artifacts); phase two writes one image per node, then its manifest.
use crate::artifacts::{self, FetchOptions, LockMode};
use crate::cli::{BuildArgs, Global};
use crate::commands::inputs::{
    cluster_ca_for_seeds, forget_cluster_ca, load_plan_with, prepare_secrets, select_nodes,
};
use crate::errors::BadInput;
use crate::image::{self, manifest::Manifest, Identity, ImageError, ProgressStyle, Target};
use crate::seed;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Set by Ctrl-C; the image writer checks it between chunks.
static CANCEL: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<()> = OnceLock::new();

pub fn run(global: &Global, args: &BuildArgs) -> Result<i32> {
    // The seed's late-commands install the image tarball only when the plan says so.
    let plan = load_plan_with(
        global,
        crate::plan::Overrides {
            airgap: args.airgap,
        },
    )?;
    let nodes = select_nodes(&plan, &args.nodes)?;
    // Read (and a damaged record refused) before any download.
    // A new cluster's seeds carry no CA; the record goes once the inputs are known good.
    let cluster_ca = if args.new_cluster {
        None
    } else {
        cluster_ca_for_seeds(&plan, &nodes)?
    };
    let outputs: Vec<PathBuf> = nodes.iter().map(|n| plan.image_path(n)).collect();
    // Before any download; `image::plan` asks again for the library's other callers.
    for out in &outputs {
        image::refuse_existing(out, args.force).map_err(|e| as_bad_input(e.into()))?;
    }
    let progress = ProgressStyle::for_stderr();
    let lock_mode = if args.update_lock {
        LockMode::Update
    } else {
        LockMode::Enforce
    };
    let fetch = artifacts::fetch_unsaved(
        &plan,
        &FetchOptions {
            iso: args.iso.clone(),
            airgap: plan.k3s.airgap,
            progress_bars: progress == ProgressStyle::Bars,
            // Hashed on the image's own pass over it, below.
            defer_iso_hash: true,
        },
        lock_mode,
    );
    let (fetched, lock) = match (fetch, &args.iso) {
        (Ok(done), _) => done,
        // A wrong --iso is the user's to fix whatever else failed: it is reported first.
        (Err(e), Some(iso)) => {
            artifacts::verify_local_iso(&plan, iso)?;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let identities: Vec<Identity> = nodes.iter().map(|n| Identity::new(&plan, n)).collect();
    let targets: Vec<Target> = outputs
        .iter()
        .zip(&identities)
        .map(|(output, identity)| Target {
            output,
            identity,
            payload: &fetched.payload,
        })
        .collect();
    // Every node's image is planned (and the ISO refused, if it must be) before
    // anything is written.
    let planned = image::plan(&fetched.iso, &targets, args.force).map_err(as_bad_input)?;

    HANDLER.get_or_init(|| {
        // Only one handler per process can be set; without it Ctrl-C kills at once and
        // a `.part` file may stay behind, but never anything under the final name.
        let _ = ctrlc::set_handler(|| CANCEL.store(true, Ordering::SeqCst));
    });
    // One pass over the ISO for every image; a local --iso is checked against the pin
    // on the way, and refused with nothing left behind.
    let pin = (!fetched.iso_verified).then_some(fetched.iso_sha256.as_str());
    let images = planned.write_iso(pin, progress, &CANCEL).map_err(|e| {
        match e.downcast_ref::<ImageError>() {
            Some(ImageError::IsoMismatch { iso, found, .. }) => {
                artifacts::wrong_local_iso(&plan, iso, found)
            }
            _ => as_bad_input(e),
        }
    })?;
    // Only artifacts that make an image are recorded beside the profile.
    lock.save()?;
    // Secrets only once the inputs are known good: a refused ISO creates nothing.
    let secrets = prepare_secrets(&plan)?;
    if args.new_cluster {
        forget_cluster_ca(&plan)?;
    }
    let seeds = nodes
        .iter()
        .map(|n| seed::render(&plan, &secrets, n, cluster_ca.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    for ((node, image), seed) in nodes.iter().zip(images).zip(&seeds) {
        let built = image
            .finish(&seed.files, progress, &CANCEL)
            .map_err(as_bad_input)?;
        let manifest = Manifest::new(&plan, node, seed, &fetched, &built);
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
         a stick once its node is installed. A machine that boots a stick again while it \
         holds a chocoimg node stops without erasing anything; to reinstall it, choose \
         \"Reinstall <node> - ERASES the disk\" in the stick's boot menu."
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
    println!(
        "          (on a machine that holds a chocoimg node: stops; \"{}\" at the keyboard)",
        built.reinstall_title
    );
    println!("  flash it to a USB stick (everything on the stick is erased):");
    println!(
        "    chocoimg flash --node {}   (finds the stick, refuses other disks, verifies)",
        built
            .image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
    );
    println!("  or with another tool:");
    println!("    Linux    sudo dd if={img} of=/dev/sdX bs=4M conv=fsync status=progress");
    println!("    macOS    sudo dd if={img} of=/dev/rdiskN bs=4m");
    println!("    Windows  balenaEtcher, or Rufus in DD image mode");
}
