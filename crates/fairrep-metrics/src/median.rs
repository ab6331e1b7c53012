//! The median pairwise Euclidean distance of a point set: the kernel-bandwidth heuristic of the
//! MMD penalty and of the audits (docs/MATH.md, "MMD with Gaussian kernels").
//!
//! One convention everywhere: the median of the distances `|p_i - p_j|` over the pairs `i < j`,
//! the mean of the two middle values when their count is even, each distance computed in
//! float64 as a sum of squared differences (no cancellation for points far from the origin).
//! Up to [`EXACT_MAX_POINTS`] points every pair is used; above, [`SAMPLED_PAIRS`] pairs
//! `i != j` drawn uniformly with a fixed seed (ChaCha8, [`SAMPLE_SEED`]), so the heuristic
//! costs `O(SAMPLED_PAIRS d)` time and memory whatever the number of points, and the same
//! points always give the same value. The sampled median has a standard error of about
//! `1 / (2 f(m) sqrt(SAMPLED_PAIRS))` for a distance density `f` at the median `m`: well below
//! 1% of `m` for any reasonable spread.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Up to this many points, the median is over every pair (about 2.1 million pairs).
pub const EXACT_MAX_POINTS: usize = 2048;
/// Pairs drawn above [`EXACT_MAX_POINTS`] points.
pub const SAMPLED_PAIRS: usize = 1 << 20;
/// Seed of the pair sample.
pub const SAMPLE_SEED: u64 = 0x3ED1_A7B0;

/// Why the median distance is not a usable bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MedianError {
    /// Fewer than two points: there is no pair.
    #[error("the median pairwise distance needs at least two points, found {0}")]
    TooFewPoints(usize),
    /// Every pair coincides: every distance is 0.
    #[error("every point coincides: all pairwise distances are 0")]
    AllIdentical,
    /// A distance overflows float64 (or a coordinate is not finite).
    #[error("a pairwise distance is not finite (coordinates too large or not finite)")]
    NonFinite,
}

/// The median pairwise distance and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianDistance {
    /// The median of the positive distances when at least half of the pairs coincide (so that
    /// a bandwidth is never 0), else the median of all distances.
    pub value: f64,
    /// The number of pairs it is the median of.
    pub pairs: usize,
    /// Whether the pairs were a seeded sample (more than [`EXACT_MAX_POINTS`] points).
    pub sampled: bool,
}

/// The median pairwise distance of the rows of the row-major `points` (`points.len() / dim`
/// rows of `dim` coordinates). See the module documentation for the convention.
pub fn median_pairwise_distance<T: Copy + Into<f64>>(
    points: &[T],
    dim: usize,
) -> Result<MedianDistance, MedianError> {
    let set = PointSet::new(points, dim);
    let rows: Vec<usize> = (0..set.n).collect();
    set.median_of_rows(&rows)
}

/// A point set whose multisets of rows (a row may appear more than once) get their median
/// pairwise distance by [`PointSet::median_of_rows`]: the same value as
/// [`median_pairwise_distance`] of the gathered rows, with each distinct pair's distance
/// computed once when the multiset repeats rows (as the MMD penalty's pooled sample of a group
/// and the whole batch does).
#[derive(Debug, Clone)]
pub struct PointSet {
    /// Row-major float64 coordinates.
    points: Vec<f64>,
    dim: usize,
    n: usize,
    /// `|p_i - p_j|^2` for every pair, row-major `n x n`, computed on first need.
    squared: std::cell::OnceCell<Vec<f64>>,
}

