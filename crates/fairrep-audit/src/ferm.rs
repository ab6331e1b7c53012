//! `fairrep ferm`: FERM (Donini et al., NeurIPS 2018) against the unconstrained SVM or
//! logistic regression on a dataset spec, with the authors' model selection, and the linear
//! FERM representation saved for `fairrep transfer` and `fairrep export`.
//!
//! Per seed the dataset is loaded (one binary task, two groups), the estimators of
//! `models.compare` are cross-validated on the training rows and refitted, and every one is
//! scored on the report split. The training rows are the train and validation splits
//! together when the report split is test (cross-validation replaces the validation split),
//! the train split alone when it is validation. Each comparison pairs an unconstrained
//! baseline, selected by mean CV accuracy, with its FERM counterpart, selected by the smallest
//! mean CV DEO among the configurations within `selection.ratio` of the best mean CV accuracy.
//!
//! A run directory per seed, `OUT/NAME-sSEED-TIMESTAMP/`, holds `config.toml` (the resolved
//! config), `ferm.json` ([`FermReport`]) and, when a linear FERM estimator ran,
//! `representation.json` ([`FermRepresentation`]: the projection with the data schema and
//! preprocessing), which the `representation` module opens like an encoder's run.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fairrep_data::fs::{self as fsutil, FsError};
use fairrep_data::spec::{SensitiveSpec, TaskKind};
use fairrep_data::{Dataset, Encoding, Preprocessing, Schema, Split, SplitFractions, SplitName};
use fairrep_data::{SyntheticConfig, matrix::Matrix};
use fairrep_ferm::{
    Criterion, Estimator, FairnessMetrics, FermError, FittedModel, Grid, KernelKind,
    LinearFermProjection, Sample, SelectionConfig, SelectionReport, stratified_subsample,
};
use fairrep_metrics::Interval;
use fairrep_train::config::{ConfigError, DataConfig, DataSection, SensitiveSetting, read_config};
use fairrep_train::data::{LoadError, load_dataset};
use fairrep_train::run_dir::create_named_run_dir;
use serde::{Deserialize, Serialize};
use tracing::info;

/// The report of one seed, in its run directory.
pub const REPORT_FILE: &str = "ferm.json";
/// The linear FERM representation, in the run directory.
pub const REPRESENTATION_FILE: &str = "representation.json";
/// The resolved config, in the run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// `[data]` of a FERM config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FermData {
    /// `"synthetic"`, a spec name (`"adult"`) or a path to a spec file. Default `"synthetic"`.
    pub dataset: String,
    /// Parameters of the synthetic generator (only with `dataset = "synthetic"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticConfig>,
    /// The binary task (required).
    pub task: String,
    /// Replaces the spec's `[sensitive]` table; it must define two groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<SensitiveSpec>,
    /// Tasks reserved for transfer: their defining columns leave the inputs (as in training).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_out_tasks: Vec<String>,
    /// Whether the sensitive attribute is an input feature. Default `false`.
    pub aware: bool,
    /// Fractions of a random split (default: the spec's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitFractions>,
    /// Seed of the random / validation split; default: the run's seed, so that seeds of a
    /// random split see different splits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
}

impl Default for FermData {
    fn default() -> Self {
        Self {
            dataset: fairrep_train::config::SYNTHETIC.into(),
            synthetic: None,
            task: String::new(),
            sensitive: None,
            held_out_tasks: Vec::new(),
            aware: false,
            split: None,
            split_seed: None,
        }
    }
}

impl FermData {
    /// The validated data config of one seed (`source` names the file in errors).
    pub fn data_config(&self, seed: u64, source: &Path) -> Result<DataConfig, ConfigError> {
        let mut section = DataSection {
            dataset: self.dataset.clone(),
            synthetic: self.synthetic.clone(),
            sensitive: self.sensitive.clone().map(SensitiveSetting::One),
            tasks: Some(vec![self.task.clone()]),
            held_out_tasks: self.held_out_tasks.clone(),
            aware: self.aware,
            split: self.split,
            split_seed: self.split_seed.unwrap_or(seed),
            ..DataSection::default()
        };
        section.validated(source)
    }
}

