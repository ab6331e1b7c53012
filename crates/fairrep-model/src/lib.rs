//! The multitask model of fairrep: a shared MLP [`Encoder`] `z = h(x)` and one [`Head`]
//! `f_t(z)` per task (see `MATH.md`, "Setting").
//!
//! The encoder and the heads are separate modules so that a later step can freeze the encoder
//! (`model.encoder.freeze()`) and train fresh heads on its representation (the transfer claim).
//!
//! ```text
//! x [n, d] -> Encoder: (Linear -> activation -> dropout)* -> Linear -> z [n, latent]
//! z        -> Head t:  (Linear -> activation)*            -> Linear -> logit_t [n, 1]
//! ```
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Slope of the negative part of [`Activation::LeakyRelu`].
pub const LEAKY_RELU_SLOPE: f64 = 0.01;

/// The non-linearity between hidden layers (`"relu"`, `"gelu"`, `"tanh"`, `"leaky_relu"` in
/// configuration files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    #[default]
    Relu,
    /// The exact (erf) GELU.
    Gelu,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0) + 0.01 min(x, 0)` (slope [`LEAKY_RELU_SLOPE`]).
    LeakyRelu,
}

impl Activation {
    /// Applies the activation elementwise.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => activation::relu(x),
            Activation::Gelu => activation::gelu(x),
            Activation::Tanh => activation::tanh(x),
            Activation::LeakyRelu => activation::leaky_relu(x, LEAKY_RELU_SLOPE),
        }
    }

    /// The lowercase name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
            Activation::LeakyRelu => "leaky_relu",
        }
    }
}

impl core::fmt::Display for Activation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The architecture of one task head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HeadKind {
    /// A single linear layer `latent -> 1` (a logistic / linear probe on `z`).
    #[default]
    Linear,
    /// An MLP with the given hidden widths, the model's activation between layers, then
    /// `-> 1`.
    Mlp {
        /// Hidden widths, in order; empty is the same as [`HeadKind::Linear`].
        hidden: Vec<usize>,
    },
}

impl HeadKind {
    /// `linear` or `mlp`.
    pub fn name(&self) -> &'static str {
        match self {
            HeadKind::Linear => "linear",
            HeadKind::Mlp { .. } => "mlp",
        }
    }
}

/// The name of a head architecture in configuration files (`"linear"` or `"mlp"`); the hidden
/// widths of an MLP are given beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadName {
    /// [`HeadKind::Linear`].
    #[default]
    Linear,
    /// [`HeadKind::Mlp`].
    Mlp,
}

impl HeadName {
    /// The architecture, with `hidden` the widths of an MLP (unused for a linear head).
    pub fn with_hidden(self, hidden: &[usize]) -> HeadKind {
        match self {
            HeadName::Linear => HeadKind::Linear,
            HeadName::Mlp => HeadKind::Mlp {
                hidden: hidden.to_vec(),
            },
        }
    }
}

/// Configuration of one task head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadConfig {
    /// The task's name (used in metrics and logs).
    pub name: String,
    /// The head's architecture.
    pub kind: HeadKind,
}

/// Configuration of [`FairModel`]; [`FairModelConfig::init`] builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FairModelConfig {
    /// Number of input features `d`.
    pub n_features: usize,
    /// Hidden widths of the encoder, in order (may be empty: then `z` is linear in `x`).
    pub encoder_widths: Vec<usize>,
    /// Size `k` of the representation `z`.
    pub latent: usize,
    /// Non-linearity between hidden layers (encoder and MLP heads).
    pub activation: Activation,
    /// Dropout probability after each hidden encoder layer, in `[0, 1)`.
    pub dropout: f64,
    /// One head per task, in task order.
    pub heads: Vec<HeadConfig>,
}

/// A configuration [`FairModelConfig::validate`] rejects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelConfigError {
    /// A size is 0.
    #[error("model.{field} must be positive, found 0")]
    Zero {
        /// Which size.
        field: &'static str,
    },
    /// The dropout probability is outside `[0, 1)`.
    #[error("model.dropout must be in [0, 1), found {0}")]
    Dropout(f64),
    /// No task head.
    #[error("the model needs at least one head (one per task), found none")]
    NoHeads,
    /// An MLP head has a zero width.
    #[error("head `{name}`: hidden widths must be positive, found {hidden:?}")]
    HeadWidth {
        /// The head's task.
        name: String,
        /// Its widths.
        hidden: Vec<usize>,
    },
}

impl FairModelConfig {
    /// Checks the sizes and the dropout probability.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        if self.n_features == 0 {
            return Err(ModelConfigError::Zero {
                field: "n_features",
            });
        }
        if self.latent == 0 {
            return Err(ModelConfigError::Zero { field: "latent" });
        }
        if self.encoder_widths.contains(&0) {
            return Err(ModelConfigError::Zero {
                field: "encoder_widths",
            });
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelConfigError::Dropout(self.dropout));
        }
        if self.heads.is_empty() {
            return Err(ModelConfigError::NoHeads);
        }
        for head in &self.heads {
            if let HeadKind::Mlp { hidden } = &head.kind
                && hidden.contains(&0)
            {
                return Err(ModelConfigError::HeadWidth {
                    name: head.name.clone(),
                    hidden: hidden.clone(),
                });
            }
        }
        Ok(())
    }

    /// Builds the model on `device`. Parameters are initialised eagerly, encoder first, then the
    /// heads in order, so that seeding the device (`device.seed(s)`) right before this call
    /// fixes every weight.
    ///
    /// # Panics
    /// If the configuration is invalid (call [`validate`](Self::validate) first).
    pub fn init(&self, device: &Device) -> FairModel {
        if let Err(err) = self.validate() {
            panic!("invalid FairModelConfig: {err}");
        }
        let encoder = EncoderConfig {
            n_features: self.n_features,
            widths: self.encoder_widths.clone(),
            latent: self.latent,
            activation: self.activation,
            dropout: self.dropout,
        }
        .init(device);
        let heads = self
            .heads
            .iter()
            .map(|head| head.init(self.latent, self.activation, device))
            .collect();
        let model = FairModel { encoder, heads };
        model.visit(&mut Materialize);
        model
    }
}

/// Forces lazily initialised parameters, in traversal order.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Configuration of an [`Encoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// Input features.
    pub n_features: usize,
    /// Hidden widths.
    pub widths: Vec<usize>,
    /// Size of `z`.
    pub latent: usize,
    /// Between hidden layers.
    pub activation: Activation,
    /// After each hidden layer.
    pub dropout: f64,
}

