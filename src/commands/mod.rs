//! One module per command: each turns its arguments into library calls and prints.
//! `main.rs` dispatches to them; what several commands share is in `inputs`.
pub mod build;
pub mod discover;
pub mod fetch_kubeconfig;
pub mod flash;
pub mod inputs;
pub mod inspect;
pub mod manual;
pub mod render;
pub mod status;
pub mod validate;
pub mod watch;