/// One comparison: an unconstrained baseline and its FERM counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Linear SVM (hinge) vs linear FERM (the projection, then a linear SVM).
    Linear,
    /// L2 logistic regression vs the projection, then logistic regression.
    Logistic,
    /// RBF-kernel SVM vs kernel FERM with the RBF kernel.
    Rbf,
    /// Linear-kernel SVM (dual) vs kernel FERM with the linear kernel.
    LinearKernel,
}

impl Comparison {
    /// The (baseline, FERM) estimators.
    pub fn estimators(self) -> [Estimator; 2] {
        match self {
            Comparison::Linear => [Estimator::LinearSvm, Estimator::LinearFerm],
            Comparison::Logistic => [Estimator::Logistic, Estimator::LogisticFerm],
            Comparison::Rbf => [
                Estimator::KernelSvm(KernelKind::Rbf),
                Estimator::KernelFerm(KernelKind::Rbf),
            ],
            Comparison::LinearKernel => [
                Estimator::KernelSvm(KernelKind::Linear),
                Estimator::KernelFerm(KernelKind::Linear),
            ],
        }
    }

    /// Whether the estimators are kernel machines (grid `kernel_c`, sample `kernel`).
    pub fn is_kernel(self) -> bool {
        matches!(self, Comparison::Rbf | Comparison::LinearKernel)
    }
}

/// A short name of an estimator.
pub fn estimator_name(e: Estimator) -> &'static str {
    match e {
        Estimator::LinearSvm => "linear SVM",
        Estimator::LinearFerm => "linear FERM",
        Estimator::Logistic => "logistic",
        Estimator::LogisticFerm => "logistic FERM",
        Estimator::KernelSvm(KernelKind::Rbf) => "RBF SVM",
        Estimator::KernelFerm(KernelKind::Rbf) => "kernel FERM (RBF)",
        Estimator::KernelSvm(KernelKind::Linear) => "linear-kernel SVM",
        Estimator::KernelFerm(KernelKind::Linear) => "kernel FERM (linear)",
    }
}

/// `[models]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSection {
    /// The comparisons run, in order. Default `["linear"]`.
    pub compare: Vec<Comparison>,
}

impl Default for ModelsSection {
    fn default() -> Self {
        Self {
            compare: vec![Comparison::Linear],
        }
    }
}

/// `[grid]`: the hyper-parameters cross-validated (defaults: the authors' grids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridSection {
    /// `C` of the linear and logistic estimators. Default `[0.01, 0.1, 1]`.
    pub c: Vec<f64>,
    /// `C` of the kernel estimators. Default `[0.1, 1, 10]`.
    pub kernel_c: Vec<f64>,
    /// `gamma` of the RBF kernel. Default `[0.1, 0.01]`.
    pub gamma: Vec<f64>,
}

impl Default for GridSection {
    fn default() -> Self {
        Self {
            c: vec![0.01, 0.1, 1.0],
            kernel_c: vec![0.1, 1.0, 10.0],
            gamma: vec![0.1, 0.01],
        }
    }
}

/// `[selection]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionSection {
    /// Cross-validation folds (stratified by group and label). Default `5`.
    pub folds: usize,
    /// FERM estimators: the configurations with mean CV accuracy `>= ratio * best` are
    /// eligible, the smallest mean CV DEO among them wins. Default `0.9` (the authors').
    pub ratio: f64,
}

impl Default for SelectionSection {
    fn default() -> Self {
        Self {
            folds: 5,
            ratio: 0.9,
        }
    }
}

