//! `fairrep postprocess`: fair regression by Wasserstein-barycentre post-processing
//! ([`fairrep_postprocess`]) of a run's head or of any model's predictions.
//!
//! Three entry points, one procedure:
//!
//! - [`postprocess_run`]: a trained run's head. A regression head's predictions, or (with
//!   `scores`) a binary head's probability scores `sigmoid(logit)`, are computed on the
//!   validation split (calibration) and the test split (report). The attribute is the run's
//!   sensitive attribute.
//! - [`postprocess_predictions`]: a predictions CSV written by any tool (see
//!   [`fairrep_postprocess::predictions`]): rows with `split` = `valid` or `calib` are the
//!   calibration sample, rows with `split` = `test` the report sample, other rows are ignored.
//!   Several `group:NAME` columns are several attributes, made fair in header order (EquiPy's
//!   sequential procedure, [`fairrep_postprocess::sequential`]).
//! - [`apply_saved`]: a saved post-processor applied to every row of a predictions CSV.
//!
//! The procedure ([`run_samples`]): check the calibration sample (not constant, every group of
//! the report sample present), fit one step per attribute on the calibration sample, and for
//! every `alpha` of the curve post-process the report sample (every step at that `alpha`) and
//! measure MSE / RMSE against the targets (when there are targets), KS and W1 between the groups
//! of every attribute and, for scores, the DP gap at a threshold. The fit is saved as JSON
//! (`fit.json`: the one-attribute [`BarycentreFit`] format, or the [`SequentialFit`] format
//! for several attributes), beside the report (`report.json`) and the curve (`curve.svg`).
//!
//! # Jitter and seeds
//!
//! The jitter half-width is the caller's, else `1e-6` times the range of the calibration
//! predictions (small against the spacing of distinct predictions; only ties are broken). The
//! draws are seeded: step `k` calibrates with [`Noise::Seeded`]`(seed + 2k)` and post-processes
//! with `seed + 2k + 1` (the same draws at every alpha), so [`apply_saved`] with the same seed on
//! a file holding the report rows reproduces the report's outputs exactly.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairrep_data::SplitName;
use fairrep_data::spec::TaskKind;
use fairrep_postprocess::metrics::{
    dp_gap_between_groups, ks_between_groups, mse, w1_between_groups,
};
use fairrep_postprocess::sequential::{SEQUENTIAL_FORMAT, StageUnfairness};
use fairrep_postprocess::{
    AttributeColumn, BarycentreFit, FitOptions, Noise, PostprocessError, PredictionsTable,
    SequentialFit, fit_sequential, read_predictions_csv,
};
use fairrep_train::plot::{Chart, Series, render};
use fairrep_train::raster::PngFile;
use serde::{Deserialize, Serialize};

use crate::trained::{TrainedError, TrainedRun};

/// Split names of a predictions file's calibration rows.
pub const CALIBRATION_SPLITS: [&str; 2] = ["valid", "calib"];
/// Split name of a predictions file's report rows.
pub const REPORT_SPLIT: &str = "test";
/// The jitter half-width relative to the range of the calibration predictions, by default.
pub const RELATIVE_JITTER: f64 = 1e-6;
/// File name of the saved post-processor in the output folder.
pub const FIT_FILE: &str = "fit.json";
/// File name of the report in the output folder.
pub const REPORT_FILE: &str = "report.json";
/// File name of the curve plot in the output folder.
pub const PLOT_FILE: &str = "curve.svg";

