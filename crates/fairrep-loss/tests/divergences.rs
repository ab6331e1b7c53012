//! The divergences checked three ways, on every device (Flex, NdArray, wgpu):
//!
//! - against fixtures from independent implementations, written by
//!   `scripts/fixtures/make_fixtures.py` (OTT-JAX cross-checked with POT for the Sinkhorn
//!   divergence, numpy/JAX for MMD; pinned versions and seeds in that script);
//! - against central finite differences of our own value, in float64;
//! - against invariants: `S(a, a) = 0`, symmetry, `S >= 0`, the translation closed form
//!   `S = |t|^2 / 2`, `MMD2_b(x, x) = 0`.
//!
//! The wgpu device is the software Vulkan in CI (`FAIRREP_REQUIRE_WGPU=1` there makes a
//! missing adapter a failure instead of a skip).

// Skips are printed with their reason.
#![allow(clippy::print_stderr)]
use std::path::PathBuf;

use burn::tensor::{DType, Device, DeviceKind, Tensor, TensorData};
use fairrep_loss::{
    Bandwidth, LossError, MmdConfig, MmdEstimator, SinkhornConfig, SinkhornOutput, mmd2, mmd2_on,
    mmd2_tensor_ops, mmd2_with_bandwidths, sinkhorn_divergence, sinkhorn_divergence_on,
    sinkhorn_divergence_tensor_ops,
};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Devices and precisions

/// The wgpu device if an adapter answers, `None` otherwise (a failure when CI requires it).
fn wgpu_device() -> Option<Device> {
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let t = Tensor::<1>::from_floats([1.0, 2.0], &device);
        let s: f32 = t.sum().into_scalar();
        (s == 3.0).then_some(device)
    });
    let device = probe.ok().flatten();
    if device.is_none() {
        assert!(
            std::env::var_os("FAIRREP_REQUIRE_WGPU").is_none(),
            "FAIRREP_REQUIRE_WGPU is set but no wgpu adapter is available"
        );
        eprintln!("no wgpu adapter: wgpu tests skipped");
    }
    device
}

/// Tolerances of one floating-point precision.
#[derive(Clone, Copy, Debug)]
struct Precision {
    dtype: DType,
    /// Relative tolerance on values.
    value_rtol: f64,
    /// Tolerance on gradients, relative to `max |grad|`.
    grad_rtol: f64,
    /// Sinkhorn marginal-error tolerance used to solve.
    solve_tol: f64,
}

const F32: Precision = Precision {
    dtype: DType::F32,
    value_rtol: 1e-5,
    grad_rtol: 1e-4,
    solve_tol: 1e-6,
};

const F64: Precision = Precision {
    dtype: DType::F64,
    value_rtol: 1e-9,
    grad_rtol: 1e-8,
    solve_tol: 1e-11,
};

fn matrix(rows: &[Vec<f64>], device: &Device, p: Precision) -> Tensor<2> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [n, d]), (device, p.dtype))
}

fn vector(v: &[f64], device: &Device, p: Precision) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), (device, p.dtype))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().try_to_vec_as::<f64>().unwrap()
}

fn scalar(t: Tensor<1>) -> f64 {
    to_vec(t)[0]
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[derive(Deserialize)]
struct FixtureFile<C> {
    cases: Vec<C>,
}

#[derive(Deserialize)]
struct SinkhornCase {
    name: String,
    x: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
    a: Vec<f64>,
    b: Vec<f64>,
    eps: f64,
    value: f64,
    grad_x: Vec<Vec<f64>>,
    grad_y: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FixtureBandwidth {
    Median(String),
    Fixed(Vec<f64>),
}

#[derive(Deserialize)]
struct MmdCase {
    name: String,
    x: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
    a: Vec<f64>,
    b: Vec<f64>,
    bandwidths: FixtureBandwidth,
    bandwidths_resolved: Vec<f64>,
    estimator: String,
    value: f64,
    grad_x: Vec<Vec<f64>>,
}

fn load<C: for<'de> Deserialize<'de>>(name: &str) -> Vec<C> {
    let path = fixture_path(name);
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text)
        .unwrap_or_else(|e| panic!("decompressing {}: {e}", path.display()));
    let file: FixtureFile<C> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    file.cases
}

/// `max_i |got_i - want_i| / max(max_i |want_i|, floor)`.
fn rel_err_max(got: &[f64], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max)
        / scale
}

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

/// Which implementation a fixture check runs: the one `fairrep_loss::route` picks for the
/// device, the tensor-op reference whatever the device, or the tiled host path of the CPU
/// devices (routed only from about a million pairs, far above the fixtures' sizes).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Routed,
    TensorOps,
    HostTiled,
}

type SinkhornFn = fn(
    Tensor<2>,
    Tensor<2>,
    Option<Tensor<1>>,
    Option<Tensor<1>>,
    &SinkhornConfig,
) -> Result<SinkhornOutput, LossError>;

/// Value and gradients of the Sinkhorn divergence on `device`.
fn sinkhorn_with_grads(
    case: &SinkhornCase,
    device: &Device,
    p: Precision,
    path: Path,
) -> (f64, Vec<f64>, Vec<f64>, bool) {
    let ad = device.clone().autodiff();
    let x = matrix(&case.x, &ad, p).require_grad();
    let y = matrix(&case.y, &ad, p).require_grad();
    let a = vector(&case.a, device, p);
    let b = vector(&case.b, device, p);
    let config = SinkhornConfig {
        eps: case.eps,
        scaling: 0.9,
        tolerance: p.solve_tol,
        max_iters: 20_000,
        check_every: 10,
    };
    let solve: SinkhornFn = match path {
        Path::Routed => sinkhorn_divergence,
        Path::TensorOps => sinkhorn_divergence_tensor_ops,
        Path::HostTiled => |x, y, a, b, config| {
            sinkhorn_divergence_on(fairrep_loss::route::Path::HostTiled, x, y, a, b, config)
        },
    };
    let out = solve(x.clone(), y.clone(), Some(a), Some(b), &config).unwrap();
    let grads = out.value.backward();
    let value = scalar(out.value.inner());
    let gx = to_vec(x.grad(&grads).expect("grad x"));
    let gy = to_vec(y.grad(&grads).expect("grad y"));
    (value, gx, gy, out.converged)
}

