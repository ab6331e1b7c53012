//! The training configuration: a TOML file parsed into our own serde types ([`file`], every
//! key optional with a documented default, unknown keys rejected), `--set key=value` overrides
//! applied on the TOML table first ([`read`]), then validated once into a [`TrainConfig`] by
//! one validator per section.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fairrep_data::spec::{AttributeSpec, MAX_ATTRIBUTES, SensitiveSpec};
use fairrep_data::{SplitFractions, SyntheticConfig};
use fairrep_loss::{Bandwidth, Divergence, MmdConfig, MmdEstimator, SinkhornConfig};
use fairrep_model::{Activation, FairModelConfig, HeadConfig, HeadKind};

pub mod file;
pub mod read;

pub use file::{
    BandwidthSpec, ConditionName, ConfigFile, DataSection, EstimatorName, HeadSection, MmdSection,
    ModelSection, OptimKind, OptimSection, PenaltyKind, PenaltyMode, PenaltySection,
    RESUMABLE_KEYS, RunSection, SYNTHETIC, ScheduleKind, SensitiveSetting, SinkhornSection,
    TargetMetric, TargetSection,
};
pub use read::{apply_overrides, config_from_str, parse_config, read_config, read_config_file};

/// The largest Sinkhorn temperature a training penalty accepts (float32 computation).
const MAX_TRAIN_EPS: f64 = 1e30;

/// An error in a configuration file or an override.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("malformed TOML in `{}` at line {line}, column {column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A key the schema does not know.
    #[error("unknown key `{key}` in `{}`: {message}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// The valid keys of its table.
        message: String,
    },
    /// A value of the wrong type.
    #[error("invalid value in `{}`{}: {message}", path.display(), location.as_deref().unwrap_or(""))]
    Value {
        /// The file.
        path: PathBuf,
        /// `" at line L, column C, key `k`"` when known.
        location: Option<String>,
        /// What was expected and found.
        message: String,
    },
    /// `--set` without `=`.
    #[error("--set `{arg}`: expected KEY=VALUE (e.g. penalty.lambda=0.5)")]
    SetSyntax {
        /// The argument.
        arg: String,
    },
    /// `--set` of a key the schema does not know.
    #[error("--set `{key}`: no such key: {message}")]
    SetUnknownKey {
        /// The key.
        key: String,
        /// The valid keys of its table.
        message: String,
    },
    /// `--set` of a value of the wrong type.
    #[error("--set `{key}`: {message}")]
    SetValue {
        /// The key.
        key: String,
        /// What was expected and found.
        message: String,
    },
    /// A value out of its range.
    #[error("invalid configuration (`{}`): `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What was expected and found.
        message: String,
    },
}

/// Where the data comes from.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    /// The built-in generator.
    Synthetic(SyntheticConfig),
    /// A spec name or path, resolved against the specs directory.
    Spec(String),
}

/// Validated `[data]`.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// The dataset.
    pub source: DatasetSource,
    /// Replaces the spec's sensitive attribute (one `[data.sensitive]` table).
    pub sensitive: Option<SensitiveSpec>,
    /// Several named sensitive attributes (`[[data.sensitive]]`), replacing the spec's; empty
    /// otherwise.
    pub attributes: Vec<AttributeSpec>,
    /// The tasks to train on (default: all but the held-out ones).
    pub tasks: Option<Vec<String>>,
    /// Tasks kept for transfer.
    pub held_out_tasks: Vec<String>,
    /// Keep the sensitive and task columns as inputs.
    pub aware: bool,
    /// Fractions of a random split.
    pub split: Option<SplitFractions>,
    /// Seed of the split and of the synthetic generator.
    pub split_seed: u64,
    /// Minibatch size.
    pub batch_size: usize,
}

/// Validated `[model]`; the input size and the task names come from the data.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// Hidden widths of the encoder.
    pub encoder_widths: Vec<usize>,
    /// Size of `z`.
    pub latent: usize,
    /// The non-linearity.
    pub activation: Activation,
    /// Encoder dropout.
    pub dropout: f64,
    /// Every task's head unless overridden.
    pub default_head: HeadKind,
    /// Per-task heads.
    pub heads: BTreeMap<String, HeadKind>,
}

impl ModelSettings {
    /// The model for `n_features` inputs and the given tasks. A `[model.heads.NAME]` whose
    /// NAME is not one of `tasks` is an error listing the tasks.
    pub fn model_config(
        &self,
        n_features: usize,
        tasks: &[String],
        source: &Path,
    ) -> Result<FairModelConfig, ConfigError> {
        if let Some(name) = self.heads.keys().find(|h| !tasks.contains(h)) {
            return Err(ConfigError::Invalid {
                path: source.to_path_buf(),
                key: format!("model.heads.{name}"),
                message: format!(
                    "`{name}` is not a task of this run; tasks: [{}]",
                    tasks.join(", ")
                ),
            });
        }
        Ok(FairModelConfig {
            n_features,
            encoder_widths: self.encoder_widths.clone(),
            latent: self.latent,
            activation: self.activation,
            dropout: self.dropout,
            heads: tasks
                .iter()
                .map(|name| HeadConfig {
                    name: name.clone(),
                    kind: self
                        .heads
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| self.default_head.clone()),
                })
                .collect(),
        })
    }
}

/// Validated `[penalty]`.
#[derive(Debug, Clone)]
pub struct PenaltyConfig {
    /// The divergence (`None` when `kind = "none"`). With `lambda = 0` it is not trained on but
    /// is still measured on validation and test.
    pub divergence: Option<Divergence>,
    /// The penalty's weight.
    pub lambda: f64,
    /// Points of the validation / test penalty.
    pub eval_max_points: usize,
    /// The rows the penalty is computed on.
    pub condition: PenaltyCondition,
    /// With several sensitive attributes: the sum over the attributes, or the cells.
    pub mode: PenaltyMode,
    /// The validation target that adapts lambda (`penalty.target`).
    pub target: Option<Target>,
}

