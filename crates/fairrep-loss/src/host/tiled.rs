//! The divergences in host memory without any `n x m` matrix: the costs and kernel values are
//! computed from the points inside each sweep, one cache-sized tile at a time, as the fused GPU
//! kernels do (`crate::fused::kernels`). Memory is `O((n + m) d)` plus one tile per thread.
//!
//! A tile is a block of [`TILE_ROWS`] rows against a chunk of columns (about 32 KiB of the
//! column cloud): its inner products `<p_i, q_j>` come from a register-blocked product
//! ([`gram_tile`], four rows against two blocks of sixteen columns at a time, vectorised by
//! the compiler under `pulp`'s run-time dispatch), then each row's costs `|p_i - q_j|^2 / 2`
//! are expanded from the squared norms in centred coordinates (the centring of `crate::cost`),
//! and reduced:
//! - Sinkhorn ([`softmin_tiled`]): the online log-sum-exp over the column chunks (a running
//!   maximum and sum, rescaled when the maximum grows) and, for the last step, the running
//!   barycentre `sum_j P_ij q_j` of the row-normalised plan, from which the envelope gradient
//!   `a_i (xbar_i - ybar_i)` follows without any plan being stored;
//! - Sinkhorn at the target eps ([`Truncated`]): a sweep over every column also keeps, per
//!   row, the columns whose terms can matter at float precision; the next softmins of that
//!   pair sum those alone ([`softmin_truncated`], a gather of a few percent of the columns)
//!   while the potential has not moved enough to change which terms matter, with a bound
//!   that keeps the dropped mass below the sum's own rounding (docs/MATH.md);
//! - MMD ([`kernel_tiled`]): the weighted kernel sums and, for the gradient, the row sums
//!   `r_i = sum_j L_ij v_j` and `w_i = sum_j L_ij v_j q_j` of the bandwidth-weighted kernel `L`.
//!
//! The `gemm` crate (in the tree through burn) would compute the tile products, but its API is
//! `unsafe` and the workspace forbids unsafe code (`unsafe_code = "forbid"`); the products are
//! a register-blocked loop of fused multiply-adds instead. For `d = 16` they cost about as much
//! as the exponentials: a tiled sweep does about twice the arithmetic of a stored-matrix one,
//! and wins once the stored matrices no longer fit in the caches (docs/BENCHMARKS.md).
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use super::{HostFloat, LANES, host_vec, max_of, sum_of, to_tensor, with_gradients};
use crate::config::{LossError, SinkhornConfig};
use crate::solver::{Pair, Problem, SinkhornOutput, SolveOutput, SolverOps, solve_with};

/// Rows of a tile: one parallel task sweeps this many rows against every column.
pub(crate) const TILE_ROWS: usize = 64;

/// Pieces per thread of a kernel sweep that also sums its columns (each piece holds its own
/// column sums, `cols (d + 1)` values): few enough to bound that memory (at 10^6 points in 16
/// dimensions, 136 MiB per piece), enough for the threads to balance their load (the row
/// tiles all cost the same).
pub(crate) const COLUMN_PIECES: usize = 2;

/// Rows and columns of a register block of [`gram_tile`] (four 512-bit accumulators in
/// float32; [`product_blocks`] runs two such blocks side by side; a block of 32 columns was no
/// longer vectorised by the compiler).
const BLOCK_ROWS: usize = 4;
const BLOCK_COLS: usize = 2 * LANES;

/// Columns of a tile for points of dimension `d`: about 8192 coordinates of the column cloud
/// (32 KiB in float32, the L1 cache), a multiple of the register block, at least one block.
fn tile_cols(d: usize) -> usize {
    (8192 / d.max(1)).clamp(BLOCK_COLS, MAX_TILE_COLS) / BLOCK_COLS * BLOCK_COLS
}

/// The most columns of a tile ([`tile_cols`]).
const MAX_TILE_COLS: usize = 2048;

/// One cloud in centred coordinates, in both layouts the sweeps read: row-major (the rows of a
/// tile, the barycentres) and transposed (the columns of a tile), with its squared norms.
#[derive(Debug)]
pub(crate) struct Cloud<F> {
    /// `[len, d]`, row-major.
    points: Vec<F>,
    /// `[d, len]`, row-major: coordinate `k` of every point is contiguous.
    transposed: Vec<F>,
    /// `|p_i|^2`.
    sq: Vec<F>,
    d: usize,
    /// `[len, padded_d]`, row-major, each row zero-padded to a multiple of the register block
    /// (the right factor of the products of [`accumulate_points`]); empty when `d` is already
    /// a multiple (`points` serves then).
    padded: Vec<F>,
    padded_d: usize,
}

impl<F: HostFloat> Cloud<F> {
    /// The `len` points `values` (`[len, d]`, row-major) translated by `-centre`, in float64
    /// before rounding to `F`.
    fn new(values: &[F], centre: &[f64], len: usize, d: usize) -> Self {
        let mut points = Vec::with_capacity(len * d);
        let mut sq = Vec::with_capacity(len);
        for i in 0..len {
            let mut s = 0.0;
            for (&v, &c) in values[i * d..(i + 1) * d].iter().zip(centre) {
                let p = v.get() - c;
                points.push(F::of(p));
                s += p * p;
            }
            sq.push(F::of(s));
        }
        let mut transposed = vec![F::ZERO; len * d];
        for (i, row) in points.chunks_exact(d.max(1)).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                transposed[k * len + i] = v;
            }
        }
        let padded_d = d.div_ceil(BLOCK_COLS) * BLOCK_COLS;
        let mut padded = vec![F::ZERO; if padded_d == d { 0 } else { len * padded_d }];
        if d > 0 && padded_d != d {
            for (row, p) in padded
                .chunks_exact_mut(padded_d)
                .zip(points.chunks_exact(d))
            {
                row[..d].copy_from_slice(p);
            }
        }
        Self {
            points,
            transposed,
            sq,
            d,
            padded,
            padded_d,
        }
    }

    fn len(&self) -> usize {
        self.sq.len()
    }

    /// The points row-major with rows of a multiple of the register block: `(values, stride)`.
    fn block_rows(&self) -> (&[F], usize) {
        if self.padded_d == self.d {
            (&self.points, self.d)
        } else {
            (&self.padded, self.padded_d)
        }
    }
}

/// The mean of the rows of `clouds` together, in float64.
fn centre_of<F: HostFloat>(clouds: &[&[F]], d: usize) -> Vec<f64> {
    let mut sum = vec![0.0; d];
    let mut count = 0usize;
    for cloud in clouds {
        for row in cloud.chunks_exact(d.max(1)) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += v.get();
            }
            count += 1;
        }
    }
    sum.iter().map(|s| s / count.max(1) as f64).collect()
}

/// `g[r * cols + j] = <p_r, q_(c0 + j)>` for the rows `p` (row-major, `d` each) against the
/// columns `c0 .. c0 + cols` of `qt` (the transposed column cloud, `d x stride`): blocks of
/// [`BLOCK_ROWS`] rows and [`BLOCK_COLS`] columns accumulated in registers over `d`, two
/// column blocks at a time ([`product_blocks`]).
#[inline(always)]
fn gram_tile<F: HostFloat>(
    (p, rows): (&[F], usize),
    d: usize,
    qt: &[F],
    stride: usize,
    c0: usize,
    cols: usize,
    g: &mut [F],
) {
    if d == 0 {
        g[..rows * cols].fill(F::ZERO);
        return;
    }
    let full_cols = cols / BLOCK_COLS * BLOCK_COLS;
    let mut r = 0;
    while r + BLOCK_ROWS <= rows {
        let pr = &p[r * d..(r + BLOCK_ROWS) * d];
        let rows_k: [&[F]; BLOCK_ROWS] = std::array::from_fn(|b| &pr[b * d..(b + 1) * d]);
        let mut j = 0;
        while j + 2 * BLOCK_COLS <= full_cols {
            product_blocks::<F, 2>(&rows_k, (qt, stride, c0 + j), (&mut g[r * cols..], cols, j));
            j += 2 * BLOCK_COLS;
        }
        if j < full_cols {
            product_blocks::<F, 1>(&rows_k, (qt, stride, c0 + j), (&mut g[r * cols..], cols, j));
        }
        for j in full_cols..cols {
            for b in 0..BLOCK_ROWS {
                let mut s = F::ZERO;
                for k in 0..d {
                    s = pr[b * d + k].mul_add(qt[k * stride + c0 + j], s);
                }
                g[(r + b) * cols + j] = s;
            }
        }
        r += BLOCK_ROWS;
    }
    for r in r..rows {
        let pr = &p[r * d..(r + 1) * d];
        let row = &mut g[r * cols..(r + 1) * cols];
        row.fill(F::ZERO);
        for (k, &pk) in pr.iter().enumerate() {
            let q = &qt[k * stride + c0..][..cols];
            for (s, &q) in row.iter_mut().zip(q) {
                *s = pk.mul_add(q, *s);
            }
        }
    }
}