/// `max C / eps` of a case: float32 rounds every exponent `(f_i + g_j - C_ij) / eps` of the
/// plan to about `kappa * u` (u = 2^-24), which bounds the attainable gradient accuracy.
fn conditioning(case: &SinkhornCase) -> f64 {
    let pooled: Vec<&Vec<f64>> = case.x.iter().chain(&case.y).collect();
    let mut max_c: f64 = 0.0;
    for p in &pooled {
        for q in &pooled {
            let c: f64 = p.iter().zip(q.iter()).map(|(u, v)| (u - v) * (u - v)).sum();
            max_c = max_c.max(c / 2.0);
        }
    }
    max_c / case.eps
}

fn check_sinkhorn_fixtures(device: &Device, p: Precision, path: Path) {
    let cases: Vec<SinkhornCase> = load("sinkhorn.json.gz");
    assert!(cases.len() >= 20, "expected at least 20 Sinkhorn cases");
    let u = if p.dtype == DType::F64 {
        f64::EPSILON / 2.0
    } else {
        f32::EPSILON as f64 / 2.0
    };
    let mut failures = Vec::new();
    for case in &cases {
        let (value, gx, gy, converged) = sinkhorn_with_grads(case, device, p, path);
        // The reference at the inputs as this precision stores them: first-order correction
        // `<grad S, x_rounded - x>` (matters for clouds 1e3 from the origin in float32).
        let rounding = |rows: &[Vec<f64>], grad: &[Vec<f64>]| -> f64 {
            rows.iter()
                .flatten()
                .zip(grad.iter().flatten())
                .map(|(v, g)| {
                    let stored = if p.dtype == DType::F64 {
                        *v
                    } else {
                        *v as f32 as f64
                    };
                    g * (stored - v)
                })
                .sum()
        };
        let reference =
            case.value + rounding(&case.x, &case.grad_x) + rounding(&case.y, &case.grad_y);
        // Values near zero (identical clouds) are compared on the scale eps of the OT terms.
        let value_err = (value - reference).abs() / reference.abs().max(case.eps);
        // Gradients are `a_i (xbar_i - ybar_i)`: relative to max |grad|, with the weight times
        // the blur sqrt(eps) as the scale where the reference gradient vanishes.
        let a_max = case.a.iter().chain(&case.b).fold(0.0f64, |m, v| m.max(*v));
        let floor = a_max * case.eps.sqrt();
        let gx_err = rel_err_max(&gx, &flat(&case.grad_x), floor);
        let gy_err = rel_err_max(&gy, &flat(&case.grad_y), floor);
        let grad_tol = p.grad_rtol.max(20.0 * conditioning(case) * u);
        if !converged || value_err > p.value_rtol || gx_err > grad_tol || gy_err > grad_tol {
            failures.push(format!(
                "{}: converged={converged} value {value:e} vs {reference:e} (rel {value_err:.2e}), \
                 grad_x rel {gx_err:.2e}, grad_y rel {gy_err:.2e} (tolerance {grad_tol:.1e})",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{:?}: {} of {} Sinkhorn cases out of tolerance (value {:e}, grad {:e} or 20 kappa u):\n{}",
        p.dtype,
        failures.len(),
        cases.len(),
        p.value_rtol,
        p.grad_rtol,
        failures.join("\n")
    );
}

fn check_mmd_fixtures(device: &Device, p: Precision, path: Path) {
    let cases: Vec<MmdCase> = load("mmd.json.gz");
    assert!(cases.len() >= 10, "expected at least 10 MMD cases");
    let mut failures = Vec::new();
    for case in &cases {
        let ad = device.clone().autodiff();
        let x = matrix(&case.x, &ad, p).require_grad();
        let y = matrix(&case.y, &ad, p);
        let a = vector(&case.a, device, p);
        let b = vector(&case.b, device, p);
        let config = MmdConfig {
            bandwidth: match &case.bandwidths {
                FixtureBandwidth::Median(s) => {
                    assert_eq!(s, "median");
                    Bandwidth::Median
                }
                FixtureBandwidth::Fixed(v) => Bandwidth::Fixed(v.clone()),
            },
            estimator: match case.estimator.as_str() {
                "biased" => MmdEstimator::Biased,
                "unbiased" => MmdEstimator::Unbiased,
                other => panic!("unknown estimator {other}"),
            },
        };
        let (out_value, bandwidths) = match path {
            Path::Routed => {
                let out =
                    mmd2_with_bandwidths(x.clone(), y, Some(a.clone()), Some(b.clone()), &config)
                        .unwrap();
                (out.value, out.bandwidths)
            }
            Path::HostTiled => {
                let tiled = fairrep_loss::route::Path::HostTiled;
                let (a, b) = (Some(a.clone()), Some(b.clone()));
                let out = mmd2_on(tiled, x.clone(), y, a, b, &config).unwrap();
                (out.value, out.bandwidths)
            }
            Path::TensorOps => {
                let bandwidths = match &config.bandwidth {
                    Bandwidth::Fixed(v) => v.clone(),
                    Bandwidth::Median => vec![fairrep_loss::median_heuristic(&x, &y).unwrap()],
                };
                let value =
                    mmd2_tensor_ops(x.clone(), y, Some(a.clone()), Some(b.clone()), &config)
                        .unwrap();
                (value, bandwidths)
            }
        };
        let grads = out_value.backward();
        let value = scalar(out_value.inner());
        let gx = to_vec(x.grad(&grads).expect("grad x"));
        let bw_err = rel_err_max(&bandwidths, &case.bandwidths_resolved, 0.0);
        // The reference at the inputs as this precision stores them: the change from rounding
        // the inputs, evaluated with the float64 path (itself checked against the references
        // to 1e-9 by `mmd_matches_references_f64`); zero in float64.
        let shift = if p.dtype == DType::F64 {
            0.0
        } else {
            let round = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
                rows.iter()
                    .map(|r| r.iter().map(|v| *v as f32 as f64).collect())
                    .collect()
            };
            let f64_value = |xs: &[Vec<f64>], ys: &[Vec<f64>]| {
                let cpu = Device::flex();
                scalar(
                    mmd2(
                        matrix(xs, &cpu, F64),
                        matrix(ys, &cpu, F64),
                        Some(vector(&case.a, &cpu, F64)),
                        Some(vector(&case.b, &cpu, F64)),
                        &config,
                    )
                    .unwrap(),
                )
            };
            f64_value(&round(&case.x), &round(&case.y)) - f64_value(&case.x, &case.y)
        };
        let reference = case.value + shift;
        // MMD² is a difference of kernel means in [0, 1]: a small MMD² is compared on the
        // scale 0.1 of those means (float32 sums of 250,000 kernel values carry ~1e-7).
        let value_err = (value - reference).abs() / reference.abs().max(0.1);
        // Gradient scale where the reference vanishes: weight over the smallest bandwidth.
        let a_max = case.a.iter().fold(0.0f64, |m, v| m.max(*v));
        let s_min = case
            .bandwidths_resolved
            .iter()
            .fold(f64::INFINITY, |m, v| m.min(*v));
        let gx_err = rel_err_max(&gx, &flat(&case.grad_x), a_max / s_min);
        if value_err > p.value_rtol || gx_err > p.grad_rtol || bw_err > p.value_rtol {
            failures.push(format!(
                "{}: value {value:e} vs {:e} (rel {value_err:.2e}), grad rel {gx_err:.2e}, \
                 bandwidth rel {bw_err:.2e}",
                case.name, case.value
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{:?}: {} of {} MMD cases out of tolerance:\n{}",
        p.dtype,
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Finite differences and invariants

/// A small deterministic cloud (no RNG dependency): points on a twisted lattice.
fn cloud(n: usize, d: usize, shift: f64, seed: u64) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            (0..d)
                .map(|k| {
                    let t = (i * 7 + k * 13) as f64 + seed as f64 * 0.37;
                    (t * 0.61803).sin() * 1.3 + (t * 0.1).cos() * 0.4 + shift
                })
                .collect()
        })
        .collect()
}

fn sinkhorn_value(x: &[Vec<f64>], y: &[Vec<f64>], eps: f64, device: &Device, p: Precision) -> f64 {
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance: p.solve_tol,
        max_iters: 20_000,
        check_every: 10,
    };
    let out = sinkhorn_divergence(
        matrix(x, device, p),
        matrix(y, device, p),
        None,
        None,
        &config,
    )
    .unwrap();
    assert!(
        out.converged,
        "solve did not converge: {}",
        out.marginal_error
    );
    scalar(out.value)
}

fn sinkhorn_value_unchecked(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    eps: f64,
    device: &Device,
    p: Precision,
) -> f64 {
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance: p.solve_tol,
        max_iters: 2_000,
        check_every: 10,
    };
    let out = sinkhorn_divergence(
        matrix(x, device, p),
        matrix(y, device, p),
        None,
        None,
        &config,
    )
    .unwrap();
    scalar(out.value)
}

fn check_finite_differences(device: &Device) {
    let p = F64;
    let x = cloud(5, 3, 0.0, 1);
    let y = cloud(4, 3, 0.5, 2);
    let eps = 0.3;
    let ad = device.clone().autodiff();
    let xt = matrix(&x, &ad, p).require_grad();
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance: p.solve_tol,
        max_iters: 20_000,
        check_every: 10,
    };
    let out = sinkhorn_divergence(xt.clone(), matrix(&y, &ad, p), None, None, &config).unwrap();
    let analytic = to_vec(xt.grad(&out.value.backward()).unwrap());

    let mmd_config = MmdConfig {
        bandwidth: Bandwidth::Fixed(vec![0.5, 2.0]),
        estimator: MmdEstimator::Unbiased,
    };
    let xt2 = matrix(&x, &ad, p).require_grad();
    let mmd = mmd2(xt2.clone(), matrix(&y, &ad, p), None, None, &mmd_config).unwrap();
    let mmd_analytic = to_vec(xt2.grad(&mmd.backward()).unwrap());

    let h = 1e-5;
    let mut numeric = Vec::new();
    let mut mmd_numeric = Vec::new();
    for i in 0..x.len() {
        for k in 0..x[0].len() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[i][k] += h;
            xm[i][k] -= h;
            numeric.push(
                (sinkhorn_value(&xp, &y, eps, device, p) - sinkhorn_value(&xm, &y, eps, device, p))
                    / (2.0 * h),
            );
            let m = |xs: &[Vec<f64>]| {
                scalar(
                    mmd2(
                        matrix(xs, device, p),
                        matrix(&y, device, p),
                        None,
                        None,
                        &mmd_config,
                    )
                    .unwrap(),
                )
            };
            mmd_numeric.push((m(&xp) - m(&xm)) / (2.0 * h));
        }
    }
    let err = rel_err_max(&analytic, &numeric, 1e-12);
    assert!(
        err < 1e-6,
        "Sinkhorn gradient vs finite differences: rel {err:e}"
    );
    let err = rel_err_max(&mmd_analytic, &mmd_numeric, 1e-12);
    assert!(
        err < 1e-6,
        "MMD gradient vs finite differences: rel {err:e}"
    );
}

