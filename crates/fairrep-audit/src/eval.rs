//! `fairrep eval`: audit trained runs on their own tasks and their representation.
//!
//! Per run (its best checkpoint, its data encoded with its saved preprocessing), on the chosen
//! split: every score metric of every trained task, and representation leakage:
//! - AUC of a logistic and of an MLP probe predicting the group from `z`, trained on the
//!   validation split (on the train split when the chosen split is validation) and scored on
//!   the chosen split (with more than two groups: one probe per group against the rest, the
//!   largest AUC);
//! - MMD² and the Sinkhorn divergence between the groups' `z` (the training penalty's form),
//!   on `z` divided by its overall scale (so encoders of different scales compare), with
//!   permutation-test p-values.
//!
//! Several runs (seeds) are summarised as mean and 95% confidence interval.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairrep_data::spec::TaskKind;
use fairrep_data::{Dataset, Matrix, SplitName};
use fairrep_metrics::Interval;
use fairrep_metrics::fairness::{self as metrics, MetricError};
use fairrep_model::HeadKind;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::probe::{FitError, FitSettings, fit_head};
use crate::stats::{self, GroupDivergence, ScoreMetrics, StatsError, TestDivergence, TestSettings};
use crate::trained::{TrainedError, TrainedRun};

/// Options of [`evaluate_runs`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The split audited (`valid` or `test`).
    pub split: SplitName,
    /// Relabellings of the MMD test (0: no p-value).
    pub permutations: usize,
    /// Relabellings of the Sinkhorn test (0: no p-value).
    pub sinkhorn_permutations: usize,
    /// Rows of the divergences' stratified subsample.
    pub max_points: usize,
    /// Blur of the Sinkhorn divergence, as a fraction of the median pairwise distance.
    pub blur: f64,
    /// Seed of the subsamples, permutations and probes.
    pub seed: u64,
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalCmdError {
    /// A run cannot be opened.
    #[error(transparent)]
    Trained(#[from] TrainedError),
    /// A metric is undefined.
    #[error("run `{}`, task `{task}`: {source}", run.display())]
    Metric {
        /// The run.
        run: PathBuf,
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: MetricError,
    },
    /// A probe cannot be fitted.
    #[error("run `{}`, {probe} probe: {source}", run.display())]
    Probe {
        /// The run.
        run: PathBuf,
        /// `linear` or `mlp`.
        probe: String,
        /// Why.
        #[source]
        source: FitError,
    },
    /// A divergence test failed.
    #[error("run `{}`: {source}", run.display())]
    Stats {
        /// The run.
        run: PathBuf,
        /// Why.
        #[source]
        source: Box<StatsError>,
    },
    /// Runs of different tasks.
    #[error(
        "the runs do not share their tasks (`{}`: {first:?}, `{}`: {other:?}); evaluate them \
         separately",
        first_run.display(),
        other_run.display()
    )]
    Tasks {
        /// The first run.
        first_run: PathBuf,
        /// Its tasks.
        first: Vec<String>,
        /// The other run.
        other_run: PathBuf,
        /// Its tasks.
        other: Vec<String>,
    },
}

/// A task's metrics (binary tasks; regression tasks report MSE and KS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskMetrics {
    /// A binary task's score metrics.
    Binary(ScoreMetrics),
    /// A regression task.
    Regression {
        /// Mean squared error.
        mse: f64,
        /// KS distance between the groups' predictions.
        ks: f64,
    },
}

/// A probe's AUC for predicting the group from `z`, or why it is undefined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeAuc {
    /// The AUC (0.5: no leakage); absent when undefined.
    pub auc: Option<f64>,
    /// Why the AUC is undefined.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub undefined: Option<String>,
}

