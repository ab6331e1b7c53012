//! MMD² in host memory: each kernel block in one vectorised pass, its gradient from two matrix
//! products per cloud.
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{HostFloat, host_vec, sum_of, to_tensor, with_gradients};

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
/// of `crate::cost::squared_distances`), the gradient is assembled from two matrix products
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

    let (value, [scale_a, scale_b]) =
        super::mmd2_from_forms([kxx.form, kyy.form, kxy.form], (&a_h, &b_h), unbiased);
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
