//! `chocoimg completions SHELL` and `chocoimg man [COMMAND]`: shell completions and
//! manual pages, both generated from the same clap model as `--help`, so none of the
//! three can drift from the others.
use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::errors::BadInput;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs) -> Result<i32> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(0)
}

/// Prints the manual page of chocoimg, or of one of its commands, as roff.
pub fn man(args: &ManArgs) -> Result<i32> {
    let page = page(args.command.as_deref())?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the manual page")?;
    Ok(0)
}

/// The roff source of `chocoimg(1)`, or of `chocoimg-<command>(1)`.
pub fn page(command: Option<&str>) -> Result<Vec<u8>> {
    let mut cli = Cli::command();
    // Subcommands render with their full name (chocoimg-build) only once built.
    cli.build();
    let cmd = match command {
        None => cli,
        Some(name) => {
            let names: Vec<String> = cli
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .filter(|n| n != "help")
                .collect();
            let Some(sub) = cli.find_subcommand(name) else {
                return Err(BadInput(format!(
                    "chocoimg has no command {name:?}; it has: {}",
                    names.join(", ")
                ))
                .into());
            };
            sub.clone()
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the manual page")?;
    Ok(out)
}
