//! Divergences between weighted point clouds on burn tensors, and the fairness penalty built
//! from them. docs/MATH.md defines every formula here.
//!
//! One public API, three implementations behind it:
//! - [`mmd2`] / [`mmd2_with_bandwidths`]: Gaussian-kernel MMD² (biased and unbiased).
//! - [`sinkhorn_divergence`] / [`solve_potentials`]: the debiased Sinkhorn divergence, log
//!   domain, eps-scaling, envelope gradient.
//! - [`fairness_penalty`]: the demographic-parity penalty over `G >= 2` groups.
//!
//! [`route`] alone decides which implementation runs (its table: host memory on the CPU
//! devices, over stored matrices for small problems and in tiles computed from the points for
//! large ones; fused CubeCL kernels on a GPU; tensor operations otherwise); `solver` holds the
//! Sinkhorn loop that all of them run; [`sinkhorn_divergence_on`] and [`mmd2_on`] run a chosen
//! implementation instead (benchmarks, cross-checks); [`config`] validates the settings once for every caller.
//! Every function runs in the dtype of its inputs (float32, or float64 on the CPU devices) and
//! returns a [`LossError`] instead of panicking, hanging or running out of memory.

pub mod config;
pub mod cost;
pub mod fused; // fused GPU kernels (Sinkhorn softmin, MMD kernel sums)
mod host; // the divergences in host memory on the CPU devices
pub mod kernel;
pub mod mmd;
pub mod penalty;
pub mod route;
pub mod sinkhorn;
pub mod solver;
pub mod tensor_ops;

pub use config::{Bandwidth, LossError, MmdConfig, MmdEstimator, SCALING_RANGE, SinkhornConfig};
pub use kernel::median_heuristic;
pub use mmd::{MmdOutput, mmd2, mmd2_on, mmd2_tensor_ops, mmd2_with_bandwidths};
pub use penalty::{Divergence, PenaltyOutput, fairness_penalty};
pub use sinkhorn::{
    sinkhorn_divergence, sinkhorn_divergence_on, sinkhorn_divergence_tensor_ops, solve_potentials,
};
pub use solver::{Potentials, SinkhornOutput, SolveOutput, epsilon_schedule};
