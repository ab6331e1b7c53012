//! Divergences between weighted point clouds on burn tensors, and the fairness penalty built
//! from them. The repository's `MATH.md` contract defines every formula here.
//!
//! - [`mmd`]: Gaussian-kernel maximum mean discrepancy (biased and unbiased estimators).
//! - [`sinkhorn`]: the debiased Sinkhorn divergence, log domain, eps-scaling, envelope gradient;
//!   its solver loop runs on tensor ops, through the fused kernels on a GPU, or in host memory
//!   on the CPU devices.
//! - [`penalty`]: the demographic-parity penalty over `G >= 2` groups.
//!
//! Every function runs on any burn device (Flex, NdArray, wgpu) and in the dtype of its inputs
//! (float32, or float64 where the device has it).

pub mod cost;
pub mod fused; // fused GPU kernels (Sinkhorn softmin, MMD kernel sums)
mod host; // the Sinkhorn loop in host memory on the CPU devices
pub mod mmd;
pub mod penalty;
pub mod sinkhorn;

pub use mmd::{Bandwidth, MmdConfig, MmdEstimator, MmdOutput, mmd2, mmd2_with_bandwidths};
pub use penalty::{Divergence, PenaltyOutput, fairness_penalty};
pub use sinkhorn::{SinkhornConfig, SinkhornOutput, sinkhorn_divergence};
