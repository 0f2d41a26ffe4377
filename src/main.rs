//! The `chocoimg` binary: parse the command line, hand it to the library, print the
//! error chain. Everything else lives in the library so tests can call it directly.
use clap::Parser;

fn main() {
    let cli = chocoimg::cli::Cli::parse();
    match chocoimg::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(chocoimg::exit_code_for(&err));
        }
    }
}
