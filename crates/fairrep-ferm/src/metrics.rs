//! The few metrics FERM needs, on slices (MATH.md, "Fairness metrics", threshold 0 on the
//! decision value): a row is predicted positive when `score > 0` (strict).
//!
//! These mirror the workspace's generic metrics (accuracy, DP gap, equalised-odds gap, equal
//! opportunity gap) for two groups and are kept to what this crate uses; they take the same
//! kind of slices so the shared ones can replace them.

use crate::FermError;

/// Accuracy and the fairness gaps of a scorer on a labelled, grouped sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FairnessMetrics {
    /// Fraction of rows with `(score > 0) == (label == 1)`.
    pub accuracy: f64,
    /// Difference of equal opportunity: `|TPR_a - TPR_b|`, `TPR_g = P(score > 0 | y = 1, s = g)`.
    pub deo: f64,
    /// Demographic-parity gap `|P(score > 0 | s = a) - P(score > 0 | s = b)|`.
    pub dp_gap: f64,
    /// Equalised-odds gap: `max(|TPR_a - TPR_b|, |FPR_a - FPR_b|)`.
    pub eo_gap: f64,
}

fn check(scores: &[f64], labels: &[f64], groups: &[u32]) -> Result<(), FermError> {
    if scores.is_empty() {
        return Err(FermError::TooSmall {
            what: "scores",
            min: 1,
            found: 0,
        });
    }
    for (what, len) in [("labels", labels.len()), ("groups", groups.len())] {
        if len != scores.len() {
            return Err(FermError::LengthMismatch {
                what,
                expected: scores.len(),
                found: len,
            });
        }
    }
    if let Some(row) = scores.iter().position(|s| !s.is_finite()) {
        return Err(FermError::NonFiniteScore {
            row,
            value: scores[row],
        });
    }
    if let Some(row) = labels.iter().position(|&l| l != 0.0 && l != 1.0) {
        return Err(FermError::NonBinaryLabel {
            row,
            value: labels[row],
        });
    }
    if let Some(row) = groups.iter().position(|&g| g > 1) {
        return Err(FermError::GroupOutOfRange {
            row,
            found: groups[row],
        });
    }
    Ok(())
}

/// Positive-prediction rate of each group among the rows with label `label` (all rows when
/// `None`); an error names the group with no such row.
fn rates(
    scores: &[f64],
    labels: &[f64],
    groups: &[u32],
    label: Option<f64>,
) -> Result<[f64; 2], FermError> {
    let mut pos = [0usize; 2];
    let mut tot = [0usize; 2];
    for ((&s, &l), &g) in scores.iter().zip(labels).zip(groups) {
        if label.is_none_or(|want| l == want) {
            tot[g as usize] += 1;
            pos[g as usize] += usize::from(s > 0.0);
        }
    }
    for g in 0..2u32 {
        if tot[g as usize] == 0 {
            return Err(match label {
                Some(1.0) => FermError::NoPositives { group: g },
                Some(_) => FermError::InvalidConfig {
                    key: "labels",
                    expected: "a negative example in each group (for the FPR gap)",
                    found: format!("none in group {g}"),
                },
                None => FermError::OneGroup { present: 1 - g },
            });
        }
    }
    Ok([pos[0] as f64 / tot[0] as f64, pos[1] as f64 / tot[1] as f64])
}

/// Fraction of rows with `(score > 0) == (label == 1)`.
pub fn accuracy(scores: &[f64], labels: &[f64]) -> Result<f64, FermError> {
    let groups = vec![0; scores.len()];
    check(scores, labels, &groups)?;
    let hits = scores
        .iter()
        .zip(labels)
        .filter(|&(&s, &l)| (s > 0.0) == (l == 1.0))
        .count();
    Ok(hits as f64 / scores.len() as f64)
}

/// DEO `= |TPR_a - TPR_b|`; an error when a group has no positive row.
pub fn deo(scores: &[f64], labels: &[f64], groups: &[u32]) -> Result<f64, FermError> {
    check(scores, labels, groups)?;
    let r = rates(scores, labels, groups, Some(1.0))?;
    Ok((r[0] - r[1]).abs())
}

/// All of [`FairnessMetrics`]; the EO gap needs a negative row in each group too.
pub fn evaluate(
    scores: &[f64],
    labels: &[f64],
    groups: &[u32],
) -> Result<FairnessMetrics, FermError> {
    check(scores, labels, groups)?;
    let tpr = rates(scores, labels, groups, Some(1.0))?;
    let fpr = rates(scores, labels, groups, Some(0.0))?;
    let all = rates(scores, labels, groups, None)?;
    let deo = (tpr[0] - tpr[1]).abs();
    Ok(FairnessMetrics {
        accuracy: accuracy(scores, labels)?,
        deo,
        dp_gap: (all[0] - all[1]).abs(),
        eo_gap: deo.max((fpr[0] - fpr[1]).abs()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_values() {
        // group a: positives scored (+, +, -), negative (-); group b: positives (+), negatives (+, -).
        let scores = [1.0, 0.5, -1.0, -2.0, 3.0, 0.1, 0.0];
        let labels = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let groups = [0, 0, 0, 0, 1, 1, 1];
        let m = evaluate(&scores, &labels, &groups).unwrap();
        // hits: rows 0, 1, 3, 4, 6 (score 0 is negative) -> 5/7.
        assert!((m.accuracy - 5.0 / 7.0).abs() < 1e-15);
        // TPR_a = 2/3, TPR_b = 1.
        assert!((m.deo - 1.0 / 3.0).abs() < 1e-15);
        // P(+|a) = 2/4, P(+|b) = 2/3.
        assert!((m.dp_gap - (2.0 / 3.0 - 0.5)).abs() < 1e-15);
        // FPR_a = 0, FPR_b = 1/2 -> EO = max(1/3, 1/2).
        assert!((m.eo_gap - 0.5).abs() < 1e-15);
    }

    #[test]
    fn undefined_gaps_are_errors() {
        let e = deo(&[1.0, 1.0], &[1.0, 0.0], &[0, 1]).unwrap_err();
        assert_eq!(e, FermError::NoPositives { group: 1 });
        let e = evaluate(&[1.0, 1.0], &[1.0, 1.0], &[0, 1]).unwrap_err();
        assert!(matches!(e, FermError::InvalidConfig { .. }), "{e}");
        let e = accuracy(&[1.0], &[1.0, 0.0]).unwrap_err();
        assert!(matches!(e, FermError::LengthMismatch { .. }));
        let e = accuracy(&[f64::NAN], &[1.0]).unwrap_err();
        assert!(matches!(e, FermError::NonFiniteScore { row: 0, .. }));
    }
}
