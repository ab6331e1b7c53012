//! Fused GPU kernels for the Sinkhorn softmin and the MMD kernel sums (MATH.md, "Fused kernels
//! (GPU)").
//!
//! A softmin over `j` for every row `i`, and a Gaussian kernel sum over `j`, are map-reductions:
//! the CubeCL kernels never store the `n x m` matrix. They are registered as the backend
//! extension [`FusedOps`] for Flex, NdArray, Cube (wgpu) and Autodiff; on the CPU devices the
//! extension runs tensor operations (the reference), on wgpu the kernels, and under autodiff a
//! custom backward built from the kernels' second output (envelope theorem for the softmin).
//!
//! - [`fused_softmin`], [`fused_kernel_sum`]: the two ops on [`Tensor`]s.
//! - [`sinkhorn_divergence_fused`], [`mmd2_fused`]: the divergences computed through them, equal
//!   to [`crate::sinkhorn_divergence`] and [`crate::mmd2`] up to float rounding.
//! - [`use_fused`], [`should_route`]: when the divergences take this path (wgpu, large enough).
mod backend;
mod kernels;

pub use backend::FusedOps;
pub use kernels::MAX_FUSED_DIM;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::{Device, Tensor};

use crate::cost::{log_weights, uniform_weights};
use crate::mmd::{Bandwidth, MmdConfig, MmdEstimator, MmdOutput, median_heuristic};
use crate::sinkhorn::{
    Pair, Problem, SinkhornConfig, SinkhornOutput, SoftminOp, SolveOutput, solve_with,
};

/// Smallest `n * m` for which the fused path is used on a wgpu device that is a hardware GPU
/// (n = m = 64, the smallest size measured).
///
/// From `bench_fused` (crates/fairrep-train/examples/bench_fused.rs), value + gradient, on an
/// NVIDIA H200 through Vulkan, two runs: the fused path was faster than the tensor-op path at
/// every size measured, n = m from 64 to 16384, d = 8 and 32 (1.2-3x up to n = 1024, 5-13x
/// from 4096), and the tensor-op path cannot run at all from n = m = 50,000 (wgpu refuses its
/// 10 GB `n x m` buffer).
pub const FUSED_MIN_PAIRS_GPU: usize = 64 * 64;

/// Smallest `n * m` for which the fused path is used on a software Vulkan (a wgpu device with
/// no physical card behind it, lavapipe/llvmpipe) (n = m = 1024).
///
/// From `bench_fused` on lavapipe (2 CPU cores), time ratio tensor-op / fused, d = 8 / 32:
/// softmin 2.9x / 1.1x and kernel sum 1.5x / 1.2x at n = m = 256; 2.7x / 1.3x and 2.0x / 1.3x
/// at 1024; 2.8x / 0.95x and 2.8x / 0.8x at 4096. The fused path is taken from 1024 on, where
/// it is faster or within 20%, because its memory is `O((n + m) d)` where the tensor-op path
/// holds several `n x m` matrices (64 MiB each at 4096). Below, where the memory is small
/// either way, the tensor-op path is kept on this device so that the test suite's small
/// problems on the software Vulkan of CI keep that path checked against the fixtures too (the
/// fused path is checked against it directly).
pub const FUSED_MIN_PAIRS_SOFTWARE: usize = 1 << 20;

/// Whether `device` is a wgpu device (autodiff or not).
fn is_wgpu(device: &Device) -> bool {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(cube) => cube.runtime() == burn::backend::RuntimeId::Wgpu,
        _ => false,
    }
}

/// The smallest `n * m` for which the divergences on `device` take the fused path:
/// [`FUSED_MIN_PAIRS_GPU`] on a wgpu device backed by a card, [`FUSED_MIN_PAIRS_SOFTWARE`] on
/// a software Vulkan; `None` off wgpu (the CPU devices run the Sinkhorn loop in host memory,
/// [`crate::sinkhorn::solve_potentials`], and the MMD on tensor ops).
pub fn fused_min_pairs(device: &Device) -> Option<usize> {
    if !is_wgpu(device) {
        return None;
    }
    let hardware = device.identity().is_some_and(|id| id.physical.is_some());
    Some(if hardware {
        FUSED_MIN_PAIRS_GPU
    } else {
        FUSED_MIN_PAIRS_SOFTWARE
    })
}

/// Whether the divergences between `n` and `m` points on `device` use the fused kernels:
/// wgpu only, and `n * m` at least [`fused_min_pairs`].
pub fn use_fused(device: &Device, n: usize, m: usize) -> bool {
    fused_min_pairs(device).is_some_and(|min| n.saturating_mul(m) >= min)
}

