//! Fairness and accuracy metrics of scores (docs/MATH.md, "Fairness metrics"), pure functions.
//!
//! Scores may be `f32` or `f64` (`S: Copy + Into<f64>`); labels are `f32` with `> 0.5`
//! meaning positive; groups are ids in `0..n_groups`. A prediction is positive when
//! `score > threshold` (strict, as in MATH.md). Results are `f64`.
//!
//! No metric returns NaN: an empty input, a length mismatch, a group id out of range, an
//! empty group, and a (group, label) cell without rows where the metric needs one are
//! [`MetricError`]s. In particular the equalised-odds and equal-opportunity gaps are
//! *undefined* (an error naming the group and label) when some group has no positives (or,
//! for equalised odds, no negatives): a gap computed without that group would silently
//! understate the disparity. For `G > 2` groups every pairwise metric is the maximum over
//! pairs of groups.

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// No rows at all.
    #[error("metric on empty input: expected at least one row")]
    Empty,
    /// Two slices differ in length.
    #[error("length mismatch: {what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// Which slice.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// A group id is not below `n_groups`.
    #[error("group id {found} at row {row}: expected an id below n_groups = {n_groups}")]
    GroupOutOfRange {
        /// Row index.
        row: usize,
        /// The id.
        found: u32,
        /// The number of groups.
        n_groups: usize,
    },
    /// A group (optionally restricted to one label) has no rows.
    #[error("group {group}{} has no rows; the metric is undefined", label.map_or(String::new(), |l| format!(" with label {l}")))]
    EmptyGroup {
        /// The group.
        group: usize,
        /// The label class, when the metric conditions on it.
        label: Option<u8>,
    },
    /// AUC needs both classes.
    #[error("AUC needs positive and negative labels, found only {0}")]
    OneClass(&'static str),
    /// A score or label is NaN or infinite.
    #[error("non-finite {what} at row {row}")]
    NonFinite {
        /// `score` or `label`.
        what: &'static str,
        /// Row index.
        row: usize,
    },
}

fn check<S: Copy + Into<f64>>(
    scores: &[S],
    other: usize,
    what: &'static str,
) -> Result<Vec<f64>, MetricError> {
    if scores.is_empty() {
        return Err(MetricError::Empty);
    }
    if other != scores.len() {
        return Err(MetricError::LengthMismatch {
            what,
            expected: scores.len(),
            found: other,
        });
    }
    scores
        .iter()
        .enumerate()
        .map(|(row, &s)| {
            let v: f64 = s.into();
            if v.is_finite() {
                Ok(v)
            } else {
                Err(MetricError::NonFinite { what: "score", row })
            }
        })
        .collect()
}

fn labels01(labels: &[f32]) -> Result<Vec<bool>, MetricError> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &l)| {
            if l.is_finite() {
                Ok(l > 0.5)
            } else {
                Err(MetricError::NonFinite { what: "label", row })
            }
        })
        .collect()
}

fn check_groups(groups: &[u32], n_groups: usize) -> Result<(), MetricError> {
    match groups.iter().position(|&g| g as usize >= n_groups) {
        Some(row) => Err(MetricError::GroupOutOfRange {
            row,
            found: groups[row],
            n_groups,
        }),
        None => Ok(()),
    }
}

/// Fraction of rows where `(score > threshold) == (label > 0.5)`.
pub fn accuracy<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[f32],
    threshold: f64,
) -> Result<f64, MetricError> {
    let s = check(scores, labels.len(), "labels")?;
    let y = labels01(labels)?;
    let hits = s
        .iter()
        .zip(&y)
        .filter(|(s, y)| (**s > threshold) == **y)
        .count();
    Ok(hits as f64 / s.len() as f64)
}

