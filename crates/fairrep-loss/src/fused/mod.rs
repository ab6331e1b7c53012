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
//! - When the divergences take this path is decided in the routing module, `route.rs` (wgpu, float32, large
//!   enough).
mod backend;
mod kernels;

pub use backend::FusedOps;
pub use kernels::MAX_FUSED_DIM;

use burn::backend::Dispatch;
use burn::tensor::Tensor;

use crate::config::{LossError, MmdConfig, MmdEstimator, SinkhornConfig};
use crate::cost::uniform_weights;
use crate::kernel::{resolve_bandwidths, unbiased_self_term};
use crate::solver::{
    Pair, Problem, SinkhornOutput, SoftminOp, SolveOutput, TrackedSoftmin, final_value,
    solve_relaxed,
};

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

/// The Sinkhorn module's `softmin`, with the cost `C = |x - y|^2 / 2` computed in the
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

/// The last step's softmin through the fused op, whose custom backward is the envelope
/// gradient; the column cloud as a constant (`inner`: no autodiff at all; a detached leaf
/// would still count as tracked).
struct FusedFinal;

impl TrackedSoftmin for FusedFinal {
    fn softmin(&self, eps: f64, rows: &Tensor<2>, cols: &Tensor<2>, h: Tensor<1>) -> Tensor<1> {
        softmin(eps, rows, &cols.clone().inner(), h)
    }
}

/// The shared solver loop with every softmin through the fused kernel: nothing of size `n x m`
/// allocated.
pub(crate) fn solve(problem: &Problem, config: &SinkhornConfig) -> Result<SolveOutput, LossError> {
    let mut op = FusedSoftmin {
        x: problem.x.clone(),
        y: problem.y.clone(),
    };
    solve_relaxed(&mut op, problem, config)
}

/// The divergence through the fused softmin: the loop on detached tensors, then the last step
/// (`crate::solver::final_value`) through the fused op. Nothing of size `n x m` is allocated,
/// forward or backward.
pub(crate) fn divergence(
    (x, y): (&Tensor<2>, &Tensor<2>),
    problem: Problem,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let solved = solve(&problem, config)?;
    let value = final_value(
        &FusedFinal,
        config.eps,
        (x, y),
        (&problem.a, &problem.b),
        solved.potentials,
    );
    Ok(SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
        // The last step: one softmin of each of the four potentials.
        n_softmins: solved.n_softmins + 4,
    })
}

/// [`crate::sinkhorn_divergence`] on the fused path whatever the device (for tests and
/// benchmarks; the divergence functions route by themselves). Validates like it.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
pub fn sinkhorn_divergence_fused(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    config.validate()?;
    let a = a.unwrap_or_else(|| uniform_weights(&x)).inner();
    let b = b.unwrap_or_else(|| uniform_weights(&y)).inner();
    let problem = Problem::new(&x, &y, &a, &b)?;
    divergence((&x, &y), problem, config)
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

/// MMD² through the fused kernel sums with resolved bandwidths (the path of
/// `crate::mmd2_with_bandwidths` on wgpu). The weights carry no gradient.
pub(crate) fn mmd2(
    (x, y): (&Tensor<2>, &Tensor<2>),
    (a, b): (&Tensor<1>, &Tensor<1>),
    bandwidths: &[f64],
    unbiased: bool,
) -> Tensor<1> {
    let self_term = |x: &Tensor<2>, a: &Tensor<1>| {
        let full = self_form(x, a, bandwidths);
        if unbiased {
            unbiased_self_term(full, a)
        } else {
            full
        }
    };
    let xx = self_term(x, a);
    let yy = self_term(y, b);
    let xy = cross_form(x, y, a, b, bandwidths);
    xx + yy - xy.mul_scalar(2.0)
}

/// [`crate::mmd2`] on the fused path whatever the device (for tests and benchmarks; the
/// divergence functions route by themselves). Validates like it; the median heuristic is read
/// on the host from at most 2^20 sampled pairs.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
pub fn mmd2_fused(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Result<Tensor<1>, LossError> {
    config.validate()?;
    let a = a.unwrap_or_else(|| uniform_weights(&x));
    let b = b.unwrap_or_else(|| uniform_weights(&y));
    let bandwidths = resolve_bandwidths(config, &x, &y)?;
    let unbiased = config.estimator == MmdEstimator::Unbiased;
    Ok(mmd2((&x, &y), (&a, &b), &bandwidths, unbiased))
}