/// Why a post-processing failed.
#[derive(Debug, thiserror::Error)]
pub enum PostprocessCmdError {
    /// The run cannot be opened.
    #[error(transparent)]
    Trained(#[from] TrainedError),
    /// The run has no task of that name.
    #[error("run `{}` has no task `{task}`; its tasks: {}", run.display(), tasks.join(", "))]
    UnknownTask {
        /// The run.
        run: PathBuf,
        /// The task asked for.
        task: String,
        /// The run's tasks.
        tasks: Vec<String>,
    },
    /// A binary task was given where a regression task is needed.
    #[error(
        "run `{}`, task `{task}`: expected a regression task, found a binary task; pass \
         --scores to post-process its probability scores",
        run.display()
    )]
    NotRegression {
        /// The run.
        run: PathBuf,
        /// The task.
        task: String,
    },
    /// `scores` was asked for a regression task.
    #[error(
        "run `{}`, task `{task}`: --scores applies to binary tasks, found a regression task",
        run.display()
    )]
    NotBinary {
        /// The run.
        run: PathBuf,
        /// The task.
        task: String,
    },
    /// The calibration predictions are all equal.
    #[error(
        "{what}: all {n} calibration predictions equal {value}: a constant predictor has no \
         group-wise distribution to transport (it is already fair); nothing to post-process"
    )]
    ConstantPrediction {
        /// The sample.
        what: String,
        /// Its number of rows.
        n: usize,
        /// The common value.
        value: f64,
    },
    /// A predictions file without calibration (or report) rows.
    #[error(
        "{}: expected rows with split = {expected} ({role}), found {found}",
        path.display()
    )]
    MissingSplit {
        /// The file.
        path: PathBuf,
        /// The split names looked for.
        expected: String,
        /// `calibration` or `report`.
        role: &'static str,
        /// What the file has.
        found: String,
    },
    /// A row's group is not one the post-processor knows.
    #[error(
        "{}, line {line}, column `{column}`: group `{group}` is not in the fitted \
         post-processor; known groups: {}",
        path.display(),
        known.join(", ")
    )]
    UnknownGroup {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// The group column.
        column: String,
        /// The group.
        group: String,
        /// The groups the post-processor was fitted on.
        known: Vec<String>,
    },
    /// A predictions file lacks the group column of a fitted attribute.
    #[error(
        "{}: the post-processor needs the column `{column}` (attribute `{attribute}`); the \
         file's group columns: {}",
        path.display(),
        found.join(", ")
    )]
    MissingAttribute {
        /// The file.
        path: PathBuf,
        /// The attribute.
        attribute: String,
        /// The column looked for.
        column: String,
        /// The file's group columns.
        found: Vec<String>,
    },
    /// The post-processing library refused its input.
    #[error("{context}: {source}")]
    Postprocess {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: Box<PostprocessError>,
    },
    /// Writing an output failed.
    #[error("cannot write `{}`: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn pp(context: impl Into<String>) -> impl FnOnce(PostprocessError) -> PostprocessCmdError {
    let context = context.into();
    move |source| PostprocessCmdError::Postprocess {
        context,
        source: Box::new(source),
    }
}

/// Settings shared by the entry points.
#[derive(Debug, Clone, PartialEq)]
pub struct PostprocessOptions {
    /// The alphas of the curve (each in `[0, 1]`).
    pub alphas: Vec<f64>,
    /// Jitter half-width; `None`: [`RELATIVE_JITTER`] times the calibration range.
    pub jitter: Option<f64>,
    /// Seed of the jitter draws (see the module documentation).
    pub seed: u64,
    /// The predictions are probability scores: report the DP gap at `threshold`.
    pub scores: bool,
    /// Decision threshold of the DP gap for scores.
    pub threshold: f64,
}

/// Predictions with their groups (one column per attribute) and optional targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The base predictions.
    pub predictions: Vec<f64>,
    /// `(attribute, group of every row)`, in the order the attributes are made fair.
    pub attributes: Vec<(String, Vec<String>)>,
    /// The true values, when known.
    pub targets: Option<Vec<f64>>,
}

impl Sample {
    fn columns(&self) -> Vec<AttributeColumn<'_, String>> {
        self.attributes
            .iter()
            .map(|(name, groups)| AttributeColumn { name, groups })
            .collect()
    }
}

/// Unfairness with respect to one attribute at one alpha.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeMetrics {
    /// The attribute.
    pub attribute: String,
    /// KS distance between its groups' prediction distributions (max over pairs).
    pub ks: f64,
    /// W1 distance between its groups (max over pairs), in the prediction's units.
    pub w1: f64,
    /// Scores: demographic-parity gap of the decisions `score > threshold`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dp_gap: Option<f64>,
}

