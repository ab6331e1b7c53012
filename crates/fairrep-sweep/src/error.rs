//! The errors of the sweep library.
use std::path::PathBuf;

use fairrep_data::fs::FsError;
use fairrep_train::config::ConfigError;

/// What can go wrong reading, planning, collecting or reporting a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written or a directory created.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The sweep file is not valid TOML or does not fit the schema.
    #[error("sweep file `{}`: {message}", path.display())]
    Parse {
        /// The sweep file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key of the sweep file has a value the sweep cannot use.
    #[error("sweep file `{}`, key `{key}`: {message}", path.display())]
    Invalid {
        /// The sweep file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// Expected and found.
        message: String,
    },
    /// The base config with a run's overrides is not a valid training config.
    #[error("sweep file `{}`: the base config with {what} is not valid: {source}", path.display())]
    Config {
        /// The sweep file.
        path: PathBuf,
        /// Which overrides (`the axis penalty.lambda = 2`, ...).
        what: String,
        /// The training config's error (names the key).
        source: Box<ConfigError>,
    },
    /// `--shard I/N` is malformed or out of range.
    #[error("bad shard `{shard}`: {message}")]
    Shard {
        /// The text given.
        shard: String,
        /// Expected and found.
        message: String,
    },
    /// The output directory already holds another sweep.
    #[error(
        "`{}` already holds another sweep (id {found}; this sweep's id is {expected}): give this \
         sweep its own out_dir (a sweep's runs, seeds and axes fix its id)",
        dir.display()
    )]
    AnotherSweep {
        /// The sweep directory.
        dir: PathBuf,
        /// The id recorded there.
        found: String,
        /// This sweep's id.
        expected: String,
    },
    /// A results file does not hold what was written (edited by hand, truncated, or of
    /// another run).
    #[error("results file `{}` is not as the sweep wrote it: {message}", path.display())]
    Tampered {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A finished run's summary lacks a field the results need.
    #[error("run summary `{}`: {message}", path.display())]
    Summary {
        /// The summary file.
        path: PathBuf,
        /// What is missing or malformed.
        message: String,
    },
    /// The selection needs a task the results do not have.
    #[error("{message}")]
    Select {
        /// Expected and found.
        message: String,
    },
}