/// The rows the penalty matches across groups (`penalty.condition`, `penalty.task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PenaltyCondition {
    /// Every row: `sum_g p_g Div(z | s = g, z)`.
    All,
    /// The rows whose label of `task` is 1: `sum_g p_{g|1} Div(z | s = g, y = 1, z | y = 1)`.
    Positive {
        /// The binary task.
        task: String,
    },
}

impl PenaltyConfig {
    /// The index of the conditioning task among `tasks` (the run's tasks, with their kinds),
    /// `None` without a condition. The task must be one of the run's tasks and binary.
    pub fn condition_task(
        &self,
        tasks: &[fairrep_data::TaskInfo],
        source: &Path,
    ) -> Result<Option<usize>, ConfigError> {
        let PenaltyCondition::Positive { task } = &self.condition else {
            return Ok(None);
        };
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        let invalid = |message: String| ConfigError::Invalid {
            path: source.to_path_buf(),
            key: "penalty.task".into(),
            message,
        };
        match tasks.iter().position(|t| &t.name == task) {
            None => Err(invalid(format!(
                "`{task}` is not a task of this run; tasks: [{}]",
                names.join(", ")
            ))),
            Some(t) if tasks[t].kind != fairrep_data::spec::TaskKind::Binary => {
                Err(invalid(format!(
                    "`{task}` is a regression task; penalty.condition = \"positive\" needs a \
                     binary task"
                )))
            }
            Some(t) => Ok(Some(t)),
        }
    }
}

/// Validated `penalty.target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is constrained.
    pub metric: TargetMetric,
    /// The bound k.
    pub value: f64,
    /// The task of a `dp_gap` target (`None`: the largest gap over the binary tasks).
    pub task: Option<String>,
    /// With several sensitive attributes, whether a `dp_gap` target constrains the largest of
    /// the per-attribute gaps (`penalty.mode = "each"`) rather than the gap between the
    /// intersection cells (`"intersectional"`).
    pub per_attribute: bool,
    /// The dual step size.
    pub step: f64,
    /// Lower bound of lambda.
    pub lambda_min: f64,
    /// Upper bound of lambda.
    pub lambda_max: f64,
}

impl PenaltyConfig {
    /// The divergence trained on: `None` without a penalty or with `lambda = 0`.
    pub fn trained(&self) -> Option<&Divergence> {
        self.divergence.as_ref().filter(|_| self.lambda > 0.0)
    }
}

/// The learning-rate schedule, a pure function of the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `lr` at every epoch.
    Constant,
    /// `min + (lr - min) (1 + cos(pi t / T)) / 2` with `t` the epoch (0-based), `T` the epochs.
    Cosine {
        /// The final rate.
        min_lr: f64,
    },
    /// `lr gamma^floor(epoch / step_size)`.
    Step {
        /// Epochs per step.
        step_size: usize,
        /// The factor per step.
        gamma: f64,
    },
}

/// Validated `[optim]`.
#[derive(Debug, Clone)]
pub struct OptimConfig {
    /// Adam or AdamW.
    pub kind: OptimKind,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// The schedule.
    pub schedule: Schedule,
    /// Gradient clipping norm.
    pub grad_clip: Option<f64>,
}

impl OptimConfig {
    /// The learning rate of (0-based) `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine { min_lr } => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                min_lr + (self.lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { step_size, gamma } => self.lr * gamma.powi((epoch / step_size) as i32),
        }
    }
}

/// A configuration validated once; `file` is what gets saved in the run directory.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The resolved file (every key).
    pub file: ConfigFile,
    /// The file it was read from (for errors and the run name).
    pub source: PathBuf,
    /// `[data]`.
    pub data: DataConfig,
    /// `[model]`.
    pub model: ModelSettings,
    /// `[penalty]`.
    pub penalty: PenaltyConfig,
    /// `[optim]`.
    pub optim: OptimConfig,
    /// Keys set to a non-default value that the chosen settings do not use (e.g.
    /// `penalty.sinkhorn.eps` with `penalty.kind = "mmd"`), each with the reason; the trainer
    /// warns about each.
    pub inert: Vec<String>,
}

/// Builds [`ConfigError::Invalid`] for one file.
struct Invalid<'a>(&'a Path);

impl Invalid<'_> {
    fn at(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.0.to_path_buf(),
            key: key.into(),
            message,
        }
    }
}

impl DataSection {
    /// Validates `[data]` as read from `source` (named in errors), for the commands that load
    /// data without training (`fairrep ferm`); a synthetic dataset gets every generator key
    /// written out.
    pub fn validated(&mut self, source: &Path) -> Result<DataConfig, ConfigError> {
        self.validate(&Invalid(source))
    }

