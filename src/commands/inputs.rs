//! What several commands gather before they act, in one place so no command borrows
//! from another: the checked plan, the nodes named on the command line, the cluster's
//! secrets, a `--timeout`.
use crate::cli::{Global, NodeSelection};
use crate::errors::BadInput;
use crate::plan::{self, NodePlan, Plan, SshKeySource};
use crate::secrets::{self, Secrets};
use anyhow::Result;
use std::time::Duration;

/// Phase one for every command that needs the cluster: load and check the profile.
pub fn load_plan(global: &Global) -> Result<Plan> {
    load_plan_with(global, plan::Overrides::default())
}

/// `load_plan`, with what the command's own flags add to the profile.
pub fn load_plan_with(global: &Global, overrides: plan::Overrides) -> Result<Plan> {
    load(global, overrides, plan::Purpose::Seeds)
}

/// `load_plan` for `purpose`: commands that render no seed need no Wi-Fi password.
pub fn load_plan_for(global: &Global, purpose: plan::Purpose) -> Result<Plan> {
    load(global, plan::Overrides::default(), purpose)
}

fn load(global: &Global, overrides: plan::Overrides, purpose: plan::Purpose) -> Result<Plan> {
    Ok(plan::load_with(
        &global.profile_path(),
        &plan::default_out_root(),
        overrides,
        purpose,
    )?)
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
pub fn prepare_secrets(plan: &Plan) -> Result<Secrets> {
    if let SshKeySource::Generated { private_path } = &plan.ssh.key {
        let comment = format!("chocoimg-{}", plan.cluster);
        if secrets::ensure_key_pair(private_path, &comment)? {
            eprintln!(
                "note: no SSH key in ~/.ssh; created one for this cluster: {} (use it with `ssh -i`)",
                private_path.display()
            );
        }
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

/// The cluster's CA hash the laptop recorded, for the seeds of an `ha` cluster's servers
/// (None for other clusters: only HA servers carry it). Without a record, says once what
/// that means for the servers among `nodes`.
pub fn cluster_ca_for_seeds(plan: &Plan, nodes: &[&NodePlan]) -> Result<Option<String>> {
    if plan.mode != crate::profile::Mode::Ha {
        return Ok(None);
    }
    let recorded = crate::cluster_ca::load(plan)?;
    if recorded.is_none() && nodes.iter().any(|n| n.role == crate::profile::Role::Server) {
        eprintln!(
            "note: no CA recorded for cluster {} ({}): {} may start a new cluster when no \
             server of it answers at its first boot. If the cluster already exists, run \
             `chocoimg discover` first (it records the CA; the servers then only join it)",
            plan.cluster,
            crate::cluster_ca::path(plan).display(),
            plan.server().hostname
        );
    }
    Ok(recorded)
}

/// `--new-cluster`: forgets the recorded CA (phase two: the inputs are known good), so
/// the servers built now may start a cluster, and says so.
pub fn forget_cluster_ca(plan: &Plan) -> Result<()> {
    let path = crate::cluster_ca::path(plan);
    if crate::cluster_ca::forget(plan)? {
        eprintln!(
            "note: --new-cluster: forgot the recorded CA ({}); the first server built now \
             starts a new cluster when no server answers. Every server of the old cluster \
             must be wiped and re-flashed",
            path.display()
        );
    }
    Ok(())
}

/// The cluster's secrets, which the laptop must already have (made by render/build).
pub fn existing_secrets(plan: &Plan) -> Result<Secrets> {
    let path = plan.secrets_path();
    if !path.exists() {
        return Err(BadInput(format!(
            "{} does not exist: the laptop holds the cluster's secrets from the first \
             `chocoimg build` (or `render`); run this from the folder where you built the \
             images, or set CHOCOIMG_OUT to the folder that holds {}/",
            path.display(),
            plan.cluster
        ))
        .into());
    }
    secrets::load(&path)
}

/// Records `ca`, which a verified server of the cluster serves, as the cluster's CA
/// (`cluster_ca::record`), saying so when it is new. Another recorded CA: bad input.
pub fn record_cluster_ca(plan: &Plan, ca: &str) -> Result<()> {
    if crate::cluster_ca::record(plan, ca)? == crate::cluster_ca::Recorded::New {
        eprintln!("note: {}", crate::cluster_ca::recorded_note(plan, ca));
    }
    Ok(())
}

/// A `--timeout SECONDS` value, checked.
pub fn timeout_arg(seconds: f64) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(BadInput(format!(
            "--timeout {seconds} is not a number of seconds between 0 and 3600, e.g. --timeout 3"
        ))
        .into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use crate::errors::{exit_code_for, EXIT_BAD_INPUT};

    #[test]
    fn timeouts_are_checked() {
        assert!(super::timeout_arg(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 4000.0] {
            let err = super::timeout_arg(bad).unwrap_err();
            assert_eq!(exit_code_for(&err), EXIT_BAD_INPUT);
        }
    }
}
