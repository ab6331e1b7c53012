//! Benchmark: the fused CubeCL kernels of `fairrep_loss::fused` against the tensor-op path, on
//! the same wgpu device, in the same invocation.
//!
//! ```text
//! cargo run --release --example bench_fused -- \
//!     [--sizes 1024,4096,16384,65536] [--dims 8,32] [--max-tensor-n 4096] [--repeats 3] \
//!     [--memory-n 50000] [--memory-d 8] [--memory-tensor]
//!     [--peers [--peer-libs keops,tensorized] [--python python3]]
//! ```
//!
//! For each n = m and d it times value + gradient (w.r.t. x, read back to the host so the
//! device is synchronised; median of the repeats after a warm-up) of
//!
//! - one softmin step: the tensor-op `sinkhorn::softmin` on the `-C / eps` matrix against
//!   `fused::fused_softmin` (custom backward from the barycentres);
//! - one Gaussian kernel sum `sum_j b_j k(x_i, y_j)` (3 bandwidths): tensor ops against
//!   `fused::fused_kernel_sum`;
//!
//! and prints the time ratio tensor / fused, the pair evaluations and exponentials per second
//! of the fused path (one `exp` per pair for the softmin, one per pair and bandwidth for the
//! kernel sum: the gradient comes from the same sweep), and the checksum `sum(grad_x)` of each
//! path (the clouds are reproducible, so `scripts/bench_fused_peers.py` prints the same
//! checksums for the same computation by other libraries). The tensor-op path is skipped above
//! `--max-tensor-n` (its `n x m` buffers).
//!
//! With `--peers`, it then runs `scripts/bench_fused_peers.py` (path relative to the working
//! directory, the repository root) for the same sizes, dimensions and repeats (GeomLoss and
//! KeOps, online and tensorized, on the CUDA device of that Python) and prints, per row, each
//! peer's time, the ratio peer / fused, and whether its checksum agrees with the fused one.
//!
//! Then, at `--memory-n`, it runs one fused softmin step and one fused kernel sum (value +
//! gradient) and prints the device memory the allocator reserved (`Device::memory_pool_usage`,
//! which only grows between cleanups, so it bounds the peak), against the `n x m` float32
//! buffer the tensor-op path would need; with `--memory-tensor`, the same for the tensor-op
//! path (only on a device with room for several `n x m` buffers). `--memory-n 0` skips that
//! part.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use fairrep_loss::cost::squared_distances;
use fairrep_loss::fused::{fused_kernel_sum, fused_softmin};
use fairrep_loss::route::fused_min_pairs;
use fairrep_loss::tensor_ops::softmin;

struct Options {
    sizes: Vec<usize>,
    dims: Vec<usize>,
    max_tensor_n: usize,
    repeats: usize,
    memory_n: usize,
    memory_d: usize,
    memory_tensor: bool,
    peers: bool,
    peer_libs: String,
    python: String,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| v.trim().parse().expect("a list of integers"))
        .collect()
}

fn options() -> Options {
    let mut o = Options {
        sizes: vec![1024, 4096],
        dims: vec![8, 32],
        max_tensor_n: 4096,
        repeats: 3,
        memory_n: 50_000,
        memory_d: 8,
        memory_tensor: false,
        peers: false,
        peer_libs: "keops,tensorized".to_string(),
        python: "python3".to_string(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--sizes" => o.sizes = parse_list(&value),
            "--dims" => o.dims = parse_list(&value),
            "--max-tensor-n" => o.max_tensor_n = value.parse().expect("--max-tensor-n"),
            "--repeats" => o.repeats = value.parse().expect("--repeats"),
            "--memory-n" => o.memory_n = value.parse().expect("--memory-n"),
            "--memory-d" => o.memory_d = value.parse().expect("--memory-d"),
            "--python" => o.python = value,
            "--peer-libs" => o.peer_libs = value,
            "--peers" => {
                o.peers = true;
                i += 1;
                continue;
            }
            "--memory-tensor" => {
                o.memory_tensor = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

/// A deterministic cloud in `[-1, 1]^d` (plus `shift`), no RNG dependency.
fn cloud(n: usize, d: usize, shift: f32, seed: u64, device: &Device) -> Tensor<2> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n * d)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + shift
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [n, d]), device)
}

const EPS: f64 = 0.1;
const BANDWIDTHS: [f64; 3] = [0.5, 1.0, 2.0];