    /// Validates `[data]`; a synthetic dataset gets every generator key written out, so the
    /// run directory's `config.toml` is explicit.
    fn validate(&mut self, invalid: &Invalid<'_>) -> Result<DataConfig, ConfigError> {
        if self.dataset == SYNTHETIC {
            for (key, set) in [
                ("data.sensitive", self.sensitive.is_some()),
                ("data.split", self.split.is_some()),
            ] {
                if set {
                    return Err(invalid.at(
                        key,
                        "only for spec datasets; the synthetic dataset's groups and splits are \
                         set in [data.synthetic] (n_groups, n_train, n_valid, n_test)"
                            .into(),
                    ));
                }
            }
        }
        let attributes = match &self.sensitive {
            Some(SensitiveSetting::Many(list)) => {
                if list.is_empty() {
                    return Err(invalid.at(
                        "data.sensitive",
                        "an empty list of attributes: give one [data.sensitive] table or at \
                         least one [[data.sensitive]] entry"
                            .into(),
                    ));
                }
                if list.len() > MAX_ATTRIBUTES {
                    return Err(invalid.at(
                        "data.sensitive",
                        format!("at most {MAX_ATTRIBUTES} attributes, found {}", list.len()),
                    ));
                }
                for (i, a) in list.iter().enumerate() {
                    if a.name.trim().is_empty() {
                        return Err(invalid.at(
                            &format!("data.sensitive[{i}].name"),
                            "must not be empty".into(),
                        ));
                    }
                    if list[..i].iter().any(|o| o.name == a.name) {
                        return Err(invalid.at(
                            &format!("data.sensitive[{i}].name"),
                            format!("`{}` names two attributes; names must be distinct", a.name),
                        ));
                    }
                }
                list.clone()
            }
            _ => Vec::new(),
        };
        let source = if self.dataset == SYNTHETIC {
            let synthetic = self.synthetic.get_or_insert_with(SyntheticConfig::default);
            synthetic
                .validate()
                .map_err(|e| invalid.at("data.synthetic", e.to_string()))?;
            DatasetSource::Synthetic(synthetic.clone())
        } else {
            if self.synthetic.is_some() {
                return Err(invalid.at(
                    "data.synthetic",
                    format!(
                        "only used with dataset = \"synthetic\", but dataset = {:?}",
                        self.dataset
                    ),
                ));
            }
            if self.dataset.trim().is_empty() {
                return Err(invalid.at("data.dataset", "must not be empty".into()));
            }
            DatasetSource::Spec(self.dataset.clone())
        };
        if self.batch_size < 2 {
            return Err(invalid.at(
                "data.batch_size",
                format!("must be at least 2, found {}", self.batch_size),
            ));
        }
        if let Some(split) = &self.split {
            split
                .validate()
                .map_err(|e| invalid.at("data.split", e.to_string()))?;
        }
        let twice = |list: &[String]| {
            list.iter()
                .enumerate()
                .find(|(i, t)| list[..*i].contains(t))
                .map(|(_, t)| t.clone())
        };
        if let Some(tasks) = &self.tasks {
            if tasks.is_empty() {
                return Err(invalid.at("data.tasks", "must name at least one task".into()));
            }
            if let Some(t) = twice(tasks) {
                return Err(invalid.at("data.tasks", format!("`{t}` is listed twice")));
            }
        }
        if let Some(t) = twice(&self.held_out_tasks) {
            return Err(invalid.at("data.held_out_tasks", format!("`{t}` is listed twice")));
        }
        Ok(DataConfig {
            source,
            sensitive: match &self.sensitive {
                Some(SensitiveSetting::One(s)) => Some(s.clone()),
                _ => None,
            },
            attributes,
            tasks: self.tasks.clone(),
            held_out_tasks: self.held_out_tasks.clone(),
            aware: self.aware,
            split: self.split,
            split_seed: self.split_seed,
            batch_size: self.batch_size,
        })
    }
}

impl ModelSection {
    /// Validates `[model]` (the head names are checked against the tasks later, in
    /// [`ModelSettings::model_config`]).
    fn validate(&self, invalid: &Invalid<'_>) -> Result<ModelSettings, ConfigError> {
        if self.latent == 0 {
            return Err(invalid.at("model.latent", "must be positive, found 0".into()));
        }
        if self.encoder_widths.contains(&0) {
            return Err(invalid.at(
                "model.encoder_widths",
                format!("widths must be positive, found {:?}", self.encoder_widths),
            ));
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid.at(
                "model.dropout",
                format!("must be in [0, 1), found {}", self.dropout),
            ));
        }
        let check_hidden = |key: &str, kind: HeadKind| match &kind {
            HeadKind::Mlp { hidden } if hidden.is_empty() || hidden.contains(&0) => Err(invalid
                .at(
                    key,
                    format!("an mlp head needs positive hidden widths, found {hidden:?}"),
                )),
            _ => Ok(kind),
        };
        let default_head = check_hidden(
            "model.head_hidden",
            self.head.with_hidden(&self.head_hidden),
        )?;
        let mut heads = BTreeMap::new();
        for (task, h) in &self.heads {
            let kind = h.kind.unwrap_or(self.head);
            let hidden = h.hidden.as_deref().unwrap_or(&self.head_hidden);
            let key = format!("model.heads.{task}.hidden");
            heads.insert(task.clone(), check_hidden(&key, kind.with_hidden(hidden))?);
        }
        Ok(ModelSettings {
            encoder_widths: self.encoder_widths.clone(),
            latent: self.latent,
            activation: self.activation,
            dropout: self.dropout,
            default_head,
            heads,
        })
    }
}