impl EncoderConfig {
    /// Builds the encoder on `device`.
    pub fn init(&self, device: &Device) -> Encoder {
        let mut sizes = vec![self.n_features];
        sizes.extend(&self.widths);
        let hidden = sizes
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        let last = *sizes.last().expect("sizes starts with n_features");
        Encoder {
            hidden,
            out: LinearConfig::new(last, self.latent).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: self.activation,
        }
    }
}

/// The shared encoder `h`: an MLP from the features to the representation `z`.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Hidden layers, each followed by the activation and dropout.
    pub hidden: Vec<Linear>,
    /// The last (linear) layer, to the latent space.
    pub out: Linear,
    /// Dropout after each hidden layer.
    pub dropout: Dropout,
    /// The non-linearity.
    #[module(skip)]
    pub activation: Activation,
}

impl Encoder {
    /// The representation `z = h(x)`, without dropout: what evaluation, transfer and export
    /// read. Training goes through [`Encoder::forward_train`].
    ///
    /// # Shapes
    /// - `x`: `[n, n_features]`
    /// - output: `[n, latent]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for layer in &self.hidden {
            h = self.activation.apply(layer.forward(h));
        }
        self.out.forward(h)
    }

    /// The representation with dropout after each hidden layer, its masks drawn from
    /// `masks`. Dropout is applied only where a backward pass can follow: on an autodiff device,
    /// with the layer in training mode (see [`Module::valid`]) and a positive probability;
    /// otherwise this is [`Encoder::forward`] and draws nothing.
    ///
    /// # Shapes
    /// - `x`: `[n, n_features]`
    /// - output: `[n, latent]`
    pub fn forward_train(&self, x: Tensor<2>, masks: &mut DropoutMasks) -> Tensor<2> {
        let prob = self.dropout.prob;
        let active = prob > 0.0 && self.dropout.training.is_enabled() && x.device().is_autodiff();
        let mut h = x;
        for layer in &self.hidden {
            h = self.activation.apply(layer.forward(h));
            if active {
                let device = h.device();
                let [n, width] = h.dims();
                h = h * masks.draw([n, width], 1.0 - prob, &device);
            }
        }
        self.out.forward(h)
    }
}

