//! The debiased Sinkhorn divergence in the log domain (docs/MATH.md, "Entropic OT and the
//! debiased Sinkhorn divergence"): validation, then the path `crate::route` chooses (host
//! memory on the CPU devices, the fused kernels on a GPU, tensor ops otherwise), all running
//! the one solver loop of `crate::solver`.
use burn::tensor::{DType, Tensor};

use crate::config::{LossError, SinkhornConfig};
use crate::cost::{check_weights, uniform_weights};
use crate::route::{Kind, Path, check_memory, check_path, route};
use crate::solver::{Problem, SinkhornOutput, SolveOutput, final_value};
use crate::{fused, host, tensor_ops};

/// The checked, detached problem and the path that solves it: `forced` if given (and able to
/// run here), the routed one otherwise.
fn prepare(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
    forced: Option<Path>,
) -> Result<(Problem, Path), LossError> {
    config.validate()?;
    let ([n, d], [m, dy]) = (x.dims(), y.dims());
    if d != dy {
        return Err(LossError::Shape {
            what: "x and y",
            expected: format!("points of one dimension (x: {d})"),
            found: format!("y of dimension {dy}"),
        });
    }
    let a = a.unwrap_or_else(|| uniform_weights(x)).inner();
    let b = b.unwrap_or_else(|| uniform_weights(y)).inner();
    check_weights("a", &a, n)?;
    check_weights("b", &b, m)?;
    let dtype = x.dtype();
    let path = match forced {
        Some(path) => {
            check_path(Kind::Sinkhorn, path, &x.device(), dtype, [n, m, d], false)?;
            path
        }
        None => route(Kind::Sinkhorn, &x.device(), dtype, [n, m, d], false)?,
    };
    check_memory(Kind::Sinkhorn, path, &x.device(), [n, m, d], dtype.size())?;
    Ok((Problem::new(x, y, &a, &b)?, path))
}

