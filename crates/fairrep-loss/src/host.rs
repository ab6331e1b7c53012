//! The divergences in host memory, for the CPU devices (Flex, NdArray).
//!
//! On the CPU a tensor-op softmin makes six passes over the `n x m` cost matrix (add, max,
//! subtract, exp, sum, log), each allocating its output, and every small vector update is one
//! more dispatched op. Here the cost matrices are read once into plain vectors and each row's
//! log-sum-exp is two passes over that row while it sits in the L1 cache: a maximum, then a
//! sum of exponentials, both over eight independent lanes so that the compiler vectorises them
//! (float addition is not reassociated for it otherwise). The exponential of the float32 path
//! is a branch-free polynomial ([`HostFloat::exp_nonpositive`]), row blocks are compiled for
//! the CPU's vector instructions through `pulp`'s run-time dispatch and split across threads,
//! and the potentials stay host vectors until the loop ends. The loop itself is the shared one
//! ([`crate::sinkhorn::solve_with`]); the last softmin step keeps its row-normalised plans,
//! from which the envelope gradient follows. The MMD's kernel blocks are computed the same way
//! ([`mmd2_on_host`]). Both hand their analytic gradients to autodiff through
//! [`with_gradients`].
use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::cost::LOG_ZERO;
use crate::sinkhorn::{Pair, SolverOps};

/// Whether the Sinkhorn loop for tensors on `device` runs in host memory: the CPU devices,
/// whose tensors already live there.
pub(crate) fn runs_on_host(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_) | DispatchDevice::NdArray(_)
    )
}

/// The float types of the host loop: `f32` and `f64`.
pub(crate) trait HostFloat:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + burn::tensor::Element
    + 'static
{
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn of(v: f64) -> Self;
    fn get(self) -> f64;
    fn ln(self) -> Self;
    /// `exp(x)` for `x <= 0`, as accurate as the type's own rounding allows.
    fn exp_nonpositive(self) -> Self;
}

impl HostFloat for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;

    fn of(v: f64) -> Self {
        v as f32
    }

    fn get(self) -> f64 {
        self as f64
    }

    fn ln(self) -> Self {
        f32::ln(self)
    }

    /// Branch-free so that loops over it vectorise: `x = k ln 2 + r` with `k` an integer and
    /// `|r| <= ln 2 / 2` (Cody-Waite: `ln 2` split in a short high part, exact in the product
    /// `k ln2_hi`, and a low correction), `exp(r)` from its Taylor polynomial of degree 7
    /// (truncation below `6e-9` relative on that interval, under float32 rounding), and `2^k`
    /// written straight into the exponent bits. Below `-87` (where `2^k` would leave the normal
    /// range) the result is 0; the terms of a log-sum-exp there are below `1e-37` of its
    /// largest one.
    #[inline(always)]
    fn exp_nonpositive(self) -> Self {
        const LOG2_E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Adding 1.5 * 2^23 rounds to the nearest integer k, left in the low mantissa bits.
        const ROUND: f32 = 12_582_912.0;
        const LOWEST: f32 = -87.0;
        // Comparisons and bit operations only (no float-to-int cast, whose saturation
        // semantics keep the compiler from vectorising).
        let x = if self > LOWEST { self } else { LOWEST };
        let t = x * LOG2_E + ROUND;
        let k = t - ROUND;
        let r = (x - k * LN2_HI) - k * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0
                        + r * (1.0 / 24.0
                            + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
        let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
        let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
        if self >= LOWEST { p * scale } else { 0.0 }
    }
}

impl HostFloat for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;

    fn of(v: f64) -> Self {
        v
    }

    fn get(self) -> f64 {
        self
    }

    fn ln(self) -> Self {
        f64::ln(self)
    }

    /// The standard library's `exp`: float64 runs are for accuracy, not speed.
    #[inline(always)]
    fn exp_nonpositive(self) -> Self {
        self.exp()
    }
}

/// Lanes of the row reductions: independent accumulators the compiler maps onto SIMD registers.
const LANES: usize = 8;