/// Positive-prediction rate per group over the rows where `keep` holds.
fn rates(
    s: &[f64],
    groups: &[u32],
    n_groups: usize,
    threshold: f64,
    keep: impl Fn(usize) -> bool,
    label: Option<u8>,
) -> Result<Vec<f64>, MetricError> {
    let mut pos = vec![0usize; n_groups];
    let mut tot = vec![0usize; n_groups];
    for (i, (&v, &g)) in s.iter().zip(groups).enumerate() {
        if keep(i) {
            tot[g as usize] += 1;
            pos[g as usize] += usize::from(v > threshold);
        }
    }
    if let Some(group) = tot.iter().position(|&t| t == 0) {
        return Err(MetricError::EmptyGroup { group, label });
    }
    Ok(pos
        .iter()
        .zip(&tot)
        .map(|(&p, &t)| p as f64 / t as f64)
        .collect())
}

fn max_pair_gap(r: &[f64]) -> f64 {
    let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = r.iter().copied().fold(f64::INFINITY, f64::min);
    max - min
}

/// Demographic-parity gap: `max_{g,g'} |P(q > t | g) - P(q > t | g')|`.
pub fn dp_gap<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
    threshold: f64,
) -> Result<f64, MetricError> {
    let s = check(scores, groups.len(), "groups")?;
    check_groups(groups, n_groups)?;
    Ok(max_pair_gap(&rates(
        &s,
        groups,
        n_groups,
        threshold,
        |_| true,
        None,
    )?))
}

fn conditional_gap<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
    threshold: f64,
    ys: &[bool],
) -> Result<f64, MetricError> {
    let s = check(scores, groups.len(), "groups")?;
    if labels.len() != s.len() {
        return Err(MetricError::LengthMismatch {
            what: "labels",
            expected: s.len(),
            found: labels.len(),
        });
    }
    check_groups(groups, n_groups)?;
    let y = labels01(labels)?;
    let mut gap: f64 = 0.0;
    for &want in ys {
        let r = rates(
            &s,
            groups,
            n_groups,
            threshold,
            |i| y[i] == want,
            Some(u8::from(want)),
        )?;
        gap = gap.max(max_pair_gap(&r));
    }
    Ok(gap)
}

/// Equalised-odds gap: the maximum over `y` in {0, 1} of the DP gap among rows with label `y`.
pub fn eo_gap<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
    threshold: f64,
) -> Result<f64, MetricError> {
    conditional_gap(scores, labels, groups, n_groups, threshold, &[false, true])
}

/// Equal-opportunity gap: the DP gap among rows with label 1 (true-positive-rate gap).
pub fn equal_opportunity_gap<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
    threshold: f64,
) -> Result<f64, MetricError> {
    conditional_gap(scores, labels, groups, n_groups, threshold, &[true])
}

/// Sorted scores of each group; error on an empty group.
fn per_group_sorted<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
) -> Result<Vec<Vec<f64>>, MetricError> {
    let s = check(scores, groups.len(), "groups")?;
    check_groups(groups, n_groups)?;
    let mut by = vec![Vec::new(); n_groups];
    for (&v, &g) in s.iter().zip(groups) {
        by[g as usize].push(v);
    }
    if let Some(group) = by.iter().position(Vec::is_empty) {
        return Err(MetricError::EmptyGroup { group, label: None });
    }
    for v in &mut by {
        v.sort_by(f64::total_cmp);
    }
    Ok(by)
}

