//! Metrics and small numerics of fairrep, in pure Rust (no burn), so that they are fast to test
//! and usable by every crate:
//!
//! - [`fairness`]: accuracy, demographic-parity, equalised-odds and equal-opportunity gaps,
//!   KS, W1, ABPC / ABCC, AUC, MSE of scores (docs/MATH.md, "Fairness metrics").
//! - [`interval`]: means and 95% Student-t intervals over seeds.
//! - [`linalg`]: Cholesky solves, the spectral norm, logistic regression by Newton's method.
//! - [`median`]: the median pairwise distance (the kernel-bandwidth heuristic), exact or on a
//!   seeded sample of pairs.
//! - [`bounds`]: the algebra of the transfer bounds (a rounded coupling's transport cost, the
//!   RKHS norm of a kernel interpolant).

pub mod bounds;
pub mod fairness;
pub mod interval;
pub mod linalg;
pub mod median;

pub use fairness::MetricError;
pub use interval::Interval;
