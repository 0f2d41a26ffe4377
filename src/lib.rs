//! chocoimg: one cluster profile in, unattended Ubuntu 22.04 install images out, and the
//! laptop-side tools that find, join and reach the K3s cluster those images build.
//!
//! Data flows one way: profile → plan → (seed | image | cluster tools). Nothing below
//! `cli` knows about the command line.

pub mod artifacts;
pub mod bringup;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod flash;
pub mod fsutil;
pub mod image;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod proof;
pub mod secrets;
pub mod seed;

/// Exit code for bad input that the user must fix (profile, arguments, refused ISO).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code for everything else that went wrong.
pub const EXIT_FAILURE: i32 = 1;

/// An error caused by the user's input: the command exits 2 instead of 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Maps an error chain to the process exit code: 2 when any link is bad input.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    let bad = err.chain().any(|e| {
        e.downcast_ref::<BadInput>().is_some() || e.downcast_ref::<profile::Problems>().is_some()
    });
    if bad {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}
