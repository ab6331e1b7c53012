//! Validated training data and the seeded, group-and-label stratified row subsets.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::FermError;

/// A validated, owned training sample: row-major features, labels in {0, 1} stored as
/// `y = ±1` (`y = 2 * label - 1`), and a binary sensitive attribute.
///
/// Groups are `0` (called *a* in the crate docs) and `1` (*b*); every asymmetric quantity is
/// stated as a minus b (`u = u_a - u_b`, `tau`), and DEO is symmetric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    features: Vec<f64>,
    rows: usize,
    cols: usize,
    y: Vec<f64>,
    groups: Vec<u32>,
}

/// Row counts of the four (group, label) cells of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellCounts {
    /// `counts[g][l]`: rows of group `g` with label `l`.
    pub counts: [[usize; 2]; 2],
}

impl CellCounts {
    /// Rows of group `g` with label `l` (`g`, `l` in {0, 1}).
    pub fn get(&self, group: usize, label: usize) -> usize {
        self.counts[group][label]
    }
}

impl Sample {
    /// Validates and copies a sample.
    ///
    /// `features` is row-major `rows x cols`; `labels` are 0 or 1 (`f32` or `f64`); `groups`
    /// are 0 or 1. Errors: a zero dimension, a length mismatch, a non-finite feature (its row
    /// and column), a label other than 0/1, a group other than 0/1. Whether both groups, both
    /// labels and positives in each group are present is checked by the procedures that need
    /// it ([`Sample::require_both_groups`], [`Sample::require_positives_in_both_groups`],
    /// [`Sample::require_both_classes`]).
    pub fn new<L: Copy + Into<f64>>(
        features: &[f64],
        rows: usize,
        cols: usize,
        labels: &[L],
        groups: &[u32],
    ) -> Result<Self, FermError> {
        check_matrix(features, rows, cols)?;
        if labels.len() != rows {
            return Err(FermError::LengthMismatch {
                what: "labels",
                expected: rows,
                found: labels.len(),
            });
        }
        if groups.len() != rows {
            return Err(FermError::LengthMismatch {
                what: "groups",
                expected: rows,
                found: groups.len(),
            });
        }
        let mut y = Vec::with_capacity(rows);
        for (row, &l) in labels.iter().enumerate() {
            let v: f64 = l.into();
            if v == 0.0 {
                y.push(-1.0);
            } else if v == 1.0 {
                y.push(1.0);
            } else {
                return Err(FermError::NonBinaryLabel { row, value: v });
            }
        }
        if let Some(row) = groups.iter().position(|&g| g > 1) {
            return Err(FermError::GroupOutOfRange {
                row,
                found: groups[row],
            });
        }
        Ok(Self {
            features: features.to_vec(),
            rows,
            cols,
            y,
            groups: groups.to_vec(),
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of feature columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row-major features, `rows x cols`.
    pub fn features(&self) -> &[f64] {
        &self.features
    }

    /// Row `i` of the features.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.features[i * self.cols..(i + 1) * self.cols]
    }

    /// Labels as `±1` (`+1` for label 1).
    pub fn signed_labels(&self) -> &[f64] {
        &self.y
    }

    /// Labels as 0/1.
    pub fn labels(&self) -> Vec<f64> {
        self.y.iter().map(|&v| f64::from(v > 0.0)).collect()
    }

    /// Group ids (0 = a, 1 = b).
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// Rows per (group, label) cell.
    pub fn cell_counts(&self) -> CellCounts {
        let mut counts = [[0usize; 2]; 2];
        for (&g, &y) in self.groups.iter().zip(&self.y) {
            counts[g as usize][usize::from(y > 0.0)] += 1;
        }
        CellCounts { counts }
    }

    /// Error unless both groups have rows.
    pub fn require_both_groups(&self) -> Result<(), FermError> {
        let c = self.cell_counts().counts;
        for g in 0..2u32 {
            if c[g as usize][0] + c[g as usize][1] == 0 {
                return Err(FermError::OneGroup { present: 1 - g });
            }
        }
        Ok(())
    }

    /// Error unless both labels occur.
    pub fn require_both_classes(&self) -> Result<(), FermError> {
        let c = self.cell_counts().counts;
        for l in 0..2u8 {
            if c[0][l as usize] + c[1][l as usize] == 0 {
                return Err(FermError::OneClass { present: 1 - l });
            }
        }
        Ok(())
    }

    /// Error unless both groups occur and each has a positive row (what the FERM constraint
    /// and DEO need).
    pub fn require_positives_in_both_groups(&self) -> Result<(), FermError> {
        self.require_both_groups()?;
        let c = self.cell_counts().counts;
        for g in 0..2u32 {
            if c[g as usize][1] == 0 {
                return Err(FermError::NoPositives { group: g });
            }
        }
        Ok(())
    }

    /// The rows at `indices` (in that order), as a new sample; an index `>= rows` is an
    /// error.
    pub fn subset(&self, indices: &[usize]) -> Result<Self, FermError> {
        if let Some(&index) = indices.iter().find(|&&i| i >= self.rows) {
            return Err(FermError::RowOutOfRange {
                index,
                rows: self.rows,
            });
        }
        Ok(self.subset_unchecked(indices))
    }

    /// [`Sample::subset`] for indices known to be in range.
    pub(crate) fn subset_unchecked(&self, indices: &[usize]) -> Self {
        let mut features = Vec::with_capacity(indices.len() * self.cols);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Self {
            features,
            rows: indices.len(),
            cols: self.cols,
            y: indices.iter().map(|&i| self.y[i]).collect(),
            groups: indices.iter().map(|&i| self.groups[i]).collect(),
        }
    }

    /// The same labels and groups with other features (same number of rows), for a
    /// representation of this sample. Crate-internal: `features` must be finite.
    pub(crate) fn with_features(&self, features: Vec<f64>, cols: usize) -> Self {
        debug_assert_eq!(features.len(), self.rows * cols);
        Self {
            features,
            rows: self.rows,
            cols,
            y: self.y.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// Checks a row-major matrix: positive dimensions, length, finiteness.
pub(crate) fn check_matrix(features: &[f64], rows: usize, cols: usize) -> Result<(), FermError> {
    if rows == 0 {
        return Err(FermError::TooSmall {
            what: "rows",
            min: 1,
            found: 0,
        });
    }
    if cols == 0 {
        return Err(FermError::TooSmall {
            what: "cols",
            min: 1,
            found: 0,
        });
    }
    let expected = rows.checked_mul(cols).ok_or(FermError::LengthMismatch {
        what: "features (rows * cols overflows)",
        expected: usize::MAX,
        found: features.len(),
    })?;
    if features.len() != expected {
        return Err(FermError::LengthMismatch {
            what: "features (rows * cols)",
            expected,
            found: features.len(),
        });
    }
    if let Some(k) = features.iter().position(|v| !v.is_finite()) {
        return Err(FermError::NonFiniteFeature {
            row: k / cols,
            col: k % cols,
            value: features[k],
        });
    }
    Ok(())
}

/// The row indices of each (group, label) cell, in row order: `cells[2 * g + l]`.
pub(crate) fn cells(groups: &[u32], y: &[f64]) -> [Vec<usize>; 4] {
    let mut cells: [Vec<usize>; 4] = Default::default();
    for (i, (&g, &v)) in groups.iter().zip(y).enumerate() {
        cells[2 * g as usize + usize::from(v > 0.0)].push(i);
    }
    cells
}

/// A seeded subset of `m` rows stratified by (group, label), sorted by row index.
///
/// Rule: the four (group, label) cells receive `m * n_cell / n` rows rounded down, and the
/// rows left over go one each to the cells with the largest fractional remainders (ties: the
/// cell order (a, 0), (a, 1), (b, 0), (b, 1)). Within a cell, the rows are the first ones of a
/// Fisher-Yates shuffle of the cell's rows by `ChaCha8Rng::seed_from_u64(seed)` (one generator,
/// cells shuffled in that order). Every non-empty cell keeps at least one row when `m` allows
/// (a cell whose quota rounds to 0 takes a row from the largest cell). `m >= rows` returns all
/// rows.
pub fn stratified_subsample(sample: &Sample, m: usize, seed: u64) -> Vec<usize> {
    let n = sample.rows();
    if m >= n {
        return (0..n).collect();
    }
    let mut cells = cells(sample.groups(), sample.signed_labels());
    let sizes: Vec<usize> = cells.iter().map(Vec::len).collect();
    let mut quota: Vec<usize> = sizes.iter().map(|&s| m * s / n).collect();
    let mut left = m - quota.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..4).collect();
    // Largest remainder first; `sort_by` is stable, so ties keep the cell order.
    order.sort_by(|&a, &b| ((m * sizes[b]) % n).cmp(&((m * sizes[a]) % n)));
    for &c in &order {
        if left == 0 {
            break;
        }
        if quota[c] < sizes[c] {
            quota[c] += 1;
            left -= 1;
        }
    }
    for c in 0..4 {
        if sizes[c] > 0 && quota[c] == 0 {
            let donor = (0..4).max_by_key(|&d| (quota[d], std::cmp::Reverse(d)));
            if let Some(d) = donor.filter(|&d| quota[d] > 1) {
                quota[d] -= 1;
                quota[c] = 1;
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(m);
    for (cell, &q) in cells.iter_mut().zip(&quota) {
        cell.shuffle(&mut rng);
        out.extend_from_slice(&cell[..q]);
    }
    out.sort_unstable();
    out
}
