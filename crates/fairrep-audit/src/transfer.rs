//! `fairrep transfer`: fresh heads for novel tasks on frozen representations.
//!
//! A representation is a trained encoder or the linear FERM projection of a `fairrep ferm`
//! run (the `representation` module); either can be given with `--from` or as a comparison.
//! For every run given with `--from` (one per seed), the representation is frozen, the
//! transfer tasks are loaded with the encoder's own input columns, groups and preprocessing
//! (a dataset whose inputs do not match is refused), and one head per architecture and task is
//! fitted on `z` (train split, selected on validation) and scored on the test split (or, to
//! choose lambda without the test split, on validation: `--split valid`). The same
//! heads are fitted on the representations of the comparison encoders (`compare.baseline`,
//! typically `lambda = 0`, paired by seed) and on the raw preprocessed inputs, so the gain is
//! read in one table. Next to each measured gap between the groups' mean scores are the two
//! bounds of MATH.md: `L W1(z|g, z|g')` and `||q||_H MMD(z|g, z|g')`. With several sensitive
//! attributes the groups are the intersection cells, and each attribute gets its own gaps and
//! bounds between its groups too (same heads, same scores, same `z`).
//!
//! ```toml
//! [data]
//! tasks = ["married", "hours_gt_40"]   # required: the novel tasks
//! # dataset = "adult"                  # default: the encoder's dataset
//! [heads]
//! kinds = ["linear", "mlp"]            # default both
//! hidden = [64]                        # MLP hidden widths
//! [fit]
//! l2 = 1e-4                            # ridge of the linear heads (standardised features)
//! lr = 3e-3
//! epochs = 30
//! batch_size = 256
//! [compare]
//! baseline = ["runs/adult-lambda0-s0"] # lambda = 0 encoders, one per seed
//! raw = true                           # also fit the heads on the raw inputs
//! [bounds]
//! max_points = 500                     # per group, for W1; in all, for the MMD bound
//! [run]
//! seed = 0
//! device = "auto"
//! ```
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairrep_data::spec::TaskKind;
use fairrep_data::{Dataset, Encoding, Matrix, SplitName};
use fairrep_metrics::Interval;
use fairrep_metrics::bounds::{MmdBound, W1Bound};
use fairrep_metrics::fairness::MetricError;
use fairrep_model::{HeadKind, HeadName};
use fairrep_train::config::{ConfigError, DatasetSource, SYNTHETIC, read_config};
use fairrep_train::data::{LoadError, load_dataset};
use fairrep_train::device::DeviceChoice;
use fairrep_train::plot::{Chart, Series, render};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::probe::{FitError, FitSettings, fit_head};
use crate::representation::Representation;
use crate::stats::{self, ScoreMetrics, StatsError};
use crate::trained::TrainedError;

/// `[data]` of a transfer config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferData {
    /// The novel tasks (binary tasks of the dataset).
    pub tasks: Vec<String>,
    /// Dataset to transfer to; default: the encoder's. Its inputs must match the encoder's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Seed of the random / validation split; default: the encoder's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
}

/// `[heads]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadsSection {
    /// The head architectures fitted (default both).
    pub kinds: Vec<HeadName>,
    /// Hidden widths of MLP heads.
    pub hidden: Vec<usize>,
}

impl Default for HeadsSection {
    fn default() -> Self {
        Self {
            kinds: vec![HeadName::Linear, HeadName::Mlp],
            hidden: vec![64],
        }
    }
}

/// `[fit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitSection {
    /// Ridge of the linear heads.
    pub l2: f64,
    /// Adam learning rate of MLP heads.
    pub lr: f64,
    /// Epochs of MLP heads.
    pub epochs: usize,
    /// Minibatch size of MLP heads.
    pub batch_size: usize,
}

impl Default for FitSection {
    fn default() -> Self {
        let d = FitSettings::default();
        Self {
            l2: d.l2,
            lr: d.lr,
            epochs: d.epochs,
            batch_size: d.batch_size,
        }
    }
}

/// `[compare]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareSection {
    /// Comparison encoders (e.g. trained with lambda = 0), paired with `--from` by position.
    /// Relative paths are taken from the current directory.
    pub baseline: Vec<PathBuf>,
    /// Fit the heads on the raw preprocessed inputs too.
    pub raw: bool,
}

