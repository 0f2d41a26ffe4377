//! The `chocoimg` binary: parse the command line, dispatch each command to its one
//! function in the library, print the error chain, exit with the code the error maps to.
use chocoimg::cli::{Cli, Command, FetchKubeconfigArgs};
use chocoimg::commands;
use chocoimg::errors::exit_code_for;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match &cli.command {
        Command::Validate(a) => commands::validate::run(g, a),
        Command::Render(a) => commands::render::run(g, a),
        Command::Build(a) => commands::build::run(g, a),
        Command::Inspect(a) => commands::inspect::run(g, a),
        Command::Discover(a) => commands::discover::run(g, a),
        Command::FetchKubeconfig(a) => commands::fetch_kubeconfig::run(g, a),
        Command::Status(a) => commands::status::run(g, a),
        // Commands never call each other: chaining one after another happens here.
        Command::Watch(a) => match commands::watch::run(g, a) {
            Ok(0) if a.fetch_kubeconfig => {
                commands::fetch_kubeconfig::run(g, &FetchKubeconfigArgs::defaults())
            }
            other => other,
        },
        Command::Flash(a) => commands::flash::run(g, a),
        Command::Completions(a) => commands::manual::completions(a),
        Command::Man(a) => commands::manual::man(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(exit_code_for(&err));
        }
    }
}