impl PenaltySection {
    /// Validates `[penalty]` with the divergences' own validation (`fairrep_loss`), so the
    /// trainer and the `fairrep divergence` command accept the same ranges.
    fn validate(&self, invalid: &Invalid<'_>) -> Result<PenaltyConfig, ConfigError> {
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return Err(invalid.at(
                "penalty.lambda",
                format!("must be a finite number >= 0, found {}", self.lambda),
            ));
        }
        if self.eval_max_points < 2 {
            return Err(invalid.at(
                "penalty.eval_max_points",
                format!("must be at least 2, found {}", self.eval_max_points),
            ));
        }
        // Both divergences' settings are validated whatever the kind, so that a bad value is
        // reported even in the section not in use.
        let bandwidth = match &self.mmd.bandwidths {
            BandwidthSpec::Name(name) if name == "median" => Bandwidth::Median,
            BandwidthSpec::Name(other) => {
                return Err(invalid.at(
                    "penalty.mmd.bandwidths",
                    format!("expected a list of numbers or \"median\", found {other:?}"),
                ));
            }
            BandwidthSpec::List(list) => Bandwidth::Fixed(list.clone()),
        };
        let mmd = MmdConfig {
            bandwidth,
            estimator: match self.mmd.estimator {
                EstimatorName::Biased => MmdEstimator::Biased,
                EstimatorName::Unbiased => MmdEstimator::Unbiased,
            },
        };
        mmd.validate()
            .map_err(|e| invalid.at("penalty.mmd", e.to_string()))?;
        let s = &self.sinkhorn;
        let eps = match (s.blur, s.eps) {
            (Some(blur), None) if blur.is_finite() && blur > 0.0 => Some(blur * blur),
            (Some(blur), None) => {
                return Err(invalid.at(
                    "penalty.sinkhorn.blur",
                    format!("must be a positive number, found {blur}"),
                ));
            }
            (None, Some(eps)) => Some(eps),
            (None, None) => None,
            (blur, eps) => {
                return Err(invalid.at(
                    "penalty.sinkhorn",
                    format!(
                        "set exactly one of `blur` and `eps` (eps = blur^2), found blur = \
                         {blur:?}, eps = {eps:?}"
                    ),
                ));
            }
        };
        // Training computes the penalty in float32: a temperature near its range (3.4e38)
        // overflows in the solver's sums and gives an infinite penalty.
        if let Some(e) = eps.filter(|&e| e > MAX_TRAIN_EPS) {
            let key = if s.blur.is_some() {
                "penalty.sinkhorn.blur"
            } else {
                "penalty.sinkhorn.eps"
            };
            return Err(invalid.at(
                key,
                format!(
                    "eps = blur^2 must be at most {MAX_TRAIN_EPS:e} (blur at most 1e15): the \
                     penalty is computed in float32, whose range ends near 3.4e38; found eps = \
                     {e:e}"
                ),
            ));
        }
        let sinkhorn = SinkhornConfig {
            eps: eps.unwrap_or(1.0),
            scaling: s.scaling,
            tolerance: s.tolerance,
            max_iters: s.max_iters,
            check_every: s.check_every,
        };
        sinkhorn
            .validate()
            .map_err(|e| invalid.at("penalty.sinkhorn", e.to_string()))?;
        let divergence = match self.kind {
            PenaltyKind::None => None,
            PenaltyKind::Mmd => Some(Divergence::Mmd(mmd)),
            PenaltyKind::Sinkhorn => {
                if eps.is_none() {
                    return Err(invalid.at(
                        "penalty.sinkhorn",
                        "set exactly one of `blur` and `eps` (eps = blur^2), found neither".into(),
                    ));
                }
                Some(Divergence::Sinkhorn(sinkhorn))
            }
        };
        let condition = match (self.condition, &self.task) {
            (ConditionName::All, _) => PenaltyCondition::All,
            (ConditionName::Positive, None) => {
                return Err(invalid.at(
                    "penalty.condition",
                    "\"positive\" needs penalty.task, the binary task whose positive rows the \
                     penalty is computed on"
                        .into(),
                ));
            }
            (ConditionName::Positive, Some(task)) if task.trim().is_empty() => {
                return Err(invalid.at("penalty.task", "must not be empty".into()));
            }
            (ConditionName::Positive, Some(task)) => {
                PenaltyCondition::Positive { task: task.clone() }
            }
        };
        let mut target = None;
        if let Some(t) = &self.target {
            let Some(value) = t.value else {
                return Err(invalid.at(
                    "penalty.target.value",
                    "is required: the bound k of the target (e.g. 0.05)".into(),
                ));
            };
            let (lo, hi, range) = match t.metric {
                TargetMetric::DpGap => (0.0, 1.0, "in (0, 1] (a DP gap)"),
                TargetMetric::Penalty => (0.0, f64::INFINITY, "positive and finite (a penalty)"),
            };
            if !(value.is_finite() && value > lo && value <= hi) {
                return Err(invalid.at(
                    "penalty.target.value",
                    format!("must be {range}, found {value}"),
                ));
            }
            if !(t.step.is_finite() && t.step > 0.0) {
                return Err(invalid.at(
                    "penalty.target.step",
                    format!("must be positive, found {}", t.step),
                ));
            }
            if !(t.lambda_min.is_finite()
                && t.lambda_max.is_finite()
                && t.lambda_min > 0.0
                && t.lambda_min <= t.lambda_max)
            {
                return Err(invalid.at(
                    "penalty.target",
                    format!(
                        "needs 0 < lambda_min <= lambda_max, found lambda_min = {}, lambda_max = {}",
                        t.lambda_min, t.lambda_max
                    ),
                ));
            }
            if divergence.is_none() {
                return Err(invalid.at(
                    "penalty.target",
                    "adapts the penalty's weight: set penalty.kind to \"mmd\" or \"sinkhorn\""
                        .into(),
                ));
            }
            if !(t.lambda_min..=t.lambda_max).contains(&self.lambda) {
                return Err(invalid.at(
                    "penalty.lambda",
                    format!(
                        "is the starting weight of penalty.target and must be in [lambda_min, \
                         lambda_max] = [{}, {}], found {}",
                        t.lambda_min, t.lambda_max, self.lambda
                    ),
                ));
            }
            if t.metric == TargetMetric::Penalty && t.task.is_some() {
                return Err(invalid.at(
                    "penalty.target.task",
                    "applies to metric = \"dp_gap\" only".into(),
                ));
            }
            target = Some(Target {
                metric: t.metric,
                value,
                task: t.task.clone(),
                per_attribute: self.mode == PenaltyMode::Each,
                step: t.step,
                lambda_min: t.lambda_min,
                lambda_max: t.lambda_max,
            });
        }
        Ok(PenaltyConfig {
            divergence,
            lambda: self.lambda,
            eval_max_points: self.eval_max_points,
            condition,
            mode: self.mode,
            target,
        })
    }
}