/// The products of the [`BLOCK_ROWS`] rows `rows_k` (each `d` long) with `BLOCKS` register
/// blocks of columns from `q0` of `qt` (`d x stride`), written to `g` (row stride `cols`) from
/// column `j`: `BLOCKS x BLOCK_ROWS` independent accumulators, so that consecutive fused
/// multiply-adds do not wait on each other (two blocks cut the product's time by a fifth
/// against one; three or more were no longer vectorised by the compiler). Each product sums
/// over the coordinates in order, whatever the block.
#[inline(always)]
fn product_blocks<F: HostFloat, const BLOCKS: usize>(
    rows_k: &[&[F]; BLOCK_ROWS],
    (qt, stride, q0): (&[F], usize, usize),
    (g, cols, j): (&mut [F], usize, usize),
) {
    let mut acc = [[[F::ZERO; BLOCK_COLS]; BLOCK_ROWS]; BLOCKS];
    for k in 0..rows_k[0].len() {
        let base = k * stride + q0;
        let q: [&[F; BLOCK_COLS]; BLOCKS] = std::array::from_fn(|c| {
            qt[base + c * BLOCK_COLS..][..BLOCK_COLS]
                .try_into()
                .expect("a block of columns")
        });
        for (b, row) in rows_k.iter().enumerate() {
            for (acc, q) in acc.iter_mut().zip(q) {
                multiply_add(&mut acc[b], row[k], q);
            }
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        for (b, a) in acc.iter().enumerate() {
            g[b * cols + j + c * BLOCK_COLS..][..BLOCK_COLS].copy_from_slice(a);
        }
    }
}

/// The cost `max(|p|^2 + |q|^2 - 2 <p, q>, 0) / 2` from the squared norms and the inner
/// product (`half` = 1/2 in the type, `minus_two` = -2): the one expansion of every Sinkhorn
/// sweep, so that the seeds and the sets' costs are bit for bit the sweep's.
#[inline(always)]
fn cost_of<F: HostFloat>(sq_row: F, sq: F, dot: F, (half, minus_two): (F, F)) -> F {
    let dist = dot.mul_add(minus_two, sq_row + sq);
    if dist > F::ZERO { dist * half } else { F::ZERO }
}

/// `-1 / eps` and the constants of [`cost_of`], in the type.
fn sweep_constants<F: HostFloat>(eps: f64) -> (F, (F, F)) {
    (F::of(-1.0 / eps), (F::of(0.5), F::of(-2.0)))
}

/// The exponent `h - c / eps` of a cost `c` (`neg_inv` = `-1 / eps` in the type), in one
/// fused multiply-add: the one form of every Sinkhorn sweep, of a set's test and of its
/// truncated softmins, so that they agree bit for bit.
#[inline(always)]
fn exponent<F: HostFloat>(h: F, c: F, neg_inv: F) -> F {
    c.mul_add(neg_inv, h)
}

/// For a self pair (`rows` and `cols` one cloud), a lower bound of the largest exponent of each
/// of the `count` rows from `r0`: the diagonal exponent `h_i - C_ii / eps`, computed as the
/// sweep computes it (the same products in the same order, [`cost_of`]), less one unit
/// against any difference in rounding. `-inf` for other pairs.
#[inline(always)]
fn self_seeds<F: HostFloat>(
    rows: &Cloud<F>,
    cols: &Cloud<F>,
    r0: usize,
    count: usize,
    h: &[F],
    eps: f64,
) -> Vec<F> {
    if !std::ptr::eq(rows, cols) {
        return vec![F::NEG_INFINITY; count];
    }
    let (d, (neg_inv, consts)) = (rows.d, sweep_constants(eps));
    (r0..r0 + count)
        .map(|i| {
            let p = &rows.points[i * d..(i + 1) * d];
            let dot = p.iter().fold(F::ZERO, |s, &v| v.mul_add(v, s));
            let sq = rows.sq[i];
            exponent(h[i], cost_of(sq, sq, dot, consts), neg_inv) - F::of(1.0)
        })
        .collect()
}

/// `acc += p q`, one register block row.
#[inline(always)]
fn multiply_add<F: HostFloat>(acc: &mut [F; BLOCK_COLS], p: F, q: &[F; BLOCK_COLS]) {
    for (a, &q) in acc.iter_mut().zip(q) {
        *a = p.mul_add(q, *a);
    }
}

/// `acc_r += sum_j e_rj q_j` for every row `r` of a tile (`e`: `[rows, w]`; `acc`: `[rows,
/// d]`) over the columns `c0 .. c0 + w` of `cols`: the product `E Q`, register-blocked as the
/// Gram tile ([`gram_tile`] with the roles of its two factors taken by `E` and the padded
/// points `Q`), then added. A row-by-row accumulation into `acc` instead waits on its own
/// stores at every column (a dependency chain through memory), several times slower.
#[inline(always)]
fn accumulate_points<F: HostFloat>(
    acc: &mut [F],
    (e, rows, w): (&[F], usize, usize),
    (cols, c0): (&Cloud<F>, usize),
    scratch: &mut Vec<F>,
) {
    let d = cols.d;
    if d == 0 {
        return;
    }
    let (points, pd) = cols.block_rows();
    scratch.clear();
    scratch.resize(rows * pd, F::ZERO);
    let q = &points[c0 * pd..(c0 + w) * pd];
    gram_tile((e, rows), w, q, pd, 0, pd, scratch);
    for (acc, s) in acc.chunks_exact_mut(d).zip(scratch.chunks_exact(pd)) {
        for (a, &s) in acc.iter_mut().zip(s) {
            *a = *a + s;
        }
    }
}

/// The softmins `softmin_eps(C(rows, cols), h)_i = -eps LSE_j (h_j - C_ij / eps)` with `C_ij =
/// |p_i - q_j|^2 / 2`, and with `barycentres` also `sum_j P_ij q_j` (`[rows, d]`, in the
/// columns' centred coordinates) for the row-normalised plan `P_ij = exp(h_j - C_ij / eps -
/// LSE_i)`; otherwise the second vector is empty.
pub(crate) fn softmin_tiled<F: HostFloat>(
    eps: f64,
    rows: &Cloud<F>,
    cols: &Cloud<F>,
    h: &[F],
    barycentres: bool,
) -> (Vec<F>, Vec<F>) {
    let (n, d) = (rows.len(), rows.d);
    // Points of dimension 0 have empty barycentres (and the row split below needs d > 0).
    let barycentres = barycentres && d > 0;
    let mut out = vec![F::ZERO; n];
    let mut bary = if barycentres {
        vec![F::ZERO; n * d]
    } else {
        Vec::new()
    };
    if cols.len() == 0 {
        return (out, bary);
    }
    let arch = pulp::Arch::new();
    let task = |(t, out): (usize, &mut [F]), bary: Option<&mut [F]>| {
        let r0 = t * TILE_ROWS;
        arch.dispatch(SoftminTile {
            eps,
            rows,
            cols,
            r0,
            h,
            out,
            bary,
            keep: None,
        });
    };
    if barycentres {
        out.par_chunks_mut(TILE_ROWS)
            .enumerate()
            .zip(bary.par_chunks_mut(TILE_ROWS * d))
            .for_each(|(o, b)| task(o, Some(b)));
    } else {
        out.par_chunks_mut(TILE_ROWS)
            .enumerate()
            .for_each(|o| task(o, None));
    }
    (out, bary)
}

/// One row block of [`softmin_tiled`], compiled for the instruction set `pulp` dispatches to.
struct SoftminTile<'a, 'k, F> {
    eps: f64,
    rows: &'a Cloud<F>,
    cols: &'a Cloud<F>,
    r0: usize,
    h: &'a [F],
    out: &'a mut [F],
    bary: Option<&'a mut [F]>,
    /// Where a building sweep collects the columns of [`Truncated`].
    keep: Option<&'a mut Keep<'k, F>>,
}

impl<F: HostFloat> pulp::WithSimd for SoftminTile<'_, '_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            eps,
            rows,
            cols,
            r0,
            h,
            out,
            mut bary,
            keep,
        } = self;
        let (d, m, count) = (rows.d, cols.len(), out.len());
        let width = tile_cols(d);
        let (neg_inv, consts) = sweep_constants(eps);
        let p = &rows.points[r0 * d..(r0 + count) * d];
        let mut tile = vec![F::ZERO; count * width.min(m)];
        let mut keep = keep;
        if let Some(keep) = keep.as_deref_mut() {
            keep.start(self_seeds(rows, cols, r0, count, h, eps));
        }
        let mut maxes = vec![F::NEG_INFINITY; count];
        let mut sums = vec![F::ZERO; count];
        let mut scratch = Vec::new();
        let mut c0 = 0;
        while c0 < m {
            let w = width.min(m - c0);
            let g = &mut tile[..count * w];
            gram_tile((p, count), d, &cols.transposed, m, c0, w, g);
            let (sq_cols, h_cols) = (&cols.sq[c0..c0 + w], &h[c0..c0 + w]);
            for (r, z) in g.chunks_exact_mut(w).enumerate() {
                let sq_row = rows.sq[r0 + r];
                // z_j = h_j - C_ij / eps, with C_ij = max(|p|^2 + |q|^2 - 2 <p, q>, 0) / 2;
                // a building sweep also keeps the costs for the set.
                match keep.as_deref_mut() {
                    None => {
                        for ((z, &sq), &h) in z.iter_mut().zip(sq_cols).zip(h_cols) {
                            *z = exponent(h, cost_of(sq_row, sq, *z, consts), neg_inv);
                        }
                    }
                    Some(keep) => {
                        let costs = keep.chunk_costs(w);
                        for (((z, c), &sq), &h) in z.iter_mut().zip(costs).zip(sq_cols).zip(h_cols)
                        {
                            *c = cost_of(sq_row, sq, *z, consts);
                            *z = exponent(h, *c, neg_inv);
                        }
                    }
                }
                let chunk_max = max_of(z);
                let old = maxes[r];
                let new = if chunk_max > old { chunk_max } else { old };
                if let Some(keep) = keep.as_deref_mut() {
                    keep.collect(r, c0, z, new);
                }
                for z in z.iter_mut() {
                    *z = (*z - new).exp_nonpositive();
                }
                // The terms so far were relative to the old maximum: rescaled (0 at first).
                let keep = (old - new).exp_nonpositive();
                sums[r] = sums[r] * keep + sum_of(z);
                maxes[r] = new;
                if let Some(bary) = bary.as_deref_mut() {
                    for a in &mut bary[r * d..(r + 1) * d] {
                        *a = *a * keep;
                    }
                }
            }
            if let Some(bary) = bary.as_deref_mut() {
                // Every row's terms `exp(z_j - max)` of this chunk are in `g`: `bary += E Q`.
                accumulate_points(bary, (g, count, w), (cols, c0), &mut scratch);
            }
            if let Some(keep) = keep.as_deref_mut() {
                keep.bound(h, eps, &maxes, m);
            }
            c0 += w;
        }
        if let Some(keep) = keep {
            keep.finish(h, eps, &maxes, m);
        }
        let neg_eps = F::of(-eps);
        for (r, o) in out.iter_mut().enumerate() {
            *o = neg_eps * (maxes[r] + sums[r].ln());
            if let Some(bary) = bary.as_deref_mut() {
                let scale = F::of(1.0 / sums[r].get());
                for a in &mut bary[r * d..(r + 1) * d] {
                    *a = *a * scale;
                }
            }
        }
    }
}

