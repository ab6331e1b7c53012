//! The training loop (hand-written, not burn's `Learner`), run directories and the final
//! evaluation.
//!
//! Per epoch `e` (0-based): the device RNG (dropout) is reseeded from `(run.seed, e)`, the
//! train split is cut into group-stratified minibatches seeded from `(run.seed, e)`, and each
//! batch takes one Adam/AdamW step on
//!
//! ```text
//! L = (1/T) sum_t loss_t  +  lambda * fairness_penalty(z, groups)
//! ```
//!
//! (`loss_t` = BCE-with-logits for binary tasks, MSE for regression tasks; the penalty is
//! skipped when `penalty.kind = "none"` or `lambda = 0`). The learning rate is a function of
//! the epoch only. Everything that changes between epochs is in the checkpoint, so a resumed
//! run replays the remaining epochs exactly.
//!
//! **Model selection**: after every epoch the model is evaluated on the validation split; the
//! best epoch is the one with the lowest `valid task loss + lambda * valid penalty` (the
//! validation objective; the earliest wins ties). The test split is evaluated once, at the
//! end, with the best epoch's weights.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};
use fairrep_data::spec::TaskKind;
use fairrep_data::{DataError, Dataset, StratifiedBatches, epoch_seed};
use fairrep_loss::fairness_penalty;
use fairrep_model::{FairModel, FairModelConfig};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::checkpoint::{self, BestEpoch, CheckpointError, Manifest};
use crate::config::{ConfigError, OptimConfig, OptimKind, PenaltyKind, TrainConfig};
use crate::data::{Encoding, LoadError, load_dataset};
use crate::device::select_device;
use crate::eval::{EvalError, PenaltyEval, SplitEval, evaluate, index_tensor, rows_tensor};
use crate::fsutil::{self, FsError};
use crate::plot::{Chart, Series, render};

/// Salt separating the dropout seeds from the batch seeds.
const DROPOUT_SALT: u64 = 0x0D20_9047_5EED_0001;
/// Seed of the validation / test penalty subsamples (fixed, so epochs are comparable).
const EVAL_SEED: u64 = 0xE7A1;
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CURVES_FILE: &str = "curves.svg";
pub const CONFIG_FILE: &str = "config.toml";

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("dataset `{dataset}`: cannot make minibatches: {source}")]
    Batches {
        dataset: String,
        #[source]
        source: Box<DataError>,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("cannot resume from `{}`: {message}", run_dir.display())]
    Resume { run_dir: PathBuf, message: String },
    #[error(
        "training diverged at epoch {epoch}: the training loss is {value}; try a lower optim.lr \
         or penalty.lambda"
    )]
    Diverged { epoch: usize, value: f64 },
}

/// What `fairrep train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// `--data-dir` (else `$FAIRREP_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// `--resume RUN_DIR`.
    pub resume: Option<PathBuf>,
}

/// Penalty diagnostics over the batches of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPenaltyDiagnostics {
    /// Whether every batch's solve converged (always true for MMD).
    pub all_converged: bool,
    pub max_n_iters: usize,
    pub max_marginal_error: f64,
    /// Batches in which some group had no member (its term skipped).
    pub batches_with_missing_groups: usize,
}

/// Mean training losses over the batches of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLosses {
    /// `task_loss + lambda * penalty`.
    pub loss: f64,
    pub task_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty: Option<f64>,
    pub tasks: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty_diagnostics: Option<TrainPenaltyDiagnostics>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train: TrainLosses,
    pub valid: SplitEval,
    /// The selection objective `valid.task_loss + lambda * valid.penalty.value`.
    pub objective: f64,
    pub seconds: f64,
}

/// A split's results in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SummarySplit {
    pub task_loss: f64,
    pub tasks: BTreeMap<String, crate::eval::TaskEval>,
    /// The penalty between the groups' representations (`null` without a penalty).
    pub penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty_diagnostics: Option<PenaltyEval>,
}