fn check_invariants(device: &Device, p: Precision) {
    let x = cloud(40, 4, 0.0, 3);
    let y = cloud(30, 4, 0.3, 4);
    let eps = 0.05;
    let tol = if p.dtype == DType::F64 { 1e-10 } else { 1e-5 };

    // Identical clouds stall the float64 cross solve (see `identical_clouds_converge_in_f64`):
    // their values are checked without the convergence flag.
    let s_xx = sinkhorn_value_unchecked(&x, &x, eps, device, p);
    assert!(s_xx.abs() < tol, "S(a, a) = {s_xx:e}, expected 0");

    let s_xy = sinkhorn_value(&x, &y, eps, device, p);
    let s_yx = sinkhorn_value(&y, &x, eps, device, p);
    assert!(s_xy > 0.0, "S >= 0 violated: {s_xy:e}");
    assert!(
        (s_xy - s_yx).abs() <= tol * s_xy.abs().max(1.0),
        "symmetry: S(a,b) = {s_xy:e}, S(b,a) = {s_yx:e}"
    );

    // A translated copy: S = |t|^2 / 2 exactly, for every eps.
    let t = [0.7, -0.2, 0.1, 0.4];
    let t2: f64 = t.iter().map(|v| v * v).sum();
    let shifted: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().zip(t).map(|(v, tk)| v + tk).collect())
        .collect();
    for eps in [0.01, 0.1, 1.0] {
        // A translated copy is a near-symmetric problem: unchecked flag, as above.
        let s = sinkhorn_value_unchecked(&x, &shifted, eps, device, p);
        assert!(
            (s - t2 / 2.0).abs() <= tol * 10.0 * t2,
            "translation eps={eps}: S = {s:e}, expected {:e}",
            t2 / 2.0
        );
    }

    // Far from the origin (translation invariance, float32 included).
    let far = |c: &[Vec<f64>]| -> Vec<Vec<f64>> {
        c.iter()
            .map(|r| r.iter().map(|v| v + 1.0e3).collect())
            .collect()
    };
    let s_far = sinkhorn_value(&far(&x), &far(&y), eps, device, p);
    let far_tol = if p.dtype == DType::F64 { 1e-9 } else { 1e-3 };
    assert!(
        (s_far - s_xy).abs() <= far_tol * s_xy,
        "offset by 1e3: S = {s_far:e}, at the origin {s_xy:e}"
    );

    // A single point against a cloud, and a single point against itself.
    let one = vec![vec![0.1, 0.2, 0.3, 0.4]];
    let s1 = sinkhorn_value(&one, &y, eps, device, p);
    assert!(s1.is_finite() && s1 > 0.0, "single point: S = {s1:e}");
    let s11 = sinkhorn_value_unchecked(&one, &one, eps, device, p);
    assert!(s11.abs() < tol, "single point against itself: S = {s11:e}");

    // MMD2_b(x, x) = 0, MMD2_b >= 0.
    let config = MmdConfig {
        bandwidth: Bandwidth::Median,
        estimator: MmdEstimator::Biased,
    };
    let m_xx = scalar(
        mmd2(
            matrix(&x, device, p),
            matrix(&x, device, p),
            None,
            None,
            &config,
        )
        .unwrap(),
    );
    assert!(m_xx.abs() < tol, "MMD2_b(x, x) = {m_xx:e}");
    let m_xy = scalar(
        mmd2(
            matrix(&x, device, p),
            matrix(&y, device, p),
            None,
            None,
            &config,
        )
        .unwrap(),
    );
    assert!(m_xy > 0.0, "MMD2_b(x, y) = {m_xy:e}");
}