/// `[sample]`: how many training rows each kind of estimator uses (a seeded subsample
/// stratified by group and label).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// Fraction of the training rows for the linear and logistic estimators. Default `1`.
    pub linear: f64,
    /// Fraction of the training rows for the kernel estimators. Default `1`.
    pub kernel: f64,
    /// Kernel estimators: largest training set (of a fold or of the refit) solved directly;
    /// above it a seeded stratified subsample of this size is solved. Default `2000`.
    pub kernel_max_rows: usize,
}

impl Default for SampleSection {
    fn default() -> Self {
        Self {
            linear: 1.0,
            kernel: 1.0,
            kernel_max_rows: 2000,
        }
    }
}

/// `[run]` of a FERM config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FermRunSection {
    /// Seeds: each gives a run directory (folds, subsamples and, unless `data.split_seed` is
    /// set, the split); several are summarised as mean and 95% interval. Default `[0]`.
    pub seeds: Vec<u64>,
    /// Where the run directories go. Default `"runs"`.
    pub out_dir: PathBuf,
    /// Run name (default: the config file's stem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The split the models are scored on: `"test"` (to report) or `"valid"` (to choose).
    /// Default `"test"`.
    pub split: SplitName,
}

impl Default for FermRunSection {
    fn default() -> Self {
        Self {
            seeds: vec![0],
            out_dir: PathBuf::from("runs"),
            name: None,
            split: SplitName::Test,
        }
    }
}

/// A `fairrep ferm` config file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FermConfig {
    /// `[data]`.
    pub data: FermData,
    /// `[models]`.
    pub models: ModelsSection,
    /// `[grid]`.
    pub grid: GridSection,
    /// `[selection]`.
    pub selection: SelectionSection,
    /// `[sample]`.
    pub sample: SampleSection,
    /// `[run]`.
    pub run: FermRunSection,
}

fn check_grid(values: &[f64], key: &str, path: &Path) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    };
    if values.is_empty() {
        return Err(invalid(
            "the grid is empty: expected at least one value".into(),
        ));
    }
    if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(invalid(format!(
            "every value must be finite and > 0, found {v}"
        )));
    }
    Ok(())
}