/// The dropout masks of a training run, drawn from fairrep's own seeded stream (ChaCha8) on the
/// host and then copied to the device.
///
/// burn's `Dropout` draws one value at a time through its backend's random tensor; on the CPU
/// that was most of a penalty-free training step's forward pass. A stream of our own fills a
/// whole mask at once, and makes the masks of a run depend only on its seed and the order of its
/// steps, so they are the same on every device.
///
/// A kept unit is scaled by `1 / keep` (inverted dropout: the expectation is unchanged), a
/// dropped one is zero. Each 32-bit draw `u` keeps its unit when `u < round(keep * 2^32)`.
#[derive(Debug, Clone)]
pub struct DropoutMasks {
    rng: ChaCha8Rng,
    draws: Vec<u32>,
}

impl DropoutMasks {
    /// A stream seeded with `seed`; the same seed gives the same masks, mask after mask.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            draws: Vec::new(),
        }
    }

    /// The next mask of `shape`, each entry `1 / keep` with probability `keep` and 0
    /// otherwise, as a constant tensor on `device`. `keep` is in `(0, 1]`.
    pub fn draw(&mut self, shape: [usize; 2], keep: f64, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.values(shape[0] * shape[1], keep), shape),
            device,
        )
    }

    /// The next `len` mask values (see [`DropoutMasks::draw`]).
    pub fn values(&mut self, len: usize, keep: f64) -> Vec<f32> {
        debug_assert!(keep > 0.0 && keep <= 1.0, "keep probability {keep}");
        let threshold = (keep * 4_294_967_296.0).round() as u64;
        let scale = (1.0 / keep) as f32;
        self.draws.resize(len, 0);
        self.rng.fill(&mut self.draws[..]);
        self.draws
            .iter()
            .map(|&u| if u64::from(u) < threshold { scale } else { 0.0 })
            .collect()
    }
}

impl HeadConfig {
    /// Builds the head on `device`, reading a representation of size `latent`.
    pub fn init(&self, latent: usize, activation: Activation, device: &Device) -> Head {
        let hidden_widths: &[usize] = match &self.kind {
            HeadKind::Linear => &[],
            HeadKind::Mlp { hidden } => hidden,
        };
        let mut sizes = vec![latent];
        sizes.extend(hidden_widths);
        sizes.push(1);
        let layers = sizes
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Head {
            layers,
            activation,
            name: self.name.clone(),
        }
    }
}

/// One task head `f_t`: the logit of a binary task (or the prediction of a regression task).
#[derive(Module, Debug)]
pub struct Head {
    /// Linear layers; the activation is applied between consecutive layers.
    pub layers: Vec<Linear>,
    /// The non-linearity between layers.
    #[module(skip)]
    pub activation: Activation,
    /// The task's name.
    #[module(skip)]
    pub name: String,
}

impl Head {
    /// The head's output: a logit (binary task) or a prediction (regression task).
    ///
    /// # Shapes
    /// - `z`: `[n, latent]`
    /// - output: `[n, 1]`
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = z;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = self.activation.apply(h);
            }
        }
        h
    }
}

/// The encoder and its heads.
#[derive(Module, Debug)]
pub struct FairModel {
    /// The shared encoder.
    pub encoder: Encoder,
    /// One head per task, in task order.
    pub heads: Vec<Head>,
}

/// Output of [`FairModel::forward`].
#[derive(Debug, Clone)]
pub struct FairModelOutput {
    /// The representation `z`, `[n, latent]`.
    pub latent: Tensor<2>,
    /// One `[n, 1]` logit (or prediction) per head, in head order.
    pub logits: Vec<Tensor<2>>,
}

impl FairModel {
    /// The representation only.
    ///
    /// # Shapes
    /// - `x`: `[n, n_features]`
    /// - output: `[n, latent]`
    pub fn encode(&self, x: Tensor<2>) -> Tensor<2> {
        self.encoder.forward(x)
    }