/// One point of the risk / unfairness curve (report sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRow {
    /// The fairness knob of every step (0: the base predictions, 1: fully fair).
    pub alpha: f64,
    /// Mean squared error against the targets (for scores against 0/1 labels: the Brier
    /// score); absent without targets.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mse: Option<f64>,
    /// Its square root.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rmse: Option<f64>,
    /// Unfairness per attribute.
    pub attributes: Vec<AttributeMetrics>,
}

/// Size and groups of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Where it came from (a split name, or the split values of a file).
    pub split: String,
    /// Rows.
    pub n: usize,
    /// Rows per group of every attribute, in the fitted group order (with `n_g` and `n_g'`
    /// rows, the KS distance between two samples of one law exceeds
    /// `1.36 sqrt(1/n_g + 1/n_g')` with probability about 0.05: the noise floor of a fair
    /// predictor's KS).
    pub group_sizes: Vec<Vec<usize>>,
}

/// What `fairrep postprocess` writes as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostprocessReport {
    /// The run, in the run mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<PathBuf>,
    /// The checkpoint whose head was used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpoint: Option<PathBuf>,
    /// The task, in the run mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<String>,
    /// The predictions file, in the file mode.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub predictions_file: Option<PathBuf>,
    /// `regression` or `score`.
    pub output: String,
    /// The attributes, in the order they are made fair.
    pub attributes: Vec<String>,
    /// The groups of every attribute, in the fitted order.
    pub groups: Vec<Vec<String>>,
    /// The calibration sample.
    pub calibration: SampleInfo,
    /// The report sample.
    pub test: SampleInfo,
    /// The jitter half-width used.
    pub jitter_scale: f64,
    /// The seed of the jitter draws.
    pub seed: u64,
    /// The decision threshold of the DP gap (scores only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub threshold: Option<f64>,
    /// Risk and unfairness per alpha, on the report sample.
    pub curve: Vec<CurveRow>,
    /// KS / W1 of every attribute after every step (every step at `alpha = 1`), report
    /// sample; the first stage is the base predictions.
    pub stages: Vec<StageUnfairness>,
    /// The saved post-processor.
    pub fit_file: PathBuf,
    /// The curve plot.
    pub plot_file: PathBuf,
}

/// A fit with its report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The fitted post-processor (one step per attribute).
    pub fit: SequentialFit,
    /// The report (also written to `report.json`).
    pub report: PostprocessReport,
    /// The PNG version of the curve plot (`curve.png`), or why it was not written.
    pub plot_png: PngFile,
}

/// Checks the alphas (each in `[0, 1]`, at least one).
pub fn check_alphas(alphas: &[f64]) -> Result<(), PostprocessCmdError> {
    if alphas.is_empty() {
        return Err(PostprocessError::Empty { what: "alphas" }).map_err(pp("--alphas"));
    }
    for &a in alphas {
        if !(0.0..=1.0).contains(&a) {
            return Err(PostprocessError::AlphaOutOfRange {
                found: a,
                step: None,
            })
            .map_err(pp("--alphas"));
        }
    }
    Ok(())
}

/// The seed of step `k`'s draws: calibration (`apply = false`) or post-processing.
pub fn step_seed(seed: u64, k: usize, apply: bool) -> u64 {
    seed.wrapping_add(2 * k as u64 + u64::from(apply))
}