impl FermConfig {
    /// Reads, overrides and validates a FERM config.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let cfg: Self = read_config(path, overrides)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks every range; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        };
        if self.data.task.trim().is_empty() {
            return Err(invalid(
                "data.task",
                "must name the binary task to fit".into(),
            ));
        }
        let seed = self.run.seeds.first().copied().unwrap_or(0);
        self.data.data_config(seed, path)?;
        if self.models.compare.is_empty() {
            return Err(invalid(
                "models.compare",
                "must name at least one of \"linear\", \"logistic\", \"rbf\", \
                 \"linear_kernel\""
                    .into(),
            ));
        }
        let linear = self.models.compare.iter().any(|c| !c.is_kernel());
        let kernel = self.models.compare.iter().any(|c| c.is_kernel());
        if linear {
            check_grid(&self.grid.c, "grid.c", path)?;
        }
        if kernel {
            check_grid(&self.grid.kernel_c, "grid.kernel_c", path)?;
        }
        if self.models.compare.contains(&Comparison::Rbf) {
            check_grid(&self.grid.gamma, "grid.gamma", path)?;
        }
        if self.selection.folds < 2 {
            return Err(invalid(
                "selection.folds",
                format!("must be at least 2, found {}", self.selection.folds),
            ));
        }
        let r = self.selection.ratio;
        if !(r > 0.0 && r <= 1.0) {
            return Err(invalid(
                "selection.ratio",
                format!("must be in (0, 1], found {r}"),
            ));
        }
        for (key, f) in [
            ("sample.linear", self.sample.linear),
            ("sample.kernel", self.sample.kernel),
        ] {
            if !(f > 0.0 && f <= 1.0) {
                return Err(invalid(key, format!("must be in (0, 1], found {f}")));
            }
        }
        if self.sample.kernel_max_rows < 2 {
            return Err(invalid(
                "sample.kernel_max_rows",
                format!("must be at least 2, found {}", self.sample.kernel_max_rows),
            ));
        }
        if self.run.seeds.is_empty() {
            return Err(invalid("run.seeds", "must hold at least one seed".into()));
        }
        if let Some(s) = self
            .run
            .seeds
            .iter()
            .enumerate()
            .find(|(i, s)| self.run.seeds[..*i].contains(s))
        {
            return Err(invalid(
                "run.seeds",
                format!("seed {} is listed twice", s.1),
            ));
        }
        if self.run.split == SplitName::Train {
            return Err(invalid(
                "run.split",
                "must be \"test\" (to report) or \"valid\" (to choose), found \"train\"".into(),
            ));
        }
        if let Some(name) = &self.run.name {
            let plain = fairrep_data::fs::is_plain_file_name(name);
            if !plain {
                return Err(invalid(
                    "run.name",
                    format!(
                        "must be a plain name (no path separator, not starting with `.`), \
                         found {name:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a FERM config serialises to TOML")
    }
}

/// Why `fairrep ferm` failed.
#[derive(Debug, thiserror::Error)]
pub enum FermCmdError {
    /// The config does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data cannot be loaded.
    #[error(transparent)]
    Data(#[from] LoadError),
    /// The task is not binary.
    #[error(
        "dataset `{dataset}`: data.task `{task}` is a regression task; FERM needs a binary task"
    )]
    NotBinary {
        /// The dataset.
        dataset: String,
        /// The task.
        task: String,
    },
    /// Not two groups.
    #[error(
        "dataset `{dataset}`: FERM needs exactly two groups, found {} ({}); set data.sensitive \
         to a two-group split",
        groups.len(),
        groups.join(", ")
    )]
    Groups {
        /// The dataset.
        dataset: String,
        /// The groups found.
        groups: Vec<String>,
    },
    /// A FERM computation failed.
    #[error("{what} (groups: {groups}): {source}")]
    Ferm {
        /// What was being done.
        what: String,
        /// The group ids and names, `0 = NAME, 1 = NAME`.
        groups: String,
        /// Why.
        #[source]
        source: Box<FermError>,
    },
    /// A file cannot be written.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// One estimator of one seed: its selection (every grid point's CV table, the chosen point,
/// the refitted model, times) and its metrics on the report split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorResult {
    /// Short name (`"linear FERM"`).
    pub name: String,
    /// The comparison it belongs to.
    pub comparison: Comparison,
    /// Training rows it used (after `[sample]`).
    pub train_rows: usize,
    /// The selection.
    pub selection: SelectionReport,
    /// Metrics on the report split (threshold 0 on the decision value).
    pub metrics: FairnessMetrics,
    /// Seconds for the cross-validation and the refit.
    pub fit_seconds: f64,
    /// Seconds to score the report split.
    pub predict_seconds: f64,
}

/// `ferm.json`: one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FermReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The seed.
    pub seed: u64,
    /// The dataset.
    pub dataset: String,
    /// The task.
    pub task: String,
    /// The two group names (group 0 = a, group 1 = b).
    pub groups: Vec<String>,
    /// The split scored.
    pub split: SplitName,
    /// Training rows available (before `[sample]`).
    pub train_rows: usize,
    /// Rows scored.
    pub scored_rows: usize,
    /// Input features.
    pub features: usize,
    /// One entry per estimator, baseline then FERM for each comparison.
    pub results: Vec<EstimatorResult>,
    /// The resolved config.
    pub config: FermConfig,
}

/// `representation.json`: the linear FERM representation of a run, reusable like an encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FermRepresentation {
    /// The data section, with the split seed resolved.
    pub data: FermData,
    /// The data schema the projection reads.
    pub schema: Schema,
    /// The preprocessing of the inputs.
    pub preprocessing: Preprocessing,
    /// The projection `R^d -> R^(d-1)`.
    pub projection: LinearFermProjection,
    /// Rows it was fitted on.
    pub fitted_rows: usize,
}

