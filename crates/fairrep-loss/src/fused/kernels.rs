//! The CubeCL kernels of the fused path and their launchers on [`CubeTensor`]s.
//!
//! Both kernels are the same map-reduce over the columns `j` of an implicit `n x m` matrix:
//! one cube owns [`BLOCK_ROWS`] consecutive rows (one unit per row), sweeps `j` in tiles of
//! `tile` points staged in shared memory, and keeps its accumulators in registers. Nothing of
//! size `n x m` exists at any time: memory is `O((n + m) d)`. Accumulation is float32; inputs
//! of another float dtype are cast to float32 on the way in and back on the way out.
//!
//! The entry points only index; the math is in the small `#[cube]` helpers below them.
use burn::backend::wgpu::CubeTensor;
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::{DType, Shape};

/// Rows per cube: one unit per row `i`.
pub const BLOCK_ROWS: u32 = 64;
/// Floats of shared memory per staged tile of `y` (`tile * d <= TILE_FLOATS`).
const TILE_FLOATS: usize = 4096;
/// The most columns one tile holds.
const MAX_TILE_COLS: usize = 64;
/// The largest point dimension the kernels take (each unit keeps two `d`-vectors in registers).
pub const MAX_FUSED_DIM: usize = 256;

// ---------------------------------------------------------------------------------------------
// Helpers (the math)

/// `|x_i - y_j|^2` as a sum of squared differences (no `|x|^2 + |y|^2 - 2<x, y>` expansion, so
/// clouds far from the origin keep their precision). `ys[offset..offset + d]` is `y_j`.
#[cube]
fn sq_dist(xi: &Array<f32>, ys: &[f32], offset: usize, #[comptime] d: usize) -> f32 {
    let mut acc = 0.0f32;
    #[unroll]
    for k in 0..d {
        let diff = xi[k] - ys[offset + k];
        acc += diff * diff;
    }
    acc
}

/// One step of the online log-sum-exp: the new running maximum, the factor `alpha` that
/// rescales everything accumulated so far, and the weight `beta` of the new term `z`, so that
/// `sum' = alpha * sum + beta` (and the same for any weighted sum). One `exp` per term.
#[cube]
fn lse_push(max: f32, z: f32) -> (f32, f32, f32) {
    let e = (-(z - max).abs()).exp();
    let grows = z > max;
    let alpha = select(grows, e, 1.0f32);
    let beta = select(grows, 1.0f32, e);
    (max.max(z), alpha, beta)
}

/// `acc = alpha * acc + beta * (ys[offset..offset + d] - xi)`: the displacement `y_j - x_i`
/// rather than `y_j`, so that `ybar_i - x_i` (what the gradient needs) has no cancellation for
/// clouds far from the origin.
#[cube]
fn axpby_diff(
    acc: &mut Array<f32>,
    alpha: f32,
    beta: f32,
    xi: &Array<f32>,
    ys: &[f32],
    offset: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for k in 0..d {
        acc[k] = alpha * acc[k] + beta * (ys[offset + k] - xi[k]);
    }
}

/// `acc += w * (ys[offset..offset + d] - xi)`.
#[cube]
fn add_scaled_diff(
    acc: &mut Array<f32>,
    w: f32,
    xi: &Array<f32>,
    ys: &[f32],
    offset: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for k in 0..d {
        acc[k] += w * (ys[offset + k] - xi[k]);
    }
}

/// The Gaussian mixture at squared distance `dist2`: `(sum_s w_s k_s, sum_s g_s k_s)` with
/// `k_s = exp(c_s dist2)`; `coef` holds the triples `(c_s, w_s, g_s)` =
/// `(-1 / (2 s^2), 1 / S, 1 / (S s^2))`.
#[cube]
fn gaussian_mix(dist2: f32, coef: &Tensor<f32>, n_bw: usize) -> (f32, f32) {
    let mut k = 0.0f32;
    let mut kp = 0.0f32;
    for s in 0..n_bw {
        let e = (coef[3 * s] * dist2).exp();
        k += coef[3 * s + 1] * e;
        kp += coef[3 * s + 2] * e;
    }
    (k, kp)
}

/// Row `row` of `x` into registers (zeros for a row past the end).
#[cube]
fn load_row(x: &Tensor<f32>, row: usize, active: bool, #[comptime] d: usize) -> Array<f32> {
    let mut xi = Array::<f32>::new(d);
    #[unroll]
    for k in 0..d {
        xi[k] = 0.0f32;
    }
    if active {
        #[unroll]
        for k in 0..d {
            xi[k] = x[row * x.stride(0) + k * x.stride(1)];
        }
    }
    xi
}

