//! The fairrep trainer as a library: configuration ([`config`]), device choice ([`device`]),
//! data ([`data`]), the training loop ([`train`]), evaluation ([`eval`]), checkpoints
//! ([`checkpoint`]), crash-safe files ([`fsutil`]) and the training-curve plot ([`plot`]);
//! reusing a trained run ([`trained`]): transfer to novel tasks ([`transfer`]), audits
//! ([`eval_cmd`], built on [`audit`] and [`probe`]) and export ([`export`]).
//! The `fairrep` binary (`src/main.rs`) is a thin CLI over it.

pub mod audit;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod divergence_cmd;
pub mod eval;
pub mod eval_cmd;
pub mod export;
pub mod fsutil;
pub mod plot;
pub mod points;
pub mod probe;
pub mod train;
pub mod trained;
pub mod transfer;