/// [`use_fused`] for two clouds, plus what the kernels require: `d <= MAX_FUSED_DIM`, and
/// weights that carry no gradient (the fused ops differentiate the points only).
pub fn should_route(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: Option<&Tensor<1>>,
    b: Option<&Tensor<1>>,
) -> bool {
    let [n, d] = x.dims();
    let m = y.dims()[0];
    let tracked = |w: Option<&Tensor<1>>| w.is_some_and(Tensor::is_tracked);
    use_fused(&x.device(), n, m) && d <= MAX_FUSED_DIM && !tracked(a) && !tracked(b)
}

/// Output of [`fused_softmin`].
#[derive(Debug, Clone)]
pub struct SoftminOutput {
    /// `-eps LSE_j(h_j - |x_i - y_j|^2 / (2 eps))`, shape `[n]`; differentiable w.r.t. `x`
    /// with `d value_i / d x_i = x_i - barycentre_i = -displacement_i`.
    pub value: Tensor<1>,
    /// `ybar_i = sum_j pi_ij y_j`, shape `[n, d]` (no gradient).
    pub barycentre: Tensor<2>,
    /// `ybar_i - x_i = sum_j pi_ij (y_j - x_i)`, shape `[n, d]` (no gradient), accumulated as
    /// such in the kernel: exact where `barycentre - x` would cancel (clouds far from 0).
    pub displacement: Tensor<2>,
}

/// The softmin of [`crate::sinkhorn::softmin`] with the cost `C = |x - y|^2 / 2` computed in the
/// kernel, and the barycentres of the row-softmax plan.
///
/// `y` and `h` must carry no gradient (detach them): under autodiff only `x` is differentiated.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `h`: `[m]`
pub fn fused_softmin(eps: f64, x: Tensor<2>, y: Tensor<2>, h: Tensor<1>) -> SoftminOutput {
    let (value, delta) = <Dispatch as FusedOps>::fused_softmin(
        x.clone().into_dispatch(),
        y.into_dispatch(),
        h.into_dispatch(),
        eps,
    );
    let displacement: Tensor<2> = Tensor::from_dispatch(delta);
    SoftminOutput {
        value: Tensor::from_dispatch(value),
        barycentre: x.detach() + displacement.clone(),
        displacement,
    }
}

/// Output of [`fused_kernel_sum`].
#[derive(Debug, Clone)]
pub struct KernelSumOutput {
    /// `sum_j b_j k(x_i, y_j)`, shape `[n]`; differentiable w.r.t. `x`.
    pub value: Tensor<1>,
    /// `d value_i / d x_i`, shape `[n, d]` (no gradient).
    pub gradient: Tensor<2>,
}

/// The Gaussian kernel sums `sum_j b_j k(x_i, y_j)`, `k` the mean of the kernels over
/// `bandwidths`, and their gradients w.r.t. `x_i`.
///
/// `y` and `b` must carry no gradient (detach them): under autodiff only `x` is differentiated.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `b`: `[m]`
pub fn fused_kernel_sum(
    x: Tensor<2>,
    y: Tensor<2>,
    b: Tensor<1>,
    bandwidths: &[f64],
) -> KernelSumOutput {
    let (value, gradient) = <Dispatch as FusedOps>::fused_kernel_sum(
        x.into_dispatch(),
        y.into_dispatch(),
        b.into_dispatch(),
        bandwidths.to_vec(),
    );
    KernelSumOutput {
        value: Tensor::from_dispatch(value),
        gradient: Tensor::from_dispatch(gradient),
    }
}

// ---------------------------------------------------------------------------------------------
// Sinkhorn through the fused softmin

/// `softmin_eps(C(rows, cols), h)` through the fused op (value only).
fn softmin(eps: f64, rows: &Tensor<2>, cols: &Tensor<2>, h: Tensor<1>) -> Tensor<1> {
    fused_softmin(eps, rows.clone(), cols.clone(), h).value
}

/// The four softmins through the fused kernel, for the shared solver loop.
struct FusedSoftmin {
    x: Tensor<2>,
    y: Tensor<2>,
}

impl SoftminOp for FusedSoftmin {
    fn prepare(&mut self, _eps: f64) {}

    fn softmin(&self, eps: f64, pair: Pair, h: Tensor<1>) -> Tensor<1> {
        let (rows, cols) = match pair {
            Pair::XY => (&self.x, &self.y),
            Pair::YX => (&self.y, &self.x),
            Pair::XX => (&self.x, &self.x),
            Pair::YY => (&self.y, &self.y),
        };
        softmin(eps, rows, cols, h)
    }
}

/// [`crate::sinkhorn::solve_potentials`] with every softmin through the fused kernel: the same
/// solver loop ([`crate::sinkhorn::solve_with`]), nothing of size `n x m` allocated.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]`
pub fn solve_potentials_fused(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: &Tensor<1>,
    b: &Tensor<1>,
    config: &SinkhornConfig,
) -> SolveOutput {
    let Problem {
        x,
        y,
        a,
        b,
        diameter,
        same,
    } = Problem::new(x, y, a, b);
    solve_with(&mut FusedSoftmin { x, y }, diameter, &a, &b, same, config)
}