/// A `d`-vector of zeros in registers.
#[cube]
fn zeros(#[comptime] d: usize) -> Array<f32> {
    let mut acc = Array::<f32>::new(d);
    #[unroll]
    for k in 0..d {
        acc[k] = 0.0f32;
    }
    acc
}

/// The whole cube copies points `start..start + count` of `y` (and their scalars `w`) into
/// the shared tiles, strided over its units.
#[cube]
fn stage_tile(
    y: &Tensor<f32>,
    w: &Tensor<f32>,
    tile_y: &mut [f32],
    tile_w: &mut [f32],
    start: usize,
    count: usize,
    #[comptime] d: usize,
) {
    let units = CUBE_DIM_X as usize;
    let mut idx = UNIT_POS_X as usize;
    while idx < count * d {
        let c = idx / d;
        let k = idx % d;
        tile_y[idx] = y[(start + c) * y.stride(0) + k * y.stride(1)];
        idx += units;
    }
    let mut c = UNIT_POS_X as usize;
    while c < count {
        tile_w[c] = w[(start + c) * w.stride(0)];
        c += units;
    }
}

/// `min(remaining, tile)`: the number of points in the tile that starts here.
#[cube]
fn tile_len(remaining: usize, #[comptime] tile: usize) -> usize {
    let mut count = remaining;
    if count > tile {
        count = tile;
    }
    count
}