/// Leakage of the group from `z`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leakage {
    /// The logistic probe.
    pub logistic_auc: ProbeAuc,
    /// The MLP probe.
    pub mlp_auc: ProbeAuc,
    /// MMD² between the groups, with its permutation test.
    pub mmd2: GroupDivergence,
    /// The Sinkhorn divergence between the groups, with its permutation test.
    pub sinkhorn: GroupDivergence,
    /// The overall scale `z` was divided by before the divergences.
    pub z_scale: f64,
}

/// One run's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEval {
    /// The run directory.
    pub run: PathBuf,
    /// The checkpoint evaluated.
    pub checkpoint: PathBuf,
    /// The run seed.
    pub seed: u64,
    /// Per-task metrics; with several sensitive attributes, their group metrics compare the
    /// intersection cells.
    pub tasks: BTreeMap<String, TaskMetrics>,
    /// With several sensitive attributes: per attribute name, the per-task metrics between
    /// that attribute's groups (absent with one attribute).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, BTreeMap<String, TaskMetrics>>,
    /// Leakage of the group (the cell, with several attributes) from `z`.
    pub leakage: Leakage,
}

/// What `fairrep eval` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The split audited.
    pub split: SplitName,
    /// The dataset.
    pub dataset: String,
    /// The group names.
    pub groups: Vec<String>,
    /// One evaluation per run.
    pub runs: Vec<RunEval>,
    /// `metric -> mean and 95% CI over the runs`; task metrics as `TASK.metric` (with several
    /// sensitive attributes the intersectional ones, and each attribute's as
    /// `TASK.metric:ATTRIBUTE`), leakage as `leakage.metric`.
    pub summary: BTreeMap<String, Interval>,
}

/// The AUC of a probe predicting the group from `z` (one group against the rest, the largest
/// over groups when there are more than two); undefined when the scored rows hold one group.
fn auc_of_probe(
    arch: &HeadKind,
    fit_on: (&Matrix<f32>, &[u32]),
    score_on: (&Matrix<f32>, &[u32]),
    n_groups: usize,
    seed: u64,
    device: &Device,
) -> Result<ProbeAuc, FitError> {
    // Probes are selected on their own training rows' split (no third split is spared).
    let targets = |groups: &[u32], g: u32| -> Vec<f32> {
        groups
            .iter()
            .map(|&x| f32::from(u8::from(x == g)))
            .collect()
    };
    let classes: Vec<u32> = if n_groups == 2 {
        vec![1]
    } else {
        (0..n_groups as u32).collect()
    };
    let settings = FitSettings::default();
    let mut best: Option<f64> = None;
    let mut undefined = None;
    for g in classes {
        let y_fit = targets(fit_on.1, g);
        let y_score = targets(score_on.1, g);
        let head = fit_head(
            arch, fit_on.0, &y_fit, fit_on.0, &y_fit, &settings, seed, device,
        )?;
        let scores = head.scores(score_on.0);
        match metrics::auc(&scores, &y_score) {
            Ok(auc) => best = Some(best.map_or(auc, |b: f64| b.max(auc))),
            Err(e) => undefined = Some(format!("group {g} against the rest: {e}")),
        }
    }
    Ok(ProbeAuc {
        undefined: if best.is_none() { undefined } else { None },
        auc: best,
    })
}

