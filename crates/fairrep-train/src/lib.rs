//! The fairrep trainer as a library: configuration ([`config`]), device choice ([`device`]),
//! data ([`data`]) and its dump for other frameworks ([`dump`]), the training loop
//! ([`trainer`]) with its losses ([`losses`]) and per-epoch evaluation ([`eval`]), and the run
//! directory: its records ([`records`]), checkpoints
//! ([`checkpoint`]), files ([`run_dir`]) and training curves ([`plot`]), with the PNG versions
//! of the plots ([`raster`]).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dump;
pub mod eval;
pub mod losses;
pub mod plot;
pub mod raster;
pub mod records;
pub mod run_dir;
pub mod trainer;

pub use trainer::{TrainError, TrainOptions, TrainOutcome, train};