fn check_zero_weights(device: &Device, p: Precision) {
    // Zero-weight points change nothing: S with a padded, zero-weighted cloud equals S without.
    let x = cloud(20, 3, 0.0, 5);
    let y = cloud(25, 3, 0.2, 6);
    let mut y_pad = y.clone();
    y_pad.extend(cloud(5, 3, 4.0, 7));
    let mut b = vec![1.0 / 25.0; 25];
    b.extend([0.0; 5]);
    let eps = 0.1;
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance: p.solve_tol,
        max_iters: 20_000,
        check_every: 10,
    };
    let plain = sinkhorn_value(&x, &y, eps, device, p);
    let out = sinkhorn_divergence(
        matrix(&x, device, p),
        matrix(&y_pad, device, p),
        None,
        Some(vector(&b, device, p)),
        &config,
    )
    .unwrap();
    let padded = scalar(out.value);
    assert!(padded.is_finite(), "zero weights gave {padded}");
    let tol = if p.dtype == DType::F64 { 1e-9 } else { 1e-4 };
    assert!(
        (padded - plain).abs() <= tol * plain.abs(),
        "zero-weight padding: {padded:e} vs {plain:e}"
    );
}

fn check_non_convergence_is_reported(device: &Device) {
    let x = cloud(50, 2, 0.0, 8);
    let y = cloud(50, 2, 1.0, 9);
    let config = SinkhornConfig {
        eps: 1e-3,
        scaling: 0.5,
        tolerance: 1e-12,
        max_iters: 3,
        check_every: 1,
    };
    let out = sinkhorn_divergence(
        matrix(&x, device, F32),
        matrix(&y, device, F32),
        None,
        None,
        &config,
    )
    .unwrap();
    assert!(
        !out.converged,
        "3 iterations at eps=1e-3 cannot reach 1e-12"
    );
    assert!(out.marginal_error.is_finite() && out.marginal_error > 1e-12);
    assert!(scalar(out.value).is_finite());
}

/// The tensor-op path (the GPU devices' path below the fused threshold, and the reference of
/// the host and fused paths) against the same fixtures, on the CPU: its final differentiable
/// step is checked here too, not only on the software Vulkan of CI.
#[test]
fn tensor_op_path_matches_references_on_flex() {
    let device = Device::flex();
    check_sinkhorn_fixtures(&device, F32, Path::TensorOps);
    check_mmd_fixtures(&device, F64, Path::TensorOps);
}

/// The tiled host path (costs and kernel values computed from the points, no stored matrix)
/// against the same fixtures and tolerances, both precisions, on the CPU.
#[test]
fn tiled_host_path_matches_references_on_flex() {
    let device = Device::flex();
    check_sinkhorn_fixtures(&device, F32, Path::HostTiled);
    check_sinkhorn_fixtures(&device, F64, Path::HostTiled);
    check_mmd_fixtures(&device, F32, Path::HostTiled);
    check_mmd_fixtures(&device, F64, Path::HostTiled);
}

/// Identical clouds are the near-symmetric case where plain alternating steps oscillate:
/// the float64 solve must still reach its 1e-11 tolerance (`sinkhorn_value` asserts it), and
/// the divergence is zero.
#[test]
fn identical_clouds_converge_in_f64() {
    let x = cloud(50, 3, 0.0, 10);
    let value = sinkhorn_value(&x, &x, 0.1, &Device::flex(), F64);
    assert!(value.abs() < 1e-12, "S(a, a) = {value:e}");
}

/// `n` standard normal points of dimension `d`, shifted by `shift` in every coordinate, from a
/// fixed-seed SplitMix64 + Box-Muller stream (the clouds of `examples/bench_divergences.rs`).
fn gaussian_cloud(n: usize, d: usize, seed: u64, shift: f64) -> Vec<Vec<f64>> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| {
                    let (u, v) = (next().max(1e-300), next());
                    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() + shift
                })
                .collect()
        })
        .collect()
}

/// The L1 errors of both marginals of the plan `P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`,
/// `C_ij = |x_i - y_j|^2 / 2`, summed in float64 from the points: an independent check of the
/// solver's own `marginal_error`.
fn plan_marginal_error(
    (x, a, f): (&[Vec<f64>], &[f64], &[f64]),
    (y, b, g): (&[Vec<f64>], &[f64], &[f64]),
    eps: f64,
) -> f64 {
    let mut rows = vec![0.0; x.len()];
    let mut cols = vec![0.0; y.len()];
    for (i, xi) in x.iter().enumerate() {
        for (j, yj) in y.iter().enumerate() {
            let c: f64 = xi.iter().zip(yj).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / 2.0;
            let p = a[i] * b[j] * ((f[i] + g[j] - c) / eps).exp();
            rows[i] += p;
            cols[j] += p;
        }
    }
    let l1 = |got: &[f64], want: &[f64]| -> f64 {
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).sum()
    };
    l1(&rows, a) + l1(&cols, b)
}