/// Truncation of the softmins at the target eps: the columns of each row whose exponent
/// `z_ij = h_j - C_ij / eps` was within `theta` of the row's largest `M_i` in the sweep that
/// built it (from `h0`), with their costs. While `h` has moved from `h0` by a spread
/// `D = max_j (h_j - h0_j) - min_j (h_j - h0_j)` of at most [`TRUNCATION_MARGIN`], every
/// dropped term is below `exp(D - theta)` times the row's largest (the largest column is kept,
/// and moved by at least the smallest shift); with `theta = ln m + ln(1 / u) +`
/// [`TRUNCATION_MARGIN`] (`u` the unit roundoff of the type), the dropped terms together are
/// below `u` times the row's sum: less than the rounding of that sum itself. A softmin from
/// such `h` at the same eps sums the kept columns alone ([`softmin_truncated`]); any other
/// sweeps every column and builds the set again (docs/MATH.md, "Truncated softmins").
#[derive(Debug)]
pub(crate) struct Truncated<F> {
    eps: f64,
    h0: Vec<F>,
    /// The entries of each block of [`TILE_ROWS`] rows, the blocks the sweeps' tasks take, in
    /// row order: each task keeps its own, so a set is never copied into one array.
    blocks: Vec<Entries<F>>,
}

/// The entries of a block of rows: row `r`'s columns are `cols[offsets[r]..offsets[r + 1]]`,
/// their costs in `costs`.
#[derive(Debug)]
struct Entries<F> {
    offsets: Vec<usize>,
    cols: Vec<u32>,
    costs: Vec<F>,
}

/// The largest cost `max_ij |p_i - q_j|^2 / 2` between the clouds `rows` and `cols` (0 when
/// either is empty): one sweep of the inner products, without exponentials.
pub(crate) fn largest_cost<F: HostFloat>(rows: &Cloud<F>, cols: &Cloud<F>) -> f64 {
    if cols.len() == 0 {
        return 0.0;
    }
    let arch = pulp::Arch::new();
    (0..rows.len().div_ceil(TILE_ROWS))
        .into_par_iter()
        .map(|t| {
            let r0 = t * TILE_ROWS;
            let count = TILE_ROWS.min(rows.len() - r0);
            arch.dispatch(LargestCostTile {
                rows,
                cols,
                r0,
                count,
            })
        })
        .reduce(|| 0.0, f64::max)
}

/// One row block of [`largest_cost`], compiled for the instruction set `pulp` dispatches to.
struct LargestCostTile<'a, F> {
    rows: &'a Cloud<F>,
    cols: &'a Cloud<F>,
    r0: usize,
    count: usize,
}

impl<F: HostFloat> pulp::WithSimd for LargestCostTile<'_, F> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f64 {
        let Self {
            rows,
            cols,
            r0,
            count,
        } = self;
        let (d, m) = (rows.d, cols.len());
        let width = tile_cols(d);
        let p = &rows.points[r0 * d..(r0 + count) * d];
        let mut tile = vec![F::ZERO; count * width.min(m)];
        // Per row, the largest `|q_j|^2 - 2 <p_i, q_j>`; `|p_i|^2` is added at the end.
        let mut largest = vec![F::NEG_INFINITY; count];
        let mut c0 = 0;
        while c0 < m {
            let w = width.min(m - c0);
            let g = &mut tile[..count * w];
            gram_tile((p, count), d, &cols.transposed, m, c0, w, g);
            for (r, z) in g.chunks_exact_mut(w).enumerate() {
                for (z, &sq) in z.iter_mut().zip(&cols.sq[c0..c0 + w]) {
                    *z = sq - (*z + *z);
                }
                let row_max = max_of(z);
                if row_max > largest[r] {
                    largest[r] = row_max;
                }
            }
            c0 += w;
        }
        largest
            .iter()
            .enumerate()
            .map(|(r, &l)| 0.5 * (rows.sq[r0 + r].get() + l.get()))
            .fold(0.0, f64::max)
    }
}

/// Where the truncation of one pair's softmins stands.
#[derive(Debug, Default)]
enum Truncation<F> {
    /// No set yet.
    #[default]
    Unset,
    /// The set of the last sweep over every column.
    Set(Truncated<F>),
    /// The set at this eps exceeded its limits: the softmins at this eps sweep every column
    /// without trying again.
    GaveUp(f64),
}

/// The spread of the column shifts `h - h0` a [`Truncated`] set allows, in units of the
/// exponent.
pub(crate) const TRUNCATION_MARGIN: f64 = 20.0;

/// The largest share of the `n m` entries a [`Truncated`] set keeps: above it the set is not
/// kept (its gathers would cost about as much as the dense sweep).
const TRUNCATION_MAX_SHARE: usize = 8;

/// Bytes of one entry of a [`Truncated`] set: a `u32` column index and a cost of `elem_bytes`.
pub(crate) fn truncated_entry_bytes(elem_bytes: usize) -> u64 {
    (std::mem::size_of::<u32>() + elem_bytes) as u64
}

/// The most bytes one thread's candidate lists hold while it builds a [`Truncated`] set of
/// softmins over `cols` columns: its tile's share limit and one chunk more (the candidates are
/// checked after each chunk), as `(u32, F)` pairs, twice over for the lists' growth.
pub(crate) fn truncation_working_bytes(elem_bytes: usize, cols: usize) -> u64 {
    let pair = if elem_bytes > 4 {
        std::mem::size_of::<(u32, f64)>()
    } else {
        std::mem::size_of::<(u32, f32)>()
    };
    let entries = truncated_max_entries(TILE_ROWS, cols) + TILE_ROWS * MAX_TILE_COLS;
    2 * entries as u64 * pair as u64
}

/// The largest number of entries of a [`Truncated`] set of `rows x cols` softmins.
pub(crate) fn truncated_max_entries(rows: usize, cols: usize) -> usize {
    TRUNCATION_MAX_ENTRIES.min(rows.saturating_mul(cols) / TRUNCATION_MAX_SHARE)
}

/// The largest number of entries of one [`Truncated`] set (`2^23`: 64 MiB of column indices
/// and costs in float32, 96 MiB in float64); above it the set is not kept.
pub(crate) const TRUNCATION_MAX_ENTRIES: usize = 1 << 23;

impl<F: HostFloat> Truncated<F> {
    /// The rows of the set's softmins.
    fn rows(&self) -> usize {
        self.blocks.iter().map(|b| b.offsets.len() - 1).sum()
    }

    /// The entries kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.blocks.iter().map(|b| b.cols.len()).sum()
    }

    /// The exponent gap below each row's largest term that a set keeps, for `m` columns.
    fn theta(m: usize) -> f64 {
        (m.max(1) as f64).ln() + (1.0 / F::UNIT_ROUNDOFF).ln() + TRUNCATION_MARGIN
    }

    /// Whether the set serves the softmin at `eps` from `h`: same eps, a shift spread of at
    /// most [`TRUNCATION_MARGIN`] (false for any non-finite shift).
    fn covers(&self, eps: f64, h: &[F]) -> bool {
        if eps != self.eps || h.len() != self.h0.len() {
            return false;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (h, h0) in h.iter().zip(&self.h0) {
            let shift = h.get() - h0.get();
            if !shift.is_finite() {
                return false;
            }
            lo = lo.min(shift);
            hi = hi.max(shift);
        }
        hi - lo <= TRUNCATION_MARGIN
    }
}

