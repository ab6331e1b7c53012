//! The configuration file's schema: our own serde types, every key optional with a documented
//! default (the `Default` impls here and nowhere else), unknown keys rejected. docs/CONFIG.md
//! lists every key.
use std::collections::BTreeMap;
use std::path::PathBuf;

use fairrep_data::spec::{AttributeSpec, SensitiveSpec};
use fairrep_data::{SplitFractions, SyntheticConfig};
use fairrep_model::{Activation, HeadName};
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

/// Name of the built-in synthetic dataset in `data.dataset`.
pub const SYNTHETIC: &str = "synthetic";

/// The whole file. Every section and key is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// `[data]`.
    pub data: DataSection,
    /// `[model]`.
    pub model: ModelSection,
    /// `[penalty]`.
    pub penalty: PenaltySection,
    /// `[optim]`.
    pub optim: OptimSection,
    /// `[run]`.
    pub run: RunSection,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// `"synthetic"` (built in), a spec name (`"adult"` -> `datasets/adult.toml`) or a path to
    /// a spec file. Default `"synthetic"`.
    pub dataset: String,
    /// Parameters of the synthetic generator (`[data.synthetic]`, fairrep-data's
    /// `SyntheticConfig`, every key defaulted); only with `dataset = "synthetic"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticConfig>,
    /// Replaces the spec's `[sensitive]` table: one table (same keys: `column`, `groups`,
    /// `threshold`, `threshold_names`, `unmatched`, `other_name`), or several named
    /// attributes (`[[data.sensitive]]`, each with `name` and those keys). Default: the
    /// spec's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<SensitiveSetting>,
    /// The tasks to train on, a subset of the spec's. Default: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<String>>,
    /// Tasks reserved for transfer (`fairrep transfer`): not trained on, and their defining
    /// columns leave the inputs so that a new head cannot read the label from an input.
    /// Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_out_tasks: Vec<String>,
    /// Whether the sensitive attribute is an input feature. Default `false`.
    pub aware: bool,
    /// Fractions `{ train, valid, test }` of a random split, overriding the spec's (ignored
    /// for official and partition splits). Default: the spec's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitFractions>,
    /// Seed of the data: the random / validation split, and the synthetic generator.
    /// Default `0`.
    pub split_seed: u64,
    /// Minibatch size (group-stratified batches). Default `256`.
    pub batch_size: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dataset: SYNTHETIC.into(),
            synthetic: None,
            sensitive: None,
            tasks: None,
            held_out_tasks: Vec::new(),
            aware: false,
            split: None,
            split_seed: 0,
            batch_size: 256,
        }
    }
}

/// `data.sensitive`: one `[sensitive]` table, or an array of named attributes. Deserialised
/// by the TOML value's shape (a table or an array), so that each form keeps its own unknown-key
/// errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SensitiveSetting {
    /// One table: the run has one sensitive attribute.
    One(SensitiveSpec),
    /// `[[data.sensitive]]`: several named attributes (one is allowed too).
    Many(Vec<AttributeSpec>),
}

impl<'de> Deserialize<'de> for SensitiveSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = SensitiveSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a [sensitive] table (column, groups, ...) or an array of named attributes \
                     ([[data.sensitive]] with name, column, groups, ...)",
                )
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                SensitiveSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SensitiveSetting::One)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<AttributeSpec>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(SensitiveSetting::Many)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Hidden widths of the encoder. Default `[64]`.
    pub encoder_widths: Vec<usize>,
    /// Size of the representation `z`. Default `16`.
    pub latent: usize,
    /// `relu` | `gelu` | `tanh` | `leaky_relu`. Default `relu`.
    pub activation: Activation,
    /// Dropout after each hidden encoder layer. Default `0.0`.
    pub dropout: f64,
    /// Head kind for every task: `linear` | `mlp`. Default `linear`.
    pub head: HeadName,
    /// Hidden widths of `mlp` heads. Default `[32]`.
    pub head_hidden: Vec<usize>,
    /// Per-task overrides, `[model.heads.TASK] kind = "mlp", hidden = [..]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub heads: BTreeMap<String, HeadSection>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            encoder_widths: vec![64],
            latent: 16,
            activation: Activation::Relu,
            dropout: 0.0,
            head: HeadName::Linear,
            head_hidden: vec![32],
            heads: BTreeMap::new(),
        }
    }
}

/// `[model.heads.TASK]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    /// The head's architecture (default: `model.head`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<HeadName>,
    /// Hidden widths of an `mlp` head (default: `model.head_hidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
}