/// Fits on `calibration`, reports on `test` (see the module documentation). `what` names the
/// source in errors. The report's file fields are left empty (the caller sets them).
pub fn run_samples(
    calibration: &Sample,
    test: &Sample,
    opts: &PostprocessOptions,
    what: &str,
) -> Result<(SequentialFit, PostprocessReport), PostprocessCmdError> {
    check_alphas(&opts.alphas)?;
    let n = calibration.predictions.len();
    if n == 0 {
        return Err(PostprocessError::Empty {
            what: "calibration sample",
        })
        .map_err(pp(what));
    }
    let (lo, hi) = calibration
        .predictions
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if lo == hi {
        return Err(PostprocessCmdError::ConstantPrediction {
            what: what.to_string(),
            n,
            value: lo,
        });
    }
    let jitter = match opts.jitter {
        Some(j) => j,
        None if (hi - lo).is_finite() => RELATIVE_JITTER * (hi - lo),
        // A non-finite prediction: the library names the row.
        None => 0.0,
    };
    // Every group of the report sample must be calibrated: declare the union of both samples'
    // groups, so that a group without calibration rows is named by the fit.
    let mut options = Vec::new();
    for ((_, cal), (_, tst)) in calibration.attributes.iter().zip(&test.attributes) {
        let groups: BTreeSet<&String> = cal.iter().chain(tst).collect();
        let groups: Vec<&String> = groups.into_iter().collect();
        options.push(FitOptions::new(jitter).with_groups(&groups));
    }
    let k = calibration.attributes.len();
    let cal_noise: Vec<Noise<'_>> = (0..k)
        .map(|s| Noise::Seeded(step_seed(opts.seed, s, false)))
        .collect();
    let fit = fit_sequential(
        &calibration.predictions,
        &calibration.columns(),
        &options,
        &cal_noise,
    )
    .map_err(pp(format!("{what}: fitting on the calibration sample")))?;
    let apply_noise: Vec<Noise<'_>> = (0..k)
        .map(|s| Noise::Seeded(step_seed(opts.seed, s, true)))
        .collect();
    let cols = test.columns();
    let ctx = || format!("{what}: post-processing the report sample");
    let mut curve = Vec::with_capacity(opts.alphas.len());
    for &alpha in &opts.alphas {
        let out = fit
            .transform(&test.predictions, &cols, &vec![alpha; k], &apply_noise)
            .map_err(pp(ctx()))?;
        curve.push(curve_row(
            &fit,
            alpha,
            out.output(),
            test,
            opts,
            &format!("{what}, alpha = {alpha}"),
        )?);
    }
    let full = fit
        .transform(&test.predictions, &cols, &vec![1.0; k], &apply_noise)
        .map_err(pp(ctx()))?;
    let stages = fit.unfairness(&full, &cols).map_err(pp(ctx()))?;
    let report = PostprocessReport {
        run: None,
        checkpoint: None,
        task: None,
        predictions_file: None,
        output: if opts.scores { "score" } else { "regression" }.into(),
        attributes: fit.attributes(),
        groups: fit.steps().iter().map(|s| s.fit().group_names()).collect(),
        calibration: SampleInfo {
            split: String::new(),
            n,
            group_sizes: group_sizes(&fit, calibration),
        },
        test: SampleInfo {
            split: String::new(),
            n: test.predictions.len(),
            group_sizes: group_sizes(&fit, test),
        },
        jitter_scale: jitter,
        seed: opts.seed,
        threshold: opts.scores.then_some(opts.threshold),
        curve,
        stages,
        fit_file: PathBuf::new(),
        plot_file: PathBuf::new(),
    };
    Ok((fit, report))
}

/// Rows per group of every attribute of `sample`, in the fitted group order.
fn group_sizes(fit: &SequentialFit, sample: &Sample) -> Vec<Vec<usize>> {
    fit.steps()
        .iter()
        .zip(&sample.attributes)
        .map(|(step, (_, groups))| {
            step.fit()
                .group_names()
                .iter()
                .map(|g| groups.iter().filter(|x| *x == g).count())
                .collect()
        })
        .collect()
}

fn curve_row(
    fit: &SequentialFit,
    alpha: f64,
    values: &[f64],
    test: &Sample,
    opts: &PostprocessOptions,
    what: &str,
) -> Result<CurveRow, PostprocessCmdError> {
    let (mse, rmse) = match &test.targets {
        Some(t) => {
            let m = mse(values, t).map_err(pp(what))?;
            (Some(m), Some(m.sqrt()))
        }
        None => (None, None),
    };
    let mut attributes = Vec::new();
    for (step, (name, groups)) in fit.steps().iter().zip(&test.attributes) {
        let known = step.fit().group_names();
        let ctx = format!("{what}, attribute `{name}`");
        attributes.push(AttributeMetrics {
            attribute: name.clone(),
            ks: ks_between_groups(values, groups, &known, &ctx).map_err(pp(what))?,
            w1: w1_between_groups(values, groups, &known, &ctx).map_err(pp(what))?,
            dp_gap: if opts.scores {
                Some(
                    dp_gap_between_groups(values, groups, &known, opts.threshold, &ctx)
                        .map_err(pp(what))?,
                )
            } else {
                None
            },
        });
    }
    Ok(CurveRow {
        alpha,
        mse,
        rmse,
        attributes,
    })
}