/// One row of the summary over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The estimator's name.
    pub name: String,
    /// `accuracy`, `deo`, `dp_gap`, `eo_gap`, `fit_seconds` -> mean and 95% interval.
    pub metrics: BTreeMap<String, Interval>,
    /// The chosen `C` of each seed.
    pub chosen_c: Vec<f64>,
    /// The chosen `gamma` of each seed (RBF).
    pub chosen_gamma: Vec<Option<f64>>,
}

/// What `fairrep ferm` returns: each seed's report and the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FermOutcome {
    /// The run directories, one per seed.
    pub runs: Vec<PathBuf>,
    /// One report per seed.
    pub reports: Vec<FermReport>,
    /// Mean and 95% interval over the seeds, per estimator.
    pub summary: Vec<SummaryRow>,
}

/// A split as a FERM sample (features in f64).
fn sample_of(split: &Split, what: &str, groups: &str) -> Result<Sample, FermCmdError> {
    let x: Vec<f64> = split.x.values.iter().map(|&v| f64::from(v)).collect();
    Sample::new(
        &x,
        split.x.rows,
        split.x.cols,
        &split.targets[0],
        &split.groups,
    )
    .map_err(|source| FermCmdError::Ferm {
        what: format!("the {what} rows"),
        groups: groups.to_string(),
        source: Box::new(source),
    })
}

/// The training rows: train and validation together when scoring test, train alone else.
fn training_split(ds: &Dataset, scored: SplitName) -> Split {
    if scored == SplitName::Valid {
        return ds.train.clone();
    }
    let mut values = ds.train.x.values.clone();
    values.extend_from_slice(&ds.valid.x.values);
    let mut groups = ds.train.groups.clone();
    groups.extend_from_slice(&ds.valid.groups);
    let targets = ds
        .train
        .targets
        .iter()
        .zip(&ds.valid.targets)
        .map(|(a, b)| a.iter().chain(b).copied().collect())
        .collect();
    Split {
        x: Matrix::new(values, ds.train.len() + ds.valid.len(), ds.train.x.cols),
        groups,
        targets,
        attributes: ds
            .train
            .attributes
            .iter()
            .zip(&ds.valid.attributes)
            .map(|(a, b)| a.iter().chain(b).copied().collect())
            .collect(),
    }
}

/// `round(fraction * n)` rows (at least 2) of `sample`, seeded and stratified.
fn subsample(sample: &Sample, fraction: f64, seed: u64) -> Result<Sample, FermError> {
    if fraction >= 1.0 {
        return Ok(sample.clone());
    }
    let m = ((fraction * sample.rows() as f64).round() as usize).max(2);
    sample.subset(&stratified_subsample(sample, m, seed))
}

