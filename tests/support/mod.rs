//! Shared test helpers. Each helper that needs a system tool checks for it and fails
//! with the install hint: a missing tool is a failure, never a silent pass.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

pub mod ha;
pub mod http;
pub mod installed;
pub mod k3s;
pub mod loopdev;
pub mod netns;
pub mod qemu;
pub mod workspace;

/// The `chocoimg` binary under test.
pub fn chocoimg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chocoimg"))
}

/// The repository root (for templates, profiles, fixtures).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` and returns its stdout; panics with both streams unless it succeeded.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with the install hint unless `tool` is on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run scripts/install-test-deps.sh (the README's test command does)"
    );
}
pub mod replica;
pub mod txt_cases;

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
