//! The training configuration: a TOML file parsed into our own serde types ([`ConfigFile`],
//! every key optional with a documented default, unknown keys rejected), `--set key=value`
//! overrides applied on the TOML table first, then validated once into a [`TrainConfig`].
//!
//! The README's "Config reference" lists every key; the defaults live in the `Default` impls
//! below and nowhere else.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fairrep_data::spec::SensitiveSpec;
use fairrep_data::{SplitFractions, SyntheticConfig};
use fairrep_loss::{
    Bandwidth, Divergence, MmdConfig, MmdEstimator, SinkhornConfig as LossSinkhornConfig,
};
use fairrep_model::{Activation, HeadConfig, HeadKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

/// Name of the built-in synthetic dataset in `data.dataset`.
pub const SYNTHETIC: &str = "synthetic";

/// An error in a configuration file or an override.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed TOML in `{}` at line {line}, column {column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("unknown key `{key}` in `{}`: {message}", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("invalid value in `{}`{}: {message}", path.display(), location.as_deref().unwrap_or(""))]
    Value {
        path: PathBuf,
        /// `" at line L, column C"` when known.
        location: Option<String>,
        message: String,
    },
    #[error("--set `{arg}`: expected KEY=VALUE (e.g. penalty.lambda=0.5)")]
    SetSyntax { arg: String },
    #[error("--set `{key}`: no such key: {message}")]
    SetUnknownKey { key: String, message: String },
    #[error("--set `{key}`: {message}")]
    SetValue { key: String, message: String },
    #[error("invalid configuration (`{}`): `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------------

/// The whole file. Every section and key is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub data: DataSection,
    pub model: ModelSection,
    pub penalty: PenaltySection,
    pub optim: OptimSection,
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
    /// Replaces the spec's `[sensitive]` table (same keys: `column`, `groups`, `threshold`,
    /// `threshold_names`, `unmatched`, `other_name`). Default: the spec's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<SensitiveSpec>,
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

/// Head architecture names in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKindName {
    #[default]
    Linear,
    Mlp,
}

/// Activation names in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationName {
    #[default]
    Relu,
    Gelu,
    Tanh,
    LeakyRelu,
}

impl From<ActivationName> for Activation {
    fn from(a: ActivationName) -> Self {
        match a {
            ActivationName::Relu => Activation::Relu,
            ActivationName::Gelu => Activation::Gelu,
            ActivationName::Tanh => Activation::Tanh,
            ActivationName::LeakyRelu => Activation::LeakyRelu,
        }
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
    pub activation: ActivationName,
    /// Dropout after each hidden encoder layer. Default `0.0`.
    pub dropout: f64,
    /// Head kind for every task: `linear` | `mlp`. Default `linear`.
    pub head: HeadKindName,
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
            activation: ActivationName::Relu,
            dropout: 0.0,
            head: HeadKindName::Linear,
            head_hidden: vec![32],
            heads: BTreeMap::new(),
        }
    }
}

/// `[model.heads.TASK]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<HeadKindName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
}

/// `penalty.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyKind {
    #[default]
    None,
    Mmd,
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
    pub mmd: MmdSection,
    pub sinkhorn: SinkhornSection,
}

impl Default for PenaltySection {
    fn default() -> Self {
        Self {
            kind: PenaltyKind::None,
            lambda: 1.0,
            eval_max_points: 2000,
            mmd: MmdSection::default(),
            sinkhorn: SinkhornSection::default(),
        }
    }
}

/// `penalty.mmd.bandwidths`: a list of numbers or `"median"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BandwidthSpec {
    List(Vec<f64>),
    Name(String),
}

/// `penalty.mmd.estimator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorName {
    #[default]
    Biased,
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
    /// eps-scaling factor in `[0.5, 0.95]`. Default `0.9`.
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
    #[default]
    Adam,
    Adamw,
}

/// `optim.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Cosine,
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

