//! Tabular fairness datasets and fairness metrics, in pure Rust (no burn).
//!
//! - [`spec`]: the dataset spec format (`datasets/NAME.toml`) and [`load_spec`] / [`resolve_spec`].
//! - [`load()`]: filtering, groups, targets, splits, standardisation, one-hot encoding
//!   ([`Dataset`], [`Schema`], [`Preprocessing`], [`apply_preprocessing`]).
//! - [`synthetic()`]: a seeded synthetic multitask dataset with a tunable group dependence.
//! - [`batches`]: group-stratified minibatches.
//! - [`metrics`]: accuracy, DP / EO gaps, KS, W1, ABPC / ABCC, AUC, MSE.
//!
//! The library never prints; every failure is a [`DataError`].

pub mod batches;
mod error;
mod load;
pub mod metrics;
pub mod spec;
mod synthetic;
mod table;

pub use batches::{StratifiedBatches, epoch_seed, stratified_batches};
pub use error::DataError;
pub use load::{
    CategoryLevels, ColumnKind, Dataset, InputColumn, LoadOptions, NumericStats, Preprocessing,
    Schema, Split, SplitFractions, TaskInfo, apply_preprocessing, check_schema, load,
    load_for_transfer, load_with_preprocessing,
};
pub use spec::{DatasetSpec, load_spec, parse_spec, resolve_spec};
pub use synthetic::{SyntheticConfig, synthetic};
