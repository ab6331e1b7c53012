//! Benchmark: value + gradient of our Sinkhorn divergence and MMD against POT and GeomLoss,
//! on the same data, in the same invocation, at equal accuracy.
//!
//! ```text
//! cargo run --release --example bench_divergences -- \
//!     [--device flex|ndarray|wgpu] [--sizes 256,1024,4096] [--dims 16,64] [--eps 0.1] \
//!     [--tolerance 1e-3] [--repeats 3] [--pot-max-n 1024] [--slow-max-n 1024] \
//!     [--python .venv-fixtures/bin/python]
//! ```
//!
//! For each (n = m, d) it draws standardised Gaussian clouds (the second one shifted), writes
//! them as `.npy`, times our value + gradient (median of the repeats after a warm-up, reading
//! the result back to the host so the device is synchronised) at `--tolerance`, then runs
//! `scripts/bench_peers.py` on the same files: POT (float64, its tolerance 1e-5) up to
//! `--pot-max-n` points, GeomLoss (float32, like us) at its default eps-scaling 0.9 and, up to
//! `--slow-max-n` points, at a slow 0.99. The peers get as many threads as we use (all the
//! cores). Neither peer's accuracy is ours, so each peer row is compared with our run at
//! the tolerance equal to the marginal error that peer reached (`ours@err`, ours then checks
//! all three plans, GeomLoss's error is its x-y plan's): `peer/ours` is the time ratio at equal
//! or better accuracy. MMD has no tolerance: the ratio is against our one run. Without Python
//! and the peers installed (`scripts/requirements-fixtures.txt`), only our timings are printed.
//!
//! With `--paths host,host-tiled` (any of `routed`, `host`, `host-tiled`, `tensor-op`,
//! `fused`) it instead compares our implementations: each (kind, n, d, path) runs in a child
//! process of this example, which reports the median time of value + gradient and its peak
//! resident memory (`VmHWM` of `/proc/self/status`, the whole process: data, tensors,
//! allocator), with the CPU seconds per run (all threads; on a shared machine, the work whatever
//! the wall time), and the ratios to the first path are printed; the MMD then uses the bandwidths
//! of `--bandwidths` (default `0.5,1,2`); `--kinds sinkhorn,mmd` chooses the divergences.
//! Add `--peers` to run the peer comparison as well.
//!
//! ```text
//! cargo run --release -p fairrep-train --example bench_divergences -- \
//!     --paths host,host-tiled --sizes 1024,4096,10000 --dims 16 --repeats 2
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use fairrep_data::matrix::write_npy_f32;
use fairrep_loss::route::Path as Route;
use fairrep_loss::{
    Bandwidth, MmdConfig, MmdEstimator, SinkhornConfig, mmd2, mmd2_on, sinkhorn_divergence,
    sinkhorn_divergence_on,
};

struct Options {
    device: String,
    sizes: Vec<usize>,
    dims: Vec<usize>,
    eps: f64,
    tolerance: f64,
    repeats: usize,
    pot_max_n: usize,
    slow_max_n: usize,
    python: Option<String>,
    paths: Vec<String>,
    bandwidths: Vec<f64>,
    peers: bool,
    /// The kinds `--paths` compares (`sinkhorn`, `mmd`).
    kinds: Vec<String>,
    /// The Sinkhorn eps-scaling factor of `--paths` runs.
    scaling: f64,
    /// Child mode: one case (`sinkhorn` or `mmd`) on `--path`, size `--sizes`, `--dims`.
    case: Option<String>,
    path: String,
}

/// A divergence under benchmark: value, marginal error and iterations of one evaluation.
type Divergence<'a> = dyn Fn(Tensor<2>, Tensor<2>) -> (Tensor<1>, f64, usize) + 'a;
fn parse_list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| v.trim().parse().expect("a list of integers"))
        .collect()
}