/// The largest value of a row, over [`LANES`] independent accumulators.
#[inline(always)]
fn max_of<F: HostFloat>(z: &[F]) -> F {
    let mut acc = [F::NEG_INFINITY; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        acc[k] = if v > acc[k] { v } else { acc[k] };
    }
    acc.into_iter()
        .fold(F::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// The sum of a row, over [`LANES`] independent accumulators.
#[inline(always)]
fn sum_of<F: HostFloat>(z: &[F]) -> F {
    let mut acc = [F::ZERO; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] = acc[k] + c[k];
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        acc[k] = acc[k] + v;
    }
    acc.into_iter().fold(F::ZERO, |s, v| s + v)
}

/// `(max, sum)` of one row `c` with `z` a scratch row: `max = max_j (h_j - c_j / eps)`, and
/// `z_j = exp(h_j - c_j / eps - max)` summing to `sum`; the row's softmin is
/// `-eps (max + ln sum)`. Simple elementwise loops (which the compiler vectorises) and two
/// lane-parallel reductions, all in the cache.
#[inline(always)]
fn row_exp_terms<F: HostFloat>(c: &[F], h: &[F], inv: F, z: &mut [F]) -> (F, F) {
    for ((z, &c), &h) in z.iter_mut().zip(c).zip(h) {
        *z = h - c * inv;
    }
    let max = max_of(z);
    for z in z.iter_mut() {
        *z = (*z - max).exp_nonpositive();
    }
    (max, sum_of(z))
}

/// `softmin_eps(C, h)_i = -eps (max_i + ln sum_j exp(h_j - C_ij / eps - max_i))` for every row
/// of the row-major `C` (`rows x h.len()`), rows split across threads.
pub(crate) fn softmin_rows<F: HostFloat>(eps: f64, cost: &[F], h: &[F]) -> Vec<F> {
    softmin_rows_with_plan(eps, cost, h, false).0
}

/// [`softmin_rows`], and with `plan` the row-normalised plan `P_ij = exp(h_j - C_ij / eps) /
/// sum_j exp(...)` (row-major, the shape of `C`): the weights of the softmin's derivative,
/// `d softmin_i / d C_ij = P_ij`.
pub(crate) fn softmin_rows_with_plan<F: HostFloat>(
    eps: f64,
    cost: &[F],
    h: &[F],
    plan: bool,
) -> (Vec<F>, Vec<F>) {
    let cols = h.len();
    let rows = cost.len().checked_div(cols).unwrap_or(0);
    let mut out = vec![F::ZERO; rows];
    let mut plan = if plan {
        vec![F::ZERO; cost.len()]
    } else {
        Vec::new()
    };
    if cols == 0 {
        return (out, plan);
    }
    let (inv, neg_eps) = (F::of(1.0 / eps), F::of(-eps));
    let arch = pulp::Arch::new();
    // Tasks of at least ~32k entries: below that, splitting costs more than it saves.
    let rows_per_task = (32_768 / cols).max(1);
    let blocks = out
        .par_chunks_mut(rows_per_task)
        .zip(cost.par_chunks(rows_per_task * cols));
    let block = |out, cost, plan| RowBlock {
        cost,
        h,
        out,
        plan,
        inv,
        neg_eps,
    };
    if plan.is_empty() {
        blocks.for_each(|(out, cost)| arch.dispatch(block(out, cost, None)));
    } else {
        blocks
            .zip(plan.par_chunks_mut(rows_per_task * cols))
            .for_each(|((out, cost), plan)| arch.dispatch(block(out, cost, Some(plan))));
    }
    (out, plan)
}

/// The softmins of a block of rows (and their plan rows), compiled for the instruction set
/// `pulp` dispatches to (AVX2 + FMA or AVX-512 where the CPU has them, the baseline
/// otherwise): everything it calls is inlined into that instantiation.
struct RowBlock<'a, F> {
    cost: &'a [F],
    h: &'a [F],
    out: &'a mut [F],
    plan: Option<&'a mut [F]>,
    inv: F,
    neg_eps: F,
}

impl<F: HostFloat> pulp::WithSimd for RowBlock<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let cols = self.h.len();
        let rows = self.out.iter_mut().zip(self.cost.chunks_exact(cols));
        match self.plan {
            None => {
                let mut z = vec![F::ZERO; cols];
                for (o, c) in rows {
                    let (max, sum) = row_exp_terms(c, self.h, self.inv, &mut z);
                    *o = self.neg_eps * (max + sum.ln());
                }
            }
            Some(plan) => {
                for ((o, c), z) in rows.zip(plan.chunks_exact_mut(cols)) {
                    let (max, sum) = row_exp_terms(c, self.h, self.inv, z);
                    *o = self.neg_eps * (max + sum.ln());
                    let scale = F::of(1.0 / sum.get());
                    for z in z.iter_mut() {
                        *z = *z * scale;
                    }
                }
            }
        }
    }
}

