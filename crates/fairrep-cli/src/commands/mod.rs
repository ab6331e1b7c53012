//! One module per subcommand; errors get their context here (anyhow).
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
pub(crate) use fairrep_audit::report_path;
use fairrep_data::fs as fsutil;
use fairrep_train::raster::PngFile;

use crate::cli::{Cli, Command};

mod divergence;
mod eval;
mod export;
mod ferm;
mod postprocess;
mod sweep;
mod train;
mod transfer;

/// Runs the parsed command; the exit code of a command that re-runs itself.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Divergence(args) => divergence::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Transfer(args) => transfer::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => export::run(args).map(|()| ExitCode::SUCCESS),
        Command::Ferm(args) => ferm::run(args).map(|()| ExitCode::SUCCESS),
        Command::Postprocess(args) => postprocess::run(args).map(|()| ExitCode::SUCCESS),
        Command::Sweep(args) => sweep::run(args),
    }
}

/// Writes a report as pretty JSON (atomically) and says where.
pub(crate) fn write_report<T: serde::Serialize>(path: &Path, report: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsutil::create_dir_all(parent)?;
    }
    fsutil::write_atomic(path, format!("{json}\n").as_bytes())
        .with_context(|| format!("cannot write the report `{}`", path.display()))?;
    eprintln!("report: {}", path.display());
    Ok(())
}

/// Says where a plot's PNG version (`what`: "front", "plot", ...) was written, or warns that
/// it was not (its SVG and the results are kept either way).
pub(crate) fn report_png(what: &str, png: &PngFile) {
    match png {
        PngFile::Written(path) => eprintln!("{what} (PNG): {}", path.display()),
        PngFile::Failed { path, message } => eprintln!(
            "warning: the PNG of the {what} (`{}`) was not written: {message}",
            path.display()
        ),
    }
}