// ---------------------------------------------------------------------------------------------
// Reading, overriding
// ---------------------------------------------------------------------------------------------

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses TOML text into a table; `path` names the file in errors.
pub fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|err| {
        let (line, column) = err
            .span()
            .map_or((0, 0), |span| line_column(text, span.start));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().trim().to_string(),
        }
    })
}

/// Parses the value of `--set key=value`: a TOML value, else the raw text as a string.
fn parse_set_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Sets `value` at dotted `key` in `table`, creating intermediate tables.
fn set_path(table: &mut toml::Table, key: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().expect("non-empty key");
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(format!(
                    "`{}` is a {}, not a table",
                    parents[..=i].join("."),
                    other.type_str()
                ));
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// Deserialises a table into the file types.
fn deserialize<T: DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_string())
}

/// Whether `message` is serde's unknown-field error.
fn is_unknown_field(message: &str) -> bool {
    message.contains("unknown field")
}

/// Deserialises a table holding only `key = value`: `Err(message)` when that fails.
fn probe<T: DeserializeOwned>(key: &[&str], value: toml::Value) -> Result<(), String> {
    let mut table = toml::Table::new();
    set_path(&mut table, key, value)?;
    deserialize::<T>(&table).map(|_| ())
}

/// Finds the first key of `table` (depth first, dotted) the schema does not know.
fn find_unknown_key<T: DeserializeOwned>(
    table: &toml::Table,
    prefix: &mut Vec<String>,
) -> Option<(String, String)> {
    for (key, value) in table {
        prefix.push(key.clone());
        let parts: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let probe_value = match value {
            toml::Value::Table(_) => toml::Value::Table(toml::Table::new()),
            other => other.clone(),
        };
        if let Err(message) = probe::<T>(&parts, probe_value)
            && is_unknown_field(&message)
        {
            return Some((prefix.join("."), message));
        }
        // `model.heads` is a map keyed by task name: its children are not schema keys.
        if let toml::Value::Table(child) = value
            && let found @ Some(_) = find_unknown_key::<T>(child, prefix)
        {
            return found;
        }
        prefix.pop();
    }
    None
}

/// Applies `--set KEY=VALUE` overrides to a table, rejecting keys the schema does not know.
pub fn apply_overrides<T: DeserializeOwned>(
    table: &mut toml::Table,
    overrides: &[String],
) -> Result<(), ConfigError> {
    for arg in overrides {
        let Some((key, raw)) = arg.split_once('=') else {
            return Err(ConfigError::SetSyntax { arg: arg.clone() });
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::SetSyntax { arg: arg.clone() });
        }
        let value = parse_set_value(raw.trim());
        if let Err(message) = probe::<T>(&parts, value.clone()) {
            return Err(if is_unknown_field(&message) {
                ConfigError::SetUnknownKey {
                    key: key.into(),
                    message,
                }
            } else {
                ConfigError::SetValue {
                    key: key.into(),
                    message,
                }
            });
        }
        set_path(table, &parts, value).map_err(|message| ConfigError::SetValue {
            key: key.into(),
            message,
        })?;
    }
    Ok(())
}

/// Reads a config file, applies overrides and deserialises it (no validation yet).
pub fn read_config_file(path: &Path, overrides: &[String]) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    config_from_str(&text, path, overrides)
}

/// [`read_config_file`] on text already read; `path` names it in errors.
pub fn config_from_str(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<ConfigFile, ConfigError> {
    parse_config(text, path, overrides)
}

/// Reads a TOML file of any config type `T` (`deny_unknown_fields` throughout), applying
/// `--set` overrides: unknown keys, bad values and malformed TOML are errors naming the file.
pub fn read_config<T: DeserializeOwned>(
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text, path, overrides)
}

/// [`read_config`] on text already read; `path` names it in errors.
pub fn parse_config<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut table = parse_table(text, path)?;
    if let Some((key, message)) = find_unknown_key::<T>(&table, &mut Vec::new()) {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key,
            message,
        });
    }
    if overrides.is_empty() {
        // From the text, so that value errors carry a line and column.
        return match toml::from_str::<T>(text) {
            Ok(file) => Ok(file),
            Err(err) => Err(ConfigError::Value {
                path: path.to_path_buf(),
                location: err.span().map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!(" at line {line}, column {column}")
                }),
                message: err.message().trim().to_string(),
            }),
        };
    }
    apply_overrides::<T>(&mut table, overrides)?;
    deserialize::<T>(&table).map_err(|message| ConfigError::Value {
        path: path.to_path_buf(),
        location: Some(" (after --set overrides)".into()),
        message,
    })
}

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

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

