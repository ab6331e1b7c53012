//! Squared Euclidean distances and weight helpers shared by the divergences.
use burn::tensor::Tensor;

use crate::config::LossError;

/// Squared distances `|x_i - y_j|^2`, shape `[n, m]`.
///
/// Both clouds are first translated by the same constant (the mean of `centre_of`, detached),
/// so the expansion `|x|^2 + |y|^2 - 2 <x, y>` keeps its precision in float32 for clouds far
/// from the origin (docs/MATH.md, "Numerics"). Tiny negative values from rounding are clamped to 0.
/// Differentiable w.r.t. `x` and `y` (the centre is a constant).
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `centre_of`: `[k, d]`
/// - output: `[n, m]`
pub fn squared_distances(x: Tensor<2>, y: Tensor<2>, centre_of: &Tensor<2>) -> Tensor<2> {
    let centre = centre_of.clone().detach().mean_dim(0);
    let x = x - centre.clone();
    let y = y - centre;
    let x2 = x.clone().square().sum_dim(1); // [n, 1]
    let y2 = y.clone().square().sum_dim(1).transpose(); // [1, m]
    let xy = x.matmul(y.transpose()); // [n, m]
    (x2 + y2 - xy.mul_scalar(2.0)).clamp_min(0.0)
}

/// Uniform weights `1/n` with the dtype and device of `like`.
///
/// # Shapes
/// - `like`: `[n, d]`; output `[n]`
pub fn uniform_weights(like: &Tensor<2>) -> Tensor<1> {
    let n = like.dims()[0];
    Tensor::<1>::ones([n], (&like.device(), like.dtype())).div_scalar(n as f64)
}

/// Log-weights with `log 0` replaced by a large negative constant rather than `-inf`
/// (docs/MATH.md, "Numerics"), so a zero weight never produces NaN in a log-sum-exp.
pub fn log_weights(w: Tensor<1>) -> Tensor<1> {
    let zero = w.clone().lower_equal_elem(0.0);
    w.clamp_min(f64::MIN_POSITIVE)
        .log()
        .mask_fill(zero, LOG_ZERO)
}

/// The stand-in for `log 0`.
pub const LOG_ZERO: f64 = -1.0e30;

/// Checks weights `w` of a cloud of `n` points: `n` values, each finite and `>= 0`, with a
/// positive sum (read on the host).
pub(crate) fn check_weights(which: &'static str, w: &Tensor<1>, n: usize) -> Result<(), LossError> {
    let len = w.dims()[0];
    if len != n {
        return Err(LossError::Shape {
            what: if which == "a" { "weights a" } else { "weights b" },
            expected: format!("{n} weights, one per point"),
            found: format!("{len}"),
        });
    }
    let values: Vec<f64> = w
        .clone()
        .inner()
        .into_data()
        .try_to_vec_as::<f64>()
        .expect("float tensor data");
    if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(LossError::Weights {
            which,
            found: v.to_string(),
        });
    }
    let total: f64 = values.iter().sum();
    if total <= 0.0 {
        return Err(LossError::Weights {
            which,
            found: format!("a sum of {total}"),
        });
    }
    Ok(())
}
