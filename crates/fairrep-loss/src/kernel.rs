//! The pieces of the Gaussian-kernel MMD that every path shares (docs/MATH.md, "MMD with
//! Gaussian kernels"): resolving the bandwidths, and the U-statistic's correction of a self
//! term.
use burn::tensor::Tensor;
use fairrep_metrics::median::{MedianDistance, MedianError, median_pairwise_distance};

use crate::config::{BANDWIDTH_RANGE, Bandwidth, LossError, MmdConfig};

/// The bandwidths `config` asks for: the fixed list, or the median heuristic of the pooled
/// clouds ([`median_heuristic`]).
pub(crate) fn resolve_bandwidths(
    config: &MmdConfig,
    x: &Tensor<2>,
    y: &Tensor<2>,
) -> Result<Vec<f64>, LossError> {
    Ok(match &config.bandwidth {
        Bandwidth::Fixed(s) => s.clone(),
        Bandwidth::Median => {
            let median = median_heuristic(x, y)?;
            if !BANDWIDTH_RANGE.contains(&median) {
                return Err(LossError::InvalidConfig {
                    key: "bandwidth (median heuristic)",
                    expected: "a median pairwise distance in the supported range [1e-15, 1e15]; \
                               the points are too large or too close together: rescale them, \
                               or give bandwidths explicitly"
                        .into(),
                    found: format!("{median:e}"),
                });
            }
            vec![median]
        }
    })
}

/// The median pairwise distance of the pooled sample (`fairrep_metrics::median`: every pair up
/// to 2048 points, a seeded sample of 2^20 pairs above; float64 sums of squared differences),
/// read on the host, detached. When every point coincides the MMD is 0 whatever the
/// bandwidth, and 1 is returned.
pub fn median_heuristic(x: &Tensor<2>, y: &Tensor<2>) -> Result<f64, LossError> {
    let d = x.dims()[1];
    let pooled = Tensor::cat(vec![x.clone().inner(), y.clone().inner()], 0);
    let values: Vec<f64> = pooled
        .into_data()
        .try_to_vec_as::<f64>()
        .expect("float tensor data");
    median_bandwidth(median_pairwise_distance(&values, d)).ok_or_else(|| LossError::NonFinite {
        dtype: "float64".into(),
        magnitude: values.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        hint: "",
    })
}

/// The bandwidth the median heuristic takes from a median pairwise distance: the median, or 1
/// where the points have no pair at a positive distance; `None` for non-finite points.
pub(crate) fn median_bandwidth(median: Result<MedianDistance, MedianError>) -> Option<f64> {
    match median {
        Ok(m) => Some(m.value),
        Err(MedianError::AllIdentical | MedianError::TooFewPoints(_)) => Some(1.0),
        Err(MedianError::NonFinite) => None,
    }
}

/// The U-statistic's self term from the full quadratic form `T = a' K a` and `s = sum a_i^2`
/// (`k(x, x) = 1` on the diagonal): `(T - s) / (1 - s)`, or `None` when the whole mass sits on
/// one point (`s >= 1`: no off-diagonal pair; the term is then 0).
pub(crate) fn unbiased_scale(sum_sq: f64) -> Option<f64> {
    let denom = 1.0 - sum_sq;
    (denom > 0.0).then(|| 1.0 / denom)
}

/// [`unbiased_scale`] applied to a self term on tensors (differentiable in `full` and `a`).
pub(crate) fn unbiased_self_term(full: Tensor<1>, a: &Tensor<1>) -> Tensor<1> {
    let diag = a.clone().square().sum();
    let sum_sq: f64 = diag.clone().into_scalar::<f64>();
    match unbiased_scale(sum_sq) {
        Some(_) => (full - diag.clone()).div(diag.neg().add_scalar(1.0)),
        None => full.zeros_like(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn median_heuristic_of_a_line() {
        // Points 0, 1, 3: pairwise distances 1, 2, 3 -> median 2.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0], [1.0]], &device);
        let y = Tensor::<2>::from_floats([[3.0]], &device);
        assert!((median_heuristic(&x, &y).unwrap() - 2.0).abs() < 1e-12);
        // Clouds 1e20 apart keep their distance (float64 on the host).
        let far = Tensor::<2>::from_floats([[1.0e20]], &device);
        let m = median_heuristic(&x, &far).unwrap();
        assert!((m / 1e20 - 1.0).abs() < 1e-6, "{m}");
    }

    #[test]
    fn unbiased_scale_is_undefined_for_one_point() {
        assert_eq!(unbiased_scale(0.25), Some(1.0 / 0.75));
        assert_eq!(unbiased_scale(1.0), None);
    }
}
