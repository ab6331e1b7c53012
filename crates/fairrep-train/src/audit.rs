//! Auditing scores and representations (MATH.md, "Fairness metrics" and the transfer bounds):
//! threshold and threshold-free demographic parity of scores, the divergence between the
//! groups' representations with a permutation-test p-value, the bounds
//! `|E[f(z)|s=g] - E[f(z)|s=g']| <= L W1` and `<= ||f||_H MMD`, and confidence intervals over
//! seeds.
use burn::tensor::{Device, Tensor, TensorData};
use fairrep_data::metrics::{self, MetricError};
use fairrep_loss::sinkhorn::solve_potentials;
use fairrep_loss::{
    Bandwidth, Divergence, MmdConfig, MmdEstimator, SinkhornConfig, fairness_penalty,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::{THRESHOLD, subsample};
use crate::trained::Features;

/// Mean and 95% confidence interval (Student t) of a sample of seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    /// Half-width of the 95% interval; 0 for a single value (no interval).
    pub ci95: f64,
    pub n: usize,
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

impl Interval {
    /// Mean and `t975(n - 1) * sd / sqrt(n)` of `values` (sample standard deviation).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        if n < 2 {
            return Self { mean, ci95: 0.0, n };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Self {
            mean,
            ci95: t975(n - 1) * (var / n as f64).sqrt(),
            n,
        }
    }

    pub fn low(&self) -> f64 {
        self.mean - self.ci95
    }

    pub fn high(&self) -> f64 {
        self.mean + self.ci95
    }

    /// `mean ± ci95` with `digits` decimals (just the mean for one value).
    pub fn show(&self, digits: usize) -> String {
        if self.n < 2 {
            format!("{:.digits$}", self.mean)
        } else {
            format!("{:.digits$}±{:.digits$}", self.mean, self.ci95)
        }
    }
}

/// Metrics of the scores `q in [0, 1]` of one binary task on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreMetrics {
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
    /// W1 distance between the groups' score distributions.
    pub w1: f64,
    /// Area between the groups' score CDFs on [0, 1] (MATH.md's ABPC).
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
        abpc: metrics::abcc(scores, groups, n_groups)?,
        score_gap,
    })
}

fn tensor(f: &Features, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(f.values.clone(), [f.n, f.k]), device)
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
/// representations of different scales (an encoder may shrink `z`) are comparable.
pub fn scale_normalised(z: &Features) -> (Features, f64) {
    let (n, k) = (z.n.max(1) as f64, z.k);
    let mut mean = vec![0.0f64; k];
    for i in 0..z.n {
        z.row(i)
            .iter()
            .zip(&mut mean)
            .for_each(|(&v, m)| *m += f64::from(v) / n);
    }
    let mut var = 0.0;
    for i in 0..z.n {
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
    (
        Features {
            values,
            n: z.n,
            k: z.k,
        },
        scale,
    )
}

/// The divergence between the groups' representations (the training penalty's form,
/// `sum_g p_g Div(z | s = g, z)`) with a permutation-test p-value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDivergence {
    pub value: f64,
    /// `(1 + #{permuted >= observed}) / (1 + permutations)`.
    pub p_value: f64,
    pub permutations: usize,
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
    Sinkhorn { blur: f64 },
}

/// How [`group_divergence_test`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestSettings {
    pub kind: TestDivergence,
    /// Rows of the stratified subsample.
    pub max_points: usize,
    /// Relabellings of the permutation test.
    pub permutations: usize,
    /// Seed of the subsample and the permutations.
    pub seed: u64,
}

/// The divergence between the groups of `z` on a stratified subsample of at most
/// `max_points` rows, and its permutation p-value over `permutations` relabellings.
pub fn group_divergence_test(
    z: &Features,
    groups: &[u32],
    n_groups: usize,
    settings: TestSettings,
    device: &Device,
) -> GroupDivergence {
    let TestSettings {
        kind,
        max_points,
        permutations,
        seed,
    } = settings;
    let idx = subsample(groups, n_groups, max_points, seed);
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
    let mut value_of = |g: &[u32]| {
        let out = fairness_penalty(zt.clone(), g, n_groups, &divergence);
        converged &= out.converged;
        f64::from(out.value.into_scalar::<f32>())
    };
    let observed = value_of(&sub_groups);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut perm = sub_groups.clone();
    let mut above = 0;
    for _ in 0..permutations {
        perm.shuffle(&mut rng);
        if value_of(&perm) >= observed {
            above += 1;
        }
    }
    GroupDivergence {
        value: observed,
        p_value: (1 + above) as f64 / (1 + permutations) as f64,
        permutations,
        n_points: sub.n,
        scale,
        converged: matches!(kind, TestDivergence::Sinkhorn { .. }).then_some(converged),
    }
}

