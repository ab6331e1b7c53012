//! Cost of the kernel duals: time and peak memory of one RBF kernel FERM / SVM fit at a given
//! size, and of a 5-fold CV grid.
//!
//!     cargo run --release -p fairrep-ferm --example bench_qp -- fit 2000 ferm
//!     cargo run --release -p fairrep-ferm --example bench_qp -- cv 1500
//!
//! One size per process, so the reported peak resident memory (Linux `VmHWM`) is that fit's.
//! Data: seeded synthetic, 100 columns (about Adult's width after one-hot encoding), two
//! groups with shifted features and group-dependent labels.

// A benchmark reports to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use fairrep_ferm::{
    Criterion, Estimator, Grid, Kernel, KernelKind, KernelSvmConfig, Sample, SelectionConfig,
    fit_kernel_svm, select,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn synthetic(n: usize, d: usize, seed: u64) -> Sample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f64> = (0..d).map(|_| rng.random::<f64>() - 0.5).collect();
    let mut x = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        let g = u32::from(rng.random::<f64>() < 0.33);
        let row: Vec<f64> = (0..d)
            .map(|k| rng.random::<f64>() * 2.0 - 1.0 + if k < 5 { 0.5 * f64::from(g) } else { 0.0 })
            .collect();
        let score: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() - 0.3 * f64::from(g);
        labels.push(f64::from(score + 0.3 * (rng.random::<f64>() - 0.5) > 0.2));
        groups.push(g);
        x.extend(row);
    }
    Sample::new(&x, n, d, &labels, &groups).expect("valid synthetic data")
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_qp fit N (ferm|svm) | bench_qp cv N";
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("{usage}");
        std::process::exit(2)
    });
    let d = 100;
    let sample = synthetic(n, d, 1);
    match mode {
        "fit" => {
            let fair = args.get(3).map(String::as_str) != Some("svm");
            let mut cfg = KernelSvmConfig::new(1.0, Kernel::Rbf { gamma: 0.01 }, fair);
            cfg.max_rows = n;
            let start = Instant::now();
            let fit = fit_kernel_svm(&sample, &cfg).unwrap_or_else(|e| {
                eprintln!("{e}");
                std::process::exit(1)
            });
            println!(
                "{} n={n} d={d}: total {:.2} s (kernel + tau {:.2} s, QP {:.2} s, {} iterations, {:?}), \
                 {} support vectors, peak RSS {:.0} MiB",
                if fair { "kernel FERM" } else { "kernel SVM" },
                start.elapsed().as_secs_f64(),
                fit.kernel_seconds,
                fit.solve.seconds,
                fit.solve.iterations,
                fit.solve.status,
                fit.model.n_support(),
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        }
        "cv" => {
            let grid = Grid {
                c: vec![0.1, 1.0, 10.0],
                gamma: vec![0.1, 0.01],
            };
            for (est, crit) in [
                (Estimator::KernelSvm(KernelKind::Rbf), Criterion::Accuracy),
                (Estimator::KernelFerm(KernelKind::Rbf), Criterion::ferm()),
            ] {
                let cfg = SelectionConfig::new(crit, 0);
                let report = select(est, &sample, &grid, &cfg).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1)
                });
                println!(
                    "{est:?} n={n} d={d}, 5 folds x {} grid points: CV {:.1} s, refit {:.1} s, peak RSS {:.0} MiB",
                    report.points.len(),
                    report.cv_seconds,
                    report.refit_seconds,
                    peak_rss_mib().unwrap_or(f64::NAN)
                );
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2)
        }
    }
}