impl Default for CompareSection {
    fn default() -> Self {
        Self {
            baseline: Vec::new(),
            raw: true,
        }
    }
}

/// `[bounds]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoundsSection {
    /// Rows per group for the W1 bound; rows in all for the MMD bound.
    pub max_points: usize,
}

impl Default for BoundsSection {
    fn default() -> Self {
        Self { max_points: 500 }
    }
}

/// `[run]` of a transfer config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferRun {
    /// Seed of the heads (the i-th encoder's heads use `seed + i`).
    pub seed: u64,
    /// The device.
    pub device: DeviceChoice,
}

/// A transfer config file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// `[data]`.
    pub data: TransferData,
    /// `[heads]`.
    pub heads: HeadsSection,
    /// `[fit]`.
    pub fit: FitSection,
    /// `[compare]`.
    pub compare: CompareSection,
    /// `[bounds]`.
    pub bounds: BoundsSection,
    /// `[run]`.
    pub run: TransferRun,
}

impl TransferConfig {
    /// Reads, overrides and validates a transfer config.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let cfg: Self = read_config(path, overrides)?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        };
        if cfg.data.tasks.is_empty() {
            return Err(invalid(
                "data.tasks",
                "must name at least one novel task".into(),
            ));
        }
        if let Some(t) = cfg
            .data
            .tasks
            .iter()
            .enumerate()
            .find(|(i, t)| cfg.data.tasks[..*i].contains(t))
        {
            return Err(invalid("data.tasks", format!("`{}` is listed twice", t.1)));
        }
        if cfg.heads.kinds.is_empty() {
            return Err(invalid(
                "heads.kinds",
                "must name at least one of \"linear\", \"mlp\"".into(),
            ));
        }
        if cfg.heads.hidden.contains(&0) {
            return Err(invalid(
                "heads.hidden",
                format!("widths must be positive, found {:?}", cfg.heads.hidden),
            ));
        }
        if !(cfg.fit.lr.is_finite() && cfg.fit.lr > 0.0) {
            return Err(invalid(
                "fit.lr",
                format!("must be positive, found {}", cfg.fit.lr),
            ));
        }
        if !(cfg.fit.l2.is_finite() && cfg.fit.l2 >= 0.0) {
            return Err(invalid(
                "fit.l2",
                format!("must be >= 0, found {}", cfg.fit.l2),
            ));
        }
        if cfg.fit.epochs == 0 {
            return Err(invalid("fit.epochs", "must be positive, found 0".into()));
        }
        if cfg.fit.batch_size < 2 {
            return Err(invalid(
                "fit.batch_size",
                format!("must be at least 2, found {}", cfg.fit.batch_size),
            ));
        }
        if cfg.bounds.max_points < 2 {
            return Err(invalid(
                "bounds.max_points",
                format!("must be at least 2, found {}", cfg.bounds.max_points),
            ));
        }
        Ok(cfg)
    }

    fn archs(&self) -> Vec<HeadKind> {
        self.heads
            .kinds
            .iter()
            .map(|k| k.with_hidden(&self.heads.hidden))
            .collect()
    }

    fn settings(&self) -> FitSettings {
        FitSettings {
            l2: self.fit.l2,
            lr: self.fit.lr,
            epochs: self.fit.epochs,
            batch_size: self.fit.batch_size,
            ..FitSettings::default()
        }
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A run cannot be opened.
    #[error(transparent)]
    Trained(#[from] TrainedError),
    /// The transfer data cannot be loaded.
    #[error("transferring run `{}`: {source}", run.display())]
    Data {
        /// The run.
        run: PathBuf,
        /// Why.
        #[source]
        source: Box<LoadError>,
    },
    /// A novel task that is not binary.
    #[error("task `{task}` is a regression task; transfer fits binary heads only")]
    Regression {
        /// The task.
        task: String,
    },
    /// Comparison encoders that cannot be paired.
    #[error(
        "{} comparison encoders for {} encoders: give none, one per encoder (paired by \
         position), or one for all",
        baselines,
        encoders
    )]
    BaselineCount {
        /// Comparison encoders given.
        baselines: usize,
        /// Encoders given.
        encoders: usize,
    },
    /// Encoders of different schemas.
    #[error(
        "run `{}` does not read the same inputs as `{}`; comparisons need encoders of the same \
         data schema: {what}",
        other.display(),
        first.display()
    )]
    Mismatch {
        /// The first encoder.
        first: PathBuf,
        /// The other.
        other: PathBuf,
        /// What differs.
        what: String,
    },
    /// A head cannot be fitted.
    #[error("{representation}, head {head}, task `{task}`: {source}")]
    Fit {
        /// The representation.
        representation: String,
        /// The head.
        head: String,
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: FitError,
    },
    /// A metric is undefined.
    #[error("{representation}, task `{task}`: {source}")]
    Metric {
        /// The representation.
        representation: String,
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: MetricError,
    },
    /// A bound cannot be computed.
    #[error("{representation}: {source}")]
    Stats {
        /// The representation.
        representation: String,
        /// Why.
        #[source]
        source: Box<StatsError>,
    },
}

