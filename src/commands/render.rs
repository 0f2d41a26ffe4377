//! `chocoimg render`: write each named node's seed to a folder, to read or test.
use crate::cli::{Global, RenderArgs};
use crate::commands::inputs::{
    cluster_ca_for_seeds, forget_cluster_ca, load_plan, prepare_secrets, select_nodes,
};
use crate::{fsutil, seed};
use anyhow::Result;

pub fn run(global: &Global, args: &RenderArgs) -> Result<i32> {
    let plan = load_plan(global)?;
    let nodes = select_nodes(&plan, &args.nodes)?;
    // A new cluster's seeds carry no CA; the record goes once the seeds rendered.
    let cluster_ca = if args.new_cluster {
        None
    } else {
        cluster_ca_for_seeds(&plan, &nodes)?
    };
    let secrets = prepare_secrets(&plan)?;
    // Every seed renders before any is written.
    let seeds = nodes
        .into_iter()
        .map(|node| {
            Ok((
                node,
                seed::render(&plan, &secrets, node, cluster_ca.as_deref())?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    if args.new_cluster {
        forget_cluster_ca(&plan)?;
    }
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
