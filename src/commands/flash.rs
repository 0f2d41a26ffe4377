//! `chocoimg flash`: check the target (all at once), confirm, write, verify.
use crate::cli::{FlashArgs, Global};
use crate::commands::inputs::load_plan_for;
use crate::errors::BadInput;
use crate::flash::{self, writer, Allowances, Disk, Image, Target};
use crate::image::ProgressStyle;
use crate::plan::Purpose;
use anyhow::Result;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Set by Ctrl-C; the writer checks it between chunks.
static CANCEL: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<()> = OnceLock::new();

pub fn run(global: &Global, args: &FlashArgs) -> Result<i32> {
    if args.list {
        return list(args.json);
    }
    let (image_path, device) = image_and_device(global, args)?;
    let image = Image::open(&image_path)?;
    let interactive = std::io::stdin().is_terminal();
    let device = match device {
        Some(d) => d,
        None => choose(interactive)?,
    };
    let allow = Allowances {
        unmount: args.unmount,
        fixed_disk: args.allow_fixed_disk,
        large: args.allow_large,
        to_file: args.to_file,
    };
    // Phase one: every check; nothing is written before the user confirmed.
    let target = flash::check(&device, &image, allow).map_err(as_bad_input)?;
    if let Target::Disk(d) = &target {
        if d.mounts.is_empty() {
            writer::probe_exclusive(&d.path).map_err(as_bad_input)?;
        }
    }
    confirm(&target, &image, args.yes, interactive)?;
    let target = match target {
        Target::Disk(d) if !d.mounts.is_empty() => {
            let d = flash::unmount(&d).map_err(as_bad_input)?;
            writer::wait_exclusive(&d.path).map_err(as_bad_input)?;
            Target::Disk(d)
        }
        t => t,
    };

    // Phase two.
    HANDLER.get_or_init(|| {
        let _ = ctrlc::set_handler(|| CANCEL.store(true, Ordering::SeqCst));
    });
    let (node, device_size) = match &target {
        Target::Disk(d) if cfg!(target_os = "macos") => (flash::macos::raw_node(d), Some(d.size)),
        Target::Disk(d) => (d.path.clone(), Some(d.size)),
        Target::File { path, .. } => (path.clone(), None),
    };
    let written = writer::write(&writer::WriteRequest {
        image: &image,
        target: &node,
        device_size,
        progress: ProgressStyle::for_stderr(),
        cancel: &CANCEL,
    })
    .map_err(as_bad_input)?;
    let against = if written.against_sha256_file {
        format!("{}.sha256", image.path.display())
    } else {
        "the image as read (no .sha256 beside it)".to_string()
    };
    println!(
        "verified: {} holds {} (sha256 {}, matches {against})",
        target.path().display(),
        image.path.display(),
        written.sha256
    );
    println!(
        "  written in {}, read back in {}",
        rate(image.size, written.write_time),
        rate(image.size, written.verify_time)
    );
    if let Target::Disk(d) = &target {
        if cfg!(target_os = "macos") {
            flash::macos::eject(d)?;
            println!("  ejected {}", d.path.display());
        }
        println!(
            "Boot the node from the stick: its installer ERASES the node's disk, then powers \
             off; remove the stick and power it on again. The stick carries the cluster's \
             secrets: wipe it once the node is installed."
        );
    }
    Ok(0)
}

/// "2.10 GB in 30.1 s (69.8 MB/s)".
fn rate(bytes: u64, took: std::time::Duration) -> String {
    let s = took.as_secs_f64().max(1e-6);
    format!("{:.1} s ({:.1} MB/s)", s, bytes as f64 / s / 1e6)
}

/// The image and the device from `--node NAME [DEVICE]` or `IMAGE [DEVICE]`.
fn image_and_device(global: &Global, args: &FlashArgs) -> Result<(PathBuf, Option<PathBuf>)> {
    let mut paths = args.paths.iter().cloned();
    match &args.node {
        Some(name) => {
            if args.paths.len() > 1 {
                return Err(BadInput(format!(
                    "with --node {name}, give only the DEVICE (got {} paths); or flash an image \
                     file with `chocoimg flash IMAGE DEVICE`",
                    args.paths.len()
                ))
                .into());
            }
            let plan = load_plan_for(global, Purpose::NoSeeds)?;
            let node = plan.node(name)?;
            let img = plan.image_path(node);
            let sums = PathBuf::from(format!("{}.sha256", img.display()));
            if !img.is_file() || !sums.is_file() {
                return Err(BadInput(format!(
                    "{} (and its .sha256) not found; build it first: chocoimg build --node {name}",
                    img.display()
                ))
                .into());
            }
            Ok((img, paths.next()))
        }
        None => {
            let img = paths.next().ok_or_else(|| {
                BadInput(
                    "nothing to flash: give --node NAME (an image `chocoimg build` made) or an \
                     IMAGE file; `chocoimg flash --list` shows the sticks"
                        .into(),
                )
            })?;
            Ok((img, paths.next()))
        }
    }
}