/// One head on one task, for one representation and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    /// The run the representation comes from (absent for raw inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// The head's seed.
    pub seed: u64,
    /// Its metrics on the scored split.
    #[serde(flatten)]
    pub metrics: ScoreMetrics,
    /// Validation BCE of the fitted head.
    pub valid_loss: f64,
    /// Lipschitz constant of the score `sigmoid(head(z))` in `z`.
    pub score_lipschitz: f64,
    /// `score_lipschitz * W1(z | g, z | g')`, an upper bound on `score_gap`.
    pub w1_bound: f64,
    /// The MMD side of the bound.
    pub mmd_bound: MmdBound,
    /// With several sensitive attributes (`metrics` and the bounds then compare the
    /// intersection cells): per attribute name, the metrics and bounds between that
    /// attribute's groups.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, AttributeResult>,
}

/// One head's figures between the groups of one sensitive attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeResult {
    /// Its metrics between the attribute's groups.
    #[serde(flatten)]
    pub metrics: ScoreMetrics,
    /// `score_lipschitz * W1(z | g, z | g')` over the attribute's groups, an upper bound on
    /// its `score_gap`.
    pub w1_bound: f64,
    /// The MMD side of the bound, between the attribute's groups.
    pub mmd_bound: MmdBound,
}

/// All seeds of one (representation, head, task) cell, and their summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The representation.
    pub representation: String,
    /// The head.
    pub head: String,
    /// The task.
    pub task: String,
    /// One result per seed.
    pub runs: Vec<HeadResult>,
    /// `metric -> mean and 95% interval over the seeds`.
    pub summary: BTreeMap<String, Interval>,
}

/// The W1 bound of one representation (one seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepresentationW1 {
    /// The representation.
    pub representation: String,
    /// Its run (absent for raw inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// The bound.
    pub w1: W1Bound,
    /// With several sensitive attributes (`w1` then is between the intersection cells): per
    /// attribute name, the bound between that attribute's groups.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, W1Bound>,
}

/// What `fairrep transfer` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// The dataset.
    pub dataset: String,
    /// The split the heads were scored on.
    pub split: SplitName,
    /// The novel tasks.
    pub tasks: Vec<String>,
    /// The group names.
    pub groups: Vec<String>,
    /// The encoder runs.
    pub encoders: Vec<PathBuf>,
    /// The comparison encoder runs.
    pub baselines: Vec<PathBuf>,
    /// Novel tasks whose defining column is an input of the encoder (the head can read its
    /// label from `x`: not a fair test of transfer).
    pub leaking_tasks: Vec<String>,
    /// Tasks the encoder was trained on (not novel).
    pub trained_tasks: Vec<String>,
    /// One cell per (task, head, representation).
    pub cells: Vec<Cell>,
    /// The W1 bound of each representation and seed.
    pub w1: Vec<RepresentationW1>,
    /// The resolved transfer config.
    pub config: TransferConfig,
}