/// The four half squared-distance matrices (row-major) and the solver operations on host
/// vectors.
pub(crate) struct HostSoftmin<F> {
    xy: Vec<F>,
    yx: Vec<F>,
    xx: Vec<F>,
    yy: Vec<F>,
}

impl<F: HostFloat> HostSoftmin<F> {
    /// Reads the cost matrices `C(x, y)`, `C(y, x)`, `C(x, x)`, `C(y, y)` (shapes `[n, m]`,
    /// `[m, n]`, `[n, n]`, `[m, m]`, computed on the device) into host memory.
    pub(crate) fn new(xy: Tensor<2>, xx: Tensor<2>, yy: Tensor<2>) -> Self {
        Self {
            yx: host_vec(xy.clone().transpose()),
            xy: host_vec(xy),
            xx: host_vec(xx),
            yy: host_vec(yy),
        }
    }
}

/// The values of a tensor in row-major order, as `F`.
pub(crate) fn host_vec<F: HostFloat, const D: usize>(t: Tensor<D>) -> Vec<F> {
    t.into_data()
        .convert::<F>()
        .try_into_vec::<F>()
        .expect("converted to the host float type")
}

/// A host vector as a 1-d tensor of `dtype` on `device`.
pub(crate) fn to_tensor<F: HostFloat>(v: Vec<F>, device: &Device, dtype: DType) -> Tensor<1> {
    let len = v.len();
    Tensor::from_data(TensorData::new(v, [len]), (device, dtype))
}

impl<F: HostFloat> HostSoftmin<F> {
    fn cost(&self, pair: Pair) -> &[F] {
        match pair {
            Pair::XY => &self.xy,
            Pair::YX => &self.yx,
            Pair::XX => &self.xx,
            Pair::YY => &self.yy,
        }
    }

    /// `h = log_w + pot / eps`.
    fn shifted(eps: f64, log_w: &[F], pot: &[F]) -> Vec<F> {
        let inv = F::of(1.0 / eps);
        log_w.iter().zip(pot).map(|(&l, &p)| l + p * inv).collect()
    }

    /// The softmin of `pair` from `pot` with its row-normalised plan (see
    /// [`softmin_rows_with_plan`]).
    pub(crate) fn softmin_with_plan(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &[F],
        pot: &[F],
        plan: bool,
    ) -> (Vec<F>, Vec<F>) {
        softmin_rows_with_plan(eps, self.cost(pair), &Self::shifted(eps, log_w, pot), plan)
    }
}

impl<F: HostFloat> SolverOps for HostSoftmin<F> {
    type Vector = Vec<F>;

    fn prepare(&mut self, _eps: f64) {}

    fn softmin(&self, eps: f64, pair: Pair, log_w: &Vec<F>, pot: Option<&Vec<F>>) -> Vec<F> {
        match pot {
            Some(pot) => softmin_rows(eps, self.cost(pair), &Self::shifted(eps, log_w, pot)),
            None => softmin_rows(eps, self.cost(pair), log_w),
        }
    }

    fn relax(&self, old: &Vec<F>, new: Vec<F>, w: f64) -> Vec<F> {
        if w == 1.0 {
            return new;
        }
        let (keep, take) = (F::of(1.0 - w), F::of(w));
        old.iter()
            .zip(new)
            .map(|(&o, n)| o * keep + n * take)
            .collect()
    }

    fn log_weights(&self, w: &Vec<F>) -> Vec<F> {
        let log_zero = F::of(LOG_ZERO);
        w.iter()
            .map(|&v| if v > F::ZERO { v.ln() } else { log_zero })
            .collect()
    }

