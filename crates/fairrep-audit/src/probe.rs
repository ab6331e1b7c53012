//! Fitting a fresh binary head on fixed features (a frozen representation, or raw inputs):
//! the heads of `fairrep transfer` and the leakage probes of `fairrep eval`.
//!
//! Features are standardised with the train rows' mean and standard deviation first (so the
//! ridge and the learning rate mean the same for every representation); the reported
//! Lipschitz constants are those of the head as a function of the unstandardised features.
//! - **linear**: L2-regularised logistic regression, solved by Newton's method with a
//!   backtracking line search (the exact optimum; deterministic).
//! - **mlp**: an MLP head trained with Adam on minibatches; the epoch with the lowest
//!   validation loss is kept.
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use fairrep_data::Matrix;
use fairrep_metrics::linalg::{LogisticFit, logistic_newton, sigmoid, spectral_norm};
use fairrep_model::{Activation, Head, HeadConfig, HeadKind};
use fairrep_train::losses::{bce_with_logits, bce_with_logits_host};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// How heads are fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSettings {
    /// Ridge of the logistic regression (on standardised features).
    pub l2: f64,
    /// Adam learning rate of MLP heads.
    pub lr: f64,
    /// Epochs of MLP heads.
    pub epochs: usize,
    /// Minibatch size of MLP heads.
    pub batch_size: usize,
    /// The MLP heads' non-linearity.
    pub activation: Activation,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self {
            l2: 1e-4,
            lr: 3e-3,
            epochs: 30,
            batch_size: 256,
            activation: Activation::Relu,
        }
    }
}

/// Per-feature standardisation fitted on train rows.
#[derive(Debug, Clone)]
struct Standardiser {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardiser {
    /// Mean and population standard deviation per feature, in two passes (a large common
    /// offset does not cancel the variance); a feature of variance below 1e-12 keeps std 1.
    fn fit(f: &Matrix<f32>) -> Self {
        let n = f.rows.max(1) as f64;
        let mut mean = vec![0.0; f.cols];
        for i in 0..f.rows {
            for (j, &v) in f.row(i).iter().enumerate() {
                mean[j] += f64::from(v) / n;
            }
        }
        let mut var = vec![0.0; f.cols];
        for i in 0..f.rows {
            for (j, &v) in f.row(i).iter().enumerate() {
                var[j] += (f64::from(v) - mean[j]).powi(2) / n;
            }
        }
        let std = var
            .iter()
            .map(|&v| if v > 1e-12 { v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, std }
    }

    fn apply(&self, f: &Matrix<f32>) -> Vec<f64> {
        let mut out = Vec::with_capacity(f.values.len());
        for i in 0..f.rows {
            for (j, &v) in f.row(i).iter().enumerate() {
                out.push((f64::from(v) - self.mean[j]) / self.std[j]);
            }
        }
        out
    }
}

/// A fitted head.
#[derive(Debug)]
pub struct FittedHead {
    /// The architecture.
    pub arch: HeadKind,
    standardiser: Standardiser,
    model: Fitted,
    /// Lipschitz constant (Euclidean) of the logit as a function of the features; the score
    /// `sigmoid(logit)` is `lipschitz / 4`-Lipschitz. Exact for linear heads, the product of
    /// the layers' spectral norms (an upper bound) for MLP heads.
    pub lipschitz: f64,
    /// Validation BCE of the kept model.
    pub valid_loss: f64,
}

#[derive(Debug)]
enum Fitted {
    Linear { w: Vec<f64>, b: f64 },
    Mlp { head: Head, device: Device },
}

impl FittedHead {
    /// Logits of the rows of `f`.
    pub fn logits(&self, f: &Matrix<f32>) -> Vec<f64> {
        let x = self.standardiser.apply(f);
        match &self.model {
            Fitted::Linear { w, b } => x
                .chunks(f.cols.max(1))
                .take(f.rows)
                .map(|row| row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + b)
                .collect(),
            Fitted::Mlp { head, device } => {
                let mut out = Vec::with_capacity(f.rows);
                for chunk in x.chunks(8192 * f.cols.max(1)) {
                    let rows = chunk.len() / f.cols.max(1);
                    let t = Tensor::<2>::from_data(
                        TensorData::new(chunk.iter().map(|&v| v as f32).collect(), [rows, f.cols]),
                        device,
                    );
                    let l = head.forward(t).try_into_vec_as::<f32>().expect("floats");
                    out.extend(l.into_iter().map(f64::from));
                }
                out
            }
        }
    }

