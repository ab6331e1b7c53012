//! Model selection as in Donini et al. (2018): k-fold cross-validation over a grid of `C`
//! (and `gamma` for the RBF kernel); keep the configurations whose mean CV accuracy is at least
//! `ratio` (0.9) times the best mean CV accuracy, take the one with the smallest mean CV DEO
//! among them, and refit it on the whole training sample. The accuracy-only rule (the
//! unconstrained baselines) takes the best mean CV accuracy.
//!
//! Folds are seeded and stratified by (group, label): each cell's rows are shuffled with
//! `ChaCha8Rng::seed_from_u64(seed)` (one generator, cells in the order (a, 0), (a, 1),
//! (b, 0), (b, 1)) and dealt round-robin, each cell starting at the fold after the one where
//! the previous cell stopped, so fold sizes differ by at most one. Everything is deterministic
//! for a seed (the QP solver runs single-threaded by default).
//!
//! The linear FERM projection is refitted on each training fold (the authors fit it once on
//! the whole training set before the grid search, which lets the validation folds shape it).

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::FermError;
use crate::kernel::{BiasRule, Kernel, KernelModel, KernelSvmConfig, fit_kernel_svm};
use crate::linear::{LinearModel, check_c, fit_linear_svm, fit_logistic};
use crate::metrics;
use crate::projection::LinearFermProjection;
use crate::qp::SolverSettings;
use crate::sample::{Sample, cells};

/// The kernel family of a kernel estimator (`gamma` comes from the grid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KernelKind {
    /// `<x, y>`.
    Linear,
    /// `exp(-gamma |x - y|^2)`.
    Rbf,
}

/// What is fitted at each grid point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Estimator {
    /// Linear C-SVM (hinge) on the raw features.
    LinearSvm,
    /// Linear FERM: [`LinearFermProjection`], then a linear C-SVM.
    LinearFerm,
    /// L2 logistic regression on the raw features.
    Logistic,
    /// [`LinearFermProjection`], then L2 logistic regression.
    LogisticFerm,
    /// Kernel C-SVM (dual, no fairness constraint).
    KernelSvm(KernelKind),
    /// Kernel FERM (dual with the fairness equality).
    KernelFerm(KernelKind),
}

impl Estimator {
    fn uses_gamma(&self) -> bool {
        matches!(
            self,
            Estimator::KernelSvm(KernelKind::Rbf) | Estimator::KernelFerm(KernelKind::Rbf)
        )
    }
}

/// The hyper-parameter grid: every `C` (times every `gamma` for RBF estimators; `gamma` is
/// ignored otherwise).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    /// Values of `C` (each finite, > 0).
    pub c: Vec<f64>,
    /// Values of `gamma` (each finite, > 0) for RBF kernels.
    pub gamma: Vec<f64>,
}

/// One configuration of the grid.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridPoint {
    /// `C`.
    pub c: f64,
    /// `gamma` (RBF only).
    pub gamma: Option<f64>,
}

impl Grid {
    /// The configurations in order: `C` outer, `gamma` inner.
    pub fn points(&self, estimator: Estimator) -> Result<Vec<GridPoint>, FermError> {
        if self.c.is_empty() {
            return Err(FermError::EmptyGrid { what: "C" });
        }
        for &c in &self.c {
            check_c(c)?;
        }
        if !estimator.uses_gamma() {
            return Ok(self
                .c
                .iter()
                .map(|&c| GridPoint { c, gamma: None })
                .collect());
        }
        if self.gamma.is_empty() {
            return Err(FermError::EmptyGrid { what: "gamma" });
        }
        for &gamma in &self.gamma {
            Kernel::Rbf { gamma }.validate()?;
        }
        Ok(self
            .c
            .iter()
            .flat_map(|&c| {
                self.gamma
                    .iter()
                    .map(move |&g| GridPoint { c, gamma: Some(g) })
            })
            .collect())
    }
}

/// How the configuration is chosen from the CV means.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Criterion {
    /// The largest mean CV accuracy (first in grid order on ties).
    Accuracy,
    /// Among the configurations with mean CV accuracy `>= ratio * best`, the smallest mean CV
    /// DEO (ties: higher accuracy, then grid order). Donini et al. use `ratio = 0.9`.
    FairWithinAccuracy {
        /// The accuracy ratio in `(0, 1]`.
        ratio: f64,
    },
}