    fn marginal_errors(&self, eps: f64, terms: &[(&Vec<F>, &Vec<F>, &Vec<F>)]) -> Vec<f64> {
        let inv = 1.0 / eps;
        terms
            .iter()
            .map(|(w, old, new)| {
                w.iter()
                    .zip(old.iter().zip(new.iter()))
                    .map(|(w, (o, n))| w.get() * (((o.get() - n.get()) * inv).exp() - 1.0).abs())
                    .sum()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Gaussian MMD

/// One kernel block `K(P, Q)` between two clouds with weights `u`, `v`: the quadratic form
/// `T = u' K v` and, when kept for a gradient, the matrix `L_ij = mean_s exp(-|p_i - q_j|^2 /
/// (2 s^2)) / s^2` and its row sums `r_i = sum_j L_ij v_j`, from which `dT/dp_i = -u_i (p_i r_i
/// - (L (v q))_i)`.
struct KernelBlock<F> {
    form: f64,
    l: Vec<F>,
    r: Vec<F>,
}

/// The squared distances `|p_i - q_j|^2 = |p_i|^2 + |q_j|^2 - 2 <p_i, q_j>` of one kernel block,
/// from the Gram matrix of centred points (row-major, `p_norms.len() x q_norms.len()`) and
/// the squared norms, expanded row by row inside the kernel pass.
struct Distances<'a, F> {
    gram: &'a [F],
    p_norms: &'a [F],
    q_norms: &'a [F],
}

/// [`KernelBlock`] from the squared distances; `keep`: also `L` and `r`.
fn kernel_block<F: HostFloat>(
    dist: Distances<'_, F>,
    u: &[F],
    v: &[F],
    bandwidths: &[f64],
    keep: bool,
) -> KernelBlock<F> {
    let cols = v.len().max(1);
    let scales: Vec<(F, F)> = bandwidths
        .iter()
        .map(|s| {
            (
                F::of(-0.5 / (s * s)),
                F::of(1.0 / (bandwidths.len() as f64 * s * s)),
            )
        })
        .collect();
    let norm = F::of(1.0 / bandwidths.len() as f64);
    let (mut l, mut r) = if keep {
        (vec![F::ZERO; dist.gram.len()], vec![F::ZERO; u.len()])
    } else {
        (Vec::new(), Vec::new())
    };
    let arch = pulp::Arch::new();
    let rows_per_task = (32_768 / cols).max(1);
    let blocks = dist
        .gram
        .par_chunks(rows_per_task * cols)
        .zip(dist.p_norms.par_chunks(rows_per_task))
        .zip(u.par_chunks(rows_per_task));
    let rows = |gram, p_norms, u, kept| KernelRows {
        gram,
        p_norms,
        q_norms: dist.q_norms,
        u,
        v,
        kept,
        scales: &scales,
        norm,
    };
    let form: f64 = if keep {
        blocks
            .zip(l.par_chunks_mut(rows_per_task * cols))
            .zip(r.par_chunks_mut(rows_per_task))
            .map(|((((g, pn), u), l), r)| arch.dispatch(rows(g, pn, u, Some((l, r)))))
            .sum()
    } else {
        blocks
            .map(|((g, pn), u)| arch.dispatch(rows(g, pn, u, None)))
            .sum()
    };
    KernelBlock { form, l, r }
}

/// The kernel rows of [`kernel_block`] for one task, vectorised like [`RowBlock`].
struct KernelRows<'a, F> {
    /// Rows of the Gram matrix, with the squared norms of their points and of the columns'.
    gram: &'a [F],
    p_norms: &'a [F],
    q_norms: &'a [F],
    u: &'a [F],
    v: &'a [F],
    /// The rows of `L` and of `r`, when kept.
    kept: Option<(&'a mut [F], &'a mut [F])>,
    scales: &'a [(F, F)],
    norm: F,
}

impl<F: HostFloat> pulp::WithSimd for KernelRows<'_, F> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f64 {
        let cols = self.v.len();
        let mut k = vec![F::ZERO; cols];
        let mut form = 0.0;
        // `k_j v_j` summed over j, with `k` the row of the kernel.
        let weighted_sum = |k: &mut [F]| {
            for (k, &v) in k.iter_mut().zip(self.v) {
                *k = *k * v;
            }
            sum_of(k)
        };
        let mut sq = vec![F::ZERO; cols];
        // |p|^2 + |q_j|^2 - 2 <p, q_j>, clamped at 0 against rounding.
        let expand = |sq: &mut [F], gram: &[F], p_norm: F| {
            for ((s, &g), &q) in sq.iter_mut().zip(gram).zip(self.q_norms) {
                let d = p_norm + q - (g + g);
                *s = if d > F::ZERO { d } else { F::ZERO };
            }
        };
        let rows = self.gram.chunks_exact(cols).zip(self.p_norms).zip(self.u);
        match self.kept {
            None => {
                for ((gram, &p_norm), &u) in rows {
                    expand(&mut sq, gram, p_norm);
                    k.fill(F::ZERO);
                    for &(c, _) in self.scales {
                        for (k, &d) in k.iter_mut().zip(&sq) {
                            *k = *k + (d * c).exp_nonpositive();
                        }
                    }
                    form += u.get() * (weighted_sum(&mut k) * self.norm).get();
                }
            }
            Some((l, r)) => {
                for (((gram, &p_norm), &u), (l, r)) in
                    rows.zip(l.chunks_exact_mut(cols).zip(r.iter_mut()))
                {
                    expand(&mut sq, gram, p_norm);
                    k.fill(F::ZERO);
                    for &(c, w) in self.scales {
                        for ((k, l), &d) in k.iter_mut().zip(l.iter_mut()).zip(&sq) {
                            let e = (d * c).exp_nonpositive();
                            *k = *k + e;
                            *l = *l + e * w;
                        }
                    }
                    form += u.get() * (weighted_sum(&mut k) * self.norm).get();
                    k.copy_from_slice(l);
                    *r = weighted_sum(&mut k);
                }
            }
        }
        form
    }
}