/// The columns one tile of a building sweep keeps (see [`Truncated`]), collected during the
/// sweep itself: each chunk's columns within `theta` of the row's running maximum, a superset
/// of the final entries (that maximum only grows), cut down to the entries within `theta` of
/// the row's largest exponent once the tile is swept. The test and the kept costs are the
/// sweep's own exponents and costs, so a set holds exactly the columns that the row's final
/// maximum selects.
struct Keep<'a, F> {
    theta: F,
    /// Entries kept by all tiles so far, against [`TRUNCATION_MAX_ENTRIES`] and the share
    /// limit.
    total: &'a std::sync::atomic::AtomicUsize,
    cap: usize,
    given_up: &'a std::sync::atomic::AtomicBool,
    /// The costs of the row chunk being swept, written by the sweep beside its exponents.
    costs: Vec<F>,
    /// Per row of the tile, the candidate entries `(column, cost)` so far.
    rows: Vec<Vec<(u32, F)>>,
    /// The tile's entries, once it is swept and the set is still within its limits.
    entries: Option<Entries<F>>,
    /// One flag per column of the chunk being tested (see [`Keep::collect`]).
    flags: Vec<u8>,
    /// Per row of the tile, a lower bound of its largest exponent from before the sweep
    /// ([`self_seeds`]), which keeps the early chunks' candidates few.
    seeds: Vec<F>,
}

impl<'a, F: HostFloat> Keep<'a, F> {
    fn new(
        theta: F,
        (total, cap): (&'a std::sync::atomic::AtomicUsize, usize),
        given_up: &'a std::sync::atomic::AtomicBool,
    ) -> Self {
        Self {
            theta,
            total,
            cap,
            given_up,
            costs: Vec::new(),
            rows: Vec::new(),
            entries: None,
            flags: Vec::new(),
            seeds: Vec::new(),
        }
    }

    fn stopped(&self) -> bool {
        self.given_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn give_up(&mut self) {
        self.given_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.rows = Vec::new();
    }

    /// A tile starts, with a lower bound of each row's largest exponent (`-inf` where none
    /// is known).
    fn start(&mut self, seeds: Vec<F>) {
        self.rows = vec![Vec::new(); seeds.len()];
        self.seeds = seeds;
    }

    /// Where the sweep writes the costs of a row chunk of `w` columns.
    fn chunk_costs(&mut self, w: usize) -> &mut [F] {
        self.costs.resize(w, F::ZERO);
        &mut self.costs[..w]
    }

    /// Keeps row `r`'s columns from `c0` whose exponents `z` (the costs beside them in
    /// [`Keep::chunk_costs`]) are within `theta` of the running maximum `max` (or of the row's
    /// seed, where larger): a flag byte per column from one vectorised comparison, then the set
    /// flags of each word of eight (most words have none).
    #[inline(always)]
    fn collect(&mut self, r: usize, c0: usize, z: &[F], max: F) {
        if self.rows.is_empty() {
            return;
        }
        let seed = self.seeds[r];
        let floor = if seed > max { seed } else { max } - self.theta;
        let list = &mut self.rows[r];
        let costs = &self.costs[..z.len()];
        let flags = &mut self.flags;
        flags.clear();
        flags.extend(z.iter().map(|&z| u8::from(z >= floor)));
        let (words, rest) = flags.as_chunks::<8>();
        for (b, word) in words.iter().enumerate() {
            let mut bits = u64::from_le_bytes(*word);
            while bits != 0 {
                let j = b * 8 + bits.trailing_zeros() as usize / 8;
                list.push(((c0 + j) as u32, costs[j]));
                bits &= bits - 1;
            }
        }
        let j0 = words.len() * 8;
        for (j, &f) in rest.iter().enumerate() {
            if f != 0 {
                list.push(((c0 + j0 + j) as u32, costs[j0 + j]));
            }
        }
    }

    /// Each row's candidates cut down to the columns within `theta` of `maxes` (the exponents
    /// recomputed from `h` and the kept costs, as the sweep computed them).
    #[inline(always)]
    fn cut(&mut self, h: &[F], eps: f64, maxes: &[F]) {
        let (neg_inv, _) = sweep_constants::<F>(eps);
        for (list, &max) in self.rows.iter_mut().zip(maxes) {
            let floor = max - self.theta;
            list.retain(|&(j, c)| exponent(h[j as usize], c, neg_inv) >= floor);
        }
    }

    /// After each chunk: when the candidates exceed the tile's share of the `count m` entries
    /// (`m` columns), they are cut down to the running maxima `maxes`; a tile whose rows
    /// still keep more than that gives the set up (and bounds the lists held here).
    #[inline(always)]
    fn bound(&mut self, h: &[F], eps: f64, maxes: &[F], m: usize) {
        if self.rows.is_empty() {
            return;
        }
        if self.stopped() {
            self.rows = Vec::new();
            return;
        }
        let limit = maxes.len() * m / TRUNCATION_MAX_SHARE;
        if self.rows.iter().map(Vec::len).sum::<usize>() > limit {
            self.cut(h, eps, maxes);
            if self.rows.iter().map(Vec::len).sum::<usize>() > limit {
                self.give_up();
            }
        }
    }

    /// The tile is swept: its entries are the candidates within `theta` of each row's largest
    /// exponent `maxes`, unless a maximum is not finite or the set exceeds its limits.
    #[inline(always)]
    fn finish(&mut self, h: &[F], eps: f64, maxes: &[F], m: usize) {
        if self.rows.is_empty() || self.stopped() {
            return;
        }
        if maxes.iter().any(|m| !m.get().is_finite()) {
            self.give_up();
            return;
        }
        self.cut(h, eps, maxes);
        let kept: usize = self.rows.iter().map(Vec::len).sum();
        let total = self
            .total
            .fetch_add(kept, std::sync::atomic::Ordering::Relaxed)
            + kept;
        if total > self.cap || kept > maxes.len() * m / TRUNCATION_MAX_SHARE {
            self.give_up();
            return;
        }
        let mut entries = Entries {
            offsets: Vec::with_capacity(maxes.len() + 1),
            cols: Vec::with_capacity(kept),
            costs: Vec::with_capacity(kept),
        };
        entries.offsets.push(0);
        for list in std::mem::take(&mut self.rows) {
            for (j, c) in list {
                entries.cols.push(j);
                entries.costs.push(c);
            }
            entries.offsets.push(entries.cols.len());
        }
        self.entries = Some(entries);
    }
}

/// [`softmin_tiled`] (without barycentres) that also builds the [`Truncated`] set of this
/// softmin; `None` in its place when the set would exceed its limits, a row's maximum is not
/// finite, or the columns do not fit the `u32` indices.
pub(crate) fn softmin_tiled_truncating<F: HostFloat>(
    eps: f64,
    rows: &Cloud<F>,
    cols: &Cloud<F>,
    h: &[F],
) -> (Vec<F>, Option<Truncated<F>>) {
    let (n, m) = (rows.len(), cols.len());
    if m == 0 || n == 0 || u32::try_from(m).is_err() {
        return (softmin_tiled(eps, rows, cols, h, false).0, None);
    }
    let mut out = vec![F::ZERO; n];
    let theta = F::of(Truncated::<F>::theta(m));
    let cap = truncated_max_entries(n, m);
    let total = std::sync::atomic::AtomicUsize::new(0);
    let given_up = std::sync::atomic::AtomicBool::new(false);
    let arch = pulp::Arch::new();
    let blocks: Vec<Option<Entries<F>>> = out
        .par_chunks_mut(TILE_ROWS)
        .enumerate()
        .map(|(t, out)| {
            let mut keep = Keep::new(theta, (&total, cap), &given_up);
            arch.dispatch(SoftminTile {
                eps,
                rows,
                cols,
                r0: t * TILE_ROWS,
                h,
                out,
                bary: None,
                keep: Some(&mut keep),
            });
            keep.entries
        })
        .collect();
    if given_up.load(std::sync::atomic::Ordering::Relaxed) {
        return (out, None);
    }
    let set = blocks
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(|blocks| Truncated {
            eps,
            h0: h.to_vec(),
            blocks,
        });
    (out, set)
}

/// The softmins of [`softmin_tiled`] over the columns of `set` alone, from `h` that `set`
/// covers ([`Truncated::covers`]), and with `barycentres` (the column cloud) the plan's
/// barycentres as [`softmin_tiled`] gives them; otherwise the second vector is empty.
fn softmin_truncated<F: HostFloat>(
    eps: f64,
    set: &Truncated<F>,
    h: &[F],
    barycentres: Option<&Cloud<F>>,
) -> (Vec<F>, Vec<F>) {
    let n = set.rows();
    let d = barycentres.map_or(0, |cols| cols.d);
    let barycentres = barycentres.filter(|_| d > 0);
    let mut out = vec![F::ZERO; n];
    let mut bary = vec![F::ZERO; if barycentres.is_some() { n * d } else { 0 }];
    let arch = pulp::Arch::new();
    let task = |(t, out): (usize, &mut [F]), bary: &mut [F]| {
        arch.dispatch(TruncatedRows {
            eps,
            entries: &set.blocks[t],
            h,
            out,
            bary: barycentres.map(|cols| (cols, bary)),
        });
    };
    if barycentres.is_some() {
        out.par_chunks_mut(TILE_ROWS)
            .enumerate()
            .zip(bary.par_chunks_mut(TILE_ROWS * d))
            .for_each(|(o, b)| task(o, b));
    } else {
        out.par_chunks_mut(TILE_ROWS)
            .enumerate()
            .for_each(|o| task(o, &mut []));
    }
    (out, bary)
}

/// One row block of [`softmin_truncated`], compiled for the instruction set `pulp`
/// dispatches to: each row's kept exponents gathered, then the maximum, the exponentials and
/// their sum over the row reductions' lanes, and the barycentre of the kept columns' points.
struct TruncatedRows<'a, F> {
    eps: f64,
    entries: &'a Entries<F>,
    h: &'a [F],
    out: &'a mut [F],
    bary: Option<(&'a Cloud<F>, &'a mut [F])>,
}

impl<F: HostFloat> pulp::WithSimd for TruncatedRows<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            eps,
            entries,
            h,
            out,
            mut bary,
        } = self;
        let ((neg_inv, _), neg_eps) = (sweep_constants::<F>(eps), F::of(-eps));
        let mut z = Vec::new();
        for (r, o) in out.iter_mut().enumerate() {
            let range = entries.offsets[r]..entries.offsets[r + 1];
            let cols = &entries.cols[range.clone()];
            z.clear();
            z.extend(
                cols.iter()
                    .zip(&entries.costs[range])
                    .map(|(&j, &c)| exponent(h[j as usize], c, neg_inv)),
            );
            let max = max_of(&z);
            for z in z.iter_mut() {
                *z = (*z - max).exp_nonpositive();
            }
            let sum = sum_of(&z);
            *o = neg_eps * (max + sum.ln());
            if let Some((cloud, bary)) = bary.as_mut() {
                let d = cloud.d;
                let acc = &mut bary[r * d..(r + 1) * d];
                for (&j, &e) in cols.iter().zip(&z) {
                    let q = &cloud.points[j as usize * d..(j as usize + 1) * d];
                    for (a, &q) in acc.iter_mut().zip(q) {
                        *a = e.mul_add(q, *a);
                    }
                }
                let scale = F::of(1.0 / sum.get());
                for a in acc.iter_mut() {
                    *a = *a * scale;
                }
            }
        }
    }
}

