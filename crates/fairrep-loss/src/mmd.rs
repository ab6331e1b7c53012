//! Gaussian-kernel maximum mean discrepancy (docs/MATH.md, "MMD with Gaussian kernels"):
//! validation and bandwidths, then the path `crate::route` chooses.
use burn::tensor::{DType, Tensor};

use crate::config::{LossError, MmdConfig, MmdEstimator};
use crate::cost::{check_weights, checked_diameter, uniform_weights};
use crate::kernel::resolve_bandwidths;
use crate::route::{Kind, Path, check_memory, check_path, route};
use crate::{fused, host, tensor_ops};

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
/// - output: `[1]`, differentiable w.r.t. `x` and `y` (and the weights on the tensor-op path).
pub fn mmd2(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Result<Tensor<1>, LossError> {
    Ok(mmd2_with_bandwidths(x, y, a, b, config)?.value)
}

/// [`mmd2`], also returning the bandwidths used.
///
/// Errors: invalid bandwidths, clouds of different dimensions, weights that are negative,
/// non-finite or all zero, points whose distances are not finite, float64 on wgpu, and a
/// problem too large for the memory of the path that would compute it.
pub fn mmd2_with_bandwidths(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Result<MmdOutput, LossError> {
    mmd2_on_path(None, x, y, a, b, config)
}

/// [`mmd2_with_bandwidths`] on the given path instead of the routed one (benchmarks and tests
/// compare the paths on one problem); an error if that path cannot run on the inputs' device
/// and dtype (`crate::route::check_path`) or would not fit in memory.
pub fn mmd2_on(
    path: Path,
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Result<MmdOutput, LossError> {
    mmd2_on_path(Some(path), x, y, a, b, config)
}

fn mmd2_on_path(
    forced: Option<Path>,
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &MmdConfig,
) -> Result<MmdOutput, LossError> {
    config.validate()?;
    let ([n, d], [m, dy]) = (x.dims(), y.dims());
    if d != dy {
        return Err(LossError::Shape {
            what: "x and y",
            expected: format!("points of one dimension (x: {d})"),
            found: format!("y of dimension {dy}"),
        });
    }
    let a = a.unwrap_or_else(|| uniform_weights(&x));
    let b = b.unwrap_or_else(|| uniform_weights(&y));
    check_weights("a", &a, n)?;
    check_weights("b", &b, m)?;
    checked_diameter(&x.clone().inner(), &y.clone().inner())?;
    let tracked = a.is_tracked() || b.is_tracked();
    let dtype = x.dtype();
    let path = match forced {
        Some(path) => {
            check_path(Kind::Mmd, path, &x.device(), dtype, [n, m, d], tracked)?;
            path
        }
        None => route(Kind::Mmd, &x.device(), dtype, [n, m, d], tracked)?,
    };
    check_memory(Kind::Mmd, path, &x.device(), [n, m, d], dtype.size())?;
    let bandwidths = resolve_bandwidths(config, &x, &y)?;
    let unbiased = config.estimator == MmdEstimator::Unbiased;
    let value = match (path, dtype) {
        (Path::Host, DType::F64) => {
            host::mmd::mmd2_on_host::<f64>(&x, &y, &a, &b, &bandwidths, unbiased)
        }
        (Path::Host, _) => host::mmd::mmd2_on_host::<f32>(&x, &y, &a, &b, &bandwidths, unbiased),
        (Path::HostTiled, DType::F64) => {
            host::tiled::mmd2_tiled::<f64>((&x, &y), (&a, &b), &bandwidths, unbiased)
        }
        (Path::HostTiled, _) => {
            host::tiled::mmd2_tiled::<f32>((&x, &y), (&a, &b), &bandwidths, unbiased)
        }
        (Path::Fused, _) => fused::mmd2((&x, &y), (&a, &b), &bandwidths, unbiased),
        (Path::TensorOps, _) => tensor_ops::mmd2_tensor_ops(x, y, a, b, &bandwidths, unbiased),
    };
    Ok(MmdOutput { value, bandwidths })
}

/// [`mmd2`] on the tensor-op path whatever the device: the reference the other paths are
/// tested against.
pub fn mmd2_tensor_ops(
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
    Ok(tensor_ops::mmd2_tensor_ops(
        x,
        y,
        a,
        b,
        &bandwidths,
        unbiased,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bandwidth;
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
        for estimator in [MmdEstimator::Biased, MmdEstimator::Unbiased] {
            let config = MmdConfig {
                bandwidth: Bandwidth::Fixed(vec![0.7, 2.0]),
                estimator,
            };
            let run = |on_host: bool| {
                let x = cloud(23, 4, 3, 100.0).require_grad();
                let y = cloud(17, 4, 8, 100.5).require_grad();
                let (a, b) = (Some(weights(23)), Some(weights(17)));
                let value = if on_host {
                    mmd2(x.clone(), y.clone(), a, b, &config).unwrap()
                } else {
                    mmd2_tensor_ops(x.clone(), y.clone(), a, b, &config).unwrap()
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
            assert!((v_t - v_h).abs() < 1e-12, "{estimator:?}: {v_t} vs {v_h}");
            assert!(v_h > 1e-3, "a non-trivial case: {v_h}");
            for (want, got) in [(gx_t, gx_h), (gy_t, gy_h)] {
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (w, g) in want.iter().zip(&got) {
                    assert!((w - g).abs() <= 1e-10 * scale, "{estimator:?}: {w} vs {g}");
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
        let v: f32 = mmd2(x, y, None, None, &config).unwrap().into_scalar();
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
        let v: f32 = mmd2(x.clone(), x, None, None, &config)
            .unwrap()
            .into_scalar();
        let k01 = (-0.5f64).exp();
        let want = 2.0 * k01 - 2.0 * (2.0 + 2.0 * k01) / 4.0;
        assert!((v as f64 - want).abs() < 1e-6, "{v} vs {want}");
    }
}