impl OptimSection {
    /// Validates `[optim]`.
    fn validate(&self, invalid: &Invalid<'_>) -> Result<OptimConfig, ConfigError> {
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(invalid.at("optim.lr", format!("must be positive, found {}", self.lr)));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return Err(invalid.at(
                "optim.weight_decay",
                format!("must be >= 0, found {}", self.weight_decay),
            ));
        }
        if self.epochs == 0 {
            return Err(invalid.at("optim.epochs", "must be positive, found 0".into()));
        }
        let schedule = match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Cosine => {
                if !(0.0..=self.lr).contains(&self.min_lr) {
                    return Err(invalid.at(
                        "optim.min_lr",
                        format!("must be in [0, lr = {}], found {}", self.lr, self.min_lr),
                    ));
                }
                Schedule::Cosine {
                    min_lr: self.min_lr,
                }
            }
            ScheduleKind::Step => {
                if self.step_size == 0 || !(self.gamma > 0.0 && self.gamma <= 1.0) {
                    return Err(invalid.at(
                        "optim",
                        format!(
                            "step schedule needs step_size > 0 and gamma in (0, 1], found \
                             step_size = {}, gamma = {}",
                            self.step_size, self.gamma
                        ),
                    ));
                }
                Schedule::Step {
                    step_size: self.step_size,
                    gamma: self.gamma,
                }
            }
        };
        if let Some(clip) = self.grad_clip
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(invalid.at("optim.grad_clip", format!("must be positive, found {clip}")));
        }
        Ok(OptimConfig {
            kind: self.kind,
            lr: self.lr,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            schedule,
            grad_clip: self.grad_clip,
        })
    }
}