fn options() -> Options {
    let mut o = Options {
        device: "flex".into(),
        sizes: vec![256, 1024, 4096],
        dims: vec![16, 64],
        eps: 0.1,
        tolerance: 1e-3,
        repeats: 3,
        pot_max_n: 1024,
        slow_max_n: 1024,
        python: None,
        paths: Vec::new(),
        bandwidths: vec![0.5, 1.0, 2.0],
        peers: false,
        kinds: vec!["sinkhorn".into(), "mmd".into()],
        scaling: 0.9,
        case: None,
        path: "routed".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--device" => o.device = value,
            "--sizes" => o.sizes = parse_list(&value),
            "--dims" => o.dims = parse_list(&value),
            "--eps" => o.eps = value.parse().expect("--eps"),
            "--tolerance" => o.tolerance = value.parse().expect("--tolerance"),
            "--repeats" => o.repeats = value.parse().expect("--repeats"),
            "--pot-max-n" => o.pot_max_n = value.parse().expect("--pot-max-n"),
            "--slow-max-n" => o.slow_max_n = value.parse().expect("--slow-max-n"),
            "--python" => o.python = Some(value),
            "--paths" => o.paths = value.split(',').map(|s| s.trim().to_string()).collect(),
            "--bandwidths" => {
                o.bandwidths = value
                    .split(',')
                    .map(|v| v.trim().parse().expect("a list of bandwidths"))
                    .collect()
            }
            "--peers" => {
                o.peers = true;
                i += 1;
                continue;
            }
            "--case" => o.case = Some(value),
            "--kinds" => o.kinds = value.split(',').map(|s| s.trim().to_string()).collect(),
            "--path" => o.path = value,
            "--scaling" => o.scaling = value.parse().expect("--scaling"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

/// Standard normal samples from a fixed-seed SplitMix64 + Box-Muller stream.
fn gaussian(len: usize, seed: u64, shift: f32) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 + shift
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of value + gradient, and the last value, marginal error (0 for MMD) and
/// iteration count (0 for MMD).
fn time_ours(
    device: &Device,
    x: &[f32],
    y: &[f32],
    n: usize,
    d: usize,
    repeats: usize,
    run: &Divergence<'_>,
) -> (f64, f64, f64, usize) {
    let ad = device.clone().autodiff();
    let mut times = Vec::new();
    let mut last = (0.0, 0.0, 0);
    for rep in 0..=repeats {
        let start = Instant::now();
        let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, d]), &ad).require_grad();
        let yt = Tensor::<2>::from_data(TensorData::new(y.to_vec(), [n, d]), &ad);
        let (value, err, iters) = run(xt.clone(), yt);
        let grads = value.backward();
        let g: Vec<f32> = xt
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap();
        let v: f32 = value.inner().into_scalar();
        assert!(g.iter().all(|v| v.is_finite()) && v.is_finite());
        if rep > 0 || repeats == 0 {
            times.push(start.elapsed().as_secs_f64());
        }
        last = (v as f64, err, iters);
    }
    (median(times), last.0, last.1, last.2)
}

/// Runs `scripts/bench_peers.py` on the clouds in `x` and `y`; `extra` arguments are passed
/// through (`--libs geomloss --scaling 0.99`, say).
#[allow(clippy::too_many_arguments)]
fn peers(
    python: &str,
    x: &Path,
    y: &Path,
    kind: &str,
    eps: f64,
    bandwidth: f64,
    repeats: usize,
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_peers.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--x", &x.to_string_lossy(), "--y", &y.to_string_lossy()])
        .args(["--kind", kind, "--eps", &eps.to_string()])
        .args([
            "--bandwidth",
            &bandwidth.to_string(),
            "--repeats",
            &repeats.to_string(),
        ])
        .args(["--threads", &threads().to_string()])
        .args(extra)
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Ok(out) => {
            eprintln!(
                "bench_peers.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            Vec::new()
        }
    }
}

/// The threads we compute with (rayon's pool: all the cores), given to the peers too.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One timing of ours: median seconds, value, marginal error, iterations, converged.
#[derive(Debug, Clone, Copy)]
struct Ours {
    secs: f64,
    value: f64,
    err: f64,
    iters: usize,
    converged: bool,
}

