//! The Sinkhorn divergence in host memory: the four cost matrices read once, the shared solver
//! loop on host vectors, and the last softmin step with its row-normalised plans, from which
//! the envelope gradient follows.
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::{HostFloat, host_vec, softmin_rows, softmin_rows_with_plan, to_tensor, with_gradients};
use crate::config::{LossError, SinkhornConfig};
use crate::cost::LOG_ZERO;
use crate::solver::{Pair, Problem, SinkhornOutput, SolveOutput, SolverOps, solve_with};
use crate::tensor_ops::Costs;

/// The four half squared-distance matrices (row-major) and the solver operations on host
/// vectors.
pub(crate) struct HostSoftmin<F> {
    xy: Vec<F>,
    yx: Vec<F>,
    xx: Vec<F>,
    yy: Vec<F>,
}

impl<F: HostFloat> HostSoftmin<F> {
    /// Reads the cost matrices `C(x, y)`, `C(y, x)`, `C(x, x)`, `C(y, y)` (shapes `[n, m]`,
    /// `[m, n]`, `[n, n]`, `[m, m]`, computed on the device) into host memory.
    pub(crate) fn new(xy: Tensor<2>, xx: Tensor<2>, yy: Tensor<2>) -> Self {
        Self {
            yx: host_vec(xy.clone().transpose()),
            xy: host_vec(xy),
            xx: host_vec(xx),
            yy: host_vec(yy),
        }
    }
}

impl<F: HostFloat> HostSoftmin<F> {
    fn cost(&self, pair: Pair) -> &[F] {
        match pair {
            Pair::XY => &self.xy,
            Pair::YX => &self.yx,
            Pair::XX => &self.xx,
            Pair::YY => &self.yy,
        }
    }

    /// `h = log_w + pot / eps`.
    fn shifted(eps: f64, log_w: &[F], pot: &[F]) -> Vec<F> {
        let inv = F::of(1.0 / eps);
        log_w.iter().zip(pot).map(|(&l, &p)| l + p * inv).collect()
    }

    /// The softmin of `pair` from `pot` with its row-normalised plan (see
    /// [`softmin_rows_with_plan`]).
    pub(crate) fn softmin_with_plan(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &[F],
        pot: &[F],
        plan: bool,
    ) -> (Vec<F>, Vec<F>) {
        softmin_rows_with_plan(eps, self.cost(pair), &Self::shifted(eps, log_w, pot), plan)
    }
}

impl<F: HostFloat> SolverOps for HostSoftmin<F> {
    type Vector = Vec<F>;

    fn prepare(&mut self, _eps: f64) {}

    fn softmin(&self, eps: f64, pair: Pair, log_w: &Vec<F>, pot: Option<&Vec<F>>) -> Vec<F> {
        match pot {
            Some(pot) => softmin_rows(eps, self.cost(pair), &Self::shifted(eps, log_w, pot)),
            None => softmin_rows(eps, self.cost(pair), log_w),
        }
    }

    host_vector_ops!();
}

/// `(1 - w) old + w new` on host vectors (`crate::solver::SolverOps::relax`).
pub(super) fn relax_host<F: HostFloat>(old: &[F], new: Vec<F>, w: f64) -> Vec<F> {
    if w == 1.0 {
        return new;
    }
    let (keep, take) = (F::of(1.0 - w), F::of(w));
    old.iter()
        .zip(new)
        .map(|(&o, n)| o * keep + n * take)
        .collect()
}

/// Log-weights on host vectors, `log 0` the finite [`LOG_ZERO`].
pub(super) fn log_weights_host<F: HostFloat>(w: &[F]) -> Vec<F> {
    let log_zero = F::of(LOG_ZERO);
    w.iter()
        .map(|&v| if v > F::ZERO { v.ln() } else { log_zero })
        .collect()
}