/// The eps-scaling schedule with the self problems started at the target eps and the
/// over-relaxed cross steps reaches the stated tolerance on the benchmark's problem (Gaussian
/// clouds in 16 dimensions, one shifted by 0.5 in every coordinate; eps = 0.1, scaling 0.9,
/// tolerance 1e-3; on these clouds in float32, at n = m = 300 on the stored host path, the
/// previous schedule converged in 169 iterations and this one in 129, measured with
/// `bench_divergences --case sinkhorn --path host --sizes 300 --dims 16`): `converged`, and
/// the marginal errors of all three plans recomputed from the returned
/// potentials in float64 are below the tolerance. Float64, so that the recomputation is exact
/// up to rounding; and the same problem on the tiled path in float32 reports convergence.
#[test]
fn the_schedule_reaches_its_tolerance_on_the_benchmark_problem() {
    let (n, d, eps, tolerance) = (300, 16, 0.1, 1e-3);
    let x = gaussian_cloud(n, d, 1 + n as u64 * 31 + d as u64, 0.0);
    let y = gaussian_cloud(n, d, 2 + n as u64 * 37 + d as u64, 0.5);
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance,
        max_iters: 2000,
        check_every: 5,
    };
    let device = Device::flex();
    let (xt, yt) = (matrix(&x, &device, F64), matrix(&y, &device, F64));
    let out = fairrep_loss::solve_potentials(&xt, &yt, None, None, &config).unwrap();
    assert!(out.converged, "marginal error {:e}", out.marginal_error);
    assert!(out.marginal_error < tolerance);
    let w = vec![1.0 / n as f64; n];
    let p = &out.potentials;
    let (f_ba, g_ab) = (to_vec(p.f_ba.clone()), to_vec(p.g_ab.clone()));
    let (f_aa, g_bb) = (to_vec(p.f_aa.clone()), to_vec(p.g_bb.clone()));
    let cross = plan_marginal_error((&x, &w, &f_ba), (&y, &w, &g_ab), eps);
    let self_x = plan_marginal_error((&x, &w, &f_aa), (&x, &w, &f_aa), eps);
    let self_y = plan_marginal_error((&y, &w, &g_bb), (&y, &w, &g_bb), eps);
    for (what, err) in [("cross", cross), ("x-x", self_x), ("y-y", self_y)] {
        assert!(err < tolerance, "{what} plan: marginal error {err:e}");
    }
    // The solver's own error is that of the cross plan here (the self plans are far tighter).
    assert!(
        (cross - out.marginal_error).abs() < 1e-9,
        "{cross:e} vs {:e}",
        out.marginal_error
    );
    let tiled = fairrep_loss::route::Path::HostTiled;
    let (xt, yt) = (matrix(&x, &device, F32), matrix(&y, &device, F32));
    let out = sinkhorn_divergence_on(tiled, xt, yt, None, None, &config).unwrap();
    assert!(
        out.converged,
        "tiled: marginal error {:e}",
        out.marginal_error
    );
    // Every iteration is at least one pass (a descent step one, an iteration at the target
    // eps two), and the last step four more.
    assert!(
        out.n_softmins >= out.n_iters + 4,
        "{} softmins",
        out.n_softmins
    );
}

