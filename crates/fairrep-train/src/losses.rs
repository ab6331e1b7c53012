//! The task losses, on tensors (training) and on the host (evaluation).
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

/// Mean BCE-with-logits, `max(l, 0) - l y + log(1 + exp(-|l|))`.
///
/// # Shapes
/// - `logits`, `targets`: `[n, 1]`; output `[1]`.
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let softplus_neg_abs = logits.clone().abs().neg().exp().log1p();
    (relu(logits.clone()) - logits * targets + softplus_neg_abs).mean()
}

/// Mean squared error.
///
/// # Shapes
/// - `predictions`, `targets`: `[n, 1]`; output `[1]`.
pub fn mse(predictions: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let diff = predictions - targets;
    (diff.clone() * diff).mean()
}

/// Numerically stable `mean_i max(l, 0) - l y + log(1 + exp(-|l|))` on the host.
pub fn bce_with_logits_host(logits: &[f32], targets: &[f32]) -> f64 {
    let sum: f64 = logits
        .iter()
        .zip(targets)
        .map(|(&l, &y)| {
            let (l, y) = (f64::from(l), f64::from(y));
            l.max(0.0) - l * y + (-l.abs()).exp().ln_1p()
        })
        .sum();
    sum / logits.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn host_bce_matches_hand_values() {
        // l = 0: log 2 whatever y.
        assert!((bce_with_logits_host(&[0.0], &[1.0]) - 2f64.ln()).abs() < 1e-12);
        // l = 2, y = 1: log(1 + e^-2); l = -3, y = 1: 3 + log(1 + e^-3).
        let want = ((1.0 + (-2f64).exp()).ln() + 3.0 + (1.0 + (-3f64).exp()).ln()) / 2.0;
        assert!((bce_with_logits_host(&[2.0, -3.0], &[1.0, 1.0]) - want).abs() < 1e-6);
        // Large logits stay finite.
        assert!(bce_with_logits_host(&[1e4, -1e4], &[0.0, 1.0]).is_finite());
    }

    #[test]
    fn device_bce_matches_host_bce() {
        let device = Device::flex();
        let logits = [2.0f32, -3.0, 0.0, 40.0];
        let targets = [1.0f32, 1.0, 0.0, 0.0];
        let l = Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [4, 1]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(targets.to_vec(), [4, 1]), &device);
        let got = f64::from(bce_with_logits(l, y).into_scalar::<f32>());
        let want = bce_with_logits_host(&logits, &targets);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
