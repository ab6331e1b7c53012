//! The divergences in host memory, for the CPU devices (Flex, NdArray): the Sinkhorn loop and
//! last step ([`sinkhorn`]), the MMD ([`mmd`]), and the vectorised row kernels they share.
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
//! (`crate::solver::solve_with`); the last softmin step keeps its row-normalised plans,
//! from which the envelope gradient follows. The MMD's kernel blocks are computed the same way
//! (`mmd::mmd2_on_host`). Both hand their analytic gradients to autodiff through
//! `with_gradients`.
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// The elementwise operations of `crate::solver::SolverOps` on host vectors (`Vec<F>`), the
/// same for every host implementation of the softmins: their bodies inside an `impl
/// SolverOps`.
macro_rules! host_vector_ops {
    () => {
        fn relax(&self, old: &Vec<F>, new: Vec<F>, w: f64) -> Vec<F> {
            $crate::host::sinkhorn::relax_host(old, new, w)
        }

        fn log_weights(&self, w: &Vec<F>) -> Vec<F> {
            $crate::host::sinkhorn::log_weights_host(w)
        }

        fn marginal_errors(&self, eps: f64, terms: &[(&Vec<F>, &Vec<F>, &Vec<F>)]) -> Vec<f64> {
            $crate::host::sinkhorn::marginal_errors_host(eps, terms)
        }

        fn combine(&self, terms: &[(f64, &Vec<F>)]) -> Vec<F> {
            $crate::host::sinkhorn::combine_host(terms)
        }

        fn weighted_dots(&self, w: &Vec<F>, pairs: &[(&Vec<F>, &Vec<F>)]) -> Vec<f64> {
            $crate::host::sinkhorn::weighted_dots_host(w, pairs)
        }

        fn weighted_sums(&self, terms: &[(&Vec<F>, &Vec<F>)]) -> Vec<f64> {
            $crate::host::sinkhorn::weighted_sums_host(terms)
        }

        fn add_constant(&self, v: &Vec<F>, c: f64) -> Vec<F> {
            $crate::host::sinkhorn::add_constant_host(v, c)
        }
    };
}
pub(crate) mod mmd;
pub(crate) mod sinkhorn;
pub(crate) mod tiled;

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
    /// Half the distance from 1 to the next larger number: the largest relative error of one
    /// rounding.
    const UNIT_ROUNDOFF: f64;
    fn of(v: f64) -> Self;
    fn get(self) -> f64;
    fn ln(self) -> Self;
    /// `exp(x)` for `x <= 0`, as accurate as the type's own rounding allows.
    fn exp_nonpositive(self) -> Self;
    /// `self * a + b` with one rounding: one fused multiply-add instruction under the
    /// instruction sets `pulp` dispatches to here (AVX2 + FMA, AVX-512).
    fn mul_add(self, a: Self, b: Self) -> Self;
}

impl HostFloat for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

    fn of(v: f64) -> Self {
        v as f32
    }

    fn get(self) -> f64 {
        self as f64
    }

    fn ln(self) -> Self {
        f32::ln(self)
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }

    /// Branch-free so that loops over it vectorise: `x = k ln 2 + r` with `k` an integer and
    /// `|r| <= ln 2 / 2` (Cody-Waite: `ln 2` split in a short high part, exact in the product
    /// `k ln2_hi`, and a low correction), `exp(r)` from its Taylor polynomial of degree 7
    /// (truncation below `6e-9` relative on that interval, under float32 rounding), and `2^k`
    /// written straight into the exponent bits. The reduction and Horner's scheme are fused
    /// multiply-adds (`mul_add`): one instruction per step where a product and a sum were
    /// two, and one rounding (at most `7.7e-8` relative error over `[-87, 0]`, against `9.7e-8`
    /// with separate products and sums). Below `-87` (where `2^k` would leave the normal
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
        let t = x.mul_add(LOG2_E, ROUND);
        let k = t - ROUND;
        let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, x));
        let p = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ]
        .iter()
        .fold(1.0 / 5040.0, |p: f32, &c| p.mul_add(r, c));
        let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
        let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
        if self >= LOWEST { p * scale } else { 0.0 }
    }
}

impl HostFloat for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

    fn of(v: f64) -> Self {
        v
    }

    fn get(self) -> f64 {
        self
    }

    fn ln(self) -> Self {
        f64::ln(self)
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
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

/// The debiased Sinkhorn divergence from the last step's potentials (docs/MATH.md):
/// `<a, f_ba - f_aa> + <b, g_ab - g_bb>`, summed in float64. Shared by the stored and the
/// tiled host paths.
pub(crate) fn potential_gap<F: HostFloat>(
    (a, f_ba, f_aa): (&[F], &[F], &[F]),
    (b, g_ab, g_bb): (&[F], &[F], &[F]),
) -> f64 {
    let dot = |w: &[F], u: &[F], v: &[F]| -> f64 {
        w.iter()
            .zip(u.iter().zip(v))
            .map(|(w, (u, v))| w.get() * (u.get() - v.get()))
            .sum()
    };
    dot(a, f_ba, f_aa) + dot(b, g_ab, g_bb)
}

/// MMD² from the three quadratic forms `T_xx = a' K_xx a`, `T_yy`, `T_xy`: `T_xx + T_yy -
/// 2 T_xy`, with the U-statistic's self terms (`(T - sum u_i^2) / (1 - sum u_i^2)`, 0 where
/// undefined) when `unbiased`. Returns the value and each self term's scale, which the
/// gradient reuses. Shared by the stored and the tiled host paths.
pub(crate) fn mmd2_from_forms<F: HostFloat>(
    [t_xx, t_yy, t_xy]: [f64; 3],
    (a, b): (&[F], &[F]),
    unbiased: bool,
) -> (f64, [f64; 2]) {
    let self_scale = |u: &[F]| {
        let diag: f64 = u.iter().map(|v| v.get() * v.get()).sum();
        match (unbiased, crate::kernel::unbiased_scale(diag)) {
            (false, _) => (0.0, 1.0),
            (true, Some(scale)) => (diag, scale),
            (true, None) => (0.0, 0.0),
        }
    };
    let ((diag_a, scale_a), (diag_b, scale_b)) = (self_scale(a), self_scale(b));
    let value = (t_xx - diag_a) * scale_a + (t_yy - diag_b) * scale_b - 2.0 * t_xy;
    (value, [scale_a, scale_b])
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
        assert!(worst < 1.0e-7, "worst relative error {worst:e}");
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