/// `penalty.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyKind {
    /// No penalty.
    #[default]
    None,
    /// Gaussian MMD².
    Mmd,
    /// The debiased Sinkhorn divergence.
    Sinkhorn,
}

/// `[penalty]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PenaltySection {
    /// `none` | `mmd` | `sinkhorn`. Default `none`.
    pub kind: PenaltyKind,
    /// Weight of the penalty in the loss. Default `1.0`.
    pub lambda: f64,
    /// At most this many points (group-stratified) for the penalty on validation / test.
    /// Default `2000`.
    pub eval_max_points: usize,
    /// `all` | `positive`: the rows whose representations are matched across groups, every
    /// row or only those whose label of `task` is 1 (equal opportunity). Default `all`.
    pub condition: ConditionName,
    /// The binary task whose positives `condition = "positive"` keeps. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// With several sensitive attributes: `each` (the sum over the attributes of the penalty
    /// between each attribute's groups) or `intersectional` (the penalty between the
    /// intersection cells). Default `each`; unused (warned) with one attribute. Left out of the
    /// resolved file at its default, so the ids of earlier runs do not change.
    #[serde(skip_serializing_if = "PenaltyMode::is_each")]
    pub mode: PenaltyMode,
    /// `[penalty.mmd]`.
    pub mmd: MmdSection,
    /// `[penalty.sinkhorn]`.
    pub sinkhorn: SinkhornSection,
    /// `penalty.target`: adapt lambda to reach a validation target (none by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSection>,
}

/// `penalty.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyMode {
    /// The sum over the attributes of each attribute's penalty.
    #[default]
    Each,
    /// The penalty between the intersection cells.
    Intersectional,
}

impl PenaltyMode {
    /// Whether this is the default, `each`.
    pub fn is_each(&self) -> bool {
        *self == PenaltyMode::Each
    }
}

/// `penalty.condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionName {
    /// Every row (demographic parity of the representation).
    #[default]
    All,
    /// The rows whose label of `penalty.task` is 1 (equal opportunity).
    Positive,
}

impl Default for PenaltySection {
    fn default() -> Self {
        Self {
            kind: PenaltyKind::None,
            lambda: 1.0,
            eval_max_points: 2000,
            condition: ConditionName::All,
            task: None,
            mode: PenaltyMode::Each,
            mmd: MmdSection::default(),
            sinkhorn: SinkhornSection::default(),
            target: None,
        }
    }
}

/// `penalty.target.metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetMetric {
    /// The largest validation DP gap over the binary tasks (or of `task`).
    #[default]
    DpGap,
    /// The validation penalty.
    Penalty,
}

/// `penalty.target`: `{ metric, value }` and the dual step. Every key has a default but
/// `value`, which validation requires (so that `--set penalty.target.value=...` can be given
/// alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// What is constrained. Default `dp_gap`.
    pub metric: TargetMetric,
    /// The bound k: `dp_gap` in (0, 1], `penalty` positive. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// With `metric = "dp_gap"`: the task whose gap is constrained (default: every binary
    /// task, through the largest gap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The dual step size (positive). Default `1.0`.
    pub step: f64,
    /// Lower bound of lambda, positive. Default `1e-3`.
    pub lambda_min: f64,
    /// Upper bound of lambda, at least `lambda_min`. Default `1e4`.
    pub lambda_max: f64,
}

impl Default for TargetSection {
    fn default() -> Self {
        Self {
            metric: TargetMetric::DpGap,
            value: None,
            task: None,
            step: 1.0,
            lambda_min: 1e-3,
            lambda_max: 1e4,
        }
    }
}
/// `penalty.mmd.bandwidths`: a list of numbers or `"median"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of positive numbers (e.g. [0.5, 1.0]) or \"median\""
)]
pub enum BandwidthSpec {
    /// Fixed bandwidths.
    List(Vec<f64>),
    /// `"median"`.
    Name(String),
}

/// `penalty.mmd.estimator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorName {
    /// The V-statistic.
    #[default]
    Biased,
    /// The U-statistic.
    Unbiased,
}

/// `[penalty.mmd]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmdSection {
    /// Gaussian kernel bandwidths (mean of the kernels), or `"median"`. Default `"median"`.
    pub bandwidths: BandwidthSpec,
    /// `biased` | `unbiased`. Default `biased`.
    pub estimator: EstimatorName,
}