impl Criterion {
    /// The authors' rule: `FairWithinAccuracy { ratio: 0.9 }`.
    pub fn ferm() -> Self {
        Criterion::FairWithinAccuracy { ratio: 0.9 }
    }
}

/// How the rows are split into folds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Folds {
    /// `k` seeded folds stratified by (group, label) (see the module docs).
    Stratified {
        /// Number of folds (at least 2; default 5).
        k: usize,
        /// Seed.
        seed: u64,
    },
    /// A given fold id per row, in `0..k` with every fold non-empty.
    Given(Vec<usize>),
}

/// Settings of a selection run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelectionConfig {
    /// The folds.
    pub folds: Folds,
    /// The choice rule.
    pub criterion: Criterion,
    /// Bias rule of the kernel estimators.
    pub bias: BiasRule,
    /// Kernel estimators: largest training set solved directly (see [`KernelSvmConfig`]).
    pub max_rows: usize,
    /// Seed of the kernel estimators' subsample.
    pub subsample_seed: u64,
    /// QP solver settings.
    pub solver: SolverSettings,
}

impl SelectionConfig {
    /// Five stratified folds with `seed`, the given criterion, and default solver settings.
    pub fn new(criterion: Criterion, seed: u64) -> Self {
        Self {
            folds: Folds::Stratified { k: 5, seed },
            criterion,
            bias: BiasRule::default(),
            max_rows: 2000,
            subsample_seed: seed,
            solver: SolverSettings::default(),
        }
    }
}

/// A fitted estimator of any kind, applicable to new rows (serialisable).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FittedModel {
    /// A linear scorer, on the FERM projection when `projection` is set.
    Linear {
        /// The projection applied first (FERM estimators).
        projection: Option<LinearFermProjection>,
        /// The scorer on the (projected) features.
        model: LinearModel,
    },
    /// A kernel scorer.
    Kernel(KernelModel),
}

