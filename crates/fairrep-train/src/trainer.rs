//! The training loop (hand-written, not burn's `Learner`), as named steps: open the session
//! (device, resumed state, data, model, run directory), train each epoch, validate it, record
//! it (metrics, curves, checkpoint), and finish (test split with the best weights, summary).
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
//! skipped when `penalty.kind = "none"` or `lambda = 0`; with `penalty.condition = "positive"`
//! it is computed on the batch's rows whose label of `penalty.task` is 1, and the batches are
//! stratified by group and that label). The learning rate is a function of
//! the epoch only. Everything that changes between epochs is in the checkpoint, so a resumed
//! run replays the remaining epochs exactly. A step whose loss is not finite stops the run with
//! an error naming the epoch and step; the last checkpoint is left as it was.
//!
//! **Model selection**: after every epoch the model is evaluated on the validation split; the
//! best epoch is the one with the lowest `valid task loss + lambda * valid penalty` (the
//! validation objective; the earliest wins ties). The test split is evaluated once, at the
//! end, with the best epoch's weights.
//!
//! **Fairness target** (`penalty.target`): lambda is adapted after every epoch by the dual step
//! [`next_lambda`] from the constrained metric on validation ([`constraint_value`]); the best
//! epoch is then the lowest validation task loss among the epochs meeting the target.
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use fairrep_data::fs::{self as fsutil, FsError};
use fairrep_data::spec::TaskKind;
use fairrep_data::{DataError, Dataset, Encoding, StratifiedBatches, epoch_seed};
use fairrep_loss::LossError;
use fairrep_model::{DropoutMasks, FairModel, FairModelConfig};
use tracing::{debug, info, warn};

use crate::checkpoint::{self, CheckpointError, RunLock};
use crate::config::{ConfigError, OptimConfig, OptimKind, Target, TargetMetric, TrainConfig};
use crate::data::{LoadError, load_dataset};
use crate::device::{DeviceError, SelectedDevice, select_device};
use crate::eval::{EvalError, SplitEval, evaluate, rows_tensor};
use crate::losses::{bce_with_logits, mse};
use crate::plot::training_curves;
use crate::raster;
use crate::records::{
    BURN_VERSION, BestEpoch, CONFIG_FILE, CURVES_FILE, ConstraintRecord, EpochRecord, EpochTiming,
    MANIFEST_FORMAT, Manifest, SUMMARY_FILE, Summary, TrainLosses, TrainPenaltyDiagnostics,
};
use crate::run_dir::{append_metrics, create_run_dir, write_metrics_file};

/// Salt separating the dropout seeds from the batch seeds.
const DROPOUT_SALT: u64 = 0x0D20_9047_5EED_0001;
/// Seed of the validation / test penalty subsamples (fixed, so epochs are comparable).
const EVAL_SEED: u64 = 0xE7A1;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The data.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Minibatches cannot be made.
    #[error("dataset `{dataset}`: cannot make minibatches: {source}")]
    Batches {
        /// The dataset.
        dataset: String,
        /// Why.
        #[source]
        source: Box<DataError>,
    },
    /// A checkpoint cannot be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A run-directory file cannot be written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The checkpoint does not fit this configuration or data.
    #[error("cannot resume from `{}`: {message}", run_dir.display())]
    Resume {
        /// The run directory.
        run_dir: PathBuf,
        /// What differs.
        message: String,
    },
    /// A training step's loss or penalty is not finite.
    #[error(
        "training diverged at epoch {epoch}, step {step} of {steps}: {what}; the run directory \
         keeps its last checkpoint{last}; try a lower optim.lr or penalty.lambda"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step inside the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// What is not finite.
        what: String,
        /// ` (epoch N)`, or nothing before the first checkpoint.
        last: String,
    },
    /// An epoch's validation loss or penalty is not finite.
    #[error(
        "training diverged at epoch {epoch}: the validation {what} is {value}; the run directory \
         keeps its last checkpoint{last}; try a lower optim.lr or penalty.lambda, or check the \
         penalty's settings (penalty.sinkhorn.eps / blur, penalty.mmd.bandwidths)"
    )]
    ValidationNotFinite {
        /// 1-based epoch.
        epoch: usize,
        /// `task loss` or `penalty`.
        what: &'static str,
        /// The value found.
        value: f64,
        /// ` (epoch N)`, or nothing before the first checkpoint.
        last: String,
    },
    /// The run ended without any epoch to evaluate.
    #[error("run `{}` has no epoch to evaluate", run_dir.display())]
    NoEpoch {
        /// The run directory.
        run_dir: PathBuf,
    },
}

/// What `fairrep train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The validated configuration.
    pub config: TrainConfig,
    /// `--data-dir` (else `$FAIRREP_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// `--resume RUN_DIR`.
    pub resume: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug)]
