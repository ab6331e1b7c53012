//! Benchmark: the fused CubeCL kernels of `fairrep_loss::fused` against the tensor-op path, on
//! the same wgpu device, in the same invocation.
//!
//! ```text
//! cargo run --release -p fairrep-train --example bench_fused -- \
//!     [--sizes 1024,4096,16384,65536] [--dims 8,32] [--max-tensor-n 4096] [--repeats 3] \
//!     [--memory-n 50000] [--memory-d 8]
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
//! and prints the time ratio tensor / fused and the pair evaluations per second. The tensor-op
//! path is skipped above `--max-tensor-n` (its `n x m` buffers). Then, at `--memory-n`, it runs
//! one fused softmin step and one fused kernel sum (value + gradient) and prints the device
//! memory the allocator reserved (`Device::memory_pool_usage`), against the `n x m` float32
//! buffer the tensor-op path would need. `--memory-n 0` skips that part.
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use fairrep_loss::cost::squared_distances;
use fairrep_loss::fused::{FUSED_MIN_PAIRS, fused_kernel_sum, fused_softmin};
use fairrep_loss::sinkhorn::softmin;

struct Options {
    sizes: Vec<usize>,
    dims: Vec<usize>,
    max_tensor_n: usize,
    repeats: usize,
    memory_n: usize,
    memory_d: usize,
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

/// Value + gradient of one softmin step; returns the host sum of the gradient (syncs).
fn softmin_step(x: &Tensor<2>, y: &Tensor<2>, fused: bool) -> f32 {
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
    x.grad(&grads).expect("gradient").sum().into_scalar()
}

/// Value + gradient of one Gaussian kernel sum; returns the host sum of the gradient (syncs).
fn kernel_sum_step(x: &Tensor<2>, y: &Tensor<2>, fused: bool) -> f32 {
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
    x.grad(&grads).expect("gradient").sum().into_scalar()
}

/// Median wall time in seconds of `repeats` runs after one warm-up.
fn time(repeats: usize, mut f: impl FnMut() -> f32) -> f64 {
    std::hint::black_box(f());
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

type Step = fn(&Tensor<2>, &Tensor<2>, bool) -> f32;

fn main() {
    let o = options();
    let device = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
    let name = device
        .identity()
        .map_or_else(|| "unknown adapter".to_string(), |id| id.name);
    println!("device: wgpu on {name}");
    println!("fused threshold in use: FUSED_MIN_PAIRS = {FUSED_MIN_PAIRS} pairs");
    println!(
        "{:<10} {:>7} {:>4} {:>12} {:>12} {:>8} {:>14} {:>14}",
        "op", "n=m", "d", "tensor_ms", "fused_ms", "ratio", "tensor_pairs/s", "fused_pairs/s"
    );
    let steps: [(&str, Step); 2] = [("softmin", softmin_step), ("kernel_sum", kernel_sum_step)];
    for &n in &o.sizes {
        for &d in &o.dims {
            let x = cloud(n, d, 0.0, 1, &device);
            let y = cloud(n, d, 0.5, 2, &device).inner();
            let pairs = (n * n) as f64;
            for (op, step) in steps {
                let fused = time(o.repeats, || step(&x, &y, true));
                let tensor = (n <= o.max_tensor_n).then(|| time(o.repeats, || step(&x, &y, false)));
                let fmt = |t: Option<f64>, f: &dyn Fn(f64) -> String| t.map_or("-".into(), f);
                println!(
                    "{:<10} {:>7} {:>4} {:>12} {:>12.2} {:>8} {:>14} {:>14.3e}",
                    op,
                    n,
                    d,
                    fmt(tensor, &|t| format!("{:.2}", t * 1e3)),
                    fused * 1e3,
                    fmt(tensor, &|t| format!("{:.2}", t / fused)),
                    fmt(tensor, &|t| format!("{:.3e}", pairs / t)),
                    pairs / fused,
                );
            }
        }
    }

    if o.memory_n > 0 {
        let (n, d) = (o.memory_n, o.memory_d);
        device.memory_cleanup();
        let before = device.memory_pool_usage();
        let x = cloud(n, d, 0.0, 3, &device);
        let y = cloud(n, d, 0.5, 4, &device).inner();
        let start = Instant::now();
        let g1 = softmin_step(&x, &y, true);
        let g2 = kernel_sum_step(&x, &y, true);
        let elapsed = start.elapsed().as_secs_f64();
        let after = device.memory_pool_usage();
        println!(
            "memory at n = m = {n}, d = {d}: one fused softmin + one fused kernel sum, value + \
             gradient, in {elapsed:.1} s (checksums {g1:.3e}, {g2:.3e})"
        );
        match (before, after) {
            (Some(b), Some(a)) => println!(
                "  device memory reserved: {} -> {} bytes ({:.1} MiB), in use after: {} bytes; \
                 an n x m float32 buffer would be {:.1} MiB",
                b.bytes_reserved,
                a.bytes_reserved,
                a.bytes_reserved as f64 / (1 << 20) as f64,
                a.bytes_in_use,
                (n * n * 4) as f64 / (1 << 20) as f64
            ),
            _ => println!("  this device does not report its memory pools"),
        }
    }
}
