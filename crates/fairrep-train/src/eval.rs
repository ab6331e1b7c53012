//! Evaluating a model on a split: per-task loss and fairness metrics, and the penalty between
//! the groups' representations.
use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use fairrep_data::spec::TaskKind;
use fairrep_data::{DataError, Schema, Split, stratified_subsample};
use fairrep_loss::{Divergence, LossError, PenaltyOutput, fairness_penalty};
use fairrep_metrics::fairness::{self as metrics, MetricError};
use fairrep_model::FairModel;
use serde::{Deserialize, Serialize};

use crate::config::{PenaltyCondition, PenaltyConfig, PenaltyMode};
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
    /// Per-task metrics. Their group metrics compare the data's groups: with several sensitive
    /// attributes, the intersection cells (the largest gap over pairs of cells).
    pub tasks: BTreeMap<String, TaskEval>,
    /// The penalty between the groups' representations (absent without a penalty).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty: Option<PenaltyEval>,
    /// With several sensitive attributes, the group metrics with respect to each attribute,
    /// by attribute name (absent with one attribute).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, AttributeEval>,
}

/// The group metrics of one task with respect to one sensitive attribute's groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeTaskEval {
    /// Binary: demographic-parity gap between the attribute's groups.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dp_gap: Option<f64>,
    /// Binary: equalised-odds gap (absent when a group lacks a class).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eo_gap: Option<f64>,
    /// Binary: equal-opportunity gap (absent when a group has no positive).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eopp_gap: Option<f64>,
    /// Kolmogorov-Smirnov distance between the groups' scores (or predictions).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ks: Option<f64>,
    /// Regression: Wasserstein-1 distance between the groups' predictions (max over pairs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub w1: Option<f64>,
    /// Binary: accuracy in each group, by group name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub group_accuracy: BTreeMap<String, f64>,
}

/// The metrics of a model with respect to one of several sensitive attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeEval {
    /// Per task.
    pub tasks: BTreeMap<String, AttributeTaskEval>,
    /// With `penalty.mode = "each"`, this attribute's term of the penalty (the terms sum to
    /// the penalty's value).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub penalty: Option<f64>,
}

/// The fairness penalty of a batch or subsample whose rows have the cell ids `cells` (the
/// data's groups) and, with several attributes, each attribute's ids (`attributes[a]`, with
/// `n_attribute_groups[a]` groups): with `mode = "each"` and attributes, the sum over the
/// attributes of [`fairness_penalty`] between each attribute's groups, its terms in
/// [`Penalty::terms`]; otherwise [`fairness_penalty`] between the cells. Missing groups are
/// reported as cells.
pub fn combined_penalty(
    z: Tensor<2>,
    cells: &[u32],
    n_cells: usize,
    attributes: &[Vec<u32>],
    n_attribute_groups: &[usize],
    mode: PenaltyMode,
    divergence: &Divergence,
) -> Result<Penalty, LossError> {
    if mode == PenaltyMode::Intersectional || attributes.is_empty() {
        return Ok(Penalty {
            output: fairness_penalty(z, cells, n_cells, divergence)?,
            terms: Vec::new(),
        });
    }
    let mut terms = Vec::with_capacity(attributes.len());
    let mut total: Option<PenaltyOutput> = None;
    for (ids, &n) in attributes.iter().zip(n_attribute_groups) {
        let out = fairness_penalty(z.clone(), ids, n, divergence)?;
        terms.push(out.value.clone());
        total = Some(match total {
            None => out,
            Some(acc) => PenaltyOutput {
                value: acc.value + out.value,
                missing_groups: acc.missing_groups,
                converged: acc.converged && out.converged,
                not_converged: acc.not_converged + out.not_converged,
                n_iters: acc.n_iters.max(out.n_iters),
                marginal_error: acc.marginal_error.max(out.marginal_error),
            },
        });
    }
    let mut output = total.expect("at least one attribute");
    let mut present = vec![false; n_cells];
    cells.iter().for_each(|&c| present[c as usize] = true);
    output.missing_groups = (0..n_cells).filter(|&c| !present[c]).collect();
    Ok(Penalty { output, terms })
}