/// The curve as an SVG: risk against alpha, and unfairness (KS, W1, DP gap per attribute)
/// against alpha.
pub fn curve_plot(report: &PostprocessReport) -> String {
    let x: Vec<f64> = report.curve.iter().map(|r| r.alpha).collect();
    let series = |label: String, f: &dyn Fn(&CurveRow) -> Option<f64>| Series {
        label,
        points: x
            .iter()
            .zip(&report.curve)
            .map(|(&a, r)| (a, f(r).unwrap_or(f64::NAN)))
            .collect(),
    };
    let mut risk = Vec::new();
    if report.curve.iter().any(|r| r.mse.is_some()) {
        risk.push(series("test MSE".into(), &|r| r.mse));
    }
    let mut unfair = Vec::new();
    let mut w1 = Vec::new();
    for (j, a) in report.attributes.iter().enumerate() {
        unfair.push(series(format!("KS ({a})"), &|r| Some(r.attributes[j].ks)));
        if report.threshold.is_some() {
            unfair.push(series(format!("DP gap ({a})"), &|r| r.attributes[j].dp_gap));
        }
        w1.push(series(format!("W1 ({a})"), &|r| Some(r.attributes[j].w1)));
    }
    let mut charts = Vec::new();
    if !risk.is_empty() {
        charts.push(Chart {
            title: "risk (test)".into(),
            x_label: "alpha".into(),
            series: risk,
        });
    }
    charts.push(Chart {
        title: "KS between groups (test)".into(),
        x_label: "alpha".into(),
        series: unfair,
    });
    charts.push(Chart {
        title: "W1 between groups (test)".into(),
        x_label: "alpha".into(),
        series: w1,
    });
    render(&charts)
}

/// Writes `fit.json`, `report.json` and `curve.svg` into `out_dir` (created when missing) and
/// records their paths in the report; then `curve.png`, whose failure is returned as a value
/// (the other files are kept).
pub fn write_outputs(
    fit: &SequentialFit,
    report: &mut PostprocessReport,
    out_dir: &Path,
) -> Result<PngFile, PostprocessCmdError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| PostprocessCmdError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    fairrep_data::fs::create_dir_all(out_dir).map_err(|e| werr(out_dir, &e))?;
    let fit_path = out_dir.join(FIT_FILE);
    // One attribute: the plain one-attribute format; several: the sequential format.
    let json = match fit.steps() {
        [one] => one.fit().to_json(),
        _ => fit.to_json(),
    }
    .map_err(|e| werr(&fit_path, &e))?;
    fairrep_data::fs::write_atomic(&fit_path, format!("{json}\n").as_bytes())
        .map_err(|e| werr(&fit_path, &e))?;
    let plot_path = out_dir.join(PLOT_FILE);
    report.fit_file = fit_path;
    report.plot_file = plot_path.clone();
    let svg = curve_plot(report);
    fairrep_data::fs::write_atomic(&plot_path, svg.as_bytes()).map_err(|e| werr(&plot_path, &e))?;
    let report_path = out_dir.join(REPORT_FILE);
    let json = serde_json::to_string_pretty(report).map_err(|e| werr(&report_path, &e))?;
    fairrep_data::fs::write_atomic(&report_path, format!("{json}\n").as_bytes())
        .map_err(|e| werr(&report_path, &e))?;
    Ok(PngFile::beside(&plot_path, &svg))
}