/// `crate::solver::SolverOps::marginal_errors` on host vectors, accumulated in float64.
pub(super) fn marginal_errors_host<F: HostFloat>(
    eps: f64,
    terms: &[(&Vec<F>, &Vec<F>, &Vec<F>)],
) -> Vec<f64> {
    let inv = 1.0 / eps;
    terms
        .iter()
        .map(|(w, old, new)| {
            w.iter()
                .zip(old.iter().zip(new.iter()))
                .map(|(w, (o, n))| w.get() * (((o.get() - n.get()) * inv).exp() - 1.0).abs())
                .sum()
        })
        .collect()
}

/// `sum_k c_k v_k` on host vectors (`crate::solver::SolverOps::combine`), each element summed
/// in float64.
pub(super) fn combine_host<F: HostFloat>(terms: &[(f64, &Vec<F>)]) -> Vec<F> {
    let len = terms.first().map_or(0, |(_, v)| v.len());
    (0..len)
        .map(|i| F::of(terms.iter().map(|(c, v)| c * v[i].get()).sum()))
        .collect()
}

/// `sum_i w_i u_i v_i` for each pair on host vectors, in float64
/// (`crate::solver::SolverOps::weighted_dots`).
pub(super) fn weighted_dots_host<F: HostFloat>(w: &[F], pairs: &[(&Vec<F>, &Vec<F>)]) -> Vec<f64> {
    pairs
        .iter()
        .map(|(u, v)| {
            w.iter()
                .zip(u.iter().zip(v.iter()))
                .map(|(w, (u, v))| w.get() * u.get() * v.get())
                .sum()
        })
        .collect()
}

/// `sum_i w_i v_i` for each `(w, v)` of `terms` on host vectors, in float64
/// (`crate::solver::SolverOps::weighted_sums`).
pub(super) fn weighted_sums_host<F: HostFloat>(terms: &[(&Vec<F>, &Vec<F>)]) -> Vec<f64> {
    terms
        .iter()
        .map(|(w, v)| w.iter().zip(v.iter()).map(|(w, v)| w.get() * v.get()).sum())
        .collect()
}

/// `v + c` on a host vector, in float64 before rounding (`crate::solver::SolverOps::add_constant`).
pub(super) fn add_constant_host<F: HostFloat>(v: &[F], c: f64) -> Vec<F> {
    v.iter().map(|v| F::of(v.get() + c)).collect()
}

/// The host loop's solution with what the last step needs: the cost matrices and the weights.
struct HostSolution<F> {
    op: HostSoftmin<F>,
    a: Vec<F>,
    b: Vec<F>,
    solved: SolveOutput<Vec<F>>,
}

impl<F: HostFloat> HostSolution<F> {
    fn new(problem: &Problem, config: &SinkhornConfig) -> Result<Self, LossError> {
        let costs = Costs::new(&problem.x, &problem.y);

        let mut op = HostSoftmin::new(costs.xy, costs.xx, costs.yy);
        let (a, b) = (host_vec(problem.a.clone()), host_vec(problem.b.clone()));
        let solved = solve_with(
            &mut op,
            problem.schedule_diameter(),
            &a,
            &b,
            problem.same,
            config,
        )?;
        Ok(Self { op, a, b, solved })
    }

    /// The solution with its potentials as tensors on `device`, in `dtype`.
    fn into_tensors(self, device: &Device, dtype: DType) -> SolveOutput {
        let SolveOutput {
            potentials,
            n_iters,
            marginal_error,
            converged,
            n_softmins,
        } = self.solved;
        SolveOutput {
            potentials: potentials.map(|v| to_tensor(v, device, dtype)),
            n_iters,
            marginal_error,
            converged,
            n_softmins,
        }
    }
}

/// The solver loop in host memory, its potentials returned as tensors of the problem's device
/// and dtype.
pub(crate) fn solve<F: HostFloat>(
    problem: &Problem,
    config: &SinkhornConfig,
) -> Result<SolveOutput, LossError> {
    let (device, dtype) = (problem.a.device(), problem.a.dtype());
    Ok(HostSolution::<F>::new(problem, config)?.into_tensors(&device, dtype))
}