/// Value + gradient of one softmin step; returns the host sum of the gradient (syncs), or the
/// device's error (an allocation the device refuses, say).
fn softmin_step(x: &Tensor<2>, y: &Tensor<2>, fused: bool) -> Result<f32, String> {
    let m = y.dims()[0];
    let x = x.clone().require_grad();
    let h = Tensor::<1>::full([m], -(m as f64).ln(), &y.device()).inner();
    let value = if fused {
        fused_softmin(EPS, x.clone(), y.clone(), h).value
    } else {
        let pooled = Tensor::cat(vec![x.clone().detach(), y.clone()], 0);
        let neg = squared_distances(x.clone(), y.clone(), &pooled).mul_scalar(-0.5 / EPS);
        softmin(EPS, neg, h)
    };
    let grads = value.sum().backward();
    x.grad(&grads)
        .expect("gradient")
        .sum()
        .try_into_scalar()
        .map_err(|e| format!("{e:?}"))
}

/// Value + gradient of one Gaussian kernel sum; returns the host sum of the gradient (syncs),
/// or the device's error.
fn kernel_sum_step(x: &Tensor<2>, y: &Tensor<2>, fused: bool) -> Result<f32, String> {
    let m = y.dims()[0];
    let x = x.clone().require_grad();
    let b = Tensor::<1>::full([m], 1.0 / m as f64, &y.device()).inner();
    let value = if fused {
        fused_kernel_sum(x.clone(), y.clone(), b, &BANDWIDTHS).value
    } else {
        let d2 = squared_distances(x.clone(), y.clone(), y);
        let mut k: Option<Tensor<2>> = None;
        for s in BANDWIDTHS {
            let ks = d2.clone().div_scalar(-2.0 * s * s).exp();
            k = Some(k.map_or(ks.clone(), |acc| acc + ks));
        }
        let k = k.expect("bandwidths").div_scalar(BANDWIDTHS.len() as f64);
        k.matmul(b.unsqueeze_dim::<2>(1)).squeeze_dim::<1>(1)
    };
    let grads = value.sum().backward();
    x.grad(&grads)
        .expect("gradient")
        .sum()
        .try_into_scalar()
        .map_err(|e| format!("{e:?}"))
}

/// Median wall time in seconds of `repeats` runs after one warm-up, and the last result.
fn time(repeats: usize, mut f: impl FnMut() -> f32) -> (f64, f32) {
    let mut last = f();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            last = std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last)
}

type Step = fn(&Tensor<2>, &Tensor<2>, bool) -> Result<f32, String>;

/// One fused measurement, for the comparison with the peers.
struct Row {
    op: &'static str,
    n: usize,
    d: usize,
    seconds: f64,
    sum_grad: f32,
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `scripts/bench_fused_peers.py` and prints each peer against the fused row.
fn peers(o: &Options, rows: &[Row]) {
    let out = Command::new(&o.python)
        .arg("scripts/bench_fused_peers.py")
        .args(["--sizes", &join(&o.sizes), "--dims", &join(&o.dims)])
        .args(["--repeats", &o.repeats.to_string()])
        .args(["--max-tensor-n", &o.max_tensor_n.to_string()])
        .args(["--libs", &o.peer_libs])
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("bench_fused_peers.py failed: {}", err.trim());
            return;
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", o.python);
            return;
        }
    };
    println!(
        "{:<10} {:>7} {:>4} {:<11} {:>11} {:>11} {:>11} {:>11}  checksum",
        "op", "n=m", "d", "peer", "peer_ms", "fused_ms", "peer/fused", "peer_pair/s"
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (op, lib) = (
            v["op"].as_str().unwrap_or("?"),
            v["lib"].as_str().unwrap_or("?"),
        );
        let n = v["n"].as_u64().unwrap_or(0) as usize;
        let d = v["d"].as_u64().unwrap_or(0) as usize;
        let Some(row) = rows.iter().find(|r| r.op == op && r.n == n && r.d == d) else {
            continue;
        };
        let (Some(seconds), Some(sum)) = (v["seconds"].as_f64(), v["sum_grad"].as_f64()) else {
            println!("{op:<10} {n:>7} {d:>4} {lib:<11} failed: {}", v["error"]);
            continue;
        };
        let rel = (sum - f64::from(row.sum_grad)).abs() / f64::from(row.sum_grad).abs().max(1e-30);
        println!(
            "{:<10} {:>7} {:>4} {:<11} {:>11.3} {:>11.3} {:>11.2} {:>11.3e}  {} (rel diff {rel:.1e})",
            op,
            n,
            d,
            lib,
            seconds * 1e3,
            row.seconds * 1e3,
            seconds / row.seconds,
            (n * n) as f64 / seconds,
            if rel < 1e-3 { "agrees" } else { "DIFFERS" },
        );
    }
}