fn evaluate_run(
    run: &TrainedRun,
    ds: &Dataset,
    opts: &EvalOptions,
    device: &Device,
) -> Result<RunEval, EvalCmdError> {
    let split = ds.split(opts.split);
    let n_groups = ds.n_groups();
    // Task scores.
    let forward = run.forward(split, opts.split.name(), device)?;
    let (z, logits) = (forward.latent, forward.outputs);
    let task_metrics = |groups: &[u32], n_groups: usize, what: &str| {
        let mut tasks = BTreeMap::new();
        for (t, info) in ds.schema.tasks.iter().enumerate() {
            let metric_err = |source| EvalCmdError::Metric {
                run: run.run_dir.clone(),
                task: format!("{}{what}", info.name),
                source,
            };
            let m = match info.kind {
                TaskKind::Binary => {
                    let scores: Vec<f64> =
                        logits[t].iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
                    TaskMetrics::Binary(
                        stats::score_metrics(&scores, &split.targets[t], groups, n_groups)
                            .map_err(metric_err)?,
                    )
                }
                TaskKind::Regression => TaskMetrics::Regression {
                    mse: metrics::mse(&logits[t], &split.targets[t]).map_err(metric_err)?,
                    ks: metrics::ks_distance(&logits[t], groups, n_groups).map_err(metric_err)?,
                },
            };
            tasks.insert(info.name.clone(), m);
        }
        Ok::<_, EvalCmdError>(tasks)
    };
    let tasks = task_metrics(&split.groups, n_groups, "")?;
    let mut attributes = BTreeMap::new();
    for (info, ids) in ds.schema.attributes.iter().zip(&split.attributes) {
        let what = format!(" (attribute `{}`)", info.name);
        attributes.insert(
            info.name.clone(),
            task_metrics(ids, info.groups.len(), &what)?,
        );
    }
    // Leakage.
    let (fit_split, fit_name) = match opts.split {
        SplitName::Test => (&ds.valid, "valid"),
        SplitName::Valid | SplitName::Train => (&ds.train, "train"),
    };
    let z_fit = run.encode(fit_split, fit_name, device)?;
    let probe = |arch: HeadKind| {
        auc_of_probe(
            &arch,
            (&z_fit, &fit_split.groups),
            (&z, &split.groups),
            n_groups,
            opts.seed,
            device,
        )
        .map_err(|source| EvalCmdError::Probe {
            run: run.run_dir.clone(),
            probe: arch.name().into(),
            source,
        })
    };
    let logistic_auc = probe(HeadKind::Linear)?;
    let mlp_auc = probe(HeadKind::Mlp { hidden: vec![64] })?;
    let (zn, z_scale) = stats::scale_normalised(&z);
    let test = |kind, permutations| {
        stats::group_divergence_test(
            &zn,
            &split.groups,
            n_groups,
            TestSettings {
                kind,
                max_points: opts.max_points,
                permutations,
                seed: opts.seed,
            },
            device,
        )
        .map_err(|source| EvalCmdError::Stats {
            run: run.run_dir.clone(),
            source: Box::new(source),
        })
    };
    let mmd2 = test(TestDivergence::Mmd, opts.permutations)?;
    let sinkhorn = test(
        TestDivergence::Sinkhorn { blur: opts.blur },
        opts.sinkhorn_permutations,
    )?;
    Ok(RunEval {
        run: run.run_dir.clone(),
        checkpoint: run.checkpoint.clone(),
        seed: run.manifest.seed,
        tasks,
        attributes,
        leakage: Leakage {
            logistic_auc,
            mlp_auc,
            mmd2,
            sinkhorn,
            z_scale,
        },
    })
}