/// `crate::sinkhorn_divergence` on a CPU device, all in host memory: the solver loop, then the
/// last softmin step from the converged potentials on the same
/// cost matrices, the value as the difference of potentials, and the envelope gradient
/// `dS/dx_i = a_i (xbar_i - ybar_i)` with `xbar = P_aa x`, `ybar = P_ab y` (the row-normalised
/// plans of that step; the same for `y`), which is what autodiff through that step computes
/// on the tensor path. The gradient is handed to autodiff by [`with_gradients`].
pub(crate) fn divergence<F: HostFloat>(
    (x, y): (&Tensor<2>, &Tensor<2>),
    problem: Problem,
    config: &SinkhornConfig,
) -> Result<SinkhornOutput, LossError> {
    let HostSolution {
        op,
        a: a_h,
        b: b_h,
        solved,
    } = HostSolution::<F>::new(&problem, config)?;
    let p = &solved.potentials;
    let eps = config.eps;
    let (a_log, b_log) = (op.log_weights(&a_h), op.log_weights(&b_h));
    let (gx, gy) = (x.is_tracked(), y.is_tracked());
    let (f_ba, p_ab) = op.softmin_with_plan(eps, Pair::XY, &b_log, &p.g_ab, gx);
    let (f_aa, p_aa) = op.softmin_with_plan(eps, Pair::XX, &a_log, &p.f_aa, gx);
    let (g_ab, p_ba) = op.softmin_with_plan(eps, Pair::YX, &a_log, &p.f_ba, gy);
    let (g_bb, p_bb) = op.softmin_with_plan(eps, Pair::YY, &b_log, &p.g_bb, gy);
    let value = super::potential_gap((&a_h, &f_ba, &f_aa), (&b_h, &g_ab, &g_bb));
    // The outputs in the inputs' dtype (the loop may run in float64 for float32 inputs).
    let (device, dtype) = (problem.a.device(), problem.a.dtype());
    let out_dtype = x.dtype();
    let value_t = Tensor::<1>::from_data(TensorData::new(vec![value], [1]), (&device, out_dtype));
    let value = if gx || gy {
        // Gradients in centred coordinates (exact: rows of the plans sum to 1).
        let (xi, yi) = (problem.x.clone(), problem.y.clone());
        let centre = Tensor::cat(vec![xi.clone(), yi.clone()], 0).mean_dim(0);
        let (xc, yc) = (xi - centre.clone(), yi - centre);
        let (n, m) = (xc.dims()[0], yc.dims()[0]);
        let matrix = |v: Vec<F>, rows: usize, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), (&device, dtype))
        };
        // w_i ((P_self own)_i - (P_cross other)_i)
        let envelope = |w: &Tensor<1>,
                        own: &Tensor<2>,
                        other: &Tensor<2>,
                        p_self: Vec<F>,
                        p_cross: Vec<F>,
                        rows: usize,
                        cols: usize| {
            let w = w.clone().unsqueeze_dim::<2>(1);
            (matrix(p_self, rows, rows).matmul(own.clone())
                - matrix(p_cross, rows, cols).matmul(other.clone()))
                * w
        };
        let (a, b) = (&problem.a, &problem.b);
        let grad_x = gx.then(|| envelope(a, &xc, &yc, p_aa, p_ab, n, m).cast(out_dtype));
        let grad_y = gy.then(|| envelope(b, &yc, &xc, p_bb, p_ba, m, n).cast(out_dtype));
        with_gradients(value_t, [(x, grad_x), (y, grad_y)])
    } else {
        value_t
    };
    Ok(SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
        // The last step: one softmin of each of the four potentials.
        n_softmins: solved.n_softmins + 4,
    })
}