/// Our Sinkhorn divergence at `tolerance`, timed as in [`time_ours`].
#[allow(clippy::too_many_arguments)]
fn time_sinkhorn(
    device: &Device,
    x: &[f32],
    y: &[f32],
    n: usize,
    d: usize,
    eps: f64,
    tolerance: f64,
    repeats: usize,
) -> Ours {
    let config = SinkhornConfig {
        eps,
        scaling: 0.9,
        tolerance,
        max_iters: 50_000,
        check_every: 5,
    };
    let converged = std::cell::Cell::new(false);
    let run = |x, y| {
        let s = sinkhorn_divergence(x, y, None, None, &config).expect("the divergence computes");
        converged.set(s.converged);
        (s.value, s.marginal_error, s.n_iters)
    };
    let (secs, value, err, iters) = time_ours(device, x, y, n, d, repeats, &run);
    Ours {
        secs,
        value,
        err,
        iters,
        converged: converged.get(),
    }
}

/// A table row: the library's own columns, then ours at that accuracy and the ratio.
fn print_row(kind: &str, n: usize, d: usize, lib: &str, dtype: &str, peer: Ours, ours: Ours) {
    let mark = |o: &Ours| if o.converged || o.iters == 0 { "" } else { "*" };
    println!(
        "{kind:<9} {n:>5} {d:>3} {lib:<21} {dtype:<7} {:>9.4} {:>8.1e}{:<1} {:>13.7e} | {:>8.4} {:>8.1e}{:<1} {:>6} | {:>7.2}",
        peer.secs,
        peer.err,
        mark(&peer),
        peer.value,
        ours.secs,
        ours.err,
        mark(&ours),
        ours.iters,
        peer.secs / ours.secs,
    );
}

/// The path named on the command line (`routed`: `None`).
fn parse_path(name: &str) -> Option<Route> {
    match name {
        "routed" => None,
        "host" => Some(Route::Host),
        "host-tiled" => Some(Route::HostTiled),
        "tensor-op" => Some(Route::TensorOps),
        "fused" => Some(Route::Fused),
        other => panic!("unknown path {other}"),
    }
}

/// Peak resident memory of this process so far, MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// CPU seconds (user + system) this process has used so far (`/proc/self/stat`, 100 ticks a
/// second): on a machine shared with other jobs, the work done whatever the wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// The two clouds of one size, as everywhere in this benchmark.
fn clouds(n: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    (
        gaussian(n * d, 1 + n as u64 * 31 + d as u64, 0.0),
        gaussian(n * d, 2 + n as u64 * 37 + d as u64, 0.5),
    )
}

/// Child mode: one case on one path, its timing and peak memory as one JSON line.
fn run_case(o: &Options, device: &Device, kind: &str) {
    let (n, d) = (o.sizes[0], o.dims[0]);
    let (x, y) = clouds(n, d);
    let path = parse_path(&o.path);
    let cpu_start = cpu_seconds();
    let converged = std::cell::Cell::new(true);
    let softmins = std::cell::Cell::new(0);
    let ours = match kind {
        "sinkhorn" => {
            let config = SinkhornConfig {
                eps: o.eps,
                scaling: o.scaling,
                tolerance: o.tolerance,
                max_iters: 50_000,
                check_every: 5,
            };
            let run = |x, y| {
                let s = match path {
                    Some(p) => sinkhorn_divergence_on(p, x, y, None, None, &config),
                    None => sinkhorn_divergence(x, y, None, None, &config),
                }
                .expect("the divergence computes");
                converged.set(s.converged);
                softmins.set(s.n_softmins);
                (s.value, s.marginal_error, s.n_iters)
            };
            time_ours(device, &x, &y, n, d, o.repeats, &run)
        }
        "mmd" => {
            let config = MmdConfig {
                bandwidth: Bandwidth::Fixed(o.bandwidths.clone()),
                estimator: MmdEstimator::Biased,
            };
            let run = |x, y| {
                let v = match path {
                    Some(p) => mmd2_on(p, x, y, None, None, &config).map(|o| o.value),
                    None => mmd2(x, y, None, None, &config),
                }
                .expect("the divergence computes");
                (v, 0.0, 0)
            };
            time_ours(device, &x, &y, n, d, o.repeats, &run)
        }
        other => panic!("unknown case {other}"),
    };
    let (secs, value, err, iters) = ours;
    println!(
        "{}",
        serde_json::json!({
            "secs": secs, "value": value, "err": err, "iters": iters,
            "softmins": softmins.get(),
            "converged": converged.get(), "rss_mib": peak_rss_mib(),
            "cpu_per_run": (cpu_seconds() - cpu_start) / (o.repeats + 1) as f64,
        })
    );
}