/// The transfer data for `run`: its data config with the novel tasks, its encoding.
fn transfer_data(
    run: &Representation,
    cfg: &TransferConfig,
    data_dir: Option<&Path>,
) -> Result<Dataset, TransferError> {
    let mut data = run.data_config().clone();
    data.tasks = Some(cfg.data.tasks.clone());
    data.held_out_tasks.clear();
    if let Some(name) = &cfg.data.dataset {
        data.source = if name == SYNTHETIC {
            match &data.source {
                DatasetSource::Synthetic(s) => DatasetSource::Synthetic(s.clone()),
                DatasetSource::Spec(_) => {
                    DatasetSource::Synthetic(fairrep_data::SyntheticConfig::default())
                }
            }
        } else {
            DatasetSource::Spec(name.clone())
        };
    }
    if let Some(seed) = cfg.data.split_seed {
        data.split_seed = seed;
    }
    let dataset = load_dataset(
        &data,
        data_dir,
        Encoding::Transfer(run.schema(), run.preprocessing()),
    )
    .map_err(|e| TransferError::Data {
        run: run.run_dir().to_path_buf(),
        source: Box::new(e),
    })?;
    if let Some(t) = dataset
        .schema
        .tasks
        .iter()
        .find(|t| t.kind == TaskKind::Regression)
    {
        return Err(TransferError::Regression {
            task: t.name.clone(),
        });
    }
    Ok(dataset)
}

/// The three splits' features of one representation.
struct Represented {
    name: String,
    run: Option<PathBuf>,
    train: Matrix<f32>,
    valid: Matrix<f32>,
    test: Matrix<f32>,
}

fn encode_all(
    run: &Representation,
    ds: &Dataset,
    device: &Device,
) -> Result<Represented, TrainedError> {
    Ok(Represented {
        name: run.describe(),
        run: Some(run.run_dir().to_path_buf()),
        train: run.encode(&ds.train, "train", device)?,
        valid: run.encode(&ds.valid, "valid", device)?,
        test: run.encode(&ds.test, "test", device)?,
    })
}

/// Options of [`transfer`] besides the config.
#[derive(Debug)]
pub struct TransferOptions<'a> {
    /// The encoder runs (one per seed).
    pub encoders: &'a [PathBuf],
    /// The data directory.
    pub data_dir: Option<&'a Path>,
    /// The device.
    pub device: &'a Device,
    /// The split the heads are scored on: test (to report), or validation (to choose lambda
    /// without looking at the test split; MLP heads are then selected on the rows they are
    /// scored on).
    pub split: SplitName,
}

fn summary_of(runs: &[HeadResult]) -> BTreeMap<String, Interval> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, f: &dyn Fn(&HeadResult) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        if !v.is_empty() {
            out.insert(key.to_string(), Interval::of(&v));
        }
    };
    put("accuracy", &|r| Some(r.metrics.accuracy));
    put("auc", &|r| r.metrics.auc);
    put("dp_gap", &|r| Some(r.metrics.dp_gap));
    put("eo_gap", &|r| r.metrics.eo_gap);
    put("eopp_gap", &|r| r.metrics.eopp_gap);
    put("ks", &|r| Some(r.metrics.ks));
    put("w1", &|r| Some(r.metrics.w1));
    put("abpc", &|r| Some(r.metrics.abpc));
    put("score_gap", &|r| Some(r.metrics.score_gap));
    put("w1_bound", &|r| Some(r.w1_bound));
    put("mmd_bound", &|r| Some(r.mmd_bound.bound));
    // Several attributes: each attribute's gaps and bounds as `METRIC:ATTRIBUTE`.
    let attributes: Vec<String> = runs
        .first()
        .map(|r| r.attributes.keys().cloned().collect())
        .unwrap_or_default();
    for a in &attributes {
        put(&format!("dp_gap:{a}"), &|r| {
            r.attributes.get(a).map(|m| m.metrics.dp_gap)
        });
        put(&format!("eo_gap:{a}"), &|r| {
            r.attributes.get(a).and_then(|m| m.metrics.eo_gap)
        });
        put(&format!("ks:{a}"), &|r| {
            r.attributes.get(a).map(|m| m.metrics.ks)
        });
        put(&format!("score_gap:{a}"), &|r| {
            r.attributes.get(a).map(|m| m.metrics.score_gap)
        });
        put(&format!("w1_bound:{a}"), &|r| {
            r.attributes.get(a).map(|m| m.w1_bound)
        });
        put(&format!("mmd_bound:{a}"), &|r| {
            r.attributes.get(a).map(|m| m.mmd_bound.bound)
        });
    }
    out
}

