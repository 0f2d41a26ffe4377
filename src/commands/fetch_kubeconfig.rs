//! `chocoimg fetch-kubeconfig`: a server's admin kubeconfig, verified, merged for kubectl.
//! Exit 0 written, 4 no server found (nothing written), 1 a check failed, 2 the server's
//! CA is not the recorded one.
use crate::cli::{FetchKubeconfigArgs, Global};
use crate::cluster::{discover, fetch, kubeconfig};
use crate::cluster_ca;
use crate::commands::inputs::{existing_secrets, load_plan_for, timeout_arg};
use crate::errors::EXIT_NOT_FOUND;
use crate::plan::Purpose;

pub fn run(global: &Global, args: &FetchKubeconfigArgs) -> anyhow::Result<i32> {
    let plan = load_plan_for(global, Purpose::NoSeeds)?;
    let timeout = timeout_arg(args.timeout)?;
    let secrets = existing_secrets(&plan)?;
    let name = args.context.clone().unwrap_or_else(|| plan.cluster.clone());
    if !crate::plan::is_rfc1123_label(&name) && args.context.is_some() {
        return Err(crate::errors::BadInput(format!(
            "--context {name:?} is not a usable name; use lowercase letters, digits and '-'"
        ))
        .into());
    }
    let chain = match &args.output {
        Some(p) => vec![p.clone()],
        None => kubeconfig::chain()?,
    };
    let located = match fetch::locate(&plan, &secrets, args.server.as_deref(), timeout)? {
        Ok(l) => l,
        Err(heard) => {
            eprintln!(
                "{}",
                discover::nothing_found_hint(&plan.cluster, timeout, &heard)
            );
            return Ok(EXIT_NOT_FOUND);
        }
    };
    for note in &located.notes {
        eprintln!("note: {note}");
    }
    if let Some(w) = &located.warning {
        eprintln!("warning: {w}");
    }
    let done = fetch::fetch(
        &plan,
        &secrets,
        &located.targets,
        &fetch::FetchOptions {
            ssh_port: args.ssh_port,
            name,
            chain,
            use_context: args.use_context,
            overwrite_context: args.overwrite_context,
        },
    )?;
    for s in &done.skipped {
        eprintln!("note: not used: {s}");
    }
    let how = match &done.from.instance {
        Some(i) => format!("announced as {i:?} over mDNS, proof verified, holds the announced CA"),
        None => "given with --server".into(),
    };
    eprintln!("{} ({how})", fetch::describe_target(&plan, &done.from));
    if done.recorded == cluster_ca::Recorded::New {
        eprintln!("note: {}", cluster_ca::recorded_note(&plan, &done.ca));
    }
    println!(
        "wrote context {} (API {}) to {}",
        done.name,
        done.server_url,
        done.path.display()
    );
    if let Some(b) = &done.backup {
        println!("previous kubeconfig saved as {}", b.display());
    }
    if let Some(what) = &done.replaced {
        println!("replaced {what} (--overwrite-context)");
    }
    match &done.current_context {
        Some(c) if *c == done.name => println!("current context: {c} (this cluster)"),
        Some(c) => println!(
            "current context unchanged: {c}; use `kubectl --context {}` or re-run with --use-context",
            done.name
        ),
        None => println!(
            "no current context; use `kubectl --context {}` or re-run with --use-context",
            done.name
        ),
    }
    Ok(0)
}
