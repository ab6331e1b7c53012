//! The divergences in host memory without any `n x m` matrix: the costs and kernel values are
//! computed from the points inside each sweep, one cache-sized tile at a time, as the fused GPU
//! kernels do (`crate::fused::kernels`). Memory is `O((n + m) d)` plus one tile per thread.
//!
//! A tile is a block of [`TILE_ROWS`] rows against a chunk of columns (about 32 KiB of the
//! column cloud): its inner products `<p_i, q_j>` come from a register-blocked product
//! ([`gram_tile`], four rows against sixteen columns at a time, vectorised by the compiler
//! under `pulp`'s run-time dispatch), then each row's costs `|p_i - q_j|^2 / 2` are expanded
//! from the squared norms in centred coordinates (the centring of `crate::cost`), and reduced:
//! - Sinkhorn ([`softmin_tiled`]): the online log-sum-exp over the column chunks (a running
//!   maximum and sum, rescaled when the maximum grows) and, for the last step, the running
//!   barycentre `sum_j P_ij q_j` of the row-normalised plan, from which the envelope gradient
//!   `a_i (xbar_i - ybar_i)` follows without any plan being stored;
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

use super::sinkhorn::{
    combine_host, log_weights_host, marginal_errors_host, relax_host, weighted_dots_host,
};
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

/// Rows and columns of the register block of [`gram_tile`] (four 512-bit accumulators in
/// float32; a block of 32 columns was no longer vectorised by the compiler).
const BLOCK_ROWS: usize = 4;
const BLOCK_COLS: usize = 2 * LANES;

/// Columns of a tile for points of dimension `d`: about 8192 coordinates of the column cloud
/// (32 KiB in float32, the L1 cache), a multiple of the register block, at least one block.
fn tile_cols(d: usize) -> usize {
    (8192 / d.max(1)).clamp(BLOCK_COLS, 2048) / BLOCK_COLS * BLOCK_COLS
}

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
/// [`BLOCK_ROWS`] rows and [`BLOCK_COLS`] columns accumulated in registers over `d`.
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
        while j < full_cols {
            let mut acc = [[F::ZERO; BLOCK_COLS]; BLOCK_ROWS];
            for k in 0..d {
                let q: &[F; BLOCK_COLS] = qt[k * stride + c0 + j..][..BLOCK_COLS]
                    .try_into()
                    .expect("a block of columns");
                for (acc, row) in acc.iter_mut().zip(&rows_k) {
                    multiply_add(acc, row[k], q);
                }
            }
            for (b, acc) in acc.iter().enumerate() {
                g[(r + b) * cols + j..][..BLOCK_COLS].copy_from_slice(acc);
            }
            j += BLOCK_COLS;
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
struct SoftminTile<'a, F> {
    eps: f64,
    rows: &'a Cloud<F>,
    cols: &'a Cloud<F>,
    r0: usize,
    h: &'a [F],
    out: &'a mut [F],
    bary: Option<&'a mut [F]>,
}

impl<F: HostFloat> pulp::WithSimd for SoftminTile<'_, F> {
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
        } = self;
        let (d, m, count) = (rows.d, cols.len(), out.len());
        let width = tile_cols(d);
        let (inv, half) = (F::of(1.0 / eps), F::of(0.5));
        let p = &rows.points[r0 * d..(r0 + count) * d];
        let mut tile = vec![F::ZERO; count * width.min(m)];
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
                // z_j = h_j - C_ij / eps, with C_ij = max(|p|^2 + |q|^2 - 2 <p, q>, 0) / 2.
                for ((z, &sq), &h) in z.iter_mut().zip(sq_cols).zip(h_cols) {
                    let dist = sq_row + sq - (*z + *z);
                    let cost = if dist > F::ZERO { dist * half } else { F::ZERO };
                    *z = h - cost * inv;
                }
                let chunk_max = max_of(z);
                let old = maxes[r];
                let new = if chunk_max > old { chunk_max } else { old };
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
            c0 += w;
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
        }
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
        let (rows, cols) = self.clouds(pair);
        let inv = F::of(1.0 / eps);
        let h: Vec<F> = log_w.iter().zip(pot).map(|(&l, &p)| l + p * inv).collect();
        softmin_tiled(eps, rows, cols, &h, barycentres)
    }
}

impl<F: HostFloat> SolverOps for TiledSoftmin<F> {
    type Vector = Vec<F>;

    fn prepare(&mut self, _eps: f64) {}

    fn softmin(&self, eps: f64, pair: Pair, log_w: &Vec<F>, pot: Option<&Vec<F>>) -> Vec<F> {
        let (rows, cols) = self.clouds(pair);
        match pot {
            Some(pot) => {
                self.softmin_with_barycentres(eps, pair, log_w, pot, false)
                    .0
            }
            None => softmin_tiled(eps, rows, cols, log_w, false).0,
        }
    }

    fn relax(&self, old: &Vec<F>, new: Vec<F>, w: f64) -> Vec<F> {
        relax_host(old, new, w)
    }

    fn log_weights(&self, w: &Vec<F>) -> Vec<F> {
        log_weights_host(w)
    }

    fn marginal_errors(&self, eps: f64, terms: &[(&Vec<F>, &Vec<F>, &Vec<F>)]) -> Vec<f64> {
        marginal_errors_host(eps, terms)
    }

    fn combine(&self, terms: &[(f64, &Vec<F>)]) -> Vec<F> {
        combine_host(terms)
    }

    fn weighted_dots(&self, w: &Vec<F>, pairs: &[(&Vec<F>, &Vec<F>)]) -> Vec<f64> {
        weighted_dots_host(w, pairs)
    }
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
        let mut op = TiledSoftmin::new((&x, n), (&y, m), d);
        drop((x, y));
        let (a, b) = (host_vec(problem.a.clone()), host_vec(problem.b.clone()));
        let solved = solve_with(
            &mut op,
            problem.schedule_diameter(),
            &a,
            &b,
            problem.same,
            config,
        )?;
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
}