/// Sweeps the merged support of two sorted samples, calling `f(cdf_a, cdf_b, x, next_x)` on
/// every interval `[x, next_x)` between consecutive distinct values (the CDFs are constant there).
fn sweep(a: &[f64], b: &[f64], mut f: impl FnMut(f64, f64, f64, f64)) {
    let (mut i, mut j) = (0, 0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    while i < a.len() || j < b.len() {
        let x = match (a.get(i), b.get(j)) {
            (Some(&u), Some(&v)) => u.min(v),
            (Some(&u), None) => u,
            (None, Some(&v)) => v,
            (None, None) => unreachable!(),
        };
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let next = match (a.get(i), b.get(j)) {
            (Some(&u), Some(&v)) => u.min(v),
            (Some(&u), None) => u,
            (None, Some(&v)) => v,
            (None, None) => x,
        };
        f(i as f64 / na, j as f64 / nb, x, next);
    }
}

fn max_over_pairs(by: &[Vec<f64>], d: impl Fn(&[f64], &[f64]) -> f64) -> f64 {
    let mut m: f64 = 0.0;
    for a in 0..by.len() {
        for b in a + 1..by.len() {
            m = m.max(d(&by[a], &by[b]));
        }
    }
    m
}

/// Kolmogorov-Smirnov distance `sup_t |F_g(t) - F_g'(t)|` between groups' score distributions
/// (max over pairs).
pub fn ks_distance<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
) -> Result<f64, MetricError> {
    let by = per_group_sorted(scores, groups, n_groups)?;
    Ok(max_over_pairs(&by, |a, b| {
        let mut m: f64 = 0.0;
        sweep(a, b, |fa, fb, _, _| m = m.max((fa - fb).abs()));
        m
    }))
}

/// Wasserstein-1 distance `int |F_g(t) - F_g'(t)| dt` between groups' empirical score
/// distributions (max over pairs).
pub fn w1_distance<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
) -> Result<f64, MetricError> {
    let by = per_group_sorted(scores, groups, n_groups)?;
    Ok(max_over_pairs(&by, |a, b| {
        let mut area = 0.0;
        sweep(a, b, |fa, fb, x, next| area += (fa - fb).abs() * (next - x));
        area
    }))
}

/// ABCC, area between the groups' empirical score CDFs over `[0, 1]` (Han et al. 2023), max
/// over pairs. This is what MATH.md calls ABPC; for scores in `[0, 1]` it equals
/// [`w1_distance`]. Scores outside `[0, 1]` are clipped to it.
pub fn abcc<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
) -> Result<f64, MetricError> {
    let clipped: Vec<f64> = check(scores, groups.len(), "groups")?
        .iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect();
    w1_distance(&clipped, groups, n_groups)
}

/// ABPC as defined by Han et al. (2023, "Retiring ΔDP"): area between the groups' score
/// *densities* on `[0, 1]`, `int_0^1 |f_g(t) - f_g'(t)| dt`, each density a Gaussian kernel
/// density estimate with Silverman's bandwidth (`0.9 min(sd, IQR / 1.34) n^(-1/5)`, floored at
/// 1e-3), integrated by the trapezoid rule on 1001 grid points; max over pairs. It lies in
/// `[0, 2]`. For the CDF-based area that MATH.md describes, use [`abcc`].
pub fn abpc<S: Copy + Into<f64>>(
    scores: &[S],
    groups: &[u32],
    n_groups: usize,
) -> Result<f64, MetricError> {
    let by = per_group_sorted(scores, groups, n_groups)?;
    const GRID: usize = 1001;
    let dens: Vec<Vec<f64>> = by
        .iter()
        .map(|v| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd =
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
            let q = |p: f64| v[((n - 1.0) * p).round() as usize];
            let iqr = (q(0.75) - q(0.25)) / 1.34;
            let spread = if iqr > 0.0 { sd.min(iqr) } else { sd };
            let h = (0.9 * spread * n.powf(-0.2)).max(1e-3);
            let norm = 1.0 / (n * h * (2.0 * std::f64::consts::PI).sqrt());
            (0..GRID)
                .map(|k| {
                    let t = k as f64 / (GRID - 1) as f64;
                    norm * v
                        .iter()
                        .map(|x| (-0.5 * ((t - x) / h).powi(2)).exp())
                        .sum::<f64>()
                })
                .collect()
        })
        .collect();
    let dt = 1.0 / (GRID - 1) as f64;
    let mut m: f64 = 0.0;
    for a in 0..dens.len() {
        for b in a + 1..dens.len() {
            let diff: Vec<f64> = dens[a]
                .iter()
                .zip(&dens[b])
                .map(|(x, y)| (x - y).abs())
                .collect();
            let area = dt * (diff.iter().sum::<f64>() - 0.5 * (diff[0] + diff[GRID - 1]));
            m = m.max(area);
        }
    }
    Ok(m)
}