fn main() {
    let o = options();
    let device = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
    let name = device
        .identity()
        .map_or_else(|| "unknown adapter".to_string(), |id| id.name);
    println!("device: wgpu on {name}");
    println!(
        "divergences take the fused path on this device from n * m = {:?} pairs",
        fused_min_pairs(&device)
    );
    println!(
        "{:<10} {:>7} {:>4} {:>11} {:>11} {:>7} {:>13} {:>13} {:>11} {:>11} {:>11}",
        "op",
        "n=m",
        "d",
        "tensor_ms",
        "fused_ms",
        "ratio",
        "tensor_pair/s",
        "fused_pair/s",
        "fused_exp/s",
        "sum_grad_t",
        "sum_grad_f"
    );
    let steps: [(&str, Step, f64); 2] = [
        ("softmin", softmin_step, 1.0),
        ("kernel_sum", kernel_sum_step, BANDWIDTHS.len() as f64),
    ];
    let mut rows = Vec::new();
    for &n in &o.sizes {
        for &d in &o.dims {
            let x = cloud(n, d, 0.0, 1, &device);
            let y = cloud(n, d, 0.5, 2, &device).inner();
            let pairs = (n * n) as f64;
            for (op, step, exps) in steps {
                let (x, y) = (&x, &y);
                let run = |fused| move || step(x, y, fused).expect("benchmark step");
                let (fused, fused_sum) = time(o.repeats, run(true));
                rows.push(Row {
                    op,
                    n,
                    d,
                    seconds: fused,
                    sum_grad: fused_sum,
                });
                let tensor = (n <= o.max_tensor_n).then(|| time(o.repeats, run(false)));
                let cell = |f: &dyn Fn(f64, f32) -> String| {
                    tensor.map_or_else(|| "-".to_string(), |(t, sum)| f(t, sum))
                };
                println!(
                    "{:<10} {:>7} {:>4} {:>11} {:>11.3} {:>7} {:>13} {:>13.3e} {:>11.3e} {:>11} {:>11.4e}",
                    op,
                    n,
                    d,
                    cell(&|t, _| format!("{:.3}", t * 1e3)),
                    fused * 1e3,
                    cell(&|t, _| format!("{:.2}", t / fused)),
                    cell(&|t, _| format!("{:.3e}", pairs / t)),
                    pairs / fused,
                    pairs * exps / fused,
                    cell(&|_, sum| format!("{sum:.4e}")),
                    fused_sum,
                );
            }
        }
    }

    if o.peers {
        peers(&o, &rows);
    }

    if o.memory_n > 0 {
        memory(&device, o.memory_n, o.memory_d, true);
        if o.memory_tensor {
            memory(&device, o.memory_n, o.memory_d, false);
        }
    }
}

/// One softmin and one kernel sum step (value + gradient) at `n = m`, `d`, and the device
/// memory the allocator reserved for them.
fn memory(device: &Device, n: usize, d: usize, fused: bool) {
    device.memory_cleanup();
    let before = device.memory_pool_usage();
    let x = cloud(n, d, 0.0, 3, device);
    let y = cloud(n, d, 0.5, 4, device).inner();
    let start = Instant::now();
    let sums = softmin_step(&x, &y, fused).and_then(|g1| Ok((g1, kernel_sum_step(&x, &y, fused)?)));
    let elapsed = start.elapsed().as_secs_f64();
    let after = device.memory_pool_usage();
    let path = if fused { "fused" } else { "tensor-op" };
    match sums {
        Ok((g1, g2)) => println!(
            "memory at n = m = {n}, d = {d}: one {path} softmin + one {path} kernel sum, value + \
             gradient, in {elapsed:.2} s (checksums {g1:.4e}, {g2:.4e})"
        ),
        Err(e) => {
            // The innermost cause, not the trailing backtrace notes.
            let cause = e
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.contains("backtrace") && !l.contains("Asked at"))
                .unwrap_or("")
                .to_string();
            println!(
                "memory at n = m = {n}, d = {d}: the {path} path FAILED on this device: \
                 {cause} ({} characters of error in all)",
                e.len()
            );
        }
    }
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "  device memory reserved: {} -> {} bytes ({:.1} MiB), in use after: {} bytes; \
             an n x m float32 buffer is {:.1} MiB",
            b.bytes_reserved,
            a.bytes_reserved,
            a.bytes_reserved as f64 / (1 << 20) as f64,
            a.bytes_in_use,
            (n * n * 4) as f64 / (1 << 20) as f64
        ),
        _ => println!("  this device does not report its memory pools"),
    }
}
