//! The one place that maps a failure to the process's exit code (cargo:
//! `util/errors.rs`). Exit 0 is success; the codes below are everything else.
use crate::profile::Problems;

/// Exit code for everything that went wrong and is not listed below.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for bad input that the user must fix (profile, arguments, refused ISO).
pub const EXIT_BAD_INPUT: i32 = 2;
/// `status`: the API answers but some node is not Ready.
pub const EXIT_DEGRADED: i32 = 3;
/// `status`: the API does not answer.
pub const EXIT_UNAVAILABLE: i32 = 4;
/// `discover`/`fetch-kubeconfig`: no verified server of our cluster answered.
pub const EXIT_NOT_FOUND: i32 = EXIT_UNAVAILABLE;

/// An error caused by the user's input: the command exits 2 instead of 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Maps an error chain to the process exit code: 2 when any link is bad input.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    let bad = err
        .chain()
        .any(|e| e.downcast_ref::<BadInput>().is_some() || e.downcast_ref::<Problems>().is_some());
    if bad {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}
