//! The backend extension [`FusedOps`]: one trait, registered for Flex, NdArray, Cube (wgpu)
//! and Autodiff.
//!
//! - Flex and NdArray use the trait's default bodies: plain tensor operations that build the
//!   `n x m` matrix (the reference, fine at CPU sizes).
//! - Cube launches the CubeCL kernels of [`super::kernels`] (no `n x m` buffer).
//! - Autodiff runs the inner backend's op forward and registers a custom backward built from
//!   its second output (the barycentre displacements, or the kernel-sum gradient rows), so differentiating
//!   through it never materialises `n x m` either. Only the row cloud `x` is differentiated:
//!   the column cloud and the column weights must be constants (the routing panics otherwise,
//!   rather than return a gradient that silently misses their part).
#![allow(deprecated)] // NdArray: the selector stays listed until burn removes it.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Flex, NdArray, TensorMetadata, backend_extension};
use burn::tensor::{DType, FloatDType, Shape};

use super::kernels;

/// The autodiff float primitive (burn's `AutodiffTensor<B>`, the same for every checkpointing
/// strategy), named through the backend since its type is not exported.
type AutodiffTensor<B> = FloatTensor<Autodiff<B>>;

/// Fused map-reductions over the implicit `n x m` pair matrix of two point clouds.
#[backend_extension(Autodiff, Flex, NdArray, Cube)]
pub trait FusedOps: Backend {
    /// The softmin `out_i = -eps LSE_j(h_j - C(x_i, y_j) / eps)`, `C = |x - y|^2 / 2`, and the
    /// displacements to the barycentres, `delta_i = ybar_i - x_i = sum_j pi_ij (y_j - x_i)`, of
    /// the row-softmax plan `pi_ij = softmax_j(h_j - C_ij / eps)`. (The displacement, not
    /// `ybar_i` itself: the gradient `d out_i / d x_i = -delta_i` then has no cancellation for
    /// clouds far from the origin.)
    ///
    /// # Shapes
    /// - `x`: `[n, d]`, `y`: `[m, d]`, `h`: `[m]`
    /// - output: `(out [n], delta [n, d])`
    fn fused_softmin(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        h: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_softmin::<Self>(x, y, h, eps)
    }

    /// The Gaussian kernel sums `r_i = sum_j b_j k(x_i, y_j)`, `k = mean over s of
    /// exp(-|x - y|^2 / (2 s^2))`, and their gradients
    /// `d r_i / d x_i = sum_j b_j (mean over s of k_s / s^2) (y_j - x_i)`.
    ///
    /// # Shapes
    /// - `x`: `[n, d]`, `y`: `[m, d]`, `b`: `[m]`
    /// - output: `(r [n], dr/dx [n, d])`
    fn fused_kernel_sum(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bandwidths: Vec<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_kernel_sum::<Self>(x, y, b, &bandwidths)
    }
}

impl FusedOps for Flex {}
impl FusedOps for NdArray {}

/// Casts to float32 for the kernels when needed; returns the original dtype.
fn to_f32(t: FloatTensor<Cube>) -> (FloatTensor<Cube>, DType) {
    let dtype = t.dtype();
    if dtype == DType::F32 {
        (t, dtype)
    } else {
        (Cube::float_cast(t, FloatDType::F32), dtype)
    }
}

fn from_f32(t: FloatTensor<Cube>, dtype: DType) -> FloatTensor<Cube> {
    if dtype == DType::F32 {
        t
    } else {
        Cube::float_cast(t, dtype.into())
    }
}

impl FusedOps for Cube {
    fn fused_softmin(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        h: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (x, dtype) = to_f32(x);
        let (out, delta) = kernels::launch_softmin(x, to_f32(y).0, to_f32(h).0, eps);
        (from_f32(out, dtype), from_f32(delta, dtype))
    }

    fn fused_kernel_sum(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bandwidths: Vec<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (x, dtype) = to_f32(x);
        let (r, grad) = kernels::launch_kernel_sum(x, to_f32(y).0, to_f32(b).0, &bandwidths);
        (from_f32(r, dtype), from_f32(grad, dtype))
    }
}

/// `grad_x = grad[:, None] * rows` for an op whose output `i` depends on `x_i` only, with
/// `d out_i / d x_i = rows_i` (saved in the state).
#[derive(Debug)]
struct RowGradBackward;

impl<B: Backend> Backward<B, 1> for RowGradBackward {
    /// `d out_i / d x_i`, shape `[n, d]`.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let rows = ops.state;
            let n = rows.shape()[0];
            let grad = B::float_reshape(grad, Shape::new([n, 1]));
            grads.register::<B>(node.id, B::float_mul(grad, rows));
        }
    }
}