/// [`combined_penalty`]'s result.
#[derive(Debug, Clone)]
pub struct Penalty {
    /// The penalty (with `each`, the sum of the terms) and the solvers' diagnostics.
    pub output: PenaltyOutput,
    /// With `each` and several attributes, each attribute's term, in attribute order.
    pub terms: Vec<Tensor<1>>,
}

/// Accuracy of the decisions at [`THRESHOLD`] in each group (`NaN`-free: a group without rows
/// is left out).
fn group_accuracy(
    scores: &[f64],
    labels: &[f32],
    groups: &[u32],
    names: &[String],
) -> BTreeMap<String, f64> {
    let mut right = vec![0usize; names.len()];
    let mut count = vec![0usize; names.len()];
    for ((&q, &y), &g) in scores.iter().zip(labels).zip(groups) {
        count[g as usize] += 1;
        right[g as usize] += usize::from((q > THRESHOLD) == (y == 1.0));
    }
    names
        .iter()
        .enumerate()
        .filter(|&(g, _)| count[g] > 0)
        .map(|(g, n)| (n.clone(), right[g] as f64 / count[g] as f64))
        .collect()
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

    let mut attributes: BTreeMap<String, AttributeEval> = BTreeMap::new();
    for (a, info) in schema.attributes.iter().enumerate() {
        let Some(ids) = split.attributes.get(a) else {
            continue;
        };
        let n_a = info.groups.len();
        let mut per_task = BTreeMap::new();
        for ((task, out), targets) in schema.tasks.iter().zip(&outputs).zip(&split.targets) {
            let metric = |source| EvalError::Metric {
                split: split_name.into(),
                task: format!("{} (attribute `{}`)", task.name, info.name),
                source,
            };
            let eval = match task.kind {
                TaskKind::Binary => {
                    let scores: Vec<f64> = out.iter().map(|&l| sigmoid(l)).collect();
                    AttributeTaskEval {
                        dp_gap: Some(
                            metrics::dp_gap(&scores, ids, n_a, THRESHOLD).map_err(metric)?,
                        ),
                        eo_gap: metrics::eo_gap(&scores, targets, ids, n_a, THRESHOLD).ok(),
                        eopp_gap: metrics::equal_opportunity_gap(
                            &scores, targets, ids, n_a, THRESHOLD,
                        )
                        .ok(),
                        ks: metrics::ks_distance(&scores, ids, n_a).ok(),
                        w1: None,
                        group_accuracy: group_accuracy(&scores, targets, ids, &info.groups),
                    }
                }
                TaskKind::Regression => AttributeTaskEval {
                    dp_gap: None,
                    eo_gap: None,
                    eopp_gap: None,
                    ks: metrics::ks_distance(out, ids, n_a).ok(),
                    w1: metrics::w1_distance(out, ids, n_a).ok(),
                    group_accuracy: BTreeMap::new(),
                },
            };
            per_task.insert(task.name.clone(), eval);
        }
        attributes.insert(
            info.name.clone(),
            AttributeEval {
                tasks: per_task,
                penalty: None,
            },
        );
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
            let n_attribute_groups: Vec<usize> =
                schema.attributes.iter().map(|a| a.groups.len()).collect();
            let Penalty { output: out, terms } = combined_penalty(
                z,
                &sub.groups,
                n_groups,
                &sub.attributes,
                &n_attribute_groups,
                penalty.mode,
                divergence,
            )
            .map_err(|source| EvalError::Penalty {
                split: split_name.into(),
                source,
            })?;
            for (info, term) in schema.attributes.iter().zip(terms) {
                if let Some(a) = attributes.get_mut(&info.name) {
                    a.penalty = Some(f64::from(term.into_scalar::<f32>()));
                }
            }
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
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairrep_loss::{Bandwidth, MmdConfig, MmdEstimator};

    /// Biased MMD² with one Gaussian bandwidth `s`, uniform weights, in float64 (docs/MATH.md).
    fn host_mmd2(x: &[Vec<f64>], y: &[Vec<f64>], s: f64) -> f64 {
        let k = |a: &[f64], b: &[f64]| {
            let d2: f64 = a.iter().zip(b).map(|(u, v)| (u - v).powi(2)).sum();
            (-d2 / (2.0 * s * s)).exp()
        };
        let mean = |p: &[Vec<f64>], q: &[Vec<f64>]| {
            p.iter()
                .flat_map(|a| q.iter().map(move |b| k(a, b)))
                .sum::<f64>()
                / (p.len() * q.len()) as f64
        };
        mean(x, x) + mean(y, y) - 2.0 * mean(x, y)
    }

    /// `sum_g p_g MMD²(z_g, z)` on the host.
    fn host_penalty(z: &[Vec<f64>], groups: &[u32], n_groups: usize, s: f64) -> f64 {
        (0..n_groups as u32)
            .map(|g| {
                let zg: Vec<Vec<f64>> = z
                    .iter()
                    .zip(groups)
                    .filter(|&(_, &h)| h == g)
                    .map(|(r, _)| r.clone())
                    .collect();
                if zg.is_empty() {
                    0.0
                } else {
                    zg.len() as f64 / z.len() as f64 * host_mmd2(&zg, z, s)
                }
            })
            .sum()
    }

    #[test]
    fn each_is_the_sum_of_the_attribute_penalties_and_intersectional_the_cells() {
        // 24 rows of a 3-dimensional z, attribute a (2 groups) and b (3 groups), cells 3a + b.
        let n = 24;
        let z: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let t = i as f64;
                vec![
                    (t * 0.37).sin(),
                    (t * 0.11).cos() + 0.1 * (i % 2) as f64,
                    0.05 * t,
                ]
            })
            .collect();
        let a: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let b: Vec<u32> = (0..n).map(|i| ((i / 2) % 3) as u32).collect();
        let cells: Vec<u32> = a.iter().zip(&b).map(|(x, y)| 3 * x + y).collect();
        let device = Device::flex();
        let flat: Vec<f32> = z.iter().flatten().map(|&v| v as f32).collect();
        let zt = Tensor::<2>::from_data(TensorData::new(flat, [n, 3]), &device);
        let s = 0.8;
        let divergence = Divergence::Mmd(MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![s]),
            estimator: MmdEstimator::Biased,
        });
        let attributes = [a.clone(), b.clone()];
        let run = |mode| {
            combined_penalty(
                zt.clone(),
                &cells,
                6,
                &attributes,
                &[2, 3],
                mode,
                &divergence,
            )
            .unwrap()
        };
        let scalar = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
        let each = run(PenaltyMode::Each);
        let (pa, pb) = (host_penalty(&z, &a, 2, s), host_penalty(&z, &b, 3, s));
        assert!(pa > 1e-4 && pb > 1e-4, "{pa} {pb}");
        let value = scalar(each.output.value.clone());
        // float32 kernels against float64 sums.
        assert!((value - (pa + pb)).abs() < 1e-5, "{value} vs {pa} + {pb}");
        assert_eq!(each.terms.len(), 2);
        let terms: Vec<f64> = each.terms.into_iter().map(scalar).collect();
        assert!(
            (terms[0] - pa).abs() < 1e-5 && (terms[1] - pb).abs() < 1e-5,
            "{terms:?}"
        );
        assert!((terms[0] + terms[1] - value).abs() < 1e-6);
        assert!(each.output.missing_groups.is_empty());
        // Each term is the plain penalty of that attribute computed on its own.
        let alone = scalar(
            fairness_penalty(zt.clone(), &b, 3, &divergence)
                .unwrap()
                .value,
        );
        assert_eq!(alone, terms[1] as f32 as f64);
        let cells_penalty = run(PenaltyMode::Intersectional);
        assert!(cells_penalty.terms.is_empty());
        let want = host_penalty(&z, &cells, 6, s);
        let got = scalar(cells_penalty.output.value);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // A cell absent from the rows is reported in "each" mode too.
        let rows: Vec<usize> = (0..n).filter(|&i| cells[i] != 4).collect();
        let sub = |v: &[u32]| -> Vec<u32> { rows.iter().map(|&i| v[i]).collect() };
        let zs = zt.select(0, index_tensor(&rows, &device));
        let out = combined_penalty(
            zs,
            &sub(&cells),
            6,
            &[sub(&a), sub(&b)],
            &[2, 3],
            PenaltyMode::Each,
            &divergence,
        )
        .unwrap();
        assert_eq!(out.output.missing_groups, vec![4]);
    }
}
