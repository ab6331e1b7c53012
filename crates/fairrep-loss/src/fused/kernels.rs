//! The CubeCL kernels of the fused path and their launchers on [`CubeTensor`]s.
//!
//! Both kernels are the same map-reduce over the columns `j` of an implicit `n x m` matrix:
//! one cube owns [`BLOCK_ROWS`] consecutive rows (one unit per row), sweeps `j` in tiles of
//! `tile` points staged in shared memory, and keeps its accumulators in registers. Nothing of
//! size `n x m` exists at any time: memory is `O((n + m) d)`. Accumulation is float32; inputs
//! of another float dtype are cast to float32 on the way in and back on the way out.
//!
//! When there are few rows for many columns (one unit per row would leave most of a GPU
//! idle), the columns are split into `parts` contiguous chunks, one cube per (row block, chunk)
//! (see [`split_columns`]): each writes its partial accumulators (running maximum, sum,
//! weighted displacement or gradient), and a second kernel merges the `parts` partials of each
//! row. Memory stays `O(parts (n + m) d)` with `parts * n` bounded by [`SPLIT_TARGET_ROWS`].
//!
//! The entry points only index; the math is in the small `#[cube]` helpers below them.
use burn::backend::wgpu::CubeTensor;
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::{DType, Shape};

/// Rows per cube: one unit per row `i`.
pub(crate) const BLOCK_ROWS: u32 = 64;
/// Floats of shared memory per staged tile of `y` (`tile * d <= TILE_FLOATS`).
const TILE_FLOATS: usize = 4096;
/// The most columns one tile holds.
const MAX_TILE_COLS: usize = 64;
/// The largest point dimension the kernels take (each unit keeps two `d`-vectors in registers).
pub const MAX_FUSED_DIM: usize = 256;
/// Up to this dimension a unit also keeps `y_j - x_i` in registers between the distance and
/// the accumulation (a third `d`-vector: one subtraction per coordinate and pair fewer); above
/// it, it computes the difference twice rather than spill registers.
const CACHED_DIFF_MAX_DIM: usize = 32;
/// Rows times column chunks worth having in flight: enough units to fill a large GPU
/// (132 multiprocessors x 2048 resident threads on an H100 is 270k).
const SPLIT_TARGET_ROWS: usize = 1 << 18;
/// The fewest columns one chunk sweeps, so that writing and merging partials (`d + 2` floats
/// per row and chunk) stays small next to the sweep (about `3d` operations per column).
const SPLIT_MIN_COLS: usize = 128;

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

/// [`sq_dist`] that also keeps the displacement `diff = y_j - x_i` (in registers), so that the
/// accumulation after it does not compute it again. For `d <= CACHED_DIFF_MAX_DIM`.
#[cube]
fn sq_dist_keep(
    xi: &Array<f32>,
    ys: &[f32],
    offset: usize,
    diff: &mut Array<f32>,
    #[comptime] d: usize,
) -> f32 {
    let mut acc = 0.0f32;
    #[unroll]
    for k in 0..d {
        let t = ys[offset + k] - xi[k];
        diff[k] = t;
        acc += t * t;
    }
    acc
}

/// `acc += w * diff`.
#[cube]
fn add_scaled(acc: &mut Array<f32>, w: f32, diff: &Array<f32>, #[comptime] d: usize) {
    #[unroll]
    for k in 0..d {
        acc[k] += w * diff[k];
    }
}

/// `acc *= scale`.
#[cube]
fn scale_in_place(acc: &mut Array<f32>, scale: f32, #[comptime] d: usize) {
    #[unroll]
    for k in 0..d {
        acc[k] *= scale;
    }
}

/// `acc += w * (ys[offset..offset + d] - xi)`. The softmin accumulates the displacement
/// `y_j - x_i` rather than `y_j`, so that `ybar_i - x_i` (what the gradient needs) has no
/// cancellation for clouds far from the origin.
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