/// Post-processes task `task` of the run in `run_dir`: calibrated on its validation split,
/// reported on its test split (binary tasks need `opts.scores`). Writes into `out_dir`, by
/// default `RUN_DIR/postprocess/TASK`.
pub fn postprocess_run(
    run_dir: &Path,
    task: &str,
    data_dir: Option<&Path>,
    out_dir: Option<&Path>,
    opts: &PostprocessOptions,
    device: &Device,
) -> Result<Outcome, PostprocessCmdError> {
    check_alphas(&opts.alphas)?;
    let run = TrainedRun::open(run_dir, device)?;
    let tasks: Vec<String> = run
        .manifest
        .schema
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let Some(t) = tasks.iter().position(|n| n == task) else {
        return Err(PostprocessCmdError::UnknownTask {
            run: run_dir.to_path_buf(),
            task: task.to_string(),
            tasks,
        });
    };
    match (run.manifest.schema.tasks[t].kind, opts.scores) {
        (TaskKind::Binary, false) => {
            return Err(PostprocessCmdError::NotRegression {
                run: run_dir.to_path_buf(),
                task: task.to_string(),
            });
        }
        (TaskKind::Regression, true) => {
            return Err(PostprocessCmdError::NotBinary {
                run: run_dir.to_path_buf(),
                task: task.to_string(),
            });
        }
        _ => {}
    }
    let ds = run.own_data(data_dir)?;
    let attribute = ds.schema.sensitive_column.clone();
    let sample = |name: SplitName| -> Result<Sample, PostprocessCmdError> {
        let split = ds.split(name);
        let out = run.forward(split, name.name(), device)?;
        let predictions: Vec<f64> = if opts.scores {
            out.outputs[t]
                .iter()
                .map(|l| 1.0 / (1.0 + (-l).exp()))
                .collect()
        } else {
            out.outputs[t].clone()
        };
        let groups = split
            .groups
            .iter()
            .map(|&g| ds.schema.groups[g as usize].clone())
            .collect();
        Ok(Sample {
            predictions,
            attributes: vec![(attribute.clone(), groups)],
            targets: Some(split.targets[t].iter().map(|&y| f64::from(y)).collect()),
        })
    };
    let calibration = sample(SplitName::Valid)?;
    let test = sample(SplitName::Test)?;
    let what = format!("run `{}`, task `{task}`", run_dir.display());
    let (fit, mut report) = run_samples(&calibration, &test, opts, &what)?;
    report.run = Some(run_dir.to_path_buf());
    report.checkpoint = Some(run.checkpoint.clone());
    report.task = Some(task.to_string());
    report.calibration.split = SplitName::Valid.name().into();
    report.test.split = SplitName::Test.name().into();
    let out = out_dir.map_or_else(|| run_dir.join("postprocess").join(task), Path::to_path_buf);
    let plot_png = write_outputs(&fit, &mut report, &out)?;
    Ok(Outcome {
        fit,
        report,
        plot_png,
    })
}

fn table_sample(t: &PredictionsTable) -> Sample {
    Sample {
        predictions: t.predictions.clone(),
        attributes: t
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.groups.clone()))
            .collect(),
        targets: t.targets.clone(),
    }
}

