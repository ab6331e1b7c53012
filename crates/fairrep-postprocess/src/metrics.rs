//! Risk and unfairness of (post-processed) predictions, and the risk/unfairness curve over
//! `alpha`.
//!
//! The metrics are those of `fairrep_metrics::fairness` (MSE; exact supremum over all thresholds
//! for KS, exact area between the empirical CDFs for W1, max over pairs of groups); this module
//! maps group names to the ids they take and names the group in errors.

use std::collections::HashMap;

use fairrep_metrics::fairness::{self as dm, MetricError};
use serde::{Deserialize, Serialize};

use crate::barycentre::{BarycentreFit, check_alpha, check_finite, check_len, mix};
use crate::error::PostprocessError;
use crate::jitter::Noise;

/// Mean squared error `mean((p - y)^2)`.
pub fn mse(predictions: &[f64], targets: &[f64]) -> Result<f64, PostprocessError> {
    if predictions.is_empty() {
        return Err(PostprocessError::Empty {
            what: "predictions",
        });
    }
    check_len("targets", predictions.len(), targets.len())?;
    check_finite("prediction", predictions)?;
    check_finite("target", targets)?;
    dm::mse(predictions, targets).map_err(|source| PostprocessError::Metric {
        what: "mse".into(),
        source,
    })
}

/// Root mean squared error.
pub fn rmse(predictions: &[f64], targets: &[f64]) -> Result<f64, PostprocessError> {
    mse(predictions, targets).map(f64::sqrt)
}

/// Group ids (positions in `known`) of every row.
fn ids<G: AsRef<str>>(groups: &[G], known: &[String]) -> Result<Vec<u32>, PostprocessError> {
    let index: HashMap<&str, u32> = known
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i as u32))
        .collect();
    groups
        .iter()
        .map(|g| {
            index
                .get(g.as_ref())
                .copied()
                .ok_or_else(|| PostprocessError::UnknownGroup {
                    group: g.as_ref().to_string(),
                    known: known.to_vec(),
                    attribute: None,
                })
        })
        .collect()
}

fn between_groups<G: AsRef<str>>(
    values: &[f64],
    groups: &[G],
    known: &[String],
    what: &str,
    metric: impl Fn(&[f64], &[u32], usize) -> Result<f64, MetricError>,
) -> Result<f64, PostprocessError> {
    if values.is_empty() {
        return Err(PostprocessError::Empty {
            what: "predictions",
        });
    }
    check_len("groups", values.len(), groups.len())?;
    check_finite("prediction", values)?;
    let ids = ids(groups, known)?;
    metric(values, &ids, known.len()).map_err(|e| match e {
        MetricError::EmptyGroup { group, .. } => PostprocessError::GroupMissingFromSample {
            what: what.to_string(),
            group: known[group].clone(),
        },
        source => PostprocessError::Metric {
            what: what.to_string(),
            source,
        },
    })
}

/// Kolmogorov-Smirnov distance `sup_t |F_g(t) - F_g'(t)|` between the groups' empirical
/// distributions of `values`, max over pairs of the groups `known` (each must have a row).
/// `what` names the sample in errors.
pub fn ks_between_groups<G: AsRef<str>>(
    values: &[f64],
    groups: &[G],
    known: &[String],
    what: &str,
) -> Result<f64, PostprocessError> {
    between_groups(values, groups, known, what, dm::ks_distance)
}

/// Wasserstein-1 distance `int |F_g(t) - F_g'(t)| dt` between the groups' empirical
/// distributions, max over pairs (see [`ks_between_groups`]).
pub fn w1_between_groups<G: AsRef<str>>(
    values: &[f64],
    groups: &[G],
    known: &[String],
    what: &str,
) -> Result<f64, PostprocessError> {
    between_groups(values, groups, known, what, dm::w1_distance)
}

/// Demographic-parity gap at `threshold` for scores: `max_g,g' |P(q > t | g) - P(q > t | g')|`
/// (strict `>`, as in `fairrep_data::metrics::dp_gap`).
pub fn dp_gap_between_groups<G: AsRef<str>>(
    scores: &[f64],
    groups: &[G],
    known: &[String],
    threshold: f64,
    what: &str,
) -> Result<f64, PostprocessError> {
    between_groups(scores, groups, known, what, |v, g, n| {
        dm::dp_gap(v, g, n, threshold)
    })
}

/// Risk and unfairness of regression predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Its square root.
    pub rmse: f64,
    /// KS distance between groups (max over pairs).
    pub ks: f64,
    /// W1 distance between groups (max over pairs).
    pub w1: f64,
}

