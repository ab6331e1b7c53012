//! Kernel FERM and the kernel C-SVM baseline, through the SVM dual.
//!
//! With `Q_ij = y_i y_j K(x_i, x_j)`, the baseline is the C-SVM dual
//!
//! ```text
//!     max_alpha  sum_i alpha_i - 1/2 alpha' Q alpha
//!     s.t.  0 <= alpha_i <= C,   sum_i alpha_i y_i = 0,
//! ```
//!
//! and kernel FERM (Donini et al. 2018; the authors' `ferm.py`) adds the equality
//!
//! ```text
//!     sum_i alpha_i y_i tau_i = 0,
//!     tau_i = mean_{j: y_j = 1, s_j = a} K(x_j, x_i) - mean_{j: y_j = 1, s_j = b} K(x_j, x_i)
//! ```
//!
//! (a = group 0, b = group 1). With `u = mean_{P_a} phi - mean_{P_b} phi` in feature space,
//! `tau_i = <u, phi(x_i)>`, so the constraint says `<w, u> = 0` for `w = sum_i alpha_i y_i
//! phi(x_i)`: the positives' mean score is the same in both groups. This dual is the dual of
//! the SVM whose score has an extra unpenalised term `beta * tau(x)` (as `b` is for
//! `sum alpha_i y_i = 0`); the solver's multipliers of the two equalities are that problem's
//! `b` and `beta`. The fair predictor keeps `w` and drops `beta * tau(x)`:
//! `f(x) = sum_i alpha_i y_i K(x_i, x) + b`.
//!
//! **The bias `b`** ([`BiasRule`]). The default, [`BiasRule::HingeOptimal`], takes the `b` that
//! minimises the training hinge loss `sum_i max(0, 1 - y_i (g_i + b))` of the predictor
//! actually returned (`g_i = sum_j alpha_j y_j K_ij`); the minimisers form the interval
//! between the `P`-th and `(P+1)`-th smallest of `r_i = y_i - g_i` (`P` = number of positive
//! rows; the slope of the loss in `b` is `-P` below every `r_i` and grows by one at each), and
//! `b` is its midpoint. It needs no threshold on which `alpha_i` are "free", and for the
//! baseline it is the primal-optimal bias (the KKT `b`, equal to the solver's multiplier of
//! `sum alpha_i y_i = 0` whenever that is unique). For FERM it is the bias that is optimal for
//! the fair `w` in the constrained primal, where the multiplier `b` belongs to the relaxed
//! problem with the `beta * tau(x)` term. [`BiasRule::EqualityDual`] returns that multiplier.
//! The authors' code averages `y_i - g_i` over every `alpha_i > 1e-7`, bounded support vectors
//! included, whose KKT condition is an inequality.
//!
//! **Size.** The dual is dense: the kernel matrix and `Q` take `8 n^2` bytes each and every
//! interior-point iteration factorises an `(3n + 1)`-row KKT system whose reduced block is
//! dense (`~n^3 / 3` flops). Above [`KernelSvmConfig::max_rows`] rows (default 2000) the
//! training rows are subsampled with [`crate::stratified_subsample`] (seeded, stratified by
//! group and label) and the fit records which rows it used. Measured with
//! `examples/bench_qp.rs` (RBF kernel FERM, 100 columns, one thread, release build):
//!
//! | n    | kernel + tau | QP (iterations) | peak resident memory |
//! |------|--------------|-----------------|----------------------|
//! | 500  | 0.01 s       | 0.10 s (9)      | 20 MiB               |
//! | 1000 | 0.04 s       | 0.47 s (10)     | 70 MiB               |
//! | 2000 | 0.16 s       | 2.4 s (10)      | 266 MiB              |
//!
//! so time grows as `n^3` and memory as `n^2` (about `66 n^2` bytes): `n = 4000` would take
//! about 20 s and 1 GiB per fit.

use std::time::Instant;

use crate::FermError;
use crate::linear::{check_c, hinge_optimal_bias, hinge_sum};
use crate::qp::{self, Qp, SolveInfo, SolverSettings};
use crate::sample::{Sample, check_matrix, stratified_subsample};

/// A kernel function.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Kernel {
    /// `K(x, y) = <x, y>`.
    Linear,
    /// `K(x, y) = exp(-gamma |x - y|^2)`, `gamma > 0` (`|x - y|^2` summed as squared
    /// differences, MATH.md "Numerics").
    Rbf {
        /// The inverse squared length scale.
        gamma: f64,
    },
}

