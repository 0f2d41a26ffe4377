//! Laptop-side cluster tools: discover master1 over mDNS, fetch a verified kubeconfig,
//! report the cluster's status. `node` is the other half: what the nodes run.
pub mod discover;
pub mod kubeconfig;
pub mod node;
pub mod status;
pub mod watch;

use crate::plan::Plan;
use crate::secrets::Secrets;
use anyhow::Result;
use std::time::Duration;

/// `status`: the API answers but some node is not Ready.
pub const EXIT_DEGRADED: i32 = 3;
/// `status`: the API does not answer. `discover`: no verified server answered.
pub const EXIT_UNAVAILABLE: i32 = 4;
/// `discover`/`fetch-kubeconfig`: no verified server of our cluster answered.
pub const EXIT_NOT_FOUND: i32 = EXIT_UNAVAILABLE;

/// The cluster's secrets, which the laptop must already have (made by render/build).
pub fn load_secrets(plan: &Plan) -> Result<Secrets> {
    let path = plan.secrets_path();
    if !path.exists() {
        return Err(crate::BadInput(format!(
            "{} does not exist: the laptop holds the cluster's secrets from the first \
             `chocoimg build` (or `render`); run this from the folder where you built the \
             images, or set CHOCOIMG_OUT to the folder that holds {}/",
            path.display(),
            plan.cluster
        ))
        .into());
    }
    crate::secrets::load(&path)
}

/// A `--timeout SECONDS` value, checked.
pub fn timeout_arg(seconds: f64) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(crate::BadInput(format!(
            "--timeout {seconds} is not a number of seconds between 0 and 3600, e.g. --timeout 3"
        ))
        .into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    #[test]
    fn timeouts_are_checked() {
        assert!(super::timeout_arg(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 4000.0] {
            let err = super::timeout_arg(bad).unwrap_err();
            assert_eq!(crate::exit_code_for(&err), crate::EXIT_BAD_INPUT);
        }
    }
}
