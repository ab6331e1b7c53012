//! The divergences on burn tensor operations, on any device: the reference the host and fused
//! paths are tested against, and the path of the GPU devices below the fused kernels'
//! threshold (the routing module, `route.rs`). Autodiff runs through the MMD's kernel matrices; the Sinkhorn
//! loop runs on detached tensors and its last step is differentiated
//! (`crate::solver::final_value`).
use burn::tensor::Tensor;

use crate::config::{LossError, SinkhornConfig};
use crate::cost::squared_distances;
use crate::kernel::unbiased_self_term;
use crate::solver::{Pair, Problem, SoftminOp, SolveOutput, TrackedSoftmin, solve_relaxed};

/// `softmin_eps(C, h)_i = -eps * LSE_j(h_j - C_ij / eps)`, stabilised with the row maximum.
///
/// # Shapes
/// - `neg_cost_over_eps`: `[n, m]`, the matrix `-C / eps`
/// - `h`: `[m]`
/// - output: `[n]`
pub fn softmin(eps: f64, neg_cost_over_eps: Tensor<2>, h: Tensor<1>) -> Tensor<1> {
    let z = neg_cost_over_eps + h.unsqueeze_dim::<2>(0);
    let max = z.clone().max_dim(1).detach(); // [n, 1]
    let lse = (z - max.clone()).exp().sum_dim(1).log() + max;
    lse.squeeze_dim::<1>(1).mul_scalar(-eps)
}

/// The four cost matrices of the debiased divergence, each stored as `-C / eps` for one eps.
pub(crate) struct Costs {
    pub(crate) xy: Tensor<2>,
    pub(crate) yx: Tensor<2>,
    pub(crate) xx: Tensor<2>,
    pub(crate) yy: Tensor<2>,
}

impl Costs {
    /// Half squared distances, `C(x, y) = |x - y|^2 / 2`.
    pub(crate) fn new(x: &Tensor<2>, y: &Tensor<2>) -> Self {
        let pooled = Tensor::cat(vec![x.clone(), y.clone()], 0);
        let xy = squared_distances(x.clone(), y.clone(), &pooled).mul_scalar(0.5);
        Self {
            yx: xy.clone().transpose(),
            xy,
            xx: squared_distances(x.clone(), x.clone(), x).mul_scalar(0.5),
            yy: squared_distances(y.clone(), y.clone(), y).mul_scalar(0.5),
        }
    }

    fn scaled(&self, eps: f64) -> Self {
        let s = -1.0 / eps;
        Self {
            xy: self.xy.clone().mul_scalar(s),
            yx: self.yx.clone().mul_scalar(s),
            xx: self.xx.clone().mul_scalar(s),
            yy: self.yy.clone().mul_scalar(s),
        }
    }
}

/// The tensor-op softmins: the cost matrices stored once, scaled to `-C / eps` per eps.
pub(crate) struct TensorSoftmin {
    costs: Costs,
    scaled: Option<Costs>,
}

impl SoftminOp for TensorSoftmin {
    fn prepare(&mut self, eps: f64) {
        self.scaled = Some(self.costs.scaled(eps));
    }

    fn softmin(&self, eps: f64, pair: Pair, h: Tensor<1>) -> Tensor<1> {
        let k = self.scaled.as_ref().expect("prepare before softmin");
        let neg_cost = match pair {
            Pair::XY => &k.xy,
            Pair::YX => &k.yx,
            Pair::XX => &k.xx,
            Pair::YY => &k.yy,
        };
        softmin(eps, neg_cost.clone(), h)
    }
}

/// `MMD2` on tensor operations (autodiff through the kernel matrices), the path of the GPU
/// devices below the fused kernels' threshold and of weights that carry a gradient.
pub(crate) fn mmd2_tensor_ops(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Tensor<1>,
    b: Tensor<1>,
    bandwidths: &[f64],
    unbiased: bool,
) -> Tensor<1> {
    let xx = self_term(&x, &a, bandwidths, unbiased);
    let yy = self_term(&y, &b, bandwidths, unbiased);
    let k_xy = gaussian_kernel(squared_distances(x.clone(), y, &x), bandwidths);
    let xy = quadratic_form(k_xy, a, b);
    xx + yy - xy.mul_scalar(2.0)
}