impl RunSection {
    /// Validates `[run]`: a run name is one plain file name (no separator, no `..`), so the run
    /// directory stays inside `out_dir`; `stop_after_epoch` is before the last epoch.
    fn validate(&self, epochs: usize, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            let plain = fairrep_data::fs::is_plain_file_name(name);
            if !plain {
                return Err(invalid.at(
                    "run.name",
                    format!(
                        "must be a plain name (no path separator, not starting with `.`), found \
                         {name:?}"
                    ),
                ));
            }
        }
        if let Some(stop) = self.stop_after_epoch
            && (stop == 0 || stop >= epochs)
        {
            return Err(invalid.at(
                "run.stop_after_epoch",
                format!("must be in 1..{epochs} (epochs), found {stop}"),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Reads, overrides and validates a configuration file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let file = read_config_file(path, overrides)?;
        Self::from_file(file, path)
    }

    /// Validates a parsed file, section by section.
    pub fn from_file(mut file: ConfigFile, source: &Path) -> Result<Self, ConfigError> {
        let invalid = Invalid(source);
        let data = file.data.validate(&invalid)?;
        let model = file.model.validate(&invalid)?;
        let penalty = file.penalty.validate(&invalid)?;
        let optim = file.optim.validate(&invalid)?;
        file.run.validate(optim.epochs, &invalid)?;
        let inert = inert_keys(&file);
        Ok(Self {
            source: source.to_path_buf(),
            data,
            model,
            penalty,
            optim,
            file,
            inert,
        })
    }

    /// The run seed.
    pub fn seed(&self) -> u64 {
        self.file.run.seed
    }
}

/// The keys of `file` set to a non-default value that its other settings make unused.
fn inert_keys(file: &ConfigFile) -> Vec<String> {
    let defaults = ConfigFile::default();
    let mut out = Vec::new();
    let mut inert = |key: &str, set: bool, why: &str| {
        if set {
            out.push(format!("{key} is not used: {why}"));
        }
    };
    let p = &file.penalty;
    let kind = p.kind;
    let several = match (&file.data.sensitive, &file.data.synthetic) {
        (Some(SensitiveSetting::Many(list)), _) => list.len() >= 2,
        (_, Some(s)) if file.data.dataset == SYNTHETIC => s.n_groups_2 >= 2,
        _ => false,
    };
    inert(
        "penalty.mode",
        p.mode != defaults.penalty.mode && (kind == PenaltyKind::None || !several),
        "it applies to a penalty with several sensitive attributes (with one, the two modes \
         coincide)",
    );
    inert(
        "penalty.lambda",
        kind == PenaltyKind::None && p.lambda != defaults.penalty.lambda,
        "penalty.kind = \"none\"",
    );
    inert(
        "penalty.task",
        p.task.is_some() && p.condition == ConditionName::All,
        "penalty.condition = \"all\"",
    );
    inert(
        "penalty.condition",
        kind == PenaltyKind::None && p.condition != defaults.penalty.condition,
        "penalty.kind = \"none\"",
    );
    inert(
        "penalty.mmd",
        kind != PenaltyKind::Mmd && p.mmd != defaults.penalty.mmd,
        "penalty.kind is not \"mmd\"",
    );
    inert(
        "penalty.sinkhorn",
        kind != PenaltyKind::Sinkhorn && p.sinkhorn != defaults.penalty.sinkhorn,
        "penalty.kind is not \"sinkhorn\"",
    );
    let o = &file.optim;
    inert(
        "optim.min_lr",
        o.schedule != ScheduleKind::Cosine && o.min_lr != defaults.optim.min_lr,
        "optim.schedule is not \"cosine\"",
    );
    inert(
        "optim.step_size / optim.gamma",
        o.schedule != ScheduleKind::Step
            && (o.step_size != defaults.optim.step_size || o.gamma != defaults.optim.gamma),
        "optim.schedule is not \"step\"",
    );
    let m = &file.model;
    let any_mlp = m.head == fairrep_model::HeadName::Mlp
        || m.heads
            .values()
            .any(|h| h.kind == Some(fairrep_model::HeadName::Mlp));
    inert(
        "model.head_hidden",
        !any_mlp && m.head_hidden != defaults.model.head_hidden,
        "no head is an mlp",
    );
    for (task, h) in &m.heads {
        let kind = h.kind.unwrap_or(m.head);
        inert(
            &format!("model.heads.{task}.hidden"),
            kind == fairrep_model::HeadName::Linear && h.hidden.is_some(),
            "the head is linear",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;

    fn parse(text: &str, overrides: &[&str]) -> Result<ConfigFile, ConfigError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        config_from_str(text, Path::new("test.toml"), &overrides)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let file = parse("", &[]).unwrap();
        assert_eq!(file, ConfigFile::default());
        let cfg = TrainConfig::from_file(file, Path::new("x.toml")).unwrap();
        assert!(cfg.penalty.divergence.is_none());
        assert_eq!(cfg.optim.epochs, 20);
    }

    #[test]
    fn malformed_toml_names_line_and_column() {
        let err = parse("[data]\nbatch_size = 12\nlr = = 3\n", &[]).unwrap_err();
        match err {
            ConfigError::Parse { line, column, .. } => {
                assert_eq!(line, 3);
                assert!(column >= 5, "column {column}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let err = parse("[penalty.mmd]\nbandwidth = [1.0]\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("penalty.mmd.bandwidth"), "{msg}");
        assert!(msg.contains("bandwidths"), "{msg}");
        let err = parse("[optim]\nlearning_rate = 1\n", &[]).unwrap_err();
        assert!(err.to_string().contains("optim.learning_rate"), "{err}");
    }

    #[test]
    fn wrong_type_has_location_and_key() {
        let err = parse("[optim]\nepochs = \"ten\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("line 2") && msg.contains("key `optim.epochs`"),
            "{msg}"
        );
        let err = parse("[penalty.mmd]\nbandwidths = 0.5\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("penalty.mmd.bandwidths") && msg.contains("a list of positive numbers"),
            "{msg}"
        );
        assert!(!msg.contains("untagged"), "{msg}");
    }

    #[test]
    fn run_names_stay_inside_the_output_folder() {
        for bad in ["../up", "/abs", "a/b", "..", ".hidden", ""] {
            let file = parse(
                "",
                &[&format!("run.name={}", toml::Value::String(bad.into()))],
            )
            .unwrap();
            let e = TrainConfig::from_file(file, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("run.name"), "{bad}: {e}");
        }
        let file = parse("", &["run.name=adult-mmd"]).unwrap();
        assert!(TrainConfig::from_file(file, Path::new("x.toml")).is_ok());
    }

    #[test]
    fn one_sinkhorn_range_and_duplicate_tasks() {
        let base = "[penalty]\nkind = \"sinkhorn\"\n[penalty.sinkhorn]\neps = 0.1\n";
        for set in [
            "penalty.sinkhorn.scaling=0.99",
            "penalty.sinkhorn.tolerance=0",
            "penalty.sinkhorn.max_iters=0",
            "penalty.sinkhorn.check_every=0",
        ] {
            let file = parse(base, &[set]).unwrap();
            let e = TrainConfig::from_file(file, Path::new("x"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("penalty.sinkhorn"), "{set}: {e}");
        }
        let file = parse("[data]\ntasks = [\"a\", \"a\"]\n", &[]).unwrap();
        let e = TrainConfig::from_file(file, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn inert_keys_are_listed_and_synthetic_refuses_spec_keys() {
        let file = parse(
            "[penalty]\nkind = \"mmd\"\n[penalty.sinkhorn]\neps = 0.1\n[optim]\nmin_lr = 1e-4\n",
            &[],
        )
        .unwrap();
        let cfg = TrainConfig::from_file(file, Path::new("x")).unwrap();
        assert_eq!(cfg.inert.len(), 2, "{:?}", cfg.inert);
        assert!(
            cfg.inert[0].starts_with("penalty.sinkhorn"),
            "{:?}",
            cfg.inert
        );
        assert!(cfg.inert[1].starts_with("optim.min_lr"), "{:?}", cfg.inert);
        let file = parse(
            "[data.split]\ntrain = 0.5\nvalid = 0.25\ntest = 0.25\n",
            &[],
        )
        .unwrap();
        let e = TrainConfig::from_file(file, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.split") && e.contains("synthetic"), "{e}");
        assert!(
            TrainConfig::from_file(ConfigFile::default(), Path::new("x"))
                .unwrap()
                .inert
                .is_empty()
        );
    }

    #[test]
    fn several_sensitive_attributes_and_the_penalty_mode_are_validated() {
        let attrs = "[data]\ndataset = \"adult\"\n[[data.sensitive]]\nname = \"sex\"\ncolumn = \
                     \"sex\"\ngroups = [{ name = \"F\", values = [\"Female\"] }, { name = \
                     \"M\", values = [\"Male\"] }]\n[[data.sensitive]]\nname = \"race\"\n\
                     column = \"race\"\ngroups = [{ name = \"W\", values = [\"White\"] }]\n\
                     unmatched = \"other\"\n[penalty]\nkind = \"mmd\"\n";
        let load = |text: &str, sets: &[&str]| {
            parse(text, sets)
                .and_then(|f| TrainConfig::from_file(f, Path::new("x.toml")))
                .map_err(|e| e.to_string())
        };
        let cfg = load(attrs, &[]).unwrap();
        let names: Vec<&str> = cfg
            .data
            .attributes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["sex", "race"]);
        assert!(cfg.data.sensitive.is_none());
        assert_eq!(cfg.penalty.mode, PenaltyMode::Each);
        // The resolved file round-trips, keeps the array form and leaves out the default mode.
        let text = cfg.file.to_toml();
        assert!(
            text.contains("[[data.sensitive]]") && !text.contains("mode ="),
            "{text}"
        );
        assert_eq!(parse(&text, &[]).unwrap(), cfg.file);
        let cfg = load(attrs, &["penalty.mode=intersectional"]).unwrap();
        assert_eq!(cfg.penalty.mode, PenaltyMode::Intersectional);
        assert!(cfg.inert.is_empty(), "{:?}", cfg.inert);
        assert!(cfg.file.to_toml().contains("mode = \"intersectional\""));
        // An unknown mode lists the variants.
        let e = load(attrs, &["penalty.mode=cells"]).unwrap_err();
        assert!(
            e.contains("penalty.mode") && e.contains("intersectional"),
            "{e}"
        );
        // An unknown key inside an attribute is refused, naming it.
        let e = load(&attrs.replace("unmatched", "unmatchd"), &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive") && e.contains("unmatchd"),
            "{e}"
        );
        // A name is required, and must be distinct and non-empty.
        let e = load(&attrs.replace("name = \"race\"\n", ""), &[]).unwrap_err();
        assert!(e.contains("name"), "{e}");
        let e = load(&attrs.replace("\"race\"\ncolumn", "\"sex\"\ncolumn"), &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive[1].name") && e.contains("distinct"),
            "{e}"
        );
        let e = load(&attrs.replace("\"race\"\ncolumn", "\" \"\ncolumn"), &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive[1].name") && e.contains("empty"),
            "{e}"
        );
        // An empty list and too many attributes.
        let e = load("[data]\ndataset = \"adult\"\nsensitive = []\n", &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive") && e.contains("empty list"),
            "{e}"
        );
        let one = "[[data.sensitive]]\nname = \"a{i}\"\ncolumn = \"age\"\nthreshold = 30\n";
        let many: String = (0..=MAX_ATTRIBUTES)
            .map(|i| one.replace("{i}", &i.to_string()))
            .collect();
        let e = load(&format!("[data]\ndataset = \"adult\"\n{many}"), &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive") && e.contains("at most 8"),
            "{e}"
        );
        // The synthetic dataset refuses data.sensitive in either form.
        let e = load(&attrs.replace("\"adult\"", "\"synthetic\""), &[]).unwrap_err();
        assert!(
            e.contains("data.sensitive") && e.contains("spec datasets"),
            "{e}"
        );
        // The single-table form is unchanged.
        let single = "[data]\ndataset = \"adult\"\n[data.sensitive]\ncolumn = \"sex\"\n\
                      groups = [{ name = \"F\", values = [\"Female\"] }, { name = \"M\", \
                      values = [\"Male\"] }]\n";
        let cfg = load(single, &[]).unwrap();
        assert!(cfg.data.attributes.is_empty() && cfg.data.sensitive.is_some());
        let e = load(&single.replace("groups", "grops"), &[]).unwrap_err();
        assert!(e.contains("grops"), "{e}");
        // penalty.mode with one attribute or without a penalty is unused (warned); with the
        // synthetic second attribute it is used.
        let cfg = load(single, &["penalty.kind=mmd", "penalty.mode=intersectional"]).unwrap();
        assert!(
            cfg.inert.iter().any(|k| k.starts_with("penalty.mode")),
            "{:?}",
            cfg.inert
        );
        let cfg = load(attrs, &["penalty.kind=none", "penalty.mode=intersectional"]).unwrap();
        assert!(
            cfg.inert.iter().any(|k| k.starts_with("penalty.mode")),
            "{:?}",
            cfg.inert
        );
        let cfg = load(
            "[data.synthetic]\nn_groups_2 = 2\n[penalty]\nkind = \"mmd\"\nmode = \"intersectional\"\n",
            &[],
        )
        .unwrap();
        assert!(cfg.inert.is_empty(), "{:?}", cfg.inert);
        // A dp_gap target constrains the per-attribute gaps with "each" only.
        let target = ["penalty.target.value=0.05", "penalty.lambda=1"];
        assert!(
            load(attrs, &target)
                .unwrap()
                .penalty
                .target
                .unwrap()
                .per_attribute
        );
        let mut sets = target.to_vec();
        sets.push("penalty.mode=intersectional");
        assert!(
            !load(attrs, &sets)
                .unwrap()
                .penalty
                .target
                .unwrap()
                .per_attribute
        );
    }

    #[test]
    fn penalty_condition_keys_are_validated() {
        let base = "[penalty]\nkind = \"mmd\"\n";
        let load = |sets: &[&str]| {
            TrainConfig::from_file(parse(base, sets).unwrap(), Path::new("x.toml"))
                .map_err(|e| e.to_string())
        };
        // Default: every row.
        assert_eq!(load(&[]).unwrap().penalty.condition, PenaltyCondition::All);
        // "positive" without a task is an error naming the key.
        let e = load(&["penalty.condition=positive"]).unwrap_err();
        assert!(
            e.contains("penalty.condition") && e.contains("penalty.task"),
            "{e}"
        );
        let e = load(&["penalty.condition=positive", "penalty.task=\"\""]).unwrap_err();
        assert!(e.contains("penalty.task") && e.contains("empty"), "{e}");
        // An unknown condition is refused by the schema, listing the variants.
        let e = parse(base, &["penalty.condition=negative"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("penalty.condition") && e.contains("positive"),
            "{e}"
        );
        let cfg = load(&["penalty.condition=positive", "penalty.task=income"]).unwrap();
        assert_eq!(
            cfg.penalty.condition,
            PenaltyCondition::Positive {
                task: "income".into()
            }
        );
        assert!(cfg.inert.is_empty(), "{:?}", cfg.inert);
        // A task with condition "all" is unused; a condition without a penalty too.
        let cfg = load(&["penalty.task=income"]).unwrap();
        assert_eq!(cfg.penalty.condition, PenaltyCondition::All);
        assert!(cfg.inert[0].starts_with("penalty.task"), "{:?}", cfg.inert);
        let cfg = TrainConfig::from_file(
            parse("", &["penalty.condition=positive", "penalty.task=income"]).unwrap(),
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(
            cfg.inert.iter().any(|k| k.starts_with("penalty.condition")),
            "{:?}",
            cfg.inert
        );
        // The task must be a binary task of the run.
        let tasks = [
            fairrep_data::TaskInfo {
                name: "income".into(),
                column: "income".into(),
                kind: fairrep_data::spec::TaskKind::Binary,
            },
            fairrep_data::TaskInfo {
                name: "hours".into(),
                column: "hours".into(),
                kind: fairrep_data::spec::TaskKind::Regression,
            },
        ];
        let at = |task: &str| {
            load(&[
                "penalty.condition=positive",
                &format!("penalty.task={task}"),
            ])
            .unwrap()
            .penalty
            .condition_task(&tasks, Path::new("x.toml"))
            .map_err(|e| e.to_string())
        };
        assert_eq!(at("income").unwrap(), Some(0));
        let e = at("hours").unwrap_err();
        assert!(
            e.contains("penalty.task") && e.contains("regression"),
            "{e}"
        );
        let e = at("nope").unwrap_err();
        assert!(
            e.contains("penalty.task") && e.contains("income, hours"),
            "{e}"
        );
        assert_eq!(
            load(&[])
                .unwrap()
                .penalty
                .condition_task(&tasks, Path::new("x.toml"))
                .unwrap(),
            None
        );
        // An old configuration (no condition key) and the resolved one do not differ.
        let old = parse(base, &[]).unwrap();
        let resolved = parse(&old.to_toml(), &[]).unwrap();
        assert!(old.differences(&resolved).is_empty());
    }

    #[test]
    fn head_overrides_must_name_tasks() {
        let file = parse("[model.heads.nope]\nkind = \"mlp\"\n", &[]).unwrap();
        let cfg = TrainConfig::from_file(file, Path::new("x.toml")).unwrap();
        let tasks = vec!["task0".to_string(), "task1".to_string()];
        let e = cfg
            .model
            .model_config(4, &tasks, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.heads.nope") && e.contains("task0, task1"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_and_parse_values() {
        let file = parse(
            "[penalty]\nkind = \"mmd\"\n",
            &[
                "penalty.lambda=0.25",
                "penalty.mmd.bandwidths=[0.5, 1.0]",
                "run.name=hello",
                "model.heads.income.kind=mlp",
            ],
        )
        .unwrap();
        assert_eq!(file.penalty.lambda, 0.25);
        assert_eq!(
            file.penalty.mmd.bandwidths,
            BandwidthSpec::List(vec![0.5, 1.0])
        );
        assert_eq!(file.run.name.as_deref(), Some("hello"));
        assert_eq!(
            file.model.heads["income"].kind,
            Some(fairrep_model::HeadName::Mlp)
        );
    }

    #[test]
    fn override_of_unknown_key_lists_valid_keys() {
        let err = parse("", &["penalty.lamda=1"]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::SetUnknownKey { .. }), "{msg}");
        assert!(
            msg.contains("penalty.lamda") && msg.contains("lambda"),
            "{msg}"
        );
        let err = parse("", &["nosuch.key=1"]).unwrap_err();
        assert!(matches!(err, ConfigError::SetUnknownKey { .. }), "{err}");
        let err = parse("", &["optim.epochs=many"]).unwrap_err();
        assert!(matches!(err, ConfigError::SetValue { .. }), "{err}");
        let err = parse("", &["optim.epochs"]).unwrap_err();
        assert!(matches!(err, ConfigError::SetSyntax { .. }), "{err}");
    }

    #[test]
    fn sinkhorn_needs_exactly_one_of_blur_and_eps() {
        let base = "[penalty]\nkind = \"sinkhorn\"\n[penalty.sinkhorn]\n";
        let both = parse(&format!("{base}blur = 0.1\neps = 0.01\n"), &[]).unwrap();
        assert!(TrainConfig::from_file(both, Path::new("x")).is_err());
        let none = parse(base, &[]).unwrap();
        assert!(TrainConfig::from_file(none, Path::new("x")).is_err());
        let blur = parse(&format!("{base}blur = 0.1\n"), &[]).unwrap();
        let cfg = TrainConfig::from_file(blur, Path::new("x")).unwrap();
        match cfg.penalty.divergence {
            Some(Divergence::Sinkhorn(s)) => assert!((s.eps - 0.01).abs() < 1e-15),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trip_through_toml() {
        let file = parse(
            "[data]\nsplit = { train = 0.6, valid = 0.2, test = 0.2 }\n[penalty]\nkind = \
             \"mmd\"\n[optim]\ngrad_clip = 1.0\n[model.heads.a]\nkind = \"mlp\"\n",
            &["data.synthetic.n_train=100"],
        )
        .unwrap();
        let text = file.to_toml();
        let back = parse(&text, &[]).unwrap();
        assert_eq!(back, file);
        assert!(file.differences(&back).is_empty());
        let mut other = back.clone();
        other.penalty.lambda = 3.0;
        other.run.device = DeviceChoice::Flex;
        let diff = file.differences(&other);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(diff[0].starts_with("penalty.lambda"));
    }

    #[test]
    fn every_shipped_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = TrainConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                // Round trip of the resolved form.
                let text = cfg.file.to_toml();
                let back = config_from_str(&text, &path, &[]).unwrap();
                assert_eq!(back, cfg.file, "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 5, "found only {n} configs in {}", dir.display());
    }

    #[test]
    fn schedules() {
        let mut o = OptimConfig {
            kind: OptimKind::Adam,
            lr: 1.0,
            weight_decay: 0.0,
            epochs: 10,
            schedule: Schedule::Cosine { min_lr: 0.0 },
            grad_clip: None,
        };
        assert!((o.lr_at(0) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(5) - 0.5).abs() < 1e-12);
        o.schedule = Schedule::Step {
            step_size: 3,
            gamma: 0.5,
        };
        assert_eq!(o.lr_at(2), 1.0);
        assert_eq!(o.lr_at(3), 0.5);
        assert_eq!(o.lr_at(6), 0.25);
    }
}
