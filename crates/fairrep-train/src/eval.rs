//! Evaluating a model on a split: per-task loss and fairness metrics, and the penalty between
//! the groups' representations.
use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use fairrep_data::metrics::{self, MetricError};
use fairrep_data::spec::TaskKind;
use fairrep_data::{Schema, Split, StratifiedBatches};
use fairrep_loss::fairness_penalty;
use fairrep_model::FairModel;
use serde::{Deserialize, Serialize};

use crate::config::PenaltyConfig;

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
    /// Binary: AUC (absent when the split has one class only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auc: Option<f64>,
    /// Kolmogorov-Smirnov distance between the groups' score (or prediction) distributions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ks: Option<f64>,
}

/// The penalty measured on a (subsampled) split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PenaltyEval {
    pub value: f64,
    pub n_points: usize,
    pub converged: bool,
    pub n_iters: usize,
    pub marginal_error: f64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub missing_groups: Vec<usize>,
}

/// Metrics of a model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitEval {
    /// Mean over tasks of the task losses.
    pub task_loss: f64,
    pub tasks: BTreeMap<String, TaskEval>,
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
    #[error("{split} split, task `{task}`: {source}")]
    Metric {
        split: String,
        task: String,
        #[source]
        source: MetricError,
    },
    #[error(
        "{split} split: the model outputs non-finite values (training diverged?); try a lower \
         optim.lr or penalty.lambda"
    )]
    NonFinite { split: String },
}

/// A `[rows, d]` tensor of the rows `idx` of a split (all rows when `None`).
pub fn rows_tensor(split: &Split, range: std::ops::Range<usize>, device: &Device) -> Tensor<2> {
    let d = split.d;
    let values = split.x[range.start * d..range.end * d].to_vec();
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

/// Numerically stable `mean_i max(l, 0) - l y + log(1 + exp(-|l|))` on the host.
pub fn bce_with_logits_host(logits: &[f32], targets: &[f32]) -> f64 {
    let sum: f64 = logits
        .iter()
        .zip(targets)
        .map(|(&l, &y)| {
            let (l, y) = (f64::from(l), f64::from(y));
            l.max(0.0) - l * y + (-l.abs()).exp().ln_1p()
        })
        .sum();
    sum / logits.len().max(1) as f64
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-f64::from(x)).exp())
}

/// A group-stratified subsample of at most `max` rows (every group represented), fixed by
/// `seed`; all rows when the split is small enough.
pub fn subsample(groups: &[u32], n_groups: usize, max: usize, seed: u64) -> Vec<usize> {
    if groups.len() <= max {
        return (0..groups.len()).collect();
    }
    match StratifiedBatches::new(groups, n_groups, max) {
        Ok(batches) => {
            let mut first = batches.epoch(seed).swap_remove(0);
            first.sort_unstable();
            first
        }
        // A group without rows: fall back to the first rows (the penalty reports the gap).
        Err(_) => (0..max).collect(),
    }
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
    let mut outputs: Vec<Vec<f32>> = vec![Vec::with_capacity(split.n); n_tasks];
    let mut start = 0;
    while start < split.n {
        let end = (start + EVAL_CHUNK).min(split.n);
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
                    auc: metrics::auc(&scores, targets).ok(),
                    ks: metrics::ks_distance(&scores, &split.groups, n_groups).ok(),
                }
            }
            TaskKind::Regression => TaskEval {
                loss: metrics::mse(out, targets).map_err(metric)?,
                accuracy: None,
                dp_gap: None,
                eo_gap: None,
                auc: None,
                ks: metrics::ks_distance(out, &split.groups, n_groups).ok(),
            },
        };
        loss_sum += eval.loss;
        tasks.insert(info.name.clone(), eval);
    }

    let penalty = match &penalty.divergence {
        None => None,
        Some(divergence) => {
            let idx = subsample(&split.groups, n_groups, penalty.eval_max_points, seed);
            let sub = split.gather(&idx);
            let z = model.encode(rows_tensor(&sub, 0..sub.n, device));
            let out = fairness_penalty(z, &sub.groups, n_groups, divergence);
            let value = f64::from(out.value.into_scalar::<f32>());
            Some(PenaltyEval {
                value,
                n_points: sub.n,
                converged: out.converged,
                n_iters: out.n_iters,
                marginal_error: out.marginal_error,
                missing_groups: out.missing_groups,
            })
        }
    };

    Ok(SplitEval {
        task_loss: loss_sum / n_tasks.max(1) as f64,
        tasks,
        penalty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bce_matches_hand_values() {
        // l = 0: log 2 whatever y.
        assert!((bce_with_logits_host(&[0.0], &[1.0]) - 2f64.ln()).abs() < 1e-12);
        // l = 2, y = 1: log(1 + e^-2); l = -3, y = 1: 3 + log(1 + e^-3).
        let want = ((1.0 + (-2f64).exp()).ln() + 3.0 + (1.0 + (-3f64).exp()).ln()) / 2.0;
        assert!((bce_with_logits_host(&[2.0, -3.0], &[1.0, 1.0]) - want).abs() < 1e-6);
        // Large logits stay finite.
        assert!(bce_with_logits_host(&[1e4, -1e4], &[0.0, 1.0]).is_finite());
    }

    #[test]
    fn subsample_is_stratified_and_deterministic() {
        let groups: Vec<u32> = (0..1000).map(|i| u32::from(i % 10 == 0)).collect();
        let a = subsample(&groups, 2, 100, 5);
        assert_eq!(a, subsample(&groups, 2, 100, 5));
        assert!(a.len() <= 100 && a.len() >= 90);
        let ones = a.iter().filter(|&&i| groups[i] == 1).count();
        assert!((5..=15).contains(&ones), "{ones}");
        assert_eq!(
            subsample(&groups[..50], 2, 100, 5),
            (0..50).collect::<Vec<_>>()
        );
    }
}
