//! Fronts and selection, on validation only: each configuration's mean and 95% interval over
//! seeds, the validation Pareto fronts (accuracy against DP gap, and against KS), and the
//! selection rules. Test numbers are carried beside the chosen configurations, never read by
//! a rule.
use std::collections::BTreeMap;

use fairrep_metrics::interval::Interval;
use serde::Serialize;
use serde_json::Value;

use crate::error::SweepError;
use crate::results::Row;
use crate::spec::SelectSection;

/// Mean and half-width of the 95% t-interval over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean over seeds.
    pub mean: f64,
    /// Half-width of the 95% interval (0 for one seed).
    pub ci95: f64,
    /// Seeds.
    pub n: usize,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let i = Interval::of(values);
        Self {
            mean: i.mean,
            ci95: i.ci95,
            n: i.n,
        }
    }
}

/// One configuration over its seeds, for one task.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigPoint {
    /// The configuration id.
    pub config_id: String,
    /// The swept values.
    pub params: BTreeMap<String, Value>,
    /// Validation accuracy.
    pub valid_accuracy: Stat,
    /// Validation DP gap.
    pub valid_dp_gap: Stat,
    /// Validation KS distance.
    pub valid_ks: Stat,
    /// Test accuracy (reported, never used to choose).
    pub test_accuracy: Stat,
    /// Test DP gap (reported, never used to choose).
    pub test_dp_gap: Stat,
    /// Test KS distance (reported, never used to choose).
    pub test_ks: Stat,
}

/// The task to trade off: `wanted`, else the first task (by name) with an accuracy.
pub fn choose_task(rows: &[Row], wanted: Option<&str>) -> Result<String, SweepError> {
    let tasks: Vec<String> = rows
        .first()
        .map(|r| {
            r.metrics
                .keys()
                .filter_map(|k| {
                    k.strip_prefix("valid.")
                        .and_then(|k| k.strip_suffix(".accuracy"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    match wanted {
        Some(t) if tasks.iter().any(|x| x == t) => Ok(t.to_string()),
        Some(t) => Err(SweepError::Select {
            message: format!(
                "select.task = `{t}` is not a binary task of the results; they have {tasks:?}"
            ),
        }),
        None => tasks.into_iter().next().ok_or_else(|| SweepError::Select {
            message: "the results have no binary task (no accuracy) to trade off".into(),
        }),
    }
}

/// Groups the rows by configuration (in order of first appearance) and summarises `task`.
pub fn aggregate(rows: &[Row], task: &str) -> Result<Vec<ConfigPoint>, SweepError> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        if !groups.contains_key(row.config_id.as_str()) {
            order.push(&row.config_id);
        }
        groups.entry(&row.config_id).or_default().push(row);
    }
    order
        .into_iter()
        .map(|id| {
            let members = &groups[id];
            let get = |split: &str, metric: &str| -> Result<Stat, SweepError> {
                let key = format!("{split}.{task}.{metric}");
                let values = members
                    .iter()
                    .map(|r| {
                        r.metrics
                            .get(&key)
                            .copied()
                            .ok_or_else(|| SweepError::Select {
                                message: format!("run {} has no `{key}`", r.run_id),
                            })
                    })
                    .collect::<Result<Vec<f64>, _>>()?;
                Ok(Stat::of(&values))
            };
            Ok(ConfigPoint {
                config_id: id.to_string(),
                params: members[0].params.clone(),
                valid_accuracy: get("valid", "accuracy")?,
                valid_dp_gap: get("valid", "dp_gap")?,
                valid_ks: get("valid", "ks")?,
                test_accuracy: get("test", "accuracy")?,
                test_dp_gap: get("test", "dp_gap")?,
                test_ks: get("test", "ks")?,
            })
        })
        .collect()
}

/// The unfairness measure of a front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfairness {
    /// Validation DP gap.
    DpGap,
    /// Validation KS distance.
    Ks,
}

impl Unfairness {
    fn of(self, p: &ConfigPoint) -> f64 {
        match self {
            Self::DpGap => p.valid_dp_gap.mean,
            Self::Ks => p.valid_ks.mean,
        }
    }
}

/// Indices of the configurations on the validation Pareto front (mean accuracy up, mean
/// unfairness down): those no other configuration matches on both and beats on one. Sorted by
/// unfairness.
pub fn pareto_front(points: &[ConfigPoint], unfairness: Unfairness) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (ai, ui) = (points[i].valid_accuracy.mean, unfairness.of(&points[i]));
            !points.iter().any(|q| {
                let (aq, uq) = (q.valid_accuracy.mean, unfairness.of(q));
                aq >= ai && uq <= ui && (aq > ai || uq < ui)
            })
        })
        .collect();
    front.sort_by(|&a, &b| {
        unfairness
            .of(&points[a])
            .total_cmp(&unfairness.of(&points[b]))
    });
    front
}

