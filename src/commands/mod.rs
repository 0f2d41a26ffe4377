//! One module per command: each turns its arguments into library calls and prints.
pub mod build;
pub mod discover;
pub mod fetch_kubeconfig;
pub mod flash;
pub mod inspect;
pub mod render;
pub mod status;
pub mod validate;
pub mod watch;

use crate::cli::Global;
use crate::plan::{self, Plan};

/// Phase one for every command that needs the cluster: load and check the profile.
pub fn load_plan(global: &Global) -> anyhow::Result<Plan> {
    Ok(plan::load(
        &global.profile_path(),
        &plan::default_out_root(),
    )?)
}