/// Our paths against each other, each case in a child process (see the crate docs).
fn compare_paths(o: &Options) {
    let exe = std::env::current_exe().expect("the benchmark's own executable");
    println!(
        "device: {}; {} threads; eps = {}; tolerance {:e}; MMD bandwidths {:?}; float32; \
         seconds: median of {} runs of value + gradient (x tracked); peak RSS of the process",
        o.device,
        threads(),
        o.eps,
        o.tolerance,
        o.bandwidths,
        o.repeats.max(1)
    );
    println!(
        "{:<9} {:>6} {:>3} {:<11} {:>9} {:>9} {:>9} {:>14} {:>6} {:>6} {:>8} | {:>8} {:>8}",
        "kind",
        "n",
        "d",
        "path",
        "seconds",
        "CPU s/run",
        "RSS MiB",
        "value",
        "iters",
        "passes",
        "marg.err",
        "t/first",
        "RSS/first"
    );
    let bandwidths: Vec<String> = o.bandwidths.iter().map(f64::to_string).collect();
    for &n in &o.sizes {
        for &d in &o.dims {
            for kind in o.kinds.iter().map(String::as_str) {
                let mut first: Option<(f64, f64)> = None;
                for path in &o.paths {
                    let out = Command::new(&exe)
                        .args(["--case", kind, "--path", path, "--device", &o.device])
                        .args(["--sizes", &n.to_string(), "--dims", &d.to_string()])
                        .args(["--eps", &o.eps.to_string()])
                        .args(["--tolerance", &o.tolerance.to_string()])
                        .args(["--scaling", &o.scaling.to_string()])
                        .args(["--repeats", &o.repeats.to_string()])
                        .args(["--bandwidths", &bandwidths.join(",")])
                        .output()
                        .expect("the benchmark runs itself");
                    let line = String::from_utf8_lossy(&out.stdout);
                    let Some(r) = line
                        .lines()
                        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    else {
                        let err = String::from_utf8_lossy(&out.stderr);
                        let last = err.lines().rev().find(|l| !l.trim().is_empty());
                        println!(
                            "{kind:<9} {n:>6} {d:>3} {path:<11} failed: {}",
                            last.unwrap_or("(no output)")
                        );
                        continue;
                    };
                    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
                    let (secs, rss) = (f("secs"), f("rss_mib"));
                    let (t0, r0) = *first.get_or_insert((secs, rss));
                    let mark = if r["converged"].as_bool() == Some(false) {
                        "*"
                    } else {
                        ""
                    };
                    println!(
                        "{kind:<9} {n:>6} {d:>3} {path:<11} {secs:>9.4} {:>9.3} {rss:>9.1} \
                         {:>14.7e} {:>6} {:>6} {:>7.1e}{mark:<1} | {:>8.2} {:>8.2}",
                        f("cpu_per_run"),
                        f("value"),
                        f("iters"),
                        f("softmins"),
                        f("err"),
                        secs / t0,
                        rss / r0,
                    );
                }
            }
        }
    }
}