impl From<SplitEval> for SummarySplit {
    fn from(e: SplitEval) -> Self {
        Self {
            task_loss: e.task_loss,
            tasks: e.tasks,
            penalty: e.penalty.as_ref().map(|p| p.value),
            penalty_diagnostics: e.penalty,
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub test: SummarySplit,
    pub valid: SummarySplit,
    pub best_epoch: usize,
    pub epochs: usize,
    pub dataset: String,
    pub penalty_kind: PenaltyKind,
    pub lambda: f64,
    pub seed: u64,
    pub device: String,
    /// Wall time of this process.
    pub wall_seconds: f64,
    /// Training time over all sessions (a resumed run adds its sessions).
    pub train_seconds: f64,
    pub run_dir: PathBuf,
}

/// How a run ended.
#[derive(Debug)]
pub enum TrainOutcome {
    Finished(Box<Summary>),
    /// `run.stop_after_epoch` was reached; `--resume run_dir` continues.
    Stopped {
        epoch: usize,
        run_dir: PathBuf,
    },
}

/// UTC `YYYYmmdd-HHMMSS` of a time.
fn timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates a fresh run directory `OUT/NAME-sSEED-TIMESTAMP` (suffixed if it exists).
fn create_run_dir(cfg: &TrainConfig) -> Result<PathBuf, FsError> {
    let run = &cfg.file.run;
    let name = run.name.clone().unwrap_or_else(|| {
        cfg.source
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned())
    });
    let base = format!("{name}-s{}-{}", run.seed, timestamp(SystemTime::now()));
    fsutil::create_dir_all(&run.out_dir)?;
    for i in 1.. {
        let dir = if i == 1 {
            run.out_dir.join(&base)
        } else {
            run.out_dir.join(format!("{base}-{i}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FsError::new("cannot create directory", &dir, e)),
        }
    }
    unreachable!("some suffix is free")
}

fn build_optimizer(o: &OptimConfig) -> ModuleOptimizer {
    let clip = o.grad_clip.map(|c| GradientClippingConfig::Norm(c as f32));
    match o.kind {
        OptimKind::Adam => AdamConfig::new()
            .with_weight_decay(
                (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32)),
            )
            .with_grad_clipping(clip)
            .init(),
        OptimKind::Adamw => AdamWConfig::new()
            .with_weight_decay(o.weight_decay as f32)
            .with_grad_clipping(clip)
            .init(),
    }
}

/// Mean BCE-with-logits, `max(l, 0) - l y + log(1 + exp(-|l|))`.
///
/// # Shapes
/// - `logits`, `targets`: `[n, 1]`; output `[1]`.
pub(crate) fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let softplus_neg_abs = logits.clone().abs().neg().exp().log1p();
    (relu(logits.clone()) - logits * targets + softplus_neg_abs).mean()
}

/// Mean squared error. `[n, 1]`, `[n, 1]` -> `[1]`.
fn mse(predictions: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let diff = predictions - targets;
    (diff.clone() * diff).mean()
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

/// Training curves: losses, validation DP gaps, validation penalty.
fn curves(history: &[EpochRecord]) -> String {
    let x = |r: &EpochRecord| r.epoch as f64;
    let mut charts = vec![Chart {
        title: "loss".into(),
        x_label: "epoch".into(),
        series: vec![
            Series {
                label: "train (total)".into(),
                points: history.iter().map(|r| (x(r), r.train.loss)).collect(),
            },
            Series {
                label: "train (tasks)".into(),
                points: history.iter().map(|r| (x(r), r.train.task_loss)).collect(),
            },
            Series {
                label: "valid (tasks)".into(),
                points: history.iter().map(|r| (x(r), r.valid.task_loss)).collect(),
            },
        ],
    }];
    let tasks: Vec<&String> = history
        .first()
        .map(|r| r.valid.tasks.keys().collect())
        .unwrap_or_default();
    let dp: Vec<Series> = tasks
        .iter()
        .filter(|t| history[0].valid.tasks[**t].dp_gap.is_some())
        .take(8)
        .map(|t| Series {
            label: (*t).clone(),
            points: history
                .iter()
                .map(|r| (x(r), r.valid.tasks[*t].dp_gap.unwrap_or(f64::NAN)))
                .collect(),
        })
        .collect();
    if !dp.is_empty() {
        charts.push(Chart {
            title: "valid DP gap".into(),
            x_label: "epoch".into(),
            series: dp,
        });
    }
    if history.iter().any(|r| r.valid.penalty.is_some()) {
        charts.push(Chart {
            title: "valid penalty".into(),
            x_label: "epoch".into(),
            series: vec![Series {
                label: "penalty".into(),
                points: history
                    .iter()
                    .map(|r| (x(r), r.valid.penalty.as_ref().map_or(f64::NAN, |p| p.value)))
                    .collect(),
            }],
        });
    }
    render(&charts)
}

fn write_metrics_file(run_dir: &Path, history: &[EpochRecord]) -> Result<(), FsError> {
    let mut text = String::new();
    for record in history {
        text.push_str(&serde_json::to_string(record).expect("records serialise"));
        text.push('\n');
    }
    fsutil::write_atomic(&run_dir.join(METRICS_FILE), text.as_bytes())
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{seconds:.1}s")
    }
}

/// The one-line summary of an epoch logged on stderr.
fn epoch_line(record: &EpochRecord, epochs: usize, eta: f64) -> String {
    let mut line = format!(
        "epoch {}/{epochs}: train loss {:.4}",
        record.epoch, record.train.loss
    );
    if let Some(p) = record.train.penalty {
        line += &format!(" (tasks {:.4}, penalty {p:.4})", record.train.task_loss);
    }
    line += &format!(" | valid loss {:.4}", record.valid.task_loss);
    for (name, t) in record.valid.tasks.iter().take(4) {
        if let (Some(acc), Some(dp)) = (t.accuracy, t.dp_gap) {
            line += &format!(", {name} acc {acc:.4} dp {dp:.4}");
        }
    }
    if let Some(p) = &record.valid.penalty {
        line += &format!(", penalty {:.4}", p.value);
        if !p.converged {
            line += " (not converged)";
        }
    }
    line += &format!(
        " | lr {:.2e} | {} | ETA {}",
        record.lr,
        format_duration(record.seconds),
        format_duration(eta)
    );
    line
}

/// What a resumed run starts from.
struct ResumeState {
    run_dir: PathBuf,
    dir: PathBuf,
    manifest: Manifest,
}

fn read_resume(run_dir: &Path, cfg: &TrainConfig) -> Result<ResumeState, TrainError> {
    let dir = checkpoint::latest_dir(run_dir)?;
    let manifest = checkpoint::load_manifest(&dir)?;
    let resume_err = |message: String| TrainError::Resume {
        run_dir: run_dir.to_path_buf(),
        message,
    };
    if manifest.format != checkpoint::MANIFEST_FORMAT {
        return Err(resume_err(format!(
            "checkpoint format {} is not the supported {}",
            manifest.format,
            checkpoint::MANIFEST_FORMAT
        )));
    }
    let diffs = manifest.config.differences(&cfg.file);
    if !diffs.is_empty() {
        return Err(resume_err(format!(
            "the configuration does not match the checkpoint's ({}), key: checkpoint vs now: {}",
            dir.join(checkpoint::MANIFEST_FILE).display(),
            diffs.join("; ")
        )));
    }
    if manifest.burn_version != checkpoint::BURN_VERSION {
        warn!(
            "checkpoint written with burn {}, this is burn {}",
            manifest.burn_version,
            checkpoint::BURN_VERSION
        );
    }
    Ok(ResumeState {
        run_dir: run_dir.to_path_buf(),
        dir,
        manifest,
    })
}

/// The first place where two JSON values differ (numbers within a relative 1e-9, since JSON
/// round trips of floats may move the last bit), as `path: checkpoint X, data Y`.
fn json_difference(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (saved, now) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            ((a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1e-300))
                .then(|| format!("{path}: checkpoint {a}, data {b}"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| json_difference(x, y, &format!("{path}[{i}]"))),
        (Value::Object(a), Value::Object(b))
            if a.keys().collect::<Vec<_>>() == b.keys().collect::<Vec<_>>() =>
        {
            a.iter()
                .find_map(|(k, x)| json_difference(x, &b[k], &format!("{path}.{k}")))
        }
        (a, b) if a == b => None,
        (a, b) => {
            let show = |v: &Value| {
                let text = v.to_string();
                if text.len() > 200 {
                    format!("{}...", &text[..200])
                } else {
                    text
                }
            };
            Some(format!("{path}: checkpoint {}, data {}", show(a), show(b)))
        }
    }
}

/// Runs a training session (fresh or resumed) to its end, or to `run.stop_after_epoch`.
pub fn train(opts: TrainOptions) -> Result<TrainOutcome, TrainError> {
    let wall = Instant::now();
    let cfg = opts.config;
    let seed = cfg.seed();
    let selected = select_device(cfg.file.run.device);
    info!("device: {}", selected.description);
    let device = selected.device.clone();
    let ad = device.clone().autodiff();

    let resume = match &opts.resume {
        Some(dir) => Some(read_resume(dir, &cfg)?),
        None => None,
    };

    // Data. A resumed run reloads it exactly as the first session did (the preprocessing is
    // refitted on the same train split, hence bit-identical) and checks it against the
    // checkpoint's schema and statistics.
    let dataset: Dataset = load_dataset(&cfg.data, opts.data_dir.as_deref(), Encoding::Fit)?;
    if let Some(r) = &resume {
        let schema = serde_json::to_value(&dataset.schema).expect("schemas serialise");
        let saved = serde_json::to_value(&r.manifest.schema).expect("schemas serialise");
        let prep = serde_json::to_value(&dataset.preprocessing).expect("statistics serialise");
        let saved_prep =
            serde_json::to_value(&r.manifest.preprocessing).expect("statistics serialise");
        let mismatch = if let Some(path) = json_difference(&saved, &schema, "schema") {
            Some(path)
        } else {
            json_difference(&saved_prep, &prep, "preprocessing")
        };
        if let Some(what) = mismatch {
            return Err(TrainError::Resume {
                run_dir: r.run_dir.clone(),
                message: format!("the data does not match the checkpoint's: {what}"),
            });
        }
    }
    let n_groups = dataset.n_groups();
    let task_names = dataset.task_names();
    info!(
        "dataset {}: {} train / {} valid / {} test rows, {} features, groups {:?}, tasks {:?}",
        dataset.name,
        dataset.train.n,
        dataset.valid.n,
        dataset.test.n,
        dataset.n_features(),
        dataset.schema.groups,
        task_names
    );

    // Model and optimiser.
    let model_cfg: FairModelConfig = cfg.model.model_config(dataset.n_features(), &task_names);
    ad.seed(seed);
    let mut model = model_cfg.init(&ad);
    let mut optim = build_optimizer(&cfg.optim);
    info!("model: {} parameters", model.num_params());

    let (run_dir, mut history, mut best, start_epoch, mut train_seconds) = match resume {
        Some(r) => {
            model = checkpoint::load_model(&r.dir, model)?;
            optim = checkpoint::load_optimizer(&r.dir, optim)?;
            write_metrics_file(&r.run_dir, &r.manifest.history)?;
            info!(
                "resuming {} after epoch {} (checkpoint {})",
                r.run_dir.display(),
                r.manifest.epoch,
                r.dir.display()
            );
            (
                r.run_dir,
                r.manifest.history,
                r.manifest.best,
                r.manifest.epoch,
                r.manifest.train_seconds,
            )
        }
        None => {
            let dir = create_run_dir(&cfg)?;
            fsutil::write_atomic(&dir.join(CONFIG_FILE), cfg.file.to_toml().as_bytes())?;
            (dir, Vec::new(), None, 0, 0.0)
        }
    };
    info!("run directory: {}", run_dir.display());

    let epochs = cfg.optim.epochs;
    let lambda = cfg.penalty.lambda;
    let train_divergence = cfg.penalty.divergence.as_ref().filter(|_| lambda > 0.0);
    let batcher = StratifiedBatches::new(&dataset.train.groups, n_groups, cfg.data.batch_size)
        .map_err(|source| TrainError::Batches {
            dataset: dataset.name.clone(),
            source: Box::new(source),
        })?;
    let n_train = dataset.train.n;
    let x_train = rows_tensor(&dataset.train, 0..n_train, &ad);
    let y_train: Vec<Tensor<2>> = dataset
        .train
        .targets
        .iter()
        .map(|t| Tensor::from_data(TensorData::new(t.clone(), [n_train, 1]), &ad))
        .collect();
    let kinds: Vec<TaskKind> = dataset.schema.tasks.iter().map(|t| t.kind).collect();
    let n_tasks = kinds.len();

    let manifest_for = |epoch: usize,
                        history: &[EpochRecord],
                        best: &Option<BestEpoch>,
                        train_seconds: f64| Manifest {
        format: checkpoint::MANIFEST_FORMAT,
        fairrep_version: env!("CARGO_PKG_VERSION").into(),
        burn_version: checkpoint::BURN_VERSION.into(),
        epoch,
        seed,
        config: cfg.file.clone(),
        schema: dataset.schema.clone(),
        preprocessing: dataset.preprocessing.clone(),
        history: history.to_vec(),
        best: best.clone(),
        device: selected.description.clone(),
        train_seconds,
    };

    let session_start = Instant::now();
    for epoch in start_epoch..epochs {
        let number = epoch + 1;
        let t0 = Instant::now();
        let lr = cfg.optim.lr_at(epoch);
        ad.seed(epoch_seed(seed ^ DROPOUT_SALT, epoch as u64));
        let batches = batcher.epoch(epoch_seed(seed, epoch as u64));
        let n_batches = batches.len();

        let mut loss_sum: Option<Tensor<1>> = None;
        let mut task_sums: Vec<Option<Tensor<1>>> = vec![None; n_tasks];
        let mut penalty_sum: Option<Tensor<1>> = None;
        let mut diagnostics = TrainPenaltyDiagnostics {
            all_converged: true,
            max_n_iters: 0,
            max_marginal_error: 0.0,
            batches_with_missing_groups: 0,
        };
        let add = |acc: &mut Option<Tensor<1>>, value: &Tensor<1>| {
            let value = value.clone().detach();
            *acc = Some(match acc.take() {
                Some(a) => a + value,
                None => value,
            });
        };

        for (b, idx) in batches.iter().enumerate() {
            let index = index_tensor(idx, &ad);
            let out = model.forward(x_train.clone().select(0, index.clone()));
            let mut task_loss: Option<Tensor<1>> = None;
            for (t, logits) in out.logits.into_iter().enumerate() {
                let targets = y_train[t].clone().select(0, index.clone());
                let loss_t = match kinds[t] {
                    TaskKind::Binary => bce_with_logits(logits, targets),
                    TaskKind::Regression => mse(logits, targets),
                };
                add(&mut task_sums[t], &loss_t);
                task_loss = Some(match task_loss {
                    Some(acc) => acc + loss_t,
                    None => loss_t,
                });
            }
            let task_loss = task_loss.expect("at least one task") / n_tasks as f64;
            let mut loss = task_loss;
            if let Some(divergence) = train_divergence {
                let groups: Vec<u32> = idx.iter().map(|&i| dataset.train.groups[i]).collect();
                let penalty = fairness_penalty(out.latent, &groups, n_groups, divergence);
                diagnostics.all_converged &= penalty.converged;
                diagnostics.max_n_iters = diagnostics.max_n_iters.max(penalty.n_iters);
                diagnostics.max_marginal_error =
                    diagnostics.max_marginal_error.max(penalty.marginal_error);
                if !penalty.missing_groups.is_empty() {
                    diagnostics.batches_with_missing_groups += 1;
                }
                add(&mut penalty_sum, &penalty.value);
                loss = loss + penalty.value * lambda;
            }
            add(&mut loss_sum, &loss);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            if (b + 1) % 50 == 0 {
                debug!("epoch {number}: batch {}/{n_batches}", b + 1);
            }
        }

        let mean = |acc: Option<Tensor<1>>| acc.map_or(f64::NAN, scalar) / n_batches as f64;
        let train_loss = mean(loss_sum);
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch: number,
                value: train_loss,
            });
        }
        let task_means: Vec<f64> = task_sums.into_iter().map(mean).collect();
        let train = TrainLosses {
            loss: train_loss,
            task_loss: task_means.iter().sum::<f64>() / n_tasks as f64,
            penalty: penalty_sum.map(|p| scalar(p) / n_batches as f64),
            tasks: task_names.iter().cloned().zip(task_means).collect(),
            penalty_diagnostics: train_divergence.map(|_| diagnostics.clone()),
        };

        let valid = evaluate(
            &model.valid(),
            &dataset.valid,
            "valid",
            &dataset.schema,
            &cfg.penalty,
            &device,
            EVAL_SEED,
        )?;
        let objective = valid.objective(lambda);
        let seconds = t0.elapsed().as_secs_f64();
        train_seconds += seconds;
        let record = EpochRecord {
            epoch: number,
            lr,
            train,
            valid,
            objective,
            seconds,
        };
        fsutil::append_line(
            &run_dir.join(METRICS_FILE),
            &serde_json::to_string(&record).expect("records serialise"),
        )?;
        let per_epoch = session_start.elapsed().as_secs_f64() / (number - start_epoch) as f64;
        info!(
            "{}",
            epoch_line(&record, epochs, per_epoch * (epochs - number) as f64)
        );
        history.push(record);
        let _ = fsutil::write_atomic(&run_dir.join(CURVES_FILE), curves(&history).as_bytes());

        let is_best = best.as_ref().is_none_or(|b| objective < b.objective);
        if is_best {
            best = Some(BestEpoch {
                epoch: number,
                objective,
                checkpoint: checkpoint::checkpoint_name(number),
            });
        }
        let every = cfg.file.run.checkpoint_every;
        let stop = cfg.file.run.stop_after_epoch == Some(number);
        if is_best || stop || number == epochs || (every > 0 && number % every == 0) {
            let manifest = manifest_for(number, &history, &best, train_seconds);
            let name = checkpoint::save(&run_dir, &manifest, &model, &optim, is_best)?;
            debug!("checkpoint {name} written");
        }
        if stop {
            info!(
                "stopping after epoch {number} (run.stop_after_epoch); continue with --resume {}",
                run_dir.display()
            );
            return Ok(TrainOutcome::Stopped {
                epoch: number,
                run_dir,
            });
        }
    }
    let _ = fsutil::write_atomic(&run_dir.join(CURVES_FILE), curves(&history).as_bytes());

    // Test, with the best epoch's weights.
    let best = best.ok_or_else(|| TrainError::Resume {
        run_dir: run_dir.clone(),
        message: "the run has no epoch to evaluate".into(),
    })?;
    let best_dir = checkpoint::checkpoint_dir(&run_dir, &best.checkpoint);
    let best_model: FairModel = checkpoint::load_model(&best_dir, model_cfg.init(&device))?;
    let best_model = best_model.valid();
    let test = evaluate(
        &best_model,
        &dataset.test,
        "test",
        &dataset.schema,
        &cfg.penalty,
        &device,
        EVAL_SEED,
    )?;
    let best_valid = history
        .iter()
        .find(|r| r.epoch == best.epoch)
        .map(|r| r.valid.clone())
        .expect("the best epoch is in the history");
    let summary = Summary {
        test: test.into(),
        valid: best_valid.into(),
        best_epoch: best.epoch,
        epochs,
        dataset: dataset.name.clone(),
        penalty_kind: cfg.file.penalty.kind,
        lambda,
        seed,
        device: selected.description.clone(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        train_seconds,
        run_dir: run_dir.clone(),
    };
    let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
    fsutil::write_atomic(&run_dir.join(SUMMARY_FILE), format!("{json}\n").as_bytes())?;
    info!(
        "done: best epoch {} of {epochs}; summary in {}",
        best.epoch,
        run_dir.join(SUMMARY_FILE).display()
    );
    Ok(TrainOutcome::Finished(Box::new(summary)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_661); // 2000-02-29
        assert_eq!(timestamp(t), "20000229-010101");
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
    }

    #[test]
    fn device_bce_matches_host_bce() {
        let device = Device::flex();
        let logits = [2.0f32, -3.0, 0.0, 40.0];
        let targets = [1.0f32, 1.0, 0.0, 0.0];
        let l = Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [4, 1]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(targets.to_vec(), [4, 1]), &device);
        let got = scalar(bce_with_logits(l, y));
        let want = crate::eval::bce_with_logits_host(&logits, &targets);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn json_difference_tolerates_last_bit_float_changes_only() {
        use serde_json::json;
        let a = json!({"mean": [0.1, 2.0], "name": "age"});
        let b = json!({"mean": [0.1 + 1e-17, 2.0], "name": "age"});
        assert_eq!(json_difference(&a, &b, "p"), None);
        let c = json!({"mean": [0.1, 2.5], "name": "age"});
        assert_eq!(
            json_difference(&a, &c, "p").as_deref(),
            Some("p.mean[1]: checkpoint 2, data 2.5")
        );
        let d = json!({"mean": [0.1, 2.0], "name": "sex"});
        assert!(json_difference(&a, &d, "p").unwrap().contains("p.name"));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(5.04), "5.0s");
        assert_eq!(format_duration(125.0), "2m05s");
        assert_eq!(format_duration(7260.0), "2h01m");
    }
}