/// The Sinkhorn solver's operations on host vectors, every softmin a tiled sweep over the
/// points: the clouds in the centring of each pair (the pooled mean for the cross pairs, each
/// cloud's own mean for the self pairs, as `crate::tensor_ops::Costs`).
#[derive(Debug)]
pub(crate) struct TiledSoftmin<F> {
    x_pooled: Cloud<F>,
    y_pooled: Cloud<F>,
    x_own: Cloud<F>,
    y_own: Cloud<F>,
    /// The pooled centre minus each cloud's own (to move barycentres between centrings).
    x_shift: Vec<f64>,
    y_shift: Vec<f64>,
    /// The eps whose softmins are truncated ([`Truncated`]; the target eps), if any.
    truncate_at: Option<f64>,
    /// The truncation of each pair's softmins (in the order of [`Pair`]'s variants).
    truncated: [std::sync::Mutex<Truncation<F>>; 4],
}

impl<F: HostFloat> TiledSoftmin<F> {
    /// The clouds `x` (`[n, d]`) and `y` (`[m, d]`), row-major host values.
    pub(crate) fn new((x, n): (&[F], usize), (y, m): (&[F], usize), d: usize) -> Self {
        let pooled = centre_of(&[x, y], d);
        let (cx, cy) = (centre_of(&[x], d), centre_of(&[y], d));
        let shift = |own: &[f64]| pooled.iter().zip(own).map(|(p, o)| p - o).collect();
        Self {
            x_pooled: Cloud::new(x, &pooled, n, d),
            y_pooled: Cloud::new(y, &pooled, m, d),
            x_own: Cloud::new(x, &cx, n, d),
            y_own: Cloud::new(y, &cy, m, d),
            x_shift: shift(&cx),
            y_shift: shift(&cy),
            truncate_at: None,
            truncated: Default::default(),
        }
    }

    /// Truncates the softmins at `eps` (see [`Truncated`]).
    pub(crate) fn truncating_at(mut self, eps: f64) -> Self {
        self.truncate_at = Some(eps);
        self
    }

    fn clouds(&self, pair: Pair) -> (&Cloud<F>, &Cloud<F>) {
        match pair {
            Pair::XY => (&self.x_pooled, &self.y_pooled),
            Pair::YX => (&self.y_pooled, &self.x_pooled),
            Pair::XX => (&self.x_own, &self.x_own),
            Pair::YY => (&self.y_own, &self.y_own),
        }
    }

    /// The softmin of `pair` from `pot` and, with `barycentres`, the plan's barycentres of the
    /// column cloud (see [`softmin_tiled`]).
    fn softmin_with_barycentres(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &[F],
        pot: &[F],
        barycentres: bool,
    ) -> (Vec<F>, Vec<F>) {
        let inv = F::of(1.0 / eps);
        let h: Vec<F> = log_w.iter().zip(pot).map(|(&l, &p)| l + p * inv).collect();
        self.softmin_of(eps, pair, &h, barycentres)
    }

    /// The softmin of `pair` from the exponents' column part `h`: over the pair's
    /// [`Truncated`] set where it covers `h`, otherwise a sweep over every column, which
    /// (at the truncated eps, without barycentres) builds the set again.
    fn softmin_of(&self, eps: f64, pair: Pair, h: &[F], barycentres: bool) -> (Vec<F>, Vec<F>) {
        let (rows, cols) = self.clouds(pair);
        if self.truncate_at != Some(eps) {
            return softmin_tiled(eps, rows, cols, h, barycentres);
        }
        let mut slot = self.truncated[pair as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            Truncation::Set(set) if set.covers(eps, h) => {
                return softmin_truncated(eps, set, h, barycentres.then_some(cols));
            }
            Truncation::GaveUp(at) if *at == eps => {
                return softmin_tiled(eps, rows, cols, h, barycentres);
            }
            _ => {}
        }
        if barycentres {
            return softmin_tiled(eps, rows, cols, h, barycentres);
        }
        let (out, set) = softmin_tiled_truncating(eps, rows, cols, h);
        *slot = set.map_or(Truncation::GaveUp(eps), Truncation::Set);
        (out, Vec::new())
    }
}

impl<F: HostFloat> SolverOps for TiledSoftmin<F> {
    type Vector = Vec<F>;

    fn prepare(&mut self, _eps: f64) {}

    fn softmin(&self, eps: f64, pair: Pair, log_w: &Vec<F>, pot: Option<&Vec<F>>) -> Vec<F> {
        match pot {
            Some(pot) => {
                self.softmin_with_barycentres(eps, pair, log_w, pot, false)
                    .0
            }
            None => self.softmin_of(eps, pair, log_w, false).0,
        }
    }

    host_vector_ops!();
}

/// The tiled solve: the clouds and weights read to the host, the shared loop.
struct TiledSolution<F> {
    op: TiledSoftmin<F>,
    a: Vec<F>,
    b: Vec<F>,
    solved: SolveOutput<Vec<F>>,
}

impl<F: HostFloat> TiledSolution<F> {
    fn new(problem: &Problem, config: &SinkhornConfig) -> Result<Self, LossError> {
        let ([n, d], m) = (problem.x.dims(), problem.y.dims()[0]);
        let (x, y) = (
            host_vec::<F, 2>(problem.x.clone()),
            host_vec(problem.y.clone()),
        );
        let mut op = TiledSoftmin::new((&x, n), (&y, m), d).truncating_at(config.eps);
        drop((x, y));
        let (a, b) = (host_vec(problem.a.clone()), host_vec(problem.b.clone()));
        // The schedule starts at the largest cost itself (MATH.md), measured in one sweep of
        // the inner products: the bound of `Problem::schedule_diameter` is about twice it for
        // Gaussian clouds in 16 dimensions, four eps of scaling 0.9 more. Rounded up by a
        // relative 1e-3 against the rounding of the float32 inner products.
        let largest = largest_cost(&op.x_pooled, &op.y_pooled) * (1.0 + 1e-3);
        let diameter = problem.schedule_diameter().min((2.0 * largest).sqrt());
        let solved = solve_with(&mut op, diameter, &a, &b, problem.same, config)?;
        Ok(Self { op, a, b, solved })
    }
}

/// The solver loop on the tiled path, its potentials as tensors of the problem's device and
/// dtype.
pub(crate) fn solve<F: HostFloat>(
    problem: &Problem,
    config: &SinkhornConfig,
) -> Result<SolveOutput, LossError> {
    let (device, dtype) = (problem.a.device(), problem.a.dtype());
    let SolveOutput {
        potentials,
        n_iters,
        marginal_error,
        converged,
        n_softmins,
    } = TiledSolution::<F>::new(problem, config)?.solved;
    Ok(SolveOutput {
        potentials: potentials.map(|v| to_tensor(v, &device, dtype)),
        n_iters,
        marginal_error,
        converged,
        n_softmins,
    })
}

