//! Sweeps of training runs and the choice of a trade-off on validation.
//!
//! - [`spec`]: the sweep file (a base training config, fixed overrides, axes expanded as a
//!   grid, random samples of ranges, seeds) and its expansion into runs whose ids hash their
//!   resolved configuration and seed; shards `I/N`.
//! - [`results`]: one row per finished run (`runs/ID/result.json`, checksummed), merged into
//!   `results.csv` / `results.jsonl`; the sweep directory's `sweep.json`.
//! - [`front`]: per configuration the mean and 95% interval over seeds, the validation Pareto
//!   fronts and the selection rules (validation only; test numbers carried beside).
//! - [`plot`] and [`report`]: the front plot (SVG) and the Markdown report.
//! - [`slurm`]: the `sbatch` array script.
//!
//! The library plans, records and analyses; it does not train or print. The `fairrep` binary
//! runs each planned run as a `fairrep train` process (so `--jobs N` runs are isolated
//! processes and a killed sweep leaves ordinary, resumable run directories).
//!
//! Dependencies: `csv` writes the merged table (quoting), `sha2` hashes configurations into
//! run ids and checksums rows, `rand` / `rand_chacha` draw the random samples reproducibly.

pub mod error;
pub mod front;
pub mod plot;
pub mod report;
pub mod results;
pub mod slurm;
pub mod spec;

pub use error::SweepError;
pub use spec::{PlannedRun, Shard, SweepPlan};
