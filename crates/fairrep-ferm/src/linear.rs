//! Linear models on (projected or raw) features: the C-SVM with hinge loss, solved as a primal
//! QP, and L2-regularised logistic regression, solved by Newton's method.

use crate::FermError;
use crate::qp::{self, Qp, SolveInfo, SolverSettings};
use crate::sample::{Sample, check_matrix};

/// A linear scorer `f(x) = <w, x> + b`; a row is predicted positive when `f(x) > 0`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearModel {
    /// `w`, one weight per input column.
    pub weights: Vec<f64>,
    /// `b`.
    pub bias: f64,
}

impl LinearModel {
    /// Decision values `<w, x_i> + b` of `rows x cols` row-major features.
    pub fn decision_function(
        &self,
        features: &[f64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f64>, FermError> {
        if cols != self.weights.len() {
            return Err(FermError::ColumnMismatch {
                what: "linear model input",
                expected: self.weights.len(),
                found: cols,
            });
        }
        check_matrix(features, rows, cols)?;
        Ok(features
            .chunks_exact(cols)
            .map(|x| dot(x, &self.weights) + self.bias)
            .collect())
    }

    fn scores(&self, sample: &Sample) -> Vec<f64> {
        (0..sample.rows())
            .map(|i| dot(sample.row(i), &self.weights) + self.bias)
            .collect()
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn check_c(c: f64) -> Result<(), FermError> {
    if c.is_finite() && c > 0.0 {
        Ok(())
    } else {
        Err(FermError::NotPositive {
            what: "C",
            value: c,
        })
    }
}

/// `sum_i max(0, 1 - y_i f_i)`.
pub(crate) fn hinge_sum(y: &[f64], f: &[f64]) -> f64 {
    y.iter().zip(f).map(|(y, f)| (1.0 - y * f).max(0.0)).sum()
}

/// The hinge-optimal bias: the midpoint of the `P`-th and `(P+1)`-th smallest `y_i - g_i`.
pub(crate) fn hinge_optimal_bias(y: &[f64], g: &[f64]) -> f64 {
    let mut r: Vec<f64> = y.iter().zip(g).map(|(y, g)| y - g).collect();
    let p = y.iter().filter(|&&v| v > 0.0).count();
    // Callers guarantee both classes: 1 <= p <= n - 1.
    r.sort_by(f64::total_cmp);
    0.5 * (r[p - 1] + r[p])
}

/// A fitted linear C-SVM with its certificates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearSvmFit {
    /// The scorer.
    pub model: LinearModel,
    /// The `C` it was fitted with.
    pub c: f64,
    /// Primal objective `1/2 |w|^2 + C sum_i max(0, 1 - y_i (<w, x_i> + b))` at the returned
    /// `(w, b)` (exact hinge, not the solver's slacks).
    pub primal_objective: f64,
    /// Dual objective `sum_i alpha_i - 1/2 |sum_i alpha_i y_i x_i|^2` at the solver's
    /// multipliers of the margin constraints.
    pub dual_objective: f64,
    /// The dual variables `alpha_i` in `[0, C]` (the margin constraints' multipliers).
    pub alpha: Vec<f64>,
    /// Solver diagnostics.
    pub solve: SolveInfo,
}

/// Fits the linear C-SVM with hinge loss (the problem `sklearn.svm.SVC(kernel="linear")`
/// solves, with an unpenalised bias):
///
/// ```text
///     min_{w, b, xi}  1/2 |w|^2 + C sum_i xi_i
///     s.t.  y_i (<w, x_i> + b) >= 1 - xi_i,   xi_i >= 0,
/// ```
///
/// as a primal QP in `(w, b, xi)` (`d + 1 + n` variables, `2n` inequality rows). The solver's
/// multipliers of the margin rows are the SVM dual variables `alpha`. Needs both labels.
///
/// Given `w`, the optimal `b` form the interval of minimisers of the training hinge loss;
/// the returned `b` is its midpoint (as for the kernel dual, see [`crate::BiasRule`]), which
/// is unique even when no support vector is free (small `C`), where the solver's own `b` is
/// an arbitrary point of that interval.
pub fn fit_linear_svm(
    sample: &Sample,
    c: f64,
    solver: &SolverSettings,
) -> Result<LinearSvmFit, FermError> {
    check_c(c)?;
    sample.require_both_classes()?;
    let (n, d) = (sample.rows(), sample.cols());
    let y = sample.signed_labels();
    let nv = d + 1 + n;
    // P = diag(1 on w, 0 on b and xi): upper triangle with only the w diagonal.
    let p_cols: Vec<Vec<(usize, f64)>> = (0..nv)
        .map(|k| if k < d { vec![(k, 1.0)] } else { Vec::new() })
        .collect();
    let mut q = vec![0.0; nv];
    q[d + 1..].fill(c);
    // Rows 0..n: -y_i <x_i, w> - y_i b - xi_i <= -1; rows n..2n: -xi_i <= 0.
    let mut a_cols: Vec<Vec<(usize, f64)>> = Vec::with_capacity(nv);
    for k in 0..d {
        a_cols.push(
            (0..n)
                .filter_map(|i| {
                    let v = sample.row(i)[k];
                    (v != 0.0).then_some((i, -y[i] * v))
                })
                .collect(),
        );
    }
    a_cols.push((0..n).map(|i| (i, -y[i])).collect());
    for i in 0..n {
        a_cols.push(vec![(i, -1.0), (n + i, -1.0)]);
    }
    let mut b = vec![-1.0; 2 * n];
    b[n..].fill(0.0);
    let problem = Qp {
        p: qp::csc_from_columns(nv, p_cols),
        q,
        a: qp::csc_from_columns(2 * n, a_cols),
        b,
        n_eq: 0,
        n_ineq: 2 * n,
    };
    let sol = qp::solve(&problem, solver, "linear SVM primal")?;
    let weights = sol.x[..d].to_vec();
    let g: Vec<f64> = (0..n).map(|i| dot(sample.row(i), &weights)).collect();
    let model = LinearModel {
        bias: hinge_optimal_bias(y, &g),
        weights,
    };
    let alpha: Vec<f64> = sol.z[..n].iter().map(|&a| a.clamp(0.0, c)).collect();
    let f = model.scores(sample);
    let primal_objective = 0.5 * dot(&model.weights, &model.weights) + c * hinge_sum(y, &f);
    let mut v = vec![0.0; d];
    for i in 0..n {
        let ay = alpha[i] * y[i];
        for (vk, &xk) in v.iter_mut().zip(sample.row(i)) {
            *vk += ay * xk;
        }
    }
    let dual_objective = alpha.iter().sum::<f64>() - 0.5 * dot(&v, &v);
    Ok(LinearSvmFit {
        model,
        c,
        primal_objective,
        dual_objective,
        alpha,
        solve: sol.info,
    })
}

/// A fitted L2-regularised logistic regression.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogisticFit {
    /// The scorer (`f(x) > 0` iff `P(y = 1 | x) > 1/2`).
    pub model: LinearModel,
    /// The `C` it was fitted with.
    pub c: f64,
    /// `1/2 |w|^2 + C sum_i log(1 + exp(-y_i f(x_i)))` at the solution.
    pub objective: f64,
    /// Euclidean norm of the gradient at the solution.
    pub gradient_norm: f64,
    /// Newton steps taken.
    pub iterations: usize,
}

fn softplus(t: f64) -> f64 {
    // log(1 + exp(t)) without overflow.
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// Fits L2-regularised logistic regression with an unpenalised bias (scikit-learn's
/// `LogisticRegression(C=c)` objective):
///
/// ```text
///     min_{w, b}  F(w, b) = 1/2 |w|^2 + C sum_i log(1 + exp(-y_i (<w, x_i> + b)))
/// ```
///
/// by Newton's method on a Cholesky solve of the `(d+1) x (d+1)` Hessian, with Armijo
/// backtracking while the Newton decrement `lambda^2 / 2` (the standard estimate of `F - F*`)
/// exceeds `1e-8 max(1, F)` and full steps below (where a line search would only see the
/// rounding of `F`). Stops when `lambda^2 / 2 <= 1e-20 max(1, F)`; if the line search stalls,
/// accepts below `1e-12 max(1, F)`, else fails; at most 100 steps. Needs both labels.
pub fn fit_logistic(sample: &Sample, c: f64) -> Result<LogisticFit, FermError> {
    check_c(c)?;
    sample.require_both_classes()?;
    let d = sample.cols();
    let y = sample.signed_labels();
    let m = d + 1;
    let objective = |theta: &[f64]| -> f64 {
        let w = &theta[..d];
        let s: f64 = y
            .iter()
            .enumerate()
            .map(|(i, &yi)| softplus(-yi * (dot(sample.row(i), w) + theta[d])))
            .sum();
        0.5 * dot(w, w) + c * s
    };
    let mut theta = vec![0.0; m];
    let mut f = objective(&theta);
    let mut iterations = 0;
    loop {
        let mut g = theta.clone();
        g[d] = 0.0;
        let mut h = vec![0.0; m * m];
        for k in 0..d {
            h[k * m + k] = 1.0;
        }
        for (i, &yi) in y.iter().enumerate() {
            let x = sample.row(i);
            let margin = yi * (dot(x, &theta[..d]) + theta[d]);
            let p = sigmoid(-margin);
            let gi = -c * yi * p;
            let hi = c * p * (1.0 - p);
            for k in 0..m {
                let xk = if k < d { x[k] } else { 1.0 };
                g[k] += gi * xk;
                for l in 0..=k {
                    let xl = if l < d { x[l] } else { 1.0 };
                    h[k * m + l] += hi * xk * xl;
                }
            }
        }
        let gradient_norm = dot(&g, &g).sqrt();
        let step = cholesky_solve(&mut h, m, &g);
        let decrement = dot(&g, &step);
        let done = |tol: f64, f: f64| decrement / 2.0 <= tol * f.max(1.0);
        if done(1e-20, f) {
            return Ok(LogisticFit {
                model: LinearModel {
                    weights: theta[..d].to_vec(),
                    bias: theta[d],
                },
                c,
                objective: f,
                gradient_norm,
                iterations,
            });
        }
        if iterations == 100 {
            return Err(FermError::NoConvergence {
                iterations,
                gradient_norm,
            });
        }
        iterations += 1;
        if done(1e-8, f) {
            // Quadratic-convergence region: the decrease (< 1e-8 F) is at the rounding level
            // of F, so a line search would be decided by noise; take the full Newton step.
            for (a, s) in theta.iter_mut().zip(&step) {
                *a -= s;
            }
            f = objective(&theta);
            continue;
        }
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-12 {
            let trial: Vec<f64> = theta.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            let ft = objective(&trial);
            if ft <= f - 0.25 * t * decrement {
                theta = trial;
                f = ft;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            if done(1e-12, f) {
                return Ok(LogisticFit {
                    model: LinearModel {
                        weights: theta[..d].to_vec(),
                        bias: theta[d],
                    },
                    c,
                    objective: f,
                    gradient_norm,
                    iterations,
                });
            }
            return Err(FermError::NoConvergence {
                iterations,
                gradient_norm,
            });
        }
    }
}

/// Solves `H s = g` for symmetric positive definite `H` (lower triangle of `h`, row-major
/// `m x m`, overwritten by its Cholesky factor). A pivot that is not positive is replaced by
/// a tiny positive one (the Hessian here is positive definite up to rounding).
fn cholesky_solve(h: &mut [f64], m: usize, g: &[f64]) -> Vec<f64> {
    let floor = 1e-300;
    for k in 0..m {
        let mut diag = h[k * m + k];
        for p in 0..k {
            diag -= h[k * m + p] * h[k * m + p];
        }
        let lkk = diag.max(floor).sqrt();
        h[k * m + k] = lkk;
        for i in k + 1..m {
            let mut v = h[i * m + k];
            for p in 0..k {
                v -= h[i * m + p] * h[k * m + p];
            }
            h[i * m + k] = v / lkk;
        }
    }
    let mut s = g.to_vec();
    for i in 0..m {
        for p in 0..i {
            s[i] -= h[i * m + p] * s[p];
        }
        s[i] /= h[i * m + i];
    }
    for i in (0..m).rev() {
        for p in i + 1..m {
            s[i] -= h[p * m + i] * s[p];
        }
        s[i] /= h[i * m + i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_point_svm_closed_form() {
        // x = -1 (y = -1) and x = +1 (y = +1): w = 1, b = 0, objective 1/2 for any C >= 1/2.
        let s = Sample::new(&[-1.0, 1.0], 2, 1, &[0.0, 1.0], &[0, 1]).unwrap();
        let fit = fit_linear_svm(&s, 10.0, &SolverSettings::default()).unwrap();
        assert!((fit.model.weights[0] - 1.0).abs() < 1e-7, "{fit:?}");
        assert!(fit.model.bias.abs() < 1e-7, "{fit:?}");
        assert!((fit.primal_objective - 0.5).abs() < 1e-7);
        assert!((fit.dual_objective - 0.5).abs() < 1e-7);
        // alpha_1 = alpha_2 = 1/2 (w = sum alpha_i y_i x_i = alpha_1 + alpha_2 = 1).
        assert!((fit.alpha[0] - 0.5).abs() < 1e-7 && (fit.alpha[1] - 0.5).abs() < 1e-7);
        // C = 1/4 < 1/2: the box binds, alpha = C, w = 2C = 1/2.
        let fit = fit_linear_svm(&s, 0.25, &SolverSettings::default()).unwrap();
        assert!((fit.model.weights[0] - 0.5).abs() < 1e-7, "{fit:?}");
    }

    #[test]
    fn two_point_logistic_stationarity() {
        // Symmetric data: b = 0 and w solves w = 2C sigmoid(-w) (checked by bisection).
        let s = Sample::new(&[-1.0, 1.0], 2, 1, &[0.0, 1.0], &[0, 1]).unwrap();
        let fit = fit_logistic(&s, 1.0).unwrap();
        let (mut lo, mut hi) = (0.0_f64, 2.0_f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid - 2.0 * sigmoid(-mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        assert!((fit.model.weights[0] - lo).abs() < 1e-12, "{fit:?} vs {lo}");
        assert!(fit.model.bias.abs() < 1e-12);
        assert!(fit.gradient_norm < 1e-12);
    }

    #[test]
    fn bad_c_and_one_class() {
        let s = Sample::new(&[-1.0, 1.0], 2, 1, &[0.0, 1.0], &[0, 1]).unwrap();
        for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                fit_linear_svm(&s, c, &SolverSettings::default()),
                Err(FermError::NotPositive { what: "C", .. })
            ));
            assert!(matches!(
                fit_logistic(&s, c),
                Err(FermError::NotPositive { what: "C", .. })
            ));
        }
        let s = Sample::new(&[-1.0, 1.0], 2, 1, &[1.0, 1.0], &[0, 1]).unwrap();
        assert_eq!(
            fit_logistic(&s, 1.0).unwrap_err(),
            FermError::OneClass { present: 1 }
        );
    }
}