/// `dS/dp_i = w_i ((own_i + own_shift) - other_i)`: the envelope gradient from the barycentres
/// of the self plan (in the cloud's own centring, moved to the pooled one by `own_shift`) and
/// of the cross plan (pooled centring), as a `[rows, d]` tensor.
fn envelope<F: HostFloat>(
    w: &[F],
    own: &[F],
    other: &[F],
    own_shift: &[f64],
    (device, dtype): (&Device, DType),
) -> Tensor<2> {
    let d = own_shift.len();
    let grad: Vec<f64> = own
        .chunks_exact(d.max(1))
        .zip(other.chunks_exact(d.max(1)))
        .zip(w)
        .flat_map(|((own, other), &w)| {
            own.iter()
                .zip(other)
                .zip(own_shift)
                .map(move |((o, t), s)| w.get() * ((o.get() - s) - t.get()))
        })
        .collect();
    let rows = w.len();
    Tensor::<2>::from_data(TensorData::new(grad, [rows, d]), (device, dtype))
}

/// `crate::sinkhorn_divergence` on the tiled path: the solver loop, then the last softmin step
/// from the converged potentials with the plans' barycentres, the value as the difference of
/// potentials, and the envelope gradient `dS/dx_i = a_i (xbar_i - ybar_i)` (`xbar = P_aa x`,
/// `ybar = P_ab y`; the same for `y`) handed to autodiff by [`with_gradients`].
pub(crate) fn divergence<F: HostFloat>(
    (x, y): (&Tensor<2>, &Tensor<2>),
    problem: Problem,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let TiledSolution {
        op,
        a: a_h,
        b: b_h,
        solved,
    } = TiledSolution::<F>::new(&problem, config)?;
    let p = &solved.potentials;
    let eps = config.eps;
    let (a_log, b_log) = (op.log_weights(&a_h), op.log_weights(&b_h));
    let (gx, gy) = (x.is_tracked(), y.is_tracked());
    let (f_ba, y_bar_ab) = op.softmin_with_barycentres(eps, Pair::XY, &b_log, &p.g_ab, gx);
    let (f_aa, x_bar_aa) = op.softmin_with_barycentres(eps, Pair::XX, &a_log, &p.f_aa, gx);
    let (g_ab, x_bar_ba) = op.softmin_with_barycentres(eps, Pair::YX, &a_log, &p.f_ba, gy);
    let (g_bb, y_bar_bb) = op.softmin_with_barycentres(eps, Pair::YY, &b_log, &p.g_bb, gy);
    let value = super::potential_gap((&a_h, &f_ba, &f_aa), (&b_h, &g_ab, &g_bb));
    let device = problem.a.device();
    let out_dtype = x.dtype();
    let value_t = Tensor::<1>::from_data(TensorData::new(vec![value], [1]), (&device, out_dtype));
    let value = if gx || gy {
        let on = (&device, out_dtype);
        let grad_x = gx.then(|| envelope(&a_h, &x_bar_aa, &y_bar_ab, &op.x_shift, on));
        let grad_y = gy.then(|| envelope(&b_h, &y_bar_bb, &x_bar_ba, &op.y_shift, on));
        with_gradients(value_t, [(x, grad_x), (y, grad_y)])
    } else {
        value_t
    };
    Ok(SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
        // The last step: one softmin of each of the four potentials.
        n_softmins: solved.n_softmins + 4,
    })
}

/// One kernel block `K(P, Q)` swept in tiles: `form = u' K v` and, when kept for a gradient,
/// `r_i = sum_j L_ij v_j` and `w_i = sum_j L_ij v_j q_j` (`[rows, d]`), with `L_ij = mean_s
/// exp(-|p_i - q_j|^2 / (2 s^2)) / s^2`, so that `dT/dp_i = -u_i (p_i r_i - w_i)` (the
/// quantities of `crate::host::mmd`, without its matrices); and, when kept for the columns'
/// gradient, the same sums over the rows, `r'_j = sum_i L_ij u_i` and `w'_j = sum_i L_ij u_i
/// p_i` (the kernel is symmetric: what a second sweep of `K(Q, P)` would give).
#[derive(Debug)]
pub(crate) struct KernelSums<F> {
    form: f64,
    r: Vec<F>,
    w: Vec<F>,
    cols: Option<ColumnSums<F>>,
}

/// `r'` (`[cols]`) and `w'` (`[cols, d]`) of [`KernelSums`], accumulated per thread and added.
#[derive(Debug)]
struct ColumnSums<F> {
    r: Vec<F>,
    w: Vec<F>,
}

impl<F: HostFloat> ColumnSums<F> {
    fn zeros(cols: usize, d: usize) -> Self {
        Self {
            r: vec![F::ZERO; cols],
            w: vec![F::ZERO; cols * d],
        }
    }

    fn add(mut self, other: Self) -> Self {
        for (a, b) in self.r.iter_mut().zip(other.r) {
            *a = *a + b;
        }
        for (a, b) in self.w.iter_mut().zip(other.w) {
            *a = *a + b;
        }
        self
    }
}

/// [`KernelSums`] of the clouds `rows` and `cols` with weights `u`, `v`; `keep`: also `r` and
/// `w`; `keep_cols`: also `r'` and `w'`.
pub(crate) fn kernel_tiled<F: HostFloat>(
    rows: &Cloud<F>,
    cols: &Cloud<F>,
    (u, v): (&[F], &[F]),
    bandwidths: &[f64],
    (keep, keep_cols): (bool, bool),
) -> KernelSums<F> {
    let (n, d) = (rows.len(), rows.d);
    // Points of dimension 0 have an empty gradient (and the row split below needs d > 0).
    let (keep, keep_cols) = (keep && d > 0, keep_cols && d > 0);
    let count = bandwidths.len() as f64;
    let scales: Vec<(F, F)> = bandwidths
        .iter()
        .map(|s| (F::of(-0.5 / (s * s)), F::of(1.0 / (count * s * s))))
        .collect();
    let (mut r, mut w) = if keep {
        (vec![F::ZERO; n], vec![F::ZERO; n * d])
    } else {
        (Vec::new(), Vec::new())
    };
    let arch = pulp::Arch::new();
    let task = |t: usize, kept: Option<(&mut [F], &mut [F])>, col: Option<&mut ColumnSums<F>>| {
        arch.dispatch(KernelTile {
            rows,
            cols,
            r0: t * TILE_ROWS,
            count: TILE_ROWS.min(n - t * TILE_ROWS),
            u,
            v,
            scales: &scales,
            kept,
            col,
        })
    };
    let m = cols.len();
    // Each piece of the parallel split has its own column sums, added at the end (only when
    // kept): at most about COLUMN_PIECES per thread, to bound their memory.
    let new_cols = || keep_cols.then(|| ColumnSums::zeros(m, d));
    let tiles = n.div_ceil(TILE_ROWS);
    let min_len = if keep_cols {
        tiles
            .div_ceil(COLUMN_PIECES * rayon::current_num_threads())
            .max(1)
    } else {
        1
    };
    let merge = |(s1, c1): (f64, Option<ColumnSums<F>>), (s2, c2): (f64, Option<ColumnSums<F>>)| {
        let c = match (c1, c2) {
            (Some(a), Some(b)) => Some(a.add(b)),
            (a, b) => a.or(b),
        };
        (s1 + s2, c)
    };
    let (sum, col_sums) = if keep {
        r.par_chunks_mut(TILE_ROWS)
            .zip(w.par_chunks_mut(TILE_ROWS * d))
            .enumerate()
            .with_min_len(min_len)
            .fold(
                || (0.0, new_cols()),
                |(s, mut c), (t, (r, w))| (s + task(t, Some((r, w)), c.as_mut()), c),
            )
            .reduce(|| (0.0, None), merge)
    } else {
        (0..tiles)
            .into_par_iter()
            .with_min_len(min_len)
            .fold(
                || (0.0, new_cols()),
                |(s, mut c), t| (s + task(t, None, c.as_mut()), c),
            )
            .reduce(|| (0.0, None), merge)
    };
    KernelSums {
        form: sum / count,
        r,
        w,
        cols: col_sums.or_else(new_cols),
    }
}

/// One row block of [`kernel_tiled`]: returns `sum_i u_i sum_j k_ij v_j` (with `k` the sum,
/// not yet the mean, over the bandwidths) over its rows.
struct KernelTile<'a, F> {
    rows: &'a Cloud<F>,
    cols: &'a Cloud<F>,
    r0: usize,
    count: usize,
    u: &'a [F],
    v: &'a [F],
    scales: &'a [(F, F)],
    kept: Option<(&'a mut [F], &'a mut [F])>,
    col: Option<&'a mut ColumnSums<F>>,
}

