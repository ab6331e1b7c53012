//! Evaluating a model on a split: per-task loss and fairness metrics, and the penalty between
//! the groups' representations.
use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use fairrep_data::spec::TaskKind;
use fairrep_data::{DataError, Schema, Split, stratified_subsample};
use fairrep_loss::{LossError, fairness_penalty};
use fairrep_metrics::fairness::{self as metrics, MetricError};
use fairrep_model::FairModel;
use serde::{Deserialize, Serialize};

use crate::config::{PenaltyCondition, PenaltyConfig};
use crate::losses::bce_with_logits_host;

/// Rows per forward pass during evaluation.
const EVAL_CHUNK: usize = 8192;
/// Classification threshold on the predicted probability.
pub const THRESHOLD: f64 = 0.5;

/// Metrics of one task on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEval {
    /// Mean BCE-with-logits (binary) or MSE (regression).
    pub loss: f64,
    /// Binary: accuracy at threshold 0.5.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    /// Binary: demographic-parity gap of the decisions at 0.5.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dp_gap: Option<f64>,
    /// Binary: equalised-odds gap (absent when a group lacks a class).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eo_gap: Option<f64>,
    /// Binary: equal-opportunity gap, the true-positive-rate gap (absent when a group has no
    /// positive).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eopp_gap: Option<f64>,
    /// Binary: AUC (absent when the split has one class only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auc: Option<f64>,
    /// Kolmogorov-Smirnov distance between the groups' score (or prediction) distributions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ks: Option<f64>,
    /// Regression: root mean squared error (`sqrt(loss)`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rmse: Option<f64>,
    /// Regression: Wasserstein-1 distance between the groups' prediction distributions (max
    /// over pairs of groups), in the target's units.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub w1: Option<f64>,
}

/// The penalty measured on a (subsampled) split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PenaltyEval {
    /// The penalty.
    pub value: f64,
    /// Rows of the (group-stratified) subsample it was measured on.
    pub n_points: usize,
    /// Whether every Sinkhorn solve converged (true for MMD).
    pub converged: bool,
    /// The largest iteration count.
    pub n_iters: usize,
    /// The largest marginal error.
    pub marginal_error: f64,
    /// Groups absent from the subsample.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub missing_groups: Vec<usize>,
    /// With `penalty.condition = "positive"`, the task whose positive rows the penalty was
    /// measured on (absent when measured on every row).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub condition_task: Option<String>,
}

/// Metrics of a model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitEval {
    /// Mean over tasks of the task losses.
    pub task_loss: f64,
    /// Per-task metrics.
    pub tasks: BTreeMap<String, TaskEval>,
    /// The penalty between the groups' representations (absent without a penalty).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty: Option<PenaltyEval>,
}

impl SplitEval {
    /// The model-selection objective: `task_loss + lambda * penalty` (penalty 0 when none).
    pub fn objective(&self, lambda: f64) -> f64 {
        self.task_loss + lambda * self.penalty.as_ref().map_or(0.0, |p| p.value)
    }
}

/// An evaluation that could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A metric is undefined.
    #[error("{split} split, task `{task}`: {source}")]
    Metric {
        /// The split.
        split: String,
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: MetricError,
    },
    /// The model's outputs are not finite.
    #[error(
        "{split} split: the model outputs non-finite values (training diverged?); try a lower \
         optim.lr or penalty.lambda"
    )]
    NonFinite {
        /// The split.
        split: String,
    },
    /// The penalty's subsample cannot be drawn.
    #[error("{split} split: cannot subsample for the penalty: {source}")]
    Subsample {
        /// The split.
        split: String,
        /// Why (boxed: the data error is large, the evaluation error stays small).
        #[source]
        source: Box<DataError>,
    },
    /// The conditioning task of the penalty is not a binary task of the schema.
    #[error(
        "{split} split: penalty.task `{task}` is not a binary task of the data; tasks: [{tasks}]"
    )]
    ConditionTask {
        /// The split.
        split: String,
        /// The task named by the configuration.
        task: String,
        /// The data's tasks.
        tasks: String,
    },
    /// The split has fewer than two positives of the conditioning task.
    #[error(
        "{split} split: penalty.condition = \"positive\" needs at least 2 rows whose `{task}` \
         is 1, found {found}"
    )]
    TooFewPositives {
        /// The split.
        split: String,
        /// The conditioning task.
        task: String,
        /// Its positive rows.
        found: usize,
    },
    /// The penalty cannot be computed.
    #[error("{split} split: the penalty: {source}")]
    Penalty {
        /// The split.
        split: String,
        /// Why.
        #[source]
        source: LossError,
    },
}

/// A `[rows, d]` tensor of the rows `range` of a split.
pub fn rows_tensor(split: &Split, range: std::ops::Range<usize>, device: &Device) -> Tensor<2> {
    let d = split.x.cols;
    let values = split.x.slice_rows(range.clone()).to_vec();
    Tensor::from_data(TensorData::new(values, [range.len(), d]), device)
}

/// An index tensor.
pub fn index_tensor(idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [idx.len()]), device)
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor data")
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-f64::from(x)).exp())
}

