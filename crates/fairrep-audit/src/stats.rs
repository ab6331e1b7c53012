//! Statistics of audits (docs/MATH.md, "Fairness metrics" and the transfer bounds): threshold
//! and threshold-free demographic parity of scores, the divergence between the groups'
//! representations with a permutation-test p-value, and the bounds
//! `|E[f(z)|s=g] - E[f(z)|s=g']| <= L W1` and `<= ||f||_H MMD` (their algebra in
//! `fairrep_metrics::bounds`).
use burn::tensor::{Device, Tensor, TensorData};
use fairrep_data::{DataError, Matrix, stratified_subsample};
use fairrep_loss::{
    Bandwidth, Divergence, LossError, MmdConfig, MmdEstimator, SinkhornConfig, fairness_penalty,
    solve_potentials,
};
use fairrep_metrics::bounds::{self, MmdBound, W1Bound};
use fairrep_metrics::fairness::{self as metrics, MetricError};
use fairrep_metrics::median::median_pairwise_distance;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Classification threshold on the predicted probability.
pub const THRESHOLD: f64 = 0.5;

/// Why an audit statistic could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The subsample cannot be drawn (a group without rows).
    #[error("cannot subsample the groups: {0}")]
    Subsample(#[from] DataError),
    /// A divergence failed.
    #[error(transparent)]
    Loss(#[from] LossError),
}

/// Metrics of the scores `q in [0, 1]` of one binary task on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreMetrics {
    /// Accuracy of the decisions `q > 0.5`.
    pub accuracy: f64,
    /// Absent when the split has one class only.
    pub auc: Option<f64>,
    /// DP gap of the decisions `q > 0.5`.
    pub dp_gap: f64,
    /// Equalised-odds gap (absent when a group lacks a class).
    pub eo_gap: Option<f64>,
    /// Equal-opportunity gap (absent when a group lacks positives).
    pub eopp_gap: Option<f64>,
    /// Kolmogorov-Smirnov distance between the groups' score distributions.
    pub ks: f64,
    /// W1 distance between the groups' score distributions (for scores in [0, 1], the area
    /// between their CDFs, ABCC).
    pub w1: f64,
    /// ABPC (Han et al. 2023): the area between the groups' score densities (Gaussian kernel
    /// density estimates), in [0, 2] (`fairrep_metrics::fairness::abpc`).
    pub abpc: f64,
    /// `max_{g,g'} |E[q | g] - E[q | g']|`, the quantity the transfer bounds bound.
    pub score_gap: f64,
}

/// [`ScoreMetrics`] of `scores` (probabilities) against binary `labels`.
pub fn score_metrics(
    scores: &[f64],
    labels: &[f32],
    groups: &[u32],
    n_groups: usize,
) -> Result<ScoreMetrics, MetricError> {
    let mut sums = vec![(0.0f64, 0usize); n_groups];
    for (&q, &g) in scores.iter().zip(groups) {
        let s = &mut sums[g as usize];
        s.0 += q;
        s.1 += 1;
    }
    if let Some(g) = sums.iter().position(|s| s.1 == 0) {
        return Err(MetricError::EmptyGroup {
            group: g,
            label: None,
        });
    }
    let means: Vec<f64> = sums.iter().map(|(s, c)| s / *c as f64).collect();
    let score_gap = means.iter().copied().fold(f64::MIN, f64::max)
        - means.iter().copied().fold(f64::MAX, f64::min);
    Ok(ScoreMetrics {
        accuracy: metrics::accuracy(scores, labels, THRESHOLD)?,
        auc: metrics::auc(scores, labels).ok(),
        dp_gap: metrics::dp_gap(scores, groups, n_groups, THRESHOLD)?,
        eo_gap: metrics::eo_gap(scores, labels, groups, n_groups, THRESHOLD).ok(),
        eopp_gap: metrics::equal_opportunity_gap(scores, labels, groups, n_groups, THRESHOLD).ok(),
        ks: metrics::ks_distance(scores, groups, n_groups)?,
        w1: metrics::w1_distance(scores, groups, n_groups)?,
        abpc: metrics::abpc(scores, groups, n_groups)?,
        score_gap,
    })
}

fn tensor(f: &Matrix<f32>, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(f.values.clone(), [f.rows, f.cols]), device)
}