/// `sum_i u_i L_ij` for every column `j`.
fn column_sums<F: HostFloat>(l: &[F], u: &[F], cols: usize) -> Vec<F> {
    let mut out = vec![F::ZERO; cols];
    for (row, &u) in l.chunks_exact(cols.max(1)).zip(u) {
        for (o, &l) in out.iter_mut().zip(row) {
            *o = *o + u * l;
        }
    }
    out
}

/// `MMD2(alpha, beta)` (MATH.md) computed in host memory on a CPU device, with its gradient
/// with respect to the points that carry one: the kernel matrices are evaluated in one
/// vectorised pass each from the squared distances (computed on the device, with the centring
/// of [`crate::cost::squared_distances`]), the gradient is assembled from two matrix products
/// per cloud on the device, and handed to autodiff by [`with_gradients`]. The weights must
/// carry no gradient.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]`
pub(crate) fn mmd2_on_host<F: HostFloat>(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: &Tensor<1>,
    b: &Tensor<1>,
    bandwidths: &[f64],
    unbiased: bool,
) -> Tensor<1> {
    let (xi, yi) = (x.clone().inner(), y.clone().inner());
    let (device, dtype) = (xi.device(), xi.dtype());
    let [n, _] = xi.dims();
    let m = yi.dims()[0];
    let (gx, gy) = (x.is_tracked(), y.is_tracked());
    // Centred points (far from the origin, the expansions below would cancel).
    let centre = Tensor::cat(vec![xi.clone(), yi.clone()], 0).mean_dim(0);
    let (xc, yc) = (xi - centre.clone(), yi - centre);
    let gram =
        |p: &Tensor<2>, q: &Tensor<2>| host_vec::<F, 2>(p.clone().matmul(q.clone().transpose()));
    let norms = |p: &Tensor<2>| host_vec::<F, 2>(p.clone().square().sum_dim(1));
    let (x_norms, y_norms) = (norms(&xc), norms(&yc));
    let (a_h, b_h) = (
        host_vec::<F, 1>(a.clone().inner()),
        host_vec::<F, 1>(b.clone().inner()),
    );
    let block = |p: &Tensor<2>, q: &Tensor<2>, p_norms, q_norms, u, v, keep| {
        let gram = gram(p, q);
        let dist = Distances {
            gram: &gram,
            p_norms,
            q_norms,
        };
        kernel_block(dist, u, v, bandwidths, keep)
    };
    let kxx = block(&xc, &xc, &x_norms, &x_norms, &a_h, &a_h, gx);
    let kyy = block(&yc, &yc, &y_norms, &y_norms, &b_h, &b_h, gy);
    let kxy = block(&xc, &yc, &x_norms, &y_norms, &a_h, &b_h, gx || gy);

    // Unbiased self terms: (T - sum u_i^2) / (1 - sum u_i^2), zero where undefined (k_ii = 1).
    let self_scale = |u: &[F]| {
        let diag: f64 = u.iter().map(|v| v.get() * v.get()).sum();
        match (unbiased, 1.0 - diag) {
            (false, _) => (0.0, 1.0),
            (true, denom) if denom > 0.0 => (diag, 1.0 / denom),
            (true, _) => (0.0, 0.0),
        }
    };
    let (diag_a, scale_a) = self_scale(&a_h);
    let (diag_b, scale_b) = self_scale(&b_h);
    let value = (kxx.form - diag_a) * scale_a + (kyy.form - diag_b) * scale_b - 2.0 * kxy.form;
    let value_t =
        Tensor::<1>::from_data(TensorData::new(vec![F::of(value)], [1]), (&device, dtype));
    if !(gx || gy) {
        return value_t;
    }

    let matrix = |l: Vec<F>, rows: usize, cols: usize| {
        Tensor::<2>::from_data(TensorData::new(l, [rows, cols]), (&device, dtype))
    };
    let column = |v: &[F]| to_tensor(v.to_vec(), &device, dtype).unsqueeze_dim::<2>(1);
    let (a_t, b_t) = (column(&a_h), column(&b_h));
    // The gradient for one cloud `p` (weights `u`, a column): its self block counts twice
    // (both arguments are `p`) and is scaled for the unbiased estimator, the cross block with
    // the other cloud (`vq` = its weighted points) counts -2; each gives
    // dT(P, Q)/dp_i = -u_i (p_i r_i - (L (v q))_i).
    let gradient = |p: &Tensor<2>,
                    u: &Tensor<2>,
                    (self_l, self_r, scale): (Tensor<2>, &[F], f64),
                    (cross_l, cross_r, vq): (Tensor<2>, &[F], Tensor<2>)| {
        let part = |l: Tensor<2>, r: &[F], vq: Tensor<2>| p.clone() * column(r) - l.matmul(vq);
        let own = part(self_l, self_r, p.clone() * u.clone()).mul_scalar(2.0 * scale);
        (own - part(cross_l, cross_r, vq).mul_scalar(2.0)) * u.clone().neg()
    };
    // The cross block's L serves both clouds: copied only when both need it.
    let (lxy_x, lxy_y) = match (gx, gy) {
        (true, true) => (kxy.l.clone(), kxy.l),
        (true, false) => (kxy.l, Vec::new()),
        _ => (Vec::new(), kxy.l),
    };
    let grad_x = gx.then(|| {
        let own = (matrix(kxx.l, n, n), &kxx.r[..], scale_a);
        let cross = (matrix(lxy_x, n, m), &kxy.r[..], yc.clone() * b_t.clone());
        gradient(&xc, &a_t, own, cross)
    });
    let grad_y = gy.then(|| {
        let column_r = column_sums(&lxy_y, &a_h, m);
        let own = (matrix(kyy.l, m, m), &kyy.r[..], scale_b);
        let cross = (
            matrix(lxy_y, n, m).transpose(),
            &column_r[..],
            xc.clone() * a_t.clone(),
        );
        gradient(&yc, &b_t, own, cross)
    });
    with_gradients(value_t, [(x, grad_x), (y, grad_y)])
}

