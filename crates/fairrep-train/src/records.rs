//! What a run writes about itself, as serialisable records: one line of `metrics.jsonl` per
//! epoch ([`EpochRecord`]), `summary.json` ([`Summary`]) and each checkpoint's
//! `manifest.json` ([`Manifest`]), with the names of the run directory's files.
use std::collections::BTreeMap;
use std::path::PathBuf;

use fairrep_data::{Preprocessing, Schema};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigFile, PenaltyKind};
use crate::eval::{AttributeEval, PenaltyEval, SplitEval, TaskEval};

/// One JSON object per completed epoch.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Test metrics of the best checkpoint and its validation metrics.
pub const SUMMARY_FILE: &str = "summary.json";
/// Training curves.
pub const CURVES_FILE: &str = "curves.svg";
/// The resolved configuration.
pub const CONFIG_FILE: &str = "config.toml";
/// The burn version the records are written with (pinned in the workspace).
pub const BURN_VERSION: &str = "0.22.1";
/// Version of the manifest format: 2 adds the run id and the checksums of the records.
pub const MANIFEST_FORMAT: u32 = 2;

/// Penalty diagnostics over the batches of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPenaltyDiagnostics {
    /// Whether every batch's solve converged (always true for MMD).
    pub all_converged: bool,
    /// Batches whose solve did not reach the tolerance.
    #[serde(default)]
    pub batches_not_converged: usize,
    /// The largest iteration count over the batches.
    pub max_n_iters: usize,
    /// The largest marginal error over the batches.
    pub max_marginal_error: f64,
    /// Batches in which some group had no member (its term skipped).
    pub batches_with_missing_groups: usize,
}

/// Mean training losses over the batches of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLosses {
    /// `task_loss + lambda * penalty`.
    pub loss: f64,
    /// Mean over tasks of the task losses.
    pub task_loss: f64,
    /// The penalty (absent when it is not trained on).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty: Option<f64>,
    /// Each task's loss.
    pub tasks: BTreeMap<String, f64>,
    /// The penalty's solver diagnostics.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty_diagnostics: Option<TrainPenaltyDiagnostics>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// The learning rate of the epoch.
    pub lr: f64,
    /// Training losses.
    pub train: TrainLosses,
    /// Validation metrics.
    pub valid: SplitEval,
    /// The selection objective `valid.task_loss + lambda * valid.penalty.value`.
    pub objective: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// With `penalty.target`: the lambda this epoch trained with.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lambda: Option<f64>,
    /// With `penalty.target`: the constrained metric on validation after this epoch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub constraint: Option<ConstraintRecord>,
    /// Where the epoch's time went (absent in records written before it was measured).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timing: Option<EpochTiming>,
}

/// Where an epoch's wall time went, in seconds, measured on the host around each phase of the
/// training step. The CPU devices compute eagerly, so each phase holds its own work; on wgpu,
/// queued work is counted where the host waits for it (mostly `loss_read`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochTiming {
    /// The minibatch loop, all steps (the sum of the five phases below and the loop's own
    /// bookkeeping).
    pub train: f64,
    /// Building each batch: its row indices and the gathered inputs and targets.
    pub batches: f64,
    /// The forward pass and the task losses.
    pub forward: f64,
    /// The penalty's value and its autodiff graph (its own gradient included where the penalty
    /// computes it, as the host paths do).
    pub penalty: f64,
    /// Reading each step's loss back to check that it is finite.
    pub loss_read: f64,
    /// The backward pass.
    pub backward: f64,
    /// The optimiser steps.
    pub optimizer: f64,
    /// Validation after the epoch (forward pass, metrics, the penalty on its subsample).
    pub valid: f64,
    /// CPU seconds of the process over the epoch (training and validation, all threads), where
    /// the system reports them (Linux); wall time above exceeds it when threads wait or the
    /// machine is shared.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu: Option<f64>,
    /// The part of [`cpu`](Self::cpu) spent in validation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_valid: Option<f64>,
}

/// The constrained validation metric of one epoch (`penalty.target`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstraintRecord {
    /// Its value on the validation split.
    pub value: f64,
    /// Whether it meets the target (`value <= target`).
    pub met: bool,
}

/// A split's results in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SummarySplit {
    /// Mean over tasks of the task losses.
    pub task_loss: f64,
    /// Per-task metrics.
    pub tasks: BTreeMap<String, TaskEval>,
    /// The penalty between the groups' representations (`null` without a penalty).
    pub penalty: Option<f64>,
    /// The penalty's diagnostics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty_diagnostics: Option<PenaltyEval>,
    /// With several sensitive attributes, the group metrics per attribute (`tasks` then
    /// compares the intersection cells).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeEval>,
}

impl From<SplitEval> for SummarySplit {
    fn from(e: SplitEval) -> Self {
        Self {
            task_loss: e.task_loss,
            tasks: e.tasks,
            penalty: e.penalty.as_ref().map(|p| p.value),
            penalty_diagnostics: e.penalty,
            attributes: e.attributes,
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Test metrics of the best checkpoint.
    pub test: SummarySplit,
    /// The best epoch's validation metrics.
    pub valid: SummarySplit,
    /// The best epoch (1-based).
    pub best_epoch: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Dataset name.
    pub dataset: String,
    /// The penalty kind.
    pub penalty_kind: PenaltyKind,
    /// With `penalty.condition = "positive"`, the task whose positives the penalty is
    /// computed on (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty_task: Option<String>,
    /// With several sensitive attributes and a penalty, `penalty.mode` (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty_mode: Option<crate::config::PenaltyMode>,
    /// The penalty weight (with `penalty.target`, the one the best epoch trained with).
    pub lambda: f64,
    /// With `penalty.target`: whether the best epoch meets the target on validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_met: Option<bool>,
    /// The run seed.
    pub seed: u64,
    /// The device, in words.
    pub device: String,
    /// Wall time of this process.
    pub wall_seconds: f64,
    /// Training time over all sessions (a resumed run adds its sessions).
    pub train_seconds: f64,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// The best epoch on validation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 1-based.
    pub epoch: usize,
    /// `valid task loss + lambda * valid penalty`.
    pub objective: f64,
    /// Its checkpoint directory's name under `checkpoints/`.
    pub checkpoint: String,
}

/// SHA-256 digests (lowercase hex) of a checkpoint's record files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// Of `model.bpk`.
    pub model: String,
    /// Of `optimizer.bpk`.
    pub optimizer: String,
}

/// Everything besides the tensors that a checkpoint needs to resume and to be understood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written.
    pub format: u32,
    /// The fairrep version that wrote it.
    pub fairrep_version: String,
    /// The burn version that wrote the records.
    pub burn_version: String,
    /// Identifies the run (its directory's name when created, and the process): checkpoints
    /// of another run are never pruned.
    #[serde(default)]
    pub run_id: String,
    /// Epochs completed (1-based number of the last one).
    pub epoch: usize,
    /// The run seed.
    pub seed: u64,
    /// The resolved configuration.
    pub config: ConfigFile,
    /// What the inputs, groups and targets mean.
    pub schema: Schema,
    /// The preprocessing statistics fitted on the train split.
    pub preprocessing: Preprocessing,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// The best epoch so far.
    pub best: Option<BestEpoch>,
    /// The device the run was trained on.
    pub device: String,
    /// Seconds spent training so far, over all sessions.
    pub train_seconds: f64,
    /// Digests of the record files (absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<Checksums>,
}
