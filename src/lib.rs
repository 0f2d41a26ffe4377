//! chocoimg: one cluster profile in, unattended Ubuntu 22.04 install images out, and the
//! laptop-side tools that find, join and reach the K3s cluster those images build.
//!
//! Data flows one way: profile → plan → (seed | image | cluster tools). `cli` holds the
//! clap types, `main.rs` dispatches to `commands`, and nothing below `commands` knows
//! the command line.

pub mod artifacts;
pub mod bringup;
pub mod cli;
pub mod cluster;
pub mod cluster_ca;
pub mod commands;
pub mod errors;
pub mod flash;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod guard;
pub mod image;
pub mod labels;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod proof;
pub mod secrets;
pub mod seed;
pub mod templates;