    /// Probabilities `sigmoid(logit)`.
    pub fn scores(&self, f: &Matrix<f32>) -> Vec<f64> {
        self.logits(f).into_iter().map(sigmoid).collect()
    }

    /// Lipschitz constant of the score.
    pub fn score_lipschitz(&self) -> f64 {
        self.lipschitz / 4.0
    }
}

/// Why a head could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The labels hold one class.
    #[error("the {what} labels hold a single class ({class}); a binary head needs both")]
    OneClass {
        /// `train`.
        what: &'static str,
        /// The class.
        class: f32,
    },
    /// The loss is not finite.
    #[error("fitting diverged (non-finite loss); try a lower learning rate")]
    NonFinite,
}

/// Fits `arch` on `(train, y_train)`, selecting on `(valid, y_valid)`.
#[allow(clippy::too_many_arguments)]
pub fn fit_head(
    arch: &HeadKind,
    train: &Matrix<f32>,
    y_train: &[f32],
    valid: &Matrix<f32>,
    y_valid: &[f32],
    settings: &FitSettings,
    seed: u64,
    device: &Device,
) -> Result<FittedHead, FitError> {
    let positives = y_train.iter().filter(|&&y| y > 0.5).count();
    if positives == 0 || positives == y_train.len() {
        return Err(FitError::OneClass {
            what: "train",
            class: y_train.first().copied().unwrap_or(0.0),
        });
    }
    let standardiser = Standardiser::fit(train);
    let x = standardiser.apply(train);
    let xv = standardiser.apply(valid);
    let (model, lipschitz_std) = match arch {
        HeadKind::Linear => {
            let LogisticFit { w, b } = logistic_newton(&x, y_train, train.cols, settings.l2);
            let l = w
                .iter()
                .zip(&standardiser.std)
                .map(|(w, s)| (w / s).powi(2))
                .sum::<f64>()
                .sqrt();
            (Fitted::Linear { w, b }, l)
        }
        HeadKind::Mlp { hidden } => {
            let (head, l) = fit_mlp(
                &x,
                y_train,
                &xv,
                y_valid,
                train.cols,
                hidden,
                settings,
                seed,
                device,
                &standardiser.std,
            )?;
            (
                Fitted::Mlp {
                    head,
                    device: device.clone(),
                },
                l,
            )
        }
    };
    let mut fitted = FittedHead {
        arch: arch.clone(),
        standardiser,
        model,
        lipschitz: lipschitz_std,
        valid_loss: f64::NAN,
    };
    let lv: Vec<f32> = fitted.logits(valid).iter().map(|&l| l as f32).collect();
    fitted.valid_loss = bce_with_logits_host(&lv, y_valid);
    if !fitted.valid_loss.is_finite() {
        return Err(FitError::NonFinite);
    }
    Ok(fitted)
}

#[allow(clippy::too_many_arguments)]
fn fit_mlp(
    x: &[f64],
    y: &[f32],
    xv: &[f64],
    yv: &[f32],
    k: usize,
    hidden: &[usize],
    settings: &FitSettings,
    seed: u64,
    device: &Device,
    feature_std: &[f64],
) -> Result<(Head, f64), FitError> {
    let ad = device.clone().autodiff();
    ad.seed(seed);
    let config = HeadConfig {
        name: "probe".into(),
        kind: HeadKind::Mlp {
            hidden: hidden.to_vec(),
        },
    };
    let mut head = config.init(k, settings.activation, &ad);
    let mut optim = AdamConfig::new().init();
    let n = y.len();
    let to_f32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let x_all = Tensor::<2>::from_data(TensorData::new(to_f32(x), [n, k]), &ad);
    let y_all = Tensor::<2>::from_data(TensorData::new(y.to_vec(), [n, 1]), &ad);
    let xv_t = Tensor::<2>::from_data(TensorData::new(to_f32(xv), [yv.len(), k]), device);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut best: Option<(f64, Head)> = None;
    for _ in 0..settings.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(settings.batch_size.max(2)) {
            let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            let index =
                Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [batch.len()]), &ad);
            let logits = head.forward(x_all.clone().select(0, index.clone()));
            let loss = bce_with_logits(logits, y_all.clone().select(0, index));
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(settings.lr, head, grads);
        }
        let valid_head = head.valid();
        let lv: Vec<f32> = valid_head
            .forward(xv_t.clone())
            .try_into_vec_as::<f32>()
            .expect("floats");
        let loss = bce_with_logits_host(&lv, yv);
        if !loss.is_finite() {
            return Err(FitError::NonFinite);
        }
        if best.as_ref().is_none_or(|(b, _)| loss < *b) {
            best = Some((loss, valid_head));
        }
    }
    let (_, head) = best.ok_or(FitError::NonFinite)?;
    // Lipschitz: ||W_1 diag(1/std)|| * prod_l ||W_l|| (the activation is 1-Lipschitz).
    let mut lipschitz = 1.0;
    for (l, layer) in head.layers.iter().enumerate() {
        let w = layer.weight.val();
        let [rows, cols] = w.dims();
        let mut m: Vec<f64> = w.into_data().try_to_vec_as::<f64>().expect("floats");
        if l == 0 {
            // burn's Linear weight is [d_in, d_out]: row i belongs to input feature i.
            for i in 0..rows {
                m[i * cols..(i + 1) * cols]
                    .iter_mut()
                    .for_each(|v| *v /= feature_std[i]);
            }
        }
        lipschitz *= spectral_norm(&m, rows, cols);
    }
    Ok((head, lipschitz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(values: Vec<f32>, k: usize) -> Matrix<f32> {
        Matrix::new(values.clone(), values.len() / k, k)
    }

    #[test]
    fn heads_learn_a_separable_task_and_report_lipschitz_constants() {
        let device = Device::flex();
        let n = 300;
        let mut v = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let a = ((i * 37) % 100) as f32 / 5.0 - 10.0; // scale 10: standardisation matters
            let b = ((i * 53) % 97) as f32 / 97.0;
            v.extend([a, b]);
            y.push(if a > 1.0 { 1.0 } else { 0.0 });
        }
        let f = features(v, 2);
        for arch in [HeadKind::Linear, HeadKind::Mlp { hidden: vec![16] }] {
            let settings = FitSettings {
                epochs: 60,
                batch_size: 32,
                lr: 1e-2,
                ..FitSettings::default()
            };
            let head = fit_head(&arch, &f, &y, &f, &y, &settings, 1, &device).unwrap();
            let s = head.scores(&f);
            let acc = s
                .iter()
                .zip(&y)
                .filter(|(s, y)| (**s > 0.5) == (**y > 0.5))
                .count() as f64
                / n as f64;
            assert!(acc > 0.95, "{}: accuracy {acc}", arch.name());
            assert!(head.lipschitz.is_finite() && head.lipschitz > 0.0);
            // The Lipschitz constant bounds the logit's slope between any two rows.
            let l = head.logits(&f);
            for (i, j) in [(0, 1), (5, 77), (10, 250)] {
                let dz = f
                    .row(i)
                    .iter()
                    .zip(f.row(j))
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!((l[i] - l[j]).abs() <= head.lipschitz * dz * (1.0 + 1e-5) + 1e-6);
            }
        }
        let e = fit_head(
            &HeadKind::Linear,
            &f,
            &vec![1.0; n],
            &f,
            &y,
            &FitSettings::default(),
            0,
            &device,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("single class"), "{e}");
    }
}