/// [`crate::sinkhorn_divergence`] through the fused softmin: the loop on detached tensors,
/// then one last softmin step from the converged potentials whose custom backward is the
/// envelope gradient `dS/dx_i = a_i (xbar_i - ybar_i)`. Nothing of size `n x m` is allocated,
/// forward or backward.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
pub fn sinkhorn_divergence_fused(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> SinkhornOutput {
    let a = a.unwrap_or_else(|| uniform_weights(&x)).inner();
    let b = b.unwrap_or_else(|| uniform_weights(&y)).inner();
    let solved = solve_potentials_fused(&x, &y, &a, &b, config);
    let p = solved.potentials;
    let eps = config.eps;
    let inv = 1.0 / eps;
    let (a_log, b_log) = (log_weights(a.clone()), log_weights(b.clone()));
    // Column clouds as constants (`inner`: no autodiff at all; a detached leaf would still
    // count as tracked).
    let (xd, yd) = (x.clone().inner(), y.clone().inner());

    let f_ba = softmin(eps, &x, &yd, b_log.clone() + p.g_ab.mul_scalar(inv));
    let g_ab = softmin(eps, &y, &xd, a_log.clone() + p.f_ba.mul_scalar(inv));
    let f_aa = softmin(eps, &x, &xd, a_log + p.f_aa.mul_scalar(inv));
    let g_bb = softmin(eps, &y, &yd, b_log + p.g_bb.mul_scalar(inv));
    let value = ((f_ba - f_aa) * a).sum() + ((g_ab - g_bb) * b).sum();
    SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
    }
}

// ---------------------------------------------------------------------------------------------
// MMD through the fused kernel sums

/// `a' K(x, y) b` with value and gradient w.r.t. the rows `x` only: `sum_i a_i r_i`,
/// `r = fused_kernel_sum(x, y, b)` with `y`, `b` constants.
fn row_form(x: &Tensor<2>, y: &Tensor<2>, a: &Tensor<1>, b: &Tensor<1>, bw: &[f64]) -> Tensor<1> {
    let r = fused_kernel_sum(x.clone(), y.clone().inner(), b.clone().inner(), bw).value;
    (r * a.clone()).sum()
}

/// `a' K(x, x) a`: its gradient is twice that of the row form (K symmetric), with the value
/// unchanged: `2 s - s.detach()`.
fn self_form(x: &Tensor<2>, a: &Tensor<1>, bw: &[f64]) -> Tensor<1> {
    let s = row_form(x, x, a, a, bw);
    s.clone().mul_scalar(2.0) - s.detach()
}

/// `a' K(x, y) b`, differentiable in both clouds: `v = row_form(x, y) + row_form(y, x)` has
/// twice the value and exactly the gradient, so the form is `v - v.detach() / 2`.
fn cross_form(x: &Tensor<2>, y: &Tensor<2>, a: &Tensor<1>, b: &Tensor<1>, bw: &[f64]) -> Tensor<1> {
    let v = row_form(x, y, a, b, bw) + row_form(y, x, b, a, bw);
    v.clone() - v.detach().mul_scalar(0.5)
}

/// [`crate::mmd2_with_bandwidths`] through the fused kernel sums (same estimators, same
/// bandwidth resolution). The median heuristic, when asked for, still computes all pairwise
/// distances of the pooled sample (`crate::mmd::median_heuristic`): pass fixed bandwidths to
/// keep memory `O((n + m) d)`.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
pub fn mmd2_fused(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> MmdOutput {
    let a = a.unwrap_or_else(|| uniform_weights(&x));
    let b = b.unwrap_or_else(|| uniform_weights(&y));
    let bandwidths = match &config.bandwidth {
        Bandwidth::Fixed(s) => s.clone(),
        Bandwidth::Median => vec![median_heuristic(&x, &y)],
    };
    let unbiased = config.estimator == MmdEstimator::Unbiased;
    let self_term = |x: &Tensor<2>, a: &Tensor<1>| {
        let full = self_form(x, a, &bandwidths);
        if !unbiased {
            return full;
        }
        // U-statistic: drop the diagonal (k(x, x) = 1) and renormalise.
        let diag = a.clone().square().sum();
        let denom = diag.clone().neg().add_scalar(1.0);
        if denom.clone().into_scalar::<f64>() <= 0.0 {
            return full.zeros_like();
        }
        (full - diag).div(denom)
    };
    let xx = self_term(&x, &a);
    let yy = self_term(&y, &b);
    let xy = cross_form(&x, &y, &a, &b, &bandwidths);
    MmdOutput {
        value: xx + yy - xy.mul_scalar(2.0),
        bandwidths,
    }
}