fn main() {
    let o = options();
    let device = match o.device.as_str() {
        "flex" => Device::flex(),
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        other => panic!("unknown device {other}"),
    };
    if let Some(kind) = o.case.clone() {
        run_case(&o, &device, &kind);
        return;
    }
    if !o.paths.is_empty() {
        compare_paths(&o);
        if !o.peers {
            return;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = o.python.clone().unwrap_or_else(|| {
        let venv = root.join(".venv-fixtures/bin/python");
        if venv.exists() {
            venv.to_string_lossy().into_owned()
        } else {
            "python3".into()
        }
    });
    let dir = std::env::temp_dir().join(format!("fairrep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "device: {} ({:?}); {} threads (peers too); eps = {}; our tolerance {:e} (float32); \
         MMD bandwidth 1; times: median of {} runs of value + gradient, seconds",
        o.device,
        device,
        threads(),
        o.eps,
        o.tolerance,
        o.repeats
    );
    println!(
        "{:<9} {:>5} {:>3} {:<21} {:<7} {:>9} {:>9} {:>13} | {:>8} {:>9} {:>6} | {:>7}",
        "kind",
        "n",
        "d",
        "library",
        "dtype",
        "seconds",
        "marg.err",
        "value",
        "ours@err",
        "our err",
        "iters",
        "peer/ours"
    );
    for &n in &o.sizes {
        for &d in &o.dims {
            let x = gaussian(n * d, 1 + n as u64 * 31 + d as u64, 0.0);
            let y = gaussian(n * d, 2 + n as u64 * 37 + d as u64, 0.5);
            let (xp, yp) = (
                dir.join(format!("x{n}_{d}.npy")),
                dir.join(format!("y{n}_{d}.npy")),
            );
            write_npy_f32(&xp, &x, n, Some(d)).unwrap();
            write_npy_f32(&yp, &y, n, Some(d)).unwrap();

            // Sinkhorn: ours at the requested tolerance, then each peer against ours at the
            // accuracy that peer reached (runs cached by tolerance).
            let mut ours_at: Vec<(f64, Ours)> = Vec::new();
            let mut ours = |tolerance: f64| {
                if let Some((_, o)) = ours_at.iter().find(|(t, _)| *t == tolerance) {
                    return *o;
                }
                let run = time_sinkhorn(&device, &x, &y, n, d, o.eps, tolerance, o.repeats);
                ours_at.push((tolerance, run));
                run
            };
            let base = ours(o.tolerance);
            print_row("sinkhorn", n, d, "fairrep", "float32", base, base);
            let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
            if n <= o.pot_max_n {
                groups.push(("", vec!["--libs", "pot,pot-torch", "--dtype", "float64"]));
            }
            groups.push(("", vec!["--libs", "geomloss", "--dtype", "float32"]));
            if n <= o.slow_max_n {
                groups.push((
                    "(scaling .99)",
                    vec![
                        "--libs",
                        "geomloss",
                        "--dtype",
                        "float32",
                        "--scaling",
                        "0.99",
                    ],
                ));
            }
            for (suffix, args) in &groups {
                for peer in peers(&python, &xp, &yp, "sinkhorn", o.eps, 1.0, o.repeats, args) {
                    let err = peer["marginal_error"].as_f64().unwrap_or(f64::NAN);
                    let p = Ours {
                        secs: peer["seconds_median"].as_f64().unwrap_or(f64::NAN),
                        value: peer["value"].as_f64().unwrap_or(f64::NAN),
                        err,
                        iters: 0,
                        converged: true,
                    };
                    let lib = format!("{}{suffix}", peer["lib"].as_str().unwrap_or("?"));
                    let dtype = peer["dtype"].as_str().unwrap_or("?").to_string();
                    let matched = if err.is_finite() { ours(err) } else { base };
                    print_row("sinkhorn", n, d, &lib, &dtype, p, matched);
                }
            }

            let mmd = MmdConfig {
                bandwidth: Bandwidth::Fixed(vec![1.0]),
                estimator: MmdEstimator::Biased,
            };
            let run = move |x, y| {
                (
                    mmd2(x, y, None, None, &mmd).expect("the divergence computes"),
                    0.0,
                    0,
                )
            };
            let (secs, value, _, _) = time_ours(&device, &x, &y, n, d, o.repeats, &run);
            let base = Ours {
                secs,
                value,
                err: 0.0,
                iters: 0,
                converged: true,
            };
            print_row("mmd", n, d, "fairrep", "float32", base, base);
            let args = ["--libs", "numpy,geomloss", "--dtype", "float32"];
            for peer in peers(&python, &xp, &yp, "mmd", o.eps, 1.0, o.repeats, &args) {
                let p = Ours {
                    secs: peer["seconds_median"].as_f64().unwrap_or(f64::NAN),
                    value: peer["value"].as_f64().unwrap_or(f64::NAN),
                    err: 0.0,
                    iters: 0,
                    converged: true,
                };
                let lib = peer["lib"].as_str().unwrap_or("?");
                let dtype = peer["dtype"].as_str().unwrap_or("?");
                print_row("mmd", n, d, lib, dtype, p, base);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
