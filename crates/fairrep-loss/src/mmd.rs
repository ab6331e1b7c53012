//! Gaussian-kernel maximum mean discrepancy (MATH.md, "MMD with Gaussian kernels").
use burn::tensor::{DType, Tensor};

use crate::cost::{squared_distances, uniform_weights};
use crate::host::mmd2_on_host;

/// Kernel bandwidths `s` of `k_s(x, y) = exp(-|x - y|^2 / (2 s^2))`.
#[derive(Debug, Clone, PartialEq)]
pub enum Bandwidth {
    /// Fixed bandwidths; the kernel is the mean of the Gaussian kernels over the list.
    Fixed(Vec<f64>),
    /// The median pairwise distance of the pooled sample, treated as a constant (no gradient).
    Median,
}

/// Which estimator of MMD² to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmdEstimator {
    /// V-statistic `a'Kxx a + b'Kyy b - 2 a'Kxy b`, always >= 0.
    Biased,
    /// U-statistic: the self-sums without their diagonals, each divided by `1 - sum a_i^2`.
    /// Can be < 0. A cloud whose whole mass sits on one point has no off-diagonal pair: its
    /// self-term is then 0 (callers that expose this estimator reject such clouds).
    Unbiased,
}

/// Configuration of [`mmd2`].
#[derive(Debug, Clone, PartialEq)]
pub struct MmdConfig {
    pub bandwidth: Bandwidth,
    pub estimator: MmdEstimator,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self {
            bandwidth: Bandwidth::Median,
            estimator: MmdEstimator::Biased,
        }
    }
}

/// Result of [`mmd2_with_bandwidths`]: the value and the bandwidths actually used.
#[derive(Debug, Clone)]
pub struct MmdOutput {
    /// MMD², shape `[1]`.
    pub value: Tensor<1>,
    /// The resolved bandwidths (the median heuristic's value when asked for).
    pub bandwidths: Vec<f64>,
}