/// Where the data comes from.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    Synthetic(SyntheticConfig),
    /// A spec name or path, resolved against the specs directory.
    Spec(String),
}

/// Validated `[data]`.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub source: DatasetSource,
    pub sensitive: Option<SensitiveSpec>,
    pub tasks: Option<Vec<String>>,
    pub held_out_tasks: Vec<String>,
    pub aware: bool,
    pub split: Option<SplitFractions>,
    pub split_seed: u64,
    pub batch_size: usize,
}

/// Validated `[model]`; the input size and the task names come from the data.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub encoder_widths: Vec<usize>,
    pub latent: usize,
    pub activation: Activation,
    pub dropout: f64,
    pub default_head: HeadKind,
    pub heads: BTreeMap<String, HeadKind>,
}

impl ModelSettings {
    /// The model for `n_features` inputs and the given tasks.
    pub fn model_config(
        &self,
        n_features: usize,
        tasks: &[String],
    ) -> fairrep_model::FairModelConfig {
        fairrep_model::FairModelConfig {
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
        }
    }
}

/// Validated `[penalty]`.
#[derive(Debug, Clone)]
pub struct PenaltyConfig {
    /// `None` when `kind = "none"` or `lambda = 0`: the penalty is not computed in training.
    pub divergence: Option<Divergence>,
    pub lambda: f64,
    pub eval_max_points: usize,
}

/// The learning-rate schedule, a pure function of the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// `min + (lr - min) (1 + cos(pi t / T)) / 2` with `t` the epoch (0-based), `T` the epochs.
    Cosine {
        min_lr: f64,
    },
    /// `lr gamma^floor(epoch / step_size)`.
    Step {
        step_size: usize,
        gamma: f64,
    },
}

/// Validated `[optim]`.
#[derive(Debug, Clone)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub schedule: Schedule,
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
    pub file: ConfigFile,
    /// The file it was read from (for errors and the run name).
    pub source: PathBuf,
    pub data: DataConfig,
    pub model: ModelSettings,
    pub penalty: PenaltyConfig,
    pub optim: OptimConfig,
}

fn head_kind(kind: HeadKindName, hidden: &[usize]) -> HeadKind {
    match kind {
        HeadKindName::Linear => HeadKind::Linear,
        HeadKindName::Mlp => HeadKind::Mlp {
            hidden: hidden.to_vec(),
        },
    }
}