/// The tiled MMD's gradients of both clouds (the cross block swept once, its column sums
/// giving `y`'s) against the tensor-op MMD, float64, with weights, both estimators; two row
/// blocks and two column chunks of the tiled sweep.
#[test]
fn tiled_mmd_gradients_of_both_clouds_match_the_tensor_ops() {
    let (n, m, d) = (70, 1700, 5);
    let x = cloud(n, d, 0.0, 3);
    let y = cloud(m, d, 0.3, 4);
    let a: Vec<f64> = (0..n)
        .map(|i| {
            if i % 9 == 4 {
                0.0
            } else {
                1.0 + (i % 3) as f64
            }
        })
        .collect();
    let total: f64 = a.iter().sum();
    let a: Vec<f64> = a.iter().map(|v| v / total).collect();
    let device = Device::flex().autodiff();
    for estimator in [MmdEstimator::Biased, MmdEstimator::Unbiased] {
        let config = MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![0.5, 1.0, 2.0]),
            estimator,
        };
        let run = |tiled: bool| {
            let xt = matrix(&x, &device, F64).require_grad();
            let yt = matrix(&y, &device, F64).require_grad();
            let at = Some(vector(&a, &device, F64));
            let value = if tiled {
                let path = fairrep_loss::route::Path::HostTiled;
                mmd2_on(path, xt.clone(), yt.clone(), at, None, &config)
                    .unwrap()
                    .value
            } else {
                mmd2_tensor_ops(xt.clone(), yt.clone(), at, None, &config).unwrap()
            };
            let v = scalar(value.clone());
            let grads = value.backward();
            (
                v,
                to_vec(xt.grad(&grads).unwrap()),
                to_vec(yt.grad(&grads).unwrap()),
            )
        };
        let (v1, gx1, gy1) = run(true);
        let (v0, gx0, gy0) = run(false);
        assert!(
            (v1 - v0).abs() <= 1e-12 * v0.abs(),
            "{estimator:?}: {v1} vs {v0}"
        );
        for (got, want, what) in [(&gx1, &gx0, "x"), (&gy1, &gy0, "y")] {
            let err = rel_err_max(got, want, 0.0);
            assert!(err < 1e-10, "{estimator:?} grad {what}: rel err {err:e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One instantiation per device

macro_rules! device_tests {
    ($module:ident, $device:expr, f64 = $has_f64:expr) => {
        mod $module {
            use super::*;

            fn device() -> Option<Device> {
                $device
            }

            fn device_f64() -> Option<Device> {
                let d = device().filter(|_| $has_f64)?;
                assert!(
                    d.supports_dtype(DType::F64),
                    "this device should support float64"
                );
                Some(d)
            }

            #[test]
            fn sinkhorn_matches_references_f32() {
                if let Some(d) = device() {
                    check_sinkhorn_fixtures(&d, F32, Path::Routed);
                }
            }

            /// Float64 fixtures run on Flex only (the slowest cases take a minute).
            #[test]
            fn sinkhorn_matches_references_f64() {
                if let Some(d) = device_f64().filter(|_| stringify!($module) == "flex") {
                    check_sinkhorn_fixtures(&d, F64, Path::Routed);
                }
            }

            #[test]
            fn mmd_matches_references_f32() {
                if let Some(d) = device() {
                    check_mmd_fixtures(&d, F32, Path::Routed);
                }
            }

            #[test]
            fn mmd_matches_references_f64() {
                if let Some(d) = device_f64() {
                    check_mmd_fixtures(&d, F64, Path::Routed);
                }
            }

            #[test]
            fn gradients_match_finite_differences() {
                if let Some(d) = device_f64() {
                    check_finite_differences(&d);
                }
            }

            #[test]
            fn invariants_hold_f32() {
                if let Some(d) = device() {
                    check_invariants(&d, F32);
                }
            }

            #[test]
            fn invariants_hold_f64() {
                if let Some(d) = device_f64() {
                    check_invariants(&d, F64);
                }
            }

            #[test]
            fn zero_weights_are_inert() {
                if let Some(d) = device() {
                    check_zero_weights(&d, F32);
                }
            }

            #[test]
            fn non_convergence_is_reported() {
                if let Some(d) = device() {
                    check_non_convergence_is_reported(&d);
                }
            }
        }
    };
}

device_tests!(flex, Some(Device::flex()), f64 = true);
#[allow(deprecated)]
mod ndarray_device {
    use super::*;
    pub(crate) fn get() -> Option<Device> {
        Some(Device::ndarray())
    }
}
device_tests!(ndarray, ndarray_device::get(), f64 = true);
device_tests!(wgpu, wgpu_device(), f64 = false);

// ---------------------------------------------------------------------------------------------
// Fused GPU kernels (src/fused): the wgpu kernels against the tensor-op path and against plain
// float64 loops; the CPU default bodies against the same loops.

mod fused {
    use super::*;
    use fairrep_loss::cost::{LOG_ZERO, squared_distances};
    use fairrep_loss::fused::{
        fused_kernel_sum, fused_softmin, mmd2_fused, sinkhorn_divergence_fused,
    };
    use fairrep_loss::route::{
        FUSED_MIN_PAIRS_GPU, FUSED_MIN_PAIRS_SOFTWARE, Kind, Path, fused_min_pairs, route,
    };
    use fairrep_loss::tensor_ops::softmin;

    /// Whether both divergences between `n` and `m` points of dimension 2 in float32 take the
    /// fused path on `device`.
    fn use_fused(device: &Device, n: usize, m: usize) -> bool {
        [Kind::Sinkhorn, Kind::Mmd]
            .iter()
            .all(|&k| route(k, device, DType::F32, [n, m, 2], false) == Ok(Path::Fused))
    }

    /// Relative tolerance on softmin values and kernel sums (to `max(max |want|, 1)`).
    const VALUE_RTOL: f64 = 1e-5;
    /// Relative tolerance on barycentres and gradients (to `max(max |want|, 1)`).
    const VEC_RTOL: f64 = 2e-5;
    /// Sinkhorn divergence, fused float32 against tensor-op float64: relative on the value,
    /// relative to `max |grad|` on the gradients (the float32 solve stops at marginal error 1e-5).
    const SINKHORN_VALUE_RTOL: f64 = 1e-5;
    const SINKHORN_GRAD_RTOL: f64 = 1e-4;
    /// MMD2, fused float32 against tensor-op float64, absolute.
    const MMD_VALUE_ATOL: f64 = 1e-6;

    /// A cloud rounded to float32, so that the float64 oracle sees the kernel's exact inputs.
    fn cloud32(n: usize, d: usize, shift: f64, seed: u64) -> Vec<Vec<f64>> {
        cloud(n, d, shift, seed)
            .into_iter()
            .map(|row| row.into_iter().map(|v| v as f32 as f64).collect())
            .collect()
    }

    /// `h_j`: log-weights of a non-uniform cloud, with zeros (`LOG_ZERO`) every 5th point.
    fn potential(m: usize) -> Vec<f64> {
        (0..m)
            .map(|j| {
                if j % 5 == 4 && m > 1 {
                    LOG_ZERO
                } else {
                    ((1.0 + (j as f64 * 0.7).sin() * 0.5) / m as f64).ln() as f32 as f64
                }
            })
            .collect()
    }

    fn sq(xi: &[f64], yj: &[f64]) -> f64 {
        xi.iter().zip(yj).map(|(a, b)| (a - b) * (a - b)).sum()
    }

    /// Float64 loops: `(out_i, ybar_i)` of the softmin.
    fn softmin_oracle(eps: f64, x: &[Vec<f64>], y: &[Vec<f64>], h: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = y[0].len();
        let (mut out, mut bary) = (Vec::new(), Vec::new());
        for xi in x {
            let z: Vec<f64> = y
                .iter()
                .zip(h)
                .map(|(yj, hj)| hj - 0.5 * sq(xi, yj) / eps)
                .collect();
            let max = z.iter().copied().fold(f64::MIN, f64::max);
            let w: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
            let s: f64 = w.iter().sum();
            out.push(-eps * (max + s.ln()));
            for k in 0..d {
                bary.push(w.iter().zip(y).map(|(wj, yj)| wj * yj[k]).sum::<f64>() / s);
            }
        }
        (out, bary)
    }

    /// Float64 loops: `(r_i, d r_i / d x_i)` of the Gaussian kernel sums.
    fn kernel_sum_oracle(
        x: &[Vec<f64>],
        y: &[Vec<f64>],
        b: &[f64],
        bw: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let d = y[0].len();
        let count = bw.len() as f64;
        let (mut out, mut grad) = (Vec::new(), Vec::new());
        for xi in x {
            let mut r = 0.0;
            let mut g = vec![0.0; d];
            for (yj, bj) in y.iter().zip(b) {
                let d2 = sq(xi, yj);
                let k: f64 = bw.iter().map(|s| (-d2 / (2.0 * s * s)).exp()).sum::<f64>() / count;
                let kp: f64 = bw
                    .iter()
                    .map(|s| (-d2 / (2.0 * s * s)).exp() / (s * s))
                    .sum::<f64>()
                    / count;
                r += bj * k;
                for (gk, (yk, xk)) in g.iter_mut().zip(yj.iter().zip(xi)) {
                    *gk += bj * kp * (yk - xk);
                }
            }
            out.push(r);
            grad.extend(g);
        }
        (out, grad)
    }

    const SHAPES: [(usize, usize, usize, f64); 7] = [
        (1, 1, 1, 0.0),
        (7, 300, 3, 0.0),
        (513, 129, 64, 0.0),
        (65, 70, 3, 1.0e3),  // far from the origin
        (64, 64, 1, 0.0),    // exactly one tile and one cube
        (9, 3000, 2, 0.0),   // columns split in two chunks, merged by a second kernel
        (3, 4500, 5, 1.0e2), // four chunks, far from the origin
    ];

    fn check_softmin(device: &Device) {
        for (n, m, d, shift) in SHAPES {
            let eps = 0.3;
            let x = cloud32(n, d, shift, 1);
            let y = cloud32(m, d, shift + 0.25, 2);
            let h = potential(m);
            let (want, want_bary) = softmin_oracle(eps, &x, &y, &h);
            let out = fused_softmin(
                eps,
                matrix(&x, device, F32),
                matrix(&y, device, F32),
                vector(&h, device, F32),
            );
            let err = rel_err_max(&to_vec(out.value), &want, 1.0);
            assert!(
                err < VALUE_RTOL,
                "softmin {n}x{m} d={d} shift={shift}: rel err {err:e}"
            );
            let err = rel_err_max(&to_vec(out.barycentre), &want_bary, 1.0);
            assert!(
                err < VEC_RTOL,
                "barycentre {n}x{m} d={d} shift={shift}: rel err {err:e}"
            );
            let want_delta: Vec<f64> = want_bary
                .iter()
                .enumerate()
                .map(|(t, b)| b - x[t / d][t % d])
                .collect();
            let err = rel_err_max(&to_vec(out.displacement), &want_delta, 1.0);
            assert!(
                err < VEC_RTOL,
                "displacement {n}x{m} d={d} shift={shift}: rel err {err:e}"
            );
        }
    }

    /// The fused softmin equals the tensor-op `sinkhorn::softmin` of this crate (float64, Flex).
    fn check_softmin_against_tensor_ops(device: &Device) {
        let flex = Device::flex();
        let (n, m, d, eps) = (33, 71, 5, 0.2);
        let x = cloud32(n, d, 0.0, 3);
        let y = cloud32(m, d, 0.5, 4);
        let h = potential(m);
        let (xt, yt) = (matrix(&x, &flex, F64), matrix(&y, &flex, F64));
        let pooled = Tensor::cat(vec![xt.clone(), yt.clone()], 0);
        let neg = squared_distances(xt, yt, &pooled).mul_scalar(-0.5 / eps);
        let want = to_vec(softmin(eps, neg, vector(&h, &flex, F64)));
        let got = fused_softmin(
            eps,
            matrix(&x, device, F32),
            matrix(&y, device, F32),
            vector(&h, device, F32),
        );
        let err = rel_err_max(&to_vec(got.value), &want, 1.0);
        assert!(
            err < VALUE_RTOL,
            "fused vs tensor-op softmin: rel err {err:e}"
        );
    }

    fn check_softmin_gradient(device: &Device) {
        let device = device.clone().autodiff();
        let (n, m, d, eps) = (37, 45, 3, 0.25);
        let x = cloud32(n, d, 0.0, 5);
        let y = cloud32(m, d, 0.3, 6);
        let h = potential(m);
        let w: Vec<f64> = (0..n).map(|i| 1.0 + (i % 3) as f64).collect();
        let xt = matrix(&x, &device, F32).require_grad();
        let out = fused_softmin(
            eps,
            xt.clone(),
            matrix(&y, &device, F32),
            vector(&h, &device, F32),
        );
        let grads = (out.value * vector(&w, &device, F32)).sum().backward();
        let got = to_vec(xt.grad(&grads).expect("gradient of x"));
        let (_, bary) = softmin_oracle(eps, &x, &y, &h);
        let want: Vec<f64> = (0..n * d)
            .map(|t| w[t / d] * (x[t / d][t % d] - bary[t]))
            .collect();
        let err = rel_err_max(&got, &want, 1.0);
        assert!(err < VEC_RTOL, "softmin gradient: rel err {err:e}");
    }

    fn check_kernel_sum(device: &Device) {
        let bw = [0.5, 1.0, 2.0];
        for (n, m, d, shift) in SHAPES {
            let x = cloud32(n, d, shift, 7);
            let y = cloud32(m, d, shift + 0.25, 8);
            let b: Vec<f64> = (0..m)
                .map(|j| if j % 5 == 4 { 0.0 } else { 1.0 / m as f64 })
                .collect();
            let (want, want_grad) = kernel_sum_oracle(&x, &y, &b, &bw);
            let out = fused_kernel_sum(
                matrix(&x, device, F32),
                matrix(&y, device, F32),
                vector(&b, device, F32),
                &bw,
            );
            let err = rel_err_max(&to_vec(out.value), &want, 1.0);
            assert!(
                err < VALUE_RTOL,
                "kernel sum {n}x{m} d={d}: rel err {err:e}"
            );
            let err = rel_err_max(&to_vec(out.gradient), &want_grad, 1.0);
            assert!(
                err < VEC_RTOL,
                "kernel sum gradient {n}x{m} d={d}: rel err {err:e}"
            );
        }
    }

    fn sinkhorn_config(tolerance: f64) -> SinkhornConfig {
        SinkhornConfig {
            eps: 0.5,
            scaling: 0.5,
            tolerance,
            max_iters: 2000,
            check_every: 5,
        }
    }

    /// Value, grad x, grad y of a divergence on `device` in precision `p`.
    fn value_and_grads(
        device: &Device,
        p: Precision,
        x: &[Vec<f64>],
        y: &[Vec<f64>],
        f: &dyn Fn(Tensor<2>, Tensor<2>, &Device) -> Tensor<1>,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let device = device.clone().autodiff();
        let xt = matrix(x, &device, p).require_grad();
        let yt = matrix(y, &device, p).require_grad();
        let value = f(xt.clone(), yt.clone(), &device);
        let v = scalar(value.clone());
        let grads = value.backward();
        (
            v,
            to_vec(xt.grad(&grads).unwrap()),
            to_vec(yt.grad(&grads).unwrap()),
        )
    }

    /// `sinkhorn_divergence_fused` on wgpu (float32) against the tensor-op
    /// `sinkhorn_divergence` on Flex in float64, with some weights of `a` zero.
    fn check_sinkhorn(device: &Device, shift: f64) {
        let (n, m, d) = (24, 17, 3);
        let x = cloud32(n, d, shift, 9);
        let y = cloud32(m, d, shift + 0.4, 10);
        let a: Vec<f64> = (0..n).map(|i| if i % 7 == 6 { 0.0 } else { 1.0 }).collect();
        let total: f64 = a.iter().sum();
        let a: Vec<f64> = a.iter().map(|v| v / total).collect();
        let (v0, gx0, gy0) = value_and_grads(&Device::flex(), F64, &x, &y, &|x, y, dev| {
            let out = sinkhorn_divergence(
                x,
                y,
                Some(vector(&a, dev, F64)),
                None,
                &sinkhorn_config(1e-6),
            )
            .unwrap();
            assert!(out.converged, "reference solve: {}", out.marginal_error);
            out.value
        });
        let (v1, gx1, gy1) = value_and_grads(device, F32, &x, &y, &|x, y, dev| {
            let out = sinkhorn_divergence_fused(
                x,
                y,
                Some(vector(&a, dev, F32)),
                None,
                &sinkhorn_config(1e-5),
            )
            .unwrap();
            assert!(out.converged, "fused solve: {}", out.marginal_error);
            out.value
        });
        let err = (v1 - v0).abs() / v0.abs();
        assert!(
            err < SINKHORN_VALUE_RTOL,
            "sinkhorn shift={shift}: fused {v1} vs {v0}, rel {err:e}"
        );
        for (got, want, what) in [(&gx1, &gx0, "x"), (&gy1, &gy0, "y")] {
            let err = rel_err_max(got, want, 0.0);
            assert!(
                err < SINKHORN_GRAD_RTOL,
                "sinkhorn grad {what} shift={shift}: rel err {err:e}"
            );
        }
    }

    /// `mmd2_fused` on wgpu (float32) against the tensor-op `mmd2` on Flex in float64, with
    /// some weights of `b` zero.
    fn check_mmd(device: &Device, estimator: MmdEstimator) {
        let (n, m, d) = (50, 37, 4);
        let x = cloud32(n, d, 0.0, 11);
        let y = cloud32(m, d, 0.3, 12);
        let b: Vec<f64> = (0..m).map(|j| if j % 6 == 5 { 0.0 } else { 1.0 }).collect();
        let total: f64 = b.iter().sum();
        let b: Vec<f64> = b.iter().map(|v| v / total).collect();
        let config = MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![0.5, 1.0, 2.0]),
            estimator,
        };
        let (v0, gx0, gy0) = value_and_grads(&Device::flex(), F64, &x, &y, &|x, y, dev| {
            mmd2(x, y, None, Some(vector(&b, dev, F64)), &config).unwrap()
        });
        let (v1, gx1, gy1) = value_and_grads(device, F32, &x, &y, &|x, y, dev| {
            mmd2_fused(x, y, None, Some(vector(&b, dev, F32)), &config).unwrap()
        });
        // MMD2 is a difference of O(1) terms: its error is absolute.
        let err = (v1 - v0).abs();
        assert!(
            err < MMD_VALUE_ATOL,
            "mmd {estimator:?}: fused {v1} vs tensor-op {v0}"
        );
        for (got, want, what) in [(&gx1, &gx0, "x"), (&gy1, &gy0, "y")] {
            let err = rel_err_max(got, want, 0.0);
            assert!(
                err < VEC_RTOL,
                "mmd {estimator:?} grad {what}: rel err {err:e}"
            );
        }
    }

    /// The hook: `mmd2` on wgpu above the threshold takes the fused path (no `n x m` buffer)
    /// and agrees with `mmd2` on Flex in float64.
    fn check_mmd_hook(device: &Device) {
        let n = 1024;
        assert!(use_fused(device, n, n));
        let x = cloud32(n, 2, 0.0, 15);
        let y = cloud32(n, 2, 0.2, 16);
        let config = MmdConfig {
            bandwidth: Bandwidth::Fixed(vec![1.0]),
            estimator: MmdEstimator::Biased,
        };
        let want = scalar(
            mmd2(
                matrix(&x, &Device::flex(), F64),
                matrix(&y, &Device::flex(), F64),
                None,
                None,
                &config,
            )
            .unwrap(),
        );
        let got = scalar(
            mmd2(
                matrix(&x, device, F32),
                matrix(&y, device, F32),
                None,
                None,
                &config,
            )
            .unwrap(),
        );
        assert!(
            (got - want).abs() < MMD_VALUE_ATOL,
            "mmd2 via the hook: {got} vs {want}"
        );
    }

    fn check_selection(device: &Device) {
        assert!(!use_fused(&Device::flex(), 1 << 16, 1 << 16));
        assert_eq!(
            fused_min_pairs(&ndarray_device::get().expect("ndarray")),
            None
        );
        // The software Vulkan of CI, or a hardware GPU: each has its measured threshold.
        let hardware = device.identity().is_some_and(|id| id.physical.is_some());
        let min = if hardware {
            FUSED_MIN_PAIRS_GPU
        } else {
            FUSED_MIN_PAIRS_SOFTWARE
        };
        assert_eq!(fused_min_pairs(device), Some(min));
        assert_eq!(fused_min_pairs(&device.clone().autodiff()), Some(min));
        assert!(!use_fused(device, 8, 8));
        assert!(!use_fused(device, min - 1, 1));
        assert!(use_fused(device, min, 1));
        assert!(use_fused(&device.clone().autodiff(), 1 << 12, 1 << 12));
    }

    #[test]
    fn default_bodies_match_the_oracle_on_flex() {
        let device = Device::flex();
        let (n, m, d, eps) = (9, 13, 2, 0.4);
        let x = cloud32(n, d, 0.0, 13);
        let y = cloud32(m, d, 0.2, 14);
        let h = potential(m);
        let (want, want_bary) = softmin_oracle(eps, &x, &y, &h);
        let out = fused_softmin(
            eps,
            matrix(&x, &device, F64),
            matrix(&y, &device, F64),
            vector(&h, &device, F64),
        );
        assert!(rel_err_max(&to_vec(out.value), &want, 1.0) < 1e-10);
        assert!(rel_err_max(&to_vec(out.barycentre), &want_bary, 1.0) < 1e-10);
        let b: Vec<f64> = vec![1.0 / m as f64; m];
        let (want, want_grad) = kernel_sum_oracle(&x, &y, &b, &[0.7, 1.5]);
        let out = fused_kernel_sum(
            matrix(&x, &device, F64),
            matrix(&y, &device, F64),
            vector(&b, &device, F64),
            &[0.7, 1.5],
        );
        assert!(rel_err_max(&to_vec(out.value), &want, 1.0) < 1e-10);
        assert!(rel_err_max(&to_vec(out.gradient), &want_grad, 1.0) < 1e-10);
    }

    /// One test for all wgpu checks: the device and the kernels compile once.
    #[test]
    fn wgpu_kernels_match_the_tensor_op_path() {
        let Some(device) = wgpu_device() else { return };
        check_selection(&device);
        check_softmin(&device);
        check_softmin_against_tensor_ops(&device);
        check_softmin_gradient(&device);
        check_kernel_sum(&device);
        check_sinkhorn(&device, 0.0);
        check_sinkhorn(&device, 1.0e3);
        check_mmd(&device, MmdEstimator::Biased);
        check_mmd(&device, MmdEstimator::Unbiased);
        check_mmd_hook(&device);
    }
}