/// Runs every seed of `cfg` (read from `source`), writes the run directories and returns the
/// reports (the caller prints).
pub fn run_ferm(
    cfg: &FermConfig,
    source: &Path,
    data_dir: Option<&Path>,
) -> Result<FermOutcome, FermCmdError> {
    cfg.validate(source)?;
    let name = cfg.run.name.clone().unwrap_or_else(|| {
        source
            .file_stem()
            .map_or_else(|| "ferm".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut reports = Vec::new();
    let mut runs = Vec::new();
    for &seed in &cfg.run.seeds {
        let report = run_seed(cfg, source, data_dir, &name, seed)?;
        runs.push(report.run_dir.clone());
        reports.push(report);
    }
    let summary = summarise(&reports);
    Ok(FermOutcome {
        runs,
        reports,
        summary,
    })
}

fn run_seed(
    cfg: &FermConfig,
    source: &Path,
    data_dir: Option<&Path>,
    name: &str,
    seed: u64,
) -> Result<FermReport, FermCmdError> {
    let data_cfg = cfg.data.data_config(seed, source)?;
    let ds = load_dataset(&data_cfg, data_dir, Encoding::Fit)?;
    let task = &ds.schema.tasks[0];
    if task.kind != TaskKind::Binary {
        return Err(FermCmdError::NotBinary {
            dataset: ds.name.clone(),
            task: task.name.clone(),
        });
    }
    let groups: String = match ds.schema.groups.as_slice() {
        [a, b] => format!("0 = {a}, 1 = {b}"),
        other => {
            return Err(FermCmdError::Groups {
                dataset: ds.name.clone(),
                groups: other.to_vec(),
            });
        }
    };
    let scored = cfg.run.split;
    let train_split = training_split(&ds, scored);
    let train = sample_of(&train_split, "training", &groups)?;
    let test = sample_of(ds.split(scored), scored.name(), &groups)?;
    let ferm_err = |what: String| {
        let groups = groups.clone();
        move |source| FermCmdError::Ferm {
            what,
            groups,
            source: Box::new(source),
        }
    };
    let mut results = Vec::new();
    let mut projection: Option<(LinearFermProjection, usize)> = None;
    for &comparison in &cfg.models.compare {
        let (fraction, grid) = if comparison.is_kernel() {
            (
                cfg.sample.kernel,
                Grid {
                    c: cfg.grid.kernel_c.clone(),
                    gamma: cfg.grid.gamma.clone(),
                },
            )
        } else {
            (
                cfg.sample.linear,
                Grid {
                    c: cfg.grid.c.clone(),
                    gamma: Vec::new(),
                },
            )
        };
        let rows = subsample(&train, fraction, seed).map_err(ferm_err(format!(
            "subsampling the training rows ({fraction})"
        )))?;
        for (k, estimator) in comparison.estimators().into_iter().enumerate() {
            let est_name = estimator_name(estimator);
            let criterion = if k == 0 {
                Criterion::Accuracy
            } else {
                Criterion::FairWithinAccuracy {
                    ratio: cfg.selection.ratio,
                }
            };
            let mut sel = SelectionConfig::new(criterion, seed);
            sel.folds = fairrep_ferm::Folds::Stratified {
                k: cfg.selection.folds,
                seed,
            };
            sel.max_rows = cfg.sample.kernel_max_rows;
            info!(
                "seed {seed}: {est_name}: {}-fold CV on {} rows",
                cfg.selection.folds,
                rows.rows()
            );
            let start = Instant::now();
            let selection = fairrep_ferm::select(estimator, &rows, &grid, &sel)
                .map_err(ferm_err(format!("{est_name} on the training rows")))?;
            let fit_seconds = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let scores = selection
                .model
                .decision_function(test.features(), test.rows(), test.cols())
                .map_err(ferm_err(format!(
                    "{est_name} on the {} rows",
                    scored.name()
                )))?;
            let metrics =
                fairrep_ferm::metrics::evaluate(&scores, &test.labels(), test.groups()).map_err(
                    ferm_err(format!("{est_name}: metrics on the {} rows", scored.name())),
                )?;
            let predict_seconds = start.elapsed().as_secs_f64();
            info!(
                "seed {seed}: {est_name}: accuracy {:.4}, DEO {:.4} ({fit_seconds:.1} s)",
                metrics.accuracy, metrics.deo
            );
            if let FittedModel::Linear {
                projection: Some(p),
                ..
            } = &selection.model
                && projection.is_none()
            {
                projection = Some((p.clone(), rows.rows()));
            }
            results.push(EstimatorResult {
                name: est_name.into(),
                comparison,
                train_rows: rows.rows(),
                selection,
                metrics,
                fit_seconds,
                predict_seconds,
            });
        }
    }
    let run_dir = create_named_run_dir(&cfg.run.out_dir, name, seed)?;
    let mut resolved = cfg.clone();
    resolved.run.seeds = vec![seed];
    resolved.data.split_seed = Some(data_cfg.split_seed);
    fsutil::write_atomic(&run_dir.join(CONFIG_FILE), resolved.to_toml().as_bytes())?;
    if let Some((projection, fitted_rows)) = projection {
        let rep = FermRepresentation {
            data: resolved.data.clone(),
            schema: ds.schema.clone(),
            preprocessing: ds.preprocessing.clone(),
            projection,
            fitted_rows,
        };
        let json = serde_json::to_string_pretty(&rep).expect("the representation serialises");
        fsutil::write_atomic(
            &run_dir.join(REPRESENTATION_FILE),
            format!("{json}\n").as_bytes(),
        )?;
    }
    let report = FermReport {
        run_dir: run_dir.clone(),
        seed,
        dataset: ds.name.clone(),
        task: task.name.clone(),
        groups: ds.schema.groups.clone(),
        split: scored,
        train_rows: train.rows(),
        scored_rows: test.rows(),
        features: train.cols(),
        results,
        config: resolved,
    };
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    fsutil::write_atomic(&run_dir.join(REPORT_FILE), format!("{json}\n").as_bytes())?;
    Ok(report)
}

fn summarise(reports: &[FermReport]) -> Vec<SummaryRow> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    (0..first.results.len())
        .map(|i| {
            let all: Vec<&EstimatorResult> = reports.iter().map(|r| &r.results[i]).collect();
            let mut metrics = BTreeMap::new();
            let mut put = |key: &str, f: &dyn Fn(&EstimatorResult) -> f64| {
                let v: Vec<f64> = all.iter().map(|r| f(r)).collect();
                metrics.insert(key.to_string(), Interval::of(&v));
            };
            put("accuracy", &|r| r.metrics.accuracy);
            put("deo", &|r| r.metrics.deo);
            put("dp_gap", &|r| r.metrics.dp_gap);
            put("eo_gap", &|r| r.metrics.eo_gap);
            put("fit_seconds", &|r| r.fit_seconds);
            let point = |r: &EstimatorResult| r.selection.points[r.selection.chosen].point;
            SummaryRow {
                name: first.results[i].name.clone(),
                metrics,
                chosen_c: all.iter().map(|r| point(r).c).collect(),
                chosen_gamma: all.iter().map(|r| point(r).gamma).collect(),
            }
        })
        .collect()
}

fn rule(c: Criterion) -> String {
    match c {
        Criterion::Accuracy => "accuracy".into(),
        Criterion::FairWithinAccuracy { ratio } => format!("min DEO, acc >= {ratio}·best"),
    }
}

/// The outcome as a text table: per estimator, the selection rule, training rows, chosen
/// point, and the report split's accuracy, DEO, DP gap and EO gap (mean ± 95% CI over seeds).
pub fn render_table(outcome: &FermOutcome) -> String {
    let mut out = String::new();
    let Some(first) = outcome.reports.first() else {
        return out;
    };
    let n = outcome.reports.len();
    let _ = writeln!(
        out,
        "FERM on {} (task {}, groups {} / {}), {} split ({} rows), {} seed{}{}",
        first.dataset,
        first.task,
        first.groups[0],
        first.groups[1],
        first.split.name(),
        first.scored_rows,
        n,
        if n == 1 { "" } else { "s" },
        if n > 1 { "; mean ± 95% CI" } else { "" }
    );
    let width = if n > 1 { 15 } else { 7 };
    let _ = write!(
        out,
        "  {:<21} {:<24} {:>6} {:>7} {:>6}",
        "model", "selection", "rows", "C", "gamma"
    );
    for title in ["accuracy", "DEO", "DP gap", "EO gap", "seconds"] {
        let _ = write!(out, " {title:>width$}");
    }
    let _ = writeln!(out);
    for (i, row) in outcome.summary.iter().enumerate() {
        let r = &first.results[i];
        let (c, gamma) = if n == 1 {
            (
                row.chosen_c[0].to_string(),
                row.chosen_gamma[0].map_or_else(|| "-".into(), |g| g.to_string()),
            )
        } else {
            ("*".into(), "*".into())
        };
        let _ = write!(
            out,
            "  {:<21} {:<24} {:>6} {:>7} {:>6}",
            row.name,
            rule(r.selection.criterion),
            r.train_rows,
            c,
            gamma
        );
        for key in ["accuracy", "deo", "dp_gap", "eo_gap"] {
            let text = row.metrics.get(key).map_or("-".into(), |i| i.show(3));
            let _ = write!(out, " {text:>width$}");
        }
        let secs = row
            .metrics
            .get("fit_seconds")
            .map_or("-".into(), |i| i.show(1));
        let _ = writeln!(out, " {secs:>width$}");
    }
    if n > 1 {
        let _ = writeln!(
            out,
            "  (*: the chosen C and gamma of each seed are in the summary and each ferm.json)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_ferm_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ferm");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                FermConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no FERM config in {}", dir.display());
    }

    #[test]
    fn defaults_overrides_and_ranges() {
        let dir = std::env::temp_dir().join(format!("fairrep-ferm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.toml");
        std::fs::write(&path, "[data]\ntask = \"task0\"\n").unwrap();
        let cfg = FermConfig::load(&path, &[]).unwrap();
        assert_eq!(cfg.models.compare, vec![Comparison::Linear]);
        assert_eq!(cfg.grid.c, vec![0.01, 0.1, 1.0]);
        assert_eq!(cfg.selection.ratio, 0.9);
        assert_eq!(cfg.run.split, SplitName::Test);
        // The split seed follows the run's seed unless set.
        assert_eq!(cfg.data.data_config(7, &path).unwrap().split_seed, 7);
        let cfg = FermConfig::load(&path, &["data.split_seed=3".into()]).unwrap();
        assert_eq!(cfg.data.data_config(7, &path).unwrap().split_seed, 3);
        // A kernel grid is only checked when a kernel comparison runs.
        assert!(FermConfig::load(&path, &["grid.kernel_c=[]".into()]).is_ok());
        for (set, needle) in [
            ("models.compare=[\"rbf\"]", ""),
            ("grid.c=[-1.0]", "grid.c"),
            ("selection.folds=1", "selection.folds"),
            ("selection.ratio=0.0", "selection.ratio"),
            ("sample.kernel=1.5", "sample.kernel"),
            ("sample.kernel_max_rows=1", "sample.kernel_max_rows"),
            ("run.seeds=[]", "run.seeds"),
            ("run.seeds=[1, 1]", "listed twice"),
            ("run.split=\"train\"", "run.split"),
            ("run.name=\"a/b\"", "run.name"),
            ("data.task=\"\"", "data.task"),
        ] {
            let r = FermConfig::load(&path, &[set.into()]);
            if needle.is_empty() {
                assert!(r.is_ok(), "{set}: {r:?}");
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains(needle), "{set}: {e}");
            }
        }
        let e = FermConfig::load(
            &path,
            &["models.compare=[\"rbf\"]".into(), "grid.gamma=[]".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("grid.gamma") && e.contains("empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn training_rows_are_train_and_valid_when_scoring_test() {
        let ds = fairrep_data::synthetic(
            &SyntheticConfig {
                n_train: 30,
                n_valid: 10,
                n_test: 10,
                ..SyntheticConfig::default()
            },
            0,
        );
        let t = training_split(&ds, SplitName::Test);
        assert_eq!(t.len(), 40);
        assert_eq!(t.x.row(35), ds.valid.x.row(5));
        assert_eq!(t.targets[0][35], ds.valid.targets[0][5]);
        assert_eq!(t.groups[35], ds.valid.groups[5]);
        assert_eq!(training_split(&ds, SplitName::Valid), ds.train);
    }
}