/// Runs the transfer and returns the report (the caller prints and writes it).
pub fn transfer(
    cfg: &TransferConfig,
    opts: &TransferOptions<'_>,
) -> Result<TransferReport, TransferError> {
    let device = opts.device;
    let archs = cfg.archs();
    let settings = cfg.settings();
    let baselines = &cfg.compare.baseline;
    let n_enc = opts.encoders.len();
    if !(baselines.is_empty() || baselines.len() == n_enc || baselines.len() == 1) {
        return Err(TransferError::BaselineCount {
            baselines: baselines.len(),
            encoders: n_enc,
        });
    }
    let mut cells: BTreeMap<(usize, String, String), Cell> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut w1s = Vec::new();
    let mut report_meta: Option<(String, Vec<String>, Vec<String>)> = None;
    let mut leaking: Vec<String> = Vec::new();
    let mut trained_tasks: Vec<String> = Vec::new();
    let mut first_schema: Option<(PathBuf, fairrep_data::Schema)> = None;

    for (i, enc_dir) in opts.encoders.iter().enumerate() {
        let seed = cfg.run.seed + i as u64;
        let enc = Representation::open(enc_dir, device)?;
        let ds = transfer_data(&enc, cfg, opts.data_dir)?;
        match &first_schema {
            None => first_schema = Some((enc_dir.clone(), enc.schema().clone())),
            Some((first, schema)) => {
                if schema.features != enc.schema().features {
                    return Err(TransferError::Mismatch {
                        first: first.clone(),
                        other: enc_dir.clone(),
                        what: "different input features".into(),
                    });
                }
            }
        }
        if report_meta.is_none() {
            report_meta = Some((ds.name.clone(), ds.task_names(), ds.schema.groups.clone()));
            let inputs: Vec<&str> = enc
                .schema()
                .inputs
                .iter()
                .map(|c| c.column.as_str())
                .collect();
            for t in &ds.schema.tasks {
                if inputs.contains(&t.column.as_str()) {
                    warn!(
                        "task `{}`: its column `{}` is an input of the encoder, so a head can \
                         read the label from x; hold it out when training \
                         (data.held_out_tasks) for a fair test of transfer",
                        t.name, t.column
                    );
                    leaking.push(t.name.clone());
                }
                if enc.schema().tasks.iter().any(|e| e.name == t.name) {
                    warn!(
                        "task `{}` was a training task of the encoder: it is not novel",
                        t.name
                    );
                    trained_tasks.push(t.name.clone());
                }
            }
        }
        let mut reps = vec![encode_all(&enc, &ds, device)?];
        if !baselines.is_empty() {
            let dir = if baselines.len() == 1 {
                &baselines[0]
            } else {
                &baselines[i]
            };
            let base = Representation::open(dir, device)?;
            if base.schema().features != enc.schema().features
                || base.schema().groups != enc.schema().groups
            {
                return Err(TransferError::Mismatch {
                    first: enc_dir.clone(),
                    other: dir.clone(),
                    what: "different input features or groups".into(),
                });
            }
            let base_ds = transfer_data(&base, cfg, opts.data_dir)?;
            // Its heads are scored against the encoder's labels: the rows must be the same.
            for name in [SplitName::Train, SplitName::Valid, SplitName::Test] {
                let (a, b) = (ds.split(name), base_ds.split(name));
                if a.len() != b.len() || a.groups != b.groups {
                    return Err(TransferError::Mismatch {
                        first: enc_dir.clone(),
                        other: dir.clone(),
                        what: format!(
                            "their {} splits hold different rows ({} and {}): use the same \
                             dataset, split and split seed",
                            name.name(),
                            a.len(),
                            b.len()
                        ),
                    });
                }
            }
            let mut r = encode_all(&base, &base_ds, device)?;
            if r.name == reps[0].name {
                r.name = format!("{} (baseline)", r.name);
            }
            reps.push(r);
        }
        if cfg.compare.raw {
            reps.push(Represented {
                name: "raw inputs".into(),
                run: None,
                train: ds.train.x.clone(),
                valid: ds.valid.x.clone(),
                test: ds.test.x.clone(),
            });
        }
        let n_groups = ds.n_groups();
        let scored = ds.split(opts.split);
        for (r_pos, rep) in reps.iter().enumerate() {
            let rep_scored = match opts.split {
                SplitName::Test => &rep.test,
                SplitName::Valid => &rep.valid,
                SplitName::Train => &rep.train,
            };
            let stats_err = |source| TransferError::Stats {
                representation: rep.name.clone(),
                source: Box::new(source),
            };
            if i == 0 {
                order.push(rep.name.clone());
            }
            info!("seed {seed}: {}: W1 bound between the groups", rep.name);
            let w1 = stats::group_w1_bound(
                rep_scored,
                &scored.groups,
                n_groups,
                cfg.bounds.max_points,
                seed,
                device,
            )
            .map_err(stats_err)?;
            // Per attribute: its ids, group count, and W1 bound between its groups (the
            // cells' when its ids are the cells', a one-element `[[data.sensitive]]`).
            let mut attribute_w1 = Vec::with_capacity(ds.schema.attributes.len());
            for (info, ids) in ds.schema.attributes.iter().zip(&scored.attributes) {
                let n = info.groups.len();
                let same_as_cells = n == n_groups && *ids == scored.groups;
                let bound = if same_as_cells {
                    w1.clone()
                } else {
                    info!(
                        "seed {seed}: {}: W1 bound between the groups of `{}`",
                        rep.name, info.name
                    );
                    stats::group_w1_bound(rep_scored, ids, n, cfg.bounds.max_points, seed, device)
                        .map_err(stats_err)?
                };
                attribute_w1.push((info, ids, same_as_cells, bound));
            }
            for arch in &archs {
                for (t, task) in ds.task_names().iter().enumerate() {
                    let head = fit_head(
                        arch,
                        &rep.train,
                        &ds.train.targets[t],
                        &rep.valid,
                        &ds.valid.targets[t],
                        &settings,
                        seed,
                        device,
                    )
                    .map_err(|source| TransferError::Fit {
                        representation: rep.name.clone(),
                        head: arch.name().into(),
                        task: task.clone(),
                        source,
                    })?;
                    let scores = head.scores(rep_scored);
                    let metrics =
                        stats::score_metrics(&scores, &scored.targets[t], &scored.groups, n_groups)
                            .map_err(|source| TransferError::Metric {
                                representation: rep.name.clone(),
                                task: task.clone(),
                                source,
                            })?;
                    let mmd_bound = stats::mmd_bound(
                        rep_scored,
                        &scores,
                        &scored.groups,
                        n_groups,
                        cfg.bounds.max_points,
                        seed,
                    )
                    .map_err(stats_err)?;
                    let mut attributes = BTreeMap::new();
                    for (info, ids, same_as_cells, w1_a) in &attribute_w1 {
                        let n = info.groups.len();
                        let metrics = stats::score_metrics(&scores, &scored.targets[t], ids, n)
                            .map_err(|source| TransferError::Metric {
                                representation: rep.name.clone(),
                                task: format!("{task} (attribute `{}`)", info.name),
                                source,
                            })?;
                        let mmd_bound = if *same_as_cells {
                            mmd_bound.clone()
                        } else {
                            stats::mmd_bound(
                                rep_scored,
                                &scores,
                                ids,
                                n,
                                cfg.bounds.max_points,
                                seed,
                            )
                            .map_err(stats_err)?
                        };
                        attributes.insert(
                            info.name.clone(),
                            AttributeResult {
                                metrics,
                                w1_bound: head.score_lipschitz() * w1_a.value,
                                mmd_bound,
                            },
                        );
                    }
                    info!(
                        "seed {seed}: {} / {} / {task}: accuracy {:.4}, DP gap {:.4}",
                        rep.name,
                        arch.name(),
                        metrics.accuracy,
                        metrics.dp_gap
                    );
                    let result = HeadResult {
                        run: rep.run.clone(),
                        seed,
                        metrics,
                        valid_loss: head.valid_loss,
                        score_lipschitz: head.score_lipschitz(),
                        w1_bound: head.score_lipschitz() * w1.value,
                        mmd_bound,
                        attributes,
                    };
                    cells
                        .entry((r_pos, arch.name().to_string(), task.clone()))
                        .or_insert_with(|| Cell {
                            representation: rep.name.clone(),
                            head: arch.name().into(),
                            task: task.clone(),
                            runs: Vec::new(),
                            summary: BTreeMap::new(),
                        })
                        .runs
                        .push(result);
                }
            }
            w1s.push(RepresentationW1 {
                representation: rep.name.clone(),
                run: rep.run.clone(),
                w1,
                attributes: attribute_w1
                    .into_iter()
                    .map(|(info, _, _, bound)| (info.name.clone(), bound))
                    .collect(),
            });
        }
    }
    let (dataset, tasks, groups) = report_meta.expect("at least one encoder (clap requires it)");
    let mut cells: Vec<Cell> = cells.into_values().collect();
    cells
        .iter_mut()
        .for_each(|c| c.summary = summary_of(&c.runs));
    // Task-major order: per task, representations in input order, heads in config order.
    let head_pos = |h: &str| archs.iter().position(|a| a.name() == h).unwrap_or(0);
    let rep_pos = |r: &str| order.iter().position(|o| o == r).unwrap_or(0);
    cells.sort_by_key(|c| {
        (
            tasks.iter().position(|t| *t == c.task).unwrap_or(0),
            head_pos(&c.head),
            rep_pos(&c.representation),
        )
    });
    Ok(TransferReport {
        dataset,
        split: opts.split,
        tasks,
        groups,
        encoders: opts.encoders.to_vec(),
        baselines: baselines.clone(),
        leaking_tasks: leaking,
        trained_tasks,
        cells,
        w1: w1s,
        config: cfg.clone(),
    })
}