/// `value + sum_k <p_k - p_k.detach(), g_k>` over the tracked points `p_k`: the same value,
/// with gradient `g_k` with respect to `p_k` under autodiff (the host computations hand their
/// analytic gradients to autodiff this way).
pub(crate) fn with_gradients(
    value: Tensor<1>,
    parts: [(&Tensor<2>, Option<Tensor<2>>); 2],
) -> Tensor<1> {
    parts
        .into_iter()
        .filter_map(|(p, g)| Some((p, g?)).filter(|(p, _)| p.is_tracked()))
        .fold(value, |v, (p, g)| {
            v + ((p.clone() - p.clone().detach()) * g).sum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_exp_matches_the_standard_one() {
        // Every float32 step from 0 down to -90 on a fine grid, plus the ends.
        let mut worst = 0.0f64;
        for i in 0..=900_000 {
            let x = -(i as f32) * 1e-4;
            let got = x.exp_nonpositive() as f64;
            let want = (x as f64).exp();
            if x >= -87.0 {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert!(got <= want.max(1e-37), "exp({x}) = {got}");
            }
        }
        assert!(worst < 3.0e-7, "worst relative error {worst:e}");
        assert_eq!(0.0f32.exp_nonpositive(), 1.0);
        assert_eq!((-1.0e30f32).exp_nonpositive(), 0.0);
        assert_eq!(f32::NEG_INFINITY.exp_nonpositive(), 0.0);
    }

    #[test]
    fn row_softmin_matches_a_direct_log_sum_exp() {
        // Rows of lengths around the lane count exercise the tails.
        for cols in [1usize, 7, 8, 9, 33] {
            let rows = 5;
            let cost: Vec<f32> = (0..rows * cols)
                .map(|k| ((k * 37 % 101) as f32) * 0.03)
                .collect();
            let h: Vec<f32> = (0..cols).map(|j| -((j % 5) as f32) * 0.2).collect();
            let eps = 0.05;
            let got = softmin_rows(eps, &cost, &h);
            for i in 0..rows {
                let z: Vec<f64> = (0..cols)
                    .map(|j| h[j] as f64 - cost[i * cols + j] as f64 / eps)
                    .collect();
                let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                let want = -eps * lse;
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "cols {cols} row {i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
}