impl<F: HostFloat> pulp::WithSimd for KernelTile<'_, F> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f64 {
        let Self {
            rows,
            cols,
            r0,
            count,
            u,
            v,
            scales,
            mut kept,
            mut col,
        } = self;
        let (d, m) = (rows.d, cols.len());
        let width = tile_cols(d);
        let p = &rows.points[r0 * d..(r0 + count) * d];
        let mut tile = vec![F::ZERO; count * width.min(m)];
        let mut k = vec![F::ZERO; width.min(m)];
        let gradient = kept.is_some() || col.is_some();
        let mut l = vec![F::ZERO; if gradient { width.min(m) } else { 0 }];
        // `L_ij v_j` of every row of the chunk, for the product with the column points.
        let mut lv = vec![
            F::ZERO;
            if kept.is_some() {
                count * width.min(m)
            } else {
                0
            }
        ];
        let mut scratch = Vec::new();
        let mut form = 0.0;
        let mut c0 = 0;
        while c0 < m {
            let w = width.min(m - c0);
            let g = &mut tile[..count * w];
            gram_tile((p, count), d, &cols.transposed, m, c0, w, g);
            let (sq_cols, v_cols) = (&cols.sq[c0..c0 + w], &v[c0..c0 + w]);
            for (r, dist) in g.chunks_exact_mut(w).enumerate() {
                let sq_row = rows.sq[r0 + r];
                for (s, &sq) in dist.iter_mut().zip(sq_cols) {
                    let e = sq_row + sq - (*s + *s);
                    *s = if e > F::ZERO { e } else { F::ZERO };
                }
                let k = &mut k[..w];
                k.fill(F::ZERO);
                if gradient {
                    let l = &mut l[..w];
                    l.fill(F::ZERO);
                    for &(c, scale) in scales {
                        for ((k, l), &s) in k.iter_mut().zip(l.iter_mut()).zip(dist.iter()) {
                            let e = (s * c).exp_nonpositive();
                            *k = *k + e;
                            *l = *l + e * scale;
                        }
                    }
                    if let Some(col) = col.as_deref_mut() {
                        // r'_j += L_ij u_i, w'_j += L_ij u_i p_i.
                        let ui = u[r0 + r];
                        let pi = &p[r * d..(r + 1) * d];
                        let (col_r, col_w) =
                            (&mut col.r[c0..c0 + w], &mut col.w[c0 * d..(c0 + w) * d]);
                        for ((cr, cw), &l) in col_r
                            .iter_mut()
                            .zip(col_w.chunks_exact_mut(d))
                            .zip(l.iter())
                        {
                            let lu = l * ui;
                            *cr = *cr + lu;
                            for (cw, &pk) in cw.iter_mut().zip(pi) {
                                *cw = lu.mul_add(pk, *cw);
                            }
                        }
                    }
                    if let Some((r_out, _)) = kept.as_mut() {
                        let lv = &mut lv[r * w..(r + 1) * w];
                        for ((lv, &l), &v) in lv.iter_mut().zip(l.iter()).zip(v_cols) {
                            *lv = l * v;
                        }
                        r_out[r] = r_out[r] + sum_of(lv);
                    }
                } else {
                    for &(c, _) in scales {
                        for (k, &s) in k.iter_mut().zip(dist.iter()) {
                            *k = *k + (s * c).exp_nonpositive();
                        }
                    }
                }
                for (k, &v) in k.iter_mut().zip(v_cols) {
                    *k = *k * v;
                }
                form += u[r0 + r].get() * sum_of(k).get();
            }
            if let Some((_, w_out)) = kept.as_mut() {
                // w_i += sum_j L_ij v_j q_j for every row of the tile at once.
                accumulate_points(
                    w_out,
                    (&lv[..count * w], count, w),
                    (cols, c0),
                    &mut scratch,
                );
            }
            c0 += w;
        }
        form
    }
}