    /// The representation and every head's output, without dropout.
    ///
    /// # Shapes
    /// - `x`: `[n, n_features]`
    /// - output: `latent` `[n, latent]`, `logits` `T x [n, 1]`
    pub fn forward(&self, x: Tensor<2>) -> FairModelOutput {
        self.with_heads(self.encode(x))
    }

    /// [`FairModel::forward`] for a training step: the encoder's dropout masks come from
    /// `masks` (see [`Encoder::forward_train`]).
    pub fn forward_train(&self, x: Tensor<2>, masks: &mut DropoutMasks) -> FairModelOutput {
        self.with_heads(self.encoder.forward_train(x, masks))
    }

    fn with_heads(&self, latent: Tensor<2>) -> FairModelOutput {
        let logits = self
            .heads
            .iter()
            .map(|head| head.forward(latent.clone()))
            .collect();
        FairModelOutput { latent, logits }
    }

    /// The heads' task names, in order.
    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|h| h.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use std::sync::{Mutex, MutexGuard};

    /// Flex's RNG is one global: tests that draw from it (every `init`) take turns.
    static RNG: Mutex<()> = Mutex::new(());

    fn rng_lock() -> MutexGuard<'static, ()> {
        RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn config() -> FairModelConfig {
        FairModelConfig {
            n_features: 5,
            encoder_widths: vec![8, 6],
            latent: 3,
            activation: Activation::Relu,
            dropout: 0.2,
            heads: vec![
                HeadConfig {
                    name: "a".into(),
                    kind: HeadKind::Linear,
                },
                HeadConfig {
                    name: "b".into(),
                    kind: HeadKind::Mlp { hidden: vec![4] },
                },
            ],
        }
    }