/// The calibration rows (`split` = `valid` or `calib`) of a predictions file.
fn calibration_rows(t: &PredictionsTable) -> Result<PredictionsTable, PostprocessCmdError> {
    let missing = |found: String| PostprocessCmdError::MissingSplit {
        path: t.source.clone(),
        expected: CALIBRATION_SPLITS.join(" or "),
        role: "calibration",
        found,
    };
    let Some(splits) = &t.splits else {
        return Err(missing("no `split` column".into()));
    };
    let keep: Vec<bool> = splits
        .iter()
        .map(|s| CALIBRATION_SPLITS.contains(&s.as_str()))
        .collect();
    if !keep.iter().any(|&k| k) {
        let have: BTreeSet<&str> = splits.iter().map(String::as_str).collect();
        return Err(missing(format!(
            "none (splits: {})",
            have.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(select_rows(t, &keep))
}

fn select_rows(t: &PredictionsTable, keep: &[bool]) -> PredictionsTable {
    let pick_f = |v: &Vec<f64>| {
        v.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(x, _)| *x)
            .collect::<Vec<_>>()
    };
    let pick_s = |v: &Vec<String>| {
        v.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(x, _)| x.clone())
            .collect::<Vec<_>>()
    };
    PredictionsTable {
        predictions: pick_f(&t.predictions),
        attributes: t
            .attributes
            .iter()
            .map(|a| fairrep_postprocess::GroupColumn {
                name: a.name.clone(),
                groups: pick_s(&a.groups),
            })
            .collect(),
        targets: t.targets.as_ref().map(pick_f),
        splits: t.splits.as_ref().map(pick_s),
        lines: t
            .lines
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(x, _)| *x)
            .collect(),
        source: t.source.clone(),
    }
}

/// Post-processes a predictions file: calibrated on its `valid` / `calib` rows, reported on its
/// `test` rows. Writes into `out_dir`, by default `FILE.postprocess/` beside the file.
pub fn postprocess_predictions(
    path: &Path,
    out_dir: Option<&Path>,
    opts: &PostprocessOptions,
) -> Result<Outcome, PostprocessCmdError> {
    check_alphas(&opts.alphas)?;
    let table = read_predictions_csv(path).map_err(pp("reading the predictions"))?;
    let cal = calibration_rows(&table)?;
    let test = table
        .split(REPORT_SPLIT)
        .map_err(|e| PostprocessCmdError::MissingSplit {
            path: path.to_path_buf(),
            expected: REPORT_SPLIT.into(),
            role: "report",
            found: match e {
                PostprocessError::Csv { found, .. } => found,
                other => other.to_string(),
            },
        })?;
    let what = path.display().to_string();
    let (fit, mut report) = run_samples(&table_sample(&cal), &table_sample(&test), opts, &what)?;
    report.predictions_file = Some(path.to_path_buf());
    report.calibration.split = CALIBRATION_SPLITS.join("|");
    report.test.split = REPORT_SPLIT.into();
    let out = out_dir.map_or_else(
        || {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".postprocess");
            path.with_file_name(name)
        },
        Path::to_path_buf,
    );
    let plot_png = write_outputs(&fit, &mut report, &out)?;
    Ok(Outcome {
        fit,
        report,
        plot_png,
    })
}

/// A saved post-processor: one attribute or several.
#[derive(Debug, Clone, PartialEq)]
pub enum SavedFit {
    /// The one-attribute format.
    One(BarycentreFit),
    /// The sequential format.
    Sequential(SequentialFit),
}

impl SavedFit {
    /// Reads either format (told apart by the `format` field).
    pub fn load(path: &Path) -> Result<Self, PostprocessCmdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PostprocessError::Io {
                path: path.to_path_buf(),
                source,
            })
            .map_err(pp("reading the post-processor"))?;
        #[derive(Deserialize)]
        struct Format {
            format: Option<String>,
        }
        let format = serde_json::from_str::<Format>(&text)
            .ok()
            .and_then(|f| f.format);
        let ctx = "reading the post-processor";
        if format.as_deref() == Some(SEQUENTIAL_FORMAT) {
            SequentialFit::from_json_str(&text, path)
                .map(Self::Sequential)
                .map_err(pp(ctx))
        } else {
            BarycentreFit::from_json_str(&text, path)
                .map(Self::One)
                .map_err(pp(ctx))
        }
    }
}

/// What [`apply_saved`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The file's rows.
    pub table: PredictionsTable,
    /// The post-processed prediction of every row.
    pub postprocessed: Vec<f64>,
}