/// An upper bound on `W1` between two groups' representations, from a coupling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1Bound {
    /// `sum_ij P_ij |x_i - y_j|` for the rounded entropic plan `P` (a true coupling).
    pub value: f64,
    /// L1 marginal error of the entropic plan before rounding.
    pub marginal_error: f64,
    pub n_x: usize,
    pub n_y: usize,
}

/// `W1(x, y) <= sum_ij P_ij |x_i - y_j|` for any coupling `P` of the uniform weights: `P` is
/// the entropic plan of the Sinkhorn solver at `eps = (blur_fraction * diameter)^2`, made an
/// exact coupling by the rounding of Altschuler, Weed and Rigollet (2017). The bound tightens
/// as `blur_fraction -> 0`.
pub fn w1_upper_bound(x: &Features, y: &Features, blur_fraction: f64, device: &Device) -> W1Bound {
    let (n, m) = (x.n, y.n);
    let dist = |i: usize, j: usize| -> f64 {
        x.row(i)
            .iter()
            .zip(y.row(j))
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
    };
    let mut diameter2: f64 = 0.0;
    for i in (0..n).step_by((n / 64).max(1)) {
        for j in (0..m).step_by((m / 64).max(1)) {
            diameter2 = diameter2.max(dist(i, j));
        }
    }
    let eps = (blur_fraction.powi(2) * diameter2).max(1e-12);
    let (xt, yt) = (tensor(x, device), tensor(y, device));
    let a = Tensor::<1>::full([n], 1.0 / n as f64, device);
    let b = Tensor::<1>::full([m], 1.0 / m as f64, device);
    let solved = solve_potentials(
        &xt,
        &yt,
        &a,
        &b,
        &SinkhornConfig {
            eps,
            scaling: 0.7,
            tolerance: 1e-3,
            max_iters: 1000,
            check_every: 10,
        },
    );
    let host = |t: Tensor<1>| -> Vec<f64> { t.into_data().try_to_vec_as::<f64>().expect("floats") };
    let (f, g) = (host(solved.potentials.f_ba), host(solved.potentials.g_ab));
    // Plan P_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^2 / 2) / eps), row-major.
    let (ai, bj) = (1.0 / n as f64, 1.0 / m as f64);
    let mut plan = vec![0.0f64; n * m];
    let mut dists = vec![0.0f64; n * m];
    for i in 0..n {
        for j in 0..m {
            let d2 = dist(i, j);
            dists[i * m + j] = d2.sqrt();
            plan[i * m + j] = ai * bj * ((f[i] + g[j] - 0.5 * d2) / eps).exp();
        }
    }
    let rows: Vec<f64> = (0..n)
        .map(|i| plan[i * m..(i + 1) * m].iter().sum())
        .collect();
    let mut marginal_error: f64 = rows.iter().map(|r| (r - ai).abs()).sum();
    // Rounding: scale rows down to a, then columns down to b, then add the outer product of
    // the deficits (each row and column then sums exactly to its weight).
    for (i, r) in rows.iter().enumerate() {
        if *r > ai {
            let s = ai / r;
            plan[i * m..(i + 1) * m].iter_mut().for_each(|p| *p *= s);
        }
    }
    let mut cols = vec![0.0f64; m];
    for i in 0..n {
        for j in 0..m {
            cols[j] += plan[i * m + j];
        }
    }
    marginal_error += cols.iter().map(|c| (c - bj).abs()).sum::<f64>();
    for (j, c) in cols.iter().enumerate() {
        if *c > bj {
            let s = bj / c;
            (0..n).for_each(|i| plan[i * m + j] *= s);
        }
    }
    let row_def: Vec<f64> = (0..n)
        .map(|i| ai - plan[i * m..(i + 1) * m].iter().sum::<f64>())
        .collect();
    let col_def: Vec<f64> = (0..m)
        .map(|j| bj - (0..n).map(|i| plan[i * m + j]).sum::<f64>())
        .collect();
    let total_def: f64 = row_def.iter().sum();
    let mut value = 0.0;
    for i in 0..n {
        for j in 0..m {
            let mut p = plan[i * m + j];
            if total_def > 0.0 {
                p += row_def[i].max(0.0) * col_def[j].max(0.0) / total_def;
            }
            value += p * dists[i * m + j];
        }
    }
    W1Bound {
        value,
        marginal_error,
        n_x: n,
        n_y: m,
    }
}

