//! Tabular fairness datasets, in pure Rust (no burn).
//!
//! - [`spec`]: the dataset spec format (`datasets/NAME.toml`) and [`load_spec`] / [`resolve_spec`].
//! - [`load()`]: the load pipeline (tasks, inputs, tables, rows, splits, preprocessing, schema,
//!   encoding), with an [`Encoding`] that fits the preprocessing or reuses a saved one
//!   ([`Dataset`], [`Split`], [`Schema`], [`Preprocessing`], [`apply_preprocessing`]).
//! - [`synthetic()`]: a seeded synthetic multitask dataset with a tunable group dependence.
//! - [`batches`]: group-stratified minibatches and subsamples.
//! - [`matrix`]: the dense row-major [`Matrix`] and its `.npy` / `.csv` files.
//! - [`fs`]: crash-safe file writes.
//!
//! The library never prints; every failure is a [`DataError`] (or a [`matrix::MatrixError`],
//! [`fs::FsError`]).

pub mod batches;
mod error;
pub mod fs;
mod load;
pub mod matrix;
pub mod spec;
mod synthetic;
mod table;

pub use batches::{StratifiedBatches, epoch_seed, stratified_batches, stratified_subsample};
pub use error::DataError;
pub use load::{
    AttributeInfo, CategoryLevels, ColumnKind, Dataset, Encoding, InputColumn, LoadOptions,
    NumericStats, Preprocessing, Schema, Split, SplitName, TaskInfo, apply_preprocessing,
    check_schema, load,
};
pub use matrix::Matrix;
pub use spec::{DatasetSpec, SplitFractions, load_spec, parse_spec, resolve_spec};
pub use synthetic::{SyntheticConfig, synthetic};
