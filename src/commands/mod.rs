//! One module per command: each turns its arguments into library calls and prints.
pub mod build;
pub mod discover;
pub mod fetch_kubeconfig;
pub mod flash;
pub mod inspect;
pub mod render;
pub mod status;
pub mod validate;

use crate::cli::Global;
use crate::plan::{self, Plan};

/// Phase one for every command that needs the cluster: load and check the profile.
pub fn load_plan(global: &Global) -> anyhow::Result<Plan> {
    load_plan_with(global, plan::Overrides::default())
}

/// `load_plan`, with what the command's own flags add to the profile.
pub fn load_plan_with(global: &Global, overrides: plan::Overrides) -> anyhow::Result<Plan> {
    Ok(plan::load_with(
        &global.profile_path(),
        &plan::default_out_root(),
        overrides,
    )?)
}