/// The rows of each group.
fn members(groups: &[u32], n_groups: usize) -> Vec<Vec<usize>> {
    let mut m = vec![Vec::new(); n_groups];
    for (i, &g) in groups.iter().enumerate() {
        m[g as usize].push(i);
    }
    m
}

/// `z` divided by the square root of its mean per-coordinate variance, so that divergences of
/// representations of different scales (an encoder may shrink `z`) are comparable; with the
/// scale.
pub fn scale_normalised(z: &Matrix<f32>) -> (Matrix<f32>, f64) {
    let (n, k) = (z.rows.max(1) as f64, z.cols);
    let mut mean = vec![0.0f64; k];
    for i in 0..z.rows {
        z.row(i)
            .iter()
            .zip(&mut mean)
            .for_each(|(&v, m)| *m += f64::from(v) / n);
    }
    let mut var = 0.0;
    for i in 0..z.rows {
        z.row(i)
            .iter()
            .zip(&mean)
            .for_each(|(&v, m)| var += (f64::from(v) - m).powi(2));
    }
    let scale = (var / (n * k.max(1) as f64)).sqrt();
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let values = z
        .values
        .iter()
        .map(|&v| (f64::from(v) / scale) as f32)
        .collect();
    (Matrix::new(values, z.rows, z.cols), scale)
}

/// Median pairwise distance of the rows (`fairrep_metrics::median`; 1 when every row
/// coincides), the bandwidth of the audits' kernels.
pub fn median_distance(z: &Matrix<f32>) -> f64 {
    median_pairwise_distance(&z.values, z.cols).map_or(1.0, |m| m.value)
}

/// The divergence between the groups' representations (the training penalty's form,
/// `sum_g p_g Div(z | s = g, z)`) with a permutation-test p-value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDivergence {
    /// The divergence on the observed groups.
    pub value: f64,
    /// `(1 + #{permuted >= observed}) / (1 + permutations)`; absent without permutations.
    pub p_value: Option<f64>,
    /// Relabellings run.
    pub permutations: usize,
    /// Rows of the subsample.
    pub n_points: usize,
    /// MMD: the kernel bandwidth (median heuristic on the observed sample, then fixed);
    /// Sinkhorn: the blur `sqrt(eps)` (the given fraction of the median distance).
    pub scale: f64,
    /// Sinkhorn: whether every solve met its tolerance.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub converged: Option<bool>,
}

/// Which divergence [`group_divergence_test`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TestDivergence {
    /// Biased MMD², median-heuristic bandwidth.
    Mmd,
    /// Debiased Sinkhorn with a blur of this fraction of the median pairwise distance
    /// (tolerance 1e-2 on the marginals, at most 200 iterations: a test statistic).
    Sinkhorn {
        /// The blur as a fraction of the median distance.
        blur: f64,
    },
}

/// How [`group_divergence_test`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestSettings {
    /// The divergence.
    pub kind: TestDivergence,
    /// Rows of the stratified subsample.
    pub max_points: usize,
    /// Relabellings of the permutation test (0: the statistic alone, no p-value).
    pub permutations: usize,
    /// Seed of the subsample and the permutations.
    pub seed: u64,
}

/// The divergence between the groups of `z` on a stratified subsample of at most
/// `max_points` rows, and its permutation p-value over `permutations` relabellings.
pub fn group_divergence_test(
    z: &Matrix<f32>,
    groups: &[u32],
    n_groups: usize,
    settings: TestSettings,
    device: &Device,
) -> Result<GroupDivergence, StatsError> {
    let TestSettings {
        kind,
        max_points,
        permutations,
        seed,
    } = settings;
    let idx = stratified_subsample(groups, n_groups, max_points, seed)?;
    let sub = z.gather(&idx);
    let sub_groups: Vec<u32> = idx.iter().map(|&i| groups[i]).collect();
    let zt = tensor(&sub, device);
    let (divergence, scale) = match kind {
        TestDivergence::Mmd => {
            let sigma = median_distance(&sub);
            (
                Divergence::Mmd(MmdConfig {
                    bandwidth: Bandwidth::Fixed(vec![sigma]),
                    estimator: MmdEstimator::Biased,
                }),
                sigma,
            )
        }
        TestDivergence::Sinkhorn { blur } => {
            let blur = blur * median_distance(&sub);
            (
                Divergence::Sinkhorn(SinkhornConfig {
                    eps: blur * blur,
                    scaling: 0.5,
                    tolerance: 1e-2,
                    max_iters: 200,
                    check_every: 5,
                }),
                blur,
            )
        }
    };
    let mut converged = true;
    let mut value_of = |g: &[u32]| -> Result<f64, StatsError> {
        let out = fairness_penalty(zt.clone(), g, n_groups, &divergence)?;
        converged &= out.converged;
        Ok(f64::from(out.value.into_scalar::<f32>()))
    };
    let observed = value_of(&sub_groups)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut perm = sub_groups.clone();
    let mut above = 0;
    for _ in 0..permutations {
        perm.shuffle(&mut rng);
        if value_of(&perm)? >= observed {
            above += 1;
        }
    }
    Ok(GroupDivergence {
        value: observed,
        p_value: (permutations > 0).then(|| (1 + above) as f64 / (1 + permutations) as f64),
        permutations,
        n_points: sub.rows,
        scale,
        converged: matches!(kind, TestDivergence::Sinkhorn { .. }).then_some(converged),
    })
}