impl TrainConfig {
    /// Reads, overrides and validates a configuration file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let file = read_config_file(path, overrides)?;
        Self::from_file(file, path)
    }

    /// Validates a parsed file.
    pub fn from_file(file: ConfigFile, source: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: source.to_path_buf(),
            key: key.into(),
            message,
        };

        // [data]
        let mut file = file;
        let d = &mut file.data;
        let source_data = if d.dataset == SYNTHETIC {
            // Saved with every key, so the run directory's config.toml is explicit.
            let synthetic = d.synthetic.get_or_insert_with(SyntheticConfig::default);
            synthetic
                .validate()
                .map_err(|e| invalid("data.synthetic", e.to_string()))?;
            DatasetSource::Synthetic(synthetic.clone())
        } else {
            if d.synthetic.is_some() {
                return Err(invalid(
                    "data.synthetic",
                    format!(
                        "only used with dataset = \"synthetic\", but dataset = {:?}",
                        d.dataset
                    ),
                ));
            }
            if d.dataset.trim().is_empty() {
                return Err(invalid("data.dataset", "must not be empty".into()));
            }
            DatasetSource::Spec(d.dataset.clone())
        };
        if d.batch_size < 2 {
            return Err(invalid(
                "data.batch_size",
                format!("must be at least 2, found {}", d.batch_size),
            ));
        }
        if let Some(split) = &d.split {
            split
                .validate()
                .map_err(|e| invalid("data.split", e.to_string()))?;
        }
        if let Some(tasks) = &d.tasks
            && tasks.is_empty()
        {
            return Err(invalid("data.tasks", "must name at least one task".into()));
        }
        let data = DataConfig {
            source: source_data,
            sensitive: d.sensitive.clone(),
            tasks: d.tasks.clone(),
            held_out_tasks: d.held_out_tasks.clone(),
            aware: d.aware,
            split: d.split,
            split_seed: d.split_seed,
            batch_size: d.batch_size,
        };

        // [model]
        let m = &file.model;
        if m.latent == 0 {
            return Err(invalid("model.latent", "must be positive, found 0".into()));
        }
        if m.encoder_widths.contains(&0) {
            return Err(invalid(
                "model.encoder_widths",
                format!("widths must be positive, found {:?}", m.encoder_widths),
            ));
        }
        if !m.dropout.is_finite() || !(0.0..1.0).contains(&m.dropout) {
            return Err(invalid(
                "model.dropout",
                format!("must be in [0, 1), found {}", m.dropout),
            ));
        }
        let check_hidden = |key: &str, kind: HeadKindName, hidden: &[usize]| {
            if kind == HeadKindName::Mlp && (hidden.is_empty() || hidden.contains(&0)) {
                Err(invalid(
                    key,
                    format!("an mlp head needs positive hidden widths, found {hidden:?}"),
                ))
            } else {
                Ok(())
            }
        };
        check_hidden("model.head_hidden", m.head, &m.head_hidden)?;
        let mut heads = BTreeMap::new();
        for (task, h) in &m.heads {
            let kind = h.kind.unwrap_or(m.head);
            let hidden = h.hidden.clone().unwrap_or_else(|| m.head_hidden.clone());
            check_hidden(&format!("model.heads.{task}.hidden"), kind, &hidden)?;
            heads.insert(task.clone(), head_kind(kind, &hidden));
        }
        let model = ModelSettings {
            encoder_widths: m.encoder_widths.clone(),
            latent: m.latent,
            activation: m.activation.into(),
            dropout: m.dropout,
            default_head: head_kind(m.head, &m.head_hidden),
            heads,
        };

        // [penalty]
        let p = &file.penalty;
        if !p.lambda.is_finite() || p.lambda < 0.0 {
            return Err(invalid(
                "penalty.lambda",
                format!("must be a finite number >= 0, found {}", p.lambda),
            ));
        }
        if p.eval_max_points < 2 {
            return Err(invalid(
                "penalty.eval_max_points",
                format!("must be at least 2, found {}", p.eval_max_points),
            ));
        }
        let mmd = {
            let bandwidth = match &p.mmd.bandwidths {
                BandwidthSpec::Name(name) if name == "median" => Bandwidth::Median,
                BandwidthSpec::Name(other) => {
                    return Err(invalid(
                        "penalty.mmd.bandwidths",
                        format!("expected a list of numbers or \"median\", found {other:?}"),
                    ));
                }
                BandwidthSpec::List(list) => {
                    if list.is_empty() || list.iter().any(|s| !s.is_finite() || *s <= 0.0) {
                        return Err(invalid(
                            "penalty.mmd.bandwidths",
                            format!("bandwidths must be positive numbers, found {list:?}"),
                        ));
                    }
                    Bandwidth::Fixed(list.clone())
                }
            };
            MmdConfig {
                bandwidth,
                estimator: match p.mmd.estimator {
                    EstimatorName::Biased => MmdEstimator::Biased,
                    EstimatorName::Unbiased => MmdEstimator::Unbiased,
                },
            }
        };
        let divergence = match p.kind {
            PenaltyKind::None => None,
            PenaltyKind::Mmd => Some(Divergence::Mmd(mmd)),
            PenaltyKind::Sinkhorn => {
                let s = &p.sinkhorn;
                let eps = match (s.blur, s.eps) {
                    (Some(blur), None) => blur * blur,
                    (None, Some(eps)) => eps,
                    (blur, eps) => {
                        return Err(invalid(
                            "penalty.sinkhorn",
                            format!(
                                "set exactly one of `blur` and `eps` (eps = blur^2), found \
                                 blur = {blur:?}, eps = {eps:?}"
                            ),
                        ));
                    }
                };
                if !eps.is_finite() || eps <= 0.0 {
                    return Err(invalid(
                        "penalty.sinkhorn.eps",
                        format!("must be positive, found {eps}"),
                    ));
                }
                if !(0.5..=0.95).contains(&s.scaling) {
                    return Err(invalid(
                        "penalty.sinkhorn.scaling",
                        format!("must be in [0.5, 0.95], found {}", s.scaling),
                    ));
                }
                if s.tolerance.is_nan()
                    || s.tolerance <= 0.0
                    || s.max_iters == 0
                    || s.check_every == 0
                {
                    return Err(invalid(
                        "penalty.sinkhorn",
                        format!(
                            "tolerance, max_iters and check_every must be positive, found {}, \
                             {}, {}",
                            s.tolerance, s.max_iters, s.check_every
                        ),
                    ));
                }
                Some(Divergence::Sinkhorn(LossSinkhornConfig {
                    eps,
                    scaling: s.scaling,
                    tolerance: s.tolerance,
                    max_iters: s.max_iters,
                    check_every: s.check_every,
                }))
            }
        };
        let penalty = PenaltyConfig {
            divergence,
            lambda: p.lambda,
            eval_max_points: p.eval_max_points,
        };

        // [optim]
        let o = &file.optim;
        if !o.lr.is_finite() || o.lr <= 0.0 {
            return Err(invalid(
                "optim.lr",
                format!("must be positive, found {}", o.lr),
            ));
        }
        if !o.weight_decay.is_finite() || o.weight_decay < 0.0 {
            return Err(invalid(
                "optim.weight_decay",
                format!("must be >= 0, found {}", o.weight_decay),
            ));
        }
        if o.epochs == 0 {
            return Err(invalid("optim.epochs", "must be positive, found 0".into()));
        }
        let schedule = match o.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Cosine => {
                if !(0.0..=o.lr).contains(&o.min_lr) {
                    return Err(invalid(
                        "optim.min_lr",
                        format!("must be in [0, lr = {}], found {}", o.lr, o.min_lr),
                    ));
                }
                Schedule::Cosine { min_lr: o.min_lr }
            }
            ScheduleKind::Step => {
                if o.step_size == 0 || !(o.gamma > 0.0 && o.gamma <= 1.0) {
                    return Err(invalid(
                        "optim",
                        format!(
                            "step schedule needs step_size > 0 and gamma in (0, 1], found \
                             step_size = {}, gamma = {}",
                            o.step_size, o.gamma
                        ),
                    ));
                }
                Schedule::Step {
                    step_size: o.step_size,
                    gamma: o.gamma,
                }
            }
        };
        if let Some(clip) = o.grad_clip
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(invalid(
                "optim.grad_clip",
                format!("must be positive, found {clip}"),
            ));
        }
        let optim = OptimConfig {
            kind: o.kind,
            lr: o.lr,
            weight_decay: o.weight_decay,
            epochs: o.epochs,
            schedule,
            grad_clip: o.grad_clip,
        };

        if let Some(stop) = file.run.stop_after_epoch
            && (stop == 0 || stop >= o.epochs)
        {
            return Err(invalid(
                "run.stop_after_epoch",
                format!("must be in 1..{} (epochs), found {stop}", o.epochs),
            ));
        }

        Ok(Self {
            source: source.to_path_buf(),
            data,
            model,
            penalty,
            optim,
            file,
        })
    }

    /// The run seed.
    pub fn seed(&self) -> u64 {
        self.file.run.seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wrong_type_has_location() {
        let err = parse("[optim]\nepochs = \"ten\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
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
        assert_eq!(file.model.heads["income"].kind, Some(HeadKindName::Mlp));
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