impl PointSet {
    /// The rows of the row-major `points` (`points.len() / dim` rows of `dim` coordinates).
    pub fn new<T: Copy + Into<f64>>(points: &[T], dim: usize) -> Self {
        let n = points.len().checked_div(dim).unwrap_or(0);
        Self {
            points: points[..n * dim].iter().map(|&v| v.into()).collect(),
            dim,
            n,
            squared: std::cell::OnceCell::new(),
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the set has no point.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn dist2(&self, i: usize, j: usize) -> f64 {
        let d = self.dim;
        squared_distance(
            &self.points[i * d..(i + 1) * d],
            &self.points[j * d..(j + 1) * d],
        )
    }

    /// The median pairwise distance of the multiset of points `rows` (indices into the set,
    /// repeats allowed), by the module's convention over the pairs `a < b` of positions in
    /// `rows`.
    ///
    /// # Panics
    /// If a row is out of range.
    pub fn median_of_rows(&self, rows: &[usize]) -> Result<MedianDistance, MedianError> {
        let m = rows.len();
        if m < 2 {
            return Err(MedianError::TooFewPoints(m));
        }
        // The squared distances are selected and only the middle values are square-rooted (the
        // square root is monotone, so the median of the distances is the square root of the
        // median of the squared distances).
        let sampled = m > EXACT_MAX_POINTS;
        let mut d: Vec<f64> = if sampled {
            let mut rng = ChaCha8Rng::seed_from_u64(SAMPLE_SEED);
            (0..SAMPLED_PAIRS)
                .map(|_| {
                    let i = rng.random_range(0..m);
                    let j = (i + rng.random_range(1..m)) % m;
                    self.dist2(rows[i], rows[j])
                })
                .collect()
        } else if m > self.n {
            // Repeated rows: every distinct pair once, then gathered.
            let n = self.n;
            let squared = self.squared.get_or_init(|| {
                let mut s = vec![0.0f64; n * n];
                for i in 0..n {
                    for j in (i + 1)..n {
                        let v = self.dist2(i, j);
                        s[i * n + j] = v;
                        s[j * n + i] = v;
                    }
                }
                s
            });
            let mut d = Vec::with_capacity(m * (m - 1) / 2);
            for (a, &i) in rows.iter().enumerate() {
                let row = &squared[i * n..(i + 1) * n];
                d.extend(rows[a + 1..].iter().map(|&j| row[j]));
            }
            d
        } else {
            let mut d = Vec::with_capacity(m * (m - 1) / 2);
            for (a, &i) in rows.iter().enumerate() {
                d.extend(rows[a + 1..].iter().map(|&j| self.dist2(i, j)));
            }
            d
        };
        if d.iter().any(|v| !v.is_finite()) {
            return Err(MedianError::NonFinite);
        }
        let mut value = median_of_roots(&mut d);
        let mut pairs = d.len();
        if value <= 0.0 {
            d.retain(|&v| v > 0.0);
            if d.is_empty() {
                return Err(MedianError::AllIdentical);
            }
            pairs = d.len();
            value = median_of_roots(&mut d);
        }
        Ok(MedianDistance {
            value,
            pairs,
            sampled,
        })
    }
}

/// `|p - q|^2` in float64, summed in eight independent lanes so that it vectorises (the sum
/// is reassociated, not approximated).
fn squared_distance(p: &[f64], q: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (pc, qc) = (p.chunks_exact(LANES), q.chunks_exact(LANES));
    let (pr, qr) = (pc.remainder(), qc.remainder());
    for (a, b) in pc.zip(qc) {
        for k in 0..LANES {
            let d = a[k] - b[k];
            acc[k] += d * d;
        }
    }
    for (k, (a, b)) in pr.iter().zip(qr).enumerate() {
        let d = a - b;
        acc[k] += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The median of the square roots of a non-empty slice of non-negative values (mean of the two
/// middle roots for an even length); the slice is reordered.
fn median_of_roots(v: &mut [f64]) -> f64 {
    let k = v.len();
    let mid = k / 2;
    let (lower, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    if k % 2 == 1 {
        upper.sqrt()
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (below.sqrt() + upper.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_a_line_by_hand() {
        // Points 0, 1, 3: distances 1, 2, 3 -> 2. Points 0, 1, 3, 7: 1, 2, 3, 4, 6, 7 -> 3.5.
        let m = median_pairwise_distance(&[0.0f64, 1.0, 3.0], 1).unwrap();
        assert_eq!((m.value, m.pairs, m.sampled), (2.0, 3, false));
        let m = median_pairwise_distance(&[0.0f32, 1.0, 3.0, 7.0], 1).unwrap();
        assert_eq!(m.value, 3.5);
    }

    #[test]
    fn far_from_the_origin_and_degenerate_sets() {
        // Float32 points 1e20 apart: the distance is kept (computed in float64).
        let m = median_pairwise_distance(&[0.0f32, 0.0, 1e20, 0.0], 2).unwrap();
        assert!((m.value - 1e20).abs() < 1e13, "{m:?}");
        // Mostly duplicated points (six of the ten distances are 0): the median of the positive
        // distances.
        let m = median_pairwise_distance(&[0.0f64, 0.0, 0.0, 0.0, 2.0], 1).unwrap();
        assert_eq!((m.value, m.pairs), (2.0, 4));
        assert_eq!(
            median_pairwise_distance(&[1.0f64, 1.0], 1),
            Err(MedianError::AllIdentical)
        );
        assert_eq!(
            median_pairwise_distance(&[1.0f64], 1),
            Err(MedianError::TooFewPoints(1))
        );
        assert_eq!(
            median_pairwise_distance(&[0.0f64, 1e200, -1e200, 0.0], 1),
            Err(MedianError::NonFinite)
        );
    }

    #[test]
    fn matches_the_plain_definition() {
        // Every pair's distance summed in order and square-rooted, then the median: the lane
        // sums and the late square roots change only the rounding.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (n, dim) in [(2, 3), (7, 1), (40, 13), (101, 32), (64, 8)] {
            let pts: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-3.0f32..3.0) + 100.0)
                .collect();
            let mut d: Vec<f64> = Vec::new();
            for i in 0..n {
                for j in (i + 1)..n {
                    let s: f64 = (0..dim)
                        .map(|k| {
                            let t = f64::from(pts[i * dim + k]) - f64::from(pts[j * dim + k]);
                            t * t
                        })
                        .sum();
                    d.push(s.sqrt());
                }
            }
            d.sort_by(f64::total_cmp);
            let k = d.len();
            let want = if k % 2 == 1 {
                d[k / 2]
            } else {
                0.5 * (d[k / 2 - 1] + d[k / 2])
            };
            let got = median_pairwise_distance(&pts, dim).unwrap();
            assert_eq!(got.pairs, k);
            assert!(
                (got.value - want).abs() <= 1e-14 * want,
                "n {n} d {dim}: {} vs {want}",
                got.value
            );
        }
    }

    #[test]
    fn multisets_of_rows_match_the_gathered_points() {
        // A group's rows followed by every row (the penalty's pooled sample), a plain subset,
        // and a multiset above the exact limit: the same value as the gathered points, bit for
        // bit.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (n, dim) = (300, 5);
        let pts: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let set = PointSet::new(&pts, dim);
        let group: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
        let pooled: Vec<usize> = group.iter().copied().chain(0..n).collect();
        let subset: Vec<usize> = (0..n).filter(|i| i % 7 == 2).collect();
        let big: Vec<usize> = (0..2500).map(|i| (i * 13) % n).collect();
        for rows in [&pooled, &subset, &big] {
            let gathered: Vec<f32> = rows
                .iter()
                .flat_map(|&i| pts[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let want = median_pairwise_distance(&gathered, dim).unwrap();
            assert_eq!(set.median_of_rows(rows).unwrap(), want);
        }
        assert_eq!(set.median_of_rows(&[4]), Err(MedianError::TooFewPoints(1)));
    }

    #[test]
    fn sampled_median_is_seeded_and_close_to_the_exact_one() {
        // 3000 points on a line, i / 3000: the exact median distance of a uniform sample on
        // [0, 1] is 1 - 1/sqrt(2) = 0.2929 (the median of |U - V|).
        let n = 3000;
        let pts: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
        let a = median_pairwise_distance(&pts, 1).unwrap();
        let b = median_pairwise_distance(&pts, 1).unwrap();
        assert!(a.sampled && a.pairs == SAMPLED_PAIRS);
        assert_eq!(a, b);
        let exact = 1.0 - 0.5f64.sqrt();
        assert!((a.value - exact).abs() < 2e-3, "{a:?} vs {exact}");
    }
}