/// Writes `scale * acc` as row `row` of the contiguous `[n, d]` output.
#[cube]
fn store_row(
    out: &mut Tensor<f32>,
    row: usize,
    acc: &Array<f32>,
    scale: f32,
    #[comptime] d: usize,
) {
    #[unroll]
    for k in 0..d {
        out[row * d + k] = scale * acc[k];
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (indexing only)

/// `out_i = -eps LSE_j(h_j - |x_i - y_j|^2 / (2 eps))` and the barycentre displacement
/// `delta_i = sum_j pi_ij (y_j - x_i) = ybar_i - x_i`.
#[cube(launch)]
fn softmin_kernel(
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    h: &Tensor<f32>,
    out: &mut Tensor<f32>,
    delta: &mut Tensor<f32>,
    half_inv_eps: f32,
    eps: f32,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let n = x.shape(0);
    let m = y.shape(0);
    let row = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let active = row < n;
    let xi = load_row(x, row, active, d);
    let mut acc = zeros(d);
    // Stands for -inf (WGSL has no infinity literal); every logit is larger, LOG_ZERO included.
    let mut max = f32::new(-3.0e38f32);
    let mut sum = 0.0f32;
    let mut tile_y = Shared::<[f32]>::new_slice(tile * d);
    let mut tile_h = Shared::<[f32]>::new_slice(tile);

    let mut start = 0usize;
    while start < m {
        let count = tile_len(m - start, tile);
        stage_tile(y, h, &mut tile_y, &mut tile_h, start, count, d);
        sync_cube();
        if active {
            for c in 0..count {
                let z = tile_h[c] - half_inv_eps * sq_dist(&xi, &tile_y, c * d, d);
                let (new_max, alpha, beta) = lse_push(max, z);
                sum = alpha * sum + beta;
                axpby_diff(&mut acc, alpha, beta, &xi, &tile_y, c * d, d);
                max = new_max;
            }
        }
        sync_cube();
        start += tile;
    }
    if active {
        out[row] = -eps * (max + sum.ln());
        store_row(delta, row, &acc, 1.0f32 / sum, d);
    }
}

/// `r_i = sum_j b_j k(x_i, y_j)` and `grad_i = d r_i / d x_i = sum_j b_j k'(x_i, y_j) (y_j - x_i)`.
#[cube(launch)]
fn kernel_sum_kernel(
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    b: &Tensor<f32>,
    coef: &Tensor<f32>,
    out: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    n_bw: u32,
    #[comptime] d: usize,
    #[comptime] tile: usize,
) {
    let n = x.shape(0);
    let m = y.shape(0);
    let n_bw = n_bw as usize;
    let row = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let active = row < n;
    let xi = load_row(x, row, active, d);
    let mut acc = zeros(d);
    let mut sum = 0.0f32;
    let mut tile_y = Shared::<[f32]>::new_slice(tile * d);
    let mut tile_b = Shared::<[f32]>::new_slice(tile);

    let mut start = 0usize;
    while start < m {
        let count = tile_len(m - start, tile);
        stage_tile(y, b, &mut tile_y, &mut tile_b, start, count, d);
        sync_cube();
        if active {
            for c in 0..count {
                let (k, kp) = gaussian_mix(sq_dist(&xi, &tile_y, c * d, d), coef, n_bw);
                sum += tile_b[c] * k;
                add_scaled_diff(&mut acc, tile_b[c] * kp, &xi, &tile_y, c * d, d);
            }
        }
        sync_cube();
        start += tile;
    }
    if active {
        out[row] = sum;
        store_row(grad, row, &acc, 1.0f32, d);
    }
}

// ---------------------------------------------------------------------------------------------
// Launchers

/// Columns per tile for dimension `d`.
fn tile_cols(d: usize) -> usize {
    (TILE_FLOATS / d.max(1)).clamp(1, MAX_TILE_COLS)
}

/// A contiguous float32 output on the device of `like`.
fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let bytes = shape.num_elements().max(1) * core::mem::size_of::<f32>();
    let handle = like.client.empty(bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

fn cube_count(n: usize) -> CubeCount {
    CubeCount::Static((n as u32).div_ceil(BLOCK_ROWS).max(1), 1, 1)
}

fn dims2(t: &CubeTensor) -> [usize; 2] {
    let shape = t.meta.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "expected a matrix, got shape {shape:?}"
    );
    [shape[0], shape[1]]
}

/// Launches [`softmin_kernel`] on float32 tensors: returns `(out [n], ybar - x [n, d])`.
pub fn launch_softmin(
    x: CubeTensor,
    y: CubeTensor,
    h: CubeTensor,
    eps: f64,
) -> (CubeTensor, CubeTensor) {
    let [n, d] = dims2(&x);
    let [_, dy] = dims2(&y);
    assert_eq!(d, dy, "x and y must have the same dimension");
    assert!(
        d <= MAX_FUSED_DIM,
        "fused softmin: d = {d} exceeds MAX_FUSED_DIM = {MAX_FUSED_DIM}"
    );
    let out = empty_f32(&x, Shape::new([n]));
    let delta = empty_f32(&x, Shape::new([n, d]));
    if n == 0 {
        return (out, delta);
    }
    let client = x.client.clone();
    softmin_kernel::launch(
        &client,
        cube_count(n),
        CubeDim::new_1d(BLOCK_ROWS),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        h.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        (0.5 / eps) as f32,
        eps as f32,
        d,
        tile_cols(d),
    );
    (out, delta)
}

/// Launches [`kernel_sum_kernel`] on float32 tensors: returns `(r [n], dr/dx [n, d])`.
pub fn launch_kernel_sum(
    x: CubeTensor,
    y: CubeTensor,
    b: CubeTensor,
    bandwidths: &[f64],
) -> (CubeTensor, CubeTensor) {
    let [n, d] = dims2(&x);
    let [_, dy] = dims2(&y);
    assert_eq!(d, dy, "x and y must have the same dimension");
    assert!(
        d <= MAX_FUSED_DIM,
        "fused kernel sum: d = {d} exceeds MAX_FUSED_DIM = {MAX_FUSED_DIM}"
    );
    assert!(!bandwidths.is_empty(), "at least one bandwidth");
    let count = bandwidths.len() as f64;
    let coef: Vec<f32> = bandwidths
        .iter()
        .flat_map(|&s| {
            let s2 = s * s;
            [
                (-0.5 / s2) as f32,
                (1.0 / count) as f32,
                (1.0 / (count * s2)) as f32,
            ]
        })
        .collect();
    let coef = CubeTensor::new_contiguous(
        x.client.clone(),
        x.device.clone(),
        Shape::new([coef.len()]),
        x.client.create_from_slice(f32::as_bytes(&coef)),
        DType::F32,
    );
    let out = empty_f32(&x, Shape::new([n]));
    let grad = empty_f32(&x, Shape::new([n, d]));
    if n == 0 {
        return (out, grad);
    }
    let client = x.client.clone();
    kernel_sum_kernel::launch(
        &client,
        cube_count(n),
        CubeDim::new_1d(BLOCK_ROWS),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        b.into_tensor_arg(),
        coef.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        bandwidths.len() as u32,
        d,
        tile_cols(d),
    );
    (out, grad)
}