/// `--list`: the sticks plugged in.
fn list(json: bool) -> Result<i32> {
    let sticks = flash::list_sticks()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sticks)?);
    } else if sticks.is_empty() {
        println!("no USB stick or removable disk found; plug one in");
    } else {
        for s in &sticks {
            println!("{}", s.summary());
        }
    }
    Ok(0)
}

fn print_sticks(sticks: &[Disk]) -> String {
    if sticks.is_empty() {
        return "  (no USB stick or removable disk found; plug one in)".into();
    }
    sticks
        .iter()
        .enumerate()
        .map(|(i, s)| format!("  {}. {}", i + 1, s.summary().replace('\n', "\n     ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// No DEVICE given: choose from the list on a terminal; without one, refuse.
fn choose(interactive: bool) -> Result<PathBuf> {
    let sticks = flash::list_sticks()?;
    if !interactive {
        return Err(BadInput(format!(
            "no DEVICE given and no terminal to choose on; give the stick's device, one of:\n{}",
            print_sticks(&sticks)
        ))
        .into());
    }
    if sticks.is_empty() {
        return Err(BadInput(
            "no USB stick or removable disk found; plug one in and run flash again".into(),
        )
        .into());
    }
    eprintln!("Sticks plugged in:\n{}", print_sticks(&sticks));
    let answer = ask(&format!(
        "Which one? Type its number (1-{}), anything else stops: ",
        sticks.len()
    ))?;
    match answer.parse::<usize>() {
        Ok(n) if (1..=sticks.len()).contains(&n) => Ok(sticks[n - 1].path.clone()),
        _ => Err(BadInput("no stick chosen; nothing was written".into()).into()),
    }
}

/// Shows what will be erased and asks for the device's name (`--yes` skips it).
fn confirm(target: &Target, image: &Image, yes: bool, interactive: bool) -> Result<()> {
    let mut text = format!(
        "About to write {} ({}) to:\n",
        image.path.display(),
        flash::human_size(image.size)
    );
    let name = match target {
        Target::Disk(d) => {
            text.push_str(&format!(
                "  {}  {}  {}  serial {}\nEverything on it will be lost:\n",
                d.path.display(),
                d.description(),
                flash::human_size(d.size),
                d.serial.as_deref().unwrap_or("unknown")
            ));
            for l in d.what_is_lost() {
                text.push_str(&format!("  {l}\n"));
            }
            if !d.mounts.is_empty() {
                text.push_str("(--unmount: it is unmounted first)\n");
            }
            d.name.clone()
        }
        Target::File { path, size } => {
            text.push_str(&format!(
                "  the file {} ({}); its start is overwritten\n",
                path.display(),
                flash::human_size(*size)
            ));
            path.display().to_string()
        }
    };
    if yes {
        eprint!("{text}");
        return Ok(());
    }
    if !interactive {
        return Err(BadInput(format!(
            "{text}no terminal to confirm on; pass --yes to flash {} without asking (scripts)",
            target.path().display()
        ))
        .into());
    }
    eprint!("{text}");
    let answer = ask(&format!("Type {name} to erase it and write the image: "))?;
    let path = target.path().display().to_string();
    if answer == name || answer == path {
        Ok(())
    } else {
        Err(BadInput(format!(
            "you typed {answer:?}, not {name}; nothing was written"
        ))
        .into())
    }
}

fn ask(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A refused target (or an image that is not what its .sha256 says) is the user's to
/// fix: exit 2.
fn as_bad_input(err: anyhow::Error) -> anyhow::Error {
    let bad = err.downcast_ref::<flash::Refused>().is_some()
        || matches!(
            err.downcast_ref::<writer::WriteError>(),
            Some(writer::WriteError::ImageChanged { .. })
        );
    if bad {
        BadInput(format!("{err:#}")).into()
    } else {
        err
    }
}
