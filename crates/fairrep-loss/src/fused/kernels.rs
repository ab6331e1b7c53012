//! The CubeCL kernels of the fused path and their launchers on [`CubeTensor`]s.
//!
//! Both fused ops are the same map-reduce over the columns `j` of an implicit `n x m` matrix,
//! written once as [`sweep_kernel`]: one cube owns [`BLOCK_ROWS`] consecutive rows (one unit
//! per row), sweeps `j` in tiles of `tile` points staged in shared memory, and keeps its
//! accumulators in registers. Nothing of size `n x m` exists at any time: memory is
//! `O((n + m) d)`. Accumulation is float32; inputs of another float dtype are cast to float32
//! on the way in and back on the way out.
//!
//! Each row's result is a scalar and a weighted sum of displacements
//! `v_i = sum_j c_ij (y_j - x_i)`. The sweep computes the squared distances, keeps `v_i` and
//! adds the displacements; what differs between the ops (the scalar accumulators, the weights
//! `c_ij`, how partials merge, the final value) is a [`RowReduction`]:
//!
//! - [`Softmin`]: online log-sum-exp of `h_j - |x_i - y_j|^2 / (2 eps)`, `c_ij` the softmax
//!   weights (so `v_i` is the barycentre displacement);
//! - [`GaussianKernelSum`]: `sum_j b_j k(x_i, y_j)` for a mixture of Gaussian bandwidths,
//!   `c_ij = b_j k'(x_i, y_j)` (so `v_i` is the gradient w.r.t. `x_i`).
//!
//! When there are few rows for many columns (one unit per row would leave most of a GPU
//! idle), the columns are split into `parts` contiguous chunks, one cube per (row block, chunk)
//! (see [`split_columns`]): each writes its partial scalars ([`RowReduction::PARTIAL_SCALARS`]
//! floats) and displacement sum (`d` floats), and [`merge_kernel`] merges the `parts` partials
//! of each row. Memory stays `O(parts (n + m) d)` with `parts * n` bounded by
//! [`SPLIT_TARGET_ROWS`].
//!
//! The entry points only index; the math is in the small `#[cube]` helpers and the two
//! reductions.
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
/// Stands for -inf as the running maximum of an empty log-sum-exp (WGSL has no infinity
/// literal); every logit is larger, `LOG_ZERO` included.
const NEG_HUGE: f32 = -3.0e38;

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

/// `|x_i - y_j|^2` for `y_j = ys[offset..offset + d]`; up to [`CACHED_DIFF_MAX_DIM`] it also
/// leaves `y_j - x_i` in `diff` for [`add_displacement`].
#[cube]
fn column_dist(
    xi: &Array<f32>,
    ys: &[f32],
    offset: usize,
    diff: &mut Array<f32>,
    #[comptime] d: usize,
) -> f32 {
    if comptime!(d <= CACHED_DIFF_MAX_DIM) {
        sq_dist_keep(xi, ys, offset, diff, d)
    } else {
        sq_dist(xi, ys, offset, d)
    }
}

/// `acc += weight * (y_j - x_i)` for the column of the last [`column_dist`]: from the cached
/// `diff` up to [`CACHED_DIFF_MAX_DIM`], recomputed from `ys` above.
#[cube]
fn add_displacement(
    acc: &mut Array<f32>,
    weight: f32,
    xi: &Array<f32>,
    ys: &[f32],
    offset: usize,
    diff: &Array<f32>,
    #[comptime] d: usize,
) {
    if comptime!(d <= CACHED_DIFF_MAX_DIM) {
        add_scaled(acc, weight, diff, d);
    } else {
        add_scaled_diff(acc, weight, xi, ys, offset, d);
    }
}