/// ROC AUC (probability that a random positive scores above a random negative, ties count
/// one half), via average ranks (Mann-Whitney U).
pub fn auc<S: Copy + Into<f64>>(scores: &[S], labels: &[f32]) -> Result<f64, MetricError> {
    let s = check(scores, labels.len(), "labels")?;
    let y = labels01(labels)?;
    let n_pos = y.iter().filter(|&&p| p).count();
    let n_neg = y.len() - n_pos;
    if n_pos == 0 {
        return Err(MetricError::OneClass("negatives"));
    }
    if n_neg == 0 {
        return Err(MetricError::OneClass("positives"));
    }
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && s[idx[j + 1]] == s[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * idx[i..=j].iter().filter(|&&k| y[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

/// Mean squared error.
pub fn mse<S: Copy + Into<f64>, T: Copy + Into<f64>>(
    predictions: &[S],
    targets: &[T],
) -> Result<f64, MetricError> {
    let p = check(predictions, targets.len(), "targets")?;
    let mut acc = 0.0;
    for (row, (&a, &t)) in p.iter().zip(targets).enumerate() {
        let t: f64 = t.into();
        if !t.is_finite() {
            return Err(MetricError::NonFinite { what: "label", row });
        }
        acc += (a - t).powi(2);
    }
    Ok(acc / p.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-12;

    #[test]
    fn accuracy_and_mse_by_hand() {
        let s = [0.9f32, 0.2, 0.6, 0.4];
        let y = [1.0, 0.0, 0.0, 0.0];
        assert!((accuracy(&s, &y, 0.5).unwrap() - 0.75).abs() < TOL);
        // Threshold is strict: 0.5 > 0.5 is false.
        assert_eq!(accuracy(&[0.5f64], &[0.0], 0.5).unwrap(), 1.0);
        assert!((mse(&[1.0f64, 3.0], &[0.0, 1.0]).unwrap() - 2.5).abs() < TOL);
        assert_eq!(accuracy::<f32>(&[], &[], 0.5), Err(MetricError::Empty));
        assert!(matches!(
            mse(&[1.0f32], &[0.0, 1.0]),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert_eq!(
            accuracy(&[f32::NAN], &[0.0], 0.5),
            Err(MetricError::NonFinite {
                what: "score",
                row: 0
            })
        );
    }

    #[test]
    fn dp_gap_known_rates() {
        // Group 0: 3 of 4 positive (0.75); group 1: 1 of 4 (0.25); group 2: 2 of 4 (0.5).
        let s = [
            0.9f32, 0.8, 0.7, 0.1, 0.9, 0.1, 0.2, 0.3, 0.6, 0.6, 0.4, 0.4,
        ];
        let g = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
        assert!((dp_gap(&s[..8], &g[..8], 2, 0.5).unwrap() - 0.5).abs() < TOL);
        assert!((dp_gap(&s, &g, 3, 0.5).unwrap() - 0.5).abs() < TOL);
        assert_eq!(
            dp_gap(&s[..8], &g[..8], 3, 0.5),
            Err(MetricError::EmptyGroup {
                group: 2,
                label: None
            })
        );
        assert!(matches!(
            dp_gap(&s, &g, 2, 0.5),
            Err(MetricError::GroupOutOfRange { row: 8, .. })
        ));
    }

    #[test]
    fn eo_and_equal_opportunity_known_rates() {
        // y=1: group 0 TPR 2/2, group 1 TPR 1/2 -> 0.5. y=0: group 0 FPR 1/2, group 1 FPR 0/2 -> 0.5.
        // Make the FPR gap larger: group 0 FPR 2/2 -> EO gap 1.0, EOpp gap 0.5.
        let s = [0.9f32, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1];
        let y = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let g = [0, 0, 0, 0, 1, 1, 1, 1];
        assert!((equal_opportunity_gap(&s, &y, &g, 2, 0.5).unwrap() - 0.5).abs() < TOL);
        assert!((eo_gap(&s, &y, &g, 2, 0.5).unwrap() - 1.0).abs() < TOL);
        // Group 1 without positives: undefined, an error naming group and label.
        let y2 = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let e = equal_opportunity_gap(&s, &y2, &g, 2, 0.5).unwrap_err();
        assert_eq!(
            e,
            MetricError::EmptyGroup {
                group: 1,
                label: Some(1)
            }
        );
        assert!(e.to_string().contains("group 1 with label 1"));
        assert!(eo_gap(&s, &y2, &g, 2, 0.5).is_err());
    }

    #[test]
    fn ks_w1_abcc_by_hand() {
        // Group 0 at {0.1, 0.3}, group 1 at {0.2, 0.6}.
        // CDF difference: [0.1,0.2): 0.5, [0.2,0.3): 0, [0.3,0.6): 0.5 -> KS 0.5,
        // W1 = 0.5*0.1 + 0.5*0.3 = 0.2 (= mean shift since the sorted pairs are ordered).
        let s = [0.1f64, 0.3, 0.2, 0.6];
        let g = [0, 0, 1, 1];
        assert!((ks_distance(&s, &g, 2).unwrap() - 0.5).abs() < TOL);
        assert!((w1_distance(&s, &g, 2).unwrap() - 0.2).abs() < TOL);
        assert!((abcc(&s, &g, 2).unwrap() - 0.2).abs() < TOL);
        // Identical distributions (with ties) -> 0; unequal sizes handled.
        let s2 = [0.5f32, 0.5, 0.5];
        assert_eq!(ks_distance(&s2, &[0, 1, 1], 2).unwrap(), 0.0);
        assert_eq!(w1_distance(&s2, &[0, 1, 1], 2).unwrap(), 0.0);
        // Point masses at 0 and 1: KS 1, W1 1. Three groups: max over pairs.
        let s3 = [0.0f32, 1.0, 0.5];
        assert!((w1_distance(&s3, &[0, 1, 2], 3).unwrap() - 1.0).abs() < TOL);
        assert!((ks_distance(&s3, &[0, 1, 2], 3).unwrap() - 1.0).abs() < TOL);
        assert_eq!(
            w1_distance(&s3, &[0, 0, 0], 2),
            Err(MetricError::EmptyGroup {
                group: 1,
                label: None
            })
        );
    }

    #[test]
    fn abpc_separated_and_identical() {
        // Far-apart tight clusters: densities do not overlap -> area ~2.
        let mut s = vec![0.2f64; 50];
        s.extend(vec![0.8f64; 50]);
        let g: Vec<u32> = (0..100).map(|i| u32::from(i >= 50)).collect();
        let a = abpc(&s, &g, 2).unwrap();
        assert!((a - 2.0).abs() < 1e-3, "abpc {a}");
        // Same sample in both groups -> 0.
        let s2: Vec<f64> = (0..20).map(|i| f64::from(i % 10) / 10.0).collect();
        let g2: Vec<u32> = (0..20).map(|i| u32::from(i >= 10)).collect();
        assert!(abpc(&s2, &g2, 2).unwrap() < 1e-12);
    }

    #[test]
    fn auc_with_ties_by_hand() {
        // Positives {0.8, 0.5}, negatives {0.5, 0.2}: pairs (0.8>0.5, 0.8>0.2, 0.5=0.5 -> 1/2, 0.5>0.2)
        // -> 3.5 / 4.
        let s = [0.8f32, 0.5, 0.5, 0.2];
        let y = [1.0, 1.0, 0.0, 0.0];
        assert!((auc(&s, &y).unwrap() - 0.875).abs() < TOL);
        assert_eq!(auc(&[0.1f32, 0.9], &[0.0, 1.0]).unwrap(), 1.0);
        assert_eq!(auc(&[0.3f32, 0.3], &[0.0, 1.0]).unwrap(), 0.5);
        assert_eq!(
            auc(&[0.3f32, 0.4], &[1.0, 1.0]),
            Err(MetricError::OneClass("positives"))
        );
    }
}