/// Evaluates `model` (in validation mode, on a plain device) on `split`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &FairModel,
    split: &Split,
    split_name: &str,
    schema: &Schema,
    penalty: &PenaltyConfig,
    device: &Device,
    seed: u64,
) -> Result<SplitEval, EvalError> {
    let n_groups = schema.groups.len();
    let n_tasks = schema.tasks.len();
    let n = split.len();
    let mut outputs: Vec<Vec<f32>> = vec![Vec::with_capacity(n); n_tasks];
    let mut start = 0;
    while start < n {
        let end = (start + EVAL_CHUNK).min(n);
        let out = model.forward(rows_tensor(split, start..end, device));
        for (acc, logits) in outputs.iter_mut().zip(out.logits) {
            acc.extend(to_vec(logits));
        }
        start = end;
    }
    if outputs.iter().flatten().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite {
            split: split_name.into(),
        });
    }

    let mut tasks = BTreeMap::new();
    let mut loss_sum = 0.0;
    for ((info, out), targets) in schema.tasks.iter().zip(&outputs).zip(&split.targets) {
        let metric = |source| EvalError::Metric {
            split: split_name.into(),
            task: info.name.clone(),
            source,
        };
        let eval = match info.kind {
            TaskKind::Binary => {
                let scores: Vec<f64> = out.iter().map(|&l| sigmoid(l)).collect();
                TaskEval {
                    loss: bce_with_logits_host(out, targets),
                    accuracy: Some(metrics::accuracy(&scores, targets, THRESHOLD).map_err(metric)?),
                    dp_gap: Some(
                        metrics::dp_gap(&scores, &split.groups, n_groups, THRESHOLD)
                            .map_err(metric)?,
                    ),
                    eo_gap: metrics::eo_gap(&scores, targets, &split.groups, n_groups, THRESHOLD)
                        .ok(),
                    eopp_gap: metrics::equal_opportunity_gap(
                        &scores,
                        targets,
                        &split.groups,
                        n_groups,
                        THRESHOLD,
                    )
                    .ok(),
                    auc: metrics::auc(&scores, targets).ok(),
                    ks: metrics::ks_distance(&scores, &split.groups, n_groups).ok(),
                    rmse: None,
                    w1: None,
                }
            }
            TaskKind::Regression => {
                let mse = metrics::mse(out, targets).map_err(metric)?;
                TaskEval {
                    loss: mse,
                    accuracy: None,
                    dp_gap: None,
                    eo_gap: None,
                    eopp_gap: None,
                    auc: None,
                    ks: metrics::ks_distance(out, &split.groups, n_groups).ok(),
                    rmse: Some(mse.sqrt()),
                    w1: metrics::w1_distance(out, &split.groups, n_groups).ok(),
                }
            }
        };
        loss_sum += eval.loss;
        tasks.insert(info.name.clone(), eval);
    }

    let penalty = match &penalty.divergence {
        None => None,
        Some(divergence) => {
            // The rows the penalty is measured on: all, or the positives of the conditioning
            // task; then a group-stratified subsample over the groups present among them.
            let (rows, condition_task): (Vec<usize>, Option<String>) = match &penalty.condition {
                PenaltyCondition::All => ((0..n).collect(), None),
                PenaltyCondition::Positive { task } => {
                    let t = schema
                        .tasks
                        .iter()
                        .position(|i| &i.name == task && i.kind == TaskKind::Binary)
                        .ok_or_else(|| EvalError::ConditionTask {
                            split: split_name.into(),
                            task: task.clone(),
                            tasks: schema
                                .tasks
                                .iter()
                                .map(|i| i.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
                    let labels = &split.targets[t];
                    (
                        (0..n).filter(|&i| labels[i] == 1.0).collect(),
                        Some(task.clone()),
                    )
                }
            };
            if let (Some(task), true) = (&condition_task, rows.len() < 2) {
                return Err(EvalError::TooFewPositives {
                    split: split_name.into(),
                    task: task.clone(),
                    found: rows.len(),
                });
            }
            // The groups present among the rows, numbered in group order (the identity when
            // every group is present, as with every row).
            let mut is_present = vec![false; n_groups];
            for &i in &rows {
                is_present[split.groups[i] as usize] = true;
            }
            let mut dense = vec![0u32; n_groups];
            let mut n_present = 0u32;
            for (g, &p) in is_present.iter().enumerate() {
                if p {
                    dense[g] = n_present;
                    n_present += 1;
                }
            }
            let present: Vec<u32> = rows
                .iter()
                .map(|&i| dense[split.groups[i] as usize])
                .collect();
            let picked =
                stratified_subsample(&present, n_present as usize, penalty.eval_max_points, seed)
                    .map_err(|source| EvalError::Subsample {
                    split: split_name.into(),
                    source: Box::new(source),
                })?;
            let idx: Vec<usize> = picked.iter().map(|&k| rows[k]).collect();
            let sub = split.gather(&idx);
            let z = model.encode(rows_tensor(&sub, 0..sub.len(), device));
            let out = fairness_penalty(z, &sub.groups, n_groups, divergence).map_err(|source| {
                EvalError::Penalty {
                    split: split_name.into(),
                    source,
                }
            })?;
            let value = f64::from(out.value.into_scalar::<f32>());
            Some(PenaltyEval {
                value,
                n_points: sub.len(),
                converged: out.converged,
                n_iters: out.n_iters,
                marginal_error: out.marginal_error,
                missing_groups: out.missing_groups,
                condition_task,
            })
        }
    };

    Ok(SplitEval {
        task_loss: loss_sum / n_tasks.max(1) as f64,
        tasks,
        penalty,
    })
}
