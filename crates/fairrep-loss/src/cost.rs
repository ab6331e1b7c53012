//! Squared Euclidean distances and weight helpers shared by the divergences.
use burn::tensor::{DType, Tensor};

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
            what: if which == "a" {
                "weights a"
            } else {
                "weights b"
            },
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

/// The diagonal length of the pooled bounding box, the diameter used by the eps schedule: the
/// per-coordinate extremes on the device, their differences squared and summed in float64 on
/// the host (so that float32 coordinates near 1e20 do not overflow). NaN or infinite when a
/// coordinate is.
pub(crate) fn box_diameter(x: &Tensor<2>, y: &Tensor<2>) -> f64 {
    let pooled = Tensor::cat(vec![x.clone(), y.clone()], 0);
    let lo = host_values(pooled.clone().min_dim(0).flatten(0, 1));
    let hi = host_values(pooled.max_dim(0).flatten(0, 1));
    lo.iter()
        .zip(&hi)
        .map(|(l, h)| (h - l) * (h - l))
        .sum::<f64>()
        .sqrt()
}

/// The values of a small tensor, read on the host as `f64`.
fn host_values(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .try_to_vec_as::<f64>()
        .expect("float tensor data")
}

/// The largest finite value of `dtype`.
fn dtype_max(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MAX,
        DType::F32 | DType::Flex32 => f64::from(f32::MAX),
        DType::F16 => 65_504.0,
        DType::BF16 => 3.389_531_4e38,
        _ => f64::MAX,
    }
}

/// [`box_diameter`], checked: the squared distances of the two clouds must be finite in their
/// dtype (no coordinate is NaN or infinite, and `diameter^2` does not overflow), else the
/// divergences would be NaN or never end.
pub(crate) fn checked_diameter(x: &Tensor<2>, y: &Tensor<2>) -> Result<f64, LossError> {
    let diameter = box_diameter(x, y);
    let dtype = x.dtype();
    if diameter.is_finite() && diameter * diameter < dtype_max(dtype) {
        return Ok(diameter);
    }
    let magnitude = [x, y]
        .into_iter()
        .map(|t: &Tensor<2>| -> f64 { (*t).clone().abs().max().into_scalar::<f64>() })
        .fold(0.0f64, |a, b| {
            if b.is_nan() || a.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        });
    Err(LossError::NonFinite {
        dtype: format!("{dtype:?}").to_lowercase(),
        magnitude,
        hint: if dtype == DType::F64 {
            ""
        } else {
            ", or compute in float64 (the CPU devices)"
        },
    })
}