/// MSE, RMSE, KS and W1 of `predictions` against `targets`, groups from `known`.
pub fn regression_metrics<G: AsRef<str>>(
    predictions: &[f64],
    targets: &[f64],
    groups: &[G],
    known: &[String],
    what: &str,
) -> Result<RegressionMetrics, PostprocessError> {
    let mse = mse(predictions, targets)?;
    Ok(RegressionMetrics {
        mse,
        rmse: mse.sqrt(),
        ks: ks_between_groups(predictions, groups, known, what)?,
        w1: w1_between_groups(predictions, groups, known, what)?,
    })
}

/// One point of an [`AlphaCurve`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The fairness knob (0 = base predictions, 1 = fully fair).
    pub alpha: f64,
    /// Risk and unfairness of the post-processed sample.
    pub metrics: RegressionMetrics,
}

/// Risk and unfairness of a post-processed sample as `alpha` goes from 0 to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlphaCurve {
    /// One point per alpha, in the order given.
    pub points: Vec<CurvePoint>,
}

/// `0, 0.1, ..., 1` (computed as `i / 10`, so both ends are exact).
pub fn default_alphas() -> Vec<f64> {
    (0..=10).map(|i| f64::from(i) / 10.0).collect()
}

/// The curve of [`regression_metrics`] over `alphas` for a sample post-processed by `fit`.
///
/// One set of jitter draws (from `noise`) is used for every alpha, so the points differ only
/// by alpha. Groups are the fitted ones; each must have a row in the sample.
pub fn alpha_curve<G: AsRef<str>>(
    fit: &BarycentreFit,
    predictions: &[f64],
    groups: &[G],
    targets: &[f64],
    alphas: &[f64],
    noise: Noise<'_>,
) -> Result<AlphaCurve, PostprocessError> {
    if alphas.is_empty() {
        return Err(PostprocessError::Empty { what: "alphas" });
    }
    for &a in alphas {
        check_alpha(a, None)?;
    }
    check_len("targets", predictions.len(), targets.len())?;
    let draws = fit.prepare(predictions, groups, noise)?;
    let ids = fit.group_ids(groups)?;
    let fair: Vec<f64> = predictions
        .iter()
        .zip(&ids)
        .zip(&draws)
        .map(|((&f, &s), &e)| fit.fair_value_at(s, f + e))
        .collect();
    let known = fit.group_names();
    let mut points = Vec::with_capacity(alphas.len());
    for &alpha in alphas {
        let out: Vec<f64> = predictions
            .iter()
            .zip(&fair)
            .map(|(&f, &g)| mix(f, g, alpha))
            .collect();
        let what = format!("alpha = {alpha}");
        points.push(CurvePoint {
            alpha,
            metrics: regression_metrics(&out, targets, groups, &known, &what)?,
        });
    }
    Ok(AlphaCurve { points })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn by_hand() {
        assert_eq!(mse(&[1.0, 3.0], &[0.0, 1.0]).unwrap(), 2.5);
        assert_eq!(rmse(&[1.0, 3.0], &[1.0, 1.0]).unwrap(), 2f64.sqrt());
        let v = [0.0, 1.0, 2.0, 3.0];
        let g = ["a", "a", "b", "b"];
        let k = names(&["a", "b"]);
        // Disjoint supports: KS = 1; W1 = shift of 2.
        assert_eq!(ks_between_groups(&v, &g, &k, "t").unwrap(), 1.0);
        assert_eq!(w1_between_groups(&v, &g, &k, "t").unwrap(), 2.0);
        assert_eq!(dp_gap_between_groups(&v, &g, &k, 1.5, "t").unwrap(), 1.0);
        assert_eq!(dp_gap_between_groups(&v, &g, &k, 5.0, "t").unwrap(), 0.0);
    }

    #[test]
    fn errors_name_the_group() {
        let k = names(&["a", "b", "c"]);
        let e = ks_between_groups(&[0.0, 1.0], &["a", "b"], &k, "test split").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test split: group `c` has no row; the between-group metric is undefined"
        );
        let e = w1_between_groups(&[0.0, 1.0], &["a", "x"], &k, "t").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "group `x` is not in the fitted post-processor; known groups: a, b, c"
            ),
            "{e}"
        );
        let e = mse(&[0.0, 1.0], &[0.0, f64::NAN]).unwrap_err();
        assert!(
            e.to_string().starts_with("non-finite target at row 1"),
            "{e}"
        );
        assert!(matches!(mse(&[], &[]), Err(PostprocessError::Empty { .. })));
    }
}
