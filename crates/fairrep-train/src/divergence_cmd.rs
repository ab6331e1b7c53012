//! `fairrep divergence`: the MMD or Sinkhorn divergence between two point clouds read from
//! files, printed as one JSON object, for auditing representations and comparing with other
//! libraries.
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use burn::tensor::{DType, Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use fairrep_loss::{
    Bandwidth, MmdConfig, MmdEstimator, SinkhornConfig, mmd2_with_bandwidths, sinkhorn_divergence,
};
use serde_json::json;

use crate::points::HostMatrix;

/// Which divergence to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DivergenceKind {
    Mmd,
    Sinkhorn,
}

/// Which MMD estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EstimatorArg {
    Biased,
    Unbiased,
}

/// Arguments of `fairrep divergence`.
#[derive(Debug, Args)]
pub struct DivergenceArgs {
    /// First point cloud: `.npy` (float32 or float64, shape [n, d]) or headerless `.csv`.
    #[arg(long)]
    pub x: PathBuf,
    /// Second point cloud, shape [m, d].
    #[arg(long)]
    pub y: PathBuf,
    /// Weights of the first cloud (n non-negative values, normalised to sum to 1).
    #[arg(long)]
    pub a: Option<PathBuf>,
    /// Weights of the second cloud (m values).
    #[arg(long)]
    pub b: Option<PathBuf>,
    /// The divergence.
    #[arg(long, value_enum)]
    pub kind: DivergenceKind,
    /// Sinkhorn temperature in cost units (cost |x-y|^2/2).
    #[arg(long, conflicts_with = "blur")]
    pub eps: Option<f64>,
    /// Sinkhorn blur, `eps = blur^2` (GeomLoss convention).
    #[arg(long)]
    pub blur: Option<f64>,
    /// eps-scaling factor.
    #[arg(long, default_value_t = 0.9)]
    pub scaling: f64,
    /// Target marginal error.
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f64,
    /// Maximum iterations at the target eps.
    #[arg(long, default_value_t = 10_000)]
    pub max_iters: usize,
    /// Check the marginal error every this many iterations.
    #[arg(long, default_value_t = 10)]
    pub check_every: usize,
    /// MMD bandwidth: a number, a comma-separated list, or `median`.
    #[arg(long, default_value = "median")]
    pub bandwidth: String,
    /// MMD estimator.
    #[arg(long, value_enum, default_value_t = EstimatorArg::Biased)]
    pub estimator: EstimatorArg,
    /// Also print the gradient with respect to x.
    #[arg(long)]
    pub grad: bool,
    /// Compute in float64 (on devices that have it).
    #[arg(long)]
    pub f64: bool,
    /// Device: auto, flex, ndarray or wgpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn parse_bandwidth(text: &str) -> anyhow::Result<Bandwidth> {
    if text.trim() == "median" {
        return Ok(Bandwidth::Median);
    }
    let values: Vec<f64> = text
        .split(',')
        .map(|s| {
            s.trim().parse::<f64>().with_context(|| {
                format!("--bandwidth: expected a positive number, a list or `median`, found {s:?}")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        values.iter().all(|v| v.is_finite() && *v > 0.0),
        "--bandwidth: every bandwidth must be positive and finite, found {text}"
    );
    Ok(Bandwidth::Fixed(values))
}

/// Reads weights, checks them (count, sign, not all zero) and normalises them to sum to 1.
fn read_weights(path: &std::path::Path, expected: usize, flag: &str) -> anyhow::Result<Vec<f64>> {
    let m = HostMatrix::read(path)?;
    ensure!(
        m.cols == 1 || m.rows == 1,
        "{}: {flag} weights must be one column or one row, found shape ({}, {})",
        path.display(),
        m.rows,
        m.cols
    );
    ensure!(
        m.values.len() == expected,
        "{}: {flag} has {} weights, but its point cloud has {expected} points",
        path.display(),
        m.values.len()
    );
    if let Some(i) = m.values.iter().position(|v| *v < 0.0) {
        bail!(
            "{}: {flag} weight {} is negative ({}); weights must be >= 0",
            path.display(),
            i + 1,
            m.values[i]
        );
    }
    let total: f64 = m.values.iter().sum();
    ensure!(
        total > 0.0,
        "{}: {flag} weights are all zero; at least one must be positive",
        path.display()
    );
    Ok(m.values.iter().map(|v| v / total).collect())
}

/// Runs the command and prints one JSON object on stdout.
pub fn run(args: &DivergenceArgs, device: &Device) -> anyhow::Result<()> {
    let x = HostMatrix::read(&args.x)?;
    let y = HostMatrix::read(&args.y)?;
    ensure!(
        x.cols == y.cols,
        "dimension mismatch: {} has points of dimension {}, {} of dimension {}",
        args.x.display(),
        x.cols,
        args.y.display(),
        y.cols
    );
    let a = args
        .a
        .as_ref()
        .map(|p| read_weights(p, x.rows, "--a"))
        .transpose()?;
    let b = args
        .b
        .as_ref()
        .map(|p| read_weights(p, y.rows, "--b"))
        .transpose()?;
    let dtype = if args.f64 {
        ensure!(
            device.supports_dtype(DType::F64),
            "--f64: device {device:?} has no float64"
        );
        DType::F64
    } else {
        DType::F32
    };
    let compute = if args.grad {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    let to_matrix = |m: &HostMatrix, dev: &Device| {
        Tensor::<2>::from_data(
            TensorData::new(m.values.clone(), [m.rows, m.cols]),
            (dev, dtype),
        )
    };
    let to_vector = |w: Vec<f64>| {
        Tensor::<1>::from_data(TensorData::new(w.clone(), [w.len()]), (device, dtype))
    };
    let xt = to_matrix(&x, &compute);
    let xt = if args.grad { xt.require_grad() } else { xt };
    let yt = to_matrix(&y, &compute);
    let (a, b) = (a.map(to_vector), b.map(to_vector));

    let mut out = serde_json::Map::new();
    let value = match args.kind {
        DivergenceKind::Sinkhorn => {
            let eps = match (args.eps, args.blur) {
                (Some(e), None) => e,
                (None, Some(blur)) => blur * blur,
                _ => bail!("--kind sinkhorn needs exactly one of --eps or --blur"),
            };
            ensure!(
                eps.is_finite() && eps > 0.0,
                "--eps must be positive, found {eps}"
            );
            ensure!(
                (0.5..=0.99).contains(&args.scaling),
                "--scaling must be in [0.5, 0.99], found {}",
                args.scaling
            );
            let config = SinkhornConfig {
                eps,
                scaling: args.scaling,
                tolerance: args.tolerance,
                max_iters: args.max_iters,
                check_every: args.check_every,
            };
            let s = sinkhorn_divergence(xt.clone(), yt, a, b, &config);
            if !s.converged {
                tracing::warn!(
                    "Sinkhorn did not converge in {} iterations: marginal error {:e} > tolerance {:e}",
                    s.n_iters,
                    s.marginal_error,
                    args.tolerance
                );
            }
            out.insert("converged".into(), json!(s.converged));
            out.insert("n_iters".into(), json!(s.n_iters));
            out.insert("marginal_error".into(), json!(s.marginal_error));
            out.insert("eps".into(), json!(eps));
            s.value
        }
        DivergenceKind::Mmd => {
            ensure!(
                args.eps.is_none() && args.blur.is_none(),
                "--eps/--blur are Sinkhorn options; MMD takes --bandwidth"
            );
            let estimator = match args.estimator {
                EstimatorArg::Biased => MmdEstimator::Biased,
                EstimatorArg::Unbiased => MmdEstimator::Unbiased,
            };
            if estimator == MmdEstimator::Unbiased {
                ensure!(
                    x.rows >= 2 && y.rows >= 2,
                    "the unbiased estimator needs at least two points per cloud ({} has {}, {} has {})",
                    args.x.display(),
                    x.rows,
                    args.y.display(),
                    y.rows
                );
            }
            let config = MmdConfig {
                bandwidth: parse_bandwidth(&args.bandwidth)?,
                estimator,
            };
            let m = mmd2_with_bandwidths(xt.clone(), yt, a, b, &config);
            out.insert("converged".into(), json!(true));
            out.insert("n_iters".into(), json!(0));
            out.insert("marginal_error".into(), json!(0.0));
            out.insert("bandwidths".into(), json!(m.bandwidths));
            m.value
        }
    };
    let grad = if args.grad {
        let grads = value.backward();
        let g = xt.grad(&grads).context("no gradient reached x")?;
        let flat: Vec<f64> = g.into_data().try_to_vec_as::<f64>().expect("f64 data");
        Some(flat.chunks(x.cols).map(<[f64]>::to_vec).collect::<Vec<_>>())
    } else {
        None
    };
    let v: Vec<f64> = value
        .inner()
        .into_data()
        .try_to_vec_as::<f64>()
        .expect("f64 data");
    ensure!(v[0].is_finite(), "the divergence is not finite ({})", v[0]);
    out.insert("value".into(), json!(v[0]));
    if let Some(g) = grad {
        out.insert("grad_x".into(), json!(g));
    }
    out.insert(
        "kind".into(),
        json!(format!("{:?}", args.kind).to_lowercase()),
    );
    out.insert("dtype".into(), json!(if args.f64 { "f64" } else { "f32" }));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