/// The largest pairwise [`w1_upper_bound`] between groups, each group subsampled to at most
/// `max_per_group` rows (deterministic in `seed`).
pub fn group_w1_bound(
    z: &Features,
    groups: &[u32],
    n_groups: usize,
    max_per_group: usize,
    seed: u64,
    device: &Device,
) -> W1Bound {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let parts: Vec<Features> = members(groups, n_groups)
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
            let b = w1_upper_bound(&parts[g], &parts[h], 0.05, device);
            if worst.as_ref().is_none_or(|w| b.value > w.value) {
                worst = Some(b);
            }
        }
    }
    worst.unwrap_or(W1Bound {
        value: 0.0,
        marginal_error: 0.0,
        n_x: 0,
        n_y: 0,
    })
}

/// Median pairwise Euclidean distance of the rows (1 when it is 0 or undefined), the median
/// heuristic bandwidth.
pub fn median_distance(z: &Features) -> f64 {
    let mut d: Vec<f64> = Vec::with_capacity(z.n * z.n.saturating_sub(1) / 2);
    for i in 0..z.n {
        for j in (i + 1)..z.n {
            let d2: f64 = z
                .row(i)
                .iter()
                .zip(z.row(j))
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            d.push(d2.sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    let mid = d.len() / 2;
    let (_, median, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
    if *median > 0.0 { *median } else { 1.0 }
}

fn gaussian(x: &[f32], y: &[f32], sigma: f64) -> f64 {
    let d2: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    (-d2 / (2.0 * sigma * sigma)).exp()
}

/// Solves `A v = r` for a symmetric positive-definite `A` (row-major `n x n`) by Cholesky;
/// `None` when `A` is not positive definite.
pub(crate) fn cholesky_solve(a: &[f64], n: usize, r: &[f64]) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|p| l[i * n + p] * l[j * n + p]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|p| l[i * n + p] * y[p]).sum();
        y[i] = (r[i] - s) / l[i * n + i];
    }
    let mut v = vec![0.0f64; n];
    for i in (0..n).rev() {
        let s: f64 = ((i + 1)..n).map(|p| l[p * n + i] * v[p]).sum();
        v[i] = (y[i] - s) / l[i * n + i];
    }
    Some(v)
}

/// The MMD side of the transfer bound on a subsample of `m` rows: `MMD(z | g, z | g')` (the
/// square root of the biased MMD², Gaussian kernel of bandwidth `sigma`, median heuristic) for
/// the pair of groups where it is largest, and `||q_hat||_H`, the RKHS norm of the kernel
/// interpolant `(K + m ridge I) alpha = q` of the scores on those rows (a head is not itself in
/// the Gaussian RKHS; `q_hat` is the smallest-norm function of the RKHS that matches it there,
/// up to `residual`). With `residual = 0` the bound is exact for the subsample's empirical
/// distributions: `|mean_g q - mean_g' q| <= ||q_hat||_H MMD`; `ridge` is the smallest of
/// 1e-10, 1e-9, ..., 1e-2 for which `K + m ridge I` factorises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmdBound {
    pub mmd: f64,
    pub rkhs_norm: f64,
    pub bound: f64,
    /// `max_i |q_hat(z_i) - q(z_i)|` on the subsample.
    pub residual: f64,
    pub ridge: f64,
    pub bandwidth: f64,
    pub n_points: usize,
}

