//! The binary's tracing subscriber: human-readable logs on stderr.
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Crates whose logs are capped at `warn` unless `RUST_LOG` says otherwise.
const NOISY: &[&str] = &[
    "wgpu",
    "wgpu_core",
    "wgpu_hal",
    "naga",
    "cubecl",
    "cubecl_wgpu",
    "cubecl_runtime",
    "cubecl_core",
    "burn_cubecl",
    "burn_wgpu",
    "burn_fusion",
];

/// Installs the subscriber: `RUST_LOG` when set, else `info` raised by `-v` (debug, trace)
/// or lowered by `-q` (warn, error).
pub(crate) fn init(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut directives = level.to_string();
        for target in NOISY {
            directives.push_str(&format!(",{target}=warn"));
        }
        EnvFilter::new(directives)
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