/// One selection rule and what it chose.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The rule, in words.
    pub rule: String,
    /// The chosen configuration's index, `None` when no configuration qualifies.
    pub chosen: Option<usize>,
}

/// "Highest mean validation accuracy with mean validation DP gap <= k" (ties: lower gap).
pub fn best_with_dp_at_most(points: &[ConfigPoint], k: f64) -> Choice {
    let chosen = (0..points.len())
        .filter(|&i| points[i].valid_dp_gap.mean <= k)
        .max_by(|&a, &b| {
            let (pa, pb) = (&points[a], &points[b]);
            pa.valid_accuracy
                .mean
                .total_cmp(&pb.valid_accuracy.mean)
                .then(pb.valid_dp_gap.mean.total_cmp(&pa.valid_dp_gap.mean))
                .then(b.cmp(&a))
        });
    Choice {
        rule: format!("highest validation accuracy with validation DP gap <= {k}"),
        chosen,
    }
}

/// "Lowest mean validation DP gap with mean validation accuracy >= best - delta" (ties:
/// higher accuracy).
pub fn fairest_within(points: &[ConfigPoint], delta: f64) -> Choice {
    let best = points
        .iter()
        .map(|p| p.valid_accuracy.mean)
        .fold(f64::NEG_INFINITY, f64::max);
    let chosen = (0..points.len())
        .filter(|&i| points[i].valid_accuracy.mean >= best - delta)
        .min_by(|&a, &b| {
            let (pa, pb) = (&points[a], &points[b]);
            pa.valid_dp_gap
                .mean
                .total_cmp(&pb.valid_dp_gap.mean)
                .then(pb.valid_accuracy.mean.total_cmp(&pa.valid_accuracy.mean))
                .then(a.cmp(&b))
        });
    Choice {
        rule: format!("lowest validation DP gap with validation accuracy >= best - {delta}"),
        chosen,
    }
}

/// Everything the report and the plot show.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// The task traded off.
    pub task: String,
    /// The configurations.
    pub points: Vec<ConfigPoint>,
    /// Front of accuracy against DP gap (indices into `points`).
    pub front_dp: Vec<usize>,
    /// Front of accuracy against KS.
    pub front_ks: Vec<usize>,
    /// The rules' choices.
    pub choices: Vec<Choice>,
}

/// Aggregates, draws the fronts and applies the rules of `select`.
pub fn analyse(rows: &[Row], select: &SelectSection) -> Result<Analysis, SweepError> {
    let task = choose_task(rows, select.task.as_deref())?;
    let points = aggregate(rows, &task)?;
    let mut choices: Vec<Choice> = select
        .dp_max
        .iter()
        .map(|&k| best_with_dp_at_most(&points, k))
        .collect();
    choices.push(fairest_within(&points, select.accuracy_delta));
    Ok(Analysis {
        front_dp: pareto_front(&points, Unfairness::DpGap),
        front_ks: pareto_front(&points, Unfairness::Ks),
        task,
        points,
        choices,
    })
}