/// [`MmdBound`] on a stratified subsample of at most `max_points` rows.
pub fn mmd_bound(
    z: &Features,
    scores: &[f64],
    groups: &[u32],
    n_groups: usize,
    max_points: usize,
    seed: u64,
) -> MmdBound {
    let idx = subsample(groups, n_groups, max_points, seed);
    let sub = z.gather(&idx);
    let g: Vec<u32> = idx.iter().map(|&i| groups[i]).collect();
    let q: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
    let m = sub.n;
    let sigma = median_distance(&sub);
    let mut k = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let v = gaussian(sub.row(i), sub.row(j), sigma);
            k[i * m + j] = v;
            k[j * m + i] = v;
        }
    }
    let parts = members(&g, n_groups);
    let mut mmd: f64 = 0.0;
    for a in 0..n_groups {
        for b in (a + 1)..n_groups {
            let mean = |p: &[usize], r: &[usize]| -> f64 {
                let s: f64 = p
                    .iter()
                    .map(|&i| r.iter().map(|&j| k[i * m + j]).sum::<f64>())
                    .sum();
                s / (p.len() * r.len()).max(1) as f64
            };
            let (pa, pb) = (&parts[a], &parts[b]);
            let v = mean(pa, pa) + mean(pb, pb) - 2.0 * mean(pa, pb);
            mmd = mmd.max(v.max(0.0).sqrt());
        }
    }
    let (mut rkhs_norm, mut residual, mut ridge) = (f64::NAN, f64::NAN, f64::NAN);
    for exponent in -10..=-2 {
        let r = 10f64.powi(exponent);
        let mut reg = k.clone();
        (0..m).for_each(|i| reg[i * m + i] += m as f64 * r);
        if let Some(alpha) = cholesky_solve(&reg, m, &q) {
            let mut quad = 0.0;
            let mut worst: f64 = 0.0;
            for i in 0..m {
                let ka: f64 = (0..m).map(|j| k[i * m + j] * alpha[j]).sum();
                quad += alpha[i] * ka;
                worst = worst.max((ka - q[i]).abs());
            }
            if quad.is_finite() {
                rkhs_norm = quad.max(0.0).sqrt();
                residual = worst;
                ridge = r;
                break;
            }
        }
    }
    MmdBound {
        mmd,
        rkhs_norm,
        bound: mmd * rkhs_norm,
        residual,
        ridge,
        bandwidth: sigma,
        n_points: m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_use_student_t() {
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        assert!((i.mean - 2.0).abs() < 1e-12);
        // sd = 1, n = 3: 4.303 / sqrt(3).
        assert!((i.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Interval::of(&[5.0]).ci95, 0.0);
        assert_eq!(t975(100), 1.96);
    }

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
    fn cholesky_solves_spd_systems() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let v = cholesky_solve(&a, 2, &[2.0, 1.0]).unwrap();
        assert!((4.0 * v[0] + 2.0 * v[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * v[0] + 3.0 * v[1] - 1.0).abs() < 1e-12);
        assert!(cholesky_solve(&[1.0, 2.0, 2.0, 1.0], 2, &[1.0, 1.0]).is_none());
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
        let (fx, fy) = (
            Features { values: x, n, k: 2 },
            Features { values: y, n, k: 2 },
        );
        let b = w1_upper_bound(&fx, &fy, 0.02, &device);
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
        let z = Features { values, n, k: 2 };
        let scores: Vec<f64> = (0..n)
            .map(|i| 1.0 / (1.0 + (-(f64::from(z.row(i)[0]))).exp()))
            .collect();
        let b = mmd_bound(&z, &scores, &groups, 2, 400, 0);
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
            (Features { values, n, k: 2 }, groups)
        };
        let settings = |kind, permutations| TestSettings {
            kind,
            max_points: 1000,
            permutations,
            seed: 3,
        };
        let (z, g) = make(1.0);
        let t = group_divergence_test(&z, &g, 2, settings(TestDivergence::Mmd, 49), &device);
        assert!(t.p_value <= 0.02 + 1e-12, "{t:?}");
        let (z, g) = make(0.0);
        let t = group_divergence_test(&z, &g, 2, settings(TestDivergence::Mmd, 49), &device);
        assert!(t.p_value > 0.05, "{t:?}");
        let s = group_divergence_test(
            &make(1.0).0,
            &g,
            2,
            settings(TestDivergence::Sinkhorn { blur: 0.5 }, 19),
            &device,
        );
        assert!(
            s.p_value <= 0.05 + 1e-12 && s.converged == Some(true),
            "{s:?}"
        );
    }
}