/// Registers `out` as a differentiable function of `x` with `d out_i / d x_i = rows_i`.
fn track_rows<B: Backend, C: CheckpointStrategy>(
    x: AutodiffTensor<B>,
    out: FloatTensor<B>,
    rows: impl FnOnce() -> FloatTensor<B>,
) -> AutodiffTensor<B> {
    match RowGradBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(rows(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

fn assert_constant<B: Backend>(t: &AutodiffTensor<B>, what: &str) {
    assert!(
        !t.is_tracked(),
        "fused op: {what} is differentiated by the tensor-op path only; pass it detached \
         (the fused ops differentiate the row cloud x)"
    );
}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_softmin(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        h: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert_constant(&y, "the column cloud y");
        assert_constant(&h, "the column potential h");
        let (out, delta) = B::fused_softmin(
            x.primitive().clone(),
            y.into_primitive(),
            h.into_primitive(),
            eps,
        );
        // Envelope theorem: d out_i / d x_i = x_i - ybar_i = -delta_i (MATH.md, "Gradient").
        let rows = delta.clone();
        let out = track_rows::<B, C>(x, out, move || B::float_neg(rows));
        (out, AutodiffTensor::<B>::new(delta))
    }

    fn fused_kernel_sum(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bandwidths: Vec<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert_constant(&y, "the column cloud y");
        assert_constant(&b, "the column weights b");
        let (r, grad) = B::fused_kernel_sum(
            x.primitive().clone(),
            y.into_primitive(),
            b.into_primitive(),
            bandwidths,
        );
        let rows = grad.clone();
        let r = track_rows::<B, C>(x, r, move || rows);
        (r, AutodiffTensor::<B>::new(grad))
    }
}

// ---------------------------------------------------------------------------------------------
// Reference bodies (tensor operations on the primitives; they build the n x m matrix)

/// `|x_i - y_j|^2 / 2`, `[n, m]`, both clouds centred on the mean of `y` first.
fn half_sq_dists<B: Backend>(x: FloatTensor<B>, y: FloatTensor<B>) -> FloatTensor<B> {
    let centre = B::float_mean_dim(y.clone(), 0); // [1, d]
    let x = B::float_sub(x, centre.clone());
    let y = B::float_sub(y, centre);
    let x2 = B::float_sum_dim(B::float_mul(x.clone(), x.clone()), 1); // [n, 1]
    let y2 = B::float_transpose(B::float_sum_dim(B::float_mul(y.clone(), y.clone()), 1)); // [1, m]
    let xy = B::float_matmul(x, B::float_transpose(y)); // [n, m]
    let d2 = B::float_sub(B::float_add(x2, y2), B::float_mul_scalar(xy, 2.0.into()));
    B::float_mul_scalar(B::float_clamp_min(d2, 0.0.into()), 0.5.into())
}

fn reference_softmin<B: Backend>(
    x: FloatTensor<B>,
    y: FloatTensor<B>,
    h: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let n = x.shape()[0];
    let m = y.shape()[0];
    let cost = half_sq_dists::<B>(x.clone(), y.clone());
    let h = B::float_reshape(h, Shape::new([1, m]));
    let z = B::float_sub(h, B::float_mul_scalar(cost, (1.0 / eps).into()));
    let max = B::float_max_dim(z.clone(), 1); // [n, 1]
    let p = B::float_exp(B::float_sub(z, max.clone()));
    let sum = B::float_sum_dim(p.clone(), 1); // [n, 1]
    let lse = B::float_add(B::float_log(sum.clone()), max);
    let out = B::float_reshape(B::float_mul_scalar(lse, (-eps).into()), Shape::new([n]));
    let ybar = B::float_div(B::float_matmul(p, y), sum);
    (out, B::float_sub(ybar, x))
}

fn reference_kernel_sum<B: Backend>(
    x: FloatTensor<B>,
    y: FloatTensor<B>,
    b: FloatTensor<B>,
    bandwidths: &[f64],
) -> (FloatTensor<B>, FloatTensor<B>) {
    assert!(!bandwidths.is_empty(), "at least one bandwidth");
    let n = x.shape()[0];
    let m = y.shape()[0];
    let d2 = B::float_mul_scalar(half_sq_dists::<B>(x.clone(), y.clone()), 2.0.into());
    let count = bandwidths.len() as f64;
    let mut k: Option<FloatTensor<B>> = None;
    let mut kp: Option<FloatTensor<B>> = None;
    for &s in bandwidths {
        let ks = B::float_exp(B::float_mul_scalar(d2.clone(), (-0.5 / (s * s)).into()));
        let w = B::float_mul_scalar(ks.clone(), (1.0 / count).into());
        let g = B::float_mul_scalar(ks, (1.0 / (count * s * s)).into());
        k = Some(k.map_or(w.clone(), |acc| B::float_add(acc, w)));
        kp = Some(kp.map_or(g.clone(), |acc| B::float_add(acc, g)));
    }
    let b = B::float_reshape(b, Shape::new([1, m]));
    let kb = B::float_mul(k.expect("one bandwidth"), b.clone());
    let r = B::float_reshape(B::float_sum_dim(kb, 1), Shape::new([n]));
    let kpb = B::float_mul(kp.expect("one bandwidth"), b); // [n, m]
    let row = B::float_sum_dim(kpb.clone(), 1); // [n, 1]
    let grad = B::float_sub(B::float_matmul(kpb, y), B::float_mul(x, row));
    (r, grad)
}
