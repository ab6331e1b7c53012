//! Linear FERM as a representation: the oblique projection that makes every linear model on
//! its output satisfy the equal-opportunity orthogonality `<w, u> = 0` (MATH.md, "Companion
//! methods": FERM).
//!
//! With `u_g` the mean feature vector of the positive rows of group `g` and `u = u_a - u_b`
//! (a = group 0, b = group 1), pick a pivot `j` with `u_j != 0` and map
//!
//! ```text
//!     x  ->  P x  =  drop_j( x - (x_j / u_j) u )        (R^d -> R^(d-1))
//! ```
//!
//! `P u = drop_j(u - u) = 0`, so a linear model `f(x) = <v, P x> + b` equals
//! `<P' v, x> + b` with `<P' v, u> = <v, P u> = 0`: the original-space weights are orthogonal
//! to `u` and the mean score of the positives is the same in both groups (the linear FERM
//! constraint, on the training sample the projection was fitted on).
//!
//! Pivot rule: `j = argmax_j |u_j|` (the first on ties). The map is the same linear
//! representation up to an invertible change of coordinates for any `j` with `u_j != 0`, but
//! the largest `|u_j|` divides by the largest pivot, which keeps `x_j / u_j` best conditioned.
//! The reference code of Donini et al. takes the signed `argmax_j u_j` of `u = u_b - u_a`,
//! which can select a coordinate with a tiny positive `u_j` when the large ones are negative.

use crate::FermError;
use crate::sample::{Sample, check_matrix};

/// A fitted linear FERM projection (serialisable, applicable to new rows).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearFermProjection {
    /// `u = u_a - u_b`, the difference of the groups' mean positive vectors (length `d`).
    pub u: Vec<f64>,
    /// The eliminated coordinate `j` (`argmax |u_j|`).
    pub pivot: usize,
}

impl LinearFermProjection {
    /// Fits the projection on a sample: needs a positive row in each group, at least two
    /// columns, and `u != 0`.
    pub fn fit(sample: &Sample) -> Result<Self, FermError> {
        sample.require_positives_in_both_groups()?;
        if sample.cols() < 2 {
            return Err(FermError::TooSmall {
                what: "cols (the projection drops one)",
                min: 2,
                found: sample.cols(),
            });
        }
        let d = sample.cols();
        let mut sums = [vec![0.0; d], vec![0.0; d]];
        let mut counts = [0usize; 2];
        for i in 0..sample.rows() {
            if sample.signed_labels()[i] > 0.0 {
                let g = sample.groups()[i] as usize;
                counts[g] += 1;
                for (s, &x) in sums[g].iter_mut().zip(sample.row(i)) {
                    *s += x;
                }
            }
        }
        let u: Vec<f64> = (0..d)
            .map(|k| sums[0][k] / counts[0] as f64 - sums[1][k] / counts[1] as f64)
            .collect();
        let mut pivot = 0;
        for k in 1..d {
            if u[k].abs() > u[pivot].abs() {
                pivot = k;
            }
        }
        if u[pivot] == 0.0 {
            return Err(FermError::ZeroDirection);
        }
        Ok(Self { u, pivot })
    }

    /// Input dimension `d`.
    pub fn input_dim(&self) -> usize {
        self.u.len()
    }

    /// Output dimension `d - 1`.
    pub fn output_dim(&self) -> usize {
        self.u.len() - 1
    }