/// `min(begin + chunk, m)`: where the chunk that starts at `begin` ends.
#[cube]
fn column_end(begin: usize, chunk: usize, m: usize) -> usize {
    let mut end = begin + chunk;
    if end > m {
        end = m;
    }
    end
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
/// `delta_i = sum_j pi_ij (y_j - x_i) = ybar_i - x_i`, over the columns of chunk `CUBE_POS_Y`
/// (`chunk` columns each).
///
/// With `split`, the chunk's partials go to slot `p * n + i`: `out` the running maximum `M`,
/// `sums` the sum of `exp(z_j - M)`, `delta` the same-weighted sum of displacements; without,
/// `out` and `delta` are final (and `sums` is not touched).
#[cube(launch)]
fn softmin_kernel(
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    h: &Tensor<f32>,
    out: &mut Tensor<f32>,
    sums: &mut Tensor<f32>,
    delta: &mut Tensor<f32>,
    half_inv_eps: f32,
    eps: f32,
    chunk: u32,
    #[comptime] d: usize,
    #[comptime] tile: usize,
    #[comptime] split: bool,
) {
    let n = x.shape(0);
    let m = y.shape(0);
    let row = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let active = row < n;
    let xi = load_row(x, row, active, d);
    let mut acc = zeros(d);
    let cache = comptime!(d <= CACHED_DIFF_MAX_DIM);
    let mut diff = zeros(d);
    // Stands for -inf (WGSL has no infinity literal); every logit is larger, LOG_ZERO included.
    let mut max = f32::new(-3.0e38f32);
    let mut sum = 0.0f32;
    let mut tile_y = Shared::<[f32]>::new_slice(tile * d);
    let mut tile_h = Shared::<[f32]>::new_slice(tile);

    let begin = CUBE_POS_Y as usize * chunk as usize;
    let end = column_end(begin, chunk as usize, m);
    let mut start = begin;
    while start < end {
        let count = tile_len(end - start, tile);
        stage_tile(y, h, &mut tile_y, &mut tile_h, start, count, d);
        sync_cube();
        if active {
            for c in 0..count {
                let dist2 = if cache {
                    sq_dist_keep(&xi, &tile_y, c * d, &mut diff, d)
                } else {
                    sq_dist(&xi, &tile_y, c * d, d)
                };
                let z = tile_h[c] - half_inv_eps * dist2;
                // Online log-sum-exp: rescale what is accumulated only when the maximum grows
                // (rarely, after the first terms), so a term costs one `exp`.
                if z > max {
                    let scale = (max - z).exp();
                    sum *= scale;
                    scale_in_place(&mut acc, scale, d);
                    max = z;
                }
                let e = (z - max).exp();
                sum += e;
                if cache {
                    add_scaled(&mut acc, e, &diff, d);
                } else {
                    add_scaled_diff(&mut acc, e, &xi, &tile_y, c * d, d);
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if active {
        if split {
            let slot = CUBE_POS_Y as usize * n + row;
            out[slot] = max;
            sums[slot] = sum;
            store_row(delta, slot, &acc, 1.0f32, d);
        } else {
            out[row] = -eps * (max + sum.ln());
            store_row(delta, row, &acc, 1.0f32 / sum, d);
        }
    }
}

/// Merges the `parts` partials of [`softmin_kernel`] (shapes `[parts, n]`, `[parts, n]` and
/// `[parts * n, d]`) into `out [n]` and `delta [n, d]`.
#[cube(launch)]
fn softmin_merge_kernel(
    maxes: &Tensor<f32>,
    sums: &Tensor<f32>,
    accs: &Tensor<f32>,
    out: &mut Tensor<f32>,
    delta: &mut Tensor<f32>,
    eps: f32,
    #[comptime] d: usize,
) {
    let parts = maxes.shape(0);
    let n = maxes.shape(1);
    let row = ABSOLUTE_POS_X as usize;
    if row < n {
        let mut big = f32::new(-3.0e38f32);
        for p in 0..parts {
            big = big.max(maxes[p * n + row]);
        }
        let mut sum = 0.0f32;
        let mut acc = zeros(d);
        for p in 0..parts {
            let slot = p * n + row;
            let w = (maxes[slot] - big).exp();
            sum += w * sums[slot];
            #[unroll]
            for k in 0..d {
                acc[k] += w * accs[slot * d + k];
            }
        }
        out[row] = -eps * (big + sum.ln());
        store_row(delta, row, &acc, 1.0f32 / sum, d);
    }
}

/// `r_i = sum_j b_j k(x_i, y_j)` and `grad_i = d r_i / d x_i = sum_j b_j k'(x_i, y_j) (y_j - x_i)`,
/// over the columns of chunk `CUBE_POS_Y` (`chunk` columns each). With `split`, the chunk's
/// partial sums go to slot `p * n + i` of `out` and `grad`.
#[cube(launch)]
fn kernel_sum_kernel(
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    b: &Tensor<f32>,
    coef: &Tensor<f32>,
    out: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    n_bw: u32,
    chunk: u32,
    #[comptime] d: usize,
    #[comptime] tile: usize,
    #[comptime] split: bool,
) {
    let n = x.shape(0);
    let m = y.shape(0);
    let n_bw = n_bw as usize;
    let row = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let active = row < n;
    let xi = load_row(x, row, active, d);
    let mut acc = zeros(d);
    let cache = comptime!(d <= CACHED_DIFF_MAX_DIM);
    let mut diff = zeros(d);
    let mut sum = 0.0f32;
    let mut tile_y = Shared::<[f32]>::new_slice(tile * d);
    let mut tile_b = Shared::<[f32]>::new_slice(tile);

    let begin = CUBE_POS_Y as usize * chunk as usize;
    let end = column_end(begin, chunk as usize, m);
    let mut start = begin;
    while start < end {
        let count = tile_len(end - start, tile);
        stage_tile(y, b, &mut tile_y, &mut tile_b, start, count, d);
        sync_cube();
        if active {
            for c in 0..count {
                let dist2 = if cache {
                    sq_dist_keep(&xi, &tile_y, c * d, &mut diff, d)
                } else {
                    sq_dist(&xi, &tile_y, c * d, d)
                };
                let (k, kp) = gaussian_mix(dist2, coef, n_bw);
                sum += tile_b[c] * k;
                if cache {
                    add_scaled(&mut acc, tile_b[c] * kp, &diff, d);
                } else {
                    add_scaled_diff(&mut acc, tile_b[c] * kp, &xi, &tile_y, c * d, d);
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if active {
        let slot = if split {
            CUBE_POS_Y as usize * n + row
        } else {
            row
        };
        out[slot] = sum;
        store_row(grad, slot, &acc, 1.0f32, d);
    }
}

/// Adds up the `parts` partials of [`kernel_sum_kernel`] (shapes `[parts, n]` and
/// `[parts * n, d]`) into `out [n]` and `grad [n, d]`.
#[cube(launch)]
fn kernel_sum_merge_kernel(
    sums: &Tensor<f32>,
    grads: &Tensor<f32>,
    out: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    #[comptime] d: usize,
) {
    let parts = sums.shape(0);
    let n = sums.shape(1);
    let row = ABSOLUTE_POS_X as usize;
    if row < n {
        let mut sum = 0.0f32;
        let mut acc = zeros(d);
        for p in 0..parts {
            let slot = p * n + row;
            sum += sums[slot];
            #[unroll]
            for k in 0..d {
                acc[k] += grads[slot * d + k];
            }
        }
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

fn cube_count(n: usize, parts: usize) -> CubeCount {
    CubeCount::Static(
        (n as u32).div_ceil(BLOCK_ROWS).max(1),
        parts.max(1) as u32,
        1,
    )
}

/// How the `m` columns are cut for `n` rows: `(parts, chunk)`, `parts` chunks of `chunk`
/// columns (the last one shorter), every chunk non-empty. One chunk (no split) unless the rows
/// alone leave the GPU idle and each chunk keeps at least [`SPLIT_MIN_COLS`] columns.
pub(crate) fn split_columns(n: usize, m: usize) -> (usize, usize) {
    let wanted = SPLIT_TARGET_ROWS.div_ceil(n.max(1));
    let allowed = m / SPLIT_MIN_COLS;
    let parts = wanted.min(allowed).max(1);
    let chunk = m.div_ceil(parts).max(1);
    (m.div_ceil(chunk).max(1), chunk)
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
pub(crate) fn launch_softmin(
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
    let m = dims2(&y)[0];
    let (parts, chunk) = split_columns(n, m);
    let tile = tile_cols(d);
    if parts == 1 {
        let unused = empty_f32(&x, Shape::new([1]));
        softmin_kernel::launch(
            &client,
            cube_count(n, 1),
            CubeDim::new_1d(BLOCK_ROWS),
            x.into_tensor_arg(),
            y.into_tensor_arg(),
            h.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            unused.into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            (0.5 / eps) as f32,
            eps as f32,
            chunk as u32,
            d,
            tile,
            false,
        );
        return (out, delta);
    }
    let maxes = empty_f32(&x, Shape::new([parts, n]));
    let sums = empty_f32(&x, Shape::new([parts, n]));
    let accs = empty_f32(&x, Shape::new([parts * n, d]));
    softmin_kernel::launch(
        &client,
        cube_count(n, parts),
        CubeDim::new_1d(BLOCK_ROWS),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        h.into_tensor_arg(),
        maxes.clone().into_tensor_arg(),
        sums.clone().into_tensor_arg(),
        accs.clone().into_tensor_arg(),
        (0.5 / eps) as f32,
        eps as f32,
        chunk as u32,
        d,
        tile,
        true,
    );
    softmin_merge_kernel::launch(
        &client,
        cube_count(n, 1),
        CubeDim::new_1d(BLOCK_ROWS),
        maxes.into_tensor_arg(),
        sums.into_tensor_arg(),
        accs.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        eps as f32,
        d,
    );
    (out, delta)
}

/// Launches [`kernel_sum_kernel`] on float32 tensors: returns `(r [n], dr/dx [n, d])`.
pub(crate) fn launch_kernel_sum(
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
    let m = dims2(&y)[0];
    let (parts, chunk) = split_columns(n, m);
    let tile = tile_cols(d);
    let n_bw = bandwidths.len() as u32;
    if parts == 1 {
        kernel_sum_kernel::launch(
            &client,
            cube_count(n, 1),
            CubeDim::new_1d(BLOCK_ROWS),
            x.into_tensor_arg(),
            y.into_tensor_arg(),
            b.into_tensor_arg(),
            coef.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            n_bw,
            chunk as u32,
            d,
            tile,
            false,
        );
        return (out, grad);
    }
    let sums = empty_f32(&x, Shape::new([parts, n]));
    let grads = empty_f32(&x, Shape::new([parts * n, d]));
    kernel_sum_kernel::launch(
        &client,
        cube_count(n, parts),
        CubeDim::new_1d(BLOCK_ROWS),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        b.into_tensor_arg(),
        coef.into_tensor_arg(),
        sums.clone().into_tensor_arg(),
        grads.clone().into_tensor_arg(),
        n_bw,
        chunk as u32,
        d,
        tile,
        true,
    );
    kernel_sum_merge_kernel::launch(
        &client,
        cube_count(n, 1),
        CubeDim::new_1d(BLOCK_ROWS),
        sums.into_tensor_arg(),
        grads.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        d,
    );
    (out, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_split_covers_every_column_once() {
        for (n, m) in [
            (1, 1),
            (1, 5000),
            (7, 3000),
            (4096, 4096),
            (100_000, 100_000),
            (3, 0),
        ] {
            let (parts, chunk) = split_columns(n, m);
            assert!(parts >= 1 && chunk >= 1, "n={n} m={m}: {parts} x {chunk}");
            // Every chunk non-empty and together exactly the m columns.
            assert!(
                (parts - 1) * chunk < m.max(1),
                "n={n} m={m}: empty last chunk"
            );
            assert!(parts * chunk >= m, "n={n} m={m}: columns left out");
            if parts > 1 {
                assert!(chunk >= SPLIT_MIN_COLS, "n={n} m={m}: chunk {chunk}");
            }
        }
        // Few rows, many columns: split; many rows: one chunk.
        assert!(split_columns(16, 1 << 16).0 > 1);
        assert_eq!(split_columns(1 << 18, 1 << 16).0, 1);
    }
}
