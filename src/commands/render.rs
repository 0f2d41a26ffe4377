use crate::cli::{Global, NodeSelection, RenderArgs};
use crate::plan::{NodePlan, Plan};
use crate::{fsutil, secrets, seed};
use anyhow::Result;

pub fn run(global: &Global, args: &RenderArgs) -> Result<i32> {
    let plan = super::load_plan(global)?;
    let nodes = select_nodes(&plan, &args.nodes)?;
    let secrets = prepare_secrets(&plan)?;
    // Every seed renders before any is written.
    let seeds = nodes
        .into_iter()
        .map(|node| Ok((node, seed::render(&plan, &secrets, node)?)))
        .collect::<Result<Vec<_>>>()?;
    for (node, seed) in seeds {
        let dir = match &args.out {
            Some(out) => out.join(&node.hostname),
            None => plan.out_dir.join(&node.hostname).join("seed"),
        };
        for file in &seed.files {
            // user-data holds the node's secrets (tokens, host key): owner-only.
            fsutil::write_atomic(&dir.join(&file.name), &file.contents, 0o600)?;
        }
        println!("{}: seed written to {}/", node.hostname, dir.display());
    }
    Ok(0)
}

/// The nodes `--node NAME` or `--all` names, checked against the plan.
pub fn select_nodes<'p>(plan: &'p Plan, sel: &NodeSelection) -> Result<Vec<&'p NodePlan>> {
    match &sel.node {
        Some(name) => Ok(vec![plan.node(name)?]),
        None => Ok(plan.nodes.iter().collect()),
    }
}

/// Phase two's first step for every command that writes seeds or images: the cluster's
/// secrets (created once) and, when the laptop had no SSH key, the cluster's own pair.
pub fn prepare_secrets(plan: &Plan) -> Result<secrets::Secrets> {
    if let Some(private) = secrets::ensure_admin_key(plan)? {
        eprintln!(
            "note: no SSH key in ~/.ssh; created one for this cluster: {} (use it with `ssh -i`)",
            private.display()
        );
    }
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.hostname.as_str()).collect();
    let path = plan.secrets_path();
    let loaded = secrets::load_or_create(&path, &names)?;
    if loaded.created {
        eprintln!(
            "note: created the cluster's secrets in {} (mode 0600; never commit it; back it up)",
            path.display()
        );
    }
    for node in &loaded.new_host_keys {
        eprintln!(
            "note: {node} is new in the profile: made it a new SSH host key in {}",
            path.display()
        );
    }
    Ok(loaded.secrets)
}