/// `W1(x, y) <= sum_ij P_ij |x_i - y_j|` for a coupling `P` of the uniform weights: the
/// entropic plan of the Sinkhorn solver at `eps = (blur_fraction * diameter)^2`, made an exact
/// coupling by rounding (`fairrep_metrics::bounds::rounded_coupling_cost`). The bound tightens
/// as `blur_fraction -> 0`.
pub fn w1_upper_bound(
    x: &Matrix<f32>,
    y: &Matrix<f32>,
    blur_fraction: f64,
    device: &Device,
) -> Result<W1Bound, StatsError> {
    let diameter2 = bounds::coarse_squared_diameter(&x.values, &y.values, x.cols);
    let eps = (blur_fraction.powi(2) * diameter2).max(1e-12);
    let solved = solve_potentials(
        &tensor(x, device),
        &tensor(y, device),
        None,
        None,
        &SinkhornConfig {
            eps,
            scaling: 0.7,
            tolerance: 1e-3,
            max_iters: 1000,
            check_every: 10,
        },
    )?;
    let host = |t: Tensor<1>| -> Vec<f64> { t.into_data().try_to_vec_as::<f64>().expect("floats") };
    let (f, g) = (host(solved.potentials.f_ba), host(solved.potentials.g_ab));
    Ok(bounds::rounded_coupling_cost(
        &x.values, &y.values, x.cols, &f, &g, eps,
    ))
}

/// The largest pairwise [`w1_upper_bound`] between groups, each group subsampled to at most
/// `max_per_group` rows (deterministic in `seed`).
pub fn group_w1_bound(
    z: &Matrix<f32>,
    groups: &[u32],
    n_groups: usize,
    max_per_group: usize,
    seed: u64,
    device: &Device,
) -> Result<W1Bound, StatsError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let parts: Vec<Matrix<f32>> = members(groups, n_groups)
        .into_iter()
        .map(|mut rows| {
            if rows.len() > max_per_group {
                rows.shuffle(&mut rng);
                rows.truncate(max_per_group);
                rows.sort_unstable();
            }
            z.gather(&rows)
        })
        .collect();
    let mut worst: Option<W1Bound> = None;
    for g in 0..n_groups {
        for h in (g + 1)..n_groups {
            let b = w1_upper_bound(&parts[g], &parts[h], 0.05, device)?;
            if worst.as_ref().is_none_or(|w| b.value > w.value) {
                worst = Some(b);
            }
        }
    }
    Ok(worst.unwrap_or_else(W1Bound::zero))
}