/// MMD² between `alpha = sum_i a_i delta_{x_i}` and `beta = sum_j b_j delta_{y_j}`.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
/// - output: `[1]`, differentiable w.r.t. `x` and `y`.
pub fn mmd2(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Tensor<1> {
    mmd2_with_bandwidths(x, y, a, b, config).value
}

/// [`mmd2`], also returning the bandwidths used.
pub fn mmd2_with_bandwidths(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> MmdOutput {
    // Fused-kernel hook (crate::fused): on wgpu, large clouds take the fused path.
    if crate::fused::should_route(&x, &y, a.as_ref(), b.as_ref()) {
        return crate::fused::mmd2_fused(x, y, a, b, config);
    }
    let a = a.unwrap_or_else(|| uniform_weights(&x));
    let b = b.unwrap_or_else(|| uniform_weights(&y));
    let bandwidths = match &config.bandwidth {
        Bandwidth::Fixed(s) => s.clone(),
        Bandwidth::Median => vec![median_heuristic(&x, &y)],
    };
    let unbiased = config.estimator == MmdEstimator::Unbiased;
    // On the CPU devices, in host memory (crate::host), unless the weights are differentiated.
    if crate::host::runs_on_host(&x.device()) && !a.is_tracked() && !b.is_tracked() {
        let on_host = match x.dtype() {
            DType::F32 => Some(mmd2_on_host::<f32>(&x, &y, &a, &b, &bandwidths, unbiased)),
            DType::F64 => Some(mmd2_on_host::<f64>(&x, &y, &a, &b, &bandwidths, unbiased)),
            _ => None,
        };
        if let Some(value) = on_host {
            return MmdOutput { value, bandwidths };
        }
    }
    MmdOutput {
        value: mmd2_tensor_ops(x, y, a, b, &bandwidths, unbiased),
        bandwidths,
    }
}

/// `MMD2` on tensor operations (autodiff through the kernel matrices), the path of the GPU
/// devices below the fused kernels' threshold and of weights that carry a gradient.
fn mmd2_tensor_ops(
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

/// `a' K a`, or its U-statistic version `(a' K a - sum a_i^2) / (1 - sum a_i^2)` (`k(x, x) = 1`).
fn self_term(x: &Tensor<2>, a: &Tensor<1>, bandwidths: &[f64], unbiased: bool) -> Tensor<1> {
    let k = gaussian_kernel(squared_distances(x.clone(), x.clone(), x), bandwidths);
    let full = quadratic_form(k, a.clone(), a.clone());
    if !unbiased {
        return full;
    }
    let diag = a.clone().square().sum();
    let denom = diag.clone().neg().add_scalar(1.0);
    let denom_host: f64 = denom.clone().into_scalar::<f64>();
    if denom_host <= 0.0 {
        return full.zeros_like();
    }
    (full - diag).div(denom)
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

/// Median pairwise Euclidean distance of the pooled sample (all pairs `i < j`, the mean of the
/// two middle values for an even count). Computed on the host, detached. Returns 1 when the
/// pooled sample has fewer than two distinct points, so the kernel stays defined.
pub fn median_heuristic(x: &Tensor<2>, y: &Tensor<2>) -> f64 {
    let pooled = Tensor::cat(vec![x.clone().inner(), y.clone().inner()], 0);
    let n = pooled.dims()[0];
    let d2 = squared_distances(pooled.clone(), pooled.clone(), &pooled);
    let values: Vec<f64> = d2.into_data().try_to_vec_as::<f64>().expect("f64 data");
    let mut dists = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in (i + 1)..n {
            dists.push(values[i * n + j].max(0.0).sqrt());
        }
    }
    if dists.is_empty() {
        return 1.0;
    }
    dists.sort_by(f64::total_cmp);
    let k = dists.len();
    let median = if k % 2 == 1 {
        dists[k / 2]
    } else {
        0.5 * (dists[k / 2 - 1] + dists[k / 2])
    };
    if median > 0.0 { median } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn host_path_matches_the_tensor_op_path() {
        // Values and both gradients, float64, weighted clouds far from the origin, two
        // bandwidths, both estimators.
        let device = Device::flex().autodiff();
        let options = (&device, DType::F64);
        let cloud = |n: usize, d: usize, seed: u64, shift: f64| {
            let values: Vec<f64> = (0..n * d)
                .map(|k| {
                    let t = (k as u64 * 2_654_435_761 + seed) % 10_007;
                    t as f64 / 10_007.0 * 3.0 + shift
                })
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, [n, d]), options)
        };
        let weights = |n: usize| {
            let w: Vec<f64> = (0..n).map(|i| (1 + i % 4) as f64).collect();
            let total: f64 = w.iter().sum();
            let w: Vec<f64> = w.into_iter().map(|v| v / total).collect();
            Tensor::<1>::from_data(TensorData::new(w, [n]), options)
        };
        let host = |t: Tensor<2>| -> Vec<f64> { t.into_data().try_to_vec_as::<f64>().unwrap() };
        for unbiased in [false, true] {
            let run = |on_host: bool| {
                let x = cloud(23, 4, 3, 100.0).require_grad();
                let y = cloud(17, 4, 8, 100.5).require_grad();
                let (a, b) = (weights(23), weights(17));
                let bandwidths = [0.7, 2.0];
                let value = if on_host {
                    mmd2_on_host::<f64>(&x, &y, &a, &b, &bandwidths, unbiased)
                } else {
                    mmd2_tensor_ops(x.clone(), y.clone(), a, b, &bandwidths, unbiased)
                };
                let grads = value.backward();
                let v: f64 = value.into_scalar::<f64>();
                (
                    v,
                    host(x.grad(&grads).unwrap()),
                    host(y.grad(&grads).unwrap()),
                )
            };
            let (v_t, gx_t, gy_t) = run(false);
            let (v_h, gx_h, gy_h) = run(true);
            assert!(
                (v_t - v_h).abs() < 1e-12,
                "unbiased {unbiased}: {v_t} vs {v_h}"
            );
            assert!(v_h > 1e-3, "a non-trivial case: {v_h}");
            for (want, got) in [(gx_t, gx_h), (gy_t, gy_h)] {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (w, g) in want.iter().zip(&got) {
                    assert!(
                        (w - g).abs() <= 1e-10 * scale,
                        "unbiased {unbiased}: {w} vs {g}"
                    );
                }
            }
        }
    }

    #[test]
    fn two_single_points_by_hand() {
        // k(x, y) = exp(-|x-y|^2 / (2 s^2)) with |x-y|^2 = 4, s = 1: MMD2_b = 2 - 2 e^-2.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0, 0.0]], &device);
        let y = Tensor::<2>::from_floats([[2.0, 0.0]], &device);
        let config = MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![1.0]),
            estimator: MmdEstimator::Biased,
        };
        let v: f32 = mmd2(x, y, None, None, &config).into_scalar();
        let want = 2.0 - 2.0 * (-2.0f64).exp();
        assert!((v as f64 - want).abs() < 1e-6, "{v} vs {want}");
    }

    #[test]
    fn unbiased_drops_the_diagonal() {
        // x = {0, 1}, y = {0, 1} on a line, s = 1, k01 = e^-1/2.
        // Unbiased: Kxx off-diagonal mean = k01, same for y, cross mean = (2 + 2 k01) / 4.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0], [1.0]], &device);
        let config = MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![1.0]),
            estimator: MmdEstimator::Unbiased,
        };
        let v: f32 = mmd2(x.clone(), x, None, None, &config).into_scalar();
        let k01 = (-0.5f64).exp();
        let want = 2.0 * k01 - 2.0 * (2.0 + 2.0 * k01) / 4.0;
        assert!((v as f64 - want).abs() < 1e-6, "{v} vs {want}");
    }

    #[test]
    fn median_heuristic_of_a_line() {
        // Points 0, 1, 3: pairwise distances 1, 2, 3 -> median 2.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0], [1.0]], &device);
        let y = Tensor::<2>::from_floats([[3.0]], &device);
        assert!((median_heuristic(&x, &y) - 2.0).abs() < 1e-6);
    }
}