impl Kernel {
    /// `K(x, y)`.
    pub fn eval(&self, x: &[f64], y: &[f64]) -> f64 {
        match *self {
            Kernel::Linear => x.iter().zip(y).map(|(a, b)| a * b).sum(),
            Kernel::Rbf { gamma } => {
                let d2: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(a, b)| {
                        let t = a - b;
                        t * t
                    })
                    .sum();
                (-gamma * d2).exp()
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), FermError> {
        match *self {
            Kernel::Linear => Ok(()),
            Kernel::Rbf { gamma } if gamma.is_finite() && gamma > 0.0 => Ok(()),
            Kernel::Rbf { gamma } => Err(FermError::NotPositive {
                what: "gamma",
                value: gamma,
            }),
        }
    }
}

/// How the bias of a kernel SVM is recovered (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum BiasRule {
    /// The midpoint of the minimisers of the training hinge loss given `w` (default).
    #[default]
    HingeOptimal,
    /// The solver's multiplier of `sum_i alpha_i y_i = 0`.
    EqualityDual,
}

/// Settings of one kernel SVM / kernel FERM fit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelSvmConfig {
    /// Box constraint `C > 0`.
    pub c: f64,
    /// The kernel.
    pub kernel: Kernel,
    /// Add the FERM constraint `sum_i alpha_i y_i tau_i = 0`.
    pub fair: bool,
    /// How `b` is recovered.
    pub bias: BiasRule,
    /// Largest number of training rows solved directly; above it a stratified subsample of
    /// this size is used (default 2000).
    pub max_rows: usize,
    /// Seed of that subsample.
    pub seed: u64,
    /// Solver settings.
    pub solver: SolverSettings,
}

impl KernelSvmConfig {
    /// Default settings for `C`, a kernel and the constraint switch.
    pub fn new(c: f64, kernel: Kernel, fair: bool) -> Self {
        Self {
            c,
            kernel,
            fair,
            bias: BiasRule::default(),
            max_rows: 2000,
            seed: 0,
            solver: SolverSettings::default(),
        }
    }
}

/// A fitted kernel scorer `f(x) = sum_i coef_i K(sv_i, x) + b` (serialisable).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelModel {
    /// The kernel.
    pub kernel: Kernel,
    /// Feature columns.
    pub cols: usize,
    /// Support vectors, row-major `n_sv x cols` (the rows with `alpha_i > 1e-10 C`).
    pub support: Vec<f64>,
    /// `alpha_i y_i` of each support vector.
    pub coef: Vec<f64>,
    /// `b`.
    pub bias: f64,
}

impl KernelModel {
    /// Decision values of `rows x cols` row-major features.
    pub fn decision_function(
        &self,
        features: &[f64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f64>, FermError> {
        if cols != self.cols {
            return Err(FermError::ColumnMismatch {
                what: "kernel model input",
                expected: self.cols,
                found: cols,
            });
        }
        check_matrix(features, rows, cols)?;
        Ok(features
            .chunks_exact(cols)
            .map(|x| {
                self.support
                    .chunks_exact(cols)
                    .zip(&self.coef)
                    .map(|(s, c)| c * self.kernel.eval(s, x))
                    .sum::<f64>()
                    + self.bias
            })
            .collect())
    }

    /// Number of support vectors.
    pub fn n_support(&self) -> usize {
        self.coef.len()
    }
}

/// A fitted kernel SVM or kernel FERM, with its certificates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelSvmFit {
    /// The scorer.
    pub model: KernelModel,
    /// The settings it was fitted with.
    pub config: KernelSvmConfig,
    /// The training rows used (indices into the sample), when it was subsampled.
    pub rows_used: Option<Vec<usize>>,
    /// `alpha_i` in `[0, C]` for every row used.
    pub alpha: Vec<f64>,
    /// `tau_i` for every row used (FERM only).
    pub tau: Option<Vec<f64>>,
    /// The solver's multipliers of the equalities: `[sum alpha y = 0]`, then (FERM)
    /// `[sum alpha y tau = 0]`.
    pub equality_duals: Vec<f64>,
    /// `sum_i alpha_i - 1/2 alpha' Q alpha`.
    pub dual_objective: f64,
    /// `1/2 alpha' Q alpha + C sum_i max(0, 1 - y_i f(x_i))` of the returned predictor.
    pub primal_objective: f64,
    /// `sum_i alpha_i y_i tau_i`, i.e. `<w, u>`, computed for FERM and baseline alike
    /// (needs positives in both groups; `None` otherwise).
    pub fairness_residual: Option<f64>,
    /// `sum alpha_i` over the rows left out of the support (`alpha_i <= 1e-10 C`): with
    /// `|K| <= kmax`, pruning moves a decision value by at most `kmax` times this.
    pub pruned_alpha: f64,
    /// Seconds spent on the kernel matrix and `tau`.
    pub kernel_seconds: f64,
    /// Solver diagnostics.
    pub solve: SolveInfo,
}

/// The `n x n` kernel matrix (full, row-major) of a sample's rows.
fn gram(kernel: &Kernel, s: &Sample) -> Vec<f64> {
    let n = s.rows();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = kernel.eval(s.row(i), s.row(j));
            k[i * n + j] = v;
            k[j * n + i] = v;
        }
    }
    k
}

