//! The algebra of the transfer bounds of docs/MATH.md ("Setting"): for a head `q` on the
//! representation, `|E[q | g] - E[q | g']| <= L W1(z | g, z | g')` for an `L`-Lipschitz `q`,
//! and `<= ||q||_H MMD(z | g, z | g')` for `q` in the kernel's RKHS.
//!
//! Both work on host slices of points (row-major, `dim` coordinates each); the entropic
//! potentials that [`rounded_coupling_cost`] starts from come from the Sinkhorn solver.
use serde::{Deserialize, Serialize};

use crate::linalg::cholesky_solve;
use crate::median::median_pairwise_distance;

/// An upper bound on `W1` between two point sets, from a coupling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W1Bound {
    /// `sum_ij P_ij |x_i - y_j|` for the rounded entropic plan `P` (a true coupling).
    pub value: f64,
    /// L1 marginal error of the entropic plan before rounding.
    pub marginal_error: f64,
    /// Points of the first set.
    pub n_x: usize,
    /// Points of the second set.
    pub n_y: usize,
}

impl W1Bound {
    /// The bound between two empty sets (no pair of groups): 0.
    pub fn zero() -> Self {
        Self {
            value: 0.0,
            marginal_error: 0.0,
            n_x: 0,
            n_y: 0,
        }
    }
}

fn sq_dist(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

/// The squared diameter of two point sets, estimated on a grid of at most 64 x 64 pairs (the
/// scale the entropic plan of [`rounded_coupling_cost`] is solved at).
pub fn coarse_squared_diameter(x: &[f32], y: &[f32], dim: usize) -> f64 {
    let (n, m) = (x.len() / dim.max(1), y.len() / dim.max(1));
    let mut d2: f64 = 0.0;
    for i in (0..n).step_by((n / 64).max(1)) {
        for j in (0..m).step_by((m / 64).max(1)) {
            d2 = d2.max(sq_dist(
                &x[i * dim..(i + 1) * dim],
                &y[j * dim..(j + 1) * dim],
            ));
        }
    }
    d2
}

/// `W1(x, y) <= sum_ij P_ij |x_i - y_j|` for any coupling `P` of the uniform weights. `P` is
/// built from the entropic potentials `(f, g)` of `OT_eps` (cost `|x - y|^2 / 2`), `P_ij =
/// a_i b_j exp((f_i + g_j - C_ij) / eps)`, and made an exact coupling by the rounding of
/// Altschuler, Weed and Rigollet (2017): rows scaled down to `a`, then columns down to `b`,
/// then the outer product of the deficits added.
pub fn rounded_coupling_cost(
    x: &[f32],
    y: &[f32],
    dim: usize,
    f: &[f64],
    g: &[f64],
    eps: f64,
) -> W1Bound {
    let (n, m) = (x.len() / dim.max(1), y.len() / dim.max(1));
    let (ai, bj) = (1.0 / n as f64, 1.0 / m as f64);
    let mut plan = vec![0.0f64; n * m];
    let mut dists = vec![0.0f64; n * m];
    for i in 0..n {
        for j in 0..m {
            let d2 = sq_dist(&x[i * dim..(i + 1) * dim], &y[j * dim..(j + 1) * dim]);
            dists[i * m + j] = d2.sqrt();
            plan[i * m + j] = ai * bj * ((f[i] + g[j] - 0.5 * d2) / eps).exp();
        }
    }
    let rows: Vec<f64> = (0..n)
        .map(|i| plan[i * m..(i + 1) * m].iter().sum())
        .collect();
    let mut marginal_error: f64 = rows.iter().map(|r| (r - ai).abs()).sum();
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

/// The MMD side of the transfer bound on a sample of `m` rows: `MMD(z | g, z | g')` (the
/// square root of the biased MMD², Gaussian kernel whose bandwidth is the median pairwise
/// distance) for the pair of groups where it is largest, and `||q_hat||_H`, the RKHS norm of the
/// kernel interpolant `(K + m ridge I) alpha = q` of the scores on those rows (a head is not
/// itself in the Gaussian RKHS; `q_hat` is the smallest-norm function of the RKHS that matches
/// it there, up to `residual`). With `residual = 0` the bound is exact for the sample's
/// empirical distributions: `|mean_g q - mean_g' q| <= ||q_hat||_H MMD`; `ridge` is the
/// smallest of 1e-10, 1e-9, ..., 1e-2 for which `K + m ridge I` factorises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmdBound {
    /// The largest MMD between two groups.
    pub mmd: f64,
    /// `||q_hat||_H`.
    pub rkhs_norm: f64,
    /// `mmd * rkhs_norm`.
    pub bound: f64,
    /// `max_i |q_hat(z_i) - q(z_i)|` on the sample.
    pub residual: f64,
    /// The ridge that was used.
    pub ridge: f64,
    /// The Gaussian bandwidth.
    pub bandwidth: f64,
    /// Rows in the sample.
    pub n_points: usize,
}

/// [`MmdBound`] of the scores `q` (one per row of `z`, row-major with `dim` coordinates) of
/// rows in groups `groups` (ids below `n_groups`).
pub fn mmd_bound(z: &[f32], dim: usize, q: &[f64], groups: &[u32], n_groups: usize) -> MmdBound {
    let m = q.len();
    let row = |i: usize| &z[i * dim..(i + 1) * dim];
    let sigma = median_pairwise_distance(z, dim).map_or(1.0, |d| d.value);
    let gaussian = |i: usize, j: usize| (-sq_dist(row(i), row(j)) / (2.0 * sigma * sigma)).exp();
    let mut k = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let v = gaussian(i, j);
            k[i * m + j] = v;
            k[j * m + i] = v;
        }
    }
    let mut parts = vec![Vec::new(); n_groups];
    for (i, &g) in groups.iter().enumerate() {
        parts[g as usize].push(i);
    }
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
        if let Some(alpha) = cholesky_solve(&reg, m, q) {
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