pub enum TrainOutcome {
    /// Every epoch ran; the summary.
    Finished(Box<Summary>),
    /// `run.stop_after_epoch` was reached; `--resume run_dir` continues.
    Stopped {
        /// The last epoch run.
        epoch: usize,
        /// The run directory.
        run_dir: PathBuf,
    },
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

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

/// What a resumed run starts from.
struct ResumeState {
    run_dir: PathBuf,
    dir: PathBuf,
    manifest: Manifest,
    lock: RunLock,
}

/// Step 1 of a resume: lock the run, repair what a killed session left
/// ([`checkpoint::reconcile`]), check the checkpoint against the configuration.
fn open_resume(run_dir: &Path, cfg: &TrainConfig) -> Result<ResumeState, TrainError> {
    let lock = RunLock::acquire(run_dir)?;
    let (dir, manifest) = checkpoint::reconcile(run_dir)?;
    let resume_err = |message: String| TrainError::Resume {
        run_dir: run_dir.to_path_buf(),
        message,
    };
    if manifest.format != MANIFEST_FORMAT {
        return Err(resume_err(format!(
            "checkpoint format {} is not the supported {MANIFEST_FORMAT}",
            manifest.format
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
    if manifest.burn_version != BURN_VERSION {
        warn!(
            "checkpoint written with burn {}, this is burn {BURN_VERSION}",
            manifest.burn_version
        );
    }
    Ok(ResumeState {
        run_dir: run_dir.to_path_buf(),
        dir,
        manifest,
        lock,
    })
}

/// A resumed run's data must be what the checkpoint was trained on: schema and statistics.
fn check_resumed_data(dataset: &Dataset, r: &ResumeState) -> Result<(), TrainError> {
    let to_json = |v: &dyn erased::Json| v.json();
    let schema = to_json(&dataset.schema);
    let saved = to_json(&r.manifest.schema);
    let prep = to_json(&dataset.preprocessing);
    let saved_prep = to_json(&r.manifest.preprocessing);
    let mismatch = json_difference(&saved, &schema, "schema")
        .or_else(|| json_difference(&saved_prep, &prep, "preprocessing"));
    match mismatch {
        Some(what) => Err(TrainError::Resume {
            run_dir: r.run_dir.clone(),
            message: format!("the data does not match the checkpoint's: {what}"),
        }),
        None => Ok(()),
    }
}

/// Serialising the schema and statistics to JSON values for [`json_difference`].
mod erased {
    pub(super) trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("the schema and statistics serialise")
        }
    }
}

/// Everything an open session trains with.
struct Session {
    cfg: TrainConfig,
    selected: SelectedDevice,
    dataset: Dataset,
    model_cfg: FairModelConfig,
    model: FairModel,
    optim: ModuleOptimizer,
    run_dir: PathBuf,
    history: Vec<EpochRecord>,
    best: Option<BestEpoch>,
    /// The penalty weight of the next epoch (adapted after every epoch with `penalty.target`).
    lambda: f64,
    start_epoch: usize,
    train_seconds: f64,
    run_id: String,
    /// The task whose positives the penalty is computed on (`penalty.condition`).
    condition_task: Option<usize>,
    _lock: RunLock,
}

impl Session {
    /// Step 1: device, resumed state, data, model and optimiser, run directory.
    fn open(opts: TrainOptions) -> Result<Self, TrainError> {
        let cfg = opts.config;
        for note in &cfg.inert {
            warn!("{note}");
        }
        let seed = cfg.seed();
        let selected = select_device(cfg.file.run.device)?;
        info!("device: {}", selected.description);
        let ad = selected.device.clone().autodiff();
        let resume = match &opts.resume {
            Some(dir) => Some(open_resume(dir, &cfg)?),
            None => None,
        };
        // A resumed run reloads the data exactly as the first session did (the preprocessing
        // is refitted on the same train split, hence bit-identical) and checks it against the
        // checkpoint's schema and statistics.
        let dataset = load_dataset(&cfg.data, opts.data_dir.as_deref(), Encoding::Fit)?;
        if let Some(r) = &resume {
            check_resumed_data(&dataset, r)?;
        }
        info!(
            "dataset {}: {} train / {} valid / {} test rows, {} features, groups {:?}, tasks {:?}",
            dataset.name,
            dataset.train.len(),
            dataset.valid.len(),
            dataset.test.len(),
            dataset.n_features(),
            dataset.schema.groups,
            dataset.task_names()
        );
        let model_cfg =
            cfg.model
                .model_config(dataset.n_features(), &dataset.task_names(), &cfg.source)?;
        let condition_task = cfg
            .penalty
            .condition_task(&dataset.schema.tasks, &cfg.source)?;
        if let Some(t) = condition_task {
            let n_strata = batch_strata(&dataset, condition_task).n_strata;
            if cfg.data.batch_size < n_strata {
                return Err(TrainError::Config(ConfigError::Invalid {
                    path: cfg.source.clone(),
                    key: "data.batch_size".into(),
                    message: format!(
                        "with penalty.condition = \"positive\" batches are stratified by group \
                         and label of `{}`, {n_strata} non-empty cells, so a batch needs at \
                         least {n_strata} rows, found {}",
                        dataset.schema.tasks[t].name, cfg.data.batch_size
                    ),
                }));
            }
        }
        if let Some(target) = &cfg.penalty.target
            && target.metric == TargetMetric::DpGap
        {
            let binary: Vec<&str> = dataset
                .schema
                .tasks
                .iter()
                .filter(|t| t.kind == TaskKind::Binary)
                .map(|t| t.name.as_str())
                .collect();
            let problem = match &target.task {
                Some(task) if !binary.contains(&task.as_str()) => Some(format!(
                    "task = `{task}` is not a binary task trained on; those are {binary:?}"
                )),
                None if binary.is_empty() => {
                    Some("metric = \"dp_gap\" needs a binary task; none is trained on".into())
                }
                _ => None,
            };
            if let Some(message) = problem {
                return Err(TrainError::Config(ConfigError::Invalid {
                    path: cfg.source.clone(),
                    key: "penalty.target".into(),
                    message,
                }));
            }
        }
        // A batch never holds more than the training split.
        let batch_rows = cfg.data.batch_size.min(dataset.train.len().max(1));
        check_model_memory(&model_cfg, batch_rows, &cfg.source)?;
        ad.seed(seed);
        let mut model = model_cfg.init(&ad);
        let mut optim = build_optimizer(&cfg.optim);
        info!("model: {} parameters", model.num_params());
        let session = match resume {
            Some(r) => {
                model = checkpoint::load_model(&r.dir, &r.manifest, model)?;
                optim = checkpoint::load_optimizer(&r.dir, &r.manifest, optim)?;
                write_metrics_file(&r.run_dir, &r.manifest.history)?;
                info!(
                    "resuming {} after epoch {} (checkpoint {})",
                    r.run_dir.display(),
                    r.manifest.epoch,
                    r.dir.display()
                );
                let run_id = if r.manifest.run_id.is_empty() {
                    r.run_dir.to_string_lossy().into_owned()
                } else {
                    r.manifest.run_id.clone()
                };
                let lambda = resumed_lambda(&cfg, &r.manifest.history);
                Session {
                    lambda,
                    run_dir: r.run_dir,
                    history: r.manifest.history,
                    best: r.manifest.best,
                    start_epoch: r.manifest.epoch,
                    train_seconds: r.manifest.train_seconds,
                    run_id,
                    condition_task,
                    _lock: r.lock,
                    cfg,
                    selected,
                    dataset,
                    model_cfg,
                    model,
                    optim,
                }
            }
            None => {
                let dir = create_run_dir(&cfg)?;
                let lock = RunLock::acquire(&dir)?;
                fsutil::write_atomic(&dir.join(CONFIG_FILE), cfg.file.to_toml().as_bytes())?;
                let run_id = format!(
                    "{}-{}",
                    dir.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    std::process::id()
                );
                Session {
                    lambda: cfg.penalty.lambda,
                    run_dir: dir,
                    history: Vec::new(),
                    best: None,
                    start_epoch: 0,
                    train_seconds: 0.0,
                    run_id,
                    condition_task,
                    _lock: lock,
                    cfg,
                    selected,
                    dataset,
                    model_cfg,
                    model,
                    optim,
                }
            }
        };
        info!("run directory: {}", session.run_dir.display());
        Ok(session)
    }

    fn manifest(&self, epoch: usize) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            fairrep_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: BURN_VERSION.into(),
            run_id: self.run_id.clone(),
            epoch,
            seed: self.cfg.seed(),
            config: self.cfg.file.clone(),
            schema: self.dataset.schema.clone(),
            preprocessing: self.dataset.preprocessing.clone(),
            history: self.history.clone(),
            best: self.best.clone(),
            device: self.selected.description.clone(),
            train_seconds: self.train_seconds,
            checksums: None,
        }
    }

    /// The epoch of the last checkpoint, for error messages.
    fn last_checkpoint(&self) -> String {
        self.history
            .last()
            .map_or_else(String::new, |r| format!(" (epoch {})", r.epoch))
    }

    /// Step 2: one epoch of minibatch steps; a loss or penalty that is not finite stops it.
    fn train_epoch(
        &mut self,
        epoch: usize,
        batcher: &StratifiedBatches,
        x_train: &Tensor<2>,
        y_train: &[Tensor<2>],
    ) -> Result<(TrainLosses, EpochTiming), TrainError> {
        let number = epoch + 1;
        let ad = self.selected.device.clone().autodiff();
        let seed = self.cfg.seed();
        let lr = self.cfg.optim.lr_at(epoch);
        let mut dropout = DropoutMasks::new(epoch_seed(seed ^ DROPOUT_SALT, epoch as u64));
        let batches = batcher.epoch(epoch_seed(seed, epoch as u64));
        let n_batches = batches.len();
        let kinds: Vec<TaskKind> = self.dataset.schema.tasks.iter().map(|t| t.kind).collect();
        let n_tasks = kinds.len();
        let lambda = self.lambda;
        let train_divergence = self.cfg.penalty.trained().cloned();
        let n_attribute_groups: Vec<usize> = self
            .dataset
            .schema
            .attributes
            .iter()
            .map(|a| a.groups.len())
            .collect();
        let mut loss_sum = 0.0;
        let mut task_sums: Vec<Option<Tensor<1>>> = vec![None; n_tasks];
        let mut penalty_sum: Option<Tensor<1>> = None;
        let mut diagnostics = TrainPenaltyDiagnostics {
            all_converged: true,
            batches_not_converged: 0,
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
        let diverged = |step: usize, what: String, last: String| TrainError::Diverged {
            epoch: number,
            step,
            steps: n_batches,
            what,
            last,
        };
        let mut timing = EpochTiming::default();
        let loop_start = Instant::now();
        // Seconds since `*mark`, moving the mark to now.
        let lap = |mark: &mut Instant| {
            let now = Instant::now();
            let seconds = (now - *mark).as_secs_f64();
            *mark = now;
            seconds
        };
        for (b, idx) in batches.iter().enumerate() {
            let mut mark = Instant::now();
            let index = crate::eval::index_tensor(idx, &ad);
            let x = x_train.clone().select(0, index.clone());
            let targets: Vec<Tensor<2>> = y_train
                .iter()
                .map(|y| y.clone().select(0, index.clone()))
                .collect();
            timing.batches += lap(&mut mark);
            let out = self.model.forward_train(x, &mut dropout);
            let mut task_loss: Option<Tensor<1>> = None;
            for ((t, logits), targets) in out.logits.into_iter().enumerate().zip(targets) {
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
            let mut loss = task_loss.expect("at least one task") / n_tasks as f64;
            timing.forward += lap(&mut mark);
            if let Some(divergence) = &train_divergence {
                // With `penalty.condition = "positive"`, only the batch's positives of the
                // conditioning task enter the penalty.
                let kept: Vec<usize> = match self.condition_task {
                    None => (0..idx.len()).collect(),
                    Some(t) => {
                        let labels = &self.dataset.train.targets[t];
                        (0..idx.len()).filter(|&k| labels[idx[k]] == 1.0).collect()
                    }
                };
                let groups: Vec<u32> = kept
                    .iter()
                    .map(|&k| self.dataset.train.groups[idx[k]])
                    .collect();
                if kept.len() < 2 {
                    // Fewer than two positives: no pair of groups to compare.
                    diagnostics.batches_with_missing_groups += 1;
                } else {
                    let latent = if kept.len() == idx.len() {
                        out.latent
                    } else {
                        out.latent.select(0, crate::eval::index_tensor(&kept, &ad))
                    };
                    // With several attributes, each attribute's ids of the same rows.
                    let attributes: Vec<Vec<u32>> = self
                        .dataset
                        .train
                        .attributes
                        .iter()
                        .map(|ids| kept.iter().map(|&k| ids[idx[k]]).collect())
                        .collect();
                    let penalty = crate::eval::combined_penalty(
                        latent,
                        &groups,
                        self.dataset.n_groups(),
                        &attributes,
                        &n_attribute_groups,
                        self.cfg.penalty.mode,
                        divergence,
                    )
                    .map_err(|e: LossError| {
                        diverged(
                            b + 1,
                            format!("the penalty failed: {e}"),
                            self.last_checkpoint(),
                        )
                    })?
                    .output;
                    diagnostics.all_converged &= penalty.converged;
                    diagnostics.batches_not_converged += usize::from(!penalty.converged);
                    diagnostics.max_n_iters = diagnostics.max_n_iters.max(penalty.n_iters);
                    diagnostics.max_marginal_error =
                        diagnostics.max_marginal_error.max(penalty.marginal_error);
                    if !penalty.missing_groups.is_empty() {
                        diagnostics.batches_with_missing_groups += 1;
                    }
                    add(&mut penalty_sum, &penalty.value);
                    loss = loss + penalty.value * lambda;
                }
                timing.penalty += lap(&mut mark);
            }
            let value = scalar(loss.clone().inner());
            timing.loss_read += lap(&mut mark);
            if !value.is_finite() {
                return Err(diverged(
                    b + 1,
                    format!("the training loss is {value}"),
                    self.last_checkpoint(),
                ));
            }
            loss_sum += value;
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            timing.backward += lap(&mut mark);
            self.model = self.optim.step(lr, self.model.clone(), grads);
            timing.optimizer += lap(&mut mark);
            if (b + 1) % 50 == 0 {
                debug!("epoch {number}: batch {}/{n_batches}", b + 1);
            }
        }
        timing.train = loop_start.elapsed().as_secs_f64();
        let mean = |acc: Option<Tensor<1>>| acc.map_or(f64::NAN, scalar) / n_batches as f64;
        let task_means: Vec<f64> = task_sums.into_iter().map(mean).collect();
        if let Some(fairrep_loss::Divergence::Sinkhorn(s)) = &train_divergence
            && !diagnostics.all_converged
        {
            warn!(
                "epoch {number}: the Sinkhorn penalty did not converge in {} of {n_batches} \
                 batches (largest marginal error {:.2e} > tolerance {:.0e} after {} \
                 iterations); raise penalty.sinkhorn.max_iters or eps",
                diagnostics.batches_not_converged,
                diagnostics.max_marginal_error,
                s.tolerance,
                diagnostics.max_n_iters
            );
        }
        let losses = TrainLosses {
            loss: loss_sum / n_batches as f64,
            task_loss: task_means.iter().sum::<f64>() / n_tasks as f64,
            penalty: penalty_sum.map(|p| scalar(p) / n_batches as f64),
            tasks: self
                .dataset
                .task_names()
                .into_iter()
                .zip(task_means)
                .collect(),
            penalty_diagnostics: train_divergence.map(|_| diagnostics),
        };
        Ok((losses, timing))
    }

    /// Step 3 and 4: validate the epoch, append its record, redraw the curves, move the best
    /// epoch and write a checkpoint when one is due. Returns whether the run stops here.
    fn record_epoch(
        &mut self,
        epoch: usize,
        (train, mut timing): (TrainLosses, EpochTiming),
        (started, cpu_start): (Instant, Option<f64>),
        session_start: Instant,
    ) -> Result<bool, TrainError> {
        let number = epoch + 1;
        let epochs = self.cfg.optim.epochs;
        let valid_start = Instant::now();
        let valid_cpu_start = process_cpu_seconds();
        let valid = evaluate(
            &self.model.valid(),
            &self.dataset.valid,
            "valid",
            &self.dataset.schema,
            &self.cfg.penalty,
            &self.selected.device,
            EVAL_SEED,
        )?;
        timing.valid = valid_start.elapsed().as_secs_f64();
        let valid_cpu_end = process_cpu_seconds();
        timing.cpu_valid = valid_cpu_start
            .zip(valid_cpu_end)
            .map(|(start, end)| end - start);
        let objective = valid.objective(self.lambda);
        let penalty = valid.penalty.as_ref().map_or(0.0, |p| p.value);
        if let Some((what, value)) = [("task loss", valid.task_loss), ("penalty", penalty)]
            .into_iter()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(TrainError::ValidationNotFinite {
                epoch: number,
                what,
                value,
                last: self.last_checkpoint(),
            });
        }
        let constraint = match &self.cfg.penalty.target {
            Some(target) => {
                let value = constraint_value(&valid, target).map_err(|message| {
                    TrainError::Config(ConfigError::Invalid {
                        path: self.cfg.source.clone(),
                        key: "penalty.target".into(),
                        message,
                    })
                })?;
                Some(ConstraintRecord {
                    value,
                    met: value <= target.value,
                })
            }
            None => None,
        };
        let seconds = started.elapsed().as_secs_f64();
        timing.cpu = cpu_start.zip(valid_cpu_end).map(|(start, end)| end - start);
        self.train_seconds += seconds;
        let record = EpochRecord {
            epoch: number,
            lr: self.cfg.optim.lr_at(epoch),
            train,
            valid,
            objective,
            seconds,
            lambda: self.cfg.penalty.target.as_ref().map(|_| self.lambda),
            constraint,
            timing: Some(timing),
        };
        let writes = Instant::now();
        append_metrics(&self.run_dir, &record)?;
        let per_epoch = session_start.elapsed().as_secs_f64() / (number - self.start_epoch) as f64;
        info!(
            "{}",
            epoch_line(&record, epochs, per_epoch * (epochs - number) as f64)
        );
        // With a target: the feasible epochs first, by validation task loss; the others by how
        // far they are from the target.
        let (rank, selection) = match &record.constraint {
            Some(c) if c.met => (0, record.valid.task_loss),
            Some(c) => (1, c.value),
            None => (0, objective),
        };
        let best_rank = |b: &BestEpoch| {
            self.history
                .iter()
                .find(|r| r.epoch == b.epoch)
                .and_then(|r| r.constraint.as_ref())
                .map_or(0, |c| usize::from(!c.met))
        };
        let is_best = self
            .best
            .as_ref()
            .is_none_or(|b| (rank, selection) < (best_rank(b), b.objective));
        if let (Some(target), Some(c)) = (&self.cfg.penalty.target, &record.constraint) {
            let next = next_lambda(self.lambda, c.value, target);
            info!(
                "epoch {number}: validation {} {:.4} (target {}); lambda {:.4} -> {next:.4}",
                target_name(target),
                c.value,
                target.value,
                self.lambda
            );
            self.lambda = next;
        }
        self.history.push(record);
        let stop = self.cfg.file.run.stop_after_epoch == Some(number);
        self.write_curves(stop);

        if is_best {
            self.best = Some(BestEpoch {
                epoch: number,
                objective: selection,
                checkpoint: checkpoint::checkpoint_name(number),
            });
        }
        let every = self.cfg.file.run.checkpoint_every;
        if is_best || stop || number == epochs || (every > 0 && number.is_multiple_of(every)) {
            let manifest = self.manifest(number);
            let name =
                checkpoint::save(&self.run_dir, &manifest, &self.model, &self.optim, is_best)?;
            debug!("checkpoint {name} written");
        }
        debug!(
            "epoch {number}: metrics, curves and checkpoint written in {:.4} s",
            writes.elapsed().as_secs_f64()
        );
        Ok(stop)
    }

    /// `curves.svg`, rewritten after every epoch, and with `png` its PNG version `curves.png`
    /// (when the run stops or ends: rendering takes longer than an epoch of a small run); a
    /// failed write is reported, not fatal.
    fn write_curves(&self, png: bool) {
        let path = self.run_dir.join(CURVES_FILE);
        let svg = training_curves(&self.history);
        if let Err(e) = fsutil::write_atomic(&path, svg.as_bytes()) {
            warn!("the training curves were not written: {e}");
        }
        if png && let Err(e) = raster::write_png_beside(&path, &svg) {
            warn!(
                "the PNG of the training curves (`{}`) was not written: {e}",
                raster::png_path(&path).display()
            );
        }
    }

    /// Step 5: the test split with the best epoch's weights, and the summary.
    fn finish(self, wall: Instant) -> Result<Summary, TrainError> {
        let best = self.best.clone().ok_or_else(|| TrainError::NoEpoch {
            run_dir: self.run_dir.clone(),
        })?;
        let best_dir = checkpoint::checkpoint_dir(&self.run_dir, &best.checkpoint);
        let best_manifest = checkpoint::load_manifest(&best_dir)?;
        let best_model = checkpoint::load_model(
            &best_dir,
            &best_manifest,
            self.model_cfg.init(&self.selected.device),
        )?
        .valid();
        let test = evaluate(
            &best_model,
            &self.dataset.test,
            "test",
            &self.dataset.schema,
            &self.cfg.penalty,
            &self.selected.device,
            EVAL_SEED,
        )?;
        let best_record = self
            .history
            .iter()
            .find(|r| r.epoch == best.epoch)
            .expect("the best epoch is in the history");
        let best_valid = best_record.valid.clone();
        let best_lambda = best_record.lambda.unwrap_or(self.cfg.penalty.lambda);
        let target_met = best_record.constraint.as_ref().map(|c| c.met);
        let summary = Summary {
            test: test.into(),
            valid: best_valid.into(),
            best_epoch: best.epoch,
            epochs: self.cfg.optim.epochs,
            dataset: self.dataset.name.clone(),
            penalty_kind: self.cfg.file.penalty.kind,
            penalty_task: self
                .condition_task
                .map(|t| self.dataset.schema.tasks[t].name.clone()),
            penalty_mode: (self.dataset.schema.attributes.len() >= 2
                && self.cfg.penalty.divergence.is_some())
            .then_some(self.cfg.penalty.mode),
            lambda: best_lambda,
            target_met,
            seed: self.cfg.seed(),
            device: self.selected.description.clone(),
            wall_seconds: wall.elapsed().as_secs_f64(),
            train_seconds: self.train_seconds,
            run_dir: self.run_dir.clone(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        fsutil::write_atomic(
            &self.run_dir.join(SUMMARY_FILE),
            format!("{json}\n").as_bytes(),
        )?;
        info!(
            "done: best epoch {} of {}; summary in {}",
            best.epoch,
            summary.epochs,
            self.run_dir.join(SUMMARY_FILE).display()
        );
        Ok(summary)
    }
}

/// Refuses a model whose parameters, gradients and Adam moments (four float32 copies) and one
/// batch's activations would not fit in the available memory, before any allocation.
fn check_model_memory(
    cfg: &FairModelConfig,
    batch_size: usize,
    source: &Path,
) -> Result<(), TrainError> {
    let layer = |a: usize, b: usize| (a as u128) * (b as u128) + b as u128;
    let mut params: u128 = 0;
    let mut widest: u128 = cfg.n_features as u128;
    let mut sizes = vec![cfg.n_features];
    sizes.extend(&cfg.encoder_widths);
    sizes.push(cfg.latent);
    for w in sizes.windows(2) {
        params += layer(w[0], w[1]);
        widest = widest.max(w[1] as u128);
    }
    for head in &cfg.heads {
        let mut sizes = vec![cfg.latent];
        if let fairrep_model::HeadKind::Mlp { hidden } = &head.kind {
            sizes.extend(hidden);
        }
        sizes.push(1);
        for w in sizes.windows(2) {
            params += layer(w[0], w[1]);
            widest = widest.max(w[1] as u128);
        }
    }
    let layers = (cfg.encoder_widths.len() + 2) as u128;
    let bytes = 4 * (4 * params + 2 * layers * widest * batch_size as u128);
    let Some(available) = fairrep_loss::route::available_memory() else {
        return Ok(());
    };
    if bytes > u128::from(available) {
        // The parameters alone too large: the model's widest size is at fault; otherwise the
        // batch.
        let (key, detail) = if 16 * params > u128::from(available) {
            let encoder = cfg.encoder_widths.iter().copied().max().unwrap_or(0);
            let head = cfg
                .heads
                .iter()
                .filter_map(|h| match &h.kind {
                    fairrep_model::HeadKind::Mlp { hidden } => hidden.iter().copied().max(),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let (key, width) = if cfg.latent >= encoder && cfg.latent >= head {
                ("model.latent", cfg.latent)
            } else if encoder >= head {
                ("model.encoder_widths", encoder)
            } else {
                ("model.head_hidden", head)
            };
            (
                key,
                format!("a width of {width} gives {params} parameters, which"),
            )
        } else {
            (
                "data.batch_size",
                format!("{params} parameters and a batch of {batch_size}"),
            )
        };
        return Err(TrainError::Config(ConfigError::Invalid {
            path: source.to_path_buf(),
            key: key.into(),
            message: format!(
                "{detail} need about {} of memory but {} is available; use smaller model \
                 widths or batches",
                fairrep_loss::config::Bytes(u64::try_from(bytes).unwrap_or(u64::MAX)),
                fairrep_loss::config::Bytes(available)
            ),
        }));
    }
    Ok(())
}

/// The train split as tensors on `device`: inputs `[n, d]` and one `[n, 1]` target per task.
fn train_tensors(dataset: &Dataset, device: &Device) -> (Tensor<2>, Vec<Tensor<2>>) {
    let n = dataset.train.len();
    let x = rows_tensor(&dataset.train, 0..n, device);
    let y = dataset
        .train
        .targets
        .iter()
        .map(|t| Tensor::from_data(TensorData::new(t.clone(), [n, 1]), device))
        .collect();
    (x, y)
}

/// The strata of the training batches: one per row.
struct Strata {
    /// Stratum id per train row, in `0..n_strata`.
    ids: Vec<u32>,
    /// Number of strata.
    n_strata: usize,
}

/// The groups, or with a conditioning task the non-empty (group, label) cells numbered in
/// order of `2 group + label`, so that every batch holds positives of every group that has
/// any.
fn batch_strata(dataset: &Dataset, condition_task: Option<usize>) -> Strata {
    let groups = &dataset.train.groups;
    let Some(t) = condition_task else {
        return Strata {
            ids: groups.clone(),
            n_strata: dataset.n_groups(),
        };
    };
    let labels = &dataset.train.targets[t];
    let cell = |i: usize| 2 * groups[i] as usize + usize::from(labels[i] == 1.0);
    let mut present = vec![false; 2 * dataset.n_groups()];
    for i in 0..groups.len() {
        present[cell(i)] = true;
    }
    let mut dense = vec![0u32; present.len()];
    let mut n_strata = 0u32;
    for (c, &p) in present.iter().enumerate() {
        if p {
            dense[c] = n_strata;
            n_strata += 1;
        }
    }
    Strata {
        ids: (0..groups.len()).map(|i| dense[cell(i)]).collect(),
        n_strata: n_strata as usize,
    }
}

/// Runs a training session (fresh or resumed) to its end, or to `run.stop_after_epoch`.
pub fn train(opts: TrainOptions) -> Result<TrainOutcome, TrainError> {
    let wall = Instant::now();
    let mut session = Session::open(opts)?;
    let strata = batch_strata(&session.dataset, session.condition_task);
    let batcher = StratifiedBatches::new(&strata.ids, strata.n_strata, session.cfg.data.batch_size)
        .map_err(|source| TrainError::Batches {
            dataset: session.dataset.name.clone(),
            source: Box::new(source),
        })?;
    let ad = session.selected.device.clone().autodiff();
    let (x_train, y_train) = train_tensors(&session.dataset, &ad);
    let session_start = Instant::now();
    for epoch in session.start_epoch..session.cfg.optim.epochs {
        let started = Instant::now();
        let cpu_start = process_cpu_seconds();
        let train = session.train_epoch(epoch, &batcher, &x_train, &y_train)?;
        if session.record_epoch(epoch, train, (started, cpu_start), session_start)? {
            info!(
                "stopping after epoch {} (run.stop_after_epoch); continue with --resume {}",
                epoch + 1,
                session.run_dir.display()
            );
            return Ok(TrainOutcome::Stopped {
                epoch: epoch + 1,
                run_dir: session.run_dir,
            });
        }
    }
    session.write_curves(true);
    Ok(TrainOutcome::Finished(Box::new(session.finish(wall)?)))
}

/// The CPU time of this process so far, all threads (Linux: the sum of each live thread's
/// on-CPU nanoseconds in `/proc/self/task/*/schedstat`); `None` where that is not readable.
fn process_cpu_seconds() -> Option<f64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut nanos: u64 = 0;
    for task in tasks {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanos as f64 * 1e-9)
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

/// The name of a target's metric, for logs.
fn target_name(target: &Target) -> String {
    match (target.metric, &target.task) {
        (TargetMetric::DpGap, Some(task)) => format!("DP gap of `{task}`"),
        (TargetMetric::DpGap, None) => "largest DP gap".into(),
        (TargetMetric::Penalty, _) => "penalty".into(),
    }
}

/// The constrained metric of `penalty.target` on a split: the DP gap of `task` (else the
/// largest over the binary tasks), or the penalty. `Err` names what is missing.
pub fn constraint_value(valid: &SplitEval, target: &Target) -> Result<f64, String> {
    // With several attributes and `penalty.mode = "each"`: the largest per-attribute gap.
    if target.metric == TargetMetric::DpGap && target.per_attribute && !valid.attributes.is_empty()
    {
        return valid
            .attributes
            .values()
            .flat_map(|a| {
                a.tasks
                    .iter()
                    .filter(|(name, _)| target.task.as_ref().is_none_or(|t| t == *name))
                    .filter_map(|(_, t)| t.dp_gap)
            })
            .reduce(f64::max)
            .ok_or_else(|| match &target.task {
                Some(task) => format!("task `{task}` has no DP gap"),
                None => "metric = \"dp_gap\" needs a binary task; none is trained on".into(),
            });
    }
    match (target.metric, &target.task) {
        (TargetMetric::DpGap, Some(task)) => {
            valid.tasks.get(task).and_then(|t| t.dp_gap).ok_or_else(|| {
                format!(
                    "task `{task}` has no DP gap (the binary tasks trained on are {:?})",
                    valid
                        .tasks
                        .iter()
                        .filter(|(_, t)| t.dp_gap.is_some())
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                )
            })
        }
        (TargetMetric::DpGap, None) => valid
            .tasks
            .values()
            .filter_map(|t| t.dp_gap)
            .reduce(f64::max)
            .ok_or_else(|| "metric = \"dp_gap\" needs a binary task; none is trained on".into()),
        (TargetMetric::Penalty, _) => valid
            .penalty
            .as_ref()
            .map(|p| p.value)
            .ok_or_else(|| "the validation penalty was not measured".into()),
    }
}

/// One dual step of `penalty.target` (docs/MATH.md): `lambda * exp(step * clip((g - k) / k,
/// -1, 1))`, clamped to `[lambda_min, lambda_max]`, where `g` is the constrained metric on
/// validation and `k` the target: at most a factor `e^step` per epoch.
pub fn next_lambda(lambda: f64, g: f64, target: &Target) -> f64 {
    let k = target.value;
    let violation = ((g - k) / k).clamp(-1.0, 1.0);
    (lambda * (target.step * violation).exp()).clamp(target.lambda_min, target.lambda_max)
}

/// The lambda a resumed run continues with: the configured one, or with a target the step
/// after the last recorded epoch (so the trajectory replays exactly).
fn resumed_lambda(cfg: &TrainConfig, history: &[EpochRecord]) -> f64 {
    match (&cfg.penalty.target, history.last()) {
        (Some(target), Some(last)) => match (last.lambda, &last.constraint) {
            (Some(lambda), Some(c)) => next_lambda(lambda, c.value, target),
            _ => cfg.penalty.lambda,
        },
        _ => cfg.penalty.lambda,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn conditioned_batches_hold_positives_of_every_group() {
        let cfg = fairrep_data::SyntheticConfig {
            n_train: 500,
            n_groups: 3,
            ..Default::default()
        };
        let dataset = fairrep_data::synthetic(&cfg, 7);
        // Unconditioned: the groups themselves.
        let plain = batch_strata(&dataset, None);
        assert_eq!(plain.ids, dataset.train.groups);
        assert_eq!(plain.n_strata, 3);
        let strata = batch_strata(&dataset, Some(0));
        let labels = &dataset.train.targets[0];
        let groups = &dataset.train.groups;
        assert_eq!(strata.n_strata, 6, "every (group, label) cell is present");
        for i in 0..groups.len() {
            let cell = 2 * groups[i] + u32::from(labels[i] == 1.0);
            assert_eq!(strata.ids[i], cell, "row {i}");
        }
        let batcher = StratifiedBatches::new(&strata.ids, strata.n_strata, 32).unwrap();
        for batch in batcher.epoch(3) {
            for g in 0..3 {
                assert!(
                    batch.iter().any(|&i| groups[i] == g && labels[i] == 1.0),
                    "a batch lacks positives of group {g}"
                );
            }
        }
        // A missing cell is skipped: the remaining cells are numbered densely.
        let mut one_sided = dataset.clone();
        for (label, &g) in one_sided.train.targets[0].iter_mut().zip(groups) {
            if g == 1 {
                *label = 0.0;
            }
        }
        let strata = batch_strata(&one_sided, Some(0));
        assert_eq!(strata.n_strata, 5);
        assert!(strata.ids.iter().all(|&c| c < 5));
        let ids_of_group_2: Vec<u32> = (0..groups.len())
            .filter(|&i| groups[i] == 2)
            .map(|i| strata.ids[i])
            .collect();
        assert!(ids_of_group_2.iter().all(|&c| c == 3 || c == 4));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(5.04), "5.0s");
        assert_eq!(format_duration(125.0), "2m05s");
        assert_eq!(format_duration(7260.0), "2h01m");
    }
}
