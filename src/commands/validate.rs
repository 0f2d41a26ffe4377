//! `chocoimg validate`: check the profile and report every problem at once.
use crate::cli::{Global, ValidateArgs};
use crate::commands::inputs::load_plan;

pub fn run(global: &Global, _args: &ValidateArgs) -> anyhow::Result<i32> {
    let plan = load_plan(global)?;
    let nodes: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| format!("{} ({})", n.hostname, n.role))
        .collect();
    println!(
        "{}: cluster {} is valid: K3s {}, Ubuntu {}, nodes: {}",
        plan.profile_path.display(),
        plan.cluster,
        plan.k3s.version,
        plan.ubuntu.release,
        nodes.join(", ")
    );
    if plan.mode == crate::profile::Mode::Ha {
        eprintln!("note: {}", crate::plan::HA_NOTE);
    }
    Ok(0)
}