    fn input(n: usize, d: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::from_data(TensorData::new(values, [n, d]), device)
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn shapes() {
        let _rng = rng_lock();
        let device = Device::flex();
        let model = config().init(&device);
        let out = model.forward(input(7, 5, &device));
        assert_eq!(out.latent.dims(), [7, 3]);
        assert_eq!(out.logits.len(), 2);
        for logit in &out.logits {
            assert_eq!(logit.dims(), [7, 1]);
        }
        assert_eq!(model.encode(input(2, 5, &device)).dims(), [2, 3]);
        assert_eq!(model.head_names(), vec!["a".to_string(), "b".to_string()]);
        // 5*8+8 + 8*6+6 + 6*3+3 | 3*1+1 | 3*4+4 + 4*1+1
        assert_eq!(model.num_params(), 48 + 54 + 21 + 4 + 16 + 5);
    }

    #[test]
    fn empty_encoder_is_linear() {
        let _rng = rng_lock();
        let device = Device::flex();
        let mut cfg = config();
        cfg.encoder_widths.clear();
        let model = cfg.init(&device);
        assert_eq!(model.encoder.hidden.len(), 0);
        assert_eq!(model.forward(input(4, 5, &device)).latent.dims(), [4, 3]);
    }

    #[test]
    fn seeded_init_is_deterministic() {
        let _rng = rng_lock();
        let device = Device::flex();
        let x = input(6, 5, &device);
        device.seed(7);
        let a = config().init(&device);
        device.seed(7);
        let b = config().init(&device);
        device.seed(8);
        let c = config().init(&device);
        let za = values(a.forward(x.clone()).logits[1].clone());
        let zb = values(b.forward(x.clone()).logits[1].clone());
        let zc = values(c.forward(x).logits[1].clone());
        assert_eq!(za, zb);
        assert_ne!(za, zc);
    }

    #[test]
    fn dropout_only_in_training_on_autodiff() {
        let _rng = rng_lock();
        let device = Device::flex().autodiff();
        let mut cfg = config();
        cfg.dropout = 0.5;
        device.seed(1);
        let model = cfg.init(&device);
        let x = input(16, 5, &device);
        let plain = values(model.encode(x.clone()));
        // Training mode: two draws differ, the same seed reproduces a draw, and a draw is not
        // the plain forward.
        let mut masks = DropoutMasks::new(3);
        let t1 = values(model.encoder.forward_train(x.clone(), &mut masks));
        let t2 = values(model.encoder.forward_train(x.clone(), &mut masks));
        let t3 = values(
            model
                .encoder
                .forward_train(x.clone(), &mut DropoutMasks::new(3)),
        );
        assert_ne!(t1, t2);
        assert_eq!(t1, t3);
        assert_ne!(t1, plain);
        // Validation mode, a device without autodiff, or a zero probability: the plain
        // forward, and nothing is drawn from the stream.
        let untouched = || DropoutMasks::new(3).values(64, 0.5);
        let valid = model.valid();
        let x_plain = x.clone().without_autodiff();
        let mut masks = DropoutMasks::new(3);
        assert_eq!(
            values(valid.encoder.forward_train(x_plain.clone(), &mut masks)),
            values(valid.encode(x_plain))
        );
        assert_eq!(masks.values(64, 0.5), untouched());
        let frozen = model.clone().freeze();
        let mut masks = DropoutMasks::new(3);
        let _ = frozen.encoder.forward_train(x.clone(), &mut masks);
        assert_eq!(masks.values(64, 0.5), untouched());
        cfg.dropout = 0.0;
        device.seed(1);
        let no_dropout = cfg.init(&device);
        let mut masks = DropoutMasks::new(3);
        assert_eq!(
            values(no_dropout.encoder.forward_train(x.clone(), &mut masks)),
            values(no_dropout.encode(x))
        );
        assert_eq!(masks.values(64, 0.5), untouched());
    }

    #[test]
    fn dropout_masks_keep_the_stated_share_and_the_expectation() {
        for keep in [0.9, 0.5, 0.25] {
            let n = 200_000;
            let mask = DropoutMasks::new(11).values(n, keep);
            let scale = (1.0 / keep) as f32;
            assert!(mask.iter().all(|&m| m == 0.0 || m == scale));
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
            // Binomial share: 6 standard deviations.
            let sd = (keep * (1.0 - keep) / n as f64).sqrt();
            assert!((kept - keep).abs() < 6.0 * sd, "keep {keep}: kept {kept}");
            let mean = mask.iter().map(|&m| f64::from(m)).sum::<f64>() / n as f64;
            assert!(
                (mean - 1.0).abs() < 6.0 * sd / keep,
                "keep {keep}: mean {mean}"
            );
        }
        // keep = 1 keeps everything, unscaled.
        assert!(
            DropoutMasks::new(5)
                .values(1000, 1.0)
                .iter()
                .all(|&m| m == 1.0)
        );
    }

    #[test]
    fn dropout_gradient_is_the_mask() {
        let device = Device::flex().autodiff();
        let shape = [8, 6];
        let mask = DropoutMasks::new(4).draw(shape, 0.5, &device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.3f32; 48], shape), &device)
            .require_grad();
        let grads = (x.clone() * mask.clone()).sum().backward();
        let grad = x.grad(&grads).expect("x is tracked");
        assert_eq!(values(grad), values(mask));
    }

    #[test]
    fn activations() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats([-2.0, 0.0, 1.5], &device);
        let get = |a: Activation| a.apply(x.clone()).try_into_vec_as::<f32>().unwrap();
        assert_eq!(get(Activation::Relu), vec![0.0, 0.0, 1.5]);
        let leaky = get(Activation::LeakyRelu);
        assert!((leaky[0] + 0.02).abs() < 1e-7 && leaky[2] == 1.5);
        let tanh = get(Activation::Tanh);
        assert!((tanh[0] - (-2.0f32).tanh()).abs() < 1e-6);
        // gelu(x) = x Phi(x); Phi(1.5) = 0.9331928
        let gelu = get(Activation::Gelu);
        assert!((gelu[2] - 1.5 * 0.933_192_8).abs() < 1e-4, "{gelu:?}");
        assert!(gelu[1].abs() < 1e-7);
    }

    #[test]
    fn validate_rejects_bad_sizes() {
        let mut cfg = config();
        cfg.latent = 0;
        assert_eq!(
            cfg.validate(),
            Err(ModelConfigError::Zero { field: "latent" })
        );
        let mut cfg = config();
        cfg.dropout = 1.0;
        assert_eq!(cfg.validate(), Err(ModelConfigError::Dropout(1.0)));
        let mut cfg = config();
        cfg.heads.clear();
        assert_eq!(cfg.validate(), Err(ModelConfigError::NoHeads));
    }
}