    /// Projects `rows x d` row-major features to `rows x (d - 1)`.
    pub fn apply(&self, features: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>, FermError> {
        if cols != self.input_dim() {
            return Err(FermError::ColumnMismatch {
                what: "linear FERM projection input",
                expected: self.input_dim(),
                found: cols,
            });
        }
        check_matrix(features, rows, cols)?;
        let mut out = Vec::with_capacity(rows * (cols - 1));
        for x in features.chunks_exact(cols) {
            self.project_row(x, &mut out);
        }
        Ok(out)
    }

    /// The projected sample (same labels and groups).
    pub fn apply_sample(&self, sample: &Sample) -> Result<Sample, FermError> {
        let z = self.apply(sample.features(), sample.rows(), sample.cols())?;
        Ok(sample.with_features(z, self.output_dim()))
    }

    fn project_row(&self, x: &[f64], out: &mut Vec<f64>) {
        let j = self.pivot;
        let t = x[j] / self.u[j];
        out.extend(
            x.iter()
                .zip(&self.u)
                .enumerate()
                .filter(|&(k, _)| k != j)
                .map(|(_, (&xk, &uk))| xk - t * uk),
        );
    }

    /// Original-space weights `P' v` of a linear model with weights `v` on the projection:
    /// `<v, P x> = <P' v, x>` for every `x`, and `<P' v, u> = 0`.
    pub fn pull_back(&self, v: &[f64]) -> Result<Vec<f64>, FermError> {
        if v.len() != self.output_dim() {
            return Err(FermError::LengthMismatch {
                what: "projected weights",
                expected: self.output_dim(),
                found: v.len(),
            });
        }
        let j = self.pivot;
        let mut w = Vec::with_capacity(self.input_dim());
        w.extend_from_slice(&v[..j]);
        w.push(0.0);
        w.extend_from_slice(&v[j..]);
        // (P' v)_k = v_k for k != j; (P' v)_j = -(1/u_j) sum_{k != j} u_k v_k.
        let s: f64 = (0..self.input_dim())
            .filter(|&k| k != j)
            .map(|k| self.u[k] * w[k])
            .sum();
        w[j] = -s / self.u[j];
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_projection() {
        // Positives: group a at (2, 0, 1) and (4, 2, 1) -> u_a = (3, 1, 1);
        // group b at (1, 1, 1) -> u_b = (1, 1, 1); u = (2, 0, 0), pivot 0.
        let x = [2.0, 0.0, 1.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0];
        let s = Sample::new(&x, 4, 3, &[1.0, 1.0, 1.0, 0.0], &[0, 0, 1, 1]).unwrap();
        let p = LinearFermProjection::fit(&s).unwrap();
        assert_eq!(p.u, vec![2.0, 0.0, 0.0]);
        assert_eq!(p.pivot, 0);
        let z = p.apply(&[5.0, 6.0, 7.0], 1, 3).unwrap();
        assert_eq!(z, vec![6.0, 7.0]);
        // u = (1, -2): pivot 1 (|-2| > |1|); x -> x - (x_1 / -2) u, drop 1: x_0 + x_1 / 2.
        let p = LinearFermProjection {
            u: vec![1.0, -2.0],
            pivot: 1,
        };
        assert_eq!(p.apply(&[3.0, 4.0], 1, 2).unwrap(), vec![5.0]);
        // Pull-back of v = (1): w = (1, 1/2), <w, u> = 1 - 1 = 0, <w, x> = 3 + 2 = 5.
        assert_eq!(p.pull_back(&[1.0]).unwrap(), vec![1.0, 0.5]);
    }

    #[test]
    fn errors() {
        let s = Sample::new(&[1.0, 2.0, 1.0, 2.0], 2, 2, &[1.0, 1.0], &[0, 1]).unwrap();
        assert_eq!(
            LinearFermProjection::fit(&s).unwrap_err(),
            FermError::ZeroDirection
        );
        let s = Sample::new(&[1.0, 2.0, 1.0, 3.0], 2, 2, &[1.0, 0.0], &[0, 1]).unwrap();
        assert_eq!(
            LinearFermProjection::fit(&s).unwrap_err(),
            FermError::NoPositives { group: 1 }
        );
        let s = Sample::new(&[1.0, 2.0, 1.0, 3.0], 2, 2, &[1.0, 1.0], &[0, 0]).unwrap();
        assert_eq!(
            LinearFermProjection::fit(&s).unwrap_err(),
            FermError::OneGroup { present: 0 }
        );
        let p = LinearFermProjection {
            u: vec![1.0, -2.0],
            pivot: 1,
        };
        assert!(matches!(
            p.apply(&[1.0, 2.0, 3.0], 1, 3),
            Err(FermError::ColumnMismatch { .. })
        ));
    }
}