/// `tau_i = mean_{P_a} K(x_j, x_i) - mean_{P_b} K(x_j, x_i)` from the kernel matrix.
fn tau_from_gram(k: &[f64], s: &Sample) -> Vec<f64> {
    let n = s.rows();
    let (y, g) = (s.signed_labels(), s.groups());
    let pa: Vec<usize> = (0..n).filter(|&j| y[j] > 0.0 && g[j] == 0).collect();
    let pb: Vec<usize> = (0..n).filter(|&j| y[j] > 0.0 && g[j] == 1).collect();
    (0..n)
        .map(|i| {
            let row = &k[i * n..(i + 1) * n];
            pa.iter().map(|&j| row[j]).sum::<f64>() / pa.len() as f64
                - pb.iter().map(|&j| row[j]).sum::<f64>() / pb.len() as f64
        })
        .collect()
}

/// Fits the kernel C-SVM dual, with the FERM equality when `config.fair` (see the module
/// docs). Needs both labels, and for FERM a positive row in each group.
pub fn fit_kernel_svm(
    sample: &Sample,
    config: &KernelSvmConfig,
) -> Result<KernelSvmFit, FermError> {
    check_c(config.c)?;
    config.kernel.validate()?;
    config.solver.validate()?;
    if config.max_rows < 2 {
        return Err(FermError::InvalidConfig {
            key: "max_rows",
            expected: "at least 2",
            found: config.max_rows.to_string(),
        });
    }
    sample.require_both_classes()?;
    if config.fair {
        sample.require_positives_in_both_groups()?;
    }
    let (owned, rows_used) = if sample.rows() > config.max_rows {
        let idx = stratified_subsample(sample, config.max_rows, config.seed);
        (Some(sample.subset_unchecked(&idx)), Some(idx))
    } else {
        (None, None)
    };
    let s = owned.as_ref().unwrap_or(sample);
    if config.fair {
        s.require_positives_in_both_groups()?;
    }
    s.require_both_classes()?;
    let n = s.rows();
    let y = s.signed_labels();
    let c = config.c;

    let t0 = Instant::now();
    let k = gram(&config.kernel, s);
    let has_positives = s.require_positives_in_both_groups().is_ok();
    let tau = has_positives.then(|| tau_from_gram(&k, s));
    let kernel_seconds = t0.elapsed().as_secs_f64();

    // P: upper triangle of Q = (y y') o K, column by column.
    let p_cols: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|j| (0..=j).map(|i| (i, y[i] * y[j] * k[i * n + j])).collect())
        .collect();
    let n_eq = if config.fair { 2 } else { 1 };
    // Rows: equalities, then -alpha <= 0 (n rows), then alpha <= C (n rows).
    let a_cols: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|j| {
            let mut col = vec![(0, y[j])];
            if config.fair
                && let Some(t) = &tau
            {
                col.push((1, y[j] * t[j]));
            }
            col.push((n_eq + j, -1.0));
            col.push((n_eq + n + j, 1.0));
            col
        })
        .collect();
    let mut b = vec![0.0; n_eq + 2 * n];
    b[n_eq + n..].fill(c);
    let problem = Qp {
        p: qp::csc_from_columns(n, p_cols),
        q: vec![-1.0; n],
        a: qp::csc_from_columns(n_eq + 2 * n, a_cols),
        b,
        n_eq,
        n_ineq: 2 * n,
    };
    let name = if config.fair {
        "kernel FERM dual"
    } else {
        "kernel SVM dual"
    };
    let sol = qp::solve(&problem, &config.solver, name)?;
    let alpha: Vec<f64> = sol.x.iter().map(|&a| a.clamp(0.0, c)).collect();
    let equality_duals = sol.z[..n_eq].to_vec();

    // Support: alpha_i > 1e-10 C; g and the objectives use the pruned coefficients.
    let threshold = 1e-10 * c;
    let coef_all: Vec<f64> = alpha
        .iter()
        .zip(y)
        .map(|(&a, &yi)| if a > threshold { a * yi } else { 0.0 })
        .collect();
    let pruned_alpha: f64 = alpha.iter().filter(|&&a| a <= threshold).sum();
    let g: Vec<f64> = (0..n)
        .map(|i| {
            k[i * n..(i + 1) * n]
                .iter()
                .zip(&coef_all)
                .map(|(kk, cc)| kk * cc)
                .sum()
        })
        .collect();
    let bias = match config.bias {
        BiasRule::HingeOptimal => hinge_optimal_bias(y, &g),
        BiasRule::EqualityDual => equality_duals[0],
    };
    let quad: f64 = coef_all.iter().zip(&g).map(|(c, g)| c * g).sum();
    let f: Vec<f64> = g.iter().map(|g| g + bias).collect();
    let dual_objective = alpha.iter().sum::<f64>() - 0.5 * quad;
    let primal_objective = 0.5 * quad + c * hinge_sum(y, &f);
    let fairness_residual = tau.as_ref().map(|t| {
        alpha
            .iter()
            .zip(y)
            .zip(t)
            .map(|((a, y), t)| a * y * t)
            .sum()
    });

    let mut support = Vec::new();
    let mut coef = Vec::new();
    for (i, &cc) in coef_all.iter().enumerate() {
        if cc != 0.0 {
            support.extend_from_slice(s.row(i));
            coef.push(cc);
        }
    }
    Ok(KernelSvmFit {
        model: KernelModel {
            kernel: config.kernel,
            cols: s.cols(),
            support,
            coef,
            bias,
        },
        config: *config,
        rows_used,
        alpha,
        tau: if config.fair { tau } else { None },
        equality_duals,
        dual_objective,
        primal_objective,
        fairness_residual,
        pruned_alpha,
        kernel_seconds,
        solve: sol.info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hinge_bias_hand_checked() {
        // y = (+1, +1, -1), g = (0.5, 2.0, -3.0): r = (0.5, -1.0, 2.0), P = 2,
        // sorted r = (-1, 0.5, 2): minimisers [0.5, 2], midpoint 1.25.
        assert_eq!(
            hinge_optimal_bias(&[1.0, 1.0, -1.0], &[0.5, 2.0, -3.0]),
            1.25
        );
        // The loss is indeed flat on [0.5, 2] and larger outside.
        let loss = |b: f64| hinge_sum(&[1.0, 1.0, -1.0], &[0.5 + b, 2.0 + b, -3.0 + b]);
        assert_eq!(loss(0.5), loss(2.0));
        assert!(loss(0.4) > loss(0.5) && loss(2.1) > loss(2.0));
    }

    #[test]
    fn kernel_values() {
        let x = [1.0, 2.0];
        let y = [0.0, 4.0];
        assert_eq!(Kernel::Linear.eval(&x, &y), 8.0);
        assert_eq!(Kernel::Rbf { gamma: 0.5 }.eval(&x, &y), (-2.5f64).exp());
        assert!(Kernel::Rbf { gamma: 0.0 }.validate().is_err());
        assert!(Kernel::Rbf { gamma: f64::NAN }.validate().is_err());
    }

    #[test]
    fn two_point_dual_closed_form() {
        // Linear kernel on x = -1 (y = -1), x = 1 (y = +1): alpha = (1/2, 1/2), w = 1, b = 0,
        // dual objective 1/2.
        let s = Sample::new(&[-1.0, 1.0], 2, 1, &[0.0, 1.0], &[0, 1]).unwrap();
        for bias in [BiasRule::HingeOptimal, BiasRule::EqualityDual] {
            let mut cfg = KernelSvmConfig::new(10.0, Kernel::Linear, false);
            cfg.bias = bias;
            let fit = fit_kernel_svm(&s, &cfg).unwrap();
            assert!((fit.alpha[0] - 0.5).abs() < 1e-7, "{fit:?}");
            assert!((fit.alpha[1] - 0.5).abs() < 1e-7, "{fit:?}");
            assert!(fit.model.bias.abs() < 1e-7, "{fit:?}");
            assert!((fit.dual_objective - 0.5).abs() < 1e-7);
            assert!((fit.primal_objective - 0.5).abs() < 1e-7);
        }
    }
}