/// The converged dual potentials (detached) of the debiased divergence and the solver's
/// diagnostics, on the path `crate::route` chooses. The weights are uniform when `None`.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]`
pub fn solve_potentials(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SolveOutput, LossError> {
    let (problem, path) = prepare(x, y, a, b, config, None)?;
    match (path, problem.a.dtype()) {
        (Path::Host, DType::F64) => host::sinkhorn::solve::<f64>(&problem, config),
        (Path::Host, _) => host::sinkhorn::solve::<f32>(&problem, config),
        (Path::HostTiled, DType::F64) => host::tiled::solve::<f64>(&problem, config),
        (Path::HostTiled, _) => host::tiled::solve::<f32>(&problem, config),
        (Path::Fused, _) => fused::solve(&problem, config),
        (Path::TensorOps, _) => tensor_ops::solve(&problem, config),
    }
}

/// Debiased Sinkhorn divergence `S_eps(alpha, beta)` with its envelope-theorem gradient
/// `dS/dx_i = a_i (xbar_i - ybar_i)` (no backpropagation through the loop), the value a
/// difference of potentials. The weights are uniform when `None` and never differentiated.
///
/// Errors: an invalid `config`, clouds of different dimensions, weights that are negative,
/// non-finite or all zero, points whose squared distances are not finite, float64 on wgpu,
/// and a problem too large for the memory of the path that would solve it. A solve that does
/// not reach its tolerance is not an error: it says so in [`SinkhornOutput::converged`].
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]`; value `[1]`
pub fn sinkhorn_divergence(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    divergence_on(None, x, y, a, b, config)
}

/// [`sinkhorn_divergence`] on the given path instead of the routed one (benchmarks and
/// tests compare the paths on one problem); an error if that path cannot run on the inputs'
/// device and dtype (`crate::route::check_path`) or would not fit in memory.
pub fn sinkhorn_divergence_on(
    path: Path,
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    divergence_on(Some(path), x, y, a, b, config)
}

fn divergence_on(
    forced: Option<Path>,
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let (problem, path) = prepare(&x, &y, a, b, config, forced)?;
    match (path, problem.a.dtype()) {
        (Path::Host, DType::F64) => host::sinkhorn::divergence::<f64>((&x, &y), problem, config),
        // A temperature so large next to the costs that float32 potentials would lose the
        // value: the host solves in float64 and returns the dtype of the inputs.
        (Path::Host, _) if problem.float32_too_coarse(config.eps) => {
            host::sinkhorn::divergence::<f64>((&x, &y), problem.cast(DType::F64), config)
        }
        (Path::Host, _) => host::sinkhorn::divergence::<f32>((&x, &y), problem, config),
        (Path::HostTiled, DType::F64) => host::tiled::divergence::<f64>((&x, &y), problem, config),
        (Path::HostTiled, _) if problem.float32_too_coarse(config.eps) => {
            host::tiled::divergence::<f64>((&x, &y), problem.cast(DType::F64), config)
        }
        (Path::HostTiled, _) => host::tiled::divergence::<f32>((&x, &y), problem, config),
        (Path::Fused, _) => fused::divergence((&x, &y), problem, config),
        (Path::TensorOps, _) => tensor_ops_divergence((&x, &y), &problem, config),
    }
}

/// [`sinkhorn_divergence`] on the tensor-op path whatever the device: the reference the other
/// paths are tested against.
pub fn sinkhorn_divergence_tensor_ops(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let (problem, _) = prepare(&x, &y, a, b, config, Some(Path::TensorOps))?;
    tensor_ops_divergence((&x, &y), &problem, config)
}

/// The divergence of a prepared problem on the tensor-op path.
fn tensor_ops_divergence(
    (x, y): (&Tensor<2>, &Tensor<2>),
    problem: &Problem,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let solved = tensor_ops::solve(problem, config)?;
    let value = final_value(
        &tensor_ops::TensorOpsFinal,
        config.eps,
        (x, y),
        (&problem.a, &problem.b),
        solved.potentials,
    );
    Ok(SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
        // The last step: one softmin of each of the four potentials.
        n_softmins: solved.n_softmins + 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Tensor<2> {
        let values: Vec<f64> = (0..n * d)
            .map(|k| {
                let t = (k as u64 * 2_654_435_761 + seed) % 10_007;
                t as f64 / 10_007.0 * 2.0 - 1.0 + shift
            })
            .collect();
        Tensor::<2>::from_data(
            TensorData::new(values, [n, d]),
            (&Device::flex(), DType::F64),
        )
    }

    #[test]
    fn host_loop_matches_the_tensor_op_loop() {
        // The same problem through both implementations of the loop's operations, in float64
        // to a tight tolerance: the potentials agree to far below the tolerance's scale.
        let (x, y) = (cloud(40, 5, 11, 0.0), cloud(30, 5, 29, 0.4));
        let weights = |n: usize| {
            let w: Vec<f64> = (0..n).map(|i| 1.0 + (i % 3) as f64).collect();
            let total: f64 = w.iter().sum();
            let w: Vec<f64> = w.iter().map(|v| v / total).collect();
            Tensor::<1>::from_data(TensorData::new(w, [n]), (&Device::flex(), DType::F64))
        };
        let (a, b) = (weights(40), weights(30));
        let config = SinkhornConfig {
            eps: 0.05,
            tolerance: 1e-10,
            max_iters: 5_000,
            ..SinkhornConfig::default()
        };
        let problem = Problem::new(&x, &y, &a, &b).unwrap();
        let by_tensors = tensor_ops::solve(&problem, &config).unwrap();
        let on_host = solve_potentials(&x, &y, Some(a), Some(b), &config).unwrap();
        assert!(by_tensors.converged && on_host.converged);
        let values = |t: Tensor<1>| t.into_data().try_to_vec_as::<f64>().unwrap();
        let pairs = [
            (by_tensors.potentials.f_ba, on_host.potentials.f_ba),
            (by_tensors.potentials.g_ab, on_host.potentials.g_ab),
            (by_tensors.potentials.f_aa, on_host.potentials.f_aa),
            (by_tensors.potentials.g_bb, on_host.potentials.g_bb),
        ];
        for (k, (t, h)) in pairs.into_iter().enumerate() {
            for (u, v) in values(t).into_iter().zip(values(h)) {
                assert!((u - v).abs() < 1e-9, "potential {k}: {u} vs {v}");
            }
        }
    }

    /// Anderson acceleration changes the path to the fixed point, not the fixed point: on the
    /// stored and the tiled host paths, in float64 to a tolerance of 1e-9, the accelerated
    /// solve and the one with the relaxed steps alone reach the same value (within 1e-8) and
    /// the same potentials (within 1e-6, the cross ones up to the constant `(f + c, g - c)`,
    /// which leaves every plan unchanged).
    #[test]
    fn accelerated_and_relaxed_solves_reach_the_same_potentials() {
        use crate::cost::uniform_weights;
        use crate::host::{host_vec, potential_gap};
        use crate::solver::{SolveOutput, SolverOps, solve_with_acceleration};
        let (n, m, d) = (120, 100, 4);
        let (x, y) = (cloud(n, d, 11, 0.0), cloud(m, d, 29, 0.4));
        let config = SinkhornConfig {
            eps: 0.02,
            tolerance: 1e-9,
            max_iters: 20_000,
            ..SinkhornConfig::default()
        };
        let problem = Problem::new(&x, &y, &uniform_weights(&x), &uniform_weights(&y)).unwrap();
        let a: Vec<f64> = host_vec(problem.a.clone());
        let b: Vec<f64> = host_vec(problem.b.clone());
        let diameter = problem.schedule_diameter();
        fn both<O: SolverOps<Vector = Vec<f64>>>(
            op: &mut O,
            diameter: f64,
            (a, b): (&Vec<f64>, &Vec<f64>),
            config: &SinkhornConfig,
        ) -> [SolveOutput<Vec<f64>>; 2] {
            [true, false].map(|fast| {
                solve_with_acceleration(op, diameter, (a, b), false, config, fast).unwrap()
            })
        }
        let costs = tensor_ops::Costs::new(&problem.x, &problem.y);
        let mut stored =
            crate::host::sinkhorn::HostSoftmin::<f64>::new(costs.xy, costs.xx, costs.yy);
        let (xh, yh): (Vec<f64>, Vec<f64>) =
            (host_vec(problem.x.clone()), host_vec(problem.y.clone()));
        let mut tiled = crate::host::tiled::TiledSoftmin::new((&xh, n), (&yh, m), d);
        for (path, [fast, plain]) in [
            ("stored", both(&mut stored, diameter, (&a, &b), &config)),
            ("tiled", both(&mut tiled, diameter, (&a, &b), &config)),
        ] {
            // (At this tolerance, near float64's precision for these potentials, the
            // acceleration stalls and hands over: both took about 8,900 passes.)
            assert!(fast.converged && plain.converged, "{path}");
            let value = |s: &SolveOutput<Vec<f64>>| {
                let p = &s.potentials;
                potential_gap((&a, &p.f_ba, &p.f_aa), (&b, &p.g_ab, &p.g_bb))
            };
            let (v, w) = (value(&fast), value(&plain));
            assert!((v - w).abs() < 1e-8, "{path}: value {v} vs {w}");
            let (p, q) = (&fast.potentials, &plain.potentials);
            let shift = p.f_ba.iter().zip(&q.f_ba).map(|(u, v)| u - v).sum::<f64>() / n as f64;
            let pairs = [
                (&p.f_ba, &q.f_ba, shift),
                (&p.g_ab, &q.g_ab, -shift),
                (&p.f_aa, &q.f_aa, 0.0),
                (&p.g_bb, &q.g_bb, 0.0),
            ];
            for (k, (u, v, c)) in pairs.into_iter().enumerate() {
                for (u, v) in u.iter().zip(v) {
                    assert!(
                        (u - v - c).abs() < 1e-6,
                        "{path}: potential {k}: {u} vs {v} + {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn two_points_have_the_closed_form() {
        // One point each: the plan is trivial, OT = C, S = |x - y|^2 / 2 for every eps.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
        let y = Tensor::<2>::from_floats([[3.0, -3.0]], &device);
        let out = sinkhorn_divergence(x, y, None, None, &SinkhornConfig::default()).unwrap();
        let v: f32 = out.value.into_scalar();
        assert!(out.converged);
        assert!((v - 12.5).abs() < 1e-4, "{v}");
    }

    #[test]
    fn a_huge_temperature_keeps_its_accuracy_in_float32() {
        // eps = 1e6 on unit clouds: float32 potentials of size eps ln(n) cannot resolve the
        // value, so the host path solves in float64 and the float32 result matches the
        // float64 one.
        let (x, y) = (cloud(60, 3, 5, 0.0), cloud(50, 3, 7, 0.3));
        let config = SinkhornConfig {
            eps: 1.0e6,
            ..SinkhornConfig::default()
        };
        let exact = sinkhorn_divergence(x.clone(), y.clone(), None, None, &config).unwrap();
        let exact: f64 = exact.value.into_scalar::<f64>();
        let ad = Device::flex().autodiff();
        let on_ad = |t: Tensor<2>| {
            let [n, d] = t.dims();
            let v: Vec<f64> = t.into_data().try_to_vec_as::<f64>().unwrap();
            Tensor::<2>::from_data(TensorData::new(v, [n, d]), (&ad, DType::F32))
        };
        let x32 = on_ad(x).require_grad();
        let got = sinkhorn_divergence(x32.clone(), on_ad(y), None, None, &config).unwrap();
        assert_eq!(got.value.dtype(), DType::F32);
        let grads = got.value.backward();
        assert!(x32.grad(&grads).is_some());
        let got: f64 = got.value.into_scalar::<f32>().into();
        assert!(exact > 0.05, "{exact}");
        assert!((got - exact).abs() <= 1e-5 * exact, "{got} vs {exact}");
    }

    #[test]
    fn bad_inputs_are_errors_not_hangs() {
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0, 1.0], [1.0, 0.0]], &device);
        let config = SinkhornConfig::default();
        // Squared distances overflow float32 and float64 alike: refused before any loop.
        let far = Tensor::<2>::from_floats([[1.0e30, 0.0], [-1.0e30, 3.0]], &device);
        let e = sinkhorn_divergence(x.clone(), far, None, None, &config).unwrap_err();
        assert!(matches!(e, LossError::NonFinite { .. }), "{e}");
        let nan = Tensor::<2>::from_floats([[f32::NAN, 0.0]], &device);
        assert!(sinkhorn_divergence(x.clone(), nan, None, None, &config).is_err());
        let three = Tensor::<2>::from_floats([[0.0, 1.0, 2.0]], &device);
        let e = sinkhorn_divergence(x.clone(), three, None, None, &config).unwrap_err();
        assert!(e.to_string().contains("dimension"), "{e}");
        let bad = SinkhornConfig {
            scaling: 1.0,
            ..config.clone()
        };
        assert!(sinkhorn_divergence(x.clone(), x.clone(), None, None, &bad).is_err());
        let w = Tensor::<1>::from_floats([0.5, -0.5], &device);
        let e = sinkhorn_divergence(x.clone(), x, Some(w), None, &config).unwrap_err();
        assert!(e.to_string().contains("weights a"), "{e}");
    }
}