fn summarise(runs: &[RunEval]) -> BTreeMap<String, Interval> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut put = |k: String, v: Option<f64>| {
        if let Some(v) = v {
            values.entry(k).or_default().push(v);
        }
    };
    for r in runs {
        for (task, m) in &r.tasks {
            match m {
                TaskMetrics::Binary(s) => {
                    put(format!("{task}.accuracy"), Some(s.accuracy));
                    put(format!("{task}.auc"), s.auc);
                    put(format!("{task}.dp_gap"), Some(s.dp_gap));
                    put(format!("{task}.eo_gap"), s.eo_gap);
                    put(format!("{task}.eopp_gap"), s.eopp_gap);
                    put(format!("{task}.ks"), Some(s.ks));
                    put(format!("{task}.w1"), Some(s.w1));
                    put(format!("{task}.abpc"), Some(s.abpc));
                    put(format!("{task}.score_gap"), Some(s.score_gap));
                }
                TaskMetrics::Regression { mse, ks } => {
                    put(format!("{task}.mse"), Some(*mse));
                    put(format!("{task}.ks"), Some(*ks));
                }
            }
        }
        // Several attributes: each attribute's group metrics as `TASK.METRIC:ATTRIBUTE`.
        for (attribute, tasks) in &r.attributes {
            for (task, m) in tasks {
                match m {
                    TaskMetrics::Binary(s) => {
                        put(format!("{task}.dp_gap:{attribute}"), Some(s.dp_gap));
                        put(format!("{task}.eo_gap:{attribute}"), s.eo_gap);
                        put(format!("{task}.eopp_gap:{attribute}"), s.eopp_gap);
                        put(format!("{task}.ks:{attribute}"), Some(s.ks));
                        put(format!("{task}.w1:{attribute}"), Some(s.w1));
                        put(format!("{task}.score_gap:{attribute}"), Some(s.score_gap));
                    }
                    TaskMetrics::Regression { ks, .. } => {
                        put(format!("{task}.ks:{attribute}"), Some(*ks));
                    }
                }
            }
        }
        let l = &r.leakage;
        put("leakage.logistic_auc".into(), l.logistic_auc.auc);
        put("leakage.mlp_auc".into(), l.mlp_auc.auc);
        put("leakage.mmd2".into(), Some(l.mmd2.value));
        put("leakage.mmd2_p".into(), l.mmd2.p_value);
        put("leakage.sinkhorn".into(), Some(l.sinkhorn.value));
        put("leakage.sinkhorn_p".into(), l.sinkhorn.p_value);
    }
    values
        .into_iter()
        .map(|(k, v)| (k, Interval::of(&v)))
        .collect()
}

/// Evaluates every run in `run_dirs` (they must share their tasks).
pub fn evaluate_runs(
    run_dirs: &[PathBuf],
    data_dir: Option<&Path>,
    opts: &EvalOptions,
    device: &Device,
) -> Result<EvalReport, EvalCmdError> {
    let mut runs = Vec::new();
    let mut meta: Option<(PathBuf, String, Vec<String>, Vec<String>)> = None;
    for dir in run_dirs {
        let run = TrainedRun::open(dir, device)?;
        let ds = run.own_data(data_dir)?;
        let names = ds.task_names();
        match &meta {
            None => {
                meta = Some((
                    dir.clone(),
                    ds.name.clone(),
                    ds.schema.groups.clone(),
                    names.clone(),
                ))
            }
            Some((first_run, _, _, first)) if *first != names => {
                return Err(EvalCmdError::Tasks {
                    first_run: first_run.clone(),
                    first: first.clone(),
                    other_run: dir.clone(),
                    other: names,
                });
            }
            Some(_) => {}
        }
        info!(
            "evaluating {} on the {} split",
            dir.display(),
            opts.split.name()
        );
        runs.push(evaluate_run(&run, &ds, opts, device)?);
    }
    let (_, dataset, groups, _) = meta.expect("at least one run (clap requires it)");
    let summary = summarise(&runs);
    Ok(EvalReport {
        split: opts.split,
        dataset,
        groups,
        runs,
        summary,
    })
}

/// The report as text: one line per metric, mean (± 95% CI with several runs).
pub fn render_table(report: &EvalReport) -> String {
    let mut out = String::new();
    let n = report.runs.len();
    let _ = writeln!(
        out,
        "{} ({} split), {} run{}; mean{}",
        report.dataset,
        report.split.name(),
        n,
        if n == 1 { "" } else { "s" },
        if n > 1 { " ± 95% CI" } else { "" }
    );
    for (key, interval) in &report.summary {
        let _ = writeln!(out, "  {key:<28} {}", interval.show(4));
    }
    for run in &report.runs {
        for (probe, auc) in [
            ("logistic", &run.leakage.logistic_auc),
            ("mlp", &run.leakage.mlp_auc),
        ] {
            if let Some(why) = &auc.undefined {
                let _ = writeln!(
                    out,
                    "  note: {}: the {probe} probe's AUC is undefined ({why})",
                    run.run.display()
                );
            }
        }
    }
    out
}