/// Applies the post-processor saved at `fit_path` to every row of the predictions file `path`
/// at `alpha` (every step), with the post-processing draws of `seed`. A one-attribute
/// post-processor reads the file's first group column; a sequential one reads `group:NAME` for
/// each of its attributes. A group the post-processor was not fitted on is an error naming the
/// file, line and column.
pub fn apply_saved(
    fit_path: &Path,
    path: &Path,
    alpha: f64,
    seed: u64,
) -> Result<Applied, PostprocessCmdError> {
    check_alphas(&[alpha]).map_err(|e| match e {
        PostprocessCmdError::Postprocess { source, .. } => PostprocessCmdError::Postprocess {
            context: "--alpha".into(),
            source,
        },
        other => other,
    })?;
    let saved = SavedFit::load(fit_path)?;
    let table = read_predictions_csv(path).map_err(pp("reading the predictions"))?;
    let column_name = |a: &str| {
        if a == "group" {
            "group".to_string()
        } else {
            format!(
                "{}{a}",
                fairrep_postprocess::predictions::GROUP_COLUMN_PREFIX
            )
        }
    };
    let check = |groups: &[String], column: &str, known: Vec<String>| {
        for (g, &line) in groups.iter().zip(&table.lines) {
            if !known.contains(g) {
                return Err(PostprocessCmdError::UnknownGroup {
                    path: path.to_path_buf(),
                    line,
                    column: column.to_string(),
                    group: g.clone(),
                    known,
                });
            }
        }
        Ok(())
    };
    let ctx = format!("{}: applying `{}`", path.display(), fit_path.display());
    let postprocessed = match &saved {
        SavedFit::One(fit) => {
            let a = &table.attributes[0];
            check(&a.groups, &column_name(&a.name), fit.group_names())?;
            fit.transform(
                &table.predictions,
                &a.groups,
                alpha,
                Noise::Seeded(step_seed(seed, 0, true)),
            )
            .map_err(pp(ctx))?
        }
        SavedFit::Sequential(fit) => {
            let mut cols = Vec::new();
            for step in fit.steps() {
                let column = column_name(step.attribute());
                let Some(a) = table.attributes.iter().find(|a| a.name == step.attribute()) else {
                    return Err(PostprocessCmdError::MissingAttribute {
                        path: path.to_path_buf(),
                        attribute: step.attribute().to_string(),
                        column,
                        found: table
                            .attributes
                            .iter()
                            .map(|a| column_name(&a.name))
                            .collect(),
                    });
                };
                check(&a.groups, &column, step.fit().group_names())?;
                cols.push(AttributeColumn {
                    name: step.attribute(),
                    groups: a.groups.as_slice(),
                });
            }
            let k = cols.len();
            let noise: Vec<Noise<'_>> = (0..k)
                .map(|s| Noise::Seeded(step_seed(seed, s, true)))
                .collect();
            fit.transform(&table.predictions, &cols, &vec![alpha; k], &noise)
                .map_err(pp(ctx))?
                .output()
                .to_vec()
        }
    };
    Ok(Applied {
        table,
        postprocessed,
    })
}

/// The rows of [`apply_saved`] as CSV: the file's columns, then `postprocessed`. `path` (the
/// file it is meant for) names errors.
pub fn applied_csv(applied: &Applied, path: &Path) -> Result<String, PostprocessCmdError> {
    let t = &applied.table;
    let col = |a: &fairrep_postprocess::GroupColumn| {
        if a.name == "group" {
            "group".to_string()
        } else {
            format!(
                "{}{}",
                fairrep_postprocess::predictions::GROUP_COLUMN_PREFIX,
                a.name
            )
        }
    };
    let werr = |e: &dyn std::fmt::Display| PostprocessCmdError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut header = vec!["prediction".to_string()];
    header.extend(t.attributes.iter().map(col));
    if t.targets.is_some() {
        header.push("target".into());
    }
    if t.splits.is_some() {
        header.push("split".into());
    }
    header.push("postprocessed".into());
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(&header).map_err(|e| werr(&e))?;
    for i in 0..t.len() {
        let mut rec = vec![t.predictions[i].to_string()];
        rec.extend(t.attributes.iter().map(|a| a.groups[i].clone()));
        if let Some(y) = &t.targets {
            rec.push(y[i].to_string());
        }
        if let Some(s) = &t.splits {
            rec.push(s[i].clone());
        }
        rec.push(applied.postprocessed[i].to_string());
        w.write_record(&rec).map_err(|e| werr(&e))?;
    }
    let bytes = w.into_inner().map_err(|e| werr(&e))?;
    String::from_utf8(bytes).map_err(|e| werr(&e))
}