/// [`MmdBound`] on a stratified subsample of at most `max_points` rows.
pub fn mmd_bound(
    z: &Matrix<f32>,
    scores: &[f64],
    groups: &[u32],
    n_groups: usize,
    max_points: usize,
    seed: u64,
) -> Result<MmdBound, StatsError> {
    let idx = stratified_subsample(groups, n_groups, max_points, seed)?;
    let sub = z.gather(&idx);
    let g: Vec<u32> = idx.iter().map(|&i| groups[i]).collect();
    let q: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
    Ok(bounds::mmd_bound(&sub.values, sub.cols, &q, &g, n_groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_gap_is_the_largest_difference_of_group_means() {
        let scores = [0.9, 0.7, 0.2, 0.4];
        let m = score_metrics(&scores, &[1.0, 1.0, 0.0, 1.0], &[0, 0, 1, 1], 2).unwrap();
        assert!((m.score_gap - 0.5).abs() < 1e-12);
        assert!((m.dp_gap - 1.0).abs() < 1e-12);
        assert_eq!(m.eo_gap, None, "group 0 has no negatives");
        let e = score_metrics(&scores, &[1.0; 4], &[0, 0, 0, 0], 2).unwrap_err();
        assert!(e.to_string().contains("group 1"), "{e}");
    }

    #[test]
    fn w1_bound_is_tight_for_a_translation_and_never_below_w1() {
        // y = x + t: W1 = |t| exactly (the identity coupling is optimal for a translation).
        let device = Device::flex();
        let n = 40;
        let x: Vec<f32> = (0..n * 2).map(|i| ((i * 37 % 11) as f32) / 7.0).collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.3 } else { 0.4 })
            .collect();
        let (fx, fy) = (Matrix::new(x, n, 2), Matrix::new(y, n, 2));
        let b = w1_upper_bound(&fx, &fy, 0.02, &device).unwrap();
        assert!(b.value >= 0.5 - 1e-6, "{b:?}");
        assert!(b.value < 0.5 * 1.05, "{b:?}");
    }

    #[test]
    fn mmd_bound_dominates_the_score_gap() {
        // Scores that are a smooth function of z: the gap between the groups' mean scores is
        // at most MMD * ||q||_H (up to the interpolation residual).
        let n = 200;
        let mut values = Vec::new();
        let mut groups = Vec::new();
        for i in 0..n {
            let g = (i % 2) as u32;
            let t = (i as f32 * 0.61).sin();
            values.extend([t + 0.8 * g as f32, (i as f32 * 0.23).cos()]);
            groups.push(g);
        }
        let z = Matrix::new(values, n, 2);
        let scores: Vec<f64> = (0..n)
            .map(|i| 1.0 / (1.0 + (-(f64::from(z.row(i)[0]))).exp()))
            .collect();
        let b = mmd_bound(&z, &scores, &groups, 2, 400, 0).unwrap();
        let m = score_metrics(&scores, &vec![1.0; n], &groups, 2).unwrap();
        assert!(
            b.mmd > 0.0 && b.rkhs_norm.is_finite() && b.residual < 1e-4,
            "{b:?}"
        );
        // All 200 rows are in the subsample: the bound holds exactly, up to twice the residual
        // (each group mean of the interpolant is within `residual` of the scores' mean).
        assert!(
            b.bound + 2.0 * b.residual >= m.score_gap,
            "{b:?} vs {}",
            m.score_gap
        );
    }

    #[test]
    fn permutation_test_separates_shifted_groups_from_exchangeable_ones() {
        let device = Device::flex();
        let n = 120;
        let make = |shift: f32| {
            use rand::Rng;
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut values = Vec::new();
            let mut groups = Vec::new();
            for i in 0..n {
                let g = (i % 2) as u32;
                let (u, v): (f32, f32) = (rng.random(), rng.random());
                values.extend([u + shift * g as f32, v]);
                groups.push(g);
            }
            (Matrix::new(values, n, 2), groups)
        };
        let settings = |kind, permutations| TestSettings {
            kind,
            max_points: 1000,
            permutations,
            seed: 3,
        };
        let (z, g) = make(1.0);
        let t =
            group_divergence_test(&z, &g, 2, settings(TestDivergence::Mmd, 49), &device).unwrap();
        assert!(t.p_value.unwrap() <= 0.02 + 1e-12, "{t:?}");
        let (z, g) = make(0.0);
        let t =
            group_divergence_test(&z, &g, 2, settings(TestDivergence::Mmd, 49), &device).unwrap();
        assert!(t.p_value.unwrap() > 0.05, "{t:?}");
        let s = group_divergence_test(
            &make(1.0).0,
            &g,
            2,
            settings(TestDivergence::Sinkhorn { blur: 0.5 }, 19),
            &device,
        )
        .unwrap();
        assert!(
            s.p_value.unwrap() <= 0.05 + 1e-12 && s.converged == Some(true),
            "{s:?}"
        );
    }
}