impl FittedModel {
    /// Decision values of `rows x cols` row-major features (`> 0` means positive).
    pub fn decision_function(
        &self,
        features: &[f64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f64>, FermError> {
        match self {
            FittedModel::Linear {
                projection: Some(p),
                model,
            } => {
                let z = p.apply(features, rows, cols)?;
                model.decision_function(&z, rows, p.output_dim())
            }
            FittedModel::Linear {
                projection: None,
                model,
            } => model.decision_function(features, rows, cols),
            FittedModel::Kernel(m) => m.decision_function(features, rows, cols),
        }
    }
}

/// Fits `estimator` at one grid point on a whole sample.
pub fn fit(
    estimator: Estimator,
    sample: &Sample,
    point: GridPoint,
    config: &SelectionConfig,
) -> Result<FittedModel, FermError> {
    let linear = |projected: bool, logistic: bool| -> Result<FittedModel, FermError> {
        let (projection, data) = if projected {
            let p = LinearFermProjection::fit(sample)?;
            let z = p.apply_sample(sample)?;
            (Some(p), z)
        } else {
            (None, sample.clone())
        };
        let model = if logistic {
            fit_logistic(&data, point.c)?.model
        } else {
            fit_linear_svm(&data, point.c, &config.solver)?.model
        };
        Ok(FittedModel::Linear { projection, model })
    };
    let kernel = |kind: KernelKind, fair: bool| -> Result<FittedModel, FermError> {
        let k = match kind {
            KernelKind::Linear => Kernel::Linear,
            KernelKind::Rbf => Kernel::Rbf {
                gamma: point.gamma.ok_or(FermError::EmptyGrid { what: "gamma" })?,
            },
        };
        let cfg = KernelSvmConfig {
            c: point.c,
            kernel: k,
            fair,
            bias: config.bias,
            max_rows: config.max_rows,
            seed: config.subsample_seed,
            solver: config.solver,
        };
        Ok(FittedModel::Kernel(fit_kernel_svm(sample, &cfg)?.model))
    };
    match estimator {
        Estimator::LinearSvm => linear(false, false),
        Estimator::LinearFerm => linear(true, false),
        Estimator::Logistic => linear(false, true),
        Estimator::LogisticFerm => linear(true, true),
        Estimator::KernelSvm(kind) => kernel(kind, false),
        Estimator::KernelFerm(kind) => kernel(kind, true),
    }
}

/// CV results of one grid point.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridPointReport {
    /// The configuration.
    pub point: GridPoint,
    /// Validation accuracy of each fold.
    pub fold_accuracy: Vec<f64>,
    /// Validation DEO of each fold.
    pub fold_deo: Vec<f64>,
    /// Mean of `fold_accuracy`.
    pub mean_accuracy: f64,
    /// Mean of `fold_deo`.
    pub mean_deo: f64,
    /// Seconds for this point's folds.
    pub seconds: f64,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelectionReport {
    /// The estimator.
    pub estimator: Estimator,
    /// The rule used.
    pub criterion: Criterion,
    /// The fold id of each row.
    pub fold_of_row: Vec<usize>,
    /// Every grid point, in grid order.
    pub points: Vec<GridPointReport>,
    /// Index of the chosen point in `points`.
    pub chosen: usize,
    /// The chosen configuration refitted on the whole sample.
    pub model: FittedModel,
    /// Seconds for the cross-validation.
    pub cv_seconds: f64,
    /// Seconds for the refit.
    pub refit_seconds: f64,
}

impl SelectionReport {
    /// The index the rule `criterion` picks from this report's CV table (no new CV): e.g. what
    /// the FERM rule would choose for a baseline selected by accuracy. An invalid ratio is
    /// clamped into `(0, 1]`.
    pub fn chosen_under(&self, criterion: Criterion) -> usize {
        let criterion = match criterion {
            Criterion::FairWithinAccuracy { ratio } if !(ratio > 0.0 && ratio <= 1.0) => {
                Criterion::FairWithinAccuracy {
                    ratio: if ratio > 1.0 { 1.0 } else { f64::MIN_POSITIVE },
                }
            }
            c => c,
        };
        choose(&self.points, criterion)
    }
}

/// The fold id of each row for a [`Folds`] spec, validated against the sample: at least two
/// folds, at least one row per fold, and at least one positive row of each group per fold
/// (so every validation DEO is defined).
pub fn assign_folds(sample: &Sample, folds: &Folds) -> Result<Vec<usize>, FermError> {
    sample.require_positives_in_both_groups()?;
    let n = sample.rows();
    let (fold_of_row, k) = match folds {
        Folds::Stratified { k, seed } => {
            let k = *k;
            if k < 2 {
                return Err(FermError::InvalidConfig {
                    key: "folds",
                    expected: "at least 2",
                    found: k.to_string(),
                });
            }
            if n < k {
                return Err(FermError::FewerRowsThanFolds { rows: n, folds: k });
            }
            let counts = sample.cell_counts();
            for g in 0..2u32 {
                let count = counts.get(g as usize, 1);
                if count < k {
                    return Err(FermError::PositivesFewerThanFolds {
                        group: g,
                        count,
                        folds: k,
                    });
                }
            }
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            let mut fold_of_row = vec![0; n];
            let mut next = 0;
            for mut cell in cells(sample.groups(), sample.signed_labels()) {
                cell.shuffle(&mut rng);
                for i in cell {
                    fold_of_row[i] = next;
                    next = (next + 1) % k;
                }
            }
            (fold_of_row, k)
        }
        Folds::Given(ids) => {
            if ids.len() != n {
                return Err(FermError::LengthMismatch {
                    what: "fold ids",
                    expected: n,
                    found: ids.len(),
                });
            }
            let k = ids.iter().max().map_or(0, |m| m + 1);
            if k < 2 {
                return Err(FermError::InvalidConfig {
                    key: "folds",
                    expected: "at least 2 distinct fold ids",
                    found: k.to_string(),
                });
            }
            (ids.clone(), k)
        }
    };
    for f in 0..k {
        let mut pos = [0usize; 2];
        let mut any = false;
        for i in 0..n {
            if fold_of_row[i] == f {
                any = true;
                if sample.signed_labels()[i] > 0.0 {
                    pos[sample.groups()[i] as usize] += 1;
                }
            }
        }
        if !any {
            return Err(FermError::InvalidFold {
                row: n,
                reason: format!("fold {f} of {k} has no row"),
            });
        }
        if let Some(g) = (0..2).find(|&g| pos[g] == 0) {
            return Err(FermError::InvalidFold {
                row: n,
                reason: format!(
                    "fold {f} has no positive example of group {g}, so its DEO is undefined"
                ),
            });
        }
    }
    Ok(fold_of_row)
}

/// Cross-validates `estimator` over `grid`, chooses a configuration by `config.criterion` and
/// refits it on the whole sample.
pub fn select(
    estimator: Estimator,
    sample: &Sample,
    grid: &Grid,
    config: &SelectionConfig,
) -> Result<SelectionReport, FermError> {
    let points = grid.points(estimator)?;
    if let Criterion::FairWithinAccuracy { ratio } = config.criterion
        && !(ratio > 0.0 && ratio <= 1.0)
    {
        return Err(FermError::InvalidConfig {
            key: "criterion.ratio",
            expected: "a value in (0, 1]",
            found: ratio.to_string(),
        });
    }
    config.solver.validate()?;
    sample.require_both_classes()?;
    let fold_of_row = assign_folds(sample, &config.folds)?;
    let k = fold_of_row.iter().max().map_or(0, |m| m + 1);
    let splits: Vec<(Sample, Sample)> = (0..k)
        .map(|f| {
            let train: Vec<usize> = (0..sample.rows())
                .filter(|&i| fold_of_row[i] != f)
                .collect();
            let valid: Vec<usize> = (0..sample.rows())
                .filter(|&i| fold_of_row[i] == f)
                .collect();
            (
                sample.subset_unchecked(&train),
                sample.subset_unchecked(&valid),
            )
        })
        .collect();
    let cv_start = Instant::now();
    let mut reports = Vec::with_capacity(points.len());
    for &point in &points {
        let start = Instant::now();
        let mut fold_accuracy = Vec::with_capacity(k);
        let mut fold_deo = Vec::with_capacity(k);
        for (train, valid) in &splits {
            let model = fit(estimator, train, point, config)?;
            let scores = model.decision_function(valid.features(), valid.rows(), valid.cols())?;
            let labels = valid.labels();
            fold_accuracy.push(metrics::accuracy(&scores, &labels)?);
            fold_deo.push(metrics::deo(&scores, &labels, valid.groups())?);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        reports.push(GridPointReport {
            point,
            mean_accuracy: mean(&fold_accuracy),
            mean_deo: mean(&fold_deo),
            fold_accuracy,
            fold_deo,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let cv_seconds = cv_start.elapsed().as_secs_f64();
    let chosen = choose(&reports, config.criterion);
    let refit_start = Instant::now();
    let model = fit(estimator, sample, points[chosen], config)?;
    Ok(SelectionReport {
        estimator,
        criterion: config.criterion,
        fold_of_row,
        points: reports,
        chosen,
        model,
        cv_seconds,
        refit_seconds: refit_start.elapsed().as_secs_f64(),
    })
}

/// The index chosen by `criterion` (reports is non-empty).
fn choose(reports: &[GridPointReport], criterion: Criterion) -> usize {
    let mut best = 0;
    for (i, r) in reports.iter().enumerate() {
        if r.mean_accuracy > reports[best].mean_accuracy {
            best = i;
        }
    }
    match criterion {
        Criterion::Accuracy => best,
        Criterion::FairWithinAccuracy { ratio } => {
            let floor = ratio * reports[best].mean_accuracy;
            let mut chosen = best;
            for (i, r) in reports.iter().enumerate() {
                if r.mean_accuracy < floor {
                    continue;
                }
                let c = &reports[chosen];
                if r.mean_deo < c.mean_deo
                    || (r.mean_deo == c.mean_deo && r.mean_accuracy > c.mean_accuracy)
                    || (r.mean_deo == c.mean_deo
                        && r.mean_accuracy == c.mean_accuracy
                        && i < chosen)
                {
                    chosen = i;
                }
            }
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(acc: f64, deo: f64) -> GridPointReport {
        GridPointReport {
            point: GridPoint {
                c: 1.0,
                gamma: None,
            },
            fold_accuracy: vec![acc],
            fold_deo: vec![deo],
            mean_accuracy: acc,
            mean_deo: deo,
            seconds: 0.0,
        }
    }

    #[test]
    fn choice_rules() {
        let r = [
            report(0.80, 0.20),
            report(0.85, 0.15),
            report(0.76, 0.01),
            report(0.77, 0.05),
        ];
        assert_eq!(choose(&r, Criterion::Accuracy), 1);
        // floor 0.9 * 0.85 = 0.765: point 2 (0.76) is out, point 3 (0.77, DEO 0.05) wins.
        assert_eq!(choose(&r, Criterion::ferm()), 3);
        // ratio 1: only the best accuracy qualifies.
        assert_eq!(choose(&r, Criterion::FairWithinAccuracy { ratio: 1.0 }), 1);
        // DEO ties: higher accuracy, then grid order.
        let r = [report(0.80, 0.1), report(0.82, 0.1), report(0.82, 0.1)];
        assert_eq!(choose(&r, Criterion::ferm()), 1);
    }
}
