//! The `fairrep` command line: parse, set up logging, run, report.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod logging;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.verbose, args.quiet);
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `a: b: c`, each cause once: an error whose message
/// already quotes its cause (most do) does not print that cause again.
fn report(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}
