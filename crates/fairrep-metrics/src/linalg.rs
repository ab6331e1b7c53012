//! Small dense linear algebra on row-major `f64` slices: what the audits need, no more.

/// Solves `A v = r` for a symmetric positive-definite `A` (row-major `n x n`) by Cholesky;
/// `None` when `A` is not (numerically) positive definite.
pub fn cholesky_solve(a: &[f64], n: usize, r: &[f64]) -> Option<Vec<f64>> {
    debug_assert_eq!(a.len(), n * n);
    debug_assert_eq!(r.len(), n);
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

/// Largest singular value of a row-major `rows x cols` matrix, by power iteration on `M^T M`
/// (relative change below 1e-10, at most 200 iterations).
pub fn spectral_norm(m: &[f64], rows: usize, cols: usize) -> f64 {
    let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
    let mut sigma = 0.0;
    for _ in 0..200 {
        let u: Vec<f64> = (0..rows)
            .map(|i| (0..cols).map(|j| m[i * cols + j] * v[j]).sum())
            .collect();
        let mut w: Vec<f64> = (0..cols)
            .map(|j| (0..rows).map(|i| m[i * cols + j] * u[i]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        w.iter_mut().for_each(|x| *x /= norm);
        let next = norm.sqrt();
        v = w;
        if (next - sigma).abs() <= 1e-10 * next {
            return next;
        }
        sigma = next;
    }
    sigma
}

/// The logistic function.
pub fn sigmoid(l: f64) -> f64 {
    1.0 / (1.0 + (-l).exp())
}

/// A fitted linear logistic model `sigmoid(<w, x> + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticFit {
    /// Weights, one per feature.
    pub w: Vec<f64>,
    /// Intercept.
    pub b: f64,
}

/// Minimises `mean_i [softplus(l_i) - y_i l_i] + l2/2 |w|^2`, `l = x w + b` (the intercept is
/// not penalised), by Newton's method with a backtracking (Armijo) line search, to a gradient
/// norm below 1e-9 or 100 steps. `x` is row-major `n x k`, `y` in {0, 1}.
pub fn logistic_newton(x: &[f64], y: &[f32], k: usize, l2: f64) -> LogisticFit {
    let n = y.len();
    let p = k + 1; // bias last
    let mut theta = vec![0.0f64; p];
    let objective = |theta: &[f64]| -> f64 {
        let mut s = 0.0;
        for i in 0..n {
            let row = &x[i * k..(i + 1) * k];
            let l = row.iter().zip(theta).map(|(a, b)| a * b).sum::<f64>() + theta[k];
            s += l.max(0.0) + (-l.abs()).exp().ln_1p() - f64::from(y[i]) * l;
        }
        s / n as f64 + 0.5 * l2 * theta[..k].iter().map(|w| w * w).sum::<f64>()
    };
    let mut current = objective(&theta);
    for _ in 0..100 {
        let mut grad = vec![0.0f64; p];
        let mut hess = vec![0.0f64; p * p];
        for i in 0..n {
            let row = &x[i * k..(i + 1) * k];
            let l = row.iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>() + theta[k];
            let q = sigmoid(l);
            let r = q - f64::from(y[i]);
            let w = q * (1.0 - q);
            for a in 0..p {
                let xa = if a < k { row[a] } else { 1.0 };
                grad[a] += r * xa;
                let wa = w * xa;
                for b in 0..=a {
                    let xb = if b < k { row[b] } else { 1.0 };
                    hess[a * p + b] += wa * xb;
                }
            }
        }
        for a in 0..p {
            grad[a] /= n as f64;
            for b in 0..=a {
                hess[a * p + b] /= n as f64;
                hess[b * p + a] = hess[a * p + b];
            }
            if a < k {
                grad[a] += l2 * theta[a];
                hess[a * p + a] += l2;
            } else {
                hess[a * p + a] += 1e-10;
            }
        }
        let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        if gnorm < 1e-9 {
            break;
        }
        let step = cholesky_solve(&hess, p, &grad).unwrap_or_else(|| grad.clone());
        let mut t = 1.0;
        let slope: f64 = grad.iter().zip(&step).map(|(g, s)| g * s).sum();
        loop {
            let trial: Vec<f64> = theta.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            let value = objective(&trial);
            if value <= current - 1e-4 * t * slope || t < 1e-8 {
                theta = trial;
                current = value;
                break;
            }
            t *= 0.5;
        }
    }
    let b = theta[k];
    theta.truncate(k);
    LogisticFit { w: theta, b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_systems() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let v = cholesky_solve(&a, 2, &[2.0, 1.0]).unwrap();
        assert!((4.0 * v[0] + 2.0 * v[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * v[0] + 3.0 * v[1] - 1.0).abs() < 1e-12);
        assert!(cholesky_solve(&[1.0, 2.0, 2.0, 1.0], 2, &[1.0, 1.0]).is_none());
    }

    #[test]
    fn spectral_norm_of_known_matrices() {
        assert!((spectral_norm(&[3.0, 0.0, 0.0, 2.0], 2, 2) - 3.0).abs() < 1e-9);
        // Rank one u v^T: |u| |v|.
        let m = [1.0, 2.0, 2.0, 4.0, 3.0, 6.0];
        let want = 14f64.sqrt() * 5f64.sqrt();
        assert!((spectral_norm(&m, 3, 2) - want).abs() < 1e-9);
    }

    #[test]
    fn logistic_regression_reaches_a_stationary_point() {
        // y = 1[x0 + 0.5 x1 + noise > 0] on a fixed grid.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let a = ((i * 37) % 100) as f64 / 50.0 - 1.0;
            let b = ((i * 53) % 97) as f64 / 48.5 - 1.0;
            let noise = (((i * 91) % 61) as f64 / 30.5 - 1.0) * 0.8;
            x.extend([a, b]);
            y.push(if a + 0.5 * b + noise > 0.0 { 1.0 } else { 0.0 });
        }
        let LogisticFit { w, b } = logistic_newton(&x, &y, 2, 1e-4);
        // Gradient of the objective at the optimum.
        let mut g = [0.0f64; 3];
        for i in 0..400 {
            let l = x[2 * i] * w[0] + x[2 * i + 1] * w[1] + b;
            let r = sigmoid(l) - f64::from(y[i]);
            g[0] += r * x[2 * i] / 400.0;
            g[1] += r * x[2 * i + 1] / 400.0;
            g[2] += r / 400.0;
        }
        g[0] += 1e-4 * w[0];
        g[1] += 1e-4 * w[1];
        assert!(g.iter().all(|v| v.abs() < 1e-8), "{g:?}");
        assert!(w[0] > w[1] && w[1] > 0.0, "{w:?}");
    }
}