/// The accuracy / DP-gap trade-off as an SVG: one panel per task and head, one cross per
/// representation (mean, with the 95% intervals as error bars, x: DP gap, y: accuracy).
pub fn render_plot(report: &TransferReport) -> String {
    let mut charts: Vec<Chart> = Vec::new();
    for cell in &report.cells {
        let title = format!("{}: accuracy vs DP gap ({})", cell.task, cell.head);
        if charts.last().is_none_or(|c| c.title != title) {
            charts.push(Chart {
                title,
                x_label: "DP gap (test)".into(),
                series: Vec::new(),
            });
        }
        let (Some(acc), Some(dp)) = (cell.summary.get("accuracy"), cell.summary.get("dp_gap"))
        else {
            continue;
        };
        let gap = (f64::NAN, f64::NAN);
        let points = vec![
            (dp.low(), acc.mean),
            (dp.high(), acc.mean),
            gap,
            (dp.mean, acc.low()),
            (dp.mean, acc.high()),
            gap,
            (dp.mean, acc.mean),
        ];
        charts
            .last_mut()
            .expect("pushed above")
            .series
            .push(Series {
                label: cell.representation.clone(),
                points,
            });
    }
    render(&charts)
}

/// With several sensitive attributes, one task's gaps and bounds between each attribute's groups:
/// a row per (representation, head, attribute), below the task's table of the cells.
fn render_attribute_bounds(out: &mut String, report: &TransferReport, task: &str, width: usize) {
    let cells: Vec<&Cell> = report.cells.iter().filter(|c| c.task == task).collect();
    let attributes: Vec<&str> = cells
        .first()
        .map(|c| {
            c.summary
                .keys()
                .filter_map(|k| k.strip_prefix("w1_bound:"))
                .collect()
        })
        .unwrap_or_default();
    if attributes.is_empty() {
        return;
    }
    let cols = [
        ("dp_gap", "DP gap"),
        ("score_gap", "score gap"),
        ("w1_bound", "L·W1 bound"),
        ("mmd_bound", "‖q̂‖·MMD"),
    ];
    let _ = write!(
        out,
        "  {:<22} {:<7} {:<10}",
        "per attribute", "head", "attribute"
    );
    for (_, title) in cols {
        let _ = write!(out, " {title:>width$}");
    }
    let _ = writeln!(out);
    for cell in cells {
        for a in &attributes {
            let _ = write!(
                out,
                "  {:<22} {:<7} {a:<10}",
                cell.representation, cell.head
            );
            for (key, _) in cols {
                let text = cell
                    .summary
                    .get(&format!("{key}:{a}"))
                    .map_or_else(|| "-".to_string(), |i| i.show(3));
                let _ = write!(out, " {text:>width$}");
            }
            let _ = writeln!(out);
        }
    }
}

