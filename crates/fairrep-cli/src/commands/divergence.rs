//! `fairrep divergence`: the MMD or Sinkhorn divergence between two point clouds read from
//! files, printed as one JSON object, for auditing representations and comparing with other
//! libraries.
use std::path::Path;

use anyhow::{Context, bail, ensure};
use burn::tensor::{DType, Device, Tensor, TensorData};
use fairrep_data::matrix::{Matrix, read_matrix};
use fairrep_loss::{
    Bandwidth, LossError, MmdConfig, MmdEstimator, SinkhornConfig, mmd2_with_bandwidths,
    sinkhorn_divergence,
};
use fairrep_train::device::select_device;
use serde_json::json;

use crate::cli::{DivergenceArgs, DivergenceKind, EstimatorArg};

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
    Ok(Bandwidth::Fixed(values))
}

/// Reads weights, checks them (count, sign, not all zero) and normalises them to sum to 1.
fn read_weights(path: &Path, expected: usize, flag: &str) -> anyhow::Result<Vec<f64>> {
    let m = read_matrix(path)?.matrix;
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

/// The options of the other divergence given anyway: an error naming them.
fn refuse_foreign(args: &DivergenceArgs) -> anyhow::Result<()> {
    let foreign: Vec<&str> = match args.kind {
        DivergenceKind::Mmd => [
            ("--eps", args.eps.is_some()),
            ("--blur", args.blur.is_some()),
            ("--scaling", args.scaling.is_some()),
            ("--tolerance", args.tolerance.is_some()),
            ("--max-iters", args.max_iters.is_some()),
            ("--check-every", args.check_every.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect(),
        DivergenceKind::Sinkhorn => [
            ("--bandwidth", args.bandwidth.is_some()),
            ("--estimator", args.estimator.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect(),
    };
    if !foreign.is_empty() {
        let (this, other) = match args.kind {
            DivergenceKind::Mmd => ("mmd", "Sinkhorn"),
            DivergenceKind::Sinkhorn => ("sinkhorn", "MMD"),
        };
        bail!(
            "{} {} {} option{} and would be ignored with --kind {this}",
            foreign.join(", "),
            if foreign.len() == 1 { "is an" } else { "are" },
            other,
            if foreign.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Runs the command and prints one JSON object on stdout.
pub(crate) fn run(args: &DivergenceArgs) -> anyhow::Result<()> {
    refuse_foreign(args)?;
    let x = read_matrix(&args.x)?.matrix;
    let y = read_matrix(&args.y)?.matrix;
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
    let selected = select_device(args.device.into())?;
    tracing::info!("device: {}", selected.description);
    let device = &selected.device;
    let dtype = if args.f64 { DType::F64 } else { DType::F32 };
    let compute = if args.grad {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    let to_matrix = |m: &Matrix<f64>, dev: &Device| {
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
                (None, Some(blur)) if blur.is_finite() && blur > 0.0 => blur * blur,
                (None, Some(blur)) => bail!("--blur must be a positive number, found {blur}"),
                _ => bail!("--kind sinkhorn needs exactly one of --eps or --blur"),
            };
            let config = SinkhornConfig {
                eps,
                scaling: args.scaling.unwrap_or(0.9),
                tolerance: args.tolerance.unwrap_or(1e-5),
                max_iters: args.max_iters.unwrap_or(10_000),
                check_every: args.check_every.unwrap_or(10),
            };
            match config.validate() {
                Ok(()) => {}
                Err(LossError::InvalidConfig {
                    key,
                    expected,
                    found,
                }) => {
                    let flag = match key {
                        "eps" if args.blur.is_some() => "--blur (eps = blur^2)",
                        "eps" => "--eps",
                        "scaling" => "--scaling",
                        "tolerance" => "--tolerance",
                        "max_iters" => "--max-iters",
                        "check_every" => "--check-every",
                        other => other,
                    };
                    bail!("{flag}: expected {expected}, found {found}");
                }
                Err(other) => return Err(other).context("invalid Sinkhorn settings"),
            }
            let s = sinkhorn_divergence(xt.clone(), yt, a, b, &config)?;
            if !s.converged {
                tracing::warn!(
                    "Sinkhorn did not converge in {} iterations: marginal error {:e} > tolerance {:e}",
                    s.n_iters,
                    s.marginal_error,
                    config.tolerance
                );
            }
            out.insert("converged".into(), json!(s.converged));
            out.insert("n_iters".into(), json!(s.n_iters));
            out.insert("marginal_error".into(), json!(s.marginal_error));
            out.insert("eps".into(), json!(eps));
            s.value
        }
        DivergenceKind::Mmd => {
            let estimator = match args.estimator.unwrap_or(EstimatorArg::Biased) {
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
                bandwidth: parse_bandwidth(args.bandwidth.as_deref().unwrap_or("median"))?,
                estimator,
            };
            config.validate().context("--bandwidth")?;
            let m = mmd2_with_bandwidths(xt.clone(), yt, a, b, &config)?;
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
        ensure!(
            flat.iter().all(|v| v.is_finite()),
            "the gradient is not finite; rescale the data or compute in float64 (--f64)"
        );
        Some(flat.chunks(x.cols).map(<[f64]>::to_vec).collect::<Vec<_>>())
    } else {
        None
    };
    let v: Vec<f64> = value
        .inner()
        .into_data()
        .try_to_vec_as::<f64>()
        .expect("f64 data");
    ensure!(
        v[0].is_finite(),
        "the divergence is not finite ({}); rescale the data or compute in float64 (--f64)",
        v[0]
    );
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