/// Index of partial scalar `k` of slot `slot` in a `[PARTIAL_SCALARS, parts * n]` tensor
/// whose rows are `stride` apart.
#[cube]
fn partial_at(stride: usize, k: usize, slot: usize) -> usize {
    k * stride + slot
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

/// `acc += w * vecs[slot]`, row `slot` of the contiguous `[_, d]` tensor `vecs`.
#[cube]
fn add_scaled_row(
    acc: &mut Array<f32>,
    w: f32,
    vecs: &Tensor<f32>,
    slot: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for k in 0..d {
        acc[k] += w * vecs[slot * d + k];
    }
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
// The row reductions

/// What one fused op accumulates over the columns `j` of a row `i`, besides the displacement
/// sum `v_i = sum_j c_ij (y_j - x_i)` that the sweep keeps: scalar accumulators in registers,
/// the weight `c_ij` of each column, how the partials of column chunks merge, and the row's
/// final value.
///
/// [`sweep_kernel`] and [`merge_kernel`] are generic over it (one shader per reduction).
#[cube]
pub(crate) trait RowReduction: Send + Sync + 'static {
    /// The reduction's constants, set at launch.
    type Params: LaunchArg;
    /// The scalar accumulators of one row.
    type State: CubeType;
    /// Floats of [`Self::State`] a column chunk writes as its partial.
    const PARTIAL_SCALARS: usize;

    /// The accumulators before any column.
    fn init() -> Self::State;

    /// Folds column `j`, at squared distance `dist2 = |x_i - y_j|^2` and with column scalar
    /// `w_j`, into `state`; returns the weight `c_ij` of its displacement. When the scale of
    /// the accumulators changes it rescales the displacement sum `acc` too.
    fn accumulate(
        state: &mut Self::State,
        acc: &mut Array<f32>,
        params: &Self::Params,
        dist2: f32,
        w_j: f32,
        #[comptime] d: usize,
    ) -> f32;

    /// Writes `state` as the partial of slot `slot` of `partials` (`[PARTIAL_SCALARS, parts * n]`).
    fn write_partial(state: &Self::State, partials: &mut Tensor<f32>, slot: usize);

    /// The accumulators a merge of the `parts` partials of row `row` (slots `p * n + row`)
    /// starts from.
    fn merge_init(partials: &Tensor<f32>, row: usize, n: usize, parts: usize) -> Self::State;

    /// Folds the partial of slot `slot` into `state`; returns the weight of that chunk's
    /// displacement sum.
    fn merge_part(state: &mut Self::State, partials: &Tensor<f32>, slot: usize) -> f32;

    /// The row's value and the factor of its displacement sum in the second output.
    fn finish(state: &Self::State, params: &Self::Params) -> (f32, f32);
}

/// The softmin `out_i = -eps LSE_j(h_j - |x_i - y_j|^2 / (2 eps))` and the barycentre
/// displacement `delta_i = sum_j pi_ij (y_j - x_i)`, `pi_ij = softmax_j(...)`.
pub(crate) struct Softmin;

/// Constants of [`Softmin`].
#[derive(CubeLaunch, CubeType)]
pub(crate) struct SoftminParams {
    /// `1 / (2 eps)`.
    half_inv_eps: f32,
    /// `eps`.
    eps: f32,
}

/// An online log-sum-exp: `LSE = max + ln(sum)`, `sum = sum_j exp(z_j - max)`.
#[derive(CubeType)]
pub(crate) struct LogSumExp {
    max: f32,
    sum: f32,
}

#[cube]
impl RowReduction for Softmin {
    type Params = SoftminParams;
    type State = LogSumExp;
    const PARTIAL_SCALARS: usize = 2;

    fn init() -> LogSumExp {
        LogSumExp {
            max: f32::new(NEG_HUGE),
            sum: 0.0f32,
        }
    }

    fn accumulate(
        state: &mut LogSumExp,
        acc: &mut Array<f32>,
        params: &SoftminParams,
        dist2: f32,
        w_j: f32,
        #[comptime] d: usize,
    ) -> f32 {
        let z = w_j - params.half_inv_eps * dist2;
        // Online log-sum-exp: rescale what is accumulated only when the maximum grows
        // (rarely, after the first terms), so a term costs one `exp`.
        if z > state.max {
            let scale = (state.max - z).exp();
            state.sum *= scale;
            scale_in_place(acc, scale, d);
            state.max = z;
        }
        let e = (z - state.max).exp();
        state.sum += e;
        e
    }

    fn write_partial(state: &LogSumExp, partials: &mut Tensor<f32>, slot: usize) {
        let at_max = partial_at(partials.stride(0), 0, slot);
        let at_sum = partial_at(partials.stride(0), 1, slot);
        partials[at_max] = state.max;
        partials[at_sum] = state.sum;
    }

    fn merge_init(partials: &Tensor<f32>, row: usize, n: usize, parts: usize) -> LogSumExp {
        let mut big = f32::new(NEG_HUGE);
        for p in 0..parts {
            big = big.max(partials[partial_at(partials.stride(0), 0, p * n + row)]);
        }
        LogSumExp {
            max: big,
            sum: 0.0f32,
        }
    }

    fn merge_part(state: &mut LogSumExp, partials: &Tensor<f32>, slot: usize) -> f32 {
        let w = (partials[partial_at(partials.stride(0), 0, slot)] - state.max).exp();
        state.sum += w * partials[partial_at(partials.stride(0), 1, slot)];
        w
    }

    fn finish(state: &LogSumExp, params: &SoftminParams) -> (f32, f32) {
        (
            -params.eps * (state.max + state.sum.ln()),
            1.0f32 / state.sum,
        )
    }
}

/// The Gaussian kernel sums `r_i = sum_j b_j k(x_i, y_j)` and their gradients
/// `d r_i / d x_i = sum_j b_j k'(x_i, y_j) (y_j - x_i)`.
pub(crate) struct GaussianKernelSum;

/// Constants of [`GaussianKernelSum`]: the bandwidth coefficients of [`gaussian_mix`].
#[derive(CubeLaunch, CubeType)]
pub(crate) struct GaussianParams {
    /// The triples `(c_s, w_s, g_s)`, `3 n_bw` floats.
    coef: OwnedTensor<f32>,
    /// The number of bandwidths.
    n_bw: u32,
}

/// A plain running sum.
#[derive(CubeType)]
pub(crate) struct RunningSum {
    sum: f32,
}

#[cube]
impl RowReduction for GaussianKernelSum {
    type Params = GaussianParams;
    type State = RunningSum;
    const PARTIAL_SCALARS: usize = 1;

    fn init() -> RunningSum {
        RunningSum { sum: 0.0f32 }
    }

    fn accumulate(
        state: &mut RunningSum,
        _acc: &mut Array<f32>,
        params: &GaussianParams,
        dist2: f32,
        w_j: f32,
        #[comptime] _d: usize,
    ) -> f32 {
        let (k, kp) = gaussian_mix(dist2, &params.coef, params.n_bw as usize);
        state.sum += w_j * k;
        w_j * kp
    }

    fn write_partial(state: &RunningSum, partials: &mut Tensor<f32>, slot: usize) {
        let at = partial_at(partials.stride(0), 0, slot);
        partials[at] = state.sum;
    }

    fn merge_init(_partials: &Tensor<f32>, _row: usize, _n: usize, _parts: usize) -> RunningSum {
        RunningSum { sum: 0.0f32 }
    }

    fn merge_part(state: &mut RunningSum, partials: &Tensor<f32>, slot: usize) -> f32 {
        state.sum += partials[partial_at(partials.stride(0), 0, slot)];
        1.0f32
    }

    fn finish(state: &RunningSum, _params: &GaussianParams) -> (f32, f32) {
        (state.sum, 1.0f32)
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (indexing only)

/// One tile of the sweep for the row `xi`: folds the `count` staged columns into `state` and
/// `acc`, in column order. `diff` is the row's scratch for `y_j - x_i` (see [`column_dist`]).
#[cube]
#[allow(
    clippy::needless_range_loop,
    reason = "`#[cube]` code indexes: it has no iterators"
)]
fn sweep_tile<R: RowReduction>(
    state: &mut R::State,
    acc: &mut Array<f32>,
    params: &R::Params,
    xi: &Array<f32>,
    tile_y: &[f32],
    tile_w: &[f32],
    count: usize,
    diff: &mut Array<f32>,
    #[comptime] d: usize,
) {
    for c in 0..count {
        let dist2 = column_dist(xi, tile_y, c * d, diff, d);
        let weight = R::accumulate(state, acc, params, dist2, tile_w[c], d);
        add_displacement(acc, weight, xi, tile_y, c * d, &*diff, d);
    }
}

/// The reduction `R` of row `i` over the columns of chunk `CUBE_POS_Y` (`chunk` columns
/// each): `x [n, d]` the rows, `y [m, d]` the columns, `w [m]` the column scalars.
///
/// Without `split`, `out [n]` and `vecs [n, d]` get the final value and displacement sum; with
/// it, the chunk's partial goes to slot `p * n + i` of `out [PARTIAL_SCALARS, parts * n]` and
/// `vecs [parts * n, d]`, for [`merge_kernel`].
#[cube(launch)]
fn sweep_kernel<R: RowReduction>(
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    w: &Tensor<f32>,
    params: &R::Params,
    out: &mut Tensor<f32>,
    vecs: &mut Tensor<f32>,
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
    let mut diff = zeros(d);
    let mut state = R::init();
    let mut tile_y = Shared::<[f32]>::new_slice(tile * d);
    let mut tile_w = Shared::<[f32]>::new_slice(tile);

    let begin = CUBE_POS_Y as usize * chunk as usize;
    let end = column_end(begin, chunk as usize, m);
    let mut start = begin;
    while start < end {
        let count = tile_len(end - start, tile);
        stage_tile(y, w, &mut tile_y, &mut tile_w, start, count, d);
        sync_cube();
        if active {
            sweep_tile::<R>(
                &mut state, &mut acc, params, &xi, &tile_y, &tile_w, count, &mut diff, d,
            );
        }
        sync_cube();
        start += tile;
    }
    if active {
        if split {
            let slot = CUBE_POS_Y as usize * n + row;
            R::write_partial(&state, out, slot);
            store_row(vecs, slot, &acc, 1.0f32, d);
        } else {
            let (value, scale) = R::finish(&state, params);
            out[row] = value;
            store_row(vecs, row, &acc, scale, d);
        }
    }
}

/// Merges the `parts` partials of [`sweep_kernel`] (`partials [PARTIAL_SCALARS, parts * n]`,
/// `vecs [parts * n, d]`) into `out [n]` and `vec_out [n, d]`, chunk by chunk in order.
#[cube(launch)]
fn merge_kernel<R: RowReduction>(
    partials: &Tensor<f32>,
    vecs: &Tensor<f32>,
    params: &R::Params,
    out: &mut Tensor<f32>,
    vec_out: &mut Tensor<f32>,
    #[comptime] d: usize,
) {
    let n = out.shape(0);
    let parts = partials.shape(1) / n;
    let row = ABSOLUTE_POS_X as usize;
    if row < n {
        let mut state = R::merge_init(partials, row, n, parts);
        let mut acc = zeros(d);
        for p in 0..parts {
            let slot = p * n + row;
            let weight = R::merge_part(&mut state, partials, slot);
            add_scaled_row(&mut acc, weight, vecs, slot, d);
        }
        let (value, scale) = R::finish(&state, params);
        out[row] = value;
        store_row(vec_out, row, &acc, scale, d);
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

/// The row value `[n]` and displacement sum `[n, d]` of a fused op.
pub(crate) struct RowsOutput {
    /// One value per row, `[n]`.
    pub(crate) value: CubeTensor,
    /// One `d`-vector per row, `[n, d]`.
    pub(crate) vectors: CubeTensor,
}

/// Runs the reduction `R` of the rows `x [n, d]` over the columns `y [m, d]` with column
/// scalars `w [m]`: [`sweep_kernel`], and [`merge_kernel`] when [`split_columns`] splits the
/// columns. `params` makes `R`'s launch constants (once per launch). `op` names the op in
/// panics on bad shapes (bugs: the backend extension passes validated shapes).
fn launch_rows<R: RowReduction>(
    op: &str,
    x: CubeTensor,
    y: CubeTensor,
    w: CubeTensor,
    params: impl Fn() -> RuntimeArg<R::Params>,
) -> RowsOutput {
    let [n, d] = dims2(&x);
    let [m, dy] = dims2(&y);
    assert_eq!(d, dy, "{op}: x and y must have the same dimension");
    assert!(
        d <= MAX_FUSED_DIM,
        "{op}: d = {d} exceeds MAX_FUSED_DIM = {MAX_FUSED_DIM}"
    );
    let value = empty_f32(&x, Shape::new([n]));
    let vectors = empty_f32(&x, Shape::new([n, d]));
    if n == 0 {
        return RowsOutput { value, vectors };
    }
    let client = x.client.clone();
    let (parts, chunk) = split_columns(n, m);
    let tile = tile_cols(d);
    let split = parts > 1;
    let (out, vecs) = if split {
        (
            empty_f32(&x, Shape::new([R::PARTIAL_SCALARS, parts * n])),
            empty_f32(&x, Shape::new([parts * n, d])),
        )
    } else {
        (value.clone(), vectors.clone())
    };
    sweep_kernel::launch::<R>(
        &client,
        cube_count(n, parts),
        CubeDim::new_1d(BLOCK_ROWS),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        w.into_tensor_arg(),
        params(),
        out.clone().into_tensor_arg(),
        vecs.clone().into_tensor_arg(),
        chunk as u32,
        d,
        tile,
        split,
    );
    if split {
        merge_kernel::launch::<R>(
            &client,
            cube_count(n, 1),
            CubeDim::new_1d(BLOCK_ROWS),
            out.into_tensor_arg(),
            vecs.into_tensor_arg(),
            params(),
            value.clone().into_tensor_arg(),
            vectors.clone().into_tensor_arg(),
            d,
        );
    }
    RowsOutput { value, vectors }
}

/// The fused softmin ([`Softmin`]) on float32 tensors: returns `(out [n], ybar - x [n, d])`.
pub(crate) fn launch_softmin(
    x: CubeTensor,
    y: CubeTensor,
    h: CubeTensor,
    eps: f64,
) -> (CubeTensor, CubeTensor) {
    let params = || SoftminParamsLaunch::new((0.5 / eps) as f32, eps as f32);
    let rows = launch_rows::<Softmin>("fused softmin", x, y, h, params);
    (rows.value, rows.vectors)
}

/// The fused Gaussian kernel sum ([`GaussianKernelSum`]) on float32 tensors: returns
/// `(r [n], dr/dx [n, d])`.
pub(crate) fn launch_kernel_sum(
    x: CubeTensor,
    y: CubeTensor,
    b: CubeTensor,
    bandwidths: &[f64],
) -> (CubeTensor, CubeTensor) {
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
    let n_bw = bandwidths.len() as u32;
    let params = || GaussianParamsLaunch::new(coef.clone().into_tensor_arg(), n_bw);
    let rows = launch_rows::<GaussianKernelSum>("fused kernel sum", x, y, b, params);
    (rows.value, rows.vectors)
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