/// `a' K a`, or its U-statistic version (`crate::kernel::unbiased_self_term`).
fn self_term(x: &Tensor<2>, a: &Tensor<1>, bandwidths: &[f64], unbiased: bool) -> Tensor<1> {
    let k = gaussian_kernel(squared_distances(x.clone(), x.clone(), x), bandwidths);
    let full = quadratic_form(k, a.clone(), a.clone());
    if unbiased {
        unbiased_self_term(full, a)
    } else {
        full
    }
}

/// `mean over s of exp(-D / (2 s^2))`.
fn gaussian_kernel(sq_dist: Tensor<2>, bandwidths: &[f64]) -> Tensor<2> {
    let mut sum: Option<Tensor<2>> = None;
    for &s in bandwidths {
        // `mul_scalar` by the reciprocal, not `div_scalar`: burn 0.22.1 autodiff computes the
        // backward of `div_scalar` with a float32 reciprocal, which caps float64 gradients at
        // ~1e-8 relative accuracy.
        let k = sq_dist.clone().mul_scalar(-1.0 / (2.0 * s * s)).exp();
        sum = Some(match sum {
            Some(acc) => acc + k,
            None => k,
        });
    }
    sum.expect("at least one bandwidth")
        .mul_scalar(1.0 / bandwidths.len() as f64)
}

/// `a' K b`, shape `[1]`.
fn quadratic_form(k: Tensor<2>, a: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
    let kb = k.matmul(b.unsqueeze_dim::<2>(1)); // [n, 1]
    (kb.squeeze_dim::<1>(1) * a).sum()
}

/// [`TrackedSoftmin`] on tensor ops: the cost `C(rows, cols)` differentiable in `rows`, both
/// clouds centred on the pooled mean of their detached values.
pub(crate) struct TensorOpsFinal;

impl TrackedSoftmin for TensorOpsFinal {
    fn softmin(&self, eps: f64, rows: &Tensor<2>, cols: &Tensor<2>, h: Tensor<1>) -> Tensor<1> {
        let cols = cols.clone().detach();
        let pooled = Tensor::cat(vec![rows.clone().detach(), cols.clone()], 0);
        let neg_cost = squared_distances(rows.clone(), cols, &pooled).mul_scalar(-0.5 / eps);
        softmin(eps, neg_cost, h)
    }
}

/// The solver loop on the tensor-op cost matrices.
pub(crate) fn solve(problem: &Problem, config: &SinkhornConfig) -> Result<SolveOutput, LossError> {
    let mut op = TensorSoftmin {
        costs: Costs::new(&problem.x, &problem.y),
        scaled: None,
    };
    solve_relaxed(&mut op, problem, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn softmin_matches_hand_computed_values() {
        let device = Device::flex();
        // C = [[0, 1], [2, 0]], h = [0, ln 2], eps = 1:
        // row 0: -ln(e^0 + 2 e^-1), row 1: -ln(e^-2 + 2 e^0).
        let neg_c = Tensor::<2>::from_floats([[0.0, -1.0], [-2.0, 0.0]], &device);
        let h = Tensor::<1>::from_floats([0.0, std::f32::consts::LN_2], &device);
        let got: Vec<f32> = softmin(1.0, neg_c, h)
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap();
        let want = [
            -(1.0f64 + 2.0 * (-1.0f64).exp()).ln(),
            -((-2.0f64).exp() + 2.0).ln(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn softmin_is_stable_for_tiny_eps() {
        let device = Device::flex();
        // eps = 1e-4 with costs of order 1: exp(-C/eps) underflows without the max shift.
        let neg_c = Tensor::<2>::from_floats([[-1.0e4, -2.0e4]], &device);
        let h = Tensor::<1>::from_floats([0.0, 0.0], &device);
        let got: Vec<f32> = softmin(1e-4, neg_c, h)
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap();
        assert!((got[0] - 1.0).abs() < 1e-5, "{}", got[0]);
    }
}