/// The report as a text table (mean ± 95% CI over seeds).
pub fn render_table(report: &TransferReport) -> String {
    let mut out = String::new();
    let n = report.encoders.len();
    let _ = writeln!(
        out,
        "transfer to {} ({}), {} split, {} seed{}; mean{} ",
        report.dataset,
        report.tasks.join(", "),
        report.split.name(),
        n,
        if n == 1 { "" } else { "s" },
        if n > 1 { " ± 95% CI" } else { "" }
    );
    let mut cols: Vec<(String, String)> = [
        ("accuracy", "accuracy"),
        ("dp_gap", "DP gap"),
        ("eo_gap", "EO gap"),
        ("ks", "KS"),
        ("abpc", "ABPC"),
        ("score_gap", "score gap"),
        ("w1_bound", "L·W1 bound"),
        ("mmd_bound", "‖q̂‖·MMD"),
    ]
    .map(|(k, t)| (k.to_string(), t.to_string()))
    .to_vec();
    // Several sensitive attributes: the gaps above compare the cells; each attribute's DP gap
    // gets a column.
    if let Some(first) = report.cells.first() {
        for key in first.summary.keys() {
            if let Some(a) = key.strip_prefix("dp_gap:") {
                cols.push((key.clone(), format!("DP gap:{a}")));
            }
        }
    }
    let width = if n > 1 { 15 } else { 9 };
    let mut current = String::new();
    for (pos, cell) in report.cells.iter().enumerate() {
        if cell.task != current {
            current = cell.task.clone();
            let _ = writeln!(out, "\ntask {current}");
            let _ = write!(out, "  {:<22} {:<7}", "representation", "head");
            for (_, title) in &cols {
                let _ = write!(out, " {title:>width$}");
            }
            let _ = writeln!(out);
        }
        let _ = write!(out, "  {:<22} {:<7}", cell.representation, cell.head);
        for (key, _) in &cols {
            let text = cell
                .summary
                .get(key.as_str())
                .map_or_else(|| "-".to_string(), |i| i.show(3));
            let _ = write!(out, " {text:>width$}");
        }
        let _ = writeln!(out);
        let last_of_task = report
            .cells
            .get(pos + 1)
            .is_none_or(|c| c.task != cell.task);
        if last_of_task {
            render_attribute_bounds(&mut out, report, &cell.task, width);
        }
    }
    if !report.leaking_tasks.is_empty() {
        let _ = writeln!(
            out,
            "\nwarning: the labels of {} are encoder inputs (see data.held_out_tasks)",
            report.leaking_tasks.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_transfer_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/transfer");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = TransferConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!cfg.data.tasks.is_empty());
                n += 1;
            }
        }
        assert!(
            n >= 2,
            "found only {n} transfer configs in {}",
            dir.display()
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let dir = std::env::temp_dir().join(format!("fairrep-transfer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "[data]\ntasks = [\"a\"]\n").unwrap();
        let cfg = TransferConfig::load(&path, &["heads.kinds=[\"linear\"]".into()]).unwrap();
        assert_eq!(cfg.archs(), vec![HeadKind::Linear]);
        assert!(cfg.compare.raw);
        let e = TransferConfig::load(&path, &["heads.hidden=[0]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("heads.hidden"), "{e}");
        let e = TransferConfig::load(&path, &["fit.batch_size=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fit.batch_size"), "{e}");
        std::fs::write(&path, "[data]\ntasks = [\"a\", \"a\"]\n").unwrap();
        let e = TransferConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }
}