impl Default for MmdSection {
    fn default() -> Self {
        Self {
            bandwidths: BandwidthSpec::Name("median".into()),
            estimator: EstimatorName::Biased,
        }
    }
}

/// `[penalty.sinkhorn]`: exactly one of `blur` and `eps` (`eps = blur^2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkhornSection {
    /// GeomLoss blur (length units); `eps = blur^2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blur: Option<f64>,
    /// Temperature in cost units (cost `|x - y|^2 / 2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// eps-scaling factor in `[0.5, 0.95]` (`fairrep_loss::SCALING_RANGE`). Default `0.9`.
    pub scaling: f64,
    /// Marginal-error tolerance. Default `1e-3`.
    pub tolerance: f64,
    /// Maximum iterations at the target eps. Default `100`.
    pub max_iters: usize,
    /// Check the marginal error every this many iterations. Default `5`.
    pub check_every: usize,
}

impl Default for SinkhornSection {
    fn default() -> Self {
        Self {
            blur: None,
            eps: None,
            scaling: 0.9,
            tolerance: 1e-3,
            max_iters: 100,
            check_every: 5,
        }
    }
}

/// `optim.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// Adam (weight decay as an L2 penalty).
    #[default]
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// `optim.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr` every epoch.
    #[default]
    Constant,
    /// From `lr` to `min_lr`.
    Cosine,
    /// Times `gamma` every `step_size` epochs.
    Step,
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// `adam` | `adamw`. Default `adam`.
    pub kind: OptimKind,
    /// Base learning rate. Default `1e-3`.
    pub lr: f64,
    /// Weight decay (L2 for adam, decoupled for adamw). Default `0.0`.
    pub weight_decay: f64,
    /// Number of epochs. Default `20`.
    pub epochs: usize,
    /// `constant` | `cosine` | `step`. Default `constant`.
    pub schedule: ScheduleKind,
    /// Cosine: the final learning rate. Default `0.0`.
    pub min_lr: f64,
    /// Step: multiply the rate by `gamma` every `step_size` epochs. Default `10`.
    pub step_size: usize,
    /// Step: the factor. Default `0.1`.
    pub gamma: f64,
    /// Clip the gradient of each parameter to this L2 norm. Default: no clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            kind: OptimKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            epochs: 20,
            schedule: ScheduleKind::Constant,
            min_lr: 0.0,
            step_size: 10,
            gamma: 0.1,
            grad_clip: None,
        }
    }
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Seed of everything random in training (init, batches, dropout). Default `0`.
    pub seed: u64,
    /// Where run directories are created. Default `"runs"`.
    pub out_dir: PathBuf,
    /// Write a checkpoint every this many epochs (0: only the best and the last). Default `1`.
    pub checkpoint_every: usize,
    /// `auto` | `flex` | `ndarray` | `wgpu`. Default `auto`.
    pub device: DeviceChoice,
    /// Prefix of the run directory's name. Default: the config file's stem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stop (as if killed) right after this epoch's checkpoint; for testing `--resume`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_after_epoch: Option<usize>,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            out_dir: PathBuf::from("runs"),
            checkpoint_every: 1,
            device: DeviceChoice::Auto,
            name: None,
            stop_after_epoch: None,
        }
    }
}

/// Keys of `[run]` that may differ between a checkpoint and a resumed run.
pub const RESUMABLE_KEYS: &[&str] = &[
    "run.out_dir",
    "run.device",
    "run.name",
    "run.stop_after_epoch",
    "run.checkpoint_every",
];

impl ConfigFile {
    /// The file as TOML (the resolved configuration saved in a run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config types serialise to TOML")
    }

    /// Flattened `dotted.key -> value` view, used to compare two configurations.
    pub fn flatten(&self) -> BTreeMap<String, toml::Value> {
        fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&key, t, out),
                    other => {
                        out.insert(key, other.clone());
                    }
                }
            }
        }
        let toml::Value::Table(table) =
            toml::Value::try_from(self).expect("the config types serialise to TOML")
        else {
            unreachable!("a struct serialises to a table")
        };
        let mut out = BTreeMap::new();
        walk("", &table, &mut out);
        out
    }

    /// The keys whose values differ from `other`'s, ignoring [`RESUMABLE_KEYS`], as
    /// `key: ours vs theirs` lines.
    pub fn differences(&self, other: &ConfigFile) -> Vec<String> {
        let a = self.flatten();
        let b = other.flatten();
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !RESUMABLE_KEYS.contains(&k.as_str()))
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show =
                    |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
                format!("{k}: {} vs {}", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }
}