/// `MMD2(alpha, beta)` on the tiled path (see `crate::host::mmd::mmd2_on_host`, which it
/// matches without storing a kernel matrix): the three kernel blocks swept in tiles, in the
/// pooled centring, and the gradient `dT/dp_i = -u_i (p_i r_i - w_i)` assembled per point; the
/// cross block's sweep also sums its columns when `y` needs a gradient (no second sweep).
/// The weights must carry no gradient.
pub(crate) fn mmd2_tiled<F: HostFloat>(
    (x, y): (&Tensor<2>, &Tensor<2>),
    (a, b): (&Tensor<1>, &Tensor<1>),
    bandwidths: &[f64],
    unbiased: bool,
) -> Tensor<1> {
    let (xi, yi) = (x.clone().inner(), y.clone().inner());
    let (device, dtype) = (xi.device(), xi.dtype());
    let ([n, d], m) = (xi.dims(), yi.dims()[0]);
    let (gx, gy) = (x.is_tracked(), y.is_tracked());
    let (xh, yh) = (host_vec::<F, 2>(xi), host_vec::<F, 2>(yi));
    let pooled = centre_of(&[&xh, &yh], d);
    let (xc, yc) = (
        Cloud::new(&xh, &pooled, n, d),
        Cloud::new(&yh, &pooled, m, d),
    );
    drop((xh, yh));
    let (a_h, b_h) = (
        host_vec::<F, 1>(a.clone().inner()),
        host_vec::<F, 1>(b.clone().inner()),
    );
    let kxx = kernel_tiled(&xc, &xc, (&a_h, &a_h), bandwidths, (gx, false));
    let kyy = kernel_tiled(&yc, &yc, (&b_h, &b_h), bandwidths, (gy, false));
    // The cross block once: its row sums for the gradient of x, its column sums for y's.
    let mut kxy = kernel_tiled(&xc, &yc, (&a_h, &b_h), bandwidths, (gx, gy));
    let (value, [scale_a, scale_b]) =
        super::mmd2_from_forms([kxx.form, kyy.form, kxy.form], (&a_h, &b_h), unbiased);
    let value_t =
        Tensor::<1>::from_data(TensorData::new(vec![F::of(value)], [1]), (&device, dtype));
    if !(gx || gy) {
        return value_t;
    }
    // dMMD/dp_i = -u_i (2 scale (p_i r_i - w_i)_self - 2 (p_i r_i - w_i)_cross).
    let gradient = |p: &Cloud<F>, u: &[F], own: &KernelSums<F>, cross: &KernelSums<F>, scale| {
        let grad: Vec<f64> = (0..p.len())
            .flat_map(|i| {
                let pi = &p.points[i * d..(i + 1) * d];
                (0..d).map(move |k| {
                    let part =
                        |s: &KernelSums<F>| pi[k].get() * s.r[i].get() - s.w[i * d + k].get();
                    -u[i].get() * (2.0 * scale * part(own) - 2.0 * part(cross))
                })
            })
            .collect();
        Tensor::<2>::from_data(TensorData::new(grad, [p.len(), d]), (&device, dtype))
    };
    let grad_x = gx.then(|| gradient(&xc, &a_h, &kxx, &kxy, scale_a));
    let grad_y = gy.then(|| {
        // (None only for points of dimension 0, whose gradient is empty.)
        let cols = kxy.cols.take().unwrap_or_else(|| ColumnSums::zeros(m, d));
        let kyx = KernelSums {
            form: kxy.form,
            r: cols.r,
            w: cols.w,
            cols: None,
        };
        gradient(&yc, &b_h, &kyy, &kyx, scale_b)
    });
    with_gradients(value_t, [(x, grad_x), (y, grad_y)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::softmin_rows_with_plan;

    fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Vec<f64> {
        (0..n * d)
            .map(|k| {
                let t = (k as u64 * 2_654_435_761 + seed) % 10_007;
                t as f64 / 10_007.0 * 2.0 - 1.0 + shift
            })
            .collect()
    }

    #[test]
    fn tile_products_match_direct_sums() {
        // Row counts and widths around the register block exercise every tail.
        for (rows, cols, d) in [(1, 1, 1), (5, 17, 3), (9, 40, 16), (4, 16, 7), (7, 33, 0)] {
            let p = cloud(rows, d, 3, 0.0);
            let q = cloud(cols, d, 5, 0.2);
            let qc = Cloud::new(&q, &vec![0.0; d], cols, d);
            let mut g = vec![f64::NAN; rows * cols];
            gram_tile((&p, rows), d, &qc.transposed, cols, 0, cols, &mut g);
            for i in 0..rows {
                for j in 0..cols {
                    let want: f64 = (0..d).map(|k| p[i * d + k] * q[j * d + k]).sum();
                    assert!((g[i * cols + j] - want).abs() < 1e-12, "{rows} {cols} {d}");
                }
            }
        }
    }

    #[test]
    fn tiled_softmin_and_barycentres_match_the_stored_plan() {
        // Several column chunks (m > tile width) and a partial row block; float64.
        let (n, m, d) = (70, 1300, 4);
        let (x, y) = (cloud(n, d, 11, 0.0), cloud(m, d, 29, 0.3));
        let centre = centre_of(&[&x, &y], d);
        let (xc, yc) = (Cloud::new(&x, &centre, n, d), Cloud::new(&y, &centre, m, d));
        let h: Vec<f64> = (0..m).map(|j| -((j % 7) as f64) * 0.3).collect();
        let eps = 0.02;
        let (got, bary) = softmin_tiled(eps, &xc, &yc, &h, true);
        let cost: Vec<f64> = (0..n * m)
            .map(|k| {
                let (i, j) = (k / m, k % m);
                (0..d)
                    .map(|c| (xc.points[i * d + c] - yc.points[j * d + c]).powi(2))
                    .sum::<f64>()
                    / 2.0
            })
            .collect();
        let (want, plan) = softmin_rows_with_plan(eps, &cost, &h, true);
        for i in 0..n {
            assert!(
                (got[i] - want[i]).abs() < 1e-12,
                "row {i}: {} vs {}",
                got[i],
                want[i]
            );
            for c in 0..d {
                let b: f64 = (0..m).map(|j| plan[i * m + j] * yc.points[j * d + c]).sum();
                assert!((bary[i * d + c] - b).abs() < 1e-12, "row {i}: {b}");
            }
        }
    }

    #[test]
    fn largest_cost_is_the_largest_pairwise_cost() {
        for (n, m, d) in [(1, 1, 1), (70, 1300, 4), (5, 17, 3), (9, 40, 16)] {
            let (x, y) = (cloud(n, d, 7, 0.0), cloud(m, d, 13, 0.4));
            let centre = centre_of(&[&x, &y], d);
            let (xc, yc) = (Cloud::new(&x, &centre, n, d), Cloud::new(&y, &centre, m, d));
            let want = (0..n * m)
                .map(|k| {
                    let (i, j) = (k / m, k % m);
                    (0..d)
                        .map(|c| (x[i * d + c] - y[j * d + c]).powi(2))
                        .sum::<f64>()
                        / 2.0
                })
                .fold(0.0, f64::max);
            let got = largest_cost(&xc, &yc);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "{got} vs {want}"
            );
        }
    }

    /// The state of one pair's truncation: `Some(h0)` with a set, `None` without one, and
    /// whether the last build gave up.
    fn truncation_of<F: HostFloat>(op: &TiledSoftmin<F>, pair: Pair) -> (Option<Vec<F>>, bool) {
        match &*op.truncated[pair as usize].lock().unwrap() {
            Truncation::Set(set) => (Some(set.h0.clone()), false),
            Truncation::GaveUp(_) => (None, true),
            Truncation::Unset => (None, false),
        }
    }

    /// The softmins from a truncated set equal the full sweep's within rounding, with the
    /// barycentres, while the potential moves by less than the margin; beyond it the set is
    /// built again; at a temperature where the plans are dense, no set is kept and the sweep
    /// covers every column. Float64 (1e-12) and float32 (1e-5 of the exponents' scale).
    #[test]
    fn truncated_softmins_match_the_full_sweep() {
        fn check<F: HostFloat>(tol: f64) {
            let (n, m, d) = (300, 1100, 3);
            let (x, y) = (cloud(n, d, 3, 0.0), cloud(m, d, 17, 0.2));
            let (xf, yf): (Vec<F>, Vec<F>) = (
                x.iter().map(|&v| F::of(v)).collect(),
                y.iter().map(|&v| F::of(v)).collect(),
            );
            let eps = 0.0005;
            let full = TiledSoftmin::new((&xf, n), (&yf, m), d);
            let cut = TiledSoftmin::new((&xf, n), (&yf, m), d).truncating_at(eps);
            let log_b: Vec<F> = vec![F::of(-(m as f64).ln()); m];
            // A potential with structure across the columns, then moved by a spread of 12
            // (under the margin) and of 30 (over it), in units of the exponent.
            let g0: Vec<F> = (0..m).map(|j| F::of(0.01 * ((j % 13) as f64))).collect();
            let moved = |spread: f64| -> Vec<F> {
                g0.iter()
                    .enumerate()
                    .map(|(j, g)| F::of(g.get() + eps * spread * ((j % 5) as f64) / 4.0))
                    .collect()
            };
            let close = |a: &[F], b: &[F], what: &str| {
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    let (a, b) = (a.get(), b.get());
                    assert!(
                        (a - b).abs() <= tol * b.abs().max(1.0),
                        "{what} {i}: {a} vs {b}"
                    );
                }
            };
            // First call: a full sweep that builds the set.
            let first = cut
                .softmin_with_barycentres(eps, Pair::XY, &log_b, &g0, false)
                .0;
            let want = full
                .softmin_with_barycentres(eps, Pair::XY, &log_b, &g0, false)
                .0;
            close(&first, &want, "building sweep");
            let (h0, gave_up) = truncation_of(&cut, Pair::XY);
            let h0 = h0.unwrap_or_else(|| panic!("a set at this eps (gave up: {gave_up})"));
            let kept = match &*cut.truncated[Pair::XY as usize].lock().unwrap() {
                Truncation::Set(set) => set.len(),
                _ => unreachable!(),
            };
            assert!(kept < n * m / 8, "the plans are sparse at this eps: {kept}");
            for spread in [0.0, 12.0] {
                let g = moved(spread);
                let (got, bary) = cut.softmin_with_barycentres(eps, Pair::XY, &log_b, &g, true);
                let (want, want_bary) =
                    full.softmin_with_barycentres(eps, Pair::XY, &log_b, &g, true);
                close(&got, &want, "truncated softmin");
                close(&bary, &want_bary, "truncated barycentre");
                assert_eq!(
                    truncation_of(&cut, Pair::XY).0.as_ref(),
                    Some(&h0),
                    "{spread}"
                );
            }
            let g = moved(30.0);
            let got = cut
                .softmin_with_barycentres(eps, Pair::XY, &log_b, &g, false)
                .0;
            let want = full
                .softmin_with_barycentres(eps, Pair::XY, &log_b, &g, false)
                .0;
            close(&got, &want, "rebuilt");
            assert_ne!(
                truncation_of(&cut, Pair::XY).0.as_ref(),
                Some(&h0),
                "built again"
            );
            // Another eps: no truncation. A large truncated eps: every row keeps most
            // columns, the set is given up and the sweeps cover everything.
            let other = cut
                .softmin_with_barycentres(2.0 * eps, Pair::XY, &log_b, &g0, false)
                .0;
            let want = full
                .softmin_with_barycentres(2.0 * eps, Pair::XY, &log_b, &g0, false)
                .0;
            close(&other, &want, "another eps");
            let wide = TiledSoftmin::new((&xf, n), (&yf, m), d).truncating_at(10.0);
            for _ in 0..2 {
                let got = wide
                    .softmin_with_barycentres(10.0, Pair::XY, &log_b, &g0, false)
                    .0;
                let want = full
                    .softmin_with_barycentres(10.0, Pair::XY, &log_b, &g0, false)
                    .0;
                close(&got, &want, "given up");
                assert_eq!(truncation_of(&wide, Pair::XY), (None, true));
            }
        }
        check::<f64>(1e-12);
        check::<f32>(1e-5);
    }

    /// A building sweep keeps exactly the columns within `theta` of each row's largest
    /// exponent, whether the rows start from a seed (the self pairs) or not: against the
    /// exponents computed directly in float64, every column clearly inside is kept and every
    /// kept column is inside (up to the rounding of the two computations).
    #[test]
    fn a_set_holds_the_columns_within_theta_of_each_row_maximum() {
        let (n, m, d) = (300, 1100, 3);
        let (x, y) = (cloud(n, d, 3, 0.0), cloud(m, d, 17, 0.2));
        let eps = 0.0005;
        let op = TiledSoftmin::new((&x, n), (&y, m), d).truncating_at(eps);
        let g: Vec<f64> = (0..m).map(|j| 0.01 * ((j % 13) as f64)).collect();
        for (pair, rows, cols, len) in [(Pair::XY, &x, &y, m), (Pair::XX, &x, &x, n)] {
            let log_w = vec![-(len as f64).ln(); len];
            let pot = &g[..len];
            let _ = op.softmin_with_barycentres(eps, pair, &log_w, pot, false);
            let slot = op.truncated[pair as usize].lock().unwrap();
            let Truncation::Set(set) = &*slot else {
                panic!("{pair:?}: a set at this eps");
            };
            let theta = Truncated::<f64>::theta(len);
            let rows_of = set.blocks.iter().flat_map(|b| {
                b.offsets
                    .windows(2)
                    .map(move |w| b.cols[w[0]..w[1]].to_vec())
            });
            let mut kept = 0;
            for (i, set_cols) in rows_of.enumerate() {
                let z: Vec<f64> = (0..len)
                    .map(|j| {
                        let c: f64 = (0..d)
                            .map(|k| (rows[i * d + k] - cols[j * d + k]).powi(2))
                            .sum::<f64>()
                            / 2.0;
                        log_w[j] + pot[j] / eps - c / eps
                    })
                    .collect();
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                for (j, &z) in z.iter().enumerate() {
                    let inside = set_cols.contains(&(j as u32));
                    assert!(
                        z <= max - theta + 1e-6 || inside,
                        "{pair:?} row {i}: column {j} within theta is not kept"
                    );
                    assert!(
                        !inside || z > max - theta - 1e-6,
                        "{pair:?} row {i}: column {j} below theta is kept"
                    );
                }
                kept += set_cols.len();
            }
            assert_eq!(kept, set.len(), "{pair:?}: every row of the set");
            assert!(
                kept < n * len / 8,
                "{pair:?}: a sparse set ({kept} entries)"
            );
        }
    }

    #[test]
    fn a_set_covers_only_its_eps_and_finite_shifts_within_the_margin() {
        let set = Truncated::<f64> {
            eps: 0.1,
            h0: vec![0.0, 1.0, -2.0],
            blocks: Vec::new(),
        };
        let m = TRUNCATION_MARGIN;
        assert!(set.covers(0.1, &[5.0, 6.0, 3.0]), "a constant shift");
        assert!(set.covers(0.1, &[0.0, 1.0 + m, -2.0]));
        assert!(!set.covers(0.1, &[0.0, 1.0 + m + 1e-9, -2.0]));
        assert!(!set.covers(0.2, &[0.0, 1.0, -2.0]), "another eps");
        assert!(!set.covers(0.1, &[0.0, f64::NAN, -2.0]));
        assert!(!set.covers(0.1, &[0.0, f64::INFINITY, -2.0]));
        assert!(!set.covers(0.1, &[0.0, 1.0]), "another length");
    }
}
